"""The store on SQLite and PostgreSQL: migrations, UTC round-trips, JSON, constraints, cascades."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, event, func, insert, inspect, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError, PendingRollbackError

from bridge.store import Store, StoreLost, redact_url
from bridge.store.prepared import run
from bridge.store.tables import HistoryRow, LinkRow, MetaRow, OutboxRow, TaskRow, metadata
from tests.conftest import terminate_pg_backends

NOW = datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=UTC)


def task_row(task_id: str = "01JTASK0000000000000000000") -> TaskRow:
    return TaskRow(
        id=task_id,
        route="main",
        data={"title": "T", "tags": ["a"]},
        title="T",
        status="todo",
        created_at=NOW,
        updated_at=NOW,
    )


async def test_migrations_create_every_table_and_are_idempotent(store: Store) -> None:
    await store.migrate()  # a second run is a no-op
    assert await store.schema_is_current()
    async with store.engine.connect() as conn:
        names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert set(metadata.tables) <= names
    assert "alembic_version" in names


async def test_timestamps_round_trip_as_utc(store: Store) -> None:
    plus_two = NOW.astimezone(timezone(timedelta(hours=2)))
    row = task_row()
    row.updated_at = plus_two
    async with store.transaction() as s:
        s.add(row)
    async with store.sessions() as s:
        got = await s.get(TaskRow, row.id)
    assert got is not None
    assert got.updated_at == NOW and got.updated_at.tzinfo is not None
    assert got.updated_at.utcoffset() == timedelta(0)
    assert got.data == {"title": "T", "tags": ["a"]}


async def test_naive_datetimes_are_refused(store: Store) -> None:
    row = task_row()
    row.created_at = datetime(2026, 1, 1)
    with pytest.raises(Exception, match="naive datetime"):
        async with store.transaction() as s:
            s.add(row)


async def test_link_remote_ids_are_unique_per_connector(store: Store) -> None:
    async with store.transaction() as s:
        s.add(task_row("A" * 26))
        s.add(task_row("B" * 26))
    link = dict(route="main", scope="p", state="active", base={}, created_at=NOW, updated_at=NOW)
    async with store.transaction() as s:
        s.add(LinkRow(task_id="A" * 26, connector="imp", remote_id="r1", **link))
        s.add(LinkRow(task_id="B" * 26, connector="vt", remote_id="r1", **link))  # other connector: fine
    with pytest.raises(IntegrityError):
        async with store.transaction() as s:
            s.add(LinkRow(task_id="B" * 26, connector="imp", remote_id="r1", **link))
    # Several links may wait for their remote id (creates in flight): NULLs don't collide.
    async with store.transaction() as s:
        s.add(LinkRow(task_id="A" * 26, connector="ak", remote_id=None, **{**link, "scope": "b1"}))
        s.add(LinkRow(task_id="B" * 26, connector="ak", remote_id=None, **{**link, "scope": "b1"}))


async def test_deleting_a_task_cascades_to_links(store: Store) -> None:
    async with store.transaction() as s:
        s.add(task_row())
        await s.flush()  # no relationship() between the rows, so the unit of work needs the order
        s.add(
            LinkRow(
                task_id=task_row().id,
                route="main",
                connector="imp",
                scope="p",
                remote_id="r",
                base={},
                created_at=NOW,
                updated_at=NOW,
            )
        )
    async with store.transaction() as s:
        await s.delete(await s.get(TaskRow, task_row().id))
    async with store.sessions() as s:
        assert (await s.scalar(select(func.count()).select_from(LinkRow))) == 0


async def test_autoincrement_ids_and_transaction_rollback(store: Store) -> None:
    async with store.transaction() as s:
        s.add(
            HistoryRow(
                task_id="x", field="title", old={"v": "a"}, new={"v": "b"}, source="imp", via="poll", at=NOW
            )
        )
    with pytest.raises(RuntimeError):
        async with store.transaction() as s:
            s.add(
                OutboxRow(
                    task_id="x",
                    route="main",
                    connector="vt",
                    op="update",
                    payload={},
                    next_attempt_at=NOW,
                    observed_at=NOW,
                    created_at=NOW,
                )
            )
            await s.flush()
            raise RuntimeError("boom")
    async with store.sessions() as s:
        assert (await s.scalar(select(func.count()).select_from(OutboxRow))) == 0
        assert (await s.scalar(select(HistoryRow.id))) == 1


async def test_sqlite_runs_in_wal_mode(tmp_path: object) -> None:
    s = Store.open(f"sqlite+aiosqlite:///{tmp_path}/wal.db")
    try:
        await s.migrate()
        async with s.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
    finally:
        await s.close()


async def test_sqlite_writers_in_one_process_take_turns_and_readers_never_wait(tmp_path: object) -> None:
    s = Store.open(f"sqlite+aiosqlite:///{tmp_path}/turns.db")
    try:
        await s.migrate()
        async with s.transaction() as session:
            session.add(task_row())

        async def bump(i: int) -> None:
            # read-then-write: fails ("database is locked") or loses updates unless writers queue
            async with s.transaction() as session:
                row = await session.get(TaskRow, task_row().id)
                assert row is not None
                await asyncio.sleep(0.001 * (i % 3))
                row.data = {**row.data, "n": row.data.get("n", 0) + 1}

        holding, release = asyncio.Event(), asyncio.Event()

        async def hold_the_write_lock() -> None:
            async with s.transaction() as session:
                (await session.get(TaskRow, task_row().id)).title = "held"  # type: ignore[union-attr]
                await session.flush()
                holding.set()
                await release.wait()

        holder = asyncio.create_task(hold_the_write_lock())
        await holding.wait()
        async with s.read() as session:  # WAL: the last committed state, at once
            got = await asyncio.wait_for(session.get(TaskRow, task_row().id), timeout=2)
            assert got is not None and got.title == "T"
        release.set()
        await holder
        await asyncio.gather(*(bump(i) for i in range(30)))
        async with s.read() as session:
            row = await session.get(TaskRow, task_row().id)
            assert row is not None and row.data["n"] == 30 and row.title == "held"
    finally:
        await s.close()


async def test_sqlite_writers_share_one_connection_that_every_way_out_leaves_clean(tmp_path: Path) -> None:
    """On SQLite every write transaction of a process runs on one held connection. A transaction
    that fails, one cancelled while it waits, one left open on the connection, and one whose
    connection the driver lost each leave the next writer a clean start."""
    s = Store.open(f"sqlite+aiosqlite:///{tmp_path}/writer.db")

    async def driver_connection(conn: Any) -> Any:
        return (await conn.get_raw_connection()).driver_connection

    async def titles() -> list[str]:
        async with s.read() as session:
            return sorted((await session.scalars(select(TaskRow.title))).all())

    def named(title: str) -> TaskRow:
        row = task_row(f"01JTASK{title.upper():0<19}")
        row.title = title
        return row

    try:
        await s.migrate()
        async with s.transaction() as session:
            session.add(named("kept"))
            held = await driver_connection(await session.connection())
        async with s.statements() as conn:
            assert await driver_connection(conn) is held

        with pytest.raises(RuntimeError):
            async with s.transaction() as session:
                session.add(named("failed"))
                await session.flush()
                raise RuntimeError("boom")

        waiting = asyncio.Event()

        async def cancelled() -> None:
            async with s.transaction() as session:
                session.add(named("cancelled"))
                await session.flush()
                waiting.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(cancelled())
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        async with s.statements() as conn:
            pass
        await conn.begin()  # a transaction left open on the held connection (none of ours does)
        await conn.execute(MetaRow.__table__.insert().values(key="left open", value={}))
        async with s.transaction() as session:
            assert await session.get(MetaRow, "left open") is None
            session.add(named("after"))
            assert await driver_connection(await session.connection()) is held

        with pytest.raises(PendingRollbackError):
            async with s.transaction() as session:
                session.add(named("lost"))
                await (await session.connection()).invalidate()  # the driver lost it
        async with s.transaction() as session:
            session.add(named("reconnected"))
            assert await driver_connection(await session.connection()) is not held
        assert await titles() == ["after", "kept", "reconnected"]
    finally:
        await s.close()
    assert s._writer is None


async def test_sqlite_echo_checks_share_one_connection_each_use_reading_what_was_committed(
    tmp_path: Path,
) -> None:
    """On SQLite `reading()` holds one connection for its uses, each a transaction of its own:
    the next use reads what was committed since. A use that fails, one cancelled midway and one
    whose connection the driver lost leave the next a clean start; a lost store is refused."""
    s = Store.open(f"sqlite+aiosqlite:///{tmp_path}/reader.db")
    titles = select(TaskRow.title).order_by(TaskRow.title)

    async def write(title: str) -> None:
        async with s.transaction() as session:
            row = task_row(f"01JTASK{title.upper():0<19}")
            row.title = title
            session.add(row)

    try:
        await s.migrate()
        await write("a")
        async with s.reading() as conn:
            assert list((await conn.execute(titles)).scalars()) == ["a"]
            held = (await conn.get_raw_connection()).driver_connection
        await write("b")  # committed between two uses: the second sees it
        async with s.reading() as conn:
            assert list((await conn.execute(titles)).scalars()) == ["a", "b"]
            assert (await conn.get_raw_connection()).driver_connection is held

        with pytest.raises(RuntimeError):
            async with s.reading() as conn:
                await conn.execute(titles)
                raise RuntimeError("boom")
        reading = asyncio.Event()

        async def cancelled() -> None:
            async with s.reading() as conn:
                await conn.execute(titles)
                reading.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(cancelled())
        await reading.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await write("c")
        async with s.reading() as conn:
            assert conn.in_transaction() is False  # nothing left open by the uses above
            assert list((await conn.execute(titles)).scalars()) == ["a", "b", "c"]
            assert (await conn.get_raw_connection()).driver_connection is held
            await conn.invalidate()  # the driver lost it
        async with s.reading() as conn:
            assert list((await conn.execute(titles)).scalars()) == ["a", "b", "c"]
            assert (await conn.get_raw_connection()).driver_connection is not held

        s.lost = "replaced"
        with pytest.raises(StoreLost):
            async with s.reading():
                pass
        s.lost = None
        async with s.reading() as conn:
            await s.close()  # a use under way when the store closes: its connection closes after it
        assert conn.closed
    finally:
        await s.close()
    assert s._held_reader is None


async def test_a_write_transaction_that_fails_at_its_commit_or_is_cancelled_leaves_nothing(
    store: Store,
) -> None:
    """A transaction begins with its first statement and commits at its end: a commit that
    fails (a duplicate key found by the flush it runs) and a body cancelled midway are rolled
    back, their objects let go, and the next transaction starts clean."""
    async with store.transaction() as s:
        s.add(task_row())
        kept = task_row("01JTASKKEPT000000000000000")
        s.add(kept)
    assert inspect(kept).detached  # the session let go of it at the end
    with pytest.raises(IntegrityError):
        async with store.transaction() as s:
            s.add(task_row("01JTASKNEW0000000000000000"))
            s.add(task_row())  # the flush at the commit finds it stored already
    inside = asyncio.Event()

    async def cancelled() -> None:
        async with store.transaction() as s:
            s.add(task_row("01JTASKCUT0000000000000000"))
            await s.flush()
            inside.set()
            await asyncio.Event().wait()

    cut = asyncio.create_task(cancelled())
    await inside.wait()
    cut.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cut
    if store.dialect == "sqlite":
        # A COMMIT that SQLite itself refuses (a deferred foreign key, as a full disk would):
        # rolled back, and the writers' held connection takes the next transaction.
        with pytest.raises(IntegrityError):
            async with store.transaction() as s:
                await s.execute(text("PRAGMA defer_foreign_keys = ON"))
                await s.execute(
                    text(
                        "INSERT INTO task_tags (task_id, tag, updated_at) "
                        "VALUES ('01JTASKNONE000000000000000', 'x', '2026-01-01 00:00:00')"
                    )
                )
    async with store.transaction() as s:
        assert sorted(await s.scalars(select(TaskRow.id))) == [task_row().id, kept.id]


async def test_sqlite_echo_checks_read_without_a_transaction_around_their_prepared_selects(
    tmp_path: Path,
) -> None:
    """On the held connection a prepared SELECT sent with `run` is a read of its own: no
    transaction is begun (or rolled back) around it, and nothing stays open on SQLite's side
    after it (a read left open would hold back the WAL's checkpoints). Anything else sent there
    begins a transaction that the use's end rolls back: a write is never autocommitted."""
    s = Store.open(f"sqlite+aiosqlite:///{tmp_path}/reader.db")
    begun: list[object] = []
    event.listen(s.engine.sync_engine, "begin", begun.append)
    titles = select(TaskRow.title).order_by(TaskRow.title)
    retitle = update(TaskRow.__table__).values(title=bindparam("title"))
    try:
        await s.migrate()
        async with s.transaction() as session:
            session.add(task_row("01JTASKA0000000000000000000"))
        begun.clear()
        async with s.reading() as conn:
            assert list((await run(conn, titles)).scalars()) == ["T"]
            assert list((await run(conn, titles)).scalars()) == ["T"]
            driver = (await conn.get_raw_connection()).driver_connection
            assert not conn.in_transaction() and not driver.in_transaction
        assert begun == []
        async with s.reading() as conn:
            assert (await run(conn, retitle, {"title": "changed"})).rowcount == 1
            assert conn.in_transaction()
        assert len(begun) == 1
        async with s.reading() as conn:
            assert list((await run(conn, titles)).scalars()) == ["T"]  # rolled back
            assert list((await conn.execute(titles)).scalars()) == ["T"]  # SQLAlchemy's own
        assert len(begun) == 2
    finally:
        await s.close()


@pytest.mark.parametrize("url", ["sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:"])
async def test_an_in_memory_sqlite_store_takes_writes(url: str) -> None:
    """An in-memory database has one connection, which SQLAlchemy shares (no pool to size, no
    writer's connection to hold apart)."""
    s = Store.open(url)
    try:
        await s.migrate()
        async with s.transaction() as session:
            session.add(MetaRow(key="kept", value={"n": 1}))
        async with s.read() as session:
            row = await session.get(MetaRow, "kept")
            assert row is not None and row.value == {"n": 1}
    finally:
        await s.close()


async def test_closing_waits_for_the_write_in_progress_and_later_writes_still_land(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/closing.db"
    s = Store.open(url)
    await s.migrate()
    inside = asyncio.Event()

    async def writing() -> None:
        async with s.transaction() as session:
            session.add(MetaRow(key="in progress", value={}))
            await session.flush()
            inside.set()
            await asyncio.sleep(0.05)  # a request handler still at work when the daemon stops

    task = asyncio.create_task(writing())
    await inside.wait()
    await s.close()
    await task  # committed: close waited for it
    async with s.transaction() as session:  # a late writer: a pooled connection, given back
        session.add(MetaRow(key="late", value={}))
    assert s.engine.sync_engine.pool.checkedout() == 0
    await s.close()
    again = Store.open(url)
    try:
        async with again.read() as session:
            assert await session.get(MetaRow, "in progress") is not None
            assert await session.get(MetaRow, "late") is not None
    finally:
        await again.close()


async def test_a_commit_that_failed_with_sqlite_still_in_the_transaction_is_rolled_back_first(
    tmp_path: Path,
) -> None:
    """A COMMIT that fails may leave SQLite's transaction open where SQLAlchemy counts none (a
    constraint checked at COMMIT makes it happen here); the next writer rolls it back rather
    than failing with "cannot start a transaction within a transaction"."""
    s = Store.open(f"sqlite+aiosqlite:///{tmp_path}/commit.db")
    try:
        await s.migrate()
        async with s.statements() as conn:
            await conn.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
            await conn.execute(
                text(
                    "CREATE TABLE child (parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
                )
            )
        with pytest.raises(IntegrityError):
            async with s.statements() as conn:
                await conn.execute(text("INSERT INTO child VALUES (42)"))
        async with s.transaction() as session:
            session.add(MetaRow(key="next", value={}))
        async with s.read() as session:
            assert await session.get(MetaRow, "next") is not None
            assert (await session.execute(text("SELECT count(*) FROM child"))).scalar() == 0
    finally:
        await s.close()


async def test_each_write_transaction_lets_the_loop_run_what_waits(store: Store) -> None:
    """SQLite's statements run inline, so nothing inside a transaction yields to the loop: a
    run of transactions (a poll observing its listing) would hold it for all of them, and the
    platforms' answers waiting meanwhile with it. Each transaction's end yields once."""
    ran: list[int] = []

    async def waiting() -> None:
        ran.append(len(seen))

    seen: list[int] = []
    async with store.transaction() as session:  # the first connects, on the driver's thread
        session.add(MetaRow(key="warm", value={}))
    asyncio.get_running_loop().create_task(waiting())
    for i in range(3):
        async with store.transaction() as session:
            session.add(MetaRow(key=f"yield-{i}", value={}))
        seen.append(i)
    assert ran == [0]  # as the first transaction ended, not once the run was over


async def test_a_writer_that_answers_next_is_not_put_behind_the_loop(store: Store) -> None:
    """A webhook's record (`statements(answers=True)`) is one transaction and then its
    answer: nothing else the loop has ready runs in between, as it does after any other write.
    SQLite's only: PostgreSQL's statements are I/O, and yield as they go."""
    if store.dialect != "sqlite":
        pytest.skip("SQLite's statements run inline; PostgreSQL's yield on their own")
    ran: list[str] = []

    async def waiting() -> None:
        ran.append("other")

    async with store.statements() as conn:  # the first connects, on the driver's thread
        await conn.execute(text("SELECT 1"))
    for answers in (True, False):
        asyncio.get_running_loop().create_task(waiting())
        async with store.statements(answers=answers) as conn:
            await conn.execute(text("SELECT 1"))
        ran.append(f"written (answers={answers})")
        await asyncio.sleep(0)
    assert ran == ["written (answers=True)", "other", "other", "written (answers=False)"]


async def test_a_writer_that_answers_waits_for_the_turn_in_progress_not_the_queue(store: Store) -> None:
    """On SQLite a webhook's record (`statements(answers=True)`) writes next once the
    transaction in progress ends, ahead of the writers already queued for their turns: the
    platform waiting on the answer waits for one transaction, not for all of them."""
    if store.dialect != "sqlite":
        pytest.skip("PostgreSQL's writers do not take turns")
    order: list[str] = []
    holding, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with store.transaction() as session:
            session.add(MetaRow(key="holder", value={}))
            await session.flush()
            order.append("holder")
            holding.set()
            await release.wait()

    async def writer(name: str, *, answers: bool = False) -> None:
        async with store.statements(answers=answers) as conn:
            await conn.execute(insert(MetaRow), {"key": name, "value": {}})
        order.append(name)

    held = asyncio.create_task(holder())
    await holding.wait()
    queued = [asyncio.create_task(writer(name)) for name in ("claim", "group commit")]
    await asyncio.sleep(0.01)
    record = asyncio.create_task(writer("record", answers=True))
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(held, *queued, record)
    assert order == ["holder", "record", "claim", "group commit"]


async def test_sqlite_a_begin_refused_is_the_stores_error_and_the_next_one_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write's BEGIN IMMEDIATE (run by the dialect, not as a statement) that another process's
    write lock refuses raises SQLAlchemy's OperationalError, which the loops' refusal handling
    reads; the held connection takes the next write."""
    monkeypatch.setattr("bridge.store.SQLITE_BUSY_TIMEOUT", 0.05)
    s = Store.open(f"sqlite+aiosqlite:///{tmp_path}/locked.db")
    other = None
    try:
        await s.migrate()
        other = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(OperationalError, match="database is locked"):
            async with s.transaction() as session:
                session.add(MetaRow(key="refused", value={}))
        other.execute("ROLLBACK")
        async with s.transaction() as session:
            session.add(MetaRow(key="taken", value={}))
        async with s.read() as session:
            assert await session.get(MetaRow, "refused") is None
            assert await session.get(MetaRow, "taken") is not None
    finally:
        if other is not None:
            other.close()
        await s.close()


async def test_on_commit_runs_after_the_commit_and_never_after_a_rollback(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    from bridge.store import on_commit

    seen: list[str] = []

    async def visible() -> bool:
        async with store.read() as session:
            return await session.get(TaskRow, task_row().id) is not None

    async with store.transaction() as s:
        s.add(task_row())
        on_commit(s, lambda: seen.append("woken"))
        await s.flush()
        assert seen == []  # not before the commit
    assert seen == ["woken"] and await visible()
    with pytest.raises(RuntimeError):
        async with store.transaction() as s:
            on_commit(s, lambda: seen.append("rolled back"))
            raise RuntimeError("boom")
    async with store.transaction() as s:
        (await s.get(TaskRow, task_row().id)).title = "again"  # type: ignore[union-attr]
    assert seen == ["woken"]  # the rolled-back callback was dropped, not carried to the next commit

    def fails() -> None:
        raise LookupError("the callback's own error")

    with caplog.at_level(logging.ERROR, logger="taskbridge.store"):
        async with store.transaction() as s:  # the commit stands: the callback's error is logged
            (await s.get(TaskRow, task_row().id)).title = "committed"  # type: ignore[union-attr]
            on_commit(s, fails)
            on_commit(s, lambda: seen.append("after the failed one"))
    assert "a callback after a commit failed" in caplog.text and "the callback's own error" in caplog.text
    assert seen == ["woken", "after the failed one"]
    async with store.read() as session:
        assert (await session.get(TaskRow, task_row().id)).title == "committed"  # type: ignore[union-attr]


def test_overlapping_poll_warnings_from_the_scheduler_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    from bridge import logs

    logs.setup("info", "text")
    sched = logging.getLogger("apscheduler.scheduler")
    record = sched.makeRecord(
        sched.name,
        logging.WARNING,
        __file__,
        1,
        'Execution of job "poll" skipped: maximum number of running instances reached (1)',
        (),
        None,
    )
    assert not all(f.filter(record) if hasattr(f, "filter") else f(record) for f in sched.filters)
    other = sched.makeRecord(sched.name, logging.WARNING, __file__, 1, "Run time of job was missed", (), None)
    assert all(f.filter(other) if hasattr(f, "filter") else f(other) for f in sched.filters)


def test_redact_url_hides_password() -> None:
    assert redact_url("postgresql+asyncpg://tb:s3cret@db:5432/tb") == "postgresql+asyncpg://tb:***@db:5432/tb"


async def test_migrations_go_down_and_up_again(store: Store) -> None:
    from alembic import command
    from sqlalchemy.engine import Connection

    from bridge.store import alembic_config

    def downgrade(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "base")

    async with store.engine.begin() as conn:
        await conn.run_sync(downgrade)
    assert not await store.schema_is_current()
    await store.migrate()
    assert await store.schema_is_current()


# -- the task filter index (bridge/store/search.py, migration 0005) ----------------------------


async def _index_of(store: Store, task_id: str) -> tuple[str, list[tuple[str, datetime]], list[str]]:
    from bridge.store.tables import TaskAssigneeRow, TaskTagRow

    async with store.read() as s:
        priority = await s.scalar(select(TaskRow.priority).where(TaskRow.id == task_id))
        tags = (
            await s.execute(
                select(TaskTagRow.tag, TaskTagRow.updated_at)
                .where(TaskTagRow.task_id == task_id)
                .order_by(TaskTagRow.tag)
            )
        ).all()
        assignees = (
            await s.scalars(
                select(TaskAssigneeRow.assignee)
                .where(TaskAssigneeRow.task_id == task_id)
                .order_by(TaskAssigneeRow.assignee)
            )
        ).all()
    return str(priority), [(t, at) for t, at in tags], list(assignees)


def test_index_rows_is_what_a_core_writer_inserts() -> None:
    from bridge.store.search import MAX_KEY, index_rows

    found = index_rows("T", {"priority": "high", "tags": ["b", "a", "b"], "assignees": ["x" * 600]}, NOW)
    assert found.priority == "high"
    assert found.tags == [
        {"task_id": "T", "tag": "a", "updated_at": NOW},
        {"task_id": "T", "tag": "b", "updated_at": NOW},
    ]
    assert found.assignees == [{"task_id": "T", "assignee": "x" * MAX_KEY, "updated_at": NOW}]
    empty = index_rows("T", {"title": "no index fields"}, NOW)
    assert (empty.priority, empty.tags, empty.assignees) == ("none", [], [])


async def test_the_task_index_follows_every_orm_write_of_a_task(store: Store) -> None:
    later = NOW + timedelta(minutes=5)
    row = task_row()
    row.data = {"title": "T", "priority": "high", "tags": ["a", "b"], "assignees": ["alice"]}
    async with store.transaction() as s:
        s.add(row)
    assert await _index_of(store, row.id) == ("high", [("a", NOW), ("b", NOW)], ["alice"])

    async with store.transaction() as s:  # data and time change together, as the engine writes them
        got = await s.get(TaskRow, row.id)
        assert got is not None
        got.data = {**got.data, "priority": "low", "tags": ["b", "c"], "assignees": []}
        got.updated_at = later
    assert await _index_of(store, row.id) == ("low", [("b", later), ("c", later)], [])

    async with store.transaction() as s:  # only the time moves: the copies of it follow
        got = await s.get(TaskRow, row.id)
        assert got is not None
        got.updated_at = later + timedelta(minutes=1)
        got.title = "renamed"
    after = later + timedelta(minutes=1)
    assert await _index_of(store, row.id) == ("low", [("b", after), ("c", after)], [])

    async with store.transaction() as s:  # several flushes in one transaction, each indexed
        got = await s.get(TaskRow, row.id)
        assert got is not None
        got.data = {**got.data, "assignees": ["bob"]}
        await s.flush()
        got.data = {**got.data, "assignees": ["bob", "carol"], "priority": "urgent"}
    assert await _index_of(store, row.id) == ("urgent", [("b", after), ("c", after)], ["bob", "carol"])

    with pytest.raises(RuntimeError):  # a rolled-back write leaves the index as it was
        async with store.transaction() as s:
            got = await s.get(TaskRow, row.id)
            assert got is not None
            got.data = {**got.data, "tags": []}
            await s.flush()
            raise RuntimeError("boom")
    assert await _index_of(store, row.id) == ("urgent", [("b", after), ("c", after)], ["bob", "carol"])

    async with store.transaction() as s:  # deleting the task leaves no orphans
        await s.delete(await s.get(TaskRow, row.id))
    from bridge.store.tables import TaskAssigneeRow, TaskTagRow

    async with store.read() as s:
        assert await s.scalar(select(func.count()).select_from(TaskTagRow)) == 0
        assert await s.scalar(select(func.count()).select_from(TaskAssigneeRow)) == 0


@pytest.mark.parametrize(
    ("before", "changes"),
    [
        ({"tags": ["a", "b"], "assignees": ["alice"]}, {"tags": ["b", "c"]}),
        ({"tags": ["a"]}, {"title": "only the title"}),  # the index's copies of the time move
        ({}, {"priority": "urgent", "assignees": ["bob"]}),
        ({"tags": ["a"], "assignees": ["alice"]}, {"tags": [], "assignees": []}),
    ],
)
async def test_apply_changes_writes_as_core_what_the_orm_would(
    store: Store, before: dict[str, Any], changes: dict[str, Any]
) -> None:
    """apply_changes writes a stored task with nothing pending as Core statements (its row, its
    history, its index) and any other through the ORM's flush: both leave the same store."""
    from bridge.engine.core import DEFAULTS
    from bridge.engine.sync import apply_changes
    from bridge.model import decode_values, encode_values

    later = NOW + timedelta(minutes=5)
    found = {}
    for path, task_id in (("core", "01JTASKCORE000000000000000"), ("orm", "01JTASKORM0000000000000000")):
        row = task_row(task_id)
        row.data = encode_values({**DEFAULTS, "title": "T", "priority": "high", **before})
        async with store.transaction() as s:
            s.add(row)
        async with store.transaction() as s:
            got = await s.get(TaskRow, task_id)
            assert got is not None
            if path == "orm":
                got.deleted_at = None  # a change pending: the ORM's path
                got.route = "r2"
            else:
                got.route = "r2"
                await s.flush()
            await apply_changes(
                s, got, decode_values(got.data), changes, source="x", via="poll", now=later, remote_time=later
            )
        async with store.read() as s:
            stored = await s.get(TaskRow, task_id)
            assert stored is not None
            history = (
                await s.execute(
                    select(HistoryRow.field, HistoryRow.old, HistoryRow.new, HistoryRow.at)
                    .where(HistoryRow.task_id == task_id)
                    .order_by(HistoryRow.field)
                )
            ).all()
            found[path] = (
                stored.data,
                stored.title,
                stored.version,
                stored.updated_at,
                stored.field_times,
                [tuple(h) for h in history],
                await _index_of(store, task_id),
            )
    assert found["core"] == found["orm"]
    assert found["core"][2] == 2 and found["core"][3] == later
    assert [h[0] for h in found["core"][5]] == sorted(changes)


async def test_write_links_writes_each_set_of_changed_columns_and_skips_none(store: Store) -> None:
    """The committer's link writes (outbox._write_links): one UPDATE per set of changed columns,
    each with the link's value now, and nothing for a link whose write changed no column."""
    from bridge.engine.outbox import _write_links
    from bridge.store.prepared import show_stored

    row = task_row()
    async with store.transaction() as s:
        s.add(row)
        await s.flush()
        for connector in ("a", "b", "c"):
            s.add(
                LinkRow(
                    task_id=row.id,
                    route="r",
                    connector=connector,
                    scope="s",
                    remote_id=connector,
                    base={"title": "T"},
                    created_at=NOW,
                    updated_at=NOW,
                )
            )
    later = NOW + timedelta(minutes=1)
    async with store.transaction() as s:
        links = {x.connector: x for x in (await s.scalars(select(LinkRow))).all()}
        changed: dict[int, tuple[LinkRow, set[str]]] = {}
        for connector, values in (
            ("a", {"base": {"title": "A"}, "updated_at": later}),
            ("b", {"base": {"title": "B"}, "updated_at": later, "inflight": None}),
            ("c", {"base": {"title": "T"}, "updated_at": NOW}),  # the same values: no column
        ):
            link = links[connector]
            changed[link.id] = (link, set(show_stored(link, values)))
        assert changed[links["c"].id][1] == set()
        await _write_links(s, changed)
        assert changed == {}
    async with store.read() as s:
        stored = {x.connector: (x.base, x.updated_at) for x in (await s.scalars(select(LinkRow))).all()}
    assert stored == {"a": ({"title": "A"}, later), "b": ({"title": "B"}, later), "c": ({"title": "T"}, NOW)}


async def test_migration_0005_backfills_the_index_of_an_existing_store(store: Store) -> None:
    from alembic import command
    from sqlalchemy import JSON, DateTime, column, insert, table
    from sqlalchemy.engine import Connection

    from bridge.store import alembic_config
    from bridge.store.tables import TaskAssigneeRow, TaskTagRow

    def to(revision: str) -> Any:
        def run(connection: Connection) -> None:
            cfg = alembic_config()
            cfg.attributes["connection"] = connection
            if revision == "head":
                command.upgrade(cfg, revision)
            else:
                command.downgrade(cfg, revision)

        return run

    async with store.engine.begin() as conn:
        await conn.run_sync(to("0004"))
        names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert "task_tags" not in names
        columns = await conn.run_sync(lambda c: {col["name"] for col in inspect(c).get_columns("tasks")})
        assert "priority" not in columns
    # Tasks as a 0004 store holds them (no priority column), more than one backfill chunk of them.
    tasks_0004 = table(
        "tasks",
        column("id"),
        column("route"),
        column("data", JSON()),
        column("title"),
        column("status"),
        column("created_at", DateTime(timezone=True)),
        column("updated_at", DateTime(timezone=True)),
        column("version"),
    )
    stamp = NOW.replace(tzinfo=None) if store.dialect == "sqlite" else NOW
    n = 1203
    rows = [
        {
            "id": f"T{i:025d}",
            "route": "main",
            "data": {
                "title": f"t{i}",
                "priority": ("none", "low", "high")[i % 3],
                "tags": ["all", f"m{i % 7}"],
                "assignees": ["alice"] if i % 2 else [],
            },
            "title": f"t{i}",
            "status": "todo",
            "created_at": stamp,
            "updated_at": stamp,
            "version": 1,
        }
        for i in range(n)
    ]
    rows.append({**rows[0], "id": "Z" * 26, "data": {"title": "bare"}})  # nothing to index
    async with store.engine.begin() as conn:
        await conn.execute(insert(tasks_0004), rows)
        await conn.run_sync(to("head"))
    assert await store.schema_is_current()
    async with store.read() as s:
        priorities = dict(
            (await s.execute(select(TaskRow.priority, func.count()).group_by(TaskRow.priority))).all()
        )
        assert priorities == {"none": 401 + 1, "low": 401, "high": 401}
        assert await s.scalar(select(func.count()).select_from(TaskTagRow)) == 2 * n
        assert await s.scalar(select(func.count()).where(TaskTagRow.tag == "m3")) == len(range(3, n, 7))
        assert await s.scalar(select(func.count()).select_from(TaskAssigneeRow)) == n // 2
    assert await _index_of(store, f"T{7:025d}") == ("low", [("all", NOW), ("m0", NOW)], ["alice"])
    assert await _index_of(store, "Z" * 26) == ("none", [], [])


async def test_a_core_write_of_tasks_indexes_them_with_write_index(store: Store) -> None:
    from sqlalchemy import insert

    from bridge.store.search import index_rows, write_index

    data = {"title": "T", "priority": "medium", "tags": ["core"], "assignees": ["ann"]}
    row = {"id": "C" * 26, "route": "main", "data": data, "title": "T", "created_at": NOW, "updated_at": NOW}
    async with store.transaction() as s:
        # A Core insert bypasses the unit of work (and so the flush events): nothing is indexed...
        await s.execute(insert(TaskRow), [{**row, "priority": index_rows(row["id"], data, NOW).priority}])
    assert await _index_of(store, row["id"]) == ("medium", [], [])
    async with store.transaction() as s:  # ...until the writer indexes what it wrote
        await s.run_sync(lambda sync: write_index(sync, [(row["id"], data, NOW)], replace=False))
    assert await _index_of(store, row["id"]) == ("medium", [("core", NOW)], ["ann"])
    moved = {**data, "tags": ["core", "more"], "assignees": []}
    async with store.transaction() as s:
        await s.run_sync(lambda sync: write_index(sync, [(row["id"], moved, NOW)]))
    assert await _index_of(store, row["id"]) == ("medium", [("core", NOW), ("more", NOW)], [])


# -- the inbox keeps the headers a delivery is parsed with (migration 0006) --------------------


async def test_migration_0006_adds_inbox_headers_and_keeps_every_delivery(store: Store) -> None:
    from alembic import command
    from sqlalchemy import column, insert, table
    from sqlalchemy.engine import Connection

    from bridge.store import alembic_config
    from bridge.store.tables import InboxRow

    def to(revision: str, up: bool) -> Any:
        def run(connection: Connection) -> None:
            cfg = alembic_config()
            cfg.attributes["connection"] = connection
            (command.upgrade if up else command.downgrade)(cfg, revision)

        return run

    def inbox_columns(c: Any) -> set[str]:
        return {col["name"] for col in inspect(c).get_columns("inbox")}

    async with store.engine.begin() as conn:
        await conn.run_sync(to("0005", up=False))
        assert "headers" not in await conn.run_sync(inbox_columns)
        stamp = NOW.replace(tzinfo=None) if store.dialect == "sqlite" else NOW
        inbox_0005 = table(
            "inbox",
            *(column(n) for n in ("connector", "delivery_key", "body", "state", "attempts", "received_at")),
        )
        await conn.execute(
            insert(inbox_0005),
            [
                {
                    "connector": "imp",
                    "delivery_key": "old",
                    "body": "{}",
                    "state": "pending",
                    "attempts": 0,
                    "received_at": stamp,
                }
            ],
        )
        await conn.run_sync(to("head", up=True))
        assert {"headers", "body", "delivery_key"} <= await conn.run_sync(inbox_columns)
    assert await store.schema_is_current()

    async with store.transaction() as s:
        s.add(
            InboxRow(
                connector="imp",
                delivery_key="new",
                body="{}",
                headers={"x-impactly-event": "task.created"},
                state="pending",
                attempts=0,
                received_at=NOW,
            )
        )
    async with store.read() as s:
        got = {r.delivery_key: r.headers for r in (await s.scalars(select(InboxRow))).all()}
    assert got == {"old": None, "new": {"x-impactly-event": "task.created"}}

    async with store.engine.begin() as conn:  # and back down, keeping the deliveries
        await conn.run_sync(to("0005", up=False))
        assert "headers" not in await conn.run_sync(inbox_columns)
        keys = (
            (await conn.execute(text("SELECT delivery_key FROM inbox ORDER BY delivery_key"))).scalars().all()
        )
        assert keys == ["new", "old"]


async def test_a_new_sqlite_store_and_its_wal_files_are_private(tmp_path: Path) -> None:
    """The store holds platform-issued webhook secrets: owner-only, whatever the umask."""
    previous = os.umask(0o022)
    try:
        store = Store.open(f"sqlite+aiosqlite:///{tmp_path / 'private.db'}")
        await store.migrate()
        async with store.transaction() as session:
            await session.execute(text("SELECT 1"))
        names = sorted(n for n in os.listdir(tmp_path) if n.startswith("private.db"))
        assert set(names) >= {"private.db", "private.db-wal", "private.db-shm"}
        for name in names:
            assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name
        await store.close()
    finally:
        os.umask(previous)


async def test_an_existing_store_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    path.touch(mode=0o640)
    path.chmod(0o640)
    store = Store.open(f"sqlite+aiosqlite:///{path}")
    await store.migrate()
    await store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


async def test_postgres_pings_only_connections_that_were_idle_and_recovers_from_a_restart(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection handed out again within PING_AFTER_IDLE is used as is (a busy API paid three
    round trips a request for the ping); one idle longer is pinged, and when the server closed it
    meanwhile (a restart; here its backend is terminated) the pool reconnects: nothing fails."""
    if store.dialect != "postgresql":
        pytest.skip("the pool and its ping are PostgreSQL's")
    import bridge.store as store_mod

    dialect = store.engine.sync_engine.dialect
    pings: list[float] = []
    real_ping = dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(1)
        return real_ping(dbapi_connection)

    monkeypatch.setattr(dialect, "do_ping", counted)

    async def pid() -> int:
        async with store.read() as session:
            return int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())

    first = await pid()
    for _ in range(20):
        assert await pid() == first  # the same pooled connection, handed out again at once
    assert pings == []

    monkeypatch.setattr(store_mod, "PING_AFTER_IDLE", 0.05)
    await asyncio.sleep(0.1)
    assert await pid() == first  # idle: pinged, alive, kept
    assert len(pings) == 1

    # The server closes the idle connection (as a restart does); the next checkout's ping finds
    # it dead and the pool reconnects instead of failing the caller's statement.
    assert await terminate_pg_backends(store.url, first) == 1
    await asyncio.sleep(0.1)
    assert await pid() != first


async def test_postgres_reads_run_without_a_transaction_and_never_write(store: Store) -> None:
    """On PostgreSQL a read session is in autocommit (no BEGIN and ROLLBACK round trips around
    its statements: `now()`, the transaction's start, moves between two of them) and does not
    autoflush, so an object changed in it is never written, as on SQLite."""
    if store.dialect != "postgresql":
        pytest.skip("autocommit reads are PostgreSQL's")
    async with store.read() as session:
        first = (await session.execute(text("SELECT now()"))).scalar_one()
        await asyncio.sleep(0.02)
        second = (await session.execute(text("SELECT now()"))).scalar_one()
        assert second > first
        row = await session.get(MetaRow, "store")
        assert row is not None
        original = dict(row.value)
        row.value = {**original, "id": "changed in a read"}
        await session.execute(text("SELECT 1"))  # would autoflush the change
    async with store.read() as session:
        again = await session.get(MetaRow, "store")
        assert again is not None and again.value == original
    async with store.transaction() as session:  # writes still begin a transaction
        first = (await session.execute(text("SELECT now()"))).scalar_one()
        await asyncio.sleep(0.02)
        assert (await session.execute(text("SELECT now()"))).scalar_one() == first


@pytest.mark.parametrize(
    ("message", "refused"),
    [
        ("database or disk is full", True),
        ("attempt to write a readonly database", True),
        ("disk I/O error", True),
        ('could not extend file "base/16384/2619": No space left on device', True),
        ("no such column: tasks.nope", False),  # a bug of ours keeps its traceback
        ("database is locked", False),
    ],
)
def test_refusal_names_what_the_environment_refuses(message: str, refused: bool) -> None:
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from bridge.store import refusal

    error = OperationalError("COMMIT", {}, sqlite3.OperationalError(message))
    assert refusal(error) == (message if refused else None)
    assert refusal(RuntimeError(message)) is None  # only what the database itself said


async def test_migration_0010_makes_a_links_claim_a_list_and_back(store: Store) -> None:
    """0010 turns a link's single in-flight mapping into a list of one claim; going down keeps
    the newest claim as that mapping (what a taskbridge from before reads)."""
    from alembic import command
    from sqlalchemy.engine import Connection

    from bridge.store import alembic_config

    def to(revision: str, up: bool) -> Any:
        def run(connection: Connection) -> None:
            cfg = alembic_config()
            cfg.attributes["connection"] = connection
            (command.upgrade if up else command.downgrade)(cfg, revision)

        return run

    async def claims() -> dict[str, Any]:
        async with store.read() as s:  # the columns 0009 has (0011 adds one)
            rows = (await s.execute(select(LinkRow.remote_id, LinkRow.inflight))).all()
            return {remote_id: inflight for remote_id, inflight in rows}

    async with store.engine.begin() as conn:
        await conn.run_sync(to("0009", up=False))
    async with store.transaction() as s:  # the same tables at 0009: only the column's content moved
        s.add(task_row())
        await s.flush()
        for remote_id, inflight in (("one", {"title": "in flight"}), ("none", None)):
            s.add(
                LinkRow(
                    task_id=task_row().id,
                    route="main",
                    connector=remote_id,
                    scope="p",
                    remote_id=remote_id,
                    base={},
                    inflight=inflight,
                    created_at=NOW,
                    updated_at=NOW,
                )
            )
    async with store.engine.begin() as conn:
        await conn.run_sync(to("head", up=True))
    assert await claims() == {"one": [{"title": "in flight"}], "none": None}
    async with store.transaction() as s:
        link = await s.scalar(select(LinkRow).where(LinkRow.remote_id == "one"))
        assert link is not None
        link.inflight = [{"title": "lost"}, {"title": "newest"}]
    async with store.engine.begin() as conn:
        await conn.run_sync(to("0009", up=False))
    assert await claims() == {"one": {"title": "newest"}, "none": None}
    async with store.engine.begin() as conn:
        await conn.run_sync(to("head", up=True))
