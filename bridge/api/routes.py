"""`/api/v1`: tasks, comments, conflicts, connectors. Reads need `read`, changes `write`, triggering
syncs `admin`; `admin` implies the others. A change answers what it wrote read back only to a token
that may read it; a write-only token gets the id it wrote (`Ack`) and nothing else.

Every route is a `GuardedRoute`: a JSON body is parsed strictly (UTF-8, no lone surrogate, no NUL,
no NaN, at most `MAX_JSON_DEPTH` deep) so nothing the store or the response cannot hold gets past
parsing, a NUL in the path or query is refused, and a ValueError, OverflowError or RecursionError
raised before the endpoint runs (parsing and validating the request) answers 400. Once the endpoint
runs, an exception is a server bug and stays a 500."""

from __future__ import annotations

import base64
import functools
import json
import math
from collections.abc import Callable, Coroutine, Sequence
from contextvars import ContextVar
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Row, exists, or_, select

from bridge.engine import api_ops, health, leases
from bridge.engine.comments import add_api_comment
from bridge.model import Priority, Status, as_utc, decode
from bridge.store.search import index_key
from bridge.store.tables import (
    CommentLinkRow,
    CommentRow,
    ConflictRow,
    HistoryRow,
    LinkRow,
    TaskAssigneeRow,
    TaskRow,
    TaskTagRow,
)


# FastAPI dependencies that close over the app's configured tokens.
def _dep(scope: str) -> Any:
    async def dependency(request: Request) -> Any:
        check = request.app.state.scope(scope)
        auth = request.app.state.authenticate
        return check(auth(request))

    return Depends(dependency)


READ = _dep("read")
WRITE = _dep("write")
ADMIN = _dep("admin")


def _can_read(principal: Any) -> bool:
    return bool({"read", "admin"} & principal.scopes)


# -- parsing that cannot fail the server ------------------------------------------------------------

MAX_JSON_DEPTH = 32  # the deepest body the API takes is 3 levels; this is far past any honest one


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "a string holds a NUL character (\\u0000), which cannot be stored"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "a string holds a lone UTF-16 surrogate (e.g. \\ud800), which is not valid Unicode"
    return None


def _json_problem(value: Any) -> str | None:
    """Why a parsed JSON value cannot be taken (too deep, a string no store holds, NaN), or None."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            problem = _string_problem(item)
            if problem:
                return problem
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "NaN and Infinity are not JSON numbers"
        elif isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                return f"nested deeper than {MAX_JSON_DEPTH} levels"
            if isinstance(item, dict):
                for key in item:
                    problem = _string_problem(key)
                    if problem:
                        return problem
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
    return None


def parse_json(body: bytes) -> Any:
    """A request body as JSON, or json.JSONDecodeError saying what is wrong with it (FastAPI answers
    that 422 `json_invalid`, with the reason in `ctx.error`)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError("the body is not UTF-8", "", exc.start) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError(f"nested deeper than {MAX_JSON_DEPTH} levels", "", 0) from None
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        raise json.JSONDecodeError(str(exc), "", 0) from None
    problem = _json_problem(value)
    if problem:
        raise json.JSONDecodeError(problem, "", 0)
    return value


class _StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


# Set per request by GuardedRoute; the endpoint marks it when it starts.
_endpoint_running: ContextVar[list[bool] | None] = ContextVar("endpoint_running", default=None)


def _marking(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(endpoint)
    async def marked(*args: Any, **kwargs: Any) -> Any:
        running = _endpoint_running.get()
        if running is not None:
            running[0] = True
        return await endpoint(*args, **kwargs)

    return marked


class GuardedRoute(APIRoute):
    """An APIRoute whose request parsing answers 4xx for anything a client can send (see the top)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, _marking(endpoint), **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            if "\x00" in request.scope["path"] or any(
                "\x00" in k or "\x00" in v for k, v in request.query_params.multi_items()
            ):
                raise HTTPException(400, "a NUL character (%00) in the path or query")
            running = [False]
            token = _endpoint_running.set(running)
            try:
                return await handler(_StrictJsonRequest(request.scope, request.receive))
            except (ValueError, OverflowError, RecursionError) as exc:
                if running[0]:
                    raise  # the endpoint's own failure: a server bug, a 500
                raise HTTPException(400, f"the request could not be parsed ({type(exc).__name__})") from exc
            finally:
                _endpoint_running.reset(token)

        return guarded


NULLABLE = frozenset({"description", "due_date", "start_date"})


class Error(BaseModel):
    """An error answer (FastAPI's shape): `detail` says what was wrong, as text, or for a 422 as a
    list of the request's problems."""

    detail: Any = Field(examples=["no such task"])


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers an operation gives, besides 401/403/413/422."""
    return {code: {"model": Error} for code in codes}


router = APIRouter(
    prefix="/api/v1",
    route_class=GuardedRoute,
    responses={
        400: {"model": Error, "description": "a malformed request (e.g. a body that is not JSON)"},
        401: {"model": Error, "description": "no or unknown bearer token"},
        403: {"model": Error, "description": "the token lacks the scope"},
        413: {"model": Error, "description": "request body too large"},
    },
)


class TaskFields(BaseModel):
    """A change to a task: only the fields given change, a field left out stays as it is. Null is
    taken only by `description`, `due_date` and `start_date` (it empties them); unknown fields are
    refused."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"status": "in_progress", "tags": ["docs"]}]}
    )
    title: str | None = Field(None, max_length=1000, examples=["Write the release notes"])
    description: str | None = Field(None, max_length=100_000, description="null empties it")
    status: Status | None = None
    priority: Priority | None = None
    assignees: list[str] | None = Field(
        None,
        description="a set: it replaces the task's whole set (order and repeats are ignored)",
        examples=[["ada"]],
    )
    tags: list[str] | None = Field(
        None,
        description="a set: it replaces the task's whole set (order and repeats are ignored)",
        examples=[["docs"]],
    )
    due_date: date | None = Field(
        None, description="a calendar date; null clears it", examples=["2026-06-30"]
    )
    start_date: date | None = Field(None, description="a calendar date; null clears it")
    archived: bool | None = None

    @model_validator(mode="after")
    def _no_null_for_required_values(self) -> TaskFields:
        # Leaving a field out means "unchanged"; null is only a value for the fields that can be empty.
        for name in self.model_fields_set:
            if getattr(self, name) is None and name not in NULLABLE:
                raise ValueError(f"{name} cannot be null (leave it out to keep it unchanged)")
        return self

    def values(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(exclude_unset=True).items()}


class TaskCreate(TaskFields):
    """A new task in a route: `route` and `title` are needed, any other field is optional."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "route": "main",
                    "title": "Write the release notes",
                    "priority": "high",
                    "tags": ["docs"],
                    "due_date": "2026-06-30",
                }
            ]
        }
    )
    route: str = Field(description="the name of a route in the config; its members each get a copy")
    title: str = Field(min_length=1, max_length=1000, examples=["Write the release notes"])


class LinkOut(BaseModel):
    """The task's copy on one member of its route."""

    connector: str = Field(description="the connector's name in the config")
    platform: str = Field(description="the connector's platform")
    scope: str = Field(description="where on the platform the copy lives (a project, a board...)")
    remote_id: str | None = Field(description="the copy's id on the platform; null until it is created")
    state: str = Field(description="creating, active, gone or unlinked")
    remote_url: str | None = Field(description="the copy's web page, when the platform gives one")


class TaskOut(BaseModel):
    """A task as the bridge holds it (its canonical values)."""

    id: str = Field(
        description="the bridge's id for the task (a ULID)", examples=["01JD3XK2Q4W6Y8Z0A2C4E6G8J0"]
    )
    route: str
    title: str
    description: str
    status: str = Field(description="todo, in_progress, blocked, done or cancelled")
    priority: str = Field(description="none, low, medium, high or urgent")
    assignees: list[str] = Field(description="sorted")
    tags: list[str] = Field(description="sorted")
    due_date: str | None = Field(description="YYYY-MM-DD", examples=["2026-06-30"])
    start_date: str | None = Field(description="YYYY-MM-DD")
    archived: bool
    created_at: datetime
    updated_at: datetime
    links: list[LinkOut] | None = Field(None, description="its copies, one per member; null in a listing")
    history: list[dict[str, Any]] | None = Field(
        None,
        description=(
            "every applied change, oldest first; null in a listing. Each: `field`, `old`, `new`, "
            "`source` (a connector's name, or api), `via` (poll, webhook, api, conflict...), `at`"
        ),
    )


class TaskPage(BaseModel):
    """A page of tasks, most recently updated first."""

    tasks: list[TaskOut]
    next_cursor: str | None = Field(
        description="pass it as `cursor` for the next page; null when this page was not full"
    )


class CommentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    body: str = Field(min_length=1, max_length=50_000, examples=["Released in 1.4."])
    author: str | None = Field(
        None, max_length=200, description="the author shown; default: the token's name"
    )


class CommentOut(BaseModel):
    id: str
    body: str
    author: str
    origin: str | None = Field(
        description="the connector it was first seen on; null when written through the API"
    )
    created_at: datetime
    links: dict[str, str | None] = Field(
        description="connector name -> the comment's id there (null until it is posted)"
    )


class SideOut(BaseModel):
    """One value on offer in a conflict: which connector holds it, on which platform, since when."""

    side: str = Field(
        description='a connector name (what `choose` takes), or "bridge" for a value '
        "no platform holds (one set through the API)",
        examples=["vortask"],
    )
    platform: str | None = Field(
        description="the connector's platform; null for bridge", examples=["vortask"]
    )
    value: Any = Field(examples=["Write the release notes"])
    at: datetime | None = Field(description="when that side last changed the task (its platform's time)")


class ConflictOut(BaseModel):
    """A field two sides changed differently, held for a person (a route with `conflict: manual`)."""

    id: int
    task_id: str
    title: str | None = Field(None, description="the task's title as the bridge holds it", examples=["Notes"])
    route: str
    field: str = Field(examples=["title"])
    candidates: dict[str, Any] = Field(
        description="the values on offer, by side: each connector whose value differs (and "
        '"bridge" for a value that came from no platform)',
        examples=[{"impactly": "Write the notes", "vortask": "Write the release notes"}],
    )
    sides: list[SideOut] = Field(default=[], description="the same candidates with platform and time")
    state: str = Field(description="open or resolved")
    resolution: dict[str, Any] | None = Field(description="how it was settled; null while open")
    created_at: datetime


async def _conflicts_out(request: Request, session: Any, rows: Sequence[ConflictRow]) -> list[ConflictOut]:
    """Conflicts with their task's title and each side's platform and time: two reads in all."""
    platforms = {name: c.platform for name, c in request.app.state.daemon.cfg.connectors.items()}
    task_ids = {r.task_id for r in rows}
    tasks = {t.id: t for t in (await session.scalars(select(TaskRow).where(TaskRow.id.in_(task_ids)))).all()}
    links = {
        (link.task_id, link.connector): link
        for link in (await session.scalars(select(LinkRow).where(LinkRow.task_id.in_(task_ids)))).all()
    }
    out = []
    for r in rows:
        task = tasks.get(r.task_id)
        sides = []
        for side, value in r.candidates.items():
            link = links.get((r.task_id, side))
            if link is not None:
                at = link.remote_updated_at
            elif task is not None:
                stamp = (task.field_times or {}).get(r.field) or (task.field_times or {}).get("*")
                at = as_utc(datetime.fromisoformat(stamp)) if stamp else task.updated_at
            else:
                at = None
            sides.append(SideOut(side=side, platform=platforms.get(side), value=value, at=at))
        item = ConflictOut.model_validate(r, from_attributes=True)
        item.title = task.title if task is not None else None
        item.sides = sides
        out.append(item)
    return out


class Ack(BaseModel):
    """A change's answer to a token without the `read` scope: the id written, nothing read back."""

    id: str = Field(examples=["01JD3XK2Q4W6Y8Z0A2C4E6G8J0"])


class ConflictAck(BaseModel):
    """A resolution's answer to a token without the `read` scope."""

    id: int


class Resolve(BaseModel):
    """How to settle a conflict: `choose` a candidate, or give a `value` of the field."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"choose": "bridge"}]})
    choose: str | None = Field(None, description='"bridge" or a connector name among the candidates')
    value: Any = Field(None, description="a value of the field, instead of a candidate")


def _task_out(
    row: TaskRow | Row[Any],
    links: list[LinkRow] | None = None,
    history: list[HistoryRow] | None = None,
    platforms: dict[str, str] | None = None,
) -> TaskOut:
    """`row`: a TaskRow, or a row of `_PAGE_COLUMNS`. Its `data` is served as stored: the store
    writes it in its encoded form (`encode_values`), and TaskOut checks every field's type."""
    data = row.data or {}
    return TaskOut(
        id=row.id,
        route=row.route,
        title=data.get("title", ""),
        description=data.get("description", ""),
        status=data.get("status", "todo"),
        priority=data.get("priority", "none"),
        assignees=data.get("assignees", []),
        tags=data.get("tags", []),
        due_date=data.get("due_date"),
        start_date=data.get("start_date"),
        archived=bool(data.get("archived", False)),
        created_at=row.created_at,
        updated_at=row.updated_at,
        links=None
        if links is None
        else [
            LinkOut(
                connector=lk.connector,
                platform=(platforms or {}).get(lk.connector, ""),
                scope=lk.scope,
                remote_id=lk.remote_id,
                state=lk.state,
                remote_url=lk.remote_url,
            )
            for lk in links
        ],
        history=None
        if history is None
        else [
            {
                "field": h.field,
                "old": (h.old or {}).get("v"),
                "new": (h.new or {}).get("v"),
                "source": h.source,
                "via": h.via,
                "at": h.at.isoformat(),
            }
            for h in history
        ],
    )


def _ctx(request: Request) -> Any:
    return request.app.state.daemon.ctx


def _cursor_encode(updated: datetime, task_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([updated.isoformat(), task_id]).encode()).decode()


def _cursor_decode(cursor: str) -> tuple[datetime, str]:
    try:
        stamp, task_id = parse_json(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(stamp, str) or not isinstance(task_id, str):
            raise TypeError("a cursor is [timestamp, task id]")
        return as_utc(datetime.fromisoformat(stamp)), task_id
    except (ValueError, TypeError, OverflowError) as exc:
        raise HTTPException(400, "bad cursor") from exc


def _utc(value: datetime) -> datetime:
    try:
        return as_utc(value)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None


UtcDateTime = Annotated[datetime, AfterValidator(_utc)]


@router.get("/tasks", response_model=TaskPage, dependencies=[READ], responses=errors(400))
async def list_tasks(
    request: Request,
    route: str | None = Query(None, description="only this route's tasks"),
    status: Status | None = None,
    priority: Priority | None = None,
    assignee: str | None = Query(None, description="only tasks with this assignee"),
    tag: str | None = Query(None, description="only tasks with this tag"),
    q: str | None = Query(
        None,
        max_length=200,
        description=(
            "only tasks whose title contains this, ignoring case (of ASCII letters only on SQLite); "
            "`%` and `_` are wildcards"
        ),
    ),
    updated_since: Annotated[
        UtcDateTime | None,
        Query(description="only tasks updated at or after this time (ISO 8601, with its offset)"),
    ] = None,
    limit: int = Query(50, ge=1, le=500, description="at most this many tasks"),
    cursor: str | None = Query(None, description="the `next_cursor` of the page before"),
) -> Response:
    """The tasks the bridge holds, across routes, most recently updated first, deleted ones left
    out. Filters combine (all must hold); a full page carries a `next_cursor` for the next one.
    Tasks come without their links and history (get one task for those). Needs `read`."""
    page = await find_tasks(
        _ctx(request),
        route=route,
        status=status,
        priority=priority,
        assignee=assignee,
        tag=tag,
        q=q,
        updated_since=updated_since,
        limit=limit,
        cursor=cursor,
    )
    # Serialised once, as built: returned as a model, FastAPI would dump it and validate it
    # again against `response_model` before serialising it.
    return Response(page.model_dump_json(), media_type="application/json")


# What a page shows of each task: plain rows, not ORM objects (a page has no use for the identity
# map or change tracking, which were a sixth of its CPU).
_PAGE_COLUMNS = (TaskRow.id, TaskRow.route, TaskRow.data, TaskRow.created_at, TaskRow.updated_at)


async def find_tasks(
    ctx: Any,
    *,
    route: str | None = None,
    status: Status | None = None,
    priority: Priority | None = None,
    assignee: str | None = None,
    tag: str | None = None,
    q: str | None = None,
    updated_since: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> TaskPage:
    """A page of tasks as GET /api/v1/tasks answers it (the MCP tools list and search with it too);
    HTTPException 400 for a bad cursor."""
    # Every filter is SQL over an index (bridge/store/search.py): a tag or assignee filter reads
    # its side table's (value, updated_at, task_id) index in page order, and joins the task.
    sides: list[tuple[Any, Any, str]] = []
    if tag:
        sides.append((TaskTagRow, TaskTagRow.tag, tag))
    if assignee:
        sides.append((TaskAssigneeRow, TaskAssigneeRow.assignee, assignee))
    query = select(*_PAGE_COLUMNS)
    order_at: Any = TaskRow.updated_at
    order_id: Any = TaskRow.id
    if sides:
        lead, column, value = sides[0]
        query = query.select_from(lead).join(TaskRow, TaskRow.id == lead.task_id)
        query = query.where(column == index_key(value))
        order_at, order_id = lead.updated_at, lead.task_id  # the task's own, copied
        for side, column, value in sides[1:]:
            query = query.where(exists().where(side.task_id == TaskRow.id, column == index_key(value)))
    query = query.where(TaskRow.deleted_at.is_(None))
    if route:
        query = query.where(TaskRow.route == route)
    if status:
        query = query.where(TaskRow.status == status.value)
    if priority:
        query = query.where(TaskRow.priority == priority.value)
    if updated_since:
        query = query.where(order_at >= updated_since)
    if q:
        query = query.where(TaskRow.title.ilike(f"%{q}%"))
    if cursor:
        stamp, last_id = _cursor_decode(cursor)
        query = query.where(or_(order_at < stamp, (order_at == stamp) & (order_id < last_id)))
    query = query.order_by(order_at.desc(), order_id.desc()).limit(limit)
    async with ctx.store.read() as session:
        # A second side's value that nobody has answers at once (one index probe): without it
        # the page walks the first side's every row looking for it. (An empty first side ends
        # the walk by itself.)
        for side, column, value in sides[1:]:
            if await session.scalar(select(side.task_id).where(column == index_key(value)).limit(1)) is None:
                return TaskPage(tasks=[], next_cursor=None)
        rows = (await session.execute(query)).all()
    out = [_task_out(row) for row in rows]
    # A full page has a next one (perhaps empty), as before: the cursor is its last task.
    next_cursor = _cursor_encode(rows[-1].updated_at, rows[-1].id) if len(rows) == limit else None
    return TaskPage(tasks=out, next_cursor=next_cursor)


@router.get("/tasks/{task_id}", response_model=TaskOut, dependencies=[READ], responses=errors(404))
async def get_task(request: Request, task_id: str) -> TaskOut:
    """One task, with its copies on each member (`links`) and the history of every change applied
    to it (`history`), oldest first. A deleted task is still found here, its last history entry
    saying so. Needs `read`."""
    ctx = _ctx(request)
    async with ctx.store.read() as session:
        row = await session.get(TaskRow, task_id)
        if row is None:
            raise HTTPException(404, "no such task")
        links = (
            await session.scalars(select(LinkRow).where(LinkRow.task_id == task_id).order_by(LinkRow.id))
        ).all()
        history = (
            await session.scalars(
                select(HistoryRow).where(HistoryRow.task_id == task_id).order_by(HistoryRow.id)
            )
        ).all()
    platforms = {name: c.platform for name, c in request.app.state.daemon.cfg.connectors.items()}
    return _task_out(row, list(links), list(history), platforms)


@router.post(
    "/tasks",
    response_model=TaskOut | Ack,
    status_code=201,
    responses=errors(404),
)
async def create_task(request: Request, body: TaskCreate, principal: Any = WRITE) -> TaskOut | Ack:
    """Create a task in a route (404 for an unknown route); the bridge then creates its copy on
    every member of the route. Answers the task created, or only its id (`Ack`) to a token
    without `read`. Needs `write`."""
    values = body.values()
    route = values.pop("route")
    try:
        task_id = await api_ops.create_task(_ctx(request), route, values, actor=principal.name)
    except api_ops.ApiError as exc:
        raise HTTPException(exc.status, exc.message) from None
    if not _can_read(principal):
        return Ack(id=task_id)
    return await get_task(request, task_id)


@router.patch(
    "/tasks/{task_id}",
    response_model=TaskOut | Ack,
    responses=errors(404, 409),
)
async def patch_task(
    request: Request, task_id: str, body: TaskFields, principal: Any = WRITE
) -> TaskOut | Ack:
    """Change some of a task's fields; the change goes out to its copies like any other, and
    settles any open conflict on a field it sets. 404 for an unknown or deleted task, 409 when
    its route is no longer configured. Answers the task as patched, or only its id (`Ack`) to a
    token without `read`. Needs `write`."""
    try:
        await api_ops.patch_task(_ctx(request), task_id, body.values(), actor=principal.name)
    except api_ops.ApiError as exc:
        raise HTTPException(exc.status, exc.message) from None
    if not _can_read(principal):
        return Ack(id=task_id)
    return await get_task(request, task_id)


@router.delete("/tasks/{task_id}", status_code=204, responses=errors(404))
async def delete_task(request: Request, task_id: str, principal: Any = WRITE) -> None:
    """Delete a task: its route's `on_delete` policy says what happens to its copies (archived,
    deleted, or only unlinked), and its history records the deletion. 404 for an unknown task or
    one already deleted. Needs `write`."""
    try:
        await api_ops.delete_task(_ctx(request), task_id, actor=principal.name)
    except api_ops.ApiError as exc:
        raise HTTPException(exc.status, exc.message) from None


@router.get(
    "/tasks/{task_id}/comments", response_model=list[CommentOut], dependencies=[READ], responses=errors(404)
)
async def list_comments(request: Request, task_id: str) -> list[CommentOut]:
    """A task's comments, oldest first, wherever each was written, with the comment's id on each
    platform it was mirrored to. 404 for an unknown task. Needs `read`."""
    ctx = _ctx(request)
    async with ctx.store.read() as session:
        if await session.get(TaskRow, task_id) is None:
            raise HTTPException(404, "no such task")
        rows = (
            await session.scalars(
                select(CommentRow).where(CommentRow.task_id == task_id).order_by(CommentRow.created_at)
            )
        ).all()
        links = (
            await session.scalars(
                select(CommentLinkRow).where(CommentLinkRow.comment_id.in_([r.id for r in rows]))
            )
        ).all()
    by_comment: dict[str, dict[str, str | None]] = {}
    for link in links:
        by_comment.setdefault(link.comment_id, {})[link.connector] = link.remote_id
    return [
        CommentOut(
            id=r.id,
            body=r.body,
            author=r.author,
            origin=r.origin,
            created_at=r.created_at,
            links=by_comment.get(r.id, {}),
        )
        for r in rows
    ]


@router.post(
    "/tasks/{task_id}/comments",
    response_model=CommentOut | Ack,
    status_code=201,
    responses=errors(404),
)
async def add_comment(
    request: Request, task_id: str, body: CommentIn, principal: Any = WRITE
) -> CommentOut | Ack:
    """Add a comment to a task; it is posted to every member of the route that takes comments.
    The author defaults to the token's name. 404 for an unknown or deleted task. Answers the
    comment added, or only its id (`Ack`) to a token without `read`. Needs `write`."""
    ctx = _ctx(request)
    async with ctx.store.transaction() as session:
        task = await session.get(TaskRow, task_id)
        if task is None or task.deleted_at is not None:
            raise HTTPException(404, "no such task")
        comment = await add_api_comment(ctx, session, task, body.body, body.author or principal.name)
    if not _can_read(principal):
        return Ack(id=comment.id)
    return CommentOut(
        id=comment.id,
        body=comment.body,
        author=comment.author,
        origin=None,
        created_at=comment.created_at,
        links={},
    )


@router.get("/conflicts", response_model=list[ConflictOut], dependencies=[READ])
async def list_conflicts(
    request: Request,
    state: Literal["open", "resolved", "all"] = "open",
    limit: int = Query(100, ge=1, le=1000, description="at most this many"),
) -> list[ConflictOut]:
    """Conflicts, oldest first (open ones by default): a field that two sides changed differently
    on a route whose policy holds such changes for a person. Needs `read`."""
    ctx = _ctx(request)
    query = select(ConflictRow).order_by(ConflictRow.id).limit(limit)
    if state != "all":
        query = query.where(ConflictRow.state == state)
    async with ctx.store.read() as session:
        rows = (await session.scalars(query)).all()
        return await _conflicts_out(request, session, rows)


@router.post(
    "/conflicts/{conflict_id}/resolve",
    response_model=ConflictOut | ConflictAck,
    responses=errors(400, 404, 409),
)
async def resolve_conflict(
    request: Request,
    body: Resolve,
    conflict_id: int = PathParam(ge=1, le=2**63 - 1),
    principal: Any = WRITE,
) -> ConflictOut | ConflictAck:
    """Settle an open conflict by choosing one of its candidates (`choose`) or giving a value of
    the field (`value`); the task takes that value and it goes out to every copy. 400 for a
    choice or value the conflict does not take, 404 for an unknown conflict, 409 for one already
    resolved or whose task or route is gone. Answers the conflict resolved, or only its id
    (`ConflictAck`) to a token without `read`. Needs `write`."""
    ctx = _ctx(request)
    try:
        if body.choose is None and body.value is not None:
            await _check_value(ctx, conflict_id, body.value)
        await api_ops.resolve_conflict(
            ctx, conflict_id, choose=body.choose, value=body.value, actor=principal.name
        )
    except api_ops.ApiError as exc:
        if exc.status == 400 and not _can_read(principal):
            # The reason names the conflict's field and candidates: what only a reader may see.
            raise HTTPException(400, "not a choice or value this conflict takes") from None
        raise HTTPException(exc.status, exc.message) from None
    if not _can_read(principal):
        return ConflictAck(id=conflict_id)
    async with ctx.store.read() as session:
        r = await session.get(ConflictRow, conflict_id)
        assert r is not None
        return (await _conflicts_out(request, session, [r]))[0]


async def _check_value(ctx: Any, conflict_id: int, value: Any) -> None:
    """400 for a value of the wrong kind for the conflict's field (a number for tags, say), which
    the engine's decoding would take for a server error."""
    async with ctx.store.read() as session:
        conflict = await session.get(ConflictRow, conflict_id)
    if conflict is None:
        return  # the engine answers 404
    try:
        decode(conflict.field, value)
    except (ValueError, TypeError):
        raise api_ops.ApiError(400, f"{conflict.field}: not a value this field takes") from None


@router.get("/connectors", dependencies=[READ])
async def list_connectors(request: Request) -> list[dict[str, Any]]:
    """Every configured connector: `name`, `platform`, `scopes`, `healthy` (its last poll
    succeeded and its writes are not failing for a reason of its own), `last_poll`,
    `lag_seconds` (since that poll), `last_error`, `last_parked_error`, `outbox_depth` (writes
    waiting), `outbox_parked`, `linked_tasks` and `deletion_guard` (why the last poll refused to
    delete, if it did). Every replica answers the same. Needs `read`."""
    from bridge.api.status import summary

    daemon = request.app.state.daemon
    ctx = daemon.ctx
    async with ctx.store.read() as session:
        s = await summary(session)
        known = await health.load(session)  # the store's: every replica answers the same
    out = []
    now = ctx.now()
    for name, c in daemon.cfg.connectors.items():
        h = known.get(name) or health.Health(name)
        out.append(
            {
                "name": name,
                "platform": c.platform,
                "scopes": ctx.scopes_of(name),
                "healthy": h.healthy,
                "last_poll": h.last_poll.isoformat() if h.last_poll else None,
                "lag_seconds": (now - h.last_poll).total_seconds() if h.last_poll else None,
                "last_error": h.last_error,
                "last_parked_error": s.last_parked_error.get(name),
                "outbox_depth": s.waiting.get(name, 0),
                "outbox_parked": s.parked.get(name, 0),
                "linked_tasks": s.linked.get(name, 0),
                "deletion_guard": h.deletion_guard,
            }
        )
    return out


@router.post("/connectors/{name}/sync", status_code=202, dependencies=[ADMIN], responses=errors(404, 409))
async def trigger_sync(request: Request, name: str) -> dict[str, str]:
    """Poll the connector now. Triggers coalesce (a burst costs at most two listings); on a replica
    that does not hold the connector's poll lease, 409 names the one that does. Answers `status`:
    "started" or "coalesced". 404 for an unknown connector. Needs `admin`."""
    daemon = request.app.state.daemon
    if name not in daemon.cfg.connectors:
        raise HTTPException(404, "no such connector")
    try:
        status = await daemon.trigger_poll(name)
    except leases.NotLeaseOwner as exc:
        raise HTTPException(
            409, f"connector {name} is polled by replica {exc.holder}; trigger it there"
        ) from None
    return {"status": status}
