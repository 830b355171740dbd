"""The outbox worker: claims operations, calls the platforms, records what was written.

Delivery promise: every queued operation is applied at least once, and its effect at most once:
- a claim expires (`claim_ttl`), so work held by a crashed worker or replica returns to the pool;
  a live worker renews the claims it holds (writes in flight, and those claimed ahead of a free
  slot) every third of it, so a slow write is never taken by another worker and sent twice;
- operations on one link are applied in `id` order, one at a time: only the oldest unfinished
  operation of a link can be claimed (enforced by the claim query, on PostgreSQL with
  `FOR UPDATE SKIP LOCKED` so replicas never claim the same row);
- updates compute what to write from the canonical values and the link's base, so a repeat after
  a crash writes nothing or the same values again (idempotent);
- creates, the one non-idempotent write, carry the route's marker, and a repeated create first
  looks for its marker on the platform; a repeated comment first looks for its text among ours;
- where a platform creates many tasks in one request (`capabilities.bulk_create`), creates of one
  scope never tried before go out together (`bulk_creates` at most; a claim that takes one takes
  more). The request is all or nothing: refused (`BulkRefused`: nothing created), each is sent
  alone, so only a refused value parks its task; any other failure is each one's, as if each
  had been sent alone, so each retry looks for its marker (the looks of retries that ask at
  once go out as one request, begun after all of them asked: bridge/engine/lookups.py);
- a child never waits for its parent, and never goes out under a parent that is not there: the
  parent a create or update writes is settled with its claim (`_settle_parents`, from
  `core.parent_hold`). Where the parent has no copy on the target yet (its create pending or in
  flight: the creates of a parent and its children run side by side), a child's create goes out
  top level, which its link's base records, and an update leaves `parent` out. When the parent's
  create is recorded, the committer queues the update of its children there (one read of the
  route's tasks by parent, only where `parent` is written), which writes the parent; a child
  recorded after that finds the parent's copy itself. (Deferring the child instead would hold
  it behind a parent's create that may back off for long, or park.) A parent that would make a
  task its own ancestor is never written: refused when the bridge's own hierarchy loops (logged
  once), held while the target still shows the task above its new parent until that other move
  is recorded, which queues the moved task's descendants again;
- a retryable failure (5xx, timeout, a 429 without Retry-After) backs off exponentially with
  jitter and parks after `max_attempts`; a 429 with Retry-After waits for it and costs an update,
  delete or archive no attempt (repeating those is harmless, so attempts count what failed; a
  create or comment keeps it, since its next attempt must look for what an earlier request of
  the same write may have made, and waits at least `landing_wait` before it looks, since the
  platform may still be applying a request the daemon stopped waiting for); a permanent failure
  (4xx) parks the operation with the platform's message, visible in the API and metrics, and never
  spins; an unforeseen error parks after `max_unexpected` attempts, and so does an outcome
  whose record fails alone every time (it runs again at each claim's expiry until then). A 404
  on a write is a deletion only when a GET and a complete listing agree;
- a person's retry of a parked operation gives it a fresh budget, and a create or comment that
  ran still looks first: it may have landed before it parked.

How the store is used, and why that keeps the promise. One transaction claims a batch of
operations, loads everything they need (tasks, links, comments, open conflicts) and, for each
update, records the write about to go out on its link (`inflight`, so that the platform reporting
it before we record it is known for our echo; kept beside earlier writes whose outcome was never
recorded, which may have landed too). Then each operation talks to its platform with no
store work in between. What each one ended with (written, retry later, parked) is recorded by a
group commit: finished operations queue for the committer (giving their slot to the next write;
their claims hold until the record commits), which applies every outcome waiting in one
transaction (a new base, the operation closed, whatever the task still needs queued). A crash
after a write but before its commit loses only the record of it: the claim expires, and the
repeat writes what is true by then. A field the lost write may have set otherwise (its claim is
kept until a write's outcome is recorded) is written again, and the side showing the lost
write's value is known for our echo, never taken for an edit there.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, Select, and_, bindparam, case, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from bridge import metrics
from bridge.config import WorkersConfig
from bridge.defaults import (
    DEFAULT_BACKOFF,
    DEFAULT_BULK_CREATES,
    DEFAULT_CLAIM_BATCH,
    DEFAULT_CLAIM_TTL,
    DEFAULT_CONCURRENCY,
    DEFAULT_IDLE_WAIT,
    DEFAULT_LANDING_WAIT,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_UNEXPECTED,
    DEFAULT_STOP_GRACE,
    DEFAULT_UNEXPECTED_ERROR_DELAY,
)
from bridge.engine import core, health
from bridge.engine.comments import mirror_comment
from bridge.engine.context import Answered, EngineContext
from bridge.engine.lookups import MarkerLookups
from bridge.engine.routes import Member, Route
from bridge.engine.sync import (
    MAX_DEPTH,
    Hierarchy,
    Observation,
    apply_remote_deletion,
    children_of,
    claim_write,
    claimed_inflight,
    date_contested,
    encode_overwritten,
    held_fields,
    held_fields_many,
    link_claims,
    links_holding,
    load_hierarchy,
    log_loop_once,
    mark_gone_from_view,
    observe,
    queue_updates_many,
    release_reused,
    undated_contested,
)
from bridge.logs import log_context
from bridge.model import Status, Values, as_utc, decode_values, encode_values
from bridge.store import RefusalLog, StoreLost, on_commit
from bridge.store.prepared import (
    any_of,
    by_ids,
    copies,
    loaded,
    one_of,
    rows_in,
    run,
    show_stored,
    update_columns,
)
from bridge.store.states import LOOKS_FIRST, LinkState, OpKind, OpState, advance
from bridge.store.tables import CommentLinkRow, CommentRow, LinkRow, OutboxRow, TaskRow
from connectors.base import (
    AuthFailed,
    BulkRefused,
    Connector,
    ConnectorError,
    GoneFromView,
    NotFound,
    Permanent,
    RateLimited,
    RemoteTask,
    Retryable,
    writes_fail_fast,
)

log = logging.getLogger("taskbridge.outbox")

COMMIT_LINGER = 0.005  # seconds the committer waits for more outcomes before a transaction
COMMIT_BATCH = 32  # outcomes that commit at once, without waiting for more
RELEASE_EVERY = 5.0  # seconds between a worker's looks for expired claims
# Operations claimed and not yet recorded, per slot: one waiting for the slot, one at the
# platform, one waiting for the committer. Fewer, and the claims shrink whenever records lag.
UNRECORDED_PER_SLOT = 3
# Seconds an operation claimed ahead may wait for a slot (a quarter of claim_ttl when that is
# shorter). Every slot busy that long (a platform hanging): what waits is given back for other
# replicas and the slots' next claims, and nothing more is claimed ahead until a slot frees.
READY_WAIT = 5.0
# Seconds a connector's creates go one at a time after it refused a bulk request whose creates
# then all landed alone: the refusal was the bulk path's own (a server without the tool, a
# proxy's size limit), not an item's, and every group would pay it again, its creates then
# sent one after another in one slot.
BULK_OFF_AFTER_REFUSAL = 600.0
WRITTEN_KEPT = 10_000  # changes whose writes so far the committer remembers, for their log line


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    concurrency: int = DEFAULT_CONCURRENCY  # writes at the platforms at once in this process
    claim_ttl: float = DEFAULT_CLAIM_TTL  # seconds a claim holds before another worker may take it
    batch: int = DEFAULT_CLAIM_BATCH  # operations claimed per query
    # First attempts of creates on one scope sent in one request where the platform can (at most
    # its `bulk_create`); a claim that takes one takes more of them with it. 1: one at a time.
    bulk_creates: int = DEFAULT_BULK_CREATES
    idle_wait: float = DEFAULT_IDLE_WAIT  # longest sleep when there is nothing to do
    backoff: float = DEFAULT_BACKOFF  # first retry delay; doubles per attempt, capped at max_backoff
    max_backoff: float = DEFAULT_MAX_BACKOFF
    max_attempts: int = DEFAULT_MAX_ATTEMPTS  # failed attempts before the operation is parked
    # A failure nobody foresaw (a bug, not the platform): retried slowly and parked soon, since
    # it will most likely fail the same way, and later writes of its task absorb into it.
    unexpected_delay: float = DEFAULT_UNEXPECTED_ERROR_DELAY
    max_unexpected: int = DEFAULT_MAX_UNEXPECTED
    # The least wait before a create or comment that may have landed is looked for.
    landing_wait: float = DEFAULT_LANDING_WAIT
    read_before_write: bool = True  # GET a task before updating it, so a fresh remote edit isn't lost

    @classmethod
    def from_config(cls, workers: WorkersConfig, **overrides: Any) -> WorkerSettings:
        """The settings a config's `workers:` section names; the rest keep their defaults."""
        return cls(
            concurrency=workers.concurrency,
            claim_ttl=workers.claim_ttl,
            bulk_creates=workers.bulk_creates,
            **overrides,
        )


class PermanentOutcome(Exception):
    """An operation that cannot succeed as queued (e.g. its link vanished)."""


@dataclass
class _Op:
    """An operation with everything it needs, loaded in its claim's transaction."""

    id: int
    op: OpKind
    attempts: int
    payload: dict[str, Any]
    connector: str
    observed_at: datetime
    queued_at: datetime  # its row's creation: no attempt of it came earlier
    route: Route
    member: Member
    # Copies of the rows (`prepared.copies`) as the claim read them, or as read again after an
    # edit found there was merged (`_after_remote_edit`): the committer loads what it writes.
    task: Any
    link: Any
    comment: CommentRow | None = None
    comment_remote_id: str | None = None  # the comment's mirror there, when already posted
    planned: Values = field(default_factory=dict)  # an update's changes, marked in flight
    # The hierarchy, settled at the claim (`_settle_parents`): the planned parent's id there; a
    # create whose parent has no copy there yet (it goes out top level); and remote ids there ->
    # bridge tasks, for the read before an update to translate the parent it finds.
    parent_ref: str | None = None
    parent_held: bool = False
    parents: dict[str, str] | None = None


@dataclass
class _Orphan:
    """A claimed operation whose task, link, route or connector no longer exists."""

    id: int
    op: str
    connector: str


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How one attempt at an operation ended, to be recorded by the committer.

    `state` DONE records a success: `written` (None: the link is left as it is) moves the link's
    base, `remote` is what a create's platform answered. PENDING gives the operation back for a
    retry after `delay` seconds; PARKED sets it aside with `error` for a person."""

    state: OpState
    result: str  # the writes metric's label: ok | retry | rate_limited | parked
    error: str | None = None
    delay: float = 0.0
    written: Values | None = None
    remote: RemoteTask | None = None
    link_state: LinkState | None = None
    remote_time: datetime | None = None
    read_time: datetime | None = None  # the side's own time, as the read before the write saw it
    read_base: Values | None = None  # the written fields as the side agreed them at that read
    comment_remote_id: str | None = None
    remote_deleted: bool = False  # the platform said the task is gone: apply the route's policy
    gone_from_view: bool = False  # the task left the credential's view: unlink, delete nothing
    connector_error: str | None = None  # a failure of the connector, not of this task (its health)
    connector_error_certain: bool = False  # true at once (a refused credential), not maybe passing
    # False when the platform deferred the work (a 429 with Retry-After: not processed, try at
    # that time) and repeating it is harmless: the claim's attempt is given back, so a throttle
    # neither grows the backoff of the next real failure nor brings the operation closer to
    # being parked. Never for a create or comment (see `execute`).
    attempt_spent: bool = True


def _done(
    written: Values | None,
    *,
    remote: RemoteTask | None = None,
    link_state: LinkState | None = None,
    remote_time: datetime | None = None,
    read_time: datetime | None = None,
    read_base: Values | None = None,
    comment_remote_id: str | None = None,
) -> Outcome:
    return Outcome(
        state=OpState.DONE,
        result="ok",
        written=written,
        remote=remote,
        link_state=link_state,
        remote_time=remote_time,
        read_time=read_time,
        read_base=read_base,
        comment_remote_id=comment_remote_id,
    )


def _parked(error: str, *, remote_deleted: bool = False) -> Outcome:
    return Outcome(state=OpState.PARKED, result="parked", error=error, remote_deleted=remote_deleted)


def _retry(settings: WorkerSettings, attempts: int, error: str, rng: random.Random) -> Outcome:
    if attempts >= settings.max_attempts:
        return _parked(f"gave up after {attempts} attempts: {error}")
    delay = min(settings.max_backoff, settings.backoff * 2 ** (attempts - 1))
    return Outcome(state=OpState.PENDING, result="retry", error=error, delay=rng.uniform(delay / 2, delay))


# -- claiming ------------------------------------------------------------------------------------


_OUTBOX = OutboxRow.__table__
# The claim's statements, built once: an ORM statement costs more to build (and to key for the
# compiled cache) than to run on SQLite, and the claim is the hottest statement of the daemon.
_RELEASE_EXPIRED = (
    update(_OUTBOX)
    .where(_OUTBOX.c.state == OpState.CLAIMED, _OUTBOX.c.claim_expires_at < bindparam("now"))
    .values(state=OpState.PENDING, claimed_by=None, claim_expires_at=None)
)
_MARK_CLAIMED = (
    update(OutboxRow)
    .where(any_of(OutboxRow.id))
    .values(
        state=OpState.CLAIMED,
        claimed_by=bindparam("replica"),
        claim_expires_at=bindparam("expires"),
        attempts=OutboxRow.attempts + 1,
    )
    .execution_options(synchronize_session=False)
)


# The claimed operations' rows, as plain rows: nothing of them changes in the claim's transaction.
_CLAIMED_ROWS = select(_OUTBOX).where(any_of(_OUTBOX.c.id))


_LINKS = LinkRow.__table__


@functools.cache
def _runnable(
    *, within: bool, skip_locked: bool, first_creates: bool = False
) -> Select[tuple[int, str, str, int]]:
    """Runnable operations (id, connector, op, attempts): pending, due, and the oldest unfinished
    one of their link; the longest due first. Ordered as `ix_outbox_claimable` reads them, so the
    claim stops after `limit` hits rather than sorting every due operation (a backfill queues tens
    of thousands). `first_creates`: only creates never tried, of one connector (`:connector`)."""
    earlier = aliased(OutboxRow)
    query = (
        select(OutboxRow.id, OutboxRow.connector, OutboxRow.op, OutboxRow.attempts)
        .where(
            OutboxRow.state == OpState.PENDING,
            OutboxRow.next_attempt_at <= bindparam("now"),
            ~exists().where(
                and_(
                    earlier.link_id == OutboxRow.link_id,
                    earlier.id < OutboxRow.id,
                    one_of(earlier.state, (OpState.PENDING, OpState.CLAIMED)),
                )
            ),
        )
        .order_by(OutboxRow.next_attempt_at, OutboxRow.id)
        .limit(bindparam("limit", type_=Integer))
    )
    if within:
        query = query.where(OutboxRow.id.between(bindparam("first"), bindparam("last")))
    if first_creates:
        query = query.where(
            OutboxRow.connector == bindparam("connector"),
            OutboxRow.op == OpKind.CREATE,
            OutboxRow.attempts == 0,
        )
    if skip_locked:
        query = query.with_for_update(skip_locked=True, of=OutboxRow)
    return query


async def claim(
    ctx: EngineContext,
    settings: WorkerSettings,
    limit: int,
    *,
    within: tuple[int, int] | None = None,
    release_expired: bool = True,
    bulk_creates: int = 1,
    bulk_off: frozenset[str] = frozenset(),
) -> list[_Op | _Orphan]:
    """Claim up to `limit` runnable operations for this replica, with what they need loaded and
    each update's write marked in flight, in one transaction. `within` (first, last) claims only
    operations whose id lies in that range: those a plan queued (`plan --apply`).
    `release_expired`: first return expired claims (a crashed worker's) to the pool.
    `bulk_creates` > 1: where the claim takes the first attempt of a create on a connector with a
    bulk create, it takes more such creates of that connector, up to that many in all (or the
    connector's `bulk_create`), for the worker to send together; not for the connectors in
    `bulk_off`."""
    now = ctx.now()
    skip_locked = ctx.store.dialect == "postgresql"
    async with ctx.store.transaction() as session:
        if release_expired:
            await run(session, _RELEASE_EXPIRED, {"now": now})
        query = _runnable(within=within is not None, skip_locked=skip_locked)
        params: dict[str, Any] = {"now": now, "limit": limit}
        if within is not None:
            params["first"], params["last"] = within
        rows = (await run(session, query, params)).all()
        if not rows:
            return []
        ids = [r.id for r in rows]
        if bulk_creates > 1 and within is None:
            taken = set(ids)
            for connector, request in _bulk_requests(ctx, rows, bulk_creates, bulk_off).items():
                # The same order as the claim's, so this begins with the creates it took (still
                # pending in this transaction) and goes on with the next ones.
                more = _runnable(within=False, skip_locked=skip_locked, first_creates=True)
                found = await run(session, more, {"now": now, "limit": request, "connector": connector})
                ids.extend(r.id for r in found if r.id not in taken)
        await run(
            session,
            _MARK_CLAIMED,
            {
                "ids": ids,
                "replica": ctx.replica,
                "expires": now + timedelta(seconds=settings.claim_ttl),
            },
        )
        return await _load(ctx, session, ids)


def _bulk_requests(
    ctx: EngineContext, rows: Sequence[Any], most: int, off: frozenset[str] = frozenset()
) -> dict[str, int]:
    """Connector -> the creates one of its bulk requests takes (at most `most`), for each
    connector with a bulk create of which `rows` (claimed) hold a never-tried create, fewer than that."""
    have: dict[str, int] = {}
    for r in rows:
        if r.op == OpKind.CREATE and r.attempts == 0 and r.connector not in off:
            have[r.connector] = have.get(r.connector, 0) + 1
    requests: dict[str, int] = {}
    for name, count in have.items():
        request = min(most, _bulk_size(ctx, name))
        if count < request:
            requests[name] = request
    return requests


async def _load(ctx: EngineContext, session: AsyncSession, ids: Sequence[int]) -> list[_Op | _Orphan]:
    rows = sorted((await run(session, _CLAIMED_ROWS, by_ids(ids))).all(), key=lambda r: r.id)
    task_ids = {r.task_id for r in rows}
    link_ids = {r.link_id for r in rows if r.link_id is not None}
    comment_ids = {r.comment_id for r in rows if r.comment_id}
    # Copies, not objects of the session: the worker only reads them, and the committer loads
    # what it writes afresh.
    tasks = {t.id: t for t in await copies(session, TaskRow, task_ids)}
    links = {x.id: x for x in await copies(session, LinkRow, link_ids)}
    comments: dict[str, CommentRow] = {}
    posted: dict[tuple[str, str], str] = {}
    if comment_ids:
        comments = {c.id: c for c in (await session.scalars(rows_in(CommentRow), by_ids(comment_ids))).all()}
        for clink in (
            await session.scalars(rows_in(CommentLinkRow, "comment_id"), by_ids(comment_ids))
        ).all():
            if clink.remote_id is not None:
                posted[(clink.comment_id, clink.connector)] = clink.remote_id
    held = await held_fields_many(session, list(task_ids))
    out: list[_Op | _Orphan] = []
    for row in rows:
        task = tasks.get(row.task_id)
        link = links.get(row.link_id) if row.link_id is not None else None
        route = ctx.route(row.route)
        member = route.member(row.connector, link.scope) if route and link else None
        conn = ctx.connectors.get(row.connector)
        if task is None or link is None or route is None or member is None or conn is None:
            out.append(_Orphan(row.id, row.op, row.connector))
            continue
        op = _Op(
            id=row.id,
            op=OpKind(row.op),
            attempts=row.attempts,
            payload=dict(row.payload),
            connector=row.connector,
            observed_at=row.observed_at,
            queued_at=row.created_at,
            route=route,
            member=member,
            task=task,
            link=link,
            comment=comments.get(row.comment_id) if row.comment_id else None,
            comment_remote_id=posted.get((row.comment_id, row.connector)) if row.comment_id else None,
        )
        if op.op == OpKind.UPDATE and link.remote_id is not None:
            op.planned = _plan(conn, op, held.get(task.id, set()))
        out.append(op)
    await _settle_parents(ctx, session, [op for op in out if isinstance(op, _Op)])
    marks: list[dict[str, Any]] = []
    for op in out:
        if isinstance(op, _Op) and op.op == OpKind.UPDATE and op.planned:
            inflight = claimed_inflight(ctx.connectors[op.connector], op.link, op.planned)
            # The in-flight marks of the batch as one statement; the operation's copy of its
            # link shows its mark.
            op.link = op.link._replace(inflight=inflight)
            marks.append({"row_id": op.link.id, "inflight": inflight})
    if marks:
        await run(session, update_columns(_LINKS, ("inflight",)), marks)
    return out


async def _settle_parents(ctx: EngineContext, session: AsyncSession, ops: Sequence[_Op]) -> None:
    """The parent each create or update writes, settled for a batch in a few reads (`load_hierarchy`):
    translated to the target's id; or held where `core.parent_hold` says it cannot be written
    (a create then goes out top level, an update without it). An update whose side reads parents
    also learns the ids its read before the write may find there."""
    wanted: list[_Op] = []
    for op in ops:
        conn = ctx.connectors[op.connector]
        if op.op not in (OpKind.CREATE, OpKind.UPDATE):
            continue
        if core.writes_parent(conn, op.route, op.member) or core.reads_parent(conn, op.route, op.member):
            wanted.append(op)
    if not wanted:
        return
    starts = {op.task.data.get("parent") for op in wanted} | {op.link.base.get("parent") for op in wanted}
    hierarchy = await load_hierarchy(session, starts, {op.member.key for op in wanted})
    for op in wanted:
        _settle_parent(ctx, op, hierarchy)


def _settle_parent(ctx: EngineContext, op: _Op, hierarchy: Hierarchy) -> None:
    conn = ctx.connectors[op.connector]
    target = op.member.key
    op.parents = {remote_id: task_id for task_id, remote_id in hierarchy.remote_ids(target).items()}
    parent = op.task.data.get("parent")
    if op.op == OpKind.CREATE:
        if not core.writes_parent(conn, op.route, op.member):
            return
        hold = hierarchy.hold(op.task.id, parent, target)
        op.parent_held = hold is not None
        op.parent_ref = None if hold is not None else hierarchy.remote_parent(parent, target)
    elif "parent" in op.planned:
        parent = op.planned["parent"]
        hold = hierarchy.hold(op.task.id, parent, target)
        if hold is None:
            op.parent_ref = hierarchy.remote_parent(parent, target)
            return
        op.planned = {k: v for k, v in op.planned.items() if k != "parent"}
    else:
        return
    if hold == "loop":
        log_loop_once(op.task.id, parent, op.connector)


def _plan(conn: Connector, op: _Op, held: set[str]) -> Values:
    return core.plan_update(
        conn,
        op.route,
        op.member,
        decode_values(op.task.data),
        decode_values(op.link.base),
        held,
        op.payload.get("fields"),
        link_claims(op.link),
    )


# -- the worker ----------------------------------------------------------------------------------


class Worker:
    """Drains the outbox with bounded concurrency until stopped."""

    def __init__(self, ctx: EngineContext, settings: WorkerSettings | None = None) -> None:
        self.ctx = ctx
        self.settings = settings or WorkerSettings()
        self.committer = Committer(ctx, max_unexpected=self.settings.max_unexpected)
        self._stopping = asyncio.Event()
        self._grace = DEFAULT_STOP_GRACE  # seconds a stop gives the writes in flight
        self._inflight: set[asyncio.Task[None]] = set()  # started, until their outcome is recorded
        # Of those, the ones talking to their platform: `concurrency` bounds these. An outcome
        # waiting for the committer's transaction holds no slot (it held one through the group
        # commit's linger and transaction: a third of a backfill's create in flight, 2026-12-06),
        # but it still holds its claim.
        self._sending = 0
        # Claimed ahead, waiting for a slot: a write that lands starts the next at once, not after
        # a claim's transaction (claimed only once half the slots were free, slots sat empty in
        # between). At most `concurrency` wait here, and at most UNRECORDED_PER_SLOT times that
        # many operations are claimed and unrecorded in all.
        self._ready: collections.deque[_Op | _Orphan] = collections.deque()
        self._ahead = True  # claims may run ahead of the slots (false once what waited was given back)
        self._claimed: dict[int, float] = {}  # operation id -> when its claim was last set (monotonic)
        # The last claim may have left runnable work behind (it took all it asked for, or had no
        # slot free): a finished operation then wakes the loop. Otherwise what wakes it is new
        # work (queued on commit) or a finished operation's successor (the committer's check):
        # a wake-up per finished write claimed nothing three times in four (2026-12-03).
        self._more = False
        self._next_release = 0.0  # monotonic time of the next look for expired claims
        self._rng = random.Random()
        self._bulk_off: dict[str, float] = {}  # connector -> monotonic time its bulk creates resume
        self._lookups = MarkerLookups()  # retried creates' looks for their markers, shared
        self._claim_refusals = RefusalLog(log, "claiming outbox operations")
        self._renew_refusals = RefusalLog(log, "renewing outbox claims")

    async def run(self) -> None:
        renewer = asyncio.create_task(self._renew_claims(), name="outbox-claims")
        try:
            await self._loop()
        finally:
            renewer.cancel()
        await self._give_back_ready()
        await self.drain_inflight()

    async def _renew_claims(self) -> None:
        """Extend the claims of writes still in flight, so a slow write is never taken by another
        worker (its claim expired) and sent a second time. One statement for all of them, every
        third of claim_ttl."""
        every = self.settings.claim_ttl / 3
        while True:
            await asyncio.sleep(every)
            due = [i for i, at in self._claimed.items() if time.monotonic() - at >= every]
            if not due:
                continue
            try:
                await renew_claims(self.ctx, due, self.settings.claim_ttl)
            except StoreLost:
                return
            except Exception as exc:  # the store failing: the next round tries again, claims permitting
                if not self._renew_refusals.failed(exc):
                    log.exception("renewing %d outbox claims failed", len(due))
                continue
            self._renew_refusals.succeeded()
            now = time.monotonic()
            for i in due:
                if i in self._claimed:
                    self._claimed[i] = now

    async def _loop(self) -> None:
        concurrency = self.settings.concurrency
        # A claim is a write transaction: while work is in flight, claim once half the queue
        # can be refilled (or a batch, when that is less) rather than one operation per write.
        worth_claiming = min(max(1, concurrency // 2), self.settings.batch)
        ready_wait = min(READY_WAIT, self.settings.claim_ttl / 4)
        while not self._stopping.is_set():
            # Cleared before looking, so a wake-up that comes while we look is not lost.
            self.ctx.outbox_ready.clear()
            self._start_ready()
            if self._ready and self._ready_waited() >= ready_wait:
                self._ahead = False
                await self._give_back_ready()
            room = UNRECORDED_PER_SLOT * concurrency - len(self._inflight) - len(self._ready)
            queue = concurrency if self._ahead else concurrency - self._sending
            asked = min(queue - len(self._ready), room, self.settings.batch)
            claiming = asked >= worth_claiming or (asked > 0 and not self._inflight)
            ops = await self._claim(asked) if claiming else []
            # Runnable work may be left: no claim for want of room, or one that took all it asked.
            self._more = not claiming or len(ops) >= asked
            claimed_at = time.monotonic()
            for op in ops:
                self._claimed[op.id] = claimed_at
            self._ready.extend(ops)
            if self._stopping.is_set():
                break  # stopped during the claim: what it took is given back, none of it started
            self._start_ready()
            if not self._more or not claiming:  # nothing left to claim now: what comes next sets the event
                timeout = self.settings.idle_wait
                if self._ready:  # every slot busy: look again when the first of these has waited enough
                    timeout = min(timeout, max(0.0, ready_wait - self._ready_waited()))
                try:
                    await asyncio.wait_for(self.ctx.outbox_ready.wait(), timeout=timeout)
                except TimeoutError:
                    pass

    def _ready_waited(self) -> float:
        """Seconds the first operation claimed ahead has waited for a slot (`_ready` not empty)."""
        return time.monotonic() - self._claimed.get(self._ready[0].id, 0.0)

    def _start_ready(self) -> None:
        """Start what was claimed ahead, in the slots free: one operation a slot, or the creates
        that go out as one bulk request."""
        while self._ready and self._sending < self.settings.concurrency:
            ops = self._together(self._ready.popleft())
            self._sending += 1
            task = asyncio.create_task(self._run(ops, self._sent))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            task.add_done_callback(lambda _, ids=[op.id for op in ops]: self._forget(ids))

    def _bulk_refused(self, connector: str) -> None:
        log.warning(
            "%s refused a bulk create whose tasks were then each created alone: its creates go one at a "
            "time for %d s",
            connector,
            BULK_OFF_AFTER_REFUSAL,
        )
        self._bulk_off[connector] = time.monotonic() + BULK_OFF_AFTER_REFUSAL

    def _bulk_paused(self) -> frozenset[str]:
        now = time.monotonic()
        return frozenset(name for name, until in self._bulk_off.items() if until > now)

    def _forget(self, ids: list[int]) -> None:
        for i in ids:
            self._claimed.pop(i, None)

    def _together(self, first: _Op | _Orphan) -> list[_Op | _Orphan]:
        """`first`, and where it is a create that can go out in bulk, the ready creates that go
        in the same request (same connector and scope, never tried, up to the request's size)."""
        if not _bulk_create_of(self.ctx, first) or first.connector in self._bulk_paused():
            return [first]
        assert isinstance(first, _Op)
        request = min(self.settings.bulk_creates, _bulk_size(self.ctx, first.connector))
        ops: list[_Op | _Orphan] = [first]
        rest: collections.deque[_Op | _Orphan] = collections.deque()
        for op in self._ready:
            if (
                len(ops) < request
                and isinstance(op, _Op)
                and op.connector == first.connector
                and op.member.scope == first.member.scope
                and _bulk_create_of(self.ctx, op)
            ):
                ops.append(op)
            else:
                rest.append(op)
        self._ready = rest
        return ops

    def _sent(self) -> None:
        """A write's platform answered (or it ended without one): its slot is free."""
        self._sending -= 1
        self._ahead = True  # the slots move again
        if self._more or self._ready:
            self.ctx.outbox_ready.set()  # for work claimed ahead, or work the last claim left

    async def _give_back_ready(self) -> None:
        """Claimed ahead and never started (the worker stopped, or its slots stayed busy past
        READY_WAIT): given back to the pool now rather than held until the claims expire (or
        renewed while the slots hang, out of other replicas' reach). Nothing of them was sent."""
        ids = [op.id for op in self._ready]
        self._ready.clear()
        for i in ids:
            self._claimed.pop(i, None)
        if not ids:
            return
        try:
            await give_back(self.ctx, ids)
        except Exception as exc:  # the store failing: the claims expire instead
            log.warning("giving back %d unstarted outbox claims failed (%s); they expire", len(ids), exc)

    async def _claim(self, limit: int) -> list[_Op | _Orphan]:
        # Expired claims are looked for every RELEASE_EVERY seconds, not at every claim: a claim
        # expires after claim_ttl (minutes), and the look was a third of a busy claim's statements.
        release = time.monotonic() >= self._next_release
        try:
            ops = await claim(
                self.ctx,
                self.settings,
                limit,
                release_expired=release,
                bulk_creates=self.settings.bulk_creates,
                bulk_off=self._bulk_paused(),
            )
        except Exception as exc:
            # The store failing must not end the worker: the next round tries again.
            if not self._claim_refusals.failed(exc):
                log.exception("claiming outbox operations failed")
            await asyncio.sleep(self.settings.idle_wait)
            return []
        if release:
            # Sooner for short claims (tests use them): an expiry is noticed within a quarter of it.
            self._next_release = time.monotonic() + min(RELEASE_EVERY, self.settings.claim_ttl / 4)
        if ops:  # only a claim that wrote shows the store taking writes again
            self._claim_refusals.succeeded()
        return ops

    async def _run(self, ops: Sequence[_Op | _Orphan], sent: Callable[[], None]) -> None:
        """Talk to the platform in a slot taken by the caller (one operation, or creates sent
        in bulk), then give the slot back (`sent`) and record the outcomes."""
        outcomes: list[Outcome] = []
        try:
            try:
                if len(ops) == 1:  # the common case, without a task per gathered coroutine
                    outcomes = [await self._outcome(ops[0], None)]
                else:
                    bulk = _BulkCreate.of(self.ctx, ops)
                    outcomes = await asyncio.gather(*(self._outcome(op, bulk) for op in ops))
                    if bulk is not None and bulk.refused and all(o.state == OpState.DONE for o in outcomes):
                        self._bulk_refused(bulk.conn.name)
            finally:
                sent()
            if len(ops) == 1:
                await self.committer.submit(ops[0], outcomes[0])
            else:
                await asyncio.gather(
                    *(self.committer.submit(op, o) for op, o in zip(ops, outcomes, strict=True))
                )
        finally:
            for op, outcome in zip(ops, outcomes, strict=False):
                answered = _answered(op, outcome) if isinstance(op, _Op) else None
                if answered is not None:
                    self.ctx.write_recorded(*answered)
            # Out of the count before the loop can look (its done-callback may run after the
            # loop resumes), or a loop that finds no room waits with none in flight.
            self._inflight.discard(asyncio.current_task())  # type: ignore[arg-type]
            if self._more:
                self.ctx.outbox_ready.set()  # room for work the last claim left

    async def _outcome(self, op: _Op | _Orphan, bulk: _BulkCreate | None) -> Outcome:
        with log_context(**_log_fields(op)):
            if isinstance(op, _Orphan):
                return _parked("its task, link, route or connector no longer exists")
            return await self._attempt(op, bulk)

    async def _attempt(self, op: _Op, bulk: _BulkCreate | None = None) -> Outcome:
        try:
            return await execute(self.ctx, self.settings, op, self._rng, bulk=bulk, lookups=self._lookups)
        except Exception as exc:
            log.exception("outbox %s %s on %s failed unexpectedly", op.op, op.task.id, op.connector)
            if op.attempts >= self.settings.max_unexpected:
                return _parked(f"gave up after {op.attempts} attempts: internal error ({type(exc).__name__})")
            return Outcome(
                state=OpState.PENDING,
                result="retry",
                error="internal error; see the daemon log",
                delay=self.settings.unexpected_delay,
            )

    def stop(self, grace: float = DEFAULT_STOP_GRACE) -> None:
        """Claim nothing more; the writes in flight get `grace` seconds to finish."""
        self._grace = grace
        self._stopping.set()
        self.ctx.outbox_ready.set()

    async def drain_inflight(self) -> None:
        """Let claimed work finish (graceful shutdown); what doesn't is released."""
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=self._grace)
            for task in pending:
                task.cancel()

    async def run_until_idle(self, *, max_rounds: int = 10_000, within: tuple[int, int] | None = None) -> int:
        """Apply everything runnable now (with `within`, only the operations whose id lies in
        that range), then return: for `sync --once`, `plan --apply` and tests."""
        done = 0
        sem = asyncio.Semaphore(self.settings.concurrency)
        for _ in range(max_rounds):
            ops = await claim(self.ctx, self.settings, self.settings.batch, within=within)
            if not ops:
                break
            tasks = []
            for op in ops:
                await sem.acquire()
                tasks.append(asyncio.create_task(self._run([op], sem.release)))
            await asyncio.gather(*tasks)
            done += len(ops)
        return done


async def renew_claims(ctx: EngineContext, ids: Sequence[int], ttl: float) -> int:
    """Extend this replica's claims on `ids` by `ttl` from now; returns how many it still held."""
    async with ctx.store.transaction() as session:
        result = await session.execute(
            update(OutboxRow)
            .where(*_held_here(ctx, ids))
            .values(claim_expires_at=ctx.now() + timedelta(seconds=ttl))
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _held_here(ctx: EngineContext, ids: Sequence[int]) -> tuple[Any, ...]:
    """Which of the operations `ids` this replica still holds claimed."""
    return (OutboxRow.id.in_(ids), OutboxRow.state == OpState.CLAIMED, OutboxRow.claimed_by == ctx.replica)


async def give_back(ctx: EngineContext, ids: Sequence[int]) -> int:
    """Give back this replica's claims on `ids`, operations never started: nothing of them was
    sent, so they are due again at once and their claims' attempts are not spent. Returns how
    many it still held."""
    async with ctx.store.transaction() as session:
        result = await session.execute(
            update(OutboxRow)
            .where(*_held_here(ctx, ids))
            .values(
                state=OpState.PENDING,
                claimed_by=None,
                claim_expires_at=None,
                attempts=case((OutboxRow.attempts > 0, OutboxRow.attempts - 1), else_=0),
            )
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def release_claims(ctx: EngineContext, *, landing_wait: float = DEFAULT_LANDING_WAIT) -> int:
    """Give back every claim this replica holds (a stop, or a start after a crash). A create or
    comment given back may have been cut off mid-request, and may be landing still: it waits
    `landing_wait` before its retry looks for it, as after a timeout."""
    uncertain = OutboxRow.op.in_(LOOKS_FIRST)
    landed_by = ctx.now() + timedelta(seconds=landing_wait)
    async with ctx.store.transaction() as session:
        result = await session.execute(
            update(OutboxRow)
            .where(OutboxRow.state == OpState.CLAIMED, OutboxRow.claimed_by == ctx.replica)
            .values(
                state=OpState.PENDING,
                claimed_by=None,
                claim_expires_at=None,
                next_attempt_at=case((uncertain, landed_by), else_=OutboxRow.next_attempt_at),
            )
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


# -- one attempt ---------------------------------------------------------------------------------


async def execute(
    ctx: EngineContext,
    settings: WorkerSettings,
    op: _Op,
    rng: random.Random,
    *,
    bulk: _BulkCreate | None = None,
    lookups: MarkerLookups | None = None,
) -> Outcome:
    """Attempt one claimed operation against its platform; how it ended, for the committer. A
    create in `bulk` takes its answer from the bulk request, and fails as that request did. A
    retried create looks for its marker through `lookups` (the worker's, shared by the retries
    it runs at once), or on its own."""
    conn = ctx.connectors[op.connector]
    try:
        try:
            outcome = await _dispatch(
                ctx,
                conn,
                op,
                read_first=settings.read_before_write,
                bulk=bulk,
                lookups=lookups or MarkerLookups(),
            )
            answered = _answered(op, outcome)
            if answered is not None:  # ours to the inbox from now until its record is done (Worker._run)
                ctx.write_answered(*answered)
            return outcome
        except NotFound as exc:
            return await _confirm_gone(conn, op, exc)
    except RateLimited as exc:
        if exc.retry_after is None:  # no Retry-After (a usage limit): back off, park after the cap
            return replace(_retry(settings, op.attempts, str(exc), rng), connector_error=str(exc))
        return Outcome(
            state=OpState.PENDING,
            result="rate_limited",
            error=str(exc),
            delay=exc.retry_after,
            # A create or a comment may have landed before a later request of the same write
            # was refused (a create's follow-up PUT or run): its retry must look for it first,
            # which `attempts > 1` decides, so its attempt stays spent.
            attempt_spent=op.op in LOOKS_FIRST,
        )
    except Retryable as exc:
        outcome = replace(_retry(settings, op.attempts, str(exc), rng), connector_error=str(exc))
        if op.op in LOOKS_FIRST and outcome.state == OpState.PENDING:
            # It may have landed, or be landing still: its retry looks first, but not before
            # the platform had time to finish what it may be applying (DEFAULT_LANDING_WAIT).
            outcome = replace(outcome, delay=max(outcome.delay, settings.landing_wait))
        return outcome
    except AuthFailed as exc:
        log.error("outbox %s %s on %s parked: %s", op.op, op.task.id, op.connector, exc)
        return replace(_parked(str(exc)), connector_error=str(exc), connector_error_certain=True)
    except (Permanent, PermanentOutcome) as exc:
        log.error("outbox %s %s on %s parked: %s", op.op, op.task.id, op.connector, exc)
        return _parked(str(exc))
    except ConnectorError as exc:
        return _parked(str(exc))


def _answered(op: _Op, outcome: Outcome) -> tuple[str, str, Answered] | None:
    """The stamps a platform's deliveries of this landed create or update carry, where its
    answer gave them: (connector, remote id, stamps)."""
    if outcome.state != OpState.DONE:
        return None
    if op.op == OpKind.CREATE and outcome.remote is not None:
        remote = outcome.remote
        return op.connector, remote.remote_id, Answered(remote.created_at, remote.updated_at)
    if op.op == OpKind.UPDATE and outcome.written and outcome.remote_time is not None and op.link.remote_id:
        return op.connector, op.link.remote_id, Answered(None, outcome.remote_time)
    return None


async def _confirm_gone(conn: Connector, op: _Op, exc: NotFound) -> Outcome:
    """A 404 on a write is a deletion only when a GET and a complete listing agree. Some
    platforms answer a write 404 for a task that exists but the credential may not change
    (PostHog does, for a teammate's task); taking that for a deletion would archive a live
    task everywhere else."""
    remote_id = op.link.remote_id
    if op.op == OpKind.CREATE or remote_id is None:
        return _parked(str(exc))
    try:
        await conn.get_task(op.member.scope, remote_id)
    except GoneFromView:
        return Outcome(state=OpState.DONE, result="ok", error=str(exc), gone_from_view=True)
    except NotFound:
        pass
    else:
        return _parked(f"{exc}, yet the task is there: the credential may not change it")
    still_there = f"{exc}, yet the scope's listing still shows the task (or could not be read whole)"
    async with conn.stream_tasks(op.member.scope, None) as listing:
        async for task in listing:
            if task.remote_id == remote_id:
                return _parked(still_there)  # no need to read the rest
        all_ids = listing.end.all_ids
    if all_ids is None or remote_id in all_ids:
        return _parked(still_there)
    if op.op in (OpKind.DELETE, OpKind.ARCHIVE):
        return _done(None)  # already gone: the intent holds
    return _parked(str(exc), remote_deleted=True)


async def _dispatch(
    ctx: EngineContext,
    conn: Connector,
    op: _Op,
    *,
    read_first: bool,
    bulk: _BulkCreate | None,
    lookups: MarkerLookups,
) -> Outcome:
    if op.op == OpKind.CREATE:
        return await _create(conn, op, bulk, lookups)
    if op.op == OpKind.UPDATE:
        return await _update(ctx, conn, op, read_first=read_first)
    if op.op == OpKind.DELETE:
        return await _delete(conn, op)
    if op.op == OpKind.ARCHIVE:
        return await _archive(conn, op)
    if op.op == OpKind.COMMENT:
        return await _comment(ctx, conn, op)
    raise PermanentOutcome(f"unknown operation {op.op!r}")


async def _create(conn: Connector, op: _Op, bulk: _BulkCreate | None, lookups: MarkerLookups) -> Outcome:
    if op.link.remote_id is not None:
        # An observation already found the mirror (by its marker): only reconcile.
        return _done({})
    if op.attempts > 1:
        # An earlier attempt may have created it and died before recording the id.
        found = await lookups.find(
            conn, op.member.scope, op.route.marker.line(op.task.id), created_after=op.queued_at
        )
        if found is not None:
            return _done({}, remote=found)
    if bulk is not None and op.id in bulk.items:
        values, _ = bulk.items[op.id]
        created = await bulk.created(op.id)
    else:
        values, remote_values = _create_values(conn, op)
        created = await conn.create_task(op.member.scope, remote_values)
    # The base keeps descriptions without the marker, as they read back.
    return _done(values, remote=created)


def _create_values(conn: Connector, op: _Op) -> tuple[Values, Values]:
    """What a create writes (its link's base records it) and what is sent for it: the parent as
    the platform's id, the description with the route's marker."""
    canonical = decode_values(op.task.data)
    values = core.writable_values(conn, op.route, op.member, canonical, op.route.fields)
    if "parent" in values and op.parent_held:
        # The parent has no copy there yet (or may never be written there): top level for now,
        # which the base records; the parent follows when its copy lands (apply_outcomes).
        values["parent"] = None
    remote_values = dict(values)
    if "parent" in values:
        remote_values["parent"] = None if op.parent_held else op.parent_ref
    if "description" in conn.capabilities.writable:
        remote_values["description"] = op.route.marker.add(str(canonical.get("description", "")), op.task.id)
    return values, remote_values


def _bulk_create_of(ctx: EngineContext, op: _Op | _Orphan) -> bool:
    """A create that may go out in a bulk request: never tried (a retry looks for its marker
    first), not yet linked, on a connector with a bulk create."""
    return (
        isinstance(op, _Op)
        and op.op == OpKind.CREATE
        and op.attempts == 1
        and op.link.remote_id is None
        and _bulk_size(ctx, op.connector) > 1
    )


def _bulk_size(ctx: EngineContext, connector: str) -> int:
    """The most creates one request of the connector takes (1 for one a reload removed)."""
    conn = ctx.connectors.get(connector)
    return conn.capabilities.bulk_create if conn is not None else 1


class _BulkCreate:
    """Creates on one connector and scope, sent as one request (`Connector.create_tasks`) by the
    first of them to ask; each takes its own entry of the answer."""

    def __init__(self, conn: Connector, scope: str, items: dict[int, tuple[Values, Values]]) -> None:
        self.conn = conn
        self.scope = scope
        self.items = items  # operation id -> (values written, values sent)
        self._index = {op_id: n for n, op_id in enumerate(items)}
        self._turn = asyncio.Lock()  # the first to ask sends the request; the others wait for it
        self._sent = False
        self._answer: list[RemoteTask | ConnectorError] | ConnectorError | None = None
        self._alone = asyncio.Lock()  # refused as a whole: the creates go one at a time, in the slot

    @property
    def refused(self) -> bool:
        """The request was refused as a whole (its creates then went alone)."""
        return isinstance(self._answer, BulkRefused)

    @classmethod
    def of(cls, ctx: EngineContext, ops: Sequence[_Op | _Orphan]) -> _BulkCreate | None:
        items: dict[int, tuple[Values, Values]] = {}
        first = next((op for op in ops if isinstance(op, _Op)), None)
        if first is None:
            return None
        conn = ctx.connectors.get(first.connector)
        if conn is None:  # removed by a reload: each fails alone, as any operation of it
            return None
        for op in ops:
            if isinstance(op, _Op):
                try:
                    items[op.id] = _create_values(conn, op)
                except Exception:  # it fails again alone, where its outcome says why
                    continue
        return cls(conn, first.member.scope, items)

    async def created(self, op_id: int) -> RemoteTask:
        async with self._turn:
            if self._answer is None:
                if self._sent:  # sent, and its caller cancelled before the answer: it may have landed
                    raise Retryable(
                        f"{self.conn.name}: a bulk create was interrupted", connector=self.conn.name
                    )
                self._sent = True
                try:
                    self._answer = await self.conn.create_tasks(
                        self.scope, [sent for _, sent in self.items.values()]
                    )
                except ConnectorError as exc:
                    self._answer = exc
        answer = self._answer
        if isinstance(answer, BulkRefused):
            # Nothing was created: each alone, so a value the platform refuses parks only its
            # task (where all then land, the refusal was the bulk path's: `Worker._bulk_refused`).
            async with self._alone:
                return await self.conn.create_task(self.scope, self.items[op_id][1])
        if isinstance(answer, ConnectorError):
            raise answer
        entry = answer[self._index[op_id]]
        if isinstance(entry, ConnectorError):
            raise entry
        return entry


async def _update(ctx: EngineContext, conn: Connector, op: _Op, *, read_first: bool) -> Outcome:
    if op.link.remote_id is None:
        raise PermanentOutcome("the link has no remote id (its create never landed)")
    # Nothing but the read-before-write GET stands between that read and the write: what to
    # write and its in-flight mark were settled with the claim, and a write that cannot go out at
    # once fails rather than going out late (see writes_fail_fast), since anything edited there
    # in between would be overwritten.
    changes = op.planned
    read_time: datetime | None = None
    if changes and read_first:
        current = await conn.get_task(op.member.scope, op.link.remote_id)
        read_time = current.updated_at
        if core.moved_since_base(
            conn,
            op.route,
            op.member,
            current,
            decode_values(op.link.base),
            op.parents,
            claims=link_claims(op.link),
        ):
            # The side changed since it last agreed with us: that change is merged first (it may
            # win, or hold a conflict), and the write goes out with what is true now.
            changes = await _after_remote_edit(ctx, conn, op, current)
            if changes is None:
                return _done({})
    if not changes:
        return _done({})
    remote_changes = dict(changes)
    if "parent" in changes:
        remote_changes["parent"] = op.parent_ref  # the target's id for it (settled with the plan)
    if "description" in changes and op.link.is_mirror:
        remote_changes["description"] = op.route.marker.add(str(changes["description"]), op.task.id)
    with writes_fail_fast():
        after = await conn.update_task(op.member.scope, op.link.remote_id, remote_changes)
    # Its time, not its values: a listing fetched before this write must read as older than it.
    # What the side agreed at the read (the base once a change found there was merged): taken
    # now, since the link may learn of a newer edit there before this outcome is recorded. With
    # no read there is no window to keep (`_record_write`).
    read_base: Values | None = None
    if read_time is not None:
        agreed = decode_values(op.link.base)
        read_base = {name: agreed[name] for name in changes if name in agreed}
    return _done(changes, remote_time=after.updated_at, read_time=read_time, read_base=read_base)


async def _after_remote_edit(
    ctx: EngineContext, conn: Connector, op: _Op, current: RemoteTask
) -> Values | None:
    """Merge a remote edit the read before a write found, then plan the write again. None: the
    link is no longer active (the edit unlinked it), so nothing is written."""
    for last_try in (False, True):
        (current,) = await date_contested(ctx, op.route, op.member, [current])
        async with ctx.store.transaction() as session:
            if not last_try and await undated_contested(ctx, session, op.route, op.member, [current]):
                continue  # contested since it was judged: dated again first (poller._observe_all)
            await observe(ctx, session, Observation(op.route, op.member, current, "poll"))
        break
    async with ctx.store.read() as session:
        tasks = await copies(session, TaskRow, [op.task.id])
        links = await copies(session, LinkRow, [op.link.id])
        held = await held_fields(session, op.task.id)
        if not tasks or not links or links[0].state != LinkState.ACTIVE:
            return None
        op.task, op.link = tasks[0], links[0]
        planned = op.planned
        op.planned = _plan(conn, op, held)
        if "parent" in op.planned:
            await _settle_parents(ctx, session, [op])
        changes = op.planned
    if changes and changes != planned:
        async with ctx.store.transaction() as session:
            row = await session.get(LinkRow, op.link.id)
            if row is not None:
                claim_write(conn, row, changes)
    return changes


async def _delete(conn: Connector, op: _Op) -> Outcome:
    if op.link.remote_id is None:
        return _done({})
    if conn.capabilities.delete:
        await conn.delete_task(op.member.scope, op.link.remote_id)
        return _done({}, link_state=LinkState.GONE)
    return await _archive(conn, op)


async def _archive(conn: Connector, op: _Op) -> Outcome:
    """Archive where the platform can; else close (status cancelled, as the mapping writes it)."""
    if op.link.remote_id is None:
        return _done({})
    written: Values = {}
    if conn.capabilities.archive:
        await conn.archive_task(op.member.scope, op.link.remote_id)
        written["archived"] = True
    if "status" in conn.capabilities.writable:
        await conn.update_task(op.member.scope, op.link.remote_id, {"status": Status.CANCELLED})
        written["status"] = Status.CANCELLED
    return _done(written, link_state=LinkState.GONE)


async def _comment(ctx: EngineContext, conn: Connector, op: _Op) -> Outcome:
    if op.comment is None:
        raise PermanentOutcome("the comment no longer exists")
    if op.link.remote_id is None:
        raise PermanentOutcome("the task's mirror has no remote id yet")
    if op.comment_remote_id is not None:
        return _done({})  # already posted and linked
    # A comment older than this store may have been mirrored by the store before it (one lost and
    # re-adopted): look for it as for a retry.
    born = ctx.store.identity.created_at if ctx.store.identity else None
    older = born is not None and as_utc(op.comment.created_at) < born
    remote_id = await mirror_comment(
        ctx, conn, op.member, op.link.remote_id, op.comment, retried=op.attempts > 1 or older
    )
    return _done({}, comment_remote_id=remote_id)


# -- recording outcomes --------------------------------------------------------------------------


@dataclass
class _Pending:
    op: _Op | _Orphan
    outcome: Outcome
    done: asyncio.Future[None]


class Committer:
    """Records outcomes by group commit: the first caller with nothing committing commits what
    every caller queued meanwhile, in one transaction. A batch that fails is retried one outcome
    per transaction, so one bad outcome holds nothing else back."""

    def __init__(self, ctx: EngineContext, *, max_unexpected: int = DEFAULT_MAX_UNEXPECTED) -> None:
        self.ctx = ctx
        self.max_unexpected = max_unexpected
        self._queue: list[_Pending] = []
        self._turn = asyncio.Lock()
        self._refusals = RefusalLog(log, "recording outbox outcomes")
        # (task, observed_at) -> the connectors its change was written to so far (for the log)
        self._written: dict[tuple[str, datetime], list[str]] = {}

    async def submit(self, op: _Op | _Orphan, outcome: Outcome) -> None:
        item = _Pending(op, outcome, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        async with self._turn:
            if not item.done.done():
                if len(self._queue) < COMMIT_BATCH:
                    # Statements run without yielding (SQLite's are inline), so nothing joins a
                    # batch while it commits: the writes of one change, finishing a few
                    # milliseconds apart, would each commit alone. Waiting a moment lets them share.
                    await asyncio.sleep(COMMIT_LINGER)
                batch, self._queue = self._queue, []
                try:
                    await self._commit(batch)
                finally:
                    # Cancelled (a shutdown) mid-commit: nobody else will take these, and their
                    # claims expire as after a crash, so no caller may wait for them forever.
                    for p in batch:
                        if not p.done.done():
                            p.done.set_result(None)
        await item.done

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            await self._apply([(p.op, p.outcome) for p in batch])
        except Exception as exc:
            if self._refusals.failed(exc):
                return  # one by one would be refused too; the claims expire (submit frees the waiters)
            if len(batch) == 1:
                op = batch[0].op
                with log_context(**_log_fields(op)):
                    log.exception("recording the outcome of outbox operation %s failed", op.id)
                    if op.attempts >= self.max_unexpected:
                        # The same failure each time (a bug): parked for a person, not run
                        # again at every claim's expiry forever, out of sight of `outbox list`.
                        await self._park_unrecorded(op, exc)
                batch[0].done.set_result(None)  # its claim expires and the operation runs again
                return
            for p in batch:
                await self._commit([p])
            return
        self._refusals.succeeded()
        for p in batch:
            if not p.done.done():
                p.done.set_result(None)

    async def _park_unrecorded(self, op: _Op | _Orphan, exc: Exception) -> None:
        """Record the operation parked instead of what it did: the parked outcome writes nothing
        on its link, and `apply_outcomes` leaves it alone if its claim is no longer ours."""
        error = f"gave up after {op.attempts} attempts: recording its outcome failed ({type(exc).__name__})"
        try:
            await self._apply([(op, _parked(error))])
        except Exception:
            log.exception("parking outbox operation %s failed; its claim expires", op.id)
            return
        log.error("outbox %s %s parked: %s", op.op, op.id, error)

    async def _apply(self, batch: list[tuple[_Op | _Orphan, Outcome]]) -> None:
        propagated: list[_Op] = []
        async with self.ctx.store.transaction() as session:
            propagated = await apply_outcomes(self.ctx, session, batch)
        for op, outcome in batch:
            metrics.writes.labels(op.connector, str(op.op), outcome.result).inc()
            if isinstance(op, _Op) and outcome.state == OpState.DONE and _wrote(outcome):
                self._written.setdefault((op.task.id, as_utc(op.observed_at)), []).append(op.connector)
        now = self.ctx.now()
        for op in propagated:
            seconds = max(0.0, (now - op.observed_at).total_seconds())
            metrics.propagation.labels(op.route.name).observe(seconds)
            targets = sorted(set(self._written.pop((op.task.id, as_utc(op.observed_at)), [])))
            with log_context(route=op.route.name, task=op.task.id):
                log.log(
                    logging.INFO if targets else logging.DEBUG,  # a change every side already had
                    "task %s %r propagated to %s in %.3f s",
                    op.task.id,
                    _short(op.task.title or ""),
                    ", ".join(targets) or "no side (nothing left to write)",
                    seconds,
                )
        while len(self._written) > WRITTEN_KEPT:  # changes that never finished (parked writes)
            del self._written[next(iter(self._written))]


def _log_fields(op: _Op | _Orphan) -> dict[str, str | None]:
    """What an operation's log lines carry: its connector, task and `kind:id`."""
    return {
        "connector": op.connector,
        "task": op.task.id if isinstance(op, _Op) else None,
        "op": f"{op.op}:{op.id}",
    }


def _wrote(outcome: Outcome) -> bool:
    """Whether a finished operation changed its platform (not one that found nothing to write)."""
    return bool(outcome.written) or any(
        x is not None for x in (outcome.remote, outcome.comment_remote_id, outcome.link_state)
    )


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _write_health(batch: Sequence[tuple[_Op | _Orphan, Outcome]]) -> dict[str, health.WriteResult]:
    """Each connector's write health in a batch: its own error if any write failed for one, else
    a landed write. Outcomes that say nothing of the connector are left out."""
    out: dict[str, health.WriteResult] = {}
    for op, outcome in batch:
        if not isinstance(op, _Op):
            continue
        if outcome.connector_error is not None:
            out[op.connector] = health.WriteResult(outcome.connector_error, outcome.connector_error_certain)
        elif outcome.state == OpState.DONE:
            out.setdefault(op.connector, health.WriteResult(None))
    return out


async def apply_outcomes(
    ctx: EngineContext, session: AsyncSession, batch: Sequence[tuple[_Op | _Orphan, Outcome]]
) -> list[_Op]:
    """Record a batch of outcomes in the caller's transaction. Returns the successful operations
    whose change is now written everywhere (nothing of it left queued): their propagation ended."""
    now = ctx.now()
    ids = [op.id for op, _ in batch]
    rows = {r.id: r for r in (await run(session, _RECORDED_STATES, by_ids(ids))).all()}
    finishes: list[dict[str, Any]] = []
    retries: list[dict[str, Any]] = []
    ops = [op for op, _ in batch if isinstance(op, _Op)]
    links = {x.id: x for x in await loaded(session, LinkRow, {op.link.id for op in ops})}
    tasks = {t.id: t for t in await loaded(session, TaskRow, {op.task.id for op in ops})}
    requeue: list[tuple[Route, TaskRow, datetime]] = []
    succeeded: list[_Op] = []
    landed: dict[tuple[str, int], list[_Op]] = {}  # (route, levels of children to re-check) -> ops
    await health.record_writes(ctx, session, _write_health(batch))
    holders = await _holders(session, batch, links)
    finished: set[int] = set()  # links whose oldest unfinished operation this batch finished
    finished_tasks: set[str] = set()  # their tasks
    changed: dict[int, tuple[LinkRow, set[str]]] = {}  # link id -> (link, the columns its writes changed)
    for op, outcome in batch:
        with log_context(**_log_fields(op)):
            row = rows.get(op.id)
            if row is None:
                continue
            if row.state in (OpState.DONE, OpState.PARKED) or (
                row.state == OpState.CLAIMED and row.claimed_by != ctx.replica
            ):
                # Our claim expired and another worker took the operation (a write slower than
                # claim_ttl): its record is that worker's to make. A write of ours that landed still
                # moved the platform, which the link records below.
                if outcome.state != OpState.DONE or not isinstance(op, _Op):
                    continue
            elif outcome.state == OpState.PENDING:
                if row.state == OpState.CLAIMED:
                    advance(row.state, OpState.PENDING)
                    retries.append(
                        {
                            "op_id": op.id,
                            "was": row.state,
                            "holder": row.claimed_by,
                            "error": outcome.error,
                            "due": now + timedelta(seconds=outcome.delay),
                            "spent": row.attempts if outcome.attempt_spent else max(0, row.attempts - 1),
                        }
                    )
                continue
            else:
                finishes.append(
                    {
                        "op_id": op.id,
                        "was": row.state,
                        "holder": row.claimed_by,
                        "new_state": advance(row.state, outcome.state),
                        "error": outcome.error,
                        "at": now,
                        "by": ctx.replica,
                    }
                )
                if row.link_id is not None:
                    finished.add(row.link_id)
                    finished_tasks.add(row.task_id)
            if not isinstance(op, _Op):
                continue
            if (outcome.remote_deleted or outcome.gone_from_view) and op.link.remote_id:
                # These read the task's links from the store: what this batch recorded of them
                # so far must be there (a link an archive left gone is not archived again).
                await _write_links(session, changed)
                if outcome.remote_deleted:
                    await apply_remote_deletion(ctx, session, op.route, op.member, op.link.remote_id)
                if outcome.gone_from_view:
                    await mark_gone_from_view(ctx, session, op.member, op.link.remote_id)
            if outcome.state != OpState.DONE or outcome.written is None:
                continue  # nothing was written (e.g. a delete of what was gone): the link stays as it is
            link, task = links.get(op.link.id), tasks.get(op.task.id)
            if link is None or task is None:
                continue
            if outcome.comment_remote_id is not None and op.comment is not None:
                await _link_comment(session, op, outcome.comment_remote_id, now)
            if outcome.remote is not None and link.remote_id is None:
                key = (op.connector, outcome.remote.remote_id)
                held = holders.get(key)
                if held is not None and held.id != link.id and held.remote_id == key[1]:
                    await _write_links(session, changed)  # as above: release_reused reads links
                    await release_reused(ctx, session, held, op.connector)  # the platform made it anew
            # Shown on the loaded link as its stored values: written below, not by a flush.
            changes = show_stored(link, _record_write(ctx, op, link, outcome, now))
            changed.setdefault(link.id, (link, set()))[1].update(changes)
            if outcome.remote is not None and link.remote_id is not None:
                holders[(op.connector, link.remote_id)] = link  # for a later create of this batch
            succeeded.append(op)
            if link.state == LinkState.ACTIVE:
                if not _settled(ctx, op, link, task):
                    requeue.append((op.route, task, op.observed_at))
                if core.writes_parent(ctx.connectors[op.connector], op.route, op.member):
                    if op.op == OpKind.CREATE:
                        landed.setdefault((op.route.name, 1), []).append(op)
                    elif "parent" in outcome.written:
                        landed.setdefault((op.route.name, MAX_DEPTH), []).append(op)
    # The operations' own rows as Core statements, two at most for the batch: through the ORM,
    # loading them and flushing their changes cost the committer more than its statements.
    await _write_links(session, changed)
    if finishes:
        await run(session, _FINISH, finishes)
    if retries:
        await run(session, _GIVE_BACK, retries)
    await session.flush()
    if not succeeded:
        await _wake_successors(ctx, session, finished, finished_tasks, unfinished_wanted=False)
        return []
    # A copy that landed may be what its children's parent waited for there (parent_hold
    # "unlinked"); a task moved there may be what its descendants' moves waited for ("loop-there").
    for (route_name, depth), waited_on in landed.items():
        for child in await children_of(session, route_name, {op.task.id for op in waited_on}, depth=depth):
            requeue.append((waited_on[0].route, child, waited_on[0].observed_at))
    # Links whose last finished write of fields parked (in this batch or an earlier one) wait for
    # a person; re-checking them here would park the same change once per write that lands beside it.
    tasks_ids = {task.id for _, task, _ in requeue}
    parked = set((await run(session, _STUCK_LINKS, by_ids(tasks_ids))).scalars()) if tasks_ids else set()
    await queue_updates_many(ctx, session, requeue, parked=parked)
    await session.flush()
    # The propagation of a change ends with the last of its writes: none of the same task and
    # observation left unfinished.
    unfinished = await _wake_successors(
        ctx, session, finished, finished_tasks | {op.task.id for op in succeeded}, unfinished_wanted=True
    )
    out: list[_Op] = []
    for op in succeeded:
        key = (op.task.id, as_utc(op.observed_at))
        if key not in unfinished:
            unfinished.add(key)  # one observation per change, however many of its writes were here
            out.append(op)
    return out


async def _wake_successors(
    ctx: EngineContext,
    session: AsyncSession,
    finished: set[int],
    task_ids: set[str],
    *,
    unfinished_wanted: bool,
) -> set[tuple[str, datetime]]:
    """Wake the worker (on commit) when an operation waits behind one of the `finished` links
    that this batch finished, and return the (task, observation) of each open operation of
    `task_ids`: one read for both, which `unfinished_wanted` makes whatever the wake needs. On
    SQLite writers take turns, so what this transaction sees waiting is all there is. On
    PostgreSQL a successor queued by a transaction still open now (a poll, another replica) is
    invisible here, and a claim made before this commit found it blocked: the worker is woken
    regardless."""
    wake = bool(finished) and ctx.store.dialect != "sqlite"
    unfinished: set[tuple[str, datetime]] = set()
    if task_ids and (unfinished_wanted or (finished and not wake)):
        for task_id, observed_at, link_id, state in (await run(session, _OPEN_OF, by_ids(task_ids))).all():
            unfinished.add((task_id, as_utc(observed_at)))
            wake = wake or (state == OpState.PENDING and link_id in finished)
    if wake:
        on_commit(session, ctx.outbox_ready.set)  # the next operation of a link is runnable now
    return unfinished


async def _holders(
    session: AsyncSession, batch: Sequence[tuple[_Op | _Orphan, Outcome]], links: dict[int, LinkRow]
) -> dict[tuple[str, str], LinkRow]:
    """(connector, remote id) -> the link holding it, for the remote ids the batch's creates got:
    a link already there means the platform made the id anew (`release_reused`). One read for the
    batch; apply_outcomes adds the links it gives ids as it goes."""
    wanted: dict[str, set[str]] = {}
    for op, outcome in batch:
        link = links.get(op.link.id) if isinstance(op, _Op) else None
        if outcome.remote is not None and link is not None and link.remote_id is None:
            wanted.setdefault(op.connector, set()).add(outcome.remote.remote_id)
    return await links_holding(session, wanted)


# What apply_outcomes reads of each operation's row, and its two writes of them. Each write is
# conditional on the state and holder it read, so a record never lands over a change it did not
# see (on PostgreSQL, another replica's claim made since).
_RECORDED_STATES = select(
    _OUTBOX.c.id,
    _OUTBOX.c.state,
    _OUTBOX.c.claimed_by,
    _OUTBOX.c.task_id,
    _OUTBOX.c.link_id,
    _OUTBOX.c.attempts,
).where(any_of(_OUTBOX.c.id))
_AS_READ = and_(
    _OUTBOX.c.state == bindparam("was"),
    _OUTBOX.c.claimed_by.is_not_distinct_from(bindparam("holder")),
)
_FINISH = (
    update(_OUTBOX)
    # Or released since the read (on PostgreSQL, another replica's claim found ours expired):
    # nobody holds it, and the write landed, so it is done, as the pending row read would be.
    .where(
        _OUTBOX.c.id == bindparam("op_id"),
        or_(_AS_READ, and_(_OUTBOX.c.state == OpState.PENDING, _OUTBOX.c.claimed_by.is_(None))),
    )
    .values(
        state=bindparam("new_state"),
        last_error=bindparam("error"),
        done_at=bindparam("at"),
        done_by=bindparam("by"),
        claimed_by=None,
        claim_expires_at=None,
    )
)
_GIVE_BACK = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == bindparam("op_id"), _AS_READ)
    .values(
        state=OpState.PENDING,
        claimed_by=None,
        claim_expires_at=None,
        last_error=bindparam("error"),
        next_attempt_at=bindparam("due"),
        attempts=bindparam("spent"),
    )
)


# A link is stuck while its last finished write of fields (not a comment: a comment's refusal
# says nothing of the fields, and a comment landing says nothing of a refused update) parked.
_later = aliased(OutboxRow)
_STUCK_LINKS = (
    select(OutboxRow.link_id)
    .where(
        any_of(OutboxRow.task_id),
        OutboxRow.state == OpState.PARKED,
        OutboxRow.op != OpKind.COMMENT,
        ~exists().where(
            _later.link_id == OutboxRow.link_id,
            _later.id > OutboxRow.id,
            _later.state == OpState.DONE,
            _later.op != OpKind.COMMENT,
        ),
    )
    .distinct()
)

_OPEN_OF = select(_OUTBOX.c.task_id, _OUTBOX.c.observed_at, _OUTBOX.c.link_id, _OUTBOX.c.state).where(
    any_of(_OUTBOX.c.task_id),
    one_of(_OUTBOX.c.state, (OpState.PENDING, OpState.CLAIMED)),
)


def _settled(ctx: EngineContext, op: _Op, link: LinkRow, task: TaskRow) -> bool:
    """Whether a landed write leaves its task with nothing for the re-check to find: the task
    is as the write was planned from (no change arrived while it was in flight, which would have
    skipped this side as being written), and this side now agrees with every field, held or not
    (nothing waited: a parent without its copy, a field a conflict holds). Any other side that
    differs then differed before this write and has its own operation, or its own write's
    re-check. The re-check reads four tables, and in a burst nearly every write lands settled."""
    if task.data != op.task.data or task.deleted_at != op.task.deleted_at:
        return False
    conn = ctx.connectors[op.connector]
    return not core.stale_fields(
        conn, op.route, op.member, decode_values(task.data), decode_values(link.base)
    )


def _record_write(
    ctx: EngineContext, op: _Op, link: LinkRow, outcome: Outcome, now: datetime
) -> dict[str, Any]:
    """A write landed: the link's new base is what was written as it reads back there (for a
    create, what the platform reported for the rest). Returns the link's columns as the write
    leaves them; the caller keeps those that change (`show_stored`) and writes them (`_write_links`)."""
    new: dict[str, Any] = {}

    def now_(name: str) -> Any:
        return new[name] if name in new else getattr(link, name)

    conn = ctx.connectors[op.connector]
    assert outcome.written is not None  # apply_outcomes records only outcomes that wrote
    base = core.base_after_write(
        conn, op.route, op.member, decode_values(link.base), outcome.written, outcome.remote
    )
    if (
        op.op == OpKind.UPDATE
        and outcome.written
        and outcome.read_base is not None
        and outcome.remote_time is not None
        and outcome.read_time is not None
        and outcome.remote_time > outcome.read_time
        and (link.remote_updated_at is None or as_utc(link.remote_updated_at) <= outcome.remote_time)
    ):
        # No platform here takes a conditional write: an edit there after our read and before
        # this write was replaced by it. What the write replaced is kept, so that a report of
        # such an edit (a webhook delivery stamped before the write) is merged, not dropped.
        # (Not when the side already showed something newer than the write: the window is past.)
        after, before = outcome.read_time, outcome.read_base
        if link.remote_updated_at is not None and as_utc(link.remote_updated_at) > after:
            # A report from the side applied since the read (observed while the write was in
            # flight) is no edit the write hid: the window starts after it, from what it
            # showed, or a second report of it would be merged again (under `prefer`, over
            # a newer edit made elsewhere since).
            after = as_utc(link.remote_updated_at)
            shown = decode_values(link.base)
            before = {name: shown.get(name, value) for name, value in before.items()}
        new["overwritten"] = encode_overwritten(
            core.Overwritten(
                after=after,
                until=outcome.remote_time,
                before=before,
                wrote={name: base[name] for name in outcome.written if name in base},
                claims=link_claims(link),
            )
        )
    if outcome.remote is not None:
        if link.remote_id is None:
            new["remote_id"] = outcome.remote.remote_id
            new["remote_url"] = outcome.remote.url
            new["remote_updated_at"] = outcome.remote.updated_at
            new["remote_created_at"] = outcome.remote.created_at
        new["state"] = advance(link.state, LinkState.ACTIVE)
    new["base"] = encode_values(base)
    if op.op != OpKind.COMMENT:
        # A write of the task's fields landed after every claim here: a report showing an older
        # claim is older than it. A comment says nothing of the fields, and a parked update's
        # claims outlive it until a write of the fields lands.
        new["inflight"] = None
    remote_updated_at = now_("remote_updated_at")
    if outcome.remote_time is not None and (
        remote_updated_at is None or outcome.remote_time > remote_updated_at
    ):
        new["remote_updated_at"] = outcome.remote_time
    new["updated_at"] = now
    if outcome.link_state is not None:
        new["state"] = advance(now_("state"), outcome.link_state)
    return new


async def _write_links(session: AsyncSession, changed: dict[int, tuple[LinkRow, set[str]]]) -> None:
    """The columns `_record_write` changed since the last call, written as one UPDATE per set of
    columns (the set is the same for nearly every write), each with the link's value now; empties
    `changed`. apply_outcomes calls it at the end of the batch, and before anything that reads
    the task's links from the store. An ORM flush of the same links cost three times as much.
    Only changed columns are written, as the flush would: on PostgreSQL another transaction's
    change to any other column stands."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for link, columns in changed.values():
        names = tuple(sorted(columns))
        if names:  # a write that changed nothing (a clock that stood still)
            groups.setdefault(names, []).append(
                {"row_id": link.id, **{name: getattr(link, name) for name in names}}
            )
    changed.clear()  # written: a later call writes only what changes after this one
    for names, params in groups.items():
        await run(session, update_columns(_LINKS, names), params)


async def _link_comment(session: AsyncSession, op: _Op, remote_id: str, now: datetime) -> None:
    assert op.comment is not None
    clink = await session.scalar(
        select(CommentLinkRow).where(
            CommentLinkRow.comment_id == op.comment.id, CommentLinkRow.connector == op.connector
        )
    )
    if clink is None:
        session.add(
            CommentLinkRow(
                comment_id=op.comment.id,
                connector=op.connector,
                remote_id=remote_id,
                state=LinkState.ACTIVE,
                created_at=now,
            )
        )
    else:
        clink.remote_id = remote_id
        clink.state = advance(clink.state, LinkState.ACTIVE)
