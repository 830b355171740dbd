"""The hierarchy's reads of the store, on SQLite and on PostgreSQL (skipped without
TASKBRIDGE_TEST_PG_URL): `children_of` filters on the JSON of the canonical values, which the two
spell differently (`json_extract` against `->>`), and a lookup that found nothing on one of them
would only show as children never moved under a parent that landed late."""

from __future__ import annotations

from datetime import UTC, datetime

from bridge.engine.sync import MAX_DEPTH, children_of, load_hierarchy
from bridge.model import new_id
from bridge.store import Store
from bridge.store.tables import TaskRow

T0 = datetime(2025, 1, 1, tzinfo=UTC)


async def seed(
    store: Store, tree: dict[str, tuple[str, str | None]], deleted: frozenset[str] = frozenset()
) -> dict[str, str]:
    """Tasks by name: name -> (route, parent name); returns name -> task id."""
    ids = {name: new_id() for name in tree}
    async with store.transaction() as session:
        for name, (route, parent) in tree.items():
            session.add(
                TaskRow(
                    id=ids[name],
                    route=route,
                    data={"title": name, "parent": ids[parent] if parent else None},
                    title=name,
                    status="todo",
                    created_at=T0,
                    updated_at=T0,
                    deleted_at=T0 if name in deleted else None,
                    version=1,
                )
            )
    return ids


TREE = {
    "launch": ("main", None),
    "post": ("main", "launch"),
    "demo": ("main", "launch"),
    "outline": ("main", "post"),
    "draft": ("main", "outline"),
    "gone": ("main", "launch"),  # deleted: not a child any more
    "elsewhere": ("other", "launch"),  # another route's (a parent is never shared across routes)
    "alone": ("main", None),
}


async def test_children_of_finds_each_level_of_a_route(store: Store) -> None:
    ids = await seed(store, TREE, deleted=frozenset({"gone"}))
    name = {v: k for k, v in ids.items()}

    async def children(of: list[str], depth: int = 1) -> list[str]:
        async with store.read() as session:
            return sorted(
                name[t.id] for t in await children_of(session, "main", [ids[n] for n in of], depth=depth)
            )

    assert await children(["launch"]) == ["demo", "post"]
    assert await children(["launch"], depth=2) == ["demo", "outline", "post"]
    assert await children(["launch"], depth=MAX_DEPTH) == ["demo", "draft", "outline", "post"]
    assert await children(["post", "alone"]) == ["outline"]
    assert await children(["draft", "alone"]) == []
    assert await children([]) == []


async def test_load_hierarchy_walks_up_from_a_batch(store: Store) -> None:
    ids = await seed(store, TREE)
    async with store.read() as session:
        hierarchy = await load_hierarchy(session, [ids["draft"], ids["demo"], None])
    assert hierarchy.parent_of == {
        ids["draft"]: ids["outline"],
        ids["outline"]: ids["post"],
        ids["post"]: ids["launch"],
        ids["demo"]: ids["launch"],
        ids["launch"]: None,
    }
