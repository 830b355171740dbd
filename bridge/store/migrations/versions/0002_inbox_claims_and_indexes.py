"""claims for the inbox, who applied an operation, listing indexes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("claim_expires_at", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("done_by", sa.String(length=200), nullable=True))
        batch_op.drop_index(batch_op.f("ix_outbox_link_order"))
        batch_op.create_index("ix_outbox_link_order", ["link_id", "id"], unique=False)

    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasks_updated_at"))
        batch_op.create_index("ix_tasks_listing", ["updated_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_listing")
        batch_op.create_index(batch_op.f("ix_tasks_updated_at"), ["updated_at"], unique=False)

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_link_order")
        batch_op.create_index(
            batch_op.f("ix_outbox_link_order"), ["connector", "link_id", "id"], unique=False
        )
        batch_op.drop_column("done_by")

    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.drop_column("claim_expires_at")
        batch_op.drop_column("claimed_by")
