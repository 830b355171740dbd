"""`python -m bridge ARGS` as a real process, without paying for its imports each time.

A command's own work is tens of milliseconds; starting Python and importing the CLI, the store,
the connectors and the daemon is one to three seconds of CPU, and the suite runs a few hundred
commands. Each command here is a process of its own, forked (multiprocessing's "forkserver") from
a server that imported those modules once: its exit code, its stdout and stderr, its environment
and working directory are its own, as they are for `subprocess.run`, and a crash or a traceback
shows as it would. What it does not cover is `bridge/__main__.py` itself and a cold import; the
deploy tests and the demo's tests, which start `python -m bridge` as it is, cover both.

Nothing the CLI's modules read at import depends on the environment (each reads it when called),
so importing them before the environment is set changes nothing.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What the commands import; a module missing here is imported by each command that needs it.
PRELOAD = ["bridge.cli", "bridge.config", "bridge.store", "bridge.wiring", "bridge.oneshot", "bridge.daemon"]

_context: multiprocessing.context.ForkServerContext | None = None


def _forkserver() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        _context = context
    return _context


def _command(argv: list[str], env: dict[str, str], cwd: str, out: str, err: str, append: bool) -> None:
    """The child: the environment, directory and output files `subprocess` would give it."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    for fd, path in ((1, out), (2, err)):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    sys.argv = [str(ROOT / "bridge" / "__main__.py"), *argv]
    from bridge.cli import main

    # As `python -m bridge` does; an exception instead prints its traceback to stderr and exits 1.
    raise SystemExit(main(argv))


class Forked:
    """A command started by `start`, with the part of `subprocess.Popen`'s surface the tests use."""

    def __init__(self, process: multiprocessing.process.BaseProcess, args: list[str]) -> None:
        self._process = process
        self.args = args

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        # The forkserver reaps the child and tells its exit code through a pipe a moment later:
        # in between, the process is gone but not yet known to be (Popen ignores that too).
        if self._process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the daemon's own settings (TASKBRIDGE_*: a developer's
    shell, or CI, may hold some, and they would override what a test's config says), plus
    `extra`: what a test hands a command that should see only what the test gives it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBRIDGE_")}
    env.update(extra or {})
    return env


def _spawn(
    argv: Sequence[str], env: Mapping[str, str] | None, cwd: Path, out: str, err: str, *, append: bool
) -> Forked:
    env = dict(os.environ) if env is None else dict(env)
    # Daemonic: one a test left running is stopped when the test process exits, not waited for.
    process = _forkserver().Process(
        target=_command, args=(list(argv), env, str(cwd), out, err, append), daemon=True
    )
    process.start()
    return Forked(process, [sys.executable, "-m", "bridge", *argv])


def start(
    argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None, cwd: Path = ROOT
) -> Forked:
    """`taskbridge ARGV` started in a process of its own, its stdout and stderr appended to
    `log`, as `subprocess.Popen` with both streams to one file starts `python -m bridge ARGV`."""
    return _spawn(argv, env, cwd, str(log), str(log), append=True)


def run(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path = ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`taskbridge ARGV` in a process of its own, as `subprocess.run` with `capture_output=True,
    text=True` runs `python -m bridge ARGV`: with exactly `env`, or this process's environment."""
    with tempfile.TemporaryDirectory(prefix="taskbridge-cli-") as scratch:
        out, err = os.path.join(scratch, "stdout"), os.path.join(scratch, "stderr")
        process = _spawn(argv, env, cwd, out, err, append=False)
        try:
            code: int | None = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = None

        def read(path: str) -> str:
            return Path(path).read_text() if os.path.exists(path) else ""

        stdout, stderr = read(out), read(err)
    if code is None:
        raise subprocess.TimeoutExpired(process.args, timeout, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(process.args, code, stdout, stderr)
