"""The committer records a batch of outcomes in one transaction; what one outcome does there must
not depend on which others share its batch (the committer waits a moment to batch more)."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

from bridge.engine import api_ops, outbox
from bridge.engine.outbox import _STUCK_LINKS, _Op, _parked, apply_outcomes, claim, execute
from bridge.engine.sync import queue_updates_many
from bridge.store.states import LinkState, OpKind, OpState
from bridge.store.tables import LinkRow, OutboxRow
from connectors.base import Retryable
from tests import ops
from tests.engine.conftest import Harness
from tests.engine.test_engine import create_on, titles
from tests.world import World


async def _claim_an_edit(
    harness: Harness, world: World, title: str, *, task_id: str | None = None
) -> list[_Op]:
    """An edit on Nucleus, its four writes claimed (not yet attempted)."""
    if task_id is None:
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


# (op, state) of a link's operations after its create, oldest first -> whether the re-check of
# landed writes leaves the link alone (its last finished write of fields parked).
STUCK_CASES = [
    ([("update", OpState.PARKED)], True),
    ([("create", OpState.PARKED)], True),
    ([("comment", OpState.PARKED)], False),  # a refused comment says nothing of the fields
    ([("update", OpState.PARKED), ("comment", OpState.DONE)], True),  # nor does one that landed
    ([("update", OpState.PARKED), ("update", OpState.DONE)], False),  # a later write landed there
    ([("update", OpState.DONE), ("update", OpState.PARKED)], True),
    ([("comment", OpState.PARKED), ("update", OpState.DONE)], False),
    ([("update", OpState.PARKED), ("update", OpState.PENDING)], True),  # not finished yet
]


@pytest.mark.parametrize(("history", "stuck"), STUCK_CASES)
async def test_which_links_the_landed_write_recheck_leaves_alone(
    harness: Harness, world: World, history: list[tuple[str, OpState]], stuck: bool
) -> None:
    create_on(world, "squads", "stuck or not")
    await harness.settle()
    now = harness.ctx.now()
    async with harness.ctx.store.transaction() as session:
        link = await session.scalar(select(LinkRow).where(LinkRow.connector == "runs"))
        assert link is not None
        for op, state in history:
            session.add(
                OutboxRow(
                    task_id=link.task_id,
                    link_id=link.id,
                    route=link.route,
                    connector="runs",
                    op=op,
                    payload={},
                    state=state,
                    next_attempt_at=now,
                    observed_at=now,
                    created_at=now,
                )
            )
        await session.flush()
        found = set((await session.scalars(_STUCK_LINKS, {"ids": [link.task_id]})).all())
    assert found == ({link.id} if stuck else set())


async def test_a_change_seen_while_its_sides_were_being_written_follows_when_the_writes_land(
    harness: Harness, world: World
) -> None:
    """The task moved on while its writes were out: the change is queued behind each write in
    flight (on PostgreSQL the landing's re-check and the observation can run side by side,
    neither seeing the other's work, so the re-check alone could miss it), and written once
    those writes land."""
    task_id = create_on(world, "squads", "in flight")
    await harness.settle()
    claimed = await _claim_an_edit(harness, world, "in flight", task_id=task_id)
    ops.edit(world, "squads", task_id, title="in flight, edited twice")
    await harness.poll("squads")  # every side is being written: an update waits behind each
    async with harness.ctx.store.read() as session:
        waiting = (await session.scalars(select(OutboxRow).where(OutboxRow.state == OpState.PENDING))).all()
    assert sorted(row.connector for row in waiting) == sorted(op.connector for op in claimed)
    settings = harness.daemon.worker.settings
    outcomes = [(op, await execute(harness.ctx, settings, op, random.Random(0))) for op in claimed]
    async with harness.ctx.store.transaction() as session:
        await apply_outcomes(harness.ctx, session, outcomes)
    await harness.drain()
    for platform in ("impactly", "vortask", "agentkanban", "runs"):
        assert titles(world, platform) == ["in flight, edited twice"], platform


async def test_writes_that_land_settled_queue_nothing_more(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    claimed = await _claim_an_edit(harness, world, "settled")
    settings = harness.daemon.worker.settings
    outcomes = [(op, await execute(harness.ctx, settings, op, random.Random(0))) for op in claimed]
    rechecked: list[Any] = []

    async def recording(ctx: Any, session: Any, items: Any, **kwargs: Any) -> int:
        rechecked.extend(items)
        return await queue_updates_many(ctx, session, items, **kwargs)

    monkeypatch.setattr(outbox, "queue_updates_many", recording)
    async with harness.ctx.store.transaction() as session:
        await apply_outcomes(harness.ctx, session, outcomes)
    assert rechecked == [], "a write that landed settled had its task re-checked"
    async with harness.ctx.store.read() as session:
        rows = (await session.scalars(select(OutboxRow))).all()
    assert [r for r in rows if r.state != OpState.DONE] == []
    for platform in ("impactly", "vortask", "agentkanban", "runs"):
        assert titles(world, platform) == ["settled, edited"], platform


async def test_an_outcome_that_cannot_be_recorded_parks_after_the_unexpected_budget(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording one write's outcome fails every time (a bug): the operation ran again at every
    claim's expiry, forever, and never showed in `outbox list`. It parks after max_unexpected
    attempts, saying why; the other writes of the change are recorded as usual."""
    claimed = await _claim_an_edit(harness, world, "unrecordable")
    real = outbox._record_write

    def failing(ctx: Any, op: _Op, *args: Any) -> None:
        if op.connector == "runs":
            raise RuntimeError("a bug in recording")
        real(ctx, op, *args)

    monkeypatch.setattr(outbox, "_record_write", failing)
    committer = outbox.Committer(harness.ctx, max_unexpected=3)
    settings = harness.daemon.worker.settings
    for op in claimed:
        await committer.submit(op, await execute(harness.ctx, settings, op, random.Random(0)))
    assert await _runs_not_done(harness) == [OpState.CLAIMED]  # left to its claim's expiry, as before

    (run,) = [op for op in claimed if op.connector == "runs"]
    for attempts in (2, 3):  # the claim expired and the write ran again
        run.attempts = attempts
        await committer.submit(run, await execute(harness.ctx, settings, run, random.Random(0)))
    assert await _runs_not_done(harness) == [OpState.PARKED]
    async with harness.ctx.store.read() as session:
        row = await session.get(OutboxRow, run.id)
    assert row is not None
    assert row.last_error == "gave up after 3 attempts: recording its outcome failed (RuntimeError)"
    assert row.claimed_by is None


async def test_a_create_without_a_clear_answer_waits_before_its_retry_looks(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create (or comment) that timed out may still be landing: the platform can go on with a
    request the daemon stopped waiting for. Its retry looks for it first, so it must not look
    before the platform had time to finish (`landing_wait`), or it finds nothing and writes a
    second copy. An update is idempotent: it backs off as before."""
    settings = replace(harness.daemon.worker.settings, backoff=0.05, landing_wait=5.0)
    edited = create_on(world, "squads", "an edit")
    await harness.settle()

    async def timed_out(*args: Any, **kwargs: Any) -> Any:
        raise Retryable("the request timed out", connector="impactly")

    monkeypatch.setattr(harness.ctx.connectors["impactly"], "create_task", timed_out)
    monkeypatch.setattr(harness.ctx.connectors["impactly"], "update_task", timed_out)
    claimed = await _claim_an_edit(harness, world, "an edit", task_id=edited)
    (update,) = [op for op in claimed if op.connector == "impactly"]
    outcome = await execute(harness.ctx, settings, update, random.Random(0))
    assert outcome.state == OpState.PENDING and outcome.delay < 1.0

    create_on(world, "squads", "slow to answer")
    await harness.poll("squads")
    claimed = [op for op in await claim(harness.ctx, settings, 16) if isinstance(op, _Op)]
    (create,) = [op for op in claimed if op.connector == "impactly" and op.task.title == "slow to answer"]
    outcome = await execute(harness.ctx, settings, create, random.Random(0))
    assert (outcome.state, outcome.delay) == (OpState.PENDING, 5.0)


async def test_a_link_a_batch_left_gone_is_not_archived_again_by_a_deletion_later_in_it(
    harness: Harness, world: World
) -> None:
    """One batch records an archive that landed on Nucleus (its link gone) and then an update
    of Vortask answered by the task's deletion there, which archives every live link of the
    task. The first record must be in the store by then: read as still active, the Nucleus link
    was given a second archive (found by a review of the links' Core writes)."""
    task_id = create_on(world, "squads", "doomed")
    await harness.settle()
    ops.edit(world, "squads", task_id, title="doomed, renamed")
    await harness.poll("squads")  # updates of the four other sides, waiting
    vortask_id = ops.view(world, "vortask")["doomed"]["id"]
    with world.client("vortask") as client:  # a person deletes it there
        assert client.delete(f"/projects/{world.scopes['vortask']}/tasks/{vortask_id}").status_code < 300
    async with harness.ctx.store.read() as session:
        (bridge_id,) = (
            await session.scalars(select(LinkRow.task_id).where(LinkRow.connector == "squads"))
        ).all()
    await api_ops.delete_task(harness.ctx, bridge_id)  # an archive of every live side
    settings = harness.daemon.worker.settings
    claimed = {
        (op.connector, op.op): op for op in await claim(harness.ctx, settings, 16) if isinstance(op, _Op)
    }
    archive, update = claimed[("squads", OpKind.ARCHIVE)], claimed[("vortask", OpKind.UPDATE)]
    batch = [(op, await execute(harness.ctx, settings, op, random.Random(0))) for op in (archive, update)]
    assert batch[1][1].remote_deleted
    async with harness.ctx.store.transaction() as session:
        await apply_outcomes(harness.ctx, session, batch)
    async with harness.ctx.store.read() as session:
        squads = (
            await session.execute(
                select(LinkRow.state, OutboxRow.op, OutboxRow.state)
                .join(OutboxRow, OutboxRow.link_id == LinkRow.id)
                .where(LinkRow.connector == "squads", OutboxRow.op == OpKind.ARCHIVE)
            )
        ).all()
    assert [tuple(r) for r in squads] == [(LinkState.GONE, OpKind.ARCHIVE, OpState.DONE)]
