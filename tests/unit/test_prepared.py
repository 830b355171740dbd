"""`any_of` and `one_of`: the IN lists of the prepared statements, without SQLAlchemy's
rewriting of the SQL at each execution, must find exactly what an `in_()` finds, on SQLite
(a JSON parameter read by `json_each`) and on PostgreSQL (SQLAlchemy's expanding parameter)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import StatementError

from bridge.store import Store, search
from bridge.store.prepared import any_of, one_of
from bridge.store.states import OpState
from bridge.store.tables import OutboxRow, TaskRow
from tests.statements import statements_sent

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
# Ids as platforms and the store make them: quotes, backslashes, non-ASCII, JSON look-alikes.
ODD = ["a'b", 'c"d', "e\\f", "grüße", "[1]", "null", "{}", " x "]

_TASKS = select(TaskRow.id).where(any_of(TaskRow.id)).order_by(TaskRow.id)
_OPS = select(OutboxRow.id).where(
    any_of(OutboxRow.id), one_of(OutboxRow.state, (OpState.PENDING, OpState.CLAIMED))
)


async def _seed(store: Store) -> list[int]:
    async with store.transaction() as session:
        for task_id in [*ODD, "t1", "t2"]:
            session.add(
                TaskRow(
                    id=task_id, route="main", data={}, title="", status="todo", created_at=NOW, updated_at=NOW
                )
            )
        ops = [
            OutboxRow(
                task_id="t1",
                route="main",
                connector="c",
                op="update",
                payload={},
                state=state,
                attempts=0,
                next_attempt_at=NOW,
                observed_at=NOW,
                created_at=NOW,
            )
            for state in (OpState.PENDING, OpState.CLAIMED, OpState.DONE, OpState.PARKED)
        ]
        session.add_all(ops)
        await session.flush()
        return [op.id for op in ops]


@pytest.mark.parametrize(
    ("ids", "found"),
    [
        ([], []),
        (["t1"], ["t1"]),
        (["t2", "t1", "t1", "nope"], ["t1", "t2"]),
        ({"t1", "t2"}, ["t1", "t2"]),  # a set: no order to keep
        (ODD, sorted(ODD)),
        ([f"x{n}" for n in range(2000)] + ["t2"], ["t2"]),  # more than SQLite's 999 variables
    ],
)
async def test_any_of_finds_what_in_finds(store: Store, ids: Any, found: list[str]) -> None:
    await _seed(store)
    async with store.read() as session:
        assert list((await session.scalars(_TASKS, {"ids": ids})).all()) == found
        plain = select(TaskRow.id).where(TaskRow.id.in_(list(ids))).order_by(TaskRow.id)
        assert list((await session.scalars(plain)).all()) == found


async def test_integer_ids_and_constant_states(store: Store) -> None:
    pending, claimed, done, parked = await _seed(store)
    async with store.read() as session:
        every = [pending, claimed, done, parked, 10**12]
        assert sorted((await session.scalars(_OPS, {"ids": every})).all()) == [pending, claimed]
        assert list((await session.scalars(_OPS, {"ids": [done]})).all()) == []


async def test_any_of_in_a_delete(store: Store) -> None:
    await _seed(store)
    async with store.transaction() as session:
        gone = await session.execute(delete(TaskRow).where(any_of(TaskRow.id)), {"ids": ["t1", "t2", "t3"]})
        assert gone.rowcount == 2  # type: ignore[attr-defined]
    async with store.read() as session:
        assert list((await session.scalars(_TASKS, {"ids": ["t1", "t2", ODD[0]]})).all()) == [ODD[0]]


def test_the_sql_is_not_rewritten_per_execution_on_sqlite() -> None:
    text = str(_OPS.compile(dialect=sqlite.dialect()))
    assert "POSTCOMPILE" not in text, text
    assert "IN (SELECT value FROM json_each(?))" in text, text
    assert "outbox.state IN (?, ?)" in text, text


async def test_integers_given_for_a_text_column_match_as_in_does(store: Store) -> None:
    """JSON numbers read by json_each are numbers; a text column's IN compares them as text."""
    async with store.transaction() as session:
        session.add(
            TaskRow(id="123", route="main", data={}, title="", status="todo", created_at=NOW, updated_at=NOW)
        )
    async with store.read() as session:
        assert list((await session.scalars(_TASKS, {"ids": ["123"]})).all()) == ["123"]
        if store.dialect == "sqlite":  # asyncpg refuses an int for a text parameter, as it should
            assert list((await session.scalars(_TASKS, {"ids": [123]})).all()) == ["123"]


async def test_the_column_s_table_is_in_from(store: Store) -> None:
    await _seed(store)
    async with store.read() as session:
        assert (
            await session.scalar(select(func.count()).where(any_of(TaskRow.id)), {"ids": ["t1", "t2"]}) == 2
        )


async def test_one_id_alone_is_refused_not_read_as_its_characters(store: Store) -> None:
    if store.dialect != "sqlite":
        pytest.skip("elsewhere SQLAlchemy's expanding parameter refuses it itself")
    async with store.read() as session:
        with pytest.raises(StatementError, match="a list of ids is wanted"):
            await session.scalars(_TASKS, {"ids": "t1"})


async def test_the_index_s_deletes_return_nothing(store: Store) -> None:
    """Run through a session, a DELETE whose criterion SQLAlchemy cannot evaluate in Python
    would read back every row it deletes (RETURNING) to synchronise loaded ones; none are."""
    await _seed(store)
    with statements_sent(store) as sent:
        async with store.transaction() as session:
            await session.execute(search._CLEAR_TAGS, {"ids": ["t1"]})
            await session.execute(search._CLEAR_ASSIGNEES, {"ids": ["t1"]})
    deletes = [s for s in sent if s.lstrip().upper().startswith("DELETE")]
    assert len(deletes) == 2 and not any("RETURNING" in s.upper() for s in deletes), deletes
