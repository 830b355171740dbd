"""The daemon's log as a pipeline reads it (issue 17): a real process with JSON logs at debug,
against the five fakes, through a change that propagates and a conflict. Every line must parse."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests import ops
from tests.e2e.conftest import DaemonProcess, wait_until
from tests.world import World

pytestmark = pytest.mark.slow

ALL = ("impactly", "vortask", "agentkanban", "runs", "squads")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def everywhere(world: World, title: str) -> bool:
    return all(title in ops.view(world, p) for p in ALL)


def records(d: DaemonProcess) -> list[dict[str, Any]]:
    """Every line of the daemon's log as JSON (the start markers the test harness writes aside)."""
    out = []
    for n, line in enumerate(d.log.read_text().splitlines(), 1):
        if not line.strip() or re.fullmatch(r"=== start \d+ ===", line):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {n} of the log is not JSON: {line[:300]!r}") from None
        assert isinstance(record, dict), line
        out.append(record)
    return out


def said(d: DaemonProcess, logger: str, words: str, title: str) -> list[dict[str, Any]]:
    return [
        r
        for r in records(d)
        if r["logger"] == logger and words in r["message"] and title in r["message"] and r["level"] == "info"
    ]


def test_every_line_is_json_with_fields_and_the_changes_are_told(world: World, daemon_factory: Any) -> None:
    d: DaemonProcess = daemon_factory(world, public=True, route={"conflict": "manual"})
    cfg = yaml.safe_load(d.config.read_text())
    cfg["log"] = {"level": "debug", "format": "json"}
    # Vortask without a webhook secret (it signs deliveries only with one): polled, and said once.
    del cfg["connectors"]["vortask"]["webhook_secret"]
    d.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    d.start()
    assert d.get("/healthz").headers["x-request-id"]

    # A task made on one platform, then an edit: each propagation is one info line.
    made = ops.create(world, "impactly", "logged task")
    wait_until(lambda: everywhere(world, "logged task"), what="the new task everywhere")
    ops.edit(world, "impactly", made, title="logged task, renamed")
    wait_until(lambda: everywhere(world, "logged task, renamed"), what="the rename everywhere")
    wait_until(
        lambda: said(d, "taskbridge.outbox", "propagated to", "logged task, renamed"),
        what="an info line for the propagated rename",
    )

    # Two sides edited while the daemon is down: under `manual`, a conflict when it is back.
    assert d.terminate() == 0
    ops.edit(world, "impactly", made, title="conflicted: impactly")
    ops.edit(
        world, "squads", ops.view(world, "squads")["logged task, renamed"]["id"], title="conflicted: squads"
    )
    d.start()
    wait_until(
        lambda: said(d, "taskbridge.sync", "conflict opened", "conflicted: "),
        what="an info line for the conflict",
    )
    assert d.terminate() == 0

    text = d.log.read_text()
    assert "Traceback" not in text
    lines = records(d)  # every line parses
    assert all(TIME.match(r["time"]) for r in lines)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in lines)
    assert not [r for r in lines if r["level"] in ("error", "critical")], "an ERROR on a normal start"
    unsigned = [r for r in lines if r["message"].startswith("vortask: webhooks off")]
    assert len(unsigned) == 2 and all(r["level"] == "warning" for r in unsigned)  # once per start
    # Libraries stay at WARNING at level debug: no aiosqlite, httpcore or uvicorn chatter.
    assert not [
        r for r in lines if not r["logger"].startswith("taskbridge") and r["level"] in ("debug", "info")
    ]
    # A poll's lines (its requests, at debug) carry the connector and the route.
    polled = [r for r in lines if r["logger"] == "taskbridge.connector" and "route" in r]
    assert polled and all(r.get("connector") in ALL for r in polled)
    assert {r["connector"] for r in polled} == set(ALL)
    # An outbox write's lines carry connector, task and op.
    written = [r for r in lines if r["logger"] == "taskbridge.connector" and "op" in r]
    assert written and all(r.get("connector") and r.get("task") and ":" in r["op"] for r in written)

    renamed = said(d, "taskbridge.outbox", "propagated to", "logged task, renamed")[0]
    assert renamed["task"] and renamed["route"] == "main"
    assert {"vortask", "agentkanban", "runs", "squads"} <= set(re.findall(r"[a-z]+", renamed["message"]))
    (conflict,) = said(d, "taskbridge.sync", "conflict opened", "conflicted: ")
    assert conflict["task"] == renamed["task"] and "field title" in conflict["message"]
    assert (
        conflict["connector"] in ("impactly", "squads") and " vs " in conflict["message"]
    )  # the sides, by platform
