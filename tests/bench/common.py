"""What every benchmark shares: machine facts, JSON output, percentiles, the daemon as a real
process (with its RSS), the fakes' request logs with timestamps, and bounded waits.

The fakes run in this process (tests.world.World: five uvicorn servers on loopback, each in its own
thread); the daemon runs as a separate process (`python -m bridge run --config ...`), exactly as
an operator runs it. Why in-thread fakes: the benchmarks seed tens of thousands of tasks straight
into the fakes' state (over HTTP it would take longer than the benchmarks), and in-process fakes
let a request log record the moment each request was answered (see `TimedLog`). Their cost: the
five fakes share one interpreter (one GIL) with the load generator, on the same 2 cores as the
daemon; every figure here includes that, and the raw baselines run against the same fakes under
the same conditions so the ratios cancel most of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from connectors.fakekit import LoggedRequest, RequestLog, free_port
from tests.e2e.conftest import DaemonProcess
from tests.world import World

ALL = ("impactly", "vortask", "agentkanban", "runs", "squads")
COMMENT_PLATFORMS = ("impactly", "vortask", "agentkanban")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# The unified API token every benchmark config carries (read, write, admin).
API_TOKEN = "tb_bench_token_not_a_secret"
API_TOKENS = [
    {"name": "bench", "sha256": hashlib.sha256(API_TOKEN.encode()).hexdigest(), "scopes": ["admin"]}
]


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the JSON lines."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        info["mem_total_kb"] = int(Path("/proc/meminfo").read_text().split()[1])
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    return info


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def emit(name: str, *, quick: bool, started: str, params: dict[str, Any], figures: dict[str, Any]) -> dict:
    """Print one benchmark's JSON object on stdout (one line) and return it."""
    record = {
        "benchmark": name,
        "quick": quick,
        "started_at": started,
        "finished_at": now_iso(),
        "machine": machine(),
        "params": params,
        "figures": figures,
    }
    print(json.dumps(record, sort_keys=False, default=str), flush=True)
    return record


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks; None if empty."""
    data = sorted(values)
    if not data:
        return None
    if len(data) == 1:
        return data[0]
    k = (len(data) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def summary(values: list[float], *, scale: float = 1000.0, digits: int = 1) -> dict[str, Any]:
    """p50/p95/p99/max (milliseconds by default) and the count."""

    def r(x: float | None) -> float | None:
        return None if x is None else round(x * scale, digits)

    return {
        "n": len(values),
        "p50": r(percentile(values, 50)),
        "p95": r(percentile(values, 95)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values) if values else None),
        "mean": r(sum(values) / len(values) if values else None),
    }


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll `predicate` until truthy or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except (httpx.HTTPError, KeyError, AssertionError, ValueError) as exc:
            last = None
            _ = exc
        if last or time.monotonic() >= deadline:
            return last
        time.sleep(interval)


# -- request logs with timestamps ---------------------------------------------------------------


class TimedLog(RequestLog):
    """A fake's request log that also records when each request was answered, and (with a
    `probe`) what the addressed task held right after a write.

    fakekit's middleware calls `add()` on the fake's own loop when the response starts, i.e.
    after the handler changed the fake's state, so the stamp is the moment the write became
    visible there (time.monotonic: CLOCK_MONOTONIC, one clock for every process on the machine),
    and the probe reads exactly the value that write left.
    """

    def __init__(self, probe: Callable[[LoggedRequest], Any] | None = None) -> None:
        super().__init__()
        self.times: list[float] = []
        self.values: list[Any] = []
        self.probe = probe

    def add(self, entry: LoggedRequest) -> None:
        value = None
        if self.probe is not None and entry.method in WRITE_METHODS:
            try:
                value = self.probe(entry)
            except Exception:
                value = None
        self.times.append(time.monotonic())
        self.values.append(value)
        self.entries.append(entry)

    def clear(self) -> None:
        self.entries.clear()
        self.times.clear()
        self.values.clear()

    def since(self, index: int) -> list[tuple[float, LoggedRequest]]:
        n = min(len(self.times), len(self.entries))
        return list(zip(self.times[index:n], self.entries[index:n], strict=True))

    def since_with_values(self, index: int) -> list[tuple[float, LoggedRequest, Any]]:
        n = min(len(self.times), len(self.entries), len(self.values))
        return list(zip(self.times[index:n], self.entries[index:n], self.values[index:n], strict=True))


def title_probe(world: World, platform: str) -> Callable[[LoggedRequest], Any]:
    """For a write to a task's path: that task's title as the fake holds it now (in-process)."""
    fake: Any = world.fakes[platform]
    scope = world.scopes[platform]

    def tasks() -> dict[Any, Any]:
        if platform == "vortask":
            return fake.projects[int(scope)].tasks
        if platform == "agentkanban":
            return fake.boards[scope].tasks
        return fake.tasks

    def probe(entry: LoggedRequest) -> Any:
        table = tasks()
        for seg in reversed(entry.path.strip("/").split("/")):  # the task id comes after the scope's
            key: Any = int(seg) if platform == "vortask" and seg.isdigit() else seg
            task = table.get(key)
            if task is not None:
                return task["title"] if isinstance(task, dict) else task.title
        return None

    return probe


def webhooks_pending(world: World) -> int:
    """Webhook deliveries the fakes have queued or are retrying: the daemon's answers to them
    are part of a run's work (its CPU, its time), so a run ends only once they are 0."""
    return sum(fake.webhooks.pending for fake in world.fakes.values())


def install_timed_logs(world: World, probes: bool = True) -> dict[str, TimedLog]:
    logs = {}
    for platform_name, fake in world.fakes.items():
        timed = TimedLog(title_probe(world, platform_name) if probes else None)
        fake.requests = timed
        logs[platform_name] = timed
    return logs


def classify(entry: LoggedRequest) -> str:
    """read | write | mcp (Vortask's MCP endpoint is JSON-RPC over POST: reads and writes alike)."""
    if entry.route == "/mcp" or entry.path.startswith("/mcp"):
        return "mcp"
    return "write" if entry.method in WRITE_METHODS else "read"


def counts(entries: Iterable[LoggedRequest]) -> dict[str, int]:
    out = {"read": 0, "write": 0, "mcp": 0, "total": 0}
    for e in entries:
        out[classify(e)] += 1
        out["total"] += 1
    return out


# -- the world and the daemon -------------------------------------------------------------------


@contextlib.contextmanager
def bench_world(platforms: tuple[str, ...] = ALL) -> Iterator[World]:
    # A short switch interval: the five fakes and the load generator share this interpreter, and
    # the default 5 ms would let one busy thread hold the GIL long enough to blur the timings.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    world = World(platforms).start()
    try:
        yield world
    finally:
        world.stop()
        sys.setswitchinterval(previous)


class BenchDaemon(DaemonProcess):
    """DaemonProcess plus what the benchmarks read: RSS, CPU, metrics, the unified API. With
    TASKBRIDGE_BENCH_PROFILE=1 (`--profile`), py-spy samples each daemon process it starts and
    writes its stacks beside its log when the process ends: profile-N.txt, in the collapsed
    ("folded") format that flame graph tools read, and profile-N.top.txt, the frames that held
    the CPU most (python -m tests.bench.profile_top). With TASKBRIDGE_BENCH_SQLCPU=1
    (`--sql-cpu`), the daemon runs under tests/bench/sqlcpu.py, which writes sqlcpu-N.json (the
    CPU spent inside SQLAlchemy by our caller) beside the log, and sqlcpu-N.txt when it ends;
    with TASKBRIDGE_BENCH_LOOPSTEPS=1 (`--loop-steps`) under tests/bench/loopsteps.py, which
    writes loopsteps-N.json and .txt (how long its event loop's steps took, the long ones named).
    Each starts cold (`python -m bridge run`), as a service manager starts one: the figures are
    the process's own, its imports and start-up included."""

    FORKED = False

    def command(self) -> list[str]:
        command = super().command()  # [python, "-m", "bridge", ...]
        # Each wrapper runs the module named after its output as __main__: they stack.
        if os.environ.get("TASKBRIDGE_BENCH_SQLCPU"):
            self._sqlcpu = self.log.with_name(f"sqlcpu-{self.starts}.json")
            command = [*command[:2], "tests.bench.sqlcpu", str(self._sqlcpu), *command[2:]]
        if os.environ.get("TASKBRIDGE_BENCH_LOOPSTEPS"):
            self._loopsteps = self.log.with_name(f"loopsteps-{self.starts}.json")
            command = [*command[:2], "tests.bench.loopsteps", str(self._loopsteps), *command[2:]]
        return command

    def start(self, *, wait: bool = True) -> BenchDaemon:
        super().start(wait=False)
        if os.environ.get("TASKBRIDGE_BENCH_PROFILE") and self.proc is not None:
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            out = self.log.with_name(f"profile-{self.starts - 1}.txt")
            self._spy = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(self.proc.pid),
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self._profile = out
        if wait:
            self.wait_ready()
        return self

    def terminate(self, timeout: float = 40) -> int:
        code = super().terminate(timeout)
        self._finish_profile()
        return code

    def kill(self) -> None:
        super().kill()
        self._finish_profile()

    def _finish_profile(self) -> None:
        sqlcpu = getattr(self, "_sqlcpu", None)
        if sqlcpu is not None and sqlcpu.exists():
            from tests.bench.sqlcpu import show

            sqlcpu.with_suffix(".txt").write_text(show(json.loads(sqlcpu.read_text())))
        loopsteps = getattr(self, "_loopsteps", None)
        if loopsteps is not None and loopsteps.exists():
            from tests.bench import loopsteps as steps

            loopsteps.with_suffix(".txt").write_text(steps.show(json.loads(loopsteps.read_text())))
        spy, out = getattr(self, "_spy", None), getattr(self, "_profile", None)
        if spy is None or out is None:
            return
        self._spy = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(timeout=30)  # py-spy writes its file once the process it samples is gone
        if out.exists():
            from tests.bench.profile_top import summarise

            out.with_suffix(".top.txt").write_text(summarise(out.read_text()))

    def cpu_seconds(self) -> float:
        """The daemon process's user + system CPU time so far (/proc/PID/stat, clock ticks)."""
        return sum(self.cpu_times())

    def cpu_times(self) -> tuple[float, float]:
        """The daemon process's (user, system) CPU time so far: the system part is the kernel's
        work on its behalf (sockets, files, page faults), the rest its own code and libraries'."""
        assert self.proc is not None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0, 0.0
        # After the command name: state is field 3, utime 14 and stime 15 (proc(5)), 1-based.
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def cpu_since(self, before: tuple[float, float]) -> tuple[float, float]:
        """(user, system) CPU seconds since `before`, an earlier `cpu_times()`."""
        (user, system), (user0, system0) = self.cpu_times(), before
        return user - user0, system - system0

    def status_kb(self) -> dict[str, int]:
        assert self.proc is not None
        out = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
        return out

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url + "/metrics", timeout=10).text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric_sum(self, name: str, **labels: str) -> float:
        total = 0.0
        for (n, lbls), value in self.metrics().items():
            d = dict(lbls)
            if n == name and all(d.get(k) == v for k, v in labels.items()):
                total += value
        return total

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kw)

    def connectors(self) -> list[dict[str, Any]]:
        return list(self.api("GET", "/api/v1/connectors").json())

    def outbox_depth(self) -> int:
        return sum(int(c["outbox_depth"]) for c in self.connectors())

    def parked(self) -> int:
        return sum(int(c["outbox_parked"]) for c in self.connectors())

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text()[-chars:]
        except OSError:
            return ""

    def errors_in_log(self) -> list[str]:
        try:
            lines = self.log.read_text().splitlines()
        except OSError:
            return []
        return [ln for ln in lines if "Traceback" in ln or " ERROR " in ln or "ERROR:" in ln]


@dataclass
class Setup:
    world: World
    tmp: Path
    logs: dict[str, TimedLog] = field(default_factory=dict)
    daemons: list[BenchDaemon] = field(default_factory=list)

    def daemon(self, name: str, **config_kw: Any) -> BenchDaemon:
        """A daemon process on a fresh port with a config written by World.config()."""
        port = config_kw.pop("port", None) or free_port()
        sub = self.tmp / name
        sub.mkdir(parents=True, exist_ok=True)
        config_kw.setdefault("server_tokens", API_TOKENS)
        path = self.world.config(sub, port=port, **config_kw)
        d = BenchDaemon(path, port, sub / "daemon.log")
        self.daemons.append(d)
        return d

    def stop_all(self) -> None:
        for d in self.daemons:
            with contextlib.suppress(Exception):
                if d.proc is not None and d.proc.poll() is None:
                    try:
                        d.terminate(timeout=40)
                    except Exception:
                        d.kill()


def hist_quantiles(d: BenchDaemon, name: str = "taskbridge_propagation_seconds") -> dict[str, Any]:
    """p50/p95/p99 estimated from a daemon histogram's buckets (upper bound of the bucket)."""
    buckets: list[tuple[float, float]] = []
    for (n, lbls), value in d.metrics().items():
        if n == name + "_bucket":
            le = dict(lbls)["le"]
            buckets.append((math.inf if le == "+Inf" else float(le), value))
    agg: dict[float, float] = {}
    for le, v in buckets:
        agg[le] = agg.get(le, 0.0) + v
    ordered = sorted(agg.items())
    total = ordered[-1][1] if ordered else 0
    out: dict[str, Any] = {"n": int(total)}
    for q in (50, 95, 99):
        bound = None
        for le, cum in ordered:
            if total and cum >= total * q / 100:
                bound = le
                break
        out[f"p{q}_le_s"] = bound
    return out


class RssSampler:
    """Samples a process's VmRSS every `every` seconds in a thread; `window()` gives the max since."""

    def __init__(self, daemon: BenchDaemon, every: float = 0.1) -> None:
        self.daemon = daemon
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            kb = self.daemon.status_kb().get("VmRSS")
            if kb:
                self.samples.append((time.monotonic(), kb))
            self._stop.wait(self.every)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def max_between(self, t0: float, t1: float) -> int | None:
        vals = [kb for t, kb in self.samples if t0 <= t <= t1]
        return max(vals) if vals else None


def free_tcp_port() -> int:
    return free_port()
