"""In-memory fake of PostHog's Tasks API: the "runs" platform.

A task is a unit of work for an agent; its status is its latest run's status, and a run is
started with `POST {id}/run/`. Served endpoints (all under /api/projects/{project_id}/tasks/):

    GET    /                                  list (limit/offset, filters)        task:read
    POST   /                                  create -> 201                       task:write
    GET    /{id}/                             retrieve                            task:read
    PATCH  /{id}/                             partial update                      task:write
    DELETE /{id}/                             soft delete -> 204                  task:write
    POST   /{id}/run/                         start a run -> 200 task             task:write
    GET    /{id}/runs/                        list runs (limit/offset)            task:read
    POST   /{id}/runs/                        create a run, not started -> 201    task:write
    GET    /{id}/runs/{run_id}/               retrieve a run                      task:read
    PATCH  /{id}/runs/{run_id}/               move a run along (status, stage...) task:write
    POST   /{id}/presence/                    presence beacon -> 204              task:write
    DELETE /{id}/presence/                    presence leave -> 204               task:write
    POST   /{id}/staged_artifacts/finalize_upload/  -> 200 {"artifacts": [...]}   task:write

Errors use PostHog's drf-exceptions-hog body `{"type", "code", "detail", "attr"}`: the code is
DRF's own error code, except that DRF's generic `invalid` reads `invalid_input`.

From PostHog's own source (products/tasks: `visibility.py`, the facade's update_task,
soft_delete_task and run_task, `code_usage_gate`), where the vendor page says nothing or differs:
- Tasks are per user (the key's user), not per project. A task without a channel is visible
  when that user created it, when it has no creator (`created_by` null), or when its
  `origin_product` is team-visible (signal_report, signals_scout, onboarding, hogdesk,
  workflow) or team-readable (experiments). A task in a channel is visible when its channel is:
  a public channel to everyone, a personal one to its creator only, a deleted one to no one.
  Origin `business_knowledge` is never visible here. An invisible task is absent from the list
  (and its `count`) and answers 404 `not_found` on GET and on every endpoint under it
  (runs, presence, staged artifacts), the same 404 as a deleted or unknown task.
- Control (PATCH, DELETE, `POST {id}/run/`) is narrower: without a channel, the creator, no
  creator, or a team-visible origin (not `experiments`); in a channel, only its creator, and only
  while the channel is visible. A visible task the user does not control answers 404, not 403,
  to those three (a teammate's `experiments` task: GET 200, PATCH 404). The runs endpoints
  (`runs/`, `runs/{id}`) need only visibility here; the source was not checked for them.
- `POST {id}/run/` when the team is over its PostHog Desktop usage limit answers 429 with
  `{"type": "rate_limited", "code": "usage_limit_exceeded", "error": "...", "is_pro": false,
  "limit_type": "burst"|"sustained", "reset_at": "<ISO time>"}` (limit_type and reset_at left out
  when unknown), no `detail`/`attr`, and no Retry-After header: it is not DRF throttling. It is
  checked after the task (404) and the body (400), before the run is made.
- PATCH ignores `origin_product` (validated, then dropped), so no PATCH moves a task in or out of
  anyone's view.
- Origins `workflow`, `experiments` and `business_knowledge` are accepted on create besides the
  ones the fake had. The task's channel is not in its JSON (the vendor page does not list it).

Assumed (the docs are silent; correct them here when a real account shows otherwise):
- Trailing slash optional on every path and method, as PostHog's router declares
  (`trailing_slash = r"/?"`). Requests without it are rewritten to the slashed form before
  routing, so the request log names one route template per endpoint (the slashed one).
- Auth: `Authorization: Bearer <personal API key>`. No/unreadable header -> 401
  `authentication_error`/`not_authenticated`; unknown key -> 401 `authentication_failed`.
  Missing scope -> 403 `authentication_error`/`permission_denied`, detail
  "API key missing required scope 'task:write'". A `task:write` key may also read, as PostHog
  grants `:read` to `:write` keys; `*` grants everything.
- Users: the fake starts with Alex (id 1, the constructor key's user) and Sam (id 2, a
  teammate); `users=["NAME:KEY", ...]` (the `--user` option) or `add_user_key(name, key)` give a
  user (Alex or Sam by first name, else a new one) a key of their own, with task:read and
  task:write on project 1. A task created with a key is created_by that key's user.
- Channels: none exist until `add_channel(name, owner=..., personal=...)`; tasks are made without
  one (the legacy rules above) and are filed into one only by `set_task(id, channel=...)`, which
  also sets `origin_product`, `created_by` (None: no creator), `internal` and `archived` as
  PostHog's own products would. `delete_channel` hides its tasks from everyone.
- Usage limit: `exceed_usage_limit(reset_at=..., limit_type=...)` / `clear_usage_limit()`, or
  over HTTP `POST /_fake/usage_limit {"exceeded": true|false, ...}`; `reset_at` defaults to the
  start of next month. `/_fake/reset` clears it, as it turns the fault switches off.
- Projects: the fake starts with project 1 (team prefix "ABC", so slugs read ABC-1, ABC-2...).
  `@current` names project 1. Unknown or non-numeric project -> 404 "Project not found.".
  The constructor key is scoped to project 1; a known project outside a key's scope -> 403.
  `add_project()` adds more; `add_key(..., projects=None)` makes a key for every project.
- Check order: authentication (401), project (404/403), scope (403), then the object (404)
  and the body (400).
- Lists: DRF LimitOffsetPagination. Default limit 50; a limit above 100 is clamped to 100;
  a limit that is not a positive integer falls back to 50 and a bad offset to 0 (DRF ignores
  them, no 400). `next`/`previous` are absolute URLs with the query re-encoded in sorted key
  order; `previous` drops `offset` when it would be 0. Tasks and runs: newest first
  (created_at, then task_number / creation order).
- List filters: `archived` true|false|all (default false: archived hidden); `internal` boolean,
  omitted = internal tasks hidden; `organization` = repository owner, case-insensitive;
  `repository` = "org/repo" or bare "repo", case-insensitive; `origin_product` exact;
  `created_by` = user id; `search` = case-insensitive substring of title or description, or
  the task number when numeric (empty = no filter); `stage` = any run of the task had that
  stage; `status` = the latest run's status, where `not_started` also matches a task with no
  run. Blank text filters -> 400 `blank`; bad choices -> 400 `invalid_choice`.
- Bodies must be JSON (`application/json`) objects: malformed JSON -> 400
  `invalid_request`/`parse_error`; another content type -> 415 `unsupported_media_type`;
  a non-object -> 400 `invalid_input` with attr null. Unknown and read-only fields are ignored.
  Text fields are trimmed (DRF CharField) before length checks; numbers are accepted as text.
- Task fields: `title` <= 255 (blank allowed; a blank title on create is taken from the first
  line of the description, cut to 255 - PostHog asks an LLM); `origin_product` one of
  ORIGIN_PRODUCTS, default user_created; `repository` "org/repo" (exactly one slash, both parts
  non-empty), stored lowercased; `github_integration` an integer id (existence not checked);
  `signal_report_task_relationship` lowercase letters, digits, `_`, `-` (<= 200), stored but
  not echoed (PostHog writes it to a work log). `created_by` is the key's user
  {id, uuid, distinct_id, first_name, last_name, email}.
- DELETE is a soft delete: the task keeps a `deleted` flag in the fake's state and is gone
  from the API (lists, retrieve, runs: 404). Task numbers are never reused.
- Runs: `POST {id}/run/` makes a `queued` cloud run and answers 200 with the task. `POST
  {id}/runs/` makes a `not_started` run (environment `cloud` unless "local"). PATCH accepts
  status (not_started|queued|in_progress|completed|failed|cancelled), stage, branch, output,
  state (a JSON object, merged into the run's state after `state_remove_keys` are removed),
  error_message, environment ("local" only). `completed_at` is set when the status becomes completed or failed, as in
  PostHog's serializer; no transition rules are enforced. Run fields: id, task, status, stage,
  branch, environment, error_message, output, state, artifacts, created_at, updated_at,
  completed_at.
- Creating or updating a run bumps its task's `updated_at`, so a poller that watches
  `updated_at` sees status changes (PostHog itself only touches the run).
- `POST {id}/run/` takes `pending_user_artifact_ids`: ids finalized through
  staged_artifacts/finalize_upload are attached to the new run (and leave the staging cache);
  unknown ids -> 400 with `missing_artifact_ids`. finalize_upload cannot check S3: it accepts
  any storage_path and answers each artifact with `uploaded_at`; an empty list -> 400.
- Presence: `device_id` must be the UUID of a device registered for the key's user
  (`add_device`); otherwise 404 "`device_id` does not match a push token registered by the
  caller.". Rows last 60 s (shown in the state snapshot).
- PUT and other unlisted methods -> 405 `method_not_allowed`; unknown /api paths -> 404
  "Endpoint not found.". 429 carries Retry-After and a `throttled_error` body whose detail is
  DRF's ("Expected available in 1 second." / "in N seconds."); 500/504 a `server_error` body.
- No webhooks: PostHog Tasks has none, so consumers poll.
- `POST /_fake/reset` clears data (tasks, runs, presence, staged artifacts, numbering, the usage
  limit) and re-seeds the demo data when a seed was given; users, keys, projects, channels and
  devices are kept. The seeded tasks are all visible to and driven by the constructor key (Sam's
  have team-visible origins).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from connectors.fakekit import CONTROL_PREFIX, BadBody, CountTree, Fake, bearer_token, iso, utcnow

T = TypeVar("T")

TASK_READ = "task:read"
TASK_WRITE = "task:write"
DEFAULT_PROJECT_ID = 1
DEFAULT_LIMIT = 50
MAX_LIMIT = 100
PRESENCE_TTL = timedelta(seconds=60)
LIST_VIEWS_PER_PROJECT = 8  # filters whose matches are kept up to date (least recently listed go)

ORIGIN_PRODUCTS = (
    "onboarding",
    "error_tracking",
    "eval_clusters",
    "user_created",
    "automation",
    "slack",
    "support_queue",
    "session_summaries",
    "posthog_ai",
    "signal_report",
    "signals_scout",
    "support_reply",
    "hogdesk",
    "workflow",
    "experiments",
    "business_knowledge",
)
# Who sees and drives a task without a channel, besides its creator (PostHog's visibility.py).
TEAM_VISIBLE_ORIGINS = frozenset({"signal_report", "signals_scout", "onboarding", "hogdesk", "workflow"})
TEAM_READABLE_ORIGINS = TEAM_VISIBLE_ORIGINS | {"experiments"}  # seen by the team, driven by its creator
PRODUCT_PRIVATE_ORIGINS = frozenset({"business_knowledge"})  # read only through their own product
USAGE_LIMIT_TYPES = ("burst", "sustained")  # daily, monthly
RUN_STATUSES = ("not_started", "queued", "in_progress", "completed", "failed", "cancelled")
ARTIFACT_TYPES = (
    "plan",
    "context",
    "reference",
    "output",
    "artifact",
    "tree_snapshot",
    "user_attachment",
    "skill_bundle",
)

# DRF BooleanField's accepted spellings.
_TRUE = {
    "t",
    "T",
    "y",
    "Y",
    "yes",
    "Yes",
    "YES",
    "true",
    "True",
    "TRUE",
    "on",
    "On",
    "ON",
    "1",
    1,
}  # 1 == True
_FALSE = {
    "f",
    "F",
    "n",
    "N",
    "no",
    "No",
    "NO",
    "false",
    "False",
    "FALSE",
    "off",
    "Off",
    "OFF",
    "0",
    0,
}  # 0 == False
_RELATIONSHIP = re.compile(r"^[a-z0-9_-]+$")
# What `set_task` may change directly: what PostHog's own products set and the API does not.
ADMIN_TASK_FIELDS = frozenset({"channel", "origin_product", "created_by", "internal", "archived"})


def parse_user_spec(spec: str) -> tuple[str, str]:
    """ "NAME:KEY" (the `--user` option) -> (name, key); split at the first ':'."""
    name, sep, key = spec.partition(":")
    if not sep or not name.strip() or not key.strip():
        raise ValueError(f"a user is NAME:KEY, not {spec!r}")
    return name.strip(), key.strip()


def _next_month(now: datetime) -> datetime:
    """The start of the month after `now`: when a sustained (monthly) usage limit resets."""
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + timedelta(days=32)).replace(day=1)


# -- model ----------------------------------------------------------------------------------


@dataclass
class User:
    id: int
    uuid: str
    distinct_id: str
    first_name: str
    last_name: str
    email: str

    def basic(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uuid": self.uuid,
            "distinct_id": self.distinct_id,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "email": self.email,
        }


@dataclass
class ApiKey:
    token: str
    scopes: frozenset[str]
    user: User
    projects: frozenset[int] | None  # None: every project

    def allows(self, scope: str) -> bool:
        granted = {scope, "*"}
        if scope.endswith(":read"):  # a write scope implies the matching read scope
            granted.add(scope.removesuffix(":read") + ":write")
        return bool(granted & self.scopes)


@dataclass
class Channel:
    """A feed tasks are filed in: a public one is the team's, a personal one its creator's alone."""

    id: str
    name: str
    channel_type: str
    created_by: User
    deleted: bool = False

    def visible_to(self, user: User) -> bool:
        if self.deleted:
            return False
        return self.channel_type == "public" or self.created_by.id == user.id

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "channel_type": self.channel_type,
            "created_by": self.created_by.id,
            "deleted": self.deleted,
        }


@dataclass
class UsageLimit:
    """The team is over its PostHog Desktop usage limit: `POST {id}/run/` answers 429."""

    reset_at: datetime | None
    limit_type: str | None = "sustained"
    is_pro: bool = False

    def to_json(self) -> dict[str, Any]:
        # PostHog leaves out the bucket and reset fields it does not know rather than sending null.
        body: dict[str, Any] = {
            "type": "rate_limited",
            "code": "usage_limit_exceeded",
            "error": "You've reached your PostHog Desktop usage limit.",
            "is_pro": self.is_pro,
        }
        if self.limit_type is not None:
            body["limit_type"] = self.limit_type
        if self.reset_at is not None:
            body["reset_at"] = iso(self.reset_at)
        return body


@dataclass
class Project:
    id: int
    name: str
    prefix: str
    next_number: int = 1


@dataclass
class Run:
    id: str
    task_id: str
    status: str
    environment: str
    created_at: datetime
    updated_at: datetime
    stage: str | None = None
    branch: str | None = None
    error_message: str | None = None
    output: Any = None
    state: dict[str, Any] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    completed_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task_id,
            "status": self.status,
            "stage": self.stage,
            "branch": self.branch,
            "environment": self.environment,
            "error_message": self.error_message,
            "output": self.output,
            "state": self.state,
            "artifacts": self.artifacts,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "completed_at": iso(self.completed_at),
        }


@dataclass
class Task:
    id: str
    project_id: int
    task_number: int
    slug: str
    created_by: User | None  # None: made by the system (no creator), which every user may see
    created_at: datetime
    updated_at: datetime
    title: str = ""
    title_manually_set: bool = False
    description: str = ""
    origin_product: str = "user_created"
    repository: str | None = None
    github_integration: int | None = None
    github_user_integration: str | None = None
    signal_report: str | None = None
    signal_report_task_relationship: str | None = None
    json_schema: Any = None
    internal: bool = False
    archived: bool = False
    ci_prompt: str | None = None
    channel: Channel | None = None  # not in the task's JSON: the vendor page does not list it
    deleted: bool = False
    runs: list[Run] = field(default_factory=list)  # in creation order; the last is the latest
    staged_artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def latest_run(self) -> Run | None:
        return self.runs[-1] if self.runs else None

    def _created_by(self, user: User) -> bool:
        return self.created_by is not None and self.created_by.id == user.id

    def visible_to(self, user: User) -> bool:
        """PostHog's task_visibility_q: the channel decides when there is one."""
        if self.origin_product in PRODUCT_PRIVATE_ORIGINS:
            return False
        if self.channel is not None:
            return self.channel.visible_to(user)
        return (
            self.created_by is None or self._created_by(user) or self.origin_product in TEAM_READABLE_ORIGINS
        )

    def controlled_by(self, user: User) -> bool:
        """PostHog's task_control_q (PATCH, DELETE, run/): narrower than visibility."""
        if self.origin_product in PRODUCT_PRIVATE_ORIGINS:
            return False
        if self.channel is not None:
            return self.channel.visible_to(user) and self._created_by(user)
        return (
            self.created_by is None or self._created_by(user) or self.origin_product in TEAM_VISIBLE_ORIGINS
        )

    def to_json(self) -> dict[str, Any]:
        latest = self.latest_run
        return {
            "id": self.id,
            "task_number": self.task_number,
            "slug": self.slug,
            "title": self.title,
            "title_manually_set": self.title_manually_set,
            "description": self.description,
            "origin_product": self.origin_product,
            "repository": self.repository,
            "github_integration": self.github_integration,
            "github_user_integration": self.github_user_integration,
            "signal_report": self.signal_report,
            "json_schema": self.json_schema,
            "internal": self.internal,
            "archived": self.archived,
            "ci_prompt": self.ci_prompt,
            "latest_run": latest.to_json() if latest else None,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "created_by": self.created_by.basic() if self.created_by else None,
        }


# -- errors and field validation (DRF semantics) ----------------------------------------------


class ApiError(Exception):
    """An error answered in PostHog's shape; `type` is derived from the status when not given."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        attr: str | None = None,
        type_: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.attr = attr
        self.type = type_
        self.extra = extra


def invalid(attr: str | None, detail: str, code: str = "invalid_input", **extra: Any) -> ApiError:
    return ApiError(400, code, detail, attr=attr, type_="validation_error", **extra)


def not_found(detail: str = "Not found.") -> ApiError:
    return ApiError(404, "not_found", detail)


def _error_type(status: int) -> str:
    if status in (401, 403):
        return "authentication_error"
    if status == 429:
        return "throttled_error"
    if status >= 500:
        return "server_error"
    return "invalid_request"


def text(
    attr: str,
    value: Any,
    *,
    max_length: int | None = None,
    allow_null: bool = False,
    allow_blank: bool = True,
) -> str | None:
    """A DRF CharField: trims, takes numbers as text, rejects other types."""
    if value is None:
        if allow_null:
            return None
        raise invalid(attr, "This field may not be null.", "null")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise invalid(attr, "Not a valid string.")
    result = str(value).strip()
    if not result and not allow_blank:
        raise invalid(attr, "This field may not be blank.", "blank")
    if max_length is not None and len(result) > max_length:
        raise invalid(attr, f"Ensure this field has no more than {max_length} characters.", "max_length")
    return result


def boolean(attr: str, value: Any) -> bool:
    if value is None:
        raise invalid(attr, "This field may not be null.", "null")
    if isinstance(value, Iterable) and not isinstance(value, str):
        raise invalid(attr, "Must be a valid boolean.")
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise invalid(attr, "Must be a valid boolean.")


def choice(attr: str, value: Any, choices: Iterable[str]) -> str:
    if value is None:
        raise invalid(attr, "This field may not be null.", "null")
    if not isinstance(value, str) or value not in choices:
        raise invalid(attr, f'"{value}" is not a valid choice.', "invalid_choice")
    return value


def integer(attr: str, value: Any) -> int:
    if isinstance(value, bool):
        raise invalid(attr, "A valid integer is required.")
    try:
        return int(str(value).strip())
    except ValueError:
        raise invalid(attr, "A valid integer is required.") from None


def pk_or_null(attr: str, value: Any) -> int | None:
    """A DRF PrimaryKeyRelatedField over integer ids (the object's existence is not checked)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise invalid(
            attr, f"Incorrect type. Expected pk value, received {type(value).__name__}.", "incorrect_type"
        )
    try:
        return int(value)
    except ValueError:
        raise invalid(attr, f'Invalid pk "{value}" - object does not exist.', "does_not_exist") from None


def uuid_text(attr: str, value: Any, *, allow_null: bool = False) -> str | None:
    raw = text(attr, value, allow_null=allow_null)
    if raw is None:
        return None
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise invalid(attr, "Must be a valid UUID.") from None


def repository(attr: str, value: Any) -> str | None:
    raw = text(attr, value, max_length=255, allow_null=True)
    if not raw:
        return raw
    parts = raw.split("/")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise invalid(attr, "Repository must be in the format organization/repository")
    return raw.lower()


def relationship(attr: str, value: Any) -> str | None:
    raw = text(attr, value, max_length=200, allow_blank=False)
    if raw is not None and not _RELATIONSHIP.match(raw):
        raise invalid(attr, "Use lowercase letters, numbers, '_' or '-'.")
    return raw


def string_list(attr: str, value: Any, *, max_length: int) -> list[str]:
    if not isinstance(value, list):
        raise invalid(attr, f'Expected a list of items but got type "{type(value).__name__}".', "not_a_list")
    return [
        str(text(f"{attr}__{i}", item, max_length=max_length, allow_blank=False))
        for i, item in enumerate(value)
    ]


def json_object(attr: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(
            attr, f'Expected a dictionary of items but got type "{type(value).__name__}".', "not_a_dict"
        )
    return value


Check = Callable[[str, Any], Any]

# Writable task fields and how each is validated, in the serializer's field order.
TASK_FIELDS: dict[str, Check] = {
    "title": lambda a, v: text(a, v, max_length=255),
    "title_manually_set": boolean,
    "description": text,
    "origin_product": lambda a, v: choice(a, v, ORIGIN_PRODUCTS),
    "repository": repository,
    "github_integration": pk_or_null,
    "github_user_integration": lambda a, v: uuid_text(a, v, allow_null=True),
    "signal_report": lambda a, v: uuid_text(a, v, allow_null=True),
    "signal_report_task_relationship": relationship,
    "json_schema": lambda a, v: v,
    "internal": boolean,
    "archived": boolean,
    "ci_prompt": lambda a, v: text(a, v, allow_null=True),
}

# Fields of POST {id}/run/ (PostHog's TaskRunCreateRequestSchema) the fake checks and keeps.
RUN_START_FIELDS: dict[str, Check] = {
    "mode": lambda a, v: choice(a, v, ("interactive", "background")),
    "branch": lambda a, v: text(a, v, max_length=255, allow_null=True),
    "resume_from_run_id": uuid_text,
    "pending_user_message": text,
    "pending_user_artifact_ids": lambda a, v: string_list(a, v, max_length=128),
    "runtime_adapter": lambda a, v: choice(a, v, ("claude", "codex")),
    "model": text,
    "reasoning_effort": lambda a, v: choice(a, v, ("low", "medium", "high", "xhigh", "max")),
    "pr_authorship_mode": lambda a, v: choice(a, v, ("user", "bot")),
    "run_source": lambda a, v: choice(a, v, ("manual", "signal_report")),
}

# Fields of POST {id}/runs/ (the run is created without starting it).
RUN_CREATE_FIELDS: dict[str, Check] = {
    "environment": lambda a, v: choice(a, v, ("local", "cloud")),
    "mode": RUN_START_FIELDS["mode"],
    "branch": RUN_START_FIELDS["branch"],
    "runtime_adapter": RUN_START_FIELDS["runtime_adapter"],
    "model": text,
    "reasoning_effort": RUN_START_FIELDS["reasoning_effort"],
}

RUN_UPDATE_FIELDS: dict[str, Check] = {
    "status": lambda a, v: choice(a, v, RUN_STATUSES),
    "branch": lambda a, v: text(a, v, allow_null=True),
    "stage": lambda a, v: text(a, v, allow_null=True),
    "output": lambda a, v: v,
    "state": json_object,
    "state_remove_keys": lambda a, v: string_list(a, v, max_length=10_000),
    "error_message": lambda a, v: text(a, v, allow_null=True),
    "environment": lambda a, v: choice(a, v, ("local",)),
}

ARTIFACT_FIELDS: dict[str, tuple[bool, Check]] = {  # name: (required, check)
    "id": (True, lambda a, v: text(a, v, max_length=255, allow_blank=False)),
    "name": (True, lambda a, v: text(a, v, max_length=255, allow_blank=False)),
    "type": (True, lambda a, v: choice(a, v, ARTIFACT_TYPES)),
    "source": (False, lambda a, v: text(a, v, max_length=64)),
    "storage_path": (True, lambda a, v: text(a, v, max_length=500, allow_blank=False)),
    "content_type": (False, lambda a, v: text(a, v, max_length=255)),
    "metadata": (False, json_object),
}


def validate(body: Mapping[str, Any], fields: Mapping[str, Check], prefix: str = "") -> dict[str, Any]:
    """The given fields that appear in `body`, validated; the first error raises (DRF reports
    the first one too)."""
    return {name: check(prefix + name, body[name]) for name, check in fields.items() if name in body}


def _artifacts(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "artifacts" not in body:
        raise invalid("artifacts", "This field is required.", "required")
    items = body["artifacts"]
    if not isinstance(items, list):
        raise invalid(
            "artifacts", f'Expected a list of items but got type "{type(items).__name__}".', "not_a_list"
        )
    if not items:
        raise invalid("artifacts", "At least one artifact is required")
    result = []
    for i, item in enumerate(items):
        prefix = f"artifacts__{i}__"
        if not isinstance(item, dict):
            raise invalid(
                f"artifacts__{i}", f"Invalid data. Expected a dictionary, but got {type(item).__name__}."
            )
        for name, (required, _) in ARTIFACT_FIELDS.items():
            if required and name not in item:
                raise invalid(prefix + name, "This field is required.", "required")
        result.append(validate(item, {n: c for n, (_, c) in ARTIFACT_FIELDS.items()}, prefix))
    return result


# -- pagination (DRF LimitOffsetPagination) ---------------------------------------------------


def _positive_int(raw: str | None, default: int, *, strict: bool, cutoff: int | None = None) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return default
    if value < 0 or (strict and value == 0):
        return default
    return min(value, cutoff) if cutoff else value


def _with_query(url: str, **params: int | None) -> str:
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    for key, value in params.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = [str(value)]
    return urlunsplit(parts._replace(query=urlencode(sorted(query.items()), doseq=True)))


def paginate(request: Request, items: list[Any], render: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    return paginate_counted(request, len(items), lambda start, stop: items[start:stop], render)


def paginate_counted(
    request: Request,
    count: int,
    fetch: Callable[[int, int], list[Any]],
    render: Callable[[Any], dict[str, Any]],
) -> dict[str, Any]:
    """One page of a list of `count` items, of which `fetch(start, stop)` gives the ones in
    positions start..stop-1, so a page costs what it holds, not the whole list."""
    params = request.query_params
    limit = _positive_int(params.get("limit"), DEFAULT_LIMIT, strict=True, cutoff=MAX_LIMIT)
    offset = _positive_int(params.get("offset"), 0, strict=False)
    url = str(request.url)
    next_url = None if offset + limit >= count else _with_query(url, limit=limit, offset=offset + limit)
    if offset <= 0:
        previous_url = None
    elif offset - limit <= 0:
        previous_url = _with_query(url, limit=limit, offset=None)
    else:
        previous_url = _with_query(url, limit=limit, offset=offset - limit)
    page = fetch(offset, min(offset + limit, count)) if offset < count else []
    return {"count": count, "next": next_url, "previous": previous_url, "results": [render(i) for i in page]}


# -- list filters -----------------------------------------------------------------------------


@dataclass
class TaskFilter:
    archived: str = "false"
    created_by: int | None = None
    internal: bool | None = None
    organization: str | None = None
    origin_product: str | None = None
    repository: str | None = None
    search: str = ""
    stage: str | None = None
    status: str | None = None

    def key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> TaskFilter:
        f = cls()
        if "archived" in params:
            f.archived = choice("archived", params["archived"], ("true", "false", "all"))
        if "created_by" in params:
            f.created_by = integer("created_by", params["created_by"])
        if "internal" in params:
            f.internal = boolean("internal", params["internal"])
        for name in ("organization", "origin_product", "repository", "stage"):
            if name in params:
                setattr(f, name, text(name, params[name], allow_blank=False))
        f.search = (params.get("search") or "").strip()
        if "status" in params:
            f.status = choice("status", params["status"], RUN_STATUSES)
        return f

    def matches(self, task: Task) -> bool:
        repo = (task.repository or "").lower()
        owner, _, name = repo.partition("/")
        latest = task.latest_run
        checks = (
            self.archived == "all" or task.archived == (self.archived == "true"),
            task.internal == bool(self.internal),  # omitted: internal tasks stay hidden
            self.created_by is None
            or (task.created_by is not None and task.created_by.id == self.created_by),
            self.organization is None or owner == self.organization.lower(),
            self.origin_product is None or task.origin_product == self.origin_product,
            self.repository is None or self._repository_matches(repo, name),
            not self.search or self._search_matches(task),
            self.stage is None or any(run.stage == self.stage for run in task.runs),
            self.status is None or (latest.status if latest else "not_started") == self.status,
        )
        return all(checks)

    def _repository_matches(self, repo: str, name: str) -> bool:
        wanted = (self.repository or "").lower()
        return repo == wanted if "/" in wanted else name == wanted

    def _search_matches(self, task: Task) -> bool:
        needle = self.search.lower()
        if needle.isdigit() and int(needle) == task.task_number:
            return True
        return needle in task.title.lower() or needle in task.description.lower()


def _list_order(task: Task) -> tuple[datetime, int]:
    """Where a task sits in its project's list, oldest first (the list itself is newest first)."""
    return (task.created_at, task.task_number)


# -- ASGI helper --------------------------------------------------------------------------------


class _OptionalTrailingSlash:
    """Serves /api paths with or without the trailing slash, as PostHog's router does.

    It rewrites the scope in place (not a copy) so that the request log, which reads the same
    scope when the response starts, records the one slashed route template for both spellings.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/") and not scope["path"].endswith("/"):
            scope["path"] += "/"
            if "raw_path" in scope:
                scope["raw_path"] = scope["raw_path"] + b"/"
        await self.app(scope, receive, send)


# -- the fake ---------------------------------------------------------------------------------


class RunsFake(Fake):
    platform = "runs"
    api_root = "/api"

    def scope(self) -> str:
        return str(DEFAULT_PROJECT_ID)

    def __init__(
        self,
        *,
        token: str,
        seed: int | None = None,
        team_prefix: str = "ABC",
        users: Iterable[str] = (),
    ) -> None:
        """`users`: more users, each "NAME:KEY" (the `--user` option of `taskbridge fake runs`);
        `token` stays the key of the default user (Alex)."""
        super().__init__(token=token, seed=seed)
        self.users: dict[int, User] = {}
        self.keys: dict[str, ApiKey] = {}
        self.projects: dict[int, Project] = {}
        self.devices: dict[str, int] = {}  # device id -> user id
        self.channels: dict[str, Channel] = {}
        self.usage_limit: UsageLimit | None = None  # set: the team is over its limit
        self.tasks: dict[str, Task] = {}
        self.presence: dict[tuple[str, str], datetime] = {}  # (task id, device id) -> expires
        # The list's indexes: each project's tasks oldest first (deleted ones included; they keep
        # their place) and each task's place there; per project, for the filters listed lately,
        # which of those tasks match (a CountTree over that order, updated on every change), so
        # a page costs O(limit log n) instead of filtering and sorting the project.
        self._order: dict[int, list[Task]] = {}
        self._place: dict[str, int] = {}
        # Visibility is per user, so a kept filter is kept per viewer: keyed (user id, filter).
        self._views: dict[int, OrderedDict[tuple[Any, ...], tuple[TaskFilter, User, CountTree]]] = {}
        self.user = self.add_user(1, "Alex", "Rivera", "alex@example.com")
        self.teammate = self.add_user(2, "Sam", "Okafor", "sam@example.com")
        self.add_project(DEFAULT_PROJECT_ID, "Default project", team_prefix)
        self.add_key(token, scopes=(TASK_READ, TASK_WRITE))
        for spec in users:
            self.add_user_key(*parse_user_spec(spec))
        self.reset_state()

    # -- in-process helpers (before start(), or through fake.call) ----------------------------

    def add_user(self, user_id: int, first_name: str, last_name: str, email: str) -> User:
        user = User(user_id, self._uuid(), self._uuid(), first_name, last_name, email)
        self.users[user_id] = user
        return user

    def add_project(self, project_id: int, name: str, prefix: str) -> Project:
        project = Project(project_id, name, prefix)
        self.projects[project_id] = project
        return project

    def add_key(
        self,
        token: str,
        scopes: Iterable[str] = (TASK_READ,),
        *,
        user: User | None = None,
        projects: Iterable[int] | None = (DEFAULT_PROJECT_ID,),
    ) -> ApiKey:
        """A personal API key; `projects=None` means every project."""
        key = ApiKey(
            token, frozenset(scopes), user or self.user, None if projects is None else frozenset(projects)
        )
        self.keys[token] = key
        return key

    def add_user_key(
        self,
        name: str,
        token: str,
        *,
        scopes: Iterable[str] = (TASK_READ, TASK_WRITE),
        projects: Iterable[int] | None = (DEFAULT_PROJECT_ID,),
    ) -> ApiKey:
        """A personal API key of the user whose first name is `name` (case-insensitive), made if
        no user has it; tasks created with the key are that user's (`created_by`)."""
        name = name.strip()
        if not name:
            raise ValueError("a user needs a name")

        def add() -> ApiKey:
            user = next((u for u in self.users.values() if u.first_name.lower() == name.lower()), None)
            if user is None:
                email = f"{name.lower().replace(' ', '.')}@example.com"
                user = self.add_user(max(self.users, default=0) + 1, name, "", email)
            return self.add_key(token, scopes, user=user, projects=projects)

        return self._on_loop(add)

    def add_channel(self, name: str, *, owner: User | None = None, personal: bool = False) -> Channel:
        """A channel made by `owner` (the default user): public (the team's), or `personal`,
        which only its owner sees. Channels are kept by `/_fake/reset`, as projects are."""
        creator = owner or self.user

        def add() -> Channel:
            channel = Channel(self._uuid(), name, "personal" if personal else "public", creator)
            self.channels[channel.id] = channel
            return channel

        return self._on_loop(add)

    def delete_channel(self, channel: Channel) -> None:
        """A deleted channel hides its tasks from everyone (PostHog's Channel.visible_to_q)."""

        def delete() -> None:
            channel.deleted = True
            self._views.clear()  # every kept filter may have lost tasks: rebuilt on the next list

        self._on_loop(delete)

    def set_task(self, task_id: str, **values: Any) -> Task:
        """Set what the API cannot (or PostHog's own products do): `channel` (a Channel or None),
        `origin_product`, `created_by` (a User or None: no creator), `internal`, `archived`."""
        unknown = set(values) - ADMIN_TASK_FIELDS
        if unknown:
            raise ValueError(f"set_task cannot set {sorted(unknown)}; only {sorted(ADMIN_TASK_FIELDS)}")
        if "origin_product" in values and values["origin_product"] not in ORIGIN_PRODUCTS:
            raise ValueError(f"unknown origin_product {values['origin_product']!r}")

        def update() -> Task:
            task = self.tasks[task_id]
            for name, value in values.items():
                setattr(task, name, value)
            task.updated_at = self.now()
            self._changed(task)
            return task

        return self._on_loop(update)

    def exceed_usage_limit(
        self, *, reset_at: datetime | None = None, limit_type: str | None = "sustained", is_pro: bool = False
    ) -> None:
        """Put the team over its usage limit: `POST {id}/run/` answers 429 until `clear_usage_limit`
        (or `/_fake/reset`). `reset_at` defaults to the start of next month (the sustained bucket)."""
        if limit_type is not None and limit_type not in USAGE_LIMIT_TYPES:
            raise ValueError(f"limit_type must be one of {USAGE_LIMIT_TYPES} or None")

        if reset_at is not None and reset_at.tzinfo is None:
            reset_at = reset_at.replace(tzinfo=UTC)  # PostHog's times are UTC
        # One attribute set, atomic for the handlers, so callable from any thread.
        self.usage_limit = UsageLimit(reset_at or _next_month(utcnow()), limit_type, is_pro)

    def clear_usage_limit(self) -> None:
        self.usage_limit = None

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """`fn` on the fake's loop (state belongs to it while serving); inline when not serving
        or when already there (inside `fake.call`, where waiting for the loop would deadlock)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        return fn() if running is not None and running is self._loop else cast(T, self.call(fn))

    def add_device(self, device_id: str, user: User | None = None) -> None:
        """Register a push-token device (its UUID) for a user, for the presence endpoints."""
        self.devices[str(uuid.UUID(device_id))] = (user or self.user).id

    # -- platform hooks -----------------------------------------------------------------------

    def error_response(self, status: int, code: str, message: str, **extra: Any) -> JSONResponse:
        type_ = extra.pop("type", None) or _error_type(status)
        attr = extra.pop("attr", None)
        return JSONResponse(
            {"type": type_, "code": code, "detail": message, "attr": attr, **extra}, status_code=status
        )

    def rate_limited_response(self, retry_after: int) -> Response:
        unit = "second" if retry_after == 1 else "seconds"
        resp = self.error_response(
            429, "throttled", f"Request was throttled. Expected available in {retry_after} {unit}."
        )
        resp.headers["Retry-After"] = str(retry_after)
        return resp

    def server_error_response(self, status: int = 500) -> Response:
        return self.error_response(status, "error", "A server error occurred.")

    def reset_state(self) -> None:
        self.tasks.clear()
        self.presence.clear()
        self.usage_limit = None  # like the fault switches, which /_fake/reset turns off
        self._order.clear()
        self._place.clear()
        self._views.clear()
        for project in self.projects.values():
            project.next_number = 1
        if self.seed is not None:
            # Re-seeding first makes the demo data (ids included) the same after every reset.
            self.rng.seed(self.seed)
            self._seed_demo()

    def snapshot(self) -> dict[str, Any]:
        return {
            "projects": [
                {"id": p.id, "name": p.name, "prefix": p.prefix, "next_number": p.next_number}
                for p in self.projects.values()
            ],
            "users": [u.basic() for u in self.users.values()],
            "keys": [
                {
                    "token": k.token,
                    "scopes": sorted(k.scopes),
                    "user": k.user.id,
                    "projects": None if k.projects is None else sorted(k.projects),
                }
                for k in self.keys.values()
            ],
            "devices": dict(self.devices),
            "channels": [c.to_json() for c in self.channels.values()],
            "usage_limit": self.usage_limit.to_json() if self.usage_limit else None,
            "tasks": [
                {
                    **t.to_json(),
                    "project_id": t.project_id,
                    "channel": t.channel.id if t.channel else None,
                    "deleted": t.deleted,
                    "signal_report_task_relationship": t.signal_report_task_relationship,
                    "runs": [r.to_json() for r in t.runs],
                    "staged_artifacts": list(t.staged_artifacts.values()),
                }
                for t in self.tasks.values()
            ],
            "presence": [
                {"task": task_id, "device_id": device_id, "expires_at": iso(expires)}
                for (task_id, device_id), expires in self.presence.items()
            ],
        }

    # -- shared request plumbing ----------------------------------------------------------------

    def _uuid(self) -> str:
        # From the seeded rng, so a seeded fake hands out the same ids every time.
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _authorize(self, request: Request, project_id: str, scope: str) -> tuple[ApiKey, Project]:
        token = bearer_token(request)
        if token is None:
            raise ApiError(401, "not_authenticated", "Authentication credentials were not provided.")
        key = self.keys.get(token)
        if key is None:
            raise ApiError(
                401,
                "authentication_failed",
                "Personal API key found in request Authorization header is invalid.",
            )
        pid = DEFAULT_PROJECT_ID if project_id == "@current" else project_id
        project = self.projects.get(int(pid)) if str(pid).isdigit() else None
        if project is None:
            raise not_found("Project not found.")
        if key.projects is not None and project.id not in key.projects:
            raise ApiError(
                403,
                "permission_denied",
                f"API key does not have access to the requested project: ID {project.id}.",
            )
        if not key.allows(scope):
            raise ApiError(403, "permission_denied", f"API key missing required scope '{scope}'")
        return key, project

    def _task(self, project: Project, task_id: str, user: User, *, control: bool = False) -> Task:
        """The task as `user` may reach it: 404 alike when it does not exist, is deleted, is out of
        the user's view, or (`control`: PATCH, DELETE, run/) is one the user may not drive, as
        PostHog filters its queryset by those rules rather than answering 403."""
        task = self.tasks.get(task_id.lower())
        if task is None or task.deleted or task.project_id != project.id or not task.visible_to(user):
            raise not_found()
        if control and not task.controlled_by(user):
            raise not_found()
        return task

    def _run(self, task: Task, run_id: str) -> Run:
        for run in task.runs:
            if run.id == run_id.lower():
                return run
        raise not_found()

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        if raw:
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                raise ApiError(415, "unsupported_media_type", f'Unsupported media type "{media}" in request.')
        try:
            body = await self.json_body(request)
        except BadBody as exc:
            raise ApiError(400, "parse_error", f"JSON parse error - {exc}") from None
        if not isinstance(body, dict):
            raise invalid(None, f"Invalid data. Expected a dictionary, but got {type(body).__name__}.")
        return body

    def _new_task(self, project: Project, user: User, values: dict[str, Any]) -> Task:
        now = self.now()
        number = project.next_number
        project.next_number += 1
        task = Task(
            id=self._uuid(),
            project_id=project.id,
            task_number=number,
            slug=f"{project.prefix}-{number}",
            created_by=user,
            created_at=now,
            updated_at=now,
        )
        for name, value in values.items():
            setattr(task, name, value)
        if not task.title and task.description:
            # PostHog generates the title with an LLM; the description's first line stands in.
            task.title = task.description.strip().splitlines()[0][:255]
        self.tasks[task.id] = task
        self._index_new(task)
        return task

    # -- list indexes -----------------------------------------------------------------------------

    def _index_new(self, task: Task) -> None:
        order = self._order.setdefault(task.project_id, [])
        if not order or _list_order(order[-1]) < _list_order(task):
            self._place[task.id] = len(order)
            order.append(task)
            for wanted, viewer, matches in self._views.get(task.project_id, {}).values():
                matches.append(self._listed(wanted, viewer, task))
            return
        # Never happens with the fake's strictly increasing clock; kept correct all the same.
        bisect.insort(order, task, key=_list_order)
        self._place.update((t.id, i) for i, t in enumerate(order))
        self._views.pop(task.project_id, None)

    @staticmethod
    def _listed(wanted: TaskFilter, viewer: User, task: Task) -> bool:
        return not task.deleted and task.visible_to(viewer) and wanted.matches(task)

    def _changed(self, task: Task) -> None:
        """Call after any change to a task or its runs: the kept filters re-check it."""
        place = self._place[task.id]
        for wanted, viewer, matches in self._views.get(task.project_id, {}).values():
            matches.set(place, self._listed(wanted, viewer, task))

    def _matches(self, project: Project, wanted: TaskFilter, viewer: User) -> CountTree:
        views = self._views.setdefault(project.id, OrderedDict())
        key = (viewer.id, *wanted.key())
        view = views.get(key)
        if view is not None:
            views.move_to_end(key)
            return view[2]
        matches = CountTree(self._listed(wanted, viewer, t) for t in self._order.get(project.id, ()))
        views[key] = (wanted, viewer, matches)
        if len(views) > LIST_VIEWS_PER_PROJECT:
            views.popitem(last=False)
        return matches

    def _list_page(
        self, request: Request, project: Project, wanted: TaskFilter, viewer: User
    ) -> dict[str, Any]:
        """The list's page: the project's matching tasks the viewer may see, newest first
        (created_at, then number)."""
        matches = self._matches(project, wanted, viewer)
        order = self._order.get(project.id, [])
        newest = matches.total - 1

        def fetch(start: int, stop: int) -> list[Task]:
            return [order[matches.select(newest - i)] for i in range(start, stop)]

        return paginate_counted(request, matches.total, fetch, Task.to_json)

    def _new_run(
        self,
        task: Task,
        *,
        status: str,
        environment: str,
        branch: str | None = None,
        state: dict[str, Any] | None = None,
        artifacts: list[dict[str, Any]] | None = None,
    ) -> Run:
        now = self.now()
        run = Run(
            id=self._uuid(),
            task_id=task.id,
            status=status,
            environment=environment,
            created_at=now,
            updated_at=now,
            branch=branch,
            state=state or {},
            artifacts=artifacts or [],
        )
        task.runs.append(run)
        task.updated_at = now
        self._changed(task)
        return run

    def _update_run(self, task: Task, run: Run, values: dict[str, Any]) -> None:
        now = self.now()
        for key in values.pop("state_remove_keys", []):
            run.state.pop(key, None)
        run.state.update(values.pop("state", {}))
        for name, value in values.items():
            setattr(run, name, value)
        if values.get("status") in ("completed", "failed"):
            run.completed_at = now
        run.updated_at = now
        task.updated_at = now
        self._changed(task)

    def _take_staged(self, task: Task, ids: list[str]) -> list[dict[str, Any]]:
        missing = [i for i in ids if i not in task.staged_artifacts]
        if missing:
            raise invalid(
                "pending_user_artifact_ids",
                "Some staged artifacts could not be found for this task.",
                missing_artifact_ids=missing,
            )
        return [task.staged_artifacts.pop(i) for i in ids]

    def _start_run(self, task: Task, values: dict[str, Any]) -> Run:
        resume = values.get("resume_from_run_id")
        if resume is not None and not any(r.id == resume for r in task.runs):
            raise invalid("resume_from_run_id", "Run to resume must belong to the same task.")
        artifacts = self._take_staged(task, values.pop("pending_user_artifact_ids", []))
        branch = values.pop("branch", None)
        state = {"mode": values.pop("mode", "background"), **values}
        return self._new_run(
            task, status="queued", environment="cloud", branch=branch, state=state, artifacts=artifacts
        )

    def _presence_device(self, key: ApiKey, body: dict[str, Any]) -> str:
        if "device_id" not in body:
            raise invalid("device_id", "This field is required.", "required")
        device_id = str(uuid_text("device_id", body["device_id"]))
        if self.devices.get(device_id) != key.user.id:
            raise not_found("`device_id` does not match a push token registered by the caller.")
        return device_id

    # -- routes ---------------------------------------------------------------------------------

    def routes(self, app: FastAPI) -> None:
        app.add_middleware(_OptionalTrailingSlash)
        self._error_handlers(app)
        self._usage_limit_switch(app)
        base = "/api/projects/{project_id}/tasks/"
        one = base + "{task_id}/"

        @app.get(base)
        async def list_tasks(request: Request, project_id: str) -> Response:
            key, project = self._authorize(request, project_id, TASK_READ)
            wanted = TaskFilter.parse(request.query_params)
            return JSONResponse(self._list_page(request, project, wanted, key.user))

        @app.post(base)
        async def create_task(request: Request, project_id: str) -> Response:
            key, project = self._authorize(request, project_id, TASK_WRITE)
            values = validate(await self._body(request), TASK_FIELDS)
            task = self._new_task(project, key.user, values)
            return JSONResponse(task.to_json(), status_code=201)

        @app.get(one)
        async def retrieve_task(request: Request, project_id: str, task_id: str) -> Response:
            key, project = self._authorize(request, project_id, TASK_READ)
            return JSONResponse(self._task(project, task_id, key.user).to_json())

        @app.patch(one)
        async def update_task(request: Request, project_id: str, task_id: str) -> Response:
            key, project = self._authorize(request, project_id, TASK_WRITE)
            task = self._task(project, task_id, key.user, control=True)
            values = validate(await self._body(request), TASK_FIELDS)
            # PostHog's update_task drops it: no PATCH moves a task in or out of anyone's view.
            values.pop("origin_product", None)
            for name, value in values.items():
                setattr(task, name, value)
            task.updated_at = self.now()
            self._changed(task)
            return JSONResponse(task.to_json())

        @app.delete(one)
        async def delete_task(request: Request, project_id: str, task_id: str) -> Response:
            key, project = self._authorize(request, project_id, TASK_WRITE)
            task = self._task(project, task_id, key.user, control=True)
            task.deleted = True
            task.updated_at = self.now()
            self._changed(task)
            return Response(status_code=204)

        @app.post(one + "run/")
        async def start_run(request: Request, project_id: str, task_id: str) -> Response:
            key, project = self._authorize(request, project_id, TASK_WRITE)
            task = self._task(project, task_id, key.user, control=True)
            values = validate(await self._body(request), RUN_START_FIELDS)
            if self.usage_limit is not None:
                # PostHog answers this itself (no throttle class): no Retry-After, a reset time instead.
                return JSONResponse(self.usage_limit.to_json(), status_code=429)
            self._start_run(task, values)
            return JSONResponse(task.to_json())

        @app.get(one + "runs/")
        async def list_runs(request: Request, project_id: str, task_id: str) -> Response:
            key, project = self._authorize(request, project_id, TASK_READ)
            runs = list(reversed(self._task(project, task_id, key.user).runs))
            return JSONResponse(paginate(request, runs, Run.to_json))

        @app.post(one + "runs/")
        async def create_run(request: Request, project_id: str, task_id: str) -> Response:
            key, project = self._authorize(request, project_id, TASK_WRITE)
            task = self._task(project, task_id, key.user)
            values = validate(await self._body(request), RUN_CREATE_FIELDS)
            environment = values.pop("environment", "cloud")
            branch = values.pop("branch", None)
            run = self._new_run(
                task, status="not_started", environment=environment, branch=branch, state=values
            )
            return JSONResponse(run.to_json(), status_code=201)

        @app.get(one + "runs/{run_id}/")
        async def retrieve_run(request: Request, project_id: str, task_id: str, run_id: str) -> Response:
            key, project = self._authorize(request, project_id, TASK_READ)
            return JSONResponse(self._run(self._task(project, task_id, key.user), run_id).to_json())

        @app.patch(one + "runs/{run_id}/")
        async def update_run(request: Request, project_id: str, task_id: str, run_id: str) -> Response:
            key, project = self._authorize(request, project_id, TASK_WRITE)
            task = self._task(project, task_id, key.user)
            run = self._run(task, run_id)
            self._update_run(task, run, validate(await self._body(request), RUN_UPDATE_FIELDS))
            return JSONResponse(run.to_json())

        @app.post(one + "presence/")
        async def presence_beacon(request: Request, project_id: str, task_id: str) -> Response:
            key, project = self._authorize(request, project_id, TASK_WRITE)
            task = self._task(project, task_id, key.user)
            device_id = self._presence_device(key, await self._body(request))
            self.presence[(task.id, device_id)] = self.now() + PRESENCE_TTL
            return Response(status_code=204)

        @app.delete(one + "presence/")
        async def presence_leave(request: Request, project_id: str, task_id: str) -> Response:
            key, project = self._authorize(request, project_id, TASK_WRITE)
            task = self._task(project, task_id, key.user)
            device_id = self._presence_device(key, await self._body(request))
            self.presence.pop((task.id, device_id), None)
            return Response(status_code=204)

        @app.post(one + "staged_artifacts/finalize_upload/")
        async def finalize_upload(request: Request, project_id: str, task_id: str) -> Response:
            key, project = self._authorize(request, project_id, TASK_WRITE)
            task = self._task(project, task_id, key.user)
            artifacts = _artifacts(await self._body(request))
            uploaded_at = iso(self.now())
            finalized = [{**a, "uploaded_at": uploaded_at} for a in artifacts]
            for artifact in finalized:
                task.staged_artifacts[artifact["id"]] = artifact
            return JSONResponse({"artifacts": finalized})

    def _usage_limit_switch(self, app: FastAPI) -> None:
        """`/_fake/usage_limit`: the usage limit as a switch over HTTP, like `/_fake/faults`, for a
        fake run as its own process. POST `{"exceeded": true, "reset_at"?, "limit_type"?}` or
        `{"exceeded": false}`; both answer the current body (null when under the limit)."""

        def current() -> JSONResponse:
            return JSONResponse({"usage_limit": self.usage_limit.to_json() if self.usage_limit else None})

        @app.get(f"{CONTROL_PREFIX}/usage_limit")
        async def _get_usage_limit() -> Response:
            return current()

        @app.post(f"{CONTROL_PREFIX}/usage_limit")
        async def _set_usage_limit(request: Request) -> Response:
            try:
                body = json.loads(await request.body() or b"{}")
                if not isinstance(body, dict) or not isinstance(body.get("exceeded"), bool):
                    raise ValueError('send {"exceeded": true|false, "reset_at"?, "limit_type"?}')
                if body["exceeded"]:
                    reset_at = body.get("reset_at")
                    self.exceed_usage_limit(
                        reset_at=datetime.fromisoformat(reset_at) if reset_at else None,
                        limit_type=body.get("limit_type", "sustained"),
                        is_pro=bool(body.get("is_pro", False)),
                    )
                else:
                    self.clear_usage_limit()
            except (ValueError, TypeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            return current()

    def _error_handlers(self, app: FastAPI) -> None:
        @app.exception_handler(ApiError)
        async def _api_error(_: Request, exc: ApiError) -> Response:
            return self.error_response(
                exc.status, exc.code, exc.detail, type=exc.type, attr=exc.attr, **exc.extra
            )

        @app.exception_handler(StarletteHTTPException)
        async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
            # Unrouted paths and methods, answered as DRF/PostHog would rather than FastAPI's shape.
            if exc.status_code == 405:
                resp = self.error_response(
                    405, "method_not_allowed", f'Method "{request.method}" not allowed.'
                )
                resp.headers.update(exc.headers or {})
                return resp
            if exc.status_code == 404:
                return self.error_response(404, "not_found", "Endpoint not found.")
            return self.error_response(exc.status_code, "error", str(exc.detail))

    # -- demo data ------------------------------------------------------------------------------

    def _seed_demo(self) -> None:
        project = self.projects[DEFAULT_PROJECT_ID]
        demo: list[tuple[str, str, str, str, str | None]] = [
            # title, description, origin product, repository, what happened to its runs
            (
                "Fix checkout crash on empty cart",
                "TypeError in CartSummary when the cart has no items. Add a guard and a test.",
                "error_tracking",
                "acme/web-app",
                "completed",
            ),
            (
                "Add rate limiting to the public API",
                "Throttle anonymous requests to 60/min; return 429 with Retry-After.",
                "user_created",
                "acme/api",
                "in_progress",
            ),
            (
                # Sam's (the teammate's) tasks have team-visible origins, so the default key sees
                # and drives every seeded task, as before tasks were scoped per user.
                "Summarise onboarding drop-off sessions",
                "Watch the sessions that abandon step 3 of onboarding and list the common causes.",
                "onboarding",
                "acme/web-app",
                "failed",
            ),
            (
                "Upgrade Postgres client to v3",
                "Move from psycopg2 to psycopg 3 and fix the breaking changes.",
                "user_created",
                "acme/api",
                "queued",
            ),
            (
                "Flaky test: test_invoice_totals",
                "Fails about 1 in 20 runs on CI; looks timezone dependent.",
                "user_created",
                "acme/billing",
                None,
            ),
            (
                "Tidy Terraform state for staging",
                "Remove the orphaned buckets from the staging state.",
                "workflow",
                "acme/infra",
                None,
            ),
        ]
        for i, (title, description, origin, repo, outcome) in enumerate(demo):
            task = self._new_task(
                project,
                self.teammate if i % 3 == 2 else self.user,
                {
                    "title": title,
                    "title_manually_set": True,
                    "description": description,
                    "origin_product": origin,
                    "repository": repo,
                },
            )
            if outcome is not None:
                self._seed_runs(task, outcome, self.rng.randint(1, 2))
        last = self.tasks[next(reversed(self.tasks))]
        last.archived = True  # one archived task, hidden by default
        self._changed(last)

    def _seed_runs(self, task: Task, outcome: str, count: int) -> None:
        for n in range(count):
            run = self._new_run(
                task, status="queued", environment="cloud", branch=f"task/{task.slug.lower()}"
            )
            final = outcome if n == count - 1 else "failed"
            if final == "queued":
                continue
            self._update_run(task, run, {"status": "in_progress", "stage": "research"})
            if final == "in_progress":
                self._update_run(task, run, {"stage": "build"})
            elif final == "failed":
                self._update_run(
                    task,
                    run,
                    {
                        "status": "failed",
                        "stage": "build",
                        "error_message": "Sandbox exited with code 1 during tests",
                    },
                )
            else:
                self._update_run(
                    task,
                    run,
                    {
                        "status": "completed",
                        "stage": "pr",
                        "output": {
                            "pr_url": f"https://github.com/{task.repository}/pull/"
                            f"{self.rng.randint(100, 999)}"
                        },
                    },
                )
