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

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.engine.context import EngineContext
from bridge.store import on_commit
from bridge.store.states import DeliveryState, OpState, advance
from bridge.store.tables import HistoryRow, InboxRow, OutboxRow, TaskRow

log = logging.getLogger("taskbridge.deadletters")

MAX_PAGE = 1000  # the most rows one listing returns
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
    if state is not None:
        query = query.where(OutboxRow.state == state)
    if connector:
        query = query.where(OutboxRow.connector == connector)
    if cursor is not None:
        query = query.where(OutboxRow.id < cursor)
    query = query.order_by(OutboxRow.id.desc()).limit(limit)
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


def _not_parked(row: OutboxRow, action: str) -> Result:
    return Result(
        row.id,
        False,
        row.state,
        row.connector,
        f"operation {row.id} is {row.state}, not parked: only a parked operation can be {action}",
        "wrong_state",
    )


def _unknown_op(op_id: int) -> Result:
    return Result(op_id, False, None, None, f"no outbox operation {op_id}", "unknown")


def _retry_op(session: AsyncSession, row: OutboxRow, who: str, now: datetime) -> Result:
    if row.state != OpState.PARKED:
        return _not_parked(row, "retried")
    session.add(_op_history(row, "retried", who, now))  # before the row changes: it names the error
    row.state = advance(row.state, OpState.PENDING)
    row.attempts = 0
    row.next_attempt_at = now
    row.claimed_by = None
    row.claim_expires_at = None
    row.done_at = None
    row.done_by = None
    # last_error stays until the operation runs again: what it failed with last time.
    log.info("outbox %s %s #%d on %s retried by %s", row.op, row.task_id, row.id, row.connector, who)
    return Result(row.id, True, str(row.state), row.connector)


async def retry_operations(ctx: EngineContext, ids: Iterable[int], *, who: str) -> list[Result]:
    """Parked operations by id back to pending, runnable now; a result per id, in their order."""
    wanted = _unique(ids)
    if not wanted:
        return []
    now = ctx.now()
    async with ctx.store.transaction() as session:
        found = {
            r.id: r
            for r in (
                await session.scalars(_locked(ctx, select(OutboxRow).where(OutboxRow.id.in_(wanted))))
            ).all()
        }
        results = [_retry_op(session, found[i], who, now) if i in found else _unknown_op(i) for i in wanted]
        if any(r.ok for r in results):
            on_commit(session, ctx.outbox_ready.set)
    return results


async def retry_parked(ctx: EngineContext, *, who: str, connector: str | None = None) -> list[Result]:
    """Every parked operation (of `connector`, when given) back to pending, oldest first, in
    transactions of RETRY_ALL_CHUNK operations."""
    results: list[Result] = []
    after = 0
    while True:
        now = ctx.now()
        async with ctx.store.transaction() as session:
            query = select(OutboxRow).where(OutboxRow.state == OpState.PARKED, OutboxRow.id > after)
            if connector:
                query = query.where(OutboxRow.connector == connector)
            rows = (
                await session.scalars(_locked(ctx, query.order_by(OutboxRow.id).limit(RETRY_ALL_CHUNK)))
            ).all()
            for row in rows:
                results.append(_retry_op(session, row, who, now))
            if rows:
                after = rows[-1].id
                on_commit(session, ctx.outbox_ready.set)
        if len(rows) < RETRY_ALL_CHUNK:
            return results


async def drop_operations(ctx: EngineContext, ids: Iterable[int], *, who: str) -> list[Result]:
    """Parked operations by id deleted (so that they never run), each noted in its task's
    history; a result per id, in their order."""
    wanted = _unique(ids)
    if not wanted:
        return []
    now = ctx.now()
    results: list[Result] = []
    async with ctx.store.transaction() as session:
        found = {
            r.id: r
            for r in (
                await session.scalars(_locked(ctx, select(OutboxRow).where(OutboxRow.id.in_(wanted))))
            ).all()
        }
        for op_id in wanted:
            row = found.get(op_id)
            if row is None:
                results.append(_unknown_op(op_id))
                continue
            if row.state != OpState.PARKED:
                results.append(_not_parked(row, "dropped"))
                continue
            session.add(_op_history(row, "dropped", who, now))
            await session.delete(row)
            log.warning(
                "outbox %s %s #%d on %s dropped by %s (it was parked: %s)",
                row.op,
                row.task_id,
                row.id,
                row.connector,
                who,
                row.last_error,
            )
            results.append(Result(op_id, True, None, row.connector))
    return results


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
    query = select(InboxRow)
    if state is not None:
        query = query.where(InboxRow.state == state)
    if connector:
        query = query.where(InboxRow.connector == connector)
    if cursor is not None:
        query = query.where(InboxRow.id < cursor)
    query = query.order_by(InboxRow.id.desc()).limit(limit)
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


def _not_failed(row: InboxRow, action: str) -> Result:
    return Result(
        row.id,
        False,
        row.state,
        row.connector,
        f"delivery {row.id} is {row.state}, not failed: only a failed delivery can be {action}",
        "wrong_state",
    )


def _unknown_delivery(delivery_id: int) -> Result:
    return Result(delivery_id, False, None, None, f"no webhook delivery {delivery_id}", "unknown")


def _retry_delivery(row: InboxRow, who: str, now: datetime) -> Result:
    if row.state != DeliveryState.FAILED:
        return _not_failed(row, "retried")
    row.state = advance(row.state, DeliveryState.PENDING)
    row.attempts = 0
    row.received_at = now  # due now: the inbox takes deliveries received up to now
    row.claimed_by = None
    row.claim_expires_at = None
    row.processed_at = None
    log.info(
        "webhook delivery #%d of %s retried by %s (it failed: %s)", row.id, row.connector, who, row.error
    )
    return Result(row.id, True, str(row.state), row.connector)


async def _deliveries(ctx: EngineContext, session: AsyncSession, ids: Sequence[int]) -> dict[int, InboxRow]:
    query = _locked(ctx, select(InboxRow).where(InboxRow.id.in_(ids)))
    return {r.id: r for r in (await session.scalars(query)).all()}


async def retry_deliveries(ctx: EngineContext, ids: Iterable[int], *, who: str) -> list[Result]:
    """Failed deliveries by id back to pending, due now; a result per id, in their order."""
    wanted = _unique(ids)
    if not wanted:
        return []
    now = ctx.now()
    async with ctx.store.transaction() as session:
        found = await _deliveries(ctx, session, wanted)
        results = [
            _retry_delivery(found[i], who, now) if i in found else _unknown_delivery(i) for i in wanted
        ]
        if any(r.ok for r in results):
            on_commit(session, ctx.inbox_ready.set)
    return results


async def retry_failed(ctx: EngineContext, *, who: str, connector: str | None = None) -> list[Result]:
    """Every failed delivery (of `connector`, when given) back to pending, oldest first."""
    results: list[Result] = []
    after = 0
    while True:
        now = ctx.now()
        async with ctx.store.transaction() as session:
            query = select(InboxRow).where(InboxRow.state == DeliveryState.FAILED, InboxRow.id > after)
            if connector:
                query = query.where(InboxRow.connector == connector)
            rows = (
                await session.scalars(_locked(ctx, query.order_by(InboxRow.id).limit(RETRY_ALL_CHUNK)))
            ).all()
            for row in rows:
                results.append(_retry_delivery(row, who, now))
            if rows:
                after = rows[-1].id
                on_commit(session, ctx.inbox_ready.set)
        if len(rows) < RETRY_ALL_CHUNK:
            return results


async def drop_deliveries(ctx: EngineContext, ids: Iterable[int], *, who: str) -> list[Result]:
    """Failed deliveries by id deleted, so that they are never processed; a result per id."""
    wanted = _unique(ids)
    if not wanted:
        return []
    results: list[Result] = []
    async with ctx.store.transaction() as session:
        found = await _deliveries(ctx, session, wanted)
        for delivery_id in wanted:
            row = found.get(delivery_id)
            if row is None:
                results.append(_unknown_delivery(delivery_id))
                continue
            if row.state != DeliveryState.FAILED:
                results.append(_not_failed(row, "dropped"))
                continue
            await session.delete(row)
            log.warning(
                "webhook delivery #%d of %s (%s) dropped by %s (it failed: %s)",
                row.id,
                row.connector,
                row.delivery_key,
                who,
                row.error,
            )
            results.append(Result(delivery_id, True, None, row.connector))
    return results
