"""Polling: one connector's scopes, observed, with watermarks and careful deletion inference.

A poll reads each scope with the watermark stored for it, observes every task that changed (in
small batches, each its own transaction, since observing is idempotent) and stores the new
watermark in the last transaction, after the changes before it. A full listing (`all_ids`) lets
the poll suspect linked tasks that vanished; each suspect is confirmed with a GET before
anything is deleted, and a poll that would delete more than the route's `max_delete_share` stops
and raises the alarm.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bridge import metrics
from bridge.engine.context import EngineContext
from bridge.engine.routes import Member, Route
from bridge.engine.sync import Observation, enqueue, needs_observing, observe
from bridge.model import Status, as_utc, decode_values, encode_values
from bridge.store import on_commit
from bridge.store.tables import HistoryRow, LinkRow, TaskRow, WatermarkRow
from connectors.base import ConnectorError, GoneFromView, NotFound

log = logging.getLogger("taskbridge.poll")

CHUNK = 100  # listed tasks compared with the store per read
WRITE_BATCH = 10  # changed tasks observed per write transaction


@dataclass
class PollReport:
    connector: str
    seen: int = 0
    changed: int = 0
    deleted: int = 0
    errors: list[str] = field(default_factory=list)
    guard_tripped: list[str] = field(default_factory=list)


async def first_seen(session: AsyncSession, member: Member) -> datetime | None:
    row = await session.get(WatermarkRow, (member.connector, member.scope))
    if row is None or "first_poll" not in row.value:
        return None
    return as_utc(datetime.fromisoformat(row.value["first_poll"]))


async def poll_connector(ctx: EngineContext, connector: str, *, progress: Any = None) -> PollReport:
    """Poll every scope of one connector. Errors of one scope don't stop the others."""
    report = PollReport(connector)
    started = time.perf_counter()
    for scope in ctx.scopes_of(connector):
        found = ctx.member(connector, scope)
        assert found is not None
        route, member = found
        try:
            await poll_scope(ctx, route, member, report, progress=progress)
        except ConnectorError as exc:
            report.errors.append(str(exc))
            log.warning("poll %s/%s failed: %s", connector, scope, exc)
    result = "error" if report.errors else "ok"
    metrics.polls.labels(connector, result).inc()
    metrics.poll_duration.labels(connector).observe(time.perf_counter() - started)
    metrics.connector_up.labels(connector).set(0 if report.errors else 1)
    state = ctx.state.setdefault(connector, {})
    state["last_poll"] = ctx.now().isoformat()
    state["last_result"] = result
    if report.errors:
        state["last_error"] = report.errors[-1]
    return report


async def poll_scope(
    ctx: EngineContext, route: Route, member: Member, report: PollReport, *, progress: Any = None
) -> None:
    conn = ctx.connectors[member.connector]
    async with ctx.store.read() as session:
        row = await session.get(WatermarkRow, member.key)
        watermark = dict(row.value) if row is not None else {}
    fetch_started = ctx.now()
    listing = await conn.list_tasks(member.scope, watermark.get("remote") if watermark else None)
    tasks = list(listing.tasks)
    if progress is not None:
        progress(member, len(tasks))
    new_watermark = {
        "remote": listing.watermark,
        "first_poll": watermark.get("first_poll") or fetch_started.isoformat(),
        "last_poll": fetch_started.isoformat(),
    }
    for i in range(0, max(len(tasks), 1), CHUNK):
        chunk = tasks[i : i + CHUNK]
        last = i + CHUNK >= len(tasks)
        report.seen += len(chunk)
        async with ctx.store.read() as session:
            moved = await needs_observing(ctx, session, route, member, chunk)
        watermark_now = last and listing.all_ids is None and not listing.deleted_ids
        if not moved and not watermark_now:
            continue
        # Short write transactions: the outbox's writers queue on the same lock, and a first
        # poll of 10,000 new tasks in 100-task transactions kept them waiting for minutes.
        batches = [moved[j : j + WRITE_BATCH] for j in range(0, len(moved), WRITE_BATCH)] or [[]]
        for b, batch in enumerate(batches):
            async with ctx.store.transaction() as session:
                for rt in batch:
                    if await observe(ctx, session, Observation(route, member, rt, "poll")):
                        report.changed += 1
                if watermark_now and b == len(batches) - 1:
                    await _store_watermark(session, member, new_watermark, ctx.now())
        if progress is not None:
            progress(member, 0, advance=len(chunk))
    suspects: set[str] = set(listing.deleted_ids)
    if listing.all_ids is not None:
        suspects |= await _missing(ctx, member, listing.all_ids, before=fetch_started)
    if suspects:
        await _confirm_deletions(ctx, route, member, sorted(suspects), report)
    if listing.all_ids is not None or listing.deleted_ids:
        async with ctx.store.transaction() as session:
            await _store_watermark(session, member, new_watermark, ctx.now())


async def _store_watermark(
    session: AsyncSession, member: Member, value: dict[str, Any], now: datetime
) -> None:
    row = await session.get(WatermarkRow, member.key)
    if row is None:
        session.add(WatermarkRow(connector=member.connector, scope=member.scope, value=value, updated_at=now))
    else:
        row.value = {**row.value, **value}  # other keys (the comment sweep's place) are kept
        row.updated_at = now


async def _missing(
    ctx: EngineContext, member: Member, all_ids: frozenset[str], *, before: datetime
) -> set[str]:
    """Linked tasks absent from a complete listing. A link touched since the listing began (a
    mirror created meanwhile, say) may postdate it, so it waits for the next poll."""
    async with ctx.store.read() as session:
        linked = await session.scalars(
            select(LinkRow.remote_id).where(
                LinkRow.connector == member.connector,
                LinkRow.scope == member.scope,
                LinkRow.state == "active",
                LinkRow.remote_id.is_not(None),
                LinkRow.updated_at < before,
            )
        )
        return {rid for rid in linked.all() if rid not in all_ids}


async def _confirm_deletions(
    ctx: EngineContext, route: Route, member: Member, suspects: Sequence[str], report: PollReport
) -> None:
    async with ctx.store.read() as session:
        total = (
            await session.scalar(
                select(func.count())
                .select_from(LinkRow)
                .where(
                    LinkRow.connector == member.connector,
                    LinkRow.scope == member.scope,
                    LinkRow.state == "active",
                )
            )
            or 0
        )
    # A failed or partial listing must never read as "everything was deleted".
    if total >= 5 and len(suspects) > route.max_delete_share * total:
        metrics.deletion_guard.labels(route.name).inc()
        message = (
            f"{member.connector}/{member.scope}: {len(suspects)} of {total} linked tasks vanished from the listing, "
            f"more than max_delete_share={route.max_delete_share}; not deleting anything"
        )
        log.error(message)
        report.guard_tripped.append(message)
        ctx.state.setdefault(member.connector, {})["deletion_guard"] = message
        return
    conn = ctx.connectors[member.connector]
    for remote_id in suspects:
        try:
            rt = await conn.get_task(member.scope, remote_id)
        except NotFound:
            async with ctx.store.transaction() as session:
                if await apply_remote_deletion(ctx, session, route, member, remote_id):
                    report.deleted += 1
            continue
        except GoneFromView:
            async with ctx.store.transaction() as session:
                await mark_gone_from_view(ctx, session, member, remote_id)
            continue
        async with ctx.store.transaction() as session:
            if await observe(ctx, session, Observation(route, member, rt, "poll")):
                report.changed += 1


async def mark_gone_from_view(
    ctx: EngineContext, session: AsyncSession, member: Member, remote_id: str
) -> None:
    """The credential can no longer see the task: stop syncing that one copy, delete nothing."""
    from bridge.engine.sync import link_by_remote

    link = await link_by_remote(session, member.connector, remote_id)
    if link is None or link.state != "active":
        return
    link.state = "gone"
    link.updated_at = ctx.now()
    session.add(
        HistoryRow(
            task_id=link.task_id,
            field="*",
            old=None,
            new={"v": "gone from view"},
            source=member.connector,
            via="poll",
            at=ctx.now(),
        )
    )
    log.info("%s: task %s left the credential's view; unlinked, not deleted", member.connector, remote_id)


async def apply_remote_deletion(
    ctx: EngineContext, session: AsyncSession, route: Route, member: Member, remote_id: str
) -> bool:
    """A deletion confirmed by the platform (a GET answered 404): apply the route's policy."""
    from bridge.engine.sync import link_by_remote

    link = await link_by_remote(session, member.connector, remote_id)
    if link is None or link.state not in ("active", "creating"):
        return False
    now = ctx.now()
    link.state = "gone"
    link.updated_at = now
    task = await session.get(TaskRow, link.task_id)
    if task is None:
        return False
    session.add(
        HistoryRow(
            task_id=task.id,
            field="*",
            old=None,
            new={"v": f"deleted on {member.connector}"},
            source=member.connector,
            via="poll",
            at=now,
        )
    )
    others = (
        await session.scalars(
            select(LinkRow).where(LinkRow.task_id == task.id, LinkRow.state.in_(("active", "creating")))
        )
    ).all()
    if route.on_delete == "unlink":
        for other in others:
            other.state = "unlinked"
            other.updated_at = now
        # The mirrors live on as unrelated tasks: a deleted canonical task is never relinked
        # (unlike one that merely left the route's filter).
        task.deleted_at = now
        return True
    canonical = decode_values(task.data)
    if route.on_delete == "delete":
        task.deleted_at = now
    else:
        canonical = {**canonical, "archived": True, "status": Status.CANCELLED}
        task.data = encode_values(canonical)
        task.status = str(Status.CANCELLED)
    task.updated_at = now
    for other in others:
        target = route.member(other.connector, other.scope)
        if target is None or not target.writes_any:
            continue
        enqueue(session, task, other, route.on_delete, {}, observed_at=now, now=now)
    on_commit(session, ctx.outbox_ready.set)
    return True
