"""Connector health, kept in the store so that every replica answers the same.

A connector is healthy when its last poll succeeded and its writes are not failing for a reason
of its own (the credential refused, the platform down or rate limiting us into the ground). One
task's refused write (a 4xx about that task) is that task's problem, parked in the outbox where a
person sees it, and says nothing about the connector.

Recorded: every poll's outcome (by the replica holding the connector's poll lease; a poll has
retried its requests already), and a write outcome when it changes the connector's write health
or the record is older than `WRITE_REFRESH` (so another replica's stale record is overwritten by
one that writes fine). Writes fail fast and the outbox retries them, so one failure among
successes is no news: only `WRITE_FAILURES_UNHEALTHY` in a row turn the connector unhealthy. A
recovered connector clears its error. A connector that starts failing is logged once, and once
again when it recovers, not at every poll.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.engine.context import EngineContext
from bridge.store.tables import MetaRow

log = logging.getLogger("taskbridge.health")

PREFIX = "health:"
WRITE_REFRESH = timedelta(seconds=30)
WRITE_FAILURES_UNHEALTHY = 3  # failed writes in a row (none landing between) that make it unhealthy


@dataclass(frozen=True)
class Health:
    connector: str
    last_poll: datetime | None = None
    poll_error: str | None = None
    write_error: str | None = None
    write_checked: datetime | None = None
    deletion_guard: str | None = None

    @property
    def healthy(self) -> bool:
        return self.last_poll is not None and self.poll_error is None and self.write_error is None

    @property
    def last_error(self) -> str | None:
        return self.poll_error or self.write_error

    @classmethod
    def of(cls, connector: str, value: Mapping[str, Any]) -> Health:
        def when(key: str) -> datetime | None:
            raw = value.get(key)
            return datetime.fromisoformat(raw) if raw else None

        return cls(
            connector,
            last_poll=when("last_poll"),
            poll_error=value.get("poll_error"),
            write_error=value.get("write_error"),
            write_checked=when("write_checked"),
            deletion_guard=value.get("deletion_guard"),
        )

    def value(self) -> dict[str, Any]:
        return {
            "last_poll": self.last_poll.isoformat() if self.last_poll else None,
            "poll_error": self.poll_error,
            "write_error": self.write_error,
            "write_checked": self.write_checked.isoformat() if self.write_checked else None,
            "deletion_guard": self.deletion_guard,
        }


async def load(session: AsyncSession) -> dict[str, Health]:
    rows = (await session.scalars(select(MetaRow).where(MetaRow.key.startswith(PREFIX)))).all()
    return {row.key[len(PREFIX) :]: Health.of(row.key[len(PREFIX) :], row.value) for row in rows}


async def record_poll(ctx: EngineContext, connector: str, error: str | None, guard: str | None) -> None:
    """One poll's outcome, in a transaction of its own (a poll's are done by then)."""
    now = ctx.now()
    async with ctx.store.transaction() as session:
        row = await session.get(MetaRow, PREFIX + connector)
        before = Health.of(connector, row.value if row else {})
        after = Health(connector, now, error, before.write_error, before.write_checked, guard)
        _save(session, row, after)
    _say(before, after)


@dataclass(frozen=True)
class WriteResult:
    """What a batch of writes says of one connector: its own error (None: a write landed), and
    whether that error is certain at once (a refused credential) or may pass (a 5xx, a timeout)."""

    error: str | None
    certain: bool = False


async def record_writes(
    ctx: EngineContext, session: AsyncSession, outcomes: Mapping[str, WriteResult]
) -> None:
    """Write outcomes per connector, in the committer's transaction. Touches the store only where
    the health changes or has gone stale."""
    now = ctx.now()
    known = ctx.write_health
    results: dict[str, str | None] = {}
    for connector, result in outcomes.items():
        # One failed write in many is the outbox's to retry, not the connector failing: its
        # health turns only after WRITE_FAILURES_UNHEALTHY failures in a row, with no success.
        streak = ctx.write_failures.get(connector, 0) + 1 if result.error is not None else 0
        ctx.write_failures[connector] = streak
        if result.error is None or result.certain or streak >= WRITE_FAILURES_UNHEALTHY:
            results[connector] = result.error
    stale = [
        c
        for c, error in results.items()
        if c not in known or known[c][0] != error or now - known[c][1] > WRITE_REFRESH
    ]
    if not stale:
        return
    rows = {
        row.key[len(PREFIX) :]: row
        for row in (
            await session.scalars(select(MetaRow).where(MetaRow.key.in_([PREFIX + c for c in stale])))
        ).all()
    }
    for connector in stale:
        row = rows.get(connector)
        before = Health.of(connector, row.value if row else {})
        error = results[connector]
        after = Health(connector, before.last_poll, before.poll_error, error, now, before.deletion_guard)
        _save(session, row, after)
        known[connector] = (error, now)
        _say(before, after)


def _save(session: AsyncSession, row: MetaRow | None, health: Health) -> None:
    if row is None:
        session.add(MetaRow(key=PREFIX + health.connector, value=health.value()))
    else:
        row.value = health.value()


def _say(before: Health, after: Health) -> None:
    """Log a change of health once: failing, or recovered."""
    was, now = before.last_error, after.last_error
    if now is not None and was is None:
        log.error("connector %s is failing: %s", after.connector, now)
    elif now is None and was is not None:
        log.warning("connector %s recovered (it was failing: %s)", after.connector, was)
