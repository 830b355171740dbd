"""links.overwritten: what our last update of a link's side replaced there (the side's time it
was last known at before the write, the write's time, the written fields' values before it, and
our writes that may have landed meanwhile). A report from inside that window showing an edit
there is an edit the write overwrote, merged as such rather than dropped as stale.

Nullable: links learn it at their next update.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("links", schema=None) as batch_op:
        batch_op.add_column(sa.Column("overwritten", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("links", schema=None) as batch_op:
        batch_op.drop_column("overwritten")
