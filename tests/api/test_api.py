"""The unified API over real HTTP: every endpoint, each scope rule, each bad input, webhook intake,
health, metrics, and no secret anywhere in what the daemon says or logs."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import clirun, ops
from tests.daemons import daemon_fixture, token_entry, world_fixture
from tests.daemons import store_url as _store_url  # the name tests/api/test_mcp.py imports
from tests.e2e.conftest import DaemonProcess, wait_until
from tests.world import TOKENS, WEBHOOK_SECRET, World

READ, WRITE, ADMIN = "tb_read_token_0123456789", "tb_write_token_0123456789", "tb_admin_token_0123456789"
SCRIBE = "tb_scribe_token_0123456789"  # write without read
ALL = ("impactly", "vortask", "agentkanban", "runs", "squads")


world = world_fixture(ALL)
daemon = daemon_fixture(
    [
        token_entry("reader", READ, ["read"]),
        token_entry("writer", WRITE, ["read", "write"]),
        token_entry("ops", ADMIN, ["admin"]),
        token_entry("scribe", SCRIBE, ["write"]),
    ],
    public=True,
    poll_interval="1s",
)


def api(d: DaemonProcess, method: str, path: str, token: str | None = READ, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kw.pop("headers", {}))
    return httpx.request(method, d.url + path, headers=headers, timeout=30, **kw)


def make(d: DaemonProcess, title: str, **fields: Any) -> dict[str, Any]:
    r = api(d, "POST", "/api/v1/tasks", WRITE, json={"route": "main", "title": title, **fields})
    assert r.status_code == 201, r.text
    return dict(r.json())


# -- auth and scopes --------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "nope", READ + "x"])
def test_requests_without_a_valid_token_get_401(daemon: DaemonProcess, token: str | None) -> None:
    r = api(daemon, "GET", "/api/v1/tasks", token)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/tasks", {"route": "main", "title": "x"}),
        ("PATCH", "/api/v1/tasks/01JD3XK2Q4W6Y8Z0A2C4E6G8J0", {"title": "x"}),
        ("DELETE", "/api/v1/tasks/01JD3XK2Q4W6Y8Z0A2C4E6G8J0", None),
        ("POST", "/api/v1/tasks/01JD3XK2Q4W6Y8Z0A2C4E6G8J0/comments", {"body": "x"}),
        ("POST", "/api/v1/conflicts/1/resolve", {"choose": "bridge"}),
    ],
)
def test_read_tokens_cannot_write(daemon: DaemonProcess, method: str, path: str, body: Any) -> None:
    r = api(daemon, method, path, READ, json=body)
    assert r.status_code == 403
    assert "lacks the 'write' scope" in r.json()["detail"]


def test_a_write_only_token_gets_nothing_a_read_token_would(daemon: DaemonProcess) -> None:
    task = make(daemon, "written, not read")
    path = f"/api/v1/tasks/{task['id']}"
    assert api(daemon, "GET", path, SCRIBE).status_code == 403
    patched = api(daemon, "PATCH", path, SCRIBE, json={})
    assert patched.status_code == 200 and patched.json() == {"id": task["id"]}
    created = api(daemon, "POST", "/api/v1/tasks", SCRIBE, json={"route": "main", "title": "blind"})
    assert created.status_code == 201 and set(created.json()) == {"id"}
    commented = api(daemon, "POST", path + "/comments", SCRIBE, json={"body": "blind"})
    assert commented.status_code == 201 and set(commented.json()) == {"id"}
    assert api(daemon, "GET", f"/api/v1/tasks/{created.json()['id']}").json()["title"] == "blind"
    assert api(daemon, "PATCH", path, WRITE, json={}).json()["title"] == "written, not read"


def test_only_admin_triggers_a_sync(daemon: DaemonProcess) -> None:
    assert api(daemon, "POST", "/api/v1/connectors/vortask/sync", WRITE).status_code == 403
    assert api(daemon, "POST", "/api/v1/connectors/vortask/sync", ADMIN).status_code == 202
    assert api(daemon, "POST", "/api/v1/connectors/nope/sync", ADMIN).status_code == 404
    assert api(daemon, "GET", "/api/v1/tasks", ADMIN).status_code == 200  # admin implies read


# -- tasks -------------------------------------------------------------------------------------------


def test_create_in_a_route_fans_out_and_get_shows_links_and_history(
    daemon: DaemonProcess, world: World
) -> None:
    task = make(daemon, "api made", priority="urgent", tags=["api"], due_date="2026-12-24")
    assert task["priority"] == "urgent" and task["due_date"] == "2026-12-24"

    def linked() -> Any:
        t = api(daemon, "GET", f"/api/v1/tasks/{task['id']}").json()
        return t if sum(1 for lk in t["links"] if lk["state"] == "active") == len(ALL) else None

    full = wait_until(linked, what="a link on every platform")
    assert {lk["platform"] for lk in full["links"]} == set(ALL)
    assert (
        full["history"][0]["new"] == "created" and full["history"][0]["source"] == "api:writer"
    )  # who made it
    vt = ops.view(world, "vortask")["api made"]
    assert (vt["priority"], vt["due_date"], vt["tags"]) == ("high", "2026-12-24", {"api"})


def test_patch_fans_out_like_any_change(daemon: DaemonProcess, world: World) -> None:
    task = make(daemon, "to patch")
    wait_until(lambda: "to patch" in ops.view(world, "squads"), what="the mirror on squads")
    r = api(
        daemon, "PATCH", f"/api/v1/tasks/{task['id']}", WRITE, json={"title": "patched", "status": "blocked"}
    )
    assert r.status_code == 200 and r.json()["title"] == "patched"
    wait_until(
        lambda: ops.view(world, "squads").get("patched", {}).get("status") == "blocked", what="the patch"
    )
    wait_until(
        lambda: ops.view(world, "vortask").get("patched", {}).get("status") == "blocked", what="the patch"
    )


def test_delete_applies_the_route_policy(daemon: DaemonProcess, world: World) -> None:
    task = make(daemon, "to delete")
    wait_until(lambda: "to delete" in ops.view(world, "agentkanban"), what="the mirror")
    assert api(daemon, "DELETE", f"/api/v1/tasks/{task['id']}", WRITE).status_code == 204
    wait_until(
        lambda: ops.view(world, "agentkanban")["to delete"]["archived"], what="archived (route policy)"
    )
    assert (
        api(daemon, "GET", f"/api/v1/tasks/{task['id']}").json()["history"][-1]["new"].startswith("deleted")
    )
    assert api(daemon, "DELETE", f"/api/v1/tasks/{task['id']}", WRITE).status_code == 404


def test_list_filters_and_cursor_pagination(daemon: DaemonProcess) -> None:
    made = [make(daemon, f"page {i}", tags=["paging"], priority="low" if i % 2 else "high") for i in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"tag": "paging", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = api(daemon, "GET", "/api/v1/tasks", params=params).json()
        seen += [t["id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(t["id"] for t in made) and len(seen) == 7  # each once, none lost
    lows = api(daemon, "GET", "/api/v1/tasks", params={"tag": "paging", "priority": "low"}).json()["tasks"]
    assert len(lows) == 3
    found = api(daemon, "GET", "/api/v1/tasks", params={"q": "page 6"}).json()["tasks"]
    assert [t["title"] for t in found] == ["page 6"]
    future = api(daemon, "GET", "/api/v1/tasks", params={"updated_since": "2999-01-01T00:00:00Z"}).json()
    assert future["tasks"] == []
    assert (
        api(
            daemon, "GET", "/api/v1/tasks", params={"route": "main", "status": "todo", "limit": 1}
        ).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/api/v1/tasks", {"route": "nope", "title": "x"}, 404),
        ("POST", "/api/v1/tasks", {"route": "main"}, 422),
        ("POST", "/api/v1/tasks", {"route": "main", "title": "x", "status": "started"}, 422),
        ("POST", "/api/v1/tasks", {"route": "main", "title": "x", "colour": "red"}, 422),
        ("POST", "/api/v1/tasks", {"route": "main", "title": "x", "due_date": "tomorrow"}, 422),
        ("PATCH", "/api/v1/tasks/nope", {"title": "x"}, 404),
        ("GET", "/api/v1/tasks/nope", None, 404),
        ("GET", "/api/v1/tasks?cursor=garbage", None, 400),
        ("GET", "/api/v1/tasks?limit=0", None, 422),
        ("POST", "/api/v1/conflicts/999999/resolve", {"choose": "bridge"}, 404),
        ("GET", "/api/v1/tasks/nope/comments", None, 404),
    ],
)
def test_bad_input_gets_a_clear_4xx(
    daemon: DaemonProcess, method: str, path: str, body: Any, status: int
) -> None:
    r = api(daemon, method, path, ADMIN, json=body)
    assert r.status_code == status, r.text
    assert "detail" in r.json()


def test_malformed_json_body_is_422_not_500(daemon: DaemonProcess) -> None:
    r = httpx.post(
        daemon.url + "/api/v1/tasks",
        content=b"{not json",
        timeout=10,
        headers={"Authorization": f"Bearer {WRITE}", "Content-Type": "application/json"},
    )
    assert r.status_code == 422


def test_oversized_bodies_are_refused(daemon: DaemonProcess) -> None:
    big = {"route": "main", "title": "x", "description": "a" * 2_000_000}
    assert api(daemon, "POST", "/api/v1/tasks", WRITE, json=big).status_code == 413


def test_a_chunked_body_over_the_bound_is_a_413(daemon: DaemonProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"route":"main","title":"x","description":"'
        for _ in range(20):  # 1.25 MB, over the 1 MB bound, with no Content-Length
            yield b"a" * 65536
        yield b'"}'

    r = api(
        daemon, "POST", "/api/v1/tasks", WRITE, content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413, r.text
    assert "larger than" in r.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/api/v1/tasks?updated_since=9999-12-31T23:59:59-23:59", None, 422),
        (
            "GET",
            "/api/v1/tasks?cursor=" + "WyI5OTk5LTEyLTMxVDIzOjU5OjU5LTIzOjU5IiwgIngiXQ==",  # that stamp
            None,
            400,
        ),
        ("POST", "/api/v1/tasks", b"[" * 5000 + b"]" * 5000, 422),
        (
            "POST",
            "/api/v1/tasks",
            b'{"route":"main","title":"x","tags":' + b"[" * 5000 + b"]" * 5000 + b"}",
            422,
        ),
        ("POST", "/api/v1/tasks", b'{"route":"main","title":"x","colour":"\\ud800"}', 422),
        ("POST", "/api/v1/tasks", b'{"route":"main","title":"\\ud800"}', 422),
        ("GET", "/api/v1/tasks?tag=%00", None, 400),
    ],
)
def test_inputs_that_were_500s_get_a_4xx_that_renders(
    daemon: DaemonProcess, method: str, path: str, body: bytes | None, status: int
) -> None:
    r = api(daemon, method, path, ADMIN, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text[:500]
    assert r.json()["detail"]


# -- comments and conflicts --------------------------------------------------------------------------


def test_comments_through_the_api_reach_the_platforms(daemon: DaemonProcess, world: World) -> None:
    task = make(daemon, "commented")
    wait_until(lambda: "commented" in ops.view(world, "agentkanban"), what="the mirror")
    r = api(
        daemon,
        "POST",
        f"/api/v1/tasks/{task['id']}/comments",
        WRITE,
        json={"body": "from the API", "author": "Ops"},
    )
    assert r.status_code == 201
    ak = ops.view(world, "agentkanban")["commented"]["id"]
    wait_until(
        lambda: any("from the API" in c for c in ops.comments(world, "agentkanban", ak)), what="the comment"
    )
    listed = api(daemon, "GET", f"/api/v1/tasks/{task['id']}/comments").json()
    assert listed[0]["body"] == "from the API" and listed[0]["author"] == "Ops"
    wait_until(
        lambda: len(api(daemon, "GET", f"/api/v1/tasks/{task['id']}/comments").json()[0]["links"]) == 3,
        what="comment links on the three comment platforms",
    )


def test_conflicts_list_and_resolve(daemon: DaemonProcess) -> None:
    # A conflict row as the engine writes it under `manual` (its creation is tested in tests/engine).
    task = make(daemon, "contested")
    code = (
        "import asyncio,sys\n"
        "from datetime import UTC, datetime\n"
        "from bridge.store import Store\n"
        "from bridge.store.tables import ConflictRow\n"
        "async def main():\n"
        "    s = Store.open(sys.argv[1])\n"
        "    async with s.transaction() as t:\n"
        "        t.add(ConflictRow(task_id=sys.argv[2], route='main', field='title', state='open',\n"
        "              candidates={'bridge': 'contested', 'squads': 'contested (squads)'}, created_at=datetime.now(UTC)))\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    store_url = json.loads(json.dumps(_store_url(daemon)))
    subprocess.run([sys.executable, "-c", code, store_url, task["id"]], check=True)
    open_ = api(daemon, "GET", "/api/v1/conflicts").json()
    conflict = next(c for c in open_ if c["task_id"] == task["id"])
    assert conflict["title"] == "contested"  # a person sees which task
    sides = {x["side"]: x for x in conflict["sides"]}
    assert sides["squads"]["platform"] == "squads" and sides["squads"]["value"] == "contested (squads)"
    assert sides["squads"]["at"] is not None  # when squads last changed it (its link's time)
    assert sides["bridge"]["platform"] is None and sides["bridge"]["at"] is not None
    assert (
        api(
            daemon, "POST", f"/api/v1/conflicts/{conflict['id']}/resolve", WRITE, json={"choose": "nobody"}
        ).status_code
        == 400
    )
    r = api(daemon, "POST", f"/api/v1/conflicts/{conflict['id']}/resolve", WRITE, json={"choose": "squads"})
    assert r.status_code == 200 and r.json()["state"] == "resolved"
    assert api(daemon, "GET", f"/api/v1/tasks/{task['id']}").json()["title"] == "contested (squads)"
    again = api(
        daemon, "POST", f"/api/v1/conflicts/{conflict['id']}/resolve", WRITE, json={"choose": "squads"}
    )
    assert again.status_code == 409
    assert any(
        c["id"] == conflict["id"] for c in api(daemon, "GET", "/api/v1/conflicts?state=resolved").json()
    )


def test_connectors_report_health_and_lag(daemon: DaemonProcess) -> None:
    rows = wait_until(
        lambda: (
            [c for c in api(daemon, "GET", "/api/v1/connectors").json() if c["last_poll"]]
            if all(c["last_poll"] for c in api(daemon, "GET", "/api/v1/connectors").json())
            else None
        ),
        what="every connector polled",
    )
    assert {c["name"] for c in rows} == set(ALL)
    assert all(c["healthy"] and c["lag_seconds"] is not None for c in rows)


# -- webhooks ------------------------------------------------------------------------------------------


def _signed_vortask(body: bytes) -> dict[str, str]:
    sig = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Vortask-Signature": sig, "Content-Type": "application/json"}


def _inbox_count(d: DaemonProcess) -> int:
    metrics = httpx.get(d.url + "/metrics", timeout=10).text
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('taskbridge_webhooks_received_total{connector="vortask",result="ok"}')
        )
    )


def _webhook_metric(d: DaemonProcess, connector: str, result: str) -> float:
    prefix = f'taskbridge_webhooks_received_total{{connector="{connector}",result="{result}"}}'
    for line in httpx.get(d.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize(
    ("headers", "body", "status", "result"),
    [
        (
            {"X-Vortask-Signature": "0" * 64},
            b'{"event":"task.updated","projectId":1,"task":{"id":1}}',
            401,
            "bad_signature",
        ),
        ({}, b'{"event":"task.updated","projectId":1,"task":{"id":1}}', 401, "bad_signature"),
        (None, b"{not json", 400, "malformed"),
        (None, b'{"event":"task.updated"}', 400, "malformed"),
    ],
)
def test_bad_webhooks_get_4xx_are_counted_and_store_nothing(
    daemon: DaemonProcess, headers: dict[str, str] | None, body: bytes, status: int, result: str
) -> None:
    before_ok = _webhook_metric(daemon, "vortask", "ok")
    before = _webhook_metric(daemon, "vortask", result)
    sent = headers if headers is not None else _signed_vortask(body)
    r = httpx.post(daemon.url + "/webhooks/vortask", content=body, headers=sent, timeout=10)
    assert r.status_code == status, r.text
    assert _webhook_metric(daemon, "vortask", result) == before + 1
    assert _webhook_metric(daemon, "vortask", "ok") == before_ok  # nothing recorded


def test_replayed_and_stale_deliveries_are_refused(daemon: DaemonProcess, world: World) -> None:
    body = json.dumps({"event": "task.updated", "projectId": 1, "task": {"id": 424242}}).encode()
    first = httpx.post(
        daemon.url + "/webhooks/vortask", content=body, headers=_signed_vortask(body), timeout=10
    )
    assert first.status_code == 202
    replay = httpx.post(
        daemon.url + "/webhooks/vortask", content=body, headers=_signed_vortask(body), timeout=10
    )
    assert replay.status_code == 409 and replay.json()["result"] == "duplicate"
    # AgentKanban signs a timestamp: a delivery older than five minutes is stale.
    old = str(int(time.time()) - 3600)
    ak_body = b'{"id":"d1","event":"task.updated","boardId":"b","data":{"id":"t"}}'
    secret = "whsec_unknown"
    sig = hmac.new(secret.encode(), old.encode() + b"." + ak_body, hashlib.sha256).hexdigest()
    stale = httpx.post(
        daemon.url + "/webhooks/agentkanban",
        content=ak_body,
        timeout=10,
        headers={"X-AgentKanban-Signature": f"t={old},v1={sig}", "X-AgentKanban-Delivery": "d1"},
    )
    assert stale.status_code == 401


def test_oversized_and_unknown_webhooks(daemon: DaemonProcess) -> None:
    before = _webhook_metric(daemon, "vortask", "too_large")
    r = httpx.post(daemon.url + "/webhooks/vortask", content=b"x" * 2_000_000, timeout=10)
    assert r.status_code == 413
    assert _webhook_metric(daemon, "vortask", "too_large") == before + 1
    assert httpx.post(daemon.url + "/webhooks/nope", content=b"{}", timeout=10).status_code == 404
    assert (
        httpx.post(daemon.url + "/webhooks/runs", content=b"{}", timeout=10).status_code == 404
    )  # no webhooks


# -- health, metrics, docs -----------------------------------------------------------------------------


def test_health_readiness_metrics_and_openapi(daemon: DaemonProcess) -> None:
    assert httpx.get(daemon.url + "/healthz", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(daemon.url + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["problems"] == []
    metrics = httpx.get(daemon.url + "/metrics", timeout=10).text
    for name in (
        "taskbridge_remote_requests_total",
        "taskbridge_polls_total",
        "taskbridge_outbox_depth",
        # Its buckets appear with a route's first propagation, which other tests of this module
        # make, in whatever order the workers take them.
        "# TYPE taskbridge_propagation_seconds histogram",
        "taskbridge_watermark_age_seconds",
        "taskbridge_conflicts_open",
        "taskbridge_linked_tasks",
        "taskbridge_webhooks_received_total",
    ):
        assert name in metrics, name
    spec = httpx.get(daemon.url + "/openapi.json", timeout=10).json()
    assert "/api/v1/tasks" in spec["paths"] and "/api/v1/conflicts/{conflict_id}/resolve" in spec["paths"]
    assert httpx.get(daemon.url + "/docs", timeout=10).status_code == 200


def test_cli_status_and_conflicts_use_the_api(daemon: DaemonProcess) -> None:
    env_args = ["--url", daemon.url, "--token", READ]
    status = clirun.run(["status", *env_args])
    assert status.returncode == 0, status.stdout + status.stderr
    assert "vortask" in status.stdout and "open conflicts" in status.stdout
    listed = clirun.run(["conflicts", "list", "--state", "all", *env_args])
    assert listed.returncode == 0, listed.stderr
    denied = clirun.run(["conflicts", "resolve", "1", "--choose", "bridge", *env_args])
    assert denied.returncode == 1 and "HTTP 403" in denied.stderr and "Traceback" not in denied.stderr


@pytest.mark.parametrize("token", [ADMIN, SCRIBE], ids=["admin", "write-only"])
def test_schemathesis_finds_no_server_error_or_schema_violation(
    daemon: DaemonProcess, tmp_path: Path, token: str
) -> None:
    # As the write-only token, every write answers its documented acknowledgement (`Ack`).
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            daemon.url + "/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "15",
            "--workers",
            "1",
            "--exclude-path-regex",
            r"/connectors/\{name\}/sync",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_no_secret_appears_in_responses_or_logs(daemon: DaemonProcess, world: World) -> None:
    secrets = [s for t in TOKENS.values() for s in t.split(":")] + [
        WEBHOOK_SECRET,
        READ,
        WRITE,
        ADMIN,
        SCRIBE,
    ]
    seen = (
        "".join(
            api(daemon, "GET", path, ADMIN).text
            for path in ("/api/v1/connectors", "/api/v1/tasks", "/api/v1/conflicts")
        )
        + httpx.get(daemon.url + "/metrics", timeout=10).text
        + httpx.get(daemon.url + "/openapi.json", timeout=10).text
    )
    log = daemon.log.read_text()
    for secret in secrets:
        assert secret not in seen, "a secret in a response"
        assert secret not in log, "a secret in the daemon's log"


def test_metrics_pass_promtool(daemon: DaemonProcess) -> None:
    import shutil

    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: .ci/run installs Debian's prometheus package"
    wait_until(
        lambda: "taskbridge_polls_total{" in httpx.get(daemon.url + "/metrics", timeout=10).text,
        what="a poll counted",
    )
    text = httpx.get(daemon.url + "/metrics", timeout=10).text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", (
        result.stdout + result.stderr
    )  # no lint notes
