"""The bridge's own tables. Alembic owns the schema (bridge/store/migrations); this module is the
source the migrations are written from, and what queries are built with.

Times are stored as UTC. JSON columns hold canonical values encoded by `bridge.model.encode_values`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from bridge.model import as_utc

# Constraint names are fixed so migrations are the same on SQLite and PostgreSQL.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on SQLite (which stores naive text) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = _aware_utc(value)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        # SQLite stores the text of SQLAlchemy's DATETIME format ("YYYY-MM-DD HH:MM:SS.ffffff"),
        # which `isoformat` writes in C: the two steps (this type's, then DATETIME's formatting
        # through a dict of fields) cost 2.8 us a value against 1.2, and a claimed or recorded
        # operation binds a dozen. tests/unit/test_datetime_binding.py holds the text equal to
        # theirs.
        return _sqlite_text

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def _aware_utc(value: datetime) -> datetime:
    """`value` in UTC; a naive one is refused (the store never guesses a zone)."""
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the store; use UTC-aware times")
    return value.astimezone(UTC)


def _sqlite_text(value: datetime | None) -> str | None:
    if value is None:
        return None
    return _aware_utc(value).isoformat(" ", "microseconds")[:26]  # less the "+00:00"


# SQLite has no 64-bit autoincrement distinction; PostgreSQL gets BIGINT identities.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = metadata
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class TaskRow(Base):
    """A canonical task. `data` holds the canonical field values (encoded)."""

    __tablename__ = "tasks"
    __table_args__ = (
        # The API's newest-first cursor, alone and after an equality filter: each reads a page in
        # order from its index (migration 0005; bridge/store/search.py has the tag/assignee ones).
        Index("ix_tasks_listing", "updated_at", "id"),
        Index("ix_tasks_route_listing", "route", "updated_at", "id"),
        Index("ix_tasks_status_listing", "status", "updated_at", "id"),
        Index("ix_tasks_priority_listing", "priority", "updated_at", "id"),
    )
    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    route: Mapped[str] = mapped_column(String(200))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    title: Mapped[str] = mapped_column(Text, default="")  # copied out of data for search and sorting
    status: Mapped[str] = mapped_column(String(32), default="todo")
    # Copied out of data by the store itself on every flush (bridge/store/search.py), for filtering.
    priority: Mapped[str] = mapped_column(String(16), default="none", server_default="none")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    deleted_at: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(Integer, default=1)
    # field -> ISO time it last changed (the remote's clock); "*" for fields unchanged since the
    # create. NULL on tasks made before migration 0004 (updated_at stands in).
    field_times: Mapped[dict[str, str] | None] = mapped_column(JSON, default=None)


class TaskTagRow(Base):
    """One of a task's tags, for filtering (bridge/store/search.py keeps these true from `data`).
    `updated_at` is the task's, copied so that "tag = ? newest first" reads one index in order."""

    __tablename__ = "task_tags"
    __table_args__ = (Index("ix_task_tags_listing", "tag", "updated_at", "task_id"),)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(Text, primary_key=True)
    updated_at: Mapped[datetime]


class TaskAssigneeRow(Base):
    """One of a task's assignees, for filtering; like TaskTagRow."""

    __tablename__ = "task_assignees"
    __table_args__ = (Index("ix_task_assignees_listing", "assignee", "updated_at", "task_id"),)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    assignee: Mapped[str] = mapped_column(Text, primary_key=True)
    updated_at: Mapped[datetime]


class LinkRow(Base):
    """One remote copy of a task. `base` is the canonical values as that side last agreed with us,
    after its mapping's round trip. `remote_id` is NULL while a create is in flight."""

    __tablename__ = "links"
    __table_args__ = (
        UniqueConstraint("connector", "remote_id"),
        UniqueConstraint("task_id", "connector", "scope"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    route: Mapped[str] = mapped_column(String(200))
    connector: Mapped[str] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(200))
    remote_id: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default="active")  # creating|active|gone|unlinked
    base: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    remote_updated_at: Mapped[datetime | None]
    # When the platform made the task (as it says): a task under the same id made at another time
    # is another task (the platform reused the id), not an edit of this one.
    remote_created_at: Mapped[datetime | None]
    content_hash: Mapped[str | None] = mapped_column(String(64))
    remote_url: Mapped[str | None] = mapped_column(Text)
    is_mirror: Mapped[bool] = mapped_column(Boolean, default=False)  # created by us: carries the marker
    # Writes of ours to this side whose outcome is not recorded (in flight, or sent with the
    # answer lost), oldest first, each as its values will read back: an observation showing them
    # is our own write landing, not an edit there (engine.core.agreed). A list since migration
    # 0010, which made each single mapping of before a list of one.
    inflight: Mapped[list[dict[str, Any]] | dict[str, Any] | None] = mapped_column(JSON)
    # What our last update of this side replaced there (engine.core.Overwritten, as
    # engine.sync.encode_overwritten writes it): a report from inside that write's window that
    # shows an edit there is an edit the write overwrote. Since migration 0011.
    overwritten: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class CommentRow(Base):
    __tablename__ = "comments"
    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    body: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(200))
    origin: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]


class CommentLinkRow(Base):
    __tablename__ = "comment_links"
    __table_args__ = (
        UniqueConstraint("connector", "remote_id"),
        UniqueConstraint("comment_id", "connector"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    comment_id: Mapped[str] = mapped_column(ForeignKey("comments.id", ondelete="CASCADE"))
    connector: Mapped[str] = mapped_column(String(200))
    remote_id: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default="active")  # creating|active
    created_at: Mapped[datetime]


class WatermarkRow(Base):
    """Where polling of one (connector, scope) got to: a cursor, a time, or a listing hash."""

    __tablename__ = "watermarks"
    connector: Mapped[str] = mapped_column(String(200), primary_key=True)
    scope: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime]


class OutboxRow(Base):
    """A write owed to a platform. Claimed by a worker until `claim_expires_at`; operations on one
    link apply in `id` order."""

    __tablename__ = "outbox"
    __table_args__ = (
        # The claim walks due operations in (next_attempt_at, id) order from here and stops at
        # its limit (on SQLite the id is in every index, so no sort).
        Index("ix_outbox_claimable", "state", "next_attempt_at"),
        # A link's (or task's) unfinished operations, and the claim's "no earlier unfinished op
        # of this link" probe. `state` follows the key so that no planner reads every pending
        # operation through a state-led index instead (migration 0009).
        Index("ix_outbox_link_state", "link_id", "state", "id"),
        Index("ix_outbox_task_state", "task_id", "state"),
        Index("ix_outbox_state_done_at", "state", "done_at"),  # retention (migration 0008)
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(26))
    link_id: Mapped[int | None] = mapped_column(BigId)
    comment_id: Mapped[str | None] = mapped_column(String(26))
    route: Mapped[str] = mapped_column(String(200))
    connector: Mapped[str] = mapped_column(String(200))
    op: Mapped[str] = mapped_column(String(32))  # create|update|delete|archive|comment|unlink
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|claimed|done|parked
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    claim_expires_at: Mapped[datetime | None]
    done_by: Mapped[str | None] = mapped_column(String(200))  # the replica that applied it
    last_error: Mapped[str | None] = mapped_column(Text)
    observed_at: Mapped[datetime]  # when the change that caused it was seen (propagation latency)
    created_at: Mapped[datetime]
    done_at: Mapped[datetime | None]


class InboxRow(Base):
    """A webhook delivery, recorded before it is answered and processed after."""

    __tablename__ = "inbox"
    __table_args__ = (
        UniqueConstraint("connector", "delivery_key"),
        # The claim's state lookups, and retention's finished deliveries by age (migration 0008).
        Index("ix_inbox_state_processed_at", "state", "processed_at"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    connector: Mapped[str] = mapped_column(String(200))
    delivery_key: Mapped[str] = mapped_column(String(200))  # the platform's delivery id, else body hash
    body: Mapped[str] = mapped_column(Text)
    # The non-secret headers the connector's parse_webhook reads (its webhook_headers), lowercased;
    # NULL when it reads none. Never a signature or a credential.
    headers: Mapped[dict[str, str] | None] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|claimed|done|failed
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    claim_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime]
    processed_at: Mapped[datetime | None]


class ConflictRow(Base):
    __tablename__ = "conflicts"
    # Open conflicts by state, and retention's resolved ones by age (migration 0008).
    __table_args__ = (Index("ix_conflicts_state_resolved_at", "state", "resolved_at"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    route: Mapped[str] = mapped_column(String(200))
    field: Mapped[str] = mapped_column(String(32))
    candidates: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"bridge": v, "<connector>": v, ...}
    state: Mapped[str] = mapped_column(String(16), default="open")  # open|resolved
    resolution: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]


class HistoryRow(Base):
    """An audit row for every applied change: what, from where, when."""

    __tablename__ = "history"
    __table_args__ = (Index("ix_history_at", "at"),)  # retention deletes by age (migration 0008)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(26), index=True)
    field: Mapped[str] = mapped_column(String(32))
    old: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # {"v": value}, so null is a value
    new: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(200))  # connector name, "api" or "policy"
    via: Mapped[str] = mapped_column(String(16))  # poll|webhook|api|conflict
    at: Mapped[datetime]


class LeaseRow(Base):
    """Ownership of a job (a connector's polling) by one replica until `expires_at`."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]
    acquired_at: Mapped[datetime]


class MetaRow(Base):
    """Small facts the bridge keeps about itself (e.g. webhook registrations)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    flag: Mapped[bool] = mapped_column(Boolean, default=False)
