"""The committer records a batch of outcomes in one transaction; what one outcome does there must
not depend on which others share its batch (the committer waits a moment to batch more)."""

from __future__ import annotations

import random

from sqlalchemy import select

from bridge.engine.outbox import _Op, _parked, apply_outcomes, claim, execute
from bridge.store.states import OpState
from bridge.store.tables import OutboxRow
from tests import ops
from tests.engine.conftest import Harness
from tests.engine.test_engine import create_on
from tests.world import World


async def _claim_an_edit(harness: Harness, world: World, title: str) -> list[_Op]:
    """An edit on Nucleus, its four writes claimed (not yet attempted)."""
    task_id = create_on(world, "squads", title)
    await harness.settle()
    ops.edit(world, "squads", task_id, title=f"{title}, edited")
    await harness.poll("squads")
    claimed = [
        op for op in await claim(harness.ctx, harness.daemon.worker.settings, 16) if isinstance(op, _Op)
    ]
    assert sorted(op.connector for op in claimed) == ["agentkanban", "impactly", "runs", "vortask"]
    return claimed


async def _runs_not_done(harness: Harness) -> list[str]:
    async with harness.ctx.store.read() as session:
        rows = (await session.scalars(select(OutboxRow).where(OutboxRow.connector == "runs"))).all()
    return [r.state for r in rows if r.state != OpState.DONE]


async def test_a_write_parked_beside_writes_that_landed_is_not_queued_again(
    harness: Harness, world: World
) -> None:
    claimed = await _claim_an_edit(harness, world, "parked beside")
    settings = harness.daemon.worker.settings
    batch = []
    for op in claimed:
        if op.connector == "runs":  # refused there: parked, its side still differs from the task
            batch.append((op, _parked("refused")))
        else:
            batch.append((op, await execute(harness.ctx, settings, op, random.Random(0))))
    # One batch: the writes that landed re-check their task for anything still to write.
    async with harness.ctx.store.transaction() as session:
        await apply_outcomes(harness.ctx, session, batch)
    assert await _runs_not_done(harness) == [OpState.PARKED], "the parked change was queued a second time"


async def test_a_write_parked_before_the_writes_beside_it_land_is_not_queued_again(
    harness: Harness, world: World
) -> None:
    claimed = await _claim_an_edit(harness, world, "parked first")
    settings = harness.daemon.worker.settings
    refused = [op for op in claimed if op.connector == "runs"]
    landed = [op for op in claimed if op.connector != "runs"]
    async with harness.ctx.store.transaction() as session:  # the refusal is recorded first
        await apply_outcomes(harness.ctx, session, [(op, _parked("refused")) for op in refused])
    outcomes = [(op, await execute(harness.ctx, settings, op, random.Random(0))) for op in landed]
    async with harness.ctx.store.transaction() as session:
        await apply_outcomes(harness.ctx, session, outcomes)
    assert await _runs_not_done(harness) == [OpState.PARKED]
