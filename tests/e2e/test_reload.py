"""SIGHUP reloads the config of a running daemon without a restart (issue 17): a new API token and
a new route work at once; a config that does not load is refused and the running one stays."""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests import ops
from tests.e2e.conftest import DaemonProcess, wait_until
from tests.world import World

pytestmark = pytest.mark.slow

FIRST, SECOND = "tb_first_token", "tb_added_on_reload"


def token(name: str, value: str, scopes: list[str]) -> dict[str, Any]:
    return {"name": name, "sha256": hashlib.sha256(value.encode()).hexdigest(), "scopes": scopes}


def hup(d: DaemonProcess) -> None:
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)


def test_sighup_adds_a_token_and_a_route_without_a_restart(
    world: World, daemon_factory: Any, tmp_path: Path
) -> None:
    d: DaemonProcess = daemon_factory(
        world, members=["impactly", "vortask"], server_tokens=[token("first", FIRST, ["read"])]
    )
    cfg = yaml.safe_load(d.config.read_text())
    d.start()
    pid = d.proc.pid if d.proc else None
    assert d.get("/api/v1/tasks", SECOND).status_code == 401

    ops.create(world, "agentkanban", "not routed yet")
    time.sleep(2)
    assert "not routed yet" not in ops.view(world, "squads")

    cfg["server"]["tokens"].append(token("added", SECOND, ["read", "write"]))
    cfg["routes"].append(
        {
            "name": "second",
            "members": [
                {"connector": "agentkanban", "scope": world.scopes["agentkanban"]},
                {"connector": "squads", "scope": world.scopes["squads"]},
            ],
            "fields": ["title", "description", "status"],
        }
    )
    d.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    hup(d)
    wait_until(lambda: d.get("/api/v1/tasks", SECOND).status_code == 200, timeout=15, what="the new token")
    wait_until(
        lambda: "not routed yet" in ops.view(world, "squads"), timeout=30, what="the new route syncing"
    )
    assert d.proc is not None and d.proc.pid == pid and d.proc.poll() is None  # the same process
    assert d.get("/api/v1/tasks", FIRST).status_code == 200  # the old token still works

    # A config that does not load is refused; the running one stays.
    d.config.write_text("routes: [oops\n")
    hup(d)
    wait_until(lambda: "reload refused" in d.log.read_text(), timeout=10, what="the refusal logged")
    assert d.get("/api/v1/tasks", SECOND).status_code == 200
    ops.create(world, "squads", "after a bad reload")
    wait_until(
        lambda: "after a bad reload" in ops.view(world, "agentkanban"), timeout=30, what="still syncing"
    )
    r = httpx.get(d.url + "/readyz", timeout=5)
    assert r.status_code == 200
    assert "Traceback" not in d.log.read_text()
    assert d.terminate() == 0
