"""CPU spent inside SQLAlchemy, by the daemon's function that asked for it.

py-spy cannot say which of our functions SQLAlchemy's time belongs to: the asyncio extension runs
every session and connection call in a greenlet whose stack starts at SQLAlchemy's own method,
so a profile shows `Session.execute` at the root and loses the caller. This wrapper runs the
daemon with `greenlet_spawn` replaced by a copy that measures, with the thread's CPU clock, the
time spent inside the greenlet (SQLAlchemy's work: compiling, the ORM's loading and flushing,
the driver's calls made inline) and, apart, the time its awaits took (the driver's coroutines;
on SQLite the inline runner, which does not yield, so that time is ours too), keyed by the first
frame of `bridge/` (outside `bridge/store/`) or `connectors/` up the awaiting chain, plus the
SQLAlchemy method called (`execute`, `flush`, `__aexit__` for a commit, ...). A statement that
`bridge.store.prepared.run` sent to SQLite's driver itself (no greenlet) is counted under the
method `run`, its CPU in the "inside" column.

    python -m tests.bench.sqlcpu OUT.json bridge run --config ...   # the daemon, measured
    python -m tests.bench.sqlcpu --show OUT.json                    # the table

The benchmarks start their daemons this way with `--sql-cpu` (BenchDaemon), writing
`sqlcpu-N.json` and `sqlcpu-N.txt` beside each daemon's log. The figures are written every
five seconds and at exit. The measurement itself costs a few microseconds a call.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bench import wrapper

_ROOT = str(Path(__file__).resolve().parents[2]) + "/"
_OURS = ("bridge/", "connectors/")


def _caller(depth: int) -> str:
    frame = sys._getframe(depth)
    method = frame.f_code.co_name
    while frame is not None:
        name = frame.f_code.co_filename.removeprefix(_ROOT)
        if name.startswith(_OURS) and not name.startswith("bridge/store/"):
            return f"{name}:{frame.f_code.co_name} {method}"
        frame = frame.f_back
    return f"? {method}"


def install(out: Path) -> None:
    """Measure every greenlet_spawn from now on; write the figures to `out`."""
    from sqlalchemy import util
    from sqlalchemy.util import concurrency

    shim = concurrency._concurrency_shim
    stats: dict[str, list[float]] = {}  # caller -> [calls, cpu inside the greenlet, cpu in its awaits]

    async def greenlet_spawn(
        fn: Callable[..., Any], *args: Any, _require_await: bool = False, **kwargs: Any
    ) -> Any:
        # SQLAlchemy's own loop (util/concurrency.py), with the clock read around each part.
        entry = stats.setdefault(_caller(2), [0, 0.0, 0.0])
        entry[0] += 1
        context = shim._AsyncIoGreenlet(fn, shim.getcurrent())
        start = time.thread_time()
        result = context.switch(*args, **kwargs)
        entry[1] += time.thread_time() - start
        while not context.dead:
            start = time.thread_time()
            try:
                value = await result
            except BaseException:
                entry[2] += time.thread_time() - start
                start = time.thread_time()
                result = context.throw(*sys.exc_info())
            else:
                entry[2] += time.thread_time() - start
                start = time.thread_time()
                result = context.switch(value)
            entry[1] += time.thread_time() - start
        return result

    concurrency.greenlet_spawn = greenlet_spawn  # type: ignore[assignment]
    util.greenlet_spawn = greenlet_spawn  # type: ignore[attr-defined]

    from bridge.store import _sqlite

    direct = _sqlite.execute

    def execute(*args: Any) -> Any:
        # A statement `prepared.run` sent to SQLite's driver itself: no greenlet, so counted
        # here, under the method `run`.
        entry = stats.setdefault(_caller(2), [0, 0.0, 0.0])
        entry[0] += 1
        start = time.thread_time()
        try:
            return direct(*args)
        finally:
            entry[1] += time.thread_time() - start

    _sqlite.execute = execute  # type: ignore[assignment]

    def dump() -> None:
        # dict() copies in one step under the GIL: the loop may add a caller while this runs.
        out.write_text(json.dumps({"process_cpu_s": time.process_time(), "callers": dict(stats)}))

    wrapper.keep_dumping(dump, "sqlcpu")


def show(data: dict[str, Any], top: int = 30) -> str:
    callers: dict[str, list[float]] = data["callers"]
    inside = sum(v[1] for v in callers.values())
    awaits = sum(v[2] for v in callers.values())
    total = data["process_cpu_s"] or 1e-9  # a process dumped before it ran anything
    lines = [
        f"process CPU {total:.2f} s; inside SQLAlchemy's greenlets (and direct runs) {inside:.2f} s "
        f"({100 * inside / total:.0f} %), in their awaits {awaits:.2f} s ({100 * awaits / total:.0f} %)",
        "",
        "    inside     awaits    calls  us/call  caller and method",
    ]
    ranked = sorted(callers.items(), key=lambda kv: -(kv[1][1] + kv[1][2]))[:top]
    for caller, (calls, cpu, waited) in ranked:
        per = 1e6 * (cpu + waited) / calls if calls else 0.0
        lines.append(f"{1000 * cpu:7.0f} ms {1000 * waited:7.0f} ms {int(calls):8d} {per:8.0f}  {caller}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    return wrapper.main(argv, install=install, show=show, usage=__doc__ or "")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
