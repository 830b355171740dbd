"""taskbridge_event_loop_lag_seconds: how late the daemon's loop woke its timer. A loop held by
work that does not yield (SQLite's statements run inline) shows as lateness of about that long."""

from __future__ import annotations

import asyncio
import contextlib
import time

from bridge import metrics
from bridge.daemon import measure_loop_lag


def _observed() -> tuple[float, float]:
    """(count, sum) of the histogram so far."""
    count = total = 0.0
    for metric in metrics.event_loop_lag.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    return count, total


async def _grown_by(count: float, n: int) -> None:
    """Until the histogram has `n` more samples than `count` (a loaded machine may take a while)."""
    for _ in range(1000):  # 5 s at most
        if _observed()[0] >= count + n:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the sampler took no samples")


async def test_a_loop_held_shows_as_lateness_of_about_that_long() -> None:
    task = asyncio.create_task(measure_loop_lag(every=0.01))
    try:
        await _grown_by(_observed()[0], 2)  # sampling (other tests may have sampled before)
        count, total = _observed()
        time.sleep(0.08)  # noqa: ASYNC251 - the loop held on purpose, as by inline statements
        await _grown_by(count, 1)
        _, total_after = _observed()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # The sample due while the loop was held woke about 70 ms late (80 less at most 10 early);
    # no bound above: a loaded machine only makes it later.
    assert total_after - total >= 0.06
