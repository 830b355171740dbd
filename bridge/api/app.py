"""The daemon's HTTP app (FastAPI): webhook intake, health, metrics and the unified API."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
from typing import Any, Protocol

from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import DBAPIError
from starlette.datastructures import URL
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bridge import __version__, console, metrics
from bridge.api import deadletters, docs, mcp
from bridge.api.routes import router
from bridge.config import Config
from bridge.engine.context import EngineContext
from bridge.engine.inbox import Receipt, receive
from bridge.logs import log_context
from bridge.store import StoreLost, redact_url

log = logging.getLogger("taskbridge.api")


class Host(Protocol):
    """What the app needs of the daemon that serves it (the daemon is one; tests may pass another)."""

    cfg: Config
    ctx: EngineContext

    def is_ready(self) -> bool:
        """Started, and its scheduler running."""
        ...

    async def trigger_poll(self, connector: str) -> str:
        """Start (or coalesce into) a poll of `connector`: "started" or "coalesced". Raises
        leases.NotLeaseOwner when another replica polls it."""
        ...

    async def check_store(self) -> None:
        """Find out whether the store is still the one opened, and stop work if not."""
        ...


class Principal:
    def __init__(self, name: str, scopes: frozenset[str]) -> None:
        self.name = name
        self.scopes = scopes


# The bearer scheme as OpenAPI declares it (components.securitySchemes.bearer, and `security` on every
# /api/v1 operation): what gives /docs its Authorize button. It never refuses (auto_error off);
# `authenticate` below decides, through each route's scope check.
BEARER = HTTPBearer(
    scheme_name="bearer",
    auto_error=False,
    description=(
        "A token from `server.tokens` (the config holds its SHA-256), sent as "
        "`Authorization: Bearer <token>`. Its scopes decide what it may call: `read`, `write` "
        "(a change), `admin` (dead letters, a sync trigger; implies the others). No or an unknown "
        "token answers 401, a token without the scope 403."
    ),
)

WEBHOOKS = "/webhooks/"  # POST /webhooks/{connector}: a platform's deliveries (WebhookIntake)
READY_WRITE_TIMEOUT = 5.0  # seconds readiness waits for its probe write (a busy writer may hold the lock)


def _first_line(exc: BaseException) -> str:
    # A driver's error text carries the statement and parameters after its first line.
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def create_app(daemon: Host) -> FastAPI:
    cfg = daemon.cfg
    ctx = daemon.ctx
    mcp_endpoint = mcp.McpEndpoint()  # /mcp: the API as MCP tools; its session manager runs in the lifespan
    app = FastAPI(
        title="taskbridge",
        version=__version__,
        description=(
            "The unified API over every synced platform: tasks, comments, conflicts, connectors and "
            "dead letters. Every /api/v1 call takes a bearer token from `server.tokens` (Authorize)."
        ),
        docs_url=None,  # docs.install serves /docs from the package, with no CDN
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=mcp_endpoint.lifespan,
    )
    limit = cfg.server.max_body_bytes
    known: dict[str, Any] = {}  # the tokens of the config in force (a reload swaps daemon.cfg)

    def tokens() -> list[tuple[str, bytes, frozenset[str]]]:
        if known.get("cfg") is not daemon.cfg:
            known["cfg"] = daemon.cfg
            known["tokens"] = [
                (t.name, bytes.fromhex(t.sha256), frozenset(t.scopes)) for t in daemon.cfg.server.tokens
            ]
        return list(known["tokens"])

    def authenticate(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for name, expected, scopes in tokens():
            # Compare against every token, in constant time, so timing says nothing.
            if hmac.compare_digest(digest, expected):
                found = Principal(name, scopes)
        if found is None:
            raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
        return found

    def scope(needed: str) -> Any:
        def check(principal: Principal = Depends(authenticate)) -> Principal:  # noqa: B008
            if needed not in principal.scopes and "admin" not in principal.scopes:
                raise HTTPException(403, f"this token lacks the {needed!r} scope")
            return principal

        return check

    app.state.scope = scope
    app.state.authenticate = authenticate
    app.state.daemon = daemon

    @app.exception_handler(RequestValidationError)
    async def validation_failed(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's 422 echoes the input; an input JSON cannot carry (a lone surrogate, a value
        # nested past the recursion limit) must not turn the 422 into a 500.
        try:
            return await request_validation_exception_handler(request, exc)
        except (ValueError, TypeError, RecursionError):
            return JSONResponse({"detail": _plain_errors(exc.errors())}, status_code=422)

    @app.exception_handler(StoreLost)
    @app.exception_handler(DBAPIError)
    async def store_failed(request: Request, exc: Exception) -> Response:
        answer = store_failure(ctx, exc)
        if answer is None:
            raise exc  # a statement the store refused: the server's bug, a bare 500
        return answer

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def store_problems() -> list[str]:
        problems = []
        await daemon.check_store()
        if ctx.store.lost is not None:
            problems.append(ctx.store.lost)
        await ctx.store.ping()
        if not await ctx.store.schema_is_current():
            problems.append("store schema is not at the current migration")
        return problems

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        try:
            try:
                problems = await store_problems()
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                # A pooled connection the server closed since its last use (a restart that is
                # over): SQLAlchemy has invalidated the pool, and a second look reconnects.
                problems = await store_problems()
        except Exception:
            problems = ["store unreachable"]
        if not problems:
            try:
                await asyncio.wait_for(ctx.store.probe_write(ctx.replica), READY_WRITE_TIMEOUT)
            except TimeoutError:
                problems.append(f"store took no write within {READY_WRITE_TIMEOUT:g} s")
            except Exception as exc:  # full, read-only, permissions: the store's own words
                problems.append(f"store refuses writes: {_first_line(exc)}")
        if not daemon.is_ready():
            problems.append("scheduler not running")
        status = 200 if not problems else 503
        return JSONResponse(
            {"status": "ready" if not problems else "not ready", "problems": problems}, status_code=status
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return PlainTextResponse(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    bearer = [Security(BEARER)]  # declares the scheme on every /api/v1 operation; refuses nothing
    app.include_router(router, dependencies=bearer)
    app.include_router(deadletters.router, dependencies=bearer)
    mcp_endpoint.mount(app, "/mcp")
    docs.install(app, app.openapi_url or "/openapi.json")
    console.install(app)  # /console: the web page for a person (bridge/console)
    app.add_middleware(WebhookIntake, ctx=ctx)
    app.add_middleware(BodyLimit, limit=limit)
    app.add_middleware(RequestId)  # outermost: every answer carries it, a 413 too
    return app


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _plain_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors without their inputs, every string renderable as UTF-8."""
    return [
        {
            "type": _printable(str(err.get("type", ""))),
            "loc": [part if isinstance(part, int) else _printable(str(part)) for part in err.get("loc", ())],
            "msg": _printable(str(err.get("msg", ""))),
        }
        for err in errors
    ]


def store_failure(ctx: EngineContext, exc: Exception) -> Response | None:
    """The answer to a request the store failed, or None for a failure that is a bug (a 500)."""
    if isinstance(exc, StoreLost):
        # Nothing can be recorded: a platform retries a webhook answered 503, a client its call.
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "60"})
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        # The store's connection was lost (a PostgreSQL restart, say); the pool reconnects on the
        # next request, so the caller retries. Every pooled connection fails once at most.
        log.warning("store %s unreachable: its connection was lost", redact_url(ctx.store.url))
        return JSONResponse(
            {"detail": "the store's connection was lost; retry"},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    return None


def _receipt(receipt: Receipt) -> Response:
    payload: dict[str, Any] = {"result": receipt.result}
    if receipt.detail:
        payload["detail"] = receipt.detail
    return JSONResponse(payload, status_code=receipt.status)


class WebhookIntake:
    """`POST /webhooks/{connector}` answered here, inside BodyLimit (which has read the body)
    and before FastAPI's routing, exception middleware and request handling: a platform's
    delivery is the daemon's most frequent request (one per mirror write comes back), and
    that stack cost more CPU than the delivery's own judging. The store failing is answered
    as every route's is (`store_failure`); anything else goes up to the server's 500, as a
    route's error does. Another method there is answered 405, as a route's would be; any
    other path goes on to the router."""

    def __init__(self, app: ASGIApp, ctx: EngineContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive_message: Receive, send: Send) -> None:
        path = _route_path(scope) if scope["type"] == "http" else ""
        connector = path.removeprefix(WEBHOOKS)
        if connector.endswith("/") and connector.count("/") == 1 and len(connector) > 1:
            # As the router's redirect_slashes did for the route: a URL registered with a
            # trailing slash is sent on to the one without.
            target = URL(scope={**scope, "path": scope["path"].rstrip("/")})
            await RedirectResponse(str(target), status_code=307)(scope, receive_message, send)
            return
        if connector == path or not connector or "/" in connector:
            await self.app(scope, receive_message, send)
            return
        if scope.get("method") != "POST":
            refused = JSONResponse(
                {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": "POST"}
            )
            await refused(scope, receive_message, send)
            return
        body = b""
        while True:
            message = await receive_message()
            if message["type"] != "http.request":
                return  # the platform left before its body arrived: nobody to answer
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            answer = _receipt(await receive(self.ctx, connector, headers, body))
        except (StoreLost, DBAPIError) as exc:
            failure = store_failure(self.ctx, exc)
            if failure is None:
                raise
            answer = failure
        await answer(scope, receive_message, send)


def _route_path(scope: Scope) -> str:
    """The path the router matches: the request's, less the root path it is served under."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


# Request ids only name a request in the logs (knowing one grants nothing), so they come from a
# generator seeded once from the OS rather than a `secrets` draw, a system call each: a
# webhook's answer is one request per mirror write.
_REQUEST_IDS = random.Random()


class RequestId:
    """A new id for each HTTP request: its log lines carry it (`request_id`), and its answer
    says it in `X-Request-Id`, so a caller can quote it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"{_REQUEST_IDS.getrandbits(64):016x}"

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with log_context(request_id=request_id):
            await self.app(scope, receive, send_with_id)


class BodyLimit:
    """413 for a request body over `limit` bytes, declared or streamed, before any handler runs.

    The body is read here, up to the limit, and handed to the app whole: a chunked body declares
    no length, and an error raised from inside a handler's read would be the handler's to answer
    (FastAPI answers a failed body read 400)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(scope, receive, send, self.limit)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before its body arrived: nobody to answer
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                await _too_large(scope, receive, send, self.limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            nonlocal whole
            if whole is not None:
                message, whole = whole, None
                return message
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    path = _route_path(scope)
    if path.startswith(WEBHOOKS):
        connector = path.removeprefix(WEBHOOKS).split("/")[0]
        daemon = scope["app"].state.daemon if "app" in scope else None
        known = daemon is not None and connector in daemon.ctx.connectors
        metrics.webhooks_received.labels(connector if known else "unknown", "too_large").inc()
    response = JSONResponse({"detail": f"request body larger than {limit} bytes"}, status_code=413)
    await response(scope, receive, send)
