"""What the store says about the bridge's health: one summary, read by the gauges (refreshed
periodically, so every replica reports the same truth), the connectors endpoint and the demo."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bridge import metrics
from bridge.engine.context import EngineContext
from bridge.model import as_utc
from bridge.store.states import ConflictState, LinkState, OpState
from bridge.store.tables import ConflictRow, LinkRow, OutboxRow, TaskRow, WatermarkRow


@dataclass
class Summary:
    tasks: int = 0
    waiting: dict[str, int] = field(default_factory=dict)  # connector -> operations pending or claimed
    oldest_waiting: dict[str, datetime] = field(default_factory=dict)
    parked: dict[str, int] = field(default_factory=dict)
    last_parked_error: dict[str, str] = field(default_factory=dict)
    linked: dict[str, int] = field(default_factory=dict)  # connector -> active links
    open_conflicts: dict[str, int] = field(default_factory=dict)  # route -> count
    polled: dict[str, datetime] = field(default_factory=dict)  # connector -> its oldest scope's last poll


async def _grouped(session: AsyncSession, *columns: Any, where: Any) -> list[Any]:
    return list((await session.execute(select(*columns).where(where).group_by(columns[0]))).all())


async def summary(session: AsyncSession) -> Summary:
    s = Summary()
    s.tasks = int(
        await session.scalar(select(func.count()).select_from(TaskRow).where(TaskRow.deleted_at.is_(None)))
        or 0
    )
    for c, n, oldest in await _grouped(
        session,
        OutboxRow.connector,
        func.count(),
        func.min(OutboxRow.created_at),
        where=OutboxRow.state.in_((OpState.PENDING, OpState.CLAIMED)),
    ):
        s.waiting[c] = n
        s.oldest_waiting[c] = as_utc(oldest)
    for c, n, last_id in await _grouped(
        session,
        OutboxRow.connector,
        func.count(),
        func.max(OutboxRow.id),
        where=OutboxRow.state == OpState.PARKED,
    ):
        s.parked[c] = n
        error = await session.scalar(select(OutboxRow.last_error).where(OutboxRow.id == last_id))
        if error:
            s.last_parked_error[c] = error
    s.linked = dict(
        await _grouped(session, LinkRow.connector, func.count(), where=LinkRow.state == LinkState.ACTIVE)
    )
    s.open_conflicts = dict(
        await _grouped(
            session, ConflictRow.route, func.count(), where=ConflictRow.state == ConflictState.OPEN
        )
    )
    for c, updated in await _grouped(
        session,
        WatermarkRow.connector,
        func.min(WatermarkRow.updated_at),
        where=WatermarkRow.updated_at.is_not(None),
    ):
        s.polled[c] = as_utc(updated)
    return s


async def refresh_store_gauges(ctx: EngineContext) -> None:
    now = ctx.now()
    async with ctx.store.read() as session:
        s = await summary(session)
    for name in ctx.connectors:
        metrics.outbox_depth.labels(name).set(s.waiting.get(name, 0))
        oldest = s.oldest_waiting.get(name)
        metrics.outbox_oldest_age.labels(name).set((now - oldest).total_seconds() if oldest else 0)
        metrics.outbox_parked.labels(name).set(s.parked.get(name, 0))
        metrics.linked_tasks.labels(name).set(s.linked.get(name, 0))
        if name in s.polled:
            metrics.watermark_age.labels(name).set((now - s.polled[name]).total_seconds())
    for route in ctx.routes:
        metrics.conflicts_open.labels(route.name).set(s.open_conflicts.get(route.name, 0))
