"""Retried creates' looks for their markers, many to one request.

A create whose earlier attempt may have landed looks for its marker on the platform before it
sends again (outbox.py's delivery promise). Where the platform can only answer by listing the
scope (it has no search, or its search missed), a burst of such retries listed the scope once
each: a bulk request of 50 whose answer was lost cost 50 listings of a project that may hold
thousands of tasks. Here the looks of one connector and scope that ask while none
of theirs is running go out as one `find_by_markers`; those that ask while one runs wait for it
and go out together next.

A look says when its operation was queued (`created_after`): nothing its attempts made is older,
so a connector may pass by the tasks its platform dates earlier by more than its clocks'
margin (AgentKanban, without a search, reads each task's details otherwise). A batch asks
from the earliest of its looks' times.

Why a look never joins one already running: its answer must come from a listing begun after it
asked. The outbox claims a retried create only once `landing_wait` has passed since its last
attempt, so a listing begun after the claim shows whatever that attempt made; a listing begun
before may have passed the task by before it was asked for.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from bridge.model import as_utc
from connectors.base import Connector, RemoteTask


class _Batch:
    """Markers looked for in one request, and its answer once it has one."""

    def __init__(self) -> None:
        self.markers: set[str] = set()
        self.created_after: datetime | None = None  # the earliest of its looks'
        self.bounded = True  # False once a look without a time joined
        self.found: dict[str, RemoteTask] | None = None
        self.error: Exception | None = None

    def widen(self, created_after: datetime | None) -> None:
        """Take in a look's time: the batch asks from the earliest, or unbounded if any is."""
        if created_after is None:
            self.bounded, self.created_after = False, None
        elif self.bounded and (self.created_after is None or as_utc(created_after) < self.created_after):
            self.created_after = as_utc(created_after)


class MarkerLookups:
    """`find` for the outbox's retried creates: one listing for all that ask together."""

    def __init__(self) -> None:
        self._next: dict[tuple[str, str], _Batch] = {}  # (connector, scope) -> batch not yet sent
        self._turns: dict[tuple[str, str], asyncio.Lock] = {}  # one request at a time a scope

    async def find(
        self, conn: Connector, scope: str, marker: str, *, created_after: datetime | None = None
    ) -> RemoteTask | None:
        """The task of `scope` on `conn` whose description holds `marker`, or None, from a look
        begun after this call; tasks the platform dates before `created_after` (our clock,
        less the platform's margin) are not candidates. Raises what the platform's answer
        raised (ConnectorError)."""
        key = (conn.name, scope)
        batch = self._next.setdefault(key, _Batch())
        batch.markers.add(marker)
        batch.widen(created_after)
        # Retries claimed together start in one turn of the loop: each joins before the first
        # of them sends.
        await asyncio.sleep(0)
        async with self._turns.setdefault(key, asyncio.Lock()):
            if batch.found is None and batch.error is None:
                # The first of its batch to have the turn sends it (or the next, where the one
                # that sent it was cancelled before the answer).
                if self._next.get(key) is batch:
                    del self._next[key]
                try:
                    batch.found = await conn.find_by_markers(
                        scope, sorted(batch.markers), created_after=batch.created_after
                    )
                except Exception as exc:  # each look of the batch fails as its own would have
                    batch.error = exc
        if batch.error is not None:
            raise batch.error
        assert batch.found is not None
        return batch.found.get(marker)
