"""Issue 18: `parent` between the members with subtasks (Impactly, Nucleus), over the five fakes.

The other three (Vortask, AgentKanban, PostHog runs) have no subtasks: they keep every task top
level and never receive `parent`. The route must list `parent` in its fields (it is not a default).

Every test runs on SQLite and on PostgreSQL (skipped without TASKBRIDGE_TEST_PG_URL): the lookup
of a task's children (`sync.children_of`) reads the JSON of the canonical values, which the two
spell differently.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import select

from bridge.engine import poller
from bridge.engine.inbox import process_pending, receive
from bridge.engine.matching import adopt_existing
from bridge.engine.recovery import readopt
from bridge.model import decode_values
from bridge.store.tables import LinkRow, OutboxRow, TaskRow
from tests import ops
from tests.conftest import drop_pg_database, fresh_pg_database, pg_url_or_skip
from tests.engine.conftest import Harness, make_harness
from tests.world import WEBHOOK_SECRET, World

FIELDS = ["title", "description", "status", "priority", "assignees", "tags", "due_date", "parent"]
FLAT = ("vortask", "agentkanban", "runs")
NESTS = ("impactly", "squads")

NewStore = Callable[[], Awaitable[str]]


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[NewStore]:
    """Makes the URL of a new, empty store on the backend of this run (a test re-adopting into a
    lost store's replacement makes two); the PostgreSQL databases are dropped afterwards."""
    server = pg_url_or_skip() if request.param == "postgres" else None
    made: list[str] = []

    async def make() -> str:
        if server is None:
            return f"sqlite+aiosqlite:///{tmp_path}/store-{uuid.uuid4().hex[:8]}.db"
        url, name = await fresh_pg_database(server)
        made.append(name)
        return url

    yield make
    for name in made:
        assert server is not None
        await drop_pg_database(server, name)


def directory(path: Path) -> Path:
    """`path`, made if missing (a second daemon's config goes there)."""
    path.mkdir(parents=True, exist_ok=True)
    return path


async def open_harness(world: World, tmp: Path, store_url: str) -> Harness:
    return await make_harness(world, tmp, route={"fields": FIELDS}, store_url=store_url)


async def close_harness(h: Harness) -> None:
    for conn in h.ctx.connectors.values():
        await conn.aclose()
    await h.daemon.store.close()


@pytest_asyncio.fixture
async def harness(world: World, tmp_path: Path, new_store: NewStore) -> AsyncIterator[Harness]:
    h = await open_harness(world, tmp_path, await new_store())
    yield h
    await close_harness(h)


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


def writes(world: World, platform: str) -> int:
    """Write requests a fake served (MCP's endpoint left out: its reads are POSTs too)."""
    return sum(
        1
        for e in world.fakes[platform].requests.entries
        if e.method in ("POST", "PUT", "PATCH", "DELETE") and e.route != "/mcp"
    )


def signed_delivery(
    world: World, remote_id: str, event: str = "task.created"
) -> tuple[dict[str, str], bytes]:
    """Impactly's delivery of `event` for one of its tasks, as the platform signs and sends it."""
    data = next(t for t in ops.raw_tasks(world, "impactly") if str(t["id"]) == remote_id)
    body = json.dumps({"id": str(uuid.uuid4()), "event": event, "data": data}).encode()
    signature = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"x-impactly-signature": f"sha256={signature}", "x-impactly-event": event}, body


async def test_one_webhook_batch_is_observed_parents_first(harness: Harness, world: World) -> None:
    """A child's creation delivered before its parent's, both in one inbox batch: the parent is
    observed first, so the child is linked under it at once and mirrored under it on Nucleus,
    with nothing left for a later poll to mend."""
    launch = ops.create(world, "impactly", "Launch")
    post = ops.create(world, "impactly", "Write the post", parent=launch)
    demo = ops.create(world, "impactly", "Record the demo", parent=launch)
    for remote_id in (post, demo, launch):  # children first, as a platform may send them
        receipt = await receive(harness.ctx, "impactly", *signed_delivery(world, remote_id))
        assert receipt.status == 202, receipt
    nucleus = world.fakes["squads"]
    nucleus.requests.clear()
    assert await process_pending(harness.ctx) == 3  # one batch
    await harness.daemon.worker.run_until_idle()

    expected = {"Launch": None, "Write the post": "Launch", "Record the demo": "Launch"}
    assert ops.parents(world, "squads") == expected  # before any poll
    async with harness.ctx.store.read() as session:
        tasks = {t.title: t for t in (await session.scalars(select(TaskRow))).all()}
    assert {title: tasks[p].id if p else None for title, p in expected.items()} == {
        title: task.data.get("parent") for title, task in tasks.items()
    }
    # Three creates, and at most one move per child whose create beat its parent's (they run
    # side by side): no more.
    assert nucleus.requests.count("POST") == 3, nucleus.requests.by_route()
    assert nucleus.requests.writes() <= 5, nucleus.requests.by_route()
    nucleus.requests.clear()
    await harness.settle()
    assert nucleus.requests.writes() == 0, nucleus.requests.by_route()  # nothing for a poll to mend
    assert ops.parents(world, "squads") == expected
    assert ops.parents(world, "impactly") == expected
    assert_flat_elsewhere(world, set(expected))


async def test_a_lost_store_re_adopts_the_tree(
    harness: Harness, world: World, new_store: NewStore, tmp_path: Path
) -> None:
    """The store is lost; its replacement re-adopts the tasks by marker, and each child knows its
    parent right away (canonical, and on every link of a side that nests): no poll needed, and
    nothing written anywhere, the tree being what the platforms already hold."""
    launch = ops.create(world, "impactly", "Launch")
    ops.create(world, "impactly", "Write the post", parent=launch)
    ops.create(world, "impactly", "Record the demo", parent=launch)
    await harness.settle()
    expected = {"Launch": None, "Write the post": "Launch", "Record the demo": "Launch"}
    assert ops.parents(world, "squads") == expected

    h = await open_harness(world, directory(tmp_path / "replacement"), await new_store())
    try:
        assert await readopt(h.ctx) == 3
        async with h.ctx.store.read() as session:
            tasks = {t.title: t for t in (await session.scalars(select(TaskRow))).all()}
            links = (await session.scalars(select(LinkRow))).all()
            queued = (await session.scalars(select(OutboxRow))).all()
        parent_id = tasks["Launch"].id
        want = {title: parent_id if p else None for title, p in expected.items()}
        assert {title: decode_values(t.data).get("parent") for title, t in tasks.items()} == want
        title_of = {t.id: title for title, t in tasks.items()}
        nested = [link for link in links if link.connector in NESTS]
        assert len(nested) == 6
        for link in nested:  # each side's copy agrees with us on its parent
            assert link.base.get("parent", "missing") == want[title_of[link.task_id]], link.connector
        assert all("parent" not in link.base for link in links if link.connector in FLAT)
        # Everything re-adopted is in sync: nothing to write. (Said in full: this failed about once
        # in 20 full runs, never alone, and what was queued is what would explain it.)
        bases = {(link.task_id, link.connector): link.base for link in links}
        assert [
            (title_of.get(q.task_id), q.connector, q.op, q.payload, bases.get((q.task_id, q.connector)))
            for q in queued
        ] == [], {title: decode_values(t.data) for title, t in tasks.items()}

        for platform in world.platforms:
            world.fakes[platform].requests.clear()
        await h.settle()
        for platform in world.platforms:
            assert writes(world, platform) == 0, (platform, world.fakes[platform].requests.by_route())
        assert ops.parents(world, "squads") == expected
        assert ops.parents(world, "impactly") == expected

        # The re-adopted tree is live: a move on Nucleus reaches Impactly.
        on_squads = ids(world, "squads")
        ops.edit(world, "squads", on_squads["Record the demo"], parent=on_squads["Write the post"])
        await h.settle()
        moved = {**expected, "Record the demo": "Write the post"}
        assert ops.parents(world, "impactly") == moved
        assert ops.parents(world, "squads") == moved
        assert_flat_elsewhere(world, set(expected))
    finally:
        await close_harness(h)


async def test_matched_twins_keep_their_tree_and_settle_where_they_differ(
    world: World, tmp_path: Path, new_store: NewStore
) -> None:
    """`initial: match` links two boards nested by hand. The tree matched is the bridge's at once;
    where the copies disagree, the newest report wins (as for every field matching links) and the
    other side is moved; copies disagreeing into a loop (A under B on one side, B under A on the
    other) keep the bridge's hierarchy a forest: the one refused is written back."""
    on_squads = {"Launch": ops.create(world, "squads", "Launch")}
    on_squads["Write the post"] = ops.create(world, "squads", "Write the post", parent=on_squads["Launch"])
    on_squads["Record the demo"] = ops.create(world, "squads", "Record the demo")  # top level here
    on_impactly = {"A": ops.create(world, "impactly", "A")}
    on_squads["B"] = ops.create(world, "squads", "B")
    on_squads["A"] = ops.create(world, "squads", "A", parent=on_squads["B"])  # A's newest: under B
    on_impactly["B"] = ops.create(world, "impactly", "B", parent=on_impactly["A"])  # B's newest: under A
    on_impactly["Launch"] = ops.create(world, "impactly", "Launch")
    for title in ("Write the post", "Record the demo"):  # Impactly's copies newer: under Launch
        on_impactly[title] = ops.create(world, "impactly", title, parent=on_impactly["Launch"])

    h = await make_harness(
        world,
        tmp_path,
        members=list(NESTS),
        route={"fields": FIELDS, "initial": "match"},
        store_url=await new_store(),
    )
    try:
        assert await adopt_existing(h.ctx) == 5
        async with h.ctx.store.read() as session:
            tasks = {t.title: t for t in (await session.scalars(select(TaskRow))).all()}
        parent_of = {title: t.data.get("parent") for title, t in tasks.items()}
        launch = tasks["Launch"].id
        assert parent_of["Write the post"] == launch and parent_of["Record the demo"] == launch
        assert parent_of["Launch"] is None
        # A under B and B under A: one of them is taken, the other refused (top level)
        assert sorted([parent_of["A"] is None, parent_of["B"] is None]) == [False, True]

        await h.settle()
        agreed = ops.parents(world, "impactly")
        assert agreed == ops.parents(world, "squads")
        assert agreed["Record the demo"] == "Launch" and agreed["Write the post"] == "Launch"
        assert {agreed["A"], agreed["B"]} in ({None, "A"}, {None, "B"})
    finally:
        await close_harness(h)


async def test_a_child_listed_before_its_parent_waits_for_it(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll observes its listing a chunk at a time, so it cannot put every parent first: a new
    child listed in a chunk before its new parent's waits for the end of the listing, and is
    linked under it."""
    monkeypatch.setattr(poller, "CHUNK", 1)
    parent = ops.create(world, "squads", "Parent")
    ops.create(world, "squads", "Child", parent=parent)  # Nucleus lists the newest first
    listed = [t["title"] for t in ops.raw_tasks(world, "squads")]
    assert listed.index("Child") < listed.index("Parent")  # the case at hand
    await harness.poll("squads")
    await harness.drain()
    expected = {"Parent": None, "Child": "Parent"}
    assert ops.parents(world, "impactly") == expected  # at once, not after a later poll mends it
    await harness.settle()
    assert ops.parents(world, "impactly") == expected
    assert ops.parents(world, "squads") == expected
