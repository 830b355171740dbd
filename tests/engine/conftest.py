"""The engine in-process against real fakes over loopback: a Daemon without its HTTP server or
scheduler, driven step by step (poll, drain the outbox) so tests are quick and deterministic."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from bridge import config
from bridge.daemon import Daemon, DaemonOptions
from bridge.engine.comments import sweep_comments
from bridge.engine.inbox import process_pending
from bridge.engine.outbox import WorkerSettings
from bridge.engine.poller import poll_connector
from tests.world import World

PLATFORMS = ("impactly", "vortask", "agentkanban", "runs", "squads")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World(PLATFORMS).start()
    yield w
    w.stop()


@pytest.fixture(autouse=True)
def _fresh(world: World) -> None:
    world.reset()


class Harness:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.ctx = daemon.ctx

    async def poll(self, *connectors: str) -> None:
        for name in connectors or self.ctx.connectors:
            report = await poll_connector(self.ctx, name)
            assert not report.errors, report.errors
            for scope in self.ctx.scopes_of(name):
                found = self.ctx.member(name, scope)
                assert found is not None
                await sweep_comments(self.ctx, *found, budget=1000, extra=[])

    async def drain(self) -> int:
        await process_pending(self.ctx)
        return await self.daemon.worker.run_until_idle()

    async def settle(self, rounds: int = 6) -> None:
        """Poll and write until a whole round changes nothing."""
        for _ in range(rounds):
            await self.poll()
            if await self.drain() == 0:
                await self.poll()
                if await self.drain() == 0:
                    return
        raise AssertionError("the bridge did not settle")


async def make_harness(world: World, tmp_path: Path, **config_kw: object) -> Harness:
    path = world.config(tmp_path, **config_kw)  # type: ignore[arg-type]
    cfg = config.load(path)
    options = DaemonOptions(
        poll=False, serve=False, worker=WorkerSettings(backoff=0.05, max_backoff=0.2, landing_wait=0.2)
    )
    daemon = Daemon(cfg, options=options)
    await daemon.store.migrate()
    return Harness(daemon)


@pytest_asyncio.fixture
async def harness(world: World, tmp_path: Path) -> AsyncIterator[Harness]:
    h = await make_harness(world, tmp_path)
    yield h
    for conn in h.ctx.connectors.values():
        await conn.aclose()
    await h.daemon.store.close()
