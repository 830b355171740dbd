"""Issue 18: `parent` between the members with subtasks (Impactly, Nucleus), over the five fakes.

The other three (Vortask, AgentKanban, PostHog runs) have no subtasks: they keep every task top
level and never receive `parent`. The route must list `parent` in its fields (it is not a default).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import select

from bridge.store.tables import LinkRow, OutboxRow
from tests import ops
from tests.engine.conftest import Harness, make_harness
from tests.world import World

FIELDS = ["title", "description", "status", "priority", "assignees", "tags", "due_date", "parent"]
FLAT = ("vortask", "agentkanban", "runs")


@pytest_asyncio.fixture
async def harness(world: World, tmp_path: Path) -> AsyncIterator[Harness]:
    h = await make_harness(world, tmp_path, route={"fields": FIELDS})
    yield h
    for conn in h.ctx.connectors.values():
        await conn.aclose()
    await h.daemon.store.close()


def ids(world: World, platform: str) -> dict[str, str]:
    return {t["title"]: str(t["id"]) for t in ops.raw_tasks(world, platform)}


def subtasks(world: World, parent_id: str) -> list[str]:
    """The parent's subtasks as Nucleus's own endpoint lists them."""
    with world.client("squads") as c:
        return sorted(s["title"] for s in c.get(f"/tasks/{parent_id}/subtasks").json()["subtasks"])


def assert_flat_elsewhere(world: World, titles: set[str]) -> None:
    for platform in FLAT:
        assert titles <= set(ops.view(world, platform)), platform
    with world.client("vortask") as c:  # no parent of any kind went out to a flat platform
        raw = c.get(f"/projects/{world.scopes['vortask']}/tasks").json()
        assert not any(k for t in raw for k in t if "parent" in k.lower())


async def test_a_parent_and_two_children_from_impactly(harness: Harness, world: World) -> None:
    parent = ops.create(world, "impactly", "Launch")
    ops.create(world, "impactly", "Write the post", parent=parent)
    ops.create(world, "impactly", "Record the demo", parent=parent)
    await harness.settle()

    expected = {"Launch": None, "Write the post": "Launch", "Record the demo": "Launch"}
    assert ops.parents(world, "squads") == expected
    assert ops.parents(world, "impactly") == expected
    assert subtasks(world, ids(world, "squads")["Launch"]) == ["Record the demo", "Write the post"]
    assert_flat_elsewhere(world, set(expected))


async def test_and_from_nucleus_to_impactly(harness: Harness, world: World) -> None:
    parent = ops.create(world, "squads", "Launch")
    ops.create(world, "squads", "Write the post", parent=parent)
    await harness.settle()
    assert ops.parents(world, "impactly") == {"Launch": None, "Write the post": "Launch"}
    assert_flat_elsewhere(world, {"Launch", "Write the post"})


async def test_moves_and_clears_travel_both_ways(harness: Harness, world: World) -> None:
    launch = ops.create(world, "impactly", "Launch")
    ops.create(world, "impactly", "Docs")
    ops.create(world, "impactly", "Write the post", parent=launch)
    await harness.settle()
    on_squads = ids(world, "squads")

    # moved to another parent on Nucleus: moved on Impactly
    ops.edit(world, "squads", on_squads["Write the post"], parent=on_squads["Docs"])
    await harness.settle()
    assert ops.parents(world, "impactly")["Write the post"] == "Docs"
    assert ops.parents(world, "squads")["Write the post"] == "Docs"

    # made top level on Impactly: top level on Nucleus
    ops.edit(world, "impactly", ids(world, "impactly")["Write the post"], parent=None)
    await harness.settle()
    assert ops.parents(world, "squads")["Write the post"] is None
    assert ops.parents(world, "impactly")["Write the post"] is None
    assert subtasks(world, on_squads["Docs"]) == []
    assert_flat_elsewhere(world, {"Launch", "Docs", "Write the post"})


async def test_a_child_whose_parent_has_no_copy_yet(harness: Harness, world: World) -> None:
    """The child's create on Nucleus runs while its parent's create there cannot (held back
    here): the child goes out top level, and moves under its parent once the parent lands."""
    parent = ops.create(world, "impactly", "Launch")
    await harness.poll("impactly")
    store = harness.ctx.store
    async with store.transaction() as session:  # the parent's create on Nucleus: not yet
        op = await session.scalar(
            select(OutboxRow).where(OutboxRow.connector == "squads", OutboxRow.op == "create")
        )
        assert op is not None
        held_id = op.id
        op.next_attempt_at = harness.ctx.now() + timedelta(hours=1)
    ops.create(world, "impactly", "Write the post", parent=parent)
    await harness.poll("impactly")
    await harness.drain()
    assert ops.parents(world, "squads") == {"Write the post": None}

    async with store.transaction() as session:
        op = await session.get(OutboxRow, held_id)
        assert op is not None and op.state == "pending"
        op.next_attempt_at = harness.ctx.now()
    await harness.drain()
    assert ops.parents(world, "squads") == {"Launch": None, "Write the post": "Launch"}
    await harness.settle()
    assert ops.parents(world, "squads") == {"Launch": None, "Write the post": "Launch"}
    assert ops.parents(world, "impactly") == {"Launch": None, "Write the post": "Launch"}
    assert_flat_elsewhere(world, {"Launch", "Write the post"})


async def test_a_loop_made_across_two_platforms_is_refused(
    harness: Harness, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """B nested under A on Impactly while, on Nucleus, A is nested under B: the second to arrive
    would make A its own ancestor. It is refused (logged once), and Nucleus is brought back."""
    ops.create(world, "impactly", "A")
    ops.create(world, "impactly", "B")
    await harness.settle()
    on_impactly, on_squads = ids(world, "impactly"), ids(world, "squads")
    ops.edit(world, "impactly", on_impactly["B"], parent=on_impactly["A"])
    ops.edit(world, "squads", on_squads["A"], parent=on_squads["B"])
    with caplog.at_level(logging.WARNING, logger="taskbridge.sync"):
        await harness.poll("impactly")
        await harness.poll("squads")
        await harness.drain()
        await harness.settle()
    assert ops.parents(world, "impactly") == {"A": None, "B": "A"}
    assert ops.parents(world, "squads") == {"A": None, "B": "A"}
    refused = [r for r in caplog.records if "its own ancestor" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]
    async with harness.ctx.store.read() as session:  # nothing parked on the way
        parked = await session.scalars(select(OutboxRow).where(OutboxRow.state == "parked"))
        assert parked.all() == []
        assert all(link.state == "active" for link in (await session.scalars(select(LinkRow))).all())
