"""The committer's record of an operation's row (bridge/engine/outbox.py `_FINISH`, `_GIVE_BACK`):
conditional on what it read, so it never lands over another replica's claim made since; a
finish also lands on a row released since the read (nobody holds it, and the write landed)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from bridge.engine.outbox import _FINISH, _GIVE_BACK, _OUTBOX
from bridge.store import Store
from bridge.store.states import OpState

NOW = datetime(2026, 12, 5, tzinfo=UTC)


async def _row_after(
    tmp_path: Path, state: str, holder: str | None, statement: Any, params: dict[str, Any]
) -> tuple[Any, ...]:
    store = Store.open(f"sqlite+aiosqlite:///{tmp_path}/records.db")
    await store.migrate()
    try:
        async with store.statements() as db:
            await db.execute(
                insert(_OUTBOX).values(
                    id=1,
                    task_id="t",
                    link_id=1,
                    route="r",
                    connector="c",
                    op="update",
                    payload={},
                    state=state,
                    attempts=1,
                    next_attempt_at=NOW,
                    observed_at=NOW,
                    created_at=NOW,
                    claimed_by=holder,
                    claim_expires_at=NOW if holder else None,
                )
            )
            await db.execute(statement, [{"op_id": 1, **params}])
            row = (await db.execute(select(_OUTBOX.c.state, _OUTBOX.c.claimed_by, _OUTBOX.c.attempts))).one()
    finally:
        await store.close()
    return tuple(row)


FINISHED = {
    "was": OpState.CLAIMED,
    "holder": "me",
    "new_state": OpState.DONE,
    "error": None,
    "at": NOW,
    "by": "me",
}
GIVEN_BACK = {"was": OpState.CLAIMED, "holder": "me", "error": "503", "due": NOW, "spent": 1}


@pytest.mark.parametrize(
    ("state", "holder", "statement", "params", "after"),
    [
        ("claimed", "me", _FINISH, FINISHED, ("done", None, 1)),  # as read
        ("pending", None, _FINISH, FINISHED, ("done", None, 1)),  # released since the read
        ("claimed", "other", _FINISH, FINISHED, ("claimed", "other", 1)),  # another's claim since
        ("done", None, _FINISH, FINISHED, ("done", None, 1)),
        ("claimed", "me", _GIVE_BACK, GIVEN_BACK, ("pending", None, 1)),
        ("claimed", "other", _GIVE_BACK, GIVEN_BACK, ("claimed", "other", 1)),
        ("pending", None, _GIVE_BACK, GIVEN_BACK, ("pending", None, 1)),
    ],
)
async def test_a_record_lands_only_on_the_row_as_read_or_released(
    tmp_path: Path,
    state: str,
    holder: str | None,
    statement: Any,
    params: dict[str, Any],
    after: tuple[Any, ...],
) -> None:
    assert await _row_after(tmp_path, state, holder, statement, params) == after
