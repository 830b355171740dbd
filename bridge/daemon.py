"""The daemon: wires config, store, connectors, engine, scheduler and HTTP server, and runs them
until SIGTERM/SIGINT, then drains gracefully (claimed work finishes or is released).

Start-up order: migrate the store, build connectors, start the HTTP server (webhooks may arrive
as soon as they are registered), start the outbox worker, the inbox processor and the scheduler
(store gauges, retention), then each connector's polls (never overlapping themselves, the first
at once): when `server.public_url` is set, the connectors register their webhooks side by side
and each one's polls start once its own registration is answered. Then tell systemd READY=1:
ready means syncing, every webhook registration answered, refused or given up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import select

from bridge import __version__, metrics
from bridge.api.app import create_app
from bridge.api.status import refresh_store_gauges
from bridge.config import Config, ConfigError
from bridge.config import load as load_config
from bridge.defaults import (
    DEFAULT_COMMENTS_PER_POLL,
    DEFAULT_INBOX_BATCH,
    DEFAULT_JOB_GRACE,
    DEFAULT_LEASE_TTL,
    DEFAULT_LOOP_LAG_EVERY,
    DEFAULT_PRUNE_FIRST_DELAY,
    DEFAULT_PRUNE_INTERVAL,
    DEFAULT_PRUNE_LEASE_TTL,
    DEFAULT_STOP_GRACE,
    DEFAULT_STORE_CHECK_INTERVAL,
    DEFAULT_TRIM_AFTER_TASKS,
)
from bridge.engine import inbox, leases, retention
from bridge.engine.comments import sweep_comments
from bridge.engine.context import EngineContext
from bridge.engine.inbox import process_pending
from bridge.engine.matching import adopt_existing
from bridge.engine.outbox import Worker, WorkerSettings, release_claims
from bridge.engine.poller import poll_connector
from bridge.engine.routes import build_routes
from bridge.logs import setup as setup_logging
from bridge.store import RefusalLog, Store, StoreLost, redact_url
from bridge.store.tables import MetaRow
from bridge.wiring import build_connectors
from connectors.base import ConnectorError

log = logging.getLogger("taskbridge.daemon")


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim  # glibc's; musl has none
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM = _malloc_trim()


def freeze_startup_objects() -> None:
    """Take what exists once the daemon is up out of the garbage collector's generations.

    The modules, classes, the API's routes and schemas, the connectors and the engine live as long
    as the process: about 175,000 objects that every full collection walked, 125 to 150 ms each on
    two shared cores. Under load a full collection came about once a second and held every request
    and write in flight that long (the API's p99 at concurrency 8). Frozen, they are left alone;
    what is made afterwards is collected as before. Collected first, so no garbage is frozen."""
    gc.collect()
    gc.freeze()


async def measure_loop_lag(every: float = DEFAULT_LOOP_LAG_EVERY) -> None:
    """Observe, every `every` seconds, how late the loop woke this task
    (`taskbridge_event_loop_lag_seconds`). Everything the daemon does runs on one thread: a
    webhook's answer and a platform's reply wait for the loop as long as it is late, and a
    daemon near the end of its core shows it here before its backlog grows."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + every
        await asyncio.sleep(every)
        metrics.event_loop_lag.observe(max(0.0, loop.time() - due))


def give_back_memory() -> bool:
    """Return the C heap's free pages to the OS. A big listing (a whole board is one answer of
    tens of MB, then a RemoteTask per task) is freed once polled, but glibc keeps the pages, so
    the RSS would stay at the poll's peak. False where the C library cannot (not glibc)."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def sd_notify(message: str) -> bool:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
        return True
    return False


@dataclass(kw_only=True)
class DaemonOptions:
    poll: bool = True
    serve: bool = True
    lease_ttl: float = DEFAULT_LEASE_TTL
    comments_per_poll: int = DEFAULT_COMMENTS_PER_POLL
    store_check_interval: float = DEFAULT_STORE_CHECK_INTERVAL
    trim_after_tasks: int = DEFAULT_TRIM_AFTER_TASKS
    worker: WorkerSettings = field(default_factory=WorkerSettings)

    @classmethod
    def from_config(cls, cfg: Config, **overrides: Any) -> DaemonOptions:
        w = cfg.workers
        worker = WorkerSettings.from_config(w)
        values: dict[str, Any] = {
            "lease_ttl": w.lease_ttl,
            "comments_per_poll": w.comments_per_poll,
            "worker": worker,
        }
        values.update(overrides)
        return cls(**values)


class Daemon:
    def __init__(
        self,
        cfg: Config,
        *,
        options: DaemonOptions | None = None,
        transport: Any = None,
        config_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path  # what SIGHUP reads again
        self.options = options or DaemonOptions.from_config(cfg)
        self.store = Store.open(cfg.store.url, pool_size=cfg.store.pool_size, echo=cfg.store.echo_sql)
        self.ctx = EngineContext(
            self.store,
            build_routes(cfg),
            build_connectors(cfg, transport=transport),
            replica=self._replica_id(),
        )
        self.ctx.webhook_secrets = self._configured_secrets(cfg)
        self.ctx.inbox_claim_ttl = self.options.worker.claim_ttl
        self.ctx.inbox_handing = False  # until the start has given back a dead process's claims
        self.worker = Worker(self.ctx, self.options.worker)
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self.stopping = asyncio.Event()
        self.ready = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._server: Any = None
        self._held: set[str] = set()
        self._overrunning: set[str] = set()  # connectors whose last poll outlasted its interval
        self._refusals: dict[str, RefusalLog] = {}  # job name -> its word on a store refusing writes
        self._inbox_refusals = RefusalLog(log, "inbox processing")
        self._jobs: set[asyncio.Task[Any]] = set()  # scheduler jobs running now
        self._closing = False  # a stop began: the inbox loop starts no other batch
        self._triggered: set[str] = set()  # connectors with a triggered poll waiting to start
        self._poll_locks: dict[str, asyncio.Lock] = {}
        self._generated: set[str] = set()  # connectors whose platform-made webhook secret the store holds

    def _replica_id(self) -> str:
        """Stable across restarts of the same replica (host and listen port, which only one live
        process can hold), so a restarted daemon takes back at once the claims and leases its
        killed predecessor held instead of waiting for them to expire."""
        explicit = os.environ.get("TASKBRIDGE_REPLICA_ID")
        if explicit:
            return explicit
        if self.options.serve:
            return f"{socket.gethostname()}:{self.cfg.server.port}"
        return f"{socket.gethostname()}:pid{os.getpid()}"

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start everything; a start that fails half-way closes what it opened (the store, the
        connectors' clients) before it raises."""
        try:
            await self._start()
        except BaseException:
            await self._abandon()
            raise

    async def _start(self) -> None:
        log.info("taskbridge %s starting; store %s", __version__, redact_url(self.cfg.store.url))
        self._log_warnings(self.cfg)
        metrics.build_info.info({"version": __version__})
        await self.store.migrate()
        applying = await leases.holder(self.ctx, leases.PLAN_APPLY)
        if applying is not None:
            raise RuntimeError(
                f"a plan is being applied to this store (`taskbridge plan --apply`, {applying}): "
                "start again once it is done"
            )
        await self._load_webhook_secrets()
        adopted = await adopt_existing(self.ctx)
        if adopted:
            log.info("%d tasks that existed on the platforms were linked before the first poll", adopted)
        if self.options.serve:
            await self._start_server()  # binds the port first: proof no live twin holds our id
            taken_back = await release_claims(self.ctx, landing_wait=self.options.worker.landing_wait)
            if taken_back:
                log.warning("took back %d operations claimed by this replica before a crash", taken_back)
            taken_back = await inbox.release_claims(self.ctx)
            if taken_back:
                log.warning("took back %d deliveries claimed by this replica before a crash", taken_back)
            self.ctx.inbox_handing = True  # what is claimed by this replica's id from now on is ours
        self._tasks.append(asyncio.create_task(self.worker.run(), name="outbox"))
        self._tasks.append(asyncio.create_task(self._inbox_loop(), name="inbox"))
        self._tasks.append(asyncio.create_task(measure_loop_lag(), name="loop-lag"))
        self.scheduler.add_job(
            self._guarded(self.check_store),
            "interval",
            seconds=self.options.store_check_interval,
            id="store-check",
            max_instances=1,
            coalesce=True,
        )
        self.scheduler.add_job(
            self._guarded(self.refresh_gauges),
            "interval",
            seconds=15,
            id="gauges",
            max_instances=1,
            coalesce=True,
            next_run_time=_now_naive(),
        )
        self.scheduler.add_job(
            self._guarded(self.prune_once),
            "interval",
            seconds=DEFAULT_PRUNE_INTERVAL,
            id="retention",
            max_instances=1,
            coalesce=True,
            next_run_time=_now_naive() + timedelta(seconds=DEFAULT_PRUNE_FIRST_DELAY),
        )
        self.scheduler.start()
        if self.cfg.server.public_url:
            # The outbox and the inbox run meanwhile, and each connector's polls start once its
            # own registration is answered: the first catches up on what changed while we were
            # down, including what changed before its webhooks reached us. A platform slow to
            # answer holds up only its own.
            await self.register_webhooks(then=self._schedule_polls)
        else:
            self._schedule_polls()
        self.ready = True
        sd_notify("READY=1\nSTATUS=syncing")
        watchdog = os.environ.get("WATCHDOG_USEC")
        if watchdog:
            self._tasks.append(asyncio.create_task(self._watchdog(int(watchdog) / 2e6), name="watchdog"))
        log.info("taskbridge ready: %d connectors, %d routes", len(self.ctx.connectors), len(self.ctx.routes))

    def _schedule_polls(self, *names: str) -> None:
        """Each connector named (every one when none is) polls at once (catching up on what
        changed while we were down), then every interval, the connectors' polls spread over it
        (`poll_offsets`). A scheduled poll and the start-up one take turns (`_poll_lock`)."""
        if not self.options.poll:
            return
        now = _now_naive()
        offsets = poll_offsets({name: c.poll_interval for name, c in self.cfg.connectors.items()})
        for name, c in self.cfg.connectors.items():
            if names and name not in names:
                continue
            poll = self._guarded(self.poll_once, name)
            self.scheduler.add_job(
                poll,
                "date",
                run_date=now,
                id=f"poll:{name}:start",
                misfire_grace_time=None,
                replace_existing=True,
            )
            self.scheduler.add_job(
                poll,
                "interval",
                seconds=c.poll_interval,
                start_date=now + timedelta(seconds=offsets[name]),
                id=f"poll:{name}",
                max_instances=1,
                coalesce=True,
                replace_existing=True,
            )

    async def reload(self) -> bool:
        """Read the config file again and apply it without dropping work: API tokens, routes,
        connectors (their credentials, mappings, intervals) and the log level. A config that does
        not load, or changes what only a restart can (the store, the listen address), is refused
        and logged; the running one stays. Returns whether the new one was applied."""
        if self.config_path is None:
            log.warning("reload asked, but the daemon was not started from a config file")
            return False
        sd_notify("RELOADING=1")
        try:
            try:
                cfg = load_config(self.config_path)
            except ConfigError as exc:
                log.error("reload refused, the running config stays:\n%s", exc)
                return False
            fixed = [
                key
                for key, old, new in (
                    ("store.url", self.cfg.store.url, cfg.store.url),
                    ("server.listen", self.cfg.server.listen, cfg.server.listen),
                    ("server.public_url", self.cfg.server.public_url, cfg.server.public_url),
                )
                if old != new
            ]
            if fixed:
                log.error(
                    "reload refused: %s change only with a restart; the running config stays",
                    ", ".join(fixed),
                )
                return False
            old_connectors = dict(self.ctx.connectors)
            self.cfg = cfg
            self.ctx.reconfigure(build_routes(cfg), build_connectors(cfg))
            self.ctx.webhook_secrets = self._configured_secrets(cfg)
            await self._load_webhook_secrets()
            for job in self.scheduler.get_jobs():
                if job.id.startswith("poll:") and job.id.split(":")[1] not in cfg.connectors:
                    job.remove()
            self._schedule_polls()
            setup_logging(cfg.log.level, cfg.log.format, secrets=cfg.connector_secrets())
            if cfg.server.public_url:
                await self.register_webhooks()
            # Writes in flight keep the connectors they started with; close those afterwards.
            closing = asyncio.get_running_loop().create_task(self._close_later(old_connectors.values()))
            self._tasks.append(closing)
            log.info(
                "config reloaded: %d connectors, %d routes, %d API tokens",
                len(cfg.connectors),
                len(cfg.routes),
                len(cfg.server.tokens),
            )
            self._log_warnings(cfg)
            return True
        finally:
            sd_notify("READY=1")

    def _log_warnings(self, cfg: Config) -> None:
        """What `check` warns of in the config (connectors with no routes), for an operator who
        reads only the daemon's log."""
        for problem in cfg.warnings():
            log.warning("config: %s", problem.render(str(self.config_path or "config")))

    async def _close_later(self, connectors: Any) -> None:
        await asyncio.sleep(self.options.worker.claim_ttl)
        for conn in connectors:
            with contextlib.suppress(Exception):
                await conn.aclose()

    @staticmethod
    def _configured_secrets(cfg: Config) -> dict[str, list[str]]:
        return {
            name: [c.webhook_secret.get_secret_value()]
            for name, c in cfg.connectors.items()
            if c.webhook_secret is not None and c.webhook_secret.get_secret_value()
        }

    def _reload_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self._guarded(self.reload)())
        self._tasks.append(task)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_soon)
        await self.start()
        freeze_startup_objects()
        await self.stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        sd_notify("STOPPING=1")
        log.info("taskbridge stopping: finishing claimed work")
        self.ready = False
        # Paused, not shut down yet: APScheduler's shutdown cancels every job it started at once,
        # and logs a job cancelled before its first step as an error with a traceback. One turn
        # of the loop lets a job just handed over start (it sees `stopping` and returns).
        # One budget for the work in progress, which finishes side by side: polls, the outbox's
        # writes in flight (it claims no more), the inbox's batch (it starts no other).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEFAULT_STOP_GRACE
        if self.scheduler.running:
            self.scheduler.pause()
        self._closing = True
        self.ctx.inbox_handing = False  # deliveries still arriving are left for any replica
        self.worker.stop(grace=DEFAULT_STOP_GRACE)
        self.ctx.inbox_ready.set()
        await asyncio.sleep(0)
        if self._jobs:
            # A poll in progress finishes (its watermark then lands) or is cancelled, before the
            # store it writes to closes.
            _, late = await asyncio.wait(set(self._jobs), timeout=DEFAULT_JOB_GRACE)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        for task in self._tasks:
            if task.get_name() not in ("outbox", "inbox"):
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*self._tasks, return_exceptions=True), timeout=max(1.0, deadline - loop.time())
            )
        if self.store.lost is None:  # a lost store takes no more writes; claims and leases expire
            released = await release_claims(self.ctx, landing_wait=self.options.worker.landing_wait)
            if released:
                log.info("released %d claimed operations for other workers", released)
            released = await inbox.release_claims(self.ctx)
            if released:
                log.info("released %d claimed webhook deliveries for other workers", released)
            for name in list(self._held):
                await leases.release(self.ctx, name)
        if self._server is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server_task, timeout=5)
        for conn in self.ctx.connectors.values():
            with contextlib.suppress(Exception):
                await conn.aclose()
        await self.store.close()
        log.info("taskbridge stopped")

    async def _abandon(self) -> None:
        """Close what a start that failed half-way opened."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.worker.stop()
        running = [*self._tasks, *self._jobs]
        for task in running:
            task.cancel()
        if running:
            # Their rollbacks end before the store's engine is disposed under them.
            await asyncio.wait(running, timeout=5)
        if self._server is not None:
            self._server.should_exit = True
        for conn in self.ctx.connectors.values():
            with contextlib.suppress(Exception):
                await conn.aclose()
        await self.store.close()

    # -- jobs ----------------------------------------------------------------------------------

    def _guarded(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            if self.stopping.is_set():
                return
            task = asyncio.current_task()
            if task is not None:
                self._jobs.add(task)
            # One job per connector runs the same function: its name says which, so that one
            # connector's refusal and recovery are told apart from another's.
            name = " ".join([getattr(fn, "__name__", str(fn)), *(str(arg) for arg in args)])
            refusals = self._refusals.setdefault(name, RefusalLog(log, f"job {name}"))
            try:
                await fn(*args)
                refusals.succeeded()
            except asyncio.CancelledError:
                log.info("job %s stopped by the shutdown", name)
            except StoreLost:
                return  # said once, by check_store
            except Exception as exc:  # a job failing must not kill the scheduler
                if not refusals.failed(exc):  # a refusal is said once, until it recovers (/readyz too)
                    log.exception("job %s failed", name)
            finally:
                if task is not None:
                    self._jobs.discard(task)

        return job

    def is_ready(self) -> bool:
        return self.ready and self.scheduler.running and self.store.lost is None

    async def check_store(self) -> None:
        """Stop working the moment the store is no longer the one opened (deleted, replaced):
        every write from then on would go where no restart finds it."""
        if self.store.lost is not None:
            return
        lost = await self.store.check()
        if lost is None:
            return
        log.error("%s", lost)
        metrics.store_lost.set(1)
        sd_notify(f"STATUS=store lost: {lost}")
        for job in self.scheduler.get_jobs():
            if job.id.startswith("poll:"):
                job.pause()
        self.worker.stop()

    async def trigger_poll(self, connector: str) -> str:
        """A poll asked for by a person (`POST /connectors/X/sync`). Triggers coalesce: while one
        waits to start, more add nothing, so a burst costs at most the poll running now and one
        after it. Only the replica holding the connector's poll lease polls it: NotLeaseOwner
        names the one that does."""
        holder = await leases.holder(self.ctx, f"poll:{connector}")
        if holder is not None and holder != self.ctx.replica:
            raise leases.NotLeaseOwner(f"poll:{connector}", holder)
        if connector in self._triggered:
            return "coalesced"
        self._triggered.add(connector)
        task = asyncio.get_running_loop().create_task(self._guarded(self._triggered_poll, connector)())
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)
        return "started"

    async def _triggered_poll(self, connector: str) -> None:
        async with self._poll_lock(connector):
            self._triggered.discard(connector)  # from here, a trigger asks for the poll after this
            await self._poll(connector)

    def _poll_lock(self, connector: str) -> asyncio.Lock:
        return self._poll_locks.setdefault(connector, asyncio.Lock())

    async def poll_once(self, connector: str) -> None:
        async with self._poll_lock(connector):  # a scheduled poll and a triggered one take turns
            await self._poll(connector)

    async def _poll(self, connector: str) -> None:
        lease = f"poll:{connector}"
        interval = self.cfg.connectors[connector].poll_interval
        # Held for the TTL, renewed by every poll; a poll interval longer than the TTL stretches it.
        if not await leases.acquire(self.ctx, lease, max(self.options.lease_ttl, interval * 2)):
            self._held.discard(lease)
            return
        self._held.add(lease)
        metrics.leases_held.set(len(self._held))
        started = time.monotonic()
        report = await poll_connector(self.ctx, connector)
        if report.seen >= self.options.trim_after_tasks:
            give_back_memory()
        took = time.monotonic() - started
        if took > interval and connector not in self._overrunning:
            log.warning(
                "poll %s took %.1f s, longer than its %g s interval: the next starts when one ends",
                connector,
                took,
                interval,
            )
            self._overrunning.add(connector)
        elif took <= interval:
            self._overrunning.discard(connector)
        for scope in self.ctx.scopes_of(connector):
            found = self.ctx.member(connector, scope)
            if found is None:
                continue
            try:
                await sweep_comments(self.ctx, *found, budget=self.options.comments_per_poll, extra=[])
            except ConnectorError as exc:
                log.warning("comment sweep of %s/%s failed: %s", connector, scope, exc)
        if report.changed or report.deleted:
            log.info(
                "poll %s: %d seen, %d changed, %d deleted",
                connector,
                report.seen,
                report.changed,
                report.deleted,
            )

    async def _inbox_loop(self) -> None:
        while not self._closing:
            self.ctx.inbox_ready.clear()  # before looking: a delivery that lands meanwhile still wakes us
            handled = await self._guarded_inbox()
            # A batch short of full took every delivery there was: what arrived since set the
            # event (so the wait returns at once); looking again now would claim nothing.
            if handled < DEFAULT_INBOX_BATCH:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ctx.inbox_ready.wait(), timeout=2.0)

    async def _guarded_inbox(self) -> int:
        try:
            handled = await process_pending(self.ctx)  # claims last ctx.inbox_claim_ttl
        except StoreLost:
            await asyncio.sleep(self.options.store_check_interval)
            return 0
        except Exception as exc:
            if not self._inbox_refusals.failed(exc):
                log.exception("inbox processing failed")
            await asyncio.sleep(1)
            return 0
        if handled:  # only a batch recorded shows the store taking writes again
            self._inbox_refusals.succeeded()
        return handled

    async def refresh_gauges(self) -> None:
        await refresh_store_gauges(self.ctx)

    async def prune_once(self) -> None:
        """Delete what store.retention no longer keeps (bridge/engine/retention.py), on one
        replica at a time: another that finds the lease held skips this round."""
        if not await leases.acquire(self.ctx, retention.LEASE, DEFAULT_PRUNE_LEASE_TTL):
            return
        try:
            await retention.prune(self.store, self.cfg.store.retention, self.ctx.now())
        finally:
            if self.store.lost is None:
                await leases.release(self.ctx, retention.LEASE)

    async def _watchdog(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            # Only a live loop and a running scheduler earn the ping; a hung daemon gets restarted.
            if self.scheduler.running:
                sd_notify("WATCHDOG=1")

    # -- webhooks ------------------------------------------------------------------------------

    async def register_webhooks(self, *, then: Callable[[str], None] | None = None) -> None:
        """Each connector's webhooks, the connectors side by side: a platform that is slow to
        answer (timeouts, 429s) delays only its own. One connector's scopes go in order, since
        a secret the platform issues is kept in the store by a read and a write. `then(name)`
        runs once a connector's registrations are answered, refused or skipped. What no
        registration expects (the store failing) is raised as itself once all have ended."""
        base = str(self.cfg.server.public_url).rstrip("/")
        ended = await asyncio.gather(
            *(self._register_webhooks_of(name, base, then) for name in self.cfg.connectors),
            return_exceptions=True,
        )
        for outcome in ended:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _register_webhooks_of(self, name: str, base: str, then: Callable[[str], None] | None) -> None:
        await self._register_scopes_of(name, base)
        if then is not None:
            then(name)

    async def _register_scopes_of(self, name: str, base: str) -> None:
        c = self.cfg.connectors[name]
        conn = self.ctx.connectors[name]
        if not (c.webhooks and conn.capabilities.webhooks):
            return
        secret = c.webhook_secret.get_secret_value() if c.webhook_secret else None
        if not secret and getattr(conn, "webhook_secret_required", False):
            # Polling is the fallback; nothing is wrong, but the operator may want webhooks.
            log.warning(
                "%s: webhooks off (polling only): the platform signs deliveries only with a "
                "secret; set connectors.%s.webhook_secret to receive them, or webhooks: false",
                name,
                name,
            )
            return
        for scope in self.ctx.scopes_of(name):
            try:
                generated = await conn.register_webhook(
                    scope, f"{base}/webhooks/{name}", secret or None, rotate=name not in self._generated
                )
            except ConnectorError as exc:
                log.error("could not register webhooks of %s/%s: %s (polling continues)", name, scope, exc)
                continue
            if generated:
                if name not in self._generated:
                    log.info(
                        "%s: webhooks registered; the secret the platform issued is kept in the store",
                        name,
                    )
                await self._store_webhook_secret(name, generated)
            log.info("webhooks of %s/%s go to %s/webhooks/%s", name, scope, base, name)

    async def _store_webhook_secret(self, connector: str, secret: str) -> None:
        # Accepted at once: the platform signs with it from now, and the store's write may wait
        # its turn behind the start-up polls' and the outbox's.
        if secret not in self.ctx.webhook_secrets.setdefault(connector, []):
            self.ctx.webhook_secrets[connector].append(secret)
        async with self.store.transaction() as session:
            row = await session.get(MetaRow, f"webhook_secrets:{connector}")
            secrets = list(row.value.get("secrets", [])) if row else []
            if secret not in secrets:
                secrets.append(secret)
            if row is None:
                session.add(MetaRow(key=f"webhook_secrets:{connector}", value={"secrets": secrets}))
            else:
                row.value = {"secrets": secrets}
        self._generated.add(connector)

    async def _load_webhook_secrets(self) -> None:
        async with self.store.read() as session:
            rows = (await session.scalars(select(MetaRow).where(MetaRow.key.like("webhook_secrets:%")))).all()
        for row in rows:
            connector = row.key.split(":", 1)[1]
            if row.value.get("secrets"):
                self._generated.add(connector)
            for secret in row.value.get("secrets", []):
                if secret not in self.ctx.webhook_secrets.setdefault(connector, []):
                    self.ctx.webhook_secrets[connector].append(secret)

    # -- HTTP ----------------------------------------------------------------------------------

    async def _start_server(self) -> None:
        import uvicorn

        app = create_app(self)
        config = uvicorn.Config(
            app,
            host=self.cfg.server.host,
            port=self.cfg.server.port,
            log_level="warning",
            log_config=None,  # its records go through bridge.logs (JSON when configured), not its own handler
            http="httptools",  # its parser in C: a webhook costs half the CPU it does with h11 (pyproject.toml)
            access_log=False,
            lifespan="on",  # the app's lifespan runs /mcp's session manager (bridge/api/mcp.py)
        )
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._server_task = asyncio.create_task(self._server.serve(), name="http")
        deadline = time.monotonic() + 10
        while not self._server.started:
            if self._server_task.done():
                await self._server_task  # raises the bind error
                raise RuntimeError(f"could not listen on {self.cfg.server.listen}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not listen on {self.cfg.server.listen}")
            await asyncio.sleep(0.02)


def poll_offsets(intervals: Mapping[str, float]) -> dict[str, float]:
    """When each connector's first scheduled poll comes, in seconds after the start-up one: the
    k-th of n connectors after k/n of its interval (the last after a whole one). Polls that fire
    together make one burst of listings whose parsing and comparing holds up the writes each of
    them queues; spread, the changes a poll finds are written while the others are quiet."""
    n = len(intervals)
    return {name: interval * (k + 1) / n for k, (name, interval) in enumerate(intervals.items())}


def _now_naive() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
