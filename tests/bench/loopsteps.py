"""The daemon's event loop steps: how long each callback held the loop, and which held it long.

Everything the daemon does runs on one event loop, so a callback that runs long delays every
answer and every reply ready behind it: a platform waiting on a webhook's answer waits for the
loop step in progress, whatever that step is doing. `taskbridge_event_loop_lag_seconds` says
how late the loop runs; this says why. The wrapper runs the daemon with asyncio's
`Handle._run` (every callback the loop runs: a task's step, a transport's `data_received`, a
timer) timed on the monotonic clock, and keeps a histogram of all steps and, for each step of
LONG_MS or more, what it was: a task's step by its coroutine's name and where it resumed (the
innermost coroutine it had awaited in, and the line), anything else by the callback's name.

    python -m tests.bench.loopsteps OUT.json bridge run --config ...   # the daemon, measured
    python -m tests.bench.loopsteps --show OUT.json                    # the table

The benchmarks start their daemons this way with `--loop-steps` (BenchDaemon), writing
`loopsteps-N.json` and `loopsteps-N.txt` beside each daemon's log; it stacks with `--sql-cpu`.
The figures are written every five seconds and at exit. Timing a step costs about a
few microseconds, against the 20 to 60 us a step of the daemon's takes.
"""

from __future__ import annotations

import asyncio.events
import bisect
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from tests.bench import wrapper

LONG_MS = 4.0  # a step at least this long is named
BOUNDS_MS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)  # the histogram's upper bounds

_ROOT = str(Path(__file__).resolve().parents[2]) + "/"
# Coroutines of these are named by their caller: `sleep`, a lock's wait, a context manager's enter.
_PLUMBING = (str(Path(asyncio.events.__file__).parent) + "/", contextlib.__file__)


def _where(code: Any, line: int | None) -> str:
    return f"{code.co_filename.removeprefix(_ROOT).rsplit('/site-packages/', 1)[-1]}:{line}"


def _resumed_at(callback: Any) -> str | None:
    """Where a task's step resumes: the innermost coroutine it awaits in (asyncio's and
    contextlib's skipped for their caller), and the line."""
    task = getattr(callback, "__self__", None)
    if not isinstance(task, asyncio.Task):
        return None
    coro, frame = task.get_coro(), None
    while (inner := getattr(coro, "cr_frame", None)) is not None:
        if frame is None or not inner.f_code.co_filename.startswith(_PLUMBING):
            frame = inner
        coro = getattr(coro, "cr_await", None)
    return None if frame is None else f"{frame.f_code.co_qualname} ({_where(frame.f_code, frame.f_lineno)})"


def _name(callback: Any, resumed_at: str | None) -> str:
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        code = getattr(task.get_coro(), "cr_code", None)
        name = f"task {code.co_qualname}" if code is not None else f"task {task.get_name()}"
        return f"{name}, resumed in {resumed_at}" if resumed_at else name
    return f"callback {getattr(callback, '__qualname__', type(callback).__qualname__)}"


def install(out: Path) -> None:
    """Time every loop callback from now on; write the figures to `out`."""
    run = asyncio.events.Handle._run
    counts = [0] * (len(BOUNDS_MS) + 1)
    long: dict[str, list[float]] = {}  # name -> [steps, total ms, max ms]
    clock = time.perf_counter

    def timed(handle: asyncio.events.Handle) -> None:
        # Where a task resumes is read before the step (after it, the frames have moved on).
        resumed_at = _resumed_at(handle._callback)
        start = clock()
        try:
            run(handle)
        finally:
            ms = (clock() - start) * 1000
            counts[bisect.bisect_left(BOUNDS_MS, ms)] += 1  # the first bound it is within
            if ms >= LONG_MS:
                entry = long.setdefault(_name(handle._callback, resumed_at), [0, 0.0, 0.0])
                entry[0] += 1
                entry[1] += ms
                entry[2] = max(entry[2], ms)

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]

    def dump() -> None:
        # Copies made in one step under the GIL: the loop may add a step while this runs.
        out.write_text(
            json.dumps(
                {"bounds_ms": BOUNDS_MS, "steps": list(counts), "long_ms": LONG_MS, "long": dict(long)}
            )
        )

    wrapper.keep_dumping(dump, "loopsteps")


def show(data: dict[str, Any], top: int = 25) -> str:
    steps, bounds = data["steps"], data["bounds_ms"]
    total = sum(steps) or 1
    lines = [f"{sum(steps)} loop steps; by length (ms, at most):"]
    labels = [f"<= {b:g}" for b in bounds] + [f"> {bounds[-1]:g}"]
    lines += [
        f"  {label:>8}  {n:9d}  {100 * n / total:5.1f} %" for label, n in zip(labels, steps, strict=True)
    ]
    lines += [
        "",
        f"steps of {data['long_ms']:g} ms or more, by what ran:",
        "    steps   total ms   max ms  what",
    ]
    ranked = sorted(data["long"].items(), key=lambda kv: -kv[1][1])[:top]
    lines += [f"{int(n):9d} {ms:10.0f} {peak:8.1f}  {name}" for name, (n, ms, peak) in ranked]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    return wrapper.main(argv, install=install, show=show, usage=__doc__ or "")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
