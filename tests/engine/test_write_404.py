"""A 404 on a write is a deletion only when a GET and a complete listing agree (issue 15): some
platforms answer a write 404 for a task that exists but the credential may not change."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import select

from bridge.store.states import LinkState, OpState
from bridge.store.tables import LinkRow, OutboxRow
from connectors.base import NotFound
from tests import ops
from tests.engine.conftest import Harness
from tests.engine.test_engine import create_on, intercept_first_update
from tests.world import World

TARGETS = ("impactly", "vortask", "agentkanban", "squads", "runs")


def refused_with_404(hit_status: int = 404) -> Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]:
    async def around(write: Callable[[], Awaitable[Any]]) -> Any:
        raise NotFound("PATCH task: not found", status=hit_status)

    return around


def live(world: World, platform: str, title: str) -> bool:
    task = ops.view(world, platform).get(title)
    return task is not None and task.get("status") not in ("cancelled",) and not task.get("archived")


@pytest.mark.parametrize("target", TARGETS)
async def test_a_write_refused_with_404_on_a_task_that_is_there_archives_nothing(
    harness: Harness, world: World, target: str
) -> None:
    origin = "squads" if target != "squads" else "vortask"
    task_id = create_on(world, origin, "still here")
    await harness.settle()
    hit = intercept_first_update(harness.ctx.connectors[target], refused_with_404())
    ops.edit(world, origin, task_id, title="still here, renamed")
    await harness.settle()
    assert hit, "the write was never attempted"
    for p in TARGETS:
        assert live(world, p, "still here, renamed") or (p == target and live(world, p, "still here")), (
            f"{p}: the task was archived or lost"
        )
    async with harness.ctx.store.read() as s:
        parked = (await s.scalars(select(OutboxRow).where(OutboxRow.state == OpState.PARKED))).all()
        links = (await s.scalars(select(LinkRow))).all()
    assert [(r.connector, "yet the task is there" in (r.last_error or "")) for r in parked] == [
        (target, True)
    ]
    assert all(link.state == LinkState.ACTIVE for link in links)


async def test_a_write_refused_with_404_on_a_task_really_gone_is_its_deletion(
    harness: Harness, world: World
) -> None:
    task_id = create_on(world, "squads", "really gone")
    await harness.settle()
    vortask_id = ops.view(world, "vortask")["really gone"]["id"]

    async def around(write: Callable[[], Awaitable[Any]]) -> Any:
        with world.client("vortask") as c:  # deleted between our read and our write
            assert c.delete(f"/projects/{world.scopes['vortask']}/tasks/{vortask_id}").status_code == 204
        return await write()

    hit = intercept_first_update(harness.ctx.connectors["vortask"], around)
    ops.edit(world, "squads", task_id, title="really gone, renamed")
    await harness.settle()
    assert hit
    imp = ops.view(world, "impactly")["really gone, renamed"]
    assert imp["status"] in ("done", "cancelled")  # the route's policy: archive (Impactly closes)


async def test_a_404_on_a_read_by_id_is_no_deletion_while_the_listing_shows_the_task(
    harness: Harness, world: World
) -> None:
    task_id = create_on(world, "squads", "listed")
    await harness.settle()
    vortask = harness.ctx.connectors["vortask"]
    target = ops.view(world, "vortask")["listed"]["id"]
    real_get = vortask.get_task

    async def get_task(scope: str, remote_id: str) -> Any:
        if remote_id == target:
            raise NotFound("GET task: not found")  # as a platform hiding it from reads by id
        return await real_get(scope, remote_id)

    vortask.get_task = get_task  # type: ignore[method-assign]  # so the read before the write 404s too
    ops.edit(world, "squads", task_id, title="listed, renamed")
    await harness.poll("squads")
    await harness.drain()
    async with harness.ctx.store.read() as s:
        parked = (await s.scalars(select(OutboxRow).where(OutboxRow.state == OpState.PARKED))).all()
    assert [(r.connector, "listing still shows the task" in (r.last_error or "")) for r in parked] == [
        ("vortask", True)
    ]
    assert live(world, "impactly", "listed, renamed") and live(world, "vortask", "listed")
