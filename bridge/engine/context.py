"""What every part of the engine works with: the store, the routes, the connectors, the clock."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from bridge.engine.routes import Member, Route
from bridge.model import utcnow
from bridge.store import Store
from connectors.base import Connector


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
    webhook_secrets: dict[str, list[str]] = field(default_factory=dict)  # connector -> secrets
    # connector -> (its last write error or None, when recorded): what this replica last told
    # the store of its write health (bridge/engine/health.py), so unchanged health costs nothing.
    write_health: dict[str, tuple[str | None, datetime]] = field(default_factory=dict)
    write_failures: dict[str, int] = field(default_factory=dict)  # connector -> failed writes in a row
    # (connector, remote id) of tasks matching left unlinked as ambiguous (two of one title on a
    # member): never taken for new tasks, which would copy them again (bridge/engine/matching.py).
    held_apart: set[tuple[str, str]] = field(default_factory=set)
    # Outbox operations up to this id take no more fields (`plan --apply` makes exactly the writes
    # it showed): an update queued later goes behind them as an operation of its own.
    sealed_ops: int = 0

    def __post_init__(self) -> None:
        self._index()

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
