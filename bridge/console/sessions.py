"""The console's sign-in sessions, in the daemon's memory.

A session is made by signing in with an API token. The browser holds only its id: 32 random
bytes, in a cookie (HttpOnly, SameSite=Strict, Path=/console, Secure over https). The id maps
here to the token's name and scopes, the SHA-256 the config holds for it (never the token), a
CSRF token every form of the session carries, and the flash messages waiting for the next page.

A session ends `TTL` after it began, at sign-out, or as soon as its token is no longer in the
config in force (a reload swaps `daemon.cfg`): every request looks the token up again by its hash,
so a token removed or narrowed by a reload is removed or narrowed here too. Sessions live in one
process: a restart signs everyone out, and replicas behind a balancer need sticky sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

TTL = 8 * 3600.0  # seconds a session lasts from sign-in
MAX_SESSIONS = 1000  # beyond this, signing in ends the oldest session
MAX_FLASHES = 5


class Token(Protocol):
    name: str
    sha256: str
    scopes: list[str]


@dataclass
class Session:
    id: str
    name: str  # the token's name, as the config has it now
    scopes: frozenset[str]
    digest: bytes  # the token's SHA-256, to find it again in the config in force
    csrf: str
    expires: float  # time.monotonic() when it ends
    flashes: list[tuple[str, str]] = field(default_factory=list)  # (level, text), shown once

    def may(self, scope: str) -> bool:
        """The API's rule: a token has a scope when it holds it or holds `admin`."""
        return scope in self.scopes or "admin" in self.scopes

    def flash(self, level: str, text: str) -> None:
        self.flashes = [*self.flashes, (level, text)][-MAX_FLASHES:]

    def take_flashes(self) -> list[tuple[str, str]]:
        out, self.flashes = self.flashes, []
        return out

    def csrf_ok(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf.encode(), str(given).encode())


class Sessions:
    def __init__(self, clock: Callable[[], float] = time.monotonic, ttl: float = TTL) -> None:
        self.clock = clock
        self.ttl = ttl
        self._by_id: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def start(self, name: str, scopes: Iterable[str], token: str) -> Session:
        """A new session for a token just checked (its id new: nothing from before carries over)."""
        self._purge()
        while len(self._by_id) >= MAX_SESSIONS:
            self._by_id.pop(next(iter(self._by_id)))  # the oldest: dicts keep insertion order
        session = Session(
            id=secrets.token_urlsafe(32),
            name=name,
            scopes=frozenset(scopes),
            digest=hashlib.sha256(token.strip().encode()).digest(),
            csrf=secrets.token_urlsafe(32),
            expires=self.clock() + self.ttl,
        )
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None, tokens: Iterable[Token]) -> Session | None:
        """The live session of that id, its name and scopes as the config in force has its token;
        None (and the session ended) when it expired or its token is gone."""
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        if self.clock() >= session.expires:
            self.end(session_id)
            return None
        found = None
        for token in tokens:
            # Every token compared, in constant time, as the API's check does.
            if hmac.compare_digest(session.digest, bytes.fromhex(token.sha256)):
                found = token
        if found is None:
            self.end(session_id)
            return None
        session.name = found.name
        session.scopes = frozenset(found.scopes)
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._by_id.pop(session_id, None)

    def _purge(self) -> None:
        now = self.clock()
        for sid in [sid for sid, s in self._by_id.items() if now >= s.expires]:
            del self._by_id[sid]
