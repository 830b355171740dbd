"""`python -m tests.bench.report FILE...`: the README's Performance tables from benchmark output.

Reads the JSON lines `python -m tests.bench` printed (one object per benchmark; the last record
of each name wins) and prints Markdown: one table per benchmark, and the machine they ran on.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def load(paths: Iterable[str]) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip().startswith("{"):
                rec = json.loads(line)
                records[rec["benchmark"]] = rec
    return records


def table(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def _rates(block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(k, v) for k, v in block.items() if k.endswith("/s") and isinstance(v, dict)]


def propagation(rec: dict[str, Any]) -> str:
    f = rec["figures"]
    parts = [
        "Webhooks (edits on Vortask, mirrored to four platforms; time from the edit to the last mirror):\n"
    ]
    parts.append(
        table(
            ["edits/s", "achieved", "edits", "p50 ms", "p95 ms", "p99 ms", "drained"],
            (
                [
                    k,
                    v["achieved_rate_per_s"],
                    v["edits"],
                    *(v["latency_ms"].get(q) for q in ("p50", "p95", "p99")),
                    v["drained"],
                ]
                for k, v in _rates(f["webhook"])
            ),
        )
    )
    polling = f.get("polling_only", {})
    if "skipped" not in polling:
        interval = float(polling.get("poll_interval_s", 0))
        parts.append(
            f'\nPolling alone (webhooks dropped, poll interval {interval:g} s; "minus interval" subtracts it):\n'
        )
        parts.append(
            table(
                [
                    "edits/s",
                    "achieved",
                    "p50 ms",
                    "p99 ms",
                    "p50 minus interval",
                    "p99 minus interval",
                    "drained",
                ],
                (
                    [
                        k,
                        v["achieved_rate_per_s"],
                        v["latency_ms"].get("p50"),
                        v["latency_ms"].get("p99"),
                        _minus(v["latency_ms"].get("p50"), interval),
                        _minus(v["latency_ms"].get("p99"), interval),
                        v["drained"],
                    ]
                    for k, v in _rates(polling)
                ),
            )
        )
    parts.append(
        f"\nFinal state checked on every platform: {'ok' if f['final_state']['ok'] else f['final_state']}"
    )
    return "\n".join(parts)


def _minus(ms: float | None, interval_s: float) -> float | None:
    return None if ms is None else round(ms - interval_s * 1000, 1)


def raw_limit(rec: dict[str, Any]) -> str:
    f = rec["figures"]
    rows = []
    for k, v in _rates(f["raw"]):
        d = f["daemon_webhook"].get(k, {})
        r = f["ratio_daemon_over_raw"].get(k, {})
        rows.append(
            [
                k,
                v["latency_ms"].get("p50"),
                v["latency_ms"].get("p99"),
                d.get("p50"),
                d.get("p99"),
                r.get("p50"),
                r.get("p99"),
            ]
        )
    return table(
        ["edits/s", "raw p50 ms", "raw p99 ms", "daemon p50 ms", "daemon p99 ms", "ratio p50", "ratio p99"],
        rows,
    )


def cost(rec: dict[str, Any]) -> str:
    f = rec["figures"]
    measured, minimum = f["measured"], f["minimum"]
    rows = []
    for kind in ("edit", "edit_elsewhere", "create", "comment"):
        for platform, m in measured.get(kind, {}).items():
            if platform == "store" or not isinstance(m, dict) or "per_change" not in m:
                continue
            want = minimum.get(kind, {}).get(platform, {})
            pc = m["per_change"]
            rows.append(
                [
                    kind,
                    platform,
                    pc["read"],
                    pc["write"],
                    pc["mcp"],
                    want.get("read", 0),
                    want.get("write", 0),
                    want.get("mcp", 0),
                ]
            )
    out = [
        table(
            ["per change", "platform", "reads", "writes", "MCP calls", "min reads", "min writes", "min MCP"],
            rows,
        )
    ]
    idle = measured.get("idle_poll", {})
    if idle:
        out.append("\nPer idle poll (nothing changed):\n")
        out.append(
            table(
                ["platform", "requests", "writes", "by route"],
                (
                    [
                        p,
                        v["per_poll"]["total"],
                        v["writes"],
                        ", ".join(f"{r} x{n:g}" for r, n in v["by_route_per_poll"].items()),
                    ]
                    for p, v in idle.items()
                ),
            )
        )
    out.append(f"\nEcho writes: {'none' if f['echo_writes']['zero'] else f['echo_writes']}")
    return "\n".join(out)


def backfill(rec: dict[str, Any]) -> str:
    f = rec["figures"]
    rows = [
        [
            r["store"],
            r["completed"],
            r["tasks_per_s"],
            r["creates_per_s"],
            r["seconds_start_to_done"],
            sum(r["duplicates_per_target"].values()),
            ", ".join(f"{p} {n}" for p, n in r["requests_per_task"].items()),
            r.get("daemon_cpu_ms_per_create", "-"),
            r.get("daemon_cores_busy", "-"),
        ]
        for r in f["daemon"]
    ]
    raw = f["raw"]
    return "\n".join(
        [
            f"{rec['params'].get('tasks', '?')} existing Vortask tasks mirrored to four platforms:\n",
            table(
                [
                    "store",
                    "completed",
                    "tasks/s",
                    "creates/s",
                    "seconds",
                    "duplicates",
                    "requests per task",
                    "daemon CPU ms a create",
                    "daemon cores busy",
                ],
                rows,
            ),
            f"\nRaw httpx, same creates, same concurrency: {raw['tasks_per_s']} tasks/s ({raw['creates_per_s']} "
            f"creates/s, {raw['creates']} creates in {raw['seconds']} s). Raw over daemon: "
            f"{f['ratio_raw_over_daemon_tasks_per_s']}x.",
        ]
    )


def api(rec: dict[str, Any]) -> str:
    rows = []
    for backend, b in rec["figures"].items():
        if not isinstance(b, dict):
            continue
        for op, by_concurrency in b.items():
            if not isinstance(by_concurrency, dict):
                continue
            for v in by_concurrency.values():
                if isinstance(v, dict) and "latency_ms" in v:
                    rows.append(
                        [
                            backend,
                            op,
                            v["concurrency"],
                            v["requests_per_s"],
                            v["latency_ms"].get("p50"),
                            v["latency_ms"].get("p99"),
                            v["errors"],
                        ]
                    )
    head = f"{rec['params'].get('tasks', '?')} tasks in the store (each with 5 links and 2 history rows):\n\n"
    cpu = [
        f"{backend}: {b['daemon_cpu_ms_per_request']} ms of the daemon's CPU a request"
        + (
            f", {b['postgres_cpu_ms_per_request']} ms of the server's"
            if "postgres_cpu_ms_per_request" in b
            else ""
        )
        for backend, b in rec["figures"].items()
        if isinstance(b, dict) and "daemon_cpu_ms_per_request" in b
    ]
    foot = "".join(f"\n{line}" for line in cpu)
    return (
        head
        + table(["store", "request", "concurrency", "requests/s", "p50 ms", "p99 ms", "errors"], rows)
        + foot
    )


def memory(rec: dict[str, Any]) -> str:
    f = rec["figures"]
    rows = [
        [
            s["canonical_tasks"],
            s["linked_remote_tasks"],
            s["rss_idle_mb"],
            s["peak_during_startup_poll_mb"],
            s["peak_sampled_during_second_poll_mb"],
            s["vmhwm_final_mb"],
            s["second_poll_round_seconds"],
        ]
        for s in f["sizes"]
    ]
    out = [
        table(
            [
                "canonical tasks",
                "linked remote tasks",
                "idle RSS MB",
                "peak, start-up poll MB",
                "peak, second poll MB",
                "VmHWM MB",
                "poll round s",
            ],
            rows,
        )
    ]
    if "rss_idle_mb_per_1000_tasks" in f:
        out.append(
            f"\nPer 1,000 canonical tasks: idle +{f['rss_idle_mb_per_1000_tasks']} MB, poll peak "
            f"+{f.get('peak_during_startup_poll_mb_per_1000_tasks')} MB. Extrapolated linearly to 100,000 "
            f"canonical tasks (not measured): idle {f.get('rss_idle_mb_extrapolated_100k_canonical')} MB, "
            f"poll peak {f.get('peak_during_startup_poll_mb_extrapolated_100k_canonical')} MB."
        )
    return "\n".join(out)


def drill(rec: dict[str, Any]) -> str:
    rows = [
        [
            i + 1,
            r.get("ok"),
            r.get("changes_total"),
            r.get("tasks"),
            r.get("comments"),
            len(r.get("kills", [])),
            r.get("changes_lost"),
            r.get("duplicate_tasks"),
            r.get("duplicate_comments"),
            r.get("seconds_to_quiesce"),
            r.get("outbox_parked"),
        ]
        for i, r in enumerate(rec["figures"]["runs"])
    ]
    return table(
        [
            "run",
            "ok",
            "changes",
            "tasks",
            "comments",
            "SIGKILLs",
            "lost",
            "duplicate tasks",
            "duplicate comments",
            "settled after faults off, s",
            "parked",
        ],
        rows,
    )


def replicas(rec: dict[str, Any]) -> str:
    rows = [
        [r["replicas"], r["mirrors_written"], r["seconds"], r["mirrors_per_second"]]
        for r in rec["figures"]["runs"]
    ]
    return table(["replicas", "mirrors written", "seconds", "mirrors/s"], rows)


SECTIONS = {
    "propagation": propagation,
    "raw_limit": raw_limit,
    "cost": cost,
    "backfill": backfill,
    "api": api,
    "memory": memory,
    "drill": drill,
    "replicas": replicas,
}


def render(records: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, fn in SECTIONS.items():
        rec = records.get(name)
        if rec is None:
            continue
        m = rec["machine"]
        out.append(f"### {name}\n")
        out.append(
            f"{rec['started_at']} to {rec['finished_at']}; {m.get('cpu_count')} x {m.get('cpu_model', '?')}, "
            f"{round(m.get('mem_total_kb', 0) / 1048576, 1)} GiB, Python {m.get('python')}, load at start "
            f"{m.get('loadavg_at_start')}{' (quick)' if rec.get('quick') else ''}\n"
        )
        if "error" in rec["figures"]:
            out.append(f"failed: {rec['figures']['error']}\n")
            continue
        out.append(fn(rec) + "\n")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    print(render(load(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
