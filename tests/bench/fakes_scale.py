"""fakes_scale: does a fake's cost per page (and per one-task request) stay flat as it grows?

Not one of `python -m tests.bench`'s benchmarks (no daemon is involved); run it on its own:

    .venv/bin/python -m tests.bench.fakes_scale [--sizes 2000,20000] [--ops 100] [--only runs,squads]

For each fake and each size N it builds a fresh fake, puts N tasks straight into its state through
the fake's own creation path (as tests/bench/seed.py does; every tenth task also gets a comment, a
run, a subtask or a todo, whatever the platform has) and times requests to the fake's ASGI app
in this process (httpx's ASGITransport: the whole app, middleware and JSON included, without the
socket, so only the fake's own cost is measured):

- `list`: listing the whole scope the way the connector does, every page (runs: limit/offset
  pages of 100 with `archived=all`; impactly: cursor pages of 100 of GET /projects/{id}/tasks and
  of the activity feed; squads, agentkanban and vortask have no pagination, so one request is
  the whole listing). `ms_per_page` is the mean time of one page, `us_per_task` the listing's
  time per task listed.
- `list_with_writes` (the paginated ones): the same walk with a write to some task between
  every two pages, as happens when the daemon pushes changes while another poll pages.
- `ops`: `--ops` requests about single tasks, spread over the scope (get, update, and the
  per-task sub-lists the connectors read: comments, subtasks, board detail, a move...);
  `ms_per_op` is their mean. Vortask's comments are MCP-only, so `mcp_list_comments` and
  `mcp_get_context` call the MCP tool handlers directly instead.

A fake that scales keeps `ms_per_page` and `ms_per_op` flat from the small size to the big one
(the `ratios` block divides big by small; about 1 is flat, about big/small is linear per page,
i.e. quadratic to list everything). After seeding, the fake's state is moved out of the cyclic
garbage collector's view (`gc.freeze()`, as a long-running process's old objects mostly are;
`--gc normal` skips that): otherwise every full collection walks the whole state, which adds a
cost that grows with N to every figure (about 1.5x per request at 20,000 tasks) that is the
collector's, not the fake's. Why not over loopback: a fake started with `Fake.start()`
answers a small response about 40 ms late (its listening socket is made without IPPROTO_TCP, so
asyncio does not set TCP_NODELAY on the connections, and Nagle meets the client's delayed ACK),
which would hide every per-request cost below that. Prints ONE JSON object on stdout (the same
envelope as the other benchmarks: figures, parameters, machine); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tests.bench.common import emit, log, now_iso

FAKES = ("runs", "impactly", "squads", "agentkanban", "vortask")


class Timer:
    def __init__(self) -> None:
        self.times: list[float] = []

    @contextmanager
    def one(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.times.append(time.perf_counter() - start)

    def ms(self) -> float:
        return round(1000 * statistics.fmean(self.times), 3) if self.times else 0.0


class InProcess:
    """A synchronous client of a fake's ASGI app, in this thread (no server, no socket)."""

    def __init__(self, fake: Any, base: str) -> None:
        self.fake = fake
        self.loop = asyncio.new_event_loop()
        transport = httpx.ASGITransport(app=fake.app())
        self.client = httpx.AsyncClient(transport=transport, base_url=f"http://fake{base}", timeout=600)
        self.headers = self.client.headers

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.client.request(method, url, **kw))

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("PUT", url, **kw)

    def patch(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("PATCH", url, **kw)

    def delete(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", url, **kw)


FREEZE = True


def _settle() -> None:
    """Called once a fake is seeded: see the module docstring (`--gc`)."""
    gc.collect()
    if FREEZE:
        gc.freeze()


def _ok(resp: httpx.Response) -> httpx.Response:
    if not 200 <= resp.status_code < 300:
        raise RuntimeError(
            f"{resp.request.method} {resp.request.url} -> {resp.status_code}: {resp.text[:300]}"
        )
    return resp


def _spread(items: list[Any], k: int) -> list[Any]:
    """k items spread evenly over the list (the first, the last and between)."""
    if len(items) <= k:
        return list(items)
    step = (len(items) - 1) / (k - 1)
    return [items[round(i * step)] for i in range(k)]


# -- per fake: seed, then measure -------------------------------------------------------------


def bench_runs(n: int, ops: int) -> dict[str, Any]:
    from connectors.runs.fake import RunsFake

    fake = RunsFake(token="phx_scale")
    project = fake.projects[1]
    user = fake.keys["phx_scale"].user
    ids = []
    for i in range(n):
        task = fake._new_task(project, user, {"title": f"Task {i}", "description": f"body {i}"})
        if i % 10 == 0:
            fake._new_run(task, status="queued", environment="cloud")
        ids.append(task.id)
    _settle()
    with InProcess(fake, "/api/projects/1/tasks/") as http:
        http.headers["Authorization"] = "Bearer phx_scale"
        sample = _spread(ids, ops)

        def walk(write: Callable[[int], None] | None) -> dict[str, Any]:
            timer, url, seen = Timer(), "?limit=100&archived=all", 0
            while url:
                with timer.one():
                    body = _ok(http.get(url)).json()
                seen += len(body["results"])
                url = body["next"]
                if write is not None and url:
                    write(len(timer.times))
            return {"pages": len(timer.times), "tasks": seen, "ms_per_page": timer.ms()}

        listing = walk(None)
        listing["us_per_task"] = round(1000 * listing["ms_per_page"] * listing["pages"] / max(1, n), 2)
        with_writes = walk(lambda i: _ok(http.patch(f"{sample[i % len(sample)]}/", json={"title": f"w{i}"})))
        get, patch, run = Timer(), Timer(), Timer()
        for task_id in sample:
            with get.one():
                _ok(http.get(f"{task_id}/"))
            with patch.one():
                _ok(http.patch(f"{task_id}/", json={"title": "renamed"}))
            with run.one():
                _ok(http.post(f"{task_id}/run/", json={}))
        return {
            "list": listing,
            "list_with_writes": with_writes,
            "ops": {"get": get.ms(), "patch": patch.ms(), "start_run": run.ms()},
        }


def bench_impactly(n: int, ops: int) -> dict[str, Any]:
    from connectors.impactly.fake import ImpactlyFake

    fake = ImpactlyFake(token="imp_scale")
    pid = fake.project_id
    ids: list[str] = []
    for i in range(n):
        parent = ids[-1] if i % 10 == 5 else None
        fields: dict[str, Any] = {"description": f"body {i}"}
        if parent:
            fields["parent_task_id"] = parent
        else:
            fields["project_id"] = pid
        task_id = fake.create_task(f"Task {i}", **fields)["id"]
        if i % 10 == 0:
            fake.add_comment(task_id, f"comment {i}")
        ids.append(task_id)
    _settle()
    with InProcess(fake, "/api/v1") as http:
        http.headers["Authorization"] = "Bearer imp_scale"
        sample = _spread(ids, ops)

        def walk(path: str, params: dict[str, Any], write: Callable[[int], None] | None) -> dict[str, Any]:
            timer, cursor, seen = Timer(), None, 0
            while True:
                query = {**params, "limit": 100, **({"cursor": cursor} if cursor else {})}
                with timer.one():
                    body = _ok(http.get(path, params=query)).json()
                seen += len(body["data"])
                cursor = body["next_cursor"]
                if not cursor:
                    break
                if write is not None:
                    write(len(timer.times))
            return {"pages": len(timer.times), "items": seen, "ms_per_page": timer.ms()}

        listing = walk(f"/projects/{pid}/tasks", {}, None)
        listing["us_per_task"] = round(1000 * listing["ms_per_page"] * listing["pages"] / max(1, n), 2)
        filtered = walk("/tasks", {"project_id": pid, "status": "active"}, None)
        activity = walk("/activity", {"project_id": pid}, None)
        with_writes = walk(
            f"/projects/{pid}/tasks",
            {},
            lambda i: _ok(http.patch(f"/tasks/{sample[i % len(sample)]}", json={"title": f"w{i}"})),
        )
        get, patch, comments, me, blockers, delete = Timer(), Timer(), Timer(), Timer(), Timer(), Timer()
        for i, task_id in enumerate(sample):
            with get.one():
                _ok(http.get(f"/tasks/{task_id}"))
            with patch.one():
                _ok(http.patch(f"/tasks/{task_id}", json={"priority": "high"}))
            with comments.one():
                _ok(http.get(f"/tasks/{task_id}/comments"))
            with me.one():
                _ok(http.get("/agents/me"))
            if i:  # a chain: each sampled task is blocked by the one before
                with blockers.one():
                    _ok(http.post(f"/tasks/{task_id}/blockers", json={"blocker_id": sample[i - 1]}))
        for task_id in sample[1::2]:
            with delete.one():
                resp = http.delete(f"/tasks/{task_id}")
                if resp.status_code != 404:  # an earlier delete took it with its parent
                    _ok(resp)
        return {
            "list": listing,
            "list_filtered": filtered,
            "activity": activity,
            "list_with_writes": with_writes,
            "ops": {
                "get": get.ms(),
                "patch": patch.ms(),
                "comments": comments.ms(),
                "agents_me": me.ms(),
                "add_blocker": blockers.ms(),
                "delete": delete.ms(),
            },
        }


def bench_squads(n: int, ops: int) -> dict[str, Any]:
    from connectors.squads.fake import SquadsFake

    fake = SquadsFake(token="sq_id:sq_secret")
    user = fake.users[fake.caller_id]
    ids: list[str] = []
    for i in range(n):
        fields: dict[str, Any] = {"title": f"Task {i}", "description": f"body {i}"}
        if i % 10 == 5:
            fields["parent_task_id"] = ids[-1]
        task = fake._insert_task(user, fields)
        if i % 10 == 0:
            fake._replace_todos(user, task, [{"title": "todo"}])
        ids.append(task["id"])
    _settle()
    with InProcess(fake, "/api") as http:
        http.headers.update({"CF-Access-Client-Id": "sq_id", "CF-Access-Client-Secret": "sq_secret"})
        sample = _spread(ids, ops)
        listing = Timer()
        with listing.one():
            count = len(_ok(http.get("/tasks", params={"squad": fake.default_squad})).json()["tasks"])
        get, put, subtasks, create, todos = Timer(), Timer(), Timer(), Timer(), Timer()
        for task_id in sample:
            with get.one():
                _ok(http.get(f"/tasks/{task_id}"))
            with put.one():
                _ok(http.put(f"/tasks/{task_id}", json={"title": "renamed"}))
            with subtasks.one():
                _ok(http.get(f"/tasks/{task_id}/subtasks"))
            with todos.one():
                _ok(http.put(f"/tasks/{task_id}/todos", json={"todos": [{"title": "one"}]}))
            with create.one():
                _ok(http.post("/tasks", json={"title": "new"}))
        return {
            "list": {
                "pages": 1,
                "tasks": count,
                "ms_per_page": listing.ms(),
                "us_per_task": round(1000 * listing.ms() / max(1, count), 2),
            },
            "ops": {
                "get": get.ms(),
                "put": put.ms(),
                "subtasks": subtasks.ms(),
                "put_todos": todos.ms(),
                "create": create.ms(),
            },
        }


def bench_agentkanban(n: int, ops: int) -> dict[str, Any]:
    from connectors.agentkanban.fake import AgentKanbanFake

    fake = AgentKanbanFake(token="ak_scale")
    board = fake.boards[fake.scope()]
    lane = board.lanes[0]
    ids = [fake._add_task(board, lane, f"Task {i}").id for i in range(n)]
    _settle()
    with InProcess(fake, f"/api/ext/v1/boards/{board.id}") as http:
        http.headers["Authorization"] = "Bearer ak_scale"
        sample = _spread(ids, ops)
        listing = Timer()
        with listing.one():
            count = len(_ok(http.get("/tasks")).json()["data"])
        get, patch, move, detail, turns = Timer(), Timer(), Timer(), Timer(), Timer()
        for i, task_id in enumerate(sample):
            with get.one():
                _ok(http.get(f"/tasks/{task_id}"))
            with patch.one():
                _ok(http.patch(f"/tasks/{task_id}", json={"archived": i % 2 == 0}))
            with move.one():
                target = board.lanes[1 + i % 3].id
                _ok(http.post(f"/tasks/{task_id}/move", json={"laneId": target, "position": 0}))
            with detail.one():
                _ok(http.get(f"http://fake/api/ext/v1/boards/{board.id}"))
            with turns.one():
                _ok(http.get(f"/tasks/{task_id}/turns"))
        delete = Timer()
        for task_id in sample[::2]:
            with delete.one():
                _ok(http.delete(f"/tasks/{task_id}"))
        return {
            "list": {
                "pages": 1,
                "tasks": count,
                "ms_per_page": listing.ms(),
                "us_per_task": round(1000 * listing.ms() / max(1, count), 2),
            },
            "ops": {
                "get": get.ms(),
                "patch": patch.ms(),
                "move": move.ms(),
                "board_detail": detail.ms(),
                "turns": turns.ms(),
                "delete": delete.ms(),
            },
        }


def bench_vortask(n: int, ops: int) -> dict[str, Any]:
    from connectors.vortask import fake as fake_mcp
    from connectors.vortask.fake import Caller, VortaskFake

    fake = VortaskFake(token="vt_scale")
    project = fake.projects[1]
    owner = Caller(fake.alice, fake.tokens["vt_scale"])
    ids = []
    for i in range(n):
        task = fake.create_task(owner, project, {"title": f"Task {i}", "priority": "Medium"})
        if i % 10 == 0:
            fake.add_comment(owner, task, f"comment {i}")
        ids.append(task.id)
    _settle()
    with InProcess(fake, "/api/projects/1") as http:
        http.headers["Authorization"] = "Bearer vt_scale"
        sample = _spread(ids, ops)
        listing = Timer()
        with listing.one():
            count = len(_ok(http.get("/tasks")).json())
        get, put, comments, context = Timer(), Timer(), Timer(), Timer()
        for task_id in sample:
            with get.one():
                _ok(http.get(f"/tasks/{task_id}"))
            with put.one():
                _ok(http.put(f"/tasks/{task_id}", json={"title": "renamed"}))
            with comments.one():
                fake_mcp._list_comments(fake, owner, {"taskId": task_id})
            with context.one():
                fake_mcp._get_context(fake, owner, {})
        delete = Timer()
        for task_id in sample[::2]:
            with delete.one():
                _ok(http.delete(f"/tasks/{task_id}"))
        return {
            "list": {
                "pages": 1,
                "tasks": count,
                "ms_per_page": listing.ms(),
                "us_per_task": round(1000 * listing.ms() / max(1, count), 2),
            },
            "ops": {
                "get": get.ms(),
                "put": put.ms(),
                "mcp_list_comments": comments.ms(),
                "mcp_get_context": context.ms(),
                "delete": delete.ms(),
            },
        }


BENCHES: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "runs": bench_runs,
    "impactly": bench_impactly,
    "squads": bench_squads,
    "agentkanban": bench_agentkanban,
    "vortask": bench_vortask,
}


def _ratios(small: dict[str, Any], big: dict[str, Any]) -> dict[str, Any]:
    """big / small for every per-page and per-op figure (1.0 is flat)."""
    out: dict[str, Any] = {}
    for section, values in big.items():
        before = small.get(section, {})
        for name, value in values.items():
            if name in ("ms_per_page", "us_per_task") or section == "ops":
                key = f"{section}.{name}" if section != "ops" else f"ops.{name}"
                if before.get(name):
                    out[key] = round(value / before[name], 2)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.fakes_scale", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--sizes", default="2000,20000", help="comma-separated task counts (default 2000,20000)"
    )
    parser.add_argument("--ops", type=int, default=100, help="single-task requests per size (default 100)")
    parser.add_argument("--only", default=",".join(FAKES), help="comma-separated fakes (default: all five)")
    parser.add_argument(
        "--gc", choices=("frozen", "normal"), default="frozen", help="freeze the seeded state (default)"
    )
    args = parser.parse_args(argv)
    global FREEZE
    FREEZE = args.gc == "frozen"
    sizes = [int(s) for s in args.sizes.split(",") if s]
    names = [s for s in args.only.split(",") if s]
    started = now_iso()
    figures: dict[str, Any] = {}
    for name in names:
        figures[name] = {}
        for n in sizes:
            log(f"{name}: {n} tasks")
            t0 = time.perf_counter()
            figures[name][str(n)] = BENCHES[name](n, args.ops)
            gc.unfreeze()
            gc.collect()
            log(f"{name}: {n} tasks done in {time.perf_counter() - t0:.1f} s")
        if len(sizes) >= 2:
            figures[name]["ratios"] = _ratios(figures[name][str(sizes[0])], figures[name][str(sizes[-1])])
    return emit(
        "fakes_scale",
        quick=False,
        started=started,
        params={"sizes": sizes, "ops": args.ops, "fakes": names, "gc": args.gc},
        figures=figures,
    )


if __name__ == "__main__":
    main()
