"""The fakes scale: a page, or a request about one task, costs the same in a big scope as in a
small one (issue 14: the memory benchmark's 100,000 tasks; a fake that filters or sorts the
whole scope per page makes listing everything quadratic).

No timings. Each check counts the Python lines executed (`sys.settrace` "line" events: every
loop iteration of a scan counts, comprehensions and generator expressions included) while the
fake's ASGI app serves the request in this thread (httpx's ASGITransport, no server), in a fake
seeded with SMALL and then BIG tasks (each with a comment, a todo or a run where the platform
has them), and asserts that the count per page (or per request, or per task listed for the
platforms without pagination) grew by less than GROWTH lines per task added to the scope. A
scan of the scope, or of its comments or todos, runs at least one line per task, so it exceeds
that; a log factor (bisection, a Fenwick tree) does not. Scans done in C (list.remove, a key-less
sort) are not counted: tests/bench/fakes_scale.py times everything, at 20,000 tasks.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

SMALL, BIG = 200, 1600
LIMIT = 20  # small pages, so a scan of the scope would dwarf the page's own work
# Lines per unit may grow by at most this much per task added (BIG - SMALL): half of what a scan
# of the scope costs at the very least (a line per task), and well above a log factor's growth.
GROWTH = 0.5


class Client:
    """A synchronous client of a fake's ASGI app in this thread (no lifespan: no webhook is
    registered in these fakes, so nothing is sent)."""

    def __init__(self, fake: Any, base: str, headers: dict[str, str]) -> None:
        self.fake = fake
        self.loop = asyncio.new_event_loop()
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=fake.app()), base_url=f"http://fake{base}", headers=headers
        )

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()

    def __call__(self, method: str, url: str, **kw: Any) -> Any:
        resp = self.loop.run_until_complete(self.http.request(method, url, **kw))
        assert 200 <= resp.status_code < 300, (method, url, resp.status_code, resp.text[:300])
        return resp.json() if resp.content else None


def lines(fn: Callable[[], Any]) -> int:
    """How many Python lines `fn()` executes (in this thread)."""
    count = 0

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(previous)
    return count


Measures = dict[str, tuple[int, int]]  # name -> (lines, units: pages, requests or tasks listed)


@contextmanager
def measuring() -> Iterator[Measures]:
    yield {}


def record(out: Measures, name: str, fn: Callable[[], Any], units: int = 1) -> None:
    total, n = out.get(name, (0, 0))
    out[name] = (total + lines(fn), n + units)


def middle(ids: list[Any]) -> Any:
    """A task in the middle that has what every tenth seeded task has (a run, a subtask)."""
    return ids[len(ids) // 20 * 10]


# -- one scenario per fake: seed n tasks, then measure pages and one-task requests -------------


def runs_scenario(n: int) -> Measures:
    from connectors.runs.fake import RunsFake

    fake = RunsFake(token="phx_scale")
    project, user = fake.projects[1], fake.user
    ids = []
    for i in range(n):
        task = fake._new_task(project, user, {"title": f"Task {i}", "description": f"body {i}"})
        if i % 10 == 0:
            fake._new_run(task, status="queued", environment="cloud")
        ids.append(task.id)
    api = Client(fake, "/api/projects/1/tasks/", {"Authorization": "Bearer phx_scale"})
    out: Measures = {}
    try:
        for query in ("archived=all", "status=queued", ""):  # all, a filter, the default filter
            api("GET", f"?limit={LIMIT}&{query}")  # the first listing of a filter reads the project once
            for offset in (0, n // 2, n - LIMIT):
                record(
                    out,
                    f"page {query}",
                    lambda o=offset, q=query: api("GET", f"?limit={LIMIT}&offset={o}&{q}"),
                )
        # a write between two pages must not make the next page re-read the project
        task = middle(ids)
        record(out, "patch", lambda: api("PATCH", f"{task}/", json={"archived": True}))
        record(out, "page after a write", lambda: api("GET", f"?limit={LIMIT}&offset={n // 2}&archived=all"))
        record(out, "start run", lambda: api("POST", f"{task}/run/", json={}))
        record(out, "page after a run", lambda: api("GET", f"?limit={LIMIT}&offset={n // 2}&status=queued"))
        record(out, "get", lambda: api("GET", f"{task}/"))
    finally:
        api.close()
    return out


def impactly_scenario(n: int) -> Measures:
    from connectors.impactly.fake import ImpactlyFake

    fake = ImpactlyFake(token="imp_scale")
    pid = fake.project_id
    ids: list[str] = []
    for i in range(n):
        fields: dict[str, Any] = {"parent_task_id": ids[-1]} if i % 10 == 5 else {"project_id": pid}
        ids.append(fake.create_task(f"Task {i}", description=f"body {i}", **fields)["id"])
        fake.add_comment(ids[-1], f"comment {i}")
    api = Client(fake, "/api/v1", {"Authorization": "Bearer imp_scale"})
    out: Measures = {}

    def cursors(path: str, params: dict[str, Any]) -> list[str | None]:
        """The cursors of the first, a middle and the last page (found without measuring)."""
        found: list[str | None] = [None]
        cursor = None
        while True:
            body = api("GET", path, params={**params, **({"cursor": cursor} if cursor else {})})
            cursor = body["next_cursor"]
            if not cursor:
                break
            found.append(cursor)
        return [found[0], found[len(found) // 2], found[-1]]

    try:
        for path, params in (
            (f"/projects/{pid}/tasks", {"limit": LIMIT}),
            ("/tasks", {"limit": LIMIT, "project_id": pid, "status": "active"}),
            ("/activity", {"limit": LIMIT, "project_id": pid}),
        ):
            for cursor in cursors(path, params):
                query = {**params, **({"cursor": cursor} if cursor else {})}
                record(out, f"page {path}", lambda p=path, q=query: api("GET", p, params=q))
        task, other = middle(ids), ids[len(ids) // 3]
        record(out, "comments", lambda: api("GET", f"/tasks/{task}/comments"))
        record(out, "agents/me", lambda: api("GET", "/agents/me"))
        record(out, "add blocker", lambda: api("POST", f"/tasks/{task}/blockers", json={"blocker_id": other}))
        record(out, "patch", lambda: api("PATCH", f"/tasks/{task}", json={"parent_task_id": other}))
        record(out, "delete", lambda: api("DELETE", f"/tasks/{other}"))
    finally:
        api.close()
    return out


def squads_scenario(n: int) -> Measures:
    from connectors.squads.fake import SquadsFake

    fake = SquadsFake(token="sq_id:sq_secret")
    user = fake.users[fake.caller_id]
    ids: list[str] = []
    for i in range(n):
        fields: dict[str, Any] = {"title": f"Task {i}"}
        if i % 10 == 5:
            fields["parent_task_id"] = ids[-1]
        task = fake._insert_task(user, fields)
        fake._replace_todos(user, task, [{"title": "todo"}])
        ids.append(task["id"])
    api = Client(fake, "/api", {"CF-Access-Client-Id": "sq_id", "CF-Access-Client-Secret": "sq_secret"})
    out: Measures = {}
    try:
        record(out, "list (per task)", lambda: api("GET", "/tasks"), units=n)
        task = middle(ids)
        record(out, "get", lambda: api("GET", f"/tasks/{task}"))
        record(out, "subtasks", lambda: api("GET", f"/tasks/{task}/subtasks"))
        record(out, "put", lambda: api("PUT", f"/tasks/{task}", json={"title": "renamed"}))
        record(out, "todos", lambda: api("PUT", f"/tasks/{task}/todos", json={"todos": [{"title": "a"}]}))
        record(out, "create", lambda: api("POST", "/tasks", json={"title": "new"}))
        record(out, "delete", lambda: api("DELETE", f"/tasks/{task}"))
    finally:
        api.close()
    return out


def agentkanban_scenario(n: int) -> Measures:
    from connectors.agentkanban.fake import AgentKanbanFake

    fake = AgentKanbanFake(token="ak_scale")
    board = fake.boards[fake.scope()]
    ids = [fake._add_task(board, board.lanes[0], f"Task {i}").id for i in range(n)]
    api = Client(fake, f"/api/ext/v1/boards/{board.id}/", {"Authorization": "Bearer ak_scale"})
    out: Measures = {}
    try:
        record(out, "list (per task)", lambda: api("GET", "tasks"), units=n)
        task = middle(ids)
        turn = {"source": "cli", "sourceId": "1", "role": "user", "content": "hi", "capturedAt": "2026-03-01"}
        record(out, "turns", lambda: api("POST", f"tasks/{task}/turns", json={"turns": [turn]}))
        record(out, "list turns", lambda: api("GET", f"tasks/{task}/turns", params={"source": "cli"}))
        record(out, "archive", lambda: api("PATCH", f"tasks/{task}", json={"archived": True}))
        lane = board.lanes[1].id
        record(out, "move", lambda: api("POST", f"tasks/{task}/move", json={"laneId": lane, "position": 0}))
        record(out, "board", lambda: api("GET", f"http://fake/api/ext/v1/boards/{board.id}"))
        record(out, "get", lambda: api("GET", f"tasks/{ids[-1]}"))
        record(out, "delete", lambda: api("DELETE", f"tasks/{ids[len(ids) // 3]}"))
    finally:
        api.close()
    return out


def vortask_scenario(n: int) -> Measures:
    from connectors.vortask import fake as fake_mcp
    from connectors.vortask.fake import Caller, VortaskFake

    fake = VortaskFake(token="vt_scale")
    project = fake.projects[1]
    owner = Caller(fake.alice, fake.tokens["vt_scale"])
    ids = []
    for i in range(n):
        task = fake.create_task(owner, project, {"title": f"Task {i}", "priority": "Medium"})
        fake.add_comment(owner, task, f"comment {i}")
        ids.append(task.id)
    api = Client(fake, "/api/projects/1", {"Authorization": "Bearer vt_scale"})
    out: Measures = {}
    try:
        record(out, "list (per task)", lambda: api("GET", "/tasks"), units=n)
        task = middle(ids)
        record(out, "put", lambda: api("PUT", f"/tasks/{task}", json={"title": "renamed"}))
        record(out, "mcp list_comments", lambda: fake_mcp._list_comments(fake, owner, {"taskId": task}))
        record(out, "mcp get_context", lambda: fake_mcp._get_context(fake, owner, {}))
        record(out, "delete", lambda: api("DELETE", f"/tasks/{task}"))
    finally:
        api.close()
    return out


SCENARIOS: dict[str, Callable[[int], Measures]] = {
    "runs": runs_scenario,
    "impactly": impactly_scenario,
    "squads": squads_scenario,
    "agentkanban": agentkanban_scenario,
    "vortask": vortask_scenario,
}


@pytest.mark.parametrize("platform", list(SCENARIOS))
def test_cost_per_page_and_per_task_request_does_not_grow_with_the_scope(platform: str) -> None:
    small, big = SCENARIOS[platform](SMALL), SCENARIOS[platform](BIG)
    grown = {}
    for name, (lines_small, units_small) in small.items():
        lines_big, units_big = big[name]
        per_small, per_big = lines_small / units_small, lines_big / units_big
        if per_big - per_small > GROWTH * (BIG - SMALL):
            grown[name] = f"{per_small:.0f} -> {per_big:.0f} lines"
    assert not grown, f"{platform}: the cost per unit grew from {SMALL} to {BIG} tasks: {grown}"


# -- the shared indexes, against plain lists ----------------------------------------------------


def test_count_tree_counts_and_selects_like_a_list() -> None:
    import random

    from connectors.fakekit import CountTree

    rng = random.Random(14)
    flags: list[bool] = []
    tree = CountTree()
    for _ in range(3000):
        if flags and rng.random() < 0.5:
            pos = rng.randrange(len(flags))
            flags[pos] = rng.random() < 0.5
            tree.set(pos, flags[pos])
        else:
            flags.append(rng.random() < 0.3)
            tree.append(flags[-1])
        if rng.random() < 0.05:
            ones = [i for i, f in enumerate(flags) if f]
            assert tree.total == len(ones) and len(tree) == len(flags)
            assert [tree.select(k) for k in range(len(ones))] == ones
            assert [tree[i] for i in range(len(flags))] == flags
    assert CountTree(flags).total == sum(flags)
    with pytest.raises(IndexError):
        tree.select(tree.total)


def test_block_list_keeps_order_like_a_list() -> None:
    import random

    from connectors.fakekit import BlockList

    rng = random.Random(14)
    plain: list[int] = []
    blocks: BlockList[int] = BlockList(block=4)  # small blocks: splits and emptied blocks happen
    for item in range(3000):
        what = rng.random()
        if plain and what < 0.35:
            gone = rng.choice(plain)
            plain.remove(gone)
            blocks.remove(gone)
        elif what < 0.7:
            index = rng.randrange(len(plain) + 3)
            plain.insert(index, item)
            blocks.insert(index, item)
        else:
            plain.append(item)
            blocks.append(item)
        if rng.random() < 0.05:
            assert list(blocks) == plain and len(blocks) == len(plain)
            assert all(x in blocks for x in plain[:20]) and -1 not in blocks
    assert list(blocks) == plain
    with pytest.raises(ValueError):
        blocks.remove(-1)
    with pytest.raises(ValueError):
        blocks.append(plain[0])
