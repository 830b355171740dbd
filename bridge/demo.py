"""`taskbridge demo`: the five platform fakes on loopback with seeded tasks, a config derived from
config.example.yaml, and the daemon (webhooks registered), on the real code path. It prints what
to open and what to try, then a line of progress every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from ruamel.yaml import YAML

import connectors
from bridge import config as config_mod
from bridge.api.status import summary
from bridge.daemon import Daemon
from bridge.logs import setup as setup_logging
from connectors.fakekit import Fake, free_port

# Shipped in the package (config.example.yaml at the repository root links to it), so an
# installed taskbridge demo uses the same documented config as a checkout.
EXAMPLE = Path(__file__).resolve().parent / "config.example.yaml"
SEED = 7
WEBHOOK_SECRET = "whsec_demo_" + "0" * 16


def demo_config(fakes: dict[str, Fake], workdir: Path, port: int, api_token: str) -> Path:
    """The example config with its connectors pointed at the fakes (names and comments kept)."""
    yaml = YAML(typ="rt")
    data: Any = yaml.load(EXAMPLE.read_text(encoding="utf-8")) or {}
    data["store"] = {"url": f"sqlite+aiosqlite:///{workdir}/taskbridge.db"}
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
    path = workdir / "taskbridge.yaml"
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
    console.print("[bold]taskbridge demo[/bold]: five platform fakes, one route over all five, the daemon.")
    console.print(f"  config      {cfg_path}   (derived from config.example.yaml)")
    console.print(f"  API docs    {api}/docs")
    console.print(f"  tasks       curl -H 'Authorization: Bearer {token}' {api}/api/v1/tasks")
    console.print(f"  connectors  curl -H 'Authorization: Bearer {token}' {api}/api/v1/connectors")
    console.print(f"  metrics     {api}/metrics")
    for platform, fake in fakes.items():
        console.print(f"  {platform:<11} {fake.url}{fake.api_root}   (fake; state at {fake.url}/_fake/state)")
    for platform, fake in fakes.items():
        hint = fake.example_edit()
        if hint:
            console.print(f"Try: change a task on the {platform} fake and watch it reach the others:")
            console.print(f"  {hint}")
            break
    console.print("Or create one through the unified API:")
    console.print(
        f"  curl -X POST -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' "
        f'-d \'{{"route": "engineering", "title": "Hello from the API", "priority": "urgent"}}\' '
        f"{api}/api/v1/tasks"
    )
    console.print("Ctrl-C stops the demo.\n")


def run_demo(*, port: int = 8080, seconds: float | None = None, workdir: str | None = None) -> int:
    busy = config_mod.listen_problem("127.0.0.1", port)  # before the banner tells anyone to open it
    if busy:
        print(f"demo could not start: {busy}; choose another port with --port N", file=sys.stderr)
        return 1
    console = Console()
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="taskbridge-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    fakes: dict[str, Fake] = {}
    try:
        for platform in connectors.PLATFORMS:
            cls = connectors.fake_class(platform)
            fakes[platform] = cls(token=cls.demo_credential, seed=SEED).start(free_port())
        api_token = "tb_demo_" + secrets.token_urlsafe(16)
        cfg_path = demo_config(fakes, base, port, api_token)
        cfg = config_mod.load(cfg_path)
        setup_logging("warning", "text", secrets=[*cfg.connector_secrets(), api_token])
        _banner(console, fakes, cfg_path, port, api_token)
        return asyncio.run(_run(console, cfg, seconds))
    except OSError as exc:
        console.print(f"[red]demo could not start:[/red] {exc}")
        return 1
    finally:
        for fake in fakes.values():
            with contextlib.suppress(Exception):
                fake.stop()


async def _run(console: Console, cfg: config_mod.Config, seconds: float | None) -> int:
    daemon = Daemon(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stopping.set)
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
