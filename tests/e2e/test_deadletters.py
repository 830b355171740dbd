"""Issue 15's dead letters with real processes: a write to AgentKanban parked by a 401 (a wrong
token in the config) stays parked after the token is fixed and the daemon restarted, until an
operator runs `taskbridge outbox retry --all` against the running daemon; then the edit arrives."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.fakekit import free_port
from tests import clirun, ops
from tests.e2e.conftest import DaemonProcess, wait_until
from tests.world import World

pytestmark = pytest.mark.slow

ADMIN = "tb_e2e_deadletters_admin_0123456789"
PLATFORMS = ("vortask", "agentkanban")


@pytest.fixture
def world() -> Iterator[World]:
    w = World(PLATFORMS).start()
    yield w
    w.stop()


def write_config(world: World, tmp: Path, port: int, *, ak_token: str | None = None) -> Path:
    tokens = [{"name": "ops", "sha256": hashlib.sha256(ADMIN.encode()).hexdigest(), "scopes": ["admin"]}]
    extra = {"agentkanban": {"token": ak_token}} if ak_token else None
    return world.config(tmp, port=port, poll_interval="1s", server_tokens=tokens, extra_connector=extra)


def taskbridge(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator runs it, against the running daemon."""
    env = clirun.clean_env()
    return clirun.run([*args, "--url", d.url, "--token", ADMIN], env=env, timeout=60)


def parked(d: DaemonProcess) -> list[dict[str, Any]]:
    result = taskbridge(d, "outbox", "list", "--json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout)["operations"])


def task_history(d: DaemonProcess, task_id: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{d.url}/api/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    return list(r.json()["history"])


def test_a_write_parked_by_a_401_arrives_once_retried_after_the_token_is_fixed(
    world: World, tmp_path: Path
) -> None:
    port = free_port()
    d = DaemonProcess(write_config(world, tmp_path, port), port, tmp_path / "daemon.log").start()
    vt_id = ops.create(world, "vortask", "quarterly report")
    wait_until(lambda: "quarterly report" in ops.view(world, "agentkanban"), what="the mirror on agentkanban")
    assert d.terminate() == 0

    # A wrong AgentKanban token: the edit's write there is refused with a 401 and parked.
    write_config(world, tmp_path, port, ak_token="ak_wrong_token")
    d.start()
    ops.edit(world, "vortask", vt_id, title="quarterly report v2")
    ops_parked = wait_until(lambda: parked(d), what="the write to agentkanban parked")
    assert {o["connector"] for o in ops_parked} == {"agentkanban"}
    assert all("401" in (o["last_error"] or "") for o in ops_parked), ops_parked
    listed = taskbridge(d, "outbox", "list", "--connector", "agentkanban")
    assert listed.returncode == 0, listed.stderr
    assert "agentkanban" in listed.stdout and f"{len(ops_parked)} operation" in listed.stdout
    assert d.terminate() == 0

    # The token fixed and the daemon restarted: the write stays parked, the edit never arrives.
    write_config(world, tmp_path, port)
    d.start()
    polled = world.fakes["agentkanban"].requests.count("GET")
    wait_until(
        lambda: world.fakes["agentkanban"].requests.count("GET") > polled + 2, what="polls of agentkanban"
    )
    time.sleep(2)
    assert "quarterly report" in ops.view(world, "agentkanban")
    assert [o["id"] for o in parked(d)] == [o["id"] for o in ops_parked]

    # Usage and refusals: exit 2 and 1, a message per id, no traceback.
    usage = taskbridge(d, "outbox", "retry")
    assert usage.returncode == 2 and "--all" in usage.stderr and "Traceback" not in usage.stderr
    unknown = taskbridge(d, "outbox", "retry", "987654")
    assert unknown.returncode == 1 and "operation 987654: no outbox operation 987654" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    assert "quarterly report" in ops.view(world, "agentkanban")

    # The operator retries everything parked: the edit arrives.
    retried = taskbridge(d, "outbox", "retry", "--all")
    assert retried.returncode == 0, retried.stderr
    assert f"{len(ops_parked)} parked operations retried" in retried.stdout
    wait_until(
        lambda: "quarterly report v2" in ops.view(world, "agentkanban"), what="the edit on agentkanban"
    )
    assert "quarterly report" not in ops.view(world, "agentkanban")
    assert parked(d) == []
    task_id = ops_parked[0]["task_id"]
    notes = [h for h in task_history(d, task_id) if h["via"] == "outbox"]
    assert [h["new"] for h in notes] == ["write to agentkanban retried by ops"] * len(ops_parked)
    # Retrying it again is refused: it is no longer parked.
    again = taskbridge(d, "outbox", "retry", str(ops_parked[0]["id"]))
    assert again.returncode == 1 and "not parked" in again.stderr
    assert d.terminate() == 0
