"""the task filter index: tasks.priority, task_tags and task_assignees (each with the task's
updated_at, for newest-first pages), listing indexes after route/status/priority; backfilled from
each task's data

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlite3
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

CHUNK = 1000
MAX_KEY = 500  # bridge.store.search.MAX_KEY when this was written

tasks = sa.table(
    "tasks",
    sa.column("id", sa.String()),
    sa.column("data", sa.JSON()),
    sa.column("updated_at", sa.DateTime(timezone=True)),
    sa.column("priority", sa.String()),
)
task_tags = sa.table(
    "task_tags",
    sa.column("task_id", sa.String()),
    sa.column("tag", sa.Text()),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)
task_assignees = sa.table(
    "task_assignees",
    sa.column("task_id", sa.String()),
    sa.column("assignee", sa.Text()),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)


def _keys(data: Any, name: str) -> list[str]:
    values = (data.get(name) or []) if isinstance(data, dict) else []
    if isinstance(values, str):
        values = [values]
    return sorted({str(v)[:MAX_KEY] for v in values if v is not None})


def _side_table(name: str, column: str) -> None:
    op.create_table(
        name,
        sa.Column("task_id", sa.String(length=26), nullable=False),
        sa.Column(column, sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=f"fk_{name}_task_id_tasks", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("task_id", column, name=f"pk_{name}"),
    )
    with op.batch_alter_table(name, schema=None) as batch_op:
        batch_op.create_index(f"ix_{name}_listing", [column, "updated_at", "task_id"], unique=False)


def _backfill() -> None:
    """Every task's priority and side rows from its data, a chunk at a time (keyset on id)."""
    bind = op.get_bind()
    last = ""
    while True:
        rows = bind.execute(
            sa.select(tasks.c.id, tasks.c.data, tasks.c.updated_at)
            .where(tasks.c.id > last)
            .order_by(tasks.c.id)
            .limit(CHUNK)
        ).all()
        if not rows:
            return
        last = rows[-1].id
        by_priority: dict[str, list[str]] = {}
        tag_rows, assignee_rows = [], []
        for task_id, data, updated_at in rows:
            priority = str(data.get("priority") or "none") if isinstance(data, dict) else "none"
            if priority != "none":
                by_priority.setdefault(priority, []).append(task_id)
            for tag in _keys(data, "tags"):
                tag_rows.append({"task_id": task_id, "tag": tag, "updated_at": updated_at})
            for who in _keys(data, "assignees"):
                assignee_rows.append({"task_id": task_id, "assignee": who, "updated_at": updated_at})
        for priority, ids in by_priority.items():
            bind.execute(sa.update(tasks).where(tasks.c.id.in_(ids)).values(priority=priority))
        if tag_rows:
            bind.execute(sa.insert(task_tags), tag_rows)
        if assignee_rows:
            bind.execute(sa.insert(task_assignees), assignee_rows)


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("priority", sa.String(length=16), server_default="none", nullable=False)
        )
        batch_op.drop_index(batch_op.f("ix_tasks_route"))
        batch_op.create_index("ix_tasks_route_listing", ["route", "updated_at", "id"], unique=False)
        batch_op.create_index("ix_tasks_status_listing", ["status", "updated_at", "id"], unique=False)
        batch_op.create_index("ix_tasks_priority_listing", ["priority", "updated_at", "id"], unique=False)

    _side_table("task_tags", "tag")
    _side_table("task_assignees", "assignee")
    _backfill()
    if op.get_bind().dialect.name == "postgresql":
        # Statistics now, not at autovacuum's leisure: the planner picks the index by them.
        op.execute("ANALYZE tasks")
        op.execute("ANALYZE task_tags")
        op.execute("ANALYZE task_assignees")


def downgrade() -> None:
    op.drop_table("task_assignees")
    op.drop_table("task_tags")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_priority_listing")
        batch_op.drop_index("ix_tasks_status_listing")
        batch_op.drop_index("ix_tasks_route_listing")
        batch_op.create_index(batch_op.f("ix_tasks_route"), ["route"], unique=False)
    bind = op.get_bind()
    if bind.dialect.name == "sqlite" and sqlite3.sqlite_version_info < (3, 35):
        with op.batch_alter_table("tasks", schema=None) as batch_op:
            batch_op.drop_column("priority")
    else:
        # In place: a batch "move and copy" drops the old tasks table, and with foreign keys on
        # that deletes every link, comment and conflict (ON DELETE CASCADE).
        op.drop_column("tasks", "priority")
