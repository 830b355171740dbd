"""api: the unified API's list and get, with a big store, on SQLite and PostgreSQL.

The store is filled directly (storefill: 5 links and 2 history rows per task, as a synced task
has), then the daemon starts on it and serves. Its links name a scope no route member syncs, so
the daemon's polls leave them alone and the API is what is measured. A separate load-generator
process (raw_client "load") makes the requests: at concurrency 1 for latency, at concurrency 8
for throughput (requests/s) and latency under load.

Requests:
- list_first: GET /api/v1/tasks?limit=50 (the newest page)
- list_deep: GET /api/v1/tasks?limit=50&cursor=... (pages 2..21, cursors walked beforehand)
- list_status: GET /api/v1/tasks?status=in_progress&limit=50 (an indexed-column filter)
- list_priority: GET /api/v1/tasks?priority=urgent&limit=50 (an indexed-column filter)
- list_tag: GET /api/v1/tasks?tag=t3&limit=50 (a side-table filter, 1 task in 17)
- list_tag_none: GET /api/v1/tasks?tag=nonexistent&limit=50 (a filter nothing matches)
- list_assignee: GET /api/v1/tasks?assignee=alice&limit=50 (a side-table filter, 1 task in 3)
- list_assignee_none: GET /api/v1/tasks?assignee=nobody&limit=50 (nothing matches)
- list_combined_none: GET /api/v1/tasks?tag=t3&priority=urgent&assignee=nobody&limit=50
- get: GET /api/v1/tasks/{id} (with links and history), random ids

Beside the latencies: the CPU each request cost the daemon, and on PostgreSQL the server, over all
the loads (CPU time from /proc, of the daemon and of every `postgres` process on the machine, the
exited backends included): figures the other tenants of a shared machine move far less than a
latency. TASKBRIDGE_BENCH_API_BACKENDS=postgresql (or sqlite) measures one database alone.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import httpx

from tests.bench.common import ALL, API_TOKEN, log, summary
from tests.bench.propagation import run_raw
from tests.bench.storefill import LinkSpec, Postgres, fill_sync

STATUSES = ("todo", "in_progress", "blocked", "done", "cancelled")
PRIORITIES = ("none", "low", "medium", "high", "urgent")


def _data(i: int) -> dict[str, Any]:
    return {
        "title": f"api task {i}: reconcile the ledger for account {i % 977}",
        "description": f"Task {i}. " + "Some words about what needs doing. " * 4,
        "status": STATUSES[i % 5],
        "priority": PRIORITIES[(i // 5) % 5],
        "assignees": ["alice"] if i % 3 == 0 else [],
        "tags": ["ops", f"t{i % 17}"],
        "due_date": None,
        "start_date": None,
        "parent": None,
        "archived": False,
    }


def _links() -> list[LinkSpec]:
    return [
        LinkSpec(
            connector=p,
            scope="bench-archive",  # no route member syncs this scope: polls leave these alone
            remote_id=lambda i, p=p: f"{p}-{i}",
            base=lambda i: {"title": f"api task {i}", "status": STATUSES[i % 5]},
            is_mirror=p != "vortask",
        )
        for p in ALL
    ]


def _postgres_cpu_seconds() -> float:
    """User + system CPU of every `postgres` process, with their reaped children's (the backends
    of connections that closed), from /proc."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, _, rest = text.partition(" (")[2].rpartition(")")
        if name != "postgres":
            continue
        fields = rest.split()
        # After the command name: utime, stime, cutime, cstime are fields 14-17 (proc(5)).
        ticks += sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _walk_cursors(base: str, pages: int) -> list[str]:
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    urls, cursor = [], None
    with httpx.Client(headers=headers, timeout=60) as c:
        for _ in range(pages + 1):
            url = f"{base}/api/v1/tasks?limit=50" + (f"&cursor={cursor}" if cursor else "")
            if cursor:
                urls.append(url)
            body = c.get(url).json()
            cursor = body.get("next_cursor")
            if not cursor:
                break
    return urls


def _loads(plan: list[tuple[str, list[str], int]], seconds: float) -> dict[str, dict[str, Any]]:
    """Each (kind, urls, concurrency) for `seconds`, in one load-generator process."""
    spec = {
        "mode": "loads",
        "runs": [{"urls": urls, "concurrency": c, "seconds": seconds} for _, urls, c in plan],
        "headers": {"Authorization": f"Bearer {API_TOKEN}"},
    }
    runs = run_raw(spec, timeout=len(plan) * (seconds + 60))["runs"]
    out: dict[str, dict[str, Any]] = {}
    for (kind, _, c), r in zip(plan, runs, strict=True):
        lat = r["latencies"]
        out.setdefault(kind, {})[f"c{c}"] = {
            "concurrency": c,
            "requests": len(lat),
            "requests_per_s": round(len(lat) / r["seconds"], 1) if r["seconds"] else None,
            "latency_ms": summary(lat),
            "errors": r["error_count"],
            "statuses": r["statuses"],
        }
    return out


def bench_api(ctx: Any) -> dict[str, Any]:
    started = ctx.started()
    n = 2_000 if ctx.quick else 100_000
    seconds = 0.7 if ctx.quick else 10.0
    backends = ["sqlite"] if ctx.quick else ["sqlite", "postgresql"]
    if os.environ.get("TASKBRIDGE_BENCH_API_BACKENDS"):  # e.g. "postgresql": one of them alone
        backends = os.environ["TASKBRIDGE_BENCH_API_BACKENDS"].split(",")
    setup = ctx.fresh("api")
    figures: dict[str, Any] = {}
    pg: Postgres | None = None
    rng = random.Random(7)
    try:
        for backend in backends:
            if backend == "sqlite":
                (setup.tmp / "api-sqlite").mkdir(parents=True, exist_ok=True)
                url = f"sqlite+aiosqlite:///{setup.tmp}/api-sqlite/store.db"
            else:
                pg = Postgres(
                    str(Path(__file__).resolve().parents[2]), os.environ.get("TASKBRIDGE_TEST_PG_URL")
                )
                pg.start()
                url = pg.database()
            t = time.monotonic()
            ids = fill_sync(
                url, n, route="main", data=_data, links=_links(), history_per_task=2, progress=log
            )
            fill_s = time.monotonic() - t
            log(f"api/{backend}: {n} tasks in the store in {fill_s:.1f} s")
            d = setup.daemon(f"api-{backend}", public=False, poll_interval="1h", store_url=url)
            d.start()
            time.sleep(1 if ctx.quick else 5)  # let the start-up polls (of empty scopes) pass
            deep = _walk_cursors(d.url, 20)
            sample = rng.sample(ids, min(500, n))
            kinds = {
                "list_first": [f"{d.url}/api/v1/tasks?limit=50"],
                "list_deep": deep,
                "list_status": [f"{d.url}/api/v1/tasks?status=in_progress&limit=50"],
                "list_priority": [f"{d.url}/api/v1/tasks?priority=urgent&limit=50"],
                "list_tag": [f"{d.url}/api/v1/tasks?tag=t3&limit=50"],
                "list_tag_none": [f"{d.url}/api/v1/tasks?tag=nonexistent&limit=50"],
                "list_assignee": [f"{d.url}/api/v1/tasks?assignee=alice&limit=50"],
                "list_assignee_none": [f"{d.url}/api/v1/tasks?assignee=nobody&limit=50"],
                "list_combined_none": [
                    f"{d.url}/api/v1/tasks?tag=t3&priority=urgent&assignee=nobody&limit=50"
                ],
                "get": [f"{d.url}/api/v1/tasks/{i}" for i in sample],
            }
            if ctx.quick:
                kinds = {k: kinds[k] for k in ("list_first", "get")}
            res: dict[str, Any] = {"fill_seconds": round(fill_s, 1), "deep_pages": len(deep)}
            log(f"api/{backend}: {', '.join(kinds)} at concurrency 1 and 8, {seconds:g} s each")
            cpu, server_cpu = d.cpu_seconds(), _postgres_cpu_seconds()
            loads = _loads([(k, urls, c) for k, urls in kinds.items() for c in (1, 8)], seconds)
            requests = sum(r["requests"] for kind in loads.values() for r in kind.values())
            res.update(loads)
            res["requests"] = requests
            res["daemon_cpu_ms_per_request"] = round((d.cpu_seconds() - cpu) * 1000 / requests, 3)
            if backend == "postgresql":
                res["postgres_cpu_ms_per_request"] = round(
                    (_postgres_cpu_seconds() - server_cpu) * 1000 / requests, 3
                )
            res["daemon_log_errors"] = d.errors_in_log()[:5]
            d.terminate()
            figures[backend] = res
    finally:
        if pg is not None:
            pg.stop()
    params = {
        "tasks": n,
        "links_per_task": 5,
        "history_rows_per_task": 2,
        "backends": backends,
        "seconds_per_measurement": seconds,
        "page_size": 50,
        "load_generator": "a separate process (httpx, asyncio), keep-alive connections",
        "postgres": "TASKBRIDGE_TEST_PG_URL if set, else scripts/start-postgres.sh (fsync off); a fresh database",
    }
    return ctx.emit("api", started, params, figures)
