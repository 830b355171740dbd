"""AgentKanban fake: an in-memory server of the AgentKanban external API (`/api/ext/v1`).

Built from ../shared/platforms/agentkanban.txt and the agentkanban section of NOTES.md. What the
spec documents is served as documented: `{"data": ...}` success bodies, `{"error": {"code",
"message"}}` errors with the codes missing_auth, invalid_key, forbidden, not_found,
validation_error, invalid_body, rate_limited; no pagination except on turns (limit/after/cursor).

In-process helpers (thread-safe while the fake runs): `add_key(token, boards=..., name=...)`,
`revoke_key(token)`, `create_board(name) -> id`. `demo_board_id` is the seeded board's id.

Assumed (the docs are silent on these):
- Keys: the constructor token is a key with access to all boards, with edit. `add_key(token,
  boards=None)` makes another all-boards key; `boards={board_id: "read"|"edit"}` restricts it.
  A key whose every grant is `read` may not create boards (403); any other key may, and gets edit
  on the new board. Revoking a key deletes its webhooks (NOTES).
- Auth order: 401 (no/unknown key) -> 403 (key has no grant for the board id, whether or not the
  board exists, so restricted keys cannot probe for boards) -> 404 (board gone) -> 403 (write with
  a read grant) -> 404 (lane/task/...) -> 400 (body). An absent or empty Authorization header is
  `missing_auth`; anything else that is not a live `Bearer` key is `invalid_key`.
- Ids are ULID-like strings: "01" + 24 lowercase Crockford base32 characters. `shortId` is 8 lowercase
  hex characters, unique across the fake. Timestamps are UTC RFC 3339 with milliseconds and a Z.
  Ids come from the seeded rng, which the fault switches also draw from: the seeded demo data is
  always the same for a seed, later ids only while no random fault (error/timeout/drop rate) is on.
- Bodies must be JSON objects; unknown fields are rejected with 400 validation_error (strict on
  purpose: a client that passes here sends nothing the real API would have to ignore).
- Boards: a new board gets the lanes "To Do", "Doing", "In Review", "Done" (DESIGN.md). Boards list
  in creation order. `taskCount` in the board detail counts unarchived tasks. Deleting a board
  deletes everything in it and fires no events (none is documented); keys keep their grant to
  the dead id, so they get 404 for it, not 403.
- Lanes: `position` is 0-based and dense. PATCH `position` moves the lane and shifts the others;
  positions past the end mean "last". Lane names need not be unique. Deleting a lane that still
  holds tasks (archived ones included) is 400 validation_error. Lane changes fire no events and
  do not touch tasks' `updatedAt`.
- Tasks: list order is lane position, then position within the lane. `includeArchived` takes
  "true"/"false" (anything else 400); a `laneId` filter naming no lane of the board is 400;
  `shortIdPrefix` is a case-insensitive prefix match. Create accepts title (required, trimmed),
  laneId (default: the first lane), description (string or null, default null), priority
  (integer 0..4, default 0; booleans are not integers), tags (array of non-empty strings, default
  []). It answers 201 with only the documented `{id, title, laneId}`. PATCH takes title,
  description, priority, tags, archived; `laneId` in a PATCH is 400 validation_error ("use move"),
  an empty PATCH is 400; it answers `{id, <each field sent>: <its new, normalised value>}`. Every successful
  PATCH and move sets a new `updatedAt` (the fake's clock is strictly increasing), even when no
  value changed.
- Move: `laneId` required (400 when it names no lane of the board), `position` optional 0-based
  index among the lane's tasks (archived included); past the end means append. Answers
  `{id, laneId, position}` with the final position.
- Comments: `{id, body, authorName, authorSource, createdAt}`, oldest first. `authorName` defaults
  to the key's name ("API Key" for the constructor key); `source` may be "api" or "agent" (default
  "api"); "user" only appears on seeded (UI) comments. Comments do not change the task's
  `updatedAt`. Deleting a comment fires no event (none is documented).
- Todos: `{id, text, done, iteration, order, source, createdAt}`. `iteration` is an integer >= 1
  (default 1), `order` an integer; a new todo, or one PATCHed into another iteration, goes last.
  List order is (iteration, order). Create answers 201, GET/PATCH 200 with the todo, DELETE 204.
  Reorder needs `orderedIds` to hold each of the task's todo ids exactly once (else 400), sets
  `order` to each id's index and answers 200 with the list (still sorted by iteration first).
  Todos fire no events and do not change `updatedAt`.
- Turns: a batch is 1..100 turns; each needs source, sourceId, role, content (string) and
  capturedAt (ISO 8601; no offset means UTC); `toolUseOnly` is optional (default false); role is
  one of user, assistant, system, tool. The batch is validated as a whole before anything is
  stored. Duplicates by (source, sourceId) within the task, or within the batch, are skipped.
  Order is (capturedAt, insertion). A source's watermark is its last turn in that order.
  `capturedAt` is echoed in UTC with a Z, with milliseconds only when it has a fraction.
  `lastTurnAt` is the latest capturedAt among the task's turns. Turns neither change `updatedAt`
  nor fire events. List: `limit` 1..100 (default 50), `after` = capturedAt strictly later,
  `source` filter, `cursor` = opaque value from the previous page (null on the last page; the
  caller repeats its filters); a bad limit, after or cursor is 400 validation_error. The POST
  answers the watermarks of all the task's sources, the list those of the sources it covers.
- Webhooks: `{id, url, events, active}` (+ `secret` on create only, + `deliveries` on GET one:
  the 20 most recent, newest first, `{id, event, createdAt, attempts, status, outcome}`). `url`
  must be http(s); `events` is a non-empty array of known names or "*". Another key's webhook is
  404. Events: board.created (data `{id, name}`), task.created / task.updated / task.deleted
  (data: the task detail; moves and archiving fire task.updated; task.deleted carries the task as
  it was), comment.created (data: the comment plus `taskId`). A hook fires only while active and
  while its key can see the board (read or edit). Changes made through this API by the hook's own
  key fire too.
- Delivery: POST of `{"id": <delivery id>, "event", "createdAt", "boardId", "data"}` (compact
  JSON) with headers `X-AgentKanban-Event`, `X-AgentKanban-Delivery` (unique per hook and event) and
  `X-AgentKanban-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 over "<t>.<raw body>" keyed
  with the whole secret string "whsec_...">`. Retries resend the same bytes and headers
  (fakekit's sender: 4 attempts, exponential backoff from 0.25 s).
- Routes that do not exist answer 404 not_found (405 method_not_allowed for a wrong method) in the
  platform's error shape; server faults answer `{"error": {"code": "internal_error", ...}}`.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import hmac
import json
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlparse

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from connectors import fakekit
from connectors.fakekit import BlockList

BASE = "/api/ext/v1"
DEFAULT_LANES = ("To Do", "Doing", "In Review", "Done")
PERMISSIONS = ("read", "edit")
EVENTS = ("board.created", "task.created", "task.updated", "task.deleted", "comment.created")
WRITE_SOURCES = ("api", "agent")
TURN_ROLES = ("user", "assistant", "system", "tool")
MAX_TURNS_PER_BATCH = 100
DEFAULT_TURN_LIMIT = 50
MAX_TURN_LIMIT = 100
RECENT_DELIVERIES = 20
DEFAULT_KEY_NAME = "API Key"
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"

T = TypeVar("T")


class ApiError(Exception):
    """An error answered in the platform's shape; raised anywhere inside a handler."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def invalid(message: str) -> ApiError:
    return ApiError(400, "validation_error", message)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The v1 signature: hex HMAC-SHA256 of "<timestamp>.<body>" keyed with the secret."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


# -- state ------------------------------------------------------------------------------------


@dataclass
class Key:
    token: str
    name: str
    boards: dict[str, str] | None  # None: every board, with edit

    def permission(self, board_id: str) -> str | None:
        return "edit" if self.boards is None else self.boards.get(board_id)


@dataclass
class Lane:
    id: str
    name: str


@dataclass
class Comment:
    id: str
    body: str
    author_name: str
    author_source: str
    created_at: datetime


@dataclass
class Todo:
    id: str
    text: str
    iteration: int
    order: int
    source: str
    created_at: datetime
    done: bool = False


@dataclass
class Turn:
    id: str
    seq: int  # insertion order, the tie-break after capturedAt
    source: str
    source_id: str
    role: str
    content: str
    tool_use_only: bool
    captured_at: datetime

    @property
    def sort_key(self) -> tuple[datetime, int]:
        return (self.captured_at, self.seq)


@dataclass
class Task:
    id: str
    short_id: str
    title: str
    description: str | None
    lane_id: str
    priority: int
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    archived: bool = False
    comments: list[Comment] = field(default_factory=list)
    todos: list[Todo] = field(default_factory=list)
    # Turns in list order (capturedAt, insertion), stored by `add_turn` only, which keeps the
    # turn log (made with the first turn) and lastTurnAt with them.
    turns: list[Turn] = field(default_factory=list)
    turn_log: TurnLog | None = None
    last_turn_at: datetime | None = None  # the latest capturedAt

    def add_turn(self, turn: Turn) -> None:
        log = self.turn_log
        if log is None:
            log = self.turn_log = TurnLog()
        for turns in (self.turns, log.by_source.setdefault(turn.source, [])):
            if turns and turn.sort_key < turns[-1].sort_key:
                bisect.insort(turns, turn, key=_turn_order)
            else:
                turns.append(turn)
        log.ids.add((turn.source, turn.source_id))
        last = log.last.get(turn.source)
        if last is None or turn.sort_key > last.sort_key:
            log.last[turn.source] = turn
        if self.last_turn_at is None or turn.captured_at > self.last_turn_at:
            self.last_turn_at = turn.captured_at

    def has_turn(self, source: str, source_id: str) -> bool:
        return self.turn_log is not None and (source, source_id) in self.turn_log.ids

    def source_turns(self, source: str) -> list[Turn]:
        """The turns of one source, in list order."""
        return self.turn_log.by_source.get(source, []) if self.turn_log else []

    @property
    def last_turns(self) -> dict[str, Turn]:
        """Each source's last turn (what its watermark names)."""
        return self.turn_log.last if self.turn_log else {}


@dataclass
class TurnLog:
    """What reading a task's turns needs besides the ordered list: the turns per source (each in
    list order), the (source, sourceId) pairs stored, and each source's last turn."""

    by_source: dict[str, list[Turn]] = field(default_factory=dict)
    ids: set[tuple[str, str]] = field(default_factory=set)
    last: dict[str, Turn] = field(default_factory=dict)


def _turn_order(turn: Turn) -> tuple[datetime, int]:
    return turn.sort_key


@dataclass
class Board:
    id: str
    name: str
    lanes: list[Lane] = field(default_factory=list)  # in position order
    tasks: dict[str, Task] = field(default_factory=dict)
    # lane id -> task ids in order (a BlockList: moving a task does not cost the whole lane)
    lane_tasks: dict[str, BlockList[str]] = field(default_factory=dict)
    archived_in: dict[str, int] = field(default_factory=dict)  # lane id -> its archived tasks

    def lane(self, lane_id: str) -> Lane | None:
        return next((lane for lane in self.lanes if lane.id == lane_id), None)


@dataclass
class DeliveryRecord:
    id: str
    event: str
    created_at: datetime
    delivery: fakekit.Delivery


@dataclass
class Webhook:
    id: str
    key_token: str
    url: str
    events: list[str]
    secret: str
    active: bool = True
    deliveries: list[DeliveryRecord] = field(default_factory=list)  # newest first

    def wants(self, event: str) -> bool:
        return "*" in self.events or event in self.events


# -- views (the API's JSON shapes) ----------------------------------------------------------------


def turn_time(dt: datetime) -> str:
    """Echo capturedAt as sent: UTC with a Z, milliseconds only when there is a fraction."""
    return str(fakekit.iso(dt, ms=dt.microsecond != 0))


def task_summary(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "shortId": task.short_id,
        "title": task.title,
        "laneId": task.lane_id,
        "priority": task.priority,
        "tags": list(task.tags),
        "archived": task.archived,
        "createdAt": fakekit.iso(task.created_at),
        "updatedAt": fakekit.iso(task.updated_at),
    }


def task_detail(task: Task) -> dict[str, Any]:
    return {
        **task_summary(task),
        "description": task.description,
        "lastTurnAt": fakekit.iso(task.last_turn_at),
    }


def comment_view(comment: Comment) -> dict[str, Any]:
    return {
        "id": comment.id,
        "body": comment.body,
        "authorName": comment.author_name,
        "authorSource": comment.author_source,
        "createdAt": fakekit.iso(comment.created_at),
    }


def todo_view(todo: Todo) -> dict[str, Any]:
    return {
        "id": todo.id,
        "text": todo.text,
        "done": todo.done,
        "iteration": todo.iteration,
        "order": todo.order,
        "source": todo.source,
        "createdAt": fakekit.iso(todo.created_at),
    }


def turn_view(turn: Turn) -> dict[str, Any]:
    return {
        "id": turn.id,
        "source": turn.source,
        "sourceId": turn.source_id,
        "role": turn.role,
        "content": turn.content,
        "toolUseOnly": turn.tool_use_only,
        "capturedAt": turn_time(turn.captured_at),
    }


def watermarks(latest: dict[str, Turn]) -> dict[str, dict[str, str]]:
    """The watermarks of the sources in `latest` (each source's last turn, `Task.last_turns`)."""
    return {
        source: {"sourceId": t.source_id, "capturedAt": turn_time(t.captured_at)}
        for source, t in sorted(latest.items())
    }


def webhook_view(hook: Webhook) -> dict[str, Any]:
    return {"id": hook.id, "url": hook.url, "events": list(hook.events), "active": hook.active}


def delivery_view(record: DeliveryRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "event": record.event,
        "createdAt": fakekit.iso(record.created_at),
        "attempts": record.delivery.attempts,
        "status": record.delivery.status,
        "outcome": record.delivery.outcome,
    }


def data(payload: Any, status: int = 200) -> JSONResponse:
    return JSONResponse({"data": payload}, status_code=status)


def no_content() -> Response:
    return Response(status_code=204)


# -- body and query validation ----------------------------------------------------------------------


def check_object(body: Any, allowed: Iterable[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("Request body must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise invalid(f"Unknown field: {unknown[0]}")
    return body


def text(value: Any, message: str) -> str:
    """A required, non-blank string, trimmed; `message` is the error when it is not."""
    if not isinstance(value, str) or not value.strip():
        raise invalid(message)
    return value.strip()


def integer(value: Any, name: str, *, minimum: int, maximum: int | None = None) -> int:
    # bool is an int subclass in Python but not an integer in JSON terms
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise invalid(f"{name} must be an integer {bounds}")
    return value


def boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise invalid(f"{name} must be a boolean")
    return value


def priority(value: Any) -> int:
    return integer(value, "priority", minimum=0, maximum=4)


def tags(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value):
        raise invalid("tags must be an array of non-empty strings")
    return list(dict.fromkeys(t.strip() for t in value))  # trimmed, duplicates dropped, order kept


def description(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise invalid("description must be a string or null")
    return value


def source(value: Any) -> str:
    if value not in WRITE_SOURCES:
        raise invalid("source must be one of: " + ", ".join(WRITE_SOURCES))
    return str(value)


def timestamp(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise invalid(f"{name} must be an ISO 8601 timestamp")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise invalid(f"{name} must be an ISO 8601 timestamp") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def webhook_url(value: Any) -> str:
    parsed = urlparse(value) if isinstance(value, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise invalid("url must be an http(s) URL")
    return str(value)


def webhook_events(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(e == "*" or e in EVENTS for e in value):
        raise invalid("events must be a non-empty array of: *, " + ", ".join(EVENTS))
    return list(dict.fromkeys(value))


def encode_cursor(turn: Turn) -> str:
    raw = f"{turn.captured_at.isoformat()}|{turn.seq}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, _, seq = raw.partition("|")
        return datetime.fromisoformat(when).astimezone(UTC), int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid("cursor is not valid") from None


# -- demo data ---------------------------------------------------------------------------------------

DEMO_TASKS: list[tuple[str, str, int, list[str], str]] = [
    (
        "Fix login redirect loop after SSO",
        "Doing",
        3,
        ["bug", "auth"],
        "Users coming back from the SSO provider land on /login again instead of their board.",
    ),
    (
        "Add CSV export to the reports page",
        "To Do",
        2,
        ["feature"],
        "Finance wants the monthly report as CSV with the same columns as the table.",
    ),
    (
        "Upgrade Postgres from 14 to 16",
        "In Review",
        1,
        ["infra"],
        "Staging is upgraded; production needs a maintenance window.",
    ),
    (
        "Write the onboarding guide for new agents",
        "To Do",
        1,
        ["docs"],
        "Cover API keys, board permissions and how turns are captured.",
    ),
    (
        "Flaky test: test_webhook_retry",
        "Doing",
        2,
        ["bug", "ci"],
        "Fails about one run in twenty on CI; timing dependent.",
    ),
    (
        "Rate-limit the public search endpoint",
        "Done",
        4,
        ["security"],
        "Per-key limits with Retry-After, as agreed in the incident review.",
    ),
    ("Dark mode for the board view", "To Do", 0, ["ui"], ""),
]

DEMO_COMMENTS: list[tuple[str, str, str]] = [
    ("Priya Shah", "user", "I can reproduce this on staging with a fresh session."),
    ("Marco Rossi", "user", "Looks good to me, merging after CI is green."),
    ("Claude", "agent", "I traced it to the session cookie's SameSite attribute; patch incoming."),
    ("CI Bot", "api", "Build #4821 passed on main."),
    ("Lena Vogel", "user", "Can we split this into two tasks? The export part is bigger."),
]


class AgentKanbanFake(fakekit.Fake):
    platform = "agentkanban"
    api_root = "/api/ext/v1"

    def scope(self) -> str:
        return self.demo_board_id or next(iter(self.boards), None) or self.create_board("Sprint Board")

    def __init__(self, *, token: str, seed: int | None = None) -> None:
        super().__init__(token=token, seed=seed)
        self.keys: dict[str, Key] = {}
        self.boards: dict[str, Board] = {}  # insertion order is creation order
        self.hooks: dict[str, Webhook] = {}
        self.demo_board_id: str | None = None
        self._ids: set[str] = set()
        self._short_ids: set[str] = set()
        self._turn_seq = 0
        self._initial_state()

    def _initial_state(self) -> None:
        self.keys = {self.token: Key(self.token, DEFAULT_KEY_NAME, None)}
        self.boards = {}
        self.hooks = {}
        self.demo_board_id = None
        # forget issued ids too, so a reseeded rng gives the same seeded ids again
        self._ids, self._short_ids, self._turn_seq = set(), set(), 0
        if self.seed is not None:
            self._seed_demo()

    def reset_state(self) -> None:
        self.rng.seed(self.seed)  # reseed in place: the webhook sender shares this Random
        self._initial_state()

    # -- in-process helpers --------------------------------------------------------------------------

    def add_key(
        self, token: str, *, boards: dict[str, str] | None = None, name: str = DEFAULT_KEY_NAME
    ) -> None:
        """Another API key: all boards with edit (None), or only `{board_id: "read"|"edit"}`."""
        if boards is not None and any(p not in PERMISSIONS for p in boards.values()):
            raise ValueError(f"board permissions must be one of {PERMISSIONS}")
        key = Key(token, name, dict(boards) if boards is not None else None)
        self._on_loop(lambda: self.keys.__setitem__(token, key))

    def revoke_key(self, token: str) -> None:
        """The key stops working and its webhooks are deleted (NOTES.md)."""

        def revoke() -> None:
            self.keys.pop(token, None)
            for hook_id in [h.id for h in self.hooks.values() if h.key_token == token]:
                del self.hooks[hook_id]

        self._on_loop(revoke)

    def create_board(self, name: str) -> str:
        """A board with the default lanes, visible to all-boards keys; fires board.created."""
        return self._on_loop(lambda: self._create_board(name, None).id)

    def _on_loop(self, fn: Callable[[], T]) -> T:
        # While serving, state belongs to the server's loop; before start/after stop, run here.
        return fn() if self._server is None else self.call(fn)

    # -- error shapes ------------------------------------------------------------------------------------

    def error_response(self, status: int, code: str, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)

    def rate_limited_response(self, retry_after: int) -> Response:
        resp = self.error_response(429, "rate_limited", "Rate limit exceeded. Try again later.")
        resp.headers["Retry-After"] = str(retry_after)
        return resp

    def server_error_response(self, status: int = 500) -> Response:
        return self.error_response(status, "internal_error", "Internal server error")

    # -- ids, auth, lookups -------------------------------------------------------------------------------

    def _new_id(self) -> str:
        while True:
            new = "01" + "".join(self.rng.choice(_CROCKFORD) for _ in range(24))
            if new not in self._ids:
                self._ids.add(new)
                return new

    def _new_short_id(self) -> str:
        while True:
            new = f"{self.rng.getrandbits(32):08x}"
            if new not in self._short_ids:
                self._short_ids.add(new)
                return new

    def _key(self, request: Request) -> Key:
        if not request.headers.get("authorization", "").strip():
            raise ApiError(401, "missing_auth", "Missing Authorization header")
        token = fakekit.bearer_token(request)
        key = self.keys.get(token) if token else None
        if key is None:
            raise ApiError(401, "invalid_key", "Invalid or revoked API key")
        return key

    def _board(self, request: Request, board_id: str, *, edit: bool = False) -> tuple[Key, Board]:
        key = self._key(request)
        permission = key.permission(board_id)
        if permission is None:
            raise ApiError(403, "forbidden", "Key does not have access to that board")
        board = self.boards.get(board_id)
        if board is None:
            raise not_found("Board")
        if edit and permission != "edit":
            raise ApiError(403, "forbidden", "Key has read-only access to that board")
        return key, board

    def _task(
        self, request: Request, board_id: str, task_id: str, *, edit: bool = False
    ) -> tuple[Key, Board, Task]:
        key, board = self._board(request, board_id, edit=edit)
        task = board.tasks.get(task_id)
        if task is None:
            raise not_found("Task")
        return key, board, task

    @staticmethod
    def _lane(board: Board, lane_id: str) -> Lane:
        lane = board.lane(lane_id)
        if lane is None:
            raise not_found("Lane")
        return lane

    @staticmethod
    def _target_lane(board: Board, lane_id: Any) -> Lane:
        lane = board.lane(lane_id) if isinstance(lane_id, str) else None
        if lane is None:
            raise invalid("laneId does not match a lane on this board")
        return lane

    async def _body(self, request: Request, allowed: Iterable[str]) -> dict[str, Any]:
        return check_object(await self.json_body(request), allowed)

    # -- state changes shared by the API and seeding ---------------------------------------------------

    def _create_board(self, name: str, key: Key | None) -> Board:
        board = Board(id=self._new_id(), name=name)
        for lane_name in DEFAULT_LANES:
            self._add_lane(board, lane_name)
        self.boards[board.id] = board
        if key is not None and key.boards is not None:
            key.boards[board.id] = "edit"
        self._fire("board.created", board.id, {"id": board.id, "name": board.name})
        return board

    def _add_lane(self, board: Board, name: str) -> Lane:
        lane = Lane(id=self._new_id(), name=name)
        board.lanes.append(lane)
        board.lane_tasks[lane.id] = BlockList()
        return lane

    def _add_task(
        self,
        board: Board,
        lane: Lane,
        title: str,
        *,
        description: str | None = None,
        priority: int = 0,
        tags: list[str] | None = None,
    ) -> Task:
        now = self.now()
        task = Task(
            id=self._new_id(),
            short_id=self._new_short_id(),
            title=title,
            description=description,
            lane_id=lane.id,
            priority=priority,
            tags=list(tags or []),
            created_at=now,
            updated_at=now,
        )
        board.tasks[task.id] = task
        board.lane_tasks[lane.id].append(task.id)
        self._fire("task.created", board.id, task_detail(task))
        return task

    def _move_task(self, board: Board, task: Task, lane: Lane, position: int | None) -> int:
        board.lane_tasks[task.lane_id].remove(task.id)
        target = board.lane_tasks[lane.id]
        index = len(target) if position is None else min(position, len(target))
        target.insert(index, task.id)
        if task.archived:
            self._count_archived(board, task.lane_id, -1)
            self._count_archived(board, lane.id, +1)
        task.lane_id = lane.id
        task.updated_at = self.now()
        self._fire("task.updated", board.id, task_detail(task))
        return index

    def _add_comment(
        self, board: Board, task: Task, body: str, author_name: str, author_source: str
    ) -> Comment:
        comment = Comment(self._new_id(), body, author_name, author_source, self.now())
        task.comments.append(comment)
        self._fire("comment.created", board.id, {**comment_view(comment), "taskId": task.id})
        return comment

    def _add_todo(self, task: Task, text_: str, iteration: int, source_: str) -> Todo:
        todo = Todo(self._new_id(), text_, iteration, self._next_todo_order(task), source_, self.now())
        task.todos.append(todo)
        return todo

    @staticmethod
    def _count_archived(board: Board, lane_id: str, delta: int) -> None:
        board.archived_in[lane_id] = board.archived_in.get(lane_id, 0) + delta

    @staticmethod
    def _next_todo_order(task: Task) -> int:
        return max((t.order for t in task.todos), default=-1) + 1

    def _insert_turns(self, task: Task, turns: list[dict[str, Any]]) -> int:
        inserted = 0
        for item in turns:
            if task.has_turn(item["source"], item["sourceId"]):
                continue
            self._turn_seq += 1
            task.add_turn(
                Turn(
                    self._new_id(),
                    self._turn_seq,
                    item["source"],
                    item["sourceId"],
                    item["role"],
                    item["content"],
                    item["toolUseOnly"],
                    item["capturedAt"],
                )
            )
            inserted += 1
        return inserted

    # -- webhooks -----------------------------------------------------------------------------------------

    def _fire(self, event: str, board_id: str, payload: dict[str, Any]) -> None:
        for hook in list(self.hooks.values()):
            key = self.keys.get(hook.key_token)
            if hook.active and hook.wants(event) and key is not None and key.permission(board_id):
                self._deliver(hook, event, board_id, payload)

    def _deliver(self, hook: Webhook, event: str, board_id: str, payload: dict[str, Any]) -> None:
        delivery_id = self._new_id()
        created = self.now()
        body = json.dumps(
            {
                "id": delivery_id,
                "event": event,
                "createdAt": fakekit.iso(created),
                "boardId": board_id,
                "data": payload,
            },
            separators=(",", ":"),
        ).encode()
        ts = str(int(time.time()))
        headers = {
            "X-AgentKanban-Signature": f"t={ts},v1={sign(hook.secret, ts, body)}",
            "X-AgentKanban-Event": event,
            "X-AgentKanban-Delivery": delivery_id,
        }
        sent = self.webhooks.send(hook.url, event, body, headers)
        hook.deliveries.insert(0, DeliveryRecord(delivery_id, event, created, sent))
        del hook.deliveries[RECENT_DELIVERIES:]

    def _hook(self, key: Key, hook_id: str) -> Webhook:
        hook = self.hooks.get(hook_id)
        if hook is None or hook.key_token != key.token:  # another key's hooks do not exist for this one
            raise not_found("Webhook")
        return hook

    # -- seeding ---------------------------------------------------------------------------------------------

    def _seed_demo(self) -> None:
        board = self._create_board("Sprint Board", None)
        self.demo_board_id = board.id
        lanes = {lane.name: lane for lane in board.lanes}
        tasks = [
            self._add_task(board, lanes[lane], title, description=desc or None, priority=prio, tags=tag_list)
            for title, lane, prio, tag_list, desc in DEMO_TASKS
        ]
        for task in self.rng.sample(tasks, 4):
            for name, author_source, body in self.rng.sample(DEMO_COMMENTS, self.rng.randint(1, 2)):
                self._add_comment(board, task, body, name, author_source)
        first = tasks[0]
        for text_, iteration in [
            ("Reproduce with a fresh session", 1),
            ("Fix the SameSite attribute", 1),
            ("Add a regression test", 2),
        ]:
            self._add_todo(first, text_, iteration, "agent")
        first.todos[0].done = True
        self._insert_turns(
            first,
            [
                {
                    "source": "claude-code",
                    "sourceId": f"seed-{i}",
                    "role": role,
                    "content": content,
                    "toolUseOnly": False,
                    "capturedAt": fakekit.utcnow(),
                }
                for i, (role, content) in enumerate(
                    [
                        ("user", "Why does SSO send users back to /login?"),
                        (
                            "assistant",
                            "The session cookie is set with SameSite=Strict, so it is dropped on the redirect.",
                        ),
                    ]
                )
            ],
        )

    # -- snapshot ----------------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "keys": [{"token": k.token, "name": k.name, "boards": k.boards} for k in self.keys.values()],
            "boards": [self._board_snapshot(b) for b in self.boards.values()],
            "webhooks": [
                {
                    **webhook_view(h),
                    "key": h.key_token,
                    "secret": h.secret,
                    "deliveries": [delivery_view(d) for d in h.deliveries],
                }
                for h in self.hooks.values()
            ],
        }

    @staticmethod
    def _board_snapshot(board: Board) -> dict[str, Any]:
        return {
            "id": board.id,
            "name": board.name,
            "lanes": [
                {"id": lane.id, "name": lane.name, "position": i, "taskIds": list(board.lane_tasks[lane.id])}
                for i, lane in enumerate(board.lanes)
            ],
            "tasks": [
                {
                    **task_detail(t),
                    "comments": [comment_view(c) for c in t.comments],
                    "todos": [
                        todo_view(td) for td in sorted(t.todos, key=lambda td: (td.iteration, td.order))
                    ],
                    "turns": [turn_view(tn) for tn in sorted(t.turns, key=lambda tn: tn.sort_key)],
                }
                for t in board.tasks.values()
            ],
        }

    # -- routes ------------------------------------------------------------------------------------------------

    def routes(self, app: FastAPI) -> None:
        @app.exception_handler(ApiError)
        async def _api_error(_: Request, exc: ApiError) -> Response:
            return self.error_response(exc.status, exc.code, exc.message)

        @app.exception_handler(StarletteHTTPException)
        async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
            return self.error_response(exc.status_code, code, str(exc.detail))

        self._board_routes(app)
        self._lane_routes(app)
        self._task_routes(app)
        self._comment_routes(app)
        self._todo_routes(app)
        self._turn_routes(app)
        self._webhook_routes(app)

    def _board_routes(self, app: FastAPI) -> None:
        @app.get(f"{BASE}/boards")
        async def list_boards(request: Request) -> Response:
            key = self._key(request)
            return data(
                [
                    {"id": b.id, "name": b.name, "permission": key.permission(b.id)}
                    for b in self.boards.values()
                    if key.permission(b.id)
                ]
            )

        @app.post(f"{BASE}/boards")
        async def create_board(request: Request) -> Response:
            key = self._key(request)
            if key.boards is not None and "edit" not in key.boards.values():
                raise ApiError(403, "forbidden", "Key has read-only access and cannot create boards")
            body = await self._body(request, ["name"])
            board = self._create_board(text(body.get("name"), "Board name is required"), key)
            return data({"id": board.id, "name": board.name}, 201)

        @app.get(f"{BASE}/boards/{{board_id}}")
        async def get_board(request: Request, board_id: str) -> Response:
            _, board = self._board(request, board_id)
            return data(
                {
                    "id": board.id,
                    "name": board.name,
                    "lanes": [
                        {
                            "id": lane.id,
                            "name": lane.name,
                            "taskCount": len(board.lane_tasks[lane.id]) - board.archived_in.get(lane.id, 0),
                        }
                        for lane in board.lanes
                    ],
                }
            )

        @app.delete(f"{BASE}/boards/{{board_id}}")
        async def delete_board(request: Request, board_id: str) -> Response:
            _, board = self._board(request, board_id, edit=True)
            del self.boards[board.id]
            return no_content()

    def _lane_routes(self, app: FastAPI) -> None:
        lanes_path = f"{BASE}/boards/{{board_id}}/lanes"

        @app.get(lanes_path)
        async def list_lanes(request: Request, board_id: str) -> Response:
            _, board = self._board(request, board_id)
            return data(
                [{"id": lane.id, "name": lane.name, "position": i} for i, lane in enumerate(board.lanes)]
            )

        @app.post(lanes_path)
        async def create_lane(request: Request, board_id: str) -> Response:
            _, board = self._board(request, board_id, edit=True)
            body = await self._body(request, ["name"])
            lane = self._add_lane(board, text(body.get("name"), "Lane name is required"))
            return data({"id": lane.id, "name": lane.name}, 201)

        @app.patch(f"{lanes_path}/{{lane_id}}")
        async def update_lane(request: Request, board_id: str, lane_id: str) -> Response:
            _, board = self._board(request, board_id, edit=True)
            lane = self._lane(board, lane_id)
            body = await self._body(request, ["name", "position"])
            # validate everything before changing anything
            name = text(body["name"], "Lane name must be a non-empty string") if "name" in body else None
            position = integer(body["position"], "position", minimum=0) if "position" in body else None
            if name is not None:
                lane.name = name
            if position is not None:
                board.lanes.remove(lane)
                board.lanes.insert(min(position, len(board.lanes)), lane)
            return data({"id": lane.id, "name": lane.name})

        @app.delete(f"{lanes_path}/{{lane_id}}")
        async def delete_lane(request: Request, board_id: str, lane_id: str) -> Response:
            _, board = self._board(request, board_id, edit=True)
            lane = self._lane(board, lane_id)
            if board.lane_tasks[lane.id]:
                raise invalid("Lane still has tasks; move or delete them first")
            board.lanes.remove(lane)
            del board.lane_tasks[lane.id]
            board.archived_in.pop(lane.id, None)
            return no_content()

    def _task_routes(self, app: FastAPI) -> None:
        tasks_path = f"{BASE}/boards/{{board_id}}/tasks"
        task_path = f"{tasks_path}/{{task_id}}"

        @app.get(tasks_path)
        async def list_tasks(request: Request, board_id: str) -> Response:
            _, board = self._board(request, board_id)
            query = request.query_params
            archived_flag = query.get("includeArchived", "false").lower()
            if archived_flag not in ("true", "false"):
                raise invalid("includeArchived must be true or false")
            lane_ids = [lane.id for lane in board.lanes]
            if "laneId" in query:
                lane_ids = [self._target_lane(board, query["laneId"]).id]
            prefix = query.get("shortIdPrefix", "").lower()
            tasks = (board.tasks[t] for lane_id in lane_ids for t in board.lane_tasks[lane_id])
            return data(
                [
                    task_summary(t)
                    for t in tasks
                    if (archived_flag == "true" or not t.archived) and t.short_id.startswith(prefix)
                ]
            )

        @app.post(tasks_path)
        async def create_task(request: Request, board_id: str) -> Response:
            _, board = self._board(request, board_id, edit=True)
            body = await self._body(request, ["title", "laneId", "description", "priority", "tags"])
            title = text(body.get("title"), "Task title is required")
            if body.get("laneId") is not None:
                lane = self._target_lane(board, body["laneId"])
            elif board.lanes:
                lane = board.lanes[0]
            else:
                raise invalid("Board has no lanes")
            task = self._add_task(
                board,
                lane,
                title,
                description=description(body.get("description")),
                priority=priority(body["priority"]) if "priority" in body else 0,
                tags=tags(body["tags"]) if "tags" in body else [],
            )
            return data({"id": task.id, "title": task.title, "laneId": task.lane_id}, 201)

        @app.get(task_path)
        async def get_task(request: Request, board_id: str, task_id: str) -> Response:
            _, _, task = self._task(request, board_id, task_id)
            return data(task_detail(task))

        updaters: dict[str, Callable[[Any], Any]] = {
            "title": lambda v: text(v, "title must be a non-empty string"),
            "description": description,
            "priority": priority,
            "tags": tags,
            "archived": lambda v: boolean(v, "archived"),
        }

        @app.patch(task_path)
        async def update_task(request: Request, board_id: str, task_id: str) -> Response:
            _, board, task = self._task(request, board_id, task_id, edit=True)
            body = await self._body(request, [*updaters, "laneId"])
            if "laneId" in body:
                raise invalid("laneId cannot be changed with PATCH; use POST .../tasks/:taskId/move")
            if not body:
                raise invalid("No updatable fields given (title, description, priority, tags, archived)")
            changes = {name: updaters[name](value) for name, value in body.items()}
            was_archived = task.archived
            for name, value in changes.items():
                setattr(task, name, value)  # the updatable JSON names equal the attribute names
            if task.archived != was_archived:
                self._count_archived(board, task.lane_id, 1 if task.archived else -1)
            task.updated_at = self.now()
            self._fire("task.updated", board.id, task_detail(task))
            return data({"id": task.id, **changes})

        @app.post(f"{task_path}/move")
        async def move_task(request: Request, board_id: str, task_id: str) -> Response:
            _, board, task = self._task(request, board_id, task_id, edit=True)
            body = await self._body(request, ["laneId", "position"])
            if body.get("laneId") is None:
                raise invalid("laneId is required")
            lane = self._target_lane(board, body["laneId"])
            position = (
                integer(body["position"], "position", minimum=0) if body.get("position") is not None else None
            )
            index = self._move_task(board, task, lane, position)
            return data({"id": task.id, "laneId": lane.id, "position": index})

        @app.delete(task_path)
        async def delete_task(request: Request, board_id: str, task_id: str) -> Response:
            _, board, task = self._task(request, board_id, task_id, edit=True)
            del board.tasks[task.id]
            board.lane_tasks[task.lane_id].remove(task.id)
            if task.archived:
                self._count_archived(board, task.lane_id, -1)
            self._fire("task.deleted", board.id, task_detail(task))
            return no_content()

    def _comment_routes(self, app: FastAPI) -> None:
        comments_path = f"{BASE}/boards/{{board_id}}/tasks/{{task_id}}/comments"

        @app.get(comments_path)
        async def list_comments(request: Request, board_id: str, task_id: str) -> Response:
            _, _, task = self._task(request, board_id, task_id)
            return data([comment_view(c) for c in task.comments])

        @app.post(comments_path)
        async def add_comment(request: Request, board_id: str, task_id: str) -> Response:
            key, board, task = self._task(request, board_id, task_id, edit=True)
            body = await self._body(request, ["body", "authorName", "source"])
            comment_body = text(body.get("body"), "Comment body is required")
            author = (
                text(body["authorName"], "authorName must be a non-empty string")
                if body.get("authorName") is not None
                else key.name
            )
            comment_source = source(body["source"]) if body.get("source") is not None else "api"
            comment = self._add_comment(board, task, comment_body, author, comment_source)
            return data(comment_view(comment), 201)

        @app.delete(f"{comments_path}/{{comment_id}}")
        async def delete_comment(request: Request, board_id: str, task_id: str, comment_id: str) -> Response:
            _, _, task = self._task(request, board_id, task_id, edit=True)
            comment = next((c for c in task.comments if c.id == comment_id), None)
            if comment is None:
                raise not_found("Comment")
            task.comments.remove(comment)
            return no_content()

    def _todo_routes(self, app: FastAPI) -> None:
        todos_path = f"{BASE}/boards/{{board_id}}/tasks/{{task_id}}/todos"
        todo_path = f"{todos_path}/{{todo_id}}"

        def ordered(task: Task) -> list[dict[str, Any]]:
            return [todo_view(t) for t in sorted(task.todos, key=lambda t: (t.iteration, t.order))]

        def find(task: Task, todo_id: str) -> Todo:
            todo = next((t for t in task.todos if t.id == todo_id), None)
            if todo is None:
                raise not_found("Todo")
            return todo

        @app.get(todos_path)
        async def list_todos(request: Request, board_id: str, task_id: str) -> Response:
            _, _, task = self._task(request, board_id, task_id)
            return data(ordered(task))

        @app.post(todos_path)
        async def create_todo(request: Request, board_id: str, task_id: str) -> Response:
            _, _, task = self._task(request, board_id, task_id, edit=True)
            body = await self._body(request, ["text", "iteration", "source"])
            todo = self._add_todo(
                task,
                text(body.get("text"), "Todo text is required"),
                integer(body["iteration"], "iteration", minimum=1)
                if body.get("iteration") is not None
                else 1,
                source(body["source"]) if body.get("source") is not None else "api",
            )
            return data(todo_view(todo), 201)

        # declared before the {todo_id} routes so "reorder" is never taken for a todo id
        @app.post(f"{todos_path}/reorder")
        async def reorder_todos(request: Request, board_id: str, task_id: str) -> Response:
            _, _, task = self._task(request, board_id, task_id, edit=True)
            body = await self._body(request, ["orderedIds"])
            ids = body.get("orderedIds")
            by_id = {t.id: t for t in task.todos}
            if not isinstance(ids, list) or len(ids) != len(by_id) or set(ids) != set(by_id):
                raise invalid("orderedIds must list each of the task's todo ids exactly once")
            for index, todo_id in enumerate(ids):
                by_id[todo_id].order = index
            return data(ordered(task))

        @app.get(todo_path)
        async def get_todo(request: Request, board_id: str, task_id: str, todo_id: str) -> Response:
            _, _, task = self._task(request, board_id, task_id)
            return data(todo_view(find(task, todo_id)))

        @app.patch(todo_path)
        async def update_todo(request: Request, board_id: str, task_id: str, todo_id: str) -> Response:
            _, _, task = self._task(request, board_id, task_id, edit=True)
            todo = find(task, todo_id)
            body = await self._body(request, ["text", "done", "iteration"])
            new_text = text(body["text"], "text must be a non-empty string") if "text" in body else todo.text
            done = boolean(body["done"], "done") if "done" in body else todo.done
            iteration = (
                integer(body["iteration"], "iteration", minimum=1) if "iteration" in body else todo.iteration
            )
            if iteration != todo.iteration:
                todo.order = self._next_todo_order(task)  # joins its new iteration at the end
            todo.text, todo.done, todo.iteration = new_text, done, iteration
            return data(todo_view(todo))

        @app.delete(todo_path)
        async def delete_todo(request: Request, board_id: str, task_id: str, todo_id: str) -> Response:
            _, _, task = self._task(request, board_id, task_id, edit=True)
            task.todos.remove(find(task, todo_id))
            return no_content()

    def _turn_routes(self, app: FastAPI) -> None:
        turns_path = f"{BASE}/boards/{{board_id}}/tasks/{{task_id}}/turns"

        def parse_turn(index: int, item: Any) -> dict[str, Any]:
            where = f"turns[{index}]"
            if not isinstance(item, dict):
                raise invalid(f"{where} must be an object")
            check_object(item, ["source", "sourceId", "role", "content", "capturedAt", "toolUseOnly"])
            for name in ("source", "sourceId", "role"):
                text(item.get(name), f"{where}.{name} is required")
            if item["role"] not in TURN_ROLES:
                raise invalid(f"{where}.role must be one of: " + ", ".join(TURN_ROLES))
            if not isinstance(item.get("content"), str):
                raise invalid(f"{where}.content is required")
            return {
                "source": item["source"].strip(),
                "sourceId": item["sourceId"].strip(),
                "role": item["role"],
                "content": item["content"],
                "capturedAt": timestamp(item.get("capturedAt"), f"{where}.capturedAt"),
                "toolUseOnly": boolean(item.get("toolUseOnly", False), f"{where}.toolUseOnly"),
            }

        @app.post(turns_path)
        async def post_turns(request: Request, board_id: str, task_id: str) -> Response:
            _, _, task = self._task(request, board_id, task_id, edit=True)
            body = await self._body(request, ["turns"])
            items = body.get("turns")
            if not isinstance(items, list) or not items:
                raise invalid("turns must be a non-empty array")
            if len(items) > MAX_TURNS_PER_BATCH:
                raise invalid(f"At most {MAX_TURNS_PER_BATCH} turns per batch")
            parsed = [parse_turn(i, item) for i, item in enumerate(items)]
            inserted = self._insert_turns(task, parsed)
            return JSONResponse(
                {"data": {"inserted": inserted}, "watermarks": watermarks(task.last_turns)}, status_code=201
            )

        @app.get(turns_path)
        async def list_turns(request: Request, board_id: str, task_id: str) -> Response:
            _, _, task = self._task(request, board_id, task_id)
            query = request.query_params
            try:
                limit = int(query.get("limit", DEFAULT_TURN_LIMIT))
            except ValueError:
                limit = 0
            if not 1 <= limit <= MAX_TURN_LIMIT:
                raise invalid(f"limit must be an integer from 1 to {MAX_TURN_LIMIT}")
            # The turns are kept in list order, per source too: a page is found by bisection.
            turns, covered = task.turns, task.last_turns
            if "source" in query:
                source_ = query["source"]
                turns = task.source_turns(source_)
                # the watermarks describe the filtered sources, not just this page
                covered = {source_: task.last_turns[source_]} if source_ in task.last_turns else {}
            start = 0
            if "after" in query:
                after = timestamp(query["after"], "after")
                start = bisect.bisect_right(turns, (after, math.inf), key=_turn_order)
            if "cursor" in query:
                position = decode_cursor(query["cursor"])
                start = max(start, bisect.bisect_right(turns, position, key=_turn_order))
            page = turns[start : start + limit]
            more = len(turns) - start > limit
            return JSONResponse(
                {
                    "data": [turn_view(t) for t in page],
                    "watermarks": watermarks(covered),
                    "cursor": encode_cursor(page[-1]) if more else None,
                }
            )

        @app.get(f"{turns_path}/watermark")
        async def turn_watermarks(request: Request, board_id: str, task_id: str) -> Response:
            _, _, task = self._task(request, board_id, task_id)
            return JSONResponse({"watermarks": watermarks(task.last_turns)})

    def _webhook_routes(self, app: FastAPI) -> None:
        hooks_path = f"{BASE}/webhooks"

        @app.get(hooks_path)
        async def list_webhooks(request: Request) -> Response:
            key = self._key(request)
            return data([webhook_view(h) for h in self.hooks.values() if h.key_token == key.token])

        @app.post(hooks_path)
        async def create_webhook(request: Request) -> Response:
            key = self._key(request)
            body = await self._body(request, ["url", "events"])
            hook = Webhook(
                id=self._new_id(),
                key_token=key.token,
                url=webhook_url(body.get("url")),
                events=webhook_events(body.get("events")),
                secret="whsec_" + secrets.token_hex(24),
            )
            self.hooks[hook.id] = hook
            return data({**webhook_view(hook), "secret": hook.secret}, 201)

        @app.get(f"{hooks_path}/{{hook_id}}")
        async def get_webhook(request: Request, hook_id: str) -> Response:
            hook = self._hook(self._key(request), hook_id)
            return data({**webhook_view(hook), "deliveries": [delivery_view(d) for d in hook.deliveries]})

        @app.patch(f"{hooks_path}/{{hook_id}}")
        async def update_webhook(request: Request, hook_id: str) -> Response:
            hook = self._hook(self._key(request), hook_id)
            body = await self._body(request, ["url", "events", "active"])
            url = webhook_url(body["url"]) if "url" in body else hook.url
            events = webhook_events(body["events"]) if "events" in body else hook.events
            active = boolean(body["active"], "active") if "active" in body else hook.active
            hook.url, hook.events, hook.active = url, events, active
            return data(webhook_view(hook))

        @app.delete(f"{hooks_path}/{{hook_id}}")
        async def delete_webhook(request: Request, hook_id: str) -> Response:
            hook = self._hook(self._key(request), hook_id)
            del self.hooks[hook.id]
            return no_content()
