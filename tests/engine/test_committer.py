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


async def test_a_write_parked_beside_writes_that_landed_is_not_queued_again(
    harness: Harness, world: World
) -> None:
    task_id = create_on(world, "squads", "parked beside")
    await harness.settle()
    ops.edit(world, "squads", task_id, title="parked beside, edited")
    await harness.poll("squads")
    settings = harness.daemon.worker.settings
    claimed = [op for op in await claim(harness.ctx, settings, 16) if isinstance(op, _Op)]
    assert sorted(op.connector for op in claimed) == ["agentkanban", "impactly", "runs", "vortask"]
    batch = []
    for op in claimed:
        if op.connector == "runs":  # refused there: parked, its side still differs from the task
            batch.append((op, _parked("refused")))
        else:
            batch.append((op, await execute(harness.ctx, settings, op, random.Random(0))))
    # One batch: the writes that landed re-check their task for anything still to write.
    async with harness.ctx.store.transaction() as session:
        await apply_outcomes(harness.ctx, session, batch)
    async with harness.ctx.store.read() as session:
        rows = (await session.scalars(select(OutboxRow).where(OutboxRow.connector == "runs"))).all()
    open_or_parked = [r.state for r in rows if r.state != OpState.DONE]
    assert open_or_parked == [OpState.PARKED], "the parked change was queued a second time"


async def test_a_write_parked_before_the_writes_beside_it_land_is_not_queued_again(
    harness: Harness, world: World
) -> None:
    task_id = create_on(world, "squads", "parked first")
    await harness.settle()
    ops.edit(world, "squads", task_id, title="parked first, edited")
    await harness.poll("squads")
    settings = harness.daemon.worker.settings
    claimed = [op for op in await claim(harness.ctx, settings, 16) if isinstance(op, _Op)]
    refused = [op for op in claimed if op.connector == "runs"]
    landed = [op for op in claimed if op.connector != "runs"]
    async with harness.ctx.store.transaction() as session:  # the refusal is recorded first
        await apply_outcomes(harness.ctx, session, [(op, _parked("refused")) for op in refused])
    outcomes = [(op, await execute(harness.ctx, settings, op, random.Random(0))) for op in landed]
    async with harness.ctx.store.transaction() as session:
        await apply_outcomes(harness.ctx, session, outcomes)
    async with harness.ctx.store.read() as session:
        rows = (await session.scalars(select(OutboxRow).where(OutboxRow.connector == "runs"))).all()
    assert [r.state for r in rows if r.state != OpState.DONE] == [OpState.PARKED]
