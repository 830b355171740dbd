"""A backfill's creates on a platform with a bulk create (Vortask's MCP `bulk_create_tasks`) go
out many to a request, run by the outbox worker against the fakes over loopback: every task
once, with its status; a task the platform refuses parks alone; a request whose answer is lost
is looked for, never sent twice. On SQLite and on PostgreSQL (skipped without
TASKBRIDGE_TEST_PG_URL), whose claim takes the creates with `FOR UPDATE SKIP LOCKED`."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select

from bridge.config import WorkersConfig
from bridge.engine import outbox
from bridge.engine.outbox import Worker, WorkerSettings
from bridge.model import Values, as_utc
from bridge.store.states import OpKind, OpState
from bridge.store.tables import OutboxRow
from connectors.base import ConnectorError, RemoteTask, Retryable
from tests import ops
from tests.engine import test_hierarchy
from tests.engine.conftest import Harness
from tests.world import World

# The store's backend is these fixtures' parameter, as in those tests.
harness = test_hierarchy.harness
new_store = test_hierarchy.new_store

TASKS = 24
LISTING = "/api/projects/{project_id}/tasks"  # Vortask's, as its fake's request log names it
STATUSES = ("todo", "in_progress", "blocked", "done")


def _seed(world: World, prefix: str) -> list[str]:
    """Tasks on AgentKanban, which the bridge has not seen: its first poll backfills them."""
    made = []
    for i in range(TASKS):
        title = f"{prefix} {i}"
        ops.create(world, "agentkanban", title, priority="high", status=STATUSES[i % len(STATUSES)])
        made.append(title)
    return made


class _Counted:
    """The Vortask connector's creates, counted (the requests themselves go to the fake)."""

    def __init__(self, conn: Any) -> None:
        self.bulk: list[int] = []  # items per create_tasks call
        self.alone = 0
        real_bulk, real_one = conn.create_tasks, conn.create_task

        async def create_tasks(scope: str, items: Sequence[Values]) -> list[RemoteTask | ConnectorError]:
            self.bulk.append(len(items))
            return await real_bulk(scope, items)

        async def create_task(scope: str, values: Values) -> RemoteTask:
            self.alone += 1
            return await real_one(scope, values)

        conn.create_tasks, conn.create_task = create_tasks, create_task


def _refused_by_vortask(conn: Any, title: str) -> None:
    """The task titled `title` goes out with a blank tag, which Vortask refuses (400): for the
    whole of a bulk request that carries it, and for it alone."""
    real_body = conn._create_body

    def create_body(values: Values) -> Any:
        body, status = real_body(values)
        if body["title"] == title:
            body["tags"] = [""]
        return body, status

    conn._create_body = create_body


async def _work(
    harness: Harness, done: Any, within: float = 30.0, *, worker: Worker | None = None, **settings: Any
) -> None:
    """Run the outbox worker (its own loop, as the daemon does) until `done()`. A worker given
    is left running; a new one is stopped."""
    if worker is not None:
        await _until(done, within)
        return
    worker = Worker(
        harness.ctx, dataclasses.replace(harness.daemon.worker.settings, idle_wait=0.2, **settings)
    )
    running = asyncio.create_task(worker.run())
    try:
        await _until(done, within)
    finally:
        worker.stop()
        await running


async def _until(done: Any, within: float) -> None:
    started = time.monotonic()
    while not await done():
        assert time.monotonic() - started < within, "the outbox did not finish"
        await asyncio.sleep(0.05)


async def _vortask_creates(harness: Harness) -> list[OutboxRow]:
    async with harness.ctx.store.transaction() as s:
        query = select(OutboxRow).where(OutboxRow.connector == "vortask", OutboxRow.op == OpKind.CREATE)
        return list((await s.scalars(query)).all())


def _all_finished(harness: Harness) -> Any:
    async def done() -> bool:
        rows = await _vortask_creates(harness)
        return len(rows) == TASKS and all(r.state in (OpState.DONE, OpState.PARKED) for r in rows)

    return done


async def test_a_backfill_creates_on_vortask_in_bulk_each_task_once(harness: Harness, world: World) -> None:
    titles = _seed(world, "bulk")
    counted = _Counted(harness.ctx.connectors["vortask"])
    await harness.poll("agentkanban")
    await _work(harness, _all_finished(harness))
    # One request, or a few (claims take creates as they come), never one a task.
    assert sum(counted.bulk) == TASKS and len(counted.bulk) <= 3, counted.bulk
    assert counted.alone == 0
    view, source = ops.view(world, "vortask"), ops.view(world, "agentkanban")  # fail on a duplicate title
    assert sorted(view) == sorted(titles)
    assert {v["status"] for v in view.values()} == {"todo", "in_progress", "done"}  # not just New's
    for title in titles:
        assert view[title]["status"] == source[title]["status"], (title, view[title], source[title])
    assert all(r.state == OpState.DONE for r in await _vortask_creates(harness))
    # Recorded as linked: Vortask's listing is ours, and the bridge settles writing nothing more.
    await harness.settle()
    assert sorted(ops.view(world, "vortask")) == sorted(titles)


async def test_workers_bulk_creates_1_sends_each_create_alone(harness: Harness, world: World) -> None:
    titles = _seed(world, "alone")
    counted = _Counted(harness.ctx.connectors["vortask"])
    settings = WorkerSettings.from_config(WorkersConfig(bulk_creates=1))
    await harness.poll("agentkanban")
    await _work(harness, _all_finished(harness), bulk_creates=settings.bulk_creates)
    assert counted.bulk == [] and counted.alone == TASKS
    assert sorted(ops.view(world, "vortask")) == sorted(titles)


async def test_a_task_the_platform_refuses_parks_alone(harness: Harness, world: World) -> None:
    titles = _seed(world, "refused")
    conn = harness.ctx.connectors["vortask"]
    counted = _Counted(conn)
    _refused_by_vortask(conn, "refused 5")
    await harness.poll("agentkanban")
    await _work(harness, _all_finished(harness))
    rows = await _vortask_creates(harness)
    parked = [r for r in rows if r.state == OpState.PARKED]
    assert len(parked) == 1 and "Tags must be" in (parked[0].last_error or ""), [r.last_error for r in rows]
    assert counted.bulk and counted.alone >= 2  # refused whole, then each alone
    assert sorted(ops.view(world, "vortask")) == sorted(t for t in titles if t != "refused 5")


async def test_a_platform_refusing_its_bulk_path_gets_each_create_alone(
    harness: Harness, world: World
) -> None:
    """A server without the tool, or one refusing the call for itself (a JSON-RPC error):
    nothing was created, so each create goes alone, and none parks. Every one of them landing
    alone says the refusal was the bulk path's, not an item's: the worker stops asking (for
    BULK_OFF_AFTER_REFUSAL), so the next backlog's creates go one a slot, not one after another
    in one slot behind a refused request."""
    titles = _seed(world, "no bulk")
    conn = harness.ctx.connectors["vortask"]
    counted = _Counted(conn)
    real_call = conn.mcp.call

    async def call(tool: str, arguments: Any) -> Any:
        return await real_call("no_bulk_here" if tool == "bulk_create_tasks" else tool, arguments)

    conn.mcp.call = call
    worker = Worker(harness.ctx, dataclasses.replace(harness.daemon.worker.settings, idle_wait=0.2))
    await harness.poll("agentkanban")  # the backlog first: one group
    running = asyncio.create_task(worker.run())
    try:
        await _work(harness, _all_finished(harness), worker=worker)
        assert counted.bulk == [TASKS] and counted.alone == TASKS
        assert all(r.state == OpState.DONE for r in await _vortask_creates(harness))
        assert sorted(ops.view(world, "vortask")) == sorted(titles)

        more = [f"no bulk again {i}" for i in range(TASKS)]
        for title in more:
            ops.create(world, "agentkanban", title, priority="high")

        async def all_done() -> bool:
            rows = await _vortask_creates(harness)
            return len(rows) == 2 * TASKS and all(r.state == OpState.DONE for r in rows)

        await harness.poll("agentkanban")  # claimed as queued, the worker running: groups or not
        await _work(harness, all_done, worker=worker)
    finally:
        worker.stop()
        await running
    assert counted.bulk == [TASKS] and counted.alone == 2 * TASKS  # no bulk request asked again
    assert sorted(ops.view(world, "vortask")) == sorted(titles + more)


async def test_a_refusal_naming_an_item_keeps_the_bulk_path(harness: Harness, world: World) -> None:
    """One task refused alone too: the refusal was that item's, and bulk creates go on."""
    worker = Worker(harness.ctx, dataclasses.replace(harness.daemon.worker.settings, idle_wait=0.2))
    conn = harness.ctx.connectors["vortask"]
    counted = _Counted(conn)
    _refused_by_vortask(conn, "item 3")
    _seed(world, "item")
    await harness.poll("agentkanban")
    running = asyncio.create_task(worker.run())
    try:
        await _work(harness, _all_finished(harness), worker=worker)
    finally:
        worker.stop()
        await running
    assert counted.bulk == [TASKS] and worker._bulk_paused() == frozenset()


async def test_a_bulk_request_whose_answer_is_lost_is_looked_for_not_sent_again(
    harness: Harness, world: World
) -> None:
    titles = _seed(world, "lost")
    conn = harness.ctx.connectors["vortask"]
    real_bulk = conn.create_tasks
    lost: list[int] = []

    async def create_tasks(scope: str, items: Sequence[Values]) -> list[RemoteTask | ConnectorError]:
        await real_bulk(scope, items)  # landed on Vortask
        if not lost:
            lost.append(len(items))
            raise Retryable("the answer never came", connector="vortask")
        raise AssertionError("a bulk create was sent again")

    conn.create_tasks = create_tasks
    real_find = conn.find_by_markers
    looked_from: list[datetime | None] = []

    async def find_by_markers(
        scope: str, markers: Collection[str], *, created_after: datetime | None = None
    ) -> dict[str, RemoteTask]:
        looked_from.append(created_after)
        return await real_find(scope, markers, created_after=created_after)

    conn.find_by_markers = find_by_markers
    await harness.poll("agentkanban")
    listings = world.fakes["vortask"].requests
    listed_before = listings.count("GET", LISTING)
    await _work(harness, _all_finished(harness))
    assert lost and lost[0] >= 2, lost
    assert all(r.state == OpState.DONE for r in await _vortask_creates(harness))
    assert sorted(ops.view(world, "vortask")) == sorted(titles)  # no task twice
    # The retries looked for their markers together (bridge/engine/lookups.py): a listing for
    # those that asked at once (5 here), not one each (25 before).
    assert listings.count("GET", LISTING) - listed_before <= TASKS // 4, listings.by_route()
    # Each look passes by the tasks dated before its creates were queued (the earliest of them).
    queued = {as_utc(r.created_at) for r in await _vortask_creates(harness)}
    assert looked_from and all(t is not None and as_utc(t) in queued for t in looked_from), looked_from


async def test_creates_of_a_connector_a_reload_removed_are_not_grouped(
    harness: Harness, world: World
) -> None:
    """Claimed before a reload took the connector away: the worker must not fail on them (its
    loop has no guard there); each goes alone, where the missing connector is its outcome."""
    _seed(world, "removed")
    await harness.poll("agentkanban")
    settings = harness.daemon.worker.settings
    claimed = await outbox.claim(harness.ctx, settings, 16, bulk_creates=settings.bulk_creates)
    creates = [op for op in claimed if isinstance(op, outbox._Op) and op.connector == "vortask"]
    assert len(creates) == TASKS  # the claim took every one of them
    worker = Worker(harness.ctx, settings)
    worker._ready.extend(creates[1:])  # claimed ahead, waiting for a slot
    assert len(worker._together(creates[0])) == TASKS and not worker._ready
    worker._ready.extend(creates[1:])
    vortask = harness.ctx.connectors.pop("vortask")
    try:
        assert worker._together(creates[0]) == [creates[0]] and len(worker._ready) == TASKS - 1
        assert outbox._BulkCreate.of(harness.ctx, creates) is None
    finally:
        harness.ctx.connectors["vortask"] = vortask
