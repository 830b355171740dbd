"""outbox indexes that lead with what the hot lookups name: (link_id, state, id) for "is an
operation of these links waiting" and the claim's "no earlier unfinished operation of this link"
probe; (task_id, state) for a task's unfinished or open operations. They replace (link_id, id)
and (task_id), of which they are extensions.

Why: SQLite, without statistics, costs an equality on `state` alone as selective as one on
`link_id`, so "link_id IN (...) AND state = 'pending'" read every pending operation through a
state-led index: with a backlog of 40,000 creates (a backfill) each committer transaction paid
for the whole backlog. With both columns in one index, it is the cheaper plan on any store.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Index changes only: batch mode on SQLite alters nothing else (no table is copied).
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_link_state", ["link_id", "state", "id"], unique=False)
        batch_op.create_index("ix_outbox_task_state", ["task_id", "state"], unique=False)
        batch_op.drop_index("ix_outbox_link_order")
        batch_op.drop_index("ix_outbox_task_id")


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_task_id", ["task_id"], unique=False)
        batch_op.create_index("ix_outbox_link_order", ["link_id", "id"], unique=False)
        batch_op.drop_index("ix_outbox_task_state")
        batch_op.drop_index("ix_outbox_link_state")
