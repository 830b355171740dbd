"""`taskbridge sync --once`: one full pass (poll every scope, apply every write), then exit."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bridge.api.status import summary
from bridge.config import Config
from bridge.daemon import Daemon, DaemonOptions
from bridge.engine.comments import sweep_comments
from bridge.engine.matching import adopt_existing
from bridge.engine.poller import poll_connector
from bridge.engine.recovery import RecoveryFailed
from connectors.base import ConnectorError

EXIT_OK, EXIT_FAILED = 0, 1


async def sync_once(cfg: Config, *, progress: bool = True) -> int:
    daemon = Daemon(cfg, options=DaemonOptions.from_config(cfg, poll=False, serve=False))
    ctx = daemon.ctx
    console = Console(stderr=True)
    failures: list[str] = []
    try:
        await daemon.store.migrate()
        adopted = await adopt_existing(ctx)
    except RecoveryFailed as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        await _close(daemon)
        return EXIT_FAILED
    except BaseException:  # the store cannot be opened or written: the caller says so
        await _close(daemon)
        raise
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
    observed = changed = deleted = written = 0
    try:
        with bar:
            poll_task = bar.add_task("polling", total=len(ctx.connectors))
            # Its total grows as listings arrive; each connector's end fills it (a chunk that
            # needed no write is not reported by the poller), so a finished pass ends full.
            tasks_bar = bar.add_task("tasks observed", total=0)

            def on_progress(member: Any, found: int, advance: int = 0) -> None:
                if found:
                    bar.update(tasks_bar, total=(bar.tasks[tasks_bar].total or 0) + found)
                if advance:
                    bar.advance(tasks_bar, advance)

            for name in ctx.connectors:
                bar.update(poll_task, description=f"polling {name}")
                report = await poll_connector(ctx, name, progress=on_progress)
                observed, changed, deleted = (
                    observed + report.seen,
                    changed + report.changed,
                    deleted + report.deleted,
                )
                failures.extend(report.errors)
                failures.extend(report.guard_tripped)
                for scope in ctx.scopes_of(name):
                    found = ctx.member(name, scope)
                    if found is not None:
                        try:
                            await sweep_comments(ctx, *found, budget=10_000, extra=[])
                        except ConnectorError as exc:
                            failures.append(str(exc))
                bar.update(tasks_bar, completed=bar.tasks[tasks_bar].total)
                bar.advance(poll_task)
            bar.update(poll_task, description="polled")
            write_task = bar.add_task("writing", total=None)
            written = await daemon.worker.run_until_idle()
            bar.update(write_task, total=written, completed=written, description="writes applied")
        async with daemon.store.read() as session:
            left = await summary(session)
    finally:
        await _close(daemon)
    for failure in failures:
        console.print(f"[red]error:[/red] {failure}", soft_wrap=True)
    gone = f", {deleted} deleted" if deleted else ""
    console.print(
        f"sync done: {observed} tasks observed, {changed} changed{gone}, {written} writes applied, "
        f"{len(failures)} errors",
        soft_wrap=True,
    )
    waiting, parked = sum(left.waiting.values()), sum(left.parked.values())
    if waiting or parked:
        console.print(
            f"outbox: {waiting} writes waiting for a retry (the daemon retries them), {parked} parked "
            "(`taskbridge outbox list` says why)",
            soft_wrap=True,
        )
    return EXIT_FAILED if failures else EXIT_OK


async def _close(daemon: Daemon) -> None:
    for conn in daemon.ctx.connectors.values():
        await conn.aclose()
    await daemon.store.close()
