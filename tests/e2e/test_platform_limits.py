"""The daemon as a real process with one platform behind the fault proxy, trickling every answer:
its polls end at the connector's `deadline` (not when the platform finishes), the connectors
endpoint says why, and the other platforms keep syncing (issue 16)."""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

import pytest

from tests import ops
from tests.e2e.conftest import DaemonProcess, wait_until
from tests.faultproxy import FaultProxy
from tests.world import World

pytestmark = pytest.mark.slow

READER = "limits-reader-token"
SLOW = "impactly"
OTHERS = ("vortask", "agentkanban", "runs", "squads")


def connectors(d: DaemonProcess) -> dict[str, dict[str, Any]]:
    response = d.get("/api/v1/connectors", READER)
    assert response.status_code == 200, response.text
    return {row["name"]: row for row in response.json()}


def poll_durations(d: DaemonProcess, connector: str) -> dict[str | float, float]:
    """The poll duration histogram of one connector, from /metrics: {"count", "sum", le: count}."""
    text = d.get("/metrics").text
    out: dict[str | float, float] = {}
    for name, labels, value in re.findall(
        r"^taskbridge_poll_duration_seconds_(\w+)\{([^}]*)\} (\S+)$", text, re.M
    ):
        if f'connector="{connector}"' not in labels:
            continue
        le = re.search(r'le="([^"]+)"', labels)
        out[float(le.group(1)) if le else name] = float(value)
    return out


def test_a_trickling_platform_fails_at_the_deadline_and_the_others_sync(
    world: World, daemon_factory: Any
) -> None:
    fake = world.fakes[SLOW]
    with FaultProxy(fake.url) as proxy:
        d = daemon_factory(
            world,
            poll_interval="1s",
            extra_connector={SLOW: {"base_url": proxy.url + fake.api_root, "deadline": "1s"}},
            server_tokens=[
                {"name": "r", "sha256": hashlib.sha256(READER.encode()).hexdigest(), "scopes": ["read"]}
            ],
        ).start()  # through the proxy, untouched: a new store lists every platform before it starts
        assert connectors(d)[SLOW]["last_error"] is None
        # Now 10 bytes/s: even an empty listing would take seconds, yet a byte comes every 100 ms,
        # so the 10 s per-phase timeout never trips. Only the 1 s deadline ends the requests.
        proxy.switches.trickle = 10
        switched = time.monotonic()
        row = wait_until(
            lambda: (r := connectors(d)[SLOW])["last_error"] and "deadline" in r["last_error"] and r,
            timeout=30,
            what=f"{SLOW}'s deadline error in /api/v1/connectors",
        )
        assert time.monotonic() - switched < 6  # a poll interval and a deadline, not 90 s
        assert row["healthy"] is False
        assert re.match(
            rf"{SLOW}: GET \S+: no complete answer within the 1 s deadline; cancelled$", row["last_error"]
        )
        # From here every poll of it started after the switch (its polls run one at a time).
        before = poll_durations(d, SLOW)

        # The others keep syncing meanwhile: a task made on one reaches the rest.
        ops.create(world, "agentkanban", "made while impactly trickles", priority="high")
        wait_until(
            lambda: all("made while impactly trickles" in ops.view(world, p) for p in OTHERS),
            timeout=30,
            what="the task on every platform but the trickling one",
        )
        rows = connectors(d)
        for name in OTHERS:
            assert rows[name]["healthy"] is True and rows[name]["last_error"] is None, rows[name]

        # Every poll of the trickling platform ended at its deadline: none within 1 s, all within
        # 2.5 s (the histogram's bucket above 1 s), where the whole answer takes many seconds.
        after = wait_until(
            lambda: (h := poll_durations(d, SLOW))["count"] >= before["count"] + 2 and h, what="2 more polls"
        )
        polls = after["count"] - before["count"]
        assert after[1.0] - before[1.0] == 0, (before, after)
        assert after[2.5] - before[2.5] == polls, (before, after)
        ops.view(world, SLOW)  # no duplicate there (a create may land and still miss its deadline)
        assert d.terminate() == 0
