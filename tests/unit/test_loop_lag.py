"""taskbridge_event_loop_lag_seconds: how late the daemon's loop woke its timer. A loop held by
work that does not yield (SQLite's statements run inline) shows as lateness of about that long."""

from __future__ import annotations

import asyncio
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


async def test_a_loop_held_shows_as_lateness_of_about_that_long() -> None:
    task = asyncio.create_task(measure_loop_lag(every=0.01))
    try:
        await asyncio.sleep(0.05)  # a few samples of a loop doing nothing
        count, total = _observed()
        assert count >= 2
        time.sleep(0.08)  # noqa: ASYNC251 - the loop held on purpose, as by inline statements
        await asyncio.sleep(0.03)
        count_after, total_after = _observed()
    finally:
        task.cancel()
    assert count_after > count
    # The one sample due while the loop was held was about 70 ms late (80 less at most 10 early).
    assert 0.06 <= total_after - total < 0.5
