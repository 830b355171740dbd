"""`/mcp` (bridge/api/mcp.py) over real HTTP with the `mcp` SDK's own client, against a real daemon
and the five fake platforms (tests/api/test_api.py's fixtures): the tools listed, each one called,
changes reaching the platforms, the scopes enforced per tool, and 401 without a token. `plan` runs
against a quiet daemon of its own (two fakes, no webhooks, an hourly poll), so that what it shows
is not made meanwhile by the daemon's own sync."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent
from sqlalchemy import select

from bridge.store import Store
from bridge.store.states import OpState
from bridge.store.tables import ConflictRow, OutboxRow, TaskRow
from connectors.fakekit import free_port
from tests import ops
from tests.api import test_api
from tests.api.test_api import ADMIN, ALL, READ, SCRIBE, WRITE, _store_url, token_entry
from tests.e2e.conftest import DaemonProcess, wait_until
from tests.engine.test_engine import writes
from tests.world import World

# test_api's module-scoped fixtures: the five fakes and a daemon with the tokens reader, writer,
# ops (admin) and scribe (write only), started once for this module.
world = test_api.world
daemon = test_api.daemon

TOOLS = {
    "search_tasks",
    "list_tasks",
    "get_task",
    "create_task",
    "update_task",
    "comment_task",
    "list_conflicts",
    "resolve_conflict",
    "list_parked_writes",
    "retry_parked_write",
    "drop_parked_write",
    "plan",
}


@asynccontextmanager
async def mcp_session(d: DaemonProcess, token: str) -> AsyncIterator[ClientSession]:
    """An initialized SDK client session on the daemon's /mcp, sending `token`."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(d.url + "/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def text(result: CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


async def call(session: ClientSession, tool: str, **arguments: Any) -> Any:
    """A tool's answer as JSON; fails the test on a tool error."""
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, text(result)
    return json.loads(text(result))


async def refused(session: ClientSession, tool: str, **arguments: Any) -> str:
    """A tool error's message; fails the test if the tool succeeded."""
    result = await session.call_tool(tool, arguments)
    assert result.is_error, text(result)
    return text(result)


# -- the endpoint ----------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "nope"])
def test_mcp_without_a_valid_token_gets_401(daemon: DaemonProcess, token: str | None) -> None:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    r = httpx.post(daemon.url + "/mcp", json=body, headers=headers, timeout=10)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


def test_mcp_is_post_only(daemon: DaemonProcess) -> None:
    # Stateless: no stream to open (GET), no session to end (DELETE).
    headers = {"Authorization": f"Bearer {READ}", "Accept": "text/event-stream"}
    for method in ("GET", "DELETE"):
        r = httpx.request(method, daemon.url + "/mcp", headers=headers, timeout=10)
        assert r.status_code == 405 and r.headers["allow"] == "POST"


async def test_every_tool_is_listed_with_a_description_and_a_schema(daemon: DaemonProcess) -> None:
    async with mcp_session(daemon, READ) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and len(tool.description) > 40, tool.name
        assert tool.input_schema["type"] == "object", tool.name
    assert tools["create_task"].input_schema["required"] == ["route", "title"]
    assert "status" in tools["create_task"].input_schema["properties"]
    assert tools["get_task"].input_schema["required"] == ["id"]
    assert "Needs the `write` scope." in (tools["update_task"].description or "")
    assert "\n" not in (tools["update_task"].description or "")
    assert "only the `read` scope" in (tools["plan"].description or "")
    assert tools["plan"].annotations is not None and tools["plan"].annotations.read_only_hint
    assert "required" not in tools["plan"].input_schema  # every route when none is named
    assert {"counts", "writes", "links", "errors"} <= set(tools["plan"].output_schema["properties"])


async def test_a_modern_client_connects_too(daemon: DaemonProcess) -> None:
    # mcp.Client (mode "auto") probes server/discover at the newest protocol first.
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {READ}"}, timeout=30) as http:
        async with Client(streamable_http_client(daemon.url + "/mcp", http_client=http)) as client:
            result = await client.call_tool("list_tasks", {"limit": 1})
    assert not result.is_error, text(result)
    assert "tasks" in json.loads(text(result))


# -- tasks -----------------------------------------------------------------------------------------


async def test_create_update_comment_get_and_search_through_mcp(daemon: DaemonProcess, world: World) -> None:
    async with mcp_session(daemon, WRITE) as session:
        task = await call(
            session, "create_task", route="main", title="mcp made", priority="high", tags=["mcp"]
        )
        assert task["title"] == "mcp made" and task["priority"] == "high"
        assert task["history"][0]["source"] == "api:writer"  # the token's name is the actor
        vt = wait_until(lambda: ops.view(world, "vortask").get("mcp made"), what="the copy on vortask")
        assert (vt["priority"], vt["tags"]) == ("high", {"mcp"})

        changed = await call(
            session, "update_task", id=task["id"], fields={"status": "in_progress", "due_date": "2026-11-30"}
        )
        assert changed["status"] == "in_progress" and changed["due_date"] == "2026-11-30"
        wait_until(
            lambda: ops.view(world, "squads")["mcp made"]["status"] == "in_progress",
            what="the update on squads",
        )

        comment = await call(session, "comment_task", id=task["id"], body="said through MCP")
        assert comment["author"] == "writer"
        ak = wait_until(
            lambda: ops.view(world, "agentkanban").get("mcp made"), what="the copy on agentkanban"
        )
        wait_until(
            lambda: any("said through MCP" in c for c in ops.comments(world, "agentkanban", ak["id"])),
            what="the comment on agentkanban",
        )

        for _ in range(240):  # every copy linked (get_task is async: no wait_until)
            full = await call(session, "get_task", id=task["id"])
            if sum(1 for lk in full["links"] if lk["state"] == "active") == len(ALL):
                break
            await anyio.sleep(0.25)
        else:
            raise AssertionError(f"not linked everywhere: {full['links']}")
        assert {lk["platform"] for lk in full["links"]} == set(ALL)
        vt_link = next(lk for lk in full["links"] if lk["connector"] == "vortask")
        assert vt_link["remote_id"] == vt["id"] and vt_link["state"] == "active"
        assert {"connector", "platform", "scope", "remote_id", "remote_url", "state"} <= set(vt_link)
        assert [h["field"] for h in full["history"]][:1] == ["*"]  # created, oldest first
        assert any(h["field"] == "status" and h["source"] == "api:writer" for h in full["history"])
        assert (await call(session, "get_task", id=task["id"], history_limit=1))["history"] == full[
            "history"
        ][-1:]

        found = await call(session, "search_tasks", query="MCP MADE")  # ignoring case
        assert [t["id"] for t in found["tasks"]] == [task["id"]]
        assert (await call(session, "search_tasks", query="mcp made", status="done"))["tasks"] == []
        assert (await call(session, "search_tasks", query="mcp made", route="nope"))["tasks"] == []
        listed = await call(session, "list_tasks", tag="mcp", status="in_progress")
        assert [t["id"] for t in listed["tasks"]] == [task["id"]]
        assert listed["tasks"][0]["links"] is None  # a listing, as the API's

        assert "no such task" in await refused(session, "get_task", id="01JD3XK2Q4W6Y8Z0A2C4E6G8J0")
        assert "no such task" in await refused(session, "update_task", id="nope", fields={"title": "x"})
        assert "no route 'nope'" in await refused(session, "create_task", route="nope", title="x")
        assert "title" in await refused(session, "update_task", id=task["id"], fields={"title": None})
        assert "bad cursor" in await refused(session, "list_tasks", cursor="!!")
        assert "NUL" in await refused(session, "create_task", route="main", title="a\x00b")


async def test_scopes_are_enforced_per_tool(daemon: DaemonProcess) -> None:
    async with mcp_session(daemon, READ) as session:
        message = await refused(session, "create_task", route="main", title="read only")
        assert "this token lacks the 'write' scope" in message
        for tool, args in [
            ("update_task", {"id": "x", "fields": {}}),
            ("comment_task", {"id": "x", "body": "x"}),
            ("resolve_conflict", {"id": 1, "choose": "bridge"}),
        ]:
            assert "lacks the 'write' scope" in await refused(session, tool, **args)
        for tool, args in [("list_parked_writes", {}), ("retry_parked_write", {"id": 1})]:
            assert "lacks the 'admin' scope" in await refused(session, tool, **args)
        assert "tasks" in await call(session, "list_tasks")
    async with mcp_session(daemon, WRITE) as session:
        assert "lacks the 'admin' scope" in await refused(session, "drop_parked_write", id=1)
    async with mcp_session(daemon, SCRIBE) as session:  # write without read: the id, nothing read back
        made = await call(session, "create_task", route="main", title="mcp blind")
        assert set(made) == {"id"}
        assert "lacks the 'read' scope" in await refused(session, "get_task", id=made["id"])
    async with mcp_session(daemon, ADMIN) as session:  # admin implies the others
        assert (await call(session, "get_task", id=made["id"]))["history"][0]["source"] == "api:scribe"


# -- conflicts and parked writes ---------------------------------------------------------------------


@asynccontextmanager
async def store(d: DaemonProcess) -> AsyncIterator[Store]:
    s = Store.open(_store_url(d))
    try:
        yield s
    finally:
        await s.close()


async def test_conflicts_listed_and_resolved(daemon: DaemonProcess) -> None:
    async with mcp_session(daemon, WRITE) as session:
        task = await call(session, "create_task", route="main", title="mcp contested")
        async with store(daemon) as s, s.transaction() as t:
            t.add(
                ConflictRow(
                    task_id=task["id"],
                    route="main",
                    field="title",
                    state="open",
                    candidates={"bridge": "mcp contested", "squads": "mcp contested (squads)"},
                    created_at=datetime.now(UTC),
                )
            )
        listed = await call(session, "list_conflicts")
        conflict = next(c for c in listed["conflicts"] if c["task_id"] == task["id"])
        assert conflict["title"] == "mcp contested" and conflict["field"] == "title"
        assert {x["side"] for x in conflict["sides"]} == {"bridge", "squads"}
        assert "choose one of" in await refused(
            session, "resolve_conflict", id=conflict["id"], choose="nobody"
        )
        resolved = await call(session, "resolve_conflict", id=conflict["id"], choose="squads")
        assert resolved["state"] == "resolved" and resolved["resolution"]["by"] == "api:writer"
        assert (await call(session, "get_task", id=task["id"]))["title"] == "mcp contested (squads)"
        assert "already resolved" in await refused(
            session, "resolve_conflict", id=conflict["id"], choose="squads"
        )
        assert "no such conflict" in await refused(session, "resolve_conflict", id=2**40, choose="squads")
        gone = await call(session, "list_conflicts")
        assert all(c["id"] != conflict["id"] for c in gone["conflicts"])
        done = await call(session, "list_conflicts", state="resolved")
        assert any(c["id"] == conflict["id"] for c in done["conflicts"])


async def test_parked_writes_listed_retried_and_dropped_by_admin(daemon: DaemonProcess) -> None:
    async with mcp_session(daemon, WRITE) as session:
        task = await call(session, "create_task", route="main", title="mcp parked")
    now = datetime.now(UTC)
    ids = []
    async with store(daemon) as s, s.transaction() as t:
        for connector, state in (
            ("runs", OpState.PARKED),
            ("impactly", OpState.PARKED),
            ("squads", OpState.DONE),
        ):
            row = OutboxRow(
                task_id=task["id"],
                route="main",
                connector=connector,
                op="update",
                payload={},
                state=state,
                attempts=5,
                next_attempt_at=now,
                last_error=f"{connector}: HTTP 422: refused",
                observed_at=now,
                created_at=now,
                done_at=now,
            )
            t.add(row)
            await t.flush()
            ids.append(row.id)
    retry_id, drop_id, done_id = ids
    async with mcp_session(daemon, ADMIN) as session:
        parked = await call(session, "list_parked_writes")
        mine = {op["id"]: op for op in parked["operations"] if op["task_id"] == task["id"]}
        assert set(mine) == {retry_id, drop_id}
        assert (
            mine[retry_id]["last_error"] == "runs: HTTP 422: refused" and mine[retry_id]["state"] == "parked"
        )
        only_runs = await call(session, "list_parked_writes", connector="runs")
        assert {op["connector"] for op in only_runs["operations"]} == {"runs"}

        retried = await call(session, "retry_parked_write", id=retry_id)
        assert retried["ok"] and retried["state"] == "pending" and retried["connector"] == "runs"
        dropped = await call(session, "drop_parked_write", id=drop_id)
        assert dropped["ok"] and dropped["state"] is None
        left = await call(session, "list_parked_writes")
        assert not {op["id"] for op in left["operations"]} & {drop_id}
        assert f"no outbox operation {drop_id}" in await refused(session, "retry_parked_write", id=drop_id)
        assert f"{done_id} is done, not parked" in await refused(session, "drop_parked_write", id=done_id)
        history = (await call(session, "get_task", id=task["id"], history_limit=100))["history"]
        notes = [h["new"] for h in history if h["field"] == "*"]
        assert "write to runs retried by ops" in notes and "write to impactly dropped by ops" in notes


# -- plan --------------------------------------------------------------------------------------------

QUIET = ("vortask", "squads")


@pytest.fixture(scope="module")
def quiet_world() -> Iterator[World]:
    w = World(QUIET).start()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def quiet(quiet_world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon that syncs nothing by itself once its first poll is done (no webhooks, polls an
    hour apart), with one task synced by then: what is made on a fake afterwards is what a plan
    has to show, and the store is not a new one (which re-adoption would list first)."""
    tmp = tmp_path_factory.mktemp("plan")
    port = free_port()
    tokens = [token_entry("reader", READ, ["read"]), token_entry("scribe", SCRIBE, ["write"])]
    path = quiet_world.config(
        tmp,
        port=port,
        poll_interval="1h",
        server_tokens=tokens,
        extra_connector={p: {"max_retries": 0} for p in QUIET},  # a refused read fails at once
    )
    ops.create(quiet_world, "vortask", "synced before")
    d = DaemonProcess(path, port, tmp / "daemon.log").start()

    def synced() -> bool:
        if not all(c["last_poll"] for c in test_api.api(d, "GET", "/api/v1/connectors").json()):
            return False
        [task] = test_api.api(d, "GET", "/api/v1/tasks").json()["tasks"]
        links = test_api.api(d, "GET", f"/api/v1/tasks/{task['id']}").json()["links"]
        return sum(1 for lk in links if lk["state"] == "active") == len(QUIET)

    wait_until(synced, what="the first poll, and its task on both fakes")
    yield d
    d.kill()


def _untouched(world: World) -> dict[str, Any]:
    """What would show a write: each fake's write requests, and its tasks."""
    return {p: (writes(f), ops.view(world, p)) for p, f in world.fakes.items()}


def _what(plan: dict[str, Any]) -> list[tuple[str, str, str]]:
    """A plan's writes without their ids (a task first seen gets a new one each plan)."""
    return sorted((w["connector"], w["op"], w["title"]) for w in plan["writes"])


async def test_plan_shows_a_read_token_the_next_syncs_creates_and_writes_nothing(
    quiet: DaemonProcess, quiet_world: World
) -> None:
    ops.create(quiet_world, "vortask", "planned over mcp", priority="high")
    before = _untouched(quiet_world)
    async with mcp_session(quiet, READ) as session:
        plan = await call(session, "plan")
        assert _what(await call(session, "plan", routes=["main"])) == _what(plan)
    assert _untouched(quiet_world) == before, "the plan wrote to a platform"
    assert set(plan) == {"counts", "writes", "links", "held_apart", "already_queued", "errors"}
    assert plan["errors"] == [] and plan["links"] == [] and plan["already_queued"] == {}
    [create] = plan["writes"]
    assert (create["connector"], create["op"], create["title"]) == ("squads", "create", "planned over mcp")
    assert create["scope"] == quiet_world.scopes["squads"]
    assert plan["counts"] == {"squads": {"create": 1}}
    async with store(quiet) as s, s.read() as session:  # the daemon's store is only read
        assert (await session.scalars(select(TaskRow.title))).all() == ["synced before"]
        assert (await session.scalars(select(OutboxRow).where(OutboxRow.state != OpState.DONE))).all() == []


async def test_plan_refuses_an_unknown_route_and_a_token_without_read(quiet: DaemonProcess) -> None:
    async with mcp_session(quiet, READ) as session:
        message = await refused(session, "plan", routes=["main", "nope"])
        assert message.endswith("no route 'nope'; the config has main"), message
    async with mcp_session(quiet, SCRIBE) as session:
        assert "lacks the 'read' scope" in await refused(session, "plan")


async def test_one_plan_at_a_time(quiet: DaemonProcess, quiet_world: World) -> None:
    quiet_world.fakes["vortask"].faults.latency = 0.5  # each plan takes a while
    answers: list[CallToolResult] = []

    async def ask() -> None:
        async with mcp_session(quiet, READ) as session:
            answers.append(await session.call_tool("plan", {}))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            tg.start_soon(ask)
    finally:
        quiet_world.fakes["vortask"].faults.reset()
    assert sorted(a.is_error for a in answers) == [False, True]
    busy = next(a for a in answers if a.is_error)
    assert "a plan is already running" in text(busy)
    async with mcp_session(quiet, READ) as session:  # and once it is done, the next one runs
        assert "writes" in await call(session, "plan")


async def test_a_platform_down_is_in_the_plans_errors(quiet: DaemonProcess, quiet_world: World) -> None:
    quiet_world.fakes["squads"].faults.error_rate = 1.0
    try:
        async with mcp_session(quiet, READ) as session:
            plan = await call(session, "plan")  # a plan, not a tool error
    finally:
        quiet_world.fakes["squads"].faults.reset()
    assert plan["errors"] and all("squads" in e for e in plan["errors"]), plan["errors"]
    connectors = test_api.api(quiet, "GET", "/api/v1/connectors").json()
    squads = next(c for c in connectors if c["name"] == "squads")
    assert squads["healthy"] and squads["last_error"] is None  # the plan's failed poll is not the daemon's
