"""backfill: mirror N existing Vortask tasks to the four other platforms (`initial: mirror`), then
the same creates by a raw httpx program with the daemon's outbox concurrency (8).

The source tasks are put straight into the Vortask fake's state before the daemon starts (its
own creation path, as a REST POST would). The daemon runs with webhooks registered (as deployed)
and a 60 s poll interval; its start-up poll of Vortask is what finds the N tasks. Done means:
each target holds N tasks (counted in-process), the daemon's outbox is empty, and every webhook
delivery the fakes sent (the echoes of our creates) has been answered: until 2026-12-06 (session
28) a run ended without the last, so a daemon that fell behind on its echoes stopped with them
queued in the fakes, its CPU for them uncounted, and the fakes still retrying them against the
stopped daemon while the raw program ran (which then took up to twice as long).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tests.bench import seed
from tests.bench.common import ALL, counts, install_timed_logs, log, wait_for, webhooks_pending
from tests.bench.propagation import platform_headers, run_raw
from tests.bench.storefill import Postgres

SOURCE = "vortask"
TARGETS = ("impactly", "agentkanban", "runs", "squads")
CONCURRENCY = 8  # bridge.engine.outbox.WorkerSettings.concurrency
BULK_SOURCE = "impactly"  # backfill_bulk: Vortask, the platform with a bulk create, is a target


def _raw_creates(world: Any, n: int) -> list[dict[str, Any]]:
    """The four creates per task, interleaved by task as the daemon's outbox orders them."""
    base = {p: world.base_url(p) for p in ALL}
    items = []
    for i in range(n):
        title = f"raw backfill {i}"
        desc = f"synced by taskbridge · RAW{i:023d}"
        items += [
            {
                "platform": "impactly",
                "method": "POST",
                "url": f"{base['impactly']}/tasks",
                "body": {"title": title, "description": desc, "project_id": world.scopes["impactly"]},
            },
            {
                "platform": "agentkanban",
                "method": "POST",
                "url": f"{base['agentkanban']}/boards/{world.scopes['agentkanban']}/tasks",
                "body": {"title": title, "description": desc},
            },
            {
                "platform": "runs",
                "method": "POST",
                "url": f"{base['runs']}/projects/{world.scopes['runs']}/tasks/",
                "body": {"title": title, "description": desc, "title_manually_set": True},
            },
            {
                "platform": "squads",
                "method": "POST",
                "url": f"{base['squads']}/tasks",
                "body": {"title": title, "description": desc},
            },
        ]
    return items


STALL_S = 300  # no new mirror for this long: the daemon is stuck, stop waiting


def run_daemon(
    ctx: Any,
    n: int,
    store: str,
    *,
    source: str = SOURCE,
    workers: dict[str, Any] | None = None,
    name: str | None = None,
    latency: float = 0.0,
) -> dict[str, Any]:
    """Seed a fresh world, start the daemon on `store` (sqlite | postgresql), wait until mirrored.
    `source`: the platform holding the existing tasks; `workers`: the config's workers section;
    `name`: the run's directory (its store among it), one of its own for each run; `latency`:
    seconds every fake waits before it handles a request (a platform across a network)."""
    targets = tuple(p for p in ALL if p != source)
    setup = ctx.fresh(name or f"backfill-{store}")
    world = setup.world
    logs = install_timed_logs(world, probes=False)
    t = time.monotonic()
    getattr(seed, f"{source}_tasks")(
        world, n, lambda i: f"backfill {i}", lambda i: f"existing task number {i}"
    )
    seeded_in = time.monotonic() - t
    log(f"backfill/{store}: {n} tasks seeded on {source} in {seeded_in:.1f} s")
    for fake in world.fakes.values():
        fake.faults.latency = latency
    for lg in logs.values():
        lg.clear()
    pg: Postgres | None = None
    kw: dict[str, Any] = {}
    if store == "postgresql":
        pg = Postgres(str(Path(__file__).resolve().parents[2]), os.environ.get("TASKBRIDGE_TEST_PG_URL"))
        pg.start()
        kw["store_url"] = pg.database()
    try:
        d = setup.daemon(f"backfill-{store}", public=True, poll_interval="60s", workers=workers, **kw)
        t_start = time.monotonic()
        d.start()
        t_ready = time.monotonic()
        # Whose CPU the run takes: the daemon's process, and this one's (the fakes serve in its
        # threads). A daemon near one core's worth is bound by its own CPU (one event loop).
        cpu_ready, fakes_ready = d.cpu_times(), time.process_time()
        timeout = 300 if ctx.quick else 3600
        state: dict[str, Any] = {"log": t_ready, "progress": t_ready, "have": 0, "stalled": False}
        # When every mirror was there, and how many deliveries (echoes of our creates) were
        # still unanswered then: the run ends once they are answered too.
        mirrored: dict[str, Any] = {"at": None, "echoes_pending": None}

        def done() -> bool:
            have = {p: seed.count_tasks(world, p) for p in targets}
            now = time.monotonic()
            total = sum(have.values())
            if total > state["have"]:
                state["have"], state["progress"] = total, now
            elif now - state["progress"] > STALL_S and not ctx.quick:
                state["stalled"] = True
                return True
            if now - state["log"] > 30:
                state["log"] = now
                log(f"backfill/{store}: {have} after {now - t_ready:.0f} s")
            if not (all(v >= n for v in have.values()) and d.outbox_depth() == 0):
                return False
            pending = webhooks_pending(world)
            if mirrored["at"] is None:
                mirrored["at"], mirrored["echoes_pending"] = now, pending
            return pending == 0

        ok = bool(wait_for(done, timeout=timeout, interval=1.0 if not ctx.quick else 0.25))
        ok = ok and not state["stalled"]
        t_done = time.monotonic()
        user, system = d.cpu_since(cpu_ready)
        daemon_cpu, fakes_cpu = user + system, time.process_time() - fakes_ready
        final = {p: seed.count_tasks(world, p) for p in targets}
        creates = []
        per_fake: dict[str, Any] = {}
        for p in ALL:
            entries = logs[p].since(0)
            per_fake[p] = {
                **counts([e for _, e in entries]),
                "by_route": _top_routes([e for _, e in entries]),
            }
            # A create: a POST answered 201, or an MCP request to Vortask (its bulk creates; in a
            # backfill to it, its other MCP calls are a few comment sweeps).
            creates += [
                t
                for t, e in entries
                if p in targets
                and e.method == "POST"
                and (e.status == 201 or (p == "vortask" and e.route == "/mcp"))
            ]
        first_create, last_create = (min(creates), max(creates)) if creates else (t_ready, t_done)
        depth = d.outbox_depth()
        # How the platforms' echoes of our creates were answered: recorded ("ok"), or known to
        # report nothing new ("unchanged").
        webhooks: dict[str, int] = {}
        for (name, labels), value in d.metrics().items():
            if name == "taskbridge_webhooks_received_total" and value:
                result = dict(labels).get("result", "?")
                webhooks[result] = webhooks.get(result, 0) + int(value)
        parked = d.parked()
        errors = d.errors_in_log()[:10]
        d.terminate()
    finally:
        if pg is not None:
            pg.stop()
    fig = {
        "store": store,
        "completed": ok,
        "stalled": state["stalled"],
        "tasks_per_target": final,
        "duplicates_per_target": {p: max(0, c - n) for p, c in final.items()},
        "outbox_depth_at_end": depth,
        "seconds_start_to_done": round(t_done - t_start, 1),
        "seconds_first_to_last_create": round(last_create - first_create, 1),
        "echoes_pending_when_mirrored": mirrored["echoes_pending"],
        "seconds_mirrored_to_echoes_answered": round(t_done - mirrored["at"], 1) if mirrored["at"] else None,
        "tasks_per_s": round(n / (t_done - t_ready), 2) if ok else None,
        "creates_per_s": round(sum(final.values()) / max(0.001, last_create - first_create), 1),
        "daemon_cpu_s": round(daemon_cpu, 1),
        "daemon_cpu_ms_per_create": round(1000 * daemon_cpu / (n * len(targets)), 2),
        "daemon_cpu_kernel_share": round(system / daemon_cpu, 3) if daemon_cpu else None,
        "daemon_cores_busy": round(daemon_cpu / max(0.001, t_done - t_ready), 2),
        "fakes_and_bench_cores_busy": round(fakes_cpu / max(0.001, t_done - t_ready), 2),
        "webhooks_received": webhooks,
        "requests_per_fake": per_fake,
        "requests_per_task": {p: round(v["total"] / n, 2) for p, v in per_fake.items()},
        "outbox_parked": parked,
        "daemon_log_errors": errors,
        "seeded_in_s": round(seeded_in, 1),
    }
    fig["world"] = world
    return fig


def bench_backfill(ctx: Any) -> dict[str, Any]:
    started = ctx.started()
    # quick: the CI smoke test's budget (200 take ~40 s alone here). TASKBRIDGE_BENCH_BACKFILL_TASKS
    # overrides the size.
    n = int(os.environ.get("TASKBRIDGE_BENCH_BACKFILL_TASKS") or (15 if ctx.quick else 10_000))
    runs = [run_daemon(ctx, n, "sqlite")]
    if runs[0]["stalled"]:
        log("backfill/sqlite stalled (outbox stuck); measuring on PostgreSQL too")
        runs.append(run_daemon(ctx, n, "postgresql"))
    world = runs[-1].pop("world")
    for r in runs:
        r.pop("world", None)
    best = next((r for r in reversed(runs) if r["completed"]), None)
    log("backfill: now the raw creates")
    for fake in world.fakes.values():
        fake.faults.drop_webhook_rate = 1.0  # the daemon is gone: don't make the fakes retry deliveries
    spec = {
        "mode": "create",
        "concurrency": CONCURRENCY,
        "items": _raw_creates(world, n),
        "headers": platform_headers(),
    }
    raw = run_raw(spec, timeout=300 if ctx.quick else 3600)
    raw_fig = {
        "seconds": round(raw["seconds"], 1),
        "creates": raw["done"],
        "errors": raw["error_count"],
        "tasks_per_s": round(n / raw["seconds"], 2),
        "creates_per_s": round(raw["done"] / raw["seconds"], 1),
        # The floor under the daemon's CPU a create: the same requests, nothing else done.
        "cpu_ms_per_create": round(1000 * raw["cpu_s"] / raw["done"], 2) if raw["done"] else None,
        "cores_busy": round(raw["cpu_s"] / raw["seconds"], 2) if raw["seconds"] else None,
    }
    figures = {
        "daemon": runs,
        "raw": raw_fig,
        "ratio_raw_over_daemon_tasks_per_s": round(raw_fig["tasks_per_s"] / best["tasks_per_s"], 1)
        if best and best["tasks_per_s"]
        else None,
    }
    params = {
        "tasks": n,
        "source": SOURCE,
        "targets": list(TARGETS),
        "initial": "mirror",
        "webhooks": True,
        "poll_interval_s": 60,
        "outbox_concurrency": CONCURRENCY,
        "store": "SQLite; PostgreSQL too when the SQLite run stalls (no new mirror for 300 s)",
        "seeding": "in-process into the Vortask fake's state, before the daemon starts",
        "raw": "one POST per task per target (title + marker description), 8 workers on one queue, "
        "against the same fakes after the daemon's run",
        "fakes": "in-process (tests.world.World)",
    }
    return ctx.emit("backfill", started, params, figures)


def bench_backfill_bulk(ctx: Any) -> dict[str, Any]:
    """backfill_bulk: N existing Impactly tasks mirrored to the four others, Vortask among them,
    whose creates can go many to a request (MCP bulk_create_tasks): the daemon with
    `workers.bulk_creates: 1` (each create alone, as before) and with the default, alternated
    on fresh worlds, `TASKBRIDGE_BENCH_BULK_PAIRS` pairs (default 1). `TASKBRIDGE_BENCH_LATENCY_MS`
    (default 0) makes every fake wait that long before it handles a request: on loopback the
    daemon's CPU bounds a backfill, across a network the requests' round trips do."""
    from bridge.defaults import DEFAULT_BULK_CREATES

    started = ctx.started()
    n = int(os.environ.get("TASKBRIDGE_BENCH_BACKFILL_TASKS") or (15 if ctx.quick else 10_000))
    pairs = int(os.environ.get("TASKBRIDGE_BENCH_BULK_PAIRS") or 1)
    latency_ms = float(os.environ.get("TASKBRIDGE_BENCH_LATENCY_MS") or 0)
    runs: dict[str, list[dict[str, Any]]] = {"alone": [], "bulk": []}
    for pair in range(pairs):
        for label, size in (("alone", 1), ("bulk", DEFAULT_BULK_CREATES)):
            log(f"backfill_bulk: {label} (workers.bulk_creates {size})")
            # Each run on a store of its own: the worlds' ids repeat, and a daemon started on the
            # last run's store would find 10,000 links a platform whose tasks are not there.
            name = f"backfill-bulk-{label}-{pair}"
            fig = run_daemon(
                ctx,
                n,
                "sqlite",
                source=BULK_SOURCE,
                workers={"bulk_creates": size},
                name=name,
                latency=latency_ms / 1000,
            )
            fig.pop("world", None)
            runs[label].append(fig)

    def mean(label: str, key: str) -> float | None:
        values = [r[key] for r in runs[label] if r.get(key) is not None]
        return round(sum(values) / len(values), 2) if values else None

    def vortask_requests(r: dict[str, Any]) -> float:
        return float(r["requests_per_task"].get("vortask", 0.0))

    figures = {
        "runs": runs,
        "tasks_per_s": {label: mean(label, "tasks_per_s") for label in runs},
        "daemon_cpu_ms_per_create": {label: mean(label, "daemon_cpu_ms_per_create") for label in runs},
        "vortask_requests_per_task": {
            label: round(sum(vortask_requests(r) for r in runs[label]) / len(runs[label]), 3)
            for label in runs
        },
    }
    params = {
        "tasks": n,
        "source": BULK_SOURCE,
        "targets": [p for p in ALL if p != BULK_SOURCE],
        "pairs": pairs,
        "latency_ms_per_request": latency_ms,
        "bulk_creates": {"alone": 1, "bulk": DEFAULT_BULK_CREATES},
        "initial": "mirror",
        "webhooks": True,
        "poll_interval_s": 60,
        "store": "SQLite",
        "order": "alone then bulk, each pair on fresh worlds",
    }
    return ctx.emit("backfill_bulk", started, params, figures)


def _top_routes(entries: list[Any], k: int = 8) -> dict[str, int]:
    c: dict[str, int] = {}
    for e in entries:
        key = f"{e.method} {e.route}"
        c[key] = c.get(key, 0) + 1
    return dict(sorted(c.items(), key=lambda kv: -kv[1])[:k])
