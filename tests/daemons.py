"""The daemon with API tokens (`server.tokens`) that the API, docs and console tests talk to: as a
process over the fakes (`world_fixture` and `daemon_fixture` make a test module's `world` and
`daemon` fixtures), or in this process (`in_process`)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
import yaml

from bridge import config
from bridge.daemon import Daemon, DaemonOptions
from connectors.fakekit import free_port
from tests.e2e.conftest import DaemonProcess
from tests.world import World


def token_entry(name: str, token: str, scopes: list[str]) -> dict[str, Any]:
    """One `server.tokens` entry: the token's name, its SHA-256 and its scopes."""
    return {"name": name, "sha256": hashlib.sha256(token.encode()).hexdigest(), "scopes": scopes}


def world_fixture(platforms: Sequence[str]) -> Any:
    """A module-scoped `world` fixture: the fakes of `platforms`, started."""

    @pytest.fixture(scope="module")
    def world() -> Iterator[World]:
        w = World(tuple(platforms)).start()
        yield w
        w.stop()

    return world


def daemon_fixture(tokens: list[dict[str, Any]], **settings: Any) -> Any:
    """A module-scoped `daemon` fixture: the daemon as a process over the module's `world`, with
    `tokens` (`token_entry`s) and `settings` (what `World.config` takes) in its config."""

    @pytest.fixture(scope="module")
    def daemon(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
        tmp = tmp_path_factory.mktemp("daemon")
        port = free_port()
        path = world.config(tmp, port=port, server_tokens=tokens, **settings)
        d = DaemonProcess(path, port, tmp / "daemon.log").start()
        yield d
        d.kill()

    return daemon


def store_url(d: DaemonProcess) -> str:
    """The store a daemon process uses (for a test that seeds it from another process)."""
    return str(yaml.safe_load(d.config.read_text())["store"]["url"])


@contextlib.asynccontextmanager
async def in_process(cfg: config.Config) -> AsyncIterator[Daemon]:
    """The daemon in this process, neither polling nor serving (a test mounts its app), its store
    migrated; its connectors and store closed after."""
    d = Daemon(cfg, options=DaemonOptions(poll=False, serve=False))
    await d.store.migrate()
    try:
        yield d
    finally:
        for conn in d.ctx.connectors.values():
            await conn.aclose()
        await d.store.close()
