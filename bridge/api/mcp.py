"""`/mcp`: the unified API as MCP tools (Streamable HTTP), for an AI assistant or any MCP client.

Built on the `mcp` SDK's `MCPServer` (each tool's input schema comes from its type hints) served by
its `StreamableHTTPSessionManager` in **stateless** mode with **JSON** answers: every POST carries
one JSON-RPC message and gets its answer as one JSON body, and no session lives in the daemon, so
any replica answers any request and nothing holds a stream open at shutdown. The manager's task
group runs in the app's lifespan (`McpEndpoint.lifespan`, given to FastAPI by `create_app`).

Auth is the API's own (`app.state.authenticate`, which re-reads the tokens after a config reload):
every HTTP request to /mcp needs a bearer token from `server.tokens`, else 401 with
`WWW-Authenticate: Bearer`. Each tool needs a scope (`read`, `write`, `admin`; admin implies the
others), checked by the API's `app.state.scope`; a token without it gets a tool error naming the
scope. Tools call the same code as the /api/v1 routes (the route functions themselves, or
`routes.find_tasks`), so a change is made by `api_ops` with the token's name as its actor (history
says `api:<name>`), a write-only token is answered the id it wrote and nothing else, and a refusal
says what the API's 4xx would. Every refusal is a tool result with `isError` and a plain message.

`plan` is `taskbridge plan` run in the daemon, on the config in force (`daemon.cfg`, so a reload is
seen): the engine's adoption, one poll and a comment sweep of every member on a scratch copy of
the store (bridge/planning.py), its answer the same JSON as `taskbridge plan --json`. It writes
to no platform and not to the store, so a `read` token may ask for one. It reads every member in
full, so one runs at a time per daemon: a second asked meanwhile is refused, not queued (see
PLAN_BUSY). Its polls log as the daemon's do (a member failing, say), with the call's request_id
next to the line that says who asked for the plan. `apply` is the CLI's alone: `plan --apply`
wants the daemon stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from bridge import __version__
from bridge.api import deadletters, routes
from bridge.api.routes import (
    Ack,
    CommentIn,
    CommentOut,
    ConflictAck,
    ConflictOut,
    Resolve,
    TaskCreate,
    TaskFields,
    TaskOut,
    TaskPage,
    UtcDateTime,
)
from bridge.engine import api_ops
from bridge.engine import deadletters as engine_deadletters
from bridge.engine.recovery import RecoveryFailed
from bridge.model import Priority, Status
from bridge.planning import check_routes, make_plan
from bridge.store import StoreLost
from bridge.store.portable import PortableError

RECENT_HISTORY = 20  # history entries a task comes with, newest last (get_task takes another number)

log = logging.getLogger("taskbridge.mcp")

INSTRUCTIONS = (
    "taskbridge keeps tasks in sync across several task platforms. Each task belongs to a route "
    "(a set of platforms that mirror each other) and has one canonical value per field; a change "
    "made here goes out to its copy on every platform of its route. Find tasks with search_tasks "
    "or list_tasks, read one with get_task (its copies and recent history), change them with "
    "create_task, update_task and comment_task. Conflicts are fields two platforms changed "
    "differently, held for a person: list_conflicts, resolve_conflict. Parked writes are writes a "
    "platform refused, waiting for an operator: list_parked_writes, retry_parked_write, "
    "drop_parked_write. plan shows what the next sync would do (its creates, updates, archives, "
    "deletions and comments per platform, and the tasks it would link) without doing any of it. "
    "Each tool needs a scope of the token: read, write or admin."
)

# -- argument types (their constraints are the API's) ---------------------------------------------

TaskId = Annotated[str, Field(min_length=1, max_length=200, description="the task's id (a ULID)")]
ParkedId = Annotated[int, Field(ge=1, le=2**63 - 1, description="the parked write's id (list_parked_writes)")]
Limit = Annotated[int, Field(ge=1, le=500, description="at most this many tasks")]
Cursor = Annotated[str | None, Field(description="the `next_cursor` of the page before, for the next page")]
RouteFilter = Annotated[str | None, Field(description="only this route's tasks")]
StatusFilter = Annotated[Status | None, Field(description="only tasks in this status")]

READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=True)
READS_PLATFORMS = ToolAnnotations(read_only_hint=True, open_world_hint=True)  # plan: reads every member

# A plan reads every member of its routes in full. A second one asked while one runs is refused at
# once rather than queued: it would read the same again right after for the same answer (on the
# rate limits the daemon's own polls share), and a queued call would hold its request open for
# both plans' time, past a client's timeout, with nothing to show meanwhile. Asking again after
# is the caller's choice.
PLAN_BUSY = (
    "a plan is already running in this daemon (one at a time: each reads every member); "
    "ask again when it is done"
)


class ConflictList(BaseModel):
    """Conflicts, oldest first."""

    conflicts: list[ConflictOut]


# The plan as `Plan.as_json()` gives it (`taskbridge plan --json`). Keys the plan adds later pass
# through (extra="allow"), so the answer stays that JSON whatever planning.py adds.


class PlannedWriteOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    connector: str
    scope: str
    op: str = Field(description="create, update, archive, delete or comment")
    task_id: str = Field(description="the task's id (a task the plan first sees gets a new one each run)")
    title: str
    fields: dict[str, Any] = Field(description="an update's new values, a comment's body")
    remote_id: str | None = Field(
        None, description="the platform's id of the task written; none for a create"
    )


class PlannedLinkOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    task_id: str
    title: str
    copies: list[tuple[str, str]] = Field(description="(connector, remote id) of each copy linked")
    how: str = Field(description="why they are linked: matching's confidence, or a re-adoption")


class PlanOut(BaseModel):
    """What the next sync would do; nothing of it is done."""

    model_config = ConfigDict(extra="allow")

    counts: dict[str, dict[str, int]] = Field(description="connector -> op -> how many writes")
    writes: list[PlannedWriteOut]
    links: list[PlannedLinkOut] = Field(description="tasks found on several members, linked not copied")
    held_apart: list[tuple[str, str]] = Field(
        description="(connector, remote id) left unlinked as ambiguous: a title or match key one member "
        "holds twice"
    )
    already_queued: dict[str, int] = Field(
        description="connector -> writes already waiting in the store (the next sync makes them too)"
    )
    errors: list[str] = Field(
        description="what the plan could not read or would not do (a member down, a deletion guard "
        "tripped), as `taskbridge plan` shows them; what they hide is missing from the plan"
    )


# -- plumbing -------------------------------------------------------------------------------------


def _allowed(ctx: Context, needed: str) -> tuple[Request, Any]:
    """The HTTP request of this call and its token (a `Principal`), if the token has `needed`."""
    request = ctx.request_context.request
    principal = getattr(request.state, "principal", None) if isinstance(request, Request) else None
    if principal is None:  # only McpEndpoint serves these tools, and it sets it
        raise ToolError("not authenticated: send a bearer token")
    request.app.state.scope(needed)(principal)  # HTTPException 403 naming the scope
    problem = routes._json_problem(dict((ctx.request_context.params or {}).get("arguments") or {}))
    if problem:
        raise ToolError(problem)  # what the API's strict JSON parsing refuses (a NUL, a lone surrogate)
    return request, principal


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """A refusal (the API's 4xx, an invalid value, a lost store) as a tool error with its reason."""
    try:
        yield
    except HTTPException as exc:
        raise ToolError(str(exc.detail)) from None
    except api_ops.ApiError as exc:
        raise ToolError(exc.message) from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in exc.errors()
        )
        raise ToolError(f"invalid: {problems}") from None
    except StoreLost as exc:
        raise ToolError(f"the bridge cannot work now: {exc}") from None


def _recent(task: Any, entries: int = RECENT_HISTORY) -> Any:
    if isinstance(task, TaskOut) and task.history is not None:
        task.history = task.history[-entries:] if entries else []
    return task


# -- the server ----------------------------------------------------------------------------------


def build_server() -> MCPServer[Any]:
    """The MCP server and its tools (no transport: McpEndpoint serves it over HTTP)."""
    # MCPServer() calls logging.basicConfig; the daemon owns logging, so give it nothing to do.
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)
    try:
        server: MCPServer[Any] = MCPServer(
            "taskbridge", version=__version__, instructions=INSTRUCTIONS, subscriptions=False
        )
    finally:
        root.removeHandler(guard)

    def tool(annotations: ToolAnnotations) -> Callable[[Any], Any]:
        """Registers a tool, described by its docstring as one paragraph (the SDK keeps the indent)."""

        def register(fn: Any) -> Any:
            server.add_tool(fn, description=" ".join((fn.__doc__ or "").split()), annotations=annotations)
            return fn

        return register

    # -- tasks (read) -----------------------------------------------------------------------------

    @tool(READ_ONLY)
    async def search_tasks(
        ctx: Context,
        query: Annotated[
            str,
            Field(
                min_length=1,
                max_length=200,
                description="text the title contains, ignoring case; `%` and `_` are wildcards",
            ),
        ],
        status: StatusFilter = None,
        route: RouteFilter = None,
        limit: Limit = 20,
        cursor: Cursor = None,
    ) -> TaskPage:
        """Search the tasks of every platform by title, most recently updated first (deleted ones
        left out), optionally in one status or route. A full page carries a `next_cursor`. Tasks
        come without their copies and history: get_task has those. Needs the `read` scope."""
        with _refusals():
            request, _ = _allowed(ctx, "read")
            return await routes.find_tasks(
                routes._ctx(request), q=query, status=status, route=route, limit=limit, cursor=cursor
            )

    @tool(READ_ONLY)
    async def list_tasks(
        ctx: Context,
        route: RouteFilter = None,
        status: StatusFilter = None,
        priority: Annotated[Priority | None, Field(description="only tasks of this priority")] = None,
        assignee: Annotated[str | None, Field(description="only tasks with this assignee")] = None,
        tag: Annotated[str | None, Field(description="only tasks with this tag")] = None,
        updated_since: Annotated[
            UtcDateTime | None,
            Field(description="only tasks updated at or after this time (ISO 8601, with its offset)"),
        ] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> TaskPage:
        """List the tasks the bridge holds across every platform and route, most recently updated
        first (deleted ones left out), as GET /api/v1/tasks does. Filters combine (all must
        hold); a full page carries a `next_cursor`. Tasks come without their copies and history:
        get_task has those. Needs the `read` scope."""
        with _refusals():
            request, _ = _allowed(ctx, "read")
            return await routes.find_tasks(
                routes._ctx(request),
                route=route,
                status=status,
                priority=priority,
                assignee=assignee,
                tag=tag,
                updated_since=updated_since,
                limit=limit,
                cursor=cursor,
            )

    @tool(READ_ONLY)
    async def get_task(
        ctx: Context,
        id: TaskId,
        history_limit: Annotated[
            int, Field(ge=0, le=10_000, description="how many of its latest history entries (0: none)")
        ] = RECENT_HISTORY,
    ) -> TaskOut:
        """One task: its canonical fields, its copy on every platform of its route (`links`:
        connector, platform, scope, remote_id, remote_url, state) and its recent history (`history`:
        each applied change with its field, old and new value, source and time, oldest first). A
        deleted task is still found, its last history entry saying so. Needs the `read` scope."""
        with _refusals():
            request, _ = _allowed(ctx, "read")
            return _recent(await routes.get_task(request, id), history_limit)

    # -- tasks (write) ----------------------------------------------------------------------------

    @tool(WRITES)
    async def create_task(
        ctx: Context,
        route: Annotated[
            str, Field(description="the route to create it in; each of its platforms gets a copy")
        ],
        title: Annotated[str, Field(min_length=1, max_length=1000)],
        description: str | None = None,
        status: Status | None = None,
        priority: Priority | None = None,
        assignees: Annotated[list[str] | None, Field(description="people, as the config names them")] = None,
        tags: list[str] | None = None,
        due_date: Annotated[date | None, Field(description="YYYY-MM-DD")] = None,
        start_date: Annotated[date | None, Field(description="YYYY-MM-DD")] = None,
        archived: bool | None = None,
    ) -> TaskOut | Ack:
        """Create a task in a route; the bridge then creates its copy on every platform of the
        route. Fields left out take their defaults (status todo, priority none). Answers the task
        created, or only its id to a token without `read`. Needs the `write` scope."""
        with _refusals():
            request, principal = _allowed(ctx, "write")
            given = {
                "description": description,
                "status": status,
                "priority": priority,
                "assignees": assignees,
                "tags": tags,
                "due_date": due_date,
                "start_date": start_date,
                "archived": archived,
            }
            body = TaskCreate(route=route, title=title, **{k: v for k, v in given.items() if v is not None})
            return _recent(await routes.create_task(request, body, principal))

    @tool(WRITES)
    async def update_task(ctx: Context, id: TaskId, fields: TaskFields) -> TaskOut | Ack:
        """Change some fields of a task: only the fields given change. `assignees` and `tags`
        replace the whole set; null empties `description`, `due_date` or `start_date`. The change
        goes out to every copy and settles any open conflict on a field it sets. Answers the task
        as changed, or only its id to a token without `read`. Needs the `write` scope."""
        with _refusals():
            request, principal = _allowed(ctx, "write")
            return _recent(await routes.patch_task(request, id, fields, principal))

    @tool(WRITES)
    async def comment_task(
        ctx: Context,
        id: TaskId,
        body: Annotated[str, Field(min_length=1, max_length=50_000, description="the comment's text")],
    ) -> CommentOut | Ack:
        """Add a comment to a task, under the token's name; it is posted to every platform of the
        task's route that takes comments. Answers the comment, or only its id to a token without
        `read`. Needs the `write` scope."""
        with _refusals():
            request, principal = _allowed(ctx, "write")
            return await routes.add_comment(request, id, CommentIn(body=body), principal)

    # -- conflicts --------------------------------------------------------------------------------

    @tool(READ_ONLY)
    async def list_conflicts(
        ctx: Context,
        state: Literal["open", "resolved", "all"] = "open",
        limit: Annotated[int, Field(ge=1, le=1000, description="at most this many")] = 100,
    ) -> ConflictList:
        """Conflicts, oldest first (open ones by default): a field that two platforms changed
        differently, on a route that holds such changes for a person. Each names its task, field
        and the value on offer from each side (`candidates`, `sides`). Needs the `read` scope."""
        with _refusals():
            request, _ = _allowed(ctx, "read")
            return ConflictList(conflicts=await routes.list_conflicts(request, state=state, limit=limit))

    @tool(WRITES)
    async def resolve_conflict(
        ctx: Context,
        id: Annotated[int, Field(ge=1, le=2**63 - 1, description="the conflict's id")],
        choose: Annotated[
            str | None,
            Field(description='a side among its candidates: a connector name, or "bridge"'),
        ] = None,
        value: Annotated[Any, Field(description="a value of the field instead of a candidate")] = None,
    ) -> ConflictOut | ConflictAck:
        """Settle an open conflict by choosing one of its candidates (`choose`) or giving a value
        of the field (`value`); the task takes that value and it goes out to every copy. Answers
        the conflict resolved, or only its id to a token without `read`. Needs the `write` scope."""
        with _refusals():
            request, principal = _allowed(ctx, "write")
            return await routes.resolve_conflict(
                request, Resolve(choose=choose, value=value), conflict_id=id, principal=principal
            )

    # -- parked writes ----------------------------------------------------------------------------

    @tool(READ_ONLY)
    async def list_parked_writes(
        ctx: Context,
        connector: Annotated[str | None, Field(description="only this connector's")] = None,
        limit: Annotated[
            int, Field(ge=1, le=engine_deadletters.MAX_PAGE, description="at most this many, newest first")
        ] = 100,
        cursor: Annotated[
            int | None, Field(ge=1, le=2**63 - 1, description="the next_cursor of the page before")
        ] = None,
    ) -> deadletters.OperationPage:
        """Parked writes, newest first: writes to a platform the bridge will not retry by itself
        (the platform refused them, or their attempts ran out), each with its task, connector and
        last error. Retry one once its cause is fixed, or drop it. Needs the `admin` scope."""
        with _refusals():
            request, _ = _allowed(ctx, "admin")
            return await deadletters.list_outbox(
                request, state="parked", connector=connector, limit=limit, cursor=cursor
            )

    @tool(WRITES)
    async def retry_parked_write(ctx: Context, id: ParkedId) -> deadletters.ResultOut:
        """Retry one parked write: it runs again now, planned from the task as it is now; its
        task's history notes who retried it. Needs the `admin` scope."""
        with _refusals():
            request, principal = _allowed(ctx, "admin")
            return await deadletters.retry_operation(request, op_id=id, principal=principal)

    @tool(ToolAnnotations(destructive_hint=True, open_world_hint=False))
    async def drop_parked_write(ctx: Context, id: ParkedId) -> deadletters.ResultOut:
        """Drop one parked write: it is deleted and never runs; its task's history names it, its
        last error and who dropped it. Needs the `admin` scope."""
        with _refusals():
            request, principal = _allowed(ctx, "admin")
            return await deadletters.drop_operation(request, op_id=id, principal=principal)

    # -- plan -------------------------------------------------------------------------------------

    planning = asyncio.Lock()  # one plan at a time in this daemon (PLAN_BUSY)

    @tool(READS_PLATFORMS)
    async def plan(
        ctx: Context,
        routes: Annotated[
            list[Annotated[str, Field(min_length=1, max_length=200)]] | None,
            Field(max_length=100, description="only these routes, by name (all when left out)"),
        ] = None,
    ) -> PlanOut:
        """What the next sync would do, without doing it, as `taskbridge plan --json` shows it:
        the writes it would make per platform (`writes`: create, update with the new values,
        archive, delete, comment; `counts` per connector), the tasks it would link because they
        already exist on several platforms (`links`), those it would leave unlinked as ambiguous
        (`held_apart`), and writes already waiting (`already_queued`). A platform that cannot be
        read is named in `errors` and left out of the plan; only while the bridge has linked
        nothing yet does one down answer no plan at all (every platform is listed first then).
        The daemon runs its own start-up and poll on a scratch copy of its store: platforms are
        only read, the store is not changed, so it needs only the `read` scope. It reads every
        platform in full, so it takes a while, and one runs at a time: asked while one runs, it
        answers that one is running."""
        with _refusals():
            request, principal = _allowed(ctx, "read")
            cfg = request.app.state.daemon.cfg  # the config in force (a reload swaps it)
            chosen = list(dict.fromkeys(routes or ()))
            try:
                check_routes(cfg, chosen)  # before the lock: a wrong name is told so at once
            except ValueError as exc:
                raise ToolError(str(exc)) from None
            if planning.locked():  # no await between this and taking it: nobody can slip in
                raise ToolError(PLAN_BUSY)
            async with planning:
                what = ", ".join(chosen) or "every route"
                log.info("plan of %s asked by %s over MCP", what, principal.name)
                try:
                    result = await make_plan(cfg, routes=chosen)
                except RecoveryFailed as exc:  # a new store, and a member re-adoption cannot list
                    raise ToolError(f"no plan: {exc}") from None
                except (OSError, SQLAlchemyError, PortableError) as exc:  # its scratch store, or ours
                    log.warning("plan over MCP failed: %s", exc)
                    raise ToolError(
                        f"no plan: the bridge could not copy its store ({type(exc).__name__})"
                    ) from None
            log.info(
                "plan of %s: %d writes, %d links, %d errors (none of it done)",
                what,
                len(result.writes),
                len(result.links),
                len(result.errors),
            )
            return PlanOut.model_validate(result.as_json())

    return server


# -- HTTP ------------------------------------------------------------------------------------------

# The API itself does no Host/Origin check (a bearer token is no ambient credential a rebinding page
# could use), so neither does /mcp: a client may reach the daemon by any name.
NO_HOST_CHECK = TransportSecuritySettings(enable_dns_rebinding_protection=False)


class McpEndpoint:
    """The ASGI endpoint at /mcp: the API's bearer auth in front of the SDK's session manager."""

    def __init__(self) -> None:
        self.server = build_server()
        self.manager: StreamableHTTPSessionManager | None = None

    def mount(self, app: FastAPI, path: str = "/mcp") -> None:
        # Plain routes (not a Mount), so that the exact path answers without a redirect.
        for p in (path, path + "/"):
            app.add_route(p, self, include_in_schema=False)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """Runs the session manager's task group for as long as the app is served (a manager runs
        once: each start builds a new one)."""
        self.server.streamable_http_app(
            stateless_http=True, json_response=True, transport_security=NO_HOST_CHECK
        )
        manager = self.server.session_manager
        async with manager.run():
            self.manager = manager
            try:
                yield
            finally:
                self.manager = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            principal = request.app.state.authenticate(request)
        except HTTPException as exc:
            response = JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
            await response(scope, receive, send)
            return
        if request.method != "POST":
            # Stateless: no session to end (DELETE), and no stream a server message could ever be
            # sent on (GET would hold one open for nothing). The spec's answer for both is 405.
            body = {"detail": "this endpoint takes JSON-RPC messages by POST only (stateless MCP)"}
            await JSONResponse(body, status_code=405, headers={"Allow": "POST"})(scope, receive, send)
            return
        manager = self.manager
        if manager is None:  # served without the app's lifespan
            await JSONResponse({"detail": "the MCP endpoint is not running"}, status_code=503)(
                scope, receive, send
            )
            return
        request.state.principal = principal  # in the scope: the tools read it from their request
        await manager.handle_request(scope, receive, send)
