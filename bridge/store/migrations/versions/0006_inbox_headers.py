"""inbox.headers: the non-secret headers a connector's parse_webhook reads (an event type sent
only in a header), recorded with each delivery so that processing parses it as it arrived

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: deliveries recorded before it have none (their connectors read none
    # then), and adding it rewrites no row on either SQLite or PostgreSQL.
    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("headers", sa.JSON(), nullable=True))


def downgrade() -> None:
    # No foreign key points at inbox, so even SQLite's "move and copy" (before 3.35) loses nothing.
    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.drop_column("headers")
