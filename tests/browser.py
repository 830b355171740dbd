"""A real headless Chromium for the tests that check a page in a browser (tests/api/test_docs.py,
tests/console/test_console.py): Debian's chromium where one is installed (CI installs it,
.ci/run), driven over the DevTools protocol on a pipe, and able to reach nothing but loopback."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-extensions",
    "--disable-sync",
]


def chromium() -> str:
    """The browser's executable; the test is skipped without one (failed under CI)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
    pytest.skip("no chromium installed (apt-get install chromium)")


@contextlib.contextmanager
def loopback_only(executable: str, profile: Path) -> Iterator[Browser]:
    """A browser that reaches loopback (directly, Chromium's default) and nothing else: every
    request off the host goes to a "proxy" that refuses it, a bound port that never listens."""
    refuser = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    refuser.bind(("127.0.0.1", 0))
    with contextlib.closing(refuser):
        browser = Browser(
            executable, profile, [*ARGS, f"--proxy-server=http://127.0.0.1:{refuser.getsockname()[1]}"]
        )
        try:
            yield browser
        finally:
            browser.close()


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
    commands in on fd 3, answers out on fd 4, each a JSON message ended by a NUL)."""

    def __init__(self, executable: str, profile: Path, args: list[str]) -> None:
        to_chromium, commands = os.pipe()
        answers, from_chromium = os.pipe()
        # Above the descriptors bash redirects to, so that no redirection overwrites its source.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chromium, from_chromium)]
        os.close(to_chromium)
        os.close(from_chromium)
        argv = [executable, "--headless=new", "--remote-debugging-pipe", f"--user-data-dir={profile}", *args]
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{ends[0]} 4>&{ends[1]} {ends[0]}<&- {ends[1]}>&-', "bash", *argv],
            pass_fds=ends,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its renderers and helpers in a group of their own, ended with it
        )
        for fd in ends:
            os.close(fd)
        self._commands = os.fdopen(commands, "wb", buffering=0)
        self._answers_in = os.fdopen(answers, "rb", buffering=0)
        self._lock = threading.Lock()
        self._last = 0
        self._waiting: dict[int, queue.Queue[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        pending = b""
        while chunk := self._answers_in.read(65536):
            pending += chunk
            *messages, pending = pending.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                with self._lock:
                    waiter = self._waiting.pop(message["id"], None) if "id" in message else None
                    if waiter is None:
                        self.events.append(message)
                if waiter is not None:
                    waiter.put(message)

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 15,
    ) -> dict[str, Any]:
        answer: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._last += 1
            ident = self._last
            self._waiting[ident] = answer
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._commands.write(json.dumps(message).encode() + b"\0")
        try:
            got = answer.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"chromium did not answer {method} within {timeout} s") from None
        assert "error" not in got, (method, got["error"])
        return dict(got["result"])

    def of(self, method: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e["params"] for e in self.events if e["method"] == method]

    def page(self, viewport: tuple[int, int] | None = None) -> Page:
        """A new blank tab, its network, runtime, log and page events recorded (`of`)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Network", "Runtime", "Log", "Page"):
            page.call(f"{domain}.enable")
        if viewport is not None:
            width, height = viewport
            page.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
        return page

    def requested(self) -> list[str]:
        """Every URL a page of this browser asked for."""
        return [r["request"]["url"] for r in self.of("Network.requestWillBeSent")]

    def problems(self) -> list[dict[str, Any]]:
        """The errors logged and the exceptions thrown (a policy violation or a script error, say)."""
        logged = [e["entry"] for e in self.of("Log.entryAdded") if e["entry"]["level"] == "error"]
        return logged + self.of("Runtime.exceptionThrown")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout=5)
        with contextlib.suppress(OSError):
            self._commands.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group started for it, and nothing else
        self.proc.wait()


class Page:
    """One tab of a Browser (a DevTools session attached to it)."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.call(method, params, session=self.session)

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        """The expression's value in the page (a promise's, once it settles)."""
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        assert "exceptionDetails" not in result, json.dumps(result["exceptionDetails"])[:2000]
        return result["result"].get("value")

    def until(self, expression: str, what: str, timeout: float = 10) -> Any:
        """The expression's value once it is truthy on a loaded page; an AssertionError naming
        `what` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(AssertionError):  # a navigation replaced the page
                found = self.evaluate(f"document.readyState === 'complete' && ({expression})")
                if found:
                    return found
            time.sleep(0.05)
        raise AssertionError(f"the page never showed {what}")

    def screenshot(self, path: Path) -> Path:
        """The whole page as a PNG at `path`."""
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
