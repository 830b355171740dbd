"""`python -m tests.bench.profile_top PROFILE.txt [N]`: where a py-spy profile spent its samples.

Reads py-spy's raw ("collapsed") output, one line per distinct stack, `frame;frame;... count`,
and prints two tables: the frames that were running (self samples: the hot code itself), and the
functions that were on the stack (inclusive: each counted once per sample), with their share of
the samples taken while the process was busy. The benchmarks write one beside each daemon's
profile (`--profile`); the README's Performance section quotes them.
"""

from __future__ import annotations

import sys
from collections import Counter

IDLE = (
    "select (selectors.py",
    "_run_once (asyncio/base_events.py:1884)",
    "wait (threading.py",
    "get (queue.py",
    # aiosqlite's thread waiting in SimpleQueue.get (C code, so its frame shows the line that
    # called it); py-spy does not always see that thread as idle.
    "_connection_worker_thread (aiosqlite/core.py:59)",
)


def _frames(stack: str) -> list[str]:
    return [f.strip() for f in stack.split(";") if f.strip()]


def summarise(text: str, top: int = 25) -> str:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = idle = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = _frames(stack)
        if not frames:
            continue
        if any(frames[-1].startswith(i) or i in frames[-1] for i in IDLE):
            idle += n
            continue
        busy += n
        self_time[frames[-1]] += n
        for name in {
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f for f in frames
        }:
            inclusive[name] += n
    lines = [f"samples: {busy} busy, {idle} idle (100 Hz)", "", "self (the frame running):"]
    lines += [f"{100 * n / busy:5.1f}%  {name}" for name, n in self_time.most_common(top)] if busy else []
    lines += ["", "inclusive (on the stack):"]
    lines += [f"{100 * n / busy:5.1f}%  {name}" for name, n in inclusive.most_common(top)] if busy else []
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    top = int(argv[1]) if len(argv) > 1 else 25
    with open(argv[0]) as f:
        print(summarise(f.read(), top), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
