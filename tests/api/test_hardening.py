"""The unified API's edges, in-process (the app over ASGI, the daemon's engine and store without its
scheduler): nothing a client can send answers 5xx, a body over the bound answers 413 however it
arrives, a write-only token reads nothing, and a real server bug still answers a bare 500.
(tests/api/test_api.py feeds the same cases to a running daemon over real HTTP.)"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import APIRouter, Depends
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import OperationalError

from bridge import config
from bridge.api import app as app_module
from bridge.api import routes
from bridge.api.app import create_app
from bridge.daemon import Daemon, DaemonOptions
from bridge.store import StoreLost
from bridge.store.tables import ConflictRow
from tests.conftest import drop_pg_database, fresh_pg_database, pg_url_or_skip, terminate_pg_backends
from tests.world import World

READER, SCRIBE, WRITER, OPS = (
    "tb_h_reader_0123456789",
    "tb_h_scribe_0123456789",
    "tb_h_writer_0123",
    "tb_h_ops_01234",
)
FAR = "9999-12-31T23:59:59-23:59"  # a valid timestamp whose UTC is past datetime.max


def _token(name: str, token: str, scopes: list[str]) -> dict[str, Any]:
    return {"name": name, "sha256": hashlib.sha256(token.encode()).hexdigest(), "scopes": scopes}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World(("vortask", "impactly")).start()
    yield w
    w.stop()


class Api:
    def __init__(self, daemon: Daemon, client: httpx.AsyncClient) -> None:
        self.daemon = daemon
        self.client = client

    async def call(self, method: str, path: str, token: str | None = WRITER, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        return await self.client.request(method, path, headers=headers, **kw)

    async def raw(self, method: str, path: str, body: bytes | str, token: str = WRITER) -> httpx.Response:
        return await self.call(
            method, path, token, content=body, headers={"Content-Type": "application/json"}
        )

    async def make(self, title: str = "t") -> str:
        r = await self.call("POST", "/api/v1/tasks", json={"route": "main", "title": title})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


@pytest_asyncio.fixture
async def api(request: pytest.FixtureRequest, world: World, tmp_path: Path) -> AsyncIterator[Api]:
    """The app over SQLite, or over PostgreSQL where a test asks for it (`indirect`)."""
    dropped: tuple[str, str] | None = None
    url = f"sqlite+aiosqlite:///{tmp_path}/api.db"
    if getattr(request, "param", "sqlite") == "postgres":
        server = pg_url_or_skip()
        url, name = await fresh_pg_database(server)
        dropped = (server, name)
    tokens = [
        _token("reader", READER, ["read"]),
        _token("scribe", SCRIBE, ["write"]),
        _token("writer", WRITER, ["read", "write"]),
        _token("ops", OPS, ["admin"]),
    ]
    cfg = config.load(world.config(tmp_path, store_url=url, server_tokens=tokens))
    daemon = Daemon(cfg, options=DaemonOptions(poll=False, serve=False))
    await daemon.store.migrate()
    app = create_app(daemon)
    probes = APIRouter(prefix="/probe", route_class=routes.GuardedRoute)

    def overflowing() -> None:
        raise OverflowError("a parser's overflow")

    @probes.get("/parsing", dependencies=[Depends(overflowing)])
    async def parsing() -> dict[str, str]:
        return {}

    @probes.get("/endpoint")
    async def endpoint() -> dict[str, str]:
        raise ValueError("internal detail 1f3a")

    @probes.get("/unrenderable")
    async def unrenderable() -> dict[str, str]:
        raise RequestValidationError(
            [{"type": "x", "loc": ("body", "\ud800"), "msg": "bad \ud800", "input": ["\ud800"]}]
        )

    app.include_router(probes)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield Api(daemon, client)
    finally:
        for conn in daemon.ctx.connectors.values():
            await conn.aclose()
        await daemon.store.close()
        if dropped:
            await drop_pg_database(*dropped)


def _cursor(stamp: Any, task_id: Any = "01JD3XK2Q4W6Y8Z0A2C4E6G8J0") -> str:
    return base64.urlsafe_b64encode(json.dumps([stamp, task_id]).encode()).decode()


def _is_clear_4xx(r: httpx.Response, *codes: int) -> dict[str, Any]:
    assert r.status_code in codes, (r.status_code, r.text)
    body = r.json()  # it renders
    assert body["detail"]
    return dict(body)


# -- values that overflow ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"updated_since": FAR},
        {"updated_since": "0001-01-01T00:00:00+23:59"},
        {"cursor": _cursor(FAR)},
        {"cursor": _cursor("0001-01-01T00:00:00+23:59")},
        {"cursor": _cursor("2026-01-01T00:00:00Z", 7)},
        {"cursor": _cursor(["2026"])},
        {"cursor": base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode()},
    ],
)
async def test_timestamps_past_the_calendar_are_a_4xx(api: Api, params: dict[str, str]) -> None:
    r = await api.call("GET", "/api/v1/tasks", READER, params=params)
    body = _is_clear_4xx(r, 400, 422)
    if "updated_since" in params:
        assert r.status_code == 422 and "out of range" in json.dumps(body)
    else:
        assert body == {"detail": "bad cursor"}


# -- bodies that nest, or hold what no store can -------------------------------------------------------


@pytest.mark.parametrize("depth", [40, 900, 5000, 100_000])
@pytest.mark.parametrize(
    ("path", "prefix"),
    [
        ("/api/v1/tasks", '{"route":"main","title":"x","tags":'),
        ("/api/v1/conflicts/1/resolve", '{"value":'),
        ("/api/v1/tasks", ""),
    ],
)
async def test_deep_nesting_is_a_422(api: Api, path: str, prefix: str, depth: int) -> None:
    body = prefix + "[" * depth + "]" * depth + ("}" if prefix else "")
    r = await api.raw("POST", path, body)
    detail = _is_clear_4xx(r, 422)["detail"]
    assert detail[0]["type"] == "json_invalid"
    assert "nested deeper than" in detail[0]["ctx"]["error"]


@pytest.mark.parametrize(
    "body",
    [
        '{"route":"main","title":"x","colour":"\\ud800"}',  # the 422 echoes it
        '{"route":"main","title":"\\ud800"}',  # valid, but no store holds it
        '{"route":"main","title":"x","tags":["\\udfff"]}',
        '{"\\ud800":1}',
        b'{"route":"main","title":"\xed\xa0\x80"}',  # the surrogate UTF-8-encoded
        b'{"route":"main","title":"\xff"}',  # not UTF-8
        '{"route":"main","title":"x\\u0000"}',  # PostgreSQL refuses a NUL
        '{"choose":null,"value":NaN}',
        '{"value":' + "9" * 5000 + "}",
    ],
)
async def test_strings_and_numbers_json_cannot_carry_are_a_422_that_renders(api: Api, body: Any) -> None:
    path = "/api/v1/conflicts/1/resolve" if "value" in str(body) else "/api/v1/tasks"
    r = await api.raw("POST", path, body)
    assert _is_clear_4xx(r, 422)["detail"][0]["type"] == "json_invalid"


async def test_a_valid_pair_of_surrogates_is_still_a_character(api: Api) -> None:
    r = await api.raw("POST", "/api/v1/tasks", '{"route":"main","title":"ok \\ud83d\\ude00"}')
    assert r.status_code == 201, r.text
    assert r.json()["title"] == "ok \U0001f600"


async def test_a_patch_with_a_lone_surrogate_is_a_422(api: Api) -> None:
    task = await api.make()
    r = await api.raw("PATCH", f"/api/v1/tasks/{task}", '{"description":"\\ud800"}')
    _is_clear_4xx(r, 422)


@pytest.mark.parametrize("api", ["sqlite", "postgres"], indirect=True)
@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/tasks?tag=%00",
        "/api/v1/tasks?assignee=a%00",
        "/api/v1/tasks?q=%00",
        "/api/v1/tasks/a%00b",
        "/api/v1/tasks/a%00b/comments",
    ],
)
async def test_a_nul_in_the_path_or_query_is_a_400(api: Api, path: str) -> None:
    # SQLite takes it; PostgreSQL refuses it as an error, which was a 500.
    r = await api.call("GET", path, READER)
    assert _is_clear_4xx(r, 400)["detail"] == "a NUL character (%00) in the path or query"


@pytest.mark.parametrize("api", ["sqlite", "postgres"], indirect=True)
async def test_a_nul_in_a_body_or_cursor_is_a_4xx(api: Api) -> None:
    task = await api.make()
    for method, path, body in (
        ("POST", "/api/v1/tasks", {"route": "main", "title": "x\u0000"}),
        ("PATCH", f"/api/v1/tasks/{task}", {"tags": ["a\u0000"]}),
        ("POST", f"/api/v1/tasks/{task}/comments", {"body": "x\u0000"}),
    ):
        r = await api.call(method, path, json=body)
        assert _is_clear_4xx(r, 422)["detail"][0]["ctx"]["error"].startswith("a string holds a NUL")
    r = await api.call(
        "GET", "/api/v1/tasks", READER, params={"cursor": _cursor("2026-01-01T00:00:00Z", "a\u0000")}
    )
    assert _is_clear_4xx(r, 400) == {"detail": "bad cursor"}


async def test_an_unrenderable_validation_error_is_still_a_422(api: Api) -> None:
    r = await api.call("GET", "/probe/unrenderable")
    assert r.status_code == 422
    assert r.json() == {"detail": [{"type": "x", "loc": ["body", "\\ud800"], "msg": "bad \\ud800"}]}


# -- the body bound -------------------------------------------------------------------------------------


async def test_a_chunked_body_over_the_bound_is_a_413(api: Api) -> None:
    limit = api.daemon.cfg.server.max_body_bytes

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"route":"main","title":"x","description":"'
        for _ in range(limit // 65536 + 2):
            yield b"a" * 65536
        yield b'"}'

    r = await api.call(
        "POST", "/api/v1/tasks", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413, r.text[:300]
    assert r.json() == {"detail": f"request body larger than {limit} bytes"}


async def test_a_chunked_body_under_the_bound_is_taken(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"route":"main","title":"chunked","description":"'
        for _ in range(9):
            yield b"a" * 10_000
        yield b'"}'

    r = await api.call(
        "POST", "/api/v1/tasks", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 201, r.text[:300]
    assert r.json()["title"] == "chunked" and len(r.json()["description"]) == 90_000


# -- scopes ---------------------------------------------------------------------------------------------


async def test_a_write_only_token_reads_nothing_through_a_write(api: Api) -> None:
    task = await api.make("secret plans")
    assert (await api.call("GET", f"/api/v1/tasks/{task}", SCRIBE)).status_code == 403

    patched = await api.call("PATCH", f"/api/v1/tasks/{task}", SCRIBE, json={})
    assert patched.status_code == 200 and patched.json() == {"id": task}
    patched = await api.call("PATCH", f"/api/v1/tasks/{task}", SCRIBE, json={"status": "blocked"})
    assert patched.status_code == 200 and patched.json() == {"id": task}

    created = await api.call("POST", "/api/v1/tasks", SCRIBE, json={"route": "main", "title": "new"})
    assert created.status_code == 201 and set(created.json()) == {"id"}

    comment = await api.call("POST", f"/api/v1/tasks/{task}/comments", SCRIBE, json={"body": "hi"})
    assert comment.status_code == 201 and set(comment.json()) == {"id"}

    # The writes happened: a reader sees them.
    seen = (await api.call("GET", f"/api/v1/tasks/{task}", READER)).json()
    assert seen["status"] == "blocked" and seen["title"] == "secret plans"
    new = (await api.call("GET", f"/api/v1/tasks/{created.json()['id']}", READER)).json()
    assert new["title"] == "new"

    # A token that may read gets the task back, as before; admin implies read.
    for token in (WRITER, OPS):
        full = await api.call("PATCH", f"/api/v1/tasks/{task}", token, json={})
        assert full.status_code == 200 and full.json()["title"] == "secret plans"
        back = await api.call("POST", f"/api/v1/tasks/{task}/comments", token, json={"body": "b"})
        assert back.status_code == 201 and back.json()["body"] == "b"

    for method, path in (
        ("GET", "/api/v1/tasks"),
        ("GET", f"/api/v1/tasks/{task}/comments"),
        ("GET", "/api/v1/conflicts"),
        ("GET", "/api/v1/connectors"),
        ("POST", "/api/v1/connectors/vortask/sync"),
    ):
        assert (await api.call(method, path, SCRIBE)).status_code == 403, (method, path)


async def test_a_write_only_token_resolves_a_conflict_without_seeing_it(api: Api) -> None:
    task = await api.make("contested")
    ids = []
    async with api.daemon.store.transaction() as session:
        for title in ("mine", "theirs"):
            row = ConflictRow(
                task_id=task,
                route="main",
                field="title",
                state="open",
                candidates={"bridge": "contested", "vortask": f"contested ({title})"},
                created_at=datetime.now(UTC),
            )
            session.add(row)
            await session.flush()
            ids.append(row.id)
    path = f"/api/v1/conflicts/{ids[0]}/resolve"
    wrong = await api.call("POST", path, SCRIBE, json={"choose": "nobody"})
    assert wrong.status_code == 400 and "vortask" not in wrong.text and "title" not in wrong.text
    done = await api.call("POST", path, SCRIBE, json={"choose": "vortask"})
    assert done.status_code == 200 and done.json() == {"id": ids[0]}
    # A token that may read sees the conflict it resolved, and the reason a choice is wrong.
    path = f"/api/v1/conflicts/{ids[1]}/resolve"
    wrong = await api.call("POST", path, WRITER, json={"choose": "nobody"})
    assert wrong.status_code == 400 and "vortask" in wrong.json()["detail"]
    done = await api.call("POST", path, WRITER, json={"choose": "bridge"})
    assert done.status_code == 200 and done.json()["candidates"]["vortask"] == "contested (theirs)"


@pytest.mark.parametrize(
    ("field", "value"), [("tags", 5), ("assignees", True), ("tags", 1.5), ("status", ["todo"])]
)
async def test_a_resolution_value_of_the_wrong_kind_is_a_400(api: Api, field: str, value: Any) -> None:
    task = await api.make()
    async with api.daemon.store.transaction() as session:
        row = ConflictRow(
            task_id=task,
            route="main",
            field=field,
            state="open",
            candidates={"bridge": None},
            created_at=datetime.now(UTC),
        )
        session.add(row)
        await session.flush()
        conflict = row.id
    r = await api.call("POST", f"/api/v1/conflicts/{conflict}/resolve", json={"value": value})
    assert _is_clear_4xx(r, 400)["detail"] == f"{field}: not a value this field takes"


async def test_the_openapi_schema_documents_both_answers(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    patch = spec["paths"]["/api/v1/tasks/{task_id}"]["patch"]["responses"]["200"]
    refs = {s["$ref"] for s in patch["content"]["application/json"]["schema"]["anyOf"]}
    assert refs == {"#/components/schemas/TaskOut", "#/components/schemas/Ack"}
    assert spec["components"]["schemas"]["Ack"]["required"] == ["id"]


# -- the generic guard, and what it leaves alone ---------------------------------------------------------


async def test_a_parse_time_overflow_is_a_400(api: Api) -> None:
    r = await api.call("GET", "/probe/parsing")
    assert r.status_code == 400
    assert r.json() == {"detail": "the request could not be parsed (OverflowError)"}


async def test_a_server_bug_stays_a_bare_500(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    r = await api.call("GET", "/probe/endpoint")
    assert r.status_code == 500
    assert r.text == "Internal Server Error"
    # And in a real route: a ValueError while answering is the server's, not the client's.
    task = await api.make()

    def broken(*_: Any, **__: Any) -> Any:
        raise ValueError("internal detail 9c2e")

    monkeypatch.setattr(routes, "_task_out", broken)
    r = await api.call("GET", f"/api/v1/tasks/{task}", READER)
    assert r.status_code == 500
    assert r.text == "Internal Server Error" and "Traceback" not in r.text


@pytest.mark.parametrize("api", ["postgres"], indirect=True)
async def test_a_lost_store_connection_is_a_503_to_retry_and_the_next_request_reconnects(api: Api) -> None:
    """PostgreSQL closing the pooled connections (a restart; here their backends are terminated)
    just after they were used: the request that meets one answers 503 with Retry-After, not a
    500 with a traceback, and the one after it finds a new connection."""
    task = await api.make()
    assert (await api.call("GET", f"/api/v1/tasks/{task}", READER)).status_code == 200
    assert await terminate_pg_backends(api.daemon.store.url) >= 1
    r = await api.call("GET", f"/api/v1/tasks/{task}", READER)  # within PING_AFTER_IDLE: not pinged
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == "1"
    assert r.json() == {"detail": "the store's connection was lost; retry"}
    r = await api.call("GET", f"/api/v1/tasks/{task}", READER)
    assert r.status_code == 200, r.text


async def test_the_webhook_intake_answers_its_own_paths_only(api: Api) -> None:
    """Deliveries are answered before FastAPI's routing (bridge.api.app.WebhookIntake): a
    delivery's other methods and paths still answer as routes would."""
    r = await api.call("GET", "/webhooks/vortask", None)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    # A URL registered with a trailing slash is sent on, as the router's redirect_slashes did.
    r = await api.call("POST", "/webhooks/vortask/", None, content=b"{}")
    assert r.status_code == 307 and r.headers["location"].endswith("/webhooks/vortask")
    for path in ("/webhooks/", "/webhooks/vortask/extra", "/webhooks/vortask/extra/"):
        assert (await api.call("POST", path, None, content=b"{}")).status_code == 404, path
    r = await api.call("POST", "/webhooks/nope", None, content=b"{}")
    assert r.status_code == 404 and r.json()["result"] == "unknown_connector"
    r = await api.call("POST", "/webhooks/vortask", None, content=b"{}")
    assert r.status_code == 401 and r.json()["result"] == "bad_signature"
    assert "x-request-id" in r.headers  # answered inside RequestId, like every route


async def test_a_delivery_the_store_fails_is_a_503_or_a_bare_500(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def lost(*_: Any) -> Any:
        raise StoreLost("store /srv/taskbridge.db was deleted")

    monkeypatch.setattr(app_module, "receive", lost)
    r = await api.call("POST", "/webhooks/vortask", None, content=b"{}")
    assert r.status_code == 503 and r.headers["retry-after"] == "60"
    assert r.json() == {"detail": "store /srv/taskbridge.db was deleted"}

    async def refused(*_: Any) -> Any:
        raise OperationalError("UPDATE inbox", {}, Exception("no such table: inbox"))

    monkeypatch.setattr(app_module, "receive", refused)
    r = await api.call("POST", "/webhooks/vortask", None, content=b"{}")
    assert r.status_code == 500
    assert r.text == "Internal Server Error" and "inbox" not in r.text


@pytest.mark.parametrize(
    ("path", "root_path", "routed"),
    [
        ("/webhooks/vortask", "", "/webhooks/vortask"),
        ("/tb/webhooks/vortask", "/tb", "/webhooks/vortask"),  # served under a root path
        ("/webhooks/vortask", "/tb", "/webhooks/vortask"),  # a server that leaves it out of the path
    ],
)
def test_the_intake_matches_the_path_the_router_would(path: str, root_path: str, routed: str) -> None:
    assert app_module._route_path({"type": "http", "path": path, "root_path": root_path}) == routed
