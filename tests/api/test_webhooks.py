"""Webhook intake hardened, over real HTTP against a running daemon: replays caught by what the
signature covers, timestamps verified, hostile headers and bodies refused with a 4xx and counted,
and a delivery processed with the headers it arrived with.

The fakes' own deliveries are dropped (and kept in `fake.webhooks.deliveries`, as an attacker on the
path would capture them) and polls are an hour apart, so what the daemon learns here it learns from
the deliveries the tests post.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.fakekit import Fake, free_port
from tests.e2e.conftest import DaemonProcess, wait_until
from tests.world import WEBHOOK_SECRET, World

READ = "tb_read_token_webhooks_0123456789"
PLATFORMS = ("impactly", "agentkanban", "vortask")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World(PLATFORMS).start()
    for fake in w.fakes.values():
        fake.faults.drop_webhook_rate = 1.0  # every delivery captured, none delivered
    yield w
    w.stop()


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("webhooks")


@pytest.fixture(scope="module")
def daemon(world: World, state_dir: Path) -> Iterator[DaemonProcess]:
    port = free_port()
    tokens = [{"name": "reader", "sha256": hashlib.sha256(READ.encode()).hexdigest(), "scopes": ["read"]}]
    path = world.config(state_dir, port=port, public=True, poll_interval="1h", server_tokens=tokens)
    d = DaemonProcess(path, port, state_dir / "daemon.log").start()
    # AgentKanban's secret is the one the platform generated when the daemon registered.
    wait_until(lambda: world.fakes["agentkanban"].hooks, what="the daemon's AgentKanban webhook")
    # The polls of start-up are over: one still listing when a test makes its task would link
    # it first, and the test's delivery would then be answered as reporting nothing new.
    wait_until(lambda: all(polled(d, c) for c in world.platforms), timeout=30, what="the start-up polls")
    yield d
    d.kill()


def polled(d: DaemonProcess, connector: str) -> bool:
    prefix = f'taskbridge_polls_total{{connector="{connector}",'
    lines = httpx.get(d.url + "/metrics", timeout=10).text.splitlines()
    return any(line.startswith(prefix) and float(line.rsplit(" ", 1)[1]) >= 1 for line in lines)


def metric(d: DaemonProcess, connector: str, result: str) -> float:
    prefix = f'taskbridge_webhooks_received_total{{connector="{connector}",result="{result}"}}'
    for line in httpx.get(d.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def post(d: DaemonProcess, connector: str, body: bytes, headers: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{d.url}/webhooks/{connector}", content=body, headers=headers, timeout=10)


def captured(fake: Fake, event: str, marker: str) -> tuple[bytes, dict[str, str]]:
    """The platform's own delivery of `event` whose body contains `marker`, as it was sent."""

    def find() -> Any:
        return next(
            (d for d in fake.webhooks.deliveries if d.event == event and marker.encode() in d.body), None
        )

    delivery = wait_until(find, timeout=10, what=f"the platform's {event} delivery for {marker}")
    return delivery.body, dict(delivery.headers)


def impactly_sign(body: bytes) -> str:
    return "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()


def impactly_delivery(world: World, title: str) -> tuple[bytes, dict[str, str]]:
    fake = world.fakes["impactly"]
    fake.call(lambda: fake.create_task(title))  # type: ignore[attr-defined]
    return captured(fake, "task.created", title)


def agentkanban_delivery(world: World, title: str) -> tuple[bytes, dict[str, str]]:
    with world.client("agentkanban") as client:
        r = client.post(f"boards/{world.scopes['agentkanban']}/tasks", json={"title": title})
        assert r.status_code == 201, r.text
    return captured(world.fakes["agentkanban"], "task.created", title)


def agentkanban_secret(world: World) -> str:
    fake = world.fakes["agentkanban"]
    return str(fake.call(lambda: next(iter(fake.hooks.values())).secret))  # type: ignore[attr-defined]


# -- replays: deduplicated on what the signature covers ----------------------------------------------


def test_an_impactly_replay_with_a_fresh_delivery_header_is_a_counted_duplicate(
    daemon: DaemonProcess, world: World
) -> None:
    body, headers = impactly_delivery(world, "replayed on impactly")
    assert post(daemon, "impactly", body, headers).status_code == 202

    before = metric(daemon, "impactly", "duplicate")
    fresh = {
        **headers,
        "X-Impactly-Delivery": str(uuid.uuid4()),
        "X-Impactly-Timestamp": str(int(time.time())),
    }
    replay = post(daemon, "impactly", body, fresh)
    assert replay.status_code == 409 and replay.json()["result"] == "duplicate", replay.text
    assert metric(daemon, "impactly", "duplicate") == before + 1
    # Without a delivery header at all, the same.
    bare = {k: v for k, v in fresh.items() if k != "X-Impactly-Delivery"}
    assert post(daemon, "impactly", body, bare).status_code == 409
    assert metric(daemon, "impactly", "duplicate") == before + 2


def test_impactly_timestamps_are_verified_when_present(daemon: DaemonProcess, world: World) -> None:
    body, headers = impactly_delivery(world, "late on impactly")
    before = metric(daemon, "impactly", "bad_signature")
    for stamp in (str(int(time.time()) - 3600), str(int(time.time()) + 3600), "soon", "1e9", "\xb9\xb2"):
        sent = {
            **headers,
            "X-Impactly-Delivery": str(uuid.uuid4()),
            "X-Impactly-Timestamp": stamp.encode("latin-1"),
        }
        r = post(daemon, "impactly", body, sent)
        assert r.status_code == 401 and r.json()["result"] == "bad_signature", (stamp, r.text)
    assert metric(daemon, "impactly", "bad_signature") == before + 5
    # Within the tolerance, or absent, it is accepted (once).
    within = {**headers, "X-Impactly-Timestamp": str(int(time.time()) - 200)}
    assert post(daemon, "impactly", body, within).status_code == 202
    absent = {k: v for k, v in headers.items() if k != "X-Impactly-Timestamp"}
    assert post(daemon, "impactly", body, absent).status_code == 409


def test_an_agentkanban_replay_with_a_fresh_delivery_header_is_a_counted_duplicate(
    daemon: DaemonProcess, world: World
) -> None:
    body, headers = agentkanban_delivery(world, "replayed on agentkanban")
    assert post(daemon, "agentkanban", body, headers).status_code == 202

    before = metric(daemon, "agentkanban", "duplicate")
    replay = post(daemon, "agentkanban", body, {**headers, "X-AgentKanban-Delivery": str(uuid.uuid4())})
    assert replay.status_code == 409 and replay.json()["result"] == "duplicate", replay.text
    assert metric(daemon, "agentkanban", "duplicate") == before + 1

    # Re-signed by someone holding the secret at a fresh time is still the same signed event.
    secret, ts = agentkanban_secret(world), str(int(time.time()))
    sig = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    resigned = {**headers, "X-AgentKanban-Signature": f"t={ts},v1={sig}", "X-AgentKanban-Delivery": "x"}
    assert post(daemon, "agentkanban", body, resigned).status_code == 409

    # Outside the 300 s window it is refused before it is looked up.
    old = str(int(time.time()) - 301)
    sig = hmac.new(secret.encode(), old.encode() + b"." + body, hashlib.sha256).hexdigest()
    stale = post(daemon, "agentkanban", body, {**headers, "X-AgentKanban-Signature": f"t={old},v1={sig}"})
    assert stale.status_code == 401 and stale.json()["result"] == "bad_signature"


# -- hostile headers and bodies: 4xx, counted ---------------------------------------------------------


@pytest.mark.parametrize(
    ("connector", "header", "value"),
    [
        ("impactly", "X-Impactly-Signature", b"sha256=\xe9\xe9"),
        ("impactly", "X-Impactly-Signature", b"sha256=" + b"\xe9" * 64),
        ("agentkanban", "X-AgentKanban-Signature", b"t=%d,v1=\xe9"),
        ("agentkanban", "X-AgentKanban-Signature", b"t=\xe9,v1=00"),
        ("vortask", "X-Vortask-Signature", b"\xe9" * 64),
    ],
)
def test_a_non_ascii_signature_is_a_counted_401(
    daemon: DaemonProcess, connector: str, header: str, value: bytes
) -> None:
    if b"%d" in value:
        value = value % int(time.time())
    body = b'{"id":"d-non-ascii","event":"task.updated","projectId":1,"boardId":"b","data":{"id":"t"},"task":{"id":1}}'
    before = metric(daemon, connector, "bad_signature")
    r = post(daemon, connector, body, {header: value, "Content-Type": "application/json"})
    assert r.status_code == 401 and r.json()["result"] == "bad_signature", r.text
    assert metric(daemon, connector, "bad_signature") == before + 1


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", "webhook body is not JSON: "),
        (
            b'{"id":"deep","event":"task.updated","data":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
            "webhook body could not be read: maximum recursion depth exceeded",
        ),
        (
            b'{"id":"\\ud800","event":"task.updated","data":{"id":"\\udfff"}}',
            "webhook body could not be read: ",
        ),
        (b'{"id":"d-latin","event":"task.updated","data":{"id":"\xe9"}}', "webhook body is not JSON: "),
        (b'{"id":"d-no-data","event":"task.updated"}', "webhook body has no 'data' object"),
    ],
    ids=["not-json", "nested", "lone-surrogate", "not-utf8", "no-data"],
)
def test_signed_but_unreadable_bodies_are_a_counted_4xx(
    daemon: DaemonProcess, body: bytes, detail: str
) -> None:
    before = metric(daemon, "impactly", "malformed")
    r = post(daemon, "impactly", body, {"X-Impactly-Signature": impactly_sign(body)})
    assert r.status_code == 400 and r.json()["result"] == "malformed", r.text
    # What is wrong with the body, in words: the signature was fine, and class names such as
    # BadSignature (what connectors raise for a body they cannot take) read as if it were not.
    assert r.json()["detail"].startswith(detail), r.text
    assert "Signature" not in r.json()["detail"] and "Error" not in r.json()["detail"], r.text
    assert metric(daemon, "impactly", "malformed") == before + 1


# -- processing sees the headers the delivery arrived with --------------------------------------------


def test_an_event_named_only_in_a_header_is_acted_on(
    daemon: DaemonProcess, world: World, state_dir: Path
) -> None:
    raw, headers = impactly_delivery(world, "event in the header")
    payload = json.loads(raw)
    event = payload.pop("event")
    body = json.dumps(payload, separators=(",", ":")).encode()
    sent = {
        "X-Impactly-Signature": impactly_sign(body),
        "X-Impactly-Event": event,
        "X-Impactly-Delivery": headers["X-Impactly-Delivery"],
        "X-Impactly-Timestamp": str(int(time.time())),
        "Authorization": "Bearer not-for-the-store",
        "Content-Type": "application/json",
    }
    r = post(daemon, "impactly", body, sent)
    assert r.status_code == 202, r.text

    def bridged() -> Any:
        tasks = daemon.get("/api/v1/tasks?q=event+in+the+header", READ).json()["tasks"]
        return [t for t in tasks if t["title"] == "event in the header"]

    wait_until(bridged, timeout=30, what="the task the delivery named, in the bridge")

    # Only what parsing needs is kept: no signature, no credential.
    with sqlite3.connect(state_dir / "bridge.db") as db:
        rows = db.execute("SELECT headers FROM inbox WHERE body = ?", (body.decode(),)).fetchall()
    assert [json.loads(h) for (h,) in rows] == [{"x-impactly-event": "task.created"}]
