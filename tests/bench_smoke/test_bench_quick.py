"""The benchmarks' smoke test: `python -m tests.bench all --quick` runs, prints one JSON object
per benchmark, and the fault drill loses nothing and duplicates nothing.

The quick variants are small (the whole run is meant to take under 90 s on 2 cores); their figures
are not measurements. The real runs: `python -m tests.bench [NAME]` (README, "Performance").
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {"propagation", "raw_limit", "cost", "backfill", "api", "memory", "drill"}


def test_quick_benchmarks_run_and_the_drill_is_clean() -> None:
    t0 = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tests.bench", "all", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,  # a hang guard; the run is designed for well under 90 s
    )
    elapsed = time.monotonic() - t0
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    by_name = {r["benchmark"]: r for r in records}
    assert set(by_name) == EXPECTED, (sorted(by_name), result.stderr[-3000:])
    for r in records:
        assert "error" not in r["figures"], (r["benchmark"], r["figures"]["error"], result.stderr[-3000:])
        assert r["machine"]["cpu_count"] and r["machine"]["python"] and r["started_at"] and r["finished_at"]
    assert result.returncode == 0, result.stderr[-3000:]
    drill = by_name["drill"]["figures"]
    assert drill["changes_lost"] == [0] * len(drill["runs"]), drill["runs"]
    assert drill["duplicate_tasks"] == [0] * len(drill["runs"]), drill["runs"]
    assert drill["duplicate_comments"] == [0] * len(drill["runs"]), drill["runs"]
    assert drill["all_ok"], drill["runs"]
    assert by_name["cost"]["figures"]["echo_writes"]["zero"], by_name["cost"]["figures"]["echo_writes"]
    # The README's tables are made from this output: every section renders.
    from tests.bench.report import SECTIONS, render

    markdown = render(by_name)
    for name in EXPECTED:
        assert f"### {name}" in markdown and name in SECTIONS
    assert "failed:" not in markdown
    print(f"quick benchmarks took {elapsed:.0f} s")


def test_the_http_stack_benchmark_runs() -> None:
    """By name only (not in `all`): the CPU of one HTTP exchange, each server parser measured."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.bench", "http_stack", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    runs = record["figures"]["runs"]
    assert {r["server"].split()[1] for r in runs} == {"h11", "httptools"}, runs
    assert all(r["client"].startswith("the daemon's HttpClient") for r in runs), runs
    for r in runs:
        assert r["client_cpu_us_per_request"] > 0 and r["server_cpu_us_per_request"] > 0, r


def test_sql_cpu_and_loop_steps_measure_each_daemon(tmp_path: Path) -> None:
    """`--sql-cpu`: each daemon ran under tests/bench/sqlcpu.py and left its figures, keyed by the
    bridge function that asked SQLAlchemy for the work. `--loop-steps`, stacked on it (one run
    for both): each left a histogram of its event loop's steps, the long ones named."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.bench", "propagation", "--quick", "--sql-cpu", "--loop-steps"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scratch = Path(result.stderr.split("scratch kept in ")[1].split()[0])
    try:
        figures = [json.loads(p.read_text()) for p in scratch.rglob("sqlcpu-*.json")]
        assert figures, sorted(str(p) for p in scratch.rglob("*"))
        callers = {caller for f in figures for caller in f["callers"]}
        assert any(c.startswith("bridge/engine/outbox.py:claim ") for c in callers), sorted(callers)
        assert any(c.startswith("bridge/engine/inbox.py:receive ") for c in callers), sorted(callers)
        tables = [p.read_text() for p in scratch.rglob("sqlcpu-*.txt")]
        assert tables and all("inside SQLAlchemy's greenlets" in t for t in tables)
        steps = [json.loads(p.read_text()) for p in scratch.rglob("loopsteps-*.json")]
        assert len(steps) == len(figures), sorted(str(p) for p in scratch.rglob("*"))
        # A daemon's start-up imports and migrates on the loop: every run has steps, and long ones.
        assert all(sum(s["steps"]) > 1000 and s["long"] for s in steps), steps
        assert all(name.startswith(("task ", "callback ")) for s in steps for name in s["long"]), steps
        tables = [p.read_text() for p in scratch.rglob("loopsteps-*.txt")]
        assert tables and all("loop steps; by length" in t for t in tables)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
