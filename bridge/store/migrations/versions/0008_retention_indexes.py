"""indexes for retention: finished rows by age (outbox state+done_at, inbox state+processed_at,
conflicts state+resolved_at, history at). The inbox's and the conflicts' state indexes are
prefixes of the new ones, so those replace them.

Building them reads each table once: on a store that has grown for a long time (history above
all) the first start after the upgrade takes a while longer.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Index changes only: batch mode on SQLite alters nothing else (no table is copied).
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_state_done_at", ["state", "done_at"], unique=False)

    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.create_index("ix_inbox_state_processed_at", ["state", "processed_at"], unique=False)
        batch_op.drop_index("ix_inbox_state")

    with op.batch_alter_table("conflicts", schema=None) as batch_op:
        batch_op.create_index("ix_conflicts_state_resolved_at", ["state", "resolved_at"], unique=False)
        batch_op.drop_index("ix_conflicts_state")

    with op.batch_alter_table("history", schema=None) as batch_op:
        batch_op.create_index("ix_history_at", ["at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("history", schema=None) as batch_op:
        batch_op.drop_index("ix_history_at")

    with op.batch_alter_table("conflicts", schema=None) as batch_op:
        batch_op.create_index("ix_conflicts_state", ["state"], unique=False)
        batch_op.drop_index("ix_conflicts_state_resolved_at")

    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.create_index("ix_inbox_state", ["state"], unique=False)
        batch_op.drop_index("ix_inbox_state_processed_at")

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_state_done_at")
