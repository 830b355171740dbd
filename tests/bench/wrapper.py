"""What the benchmarks' measuring wrappers (`sqlcpu`, `loopsteps`) share: each installs its
measurement, writes its figures every DUMP_EVERY seconds and at exit (so a killed daemon leaves
them too), then runs the module it wraps as `__main__` (`python -m tests.bench.W OUT MODULE
ARGS...`), which may be another wrapper: they stack. Kept free of heavy imports, as it runs
before the daemon's own."""

from __future__ import annotations

import atexit
import json
import runpy
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DUMP_EVERY = 5.0  # seconds between writes of the figures


def keep_dumping(dump: Callable[[], None], name: str) -> None:
    """`dump()` every DUMP_EVERY seconds on a thread of its own, and once more at exit."""

    def every() -> None:
        while True:
            time.sleep(DUMP_EVERY)
            dump()

    atexit.register(dump)
    threading.Thread(target=every, name=name, daemon=True).start()


def main(
    argv: list[str], *, install: Callable[[Path], None], show: Callable[[dict[str, Any]], str], usage: str
) -> int:
    """`OUT MODULE ARGS...`: measure MODULE run as __main__ into OUT; `--show OUT`: the table."""
    if len(argv) == 2 and argv[0] == "--show":
        sys.stdout.write(show(json.loads(Path(argv[1]).read_text())))
        return 0
    if len(argv) < 2:
        sys.stderr.write(usage)
        return 2
    install(Path(argv[0]))  # before the wrapped module imports what is measured
    sys.argv = argv[1:]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    return 0
