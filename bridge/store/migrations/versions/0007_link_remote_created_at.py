"""links.remote_created_at: when the platform says it made the task a link points at, so that an
id the platform reuses for another task (a restored project) is told apart from the task we knew

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: links made before it learn the time at their next observation.
    with op.batch_alter_table("links", schema=None) as batch_op:
        batch_op.add_column(sa.Column("remote_created_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("links", schema=None) as batch_op:
        batch_op.drop_column("remote_created_at")
