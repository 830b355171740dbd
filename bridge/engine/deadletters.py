"""Dead letters: the outbox operations that were parked and the webhook deliveries that failed,
listed, retried or dropped by a person (the API's `/api/v1/outbox` and `/api/v1/inbox`, and the
`taskbridge outbox|inbox` commands over it).

A parked operation is a failure the outbox will not retry by itself (a 401, a 4xx, attempts used
up). Retrying it moves it PARKED -> PENDING (`advance`), runnable now, with its attempts back to
0 and its last error kept until it runs again; the worker is woken once the move has committed.
It then runs like any other operation: after the earlier unfinished operations of its link, and
planned from the task as it is now (an update writes what the side still lacks, not what it
lacked when it was parked).

Dropping deletes the row. A dropped operation must never run, and the lifecycle in
`bridge.store.states` has no move for it: `done` means "applied" (the propagation metric, the
replica in `done_by` and anyone reading the outbox take it so), and a parked operation leaves that
state only for `pending`. A row that no longer exists can be claimed by no worker or replica,
and a worker that still holds an outcome for it finds no row and records nothing (see
`outbox.apply_outcomes`). What was dropped is not lost: the task's history gets a row naming the
operation, its last error and who dropped it, and the daemon's log a line.

Each retry or drop of an operation writes a `HistoryRow` on its task: field "*", via "outbox",
source the person (the API token's name, or "cli"), new "write to <connector> retried|dropped by
<who>", old the operation as it was ("<kind> #<id> parked: <last error>").

Webhook deliveries get the same treatment: a failed delivery is retried (FAILED -> PENDING, its
attempts back to 0, due now, the inbox woken) or dropped (deleted: `failed` leaves only for
`pending` too; the platform, answered 2xx when it was received, will not send it again). A
delivery belongs to no task (its body names remote ids, perhaps of tasks the
bridge does not know yet), so these actions are logged, not written to a task's history.

Every action is reported per id: an unknown id, or a row not in the state the action needs, is a
`Result` with `ok` False and a reason, never an exception; the other ids are still acted on.
Nothing here knows a platform.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.defaults import MAX_DEADLETTER_PAGE
from bridge.engine.context import EngineContext
from bridge.store import on_commit
from bridge.store.states import LOOKS_FIRST, DeliveryState, OpState, advance
from bridge.store.tables import HistoryRow, InboxRow, OutboxRow, TaskRow

log = logging.getLogger("taskbridge.deadletters")

MAX_PAGE = MAX_DEADLETTER_PAGE  # the most rows one listing returns
RETRY_ALL_CHUNK = 500  # rows per transaction when retrying everything parked

Reason = Literal["unknown", "wrong_state"]


@dataclass(frozen=True)
class Result:
    """What one action did to one row. `state` is the row's state afterwards (None: the row is
    gone, or never was); `reason` says why an action was refused: "unknown" (no such id) or
    "wrong_state" (e.g. retrying an operation that is not parked)."""

    id: int
    ok: bool
    state: str | None
    connector: str | None = None
    error: str | None = None
    reason: Reason | None = None


@dataclass(frozen=True)
class OperationInfo:
    id: int
    task_id: str
    title: str | None  # the task's, when it still exists
    route: str
    connector: str
    op: str
    state: str
    attempts: int
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime
    done_at: datetime | None


@dataclass(frozen=True)
class DeliveryInfo:
    id: int
    connector: str
    delivery_key: str
    state: str
    attempts: int
    error: str | None
    received_at: datetime
    processed_at: datetime | None


@dataclass(frozen=True)
class Page:
    """A page of a listing, newest first; `next_cursor` (the last id here) asks for the next page,
    None when this one was the last."""

    items: list[Any]
    next_cursor: int | None


def _limit(limit: int) -> int:
    return max(1, min(int(limit), MAX_PAGE))


def _unique(ids: Iterable[int]) -> list[int]:
    return list(dict.fromkeys(int(i) for i in ids))


def _locked(ctx: EngineContext, query: Select[Any]) -> Select[Any]:
    # On SQLite a write transaction holds the database's write lock already; on PostgreSQL the
    # rows are locked so that a worker's claim or a second person's action waits for this one.
    return query.with_for_update() if ctx.store.dialect == "postgresql" else query


def _newest_first(
    query: Select[Any],
    table: type[OutboxRow] | type[InboxRow],
    state: str | None,
    connector: str | None,
    cursor: int | None,
    limit: int,
) -> Select[Any]:
    """A listing's filters and page: in `state` (None: any), of `connector`, after `cursor`."""
    if state is not None:
        query = query.where(table.state == state)
    if connector:
        query = query.where(table.connector == connector)
    if cursor is not None:
        query = query.where(table.id < cursor)
    return query.order_by(table.id.desc()).limit(limit)


# -- outbox operations -------------------------------------------------------------------------------


async def list_operations(
    ctx: EngineContext,
    *,
    state: OpState | None = OpState.PARKED,
    connector: str | None = None,
    limit: int = 100,
    cursor: int | None = None,
) -> Page:
    """Outbox operations in `state` (None: any), newest first, at most `limit` (capped at
    MAX_PAGE); `cursor` continues after the page whose `next_cursor` it is."""
    limit = _limit(limit)
    query = select(OutboxRow, TaskRow.title).outerjoin(TaskRow, TaskRow.id == OutboxRow.task_id)
    query = _newest_first(query, OutboxRow, state, connector, cursor, limit)
    async with ctx.store.read() as session:
        rows = (await session.execute(query)).all()
    items = [
        OperationInfo(
            id=r.id,
            task_id=r.task_id,
            title=title,
            route=r.route,
            connector=r.connector,
            op=r.op,
            state=r.state,
            attempts=r.attempts,
            last_error=r.last_error,
            created_at=r.created_at,
            next_attempt_at=r.next_attempt_at,
            done_at=r.done_at,
        )
        for r, title in rows
    ]
    return Page(items, items[-1].id if len(items) == limit else None)


# -- webhook deliveries -----------------------------------------------------------------------------


async def list_deliveries(
    ctx: EngineContext,
    *,
    state: DeliveryState | None = DeliveryState.FAILED,
    connector: str | None = None,
    limit: int = 100,
    cursor: int | None = None,
) -> Page:
    """Webhook deliveries in `state` (None: any), newest first; paged like `list_operations`."""
    limit = _limit(limit)
    query = _newest_first(select(InboxRow), InboxRow, state, connector, cursor, limit)
    async with ctx.store.read() as session:
        rows = (await session.scalars(query)).all()
    items = [
        DeliveryInfo(
            id=r.id,
            connector=r.connector,
            delivery_key=r.delivery_key,
            state=r.state,
            attempts=r.attempts,
            error=r.error,
            received_at=r.received_at,
            processed_at=r.processed_at,
        )
        for r in rows
    ]
    return Page(items, items[-1].id if len(items) == limit else None)


def _op_history(row: OutboxRow, action: str, who: str, now: datetime) -> HistoryRow:
    return HistoryRow(
        task_id=row.task_id,
        field="*",
        old={"v": f"{row.op} #{row.id} parked: {row.last_error or 'no error recorded'}"},
        new={"v": f"write to {row.connector} {action} by {who}"},
        source=who,
        via="outbox",
        at=now,
    )


def _retry_op(session: AsyncSession, row: OutboxRow, who: str, now: datetime) -> None:
    session.add(_op_history(row, "retried", who, now))  # before the row changes: it names the error
    row.state = advance(row.state, OpState.PENDING)
    # A fresh budget; but a create or a comment that ran may have landed (a lost answer, a
    # follow-up request refused): its next attempt must look for it first, as any retry does.
    ran = row.attempts > 0 and row.op in LOOKS_FIRST
    row.attempts = 1 if ran else 0
    row.next_attempt_at = now
    row.claimed_by = None
    row.claim_expires_at = None
    row.done_at = None
    row.done_by = None
    # last_error stays until the operation runs again: what it failed with last time.
    log.info("outbox %s %s #%d on %s retried by %s", row.op, row.task_id, row.id, row.connector, who)


def _drop_op(session: AsyncSession, row: OutboxRow, who: str, now: datetime) -> None:
    session.add(_op_history(row, "dropped", who, now))
    log.warning(
        "outbox %s %s #%d on %s dropped by %s (it was parked: %s)",
        row.op,
        row.task_id,
        row.id,
        row.connector,
        who,
        row.last_error,
    )


def _retry_delivery(session: AsyncSession, row: InboxRow, who: str, now: datetime) -> None:
    row.state = advance(row.state, DeliveryState.PENDING)
    row.attempts = 0
    row.received_at = now  # due now: the inbox takes deliveries received up to now
    row.claimed_by = None
    row.claim_expires_at = None
    row.processed_at = None
    log.info(
        "webhook delivery #%d of %s retried by %s (it failed: %s)", row.id, row.connector, who, row.error
    )


def _drop_delivery(session: AsyncSession, row: InboxRow, who: str, now: datetime) -> None:
    log.warning(
        "webhook delivery #%d of %s (%s) dropped by %s (it failed: %s)",
        row.id,
        row.connector,
        row.delivery_key,
        who,
        row.error,
    )


Act = Callable[[AsyncSession, Any, str, datetime], None]


@dataclass(frozen=True)
class _Letters:
    """One kind of dead letter: its table, the state a person must act on, how to name a row,
    what retrying and dropping do besides the state change, and which worker to wake."""

    table: type[OutboxRow] | type[InboxRow]
    waiting: OpState | DeliveryState  # the state retry and drop act on
    noun: str  # "outbox operation"
    waiting_word: str  # "parked"
    retry: Act
    drop: Act
    wake: Callable[[EngineContext], asyncio.Event]


OPERATIONS = _Letters(
    OutboxRow, OpState.PARKED, "outbox operation", "parked", _retry_op, _drop_op, lambda ctx: ctx.outbox_ready
)
DELIVERIES = _Letters(
    InboxRow,
    DeliveryState.FAILED,
    "webhook delivery",
    "failed",
    _retry_delivery,
    _drop_delivery,
    lambda ctx: ctx.inbox_ready,
)


def _refused(kind: _Letters, row_id: int, row: Any, action: str) -> Result:
    if row is None:
        return Result(row_id, False, None, None, f"no {kind.noun} {row_id}", "unknown")
    short, waiting = kind.noun.split()[-1], kind.waiting_word
    return Result(
        row.id,
        False,
        row.state,
        row.connector,
        f"{short} {row.id} is {row.state}, not {waiting}: only a {waiting} {short} can be {action}",
        "wrong_state",
    )


async def _act(
    ctx: EngineContext, kind: _Letters, ids: Iterable[int], *, who: str, retry: bool
) -> list[Result]:
    """Retry or drop rows of `kind` by id, in one transaction; a result per id, in their order.
    A dropped row is deleted: nothing can claim it any more."""
    wanted = _unique(ids)
    if not wanted:
        return []
    now = ctx.now()
    action = "retried" if retry else "dropped"
    table = kind.table
    results: list[Result] = []
    async with ctx.store.transaction() as session:
        query = _locked(ctx, select(table).where(table.id.in_(wanted)))
        found = {r.id: r for r in (await session.scalars(query)).all()}
        for row_id in wanted:
            row = found.get(row_id)
            if row is None or row.state != kind.waiting:
                results.append(_refused(kind, row_id, row, action))
                continue
            if retry:
                kind.retry(session, row, who, now)
                results.append(Result(row.id, True, str(row.state), row.connector))
            else:
                kind.drop(session, row, who, now)
                await session.delete(row)
                results.append(Result(row.id, True, None, row.connector))
        if retry and any(r.ok for r in results):
            on_commit(session, kind.wake(ctx).set)
    return results


async def _retry_all(ctx: EngineContext, kind: _Letters, *, who: str, connector: str | None) -> list[Result]:
    """Every row of `kind` waiting for a person (of `connector`, when given) back to pending,
    oldest first, in transactions of RETRY_ALL_CHUNK rows."""
    table = kind.table
    results: list[Result] = []
    after = 0
    while True:
        now = ctx.now()
        async with ctx.store.transaction() as session:
            query = select(table).where(table.state == kind.waiting, table.id > after)
            if connector:
                query = query.where(table.connector == connector)
            rows = (
                await session.scalars(_locked(ctx, query.order_by(table.id).limit(RETRY_ALL_CHUNK)))
            ).all()
            for row in rows:
                kind.retry(session, row, who, now)
                results.append(Result(row.id, True, str(row.state), row.connector))
            if rows:
                after = rows[-1].id
                on_commit(session, kind.wake(ctx).set)
        if len(rows) < RETRY_ALL_CHUNK:
            return results


async def retry_operations(ctx: EngineContext, ids: Iterable[int], *, who: str) -> list[Result]:
    """Parked operations by id back to pending, runnable now; a result per id, in their order."""
    return await _act(ctx, OPERATIONS, ids, who=who, retry=True)


async def retry_parked(ctx: EngineContext, *, who: str, connector: str | None = None) -> list[Result]:
    """Every parked operation (of `connector`, when given) back to pending, oldest first."""
    return await _retry_all(ctx, OPERATIONS, who=who, connector=connector)


async def drop_operations(ctx: EngineContext, ids: Iterable[int], *, who: str) -> list[Result]:
    """Parked operations by id deleted (so that they never run), each noted in its task's
    history; a result per id, in their order."""
    return await _act(ctx, OPERATIONS, ids, who=who, retry=False)


async def retry_deliveries(ctx: EngineContext, ids: Iterable[int], *, who: str) -> list[Result]:
    """Failed deliveries by id back to pending, due now; a result per id, in their order."""
    return await _act(ctx, DELIVERIES, ids, who=who, retry=True)


async def retry_failed(ctx: EngineContext, *, who: str, connector: str | None = None) -> list[Result]:
    """Every failed delivery (of `connector`, when given) back to pending, oldest first."""
    return await _retry_all(ctx, DELIVERIES, who=who, connector=connector)


async def drop_deliveries(ctx: EngineContext, ids: Iterable[int], *, who: str) -> list[Result]:
    """Failed deliveries by id deleted, so that they are never processed; a result per id."""
    return await _act(ctx, DELIVERIES, ids, who=who, retry=False)
