"""The outbox worker wakes for work, not for every finished write: a write that finishes wakes
it only when its link has the next operation waiting, or when the last claim left runnable work
behind. Each test gives the worker an idle wait far longer than it may take, so a wake-up that
goes missing shows as a write that never comes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from sqlalchemy import func, select

from bridge.engine import outbox
from bridge.engine.outbox import Worker
from bridge.store.states import OpState
from bridge.store.tables import OutboxRow
from tests import ops
from tests.engine.conftest import Harness
from tests.engine.test_engine import create_on, titles
from tests.world import World

IDLE_WAIT = 60.0  # the worker's longest sleep here: no test waits for it


async def _until(check: Any, within: float = 10.0) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError("the write never came (a missed wake-up)")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_the_next_operation_of_a_link_runs_when_the_one_before_it_lands(
    harness: Harness, world: World
) -> None:
    task_id = create_on(world, "impactly", "chain")
    await harness.settle()
    vortask = harness.ctx.connectors["vortask"]
    real_update = vortask.update_task
    first_in_flight = asyncio.Event()

    async def slow_update(scope: str, remote_id: str, changes: Any) -> Any:
        first_in_flight.set()
        await asyncio.sleep(1.5)  # the comment is queued behind this write meanwhile
        return await real_update(scope, remote_id, changes)

    vortask.update_task = slow_update  # type: ignore[method-assign]
    worker = Worker(harness.ctx, dataclasses.replace(harness.daemon.worker.settings, idle_wait=IDLE_WAIT))
    running = asyncio.create_task(worker.run())
    try:
        ops.edit(world, "impactly", task_id, title="chain, edited")
        await harness.poll("impactly")
        await asyncio.wait_for(first_in_flight.wait(), 10)
        # A comment's write waits for the update of the same link; the update landing queues
        # nothing new (it wrote all there was), so only its successor check wakes the worker.
        ops.comment(world, "impactly", task_id, "after the edit")
        await harness.poll("impactly")
        await _until(lambda: any("after the edit" in c for c in _vortask_comments(world)))
    finally:
        worker.stop()
        await running


def _vortask_comments(world: World) -> list[str]:
    return [c for t in ops.view(world, "vortask").values() for c in ops.comments(world, "vortask", t["id"])]


MIRRORS = ("vortask", "impactly", "agentkanban", "runs")  # where an edit made on squads is written


def _around_updates(harness: Harness, around: Callable[[], AbstractAsyncContextManager[None]]) -> None:
    """Each mirror's update_task runs inside `around()` from now on."""
    for platform in MIRRORS:
        conn = harness.ctx.connectors[platform]

        async def update(*args: Any, _real: Any = conn.update_task, **kwargs: Any) -> Any:
            async with around():
                return await _real(*args, **kwargs)

        conn.update_task = update  # type: ignore[method-assign]


async def _edited_everywhere(world: World, titles_wanted: set[str]) -> None:
    for platform in MIRRORS:
        await _until(lambda p=platform: titles_wanted <= set(titles(world, p)), within=30)


def _worker(harness: Harness, *, concurrency: int, **settings: Any) -> Worker:
    return Worker(
        harness.ctx,
        dataclasses.replace(
            harness.daemon.worker.settings, idle_wait=IDLE_WAIT, concurrency=concurrency, **settings
        ),
    )


async def _edit_on_squads(harness: Harness, world: World, made: list[str], prefix: str) -> None:
    """Retitle each of `made` on squads ("{prefix} {i}, edited") and poll it: four writes each."""
    for i, task_id in enumerate(made):
        ops.edit(world, "squads", task_id, title=f"{prefix} {i}, edited")
    await harness.poll("squads")


def _edited(world: World, prefix: str) -> int:
    """Writes landed so far of the edits titled `prefix ..., edited`, over the mirrors."""
    return sum(1 for p in MIRRORS for t in titles(world, p) if t.startswith(prefix) and t.endswith("edited"))


async def test_a_claim_that_took_all_it_could_is_followed_as_slots_free_up(
    harness: Harness, world: World
) -> None:
    made = [create_on(world, "squads", f"many {i}") for i in range(6)]
    await harness.settle()
    worker = _worker(harness, concurrency=2)
    running = asyncio.create_task(worker.run())
    try:
        await _edit_on_squads(harness, world, made, "many")  # 24 writes, two at a time
        expected = {f"many {i}, edited" for i in range(6)}
        await _edited_everywhere(world, expected)
    finally:
        worker.stop()
        await running


async def test_a_write_waiting_for_its_record_gives_its_slot_to_the_next(
    harness: Harness, world: World
) -> None:
    """`concurrency` bounds the writes at the platforms; a write that landed waits for the
    committer without its slot, keeping its claim, and at most UNRECORDED_PER_SLOT times the
    concurrency are claimed and unrecorded."""
    made = [create_on(world, "squads", f"slots {i}") for i in range(6)]
    await harness.settle()
    worker = _worker(harness, concurrency=2)
    at_platforms = started = most = 0

    @contextlib.asynccontextmanager
    async def counted() -> AsyncIterator[None]:
        nonlocal at_platforms, started, most
        at_platforms += 1
        started += 1
        most = max(most, at_platforms)
        try:
            yield
        finally:
            at_platforms -= 1

    _around_updates(harness, counted)
    gate = asyncio.Event()
    real_apply = worker.committer._apply

    async def held_apply(batch: Any) -> None:
        await gate.wait()  # a slow store: nothing is recorded until the gate opens
        await real_apply(batch)

    worker.committer._apply = held_apply  # type: ignore[method-assign]
    running = asyncio.create_task(worker.run())
    try:
        await _edit_on_squads(harness, world, made, "slots")  # 24 writes
        bound = outbox.UNRECORDED_PER_SLOT * 2
        await _until(lambda: started == bound)  # two slots, refilled as writes land
        await asyncio.sleep(0.5)
        assert started == bound, "more writes went out than may wait for their record"
        assert len(worker._inflight) == bound
        gate.set()
        expected = {f"slots {i}, edited" for i in range(6)}
        await _edited_everywhere(world, expected)
        assert most <= 2, "more writes at the platforms at once than the concurrency"
    finally:
        gate.set()
        worker.stop()
        await running


async def test_a_write_that_lands_starts_the_next_without_waiting_for_a_claim(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker claims ahead of its slots: when a write lands, the next one claimed starts at
    once, not after a claim's transaction (here made to take a second)."""
    made = [create_on(world, "squads", f"ahead {i}") for i in range(2)]
    await harness.settle()
    slow = True
    real_claim = outbox.claim

    async def slow_claim(*args: Any, **kwargs: Any) -> Any:
        if slow:
            await asyncio.sleep(1.0)
        return await real_claim(*args, **kwargs)

    monkeypatch.setattr(outbox, "claim", slow_claim)
    permits = asyncio.Semaphore(0)  # a write lands only when the test lets it
    starts: list[float] = []

    @contextlib.asynccontextmanager
    async def gated() -> AsyncIterator[None]:
        starts.append(time.monotonic())
        await permits.acquire()
        yield

    _around_updates(harness, gated)
    worker = _worker(harness, concurrency=2)
    running = asyncio.create_task(worker.run())
    try:
        await _edit_on_squads(harness, world, made, "ahead")  # 8 writes, two at a time
        await _until(lambda: len(starts) == 2)
        await asyncio.sleep(2.5)  # the claims that follow are made by now
        assert len(starts) == 2
        landed_at = time.monotonic()
        permits.release()  # one write lands
        await _until(lambda: len(starts) == 3)
        assert starts[2] - landed_at < 0.5, "the next write waited for a claim"
        slow = False
        for _ in range(8):
            permits.release()
        expected = {f"ahead {i}, edited" for i in range(2)}
        await _edited_everywhere(world, expected)
    finally:
        slow = False
        for _ in range(8):
            permits.release()
        worker.stop()
        await running


async def test_writes_claimed_ahead_are_given_back_when_the_worker_stops(
    harness: Harness, world: World
) -> None:
    """Claimed ahead and never started: a stopping worker gives them back, so the next worker
    (or replica) takes them at once rather than after the claims expire."""
    made = [create_on(world, "squads", f"back {i}") for i in range(3)]
    await harness.settle()
    entered = asyncio.Event()
    hold = asyncio.Event()

    @contextlib.asynccontextmanager
    async def held() -> AsyncIterator[None]:
        entered.set()
        await hold.wait()
        yield

    _around_updates(harness, held)
    worker = _worker(harness, concurrency=2)
    running = asyncio.create_task(worker.run())
    await _edit_on_squads(harness, world, made, "back")  # 12 writes
    await asyncio.wait_for(entered.wait(), 10)
    await _until(lambda: len(worker._ready) == 2)
    worker.stop(grace=5)
    hold.set()
    await running
    async with harness.ctx.store.read() as session:
        claimed = await session.scalar(
            select(func.count()).select_from(OutboxRow).where(OutboxRow.state == OpState.CLAIMED)
        )
    assert claimed == 0


async def test_one_hanging_write_holds_back_nothing_else_at_any_concurrency(
    harness: Harness, world: World
) -> None:
    """A concurrency over twice the claim batch: claims are still made while a write hangs
    (a claim takes at most a batch, so "half the queue" is capped at one)."""
    made = [create_on(world, "squads", f"stall {i}") for i in range(6)]
    await harness.settle()
    hang = asyncio.Event()
    first = True

    @contextlib.asynccontextmanager
    async def around() -> AsyncIterator[None]:
        nonlocal first
        if first:
            first = False
            await hang.wait()  # one write at a platform that does not answer
        yield

    _around_updates(harness, around)
    worker = _worker(harness, concurrency=40)
    running = asyncio.create_task(worker.run())
    try:
        await _edit_on_squads(harness, world, made, "stall")  # 24 writes on 24 links
        await _until(lambda: _edited(world, "stall") == 23, within=15)
    finally:
        hang.set()
        worker.stop()
        await running


async def test_what_waits_for_slots_that_hang_is_given_back_to_other_workers(
    harness: Harness, world: World
) -> None:
    """A worker whose every slot hangs gives back what it claimed ahead (after a quarter of
    claim_ttl here) rather than renewing it out of another replica's reach; given back unsent,
    an operation keeps the attempt its claim counted."""
    made = [create_on(world, "squads", f"hoard {i}") for i in range(2)]
    await harness.settle()
    hang = asyncio.Event()
    calls = 0

    @contextlib.asynccontextmanager
    async def around() -> AsyncIterator[None]:
        nonlocal calls
        calls += 1
        if calls <= 2:  # the first worker's two slots
            await hang.wait()
        yield

    _around_updates(harness, around)
    stuck = _worker(harness, concurrency=2, claim_ttl=4.0)
    running = asyncio.create_task(stuck.run())
    other = _worker(harness, concurrency=8)
    running_other: asyncio.Task[None] | None = None
    try:
        await _edit_on_squads(harness, world, made, "hoard")  # 8 writes
        await _until(lambda: calls >= 2 and len(stuck._ready) == 2)
        held = [op.id for op in stuck._ready]
        await _until(lambda: not stuck._ready, within=5)
        async with harness.ctx.store.read() as session:
            rows = (
                await session.execute(
                    select(OutboxRow.state, OutboxRow.attempts).where(OutboxRow.id.in_(held))
                )
            ).all()
        assert [tuple(r) for r in rows] == [(OpState.PENDING, 0)] * 2
        running_other = asyncio.create_task(other.run())
        await _until(lambda: _edited(world, "hoard") >= 6, within=10)
    finally:
        hang.set()
        stuck.stop()
        await running
        other.stop()
        if running_other is not None:
            await running_other


async def test_a_stop_during_a_claim_starts_nothing_it_took(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = [create_on(world, "squads", f"late {i}") for i in range(2)]
    await harness.settle()
    in_claim = asyncio.Event()
    real_claim = outbox.claim

    async def slow_claim(*args: Any, **kwargs: Any) -> Any:
        in_claim.set()
        await asyncio.sleep(0.5)
        return await real_claim(*args, **kwargs)

    monkeypatch.setattr(outbox, "claim", slow_claim)
    stopped = False
    started_after_stop = 0

    @contextlib.asynccontextmanager
    async def around() -> AsyncIterator[None]:
        nonlocal started_after_stop
        started_after_stop += stopped
        yield

    _around_updates(harness, around)
    await _edit_on_squads(harness, world, made, "late")
    worker = _worker(harness, concurrency=2)
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(in_claim.wait(), 10)
    worker.stop(grace=5)
    stopped = True
    await running
    assert started_after_stop == 0
    async with harness.ctx.store.read() as session:
        claimed = await session.scalar(
            select(func.count()).select_from(OutboxRow).where(OutboxRow.state == OpState.CLAIMED)
        )
    assert claimed == 0
