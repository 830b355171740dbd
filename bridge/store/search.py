"""The task index: what the unified API filters on, kept where SQL can use it, so a filtered list
reads an index instead of decoding every task's JSON `data`.

- `tasks.priority`: copied out of `data` (`status` and `title` already are, by the engine).
- `task_tags` and `task_assignees`: a row per (task, value), each with the task's `updated_at`
  copied in, so "tag = ? newest first" (the API's page order) reads one index in order: as fast
  for a tag on every task as for one on none.

The store keeps them true, whoever writes a task through the ORM: a flush that inserts a TaskRow,
or changes its `data` or `updated_at`, re-indexes it in the same transaction (`before_flush` sets
`priority`; `after_flush` rewrites the side rows with a few batched statements for the whole
flush). Deleting a task deletes its side rows (ON DELETE CASCADE). A write that bypasses the unit
of work (a Core `insert(TaskRow)`/`update(TaskRow)`) must index what it writes itself: take the
rows from `index_rows` (or call `write_index`, or run what `reindex` returns).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Executable, delete, event, insert, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, UOWTransaction

from bridge.store.prepared import any_of
from bridge.store.tables import TaskAssigneeRow, TaskRow, TaskTagRow

# A tag or assignee longer than this is indexed (and looked up, see `index_key`) by its first
# MAX_KEY characters: a B-tree entry has a size limit (about 2.7 kB on PostgreSQL).
MAX_KEY = 500


def index_key(value: Any) -> str:
    """The form a tag or assignee is indexed and filtered by."""
    return str(value)[:MAX_KEY]


def priority_of(data: Mapping[str, Any] | None) -> str:
    """The `priority` column's value for a task's (encoded) data."""
    return str((data or {}).get("priority") or "none")


def _keys(data: Mapping[str, Any] | None, name: str) -> list[str]:
    values = (data or {}).get(name) or []
    if isinstance(values, str):  # never written so, but a bare string is one value, not letters
        values = [values]
    return sorted({index_key(v) for v in values if v is not None})


@dataclass
class TaskIndex:
    """What one task puts in the index: its priority and its side-table rows (dicts for a Core
    `insert(TaskTagRow)` / `insert(TaskAssigneeRow)`)."""

    priority: str
    tags: list[dict[str, Any]] = field(default_factory=list)
    assignees: list[dict[str, Any]] = field(default_factory=list)


def index_rows(task_id: str, data: Mapping[str, Any] | None, updated_at: datetime) -> TaskIndex:
    """The index of a task with this (encoded) `data` and `updated_at`."""
    return TaskIndex(
        priority=priority_of(data),
        tags=[{"task_id": task_id, "tag": t, "updated_at": updated_at} for t in _keys(data, "tags")],
        assignees=[
            {"task_id": task_id, "assignee": a, "updated_at": updated_at} for a in _keys(data, "assignees")
        ],
    )


def write_index(
    connection: Connection | Session,
    tasks: Iterable[tuple[str, Mapping[str, Any] | None, datetime]],
    *,
    replace: bool = True,
) -> None:
    """Write the side rows of `tasks` ((id, data, updated_at) each), replacing what they had
    (`replace=False` for tasks just inserted, which have none). Does not touch `tasks.priority`:
    a Core writer sets that column from `index_rows(...).priority` in its own insert/update."""
    ids, tags, assignees = [], [], []
    for task_id, data, updated_at in tasks:
        ids.append(task_id)
        found = index_rows(task_id, data, updated_at)
        tags += found.tags
        assignees += found.assignees
    _write(connection, ids if replace else [], ids if replace else [], tags, assignees)


def reindex(
    task_id: str, old: Mapping[str, Any] | None, data: Mapping[str, Any] | None, updated_at: datetime
) -> list[tuple[Executable, Any]]:
    """The statements (with their parameters) that re-index one stored task whose side rows were
    written from `old` data, now that it holds `data` as of `updated_at`: for a writer outside the
    unit of work, which runs them in its transaction (`tasks.priority` is its own to set)."""
    found = index_rows(task_id, data, updated_at)
    return _statements(
        [task_id] if _keys(old, "tags") else [],
        [task_id] if _keys(old, "assignees") else [],
        found.tags,
        found.assignees,
    )


def _statements(
    clear_tags: list[str],
    clear_assignees: list[str],
    tags: list[dict[str, Any]],
    assignees: list[dict[str, Any]],
) -> list[tuple[Executable, Any]]:
    out: list[tuple[Executable, Any]] = []
    if clear_tags:
        out.append((_CLEAR_TAGS, {"ids": clear_tags}))
    if clear_assignees:
        out.append((_CLEAR_ASSIGNEES, {"ids": clear_assignees}))
    if tags:
        out.append((_ADD_TAGS, tags))
    if assignees:
        out.append((_ADD_ASSIGNEES, assignees))
    return out


# Run through a session: no synchronising of loaded rows, which for a criterion SQLAlchemy cannot
# evaluate in Python (`any_of`) would add a RETURNING of every row deleted.
_CLEAR_TAGS = (
    delete(TaskTagRow).where(any_of(TaskTagRow.task_id)).execution_options(synchronize_session=False)
)
_CLEAR_ASSIGNEES = (
    delete(TaskAssigneeRow)
    .where(any_of(TaskAssigneeRow.task_id))
    .execution_options(synchronize_session=False)
)
_ADD_TAGS = insert(TaskTagRow)
_ADD_ASSIGNEES = insert(TaskAssigneeRow)


def _write(
    connection: Connection | Session,
    clear_tags: list[str],
    clear_assignees: list[str],
    tags: list[dict[str, Any]],
    assignees: list[dict[str, Any]],
) -> None:
    for statement, params in _statements(clear_tags, clear_assignees, tags, assignees):
        connection.execute(statement, params)


# -- keeping the index true through the ORM ----------------------------------------------------


_UNKNOWN: Mapping[str, Any] = {"tags": ["?"], "assignees": ["?"]}  # "had some of each, maybe"


def _pending_changes(session: Session) -> list[tuple[TaskRow, Mapping[str, Any] | None]]:
    """The tasks whose index this flush may change, each with the `data` its side rows were
    written from (None for a new task, which has none). A deleted task's side rows go with it
    (ON DELETE CASCADE)."""
    out: list[tuple[TaskRow, Mapping[str, Any] | None]] = [
        (obj, None) for obj in session.new if isinstance(obj, TaskRow)
    ]
    deleted = set(session.deleted)
    for obj in session.dirty:
        if isinstance(obj, TaskRow) and obj not in deleted:
            changed, old = _dirty_change(obj)
            if changed:
                out.append((obj, old))
    return out


def _dirty_change(task: TaskRow) -> tuple[bool, Mapping[str, Any] | None]:
    state = inspect(task)
    data = state.attrs.data.history
    if data.has_changes():
        # The value it replaces; if that was never loaded, assume it had tags and assignees.
        return True, data.deleted[0] if data.deleted else _UNKNOWN
    if state.attrs.updated_at.history.has_changes():
        return True, task.data
    return False, None


@event.listens_for(Session, "before_flush")
def _set_priority(session: Session, _context: UOWTransaction, _instances: object) -> None:
    for obj, _ in _pending_changes(session):
        priority = priority_of(obj.data)
        if obj.priority != priority:
            obj.priority = priority


@event.listens_for(Session, "after_flush")
def _write_side_rows(session: Session, _context: UOWTransaction) -> None:
    # Still the flush's view here: `new`, `dirty` and attribute history are as before it.
    clear_tags: list[str] = []
    clear_assignees: list[str] = []
    tags: list[dict[str, Any]] = []
    assignees: list[dict[str, Any]] = []
    for obj, old in _pending_changes(session):
        if old is not None:  # replace rows only where the task had some
            if _keys(old, "tags"):
                clear_tags.append(obj.id)
            if _keys(old, "assignees"):
                clear_assignees.append(obj.id)
        found = index_rows(obj.id, obj.data, obj.updated_at)
        tags += found.tags
        assignees += found.assignees
    if clear_tags or clear_assignees or tags or assignees:
        _write(session.connection(), clear_tags, clear_assignees, tags, assignees)
