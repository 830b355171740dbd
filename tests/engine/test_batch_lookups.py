"""What one observation of a batch stores, the next observation's Core reads find: a batch's
observations share one transaction, and the lookups they make (a child's parent link by its
remote id) are Core statements, before which nothing flushes the session. SQLite and
PostgreSQL."""

from __future__ import annotations

import types
from datetime import UTC, datetime

from sqlalchemy import select

from bridge.engine import sync
from bridge.store import Store
from bridge.store.tables import LinkRow, TaskRow

NOW = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)


async def test_a_mirror_adopted_early_in_a_batch_is_found_by_its_remote_id_later_in_it(store: Store) -> None:
    """A create's mirror reported before the create's outcome is recorded is adopted by its
    marker (`_adopt_mirror`); a child of it observed later in the same batch finds it as its
    parent, whether or not a new task was made in between (whose flush once stored it by chance)."""
    member = types.SimpleNamespace(connector="c", scope="s")
    async with store.transaction() as session:
        session.add(
            TaskRow(id="P", route="main", data={}, title="", status="todo", created_at=NOW, updated_at=NOW)
        )
        await session.flush()
        session.add(
            LinkRow(
                task_id="P",
                route="main",
                connector="c",
                scope="s",
                remote_id=None,
                state="creating",
                base={},
                is_mirror=True,
                created_at=NOW,
                updated_at=NOW,
            )
        )
    reported = types.SimpleNamespace(
        remote_id="rP", updated_at=NOW, created_at=NOW, url=None, content_hash=None
    )
    async with store.transaction() as session:
        assert await sync._adopt_mirror(session, member, reported, "P", {"title": "p"}, NOW)
        assert await sync.linked_parents(session, "main", "c", ["rP"]) == {"rP": "P"}
    async with store.read() as session:
        (link,) = (await session.scalars(select(LinkRow))).all()
        assert (link.remote_id, link.state, link.base) == ("rP", "active", {"title": "p"})
