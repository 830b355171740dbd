"""In-memory fake of the Vortask REST API (v1) and its MCP server.

Served: every endpoint of ../shared/platforms/vortask.txt under `/api` (profile, projects,
members, invitations, tasks, task history, API tokens, webhooks), and the MCP server
(Streamable HTTP, JSON-RPC 2.0) at `<origin>/mcp` (its section at the end). Integer ids,
errors `{"errors": [...], "message": "..."}`, bearer tokens `vt_...`.

The constructor token belongs to "Alice" (uuid id, alice@example.com), Admin of project 1
("Default"), which always exists. `add_user(...)` / `add_token(...)` add lesser credentials.

Assumed (the docs are silent; correct here when a real account shows otherwise; the MCP
server's own list is at the head of its section, "The MCP server", at the end):
- Status texts: `message` is "Validation failed" (400), "Unauthorized" (401), "Forbidden"
  (403), "Not Found" (404), "Unsupported Media Type" (415), "Too Many Requests" (429, with
  `Retry-After` seconds), "Internal Server Error" (500); `errors` holds the details. A 401
  also carries `WWW-Authenticate: Bearer`. Unknown routes answer 404 in the same shape.
- Order of checks: 401 (token) -> 403 (token scope) -> 404 (project/task not found, or the
  caller is not a member: other people's projects are invisible) -> 403 (role) -> 400.
  Non-numeric ids in a path answer 404 (like an `{id:int}` route constraint).
- A POST/PUT with a body whose Content-Type is not application/json answers 415.
- Scopes: tasks:read = task reads and history; tasks:write = create/update tasks (and
  comments via MCP); tasks:delete = delete tasks; projects:read = projects, members,
  webhook list; projects:write = create/update/delete projects, members, invitations,
  webhooks. Profile GET, token list and invitation preview/accept need no scope. Changing or
  deleting the profile and creating/revoking API tokens need an unscoped token (403
  otherwise) so a scoped token cannot mint itself a wider one. POST /apitokens accepts an
  optional `scopes` list (not in the page) so scoped tokens can be made over HTTP.
- Roles: Viewer reads; Member+ creates/updates tasks and updates the project; Admin deletes
  tasks and projects, manages members, invitations and webhooks (webhook list too: "Requires
  Admin role"). A project keeps at least one Admin (400 on demoting/removing the last).
- Tasks: ids are global across projects; `description` is null when not given; a `status`
  sent on create is ignored (tasks start New, as documented). Lists are unpaginated, ordered
  by id ascending. `label` is a case-insensitive substring match on any tag; `dueBefore` /
  `dueAfter` are strict (<, >) and exclude tasks without a due date; `assigneeId` exact.
- Dates: `dueDate` accepts a date ("2026-04-01", read as midnight UTC) or a date-time (an
  offset is converted to UTC, none means UTC); it is returned as a UTC date-time with
  seconds, `"2026-04-01T00:00:00Z"` (milliseconds only if given). `createdAt`/`updatedAt`
  carry milliseconds ("2026-03-01T09:00:00.123Z") so successive changes order strictly.
- Every successful task PUT bumps `updatedAt` and fires `task.updated`, even when no value
  changed (the server does not diff); history records only fields whose value changed.
  History actions: Created, TitleChanged, DescriptionChanged, StatusChanged, PriorityChanged,
  DueDateChanged, TagsChanged, AssigneesChanged; `detail` is "old → new" (description: just
  "Description updated"). Newest first.
- Removing a member (or deleting a profile) unassigns them from the project's tasks; each
  such task is updated (updatedAt, history, `task.updated`). Deleting a project fires
  `task.deleted` for each of its tasks (to its own webhooks) before they go.
- Members invite: `POST /projects/:id/members {email, role}` answers 201 with the pending
  invitation `{id, projectId, email, role, expiresAt, createdAt}`; the invitation token is
  "emailed": readable only from GET /_fake/state (`invitations[].token`) or
  `fake.invitation_token(id)`. Invitations expire after 7 days (400 afterwards); unknown,
  cancelled or used tokens answer 404; accepting with another email answers 403, by a
  member 400. Inviting a member, or an email with a pending invitation, answers 400.
- API tokens: list shows only the caller's tokens (revoked ones are deleted, expired ones
  show `isActive: false`); `tokenPrefix` is the first 11 characters; the create response is
  exactly `{id, name, token, createdAt}`; `expiresAt` must be in the future. Token ids are uuids.
- Webhooks: `{id, projectId, callbackUrl, isActive, createdAt}` (the secret is never
  returned; PUT may also set `secret`). Delivery: POST of the page's payload, exactly
  `{"event", "projectId", "task": {"id", "title", "status", "priority", "assignees":
  [{"email"}], "tags", "updatedAt"}}` (no description/dueDate), headers `Content-Type:
  application/json` and, only when a secret is set, `X-Vortask-Signature: <lowercase hex
  HMAC-SHA256 of the raw body, keyed with the secret>` (no "sha256=" prefix). No other
  headers (no delivery id). `task.deleted` carries the task as it was last stored. Events
  fire for changes made through REST or MCP by anyone; inactive webhooks do not fire;
  failed deliveries are retried (fakekit's backoff). Comments fire no webhooks (no event is
  documented for them).
- Profile DELETE removes the user, their tokens (401 afterwards) and memberships.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlparse

import mcp_types as types
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from connectors import fakekit
from connectors.fakekit import ExampleEdit, bearer_token, iso

STATUSES = ("New", "Active", "Blocked", "Closed")
PRIORITIES = ("Low", "Medium", "High")
ROLES = ("Admin", "Member", "Viewer")
SCOPES = ("tasks:read", "tasks:write", "tasks:delete", "projects:read", "projects:write")
ROLE_RANK = {"Viewer": 0, "Member": 1, "Admin": 2}
INVITATION_TTL = timedelta(days=7)

STATUS_MESSAGES = {
    400: "Validation failed",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    410: "Gone",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    504: "Gateway Timeout",
}

T = TypeVar("T")


class VortaskError(Exception):
    """An API failure; REST answers it as the error body, MCP as an isError tool result."""

    def __init__(self, status: int, *errors: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, errors)
        self.status = status
        self.errors = list(errors) or [STATUS_MESSAGES.get(status, "Error")]
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"errors": self.errors, "message": STATUS_MESSAGES.get(self.status, "Error")}


# -- state ---------------------------------------------------------------------------------


@dataclass
class User:
    id: str
    email: str
    display_name: str
    created_at: datetime
    avatar_url: str | None = None


@dataclass
class ApiToken:
    id: str
    user_id: str
    name: str
    value: str
    created_at: datetime
    scopes: list[str] = field(default_factory=list)  # empty = full access, bounded by role
    expires_at: datetime | None = None

    def is_active(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass
class Member:
    id: int
    user_id: str
    role: str
    joined_at: datetime


@dataclass
class Invitation:
    id: int
    project_id: int
    email: str
    role: str
    token: str
    created_at: datetime
    expires_at: datetime
    status: str = "Pending"  # Pending | Accepted | Cancelled


@dataclass
class Webhook:
    id: int
    project_id: int
    callback_url: str
    secret: str | None
    is_active: bool
    created_at: datetime


@dataclass
class HistoryEntry:
    id: int
    actor_id: str
    actor_name: str
    action: str
    detail: str
    created_at: datetime


@dataclass
class Task:
    id: int
    project_id: int
    title: str
    description: str | None
    status: str
    priority: str
    due_date: datetime | None
    tags: list[str]
    assignee_ids: list[str]
    created_at: datetime
    updated_at: datetime
    history: list[HistoryEntry] = field(default_factory=list)  # oldest first; served reversed


@dataclass
class Comment:
    id: int
    task_id: int
    author_id: str
    author_name: str
    body: str
    created_at: datetime


@dataclass
class Project:
    id: int
    name: str
    description: str | None
    created_at: datetime
    members: dict[int, Member] = field(default_factory=dict)
    invitations: dict[int, Invitation] = field(default_factory=dict)
    webhooks: dict[int, Webhook] = field(default_factory=dict)
    tasks: dict[int, Task] = field(default_factory=dict)
    # Task ids, least recently created or updated first (so in updatedAt order: the clock only
    # goes on), for get_context's most recent tasks without sorting the project.
    recent: dict[int, None] = field(default_factory=dict)

    def member_of(self, user_id: str) -> Member | None:
        return next((m for m in self.members.values() if m.user_id == user_id), None)


@dataclass(frozen=True)
class Caller:
    """Who a request acts as: the token's user, bounded by the token's scopes."""

    user: User
    token: ApiToken

    def need_scope(self, scope: str) -> None:
        if self.token.scopes and scope not in self.token.scopes:
            raise VortaskError(403, f"This API token lacks the '{scope}' scope.")

    def need_unscoped(self) -> None:
        if self.token.scopes:
            raise VortaskError(403, "This action needs an API token without scope restrictions.")


# -- parsing helpers -------------------------------------------------------------------------


def parse_datetime(value: Any, name: str) -> datetime:
    """An ISO 8601 date or date-time, as an aware UTC datetime (a bare date is midnight UTC)."""
    if not isinstance(value, str) or not value.strip():
        raise VortaskError(400, f"{name} must be an ISO 8601 date or date-time.")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise VortaskError(400, f"{name} must be an ISO 8601 date or date-time.") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def format_due(value: datetime | None) -> str | None:
    return None if value is None else iso(value, ms=value.microsecond != 0)


def path_id(text: str) -> int:
    """A numeric path id; anything else matches no resource (404), like an int route constraint."""
    if not text.isdigit():
        raise VortaskError(404, "Resource not found.")
    return int(text)


def is_http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlparse(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def one_of(value: Any, allowed: Iterable[str], name: str) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise VortaskError(400, f"{name} must be one of {', '.join(allowed)}.")
    return str(value)


def as_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise VortaskError(400, "The request body must be a JSON object.")
    return body


class VortaskFake(fakekit.Fake):
    platform = "vortask"
    api_root = "/api"

    def scope(self) -> str:
        return "1"

    def example_edit(self, title: str) -> ExampleEdit | None:
        first = min(self.projects[1].tasks, default=None) if 1 in self.projects else None
        if first is None:
            return None
        return ExampleEdit(
            "PUT",
            f"{self.url}{self.api_root}/projects/1/tasks/{first}",
            {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            {"title": title, "status": "Active"},
        )

    def people(self) -> dict[str, str]:
        bob = next((u for u in self.users.values() if u.email == "bob@example.com"), None)
        if bob is None:
            bob = self.add_user("bob@example.com", "Bob", role="Member", token="vt_bob_person")
        return {"alice": self.alice.id, "bob": bob.id}

    def __init__(self, *, token: str, seed: int | None = None, mcp_json_response: bool = False) -> None:
        """`mcp_json_response=True` makes the MCP server answer plain JSON instead of SSE streams."""
        super().__init__(token=token, seed=seed)
        self.mcp_json_response = mcp_json_response
        # Derived from the token, not the rng, so a reset or a restart keeps Alice's id.
        self._alice_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"vortask-fake:alice:{token}"))
        self._mcp: Any = None  # McpFrontend, built with the app
        self._init_state()

    # -- state lifecycle -------------------------------------------------------------------

    def _init_state(self) -> None:
        self.users: dict[str, User] = {}
        self.tokens: dict[str, ApiToken] = {}  # by token value
        self.projects: dict[int, Project] = {}
        self.comments: dict[int, Comment] = {}
        self._comments_of: dict[int, list[Comment]] = {}  # task id -> its comments, oldest first
        self._counters: dict[str, int] = {}
        alice = User(self._alice_id, "alice@example.com", "Alice", self.now())
        self.users[alice.id] = alice
        self.alice = alice
        self._store_token(alice.id, self.token, name="Default")
        project = self._new_project("Default", None)
        self._add_member(project, alice.id, "Admin")
        if self.seed is not None:
            self.seed_demo()

    def reset_state(self) -> None:
        if self.seed is not None:
            self.rng.seed(self.seed)
        self._init_state()

    def _next(self, kind: str) -> int:
        self._counters[kind] = self._counters.get(kind, 0) + 1
        return self._counters[kind]

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def seed_demo(self) -> None:
        """Bob (Member), Carol (Viewer) and six tasks with comments in project 1."""
        project = self.projects[1]
        alice = self.alice
        bob = self.add_user("bob@example.com", "Bob", role="Member")
        carol = self.add_user("carol@example.com", "Carol", role="Viewer")
        people = [alice.id, bob.id, carol.id]
        titles = [
            ("Implement login", ["backend", "auth"]),
            ("Add dark mode", ["frontend", "ui"]),
            ("Fix pagination bug in reports", ["backend", "bug"]),
            ("Write onboarding docs", ["docs"]),
            ("Upgrade database driver", ["backend", "infra"]),
            ("Set up CI pipeline", ["infra"]),
            ("Design settings page", ["frontend", "design"]),
            ("Investigate slow dashboard", ["performance"]),
        ]
        owner = Caller(alice, self.tokens[self.token])
        for title, tags in self.rng.sample(titles, 6):
            due = None
            if self.rng.random() < 0.7:
                due = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=self.rng.randrange(60))
            task = self.create_task(
                owner,
                project,
                {
                    "title": title,
                    "description": f"{title} — see the project plan for details.",
                    "priority": self.rng.choice(PRIORITIES),
                    "dueDate": format_due(due),
                    "tags": tags,
                    "assigneeIds": self.rng.sample(people[:2], self.rng.randrange(3)),
                },
            )
            status = self.rng.choice(STATUSES)
            if status != "New":
                self.update_task(owner, task, {"status": status})
        for task in self.rng.sample(list(project.tasks.values()), 3):
            self.add_comment(owner, task, "Picking this up this week.")
            # Bob has no token; a Caller only needs his identity to author a comment.
            self.add_comment(Caller(bob, owner.token), task, "<p>Sounds good — ping me for review.</p>")

    # -- in-process helpers for tests ------------------------------------------------------

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Run state changes on the fake's loop once it serves, so they never race a handler."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return fn()
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is loop:
                return fn()
        result: T = self.call(fn)
        return result

    def add_user(
        self,
        email: str,
        display_name: str,
        *,
        role: str = "Member",
        token: str | None = None,
        scopes: list[str] | None = None,
        project_id: int = 1,
    ) -> User:
        """A new user, member of project `project_id` with `role`, with `token` if given."""
        one_of(role, ROLES, "role")

        def add() -> User:
            if any(u.email.lower() == email.lower() for u in self.users.values()):
                raise ValueError(f"a user with email {email} exists")
            user = User(self._uuid(), email, display_name, self.now())
            self.users[user.id] = user
            self._add_member(self.projects[project_id], user.id, role)
            if token is not None:
                self._store_token(user.id, token, name=f"{display_name} token", scopes=scopes)
            return user

        return self._on_loop(add)

    def add_token(
        self, user_id: str, token: str, *, scopes: list[str] | None = None, expires_at: datetime | None = None
    ) -> ApiToken:
        """Another token for an existing user (e.g. Alice with only `tasks:read`)."""
        return self._on_loop(
            lambda: self._store_token(user_id, token, name="extra", scopes=scopes, expires_at=expires_at)
        )

    def invitation_token(self, invitation_id: int) -> str:
        """The token an invitation email would carry."""
        for project in self.projects.values():
            if invitation_id in project.invitations:
                return project.invitations[invitation_id].token
        raise KeyError(invitation_id)

    def _store_token(
        self,
        user_id: str,
        value: str,
        *,
        name: str,
        scopes: list[str] | None = None,
        expires_at: datetime | None = None,
    ) -> ApiToken:
        for scope in scopes or []:
            one_of(scope, SCOPES, "scope")
        record = ApiToken(self._uuid(), user_id, name, value, self.now(), list(scopes or []), expires_at)
        self.tokens[value] = record
        return record

    # -- auth ------------------------------------------------------------------------------

    def caller_for(self, token: str | None) -> Caller | None:
        """The caller a bearer token acts as, or None for a missing/unknown/expired/revoked one."""
        record = self.tokens.get(token or "")
        if record is None or not record.is_active(fakekit.utcnow()) or record.user_id not in self.users:
            return None
        return Caller(self.users[record.user_id], record)

    def authenticate(self, request: Request) -> Caller:
        caller = self.caller_for(bearer_token(request))
        if caller is None:
            raise VortaskError(
                401, "Missing, invalid, expired or revoked API token.", headers={"WWW-Authenticate": "Bearer"}
            )
        return caller

    def project_for(
        self, caller: Caller, project_id: int, *, role: str = "Viewer", scope: str | None = None
    ) -> Project:
        if scope is not None:
            caller.need_scope(scope)
        project = self.projects.get(project_id)
        member = project.member_of(caller.user.id) if project else None
        if project is None or member is None:
            raise VortaskError(404, f"Project {project_id} not found.")
        if ROLE_RANK[member.role] < ROLE_RANK[role]:
            raise VortaskError(
                403, f"This action requires the {role} role in the project (you are {member.role})."
            )
        return project

    def task_in(self, project: Project, task_id: int) -> Task:
        task = project.tasks.get(task_id)
        if task is None:
            raise VortaskError(404, f"Task {task_id} not found.")
        return task

    def task_anywhere(
        self, caller: Caller, task_id: int, *, role: str = "Viewer", scope: str | None = None
    ) -> tuple[Project, Task]:
        """A task by its global id, checked against the caller's membership of its project."""
        if scope is not None:
            caller.need_scope(scope)
        for project in self.projects.values():
            if task_id in project.tasks:
                try:
                    self.project_for(caller, project.id, role=role)
                except VortaskError as exc:
                    if exc.status == 404:
                        break
                    raise
                return project, project.tasks[task_id]
        raise VortaskError(404, f"Task {task_id} not found.")

    # -- JSON shapes -----------------------------------------------------------------------

    def profile_json(self, user: User) -> dict[str, Any]:
        return {
            "id": user.id,
            "email": user.email,
            "displayName": user.display_name,
            "avatarUrl": user.avatar_url,
            "createdAt": iso(user.created_at),
        }

    def project_json(self, project: Project, user_id: str) -> dict[str, Any]:
        member = project.member_of(user_id)
        return {
            "id": project.id,
            "name": project.name,
            "description": project.description,
            "taskCount": len(project.tasks),
            "myRole": member.role if member else None,
            "createdAt": iso(project.created_at),
        }

    def member_json(self, member: Member) -> dict[str, Any]:
        user = self.users[member.user_id]
        return {
            "id": member.id,
            "userId": user.id,
            "email": user.email,
            "displayName": user.display_name,
            "role": member.role,
            "joinedAt": iso(member.joined_at),
        }

    def invitation_json(self, inv: Invitation) -> dict[str, Any]:
        return {
            "id": inv.id,
            "projectId": inv.project_id,
            "email": inv.email,
            "role": inv.role,
            "expiresAt": iso(inv.expires_at),
            "createdAt": iso(inv.created_at),
        }

    def assignee_json(self, user_id: str) -> dict[str, Any]:
        user = self.users[user_id]
        return {"userId": user.id, "email": user.email, "displayName": user.display_name}

    def task_json(self, task: Task) -> dict[str, Any]:
        return {
            "id": task.id,
            "title": task.title,
            "description": task.description,
            "status": task.status,
            "priority": task.priority,
            "dueDate": format_due(task.due_date),
            "tags": list(task.tags),
            "assignees": [self.assignee_json(uid) for uid in task.assignee_ids],
            "createdAt": iso(task.created_at),
            "updatedAt": iso(task.updated_at),
        }

    def history_json(self, task: Task) -> list[dict[str, Any]]:
        return [
            {
                "id": h.id,
                "actorId": h.actor_id,
                "actorName": h.actor_name,
                "action": h.action,
                "detail": h.detail,
                "createdAt": iso(h.created_at),
            }
            for h in reversed(task.history)
        ]

    def webhook_json(self, hook: Webhook) -> dict[str, Any]:
        return {
            "id": hook.id,
            "projectId": hook.project_id,
            "callbackUrl": hook.callback_url,
            "isActive": hook.is_active,
            "createdAt": iso(hook.created_at),
        }

    def comment_json(self, comment: Comment) -> dict[str, Any]:
        return {
            "id": comment.id,
            "taskId": comment.task_id,
            "authorId": comment.author_id,
            "authorName": comment.author_name,
            "body": comment.body,
            "createdAt": iso(comment.created_at),
        }

    def token_json(self, record: ApiToken) -> dict[str, Any]:
        return {
            "id": record.id,
            "name": record.name,
            "tokenPrefix": record.value[:11],
            "isActive": record.is_active(fakekit.utcnow()),
            "createdAt": iso(record.created_at),
            "expiresAt": iso(record.expires_at),
        }

    # -- webhooks --------------------------------------------------------------------------

    def emit(self, event: str, project: Project, task: Task) -> None:
        """Deliver `event` to every active webhook of the task's project."""
        payload = {
            "event": event,
            "projectId": project.id,
            "task": {
                "id": task.id,
                "title": task.title,
                "status": task.status,
                "priority": task.priority,
                "assignees": [{"email": self.users[uid].email} for uid in task.assignee_ids],
                "tags": list(task.tags),
                "updatedAt": iso(task.updated_at),
            },
        }
        body = json.dumps(payload).encode()
        for hook in project.webhooks.values():
            if not hook.is_active:
                continue
            headers = {}
            if hook.secret:
                headers["X-Vortask-Signature"] = hmac.new(
                    hook.secret.encode(), body, hashlib.sha256
                ).hexdigest()
            self.webhooks.send(hook.callback_url, event, body, headers)

    # -- domain operations shared by REST and MCP ------------------------------------------

    def _new_project(self, name: str, description: str | None) -> Project:
        project = Project(self._next("project"), name, description, self.now())
        self.projects[project.id] = project
        return project

    def _add_member(self, project: Project, user_id: str, role: str) -> Member:
        member = Member(self._next("member"), user_id, role, self.now())
        project.members[member.id] = member
        return member

    def create_project(self, caller: Caller, body: dict[str, Any]) -> Project:
        caller.need_scope("projects:write")
        name, description = self._project_fields(body, creating=True)
        project = self._new_project(name or "", description)
        self._add_member(project, caller.user.id, "Admin")
        return project

    def _project_fields(self, body: dict[str, Any], *, creating: bool) -> tuple[str | None, str | None]:
        name = body.get("name")
        description = body.get("description")
        errors = []
        if (creating or "name" in body) and (not isinstance(name, str) or not name.strip()):
            errors.append("Name is required.")
        if description is not None and not isinstance(description, str):
            errors.append("Description must be a string.")
        if errors:
            raise VortaskError(400, *errors)
        return name, description

    def task_fields(
        self, project: Project, body: dict[str, Any], *, creating: bool, default_priority: str | None = None
    ) -> dict[str, Any]:
        """Validated task attributes from a request body (all errors at once, as the API lists them)."""
        errors: list[str] = []
        out: dict[str, Any] = {}

        def check(key: str, attr: str, convert: Callable[[Any], Any]) -> None:
            if key not in body:
                return
            try:
                out[attr] = convert(body[key])
            except VortaskError as exc:
                errors.extend(exc.errors)

        def title(value: Any) -> str:
            if not isinstance(value, str) or not value.strip():
                raise VortaskError(400, "Title is required.")
            return value

        def description(value: Any) -> str | None:
            if value is not None and not isinstance(value, str):
                raise VortaskError(400, "Description must be a string.")
            return value

        def tags(value: Any) -> list[str]:
            if value is None:
                return []
            if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value):
                raise VortaskError(400, "Tags must be a list of non-empty strings.")
            return list(dict.fromkeys(value))

        def assignees(value: Any) -> list[str]:
            if value is None:
                return []
            if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
                raise VortaskError(400, "AssigneeIds must be a list of user ids.")
            strangers = [a for a in value if project.member_of(a) is None]
            if strangers:
                raise VortaskError(400, *(f"User {a} is not a member of this project." for a in strangers))
            return list(dict.fromkeys(value))

        if creating and "title" not in body:
            errors.append("Title is required.")
        check("title", "title", title)
        check("description", "description", description)
        if creating and body.get("priority") is None:
            if default_priority is None:
                errors.append("Priority is required.")
            else:
                out["priority"] = default_priority
        else:
            check("priority", "priority", lambda v: one_of(v, PRIORITIES, "Priority"))
        if not creating:
            check("status", "status", lambda v: one_of(v, STATUSES, "Status"))
        check("dueDate", "due_date", lambda v: None if v is None else parse_datetime(v, "DueDate"))
        check("tags", "tags", tags)
        check("assigneeIds", "assignee_ids", assignees)
        if errors:
            raise VortaskError(400, *errors)
        return out

    def _history(self, task: Task, caller: Caller, action: str, detail: str, at: datetime) -> None:
        task.history.append(
            HistoryEntry(self._next("history"), caller.user.id, caller.user.display_name, action, detail, at)
        )

    def create_task(
        self, caller: Caller, project: Project, body: dict[str, Any], *, default_priority: str | None = None
    ) -> Task:
        fields = self.task_fields(project, body, creating=True, default_priority=default_priority)
        return self._insert_task(caller, project, fields)

    def _insert_task(self, caller: Caller, project: Project, fields: dict[str, Any]) -> Task:
        at = self.now()
        task = Task(
            self._next("task"),
            project.id,
            fields["title"],
            fields.get("description"),
            "New",
            fields["priority"],
            fields.get("due_date"),
            fields.get("tags", []),
            fields.get("assignee_ids", []),
            at,
            at,
        )
        project.tasks[task.id] = task
        project.recent[task.id] = None
        self._history(task, caller, "Created", task.title, at)
        self.emit("task.created", project, task)
        return task

    def bulk_create_tasks(self, caller: Caller, project: Project, items: list[dict[str, Any]]) -> list[Task]:
        """All or nothing: every item is validated before any task is created."""
        validated = []
        for n, item in enumerate(items, 1):
            try:
                validated.append(
                    self.task_fields(project, as_object(item), creating=True, default_priority="Medium")
                )
            except VortaskError as exc:
                raise VortaskError(400, *(f"Task {n}: {e}" for e in exc.errors)) from None
        return [self._insert_task(caller, project, fields) for fields in validated]

    def _describe(self, attr: str, value: Any) -> str:
        if attr == "due_date":
            return format_due(value) or "none"
        if attr == "tags":
            return ", ".join(value) or "none"
        if attr == "assignee_ids":
            return ", ".join(self.users[u].display_name for u in value if u in self.users) or "none"
        return str(value)

    def update_task(self, caller: Caller, task: Task, fields: dict[str, Any]) -> Task:
        actions = {
            "title": "TitleChanged",
            "description": "DescriptionChanged",
            "status": "StatusChanged",
            "priority": "PriorityChanged",
            "due_date": "DueDateChanged",
            "tags": "TagsChanged",
            "assignee_ids": "AssigneesChanged",
        }
        at = self.now()
        for attr, value in fields.items():
            old = getattr(task, attr)
            if old == value:
                continue
            detail = (
                "Description updated"
                if attr == "description"
                else f"{self._describe(attr, old)} → {self._describe(attr, value)}"
            )
            setattr(task, attr, value)
            self._history(task, caller, actions[attr], detail, at)
        task.updated_at = at
        project = self.projects[task.project_id]
        project.recent.pop(task.id, None)
        project.recent[task.id] = None
        self.emit("task.updated", project, task)
        return task

    def delete_task(self, project: Project, task: Task) -> None:
        self.emit("task.deleted", project, task)
        del project.tasks[task.id]
        project.recent.pop(task.id, None)
        for comment in self._comments_of.pop(task.id, []):
            del self.comments[comment.id]

    def recent_tasks(self, project: Project, count: int) -> list[Task]:
        """The project's `count` most recently updated tasks, newest first."""
        return [project.tasks[i] for i in itertools.islice(reversed(project.recent), count)]

    def _unassign(self, caller: Caller, project: Project, user_id: str) -> None:
        for task in list(project.tasks.values()):
            if user_id in task.assignee_ids:
                self.update_task(
                    caller, task, {"assignee_ids": [u for u in task.assignee_ids if u != user_id]}
                )

    def _keep_an_admin(self, project: Project, leaving: Member) -> None:
        admins = [m for m in project.members.values() if m.role == "Admin" and m.id != leaving.id]
        if leaving.role == "Admin" and not admins:
            raise VortaskError(400, "A project must keep at least one Admin.")

    def add_comment(self, caller: Caller, task: Task, body: Any) -> Comment:
        if not isinstance(body, str) or not body.strip():
            raise VortaskError(400, "Body is required.")
        comment = Comment(
            self._next("comment"), task.id, caller.user.id, caller.user.display_name, body, self.now()
        )
        self.comments[comment.id] = comment
        self._comments_of.setdefault(task.id, []).append(comment)  # ids only grow: oldest first
        return comment

    def remove_comment(self, comment: Comment) -> None:
        del self.comments[comment.id]
        self._comments_of[comment.task_id].remove(comment)

    def task_comments(self, task: Task) -> list[Comment]:
        return list(self._comments_of.get(task.id, ()))

    def query_tasks(self, project: Project, query: Mapping[str, Any]) -> list[Task]:
        """The list filters of GET /projects/:id/tasks (and the MCP list_tasks tool)."""

        def given(key: str) -> Any:
            value = query.get(key)
            return None if value in (None, "") else value

        status = given("status") and one_of(given("status"), STATUSES, "status")
        priority = given("priority") and one_of(given("priority"), PRIORITIES, "priority")
        assignee = given("assigneeId")
        label = given("label")
        if label is not None and not isinstance(label, str):
            raise VortaskError(400, "label must be a string.")
        before = given("dueBefore") and parse_datetime(given("dueBefore"), "dueBefore")
        after = given("dueAfter") and parse_datetime(given("dueAfter"), "dueAfter")
        tasks = []
        for task in sorted(project.tasks.values(), key=lambda t: t.id):
            if (status and task.status != status) or (priority and task.priority != priority):
                continue
            if assignee is not None and assignee not in task.assignee_ids:
                continue
            if label is not None and not any(label.lower() in tag.lower() for tag in task.tags):
                continue
            if before and (task.due_date is None or task.due_date >= before):
                continue
            if after and (task.due_date is None or task.due_date <= after):
                continue
            tasks.append(task)
        return tasks

    # -- platform hooks --------------------------------------------------------------------

    def error_response(self, status: int, code: str, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse(VortaskError(status, message).body(), status_code=status)

    def rate_limited_response(self, retry_after: int) -> Response:
        resp = self.error_response(
            429, "rate_limited", f"Rate limit exceeded. Retry after {retry_after} seconds."
        )
        resp.headers["Retry-After"] = str(retry_after)
        return resp

    def server_error_response(self, status: int = 500) -> Response:
        detail = "The server timed out." if status == 504 else "An unexpected error occurred."
        return self.error_response(status, "server_error", detail)

    def lifespan_extra(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._mcp_lifespan()

    @contextlib.asynccontextmanager
    async def _mcp_lifespan(self) -> AsyncIterator[None]:
        assert self._mcp is not None
        async with self._mcp.run():
            yield

    def snapshot(self) -> dict[str, Any]:
        return {
            "users": [self.profile_json(u) for u in self.users.values()],
            "tokens": [
                {**self.token_json(t), "userId": t.user_id, "scopes": t.scopes} for t in self.tokens.values()
            ],
            "projects": [
                {
                    **self.project_json(p, ""),
                    "members": [self.member_json(m) for m in p.members.values()],
                    "tasks": [
                        {**self.task_json(t), "history": self.history_json(t)} for t in p.tasks.values()
                    ],
                    "webhooks": [{**self.webhook_json(w), "secret": w.secret} for w in p.webhooks.values()],
                }
                for p in self.projects.values()
            ],
            "invitations": [
                {**self.invitation_json(i), "token": i.token, "status": i.status}
                for p in self.projects.values()
                for i in p.invitations.values()
            ],
            "comments": [self.comment_json(c) for c in self.comments.values()],
        }

    # -- REST routes -----------------------------------------------------------------------

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if raw and content_type != "application/json":
            raise VortaskError(415, "Content-Type must be application/json.")
        return as_object(await self.json_body(request))

    def routes(self, app: FastAPI) -> None:
        self._mcp = McpFrontend(self)
        self._mcp.mount(app, "/mcp")

        @app.exception_handler(VortaskError)
        async def _vortask_error(_: Request, exc: VortaskError) -> Response:
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

        @app.exception_handler(StarletteHTTPException)
        async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
            return self.error_response(exc.status_code, "http", str(exc.detail))

        self._profile_routes(app)
        self._project_routes(app)
        self._member_routes(app)
        self._task_routes(app)
        self._invitation_routes(app)
        self._token_routes(app)
        self._webhook_routes(app)

    def _profile_routes(self, app: FastAPI) -> None:
        @app.get("/api/profile")
        async def get_profile(request: Request) -> Response:
            return JSONResponse(self.profile_json(self.authenticate(request).user))

        @app.put("/api/profile")
        async def put_profile(request: Request) -> Response:
            caller = self.authenticate(request)
            caller.need_unscoped()
            body = await self._body(request)
            errors = []
            name, avatar = body.get("displayName"), body.get("avatarUrl")
            if "displayName" in body and (not isinstance(name, str) or not name.strip()):
                errors.append("DisplayName must be a non-empty string.")
            if avatar is not None and not is_http_url(avatar):
                errors.append("AvatarUrl must be an absolute http(s) URL.")
            if errors:
                raise VortaskError(400, *errors)
            if "displayName" in body:
                caller.user.display_name = name
            if "avatarUrl" in body:
                caller.user.avatar_url = avatar
            return JSONResponse(self.profile_json(caller.user))

        @app.delete("/api/profile")
        async def delete_profile(request: Request) -> Response:
            caller = self.authenticate(request)
            caller.need_unscoped()
            user_id = caller.user.id
            for project in self.projects.values():
                member = project.member_of(user_id)
                if member is not None:
                    self._unassign(caller, project, user_id)
                    del project.members[member.id]
            for value in [v for v, t in self.tokens.items() if t.user_id == user_id]:
                del self.tokens[value]
            del self.users[user_id]
            return Response(status_code=204)

    def _project_routes(self, app: FastAPI) -> None:
        @app.get("/api/projects")
        async def list_projects(request: Request) -> Response:
            caller = self.authenticate(request)
            caller.need_scope("projects:read")
            mine = [p for p in self.projects.values() if p.member_of(caller.user.id)]
            return JSONResponse([self.project_json(p, caller.user.id) for p in mine])

        @app.post("/api/projects")
        async def create_project(request: Request) -> Response:
            caller = self.authenticate(request)
            caller.need_scope("projects:write")
            project = self.create_project(caller, await self._body(request))
            return JSONResponse(self.project_json(project, caller.user.id), status_code=201)

        @app.get("/api/projects/{project_id}")
        async def get_project(request: Request, project_id: str) -> Response:
            caller = self.authenticate(request)
            project = self.project_for(caller, path_id(project_id), scope="projects:read")
            return JSONResponse(self.project_json(project, caller.user.id))

        @app.put("/api/projects/{project_id}")
        async def update_project(request: Request, project_id: str) -> Response:
            caller = self.authenticate(request)
            project = self.project_for(caller, path_id(project_id), role="Member", scope="projects:write")
            body = await self._body(request)
            name, description = self._project_fields(body, creating=False)
            if "name" in body:
                project.name = name or project.name
            if "description" in body:
                project.description = description
            return JSONResponse(self.project_json(project, caller.user.id))

        @app.delete("/api/projects/{project_id}")
        async def delete_project(request: Request, project_id: str) -> Response:
            caller = self.authenticate(request)
            project = self.project_for(caller, path_id(project_id), role="Admin", scope="projects:write")
            for task in list(project.tasks.values()):
                self.delete_task(project, task)
            del self.projects[project.id]
            return Response(status_code=204)

    def _member_routes(self, app: FastAPI) -> None:
        def member_in(project: Project, member_id: str) -> Member:
            member = project.members.get(path_id(member_id))
            if member is None:
                raise VortaskError(404, f"Member {member_id} not found.")
            return member

        @app.get("/api/projects/{project_id}/members")
        async def list_members(request: Request, project_id: str) -> Response:
            caller = self.authenticate(request)
            project = self.project_for(caller, path_id(project_id), scope="projects:read")
            return JSONResponse([self.member_json(m) for m in project.members.values()])

        @app.post("/api/projects/{project_id}/members")
        async def invite(request: Request, project_id: str) -> Response:
            caller = self.authenticate(request)
            project = self.project_for(caller, path_id(project_id), role="Admin", scope="projects:write")
            invitation = self.invite(project, await self._body(request))
            return JSONResponse(self.invitation_json(invitation), status_code=201)

        @app.put("/api/projects/{project_id}/members/{member_id}")
        async def change_role(request: Request, project_id: str, member_id: str) -> Response:
            caller = self.authenticate(request)
            project = self.project_for(caller, path_id(project_id), role="Admin", scope="projects:write")
            member = member_in(project, member_id)
            role = one_of((await self._body(request)).get("role"), ROLES, "Role")
            if role != "Admin":
                self._keep_an_admin(project, member)
            member.role = role
            return JSONResponse(self.member_json(member))

        @app.delete("/api/projects/{project_id}/members/{member_id}")
        async def remove_member(request: Request, project_id: str, member_id: str) -> Response:
            caller = self.authenticate(request)
            project = self.project_for(caller, path_id(project_id), role="Admin", scope="projects:write")
            member = member_in(project, member_id)
            self._keep_an_admin(project, member)
            del project.members[member.id]
            self._unassign(caller, project, member.user_id)
            return Response(status_code=204)

        @app.delete("/api/projects/{project_id}/invitations/{invitation_id}")
        async def cancel_invitation(request: Request, project_id: str, invitation_id: str) -> Response:
            caller = self.authenticate(request)
            project = self.project_for(caller, path_id(project_id), role="Admin", scope="projects:write")
            invitation = project.invitations.get(path_id(invitation_id))
            if invitation is None or invitation.status != "Pending":
                raise VortaskError(404, f"Invitation {invitation_id} not found.")
            invitation.status = "Cancelled"
            return Response(status_code=204)

    def invite(self, project: Project, body: dict[str, Any]) -> Invitation:
        email, role = body.get("email"), body.get("role", "Member")
        errors = []
        if not isinstance(email, str) or "@" not in email.strip("@") or " " in email:
            errors.append("A valid email is required.")
        if role not in ROLES:
            errors.append(f"Role must be one of {', '.join(ROLES)}.")
        if errors:
            raise VortaskError(400, *errors)
        if any(self.users[m.user_id].email.lower() == email.lower() for m in project.members.values()):
            raise VortaskError(400, f"{email} is already a member of this project.")
        if any(
            i.email.lower() == email.lower() and i.status == "Pending" for i in project.invitations.values()
        ):
            raise VortaskError(400, f"An invitation for {email} is already pending.")
        at = self.now()
        invitation = Invitation(
            self._next("invitation"),
            project.id,
            email,
            role,
            "inv_" + secrets.token_urlsafe(18),
            at,
            at + INVITATION_TTL,
        )
        project.invitations[invitation.id] = invitation
        return invitation

    def _task_routes(self, app: FastAPI) -> None:
        @app.get("/api/projects/{project_id}/tasks")
        async def list_tasks(request: Request, project_id: str) -> Response:
            caller = self.authenticate(request)
            project = self.project_for(caller, path_id(project_id), scope="tasks:read")
            tasks = self.query_tasks(project, dict(request.query_params))
            return JSONResponse([self.task_json(t) for t in tasks])

        @app.post("/api/projects/{project_id}/tasks")
        async def create_task(request: Request, project_id: str) -> Response:
            caller = self.authenticate(request)
            project = self.project_for(caller, path_id(project_id), role="Member", scope="tasks:write")
            task = self.create_task(caller, project, await self._body(request))
            return JSONResponse(self.task_json(task), status_code=201)

        @app.get("/api/projects/{project_id}/tasks/{task_id}")
        async def get_task(request: Request, project_id: str, task_id: str) -> Response:
            caller = self.authenticate(request)
            project = self.project_for(caller, path_id(project_id), scope="tasks:read")
            return JSONResponse(self.task_json(self.task_in(project, path_id(task_id))))

        @app.put("/api/projects/{project_id}/tasks/{task_id}")
        async def update_task(request: Request, project_id: str, task_id: str) -> Response:
            caller = self.authenticate(request)
            project = self.project_for(caller, path_id(project_id), role="Member", scope="tasks:write")
            task = self.task_in(project, path_id(task_id))
            fields = self.task_fields(project, await self._body(request), creating=False)
            return JSONResponse(self.task_json(self.update_task(caller, task, fields)))

        @app.delete("/api/projects/{project_id}/tasks/{task_id}")
        async def delete_task(request: Request, project_id: str, task_id: str) -> Response:
            caller = self.authenticate(request)
            project = self.project_for(caller, path_id(project_id), role="Admin", scope="tasks:delete")
            self.delete_task(project, self.task_in(project, path_id(task_id)))
            return Response(status_code=204)

        @app.get("/api/projects/{project_id}/tasks/{task_id}/history")
        async def task_history(request: Request, project_id: str, task_id: str) -> Response:
            caller = self.authenticate(request)
            project = self.project_for(caller, path_id(project_id), scope="tasks:read")
            return JSONResponse(self.history_json(self.task_in(project, path_id(task_id))))

    def _invitation_routes(self, app: FastAPI) -> None:
        def pending(token: str | None) -> tuple[Project, Invitation]:
            for project in self.projects.values():
                for invitation in project.invitations.values():
                    if token and invitation.token == token and invitation.status == "Pending":
                        if invitation.expires_at <= fakekit.utcnow():
                            raise VortaskError(400, "This invitation has expired.")
                        return project, invitation
            raise VortaskError(404, "Invitation not found.")

        @app.get("/api/invitations/preview")
        async def preview(request: Request) -> Response:
            project, invitation = pending(request.query_params.get("token"))
            return JSONResponse(
                {
                    "projectName": project.name,
                    "email": invitation.email,
                    "role": invitation.role,
                    "expiresAt": iso(invitation.expires_at),
                }
            )

        @app.post("/api/invitations/accept")
        async def accept(request: Request) -> Response:
            caller = self.authenticate(request)
            project, invitation = pending(request.query_params.get("token"))
            if invitation.email.lower() != caller.user.email.lower():
                raise VortaskError(403, "This invitation was sent to a different email address.")
            if project.member_of(caller.user.id):
                raise VortaskError(400, "You are already a member of this project.")
            self._add_member(project, caller.user.id, invitation.role)
            invitation.status = "Accepted"
            return JSONResponse({"projectId": project.id, "projectName": project.name})

    def _token_routes(self, app: FastAPI) -> None:
        @app.get("/api/apitokens")
        async def list_tokens(request: Request) -> Response:
            caller = self.authenticate(request)
            mine = [t for t in self.tokens.values() if t.user_id == caller.user.id]
            return JSONResponse([self.token_json(t) for t in mine])

        @app.post("/api/apitokens")
        async def create_token(request: Request) -> Response:
            caller = self.authenticate(request)
            caller.need_unscoped()
            body = await self._body(request)
            name, expires, scopes = body.get("name"), body.get("expiresAt"), body.get("scopes")
            errors = []
            if not isinstance(name, str) or not name.strip():
                errors.append("Name is required.")
            expires_at = None
            if expires is not None:
                try:
                    expires_at = parse_datetime(expires, "ExpiresAt")
                    if expires_at <= fakekit.utcnow():
                        errors.append("ExpiresAt must be in the future.")
                except VortaskError as exc:
                    errors.extend(exc.errors)
            if scopes is not None and (not isinstance(scopes, list) or any(s not in SCOPES for s in scopes)):
                errors.append(f"Scopes must be a list drawn from {', '.join(SCOPES)}.")
            if errors:
                raise VortaskError(400, *errors)
            record = self._store_token(
                caller.user.id, "vt_" + secrets.token_hex(20), name=name, scopes=scopes, expires_at=expires_at
            )
            return JSONResponse(
                {
                    "id": record.id,
                    "name": record.name,
                    "token": record.value,
                    "createdAt": iso(record.created_at),
                },
                status_code=201,
            )

        @app.delete("/api/apitokens/{token_id}")
        async def revoke_token(request: Request, token_id: str) -> Response:
            caller = self.authenticate(request)
            caller.need_unscoped()
            match = next(
                (v for v, t in self.tokens.items() if t.id == token_id and t.user_id == caller.user.id), None
            )
            if match is None:
                raise VortaskError(404, f"API token {token_id} not found.")
            del self.tokens[match]
            return Response(status_code=204)

    def _webhook_routes(self, app: FastAPI) -> None:
        def hook_fields(body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
            errors, out = [], {}
            if creating or "callbackUrl" in body:
                if is_http_url(body.get("callbackUrl")):
                    out["callback_url"] = body["callbackUrl"]
                else:
                    errors.append("CallbackUrl must be an absolute http(s) URL.")
            if body.get("secret") is not None:
                if isinstance(body["secret"], str):
                    out["secret"] = body["secret"] or None
                else:
                    errors.append("Secret must be a string.")
            if not creating and "isActive" in body:
                if isinstance(body["isActive"], bool):
                    out["is_active"] = body["isActive"]
                else:
                    errors.append("IsActive must be a boolean.")
            if errors:
                raise VortaskError(400, *errors)
            return out

        def hook_in(project: Project, webhook_id: str) -> Webhook:
            hook = project.webhooks.get(path_id(webhook_id))
            if hook is None:
                raise VortaskError(404, f"Webhook {webhook_id} not found.")
            return hook

        @app.get("/api/projects/{project_id}/webhooks")
        async def list_webhooks(request: Request, project_id: str) -> Response:
            caller = self.authenticate(request)
            project = self.project_for(caller, path_id(project_id), role="Admin", scope="projects:read")
            return JSONResponse([self.webhook_json(w) for w in project.webhooks.values()])

        @app.post("/api/projects/{project_id}/webhooks")
        async def create_webhook(request: Request, project_id: str) -> Response:
            caller = self.authenticate(request)
            project = self.project_for(caller, path_id(project_id), role="Admin", scope="projects:write")
            fields = hook_fields(await self._body(request), creating=True)
            hook = Webhook(
                self._next("webhook"),
                project.id,
                fields["callback_url"],
                fields.get("secret"),
                True,
                self.now(),
            )
            project.webhooks[hook.id] = hook
            return JSONResponse(self.webhook_json(hook), status_code=201)

        @app.put("/api/projects/{project_id}/webhooks/{webhook_id}")
        async def update_webhook(request: Request, project_id: str, webhook_id: str) -> Response:
            caller = self.authenticate(request)
            project = self.project_for(caller, path_id(project_id), role="Admin", scope="projects:write")
            hook = hook_in(project, webhook_id)
            for attr, value in hook_fields(await self._body(request), creating=False).items():
                setattr(hook, attr, value)
            return JSONResponse(self.webhook_json(hook))

        @app.delete("/api/projects/{project_id}/webhooks/{webhook_id}")
        async def delete_webhook(request: Request, project_id: str, webhook_id: str) -> Response:
            caller = self.authenticate(request)
            project = self.project_for(caller, path_id(project_id), role="Admin", scope="projects:write")
            del project.webhooks[hook_in(project, webhook_id).id]
            return Response(status_code=204)


# == The MCP server ==========================================================================
#
# The Vortask fake's MCP server: Streamable HTTP, JSON-RPC 2.0, at `<origin>/mcp`.
#
# Built on the official `mcp` SDK (low-level `Server` + `StreamableHTTPSessionManager`, run
# in the fake's lifespan), wrapped by a small ASGI gate that does what the SDK leaves to the
# host: bearer auth with the REST API's tokens, and pinning the protocol version.
#
# Assumed (the page names the tools and the handshake only; correct here when known):
# - Auth: every HTTP request to /mcp needs `Authorization: Bearer <vt_ token>`; otherwise 401
#   in the REST error shape with `WWW-Authenticate: Bearer`. Each tool call acts as the token
#   of *that* request (scopes and roles as in REST). A session is bound to the token that
#   opened it: another token presenting its `mcp-session-id` gets 404 (SDK behaviour).
# - Protocol: the server always negotiates `2024-11-05` (whatever version the client offers
#   in `initialize`, the answer says 2024-11-05). Requests carrying a post-handshake-era
#   `MCP-Protocol-Version` (e.g. the SDK client's `server/discover` probe at 2026-07-28) get
#   400 with a JSON-RPC error, as a 2024-era server would refuse them; SDK clients then fall
#   back to `initialize`. Requests after `initialize` without `mcp-session-id` get 400, with
#   an unknown one 404 (SDK behaviour). Responses are SSE streams (`text/event-stream`, one
#   `message` event per response) unless the fake was built with `mcp_json_response=True`.
# - Tool results: one text content holding JSON. Failures are tool results with
#   `isError: true` whose text is the REST error body plus the HTTP-equivalent status:
#   `{"errors": [...], "message": "...", "status": 404}`. An unknown tool name is a JSON-RPC
#   error (-32602).
# - Tool arguments: ids are integers (`projectId`, `taskId`, `commentId`); task tools take the
#   REST body's field names. `create_task`/`bulk_create_tasks` default `priority` to Medium
#   (the page lists it as optional here, unlike REST). Output shapes reuse the REST shapes:
#   get_context `{"profile", "projects": [project + "recentTasks" (20 latest by updatedAt)]}`;
#   list_projects / list_tasks / get_task_history / list_comments: arrays; get_task,
#   create_task, update_task: a task; bulk_create_tasks `{"created": [tasks]}` (1..100 tasks,
#   all validated before any is created); delete_task `{"deleted": true, "taskId"}`;
#   list_members `{"members": [...], "invitations": [pending...]}`; create_project: a project;
#   add_comment: a comment; delete_comment `{"deleted": true, "commentId"}`.
# - Comments `{id, taskId, authorId, authorName, body, createdAt}`; body is stored verbatim
#   (text or HTML); listed oldest first. Adding needs Member+ and tasks:write; deleting needs
#   tasks:write and authorship (Member+) or Admin. Comments fire no webhooks and are not in
#   task history. Deleting a task deletes its comments.

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
            recent = fake.recent_tasks(project, 20)
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
    fake.remove_comment(comment)
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
