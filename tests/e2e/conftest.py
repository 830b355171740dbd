"""End to end: the daemon as a real process (`taskbridge run`, forked with its modules imported:
tests/clirun.py) against the five fakes as real servers on loopback. Processes are killed for
real (SIGKILL) where a test says so."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from connectors.fakekit import free_port
from tests import clirun
from tests.world import World

PLATFORMS = ("impactly", "vortask", "agentkanban", "runs", "squads")


class DaemonProcess:
    """One `taskbridge run` process with its log captured to a file. It is forked from
    tests/clirun.py's server, with the daemon's modules imported (a second or more a start
    saved); a subclass with `FORKED = False` starts `python -m bridge run` cold, as a service
    manager does (the benchmarks, whose CPU and memory figures are the process's own)."""

    FORKED: ClassVar[bool] = True

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config = config
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | clirun.Forked | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arguments(self) -> list[str]:
        return ["run", "--config", str(self.config)]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bridge", *self.arguments()]

    def start(self, *, wait: bool = True) -> DaemonProcess:
        env = clirun.clean_env()
        with self.log.open("ab") as out:
            out.write(f"\n=== start {self.starts} ===\n".encode())
            out.flush()  # before the process appends to the file too
            if self.FORKED:
                self.proc = clirun.start(self.arguments(), log=self.log, env=env)
            else:
                self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=env)
        self.starts += 1
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as a crash or an OOM kill would be."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 40) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def get(self, path: str, token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(self.url + path, headers=headers, timeout=10)


def wait_until(
    predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.25, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (httpx.HTTPError, OSError, KeyError, ValueError, StopIteration, AssertionError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: last {last!r}")


@pytest.fixture
def world() -> Iterator[World]:
    w = World(PLATFORMS).start()
    yield w
    w.stop()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def make(world: World, **config_kw: Any) -> DaemonProcess:
        port = free_port()
        path = world.config(tmp_path, port=port, **config_kw)
        d = DaemonProcess(path, port, tmp_path / f"daemon-{len(started)}.log")
        started.append(d)
        return d

    yield make
    for d in started:
        d.kill()
