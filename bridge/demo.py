"""`taskbridge demo`: the five platform fakes on loopback with seeded tasks, a config derived from
config.example.yaml, and the daemon (webhooks registered), on the real code path. It prints what
to open and what to try, then a line of progress every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from ruamel.yaml import YAML
from sqlalchemy import select

import connectors
from bridge import config as config_mod
from bridge.api.status import summary
from bridge.daemon import Daemon
from bridge.logs import setup as setup_logging
from bridge.store.tables import LinkRow, TaskRow
from connectors.fakekit import Fake, free_port

# Shipped in the package (config.example.yaml at the repository root links to it), so an
# installed taskbridge demo uses the same documented config as a checkout.
EXAMPLE = Path(__file__).resolve().parent / "config.example.yaml"
SEED = 7
WEBHOOK_SECRET = "whsec_demo_" + "0" * 16
STORE, CONFIG = "taskbridge.db", "taskbridge.yaml"  # what the demo writes in its directory


def demo_config(fakes: dict[str, Fake], workdir: Path, port: int, api_token: str) -> Path:
    """The example config with its connectors pointed at the fakes (names and comments kept)."""
    yaml = YAML(typ="rt")
    data: Any = yaml.load(EXAMPLE.read_text(encoding="utf-8")) or {}
    data["store"] = {"url": f"sqlite+aiosqlite:///{workdir / STORE}"}
    data["server"] = {
        "listen": f"127.0.0.1:{port}",
        "public_url": f"http://127.0.0.1:{port}",
        "tokens": [
            {
                "name": "demo",
                "sha256": hashlib.sha256(api_token.encode()).hexdigest(),
                "scopes": ["read", "write", "admin"],
            }
        ],
    }
    names = {c["platform"]: name for name, c in (data.get("connectors") or {}).items()}
    conns: dict[str, Any] = {}
    for platform, fake in fakes.items():
        name = names.get(platform, platform)
        conns[name] = {
            **fake.connector_config(),
            "webhook_secret": WEBHOOK_SECRET,
            "poll_interval": "10s",
            "timeout": "10s",
        }
    data["connectors"] = conns
    people: dict[str, Any] = {}
    for platform, fake in fakes.items():
        for key, remote_id in fake.people().items():
            people.setdefault(key, {"name": key.title(), "ids": {}})["ids"][names.get(platform, platform)] = (
                remote_id
            )
    data["people"] = people
    route = dict((data.get("routes") or [{}])[0])
    route.update(
        name=route.get("name", "engineering"),
        members=[{"connector": names.get(p, p), "scope": f.scope()} for p, f in fakes.items()],
    )
    route.pop("filter", None)  # the demo mirrors every seeded task
    data["routes"] = [route]
    path = workdir / CONFIG
    with path.open("w", encoding="utf-8") as out:
        yaml.dump(data, out)
    return path


async def _status_line(daemon: Daemon) -> str:
    async with daemon.store.read() as session:
        s = await summary(session)
    per = ", ".join(f"{name} {s.linked.get(name, 0)}" for name in daemon.ctx.connectors)
    return f"{s.tasks} tasks; linked on {per}; {sum(s.waiting.values())} writes waiting"


def _banner(console: Console, fakes: dict[str, Fake], cfg_path: Path, port: int, token: str) -> None:
    api = f"http://127.0.0.1:{port}"

    def say(text: str) -> None:
        console.print(text, highlight=False)

    say("[bold]taskbridge demo[/bold]: five platform fakes, one route over all five, the daemon.")
    say(f"  config      {cfg_path}   (derived from config.example.yaml)")
    say(f"  API docs    {api}/docs   (Authorize with the token below)")
    say(f"  console     {api}/console   (log in with the token below)")
    say(f"  token       {token}")
    say(f"  tasks       curl -H 'Authorization: Bearer {token}' {api}/api/v1/tasks")
    say(f"  connectors  curl -H 'Authorization: Bearer {token}' {api}/api/v1/connectors")
    say(f"  metrics     {api}/metrics")
    for platform, fake in fakes.items():
        say(f"  {platform:<11} {fake.url}{fake.api_root}   (fake; state at {fake.url}/_fake/state)")
    for platform, fake in fakes.items():
        edit = fake.example_edit(f"Renamed on {platform}")
        if edit is not None:
            say(f"Try: change a task on the {platform} fake and watch it reach the others:")
            say(f"  {edit.curl()}")
            break
    say("Or create one through the unified API:")
    say(
        f"  curl -X POST -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' "
        f'-d \'{{"route": "engineering", "title": "Hello from the API", "priority": "urgent"}}\' '
        f"{api}/api/v1/tasks"
    )
    say("Ctrl-C stops the demo.\n")


def _claim(base: Path) -> str | None:
    """Take `base`'s store for this demo, or name the file that is in the way. An earlier demo's
    store links tasks of fakes that are gone (the seeded ones now have other ids), a live demo's
    is in use by its daemon, and a config there may be a person's: nothing is reused or deleted.
    The store file is created exclusively, so of two demos started on one directory at once,
    one gets it; mode 0600 as the store makes it (it will hold webhook secrets)."""
    for name in (STORE, CONFIG):
        if (base / name).exists():
            return name
    try:
        os.close(os.open(base / STORE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return STORE
    return None


def run_demo(
    *, port: int = 8080, seconds: float | None = None, workdir: str | None = None, check: bool = False
) -> int:
    """The demo; with `check`, its guided tour run by itself (for CI): wait for the first sync,
    rename a task on one fake, time it reaching the others, exit 0 only if it did."""
    # Until the daemon's loop handles it, SIGTERM stops the demo as Ctrl-C does: the finally
    # blocks below stop the fakes and remove the directory the demo made.
    signal.signal(signal.SIGTERM, _interrupt)
    busy = config_mod.listen_problem("127.0.0.1", port)  # before the banner tells anyone to open it
    if busy:
        print(f"demo could not start: {busy}; choose another port with --port N", file=sys.stderr)
        return 1
    try:
        base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="taskbridge-demo-"))
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        # The directory that failed: --dir's first missing parent, or the temporary one.
        where = exc.filename or workdir or tempfile.gettempdir()
        print(
            f"demo could not start: cannot create the directory {where}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    try:
        return _demo_in(base, port=port, seconds=seconds, check=check)
    finally:
        # A directory the demo made is its own: nothing in it is worth keeping once the fakes,
        # whose tasks live in memory, are gone (the README suggests no look at it after). --dir
        # is the operator's, kept as it is.
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _demo_in(base: Path, *, port: int, seconds: float | None, check: bool) -> int:
    try:
        taken = _claim(base)
    except OSError as exc:
        print(f"demo could not start: cannot write in {base}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if taken:
        print(
            f"demo: {base} already holds {taken} (an earlier demo's, or someone's): the demo starts "
            "from an empty store; choose another --dir, or leave it out for a temporary one",
            file=sys.stderr,
        )
        return 2
    # Every line whole, never wrapped at the width (80 when output is not a terminal): commands
    # must paste, and a progress line cut mid-phrase reads as two.
    console = Console(soft_wrap=True)
    fakes: dict[str, Fake] = {}
    try:
        for platform in connectors.PLATFORMS:
            cls = connectors.fake_class(platform)
            fakes[platform] = cls(token=cls.demo_credential, seed=SEED).start(free_port())
        api_token = "tb_demo_" + secrets.token_urlsafe(16)
        cfg_path = demo_config(fakes, base, port, api_token)
        cfg = config_mod.load(cfg_path)
        setup_logging("warning", "text", secrets=[*cfg.connector_secrets(), api_token])
        if check:
            _banner(console, fakes, cfg_path, port, api_token)
            return asyncio.run(_tour(console, cfg, fakes))
        return asyncio.run(
            _run(console, cfg, seconds, lambda: _banner(console, fakes, cfg_path, port, api_token))
        )
    except OSError as exc:
        console.print(f"[red]demo could not start:[/red] {exc}")
        return 1
    finally:
        # The loop's end put SIGTERM back to its default: one now would cut the clean-up short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for fake in fakes.values():
            with contextlib.suppress(Exception):
                fake.stop()


async def _run(
    console: Console, cfg: config_mod.Config, seconds: float | None, announce: Callable[[], None]
) -> int:
    daemon = Daemon(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stopping.set)
    # The banner says Ctrl-C stops the demo: from here a signal is a stop that ends in 0.
    announce()
    await daemon.start()
    started = time.monotonic()
    try:
        while not daemon.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(daemon.stopping.wait(), timeout=3)
            elapsed = time.monotonic() - started
            console.print(f"[{elapsed:5.0f}s] {await _status_line(daemon)}")
            if seconds is not None and elapsed >= seconds:
                break
    finally:
        line = await _status_line(daemon)
        await daemon.stop()
    console.print(f"demo stopped: {line}")
    return 0


TOUR_TIMEOUT = 90.0  # seconds each step of the tour may take before it counts as failed


async def _tour(console: Console, cfg: config_mod.Config, fakes: dict[str, Fake]) -> int:
    """`demo --check`: the tour a person would take, on the real code path, timed."""
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        started = time.monotonic()
        if not await _until(lambda: _settled(daemon), TOUR_TIMEOUT):
            console.print(
                f"[red]check failed:[/red] the first sync did not settle: {await _status_line(daemon)}"
            )
            return 1
        console.print(
            f"first sync settled in {time.monotonic() - started:.1f} s: {await _status_line(daemon)}"
        )
        found = next(
            (
                (platform, edit)
                for platform, fake in fakes.items()
                if (edit := fake.example_edit(f"Renamed on {platform} by the tour")) is not None
            ),
            None,
        )
        if found is None:
            console.print("[red]check failed:[/red] no fake offers an example edit")
            return 1
        platform, edit = found
        title = str(edit.body["title"])
        status = await asyncio.to_thread(edit.send)
        sent = time.monotonic()
        console.print(f"edited a task on the {platform} fake (HTTP {status}): {title!r}")
        reached: dict[str, float] = {}

        async def everywhere() -> bool:
            for name in await _showing(daemon, title):
                reached.setdefault(name, time.monotonic() - sent)
            return len(reached) == len(daemon.ctx.connectors)

        ok = await _until(everywhere, TOUR_TIMEOUT)
        for name in daemon.ctx.connectors:
            took = f"{reached[name] * 1000:.0f} ms" if name in reached else "not reached"
            console.print(f"  {name:<12} {took}")
        if not ok:
            console.print("[red]check failed:[/red] the edit did not reach every platform")
            return 1
        console.print("check passed: the edit reached every platform")
        return 0
    finally:
        await daemon.stop()


async def _until(predicate: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def _settled(daemon: Daemon) -> bool:
    async with daemon.store.read() as session:
        s = await summary(session)
    linked = [s.linked.get(name, 0) for name in daemon.ctx.connectors]
    return s.tasks > 0 and not sum(s.waiting.values()) and all(n == s.tasks for n in linked)


async def _showing(daemon: Daemon, title: str) -> list[str]:
    """The connectors whose copy of the task titled `title` holds it (as their links last agreed:
    the platform acknowledged the write, or reported the edit)."""
    async with daemon.store.read() as session:
        task_id = await session.scalar(select(TaskRow.id).where(TaskRow.title == title))
        if task_id is None:
            return []
        links = (await session.scalars(select(LinkRow).where(LinkRow.task_id == task_id))).all()
    return [link.connector for link in links if (link.base or {}).get("title") == title]
