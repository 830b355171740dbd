"""`/api/v1/outbox` and `/api/v1/inbox` (bridge/api/deadletters.py) over the daemon's own app with
a real store: parked operations and failed deliveries seeded through the store, then listed,
retried and dropped over HTTP (ASGI, in-process); admin scope only; refusals per id."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select
from starlette.routing import NoMatchFound

from bridge import config
from bridge.api import deadletters
from bridge.api.app import create_app
from bridge.daemon import Daemon, DaemonOptions
from bridge.model import new_id
from bridge.store import Store
from bridge.store.states import DeliveryState, OpState
from bridge.store.tables import HistoryRow, InboxRow, OutboxRow, TaskRow
from tests.world import World

READ, WRITE, ADMIN = "tb_dl_read_0123456789", "tb_dl_write_0123456789", "tb_dl_admin_0123456789"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def token_entry(name: str, token: str, scopes: list[str]) -> dict[str, Any]:
    return {"name": name, "sha256": hashlib.sha256(token.encode()).hexdigest(), "scopes": scopes}


def with_deadletters(app: FastAPI) -> FastAPI:
    """The app with the dead-letter routes (a no-op once bridge/api/app.py includes them)."""
    try:
        app.url_path_for("list_outbox")
    except NoMatchFound:
        app.include_router(deadletters.router)
    return app


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World(("vortask", "agentkanban")).start()  # the config's connectors; never called here
    yield w
    w.stop()


@pytest_asyncio.fixture
async def daemon(world: World, tmp_path: Path) -> AsyncIterator[Daemon]:
    tokens = [
        token_entry("reader", READ, ["read"]),
        token_entry("writer", WRITE, ["read", "write"]),
        token_entry("ops", ADMIN, ["admin"]),
    ]
    cfg = config.load(world.config(tmp_path, server_tokens=tokens))
    d = Daemon(cfg, options=DaemonOptions(poll=False, serve=False))
    await d.store.migrate()
    yield d
    for conn in d.ctx.connectors.values():
        await conn.aclose()
    await d.store.close()


@pytest_asyncio.fixture
async def client(daemon: Daemon) -> AsyncIterator[httpx.AsyncClient]:
    app = with_deadletters(create_app(daemon))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as c:
        yield c


async def call(
    c: httpx.AsyncClient, method: str, path: str, token: str | None = ADMIN, **kw: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await c.request(method, path, headers=headers, **kw)


async def seed_task(store: Store, title: str) -> str:
    task_id = new_id()
    async with store.transaction() as session:
        session.add(
            TaskRow(
                id=task_id, route="main", data={"title": title}, title=title, created_at=T0, updated_at=T0
            )
        )
    return task_id


async def seed_op(store: Store, task_id: str, connector: str, state: OpState = OpState.PARKED) -> int:
    async with store.transaction() as session:
        row = OutboxRow(
            task_id=task_id,
            route="main",
            connector=connector,
            op="update",
            payload={},
            state=state,
            attempts=1,
            next_attempt_at=T0,
            last_error=f"{connector}: HTTP 401: unauthorized" if state == OpState.PARKED else None,
            observed_at=T0,
            created_at=T0,
            done_at=T0 if state in (OpState.PARKED, OpState.DONE) else None,
        )
        session.add(row)
        await session.flush()
        return row.id


async def seed_delivery(store: Store, connector: str, state: DeliveryState, key: str) -> int:
    async with store.transaction() as session:
        row = InboxRow(
            connector=connector,
            delivery_key=key,
            body="{}",
            state=state,
            attempts=5,
            error="internal error (KeyError); see the daemon log" if state == DeliveryState.FAILED else None,
            received_at=T0,
        )
        session.add(row)
        await session.flush()
        return row.id


async def op_state(store: Store, op_id: int) -> str | None:
    async with store.read() as session:
        row = await session.get(OutboxRow, op_id)
    return None if row is None else row.state


# -- scopes ------------------------------------------------------------------------------------------

ENDPOINTS = [
    ("GET", "/api/v1/outbox"),
    ("POST", "/api/v1/outbox/retry"),
    ("POST", "/api/v1/outbox/1/retry"),
    ("DELETE", "/api/v1/outbox/1"),
    ("GET", "/api/v1/inbox"),
    ("POST", "/api/v1/inbox/retry"),
    ("POST", "/api/v1/inbox/1/retry"),
    ("DELETE", "/api/v1/inbox/1"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_every_endpoint_needs_the_admin_scope(
    client: httpx.AsyncClient, daemon: Daemon, method: str, path: str
) -> None:
    task = await seed_task(daemon.store, "guarded")
    op = await seed_op(daemon.store, task, "vortask")
    delivery = await seed_delivery(daemon.store, "vortask", DeliveryState.FAILED, "k1")
    assert (op, delivery) == (1, 1)  # the ids the paths name
    assert (await call(client, method, path, None)).status_code == 401
    for token in (READ, WRITE):
        r = await call(client, method, path, token)
        assert r.status_code == 403, r.text
        assert "lacks the 'admin' scope" in r.json()["detail"]
    assert await op_state(daemon.store, op) == OpState.PARKED  # nothing happened
    assert (await call(client, method, path, ADMIN)).status_code == 200


# -- the outbox --------------------------------------------------------------------------------------


async def test_lists_parked_operations_newest_first_filtered_and_paged(
    client: httpx.AsyncClient, daemon: Daemon
) -> None:
    task = await seed_task(daemon.store, "listed")
    v1 = await seed_op(daemon.store, task, "vortask")
    a1 = await seed_op(daemon.store, task, "agentkanban")
    await seed_op(daemon.store, task, "agentkanban", OpState.DONE)
    v2 = await seed_op(daemon.store, task, "vortask")

    r = await call(client, "GET", "/api/v1/outbox")
    assert r.status_code == 200
    page = r.json()
    assert [o["id"] for o in page["operations"]] == [v2, a1, v1] and page["next_cursor"] is None
    first = page["operations"][0]
    assert (first["task_id"], first["title"], first["connector"], first["op"], first["state"]) == (
        task,
        "listed",
        "vortask",
        "update",
        "parked",
    )
    assert first["last_error"] == "vortask: HTTP 401: unauthorized"

    r = await call(client, "GET", "/api/v1/outbox?state=parked&connector=vortask")
    assert [o["id"] for o in r.json()["operations"]] == [v2, v1]
    r = await call(client, "GET", "/api/v1/outbox?limit=2")
    assert [o["id"] for o in r.json()["operations"]] == [v2, a1] and r.json()["next_cursor"] == a1
    r = await call(client, "GET", f"/api/v1/outbox?limit=2&cursor={a1}")
    assert [o["id"] for o in r.json()["operations"]] == [v1]
    assert len((await call(client, "GET", "/api/v1/outbox?state=all")).json()["operations"]) == 4
    assert len((await call(client, "GET", "/api/v1/outbox?state=done")).json()["operations"]) == 1
    for bad in ("state=broken", "limit=0", "limit=100000", "cursor=x"):
        assert (await call(client, "GET", f"/api/v1/outbox?{bad}")).status_code == 422, bad


async def test_retry_one_makes_it_pending_and_writes_history(
    client: httpx.AsyncClient, daemon: Daemon
) -> None:
    task = await seed_task(daemon.store, "retried")
    op = await seed_op(daemon.store, task, "agentkanban")
    daemon.ctx.outbox_ready.clear()

    r = await call(client, "POST", f"/api/v1/outbox/{op}/retry")

    assert r.status_code == 200, r.text
    assert r.json() == {
        "id": op,
        "ok": True,
        "state": "pending",
        "connector": "agentkanban",
        "error": None,
        "reason": None,
    }
    assert await op_state(daemon.store, op) == OpState.PENDING
    assert daemon.ctx.outbox_ready.is_set()
    history = (await call(client, "GET", f"/api/v1/tasks/{task}")).json()["history"]
    assert history[-1]["new"] == "write to agentkanban retried by ops"
    assert (history[-1]["field"], history[-1]["source"], history[-1]["via"]) == ("*", "ops", "outbox")
    assert (await call(client, "GET", "/api/v1/outbox")).json()["operations"] == []


async def test_retry_refuses_an_operation_not_parked_and_an_unknown_id(
    client: httpx.AsyncClient, daemon: Daemon
) -> None:
    task = await seed_task(daemon.store, "refused")
    done = await seed_op(daemon.store, task, "vortask", OpState.DONE)
    pending = await seed_op(daemon.store, task, "vortask", OpState.PENDING)

    r = await call(client, "POST", f"/api/v1/outbox/{done}/retry")
    assert r.status_code == 409
    assert r.json()["detail"] == (
        f"operation {done} is done, not parked: only a parked operation can be retried"
    )
    assert (await call(client, "POST", f"/api/v1/outbox/{pending}/retry")).status_code == 409
    r = await call(client, "POST", "/api/v1/outbox/987654/retry")
    assert r.status_code == 404 and r.json()["detail"] == "no outbox operation 987654"
    assert (await call(client, "POST", "/api/v1/outbox/0/retry")).status_code == 422
    assert await op_state(daemon.store, done) == OpState.DONE
    async with daemon.store.read() as session:
        assert (await session.scalars(select(HistoryRow).where(HistoryRow.task_id == task))).all() == []


async def test_retry_all_parked_optionally_of_one_connector(
    client: httpx.AsyncClient, daemon: Daemon
) -> None:
    task = await seed_task(daemon.store, "bulk")
    v = [await seed_op(daemon.store, task, "vortask") for _ in range(3)]
    a = await seed_op(daemon.store, task, "agentkanban")
    done = await seed_op(daemon.store, task, "agentkanban", OpState.DONE)

    r = await call(client, "POST", "/api/v1/outbox/retry", json={"connector": "vortask"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["done"], body["failed"]) == (3, 0)
    assert [x["id"] for x in body["results"]] == v
    assert await op_state(daemon.store, a) == OpState.PARKED

    r = await call(client, "POST", "/api/v1/outbox/retry")  # no body: every connector
    assert [x["id"] for x in r.json()["results"]] == [a]
    assert await op_state(daemon.store, done) == OpState.DONE
    assert (await call(client, "POST", "/api/v1/outbox/retry", json={})).json()["done"] == 0

    r = await call(client, "POST", "/api/v1/outbox/retry", json={"connector": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    r = await call(client, "POST", "/api/v1/outbox/retry", json={"connectr": "vortask"})
    assert r.status_code == 422


async def test_drop_deletes_a_parked_operation(client: httpx.AsyncClient, daemon: Daemon) -> None:
    task = await seed_task(daemon.store, "dropped")
    op = await seed_op(daemon.store, task, "vortask")
    pending = await seed_op(daemon.store, task, "vortask", OpState.PENDING)

    r = await call(client, "DELETE", f"/api/v1/outbox/{op}")
    assert r.status_code == 200, r.text
    assert (r.json()["ok"], r.json()["state"]) == (True, None)
    assert await op_state(daemon.store, op) is None
    assert (await call(client, "DELETE", f"/api/v1/outbox/{op}")).status_code == 404
    assert (await call(client, "POST", f"/api/v1/outbox/{op}/retry")).status_code == 404
    r = await call(client, "DELETE", f"/api/v1/outbox/{pending}")
    assert r.status_code == 409 and "is pending, not parked" in r.json()["detail"]
    assert await op_state(daemon.store, pending) == OpState.PENDING
    history = (await call(client, "GET", f"/api/v1/tasks/{task}")).json()["history"]
    assert [h["new"] for h in history] == ["write to vortask dropped by ops"]
    assert history[0]["old"] == f"update #{op} parked: vortask: HTTP 401: unauthorized"


# -- the inbox ---------------------------------------------------------------------------------------


async def test_failed_deliveries_listed_retried_and_dropped(
    client: httpx.AsyncClient, daemon: Daemon
) -> None:
    store = daemon.store
    f1 = await seed_delivery(store, "vortask", DeliveryState.FAILED, "k1")
    done = await seed_delivery(store, "vortask", DeliveryState.DONE, "k2")
    f2 = await seed_delivery(store, "agentkanban", DeliveryState.FAILED, "k3")
    f3 = await seed_delivery(store, "vortask", DeliveryState.FAILED, "k4")

    r = await call(client, "GET", "/api/v1/inbox?state=failed")
    assert r.status_code == 200
    assert [d["id"] for d in r.json()["deliveries"]] == [f3, f2, f1]
    assert r.json()["deliveries"][0]["delivery_key"] == "k4"
    assert r.json()["deliveries"][0]["error"].startswith("internal error")
    r = await call(client, "GET", "/api/v1/inbox?connector=agentkanban")
    assert [d["id"] for d in r.json()["deliveries"]] == [f2]

    daemon.ctx.inbox_ready.clear()
    r = await call(client, "POST", f"/api/v1/inbox/{f1}/retry")
    assert r.status_code == 200 and r.json()["state"] == "pending"
    assert daemon.ctx.inbox_ready.is_set()
    async with store.read() as session:
        row = await session.get(InboxRow, f1)
    assert row is not None and row.attempts == 0 and row.received_at > T0 + timedelta(days=1)

    r = await call(client, "POST", f"/api/v1/inbox/{done}/retry")
    assert r.status_code == 409 and "is done, not failed" in r.json()["detail"]
    assert (await call(client, "POST", "/api/v1/inbox/55555/retry")).status_code == 404

    r = await call(client, "POST", "/api/v1/inbox/retry", json={"connector": "agentkanban"})
    assert [x["id"] for x in r.json()["results"]] == [f2]

    assert (await call(client, "DELETE", f"/api/v1/inbox/{f3}")).status_code == 200
    assert (await call(client, "DELETE", f"/api/v1/inbox/{f3}")).status_code == 404
    assert (await call(client, "DELETE", f"/api/v1/inbox/{f1}")).status_code == 409  # pending now
    assert (await call(client, "GET", "/api/v1/inbox")).json()["deliveries"] == []
    r = await call(client, "GET", "/api/v1/inbox?state=all")
    assert sorted(d["id"] for d in r.json()["deliveries"]) == [f1, done, f2]


async def test_the_routes_are_in_the_openapi_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"get"} <= set(paths["/api/v1/outbox"])
    assert {"delete"} <= set(paths["/api/v1/outbox/{op_id}"])
    assert {"post"} <= set(paths["/api/v1/inbox/{delivery_id}/retry"])
