"""What every platform fake shares.

A fake is an in-memory server of one platform's documented API. This module gives each
fake the same machinery so `connectors/<platform>/fake.py` holds only that platform's
endpoints, shapes and rules:

- `Fake`: base class. Owns the fault switches, the request log, the webhook sender and a
  clock; builds the ASGI app (platform routes + the `/_fake/*` control routes) and serves
  it with uvicorn on loopback, in a background thread (`start()`/`stop()`, or a `with`).
- `Faults`: latency, a share of 500s, a share of hung requests (timeouts), a burst of 429s
  with Retry-After, a share of dropped webhook deliveries. Settable in-process
  (`fake.faults.error_rate = 0.1`) or over HTTP (`POST /_fake/faults {...}`) for fakes that
  run as separate processes.
- `RequestLog`: every request served, by method and route template, readable in-process
  (`fake.requests.count("POST")`) or over HTTP (`GET /_fake/requests`).
- `WebhookSender`: delivers signed webhook bodies to registered URLs from the fake's own
  event loop, retrying failed deliveries with backoff; honours the drop switch.
- `CountTree`, `BlockList`: indexes for the fakes' hot paths (an offset-paginated filtered
  list; a position-ordered column), so that no page or one-task request costs O(n): the fakes
  must stay usable at the memory benchmark's 100,000 tasks (tests/contract/test_fake_scale.py).

Control routes under `/_fake/` are neither authenticated, counted, nor subject to faults:
they are the test harness's, not the platform's.

Thread model: the app runs on uvicorn's loop in its own thread. Handlers are plain
synchronous code between awaits, so state changes are atomic with respect to each other.
Tests should drive a fake over HTTP; in-process helpers (seeding) are for before `start()`
or for use through `fake.call(fn)`, which runs `fn` on the fake's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import threading
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTROL_PREFIX = "/_fake"

log = logging.getLogger("taskbridge.fake")


@dataclass
class Faults:
    """Fault switches. Shares are 0..1; all default off."""

    latency: float = 0.0  # seconds added before every request is handled
    error_rate: float = 0.0  # share of requests answered 500
    timeout_rate: float = 0.0  # share of requests that hang for `hang_seconds` then get 504
    hang_seconds: float = 30.0
    rate_limit_burst: int = 0  # the next N requests are answered 429
    retry_after: int = 1  # seconds, sent in Retry-After with each 429
    drop_webhook_rate: float = 0.0  # share of webhook deliveries silently dropped

    def update(self, values: dict[str, Any]) -> None:
        known = {f.name: f.type for f in fields(self)}
        for key, value in values.items():
            if key not in known:
                raise ValueError(f"unknown fault switch {key!r}; known: {', '.join(sorted(known))}")
            setattr(self, key, int(value) if key in ("rate_limit_burst", "retry_after") else float(value))

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default)


@dataclass(frozen=True)
class ExampleEdit:
    """One HTTP request that edits a task on a fake, as its own users would send it."""

    method: str
    url: str
    headers: dict[str, str]
    body: dict[str, Any]

    def curl(self) -> str:
        """The request as one shell line (single-quoted: it pastes as it is)."""
        head = " ".join(f"-H '{k}: {v}'" for k, v in self.headers.items())
        return f"curl -X {self.method} {head} -d '{json.dumps(self.body)}' {self.url}"

    def send(self) -> int:
        """Send it; the status code."""
        return httpx.request(
            self.method, self.url, headers=self.headers, json=self.body, timeout=10
        ).status_code


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    route: str  # the route template, e.g. "/api/v1/tasks/{task_id}"; the raw path when unrouted
    path: str
    status: int


class RequestLog:
    """Every platform request served. Reads are what tests assert call budgets with."""

    def __init__(self) -> None:
        self.entries: list[LoggedRequest] = []

    def add(self, entry: LoggedRequest) -> None:
        self.entries.append(entry)

    def count(self, method: str | None = None, route: str | None = None, *, status: int | None = None) -> int:
        return sum(
            1
            for e in self.entries
            if (method is None or e.method == method)
            and (route is None or e.route == route)
            and (status is None or e.status == status)
        )

    def writes(self) -> int:
        return sum(1 for e in self.entries if e.method in ("POST", "PUT", "PATCH", "DELETE"))

    def by_route(self) -> dict[str, int]:
        return dict(Counter(f"{e.method} {e.route}" for e in self.entries))

    def clear(self) -> None:
        self.entries.clear()

    def snapshot(self) -> dict[str, Any]:
        return {
            "total": len(self.entries),
            "writes": self.writes(),
            "by_route": self.by_route(),
            "entries": [asdict(e) for e in self.entries],
        }


@dataclass
class Delivery:
    url: str
    event: str
    body: bytes
    headers: dict[str, str]
    attempts: int = 0
    status: int | None = None  # last HTTP status from the receiver
    outcome: str = "pending"  # pending | delivered | failed | dropped
    # time.monotonic() stamps for the benchmarks: queued by the handler, its first attempt sent,
    # its last attempt sent and answered (or failed); they tell the sender's queue from the
    # receiver.
    queued_at: float = 0.0
    sent_at: float | None = None
    attempt_at: float | None = None  # the last attempt's start
    answered_at: float | None = None


class WebhookSender:
    """Delivers webhook POSTs from the fake's loop, in order of sending, with retries.

    A delivery that fails (connection error or non-2xx) is retried up to `attempts` times
    with exponential backoff starting at `backoff` seconds; then it is marked failed.

    `concurrency` first attempts are out at once, started in order of sending (1, the default:
    each waits for the one before it to be answered, so the tests see them in order; retries go
    out beside them when due). No platform's
    page says how many it sends at once; one at a time would cap a platform at one delivery per
    receiver's answer (50 edits a second need every answer within 20 ms, less than a real
    network's round trip), so the benchmarks set a few, as platforms' delivery workers do.
    """

    def __init__(
        self,
        faults: Faults,
        rng: random.Random,
        *,
        attempts: int = 4,
        backoff: float = 0.25,
        concurrency: int = 1,
    ) -> None:
        self.faults = faults
        self.concurrency = concurrency
        self.rng = rng
        self.attempts = attempts
        self.backoff = backoff
        self.deliveries: list[Delivery] = []
        # Queued or being retried, not yet delivered or failed: read from other threads (the
        # benchmarks wait for it to reach 0, so a run's figures include the receiver's answers).
        self.pending = 0
        self._queue: asyncio.Queue[Delivery] | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._retries: set[asyncio.Task[None]] = set()
        self._out: set[asyncio.Task[None]] = set()  # first attempts out, `concurrency` at most
        self._room: asyncio.Event | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._room = asyncio.Event()
        self._client = httpx.AsyncClient(timeout=10.0)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        tasks = [t for t in [self._task, *self._retries, *self._out] if t is not None]
        for t in tasks:
            t.cancel()
        # Ended before the client closes under them.
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def send(self, url: str, event: str, body: bytes, headers: dict[str, str]) -> Delivery:
        """Queue one delivery. Call from a request handler (the fake's loop)."""
        delivery = Delivery(
            url=url,
            event=event,
            body=body,
            headers={"Content-Type": "application/json", **headers},
            queued_at=time.monotonic(),
        )
        self.deliveries.append(delivery)
        if self.rng.random() < self.faults.drop_webhook_rate:
            delivery.outcome = "dropped"
            return delivery
        if self._queue is None:
            raise RuntimeError("webhook sender is not running (fake not started)")
        self._queue.put_nowait(delivery)
        self.pending += 1
        return delivery

    async def _run(self) -> None:
        assert self._queue is not None and self._room is not None
        while True:
            delivery = await self._queue.get()
            while len(self._out) >= max(1, self.concurrency):
                self._room.clear()
                await self._room.wait()
            task = asyncio.create_task(self._attempt(delivery))
            self._out.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        assert self._room is not None
        self._out.discard(task)
        self._room.set()

    async def _attempt(self, delivery: Delivery) -> None:
        assert self._client is not None
        delivery.attempts += 1
        delivery.attempt_at = time.monotonic()
        if delivery.sent_at is None:
            delivery.sent_at = delivery.attempt_at
        try:
            resp = await self._client.post(delivery.url, content=delivery.body, headers=delivery.headers)
            delivery.status = resp.status_code
            ok = 200 <= resp.status_code < 300
        except httpx.HTTPError:
            ok = False
        except Exception as exc:  # a failed attempt all the same: the sender goes on
            # Anything else (a URL the client refuses) would end the sender's loop, or a
            # concurrent attempt's task, with `pending` never coming down to 0.
            log.warning("webhook delivery to %s failed: %s: %s", delivery.url, type(exc).__name__, exc)
            ok = False
        delivery.answered_at = time.monotonic()
        if ok:
            delivery.outcome = "delivered"
            self.pending -= 1
        elif delivery.attempts >= self.attempts:
            delivery.outcome = "failed"
            self.pending -= 1
        else:
            delay = self.backoff * 2 ** (delivery.attempts - 1)
            task = asyncio.create_task(self._retry_later(delivery, delay))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)

    async def _retry_later(self, delivery: Delivery, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._attempt(delivery)

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "url": d.url,
                "event": d.event,
                "attempts": d.attempts,
                "status": d.status,
                "outcome": d.outcome,
                "body": d.body.decode(),
                "headers": d.headers,
            }
            for d in self.deliveries
        ]


class _FaultsAndLog:
    """ASGI middleware: applies fault switches and records every platform request."""

    def __init__(self, app: ASGIApp, fake: Fake) -> None:
        self.app = app
        self.fake = fake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        fake = self.fake
        faults = fake.faults
        logged: list[bool] = []

        def log(status: int) -> None:
            # The template is read now, not on arrival: an inner middleware may rewrite the path.
            if not logged:
                logged.append(True)
                fake.requests.add(
                    LoggedRequest(scope["method"], fake.route_template(scope), scope["path"], status)
                )

        async def send_and_watch(message: Message) -> None:
            # Logged before the response leaves, so a client that got its answer sees it counted.
            if message["type"] == "http.response.start":
                log(message["status"])
            await send(message)

        if faults.latency > 0:
            await asyncio.sleep(faults.latency)
        if faults.rate_limit_burst > 0:
            faults.rate_limit_burst -= 1
            response: Response = fake.rate_limited_response(faults.retry_after)
            await response(scope, receive, send_and_watch)
        elif faults.error_rate > 0 and fake.rng.random() < faults.error_rate:
            response = fake.server_error_response()
            await response(scope, receive, send_and_watch)
        elif faults.timeout_rate > 0 and fake.rng.random() < faults.timeout_rate:
            await asyncio.sleep(faults.hang_seconds)
            response = fake.server_error_response(504)
            await response(scope, receive, send_and_watch)
        else:
            await self.app(scope, receive, send_and_watch)
        log(0)  # no response was started (the handler failed before answering)


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime | None, *, ms: bool = True) -> str | None:
    """RFC 3339 in UTC with a Z, the form most of the platforms document."""
    if dt is None:
        return None
    dt = dt.astimezone(UTC)
    text = dt.isoformat(timespec="milliseconds" if ms else "seconds")
    return text.replace("+00:00", "Z")


def free_port(host: str = "127.0.0.1") -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Fake:
    """Base of every platform fake. Subclasses set `platform` and implement `routes(app)`.

    Subclass contract:
    - `__init__(self, *, token: str, seed: int | None = None, **platform_options)` must call
      `super().__init__(token=token, seed=seed)` and then create the platform's fixed
      containers (a project, a squad...), then `self.seed_demo(seed)` when seed is given.
    - `routes(self, app)` adds the platform's endpoints to the FastAPI app.
    - `error_response(status, code, message, **extra)` builds the platform's error body.
    - `reset_state()` (optional) restores the initial containers for `POST /_fake/reset`.
    """

    platform: str = "base"
    api_root: str = ""  # the path of the documented API root under the fake's origin, e.g. "/api/v1"
    demo_credential: str = "demo-token"  # what `taskbridge demo` starts it with

    def __init__(self, *, token: str, seed: int | None = None) -> None:
        self.token = token
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = Faults()
        self.requests = RequestLog()
        self.webhooks = WebhookSender(self.faults, self.rng)
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._last_time = utcnow()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._app: FastAPI | None = None

    # -- platform hooks ------------------------------------------------------------------

    def routes(self, app: FastAPI) -> None:
        raise NotImplementedError

    def error_response(self, status: int, code: str, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"error": code, "message": message, **extra}, status_code=status)

    def rate_limited_response(self, retry_after: int) -> Response:
        resp = self.error_response(429, "rate_limited", "Rate limit exceeded. Try again later.")
        resp.headers["Retry-After"] = str(retry_after)
        return resp

    def server_error_response(self, status: int = 500) -> Response:
        return self.error_response(status, "internal_error", "Internal server error")

    def lifespan_extra(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Anything a fake must run for as long as it serves (e.g. an MCP session manager)."""
        return contextlib.nullcontext()

    def reset_state(self) -> None:
        """Forget all data; subclasses re-create their fixed containers."""

    # -- what a config needs to reach this fake (the demo, the tests) ----------------------

    def scope(self) -> str:
        """The container a route member syncs (a project, a board, a squad), made if need be."""
        raise NotImplementedError

    def people(self) -> dict[str, str]:
        """Person keys ("alice", "bob") -> this platform's user ids, for the `people:` config."""
        return {}

    def example_edit(self, title: str) -> ExampleEdit | None:
        """A request that renames a task here as a person would (the demo's "try this", and what
        `taskbridge demo --check` sends); None where the fake offers none."""
        return None

    def connector_config(self) -> dict[str, Any]:
        """The connector keys of a config that reach this fake with its own credential."""
        return {"platform": self.platform, "base_url": self.url + self.api_root, "token": self.token}

    def snapshot(self) -> dict[str, Any]:
        """The fake's whole state as JSON-able data, for tests (GET /_fake/state)."""
        return {}

    # -- shared helpers for subclasses -----------------------------------------------------

    def now(self) -> datetime:
        """A strictly increasing UTC clock (at least 1 ms apart), so updated times order changes."""
        # Whole milliseconds, since that is what the platforms print: two changes never share a time.
        now = utcnow()
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if now <= self._last_time:
            now = self._last_time + timedelta(milliseconds=1)
        self._last_time = now
        return now

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("fake is not started")
        return f"http://{self.host}:{self.port}"

    async def json_body(self, request: Request) -> Any:
        """The parsed JSON body, or raise `BadBody` (subclasses answer it in their own shape)."""
        raw = await request.body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadBody(f"Request body is not valid JSON: {exc}") from None

    def route_template(self, scope: Scope) -> str:
        """The template of the route a request matches ("/tasks/{task_id}"), else its raw path."""
        assert self._app is not None
        partial = None
        for route in self._app.router.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return str(getattr(route, "path", scope["path"]))
            if match is Match.PARTIAL and partial is None:
                partial = str(getattr(route, "path", scope["path"]))
        return partial or scope["path"]

    # -- app and server --------------------------------------------------------------------

    def app(self) -> FastAPI:
        if self._app is not None:
            return self._app

        @contextlib.asynccontextmanager
        async def lifespan(_: FastAPI) -> Any:
            self._loop = asyncio.get_running_loop()
            await self.webhooks.start()
            try:
                async with self.lifespan_extra():
                    yield
            finally:
                await self.webhooks.stop()

        app = FastAPI(
            title=f"{self.platform} fake", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
        )

        @app.exception_handler(BadBody)
        async def _bad_body(_: Request, exc: BadBody) -> Response:
            return self.error_response(400, "invalid_body", str(exc))

        @app.exception_handler(RequestValidationError)
        async def _validation(_: Request, exc: RequestValidationError) -> Response:
            return self.error_response(400, "validation_error", str(exc.errors()[:1]))

        self._control_routes(app)
        self.routes(app)
        app.add_middleware(_FaultsAndLog, fake=self)
        self._app = app
        return app

    def _control_routes(self, app: FastAPI) -> None:
        @app.get(f"{CONTROL_PREFIX}/requests")
        async def _requests() -> dict[str, Any]:
            return self.requests.snapshot()

        @app.get(f"{CONTROL_PREFIX}/faults")
        async def _get_faults() -> dict[str, Any]:
            return asdict(self.faults)

        @app.post(f"{CONTROL_PREFIX}/faults")
        async def _set_faults(request: Request) -> Response:
            try:
                self.faults.update(json.loads(await request.body() or b"{}"))
            except (ValueError, TypeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            return JSONResponse(asdict(self.faults))

        @app.get(f"{CONTROL_PREFIX}/webhooks")
        async def _deliveries() -> list[dict[str, Any]]:
            return self.webhooks.snapshot()

        @app.get(f"{CONTROL_PREFIX}/state")
        async def _state() -> dict[str, Any]:
            return self.snapshot()

        @app.post(f"{CONTROL_PREFIX}/reset")
        async def _reset() -> dict[str, bool]:
            self.requests.clear()
            self.faults.reset()
            self.webhooks.deliveries.clear()
            self.reset_state()
            return {"ok": True}

    def start(self, port: int = 0, host: str = "127.0.0.1") -> Fake:
        """Serve on loopback in a background thread; returns once it accepts connections."""
        self.host = host
        # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that name
        # their protocol, and with Nagle on, a response written in two parts waited ~40 ms for
        # the client's delayed ACK, which no real platform's server makes anyone wait.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.port = int(sock.getsockname()[1])
        # asyncio's own loop, named: uvicorn's "auto" takes uvloop whenever it is installed, and
        # the fakes, which stand for the platforms' servers in every benchmark's floor and in
        # the tests, should not change speed with what else the environment has.
        config = uvicorn.Config(
            self.app(), log_level="warning", access_log=False, lifespan="on", loop="asyncio"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"fake-{self.platform}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"{self.platform} fake did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None
        self._loop = None  # so call() runs inline once the server is gone

    def serve_forever(self, port: int, host: str = "127.0.0.1") -> None:
        """Run in the foreground (the `taskbridge fake` command) until interrupted."""
        self.host = host
        self.port = port
        uvicorn.run(self.app(), host=host, port=port, log_level="info", access_log=False)

    def call(self, fn: Callable[[], Any], *, timeout: float = 10) -> Any:
        """Run `fn` on the fake's loop and return its result (for in-process test helpers). The
        loop may be busy serving a big listing: benchmarks wait longer than tests."""
        if self._loop is None:
            return fn()

        async def runner() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(runner(), self._loop).result(timeout=timeout)

    def __enter__(self) -> Fake:
        return self.start() if self.port is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BadBody(Exception):
    """A request body that is not JSON; each fake answers it with its own 400 shape."""


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer ...` header, or None."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


@contextlib.contextmanager
def running(*fakes: Fake) -> Iterator[tuple[Fake, ...]]:
    """Start several fakes for a test and stop them all afterwards."""
    started: list[Fake] = []
    try:
        for fake in fakes:
            started.append(fake.start())
        yield tuple(started)
    finally:
        for fake in started:
            fake.stop()


AsyncHandler = Callable[..., Awaitable[Response]]


# -- indexes for the fakes' hot paths ------------------------------------------------------------
#
# A fake must stay usable at the memory benchmark's scale (100,000 tasks): no request may cost
# O(n) per page (O(n^2) to list everything) or O(n) for one task. These are the two structures
# the fakes share for that; dicts and sorted lists (bisect) do the rest.

H = TypeVar("H", bound=Hashable)


class CountTree:
    """A growing row of 0/1 flags with prefix counts (a Fenwick tree): `append`, `set`, `total` and
    `select(k)` (the position of the k-th set flag) are O(log n).

    What an offset-paginated, filtered listing needs: the rows are a scope's items in list order,
    a flag says "matches the filter", and page `offset..offset+limit` is `select` of each index.
    """

    def __init__(self, flags: Iterable[bool] = ()) -> None:
        self._flags = bytearray()
        self._tree = array("q", [0])  # 1-based; _tree[i] sums the flags in (i - lowbit(i), i]
        self.total = 0
        for flag in flags:
            self.append(flag)

    def __len__(self) -> int:
        return len(self._flags)

    def __getitem__(self, pos: int) -> bool:
        return bool(self._flags[pos])

    def append(self, flag: bool) -> None:
        bit = 1 if flag else 0
        self._flags.append(bit)
        i = len(self._flags)
        stop, j, value = i - (i & -i), i - 1, bit
        while j > stop:  # the nodes below i hold the rest of i's range
            value += self._tree[j]
            j -= j & -j
        self._tree.append(value)
        self.total += bit

    def set(self, pos: int, flag: bool) -> None:
        bit = 1 if flag else 0
        delta = bit - self._flags[pos]
        if not delta:
            return
        self._flags[pos] = bit
        self.total += delta
        i, n = pos + 1, len(self._flags)
        while i <= n:
            self._tree[i] += delta
            i += i & -i

    def select(self, k: int) -> int:
        """The position of the k-th set flag, k counted from 0; needs 0 <= k < total."""
        if not 0 <= k < self.total:
            raise IndexError(k)
        n, pos = len(self._flags), 0
        step = 1 << (n.bit_length() - 1)
        while step:
            nxt = pos + step
            if nxt <= n and self._tree[nxt] <= k:
                pos = nxt
                k -= self._tree[nxt]
            step >>= 1
        return pos


class BlockList(Generic[H]):
    """A sequence of distinct hashable items kept in blocks of `block` to `2 * block` items, with an
    item -> block map: `append`, `insert` at an index, `remove` by value, `in`, `len` and
    iteration, with no scan of the whole sequence. An insert in the middle walks the blocks
    (n / block steps) and moves at most a block's items, so every operation is O(sqrt n) at worst
    with the default block size; list.insert/remove would be O(n) each.

    For a position-ordered column (a kanban lane) where moving one item must not cost the column.
    """

    def __init__(self, items: Iterable[H] = (), *, block: int = 512) -> None:
        self._size = block
        self._blocks: list[list[H]] = []
        self._home: dict[H, list[H]] = {}
        for item in items:
            self.append(item)

    def __len__(self) -> int:
        return len(self._home)

    def __iter__(self) -> Iterator[H]:
        for block in self._blocks:
            yield from block

    def __contains__(self, item: object) -> bool:
        return item in self._home

    def __repr__(self) -> str:
        return f"BlockList({list(self)!r})"

    def append(self, item: H) -> None:
        if item in self._home:
            raise ValueError(f"{item!r} is already in the list")
        if not self._blocks or len(self._blocks[-1]) >= self._size:
            self._blocks.append([])
        block = self._blocks[-1]
        block.append(item)
        self._home[item] = block

    def insert(self, index: int, item: H) -> None:
        """Insert before position `index` (0-based, as list.insert; past the end appends)."""
        if index < 0:
            index = max(0, len(self) + index)
        if index >= len(self):
            self.append(item)
            return
        if item in self._home:
            raise ValueError(f"{item!r} is already in the list")
        for number, block in enumerate(self._blocks):
            if index <= len(block):
                block.insert(index, item)
                self._home[item] = block
                if len(block) > 2 * self._size:
                    tail = block[self._size :]
                    del block[self._size :]
                    self._blocks.insert(number + 1, tail)
                    for moved in tail:
                        self._home[moved] = tail
                return
            index -= len(block)
        raise AssertionError("unreachable: index < len(self)")  # pragma: no cover

    def remove(self, item: H) -> None:
        block = self._home.pop(item, None)
        if block is None:
            raise ValueError(f"{item!r} is not in the list")
        block.remove(item)
        if not block:
            for number, candidate in enumerate(self._blocks):
                if candidate is block:
                    del self._blocks[number]
                    break
