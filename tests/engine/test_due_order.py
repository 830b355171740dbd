"""A burst of changes found by a poll is written oldest change first, whatever order the platform
lists the tasks in (Vortask lists by id): each update falls due at its change's time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bridge.engine import poller
from bridge.engine.poller import poll_connector
from bridge.engine.sync import enqueue, op_values
from bridge.model import as_utc
from bridge.store.states import OpKind, OpState
from bridge.store.tables import LinkRow, OutboxRow
from tests import ops
from tests.engine.conftest import Harness
from tests.world import World


async def test_a_polled_burst_is_written_oldest_edit_first(harness: Harness, world: World) -> None:
    ids = [ops.create(world, "vortask", f"wrap {i}") for i in range(4)]
    await harness.settle()
    # Edits that wrap around the id-ordered list: the last two tasks first.
    edited = [ids[2], ids[3], ids[0], ids[1]]
    for n, remote_id in enumerate(edited):
        ops.edit(world, "vortask", remote_id, title=f"wrap edited {n}")
    stamps = {str(t["id"]): t["updatedAt"] for t in ops.raw_tasks(world, "vortask") if str(t["id"]) in ids}
    report = await poll_connector(harness.ctx, "vortask")
    assert report.changed == 4, report
    async with harness.ctx.store.read() as session:
        rows = await session.execute(
            select(LinkRow.task_id, LinkRow.remote_id).where(LinkRow.connector == "vortask")
        )
        source = {task_id: remote_id for task_id, remote_id in rows.all()}
        updates = (
            await session.scalars(
                select(OutboxRow)
                .where(OutboxRow.op == OpKind.UPDATE, OutboxRow.state == OpState.PENDING)
                .order_by(OutboxRow.next_attempt_at, OutboxRow.id)
            )
        ).all()
    assert len(updates) == 16  # four edits, four mirrors each
    # The claim's order: each edit's four writes, in the order the edits were made.
    order = [source[op.task_id] for op in updates]
    assert order == [rid for rid in edited for _ in range(4)], order
    for op in updates:
        assert as_utc(op.next_attempt_at) == datetime.fromisoformat(stamps[source[op.task_id]]), op
        assert as_utc(op.next_attempt_at) <= as_utc(op.created_at)
    await harness.settle()
    for platform in world.platforms:
        assert sum(t["title"].startswith("wrap edited") for t in ops.raw_tasks(world, platform)) == 4, (
            platform
        )


async def test_a_poll_observes_what_arrived_together_oldest_change_first(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Across the chunks of a listing (two tasks each here), not only within one."""
    ids = [ops.create(world, "vortask", f"held {i}") for i in range(4)]
    await harness.settle()
    edited = [ids[3], ids[2], ids[0], ids[1]]
    for n, remote_id in enumerate(edited):
        ops.edit(world, "vortask", remote_id, title=f"held edited {n}")
    monkeypatch.setattr(poller, "CHUNK", 2)
    seen: list[str] = []
    real_observe = poller.observe

    async def recording(ctx: Any, session: Any, observation: Any) -> bool:
        seen.append(observation.task.remote_id)
        return await real_observe(ctx, session, observation)

    monkeypatch.setattr(poller, "observe", recording)
    report = await poll_connector(harness.ctx, "vortask")
    assert report.changed == 4 and seen == edited, seen
    # Held no longer than HOLD_TASKS: a chunk at a time, each oldest change first.
    seen.clear()
    for n, remote_id in enumerate(edited):
        ops.edit(world, "vortask", remote_id, title=f"held again {n}")
    monkeypatch.setattr(poller, "HOLD_TASKS", 1)
    report = await poll_connector(harness.ctx, "vortask")
    assert report.changed == 4 and seen == [ids[0], ids[1], ids[3], ids[2]], seen


class _Session:
    def __init__(self) -> None:
        self.added: list[Any] = []

    def add(self, row: Any) -> None:
        self.added.append(row)


NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("due", "expected"),
    [
        (None, NOW),  # nothing said: due now
        (NOW - timedelta(seconds=4), NOW - timedelta(seconds=4)),  # a change made before the poll
        (NOW + timedelta(hours=1), NOW),  # a platform's clock ahead of ours: never due later than now
        (datetime(2026, 12, 3, 11, 0), datetime(2026, 12, 3, 11, 0, tzinfo=UTC)),  # naive is UTC
    ],
)
def test_an_operation_falls_due_at_its_change_never_later_than_now(
    due: datetime | None, expected: datetime
) -> None:
    session = _Session()
    task, link = type("T", (), {"id": "t1", "route": "r"})(), type("L", (), {"id": 7, "connector": "c"})()
    row = enqueue(session, op_values(task, link, OpKind.UPDATE, {}, observed_at=NOW, now=NOW, due=due))  # type: ignore[arg-type]
    assert session.added == [row]
    assert as_utc(row.next_attempt_at) == expected
    assert row.created_at == NOW and row.observed_at == NOW
