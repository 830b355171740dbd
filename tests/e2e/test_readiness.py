"""Readiness tells the truth about the store (issue 16): a store that is full or read-only takes
no write, and /readyz must say so within seconds, not answer 200 while every write fails."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    drop_pg_database,
    fresh_pg_database,
    pg_execute,
    pg_url_or_skip,
    terminate_pg_backends,
)
from tests.e2e.conftest import DaemonProcess, wait_until
from tests.world import World

pytestmark = pytest.mark.slow


def ready(d: DaemonProcess) -> httpx.Response:
    return httpx.get(d.url + "/readyz", timeout=15)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB filesystem of its own (tmpfs), to fill up. Needs root, as CI runs."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_makes_the_daemon_not_ready(
    world: World, daemon_factory: Any, tmp_path: Path, small_disk: Path
) -> None:
    d: DaemonProcess = daemon_factory(world, store_url=f"sqlite+aiosqlite:///{small_disk}/bridge.db").start()
    assert ready(d).status_code == 200
    filler = small_disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False)
    answer = wait_until(
        lambda: (r := ready(d)).status_code == 503 and r, timeout=10, what="503 on a full disk"
    )
    assert "store refuses writes" in answer.text and "full" in answer.text
    # The polls (every second) meet the full disk too: each job says so in one line, not a
    # traceback, and once more when it recovers.
    wait_until(lambda: "the store refuses writes" in d.log.read_text(), timeout=10, what="a poll refused")
    filler.unlink()
    wait_until(lambda: ready(d).status_code == 200, timeout=10, what="ready again with room")

    def refused_and_recovered() -> tuple[list[str], set[str]]:
        text = d.log.read_text()
        refused = re.findall(r"job (.+?) failed: the store refuses writes", text)
        return refused, set(re.findall(r"job (.+?): the store takes writes again", text))

    wait_until(
        lambda: (found := refused_and_recovered()) and set(found[0]) <= found[1],
        timeout=10,
        what="every refused job recovers",
    )
    refused, _ = refused_and_recovered()
    polls = [name for name in refused if name.startswith("poll_once ")]
    assert polls and all(name.split(" ", 1)[1] in world.platforms for name in polls), refused
    assert "Traceback" not in d.log.read_text()


def test_a_read_only_database_makes_the_daemon_not_ready(world: World, daemon_factory: Any) -> None:
    server = pg_url_or_skip()
    url, name = asyncio.run(fresh_pg_database(server))
    try:
        d: DaemonProcess = daemon_factory(world, store_url=url).start()
        assert ready(d).status_code == 200
        asyncio.run(_read_only(server, name, True))
        answer = wait_until(
            lambda: (r := ready(d)).status_code == 503 and r, timeout=10, what="503, read-only"
        )
        assert "store refuses writes" in answer.text and "read-only" in answer.text
        asyncio.run(_read_only(server, name, False))
        wait_until(lambda: ready(d).status_code == 200, timeout=15, what="ready again, writable")
        d.kill()
    finally:
        asyncio.run(drop_pg_database(server, name))


async def _read_only(server: str, name: str, on: bool) -> None:
    """Make the database read-only (or writable again) for every session, the daemon's included."""
    from sqlalchemy.engine import make_url

    await pg_execute(
        server, f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if on else "off"}'
    )
    await terminate_pg_backends(make_url(server).set(database=name).render_as_string(hide_password=False))
