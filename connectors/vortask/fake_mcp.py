"""The Vortask fake's MCP server: Streamable HTTP, JSON-RPC 2.0, at `<origin>/mcp`.

Built on the official `mcp` SDK (low-level `Server` + `StreamableHTTPSessionManager`, run
in the fake's lifespan), wrapped by a small ASGI gate that does what the SDK leaves to the
host: bearer auth with the REST API's tokens, and pinning the protocol version.

Assumed (the page names the tools and the handshake only; correct here when known):
- Auth: every HTTP request to /mcp needs `Authorization: Bearer <vt_ token>`; otherwise 401
  in the REST error shape with `WWW-Authenticate: Bearer`. Each tool call acts as the token
  of *that* request (scopes and roles as in REST). A session is bound to the token that
  opened it: another token presenting its `mcp-session-id` gets 404 (SDK behaviour).
- Protocol: the server always negotiates `2024-11-05` (whatever version the client offers
  in `initialize`, the answer says 2024-11-05). Requests carrying a post-handshake-era
  `MCP-Protocol-Version` (e.g. the SDK client's `server/discover` probe at 2026-07-28) get
  400 with a JSON-RPC error, as a 2024-era server would refuse them; SDK clients then fall
  back to `initialize`. Requests after `initialize` without `mcp-session-id` get 400, with
  an unknown one 404 (SDK behaviour). Responses are SSE streams (`text/event-stream`, one
  `message` event per response) unless the fake was built with `mcp_json_response=True`.
- Tool results: one text content holding JSON. Failures are tool results with
  `isError: true` whose text is the REST error body plus the HTTP-equivalent status:
  `{"errors": [...], "message": "...", "status": 404}`. An unknown tool name is a JSON-RPC
  error (-32602).
- Tool arguments: ids are integers (`projectId`, `taskId`, `commentId`); task tools take the
  REST body's field names. `create_task`/`bulk_create_tasks` default `priority` to Medium
  (the page lists it as optional here, unlike REST). Output shapes reuse the REST shapes:
  get_context `{"profile", "projects": [project + "recentTasks" (20 latest by updatedAt)]}`;
  list_projects / list_tasks / get_task_history / list_comments: arrays; get_task,
  create_task, update_task: a task; bulk_create_tasks `{"created": [tasks]}` (1..100 tasks,
  all validated before any is created); delete_task `{"deleted": true, "taskId"}`;
  list_members `{"members": [...], "invitations": [pending...]}`; create_project: a project;
  add_comment: a comment; delete_comment `{"deleted": true, "commentId"}`.
- Comments `{id, taskId, authorId, authorName, body, createdAt}`; body is stored verbatim
  (text or HTML); listed oldest first. Adding needs Member+ and tasks:write; deleting needs
  tasks:write and authorship (Member+) or Admin. Comments fire no webhooks and are not in
  task history. Deleting a task deletes its comments.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mcp_types as types
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from connectors.fakekit import bearer_token

from .fake import PRIORITIES, STATUSES, Caller, VortaskError, as_object

if TYPE_CHECKING:
    from .fake import VortaskFake

PROTOCOL_VERSION = "2024-11-05"

# -- tool catalogue --------------------------------------------------------------------------

_ID = {"type": "integer", "minimum": 1}
_DATE = {"type": ["string", "null"], "description": "ISO 8601 date or date-time, e.g. 2026-04-01"}
_TASK_PROPS: dict[str, Any] = {
    "title": {"type": "string"},
    "description": {"type": ["string", "null"]},
    "priority": {"type": "string", "enum": list(PRIORITIES)},
    "dueDate": _DATE,
    "tags": {"type": "array", "items": {"type": "string"}},
    "assigneeIds": {
        "type": "array",
        "items": {"type": "string"},
        "description": "user ids (uuid) of project members",
    },
}


def _schema(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


@dataclass(frozen=True)
class ToolSpec:
    description: str
    schema: dict[str, Any]
    handler: Callable[[VortaskFake, Caller, dict[str, Any]], Any]


def _int_arg(args: dict[str, Any], name: str) -> int:
    value = args.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise VortaskError(400, f"{name} is required and must be an integer.")
    return value


def _get_context(fake: VortaskFake, caller: Caller, args: dict[str, Any]) -> Any:
    caller.need_scope("projects:read")
    caller.need_scope("tasks:read")
    projects = []
    for project in fake.projects.values():
        if project.member_of(caller.user.id):
            recent = sorted(project.tasks.values(), key=lambda t: t.updated_at, reverse=True)[:20]
            projects.append(
                {
                    **fake.project_json(project, caller.user.id),
                    "recentTasks": [fake.task_json(t) for t in recent],
                }
            )
    return {"profile": fake.profile_json(caller.user), "projects": projects}


def _list_projects(fake: VortaskFake, caller: Caller, args: dict[str, Any]) -> Any:
    caller.need_scope("projects:read")
    return [
        fake.project_json(p, caller.user.id) for p in fake.projects.values() if p.member_of(caller.user.id)
    ]


def _list_tasks(fake: VortaskFake, caller: Caller, args: dict[str, Any]) -> Any:
    project = fake.project_for(caller, _int_arg(args, "projectId"), scope="tasks:read")
    return [fake.task_json(t) for t in fake.query_tasks(project, args)]


def _get_task(fake: VortaskFake, caller: Caller, args: dict[str, Any]) -> Any:
    return fake.task_json(fake.task_anywhere(caller, _int_arg(args, "taskId"), scope="tasks:read")[1])


def _get_task_history(fake: VortaskFake, caller: Caller, args: dict[str, Any]) -> Any:
    return fake.history_json(fake.task_anywhere(caller, _int_arg(args, "taskId"), scope="tasks:read")[1])


def _create_task(fake: VortaskFake, caller: Caller, args: dict[str, Any]) -> Any:
    project = fake.project_for(caller, _int_arg(args, "projectId"), role="Member", scope="tasks:write")
    fields = {k: v for k, v in args.items() if k != "projectId"}
    return fake.task_json(fake.create_task(caller, project, fields, default_priority="Medium"))


def _bulk_create_tasks(fake: VortaskFake, caller: Caller, args: dict[str, Any]) -> Any:
    project = fake.project_for(caller, _int_arg(args, "projectId"), role="Member", scope="tasks:write")
    items = args.get("tasks")
    if not isinstance(items, list) or not 1 <= len(items) <= 100:
        raise VortaskError(400, "tasks must be a list of 1 to 100 tasks.")
    return {"created": [fake.task_json(t) for t in fake.bulk_create_tasks(caller, project, items)]}


def _update_task(fake: VortaskFake, caller: Caller, args: dict[str, Any]) -> Any:
    project, task = fake.task_anywhere(caller, _int_arg(args, "taskId"), role="Member", scope="tasks:write")
    fields = fake.task_fields(project, {k: v for k, v in args.items() if k != "taskId"}, creating=False)
    return fake.task_json(fake.update_task(caller, task, fields))


def _delete_task(fake: VortaskFake, caller: Caller, args: dict[str, Any]) -> Any:
    project, task = fake.task_anywhere(caller, _int_arg(args, "taskId"), role="Admin", scope="tasks:delete")
    fake.delete_task(project, task)
    return {"deleted": True, "taskId": task.id}


def _list_members(fake: VortaskFake, caller: Caller, args: dict[str, Any]) -> Any:
    project = fake.project_for(caller, _int_arg(args, "projectId"), scope="projects:read")
    return {
        "members": [fake.member_json(m) for m in project.members.values()],
        "invitations": [
            fake.invitation_json(i) for i in project.invitations.values() if i.status == "Pending"
        ],
    }


def _create_project(fake: VortaskFake, caller: Caller, args: dict[str, Any]) -> Any:
    return fake.project_json(fake.create_project(caller, args), caller.user.id)


def _list_comments(fake: VortaskFake, caller: Caller, args: dict[str, Any]) -> Any:
    _, task = fake.task_anywhere(caller, _int_arg(args, "taskId"), scope="tasks:read")
    return [fake.comment_json(c) for c in fake.task_comments(task)]


def _add_comment(fake: VortaskFake, caller: Caller, args: dict[str, Any]) -> Any:
    _, task = fake.task_anywhere(caller, _int_arg(args, "taskId"), role="Member", scope="tasks:write")
    return fake.comment_json(fake.add_comment(caller, task, args.get("body")))


def _delete_comment(fake: VortaskFake, caller: Caller, args: dict[str, Any]) -> Any:
    caller.need_scope("tasks:write")
    comment = fake.comments.get(_int_arg(args, "commentId"))
    if comment is None:
        raise VortaskError(404, "Comment not found.")
    own = comment.author_id == caller.user.id
    try:
        fake.task_anywhere(caller, comment.task_id, role="Member" if own else "Admin")
    except VortaskError as exc:
        if exc.status == 404:
            raise VortaskError(404, "Comment not found.") from None
        raise VortaskError(403, "Only the author or a project Admin can delete a comment.") from None
    del fake.comments[comment.id]
    return {"deleted": True, "commentId": comment.id}


_FILTERS = {
    "status": {"type": "string", "enum": list(STATUSES)},
    "priority": {"type": "string", "enum": list(PRIORITIES)},
    "assigneeId": {"type": "string", "description": "user id (uuid)"},
    "label": {"type": "string", "description": "partial match on tags"},
    "dueBefore": _DATE,
    "dueAfter": _DATE,
}

TOOLS: dict[str, ToolSpec] = {
    "get_context": ToolSpec(
        "Full workspace snapshot — profile, all projects, and the 20 most recent tasks in each. "
        "Call this first to orient yourself.",
        _schema([]),
        _get_context,
    ),
    "list_projects": ToolSpec(
        "List all projects the user belongs to, with their role (Admin / Member / Viewer) and task count.",
        _schema([]),
        _list_projects,
    ),
    "list_tasks": ToolSpec(
        "List tasks in a project. Filters: status, priority, assigneeId, label, dueBefore, dueAfter.",
        _schema(["projectId"], projectId=_ID, **_FILTERS),
        _list_tasks,
    ),
    "get_task": ToolSpec(
        "Full task details including all assignees and tags.", _schema(["taskId"], taskId=_ID), _get_task
    ),
    "get_task_history": ToolSpec(
        "Audit trail — who changed what and when.", _schema(["taskId"], taskId=_ID), _get_task_history
    ),
    "create_task": ToolSpec(
        "Create a task. Required: projectId, title. Optional: description, priority, dueDate, tags, assigneeIds.",
        _schema(["projectId", "title"], projectId=_ID, **_TASK_PROPS),
        _create_task,
    ),
    "bulk_create_tasks": ToolSpec(
        "Create up to 100 tasks at once. Useful for seeding a project from a plan.",
        _schema(
            ["projectId", "tasks"],
            projectId=_ID,
            tasks={
                "type": "array",
                "minItems": 1,
                "maxItems": 100,
                "items": {"type": "object", "properties": _TASK_PROPS, "required": ["title"]},
            },
        ),
        _bulk_create_tasks,
    ),
    "update_task": ToolSpec(
        "Partial patch — only include the fields you want to change. Supports status, priority, title, "
        "description, dueDate, tags, assigneeIds.",
        _schema(["taskId"], taskId=_ID, status={"type": "string", "enum": list(STATUSES)}, **_TASK_PROPS),
        _update_task,
    ),
    "delete_task": ToolSpec(
        "Permanently delete a task. Requires Admin role in the project.",
        _schema(["taskId"], taskId=_ID),
        _delete_task,
    ),
    "list_members": ToolSpec(
        "List project members and pending invitations.", _schema(["projectId"], projectId=_ID), _list_members
    ),
    "create_project": ToolSpec(
        "Create a new project. The authenticated user becomes its Admin.",
        _schema(["name"], name={"type": "string"}, description={"type": ["string", "null"]}),
        _create_project,
    ),
    "list_comments": ToolSpec(
        "List all comments on a task, oldest-first.", _schema(["taskId"], taskId=_ID), _list_comments
    ),
    "add_comment": ToolSpec(
        "Add a comment to a task. Supports plain text or HTML.",
        _schema(["taskId", "body"], taskId=_ID, body={"type": "string", "description": "plain text or HTML"}),
        _add_comment,
    ),
    "delete_comment": ToolSpec(
        "Delete a comment. Only your own comments, unless you are a project Admin.",
        _schema(["commentId"], commentId=_ID),
        _delete_comment,
    ),
}


# -- server --------------------------------------------------------------------------------


def _text(data: Any, *, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(data))], is_error=error
    )


class McpFrontend:
    """The MCP server of one fake: SDK server, its session manager, and the auth gate."""

    def __init__(self, fake: VortaskFake) -> None:
        self.fake = fake
        self.server: Server[Any] = Server(
            "vortask", version="1.0.0", on_list_tools=self._list_tools, on_call_tool=self._call_tool
        )
        self.manager: StreamableHTTPSessionManager | None = None

    def mount(self, app: FastAPI, path: str) -> None:
        # Plain routes (not a Mount) so the exact path answers without a slash redirect.
        for p in (path, path + "/"):
            app.router.routes.append(Route(p, endpoint=self))

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        # A session manager runs once; each start of the fake gets a fresh one.
        manager = StreamableHTTPSessionManager(app=self.server, json_response=self.fake.mcp_json_response)
        async with manager.run():
            self.manager = manager
            try:
                yield
            finally:
                self.manager = None

    async def _list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[
                types.Tool(name=name, description=spec.description, input_schema=spec.schema)
                for name, spec in TOOLS.items()
            ]
        )

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        spec = TOOLS.get(params.name)
        if spec is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {params.name}")
        # The caller is whoever this HTTP request's token names (checked again: it may have
        # been revoked since the gate let the request in).
        request = ctx.request
        caller = self.fake.caller_for(bearer_token(request)) if isinstance(request, Request) else None
        try:
            if caller is None:
                raise VortaskError(401, "Missing, invalid, expired or revoked API token.")
            return _text(spec.handler(self.fake, caller, as_object(params.arguments or {})))
        except VortaskError as exc:
            return _text({**exc.body(), "status": exc.status}, error=True)

    # -- ASGI gate ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        caller = self.fake.caller_for(bearer_token(request))
        if caller is None:
            error = VortaskError(
                401, "Missing, invalid, expired or revoked API token.", headers={"WWW-Authenticate": "Bearer"}
            )
            await JSONResponse(error.body(), status_code=401, headers=error.headers)(scope, receive, send)
            return
        version = request.headers.get("mcp-protocol-version")
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            body = {
                "jsonrpc": "2.0",
                "id": None,
                "error": {
                    "code": types.INVALID_REQUEST,
                    "message": f"Unsupported protocol version {version}; this server speaks "
                    f"{PROTOCOL_VERSION} via initialize.",
                },
            }
            await JSONResponse(body, status_code=400)(scope, receive, send)
            return
        if self.manager is None:
            await JSONResponse(VortaskError(500, "MCP server is not running.").body(), status_code=500)(
                scope, receive, send
            )
            return
        if scope["method"] == "POST":
            receive = await _pin_protocol_version(receive)
        # Binds the session to this token: the SDK refuses its id to any other credential.
        access = AccessToken(token=caller.token.value, client_id=caller.token.id, scopes=caller.token.scopes)
        await self.manager.handle_request({**scope, "user": AuthenticatedUser(access)}, receive, send)


async def _pin_protocol_version(receive: Receive) -> Receive:
    """Read the whole body; rewrite an `initialize` to ask for 2024-11-05; replay the body.

    The SDK grants any handshake version a client asks for; the real server is documented
    at 2024-11-05 only, so the fake makes every client live with that version.
    """
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return _replay(b"".join(chunks), receive)
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    try:
        parsed = json.loads(body)
    except ValueError:
        return _replay(body, receive)
    if (
        isinstance(parsed, dict)
        and parsed.get("method") == "initialize"
        and isinstance(parsed.get("params"), dict)
    ):
        parsed["params"]["protocolVersion"] = PROTOCOL_VERSION
        body = json.dumps(parsed).encode()
    return _replay(body, receive)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
