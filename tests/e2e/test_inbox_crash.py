"""A webhook delivery is recorded claimed by the daemon that received it and handed to its inbox
loop in memory. Killed (SIGKILL) while it processes that delivery, the daemon loses the memory but
not the delivery: restarted as the same replica, it takes the claim back at once and processes
the delivery, rather than waiting out the claim (120 s). Real processes, the fakes over loopback.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from connectors.fakekit import free_port
from tests import ops
from tests.api.test_webhooks import captured
from tests.e2e.conftest import DaemonProcess, wait_until
from tests.world import World

pytestmark = pytest.mark.slow

PLATFORMS = ("impactly", "vortask")


@pytest.fixture
def world() -> Iterator[World]:
    w = World(PLATFORMS).start()
    for fake in w.fakes.values():
        fake.faults.drop_webhook_rate = 1.0  # kept, not sent: the test delivers them itself
    yield w
    w.stop()


def inbox(db: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(db) as conn:
        return [tuple(row) for row in conn.execute("SELECT state, claimed_by FROM inbox ORDER BY id")]


def test_a_delivery_handed_to_a_killed_daemon_is_processed_once_it_restarts(
    world: World, tmp_path: Path
) -> None:
    port = free_port()
    path = world.config(tmp_path, port=port, public=True, poll_interval="1h")
    daemon = DaemonProcess(path, port, tmp_path / "daemon.log").start()
    try:
        wait_until(lambda: "webhooks of vortask/" in daemon.log.read_text(), what="Vortask's webhooks")
        ops.create(world, "vortask", "handed, then killed")
        body, headers = captured(world.fakes["vortask"], "task.created", "handed, then killed")

        # Vortask now answers after a minute: the inbox's GET of the task hangs in flight.
        world.fakes["vortask"].faults.latency = 60
        answer = httpx.post(f"{daemon.url}/webhooks/vortask", content=body, headers=headers, timeout=10)
        assert answer.status_code == 202, answer.text
        db = tmp_path / "bridge.db"
        [(state, holder)] = inbox(db)
        assert state == "claimed" and holder and holder.endswith(f":{port}"), (state, holder)
        time.sleep(0.5)  # the inbox loop has taken it and waits for Vortask's answer

        daemon.kill()  # SIGKILL: the handed delivery was only in that process's memory
        world.fakes["vortask"].faults.latency = 0
        daemon.start()
        wait_until(lambda: inbox(db) == [("done", None)], timeout=30, what="the delivery processed")
    finally:
        daemon.kill()
