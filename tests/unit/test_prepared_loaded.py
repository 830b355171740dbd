"""`prepared.loaded`, `loaded_by` and `got`: objects read past the ORM's loading must be the
session's objects exactly as `session.scalars` and `session.get` give them (pending changes
flushed first, a held object returned as it is, an expired one refreshed, changes to them written
by the flush); `copies` are plain rows that nothing writes back. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import bindparam, inspect, select

from bridge.store import Store
from bridge.store.prepared import copies, got, loaded, loaded_by, rows_in
from bridge.store.tables import LinkRow, TaskRow, TaskTagRow

NOW = datetime(2026, 12, 6, 3, 0, 0, 123456, tzinfo=UTC)
_LINK_BY_REMOTE = select(LinkRow).where(
    LinkRow.connector == bindparam("connector"), LinkRow.remote_id == bindparam("id")
)


def _task(task_id: str, title: str = "T") -> TaskRow:
    return TaskRow(
        id=task_id,
        route="main",
        data={"title": title, "tags": ["a"]},
        title=title,
        status="todo",
        created_at=NOW,
        updated_at=NOW,
        field_times={"title": NOW.isoformat()},
    )


async def _seed(store: Store) -> None:
    async with store.transaction() as session:
        session.add_all([_task("t1"), _task("t2")])
    async with store.transaction() as session:
        session.add(
            LinkRow(
                task_id="t1",
                route="main",
                connector="c",
                scope="s",
                remote_id="r1",
                state="active",
                base={"title": "T"},
                created_at=NOW,
                updated_at=NOW,
            )
        )


async def test_loaded_objects_are_the_orm_s_as_stored_and_their_changes_are_flushed(store: Store) -> None:
    await _seed(store)
    async with store.transaction() as session:
        orm = {t.id: t for t in (await session.scalars(rows_in(TaskRow), {"ids": ["t1", "t2"]})).all()}
        expected = {i: {c.key: getattr(t, c.key) for c in TaskRow.__table__.c} for i, t in orm.items()}
        session.expunge_all()
        found = {t.id: t for t in await loaded(session, TaskRow, ["t1", "t2", "missing"])}
        assert set(found) == {"t1", "t2"}
        for task_id, task in found.items():
            state = inspect(task)
            assert state.persistent and not state.modified
            assert {c.key: getattr(task, c.key) for c in TaskRow.__table__.c} == expected[task_id]
        found["t1"].title = "changed"
        found["t1"].data = {"title": "changed", "tags": ["b"]}  # the task index follows (flush events)
    async with store.read() as session:
        assert (await session.get(TaskRow, "t1")).title == "changed"
        assert (await session.get(TaskRow, "t2")).title == "T"
        tags = (await session.execute(select(TaskTagRow.task_id, TaskTagRow.tag))).all()
        assert sorted(tuple(t) for t in tags) == [("t1", "b"), ("t2", "a")]


async def test_a_row_the_session_holds_is_its_object_and_what_is_pending_is_flushed_first(
    store: Store,
) -> None:
    await _seed(store)
    async with store.transaction() as session:
        held = await session.get(TaskRow, "t1")
        held.title = "unflushed"  # a held object is returned as it is, its change kept
        session.add(_task("t3"))  # pending: found, as autoflush would find it
        found = {t.id: t for t in await loaded(session, TaskRow, ["t1", "t3"])}
        assert found["t1"] is held and held.title == "unflushed"
        assert set(found) == {"t1", "t3"}
        assert await got(session, TaskRow, "t1") is held
        session.expire(held)  # expired: refreshed from what is stored (the flush wrote it)
        assert (await loaded(session, TaskRow, ["t1"]))[0] is held
        assert held.title == "unflushed"
        held.status = "doing"  # a change kept while another attribute is expired and read again
        await session.flush()
        held.status = "done"
        session.expire(held, ["title"])
        assert (await loaded(session, TaskRow, ["t1"]))[0] is held
        assert (held.title, held.status) == ("unflushed", "done")
        await session.delete(await got(session, TaskRow, "t2"))
        assert await loaded(session, TaskRow, ["t2"]) == []  # the deletion is flushed first
        assert await got(session, TaskRow, "t2") is None


async def test_loaded_by_takes_an_entity_select_and_refuses_anything_else(store: Store) -> None:
    await _seed(store)
    async with store.transaction() as session:
        (link,) = await loaded_by(session, _LINK_BY_REMOTE, {"connector": "c", "id": "r1"})
        assert link.task_id == "t1" and link.base == {"title": "T"} and inspect(link).persistent
        assert await session.get(LinkRow, link.id) is link
        assert await loaded_by(session, _LINK_BY_REMOTE, {"connector": "c", "id": "r2"}) == []
        with pytest.raises(TypeError):
            await loaded_by(session, select(LinkRow.id, LinkRow.base), {})


async def test_copies_are_plain_rows_that_nothing_writes_back(store: Store) -> None:
    await _seed(store)
    async with store.transaction() as session:
        (task,) = await copies(session, TaskRow, ["t1"])
        assert task.data == {"title": "T", "tags": ["a"]} and task.created_at == NOW
        changed = task._replace(title="changed")
        assert changed.title == "changed" and task.title == "T"
        assert (
            session.sync_session.identity_map.get(inspect(TaskRow).identity_key_from_primary_key(["t1"]))
            is None
        )
    async with store.read() as session:
        assert (await session.get(TaskRow, "t1")).title == "T"
