"""The unified API's task filters, in-process (the app over ASGI, the daemon's engine and store
without its scheduler), on SQLite and PostgreSQL: each filter finds the right tasks after creates
and after patches, through the same engine path the API uses, and a page costs a fixed number of
SQL statements whatever its size."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import event

from bridge import config
from bridge.api.app import create_app
from bridge.daemon import Daemon, DaemonOptions
from tests.conftest import drop_pg_database, fresh_pg_database, pg_url_or_skip
from tests.world import World

TOKEN = "tb_filters_token_0123456789"


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World(("vortask", "impactly")).start()
    yield w
    w.stop()


class Api:
    def __init__(self, daemon: Daemon, client: httpx.AsyncClient) -> None:
        self.daemon = daemon
        self.client = client
        self.statements: list[str] = []

    async def make(self, title: str, **fields: Any) -> str:
        r = await self.client.post("/api/v1/tasks", json={"route": "main", "title": title, **fields})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def patch(self, task_id: str, **fields: Any) -> None:
        r = await self.client.patch(f"/api/v1/tasks/{task_id}", json=fields)
        assert r.status_code == 200, r.text

    async def page(self, **params: Any) -> dict[str, Any]:
        r = await self.client.get("/api/v1/tasks", params=params)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def titles(self, **params: Any) -> list[str]:
        """Every title the filter finds, walking the pages (newest first)."""
        out: list[str] = []
        cursor = None
        while True:
            page = await self.page(**params, **({"cursor": cursor} if cursor else {}))
            out += [t["title"] for t in page["tasks"]]
            cursor = page["next_cursor"]
            if not cursor:
                return out


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def api(request: pytest.FixtureRequest, world: World, tmp_path: Path) -> AsyncIterator[Api]:
    dropped: tuple[str, str] | None = None
    url = f"sqlite+aiosqlite:///{tmp_path}/api.db"
    if request.param == "postgres":
        server = pg_url_or_skip()
        url, name = await fresh_pg_database(server)
        dropped = (server, name)
    token = {"name": "t", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest(), "scopes": ["read", "write"]}
    cfg = config.load(world.config(tmp_path, store_url=url, server_tokens=[token]))
    daemon = Daemon(cfg, options=DaemonOptions(poll=False, serve=False))
    await daemon.store.migrate()
    app = create_app(daemon)
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers) as client:
            out = Api(daemon, client)

            def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
                out.statements.append(statement)

            event.listen(daemon.store.engine.sync_engine, "before_cursor_execute", count)
            yield out
    finally:
        for conn in daemon.ctx.connectors.values():
            await conn.aclose()
        await daemon.store.close()
        if dropped:
            await drop_pg_database(*dropped)


async def test_each_filter_finds_its_tasks_after_creates_and_patches(api: Api) -> None:
    a = await api.make("a", priority="high", tags=["x", "y"], assignees=["alice"])
    b = await api.make("b", priority="low", tags=["y"], assignees=["alice", "bob"], status="in_progress")
    c = await api.make("c", tags=["z"])
    await api.make("d", priority="high", assignees=["bob"])
    assert await api.titles(tag="y") == ["b", "a"]
    assert await api.titles(tag="z") == ["c"]
    assert await api.titles(tag="nope") == []
    assert await api.titles(assignee="alice") == ["b", "a"]
    assert await api.titles(assignee="bob") == ["d", "b"]
    assert await api.titles(priority="high") == ["d", "a"]
    assert await api.titles(priority="none") == ["c"]
    assert await api.titles(status="in_progress") == ["b"]
    assert await api.titles(tag="y", assignee="bob") == ["b"]
    assert await api.titles(tag="y", priority="high", assignee="alice") == ["a"]
    assert await api.titles(tag="y", status="todo") == ["a"]
    # No match: a value nobody has on either side (answered by a probe), or both held but by
    # different tasks (the query's own work).
    assert await api.titles(tag="y", assignee="nobody") == []
    assert await api.titles(tag="nope", assignee="bob") == []
    assert await api.titles(tag="x", assignee="bob") == []

    # Patches move tasks in and out of each filter (and to the front: newest first).
    await api.patch(a, tags=["z"], assignees=["bob"], priority="urgent")
    await api.patch(c, tags=[], status="done", priority="high")
    await api.patch(b, assignees=[])
    assert await api.titles(tag="y") == ["b"]
    assert await api.titles(tag="z") == ["a"]
    assert await api.titles(tag="x") == []
    assert await api.titles(assignee="alice") == []
    assert await api.titles(assignee="bob") == ["a", "d"]
    assert await api.titles(priority="high") == ["c", "d"]
    assert await api.titles(priority="urgent") == ["a"]
    assert await api.titles(status="done") == ["c"]
    assert await api.titles(tag="z", assignee="bob", priority="urgent") == ["a"]
    # A patch that changes nothing the index holds (title) still moves the task to the front.
    await api.patch(b, title="b2")
    assert await api.titles(tag="y") == ["b2"]
    assert (await api.titles())[:2] == ["b2", "c"]

    # A deleted task leaves every filter.
    assert (await api.client.delete(f"/api/v1/tasks/{a}")).status_code == 204
    assert await api.titles(tag="z") == []
    assert await api.titles(assignee="bob") == ["d"]

    # The response shape is what it was: every field, from the task's data.
    full = (await api.page(tag="y"))["tasks"][0]
    assert full["tags"] == ["y"] and full["assignees"] == [] and full["priority"] == "low"
    assert full["links"] is None and full["history"] is None


async def test_filtered_pages_walk_every_match_once_in_order(api: Api) -> None:
    made = [
        await api.make(f"p{i}", tags=["paging"] + (["odd"] if i % 2 else []), assignees=["alice"])
        for i in range(11)
    ]
    await api.make("other", tags=["elsewhere"])
    newest_first = [f"p{i}" for i in reversed(range(11))]
    for params in ({"tag": "paging"}, {"assignee": "alice"}, {"tag": "paging", "assignee": "alice"}):
        for limit in (1, 3, 11, 50):
            assert await api.titles(**params, limit=limit) == newest_first, (params, limit)
    assert await api.titles(tag="odd", limit=2) == [t for t in newest_first if int(t[1:]) % 2]
    # A full page has a cursor even when nothing follows (an empty page then), as before.
    page = await api.page(tag="paging", limit=11)
    assert len(page["tasks"]) == 11 and page["next_cursor"]
    assert await api.page(tag="paging", cursor=page["next_cursor"]) == {"tasks": [], "next_cursor": None}
    # updated_since narrows a tag filter too.
    after = (await api.page(tag="paging", limit=4))["tasks"][-1]["updated_at"]
    assert len((await api.page(tag="paging", updated_since=after))["tasks"]) == 4
    assert made


async def test_a_page_costs_the_same_few_statements_whatever_its_size(api: Api) -> None:
    for i in range(30):
        await api.make(f"t{i}", tags=["all"], assignees=["alice"], priority="high")
    filters: list[dict[str, Any]] = [
        {},
        {"tag": "all"},
        {"assignee": "alice"},
        {"priority": "high", "status": "todo"},
        {"tag": "all", "assignee": "alice", "priority": "high", "route": "main", "q": "t"},
        {"tag": "none-such"},
    ]
    for params in filters:
        counts = []
        for limit in (1, 10, 30):
            api.statements.clear()
            page = await api.page(**params, limit=limit)
            assert len(page["tasks"]) == (0 if params.get("tag") == "none-such" else limit)
            counts.append(len(api.statements))
        # One SELECT (plus SQLite's BEGIN, and with a tag and an assignee, the probe of the
        # second): no per-row query, no re-query to fill a page.
        bound = 3 if {"tag", "assignee"} <= params.keys() else 2
        assert counts[0] == counts[1] == counts[2] <= bound, (params, counts, api.statements)
    task_id = (await api.page(limit=1))["tasks"][0]["id"]
    api.statements.clear()
    assert (await api.client.get(f"/api/v1/tasks/{task_id}")).status_code == 200
    assert len(api.statements) <= 4, api.statements  # the task, its links, its history (+ BEGIN)
