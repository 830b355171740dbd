"""Squads fake: an in-memory Nucleus Tasks API (squad-scoped tasks behind Cloudflare Access).

Serves every endpoint of ../shared/platforms/squads.txt (the Tasks API) plus what NOTES.md adds:
config lists (`GET /api/config-lists?key=...`, `GET /api/config-lists/{key}/items`) and
`GET /api/squads`. Base `/api`; no pagination; bodies wrap (`{"tasks": [...]}`, `{"task": {...}}`).
Nucleus has no webhooks, so this fake sends none: clients poll.

The service token acts as one user, "Bridge Bot", in squad "Platform" with the constructor's role.
Fixed people (created with or without a seed) make role scoping observable:
Platform: Ada Park (manager), Ben Okafor (employee), Chloe Reyes (lead);
Growth: Dan Weiss (manager), Eve Tanaka (employee), Farah Ali (head).
With a seed, 8 demo tasks spread over both squads: an executive caller sees 8, a manager 6, an
employee or lead 2. In-process helpers for tests: `add_user`, `add_credential`, `add_squad`,
`add_config_item`, `user_id(name)`; they are safe to call while the fake is serving.

Assumed (the docs are silent; correct here when a real account shows otherwise):
- Auth: a request must carry `CF-Access-Client-Id` and `CF-Access-Client-Secret` matching a known
  service token, else 401 `{"error": "Unauthorized"}`. DEVIATION: the real Cloudflare Access edge
  answers a missing/wrong service token before the origin, with 403 and an HTML login page (or a
  302 to `<team>.cloudflareaccess.com`); a client should treat 401, 403 text/html and such a
  redirect alike as "bad credentials". `Cf-Access-Jwt-Assertion` / the `CF_Authorization` cookie
  (browser logins) are not supported.
- The constructor's `token` is "CLIENT_ID:CLIENT_SECRET", split on the first ':'.
- Errors are `{"error": "<message>"}` with 400 (validation), 401, 403, 404 (also for unknown
  routes; 405 for a wrong method); 429 `{"error": "Too many requests"}` with Retry-After;
  500/504 `{"error": "Internal server error"}`.
- "Tasks tool permission" is a per-user level: none < view < update < manage. Default by role:
  executive, head, manager -> manage; lead, employee -> update (`add_user(tasks_permission=...)`
  overrides). `none` -> 403 on every /api/tasks endpoint; reads and watch/unwatch need view;
  POST/PUT, todos, subtask creation and resource writes need update; DELETE needs manage.
  Config lists and squads need only a valid token. Checks run 401, then 403, then 404, then 400.
- Visibility (NOTES): executives and heads see all tasks; employees and leads see tasks they are
  assigned, reported, created or watch; managers also see their squad's. A task's squad is its
  assignee's squad, else its reporter's. A task outside the caller's view answers 404 on get and
  on every write (as if it did not exist). Subtasks of a visible parent (in GET /:id and
  GET /:id/subtasks) are listed without a visibility filter. `is_private` is stored only.
- Task rows are `t.*` plus joins (the `is_private: 0` integers suggest raw SQLite rows): besides
  the documented list shape, each task carries every documented updatable column (sprint_id,
  reported_by_contact_id, requirements, scope, estimate_compute_hours, estimate_total_cost,
  approved_by_user_id, approved_at, delivery_notes, testing_notes) and `created_by`,
  `created_at`, `updated_at` (the docs sort by created_at and say PUT sets updated_at, so the
  columns exist). Timestamps are ISO 8601 UTC with milliseconds and a Z.
- Only PUT /api/tasks/:id bumps updated_at (as documented); todos, resources and watchers do not.
- Ids (tasks, users, squads, config items, todos, resources) are opaque UUID strings.
  Booleans in responses are 0/1 integers (is_private, is_done, is_default, is_system).
- Create: reporter_id and created_by are the caller; only status defaults (to the list's default
  item, "To Do"); priority_id and type_id stay null when omitted. Body fields outside the
  documented create body are ignored. Subtask create takes only title, assignee_id, due_date.
- Validation: title a non-empty string; status/priority/type ids must be items of their own list;
  assignee_id and approved_by_user_id known users; parent_task_id a visible task, not itself nor
  a descendant; due_date/start_date YYYY-MM-DD; numbers are JSON numbers; is_private a JSON
  boolean; other text fields strings. Nullable fields accept null on PUT (clears them). Unknown
  PUT fields are ignored; a PUT with no known field is 400.
- Phases, sprints and roadmap items are not modelled: their ids are free strings and
  phase_label/phase_color are null. No SLA is assigned. agent_task_meta, history events and
  notifications are recorded in the state snapshot only.
- List filters: comma-separated values match exactly; squad names match exactly (unknown names
  match nothing); show_subtasks=false applies only when parent_id is absent; due=today is
  due_date == today (UTC), upcoming is today..today+7 days, overdue is before today and not done
  or cancelled (overdue=true means the same when due is absent); an unknown `due` value is 400;
  search is a case-insensitive substring of title or description. Sorting: sort_order, then
  due_date ascending with nulls first (SQLite), then created_at descending.
- Duplicate copies every column except id, title (+ " (copy)"), status (default), reporter and
  creator (the caller) and timestamps; todos, watchers and resources are not copied.
- DELETE cascades to subtasks, todos, watchers and resources. DELETE /:id/watch never 404s.
- PUT /:id/todos validates the whole list before changing anything; an id not yet on the task
  creates a todo with that id; an id of another task's todo, or twice in the list, is 400.
  position defaults to the item's index.
- Resources: new ones go last (sort_order = max + 1); DELETE of a resource not on the task is
  404; reorder with an id not on the task is 400. Icons by domain: figma, github, google-docs,
  google-drive, slack, notion, linear, loom, youtube, else link.
- /_fake/reset restores squads, users, credentials and config lists as constructed and forgets
  every task (no re-seed).
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import date, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from connectors import fakekit

T = TypeVar("T")
Row = dict[str, Any]
Predicate = Callable[[Row], bool]

ROLES = ("executive", "head", "manager", "lead", "employee")
SEES_ALL_ROLES = frozenset({"executive", "head"})
PERMISSION_LEVELS = {"none": 0, "view": 1, "update": 2, "manage": 3}
DEFAULT_PERMISSION = {
    "executive": "manage",
    "head": "manage",
    "manager": "manage",
    "lead": "update",
    "employee": "update",
}

CALLER_NAME = "Bridge Bot"
DEFAULT_SQUAD = "Platform"
SQUAD_NAMES = ("Platform", "Growth")
PEOPLE = (  # name, squad, role, picture
    ("Ada Park", "Platform", "manager", "https://avatars.example.com/ada.png"),
    ("Ben Okafor", "Platform", "employee", None),
    ("Chloe Reyes", "Platform", "lead", "https://avatars.example.com/chloe.png"),
    ("Dan Weiss", "Growth", "manager", None),
    ("Eve Tanaka", "Growth", "employee", "https://avatars.example.com/eve.png"),
    ("Farah Ali", "Growth", "head", None),
)

# key -> (list name, items as (value, label, color, icon, is_default))
CONFIG_LISTS: dict[str, tuple[str, tuple[tuple[str, str, str, str, bool], ...]]] = {
    "task_status": (
        "Task Status",
        (
            ("backlog", "Backlog", "#94a3b8", "circle-dashed", False),
            ("todo", "To Do", "#64748b", "circle", True),
            ("in_progress", "In Progress", "#3b82f6", "circle-dot", False),
            ("in_review", "In Review", "#a855f7", "eye", False),
            ("blocked", "Blocked", "#ef4444", "octagon-x", False),
            ("done", "Done", "#22c55e", "circle-check", False),
            ("cancelled", "Cancelled", "#6b7280", "circle-x", False),
        ),
    ),
    "task_priority": (
        "Task Priority",
        (
            ("low", "Low", "#22c55e", "arrow-down", False),
            ("medium", "Medium", "#eab308", "minus", True),
            ("high", "High", "#f97316", "arrow-up", False),
            ("urgent", "Urgent", "#ef4444", "alert-triangle", False),
        ),
    ),
    "task_type": (
        "Task Type",
        (
            ("task", "Task", "#64748b", "check-square", True),
            ("bug", "Bug", "#ef4444", "bug", False),
            ("feature", "Feature", "#3b82f6", "sparkles", False),
            ("agent_task", "Agent Task", "#a855f7", "bot", False),
        ),
    ),
}
CLOSED_STATUS_VALUES = frozenset({"done", "cancelled"})

# The documented list shape's own columns, in the documented order.
TASK_COLUMNS = (
    "id",
    "title",
    "description",
    "resource_type",
    "resource_id",
    "status_id",
    "priority_id",
    "type_id",
    "phase_id",
    "assignee_id",
    "reporter_id",
    "parent_task_id",
    "roadmap_item_id",
    "due_date",
    "start_date",
    "estimated_hours",
    "internal_hours",
    "is_private",
    "sort_order",
)
# Columns the docs imply exist (updatable, sorted on, or joined from) but the list shape omits.
EXTRA_COLUMNS = (
    "created_by",
    "sprint_id",
    "reported_by_contact_id",
    "requirements",
    "scope",
    "estimate_compute_hours",
    "estimate_total_cost",
    "approved_by_user_id",
    "approved_at",
    "delivery_notes",
    "testing_notes",
    "created_at",
    "updated_at",
)

# Field kinds drive validation: each kind has one checker in SquadsFake._clean.
TITLE, TEXT, DATE, NUMBER, BOOL, USER, PARENT = "title", "text", "date", "number", "bool", "user", "parent"
CONFIG_FIELDS = {"status_id": "task_status", "priority_id": "task_priority", "type_id": "task_type"}
UPDATABLE: dict[str, str] = {
    "title": TITLE,
    "description": TEXT,
    "resource_type": TEXT,
    "resource_id": TEXT,
    "type_id": "task_type",
    "status_id": "task_status",
    "priority_id": "task_priority",
    "assignee_id": USER,
    "parent_task_id": PARENT,
    "sprint_id": TEXT,
    "roadmap_item_id": TEXT,
    "phase_id": TEXT,
    "due_date": DATE,
    "start_date": DATE,
    "estimated_hours": NUMBER,
    "internal_hours": NUMBER,
    "is_private": BOOL,
    "sort_order": NUMBER,
    "reported_by_contact_id": TEXT,
    "requirements": TEXT,
    "scope": TEXT,
    "estimate_compute_hours": NUMBER,
    "estimate_total_cost": NUMBER,
    "approved_by_user_id": USER,
    "approved_at": TEXT,
    "delivery_notes": TEXT,
    "testing_notes": TEXT,
}
CREATABLE = {
    name: UPDATABLE[name]
    for name in (
        "title",
        "description",
        "resource_type",
        "resource_id",
        "type_id",
        "status_id",
        "priority_id",
        "assignee_id",
        "parent_task_id",
        "due_date",
        "start_date",
        "estimated_hours",
        "internal_hours",
        "is_private",
        "reported_by_contact_id",
    )
}
SUBTASK_CREATABLE = {name: UPDATABLE[name] for name in ("title", "assignee_id", "due_date")}
NOT_COPIED = frozenset({"id", "title", "status_id", "reporter_id", "created_by", "created_at", "updated_at"})

ICON_DOMAINS = (
    ("figma.com", "figma"),
    ("github.com", "github"),
    ("docs.google.com", "google-docs"),
    ("drive.google.com", "google-drive"),
    ("slack.com", "slack"),
    ("notion.so", "notion"),
    ("notion.site", "notion"),
    ("linear.app", "linear"),
    ("loom.com", "loom"),
    ("youtube.com", "youtube"),
    ("youtu.be", "youtube"),
)
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ApiError(Exception):
    """An error answered in the platform's shape: `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def split_token(token: str) -> tuple[str, str]:
    """'CLIENT_ID:CLIENT_SECRET' -> (client id, client secret), split on the first ':'."""
    client_id, sep, secret = token.partition(":")
    if not sep or not client_id or not secret:
        raise ValueError("squads token must be 'CLIENT_ID:CLIENT_SECRET'")
    return client_id, secret


def icon_for(url: str) -> str:
    host = (urlsplit(url).hostname or "").lower()
    for domain, icon in ICON_DOMAINS:
        if host == domain or host.endswith("." + domain):
            return icon
    return "link"


def _csv(value: str | None) -> set[str]:
    return {part.strip() for part in (value or "").split(",") if part.strip()}


def _nulls_first(value: Any) -> tuple[int, Any]:
    """A sort key that puts None first, as SQLite's ORDER BY ... ASC does."""
    return (0, 0) if value is None else (1, value)


def _bool_int(value: bool) -> int:
    return 1 if value else 0


class SquadsFake(fakekit.Fake):
    platform = "squads"
    api_root = "/api"
    demo_credential = "demo-client-id:demo-client-secret"

    def scope(self) -> str:
        return str(self.default_squad)

    def people(self) -> dict[str, str]:
        return {"alice": self.user_id("Ada Park"), "bob": self.user_id("Ben Okafor")}

    def connector_config(self) -> dict[str, Any]:
        client_id, _, secret = self.token.partition(":")
        return {
            "platform": self.platform,
            "base_url": self.url + self.api_root,
            "client_id": client_id,
            "client_secret": secret,
        }

    def __init__(self, *, token: str, seed: int | None = None, role: str = "executive") -> None:
        super().__init__(token=token, seed=seed)
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        self.role = role
        self.default_squad = DEFAULT_SQUAD
        self.squads: dict[str, Row] = {}
        self.users: dict[str, Row] = {}
        self.credentials: dict[str, tuple[str, str]] = {}  # client id -> (secret, user id)
        self.config_lists: dict[str, Row] = {}  # key -> {id, key, name}
        self.config_items: dict[str, Row] = {}
        for name in SQUAD_NAMES:
            self._add_squad(name)
        self.caller_id = self._add_user(CALLER_NAME, squad=DEFAULT_SQUAD, role=role)
        self._add_credential(token, user_id=self.caller_id)
        for name, squad, person_role, picture in PEOPLE:
            self._add_user(name, squad=squad, role=person_role, picture=picture)
        for key, (list_name, items) in CONFIG_LISTS.items():
            list_id = self._new_id()
            self.config_lists[key] = {"id": list_id, "key": key, "name": list_name}
            for value, label, color, icon, is_default in items:
                self._add_config_item(
                    key, value, label, color=color, icon=icon, is_default=is_default, is_system=True
                )
        self._initial = copy.deepcopy(self._fixed_state())
        self._forget_tasks()
        if seed is not None:
            self.seed_demo()

    # -- fixed containers and in-process helpers ---------------------------------------------

    def _fixed_state(self) -> dict[str, Any]:
        return {
            "squads": self.squads,
            "users": self.users,
            "credentials": self.credentials,
            "config_lists": self.config_lists,
            "config_items": self.config_items,
        }

    def _forget_tasks(self) -> None:
        self.tasks: dict[str, Row] = {}
        self.todos: dict[str, Row] = {}
        self.watchers: dict[str, list[str]] = {}  # task id -> user ids, in order of watching
        self.resources: dict[str, Row] = {}
        self.history: list[Row] = []
        self.notifications: list[Row] = []
        self.agent_task_meta: dict[str, str] = {}  # task id -> created_at
        # Indexes, so that rendering or changing one task never scans them all: each task's
        # creation number (`tasks` holds them in that order), and per task its subtasks, todos
        # and resources (id -> None: ordered sets, in the order `tasks`/`todos`/`resources` hold
        # them, which is what ties in their sorts fall back on).
        self._created: dict[str, int] = {}
        self._creations = 0
        self._subtasks_of: dict[str, dict[str, None]] = {}
        self._todos_of: dict[str, dict[str, None]] = {}
        self._resources_of: dict[str, dict[str, None]] = {}

    def reset_state(self) -> None:
        initial = copy.deepcopy(self._initial)
        self.squads = initial["squads"]
        self.users = initial["users"]
        self.credentials = initial["credentials"]
        self.config_lists = initial["config_lists"]
        self.config_items = initial["config_items"]
        self._forget_tasks()

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Run a helper's state change on the serving loop, so it never races a request."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return fn()
        try:
            if asyncio.get_running_loop() is loop:
                return fn()
        except RuntimeError:
            pass
        return self.call(fn)

    def add_squad(self, name: str) -> str:
        """Add a squad; returns its id."""
        return self._on_loop(lambda: self._add_squad(name))

    def add_user(
        self,
        name: str,
        *,
        squad: str | None = None,
        role: str = "employee",
        picture: str | None = None,
        tasks_permission: str | None = None,
    ) -> str:
        """Add a person (squad by name, default the caller's); returns the user id."""
        return self._on_loop(
            lambda: self._add_user(
                name,
                squad=squad or self.default_squad,
                role=role,
                picture=picture,
                tasks_permission=tasks_permission,
            )
        )

    def add_credential(self, token: str, *, user_id: str) -> None:
        """Let service token 'CLIENT_ID:CLIENT_SECRET' act as `user_id` (with that user's role)."""
        self._on_loop(lambda: self._add_credential(token, user_id=user_id))

    def add_config_item(
        self, key: str, value: str, label: str, *, color: str | None = None, icon: str | None = None
    ) -> Row:
        """Append an item to config list `key` (as an admin would); returns a copy of the item."""
        return self._on_loop(lambda: dict(self._add_config_item(key, value, label, color=color, icon=icon)))

    def user_id(self, name: str) -> str:
        for user in self.users.values():
            if user["name"] == name:
                return str(user["id"])
        raise KeyError(name)

    def item_id(self, key: str, value: str) -> str:
        """The id of config list `key`'s item with `value` (e.g. item_id("task_status", "done"))."""
        for item in self._items_of(key):
            if item["value"] == value:
                return str(item["id"])
        raise KeyError(f"{key}:{value}")

    def _add_squad(self, name: str) -> str:
        if any(s["name"] == name for s in self.squads.values()):
            raise ValueError(f"squad {name!r} exists")
        squad_id = self._new_id()
        self.squads[squad_id] = {"id": squad_id, "name": name}
        return squad_id

    def _add_user(
        self,
        name: str,
        *,
        squad: str | None,
        role: str,
        picture: str | None = None,
        tasks_permission: str | None = None,
    ) -> str:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        permission = tasks_permission or DEFAULT_PERMISSION[role]
        if permission not in PERMISSION_LEVELS:
            raise ValueError(f"tasks_permission must be one of {', '.join(PERMISSION_LEVELS)}")
        squad_id = None
        if squad is not None:
            squad_id = next((s["id"] for s in self.squads.values() if s["name"] == squad), None)
            if squad_id is None:
                raise ValueError(f"unknown squad {squad!r}")
        user_id = self._new_id()
        self.users[user_id] = {
            "id": user_id,
            "name": name,
            "picture": picture,
            "squad_id": squad_id,
            "role": role,
            "tasks_permission": permission,
        }
        return user_id

    def _add_credential(self, token: str, *, user_id: str) -> None:
        if user_id not in self.users:
            raise ValueError(f"unknown user {user_id!r}")
        client_id, secret = split_token(token)
        self.credentials[client_id] = (secret, user_id)

    def _add_config_item(
        self,
        key: str,
        value: str,
        label: str,
        *,
        color: str | None,
        icon: str | None,
        is_default: bool = False,
        is_system: bool = False,
    ) -> Row:
        if key not in self.config_lists:
            raise ValueError(f"unknown config list {key!r}")
        item_id = self._new_id()
        item = {
            "id": item_id,
            "list_id": self.config_lists[key]["id"],
            "label": label,
            "value": value,
            "color": color,
            "icon": icon,
            "is_default": _bool_int(is_default),
            "is_system": _bool_int(is_system),
            "position": len(self._items_of(key)),
        }
        self.config_items[item_id] = item
        return item

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def today(self) -> date:
        return fakekit.utcnow().date()

    # -- demo data ---------------------------------------------------------------------------

    def seed_demo(self) -> None:
        """8 tasks over both squads; subtask, todos, a watch and resources included."""
        today = self.today()
        demo = (  # title, description, assignee, reporter, status, priority, type, due in days
            (
                "Migrate CI runners to ARM",
                "Move the build fleet to ARM runners; keep x86 for legacy images.",
                "Ben Okafor",
                "Ada Park",
                "in_progress",
                "high",
                "task",
                5,
            ),
            ("Benchmark ARM build times", None, "Ben Okafor", "Ada Park", "todo", "medium", "task", 2),
            (
                "Fix flaky login test",
                "test_login_redirect fails about one run in twenty on CI.",
                "Chloe Reyes",
                "Ben Okafor",
                "todo",
                "urgent",
                "bug",
                0,
            ),
            ("Rotate database credentials", None, "Ada Park", "Ada Park", "backlog", "high", "task", -3),
            (
                "Sync roadmap with Growth",
                "Agree next quarter's dependencies between Platform and Growth.",
                CALLER_NAME,
                "Dan Weiss",
                "todo",
                "medium",
                "task",
                10,
            ),
            (
                "Launch referral programme landing page",
                "Hero, referral form and tracking pixels.",
                "Eve Tanaka",
                "Dan Weiss",
                "in_review",
                "high",
                "feature",
                1,
            ),
            (
                "Email onboarding A/B test",
                "Three-mail sequence against the current single mail.",
                "Dan Weiss",
                "Farah Ali",
                "blocked",
                "medium",
                "feature",
                None,
            ),
            ("Quarterly pricing review", None, None, "Farah Ali", "done", "low", "task", -10),
        )
        ids: list[str] = []
        for title, description, assignee, reporter, status, priority, type_, due_in in demo:
            fields: Row = {
                "title": title,
                "description": description,
                "assignee_id": self.user_id(assignee) if assignee else None,
                "status_id": self.item_id("task_status", status),
                "priority_id": self.item_id("task_priority", priority),
                "type_id": self.item_id("task_type", type_),
                "due_date": (today + timedelta(days=due_in)).isoformat() if due_in is not None else None,
                "estimated_hours": float(self.rng.choice((2, 4, 6, 8, 12, 16))),
            }
            ids.append(self._insert_task(self.users[self.user_id(reporter)], fields)["id"])
        self._set_parent(self.tasks[ids[1]], ids[0])
        ben = self.user_id("Ben Okafor")
        for position, (title, done, assignee) in enumerate(
            (("Provision runner pool", True, None), ("Port the build cache", False, ben))
        ):
            todo_id = self._new_id()
            self.todos[todo_id] = {
                "id": todo_id,
                "task_id": ids[0],
                "title": title,
                "is_done": _bool_int(done),
                "position": position,
                "assignee_id": assignee,
                "due_date": None,
            }
            self._todos_of.setdefault(ids[0], {})[todo_id] = None
        self.watchers[ids[5]] = [self.caller_id]  # makes a Growth task visible to the caller
        self._insert_resource(
            ids[0],
            self.users[self.user_id("Ada Park")],
            "https://github.com/example/infra/pull/412",
            "Runner migration PR",
            None,
        )
        self._insert_resource(
            ids[5],
            self.users[self.user_id("Dan Weiss")],
            "https://www.figma.com/file/abc123/Referral",
            "Landing page design",
            None,
        )

    # -- platform hooks ----------------------------------------------------------------------

    def error_response(self, status: int, code: str, message: str, **extra: Any) -> JSONResponse:
        # Nucleus answers {"error": "<message>"}; the generic code has no place in that shape.
        return JSONResponse({"error": message}, status_code=status)

    def rate_limited_response(self, retry_after: int) -> Response:
        resp = JSONResponse({"error": "Too many requests"}, status_code=429)
        resp.headers["Retry-After"] = str(retry_after)
        return resp

    def server_error_response(self, status: int = 500) -> Response:
        return JSONResponse({"error": "Internal server error"}, status_code=status)

    def snapshot(self) -> dict[str, Any]:
        return {
            "squads": list(self.squads.values()),
            "users": list(self.users.values()),
            "credentials": [{"client_id": cid, "user_id": uid} for cid, (_, uid) in self.credentials.items()],
            "config_lists": [self._render_list(key) for key in self.config_lists],
            "tasks": list(self.tasks.values()),
            "todos": list(self.todos.values()),
            "watchers": self.watchers,
            "resources": list(self.resources.values()),
            "history": self.history,
            "notifications": self.notifications,
            "agent_task_meta": self.agent_task_meta,
        }

    # -- auth, permission, visibility --------------------------------------------------------

    def _caller(self, request: Request) -> Row:
        client_id = request.headers.get("cf-access-client-id", "")
        secret = request.headers.get("cf-access-client-secret", "")
        known = self.credentials.get(client_id)
        # bytes, because compare_digest refuses non-ASCII str (a header may carry any latin-1)
        if known is None or not secret or not hmac.compare_digest(known[0].encode(), secret.encode()):
            raise ApiError(401, "Unauthorized")
        return self.users[known[1]]

    def _tasks_caller(self, request: Request, needed: str) -> Row:
        user = self._caller(request)
        if PERMISSION_LEVELS[user["tasks_permission"]] < PERMISSION_LEVELS[needed]:
            raise ApiError(403, f"Forbidden: tasks {needed} permission required")
        return user

    def _task_squad_id(self, task: Row) -> str | None:
        owner = task["assignee_id"] or task["reporter_id"]
        user = self.users.get(owner) if owner else None
        return user["squad_id"] if user else None

    def _visible(self, user: Row, task: Row) -> bool:
        if user["role"] in SEES_ALL_ROLES:
            return True
        uid = user["id"]
        if uid in (task["assignee_id"], task["reporter_id"], task["created_by"]):
            return True
        if uid in self.watchers.get(task["id"], ()):
            return True
        return (
            user["role"] == "manager"
            and user["squad_id"] is not None
            and self._task_squad_id(task) == user["squad_id"]
        )

    def _visible_task(self, user: Row, task_id: str) -> Row:
        task = self.tasks.get(task_id)
        if task is None or not self._visible(user, task):
            raise ApiError(404, "Task not found")
        return task

    # -- validation --------------------------------------------------------------------------

    async def _object_body(self, request: Request) -> Row:
        body = await self.json_body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object")
        return body

    def _validated(
        self, body: Mapping[str, Any], allowed: Mapping[str, str], user: Row, task: Row | None = None
    ) -> Row:
        """The allowed fields present in `body`, checked and converted to stored values."""
        return {
            name: self._clean(name, kind, body[name], user, task)
            for name, kind in allowed.items()
            if name in body
        }

    def _clean(self, name: str, kind: str, value: Any, user: Row, task: Row | None) -> Any:
        if kind == TITLE:
            if not isinstance(value, str) or not value.strip():
                raise ApiError(400, "Title is required")
            return value.strip()
        if value is None:
            return None
        if kind == TEXT:
            if not isinstance(value, str):
                raise ApiError(400, f"{name} must be a string")
            return value
        if kind == DATE:
            return self._clean_date(name, value)
        if kind == NUMBER:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ApiError(400, f"{name} must be a number")
            return value
        if kind == BOOL:
            if not isinstance(value, bool):
                raise ApiError(400, f"{name} must be a boolean")
            return _bool_int(value)
        if kind == USER:
            if not isinstance(value, str) or value not in self.users:
                raise ApiError(400, f"Invalid {name}: user not found")
            return value
        if kind == PARENT:
            return self._clean_parent(value, user, task)
        # a config list key: the id must be an item of that very list
        list_row = self.config_lists[kind]
        item = self.config_items.get(value) if isinstance(value, str) else None
        if item is None or item["list_id"] != list_row["id"]:
            raise ApiError(400, f"Invalid {name}: not an item of {kind}")
        return value

    @staticmethod
    def _clean_date(name: str, value: Any) -> str:
        if isinstance(value, str) and DATE_RE.match(value):
            try:
                return date.fromisoformat(value).isoformat()
            except ValueError:
                pass
        raise ApiError(400, f"{name} must be a date (YYYY-MM-DD)")

    def _clean_parent(self, value: Any, user: Row, task: Row | None) -> str:
        parent = self.tasks.get(value) if isinstance(value, str) else None
        if parent is None or not self._visible(user, parent):
            raise ApiError(400, "Invalid parent_task_id: task not found")
        if task is not None:
            ancestor: Row | None = parent
            while ancestor is not None:  # refuse cycles: the new parent may not descend from the task
                if ancestor["id"] == task["id"]:
                    raise ApiError(400, "Invalid parent_task_id: a task cannot be its own ancestor")
                ancestor = self.tasks.get(ancestor["parent_task_id"] or "")
        return str(value)

    # -- state changes -----------------------------------------------------------------------

    def _default_item_id(self, key: str) -> str | None:
        return next((item["id"] for item in self._items_of(key) if item["is_default"]), None)

    def _insert_task(self, user: Row, fields: Row) -> Row:
        now = fakekit.iso(self.now())
        task: Row = dict.fromkeys(TASK_COLUMNS + EXTRA_COLUMNS)
        task.update(
            id=self._new_id(),
            is_private=0,
            reporter_id=user["id"],
            created_by=user["id"],
            created_at=now,
            updated_at=now,
        )
        task.update(fields)
        if task["status_id"] is None:
            task["status_id"] = self._default_item_id("task_status")
        self.tasks[task["id"]] = task
        self._created[task["id"]] = self._creations
        self._creations += 1
        if task["parent_task_id"] is not None:
            self._subtasks_of.setdefault(task["parent_task_id"], {})[task["id"]] = None
        self._log(task["id"], user, "created")
        self._notify_assigned("task_assigned", task["id"], task["assignee_id"], user)
        self._ensure_agent_meta(task)
        return task

    def _set_parent(self, task: Row, parent_id: str | None) -> None:
        """Change a task's parent, keeping the subtask index in step."""
        old = task["parent_task_id"]
        task["parent_task_id"] = parent_id
        if old != parent_id:
            if old is not None:
                self._subtasks_of.get(old, {}).pop(task["id"], None)
            if parent_id is not None:
                self._subtasks_of.setdefault(parent_id, {})[task["id"]] = None

    def _update_task(self, user: Row, task: Row, changes: Row) -> None:
        before = dict(task)
        task.update(changes)
        task["parent_task_id"] = before["parent_task_id"]
        self._set_parent(task, changes.get("parent_task_id", before["parent_task_id"]))
        task["updated_at"] = fakekit.iso(self.now())
        if task["status_id"] != before["status_id"]:
            self._log(task["id"], user, "status_changed", old=before["status_id"], new=task["status_id"])
        if task["assignee_id"] != before["assignee_id"]:
            self._log(task["id"], user, "assigned", old=before["assignee_id"], new=task["assignee_id"])
            self._notify_assigned("task_assigned", task["id"], task["assignee_id"], user)
        self._ensure_agent_meta(task)

    def _delete_task(self, task_id: str) -> None:
        for child in sorted(self._subtasks_of.pop(task_id, {}), key=self._created.__getitem__):
            self._delete_task(child)
        task = self.tasks.pop(task_id)
        del self._created[task_id]
        if task["parent_task_id"] is not None:
            self._subtasks_of.get(task["parent_task_id"], {}).pop(task_id, None)
        self.watchers.pop(task_id, None)
        self.agent_task_meta.pop(task_id, None)
        for todo_id in self._todos_of.pop(task_id, {}):
            del self.todos[todo_id]
        for resource_id in self._resources_of.pop(task_id, {}):
            del self.resources[resource_id]

    def _log(self, task_id: str, user: Row, event: str, **detail: Any) -> None:
        self.history.append(
            {
                "task_id": task_id,
                "event": event,
                "user_id": user["id"],
                "created_at": fakekit.iso(self.now()),
                **detail,
            }
        )

    def _notify_assigned(self, kind: str, task_id: str, assignee_id: str | None, actor: Row) -> None:
        if assignee_id and assignee_id != actor["id"]:
            self.notifications.append(
                {
                    "type": kind,
                    "user_id": assignee_id,
                    "task_id": task_id,
                    "actor_id": actor["id"],
                    "created_at": fakekit.iso(self.now()),
                }
            )

    def _ensure_agent_meta(self, task: Row) -> None:
        type_item = self.config_items.get(task["type_id"] or "")
        if type_item and type_item["value"] == "agent_task" and task["id"] not in self.agent_task_meta:
            self.agent_task_meta[task["id"]] = fakekit.iso(self.now()) or ""

    def _replace_todos(self, user: Row, task: Row, items: Any) -> None:
        if not isinstance(items, list):
            raise ApiError(400, "todos must be an array")
        cleaned = [self._clean_todo(index, item, task["id"]) for index, item in enumerate(items)]
        ids = [todo["id"] for todo in cleaned if todo["id"] is not None]
        if len(ids) != len(set(ids)):
            raise ApiError(400, "Duplicate todo id")
        own = self._todos_of.setdefault(task["id"], {})
        old = {tid: self.todos[tid] for tid in own}
        for todo_id in old.keys() - set(ids):
            del self.todos[todo_id]
            del own[todo_id]
        for todo in cleaned:
            todo["id"] = todo["id"] or self._new_id()
            previous = old.get(todo["id"])
            self.todos[todo["id"]] = todo
            own[todo["id"]] = None
            if previous is None or previous["assignee_id"] != todo["assignee_id"]:
                self._notify_assigned("todo_assigned", task["id"], todo["assignee_id"], user)

    def _clean_todo(self, index: int, item: Any, task_id: str) -> Row:
        where = f"todos[{index}]"
        if not isinstance(item, dict):
            raise ApiError(400, f"{where} must be an object")
        todo_id = item.get("id")
        if todo_id is not None:
            if not isinstance(todo_id, str) or not todo_id:
                raise ApiError(400, f"{where}.id must be a string")
            other = self.todos.get(todo_id)
            if other is not None and other["task_id"] != task_id:
                raise ApiError(400, f"{where}.id belongs to another task")
        title = item.get("title")
        if not isinstance(title, str) or not title.strip():
            raise ApiError(400, f"{where}.title is required")
        is_done = item.get("is_done", False)
        if not isinstance(is_done, bool):
            raise ApiError(400, f"{where}.is_done must be a boolean")
        position = item.get("position", index)
        if isinstance(position, bool) or not isinstance(position, int):
            raise ApiError(400, f"{where}.position must be an integer")
        assignee = item.get("assignee_id")
        if assignee is not None and (not isinstance(assignee, str) or assignee not in self.users):
            raise ApiError(400, f"Invalid {where}.assignee_id: user not found")
        due = item.get("due_date")
        return {
            "id": todo_id,
            "task_id": task_id,
            "title": title.strip(),
            "is_done": _bool_int(is_done),
            "position": position,
            "assignee_id": assignee,
            "due_date": None if due is None else self._clean_date(f"{where}.due_date", due),
        }

    def _task_resources(self, task_id: str) -> list[Row]:
        rows = [self.resources[rid] for rid in self._resources_of.get(task_id, ())]
        return sorted(rows, key=lambda r: (_nulls_first(r["sort_order"]), r["created_at"]))

    def _insert_resource(self, task_id: str, user: Row, url: str, title: str, description: str | None) -> Row:
        orders = [r["sort_order"] for r in self._task_resources(task_id) if r["sort_order"] is not None]
        resource_id = self._new_id()
        row = {
            "id": resource_id,
            "task_id": task_id,
            "type": "link",
            "url": url,
            "title": title,
            "description": description,
            "icon": icon_for(url),
            "sort_order": max(orders, default=-1) + 1,
            "created_by": user["id"],
            "created_at": fakekit.iso(self.now()),
        }
        self.resources[resource_id] = row
        self._resources_of.setdefault(task_id, {})[resource_id] = None
        return row

    # -- rendering ---------------------------------------------------------------------------

    def _items_of(self, key: str) -> list[Row]:
        list_id = self.config_lists[key]["id"]
        return sorted(
            (i for i in self.config_items.values() if i["list_id"] == list_id), key=lambda i: i["position"]
        )

    def _render_list(self, key: str) -> Row:
        return {**self.config_lists[key], "items": self._items_of(key)}

    def _user_field(self, user_id: str | None, field: str) -> Any:
        user = self.users.get(user_id) if user_id else None
        return user[field] if user else None

    def _item_field(self, item_id: str | None, field: str) -> Any:
        item = self.config_items.get(item_id) if item_id else None
        return item[field] if item else None

    def _subtasks(self, task_id: str) -> list[Row]:
        """A task's subtasks in the order `tasks` holds them (creation order)."""
        return [
            self.tasks[i] for i in sorted(self._subtasks_of.get(task_id, ()), key=self._created.__getitem__)
        ]

    def _children(self, task_id: str) -> list[Row]:
        return sorted(self._subtasks(task_id), key=lambda t: (_nulls_first(t["sort_order"]), t["created_at"]))

    def _render_tasks(self, rows: Iterable[Row]) -> list[Row]:
        """Tasks as the API renders them. Subtask and todo counts come from the per-task indexes,
        so a listing costs O(n) like the real platform's one query and one task O(1) (a scan per
        row made a 10,000-task listing take 15 s; a tally per call, every create and get O(n))."""
        return [
            self._row(
                t,
                len(self._subtasks_of.get(t["id"], ())),
                [self.todos[i] for i in self._todos_of.get(t["id"], ())],
            )
            for t in rows
        ]

    def _render_task(self, task: Row) -> Row:
        return self._render_tasks([task])[0]

    def _row(self, task: Row, subtask_count: int, todos: list[Row]) -> Row:
        status, priority, type_ = task["status_id"], task["priority_id"], task["type_id"]
        return {
            **{column: task[column] for column in TASK_COLUMNS},
            "assignee_name": self._user_field(task["assignee_id"], "name"),
            "assignee_picture": self._user_field(task["assignee_id"], "picture"),
            "reporter_name": self._user_field(task["reporter_id"], "name"),
            "created_by_name": self._user_field(task["created_by"], "name"),
            "status_label": self._item_field(status, "label"),
            "status_color": self._item_field(status, "color"),
            "status_value": self._item_field(status, "value"),
            "priority_label": self._item_field(priority, "label"),
            "priority_color": self._item_field(priority, "color"),
            "priority_value": self._item_field(priority, "value"),
            "type_label": self._item_field(type_, "label"),
            "type_value": self._item_field(type_, "value"),
            "phase_label": None,  # phases are not modelled
            "phase_color": None,
            "approved_by_name": self._user_field(task["approved_by_user_id"], "name"),
            "subtask_count": subtask_count,
            "todo_count": len(todos),
            "todo_done_count": sum(t["is_done"] for t in todos),
            **{column: task[column] for column in EXTRA_COLUMNS},
        }

    def _render_subtask(self, task: Row, *, with_priority: bool) -> Row:
        # GET /:id lists priority too; GET /:id/subtasks does not (as documented)
        row = {
            "id": task["id"],
            "title": task["title"],
            "assignee_name": self._user_field(task["assignee_id"], "name"),
            "assignee_picture": self._user_field(task["assignee_id"], "picture"),
            "status_label": self._item_field(task["status_id"], "label"),
            "status_color": self._item_field(task["status_id"], "color"),
            "status_value": self._item_field(task["status_id"], "value"),
        }
        if with_priority:
            row["priority_label"] = self._item_field(task["priority_id"], "label")
            row["priority_color"] = self._item_field(task["priority_id"], "color")
        return row

    def _render_todos(self, task_id: str) -> list[Row]:
        rows = sorted((self.todos[i] for i in self._todos_of.get(task_id, ())), key=lambda t: t["position"])
        return [
            {
                **t,
                "assignee_name": self._user_field(t["assignee_id"], "name"),
                "assignee_picture": self._user_field(t["assignee_id"], "picture"),
            }
            for t in rows
        ]

    def _render_resource(self, row: Row) -> Row:
        return {**row, "created_by_name": self._user_field(row["created_by"], "name")}

    def _render_watchers(self, task_id: str) -> list[Row]:
        return [
            {"id": uid, "name": self.users[uid]["name"], "picture": self.users[uid]["picture"]}
            for uid in self.watchers.get(task_id, ())
            if uid in self.users
        ]

    # -- list filters ------------------------------------------------------------------------

    def _task_filters(self, params: Mapping[str, str]) -> list[Predicate]:
        checks: list[Predicate] = []
        for column in ("assignee_id", "status_id", "priority_id", "type_id"):
            wanted = _csv(params.get(column))
            if wanted:
                checks.append(lambda t, c=column, w=wanted: t[c] in w)
        squad_names = _csv(params.get("squad"))
        if squad_names:
            squad_ids = {s["id"] for s in self.squads.values() if s["name"] in squad_names}
            checks.append(lambda t: self._task_squad_id(t) in squad_ids)
        for column in ("resource_type", "resource_id", "roadmap_item_id"):
            if params.get(column):
                checks.append(lambda t, c=column, v=params[column]: t[c] == v)
        if "parent_id" in params:
            parent = params["parent_id"]
            if parent in ("", "null"):
                checks.append(lambda t: t["parent_task_id"] is None)
            else:
                checks.append(lambda t: t["parent_task_id"] == parent)
        elif params.get("show_subtasks") == "false":
            checks.append(lambda t: t["parent_task_id"] is None)
        due = params.get("due") or ("overdue" if params.get("overdue") == "true" else None)
        if due:
            checks.append(self._due_filter(due))
        search = (params.get("search") or "").strip().lower()
        if search:
            checks.append(lambda t: search in f"{t['title']}\n{t['description'] or ''}".lower())
        return checks

    def _due_filter(self, due: str) -> Predicate:
        today = self.today()
        start, week_end = today.isoformat(), (today + timedelta(days=7)).isoformat()
        if due == "today":
            return lambda t: t["due_date"] == start
        if due == "upcoming":
            return lambda t: t["due_date"] is not None and start <= t["due_date"] <= week_end
        if due == "overdue":
            return lambda t: (
                t["due_date"] is not None
                and t["due_date"] < start
                and self._item_field(t["status_id"], "value") not in CLOSED_STATUS_VALUES
            )
        raise ApiError(400, "Invalid due filter: use today, upcoming or overdue")

    @staticmethod
    def _sorted_tasks(rows: Iterable[Row]) -> list[Row]:
        newest_first = sorted(rows, key=lambda t: t["created_at"], reverse=True)
        # sorted() is stable, so created_at desc survives as the last tie-breaker
        return sorted(
            newest_first, key=lambda t: (_nulls_first(t["sort_order"]), _nulls_first(t["due_date"]))
        )

    # -- routes ------------------------------------------------------------------------------

    def routes(self, app: FastAPI) -> None:
        async def api_error(_: Request, exc: Exception) -> Response:
            assert isinstance(exc, ApiError)
            return self.error_response(exc.status, "", exc.message)

        async def http_error(_: Request, exc: Exception) -> Response:
            assert isinstance(exc, StarletteHTTPException)
            message = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, str(exc.detail))
            return self.error_response(exc.status_code, "", message)

        app.add_exception_handler(ApiError, api_error)
        app.add_exception_handler(StarletteHTTPException, http_error)
        self._config_routes(app)
        self._task_routes(app)
        self._todo_and_subtask_routes(app)
        self._watch_routes(app)
        self._resource_routes(app)

    def _config_routes(self, app: FastAPI) -> None:
        @app.get("/api/config-lists")
        async def config_lists(request: Request) -> Response:
            self._caller(request)
            key = request.query_params.get("key")
            keys = [k for k in self.config_lists if not key or k == key]
            return JSONResponse({"lists": [self._render_list(k) for k in keys]})

        @app.get("/api/config-lists/{key}/items")
        async def config_items(request: Request, key: str) -> Response:
            self._caller(request)
            if key not in self.config_lists:
                raise ApiError(404, "Config list not found")
            return JSONResponse({"items": self._items_of(key)})

        @app.get("/api/squads")
        async def squads(request: Request) -> Response:
            self._caller(request)
            return JSONResponse({"squads": sorted(self.squads.values(), key=lambda s: s["name"])})

    def _task_routes(self, app: FastAPI) -> None:
        @app.get("/api/tasks")
        async def list_tasks(request: Request) -> Response:
            user = self._tasks_caller(request, "view")
            params = request.query_params
            checks = self._task_filters(params)
            # A parent's subtasks come from the subtask index (the filter still checks them).
            parent = params.get("parent_id")
            candidates = self._subtasks(parent) if parent not in (None, "", "null") else self.tasks.values()
            rows = [t for t in candidates if self._visible(user, t) and all(c(t) for c in checks)]
            return JSONResponse({"tasks": self._render_tasks(self._sorted_tasks(rows))})

        @app.get("/api/tasks/{task_id}")
        async def get_task(request: Request, task_id: str) -> Response:
            user = self._tasks_caller(request, "view")
            task = self._visible_task(user, task_id)
            return JSONResponse(
                {
                    "task": self._render_task(task),
                    "todos": self._render_todos(task_id),
                    "subtasks": [
                        self._render_subtask(s, with_priority=True) for s in self._children(task_id)
                    ],
                    "watchers": self._render_watchers(task_id),
                }
            )

        @app.post("/api/tasks")
        async def create_task(request: Request) -> Response:
            user = self._tasks_caller(request, "update")
            body = await self._object_body(request)
            if "title" not in body:
                raise ApiError(400, "Title is required")
            task = self._insert_task(user, self._validated(body, CREATABLE, user))
            return JSONResponse({"task": self._render_task(task)}, status_code=201)

        @app.post("/api/tasks/{task_id}/duplicate")
        async def duplicate_task(request: Request, task_id: str) -> Response:
            user = self._tasks_caller(request, "update")
            original = self._visible_task(user, task_id)
            fields = {k: v for k, v in original.items() if k not in NOT_COPIED}
            task = self._insert_task(user, {**fields, "title": f"{original['title']} (copy)"})
            return JSONResponse({"task": self._render_task(task)}, status_code=201)

        @app.put("/api/tasks/{task_id}")
        async def update_task(request: Request, task_id: str) -> Response:
            user = self._tasks_caller(request, "update")
            task = self._visible_task(user, task_id)
            changes = self._validated(await self._object_body(request), UPDATABLE, user, task)
            if not changes:
                raise ApiError(400, "No fields to update")
            self._update_task(user, task, changes)
            return JSONResponse({"task": self._render_task(task)})

        @app.delete("/api/tasks/{task_id}")
        async def delete_task(request: Request, task_id: str) -> Response:
            user = self._tasks_caller(request, "manage")
            self._visible_task(user, task_id)
            self._delete_task(task_id)
            return JSONResponse({"ok": True})

    def _todo_and_subtask_routes(self, app: FastAPI) -> None:
        @app.put("/api/tasks/{task_id}/todos")
        async def replace_todos(request: Request, task_id: str) -> Response:
            user = self._tasks_caller(request, "update")
            task = self._visible_task(user, task_id)
            body = await self._object_body(request)
            self._replace_todos(user, task, body.get("todos"))
            return JSONResponse({"todos": self._render_todos(task_id)})

        @app.get("/api/tasks/{task_id}/subtasks")
        async def list_subtasks(request: Request, task_id: str) -> Response:
            user = self._tasks_caller(request, "view")
            self._visible_task(user, task_id)
            return JSONResponse(
                {"subtasks": [self._render_subtask(s, with_priority=False) for s in self._children(task_id)]}
            )

        @app.post("/api/tasks/{task_id}/subtasks")
        async def create_subtask(request: Request, task_id: str) -> Response:
            user = self._tasks_caller(request, "update")
            self._visible_task(user, task_id)
            body = await self._object_body(request)
            if "title" not in body:
                raise ApiError(400, "Title is required")
            fields = self._validated(body, SUBTASK_CREATABLE, user)
            task = self._insert_task(user, {**fields, "parent_task_id": task_id})
            return JSONResponse({"task": self._render_task(task)}, status_code=201)

    def _watch_routes(self, app: FastAPI) -> None:
        @app.post("/api/tasks/{task_id}/watch")
        async def watch(request: Request, task_id: str) -> Response:
            user = self._tasks_caller(request, "view")
            self._visible_task(user, task_id)
            watchers = self.watchers.setdefault(task_id, [])
            if user["id"] not in watchers:
                watchers.append(user["id"])
            return JSONResponse({"watching": True})

        @app.delete("/api/tasks/{task_id}/watch")
        async def unwatch(request: Request, task_id: str) -> Response:
            user = self._tasks_caller(request, "view")
            if user["id"] in self.watchers.get(task_id, ()):
                self.watchers[task_id].remove(user["id"])
            return JSONResponse({"watching": False})

    def _resource_routes(self, app: FastAPI) -> None:
        @app.get("/api/tasks/{task_id}/resources")
        async def list_resources(request: Request, task_id: str) -> Response:
            user = self._tasks_caller(request, "view")
            self._visible_task(user, task_id)
            rows = self._task_resources(task_id)
            return JSONResponse({"resources": [self._render_resource(r) for r in rows]})

        @app.post("/api/tasks/{task_id}/resources")
        async def add_resource(request: Request, task_id: str) -> Response:
            user = self._tasks_caller(request, "update")
            self._visible_task(user, task_id)
            body = await self._object_body(request)
            url, title, description = body.get("url"), body.get("title"), body.get("description")
            if not isinstance(url, str) or not url.strip() or not isinstance(title, str) or not title.strip():
                raise ApiError(400, "url and title are required")
            if description is not None and not isinstance(description, str):
                raise ApiError(400, "description must be a string")
            row = self._insert_resource(task_id, user, url.strip(), title.strip(), description)
            return JSONResponse({"resource": self._render_resource(row)}, status_code=201)

        @app.delete("/api/tasks/{task_id}/resources/{resource_id}")
        async def delete_resource(request: Request, task_id: str, resource_id: str) -> Response:
            user = self._tasks_caller(request, "update")
            self._visible_task(user, task_id)
            row = self.resources.get(resource_id)
            if row is None or row["task_id"] != task_id:
                raise ApiError(404, "Resource not found")
            del self.resources[resource_id]
            self._resources_of[task_id].pop(resource_id, None)
            return JSONResponse({"ok": True})

        @app.put("/api/tasks/{task_id}/resources/reorder")
        async def reorder_resources(request: Request, task_id: str) -> Response:
            user = self._tasks_caller(request, "update")
            self._visible_task(user, task_id)
            order = (await self._object_body(request)).get("order")
            if not isinstance(order, list) or not order:
                raise ApiError(400, "order must be a non-empty array of resource ids")
            own = {r["id"] for r in self._task_resources(task_id)}
            if any(not isinstance(rid, str) or rid not in own for rid in order) or len(set(order)) != len(
                order
            ):
                raise ApiError(400, "order must list resource ids of this task, each once")
            for position, resource_id in enumerate(order):
                self.resources[resource_id]["sort_order"] = position
            return JSONResponse({"ok": True})
