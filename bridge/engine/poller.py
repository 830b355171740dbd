"""Polling: one connector's scopes, observed, with watermarks and careful deletion inference.

A poll reads each scope with the watermark stored for it as the listing arrives, observes every
task that changed (in small batches, each its own transaction, since observing is idempotent),
oldest change first within what arrived together, and stores the new watermark once the listing
has ended, after the changes before it. A full
listing (`all_ids`) lets the poll suspect linked tasks that vanished; each suspect is confirmed
with a GET before anything is deleted, and a poll that would delete more than the route's
`max_delete_share` stops and raises the alarm. A listing that fails half way leaves what it
observed (true observations) and neither the watermark nor any deletion.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
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
    date_contested,
    linked_parents,
    mark_gone_from_view,
    needs_observing,
    observe,
    prefetch_links,
    undated_contested,
)
from bridge.logs import log_context
from bridge.store import StoreLost, refusal
from bridge.store.states import LinkState
from bridge.store.tables import LinkRow, WatermarkRow
from connectors.base import ConnectorError, GoneFromView, NotFound, RemoteTask, chunked

log = logging.getLogger("taskbridge.poll")

CHUNK = 100  # listed tasks compared with the store per read
WRITE_BATCH = 10  # changed tasks observed per write transaction
# Changed tasks are held until this many wait, or the first of them has waited this long (checked
# as each chunk arrives), then observed oldest change first: a platform lists by id, so a burst of
# edits that wrapped around its list would otherwise have its newest edits written first.
HOLD_TASKS = 500
HOLD_SECONDS = 0.2


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
                    if refusal(exc) is not None:
                        raise  # not the connector's: the job says it once, and once on recovery
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
    hierarchy = core.reads_parent(conn, route, member)
    listed: set[str] = set()  # with a hierarchy: the ids listed so far
    waiting: list[RemoteTask] = []  # changed children whose parent was not listed before them
    waiting_ids: set[str] = set()
    held = _Held(hierarchy)
    compared = 0  # tasks listed since the progress last moved
    # The listing is observed a chunk at a time as it arrives: a scope of 100,000 tasks is never
    # held whole (memory), and the first changes are stored while the rest is still on the wire.
    try:
        async with conn.stream_tasks(member.scope, watermark.get("remote") if watermark else None) as listing:
            async for chunk in chunked(listing, CHUNK):
                report.seen += len(chunk)
                if progress is not None:
                    progress(member, len(chunk))
                async with ctx.store.read() as session:
                    moved = await needs_observing(ctx, session, route, member, chunk)
                    if hierarchy:
                        listed.update(task.remote_id for task in chunk)
                        unseen = {
                            t.parent_id
                            for t in moved
                            if t.parent_id is not None and t.parent_id not in listed
                        }
                        linked = (
                            await linked_parents(session, route.name, member.connector, unseen)
                            if unseen
                            else {}
                        )
                if hierarchy:
                    moved = _ready(moved, listed, linked, waiting, waiting_ids)
                held.add(await date_contested(ctx, route, member, moved))
                compared += len(chunk)
                if held.full():
                    await _observe_all(ctx, route, member, held.take(), hierarchy, report)
                if progress is not None and not held.tasks:
                    progress(member, 0, advance=compared)
                    compared = 0
            end = listing.end
    except ConnectorError:
        # What was listed before the break is true: observed as it would have been.
        await _observe_all(ctx, route, member, held.take(), hierarchy, report)
        raise
    await _observe_all(ctx, route, member, held.take(), hierarchy, report)
    if progress is not None and compared:
        progress(member, 0, advance=compared)
    dated = await date_contested(ctx, route, member, waiting)
    await _observe_all(ctx, route, member, core.parents_first(dated), hierarchy, report)
    suspects: set[str] = set(end.deleted_ids)
    if end.all_ids is not None:
        suspects |= await _missing(ctx, member, end.all_ids, before=fetch_started)
    if suspects:
        await _confirm_deletions(ctx, route, member, sorted(suspects), report)
    new_watermark = {
        "remote": end.watermark,
        "first_poll": watermark.get("first_poll") or fetch_started.isoformat(),
        "last_poll": fetch_started.isoformat(),
    }
    # After every change listed before it, and after the deletions it let us infer.
    async with ctx.store.transaction() as session:
        await _store_watermark(session, member, new_watermark, ctx.now())


@dataclass
class _Held:
    """Changed tasks of a listing not observed yet (HOLD_TASKS, HOLD_SECONDS)."""

    hierarchy: bool
    tasks: list[RemoteTask] = field(default_factory=list)
    since: float = 0.0

    def add(self, moved: Sequence[RemoteTask]) -> None:
        if moved and not self.tasks:
            self.since = time.monotonic()
        self.tasks.extend(moved)

    def full(self) -> bool:
        return len(self.tasks) >= HOLD_TASKS or (
            bool(self.tasks) and time.monotonic() - self.since >= HOLD_SECONDS
        )

    def take(self) -> list[RemoteTask]:
        """What is held, oldest change first; with a hierarchy, each parent that was listed (and
        changed) before its child still comes before it."""
        ordered = core.oldest_change_first(self.tasks)
        self.tasks = []
        return core.parents_first(ordered) if self.hierarchy else ordered


def _ready(
    moved: Sequence[RemoteTask],
    listed: set[str],
    linked: Mapping[str, Any],
    waiting: list[RemoteTask],
    waiting_ids: set[str],
) -> list[RemoteTask]:
    """A chunk's changed tasks that can be observed now. A new parent is linked before its
    children name it: a changed child whose parent is neither listed yet nor linked waits (added
    to `waiting`) for the end of the listing, and so does whatever names a task that waits (or is
    a later report of one)."""
    ready = []
    for task in core.parents_first(moved):
        parent = task.parent_id
        if task.remote_id in waiting_ids or (
            parent is not None and (parent in waiting_ids or (parent not in listed and parent not in linked))
        ):
            waiting.append(task)
            waiting_ids.add(task.remote_id)
        else:
            ready.append(task)
    return ready


async def _observe_all(
    ctx: EngineContext,
    route: Route,
    member: Member,
    tasks: Sequence[RemoteTask],
    hierarchy: bool,
    report: PollReport,
) -> None:
    """Observe `tasks` in short write transactions: the outbox's writers queue on the same lock,
    and a first poll of 10,000 new tasks in 100-task transactions kept them waiting for minutes.

    Which tasks hold a contested field, to be dated field by field (`date_contested`), was read
    when the listing arrived, perhaps some time ago, so the transaction looks again
    (`undated_contested`), and from the first task contested now but undated the batch
    waits (in order: a parent before its children): dated after the transaction, it is observed
    in the next (once; after that as it is)."""
    for i in range(0, len(tasks), WRITE_BATCH):
        batch = list(tasks[i : i + WRITE_BATCH])
        for last_try in (False, True):
            async with ctx.store.transaction() as session:
                undated = set() if last_try else await undated_contested(ctx, session, route, member, batch)
                waits = next((n for n, rt in enumerate(batch) if rt.remote_id in undated), len(batch))
                now, batch = batch[:waits], batch[waits:]
                parents = (
                    await linked_parents(session, route.name, member.connector, (rt.parent_id for rt in now))
                    if hierarchy
                    else None
                )
                await prefetch_links(session, member.connector, (rt.remote_id for rt in now))
                for rt in now:
                    if await observe(ctx, session, Observation(route, member, rt, "poll", parents)):
                        report.changed += 1
            if not batch:
                break
            batch = await date_contested(ctx, route, member, batch)


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
