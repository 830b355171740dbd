"""PostHog's own rules, through the whole engine (issue 15): a teammate's task the key can see but
not change is never archived elsewhere when a write to it answers 404; the usage-limit 429
(no Retry-After) backs off and parks instead of retrying for ever."""

from __future__ import annotations

import dataclasses

import httpx
from sqlalchemy import select

from bridge.store.states import LinkState, OpState
from bridge.store.tables import LinkRow, OutboxRow
from tests import ops
from tests.engine.conftest import Harness
from tests.engine.test_engine import titles
from tests.world import World

ELSEWHERE = ("impactly", "vortask", "agentkanban", "squads")


def sams_experiment(world: World, title: str) -> str:
    """A task Sam (a teammate) made in PostHog's experiments product: the bridge's key sees it
    (experiments is team-readable) but may not change it."""
    fake = world.fakes["runs"]
    fake.add_user_key("Sam", "phx_sam")  # type: ignore[attr-defined]
    with httpx.Client(base_url=world.base_url("runs"), headers={"Authorization": "Bearer phx_sam"}) as c:
        r = c.post(
            f"/projects/{world.scopes['runs']}/tasks/", json={"title": title, "origin_product": "experiments"}
        )
        r.raise_for_status()
        return str(r.json()["id"])


async def parked(h: Harness) -> list[OutboxRow]:
    async with h.ctx.store.read() as s:
        return list((await s.scalars(select(OutboxRow).where(OutboxRow.state == OpState.PARKED))).all())


async def test_a_teammates_task_refusing_our_write_is_never_archived_elsewhere(
    harness: Harness, world: World
) -> None:
    sams_experiment(world, "sam's experiment")
    await harness.settle()
    for p in ELSEWHERE:
        assert "sam's experiment" in titles(world, p), p
    squads_id = ops.view(world, "squads")["sam's experiment"]["id"]
    ops.edit(world, "squads", squads_id, title="sam's experiment, renamed elsewhere")
    await harness.settle()
    for p in ELSEWHERE:
        task = ops.view(world, p)["sam's experiment, renamed elsewhere"]
        assert task.get("status") not in ("cancelled", "done") and not task.get("archived"), p
    assert "sam's experiment" in titles(world, "runs")  # PostHog's copy stays Sam's
    [op] = await parked(harness)
    assert op.connector == "runs" and "yet the task is there" in (op.last_error or "")
    async with harness.ctx.store.read() as s:
        links = (await s.scalars(select(LinkRow).where(LinkRow.task_id == op.task_id))).all()
    assert all(link.state == LinkState.ACTIVE for link in links)


async def test_the_usage_limit_backs_off_and_parks(harness: Harness, world: World) -> None:
    ops.create(world, "runs", "agent work")
    await harness.settle()
    world.fakes["runs"].exceed_usage_limit()  # type: ignore[attr-defined]
    worker = harness.daemon.worker
    worker.settings = dataclasses.replace(worker.settings, max_attempts=3)
    squads_id = ops.view(world, "squads")["agent work"]["id"]
    ops.edit(world, "squads", squads_id, status="in_progress")  # starts a run on PostHog
    for _ in range(12):
        await harness.settle()
        if await parked(harness):
            break
    [op] = await parked(harness)
    assert op.connector == "runs" and op.attempts == 3
    assert "usage_limit_exceeded" in (op.last_error or "") and "gave up after 3 attempts" in (
        op.last_error or ""
    )
    runs = world.fakes["runs"].requests  # type: ignore[attr-defined]
    assert runs.count("POST", "/api/projects/{project_id}/tasks/{task_id}/run/") == 3  # no inline resends
