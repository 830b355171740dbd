"""`python -m tests.bench [NAME ...] [--quick]`: run benchmarks by name, or all of them (the default).

Each benchmark prints ONE JSON object on stdout (figures, parameters, machine facts, start and
finish times); progress goes to stderr. NAME is one of: propagation, raw_limit, backfill, cost,
api, memory, drill, all (those seven, the default), or replicas, http_stack and backfill_bulk
(by name only).
`--quick` runs small variants (the CI smoke test runs `all --quick`). `--drill-runs N` repeats the drill N times
(default 3: the issue's bar is three consecutive clean runs). `--rates 20,50` runs propagation
at just those edit rates. `--keep` keeps the scratch directory (daemon logs, stores, the
drill's journal of changes); `--profile` also keeps a py-spy profile of each daemon process
there, with a summary of its hottest frames (pip install '.[bench]'; see
tests/bench/profile_top.py); `--sql-cpu` keeps, for each daemon process, the CPU it spent inside
SQLAlchemy by the function of ours that asked (tests/bench/sqlcpu.py), which py-spy cannot say;
`--loop-steps` how long each daemon's event loop steps took and which ran long
(tests/bench/loopsteps.py), what delays every answer behind them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bench.common import Setup, bench_world, emit, log, now_iso

NAMES = ("propagation", "raw_limit", "cost", "backfill", "api", "memory", "drill")
# By name only, not in `all`: replicas needs PostgreSQL's binaries; backfill_bulk is a before and
# after of one feature (two backfills).
EXTRA = ("replicas", "http_stack", "backfill_bulk")


class Context:
    """What one invocation shares between benchmarks: a world of fakes (made on first use),
    a scratch directory, the quick flag, and a cache (e.g. the propagation rig)."""

    def __init__(self, quick: bool, keep: bool, drill_runs: int, rates: list[float] | None = None) -> None:
        self.quick = quick
        self.rates = rates  # propagation's edit rates, when `--rates` names them
        self.keep = keep
        self.drill_runs = drill_runs
        self.tmp = Path(tempfile.mkdtemp(prefix="taskbridge-bench-"))
        self.shared: dict[str, Any] = {}
        self.stack = contextlib.ExitStack()
        self.shared_stack = contextlib.ExitStack()
        self.bench_stack = contextlib.ExitStack()
        self._setup: Setup | None = None
        self.records: list[dict[str, Any]] = []
        self.names: tuple[str, ...] = ()

    def setup(self) -> Setup:
        """The shared world (five fakes) for propagation, raw_limit and cost."""
        if self._setup is None:
            world = self.shared_stack.enter_context(bench_world())
            self._setup = Setup(world, self.tmp / "shared")
            self.shared_stack.callback(self._setup.stop_all)
        return self._setup

    def close_shared(self) -> None:
        rig = self.shared.pop("rig", None)
        if rig is not None:
            rig.stop_daemon()
        self.shared_stack.close()
        self._setup = None

    def fresh(self, name: str) -> Setup:
        """A world of its own (for benchmarks that fill the fakes)."""
        world = self.bench_stack.enter_context(bench_world())
        s = Setup(world, self.tmp / name)
        self.bench_stack.callback(s.stop_all)
        return s

    def end_benchmark(self) -> None:
        """Stop the daemons and worlds a benchmark made for itself."""
        self.bench_stack.close()
        self.bench_stack = contextlib.ExitStack()

    def started(self) -> str:
        return now_iso()

    def emit(
        self, name: str, started: str, params: dict[str, Any], figures: dict[str, Any]
    ) -> dict[str, Any]:
        rec = emit(name, quick=self.quick, started=started, params=params, figures=figures)
        self.records.append(rec)
        return rec

    def close(self) -> None:
        self.end_benchmark()
        self.close_shared()
        self.stack.close()
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            log(f"scratch kept in {self.tmp}")


def registry() -> dict[str, Callable[[Context], Any]]:
    from tests.bench import api, backfill, drill, http_stack, memory, propagation, replicas

    return {
        "propagation": propagation.bench_propagation,
        "raw_limit": propagation.bench_raw_limit,
        "cost": propagation.bench_cost,
        "backfill": backfill.bench_backfill,
        "backfill_bulk": backfill.bench_backfill_bulk,
        "api": api.bench_api,
        "memory": memory.bench_memory,
        "drill": drill.bench_drill,
        "replicas": replicas.bench_replicas,
        "http_stack": http_stack.bench_http_stack,
    }


# The quick `all` (the CI smoke test, which must finish in under 90 s on 2 cores) runs these
# groups side by side, each in its own process: most of their time is spent waiting (daemon
# start-ups, restarts, backoffs, polls). Quick figures are a smoke test, not measurements; a full
# run is strictly one benchmark at a time.
QUICK_GROUPS = (("propagation", "raw_limit", "cost"), ("backfill", "api", "memory"), ("drill",))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="*", default=["all"], choices=(*NAMES, *EXTRA, "all"))
    parser.add_argument("--quick", action="store_true", help="small variants (CI smoke test)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, stores)")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy profile of each daemon process (implies --keep)"
    )
    parser.add_argument(
        "--sql-cpu",
        action="store_true",
        help="CPU inside SQLAlchemy by our caller, per daemon process (tests/bench/sqlcpu.py; implies --keep)",
    )
    parser.add_argument(
        "--loop-steps",
        action="store_true",
        help="how long each daemon's event loop steps took, the long ones named (tests/bench/loopsteps.py; implies --keep)",
    )
    parser.add_argument("--drill-runs", type=int, default=None, help="drill repetitions (default 3, quick 1)")
    parser.add_argument(
        "--rates",
        type=_rates,
        default=None,
        help="propagation: only these edit rates per second, comma-separated (e.g. 20,50)",
    )
    parser.add_argument("--group", default=None, help=argparse.SUPPRESS)  # internal: names, comma-separated
    args = parser.parse_args(argv)
    drill_runs = args.drill_runs if args.drill_runs is not None else (1 if args.quick else 3)
    if args.profile:
        os.environ["TASKBRIDGE_BENCH_PROFILE"] = "1"  # read by BenchDaemon.start
        args.keep = True
    if args.sql_cpu:
        os.environ["TASKBRIDGE_BENCH_SQLCPU"] = "1"  # read by BenchDaemon.command
        args.keep = True
    if args.loop_steps:
        os.environ["TASKBRIDGE_BENCH_LOOPSTEPS"] = "1"  # read by BenchDaemon.command
        args.keep = True
    everything = "all" in args.name
    if args.quick and everything and args.group is None:
        return run_groups(args)
    names = tuple(args.group.split(",")) if args.group else NAMES if everything else tuple(args.name)
    ctx = Context(args.quick, args.keep, drill_runs, args.rates)
    ctx.names = names
    benches = registry()
    failed = 0
    t0 = time.monotonic()
    try:
        for name in names:
            log(f"== {name}{' (quick)' if args.quick else ''}")
            t = time.monotonic()
            try:
                benches[name](ctx)
            except Exception as exc:  # one benchmark failing must not hide the others' figures
                failed += 1
                import traceback

                traceback.print_exc(file=sys.stderr)
                emit(
                    name,
                    quick=args.quick,
                    started=now_iso(),
                    params={},
                    figures={"error": f"{type(exc).__name__}: {exc}"[:2000]},
                )
            ctx.end_benchmark()
            log(f"== {name} took {time.monotonic() - t:.1f} s")
            if name == "cost":
                ctx.close_shared()  # propagation, raw_limit and cost are done with their world
    finally:
        ctx.close()
    log(f"done in {time.monotonic() - t0:.1f} s; {failed} failed")
    return 1 if failed else 0


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be positive numbers: {text!r}")
    return rates


def run_groups(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    extra = ["--keep"] if args.keep else []
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.bench", "all", "--quick", "--group", ",".join(group), *extra],
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(Path(__file__).resolve().parents[2]),
        )
        for group in QUICK_GROUPS
    ]
    failed = 0
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=900)
            for line in out.splitlines():
                if line.strip():
                    print(line, flush=True)
            failed += proc.returncode != 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    log(f"quick run done in {time.monotonic() - t0:.1f} s; {failed} groups failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
