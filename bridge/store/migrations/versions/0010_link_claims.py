"""links.inflight holds a list: every write of ours to the link's side whose outcome is not
recorded (its claims, oldest first), where it held the one write in flight. A store's single
mapping becomes a list of one.

Why a revision for a change of what a JSON column holds: a taskbridge from before reads the
column as one mapping and would fail on every link holding a list (links keep claims of a write
in flight at shutdown, or of one whose answer was lost). With the revision moved, such a binary
refuses the store at start instead; downgrading keeps the newest claim as that mapping.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# (the JSON type of a value, a JSON array of one value, the last element of an array), per dialect
_SQL = {
    "sqlite": ("json_type(inflight)", "json_array(json(inflight))", "json_extract(inflight, '$[#-1]')"),
    "postgresql": ("json_typeof(inflight)", "json_build_array(inflight)", "inflight -> -1"),
}


def upgrade() -> None:
    kind, wrap, _ = _SQL[op.get_bind().dialect.name]
    op.execute(f"UPDATE links SET inflight = {wrap} WHERE {kind} = 'object'")


def downgrade() -> None:
    kind, _, last = _SQL[op.get_bind().dialect.name]
    op.execute(f"UPDATE links SET inflight = {last} WHERE {kind} = 'array'")
