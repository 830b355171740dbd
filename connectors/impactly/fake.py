"""Impactly fake: an in-memory server of Impactly's External API (`/api/v1`).

Written from shared/platforms/impactly.txt (the vendor's page) and the impactly section of
shared/platforms/NOTES.md. Everything below that neither source states is an assumption, listed
here so it can be corrected in one place once a real account shows otherwise.

Served (all under /api/v1, all behind `Authorization: Bearer <key>`):
    GET    /tasks                              paginated; filters below
    POST   /tasks                              201 task
    GET    /tasks/{id}                         200 task | 404
    PATCH  /tasks/{id}                         200 task
    DELETE /tasks/{id}                         204
    GET    /tasks/{id}/blockers                200 [task...]
    POST   /tasks/{id}/blockers                {"blocker_id"} 201 [task...] | 200 if it existed
    DELETE /tasks/{id}/blockers/{blocker_id}   200 [task...]
    GET    /tasks/{id}/dependents              200 [task...]
    POST   /tasks/{id}/dependents              {"dependent_id"} 201 [task...] | 200 if it existed
    DELETE /tasks/{id}/dependents/{dep_id}     200 [task...]
    GET    /tasks/{id}/comments                paginated
    POST   /tasks/{id}/comments                {"content"} 201 comment
    GET    /projects                           paginated
    GET    /projects/{id}                      200 project | 404
    GET    /projects/{id}/tasks                paginated
    GET    /agents/me                          200 agent profile with usage stats
    GET    /activity                           paginated activity feed
    GET    /webhooks                           200 {"data": [subscription...]}
    POST   /webhooks                           201 subscription (with its secret)
    DELETE /webhooks/{id}                      204
    POST   /search                             {"query"} 200 {"data": [task...]}
    GET    /health                             200 {"status": "ok"}

Documented and implemented as documented: bearer auth; the error body
`{"error", "message", "field"?, "request_id"}`; task and project fields; `status` active|completed;
`priority` low|medium|high|urgent|null; cursor pagination with `limit` at most 100; POST of an
existing blocker/dependent answers 200; the list filters of GET /tasks and GET /activity.

Assumed:
- Paths of dependencies, comments, agents, activity, webhooks, search and health are the
  REST-conventional ones listed above (not published).
- DELETE /tasks/{id} is not on the scraped page; it is served (204, empty body) because the MCP
  tools and the activity feed imply deletion. It cascades: subtasks are deleted first (each with its
  own `task.deleted`), and the task's comments and dependencies go with it.
- Health requires the bearer token too: the page says "All endpoints require a Bearer token".
- Paginated list envelope: `{"data": [...], "next_cursor": str | null, "has_more": bool}`.
  `next_cursor` is null exactly when `has_more` is false. Default `limit` 50; a `limit` that is not
  an integer in 1..100 is 400 with field "limit". The cursor is opaque (base64url of the list kind and
  the last item's sort key), so it stays valid when that item is deleted; a malformed cursor, or one
  from another list, is 400 with field "cursor". An empty `cursor=` means the first page.
- Order: every list (tasks, projects, comments, activity) is oldest first, by (created_at, id).
- Single resources are bare objects (no envelope). "Array of task dependencies" is a bare JSON array
  of the related tasks (full task objects), in the order the relations were added.
- GET /projects/{id}/tasks documents no filters, so it takes only `cursor` and `limit` and ignores
  task filters (a client must not rely on them there). Unknown query parameters are ignored
  everywhere (so an undocumented `updated_since` silently does nothing).
- Ids in a path that do not exist (or are not UUIDs) are 404 `not_found`. Ids in a body that do not
  resolve (project_id, assignee_id, parent_task_id, blocker_id, dependent_id) are 400
  `validation_error` with that field. Every 400 uses the code `validation_error`.
- Bodies are validated strictly: a field the endpoint does not document is 400 with that field
  (so `status` on create, or `project_id` on PATCH, is rejected: create, then PATCH to complete).
  An empty PATCH body is 400. `title` is 1..500 characters (not blank), `description` up to 50,000,
  comment `content` 1..10,000, search `query` 1..500.
- POST /tasks without project_id: the parent's project for a subtask, else the workspace's default
  project (`ImpactlyFake.project_id`). A parent must be in the same project; re-parenting that
  would make a task its own ancestor is 400.
- `assignee_id` must be a workspace member (three fixed people, `ImpactlyFake.members`) or an API
  agent; there is no documented endpoint listing members.
- Every successful PATCH bumps `updated_at` and emits one event, even when no value changed (then
  `changes` is `{}`): clients must tolerate echoes. A PATCH that moves status active -> completed
  emits `task.completed` (and not also `task.updated`); any other PATCH, including reopening, emits
  `task.updated`. Comments and dependency changes do not touch the task's `updated_at`; dependency
  changes emit no event.
- The key is an API agent (the page: "Create an API agent ... to get your key"). Extra keys via
  `add_key(token, write=False)`; a read-only key can use every GET and POST /search, and gets 403
  `forbidden` "Insufficient permissions" on any other write.
- Activity feed entries: `{"id", "type", "task_id", "comment_id", "project_id", "actor_id",
  "actor_type" ("agent" | "user"), "created_at", "changes"}`; `type` is one of the webhook events;
  `changes` is `{field: {"from", "to"}}` for task.updated/task.completed, else null. The feed holds
  every change by anyone (agents through the API, people through the in-process helpers that stand
  in for the web app). `since` is inclusive (created_at >= since); it takes an ISO 8601 timestamp
  (naive means UTC; a date means its UTC midnight) or `<n>h` / `<n>d`; omitted means no lower bound.
  `agent_id` filters on `actor_id`. Oldest first, so a cursor walk never skips entries.
  Caution: the page files the feed under "Agents" and offers an `agent_id` filter, so the real feed
  may hold only agents' actions; a connector should not treat it as complete without a full listing.
- Webhooks belong to the agent (key) that made them: GET lists and DELETE finds only its own; every
  subscription receives every matching change in the workspace, whoever made it. Events:
  task.created, task.updated, task.completed, task.deleted, comment.created, or "*" for all.
  `url` must be an absolute http(s) URL. When no `secret` is given one is generated
  (`whsec_` + 48 hex); the 201 body carries `secret` either way, GET never does.
- Webhook delivery: POST of `{"id": <delivery uuid>, "event", "created_at", "actor_id", "data":
  <task, or comment for comment.created>, "changes"?: {...}}` (compact JSON; `changes` only on
  task.updated/task.completed; for task.deleted `data` is the task as it was). Headers:
  `X-Impactly-Signature: sha256=<hex HMAC-SHA256 of the raw body with the secret>`,
  `X-Impactly-Delivery: <the body's id>` (the same on every retry), `X-Impactly-Timestamp: <unix
  seconds>` (not signed), `X-Impactly-Event: <event>`. Failed deliveries are retried (fakekit).
- 429 is the error body with code `rate_limited` and a `Retry-After` header (seconds); 500 is
  `internal_error`, 504 `gateway_timeout`; unrouted paths 404 and wrong methods 405 use the same shape.
- Projects are read-only over the API; every key sees every project (`visibility` is reported, not
  enforced). The fake starts with one project, "Default", public, color null, id
  `DEFAULT_PROJECT_ID` = 4c97b1f6-ccab-5519-9c4b-4d7078451a16 (whatever the seed).
- Ids are UUIDs. With a seed they come from a seeded generator (deterministic runs); the default
  project's id is the constant `DEFAULT_PROJECT_ID`, a member's or agent's id is a uuid5 of its
  email or token.

In-process helpers (before `start()`, or through `fake.call(lambda: ...)` while it runs):
`add_key(token, write=..., name=...)`, `add_project(name, ...)`, `member_id(name)`, and
`create_task` / `update_task` / `delete_task` / `add_comment`, which act as a person in the web app
(default: the first member) and so show up in the activity feed and in webhooks like any change.
`POST /_fake/reset` forgets all workspace data (tasks, comments, extra projects, webhooks, activity)
but keeps the keys, since they are the harness's credentials; it does not re-seed.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import json
import random
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from connectors import fakekit
from connectors.fakekit import iso

BASE = "/api/v1"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://impactly.fake/")
DEFAULT_PROJECT_ID = str(uuid.uuid5(_NAMESPACE, "project/default"))

STATUSES = ("active", "completed")
PRIORITIES = ("low", "medium", "high", "urgent")
EVENTS = ("task.created", "task.updated", "task.completed", "task.deleted", "comment.created")
ALL_EVENTS = "*"

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
TITLE_MAX = 500
DESCRIPTION_MAX = 50_000
COMMENT_MAX = 10_000
QUERY_MAX = 500
SEARCH_MAX_RESULTS = 50

# The workspace's people: fixed so configs and tests can name them.
FIXED_MEMBERS = (
    ("Alice Chen", "alice@example.org"),
    ("Bob Okafor", "bob@example.org"),
    ("Carmen Diaz", "carmen@example.org"),
)


# -- errors --------------------------------------------------------------------------------


class ApiError(Exception):
    """Raised anywhere in a handler; answered in Impactly's error shape."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def invalid(field: str | None, message: str) -> ApiError:
    return ApiError(400, "validation_error", message, field)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


# -- value parsers (each raises a 400 naming its field) -----------------------------------

_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_RELATIVE_RE = re.compile(r"^(\d+)([hd])$")


def is_uuid(value: object) -> bool:
    return isinstance(value, str) and bool(_UUID_RE.match(value))


def parse_uuid(value: Any, field: str) -> str:
    if not is_uuid(value):
        raise invalid(field, f"{field} must be a UUID")
    return str(value).lower()


def parse_date(value: Any, field: str) -> str:
    if isinstance(value, str) and _DATE_RE.match(value):
        try:
            date.fromisoformat(value)
            return value
        except ValueError:
            pass
    raise invalid(field, f"{field} must be a date (YYYY-MM-DD)")


def parse_enum(value: Any, allowed: tuple[str, ...], field: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise invalid(field, f"{field} must be one of: {', '.join(allowed)}")
    return value


def parse_text(value: Any, field: str, *, max_len: int, blank_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise invalid(field, f"{field} must be a string")
    if not blank_ok and not value.strip():
        raise invalid(field, f"{field} must not be empty")
    if len(value) > max_len:
        raise invalid(field, f"{field} must be at most {max_len} characters")
    return value


def parse_since(text: str, now: datetime) -> datetime:
    """`since`: an ISO 8601 timestamp or a relative duration such as 24h / 7d."""
    relative = _RELATIVE_RE.match(text)
    if relative:
        amount, unit = int(relative[1]), relative[2]
        if amount < 1:
            raise invalid("since", "since must be a positive duration")
        return now - (timedelta(hours=amount) if unit == "h" else timedelta(days=amount))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise invalid(
            "since", "since must be an ISO 8601 timestamp or a duration like 24h, 7d, 30d"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _nullable(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else parse(value)


# What each task body field accepts; which fields an endpoint takes is the *_FIELDS sets.
TASK_FIELD_PARSERS: dict[str, Callable[[Any], Any]] = {
    "title": lambda v: parse_text(v, "title", max_len=TITLE_MAX),
    "description": _nullable(lambda v: parse_text(v, "description", max_len=DESCRIPTION_MAX, blank_ok=True)),
    "status": lambda v: parse_enum(v, STATUSES, "status"),
    "priority": _nullable(lambda v: parse_enum(v, PRIORITIES, "priority")),
    "assignee_id": _nullable(lambda v: parse_uuid(v, "assignee_id")),
    "due_date": _nullable(lambda v: parse_date(v, "due_date")),
    "parent_task_id": _nullable(lambda v: parse_uuid(v, "parent_task_id")),
    "project_id": lambda v: parse_uuid(v, "project_id"),
}
CREATE_FIELDS = frozenset(
    {"title", "project_id", "description", "assignee_id", "priority", "parent_task_id", "due_date"}
)
PATCH_FIELDS = frozenset(
    {"title", "description", "status", "priority", "assignee_id", "due_date", "parent_task_id"}
)


def reject_unknown(body: Mapping[str, Any], allowed: Iterable[str]) -> None:
    known = set(allowed)
    for name in body:
        if name not in known:
            raise invalid(name, f"Unknown field: {name}")


def parse_task_fields(body: Mapping[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    reject_unknown(body, allowed)
    return {name: TASK_FIELD_PARSERS[name](value) for name, value in body.items()}


# -- records --------------------------------------------------------------------------------


@dataclass
class Agent:
    """An API agent: what a key authenticates as."""

    id: str
    name: str
    token: str
    write: bool
    created_at: datetime
    requests: int = 0
    kind: str = "agent"


@dataclass
class Member:
    """A person in the workspace (acts through the web app, i.e. the in-process helpers)."""

    id: str
    name: str
    email: str
    kind: str = "user"


Actor = Agent | Member


@dataclass
class Project:
    id: str
    name: str
    color: str | None
    visibility: str
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "color": self.color,
            "visibility": self.visibility,
            "created_at": iso(self.created_at),
        }


@dataclass
class Task:
    id: str
    title: str
    description: str | None
    status: str
    priority: str | None
    assignee_id: str | None
    project_id: str
    parent_task_id: str | None
    due_date: str | None
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "status": self.status,
            "priority": self.priority,
            "assignee_id": self.assignee_id,
            "project_id": self.project_id,
            "parent_task_id": self.parent_task_id,
            "due_date": self.due_date,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


@dataclass
class Comment:
    id: str
    task_id: str
    content: str
    author_id: str
    author_name: str
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task_id": self.task_id,
            "content": self.content,
            "author_id": self.author_id,
            "author_name": self.author_name,
            "created_at": iso(self.created_at),
        }


@dataclass
class Activity:
    id: str
    type: str
    task_id: str
    comment_id: str | None
    project_id: str
    actor_id: str
    actor_type: str
    created_at: datetime
    changes: dict[str, dict[str, Any]] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "task_id": self.task_id,
            "comment_id": self.comment_id,
            "project_id": self.project_id,
            "actor_id": self.actor_id,
            "actor_type": self.actor_type,
            "created_at": iso(self.created_at),
            "changes": self.changes,
        }


@dataclass
class Subscription:
    id: str
    agent_id: str
    url: str
    events: list[str]
    secret: str
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "active": True,
            "created_at": iso(self.created_at),
        }

    def wants(self, event: str) -> bool:
        return ALL_EVENTS in self.events or event in self.events


class Listed(Protocol):
    id: str
    created_at: datetime

    def to_json(self) -> dict[str, Any]: ...


# -- pagination -----------------------------------------------------------------------------


def sort_key(item: Listed) -> tuple[str, str]:
    return (iso(item.created_at) or "", item.id)


def encode_cursor(kind: str, key: tuple[str, str]) -> str:
    raw = json.dumps([kind, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str, kind: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        cursor_kind, created_at, item_id = json.loads(raw)
        if cursor_kind == kind and isinstance(created_at, str) and isinstance(item_id, str):
            return created_at, item_id
    except (ValueError, TypeError):
        pass
    raise invalid("cursor", "Invalid cursor")


def parse_limit(text: str | None) -> int:
    if text is None or text == "":
        return DEFAULT_LIMIT
    try:
        limit = int(text)
    except ValueError:
        raise invalid("limit", f"limit must be an integer between 1 and {MAX_LIMIT}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid("limit", f"limit must be an integer between 1 and {MAX_LIMIT}")
    return limit


def paginate(items: Iterable[Listed], kind: str, params: Mapping[str, str]) -> dict[str, Any]:
    """One page of `items` in (created_at, id) order after the request's cursor (sorts them all:
    for the few projects; the big lists are kept in order and use `paginate_sorted`)."""
    parse_limit(params.get("limit"))
    return paginate_sorted(sorted(items, key=sort_key), kind, params)


def insert_sorted(items: list[Any], item: Listed) -> None:
    """Add `item` to a list kept in (created_at, id) order: an append, as the clock only goes on."""
    if items and sort_key(item) < sort_key(items[-1]):
        bisect.insort(items, item, key=sort_key)
    else:
        items.append(item)


def paginate_sorted(
    items: Sequence[Listed],
    kind: str,
    params: Mapping[str, str],
    keep: Callable[[Any], bool] | None = None,
    *,
    start: int = 0,
) -> dict[str, Any]:
    """One page of `items`, already in (created_at, id) order, after the request's cursor: the
    cursor is found by bisection and the page read from there, skipping items that `keep`
    refuses, so a page costs what it reads rather than the whole list (a walk through every
    page reads each item about once). Items before `start` are not listed (a `since` bound)."""
    limit = parse_limit(params.get("limit"))
    cursor = params.get("cursor")
    if cursor:
        start = max(start, bisect.bisect_right(items, decode_cursor(cursor, kind), key=sort_key))
    page: list[Listed] = []
    has_more = False
    for index in range(start, len(items)):
        item = items[index]
        if keep is not None and not keep(item):
            continue
        if len(page) == limit:
            has_more = True
            break
        page.append(item)
    return {
        "data": [item.to_json() for item in page],
        "next_cursor": encode_cursor(kind, sort_key(page[-1])) if has_more else None,
        "has_more": has_more,
    }


# -- webhooks ---------------------------------------------------------------------------------


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def parse_webhook_url(value: Any) -> str:
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and parts.hostname:
            return value
    raise invalid("url", "url must be an absolute http(s) URL")


def parse_events(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise invalid("events", "events must be a non-empty array")
    events: list[str] = []
    for event in value:
        if event != ALL_EVENTS and event not in EVENTS:
            raise invalid("events", f"Unknown event {event!r}; known: {', '.join(EVENTS)} or *")
        if event not in events:
            events.append(event)
    return events


# -- the fake ---------------------------------------------------------------------------------


class ImpactlyFake(fakekit.Fake):
    platform = "impactly"
    api_root = "/api/v1"

    def scope(self) -> str:
        return str(self.project_id)

    def people(self) -> dict[str, str]:
        return {"alice": self.member_id("Alice Chen"), "bob": self.member_id("Bob Okafor")}

    def __init__(self, *, token: str, seed: int | None = None) -> None:
        super().__init__(token=token, seed=seed)
        # Ids get their own generator so fault switches (which draw from self.rng) cannot shift them.
        self._id_rng = random.Random(f"impactly-ids:{seed}") if seed is not None else None
        self.project_id = DEFAULT_PROJECT_ID
        self.agents: dict[str, Agent] = {}  # by token
        self.members: dict[str, Member] = {}
        for name, email in FIXED_MEMBERS:
            member = Member(id=str(uuid.uuid5(_NAMESPACE, f"member/{email}")), name=name, email=email)
            self.members[member.id] = member
        self.add_key(token, write=True, name="Default agent")
        self._init_state()
        if seed is not None:
            self.seed_demo(seed)

    def _init_state(self) -> None:
        self.projects: dict[str, Project] = {}
        self.tasks: dict[str, Task] = {}
        self.comments: dict[str, Comment] = {}
        # (blocked task id, blocker task id); dict keeps the order relations were added in.
        self.dependencies: dict[tuple[str, str], datetime] = {}
        self.activity: list[Activity] = []
        self.subscriptions: dict[str, Subscription] = {}
        self.projects[DEFAULT_PROJECT_ID] = Project(DEFAULT_PROJECT_ID, "Default", None, "public", self.now())
        # Indexes, so that no page or one-task request scans the workspace:
        # tasks in list order, all and per project (deleted ones are skipped, then swept out);
        self._listed: list[Task] = []
        self._listed_in: dict[str, list[Task]] = {}
        self._gone = 0  # deleted tasks still in those lists
        # subtasks by parent (child id -> None, an ordered set), comments by task (list order);
        self._children: dict[str, dict[str, None]] = {}
        self._comments_of: dict[str, list[Comment]] = {}
        # dependencies from either end, in the order they were added (as `dependencies` holds them);
        self._blockers_of: dict[str, dict[str, None]] = {}
        self._dependents_of: dict[str, dict[str, None]] = {}
        # the activity feed in list order (`activity` is in order of recording: the same, as the
        # clock only goes on), per project and per actor, and each actor's usage counts.
        self._feed: list[Activity] = []
        self._activity_in: dict[str, list[Activity]] = {}
        self._activity_by: dict[str, list[Activity]] = {}
        self._usage: dict[str, Counter[str]] = {}
        self._last_action: dict[str, datetime] = {}

    # -- in-process helpers (call before start(), or through fake.call(...)) -----------------

    def add_key(self, token: str, *, write: bool = True, name: str | None = None) -> str:
        """Register an API agent's key; returns the agent's id. `write=False` makes it read-only."""
        agent_id = str(uuid.uuid5(_NAMESPACE, f"agent/{token}"))
        self.agents[token] = Agent(
            agent_id, name or f"Agent {len(self.agents) + 1}", token, write, self.now()
        )
        return agent_id

    def add_project(self, name: str, *, visibility: str = "public", color: str | None = None) -> str:
        project = Project(
            self._new_id(),
            name,
            color,
            parse_enum(visibility, ("public", "private"), "visibility"),
            self.now(),
        )
        self.projects[project.id] = project
        return project.id

    def member_id(self, name: str) -> str:
        """The id of a fixed member by name ("Alice Chen")."""
        return next(m.id for m in self.members.values() if m.name == name)

    def create_task(self, title: str, *, actor_id: str | None = None, **fields: Any) -> dict[str, Any]:
        """A person creating a task in the web app: recorded and webhooked like an API change."""
        parsed = parse_task_fields({"title": title, **fields}, CREATE_FIELDS)
        return self._create_task(parsed, self._actor(actor_id)).to_json()

    def update_task(self, task_id: str, *, actor_id: str | None = None, **fields: Any) -> dict[str, Any]:
        task = self._task(task_id)
        parsed = parse_task_fields(fields, PATCH_FIELDS)
        self._check_refs(parsed, task.project_id, task)
        return self._update_task(task, parsed, self._actor(actor_id)).to_json()

    def delete_task(self, task_id: str, *, actor_id: str | None = None) -> None:
        self._delete_task(self._task(task_id), self._actor(actor_id))

    def add_comment(self, task_id: str, content: str, *, author_id: str | None = None) -> dict[str, Any]:
        return self._add_comment(self._task(task_id), content, self._actor(author_id)).to_json()

    def seed_demo(self, seed: int) -> None:
        """A handful of realistic tasks, a subtask, a blocker and comments, the same for a seed."""
        rng = self.rng
        people = list(self.members.values())
        today = datetime.now(UTC).date()
        titles = [
            ("Draft Q3 impact report", "Summarise outcomes for the board: people reached, cost per outcome."),
            (
                "Review grant application for the Riverside food bank",
                "The foundation does not accept late submissions.",
            ),
            ("Migrate donor list to the new CRM", "Export the spreadsheet, dedupe by email, import."),
            ("Set up volunteer onboarding checklist", None),
            ("Schedule site visit with partner school", None),
            ("Update privacy notice on the website", "Legal sent the new wording on Monday."),
            ("Collect photos from the spring fundraiser", None),
        ]
        rng.shuffle(titles)
        created: list[Task] = []
        for title, description in titles[: rng.randint(5, 6)]:
            fields = {
                "title": title,
                "description": description,
                "priority": rng.choice([*PRIORITIES, None]),
                "assignee_id": rng.choice([*(p.id for p in people), None]),
                "due_date": (today + timedelta(days=rng.randint(2, 45))).isoformat(),
                "project_id": self.project_id,
            }
            created.append(self._create_task(fields, rng.choice(people)))
        subtask = {
            "title": "Collect beneficiary numbers from partners",
            "description": None,
            "priority": "medium",
            "assignee_id": rng.choice(people).id,
            "due_date": None,
            "parent_task_id": created[0].id,
        }
        created.append(self._create_task(subtask, rng.choice(people)))
        self._update_task(created[-2], {"status": "completed"}, rng.choice(people))
        self._add_dependency(created[0].id, created[1].id, self.now())
        for task, text in [
            (created[0], "First draft is in the shared folder."),
            (created[0], "Numbers from two partners are still missing."),
            (created[1], "I can take this one if nobody else has started."),
        ]:
            self._add_comment(task, text, rng.choice(people))

    # -- platform hooks ------------------------------------------------------------------------

    def now(self) -> datetime:
        """Whole milliseconds, each at least 1 ms after the last.

        fakekit's clock is strictly increasing but may advance by microseconds, and timestamps are
        printed to the millisecond: two changes could then print the same time, which would make
        `since` and the (created_at, id) order disagree with what clients see.
        """
        now = fakekit.utcnow()
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if now <= self._last_time:
            last = self._last_time + timedelta(milliseconds=1)
            now = last.replace(microsecond=last.microsecond // 1000 * 1000)
        self._last_time = now
        return now

    def error_response(self, status: int, code: str, message: str, **extra: Any) -> JSONResponse:
        body: dict[str, Any] = {"error": code, "message": message}
        body.update({k: v for k, v in extra.items() if v is not None})
        body["request_id"] = str(uuid.uuid4())
        return JSONResponse(body, status_code=status)

    def rate_limited_response(self, retry_after: int) -> Response:
        resp = self.error_response(429, "rate_limited", "Rate limit exceeded. Try again later.")
        resp.headers["Retry-After"] = str(retry_after)
        return resp

    def server_error_response(self, status: int = 500) -> Response:
        if status == 504:
            return self.error_response(504, "gateway_timeout", "The request timed out")
        return self.error_response(status, "internal_error", "Internal server error")

    def reset_state(self) -> None:
        """Forget all workspace data; keys (the harness's credentials) stay, their usage restarts."""
        self._init_state()
        for agent in self.agents.values():
            agent.requests = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "projects": [p.to_json() for p in self.projects.values()],
            "tasks": [t.to_json() for t in self.tasks.values()],
            "comments": [c.to_json() for c in self.comments.values()],
            "dependencies": [{"task_id": t, "blocker_id": b} for t, b in self.dependencies],
            "activity": [a.to_json() for a in self.activity],
            "webhooks": [
                {**s.to_json(), "agent_id": s.agent_id, "secret": s.secret}
                for s in self.subscriptions.values()
            ],
            "members": [{"id": m.id, "name": m.name, "email": m.email} for m in self.members.values()],
            "agents": [
                {"id": a.id, "name": a.name, "write": a.write, "requests": a.requests}
                for a in self.agents.values()
            ],
        }

    # -- internals: lookups ------------------------------------------------------------------

    def _new_id(self) -> str:
        if self._id_rng is None:
            return str(uuid.uuid4())
        return str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4))

    def _actor(self, actor_id: str | None) -> Actor:
        """In-process changes default to the first member: a person using the web app."""
        if actor_id is None:
            return next(iter(self.members.values()))
        actor = self._assignable(actor_id)
        if actor is None:
            raise ValueError(f"no member or agent with id {actor_id}")
        return actor

    def _assignable(self, person_id: str) -> Actor | None:
        if person_id in self.members:
            return self.members[person_id]
        return next((a for a in self.agents.values() if a.id == person_id), None)

    def _task(self, task_id: str) -> Task:
        task = self.tasks.get(task_id.lower())
        if task is None:
            raise not_found("Task")
        return task

    def _project(self, project_id: str) -> Project:
        project = self.projects.get(project_id.lower())
        if project is None:
            raise not_found("Project")
        return project

    def _authenticate(self, request: Request, *, write: bool = False) -> Agent:
        token = fakekit.bearer_token(request)
        agent = self.agents.get(token) if token else None
        if agent is None:
            raise ApiError(401, "unauthorized", "Missing or invalid API key")
        agent.requests += 1
        if write and not agent.write:
            raise ApiError(403, "forbidden", "Insufficient permissions")
        return agent

    async def _body(self, request: Request) -> dict[str, Any]:
        try:
            body = await self.json_body(request)
        except fakekit.BadBody as exc:
            raise invalid(None, str(exc)) from None
        if not isinstance(body, dict):
            raise invalid(None, "Request body must be a JSON object")
        return body

    # -- internals: changes (each records activity and sends webhooks) -------------------------

    def _check_refs(self, fields: Mapping[str, Any], project_id: str, task: Task | None) -> None:
        """Body ids must resolve; a parent must share the project and not be the task's descendant."""
        if project_id not in self.projects:
            raise invalid("project_id", "Project not found")
        assignee = fields.get("assignee_id")
        if assignee is not None and self._assignable(assignee) is None:
            raise invalid("assignee_id", "Assignee is not a member of this workspace")
        parent_id = fields.get("parent_task_id")
        if parent_id is None:
            return
        parent = self.tasks.get(parent_id)
        if parent is None:
            raise invalid("parent_task_id", "Parent task not found")
        if parent.project_id != project_id:
            raise invalid("parent_task_id", "Parent task must be in the same project")
        ancestor: Task | None = parent
        while task is not None and ancestor is not None:
            if ancestor.id == task.id:
                raise invalid("parent_task_id", "A task cannot be its own ancestor")
            ancestor = self.tasks.get(ancestor.parent_task_id or "")

    def _create_task(self, fields: dict[str, Any], actor: Actor) -> Task:
        parent = self.tasks.get(fields.get("parent_task_id") or "")
        project_id = fields.get("project_id") or (parent.project_id if parent else self.project_id)
        self._check_refs(fields, project_id, None)
        at = self.now()
        task = Task(
            id=self._new_id(),
            title=fields["title"],
            description=fields.get("description"),
            status="active",
            priority=fields.get("priority"),
            assignee_id=fields.get("assignee_id"),
            project_id=project_id,
            parent_task_id=fields.get("parent_task_id"),
            due_date=fields.get("due_date"),
            created_at=at,
            updated_at=at,
        )
        self.tasks[task.id] = task
        insert_sorted(self._listed, task)
        insert_sorted(self._listed_in.setdefault(task.project_id, []), task)
        if task.parent_task_id is not None:
            self._children.setdefault(task.parent_task_id, {})[task.id] = None
        self._record("task.created", actor, at, task)
        return task

    def _update_task(self, task: Task, fields: dict[str, Any], actor: Actor) -> Task:
        changes = {
            name: {"from": getattr(task, name), "to": value}
            for name, value in fields.items()
            if getattr(task, name) != value
        }
        completes = task.status == "active" and fields.get("status") == "completed"
        old_parent = task.parent_task_id
        for name, value in fields.items():
            setattr(task, name, value)
        if task.parent_task_id != old_parent:
            if old_parent is not None:
                self._children.get(old_parent, {}).pop(task.id, None)
            if task.parent_task_id is not None:
                self._children.setdefault(task.parent_task_id, {})[task.id] = None
        task.updated_at = at = self.now()
        self._record("task.completed" if completes else "task.updated", actor, at, task, changes=changes)
        return task

    def _delete_task(self, task: Task, actor: Actor) -> None:
        children = [self.tasks[child_id] for child_id in self._children.pop(task.id, {})]
        for child in sorted(children, key=sort_key):  # creation order, as the workspace holds them
            self._delete_task(child, actor)
        del self.tasks[task.id]
        if task.parent_task_id is not None:
            self._children.get(task.parent_task_id, {}).pop(task.id, None)
        for comment in self._comments_of.pop(task.id, []):
            del self.comments[comment.id]
        for blocker_id in list(self._blockers_of.get(task.id, ())):
            self._remove_dependency(task.id, blocker_id)
        for blocked_id in list(self._dependents_of.get(task.id, ())):
            self._remove_dependency(blocked_id, task.id)
        self._blockers_of.pop(task.id, None)
        self._dependents_of.pop(task.id, None)
        self._forget_listed()
        self._record("task.deleted", actor, self.now(), task)

    def _alive(self, task: Task) -> bool:
        return self.tasks.get(task.id) is task

    def _forget_listed(self) -> None:
        """Count one more deleted task in the list indexes; sweep them out once they are half."""
        self._gone += 1
        if 2 * self._gone <= len(self._listed):
            return
        self._listed = [t for t in self._listed if self._alive(t)]
        self._listed_in = {
            pid: kept
            for pid, tasks in self._listed_in.items()
            if (kept := [t for t in tasks if self._alive(t)])
        }
        self._gone = 0

    def _add_comment(self, task: Task, content: str, actor: Actor) -> Comment:
        at = self.now()
        comment = Comment(self._new_id(), task.id, content, actor.id, actor.name, at)
        self.comments[comment.id] = comment
        insert_sorted(self._comments_of.setdefault(task.id, []), comment)
        self._record("comment.created", actor, at, task, comment=comment)
        return comment

    def _record(
        self,
        event: str,
        actor: Actor,
        at: datetime,
        task: Task,
        *,
        comment: Comment | None = None,
        changes: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        entry = Activity(
            id=self._new_id(),
            type=event,
            task_id=task.id,
            comment_id=comment.id if comment else None,
            project_id=task.project_id,
            actor_id=actor.id,
            actor_type=actor.kind,
            created_at=at,
            changes=changes,
        )
        self.activity.append(entry)
        insert_sorted(self._feed, entry)
        insert_sorted(self._activity_in.setdefault(entry.project_id, []), entry)
        insert_sorted(self._activity_by.setdefault(entry.actor_id, []), entry)
        self._usage.setdefault(actor.id, Counter())[event] += 1
        self._last_action[actor.id] = at
        data = comment.to_json() if comment else task.to_json()
        for subscription in self.subscriptions.values():
            if subscription.wants(event):
                self._deliver(subscription, event, at, actor, data, changes)

    def _deliver(
        self,
        subscription: Subscription,
        event: str,
        at: datetime,
        actor: Actor,
        data: dict[str, Any],
        changes: dict[str, dict[str, Any]] | None,
    ) -> None:
        delivery_id = str(uuid.uuid4())
        payload: dict[str, Any] = {
            "id": delivery_id,
            "event": event,
            "created_at": iso(at),
            "actor_id": actor.id,
            "data": data,
        }
        if changes is not None:
            payload["changes"] = changes
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.webhooks.send(
            subscription.url,
            event,
            body,
            {
                "X-Impactly-Signature": sign(subscription.secret, body),
                "X-Impactly-Delivery": delivery_id,
                "X-Impactly-Timestamp": str(int(time.time())),
                "X-Impactly-Event": event,
            },
        )

    # -- internals: dependencies ---------------------------------------------------------------

    def _blockers(self, task_id: str) -> list[dict[str, Any]]:
        return [self.tasks[blocker].to_json() for blocker in self._blockers_of.get(task_id, ())]

    def _dependents(self, task_id: str) -> list[dict[str, Any]]:
        return [self.tasks[blocked].to_json() for blocked in self._dependents_of.get(task_id, ())]

    def _add_dependency(self, blocked_id: str, blocker_id: str, at: datetime) -> None:
        self.dependencies[(blocked_id, blocker_id)] = at
        self._blockers_of.setdefault(blocked_id, {})[blocker_id] = None
        self._dependents_of.setdefault(blocker_id, {})[blocked_id] = None

    def _remove_dependency(self, blocked_id: str, blocker_id: str) -> bool:
        """Drop `blocker` blocks `blocked`; False when there was no such dependency."""
        if self.dependencies.pop((blocked_id, blocker_id), None) is None:
            return False
        self._blockers_of[blocked_id].pop(blocker_id, None)
        self._dependents_of[blocker_id].pop(blocked_id, None)
        return True

    def _is_blocked_by(self, task_id: str, other_id: str) -> bool:
        """Whether `other_id` blocks `task_id`, directly or through a chain."""
        stack, seen = [task_id], set()
        while stack:
            current = stack.pop()
            for blocker in self._blockers_of.get(current, ()):
                if blocker not in seen:
                    if blocker == other_id:
                        return True
                    seen.add(blocker)
                    stack.append(blocker)
        return False

    def _link(self, blocked: Task, blocker: Task, field: str) -> bool:
        """Add `blocker` blocks `blocked`; False when it already existed."""
        if (blocked.id, blocker.id) in self.dependencies:
            return False
        if blocked.id == blocker.id:
            raise invalid(field, "A task cannot depend on itself")
        if self._is_blocked_by(blocker.id, blocked.id):
            raise invalid(field, "This dependency would create a cycle")
        self._add_dependency(blocked.id, blocker.id, self.now())
        return True

    async def _other_task(self, request: Request, field: str) -> Task:
        body = await self._body(request)
        reject_unknown(body, [field])
        if field not in body:
            raise invalid(field, f"{field} is required")
        other = self.tasks.get(parse_uuid(body[field], field))
        if other is None:
            raise invalid(field, "Task not found")
        return other

    # -- routes --------------------------------------------------------------------------------

    def routes(self, app: FastAPI) -> None:
        @app.exception_handler(ApiError)
        async def _api_error(_: Request, exc: ApiError) -> Response:
            return self.error_response(exc.status, exc.code, exc.message, field=exc.field)

        @app.exception_handler(StarletteHTTPException)
        async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
            return self.error_response(exc.status_code, code, str(exc.detail))

        self._task_routes(app)
        self._dependency_routes(app)
        self._comment_routes(app)
        self._project_routes(app)
        self._agent_routes(app)
        self._webhook_routes(app)
        self._misc_routes(app)

    def _task_routes(self, app: FastAPI) -> None:
        @app.get(f"{BASE}/tasks")
        async def list_tasks(request: Request) -> Response:
            self._authenticate(request)
            params = request.query_params
            project_id, match = self._task_filter(params)
            tasks = self._listed if project_id is None else self._listed_in.get(project_id, [])

            def keep(task: Task) -> bool:
                return self._alive(task) and (match is None or match(task))

            return JSONResponse(paginate_sorted(tasks, "tasks", params, keep))

        @app.post(f"{BASE}/tasks")
        async def create_task(request: Request) -> Response:
            agent = self._authenticate(request, write=True)
            body = await self._body(request)
            if "title" not in body:
                raise invalid("title", "title is required")
            task = self._create_task(parse_task_fields(body, CREATE_FIELDS), agent)
            return JSONResponse(task.to_json(), status_code=201)

        @app.get(f"{BASE}/tasks/{{task_id}}")
        async def get_task(request: Request, task_id: str) -> Response:
            self._authenticate(request)
            return JSONResponse(self._task(task_id).to_json())

        @app.patch(f"{BASE}/tasks/{{task_id}}")
        async def patch_task(request: Request, task_id: str) -> Response:
            agent = self._authenticate(request, write=True)
            task = self._task(task_id)
            body = await self._body(request)
            if not body:
                raise invalid(None, "No fields to update")
            fields = parse_task_fields(body, PATCH_FIELDS)
            self._check_refs(fields, task.project_id, task)
            return JSONResponse(self._update_task(task, fields, agent).to_json())

        @app.delete(f"{BASE}/tasks/{{task_id}}")
        async def delete_task(request: Request, task_id: str) -> Response:
            agent = self._authenticate(request, write=True)
            self._delete_task(self._task(task_id), agent)
            return Response(status_code=204)

    def _task_filter(self, params: Mapping[str, str]) -> tuple[str | None, Callable[[Task], bool] | None]:
        """GET /tasks filters, validated up front so a bad one is a 400 even on an empty workspace:
        the project id (answered from the per-project index) and a check of the others, if any."""
        checks: list[Callable[[Task], bool]] = []
        project_id = None
        if params.get("project_id"):
            project_id = parse_uuid(params["project_id"], "project_id")
        if params.get("status"):
            status = parse_enum(params["status"], STATUSES, "status")
            checks.append(lambda t: t.status == status)
        if params.get("priority"):
            priority = parse_enum(params["priority"], PRIORITIES, "priority")
            checks.append(lambda t: t.priority == priority)
        if params.get("assignee_id"):
            assignee = parse_uuid(params["assignee_id"], "assignee_id")
            checks.append(lambda t: t.assignee_id == assignee)
        if params.get("due_date_before"):
            before = parse_date(params["due_date_before"], "due_date_before")
            checks.append(lambda t: t.due_date is not None and t.due_date <= before)
        if params.get("due_date_after"):
            after = parse_date(params["due_date_after"], "due_date_after")
            checks.append(lambda t: t.due_date is not None and t.due_date >= after)
        if not checks:
            return project_id, None
        return project_id, lambda task: all(check(task) for check in checks)

    def _dependency_routes(self, app: FastAPI) -> None:
        # Blockers and dependents are the same relation seen from either end.
        @app.get(f"{BASE}/tasks/{{task_id}}/blockers")
        async def list_blockers(request: Request, task_id: str) -> Response:
            self._authenticate(request)
            return JSONResponse(self._blockers(self._task(task_id).id))

        @app.post(f"{BASE}/tasks/{{task_id}}/blockers")
        async def add_blocker(request: Request, task_id: str) -> Response:
            self._authenticate(request, write=True)
            task = self._task(task_id)
            created = self._link(task, await self._other_task(request, "blocker_id"), "blocker_id")
            return JSONResponse(self._blockers(task.id), status_code=201 if created else 200)

        @app.delete(f"{BASE}/tasks/{{task_id}}/blockers/{{blocker_id}}")
        async def remove_blocker(request: Request, task_id: str, blocker_id: str) -> Response:
            self._authenticate(request, write=True)
            task = self._task(task_id)
            if not self._remove_dependency(task.id, blocker_id.lower()):
                raise not_found("Blocker")
            return JSONResponse(self._blockers(task.id))

        @app.get(f"{BASE}/tasks/{{task_id}}/dependents")
        async def list_dependents(request: Request, task_id: str) -> Response:
            self._authenticate(request)
            return JSONResponse(self._dependents(self._task(task_id).id))

        @app.post(f"{BASE}/tasks/{{task_id}}/dependents")
        async def add_dependent(request: Request, task_id: str) -> Response:
            self._authenticate(request, write=True)
            task = self._task(task_id)
            created = self._link(await self._other_task(request, "dependent_id"), task, "dependent_id")
            return JSONResponse(self._dependents(task.id), status_code=201 if created else 200)

        @app.delete(f"{BASE}/tasks/{{task_id}}/dependents/{{dependent_id}}")
        async def remove_dependent(request: Request, task_id: str, dependent_id: str) -> Response:
            self._authenticate(request, write=True)
            task = self._task(task_id)
            if not self._remove_dependency(dependent_id.lower(), task.id):
                raise not_found("Dependent")
            return JSONResponse(self._dependents(task.id))

    def _comment_routes(self, app: FastAPI) -> None:
        @app.get(f"{BASE}/tasks/{{task_id}}/comments")
        async def list_comments(request: Request, task_id: str) -> Response:
            self._authenticate(request)
            task = self._task(task_id)
            comments = self._comments_of.get(task.id, [])
            return JSONResponse(paginate_sorted(comments, "comments", request.query_params))

        @app.post(f"{BASE}/tasks/{{task_id}}/comments")
        async def add_comment(request: Request, task_id: str) -> Response:
            agent = self._authenticate(request, write=True)
            task = self._task(task_id)
            body = await self._body(request)
            reject_unknown(body, ["content"])
            if "content" not in body:
                raise invalid("content", "content is required")
            content = parse_text(body["content"], "content", max_len=COMMENT_MAX)
            return JSONResponse(self._add_comment(task, content, agent).to_json(), status_code=201)

    def _project_routes(self, app: FastAPI) -> None:
        @app.get(f"{BASE}/projects")
        async def list_projects(request: Request) -> Response:
            self._authenticate(request)
            return JSONResponse(paginate(self.projects.values(), "projects", request.query_params))

        @app.get(f"{BASE}/projects/{{project_id}}")
        async def get_project(request: Request, project_id: str) -> Response:
            self._authenticate(request)
            return JSONResponse(self._project(project_id).to_json())

        @app.get(f"{BASE}/projects/{{project_id}}/tasks")
        async def list_project_tasks(request: Request, project_id: str) -> Response:
            self._authenticate(request)
            project = self._project(project_id)
            tasks = self._listed_in.get(project.id, [])
            # Cursors are interchangeable with GET /tasks: both walk tasks in the same order.
            return JSONResponse(paginate_sorted(tasks, "tasks", request.query_params, self._alive))

    def _agent_routes(self, app: FastAPI) -> None:
        @app.get(f"{BASE}/agents/me")
        async def me(request: Request) -> Response:
            agent = self._authenticate(request)
            return JSONResponse(self._profile(agent))

        @app.get(f"{BASE}/activity")
        async def activity(request: Request) -> Response:
            self._authenticate(request)
            params = request.query_params
            since = parse_since(params["since"], fakekit.utcnow()) if params.get("since") else None
            project_id = parse_uuid(params["project_id"], "project_id") if params.get("project_id") else None
            agent_id = parse_uuid(params["agent_id"], "agent_id") if params.get("agent_id") else None
            # Read the shortest index that answers a filter (the other one is checked per entry);
            # entries are in time order, so the inclusive `since` is where the list starts.
            entries = self._feed if project_id is None else self._activity_in.get(project_id, [])
            if agent_id is not None:
                by_agent = self._activity_by.get(agent_id, [])
                if project_id is None or len(by_agent) < len(entries):
                    entries = by_agent
            start = 0 if since is None else bisect.bisect_left(entries, since, key=lambda e: e.created_at)

            def keep(entry: Activity) -> bool:
                return (project_id is None or entry.project_id == project_id) and (
                    agent_id is None or entry.actor_id == agent_id
                )

            return JSONResponse(paginate_sorted(entries, "activity", params, keep, start=start))

    def _profile(self, agent: Agent) -> dict[str, Any]:
        count = self._usage.get(agent.id, Counter())
        last_action = self._last_action.get(agent.id)
        return {
            "id": agent.id,
            "name": agent.name,
            "permissions": ["read", "write"] if agent.write else ["read"],
            "created_at": iso(agent.created_at),
            "usage": {
                "requests": agent.requests,
                "tasks_created": count["task.created"],
                "tasks_updated": count["task.updated"],
                "tasks_completed": count["task.completed"],
                "tasks_deleted": count["task.deleted"],
                "comments_created": count["comment.created"],
                "last_action_at": iso(last_action),
            },
        }

    def _webhook_routes(self, app: FastAPI) -> None:
        @app.get(f"{BASE}/webhooks")
        async def list_webhooks(request: Request) -> Response:
            agent = self._authenticate(request)
            return JSONResponse(
                {"data": [s.to_json() for s in self.subscriptions.values() if s.agent_id == agent.id]}
            )

        @app.post(f"{BASE}/webhooks")
        async def create_webhook(request: Request) -> Response:
            agent = self._authenticate(request, write=True)
            body = await self._body(request)
            reject_unknown(body, ["url", "events", "secret"])
            for required in ("url", "events"):
                if required not in body:
                    raise invalid(required, f"{required} is required")
            url, events = parse_webhook_url(body["url"]), parse_events(body["events"])
            secret = body.get("secret")
            if secret is None:
                secret = "whsec_" + secrets.token_hex(24)
            else:
                secret = parse_text(secret, "secret", max_len=256)
            subscription = Subscription(self._new_id(), agent.id, url, events, secret, self.now())
            self.subscriptions[subscription.id] = subscription
            return JSONResponse({**subscription.to_json(), "secret": secret}, status_code=201)

        @app.delete(f"{BASE}/webhooks/{{webhook_id}}")
        async def delete_webhook(request: Request, webhook_id: str) -> Response:
            agent = self._authenticate(request, write=True)
            subscription = self.subscriptions.get(webhook_id.lower())
            if subscription is None or subscription.agent_id != agent.id:
                raise not_found("Webhook")
            del self.subscriptions[subscription.id]
            return Response(status_code=204)

    def _misc_routes(self, app: FastAPI) -> None:
        @app.post(f"{BASE}/search")
        async def search(request: Request) -> Response:
            self._authenticate(request)  # a read, so read-only keys may search
            body = await self._body(request)
            reject_unknown(body, ["query"])
            if "query" not in body:
                raise invalid("query", "query is required")
            terms = parse_text(body["query"], "query", max_len=QUERY_MAX).lower().split()

            def matches(text: str) -> bool:
                return all(term in text.lower() for term in terms)

            # Title hits first, each kind in list order: what a person searching by name expects.
            # A text search reads every task once (it has to), but stops at a full page of title hits.
            title_hits: list[Task] = []
            other_hits: list[Task] = []
            for task in self._listed:
                if not self._alive(task):
                    continue
                if matches(task.title):
                    title_hits.append(task)
                    if len(title_hits) == SEARCH_MAX_RESULTS:
                        break
                elif len(other_hits) < SEARCH_MAX_RESULTS and matches(
                    f"{task.title}\n{task.description or ''}"
                ):
                    other_hits.append(task)
            hits = (title_hits + other_hits)[:SEARCH_MAX_RESULTS]
            return JSONResponse({"data": [t.to_json() for t in hits]})

        @app.get(f"{BASE}/health")
        async def health(request: Request) -> Response:
            self._authenticate(request)
            return JSONResponse({"status": "ok"})
