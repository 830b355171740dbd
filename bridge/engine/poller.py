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
from bridge.engine import core, health
from bridge.engine.context import EngineContext
from bridge.engine.routes import Member, Route
from bridge.engine.sync import (
    Observation,
    apply_remote_deletion,
    linked_parents,
    mark_gone_from_view,
    needs_observing,
    observe,
)
from bridge.logs import log_context
from bridge.store import StoreLost
from bridge.store.states import LinkState
from bridge.store.tables import LinkRow, WatermarkRow
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


async def poll_connector(ctx: EngineContext, connector: str, *, progress: Any = None) -> PollReport:
    """Poll every scope of one connector. Errors of one scope don't stop the others."""
    with log_context(connector=connector):
        report = PollReport(connector)
        started = time.perf_counter()
        for scope in ctx.scopes_of(connector):
            found = ctx.member(connector, scope)
            assert found is not None
            route, member = found
            with log_context(route=route.name):
                try:
                    await poll_scope(ctx, route, member, report, progress=progress)
                except ConnectorError as exc:
                    report.errors.append(str(exc))
                    log.debug("poll %s/%s failed: %s", connector, scope, exc)  # health logs the change
                except StoreLost:
                    raise
                except Exception as exc:  # a bug: the connector is not healthy for it, and the others go on
                    log.exception("poll %s/%s failed unexpectedly", connector, scope)
                    report.errors.append(
                        f"{connector}/{scope}: internal error ({type(exc).__name__}); see the daemon log"
                    )
        result = "error" if report.errors else "ok"
        metrics.polls.labels(connector, result).inc()
        metrics.poll_duration.labels(connector).observe(time.perf_counter() - started)
        metrics.connector_up.labels(connector).set(0 if report.errors else 1)
        await health.record_poll(
            ctx,
            connector,
            report.errors[-1] if report.errors else None,
            report.guard_tripped[-1] if report.guard_tripped else None,
        )
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
    hierarchy = core.reads_parent(conn, route, member)
    if hierarchy:
        tasks = core.parents_first(tasks)  # a new parent is linked before its children name it
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
                parents = (
                    await linked_parents(
                        session, route.name, member.connector, (rt.parent_id for rt in batch)
                    )
                    if hierarchy
                    else None
                )
                for rt in batch:
                    if await observe(ctx, session, Observation(route, member, rt, "poll", parents)):
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
                LinkRow.state == LinkState.ACTIVE,
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
                    LinkRow.state == LinkState.ACTIVE,
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
