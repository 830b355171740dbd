"""`taskbridge plan`: what the next sync would do, with no write to any platform (issue 18)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bridge import config
from bridge.engine.matching import adopt_existing
from bridge.planning import make_plan, render
from tests import ops
from tests.engine.conftest import make_harness
from tests.engine.test_engine import writes
from tests.world import World


async def test_the_plan_shows_the_next_sync_and_writes_nothing(world: World, tmp_path: Path) -> None:
    for i in range(3):
        ops.create(world, "vortask", f"planned {i}")
    ops.create(world, "impactly", "Shared by hand")
    ops.create(world, "squads", "shared  BY hand")
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
