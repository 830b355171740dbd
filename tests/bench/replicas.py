"""replicas: throughput of 1, 2 and 3 daemon replicas sharing one PostgreSQL.

A burst of tasks created on one platform (through its API, webhooks on) must be mirrored to the
four others: 4 creates per task, made by whichever replica claims them. Throughput is mirrors
written per second, from the first create to the last mirror (counted by the fakes themselves).
The fakes run in this process's threads, so on a 2-core machine they, the replicas and
PostgreSQL share two cores: the figure says what more replicas buy *here*, not on real hosts.
Size: 300 tasks (1,200 mirrors) per replica count; TASKBRIDGE_BENCH_REPLICAS_TASKS overrides it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from connectors.fakekit import free_port
from tests import ops
from tests.bench.common import BenchDaemon
from tests.conftest import drop_pg_database, fresh_pg_database
from tests.world import World

PLATFORMS = ("impactly", "vortask", "agentkanban", "runs", "squads")
CREATE_ROUTES = {
    "impactly": "/api/v1/tasks",
    "agentkanban": "/api/ext/v1/boards/{board_id}/tasks",
    "runs": "/api/projects/{project_id}/tasks/",
    "squads": "/api/tasks",
}


def _pg_server() -> tuple[str, str | None]:
    """A PostgreSQL server URL: the test server's, else a throwaway one (and how to stop it)."""
    url = os.environ.get("TASKBRIDGE_TEST_PG_URL")
    if url:
        return url, None
    script = Path(__file__).resolve().parents[2] / "scripts" / "start-postgres.sh"
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True).stdout
    values = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines() if "=" in line)
    return values["TASKBRIDGE_TEST_PG_URL"], values["TASKBRIDGE_TEST_PG_STOP"].strip("'")


def _mirrors(world: World) -> int:
    return sum(world.fakes[p].requests.count("POST", route, status=201) for p, route in CREATE_ROUTES.items())


def run_once(n: int, tasks: int, tmp: Path, pg_server: str) -> dict[str, Any]:
    url, dbname = asyncio.run(fresh_pg_database(pg_server))
    world = World(PLATFORMS).start()
    group: list[BenchDaemon] = []
    try:
        ports = [free_port() for _ in range(n)]
        cfg = yaml.safe_load(
            world.config(tmp, port=ports[0], public=True, poll_interval="5s", store_url=url).read_text()
        )
        cfg["log"] = {"level": "warning"}
        for i, port in enumerate(ports):
            cfg["server"]["listen"] = f"127.0.0.1:{port}"
            path = tmp / f"replicas{n}-{i}.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            group.append(BenchDaemon(path, port, tmp / f"replicas{n}-{i}.log"))
        group[0].start()  # migrates first
        for d in group[1:]:
            d.start()
        time.sleep(2)
        for fake in world.fakes.values():
            fake.requests.clear()
        started = time.monotonic()
        for i in range(tasks):
            ops.create(world, "vortask", f"burst {i}")
        created = time.monotonic() - started
        want = tasks * len(CREATE_ROUTES)
        deadline = started + 600
        while _mirrors(world) < want and time.monotonic() < deadline:
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        done = _mirrors(world)
        return {
            "replicas": n,
            "tasks": tasks,
            "mirrors_written": done,
            "complete": done >= want,
            "seconds": round(elapsed, 2),
            "mirrors_per_second": round(done / elapsed, 1) if elapsed else None,
            "seconds_to_create_source_tasks": round(created, 2),
        }
    finally:
        for d in group:
            d.kill()
        world.stop()
        asyncio.run(drop_pg_database(pg_server, dbname))


def bench_replicas(ctx: Any) -> dict[str, Any]:
    started = ctx.started()
    # 300 tasks keep each run near a minute: long enough that start-up jitter is not the figure.
    tasks = int(os.environ.get("TASKBRIDGE_BENCH_REPLICAS_TASKS") or (12 if ctx.quick else 300))
    counts = (1, 2) if ctx.quick else (1, 2, 3)
    server, stop = _pg_server()
    try:
        runs = []
        for n in counts:
            tmp = ctx.tmp / f"replicas{n}"
            tmp.mkdir(parents=True, exist_ok=True)
            runs.append(run_once(n, tasks, tmp, server))
    finally:
        if stop:
            subprocess.run(stop, shell=True, check=False)
    base = runs[0]["mirrors_per_second"] or 1
    figures = {
        "runs": runs,
        "speedup_vs_one": {str(r["replicas"]): round((r["mirrors_per_second"] or 0) / base, 2) for r in runs},
        "note": "2 cores shared by the fakes, every replica and PostgreSQL; see the module docstring",
    }
    return ctx.emit("replicas", started, {"tasks": tasks, "replica_counts": list(counts)}, figures)
