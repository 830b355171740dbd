"""`prepared.run`: a prepared statement run on SQLite's driver directly must read, write and fail
exactly as SQLAlchemy's own execution of it does; and what the direct path cannot reproduce
(ORM entities, synchronised writes, Python-side defaults, a missing parameter) must go through
SQLAlchemy. On PostgreSQL `run` is SQLAlchemy's execution, and every case holds there too."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, InvalidRequestError, StatementError

from bridge.store import Store, _sqlite
from bridge.store.prepared import any_of, by_ids, run, update_columns
from bridge.store.states import OpState
from bridge.store.tables import InboxRow, OutboxRow, TaskRow
from tests.statements import statements_sent

NOW = datetime(2026, 12, 5, 12, 0, 0, 123456, tzinfo=UTC)
_OUTBOX = OutboxRow.__table__
_INBOX = InboxRow.__table__

_ROWS = select(_OUTBOX).where(any_of(_OUTBOX.c.id)).order_by(_OUTBOX.c.id)
_COLUMN = select(OutboxRow.id, OutboxRow.payload).where(OutboxRow.task_id == bindparam("task"))
_ENTITIES = select(OutboxRow).where(any_of(OutboxRow.id))
_SET_STATE = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == bindparam("op_id"), _OUTBOX.c.state == bindparam("was"))
    .values(
        state=bindparam("new_state"), claim_expires_at=bindparam("until"), attempts=_OUTBOX.c.attempts + 1
    )
)
_SYNCED = update(OutboxRow).where(OutboxRow.task_id == bindparam("task")).values(state=OpState.DONE)
_RECORD = insert(_INBOX).returning(_INBOX.c.id)


async def _seed(store: Store) -> list[int]:
    async with store.transaction() as session:
        session.add(
            TaskRow(id="t1", route="main", data={}, title="", status="todo", created_at=NOW, updated_at=NOW)
        )
        await session.flush()
        ops = [
            OutboxRow(
                task_id="t1",
                route="main",
                connector="c",
                op="update",
                payload={"n": n, "text": 'grüße "q"'},
                state=OpState.PENDING,
                attempts=0,
                next_attempt_at=NOW + timedelta(seconds=n),
                observed_at=NOW,
                created_at=NOW,
            )
            for n in range(3)
        ]
        session.add_all(ops)
        await session.flush()
        return [op.id for op in ops]


@contextmanager
def direct_runs() -> Iterator[list[str]]:
    """The statements `run` sent to SQLite's driver itself (none on PostgreSQL)."""
    sent: list[str] = []
    real = _sqlite.execute

    def spy(connection: Any, plan: _sqlite.Plan, *args: Any) -> Any:
        sent.append(plan.sql)
        return real(connection, plan, *args)

    _sqlite.execute = spy  # type: ignore[assignment]
    try:
        yield sent
    finally:
        _sqlite.execute = real  # type: ignore[assignment]


def _direct(store: Store) -> bool:
    return store.dialect == "sqlite"


async def test_rows_read_as_sqlalchemy_reads_them(store: Store) -> None:
    ids = await _seed(store)
    async with store.transaction() as session:
        expected = (await session.execute(_ROWS, by_ids(ids))).all()
        with direct_runs() as sent:
            got = (await run(session, _ROWS, by_ids(ids))).all()
            columns = (await run(session, _COLUMN, {"task": "t1"})).all()
            scalars = list((await run(session, _COLUMN, {"task": "t1"})).scalars())
            first = (await run(session, _ROWS, by_ids(ids))).first()
            none = (await run(session, _ROWS, by_ids([10**9]))).first()
        assert len(sent) == (5 if _direct(store) else 0)
    assert [tuple(r) for r in got] == [tuple(r) for r in expected]
    assert [r.next_attempt_at for r in got] == [NOW + timedelta(seconds=n) for n in range(3)]
    assert all(r.next_attempt_at.tzinfo is not None for r in got)
    assert [r.payload for r in got] == [{"n": n, "text": 'grüße "q"'} for n in range(3)]
    assert [tuple(r) for r in columns] == [(i, {"n": n, "text": 'grüße "q"'}) for n, i in enumerate(ids)]
    assert sorted(scalars) == ids and tuple(first) == tuple(expected[0]) and none is None


async def test_writes_land_as_sqlalchemy_s(store: Store) -> None:
    ids = await _seed(store)
    until = NOW + timedelta(minutes=2)
    params = [
        {"op_id": ids[0], "was": OpState.PENDING, "new_state": OpState.CLAIMED, "until": until},
        {"op_id": ids[1], "was": OpState.DONE, "new_state": OpState.CLAIMED, "until": until},  # no match
    ]
    async with store.transaction() as session:
        await session.scalar(select(TaskRow.id))  # the transaction under way
        with direct_runs() as sent:
            many = await run(session, _SET_STATE, params)
            one = await run(session, _SET_STATE, {**params[1], "op_id": ids[2], "was": OpState.PENDING})
            await run(
                session, update_columns(_OUTBOX, ("last_error",)), [{"row_id": ids[1], "last_error": "e"}]
            )
        assert len(sent) == (3 if _direct(store) else 0)
        assert one.rowcount == 1
        # An executemany's count is SQLite's (asyncpg's driver reports none: -1).
        assert many.rowcount == (1 if store.dialect == "sqlite" else -1)
    async with store.read() as session:
        rows = {r.id: r for r in (await session.execute(_ROWS, by_ids(ids))).all()}
    assert [(rows[i].state, rows[i].attempts) for i in ids] == [
        (OpState.CLAIMED, 1),
        (OpState.PENDING, 0),
        (OpState.CLAIMED, 1),
    ]
    assert rows[ids[0]].claim_expires_at == until and rows[ids[1]].last_error == "e"


async def test_an_insert_returns_its_id_and_defaults_apply_when_columns_are_left_out(store: Store) -> None:
    full = {
        "connector": "c",
        "delivery_key": "k1",
        "body": "{}",
        "headers": None,
        "state": "pending",
        "claimed_by": None,
        "claim_expires_at": None,
        "attempts": 0,
        "received_at": NOW,
    }
    short = {
        k: v for k, v in full.items() if k not in ("state", "attempts", "claimed_by", "claim_expires_at")
    }
    async with store.statements() as conn:
        await conn.execute(select(_INBOX.c.id))  # the transaction under way
        with direct_runs() as sent:
            first = (await run(conn, _RECORD, full)).scalar_one()
            # Without `state` and `attempts` their Python-side defaults apply: SQLAlchemy's part.
            second = (await run(conn, _RECORD, {**short, "delivery_key": "k2"})).scalar_one()
        assert len(sent) == (1 if _direct(store) else 0)
        with pytest.raises(IntegrityError):
            await run(conn, _RECORD, full)  # a duplicate key, as SQLAlchemy raises it
        await conn.rollback()
    assert first != second
    async with store.statements() as conn:
        await run(conn, _RECORD, {**full, "delivery_key": "k3"})  # the first statement: it begins
        rows = (await conn.execute(select(_INBOX.c.delivery_key, _INBOX.c.state, _INBOX.c.attempts))).all()
    assert [tuple(r) for r in rows] == [("k3", "pending", 0)]  # the rolled back ones are gone


async def test_orm_entities_and_synchronised_writes_stay_with_sqlalchemy(store: Store) -> None:
    ids = await _seed(store)
    async with store.transaction() as session:
        with direct_runs() as sent:
            loaded = list((await run(session, _ENTITIES, by_ids(ids))).scalars())
            await run(session, _SYNCED, {"task": "t1"})
        assert sent == []
        assert len(loaded) == 3 and all(isinstance(op, OutboxRow) for op in loaded)


async def test_an_orm_column_read_sees_what_the_session_has_pending(store: Store) -> None:
    ids = await _seed(store)
    async with store.transaction() as session:
        await session.scalar(select(TaskRow.id))
        [op] = (await session.scalars(_ENTITIES, by_ids(ids[:1]))).all()
        op.payload = {"changed": True}  # pending in the session, not flushed
        with direct_runs() as sent:
            rows = dict((await run(session, _COLUMN, {"task": "t1"})).all())
        assert len(sent) == (1 if _direct(store) else 0)
        assert rows[ids[0]] == {"changed": True}  # flushed first, as an ORM execute would


async def test_a_missing_parameter_is_named_by_sqlalchemy(store: Store) -> None:
    await _seed(store)
    async with store.transaction() as session:
        await session.scalar(select(TaskRow.id))
        with pytest.raises(StatementError, match="op_id"):
            await run(session, _SET_STATE, {"was": "pending", "new_state": "done", "until": NOW})


async def test_statement_listeners_see_direct_statements(store: Store) -> None:
    ids = await _seed(store)
    async with store.transaction() as session:
        await session.scalar(select(TaskRow.id))
        with statements_sent(store) as seen:
            await run(session, _ROWS, by_ids(ids))
    assert len(seen) == 1 and seen[0].startswith("SELECT outbox.id")


async def test_a_first_statement_begins_the_transaction_it_runs_in(store: Store) -> None:
    ids = await _seed(store)
    with direct_runs() as sent:
        with pytest.raises(RuntimeError):
            async with store.transaction() as session:
                changed = {"op_id": ids[0], "was": OpState.PENDING, "new_state": OpState.DONE, "until": None}
                assert (await run(session, _SET_STATE, changed)).rowcount == 1
                raise RuntimeError("rolled back")
        async with store.reading() as conn:
            rows = (await run(conn, _ROWS, by_ids(ids))).all()
        assert len(sent) == (2 if _direct(store) else 0)
    assert [r.state for r in rows] == [OpState.PENDING] * 3  # the write went with its transaction


async def test_a_value_its_type_refuses_is_sqlalchemy_s_error(store: Store) -> None:
    ids = await _seed(store)
    naive = {
        "op_id": ids[0],
        "was": OpState.PENDING,
        "new_state": OpState.DONE,
        "until": datetime(2026, 1, 1),
    }
    async with store.transaction() as session:
        await session.scalar(select(TaskRow.id))
        with pytest.raises(StatementError, match="naive datetime"):
            await run(session, _SET_STATE, naive)


async def test_a_list_given_to_an_orm_write_is_sqlalchemy_s_bulk_write(store: Store) -> None:
    """SQLAlchemy takes a list given to an ORM UPDATE as an update by primary key (which this
    statement cannot be), not as an executemany: `run` leaves it to SQLAlchemy."""
    await _seed(store)
    unsynced = _SYNCED.execution_options(synchronize_session=False)
    async with store.transaction() as session:
        await session.scalar(select(TaskRow.id))
        with direct_runs() as sent, pytest.raises(InvalidRequestError, match="primary key"):
            await run(session, unsynced, [{"task": "t1"}, {"task": "t2"}])
        assert sent == []
