"""Vortask's MCP server (Streamable HTTP, JSON-RPC 2.0) through the official `mcp` SDK client.

Vortask has comments only as MCP tools (`list_comments`, `add_comment`, ...), so the connector
keeps one MCP session open and reuses it for every tool call:

- Transport: `mcp.client.streamable_http.streamable_http_client` over an `httpx2.AsyncClient` (the
  HTTP client the SDK's transport takes) carrying `Authorization: Bearer <token>`; the SDK keeps
  the `mcp-session-id` header, sends `Accept: application/json, text/event-stream`, reads SSE or
  JSON answers, and ends the session with DELETE when it is closed.
- Handshake: `initialize` at protocol 2024-11-05 (the version Vortask documents), then
  `notifications/initialized`. The SDK's own `ClientSession.initialize()` offers its newest
  handshake version, and `mcp.Client` (mode "auto") first probes `server/discover` at a newer
  protocol, which a 2024-era server refuses with a 400 before the client falls back. So the
  handshake is sent here with the session's public `send_request` / `adopt` / `send_notification`,
  exactly as `ClientSession.initialize` does it, but at 2024-11-05.
- Lifetime: the SDK's transport and session are anyio task groups, which must be entered and left
  by one task. A dedicated owner task opens them, hands the session out and, when `aclose()` is
  called, closes them. Tool calls from any task of the same event loop share that session. When
  a call comes from another event loop than the session's, a fresh session is opened there.
- Reconnect: a lost session (the server forgot or ended it: HTTP 404 "Session terminated" or a
  400 about the session; or the transport stopped) is reopened ONCE per call, and the call is
  sent again on the new session, unless it is a write that may have reached the server: one
  whose answer was lost (the connection closed, the transport stopped while it waited) may have
  happened, and is raised Retryable like a timeout (the outbox's retry looks for it first).
- Errors: a tool failure is a result with `isError: true` whose text is Vortask's REST error body
  plus the HTTP-equivalent status (`{"errors": [...], "message", "status"}`); it is mapped like
  a REST answer (401 AuthFailed, 404 NotFound, 429 RateLimited, 5xx Retryable, other 4xx
  Permanent, with Vortask's message). Refusals of the MCP endpoint itself at the HTTP level (401
  for a bad token, 429, 5xx) have bodies that are not JSON-RPC, which the SDK reports only as
  "Server returned an error response"; they are recognised by the HTTP status, seen by a
  response hook on the HTTP client (per call, through a context variable that the SDK carries
  into the task sending the request). Timeouts (`settings.timeout` per request), connection
  errors and a closed connection are Retryable. Other JSON-RPC errors (unknown tool, invalid
  params) are Permanent.
- Bounds, as for REST (connectors/base.py): a tool call with no answer within `deadline` is
  cancelled and raises DeadlineExceeded, and the session is dropped with it (at 2024-11-05 the
  SDK does not abort the POST still reading a trickled answer; ending the session does); the
  handshake waits at most the shorter of `deadline` and twice `timeout`. Every POST's answer is
  read through `bounded_body` (by the response hook): past `max_response_bytes` (or a
  Content-Length over it) it is cut off and the call raises ResponseTooLarge. The bound counts the
  bytes as sent, so the client asks for them uncompressed (`Accept-Encoding: identity`).
- Retries keep HttpClient's delivery promise: a 429 is waited out (Retry-After, up to
  `max_wait`) for any tool, since the request was not processed; other retryable failures are
  retried with backoff only for read-only tools, or when no session could be opened (the tool
  call surely wasn't sent). A write (add_comment) that timed out may have happened, so it is
  not repeated here.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
from mcp import ClientSession, MCPError
from mcp import types as mcp_types
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR, INVALID_REQUEST, REQUEST_TIMEOUT
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from connectors.base import (
    AuthFailed,
    ConnectorError,
    ConnectorSettings,
    DeadlineExceeded,
    NotFound,
    Permanent,
    RateLimited,
    RateLimiter,
    Redactor,
    RequestObserver,
    ResponseTooLarge,
    Retryable,
    backoff_delay,
    bounded_body,
    parse_retry_after,
    rate_limit_wait,
    status_class,
)

log = logging.getLogger("taskbridge.connector.vortask.mcp")

PROTOCOL_VERSION = "2024-11-05"
CLIENT_INFO = mcp_types.Implementation(name="taskbridge", version="0.1.0")
SSE_READ_TIMEOUT = 300.0  # the server-to-client GET stream may stay quiet for long

READ_ONLY_TOOLS = frozenset(
    {
        "get_context",
        "list_projects",
        "list_tasks",
        "get_task",
        "get_task_history",
        "list_members",
        "list_comments",
    }
)


@dataclass
class _HttpSeen:
    """The last HTTP error the MCP endpoint answered while one call (or the handshake) ran."""

    what: str = "MCP"  # what the call is, for a refusal's message: "MCP list_comments"
    status: int | None = None
    retry_after: str | None = None
    too_large: ResponseTooLarge | None = None  # the answer passed `max_response_bytes`


_seen: contextvars.ContextVar[_HttpSeen | None] = contextvars.ContextVar(
    "vortask_mcp_http_seen", default=None
)


class ToolRefused(Permanent):
    """The server refused the call and the tool did nothing: an error result that is not a 401,
    404, 429 or 5xx, a JSON-RPC error other than an internal one, or a 4xx of the endpoint.
    (An answer that cannot be read is a plain Permanent: the tool may have run.)"""


class _SessionLost(Exception):
    """The session is unusable (the server forgot it, the transport stopped): reopen it.
    `reached`: the call may have reached the server (its answer was lost, not refused)."""

    def __init__(self, reason: str, error: ConnectorError, *, reached: bool) -> None:
        super().__init__(reason)
        self.error = error  # raised when reopening does not help, or must not be tried
        self.reached = reached


class _NotSent(Exception):
    """No session could be opened, so the tool call was surely not sent."""

    def __init__(self, error: ConnectorError) -> None:
        super().__init__(str(error))
        self.error = error


class _BoundedStream(httpx2.AsyncByteStream):
    """A POST answer's body through `bounded_body`. A refusal is recorded for the call and
    raised as an httpx2.StreamError, which the SDK turns into a JSON-RPC error of that call (the
    call then raises the recorded ResponseTooLarge) instead of a failure of the whole transport."""

    def __init__(
        self, inner: Any, seen: _HttpSeen, limit: int, content_length: str | None, name: str
    ) -> None:
        self.inner = inner
        self.seen = seen
        self.limit = limit
        self.content_length = content_length
        self.name = name

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in bounded_body(
                self.inner, self.limit, self.content_length, what=self.seen.what, connector=self.name
            ):
                yield chunk
        except ResponseTooLarge as exc:
            self.seen.too_large = exc
            raise httpx2.StreamError(str(exc)) from None

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class _Connection:
    session: ClientSession
    owner: asyncio.Task[None]
    stop: asyncio.Event
    loop: asyncio.AbstractEventLoop
    session_id: str | None = None


class VortaskMcp:
    """One reusable MCP session to `url`; `call` runs a tool and raises the connector errors."""

    def __init__(
        self,
        settings: ConnectorSettings,
        url: str,
        *,
        observer: RequestObserver | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        """`limiter`: the connector's REST rate limiter, so `rate_limit` bounds tool calls too."""
        self.settings = settings
        self.url = url
        self.observer = observer
        self.limiter = limiter
        self.redact = Redactor(settings.secrets)
        self.handshakes = 0  # sessions opened, one `initialize` each
        self.rng = random.Random()
        self._conn: _Connection | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    # -- public -------------------------------------------------------------------------------

    @property
    def session_id(self) -> str | None:
        """The open session's `mcp-session-id` (None when no session is open)."""
        return self._conn.session_id if self._conn is not None else None

    async def connect(self) -> None:
        """Open the session now (a check of URL and token); calls open it on demand anyway."""
        try:
            await self._connection()
        except _NotSent as exc:
            raise exc.error from None

    async def call(self, tool: str, arguments: Mapping[str, Any]) -> Any:
        """Call `tool`; returns its result's JSON (the text content, parsed)."""
        idempotent = tool in READ_ONLY_TOOLS
        attempt = 0
        reopened = False
        while True:
            attempt += 1
            try:
                return await self._call_once(tool, dict(arguments))
            except _SessionLost as lost:
                await self._drop()
                if reopened or (lost.reached and not idempotent):
                    raise lost.error from None
                reopened = True
                log.info("%s: MCP session lost (%s); reopening it", self.settings.name, lost)
            except _NotSent as exc:
                if (
                    attempt > self.settings.max_retries
                    or not isinstance(exc.error, Retryable)
                    or isinstance(exc.error, DeadlineExceeded)
                ):
                    raise exc.error from None
                await asyncio.sleep(self._backoff(attempt))
            except RateLimited as exc:
                wait = rate_limit_wait(self.settings, self.rng, exc, attempt)
                if wait is None:
                    raise
                await asyncio.sleep(wait)
            except DeadlineExceeded:
                raise  # not retried here, as in HttpClient
            except Retryable:
                if not idempotent or attempt > self.settings.max_retries:
                    raise
                await asyncio.sleep(self._backoff(attempt))

    async def aclose(self) -> None:
        """End the session (DELETE on the server) and stop its owner task."""
        await self._drop()

    # -- one call -----------------------------------------------------------------------------

    async def _call_once(self, tool: str, arguments: dict[str, Any]) -> Any:
        conn = await self._connection()
        if self.limiter is not None:
            await self.limiter.acquire()
        seen = _HttpSeen(what=f"MCP {tool}")
        started = asyncio.get_running_loop().time()
        token = _seen.set(seen)
        try:
            # A task of its own, raced against the owner below, so a transport that died does
            # not leave the call waiting for its timeout. It copies this context, and with it
            # `seen`; the SDK carries the context on into the task that POSTs the request.
            call = asyncio.ensure_future(conn.session.call_tool(tool, arguments))
        finally:
            _seen.reset(token)
        try:
            done, _ = await asyncio.wait(
                {call, conn.owner}, timeout=self.settings.deadline, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:
            call.cancel()
            raise
        if not done:
            call.cancel()
            with contextlib.suppress(BaseException):
                await call
            self._observe("error", started)
            await self._drop()  # ends the POST still reading its answer
            raise DeadlineExceeded(f"MCP {tool}", self.settings.deadline, connector=self.settings.name)
        if call not in done:
            call.cancel()
            with contextlib.suppress(BaseException):
                await call
            self._observe("error", started)
            failure = conn.owner.exception() if not conn.owner.cancelled() else None
            raise _SessionLost(
                "the MCP transport stopped",
                Retryable(
                    f"MCP {tool}: the MCP connection failed: {self._text(_leaf(failure))}",
                    connector=self.settings.name,
                ),
                reached=True,
            )
        try:
            result = call.result()
        except MCPError as exc:
            self._observe("error", started)
            raise self._mcp_error(tool, exc, seen) from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            self._observe("error", started)
            # Raised by the send: the request never left.
            raise _SessionLost(
                "the MCP session is closed",
                Retryable(f"MCP {tool}: the MCP session is closed", connector=self.settings.name),
                reached=False,
            ) from exc
        except (httpx2.TransportError, OSError, TimeoutError) as exc:
            self._observe("error", started)
            raise Retryable(f"MCP {tool} failed: {self._text(exc)}", connector=self.settings.name) from exc
        except Exception as exc:  # a result the SDK could not accept (schema, shape)
            self._observe("error", started)
            raise Permanent(
                f"MCP {tool}: unexpected answer: {self._text(exc)}", connector=self.settings.name
            ) from exc
        return self._result(tool, result, started)

    def _result(self, tool: str, result: mcp_types.CallToolResult, started: float) -> Any:
        text = next((c.text for c in result.content if isinstance(c, mcp_types.TextContent)), None)
        try:
            data = json.loads(text) if text is not None else None
        except ValueError:
            data = None
        name = self.settings.name
        if not result.is_error:
            self._observe("2xx", started)
            if text is None or (data is None and text.strip() != "null"):
                raise Permanent(f"MCP {tool}: the result is not JSON text", connector=name)
            return data
        status = data.get("status") if isinstance(data, dict) else None
        self._observe(status_class(status if isinstance(status, int) else None), started)
        message = self.redact(_error_text(data) if isinstance(data, dict) else (text or "tool error"))
        where = f"MCP {tool}: {message}"
        if not isinstance(status, int):
            raise ToolRefused(where, connector=name)
        if status == 401:
            raise AuthFailed(where, status=status, connector=name)
        if status == 404:
            raise NotFound(where, status=status, connector=name)
        if status == 429:
            raise RateLimited(where, retry_after=1.0, status=status, connector=name)
        if status >= 500:
            raise Retryable(where, status=status, connector=name)
        raise ToolRefused(where, status=status, connector=name)

    def _mcp_error(self, what: str, exc: MCPError, seen: _HttpSeen) -> ConnectorError | _SessionLost:
        """A JSON-RPC error, or the transport's stand-in for an HTTP failure, as a connector error."""
        name = self.settings.name
        status = seen.status
        if status == 401:
            return AuthFailed(f"MCP {what}: the MCP endpoint refused the token", status=401, connector=name)
        if status == 429:
            return RateLimited(
                f"MCP {what}: rate limited",
                retry_after=parse_retry_after(seen.retry_after),
                status=429,
                connector=name,
            )
        if status is not None and status >= 500:
            return Retryable(
                f"MCP {what}: the MCP endpoint answered HTTP {status}", status=status, connector=name
            )
        if seen.too_large is not None:
            return seen.too_large
        code = exc.error.code
        text = self._text(exc)
        where = f"MCP {what}: {text}"
        if code == INVALID_REQUEST and ("session" in text.lower() or status in (400, 404)):
            # The server refused the session, and with it the call.
            return _SessionLost(text, Retryable(where, status=status, connector=name), reached=False)
        if code == CONNECTION_CLOSED:
            return _SessionLost(text, Retryable(where, connector=name), reached=True)
        if code == REQUEST_TIMEOUT:
            return Retryable(where, connector=name)
        if code == INTERNAL_ERROR:
            return Permanent(where, status=status, connector=name)  # it may have failed half-way
        return ToolRefused(where, status=status, connector=name)

    # -- the session ---------------------------------------------------------------------------

    async def _connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            conn = self._conn
            if conn is not None and (conn.loop is not loop or conn.owner.done()):
                await self._drop()
                conn = None
            if conn is None:
                conn = self._conn = await self._open()
            return conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.loop.is_closed() or conn.loop is not asyncio.get_running_loop():
            return  # a session of a loop that is gone went with it
        conn.stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(conn.owner), timeout=self.settings.timeout)
        except TimeoutError:
            conn.owner.cancel()
            with contextlib.suppress(BaseException):
                await conn.owner
        except asyncio.CancelledError:
            if not conn.owner.cancelled():
                raise  # we are being cancelled, not the owner
        except BaseException as exc:  # the owner's failure was reported to the calls it broke
            log.debug("%s: MCP session ended with %r", self.settings.name, exc)

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[_Connection] = loop.create_future()
        stop = asyncio.Event()
        handshake_seen = _HttpSeen(what="MCP initialize")
        started = loop.time()
        owner = loop.create_task(self._serve(ready, stop, handshake_seen), name=f"{self.settings.name}-mcp")
        bound = min(self.settings.timeout * 2, self.settings.deadline)
        try:
            conn = await asyncio.wait_for(asyncio.shield(ready), timeout=bound)
        except BaseException as exc:
            past_deadline = (
                isinstance(exc, TimeoutError) and not ready.done() and bound == self.settings.deadline
            )
            stop.set()
            owner.cancel()
            with contextlib.suppress(BaseException):
                await owner
            self._observe("error", started)
            if isinstance(exc, asyncio.CancelledError):
                raise
            if past_deadline:
                what = f"MCP initialize at {self.url}"
                raise _NotSent(DeadlineExceeded(what, bound, connector=self.settings.name)) from None
            raise _NotSent(self._open_error(exc, handshake_seen)) from None
        self._observe("2xx", started)
        return conn

    def _open_error(self, exc: BaseException, seen: _HttpSeen) -> ConnectorError:
        leaf = _leaf(exc)
        name = self.settings.name
        if isinstance(leaf, ConnectorError):
            return leaf
        if isinstance(leaf, MCPError):
            mapped = self._mcp_error("initialize", leaf, seen)
            return mapped.error if isinstance(mapped, _SessionLost) else mapped
        if isinstance(leaf, TimeoutError | httpx2.TimeoutException):
            return Retryable(f"MCP initialize at {self.url} timed out", connector=name)
        return Retryable(f"MCP initialize at {self.url} failed: {self._text(leaf)}", connector=name)

    async def _serve(
        self, ready: asyncio.Future[_Connection], stop: asyncio.Event, handshake_seen: _HttpSeen
    ) -> None:
        """The owner task: opens the transport and the session, waits for `stop`, closes them."""
        holder: list[_Connection] = []

        async def on_response(response: httpx2.Response) -> None:
            if holder and response.headers.get("mcp-session-id"):
                holder[0].session_id = response.headers["mcp-session-id"]
            target = _seen.get()
            if target is not None and response.request.method == "POST":
                response.stream = _BoundedStream(
                    response.stream,
                    target,
                    self.settings.max_response_bytes,
                    response.headers.get("content-length"),
                    self.settings.name,
                )
            if response.status_code >= 400 and target is not None:
                target.status = response.status_code
                target.retry_after = response.headers.get("retry-after")

        timeout = self.settings.timeout
        http = httpx2.AsyncClient(
            headers={
                "Authorization": f"Bearer {self.settings.token}",
                "User-Agent": "taskbridge",
                "Accept-Encoding": "identity",  # the size bound counts bytes as sent
            },
            timeout=httpx2.Timeout(timeout, read=max(timeout, SSE_READ_TIMEOUT)),
            event_hooks={"response": [on_response]},
        )
        try:
            async with (
                http,
                streamable_http_client(self.url, http_client=http) as (read, write),
                ClientSession(read, write, read_timeout_seconds=timeout, client_info=CLIENT_INFO) as session,
            ):
                task = asyncio.current_task()
                assert task is not None
                holder.append(_Connection(session, task, stop, asyncio.get_running_loop()))
                token = _seen.set(handshake_seen)
                try:
                    await self._handshake(session)
                finally:
                    _seen.reset(token)
                ready.set_result(holder[0])
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                if isinstance(exc, asyncio.CancelledError):
                    ready.cancel()
                else:
                    ready.set_exception(exc)
            raise

    async def _handshake(self, session: ClientSession) -> None:
        result = await session.send_request(
            mcp_types.InitializeRequest(
                params=mcp_types.InitializeRequestParams(
                    protocol_version=PROTOCOL_VERSION,
                    capabilities=mcp_types.ClientCapabilities(),
                    client_info=CLIENT_INFO,
                )
            ),
            mcp_types.InitializeResult,
        )
        if result.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS:
            raise Permanent(
                f"the MCP server at {self.url} answered protocol {result.protocol_version!r} "
                f"({PROTOCOL_VERSION} was asked for)",
                connector=self.settings.name,
            )
        session.adopt(result)
        await session.send_notification(mcp_types.InitializedNotification())
        self.handshakes += 1
        log.debug(
            "%s: MCP session open at %s (protocol %s)", self.settings.name, self.url, result.protocol_version
        )

    # -- helpers ------------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(self.settings, self.rng, attempt)

    def _text(self, exc: BaseException | None) -> str:
        if exc is None:
            return "unknown error"
        return self.redact(str(exc)) or type(exc).__name__

    def _observe(self, status_class: str, started: float) -> None:
        if self.observer is not None:
            elapsed = asyncio.get_running_loop().time() - started
            self.observer(self.settings.name, "MCP", status_class, elapsed)


def _error_text(body: Mapping[str, Any]) -> str:
    """Vortask's error body as one line: "Not Found: Task 9 not found."."""
    errors = body.get("errors")
    message = str(body.get("message") or "error")
    if isinstance(errors, list) and errors:
        return f"{message}: {'; '.join(str(e) for e in errors)}"
    return message


def _leaf(exc: BaseException | None) -> BaseException | None:
    """The first exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
