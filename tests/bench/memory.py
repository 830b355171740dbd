"""memory: the daemon's RSS with a big linked store, idle and while it polls.

Each of the five fakes holds N tasks (put into their state in-process); the store holds N
canonical tasks, each linked on all five platforms (5N links) with the exact base each platform
reports (read once through the real connector on a sample task), plus the watermarks a running
daemon would have left (Impactly's activity mark, AgentKanban's listing mark), so the daemon
starts as after a restart: every poll finds nothing to change. The daemon polls once at start-up
(poll interval 1 h); a second round is triggered through the API. RSS is read from
/proc/<pid>/status (VmRSS sampled every 100 ms; VmHWM, the kernel's peak).

Size: the full run measures N = 5,000 and N = 20,000 canonical tasks (20,000 x 5 platforms =
100,000 linked remote tasks) and reports the per-task slope between them, with a linear
extrapolation to N = 100,000 canonical tasks, marked as such. TASKBRIDGE_BENCH_MEMORY_TASKS
sets the sizes (comma-separated): `TASKBRIDGE_BENCH_MEMORY_TASKS=100000` measures the issue's
size itself (about 3 minutes here since no fake scans a scope per page; 43cc677 and 7c37440).
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.engine.sync import DEFAULTS
from bridge.model import encode_values, new_id
from tests.bench import seed
from tests.bench.common import ALL, RssSampler, install_timed_logs, log, wait_for
from tests.bench.storefill import LinkSpec, fill_sync

ROUTE_FIELDS = ("title", "description", "status", "priority", "assignees", "tags", "due_date")
MARKER = "synced by taskbridge · {id}"


def _canonical(i: int) -> dict[str, Any]:
    return encode_values({**DEFAULTS, "title": f"mem task {i}"})


async def _sample_bases(config_path: Any, world: Any, samples: dict[str, str]) -> dict[str, dict[str, Any]]:
    """What each platform reports for one of the seeded tasks, as the engine stores a base."""
    from bridge import config as config_mod
    from bridge.engine.routes import Marker
    from bridge.wiring import build_connectors

    cfg = config_mod.load(config_path)
    conns = build_connectors(cfg)
    marker = Marker(MARKER)
    out = {}
    try:
        for p, rid in samples.items():
            conn = conns[p]
            rt = await conn.get_task(world.scopes[p], rid)
            values = {
                f: v for f, v in rt.values.items() if f in ROUTE_FIELDS and f in conn.capabilities.fields
            }
            if "description" in values:
                values["description"], _ = marker.extract(values["description"] or "")
            out[p] = encode_values(values)
    finally:
        for c in conns.values():
            await c.aclose()
    return out


def _agentkanban_mark(world: Any, config_path: Any) -> dict[str, Any]:
    from bridge import config as config_mod
    from bridge.wiring import build_connectors

    conns = build_connectors(config_mod.load(config_path))
    fake: Any = world.fakes["agentkanban"]
    board = fake.boards[world.scopes["agentkanban"]]
    newest = max(t.updated_at for t in board.tasks.values())
    fp = conns["agentkanban"]._mapping_fingerprint()  # type: ignore[attr-defined]

    async def close() -> None:
        for c in conns.values():
            await c.aclose()

    asyncio.run(close())
    return {
        "since": (newest + timedelta(milliseconds=1)).isoformat().replace("+00:00", "Z"),
        "seen": {},
        "lanes": {lane.id: lane.name for lane in board.lanes},
        "map": fp,
    }


def measure(ctx: Any, n: int) -> dict[str, Any]:
    setup = ctx.fresh(f"memory-{n}")
    world = setup.world
    install_timed_logs(world, probes=False)
    ids = [new_id() for _ in range(n)]
    t = time.monotonic()
    remote: dict[str, list[str]] = {}
    for k, p in enumerate(ALL):
        # Task i was made on ALL[i % 5]; the other four hold mirrors, which carry the marker.
        def desc(i: int, k: int = k) -> str:
            return "" if i % 5 == k else MARKER.replace("{id}", ids[i])

        remote[p] = seed.SEEDERS[p](world, n, lambda i: f"mem task {i}", desc)
    seeded_s = time.monotonic() - t
    log(f"memory: {n} tasks on each fake in {seeded_s:.1f} s")
    (setup.tmp / f"memory-{n}").mkdir(parents=True, exist_ok=True)
    url = f"sqlite+aiosqlite:///{setup.tmp}/memory-{n}/store.db"
    d = setup.daemon(
        f"memory-{n}",
        public=False,
        poll_interval="1h",
        store_url=url,
        # The fakes build a listing of 100,000 tasks slowly (seconds before the first byte), on
        # the cores the daemon shares; max_response_bytes stays at its default, since the
        # unpaginated listings (~125 MB for a Nucleus squad) are read as they arrive.
        extra_connector={p: {"timeout": "900s", "deadline": "900s"} for p in ALL},
    )
    # Bases: a mirror (k != i % 5) and an original (k == i % 5) of each platform read back.
    sample_mirror = {p: remote[p][(k + 1) % 5] for k, p in enumerate(ALL)}
    sample_origin = {p: remote[p][k] for k, p in enumerate(ALL)}
    bases_m = asyncio.run(_sample_bases(d.config, world, sample_mirror))
    bases_o = asyncio.run(_sample_bases(d.config, world, sample_origin))

    def base_fn(p: str, k: int) -> Any:
        def base(i: int) -> dict[str, Any]:
            b = dict(bases_o[p] if i % 5 == k else bases_m[p])
            b["title"] = f"mem task {i}"
            return b

        return base

    links = [
        LinkSpec(
            connector=p, scope=world.scopes[p], remote_id=lambda i, p=p: remote[p][i], base=base_fn(p, k)
        )
        for k, p in enumerate(ALL)
    ]
    now = datetime.now(UTC)
    mark = lambda remote_mark: {  # noqa: E731
        "remote": remote_mark,
        "first_poll": (now - timedelta(days=1)).isoformat(),
        "last_poll": now.isoformat(),
    }
    watermarks = {
        ("impactly", world.scopes["impactly"]): mark(
            {"since": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "polls": 0}
        ),
        ("agentkanban", world.scopes["agentkanban"]): mark(_agentkanban_mark(world, d.config)),
        **{(p, world.scopes[p]): mark({}) for p in ("vortask", "runs", "squads")},
    }
    t = time.monotonic()
    fill_sync(
        url,
        n,
        route="main",
        data=_canonical,
        links=links,
        history_per_task=1,
        watermarks=watermarks,
        ids=ids,
        progress=log,
    )
    fill_s = time.monotonic() - t
    log(f"memory: store filled in {fill_s:.1f} s; starting the daemon")

    d.start(wait=False)
    sampler = RssSampler(d, every=0.1).start()
    d.wait_ready(timeout=120)
    t_ready = time.monotonic()
    rss_ready = d.status_kb().get("VmRSS")
    timeout = 300 if ctx.quick else 3600
    ok1 = wait_for(
        lambda: all(d.metric_sum("taskbridge_polls_total", connector=p) >= 1 for p in ALL),
        timeout=timeout,
        interval=1.0,
    )
    t_poll1 = time.monotonic()
    hwm_first = d.status_kb().get("VmHWM")
    time.sleep(1 if ctx.quick else 15)  # idle: nothing scheduled for an hour
    t_idle0 = time.monotonic()
    time.sleep(1 if ctx.quick else 10)
    rss_idle = d.status_kb().get("VmRSS")
    idle_max = sampler.max_between(t_idle0, time.monotonic())
    # A second round of polls, all five at once, as the scheduler would start them.
    t2 = time.monotonic()
    for p in ALL:
        d.api("POST", f"/api/v1/connectors/{p}/sync")
    ok2 = wait_for(
        lambda: all(d.metric_sum("taskbridge_polls_total", connector=p) >= 2 for p in ALL),
        timeout=timeout,
        interval=1.0,
    )
    t2_end = time.monotonic()
    time.sleep(1)
    poll2_max = sampler.max_between(t2, time.monotonic())
    status = d.status_kb()
    changes = d.metric_sum("taskbridge_changes_detected_total")
    poll_seconds = {
        p: round(d.metric_sum("taskbridge_poll_duration_seconds_sum", connector=p), 1) for p in ALL
    }
    depth = d.outbox_depth()
    errors = d.errors_in_log()[:5]
    sampler.stop()
    d.terminate()
    world.stop()
    return {
        "canonical_tasks": n,
        "linked_remote_tasks": 5 * n,
        "rss_at_ready_mb": _mb(rss_ready),
        "peak_during_startup_poll_mb": _mb(hwm_first),
        "rss_idle_mb": _mb(rss_idle),
        "rss_idle_max_sampled_mb": _mb(idle_max),
        "peak_sampled_during_second_poll_mb": _mb(poll2_max),
        "vmhwm_final_mb": _mb(status.get("VmHWM")),
        "first_poll_round_seconds": round(t_poll1 - t_ready, 1),
        "second_poll_round_seconds": round(t2_end - t2, 1),
        "poll_seconds_sum_by_connector": poll_seconds,
        "polls_completed": bool(ok1 and ok2),
        "changes_detected": changes,
        "outbox_depth_after": depth,
        "seeded_fakes_s": round(seeded_s, 1),
        "store_fill_s": round(fill_s, 1),
        "daemon_log_errors": errors,
    }


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


def bench_memory(ctx: Any) -> dict[str, Any]:
    started = ctx.started()
    env = os.environ.get("TASKBRIDGE_BENCH_MEMORY_TASKS")
    sizes = [int(x) for x in env.split(",")] if env else ([150] if ctx.quick else [5_000, 20_000])
    results = []
    for n in sizes:
        log(f"memory: N = {n}")
        results.append(measure(ctx, n))
    figures: dict[str, Any] = {"sizes": results}
    if len(results) >= 2:
        a, b = results[0], results[-1]
        dn = b["canonical_tasks"] - a["canonical_tasks"]
        for key in ("rss_idle_mb", "peak_during_startup_poll_mb", "peak_sampled_during_second_poll_mb"):
            if a.get(key) is not None and b.get(key) is not None and dn:
                slope = (b[key] - a[key]) / dn
                figures[f"{key}_per_1000_tasks"] = round(slope * 1000, 2)
                figures[f"{key}_extrapolated_100k_canonical"] = round(
                    b[key] + slope * (100_000 - b["canonical_tasks"]), 1
                )
        figures["extrapolation_note"] = (
            "linear in N from the two measured sizes; TASKBRIDGE_BENCH_MEMORY_TASKS=100000 measures it"
        )
    params = {
        "sizes": sizes,
        "platforms": list(ALL),
        "links_per_task": 5,
        "store": "SQLite",
        "poll_interval": "1h (start-up poll, then one round triggered through the API)",
        "watermarks": "prefilled as a running daemon leaves them (Impactly activity mark, AgentKanban listing mark)",
        "rss_source": "/proc/<pid>/status VmRSS (sampled every 100 ms) and VmHWM",
    }
    return ctx.emit("memory", started, params, figures)
