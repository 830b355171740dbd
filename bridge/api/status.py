"""Store-derived gauges, refreshed periodically so every replica reports the same truth."""

from __future__ import annotations

from sqlalchemy import func, select

from bridge import metrics
from bridge.engine.context import EngineContext
from bridge.model import as_utc
from bridge.store.tables import ConflictRow, LinkRow, OutboxRow, WatermarkRow


async def refresh_store_gauges(ctx: EngineContext) -> None:
    now = ctx.now()
    async with ctx.store.sessions() as session:
        waiting = {
            c: (n, oldest)
            for c, n, oldest in (
                await session.execute(
                    select(OutboxRow.connector, func.count(), func.min(OutboxRow.created_at))
                    .where(OutboxRow.state.in_(("pending", "claimed")))
                    .group_by(OutboxRow.connector)
                )
            ).all()
        }
        parked = dict(
            (
                await session.execute(
                    select(OutboxRow.connector, func.count())
                    .where(OutboxRow.state == "parked")
                    .group_by(OutboxRow.connector)
                )
            ).all()
        )
        open_conflicts = dict(
            (
                await session.execute(
                    select(ConflictRow.route, func.count())
                    .where(ConflictRow.state == "open")
                    .group_by(ConflictRow.route)
                )
            ).all()
        )
        linked = dict(
            (
                await session.execute(
                    select(LinkRow.connector, func.count())
                    .where(LinkRow.state == "active")
                    .group_by(LinkRow.connector)
                )
            ).all()
        )
        marks = (
            await session.execute(
                select(WatermarkRow.connector, func.min(WatermarkRow.updated_at)).group_by(
                    WatermarkRow.connector
                )
            )
        ).all()
    for name in ctx.connectors:
        n, oldest = waiting.get(name, (0, None))
        metrics.outbox_depth.labels(name).set(n)
        metrics.outbox_oldest_age.labels(name).set((now - as_utc(oldest)).total_seconds() if oldest else 0)
        metrics.outbox_parked.labels(name).set(parked.get(name, 0))
        metrics.linked_tasks.labels(name).set(linked.get(name, 0))
    for route in ctx.routes:
        metrics.conflicts_open.labels(route.name).set(open_conflicts.get(route.name, 0))
    for name, updated in marks:
        if name in ctx.connectors and updated is not None:
            metrics.watermark_age.labels(name).set((now - as_utc(updated)).total_seconds())
