"""The SQLite write turns (bridge/store/_turns.py): in order, a writer someone waits on ahead of
the queue (a bounded number in a row), and a cancelled waiter never keeps the turn."""

from __future__ import annotations

import asyncio

import pytest

from bridge.store._turns import MAX_AHEAD, WriteTurns


async def _queue(
    turns: WriteTurns, order: list[str], name: str, *, urgent: bool = False
) -> asyncio.Task[None]:
    async def writer() -> None:
        await turns.acquire(urgent=urgent)
        order.append(name)
        await asyncio.sleep(0)  # holds the turn across a loop turn, as a write transaction's end does
        turns.release()

    task = asyncio.get_running_loop().create_task(writer())
    await asyncio.sleep(0)  # queued before the next is made
    return task


@pytest.mark.parametrize(
    ("arrivals", "expected"),
    [
        # (name, urgent) in the order they queue behind a holder; the order they write in.
        ([("a", False), ("b", False), ("c", False)], ["a", "b", "c"]),
        ([("a", False), ("b", False), ("r", True)], ["r", "a", "b"]),
        ([("a", False), ("r1", True), ("b", False), ("r2", True)], ["r1", "r2", "a", "b"]),
        ([("r1", True), ("r2", True)], ["r1", "r2"]),
        # More records than MAX_AHEAD in a row: the longest-waiting other writer gets a turn.
        (
            [("a", False)] + [(f"r{i}", True) for i in range(MAX_AHEAD + 2)],
            [f"r{i}" for i in range(MAX_AHEAD)] + ["a", f"r{MAX_AHEAD}", f"r{MAX_AHEAD + 1}"],
        ),
    ],
)
async def test_the_order_writers_get_their_turns(
    arrivals: list[tuple[str, bool]], expected: list[str]
) -> None:
    turns, order = WriteTurns(), []
    await turns.acquire()  # the holder while they queue
    tasks = [await _queue(turns, order, name, urgent=urgent) for name, urgent in arrivals]
    turns.release()
    await asyncio.gather(*tasks)
    assert order == expected
    assert not turns.locked()


async def test_a_writer_arriving_as_the_turn_is_handed_over_queues_behind() -> None:
    turns, order = WriteTurns(), []
    await turns.acquire()
    first = await _queue(turns, order, "first")
    turns.release()  # handed to `first`, which has not run yet
    assert turns.locked()
    # In the same loop step, before `first` resumes: an urgent arrival must not take the turn.
    late = asyncio.get_running_loop().create_task(turns.acquire(urgent=True))
    await asyncio.sleep(0)
    assert not late.done() and order == ["first"]
    await first
    await late  # handed the turn by `first`'s release
    order.append("late")
    turns.release()
    assert order == ["first", "late"] and not turns.locked()


async def test_a_cancelled_waiter_passed_over_does_not_reset_the_count_ahead() -> None:
    """Urgent writers in a row are counted by those that got the turn: a queued writer cancelled
    and passed over by a release (before its own clean-up ran) does not reset the count, or the
    live writer behind it would wait up to twice MAX_AHEAD urgent turns."""
    turns, order = WriteTurns(), []
    tasks: dict[str, asyncio.Task[None]] = {}

    async def writer(name: str, urgent: bool) -> None:
        await turns.acquire(urgent=urgent)
        order.append(name)
        if name == f"r{MAX_AHEAD - 1}":
            tasks["gone"].cancel()  # in the same step as the release below
        turns.release()

    await turns.acquire()
    for name, urgent in [("gone", False), ("kept", False)] + [(f"r{i}", True) for i in range(2 * MAX_AHEAD)]:
        tasks[name] = asyncio.get_running_loop().create_task(writer(name, urgent))
        await asyncio.sleep(0)
    turns.release()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    assert tasks["gone"].cancelled()
    assert order == [f"r{i}" for i in range(MAX_AHEAD)] + ["kept"] + [
        f"r{i}" for i in range(MAX_AHEAD, 2 * MAX_AHEAD)
    ]
    assert not turns.locked()


async def test_a_waiter_cancelled_while_queued_is_passed_over() -> None:
    turns, order = WriteTurns(), []
    await turns.acquire()
    gone = await _queue(turns, order, "gone", urgent=True)
    kept = await _queue(turns, order, "kept")
    gone.cancel()
    await asyncio.sleep(0)
    turns.release()
    await kept
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert order == ["kept"] and not turns.locked()


async def test_a_waiter_cancelled_after_it_was_handed_the_turn_passes_it_on() -> None:
    turns, order = WriteTurns(), []
    await turns.acquire()
    handed = await _queue(turns, order, "handed")
    kept = await _queue(turns, order, "kept")
    turns.release()  # `handed` holds the turn now, before it runs
    handed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handed
    await kept
    assert order == ["kept"] and not turns.locked()


async def test_a_cancelled_waiter_a_release_passed_over_leaves_the_queue_whole() -> None:
    """Cancelled, then passed over by a release before its task ran: its own clean-up finds it
    gone from the queue and takes nothing else with it."""
    turns, order = WriteTurns(), []
    await turns.acquire()
    gone = await _queue(turns, order, "gone")
    kept = await _queue(turns, order, "kept")
    gone.cancel()
    turns.release()  # before `gone` ran its clean-up
    with pytest.raises(asyncio.CancelledError):
        await gone
    await kept
    assert order == ["kept"] and not turns.locked()


async def test_a_turn_released_unheld_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not held"):
        WriteTurns().release()


async def test_the_urgent_context_takes_and_gives_back_a_turn() -> None:
    turns = WriteTurns()
    async with turns.urgent():
        assert turns.locked()
    async with turns:
        assert turns.locked()
    assert not turns.locked()
