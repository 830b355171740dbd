"""The canonical vocabulary: what a task *is* to the bridge, whatever platform it lives on.

Value objects only, no I/O. Every platform's task is read into these values through its
mapping, and written back from them. Field values are kept in one normal form so two
observations can be compared with `==`:

- text fields are `str` ("" for absent description), sets are `frozenset[str]`,
- `due_date`/`start_date` are `datetime.date` (a date stays a date: no timezone ever touches it),
- timestamps are timezone-aware UTC `datetime`s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from ulid import ULID


class Status(StrEnum):
    TODO = "todo"
    IN_PROGRESS = "in_progress"
    BLOCKED = "blocked"
    DONE = "done"
    CANCELLED = "cancelled"


class Priority(StrEnum):
    NONE = "none"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    URGENT = "urgent"


# The fields a route can sync, in a stable order (used for display and history).
SYNC_FIELDS: tuple[str, ...] = (
    "title",
    "description",
    "status",
    "priority",
    "assignees",
    "tags",
    "due_date",
    "start_date",
    "parent",
    "archived",
)
SET_FIELDS: frozenset[str] = frozenset({"assignees", "tags"})
DATE_FIELDS: frozenset[str] = frozenset({"due_date", "start_date"})

Values = dict[str, Any]
"""A partial map of SYNC_FIELDS to normalized canonical values (what one side reports)."""


def new_id() -> str:
    """A bridge-owned id: a ULID, sortable by creation time."""
    return str(ULID())


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A timestamp in UTC; a naive one is taken to be UTC already (what SQLite hands back)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_date(value: str | date | datetime | None) -> date | None:
    """A calendar date from "2026-03-20", "2026-03-20T00:00:00Z" or a date; the date part is kept
    as written, never shifted by a timezone."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def parse_timestamp(value: str | datetime | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return as_utc(value)
    return as_utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))


def normalize(name: str, value: Any) -> Any:
    """The normal form of one field's value; raises ValueError for a value the field can't hold."""
    if name not in SYNC_FIELDS:
        raise ValueError(f"unknown field {name!r}")
    if name in SET_FIELDS:
        if value is None:
            return frozenset()
        if isinstance(value, str):
            raise ValueError(f"{name} must be a list, not a string")
        return frozenset(str(v) for v in value)
    if name in DATE_FIELDS:
        return parse_date(value)
    if name == "status":
        return Status(value)
    if name == "priority":
        return Priority(value if value is not None else "none")
    if name == "archived":
        return bool(value)
    if name == "description":
        return "" if value is None else str(value)
    if name == "parent":
        return None if value in (None, "") else str(value)
    if name == "title":
        text = "" if value is None else str(value)
        return text
    raise AssertionError(name)


def normalize_values(values: Mapping[str, Any]) -> Values:
    return {k: normalize(k, v) for k, v in values.items()}


def encode(name: str, value: Any) -> Any:
    """A field value as JSON (for the store and the API)."""
    if name in SET_FIELDS:
        return sorted(value)
    if name in DATE_FIELDS:
        return value.isoformat() if value is not None else None
    if isinstance(value, StrEnum):
        return value.value
    return value


def encode_values(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: encode(k, v) for k, v in values.items()}


def decode(name: str, value: Any) -> Any:
    """A field value from its JSON form (the inverse of `encode`)."""
    return normalize(name, value)


def decode_values(data: Mapping[str, Any]) -> Values:
    return normalize_values(data)


def diff(old: Mapping[str, Any], new: Mapping[str, Any], fields: Iterable[str] | None = None) -> set[str]:
    """The fields whose values differ between two Values (a field missing on one side counts)."""
    names = set(fields) if fields is not None else set(old) | set(new)
    return {f for f in names if (f in old) != (f in new) or old.get(f) != new.get(f)}


@dataclass(frozen=True)
class Person:
    """Someone known on several platforms: `ids` maps a connector name to their id there."""

    key: str
    name: str
    email: str | None = None
    ids: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """A canonical task. `id` is the bridge's own; each remote copy is a link in the store."""

    id: str
    route: str
    title: str = ""
    description: str = ""
    status: Status = Status.TODO
    priority: Priority = Priority.NONE
    assignees: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    due_date: date | None = None
    start_date: date | None = None
    parent: str | None = None
    archived: bool = False
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)

    def values(self, fields: Iterable[str] = SYNC_FIELDS) -> Values:
        return {f: getattr(self, f) for f in fields}

    def with_values(self, values: Mapping[str, Any], *, updated_at: datetime | None = None) -> Task:
        changes = normalize_values(values)
        if updated_at is not None:
            changes["updated_at"] = as_utc(updated_at)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_values(cls, id: str, route: str, values: Mapping[str, Any], **times: datetime) -> Task:
        return cls(id=id, route=route, **normalize_values(values), **times)


@dataclass(frozen=True)
class Comment:
    """A comment, mirrored append-only. `author` is a display name ("Alice"); `origin` is the
    connector it was first written on (None when written through the unified API)."""

    id: str
    task_id: str
    body: str
    author: str
    origin: str | None
    created_at: datetime = field(default_factory=utcnow)
