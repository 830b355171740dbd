"""`initial: match`: two boards a team kept in step by hand are linked, not copied (issue 18)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from bridge.engine.matching import adopt_existing, normalise
from bridge.store.tables import LinkRow, TaskRow
from tests import ops
from tests.engine.conftest import Harness, make_harness
from tests.world import World

PAIR = ("impactly", "vortask")


@pytest.mark.parametrize("initial", ["match", "match-only"])
async def test_existing_twins_are_linked_not_copied(world: World, tmp_path: Path, initial: str) -> None:
    for i in range(30):
        ops.create(world, "impactly", f"Shared task {i}: ship it")
        ops.create(world, "vortask", f"  shared TASK {i} ship it ")  # case, spacing, punctuation
    for i in range(5):
        ops.create(world, "impactly", f"only on impactly {i}")
    ops.create(world, "impactly", "Twin")  # one member holds this title twice: ambiguous
    ops.create(world, "vortask", "twin")
    ops.create(world, "vortask", "TWIN")
    h: Harness = await make_harness(world, tmp_path, members=list(PAIR), route={"initial": initial})
    try:
        linked = await adopt_existing(h.ctx)
        assert linked == 30
        await h.settle()
        imp, vt = ops.view(world, "impactly"), ops.view(world, "vortask")  # both assert no duplicate
        only = 5 if initial == "match" else 0  # match mirrors the unmatched; match-only leaves them
        assert len(imp) == 30 + 5 + 1 and len(vt) == 30 + only + 2
        async with h.ctx.store.read() as s:
            pairs = await s.scalar(
                select(func.count()).select_from(
                    select(LinkRow.task_id).group_by(LinkRow.task_id).having(func.count() == 2).subquery()
                )
            )
            tasks = await s.scalar(select(func.count()).select_from(TaskRow))
        assert pairs == 30 + only
        assert tasks == 30 + only  # the twins stay out: no canonical task, no copy
        # Linking took the newest title (Vortask's, made last) for both: one write, where they differed.
        assert {normalise(t) for t in imp if "hared" in t or "HARED" in t} == {
            f"shared task {i} ship it" for i in range(30)
        }
        assert set(imp) - {f"only on impactly {i}" for i in range(5)} - {"Twin"} == set(vt) - {
            "twin",
            "TWIN",
        } - {f"only on impactly {i}" for i in range(5)}
        # A linked pair is live: an edit on one side reaches the other.
        task_id = next(t["id"] for title, t in imp.items() if normalise(title) == "shared task 7 ship it")
        ops.edit(world, "impactly", task_id, title="Shared task 7, renamed")
        await h.settle()
        assert "Shared task 7, renamed" in ops.view(world, "vortask")
    finally:
        for conn in h.ctx.connectors.values():
            await conn.aclose()
        await h.daemon.store.close()
