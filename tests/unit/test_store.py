"""The store on SQLite and PostgreSQL: migrations, UTC round-trips, JSON, constraints, cascades."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from bridge.store import Store, redact_url
from bridge.store.tables import HistoryRow, LinkRow, OutboxRow, TaskRow, metadata

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


async def test_on_commit_runs_after_the_commit_and_never_after_a_rollback(store: Store) -> None:
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
