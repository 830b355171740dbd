"""`taskbridge sync --once`: one full pass (poll every scope, apply every write), then exit."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bridge.config import Config
from bridge.daemon import Daemon, DaemonOptions
from bridge.engine.comments import sweep_comments
from bridge.engine.poller import poll_connector
from bridge.engine.matching import adopt_existing
from bridge.engine.recovery import RecoveryFailed
from connectors.base import ConnectorError

EXIT_OK, EXIT_FAILED = 0, 1


async def sync_once(cfg: Config, *, progress: bool = True) -> int:
    daemon = Daemon(cfg, options=DaemonOptions.from_config(cfg, poll=False, serve=False))
    ctx = daemon.ctx
    console = Console(stderr=True)
    failures: list[str] = []
    await daemon.store.migrate()
    try:
        adopted = await adopt_existing(ctx)
    except RecoveryFailed as exc:
        console.print(f"[red]error:[/red] {exc}")
        for conn in ctx.connectors.values():
            await conn.aclose()
        await daemon.store.close()
        return EXIT_FAILED
    if adopted:
        console.print(f"{adopted} tasks that existed on the platforms were linked before the first poll")
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
    )
    try:
        with bar:
            poll_task = bar.add_task("polling", total=len(ctx.connectors))
            tasks_bar = bar.add_task("tasks observed", total=None)

            def on_progress(member: Any, found: int, advance: int = 0) -> None:
                if found:
                    current = bar.tasks[tasks_bar].total or 0
                    bar.update(tasks_bar, total=current + found)
                if advance:
                    bar.advance(tasks_bar, advance)

            for name in ctx.connectors:
                bar.update(poll_task, description=f"polling {name}")
                report = await poll_connector(ctx, name, progress=on_progress)
                failures.extend(report.errors)
                failures.extend(report.guard_tripped)
                for scope in ctx.scopes_of(name):
                    found = ctx.member(name, scope)
                    if found is not None:
                        try:
                            await sweep_comments(ctx, *found, budget=10_000, extra=[])
                        except ConnectorError as exc:
                            failures.append(str(exc))
                bar.advance(poll_task)
            bar.update(poll_task, description="polled")
            write_task = bar.add_task("writing", total=None)
            written = await daemon.worker.run_until_idle()
            bar.update(write_task, total=written, completed=written, description="writes applied")
    finally:
        for conn in ctx.connectors.values():
            await conn.aclose()
        await daemon.store.close()
    for failure in failures:
        console.print(f"[red]error:[/red] {failure}")
    console.print(f"sync done: {written} writes applied, {len(failures)} errors")
    return EXIT_FAILED if failures else EXIT_OK
