"""A poll that read many tasks hands the memory it freed back to the OS (glibc's malloc_trim):
otherwise the daemon idles at the size of its biggest listing (docs/performance.md, memory)."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from bridge import daemon as daemon_mod
from tests import ops
from tests.engine.conftest import make_harness
from tests.world import World


def test_this_c_library_can_give_memory_back() -> None:
    assert daemon_mod.give_back_memory() is True  # Debian's glibc, where the daemon runs


async def test_only_a_big_poll_gives_memory_back(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[None] = []
    monkeypatch.setattr(daemon_mod, "give_back_memory", lambda: calls.append(None) or True)
    for i in range(3):
        ops.create(world, "vortask", f"listed {i}")
    h = await make_harness(world, tmp_path, members=["vortask", "squads"])
    try:
        h.daemon.options.trim_after_tasks = 3
        await h.daemon.poll_once("vortask")  # the first listing: all three
        assert len(calls) == 1
        await h.daemon.poll_once("squads")  # nothing there yet: under the bound
        assert len(calls) == 1
    finally:
        for conn in h.ctx.connectors.values():
            await conn.aclose()
        await h.daemon.store.close()


async def test_a_running_daemon_leaves_its_start_up_objects_to_no_collection(
    world: World, tmp_path: Path
) -> None:
    """`run` freezes what exists once the daemon is up (docs/performance.md, the garbage
    collector): full collections then walk only what was made since, not the ~175,000 objects of
    the modules, the app and the connectors."""
    h = await make_harness(world, tmp_path, members=["vortask", "squads"])
    assert gc.get_freeze_count() == 0
    try:
        running = asyncio.create_task(h.daemon.run())
        for _ in range(200):
            if h.daemon.ready and gc.get_freeze_count() > 0:
                break
            await asyncio.sleep(0.05)
        frozen = gc.get_freeze_count()
        h.daemon.stopping.set()
        await asyncio.wait_for(running, 30)
    finally:
        gc.unfreeze()  # the rest of the test session collects as before
    assert frozen > 50_000
