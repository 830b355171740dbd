"""The outbox worker: claims operations, calls the platforms, records what was written.

Delivery promise: every queued operation is applied at least once, and its effect at most once:
- a claim expires (`claim_ttl`), so work held by a crashed worker or replica returns to the pool;
- operations on one link are applied in `id` order, one at a time: only the oldest unfinished
  operation of a link can be claimed (enforced by the claim query, on PostgreSQL with
  `FOR UPDATE SKIP LOCKED` so replicas never claim the same row);
- updates compute what to write when they run, from the canonical values and the link's base,
  so a repeat after a crash writes nothing or the same values again (idempotent);
- creates, the one non-idempotent write, carry the route's marker, and a repeated create first
  looks for its marker on the platform;
- a retryable failure (5xx, timeout) backs off exponentially with jitter; 429 waits for its
  Retry-After; a permanent failure (4xx) parks the operation with the platform's message, visible
  in the API and metrics, and never spins.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import aliased

from bridge import metrics
from bridge.engine.context import EngineContext
from bridge.engine.routes import Member, Route
from bridge.engine.sync import (
    DEFAULTS,
    NO_CLAIM,
    queue_updates,
    readable_values,
    side_roundtrip,
    stale_fields,
)
from bridge.model import Status, Values, decode_values, encode_values
from bridge.store.tables import CommentLinkRow, CommentRow, LinkRow, OutboxRow, TaskRow
from connectors.base import (
    AuthFailed,
    Connector,
    ConnectorError,
    NotFound,
    Permanent,
    RateLimited,
    RemoteTask,
    Retryable,
    writes_fail_fast,
)

log = logging.getLogger("taskbridge.outbox")


@dataclass(frozen=True)
class WorkerSettings:
    concurrency: int = 8  # operations in flight at once in this process
    claim_ttl: float = 120.0  # seconds a claim holds before another worker may take the operation
    batch: int = 16  # operations claimed per query
    idle_wait: float = 1.0  # longest sleep when there is nothing to do
    backoff: float = 1.0  # first retry delay; doubles per attempt, capped at max_backoff
    max_backoff: float = 300.0
    max_attempts: int = 25  # retryable failures before the operation is parked
    read_before_write: bool = True  # GET a task before updating it, so a fresh remote edit isn't lost


class PermanentOutcome(Exception):
    """An operation that cannot succeed as queued (e.g. its link vanished)."""


async def claim(ctx: EngineContext, settings: WorkerSettings, limit: int) -> list[int]:
    """Claim up to `limit` runnable operations for this replica; returns their ids."""
    now = ctx.now()
    async with ctx.store.transaction() as session:
        # Claims of crashed workers return to the pool.
        await session.execute(
            update(OutboxRow)
            .where(OutboxRow.state == "claimed", OutboxRow.claim_expires_at < now)
            .values(state="pending", claimed_by=None, claim_expires_at=None)
        )
        earlier = aliased(OutboxRow)
        query = (
            select(OutboxRow.id)
            .where(
                OutboxRow.state == "pending",
                OutboxRow.next_attempt_at <= now,
                ~exists().where(
                    and_(
                        earlier.link_id == OutboxRow.link_id,
                        earlier.id < OutboxRow.id,
                        earlier.state.in_(("pending", "claimed")),
                    )
                ),
            )
            .order_by(OutboxRow.id)
            .limit(limit)
        )
        if ctx.store.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True, of=OutboxRow)
        ids = list((await session.scalars(query)).all())
        if ids:
            await session.execute(
                update(OutboxRow)
                .where(OutboxRow.id.in_(ids))
                .values(
                    state="claimed",
                    claimed_by=ctx.replica,
                    claim_expires_at=now + timedelta(seconds=settings.claim_ttl),
                    attempts=OutboxRow.attempts + 1,
                )
            )
        return ids


class Worker:
    """Drains the outbox with bounded concurrency until stopped."""

    def __init__(self, ctx: EngineContext, settings: WorkerSettings | None = None) -> None:
        self.ctx = ctx
        self.settings = settings or WorkerSettings()
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._rng = random.Random()

    async def run(self) -> None:
        sem = asyncio.Semaphore(self.settings.concurrency)
        while not self._stopping.is_set():
            # Cleared before looking, so a wake-up that comes while we look is not lost.
            self.ctx.outbox_ready.clear()
            free = self.settings.concurrency - len(self._inflight)
            ids = await claim(self.ctx, self.settings, min(free, self.settings.batch)) if free > 0 else []
            for op_id in ids:
                await sem.acquire()
                task = asyncio.create_task(self._run_one(op_id, sem))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            if not ids:
                try:
                    await asyncio.wait_for(self.ctx.outbox_ready.wait(), timeout=self.settings.idle_wait)
                except TimeoutError:
                    pass
        await self.drain_inflight()

    async def _run_one(self, op_id: int, sem: asyncio.Semaphore) -> None:
        try:
            await execute(self.ctx, self.settings, op_id, self._rng)
        except Exception:
            log.exception("outbox operation %s failed unexpectedly", op_id)
            await release(self.ctx, op_id, error="internal error; see the daemon log", delay=30.0)
        finally:
            sem.release()
            self.ctx.outbox_ready.set()  # the next operation of this link may be runnable now

    def stop(self) -> None:
        self._stopping.set()
        self.ctx.outbox_ready.set()

    async def drain_inflight(self, grace: float = 30.0) -> None:
        """Let claimed work finish (graceful shutdown); what doesn't is released."""
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()

    async def run_until_idle(self, *, max_rounds: int = 10_000) -> int:
        """Apply everything runnable now, then return (for `sync --once` and tests)."""
        done = 0
        sem = asyncio.Semaphore(self.settings.concurrency)
        for _ in range(max_rounds):
            ids = await claim(self.ctx, self.settings, self.settings.batch)
            if not ids:
                break
            tasks = []
            for op_id in ids:
                await sem.acquire()
                tasks.append(asyncio.create_task(self._run_one(op_id, sem)))
            await asyncio.gather(*tasks)
            done += len(ids)
        return done


async def release(ctx: EngineContext, op_id: int, *, error: str, delay: float) -> None:
    async with ctx.store.transaction() as session:
        op = await session.get(OutboxRow, op_id)
        if op is not None and op.state == "claimed" and op.claimed_by == ctx.replica:
            op.state = "pending"
            op.claimed_by = None
            op.claim_expires_at = None
            op.last_error = error
            op.next_attempt_at = ctx.now() + timedelta(seconds=delay)


async def release_claims(ctx: EngineContext) -> int:
    """Give back every claim this replica holds (graceful shutdown)."""
    async with ctx.store.transaction() as session:
        result = await session.execute(
            update(OutboxRow)
            .where(OutboxRow.state == "claimed", OutboxRow.claimed_by == ctx.replica)
            .values(state="pending", claimed_by=None, claim_expires_at=None)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


@dataclass
class _Op:
    """What an operation needs, read in one short transaction before any platform call."""

    id: int
    op: str
    attempts: int
    payload: dict[str, Any]
    connector: str
    observed_at: datetime
    route: Route
    member: Member
    task: TaskRow
    link: LinkRow
    comment: CommentRow | None


async def execute(ctx: EngineContext, settings: WorkerSettings, op_id: int, rng: random.Random) -> None:
    async with ctx.store.read() as session:
        row = await session.get(OutboxRow, op_id)
        if row is None or row.state != "claimed" or row.claimed_by != ctx.replica:
            return
        task = await session.get(TaskRow, row.task_id)
        link = await session.get(LinkRow, row.link_id) if row.link_id is not None else None
        comment = await session.get(CommentRow, row.comment_id) if row.comment_id else None
        route = ctx.route(row.route)
        member = route.member(row.connector, link.scope) if route and link else None
        info = (row.id, row.op, row.attempts, dict(row.payload), row.connector, row.observed_at)
    if task is None or link is None or route is None or member is None or row.connector not in ctx.connectors:
        await finish(ctx, op_id, result="parked", error="its task, link, route or connector no longer exists")
        return
    op = _Op(*info, route=route, member=member, task=task, link=link, comment=comment)
    conn = ctx.connectors[op.connector]
    try:
        await _dispatch(ctx, conn, op, read_first=settings.read_before_write)
    except RateLimited as exc:
        metrics.writes.labels(op.connector, op.op, "rate_limited").inc()
        await release(ctx, op.id, error=str(exc), delay=exc.retry_after)
    except Retryable as exc:
        if op.attempts >= settings.max_attempts:
            metrics.writes.labels(op.connector, op.op, "parked").inc()
            await finish(ctx, op.id, result="parked", error=f"gave up after {op.attempts} attempts: {exc}")
            return
        metrics.writes.labels(op.connector, op.op, "retry").inc()
        delay = min(settings.max_backoff, settings.backoff * 2 ** (op.attempts - 1))
        await release(ctx, op.id, error=str(exc), delay=rng.uniform(delay / 2, delay))
    except NotFound as exc:
        if op.op in ("delete", "archive"):
            await finish(ctx, op.id, result="ok")  # already gone: the intent holds
            return
        metrics.writes.labels(op.connector, op.op, "parked").inc()
        await finish(ctx, op.id, result="parked", error=str(exc))
        from bridge.engine.poller import apply_remote_deletion

        if op.link.remote_id and op.op != "create":
            async with ctx.store.transaction() as session:
                await apply_remote_deletion(ctx, session, op.route, op.member, op.link.remote_id)
    except (Permanent, AuthFailed, PermanentOutcome) as exc:
        metrics.writes.labels(op.connector, op.op, "parked").inc()
        log.error("outbox %s %s on %s parked: %s", op.op, op.task.id, op.connector, exc)
        await finish(ctx, op.id, result="parked", error=str(exc))
    except ConnectorError as exc:
        metrics.writes.labels(op.connector, op.op, "parked").inc()
        await finish(ctx, op.id, result="parked", error=str(exc))


async def finish(ctx: EngineContext, op_id: int, *, result: str, error: str | None = None) -> None:
    async with ctx.store.transaction() as session:
        op = await session.get(OutboxRow, op_id)
        if op is None:
            return
        op.state = "done" if result == "ok" else "parked"
        op.last_error = error
        op.done_at = ctx.now()
        op.done_by = ctx.replica
        op.claimed_by = None
        op.claim_expires_at = None


async def _dispatch(ctx: EngineContext, conn: Connector, op: _Op, *, read_first: bool) -> None:
    if op.op == "create":
        await _create(ctx, conn, op)
    elif op.op == "update":
        await _update(ctx, conn, op, read_first=read_first)
    elif op.op == "delete":
        await _delete(ctx, conn, op)
    elif op.op == "archive":
        await _archive(ctx, conn, op)
    elif op.op == "comment":
        await _comment(ctx, conn, op)
    else:
        raise PermanentOutcome(f"unknown operation {op.op!r}")


def _writable_values(
    ctx: EngineContext, op: _Op, canonical: Values, names: list[str] | None = None
) -> Values:
    conn = ctx.connectors[op.connector]
    fields = names if names is not None else list(op.route.fields)
    out = {
        f: canonical.get(f, DEFAULTS[f])
        for f in fields
        if f in op.route.fields and op.member.writes(f) and f in conn.capabilities.writable
    }
    return out


async def _create(ctx: EngineContext, conn: Connector, op: _Op) -> None:
    if op.link.remote_id is not None:
        # An observation already found the mirror (by its marker): only reconcile.
        await _succeed(ctx, op, written={}, remote=None)
        return
    marker = op.route.marker.line(op.task.id)
    found: RemoteTask | None = None
    if op.attempts > 1:
        # An earlier attempt may have created it and died before recording the id.
        found = await conn.find_by_marker(op.member.scope, marker)
    canonical = decode_values(op.task.data)
    values = _writable_values(ctx, op, canonical)
    if found is None:
        remote_values = dict(values)
        if "description" in conn.capabilities.writable:
            remote_values["description"] = op.route.marker.add(
                str(canonical.get("description", "")), op.task.id
            )
        found = await conn.create_task(op.member.scope, remote_values)
        written = values  # the base keeps descriptions without the marker, as they read back
    else:
        written = {}
    await _succeed(ctx, op, written=written, remote=found)


async def _update(ctx: EngineContext, conn: Connector, op: _Op, *, read_first: bool) -> None:
    if op.link.remote_id is None:
        raise PermanentOutcome("the link has no remote id (its create never landed)")
    # Nothing but the read-before-write GET stands between that read and the write: the store's
    # work (what to write, the in-flight mark) comes first, and a write that cannot go out at
    # once fails rather than going out late (see writes_fail_fast), since anything edited there
    # in between would be overwritten.
    changes = await _planned(ctx, op)
    if changes:
        await _mark_inflight(ctx, conn, op, changes)
    if changes and read_first and await _observe_before_write(ctx, conn, op):
        # The side changed since it last agreed with us: that change is merged first (it may
        # win, or hold a conflict), and the write goes out with what is true now.
        async with ctx.store.read() as session:
            task = await session.get(TaskRow, op.task.id)
            link = await session.get(LinkRow, op.link.id)
        if task is None or link is None or link.state != "active":
            await _succeed(ctx, op, written={}, remote=None)
            return
        op.task, op.link = task, link
        planned, changes = changes, await _planned(ctx, op)
        if changes and changes != planned:
            await _mark_inflight(ctx, conn, op, changes)
    if not changes:
        await _succeed(ctx, op, written={}, remote=None)
        return
    remote_changes = dict(changes)
    if "description" in changes and op.link.is_mirror:
        remote_changes["description"] = op.route.marker.add(str(changes["description"]), op.task.id)
    with writes_fail_fast():
        after = await conn.update_task(op.member.scope, op.link.remote_id, remote_changes)
    # Its time, not its values: a listing fetched before this write must read as older than it.
    await _succeed(ctx, op, written=changes, remote=None, remote_time=after.updated_at)


async def _planned(ctx: EngineContext, op: _Op) -> Values:
    """The values this update would write now: the fields it was queued for that still differ."""
    canonical = decode_values(op.task.data)
    stale = stale_fields(
        ctx, op.route, op.member, canonical, decode_values(op.link.base), await _held(ctx, op.task.id)
    )
    wanted = [f for f in op.payload.get("fields", stale) if f in stale]
    return _writable_values(ctx, op, canonical, wanted)


async def _mark_inflight(ctx: EngineContext, conn: Connector, op: _Op, changes: Values) -> None:
    """Record what is about to be written, as it will read back, before writing it: the platform
    may report the change (a webhook, a poll) before `_succeed` commits the new base, and that
    report is our echo, not someone's edit."""
    shown = {f: side_roundtrip(conn, f, v) for f, v in changes.items()}
    async with ctx.store.transaction() as session:
        link = await session.get(LinkRow, op.link.id)
        if link is not None:
            link.inflight = encode_values({f: v for f, v in shown.items() if v is not NO_CLAIM})


async def _observe_before_write(ctx: EngineContext, conn: Connector, op: _Op) -> bool:
    """GET the remote task and observe it when it moved since its base: without this, a write
    would overwrite an edit made there since the last poll (a lost update). Returns True when
    the side had moved."""
    from bridge.engine.sync import Observation, observe

    assert op.link.remote_id is not None
    current = await conn.get_task(op.member.scope, op.link.remote_id)
    seen, _ = readable_values(ctx, op.route, op.member, current)
    base = decode_values(op.link.base)
    if all(base.get(f) == v for f, v in seen.items()):
        return False
    async with ctx.store.transaction() as session:
        await observe(ctx, session, Observation(op.route, op.member, current, "poll"))
    return True


async def _held(ctx: EngineContext, task_id: str) -> set[str]:
    from bridge.engine.sync import held_fields

    async with ctx.store.read() as session:
        return await held_fields(session, task_id)


async def _delete(ctx: EngineContext, conn: Connector, op: _Op) -> None:
    if op.link.remote_id is None:
        await _succeed(ctx, op, written={}, remote=None)
        return
    if conn.capabilities.delete:
        await conn.delete_task(op.member.scope, op.link.remote_id)
        await _succeed(ctx, op, written={}, remote=None, link_state="gone")
    else:
        await _archive(ctx, conn, op)


async def _archive(ctx: EngineContext, conn: Connector, op: _Op) -> None:
    """Archive where the platform can; else close (status cancelled, as the mapping writes it)."""
    if op.link.remote_id is None:
        await _succeed(ctx, op, written={}, remote=None)
        return
    if conn.capabilities.archive:
        await conn.archive_task(op.member.scope, op.link.remote_id)
        written: Values = {"archived": True}
    else:
        written = {}
    if "status" in conn.capabilities.writable:
        await conn.update_task(op.member.scope, op.link.remote_id, {"status": Status.CANCELLED})
        written["status"] = Status.CANCELLED
    await _succeed(ctx, op, written=written, remote=None, link_state="gone")


async def _comment(ctx: EngineContext, conn: Connector, op: _Op) -> None:
    from bridge.engine.comments import mirror_comment

    await mirror_comment(ctx, conn, op)
    await _succeed(ctx, op, written={}, remote=None)


async def _succeed(
    ctx: EngineContext,
    op: _Op,
    *,
    written: Values,
    remote: RemoteTask | None,
    link_state: str | None = None,
    remote_time: datetime | None = None,
) -> None:
    """Record a successful write: the link's new base is what was written as it round-trips
    there (for a create, what the platform reported for the rest), then queue whatever still
    differs, and close the operation."""
    conn = ctx.connectors[op.connector]
    now = ctx.now()
    async with ctx.store.transaction() as session:
        link = await session.get(LinkRow, op.link.id)
        task = await session.get(TaskRow, op.task.id)
        row = await session.get(OutboxRow, op.id)
        if link is None or task is None or row is None:
            return
        base = decode_values(link.base)
        if remote is not None:
            reported, _ = readable_values(ctx, op.route, op.member, remote)
            base = {**base, **reported}
            if link.remote_id is None:
                link.remote_id = remote.remote_id
                link.remote_url = remote.url
                link.remote_updated_at = remote.updated_at
            link.state = "active"
        for name, value in written.items():
            if name in op.route.fields and name in conn.capabilities.fields:
                shown = side_roundtrip(conn, name, value)
                if shown is not NO_CLAIM:
                    base[name] = shown
        link.base = encode_values(base)
        link.inflight = None
        if remote_time is not None and (
            link.remote_updated_at is None or remote_time > link.remote_updated_at
        ):
            link.remote_updated_at = remote_time
        link.updated_at = now
        if link_state is not None:
            link.state = link_state
        row.state = "done"
        row.done_at = now
        row.done_by = ctx.replica
        row.claimed_by = None
        row.claim_expires_at = None
        row.last_error = None
        await session.flush()
        if link.state == "active":
            await queue_updates(ctx, session, op.route, task, observed_at=op.observed_at)
        waiting = await session.scalar(
            select(func.count())
            .select_from(OutboxRow)
            .where(
                OutboxRow.task_id == op.task.id,
                OutboxRow.observed_at == op.observed_at,
                OutboxRow.state.in_(("pending", "claimed")),
            )
        )
    metrics.writes.labels(op.connector, op.op, "ok").inc()
    if not waiting:
        metrics.propagation.labels(op.route.name).observe(max(0.0, (now - op.observed_at).total_seconds()))


async def comment_link_exists(ctx: EngineContext, comment_id: str, connector: str) -> bool:
    async with ctx.store.read() as session:
        return (
            await session.scalar(
                select(CommentLinkRow.id).where(
                    CommentLinkRow.comment_id == comment_id,
                    CommentLinkRow.connector == connector,
                    CommentLinkRow.state == "active",
                )
            )
        ) is not None
