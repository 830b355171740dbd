"""Changes made through the unified API: the same path as any other observation (history, fan-out
through the outbox), with "api:<token name>" as their source, so history says who made them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from bridge import metrics
from bridge.engine.context import EngineContext
from bridge.engine.sync import apply_changes, create_mirrors, enqueue, new_task, op_values, queue_updates
from bridge.model import Values, decode, decode_values, encode, normalize_values
from bridge.store import on_commit
from bridge.store.states import ConflictState, LinkState, OpKind, advance
from bridge.store.tables import ConflictRow, HistoryRow, LinkRow, TaskRow


def source(actor: str | None) -> str:
    """History's source for a change made with the API token named `actor`."""
    return f"api:{actor}" if actor else "api"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def create_task(
    ctx: EngineContext, route_name: str, values: Mapping[str, Any], *, actor: str | None = None
) -> str:
    route = ctx.route(route_name)
    if route is None:
        raise ApiError(404, f"no route {route_name!r}")
    now = ctx.now()
    async with ctx.store.transaction() as session:
        task = await new_task(
            session, route, normalize_values(values), source=source(actor), via="api", now=now
        )
        await create_mirrors(ctx, session, route, task, exclude=None, observed_at=now)
    metrics.changes_detected.labels("api", "api").inc()
    return task.id


async def patch_task(
    ctx: EngineContext, task_id: str, values: Mapping[str, Any], *, actor: str | None = None
) -> None:
    changes = normalize_values(values)
    async with ctx.store.transaction() as session:
        task = await session.get(TaskRow, task_id)
        if task is None or task.deleted_at is not None:
            raise ApiError(404, "no such task")
        route = ctx.route(task.route)
        if route is None:
            raise ApiError(409, f"the task's route {task.route!r} is no longer configured")
        canonical = decode_values(task.data)
        real = {k: v for k, v in changes.items() if canonical.get(k) != v}
        now = ctx.now()
        # A person's edit through the API settles any conflict waiting on those fields.
        for conflict in (
            await session.scalars(
                select(ConflictRow).where(
                    ConflictRow.task_id == task_id,
                    ConflictRow.state == ConflictState.OPEN,
                    ConflictRow.field.in_(list(changes)),
                )
            )
        ).all():
            conflict.state = advance(conflict.state, ConflictState.RESOLVED)
            conflict.resolution = {
                "by": f"{source(actor)} patch",
                "value": encode(conflict.field, changes[conflict.field]),
            }
            conflict.resolved_at = now
        if real:
            await apply_changes(session, task, canonical, real, source=source(actor), via="api", now=now)
            metrics.changes_detected.labels("api", "api").inc()
        await queue_updates(ctx, session, route, task, observed_at=now)


async def delete_task(ctx: EngineContext, task_id: str, *, actor: str | None = None) -> None:
    async with ctx.store.transaction() as session:
        task = await session.get(TaskRow, task_id)
        if task is None or task.deleted_at is not None:
            raise ApiError(404, "no such task")
        route = ctx.route(task.route)
        now = ctx.now()
        links = (
            await session.scalars(
                select(LinkRow).where(
                    LinkRow.task_id == task_id, LinkRow.state.in_((LinkState.ACTIVE, LinkState.CREATING))
                )
            )
        ).all()
        policy = route.on_delete if route else "unlink"
        for link in links:
            if policy == "unlink" or route is None:
                link.state = advance(link.state, LinkState.UNLINKED)
            else:
                enqueue(session, op_values(task, link, OpKind(policy), {}, observed_at=now, now=now))
        task.deleted_at = now
        session.add(
            HistoryRow(
                task_id=task_id,
                field="*",
                old=None,
                new={"v": f"deleted through the API ({policy})"},
                source=source(actor),
                via="api",
                at=now,
            )
        )
    on_commit(session, ctx.outbox_ready.set)


async def resolve_conflict(
    ctx: EngineContext, conflict_id: int, *, choose: str | None, value: Any = None, actor: str | None = None
) -> Values:
    """Settle a held conflict: `choose` a candidate ("bridge" or a connector name), or give a value."""
    async with ctx.store.transaction() as session:
        conflict = await session.get(ConflictRow, conflict_id)
        if conflict is None:
            raise ApiError(404, "no such conflict")
        if conflict.state != ConflictState.OPEN:
            raise ApiError(409, "this conflict is already resolved")
        if choose is not None:
            if choose not in conflict.candidates:
                raise ApiError(400, f"choose one of: {', '.join(conflict.candidates)}")
            raw = conflict.candidates[choose]
        elif value is not None:
            raw = value
        else:
            raise ApiError(400, "give `choose` or `value`")
        try:
            chosen = decode(conflict.field, raw)
        except ValueError as exc:
            raise ApiError(400, f"{conflict.field}: {exc}") from None
        task = await session.get(TaskRow, conflict.task_id)
        route = ctx.route(conflict.route)
        if task is None or route is None:
            raise ApiError(409, "the conflict's task or route no longer exists")
        now = ctx.now()
        conflict.state = advance(conflict.state, ConflictState.RESOLVED)
        conflict.resolution = {"choose": choose, "value": encode(conflict.field, chosen), "by": source(actor)}
        conflict.resolved_at = now
        canonical = decode_values(task.data)
        if canonical.get(conflict.field) != chosen:
            await apply_changes(
                session,
                task,
                canonical,
                {conflict.field: chosen},
                source=source(actor),
                via="conflict",
                now=now,
            )
        await session.flush()
        await queue_updates(ctx, session, route, task, observed_at=now)
        return {conflict.field: chosen}
