"""A lost store, as an operator loses one: the file deleted, under a running daemon or between two
runs, with five platforms in sync (issue 15)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import ops
from tests.e2e.conftest import DaemonProcess, wait_until
from tests.e2e.test_daemon import ALL, everywhere, no_duplicates
from tests.world import World

pytestmark = pytest.mark.slow

COMMENTING = ("impactly", "vortask", "agentkanban")


def delete_store(tmp_path: Path) -> None:
    for name in ("bridge.db", "bridge.db-wal", "bridge.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)


def comment_counts(world: World, title: str) -> dict[str, list[str]]:
    return {p: sorted(ops.comments(world, p, ops.view(world, p)[title]["id"])) for p in COMMENTING}


def test_a_new_store_re_adopts_what_is_in_sync_and_duplicates_nothing(
    world: World, daemon_factory: Any, tmp_path: Path
) -> None:
    d: DaemonProcess = daemon_factory(world, public=True, poll_interval="1s").start()
    titles = [f"kept {p} {i}" for p in ALL for i in range(3)]
    for title in titles:
        ops.create(world, title.split()[1], title)
    ops.comment(world, "vortask", ops.view(world, "vortask")["kept vortask 0"]["id"], "a note from vortask")
    ops.comment(
        world, "impactly", ops.view(world, "impactly")["kept impactly 0"]["id"], "a note from impactly"
    )
    for title in titles:
        wait_until(lambda t=title: everywhere(world, t), what=f"{title!r} everywhere")

    def comments_settled() -> bool:
        for title, text in (
            ("kept vortask 0", "a note from vortask"),
            ("kept impactly 0", "a note from impactly"),
        ):
            for texts in comment_counts(world, title).values():
                if sum(text in t for t in texts) != 1:
                    return False
        return True

    wait_until(comments_settled, what="each comment once on each commenting platform")
    before = {t: comment_counts(world, t) for t in ("kept vortask 0", "kept impactly 0")}
    d.kill()
    delete_store(tmp_path)
    d.start()
    time.sleep(8)  # several polls of every platform, comment sweeps, webhook deliveries
    no_duplicates(world)
    for p in ALL:
        assert sorted(ops.view(world, p)) == sorted(titles), p
    assert {t: comment_counts(world, t) for t in before} == before
    log = d.log.read_text()
    assert "re-adopted 15 tasks" in log, log[-3000:]
    assert "Traceback" not in log
    # AgentKanban's webhook secret died with the store: the registration was replaced on start,
    # so its deliveries verify again.
    assert "agentkanban: webhooks registered; the secret the platform issued is kept" in log
    # A person's edit there now sends a delivery signed with the new secret, which verifies (a
    # delivery retried from before the restart may or may not have outlived it).
    board_task = ops.view(world, "agentkanban")["kept agentkanban 2"]["id"]
    ops.edit(world, "agentkanban", board_task, title="kept agentkanban 2, after the restart")

    def metrics() -> str:
        return httpx.get(d.url + "/metrics", timeout=5).text

    ok = 'taskbridge_webhooks_received_total{connector="agentkanban",result="ok"}'
    wait_until(lambda: ok in metrics(), what="an AgentKanban delivery verified after the restart")
    assert 'connector="agentkanban",result="bad_signature"' not in metrics()

    # The links are live: an edit on one platform still reaches every other.
    ops.edit(world, "squads", ops.view(world, "squads")["kept runs 1"]["id"], title="kept runs 1 edited")
    wait_until(lambda: everywhere(world, "kept runs 1 edited"), what="the edit everywhere after recovery")
    no_duplicates(world)


def test_a_store_deleted_under_a_running_daemon_stops_it_being_ready(
    world: World, daemon_factory: Any, tmp_path: Path
) -> None:
    d: DaemonProcess = daemon_factory(world, public=True, poll_interval="1s").start()
    ops.create(world, "vortask", "before the loss")
    wait_until(lambda: everywhere(world, "before the loss"), what="the task everywhere")
    delete_store(tmp_path)
    started = time.monotonic()
    answer = wait_until(
        lambda: (r := httpx.get(d.url + "/readyz", timeout=5)).status_code == 503 and r,
        timeout=10,
        what="/readyz to say 503",
    )
    assert time.monotonic() - started < 10
    assert "was deleted" in answer.text
    metrics = httpx.get(d.url + "/metrics", timeout=5).text
    assert "taskbridge_store_lost 1.0" in metrics
    # Nothing more is written anywhere: a webhook is answered 503 (the platform retries it later).
    ops.create(world, "vortask", "after the loss")
    time.sleep(3)
    assert "after the loss" not in ops.view(world, "impactly")
    log = d.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert d.terminate() == 0
