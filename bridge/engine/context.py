"""What every part of the engine works with: the store, the routes, the connectors, the clock."""

from __future__ import annotations

import asyncio
import collections
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from bridge.defaults import DEFAULT_CLAIM_TTL
from bridge.engine.routes import Member, Route
from bridge.model import utcnow
from bridge.store import Store
from connectors.base import Connector


@dataclass(frozen=True)
class HandedDelivery:
    """A webhook delivery this replica recorded already claimed by itself, handed to its inbox
    loop in memory (bridge/engine/inbox.py): what the loop would otherwise claim and read back."""

    id: int
    connector: str
    body: str
    headers: dict[str, str]
    claim_expires_at: datetime


ANSWERED_WRITES_KEPT = 10_000  # far above the writes a worker holds between answer and record


@dataclass(frozen=True)
class Answered:
    """What a platform's deliveries of one write of ours carry as their stamp: the creation time
    (a create: its `created` event) and the task's time after the write (its `updated` event;
    a create that sets more in a second request has one)."""

    created_at: datetime | None
    updated_at: datetime | None


@dataclass
class EngineContext:
    store: Store
    routes: list[Route]
    connectors: Mapping[str, Connector]
    replica: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    clock: Callable[[], datetime] = utcnow
    # Set when an operation is queued, so idle workers wake at once instead of at their next tick.
    outbox_ready: asyncio.Event = field(default_factory=asyncio.Event)
    inbox_ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Deliveries the webhook endpoint recorded claimed by this replica, for the inbox loop; a
    # delivery's claim lasts `inbox_claim_ttl` seconds, as the loop's own claims do.
    inbox_handed: collections.deque[HandedDelivery] = field(default_factory=collections.deque)
    inbox_claim_ttl: float = DEFAULT_CLAIM_TTL
    # Whether deliveries are handed over at all: a daemon hands none until its start has given
    # back what a dead process of its replica id held, nor once its stop has begun (what it
    # records then is left pending, for any replica to claim at once).
    inbox_handing: bool = True
    inbox_looked_at: float = 0.0  # time.monotonic() of the inbox loop's last claim from the store
    webhook_secrets: dict[str, list[str]] = field(default_factory=dict)  # connector -> secrets
    # connector -> (its last write error or None, when recorded): what this replica last told
    # the store of its write health (bridge/engine/health.py), so unchanged health costs nothing.
    write_health: dict[str, tuple[str | None, datetime]] = field(default_factory=dict)
    write_failures: dict[str, int] = field(default_factory=dict)  # connector -> failed writes in a row
    # (connector, remote id) of tasks matching left unlinked as ambiguous (two of one title on a
    # member): never taken for new tasks, which would copy them again (bridge/engine/matching.py).
    held_apart: set[tuple[str, str]] = field(default_factory=set)
    # (connector, remote id) -> the times a delivery of our write would carry, of writes this
    # process sent whose answer came and whose outcome is not recorded yet (the worker forgets
    # each once its record is done): a delivery reporting that write by its stamp alone is ours
    # (inbox._unrecorded), where the store cannot say so before the record.
    answered_writes: dict[tuple[str, str], Answered] = field(default_factory=dict)
    # Outbox operations up to this id take no more fields (`plan --apply` makes exactly the writes
    # it showed): an update queued later goes behind them as an operation of its own.
    sealed_ops: int = 0

    def __post_init__(self) -> None:
        self._index()

    def write_answered(self, connector: str, remote_id: str, answered: Answered) -> None:
        """A write's answer came: a delivery reporting it is ours until the worker forgets it."""
        writes = self.answered_writes
        writes[(connector, remote_id)] = answered
        if len(writes) > ANSWERED_WRITES_KEPT:
            # Only a worker stopped between an answer and its record leaves one behind; the
            # oldest goes first, and a delivery of it is read, as one after a restart is.
            del writes[next(iter(writes))]

    def write_recorded(self, connector: str, remote_id: str, answered: Answered) -> None:
        """That write's record is done (or will not be): the store says from now."""
        if self.answered_writes.get((connector, remote_id)) == answered:
            del self.answered_writes[(connector, remote_id)]

    def _index(self) -> None:
        self._members: dict[tuple[str, str], tuple[Route, Member]] = {}
        self._routes: dict[str, Route] = {}
        for route in self.routes:
            self._routes[route.name] = route
            for member in route.members:
                self._members[member.key] = (route, member)

    def reconfigure(self, routes: list[Route], connectors: Mapping[str, Connector]) -> None:
        """New routes and connectors (a reloaded config). Work in flight keeps the objects it
        holds; what starts next uses these."""
        self.routes = routes
        self.connectors = connectors
        self._index()

    def member(self, connector: str, scope: str) -> tuple[Route, Member] | None:
        return self._members.get((connector, scope))

    def route(self, name: str) -> Route | None:
        return self._routes.get(name)

    def scopes_of(self, connector: str) -> list[str]:
        return [scope for (name, scope) in self._members if name == connector]

    def now(self) -> datetime:
        return self.clock()
