"""Retention: delete the finished rows that `store.retention` no longer keeps.

What goes, each after its own bound (a key of `store.retention`; null keeps forever):

| key                | rows                                   | age from       |
|--------------------|----------------------------------------|----------------|
| inbox_done         | webhook deliveries processed (bodies)  | processed_at   |
| inbox_failed       | deliveries set aside as failed         | processed_at   |
| outbox_done        | writes that landed                     | done_at        |
| outbox_parked      | parked writes (kept by default)        | done_at        |
| history            | the audit rows of applied changes      | at             |
| conflicts_resolved | resolved conflicts                     | resolved_at    |

Never deleted, whatever their age: a pending or claimed delivery or operation, an open conflict
(each rule deletes rows in one finished state only, and those rows have no finish time either). Not touched at all:
tasks, links and comments (a deleted task's row and its links are what tell a late echo of it,
or a mirror still carrying its marker, from a new task: pruning them could resurrect it),
watermarks and meta (one row per connector/scope or fact), leases (one row per job name).

Each DELETE removes at most `batch` rows, oldest first, in a transaction of its own, and the
loop goes on until a batch comes back short: on SQLite the write lock is held for one batch at a
time, and the daemon's other writers (queued on the store's turn) get theirs in between. A batch
finds its rows through an index (migration 0008: outbox state+done_at, inbox state+processed_at,
conflicts state+resolved_at, history at) and deletes them by primary key. On PostgreSQL it locks
them as it finds them (FOR UPDATE SKIP LOCKED): a row another transaction holds (a person
retrying a failed delivery) is left for the next run, and one changed meanwhile is checked again.

The daemon runs `prune` every few minutes on one replica at a time (the "retention" lease).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Delete, Table, delete, select

from bridge import metrics
from bridge.config import RetentionConfig
from bridge.defaults import DEFAULT_PRUNE_BATCH
from bridge.engine.context import EngineContext
from bridge.store import Store
from bridge.store.states import ConflictState, DeliveryState, OpState
from bridge.store.tables import ConflictRow, HistoryRow, InboxRow, OutboxRow

log = logging.getLogger("taskbridge.retention")

LEASE = "retention"  # the lease the daemon's job holds while it prunes


@dataclass(frozen=True)
class Rule:
    key: str  # its store.retention key, and its key in what `prune` returns
    table: Table
    age: str  # the column a row's age is counted from (NULL: never finished, never deleted)
    state: str | None  # the one state a row must be in to go


def _table(row: type[object]) -> Table:
    return row.__table__  # type: ignore[attr-defined,no-any-return]


RULES: tuple[Rule, ...] = (
    Rule("inbox_done", _table(InboxRow), "processed_at", DeliveryState.DONE),
    Rule("inbox_failed", _table(InboxRow), "processed_at", DeliveryState.FAILED),
    Rule("outbox_done", _table(OutboxRow), "done_at", OpState.DONE),
    Rule("outbox_parked", _table(OutboxRow), "done_at", OpState.PARKED),
    Rule("history", _table(HistoryRow), "at", None),
    Rule("conflicts_resolved", _table(ConflictRow), "resolved_at", ConflictState.RESOLVED),
)


async def prune(
    target: Store | EngineContext,
    retention: RetentionConfig,
    now: datetime,
    *,
    batch: int = DEFAULT_PRUNE_BATCH,
) -> dict[str, int]:
    """Delete every row older than its bound; returns rows deleted per retention key (0 for a
    key that keeps forever). Counts in `taskbridge_pruned_rows_total` as each batch commits."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    store = target if isinstance(target, Store) else target.store
    started = time.monotonic()
    counts: dict[str, int] = {}
    try:
        for rule in RULES:
            keep = getattr(retention, rule.key)
            counts[rule.key] = (
                0 if keep is None else await _prune(store, rule, now - timedelta(seconds=keep), batch)
            )
    finally:
        metrics.prune_duration.observe(time.monotonic() - started)
    if any(counts.values()):
        log.info(
            "retention deleted %s in %.1f s",
            ", ".join(f"{n} {key}" for key, n in counts.items() if n),
            time.monotonic() - started,
        )
    return counts


def statement(rule: Rule, cutoff: datetime, batch: int, dialect: str) -> Delete:
    """One batch of `rule`: its `batch` oldest rows finished before `cutoff`, found through the
    rule's index and deleted by primary key. On PostgreSQL the rows are locked as they are found,
    and a row locked by another transaction (a person retrying it) is skipped; FOR UPDATE also
    checks the state again on a row changed since the statement began, so a delivery retried
    meanwhile is not taken. On SQLite the transaction holds the one write lock: nothing changes
    under it."""
    table = rule.table
    age = table.c[rule.age]
    where = [age < cutoff]
    if rule.state is not None:
        where.insert(0, table.c.state == rule.state)
    oldest = select(table.c.id).where(*where).order_by(age).limit(batch)
    if dialect == "postgresql":
        oldest = oldest.with_for_update(skip_locked=True)
    return delete(table).where(table.c.id.in_(oldest.scalar_subquery()))


async def _prune(store: Store, rule: Rule, cutoff: datetime, batch: int) -> int:
    one_batch = statement(rule, cutoff, batch, store.dialect)
    total = 0
    while True:
        async with store.transaction() as session:
            result = await session.execute(one_batch)
            deleted = int(result.rowcount or 0)  # type: ignore[attr-defined]
        total += deleted
        if deleted:
            metrics.pruned_rows.labels(rule.table.name).inc(deleted)
        if deleted < batch:
            return total
        await asyncio.sleep(0)  # the other writers' turn
