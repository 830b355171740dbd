"""`prefetch_links` and `link_by_remote`: a batch's links read at once answer its lookups, but
never a lookup that the session's own changes since have made a different answer."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import event

from bridge.engine.sync import _PREFETCHED, link_by_remote, links_holding, prefetch_links
from bridge.store import Store
from bridge.store.tables import LinkRow, TaskRow

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


async def _seed(store: Store) -> None:
    async with store.transaction() as session:
        for n in (1, 2):
            session.add(
                TaskRow(
                    id=f"t{n}", route="main", data={}, title="", status="todo", created_at=NOW, updated_at=NOW
                )
            )
        await session.flush()  # the tasks before their links (no ORM relationship orders them)
        for n, connector in ((1, "c"), (2, "c"), (1, "d")):
            session.add(
                LinkRow(
                    task_id=f"t{n}",
                    route="main",
                    connector=connector,
                    scope="s",
                    remote_id=f"r{n}",
                    state="active",
                    base={},
                    created_at=NOW,
                    updated_at=NOW,
                )
            )


def _count_selects(store: Store) -> list[str]:
    seen: list[str] = []

    @event.listens_for(store.engine.sync_engine, "before_cursor_execute")
    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT") and "FROM links" in statement:
            seen.append(statement)

    return seen


async def test_a_prefetched_link_answers_without_a_read(store: Store) -> None:
    await _seed(store)
    reads = _count_selects(store)
    async with store.transaction() as session:
        await prefetch_links(session, "c", ["r1", "r2", "r3"])
        assert len(reads) == 1
        one, two = await link_by_remote(session, "c", "r1"), await link_by_remote(session, "c", "r2")
        assert (one.task_id, two.task_id) == ("t1", "t2")  # type: ignore[union-attr]
        assert len(reads) == 1
        assert await link_by_remote(session, "c", "r3") is None  # not found: read again
        assert len(reads) == 2


async def test_a_link_changed_in_the_session_is_looked_up_afresh(store: Store) -> None:
    await _seed(store)
    async with store.transaction() as session:
        await prefetch_links(session, "c", ["r1", "r2", "r3"])
        first = await link_by_remote(session, "c", "r1")
        assert first is not None
        first.remote_id = None  # released (the platform reused the id)
        second = await link_by_remote(session, "c", "r2")
        assert second is not None
        second.remote_id = "r3"  # and r3 is now linked: the prefetch had not found it
        assert await link_by_remote(session, "c", "r1") is None
        assert await link_by_remote(session, "c", "r2") is None
        found = await link_by_remote(session, "c", "r3")
        assert found is not None and found.task_id == "t2"


async def test_the_prefetch_lives_as_long_as_its_session(store: Store) -> None:
    await _seed(store)
    async with store.transaction() as session:
        await prefetch_links(session, "c", ["r1", "r2"])
        assert session.info.get(_PREFETCHED)
    async with store.transaction() as session:
        assert not session.info.get(_PREFETCHED)  # a new session starts without it
        link = await link_by_remote(session, "c", "r1")
        assert link is not None and link.remote_id == "r1"
        link.remote_id = "r9"
    async with store.transaction() as session:
        assert await link_by_remote(session, "c", "r1") is None


async def test_links_holding_reads_every_connectors_ids_at_once(store: Store) -> None:
    """One read for several connectors, and only the pairs asked for: `d` holds r1 too, but r1
    was asked of `c` alone."""
    await _seed(store)
    reads = _count_selects(store)
    async with store.transaction() as session:
        held = await links_holding(session, {"c": {"r1", "r9"}, "d": {"r2"}, "e": set()})
        assert {key: link.task_id for key, link in held.items()} == {("c", "r1"): "t1"}
        assert len(reads) == 1
        assert await links_holding(session, {"c": set()}) == {}
        assert len(reads) == 1  # nothing asked, nothing read
