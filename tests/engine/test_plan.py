"""`taskbridge plan`: what the next sync would do, with no write to any platform (issue 18)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from bridge import config
from bridge.daemon import Daemon, DaemonOptions
from bridge.engine import leases
from bridge.engine.deadletters import list_operations
from bridge.engine.matching import adopt_existing
from bridge.engine.poller import poll_connector
from bridge.planning import ApplyRefused, Plan, Reviewed, apply_plan, make_plan, render, render_applied
from bridge.store.states import OpState
from bridge.store.tables import OutboxRow
from tests import ops
from tests.engine.conftest import make_harness
from tests.engine.test_engine import writes
from tests.world import World


async def test_the_plan_shows_the_next_sync_and_writes_nothing(world: World, tmp_path: Path) -> None:
    for i in range(3):
        ops.create(world, "vortask", f"planned {i}")
    ops.create(world, "impactly", "Shared by hand")
    ops.create(world, "squads", "shared  BY hand")
    twins = [ops.create(world, "vortask", "Twice"), ops.create(world, "vortask", "twice")]
    ops.create(world, "runs", "TWICE")  # which of Vortask's two it is cannot be told: ambiguous
    path = world.config(tmp_path, route={"initial": "match"})
    cfg = config.load(path)
    before = {p: writes(f) for p, f in world.fakes.items()}

    plan = await make_plan(cfg)

    assert {p: writes(f) for p, f in world.fakes.items()} == before, "the plan wrote to a platform"
    assert not plan.errors
    [link] = plan.links
    assert sorted(c for c, _ in link.copies) == ["impactly", "squads"] and "confidence 0.9" in link.how
    creates = Counter(w.connector for w in plan.writes if w.op == "create")
    # Each of the three is created on the four other platforms; the linked pair on the other three.
    assert creates == {"impactly": 3, "squads": 3, "agentkanban": 4, "runs": 4, "vortask": 1}, creates
    for p in ("agentkanban", "runs"):
        assert {w.title for w in plan.writes if w.connector == p and w.op == "create"} >= {
            "planned 0",
            "planned 1",
            "planned 2",
        }
    text = render(plan)
    assert "links (1 tasks" in text and "create on agentkanban/" in text
    # The ambiguous ones are listed, linked to nothing and copied nowhere.
    assert {("vortask", t) for t in twins} <= set(plan.held_apart)
    assert "left unlinked as ambiguous" in text and all(f"vortask:{t}" in text for t in twins)
    assert not [w for w in plan.writes if w.title.lower() == "twice"]

    # The sync the plan described makes those writes: the same creates, per platform.
    (tmp_path / "run").mkdir()
    h = await make_harness(world, tmp_path / "run", route={"initial": "match"})
    try:
        await adopt_existing(h.ctx)
        await h.settle()
        made = {p: writes(f) - before[p] for p, f in world.fakes.items()}
        planned = Counter(w.connector for w in plan.writes)
        assert made == {p: planned.get(p, 0) for p in world.platforms}, (made, planned)
        assert len(ops.view(world, "agentkanban")) == 4  # three planned, one shared: no duplicate
    finally:
        for conn in h.ctx.connectors.values():
            await conn.aclose()
        await h.daemon.store.close()


async def test_apply_makes_the_planned_writes_and_no_other(world: World, tmp_path: Path) -> None:
    for i in range(3):
        ops.create(world, "vortask", f"planned {i}")
    ops.create(world, "impactly", "Shared by hand")
    ops.create(world, "squads", "shared  BY hand")
    cfg = config.load(world.config(tmp_path, route={"initial": "match"}))
    shown = await make_plan(cfg)
    before = {p: writes(f) for p, f in world.fakes.items()}

    applied = await apply_plan(cfg, reviewed=Reviewed.parse(shown.as_json()))

    assert not applied.failed and not applied.unreviewed and not applied.plan.errors
    assert sorted(w.key() for w in applied.made) == sorted(w.key() for w in shown.writes)
    made = {p: writes(f) - before[p] for p, f in world.fakes.items()}
    planned = Counter(w.connector for w in shown.writes)
    assert made == {p: planned.get(p, 0) for p in world.platforms}, (made, planned)
    assert len(ops.view(world, "agentkanban")) == 4  # three planned, one shared: no duplicate
    # Applied, the store agrees with every member: a new plan finds nothing left to do.
    again = await make_plan(cfg)
    assert not again.writes and not again.links, render(again)


async def test_apply_parks_a_write_the_reviewed_plan_did_not_show(world: World, tmp_path: Path) -> None:
    ops.create(world, "vortask", "reviewed")
    cfg = config.load(world.config(tmp_path))
    shown = await make_plan(cfg)
    ops.create(world, "vortask", "arrived after the review")

    applied = await apply_plan(cfg, reviewed=Reviewed.parse(shown.as_json()))

    assert {w.title for w in applied.made} == {"reviewed"}
    assert {w.title for w in applied.unreviewed} == {"arrived after the review"}
    assert len(applied.unreviewed) == len(world.platforms) - 1
    for p in world.platforms:
        if p != "vortask":
            assert set(ops.view(world, p)) == {"reviewed"}, p
    h = await make_harness(world, tmp_path)  # the same config, so the same store
    try:
        parked = (await list_operations(h.ctx)).items
        assert len(parked) == len(world.platforms) - 1
        assert {r.last_error for r in parked} == {"not in the reviewed plan: retry it to make it, or drop it"}
    finally:
        await h.daemon.store.close()
    assert f"{len(parked)} writes not in the reviewed plan were parked" in render_applied(applied)


async def test_apply_refuses_a_running_daemon_and_writes_queued_before(world: World, tmp_path: Path) -> None:
    ops.create(world, "vortask", "one")
    h = await make_harness(world, tmp_path)
    cfg = h.daemon.cfg
    try:
        assert await leases.acquire(h.ctx, "poll:vortask", ttl=60)
        with pytest.raises(ApplyRefused, match="a daemon runs on this store"):
            await apply_plan(cfg)
        await leases.release(h.ctx, "poll:vortask")
        # An apply in progress (its lease): a second is refused, and so is a daemon's start.
        assert await leases.acquire(h.ctx, leases.PLAN_APPLY, ttl=60)
        with pytest.raises(ApplyRefused, match="another plan is being applied to this store"):
            await apply_plan(cfg)
        refused = Daemon(cfg, options=DaemonOptions(poll=False, serve=False))
        with pytest.raises(RuntimeError, match="a plan is being applied to this store"):
            await refused.start()
        assert refused.store.engine.sync_engine.pool.checkedout() == 0  # a failed start closes
        await leases.release(h.ctx, leases.PLAN_APPLY)
        await poll_connector(h.ctx, "vortask")  # queues the mirrors, not made
        with pytest.raises(ApplyRefused, match="writes are already queued"):
            await apply_plan(cfg)
    finally:
        for conn in h.ctx.connectors.values():
            await conn.aclose()
        await h.daemon.store.close()


async def test_a_sealed_write_takes_no_more_fields(world: World, tmp_path: Path) -> None:
    """`plan --apply` seals the writes it showed: a change queued while they wait goes behind
    them as a write of its own (left for the daemon), never into them."""
    members = ["vortask", "squads"]
    ops.create(world, "vortask", "sealed")
    h = await make_harness(world, tmp_path, members=members)
    try:
        await h.settle()
        rid = ops.view(world, "vortask")["sealed"]["id"]

        async def pending() -> list[tuple[int, list[str]]]:
            async with h.ctx.store.read() as s:
                rows = await s.scalars(
                    select(OutboxRow).where(OutboxRow.state == OpState.PENDING).order_by(OutboxRow.id)
                )
                return [(r.id, r.payload["fields"]) for r in rows]

        ops.edit(world, "vortask", rid, title="sealed, retitled")
        await h.poll("vortask")
        [(first, fields)] = await pending()
        assert fields == ["title"]
        h.ctx.sealed_ops = first
        ops.edit(world, "vortask", rid, priority="high")
        await h.poll("vortask")
        # The new write names every field its side's base lacks (the title's write has not landed).
        assert await pending() == [(first, ["title"]), (first + 1, ["priority", "title"])]
        h.ctx.sealed_ops = 0  # unsealed, a later change joins the write still waiting
        ops.edit(world, "vortask", rid, due_date="2027-01-04")
        await h.poll("vortask")
        assert await pending() == [(first, ["title"]), (first + 1, ["due_date", "priority", "title"])]
    finally:
        for conn in h.ctx.connectors.values():
            await conn.aclose()
        await h.daemon.store.close()


def test_a_plan_whose_reads_failed_does_not_say_every_member_agrees() -> None:
    assert render(Plan()).splitlines() == ["nothing to do: every member agrees with the store"]
    failed = Plan(errors=["impactly/acme: could not be listed (HTTP 503)"])
    assert render(failed).splitlines() == [
        "nothing to do among the members that could be read; the plan misses those below",
        "error: impactly/acme: could not be listed (HTTP 503)",
    ]
