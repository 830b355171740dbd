"""Retention (bridge/engine/retention.py) on SQLite and PostgreSQL: finished rows older than their
bound go, younger ones and unfinished ones stay, in batches; and the daemon's job that runs it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bridge import config, metrics
from bridge.config import RetentionConfig
from bridge.daemon import Daemon, DaemonOptions
from bridge.defaults import DEFAULT_PRUNE_FIRST_DELAY, DEFAULT_PRUNE_INTERVAL
from bridge.engine import retention
from bridge.store import Store
from bridge.store.tables import ConflictRow, HistoryRow, InboxRow, LeaseRow, OutboxRow, TaskRow

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
TASK = "01JRETENT10N00000000000000"
DAY = timedelta(days=1)
FOREVER = RetentionConfig(
    inbox_done=None,
    inbox_failed=None,
    outbox_done=None,
    outbox_parked=None,
    history=None,
    conflicts_resolved=None,
)


# -- rows of each kind, finished (or not) at a given age ----------------------------------------


@dataclass(frozen=True)
class Case:
    kind: str  # inbox | outbox | history | conflicts
    state: str | None
    age: timedelta | None  # how long ago it finished (None: it has no finish time)
    kept: bool  # under the default retention
    name: str


def row_of(case: Case, n: int) -> Any:
    finished = None if case.age is None else NOW - case.age
    old = NOW - 400 * DAY  # every row was made long ago: only its finish time may matter
    if case.kind == "inbox":
        return InboxRow(
            connector="tracker",
            delivery_key=f"{case.name}-{n}",
            body='{"event": "task.updated"}' * 20,
            state=case.state,
            attempts=1,
            received_at=old,
            processed_at=finished,
            claimed_by="r1" if case.state == "claimed" else None,
            claim_expires_at=old if case.state == "claimed" else None,
        )
    if case.kind == "outbox":
        return OutboxRow(
            task_id=TASK,
            route="main",
            connector="tracker",
            op="update",
            payload={},
            state=case.state,
            next_attempt_at=old,
            observed_at=old,
            created_at=old,
            done_at=finished,
            claimed_by="r1" if case.state == "claimed" else None,
            claim_expires_at=old if case.state == "claimed" else None,
        )
    if case.kind == "history":
        assert finished is not None
        return HistoryRow(
            task_id=TASK, field="title", old={"v": "a"}, new={"v": "b"}, source="api", via="api", at=finished
        )
    return ConflictRow(
        task_id=TASK,
        route="main",
        field="title",
        candidates={"bridge": "a", "tracker": "b"},
        state=case.state,
        resolution={"value": "a"} if case.state == "resolved" else None,
        created_at=old,
        resolved_at=finished,
    )


# Under the defaults: inbox done 3d, failed 30d; outbox done 14d, parked kept; history 90d;
# resolved conflicts 90d. The states that are work to do stay whatever their times say.
CASES = [
    Case("inbox", "done", 4 * DAY, False, "inbox done past 3d"),
    Case("inbox", "done", 2 * DAY, True, "inbox done within 3d"),
    Case("inbox", "failed", 31 * DAY, False, "inbox failed past 30d"),
    Case("inbox", "failed", 29 * DAY, True, "inbox failed within 30d"),
    Case("inbox", "pending", None, True, "inbox pending, received long ago"),
    Case("inbox", "pending", 400 * DAY, True, "inbox pending with an old processed_at"),
    Case("inbox", "claimed", 400 * DAY, True, "inbox claimed with an old processed_at"),
    Case("outbox", "done", 15 * DAY, False, "outbox done past 14d"),
    Case("outbox", "done", 13 * DAY, True, "outbox done within 14d"),
    Case("outbox", "parked", 400 * DAY, True, "outbox parked (kept by default)"),
    Case("outbox", "pending", None, True, "outbox pending, made long ago"),
    Case("outbox", "pending", 400 * DAY, True, "outbox pending with an old done_at"),
    Case("outbox", "claimed", 400 * DAY, True, "outbox claimed with an old done_at"),
    Case("history", None, 91 * DAY, False, "history past 90d"),
    Case("history", None, 89 * DAY, True, "history within 90d"),
    Case("conflicts", "resolved", 91 * DAY, False, "conflict resolved past 90d"),
    Case("conflicts", "resolved", 89 * DAY, True, "conflict resolved within 90d"),
    Case("conflicts", "open", None, True, "conflict open, made long ago"),
    Case("conflicts", "open", 400 * DAY, True, "conflict open with an old resolved_at"),
]
KINDS: dict[str, type[Any]] = {
    "inbox": InboxRow,
    "outbox": OutboxRow,
    "history": HistoryRow,
    "conflicts": ConflictRow,
}
PER_CASE = 3


async def add_task(store: Store) -> None:
    async with store.transaction() as s:
        s.add(TaskRow(id=TASK, route="main", data={"title": "t"}, title="t", created_at=NOW, updated_at=NOW))


async def add_cases(store: Store, cases: list[Case], per_case: int = PER_CASE) -> dict[str, list[int]]:
    """`per_case` rows for every case; returns case name -> the ids of its rows."""
    await add_task(store)
    async with store.transaction() as s:
        made = [(case, row_of(case, n)) for case in cases for n in range(per_case)]
        s.add_all([row for _, row in made])
        await s.flush()
        ids: dict[str, list[int]] = {}
        for case, row in made:
            ids.setdefault(case.name, []).append(row.id)
    return ids


async def surviving(store: Store, cases: list[Case], ids: dict[str, list[int]]) -> dict[str, int]:
    """Case name -> how many of its rows are still there."""
    async with store.read() as s:
        return {
            c.name: int(
                await s.scalar(
                    select(func.count()).select_from(KINDS[c.kind]).where(KINDS[c.kind].id.in_(ids[c.name]))
                )
                or 0
            )
            for c in cases
        }


def pruned_samples() -> dict[str, float]:
    return {
        t: metrics.REGISTRY.get_sample_value("taskbridge_pruned_rows_total", {"table": t}) or 0.0
        for t in metrics.PRUNED_TABLES
    }


# -- prune -------------------------------------------------------------------------------------


async def test_rows_past_their_bound_go_and_the_rest_stay(store: Store) -> None:
    ids = await add_cases(store, CASES)
    before = pruned_samples()
    counts = await retention.prune(store, RetentionConfig(), NOW)
    after = await surviving(store, CASES, ids)
    wrong = {c.name: after[c.name] for c in CASES if after[c.name] != (PER_CASE if c.kept else 0)}
    assert not wrong, f"rows kept (3) or deleted (0) against the table: {wrong}"
    assert counts == {
        "inbox_done": PER_CASE,
        "inbox_failed": PER_CASE,
        "outbox_done": PER_CASE,
        "outbox_parked": 0,
        "history": PER_CASE,
        "conflicts_resolved": PER_CASE,
    }
    grown = {t: v - before[t] for t, v in pruned_samples().items()}
    assert grown == {"inbox": 2 * PER_CASE, "outbox": PER_CASE, "history": PER_CASE, "conflicts": PER_CASE}
    # A second run finds nothing more.
    assert set((await retention.prune(store, RetentionConfig(), NOW)).values()) == {0}


async def test_each_bound_is_its_own_and_null_keeps_forever(store: Store) -> None:
    cases = [
        Case("outbox", "parked", 91 * DAY, False, "parked past 90d"),
        Case("outbox", "parked", 89 * DAY, True, "parked within 90d"),
        Case("outbox", "done", 15 * DAY, True, "done past 14d, kept forever"),
        Case("history", None, timedelta(hours=2), False, "history past 1h"),
        Case("history", None, timedelta(minutes=30), True, "history within 1h"),
        Case("inbox", "done", 400 * DAY, True, "inbox done, kept forever"),
    ]
    ids = await add_cases(store, cases)
    bounds = FOREVER.model_copy(update={"outbox_parked": 90 * 86400.0, "history": 3600.0})
    counts = await retention.prune(store, bounds, NOW)
    after = await surviving(store, cases, ids)
    assert {c.name: after[c.name] for c in cases} == {c.name: PER_CASE if c.kept else 0 for c in cases}
    assert counts["outbox_parked"] == PER_CASE and counts["history"] == PER_CASE
    assert counts["outbox_done"] == counts["inbox_done"] == 0


async def test_keeping_everything_deletes_nothing(store: Store) -> None:
    ids = await add_cases(store, CASES)
    counts = await retention.prune(store, FOREVER, NOW + 10_000 * DAY)
    assert set(counts.values()) == {0}
    assert set((await surviving(store, CASES, ids)).values()) == {PER_CASE}


@asynccontextmanager
async def counting_transactions(store: Store, seen: list[int]) -> AsyncIterator[None]:
    original = store.transaction

    @asynccontextmanager
    async def counted() -> AsyncIterator[AsyncSession]:
        seen.append(1)
        async with original() as session:
            yield session

    store.transaction = counted  # type: ignore[method-assign]
    try:
        yield
    finally:
        store.transaction = original  # type: ignore[method-assign]


@pytest.mark.parametrize(("rows", "batch", "transactions"), [(23, 5, 5), (25, 5, 6), (3, 5, 1), (1, 1, 2)])
async def test_batches_loop_until_done(store: Store, rows: int, batch: int, transactions: int) -> None:
    """One transaction per batch, until a batch comes back short (a full last one costs one more,
    which finds nothing)."""
    case = Case("outbox", "done", 20 * DAY, False, "old")
    await add_cases(store, [case, Case("outbox", "done", DAY, True, "young")], per_case=rows)
    only_outbox = FOREVER.model_copy(update={"outbox_done": 14 * 86400.0})
    seen: list[int] = []
    before = pruned_samples()["outbox"]
    async with counting_transactions(store, seen):
        counts = await retention.prune(store, only_outbox, NOW, batch=batch)
    assert counts["outbox_done"] == rows
    assert len(seen) == transactions
    assert pruned_samples()["outbox"] - before == rows
    async with store.read() as s:
        assert await s.scalar(select(func.count()).select_from(OutboxRow)) == rows  # the young ones


async def test_other_writers_get_their_turn_between_batches(store: Store) -> None:
    await add_cases(store, [Case("history", None, 100 * DAY, False, "old")], per_case=30)
    if store.dialect != "sqlite":
        # Two connections ready in the pool: the writer would otherwise open a new one, which
        # under a loaded CI once took longer than the whole run.
        async with store.engine.connect() as one, store.engine.connect() as two:
            await one.execute(select(1))
            await two.execute(select(1))
    started = asyncio.Event()
    original = store.transaction

    @asynccontextmanager
    async def noticed() -> AsyncIterator[AsyncSession]:
        started.set()
        async with original() as session:
            yield session

    left: list[int] = []

    async def writer() -> None:
        await started.wait()
        async with original() as s:
            s.add(HistoryRow(task_id=TASK, field="title", source="api", via="api", at=NOW))
            left.append(
                int(await s.scalar(select(func.count()).select_from(HistoryRow).where(HistoryRow.at < NOW)))
            )

    store.transaction = noticed  # type: ignore[method-assign]
    try:
        counts, _ = await asyncio.gather(
            retention.prune(store, FOREVER.model_copy(update={"history": 86400.0}), NOW, batch=1), writer()
        )
    finally:
        store.transaction = original  # type: ignore[method-assign]
    assert counts["history"] == 30
    assert left and left[0] > 0, "the writer waited for the whole run instead of one batch"


async def test_a_row_another_transaction_holds_is_skipped_not_waited_for(store: Store) -> None:
    """PostgreSQL: a failed delivery a person is retrying (its row locked, not yet committed) is
    neither deleted nor waited for; once retried it is pending, and kept."""
    if store.dialect == "sqlite":
        pytest.skip("on SQLite a batch holds the one write lock: no row changes under it")
    ids = await add_cases(
        store,
        [Case("inbox", "failed", 40 * DAY, False, "held"), Case("inbox", "failed", 40 * DAY, False, "free")],
        per_case=1,
    )
    only_failed = FOREVER.model_copy(update={"inbox_failed": 30 * 86400.0})
    async with store.transaction() as person:
        row = await person.get(InboxRow, ids["held"][0], with_for_update=True)
        assert row is not None
        row.state = "pending"
        await person.flush()
        counts = await asyncio.wait_for(retention.prune(store, only_failed, NOW), timeout=10)
        assert counts["inbox_failed"] == 1  # the free one
    assert await surviving(store, [Case("inbox", "failed", None, True, "held")], ids) == {"held": 1}
    assert await retention.prune(store, only_failed, NOW) == dict.fromkeys(counts, 0)


# Which index each rule's batch reads (migration 0008).
INDEXES = {
    "inbox_done": "ix_inbox_state_processed_at",
    "inbox_failed": "ix_inbox_state_processed_at",
    "outbox_done": "ix_outbox_state_done_at",
    "outbox_parked": "ix_outbox_state_done_at",
    "history": "ix_history_at",
    "conflicts_resolved": "ix_conflicts_state_resolved_at",
}


@pytest.mark.parametrize("rule", retention.RULES, ids=lambda r: r.key)
async def test_each_batch_finds_rows_by_index_and_deletes_by_primary_key(
    store: Store, rule: retention.Rule
) -> None:
    compiled = retention.statement(rule, NOW, 5000, store.dialect).compile(dialect=store.engine.dialect)
    params = tuple(compiled.params[k] for k in compiled.positiontup or ())
    # SET LOCAL needs a transaction, and PostgreSQL's reads run in autocommit.
    async with store.read() if store.dialect == "sqlite" else store.sessions() as s:
        conn = await s.connection()
        if store.dialect == "sqlite":
            params = tuple(
                v.replace(tzinfo=None).isoformat(" ") if isinstance(v, datetime) else v for v in params
            )
            explain = "EXPLAIN QUERY PLAN"
        else:
            # The test's tables are tiny: without this the planner would rightly scan them whole.
            await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            explain = "EXPLAIN"
        plan = (await conn.exec_driver_sql(f"{explain} {compiled}", params)).all()
    shown = " ".join(str(r) for r in plan)
    assert INDEXES[rule.key] in shown, plan  # the rows are found through the index...
    primary_key = "INTEGER PRIMARY KEY" if store.dialect == "sqlite" else f"pk_{rule.table.name}"
    assert primary_key in shown, plan  # ...and deleted by primary key, not by a second scan


# -- the daemon's job ----------------------------------------------------------------------------


def daemon_config(tmp_path: Path, retention_yaml: str) -> config.Config:
    path = tmp_path / "taskbridge.yaml"
    path.write_text(f"store:\n  url: sqlite+aiosqlite:///{tmp_path}/d.db\n  retention:\n{retention_yaml}")
    return config.load(path, env={})


async def wait_for(check: Callable[[], Any], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def history_ids(store: Store) -> list[int]:
    async with store.read() as s:
        return list((await s.scalars(select(HistoryRow.id).order_by(HistoryRow.id))).all())


async def test_the_daemon_schedules_pruning_and_it_prunes(tmp_path: Path) -> None:
    cfg = daemon_config(tmp_path, "    history: 1h\n")
    daemon = Daemon(cfg, options=DaemonOptions(poll=False, serve=False))
    await daemon.start()
    try:
        job = daemon.scheduler.get_job("retention")
        assert job is not None
        assert job.trigger.interval == timedelta(seconds=DEFAULT_PRUNE_INTERVAL)
        first = (job.next_run_time - datetime.now(UTC)).total_seconds()
        assert DEFAULT_PRUNE_FIRST_DELAY - 5 < first <= DEFAULT_PRUNE_FIRST_DELAY  # not at start-up
        now = daemon.ctx.now()
        async with daemon.store.transaction() as s:
            for age in (timedelta(hours=3), timedelta(hours=2), timedelta(minutes=5)):
                s.add(HistoryRow(task_id=TASK, field="title", source="api", via="api", at=now - age))
        young = (await history_ids(daemon.store))[-1]
        job.modify(next_run_time=datetime.now(UTC))  # run it now, through the scheduler

        async def pruned_and_released() -> bool:
            # The lease is released in its own transaction after the last batch: wait for both,
            # or a loaded machine sees the rows gone and the lease not yet released.
            async with daemon.store.read() as s:
                released = await s.get(LeaseRow, retention.LEASE) is None
            return released and await history_ids(daemon.store) == [young]

        await wait_for(pruned_and_released)
        assert daemon.scheduler.get_job("retention") is not None  # and scheduled again
    finally:
        await daemon.stop()


async def test_only_the_replica_holding_the_lease_prunes(tmp_path: Path) -> None:
    cfg = daemon_config(tmp_path, "    history: 1h\n")
    daemon = Daemon(cfg, options=DaemonOptions(poll=False, serve=False))
    await daemon.store.migrate()
    try:
        now = daemon.ctx.now()
        async with daemon.store.transaction() as s:
            s.add(HistoryRow(task_id=TASK, field="title", source="api", via="api", at=now - 2 * DAY))
            s.add(
                LeaseRow(
                    name=retention.LEASE,
                    holder="another-replica",
                    expires_at=now + timedelta(minutes=5),
                    acquired_at=now,
                )
            )
        await daemon.prune_once()
        assert len(await history_ids(daemon.store)) == 1  # the other replica's round
        async with daemon.store.transaction() as s:
            lease = await s.get(LeaseRow, retention.LEASE)
            assert lease is not None and lease.holder == "another-replica"
            lease.expires_at = now - timedelta(seconds=1)  # it died
        await daemon.prune_once()
        assert await history_ids(daemon.store) == []
    finally:
        for conn in daemon.ctx.connectors.values():
            await conn.aclose()
        await daemon.store.close()
