"""The connectors poll at once on start-up, then each every interval, spread over it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bridge import config, metrics
from bridge.daemon import Daemon, DaemonOptions, poll_offsets
from tests.world import World


@pytest.mark.parametrize(
    ("intervals", "offsets"),
    [
        (
            {"a": 5.0, "b": 5.0, "c": 5.0, "d": 5.0, "e": 5.0},
            {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0},
        ),
        ({"only": 60.0}, {"only": 60.0}),  # one connector: every interval, as before
        ({"fast": 2.0, "slow": 60.0}, {"fast": 1.0, "slow": 60.0}),  # each a share of its own
        ({}, {}),
    ],
)
def test_poll_offsets(intervals: dict[str, float], offsets: dict[str, float]) -> None:
    assert poll_offsets(intervals) == offsets


async def test_polls_start_at_once_then_spread_over_the_interval(world: World, tmp_path: Path) -> None:
    cfg = config.load(world.config(tmp_path, poll_interval="30s"))
    names = list(cfg.connectors)
    assert len(names) == 5

    def polls(name: str) -> float:
        return sum(
            metrics.REGISTRY.get_sample_value("taskbridge_polls_total", {"connector": name, "result": r})
            or 0.0
            for r in ("ok", "error")
        )

    before = {name: polls(name) for name in names}
    daemon = Daemon(cfg, options=DaemonOptions(poll=True, serve=False))
    started = datetime.now(UTC)
    await daemon.start()
    try:
        # Every connector's start-up poll runs now, not after its offset.
        deadline = time.monotonic() + 20
        while any(polls(name) == before[name] for name in names):
            assert time.monotonic() < deadline, "a start-up poll did not run"
            await asyncio.sleep(0.05)
        firsts: dict[str, float] = {}
        for name in names:
            job = daemon.scheduler.get_job(f"poll:{name}")
            assert job is not None and job.trigger.interval.total_seconds() == 30
            firsts[name] = (job.next_run_time - started).total_seconds()
        for k, name in enumerate(names):
            assert 30 * (k + 1) / 5 - 1 < firsts[name] <= 30 * (k + 1) / 5 + 1, firsts
    finally:
        await daemon.stop()
