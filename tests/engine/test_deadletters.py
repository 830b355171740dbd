"""Dead letters (bridge/engine/deadletters.py): parked operations and failed deliveries listed,
retried and dropped. First against the store alone (SQLite and PostgreSQL), rows seeded directly;
then with the outbox worker and real fakes: a write parked by a refused credential reaches the
platform once retried, and a dropped one never runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bridge.engine import deadletters
from bridge.engine.context import EngineContext
from bridge.model import new_id
from bridge.store import Store
from bridge.store.states import DeliveryState, OpState
from bridge.store.tables import HistoryRow, InboxRow, OutboxRow, TaskRow
from connectors.base import AuthFailed, Permanent
from tests import ops
from tests.engine.conftest import Harness
from tests.world import World

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=5)


def context(store: Store) -> EngineContext:
    return EngineContext(store=store, routes=[], connectors={}, clock=lambda: NOW)


async def seed_task(store: Store, title: str) -> str:
    task_id = new_id()
    async with store.transaction() as session:
        session.add(
            TaskRow(
                id=task_id, route="main", data={"title": title}, title=title, created_at=T0, updated_at=T0
            )
        )
    return task_id


async def seed_op(
    store: Store, task_id: str, connector: str, state: OpState, *, error: str | None = "HTTP 401: refused"
) -> int:
    async with store.transaction() as session:
        row = OutboxRow(
            task_id=task_id,
            route="main",
            connector=connector,
            op="update",
            payload={},
            state=state,
            attempts=3,
            next_attempt_at=T0,
            last_error=error,
            observed_at=T0,
            created_at=T0,
            done_at=T0 if state in (OpState.DONE, OpState.PARKED) else None,
            done_by="replica-1" if state in (OpState.DONE, OpState.PARKED) else None,
        )
        session.add(row)
        await session.flush()
        return row.id


async def seed_delivery(store: Store, connector: str, state: DeliveryState, key: str) -> int:
    async with store.transaction() as session:
        row = InboxRow(
            connector=connector,
            delivery_key=key,
            body="{}",
            state=state,
            attempts=5,
            error="unreadable delivery" if state == DeliveryState.FAILED else None,
            received_at=T0,
            processed_at=T0 if state in (DeliveryState.DONE, DeliveryState.FAILED) else None,
        )
        session.add(row)
        await session.flush()
        return row.id


async def op_row(store: Store, op_id: int) -> OutboxRow | None:
    async with store.read() as session:
        return await session.get(OutboxRow, op_id)


async def history(store: Store, task_id: str) -> list[HistoryRow]:
    async with store.read() as session:
        return list(
            (
                await session.scalars(
                    select(HistoryRow).where(HistoryRow.task_id == task_id).order_by(HistoryRow.id)
                )
            ).all()
        )


# -- the store alone ---------------------------------------------------------------------------------


async def test_lists_parked_operations_newest_first_by_connector_in_pages(store: Store) -> None:
    ctx = context(store)
    task = await seed_task(store, "a task")
    a1 = await seed_op(store, task, "alpha", OpState.PARKED)
    await seed_op(store, task, "alpha", OpState.DONE)
    b1 = await seed_op(store, task, "beta", OpState.PARKED)
    a2 = await seed_op(store, task, "alpha", OpState.PARKED)
    pending = await seed_op(store, task, "alpha", OpState.PENDING)

    page = await deadletters.list_operations(ctx)
    assert [o.id for o in page.items] == [a2, b1, a1]
    assert page.next_cursor is None
    assert page.items[0].title == "a task" and page.items[0].last_error == "HTTP 401: refused"

    alpha = await deadletters.list_operations(ctx, connector="alpha")
    assert [o.id for o in alpha.items] == [a2, a1]

    first = await deadletters.list_operations(ctx, limit=2)
    assert [o.id for o in first.items] == [a2, b1] and first.next_cursor == b1
    rest = await deadletters.list_operations(ctx, limit=2, cursor=first.next_cursor)
    assert [o.id for o in rest.items] == [a1]

    every = await deadletters.list_operations(ctx, state=None)
    assert len(every.items) == 5 and every.items[0].id == pending
    assert [o.id for o in (await deadletters.list_operations(ctx, state=OpState.PENDING)).items] == [pending]


async def test_retry_moves_parked_to_pending_now_wakes_the_worker_and_writes_history(store: Store) -> None:
    ctx = context(store)
    task = await seed_task(store, "refused")
    op = await seed_op(store, task, "alpha", OpState.PARKED)
    ctx.outbox_ready.clear()

    (result,) = await deadletters.retry_operations(ctx, [op], who="ops")

    assert result == deadletters.Result(op, True, "pending", "alpha")
    assert ctx.outbox_ready.is_set()
    row = await op_row(store, op)
    assert row is not None
    assert row.state == OpState.PENDING
    assert row.attempts == 0
    assert row.next_attempt_at == NOW
    assert row.last_error == "HTTP 401: refused"  # kept until it runs again
    assert row.done_at is None and row.done_by is None and row.claimed_by is None
    (h,) = await history(store, task)
    assert (h.field, h.source, h.via) == ("*", "ops", "outbox")
    assert h.new == {"v": "write to alpha retried by ops"}
    assert h.old == {"v": f"update #{op} parked: HTTP 401: refused"}
    assert h.at == NOW


async def test_retry_refuses_unknown_ids_and_operations_not_parked_per_id(store: Store) -> None:
    ctx = context(store)
    task = await seed_task(store, "mixed")
    done = await seed_op(store, task, "alpha", OpState.DONE)
    pending = await seed_op(store, task, "alpha", OpState.PENDING)
    parked = await seed_op(store, task, "alpha", OpState.PARKED)
    ctx.outbox_ready.clear()

    results = await deadletters.retry_operations(ctx, [done, 999_999, parked, pending, parked], who="ops")

    assert [(r.id, r.ok, r.reason) for r in results] == [
        (done, False, "wrong_state"),
        (999_999, False, "unknown"),
        (parked, True, None),
        (pending, False, "wrong_state"),
    ]
    assert "is done, not parked" in (results[0].error or "")
    assert results[1].error == "no outbox operation 999999"
    assert (await op_row(store, done)).state == OpState.DONE  # type: ignore[union-attr]
    assert (await op_row(store, parked)).state == OpState.PENDING  # type: ignore[union-attr]
    assert len(await history(store, task)) == 1  # only the one retried

    ctx.outbox_ready.clear()
    refused = await deadletters.retry_operations(ctx, [done], who="ops")
    assert not refused[0].ok and not ctx.outbox_ready.is_set()  # nothing to wake the worker for


async def test_retry_all_parked_of_one_connector_in_chunks(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deadletters, "RETRY_ALL_CHUNK", 2)
    ctx = context(store)
    task = await seed_task(store, "many")
    alpha = [await seed_op(store, task, "alpha", OpState.PARKED) for _ in range(5)]
    beta = await seed_op(store, task, "beta", OpState.PARKED)
    done = await seed_op(store, task, "alpha", OpState.DONE)

    results = await deadletters.retry_parked(ctx, who="cli", connector="alpha")

    assert [r.id for r in results] == alpha and all(r.ok for r in results)
    assert (await op_row(store, beta)).state == OpState.PARKED  # type: ignore[union-attr]
    assert (await op_row(store, done)).state == OpState.DONE  # type: ignore[union-attr]
    assert {h.source for h in await history(store, task)} == {"cli"}
    assert [r.id for r in await deadletters.retry_parked(ctx, who="cli")] == [beta]
    assert await deadletters.retry_parked(ctx, who="cli") == []


async def test_drop_deletes_a_parked_operation_and_notes_it_in_history(store: Store) -> None:
    ctx = context(store)
    task = await seed_task(store, "dropped")
    parked = await seed_op(store, task, "alpha", OpState.PARKED)
    pending = await seed_op(store, task, "alpha", OpState.PENDING)

    results = await deadletters.drop_operations(ctx, [parked, pending, 424242], who="ops")

    assert [(r.id, r.ok, r.state, r.reason) for r in results] == [
        (parked, True, None, None),
        (pending, False, "pending", "wrong_state"),
        (424242, False, None, "unknown"),
    ]
    assert await op_row(store, parked) is None
    assert (await op_row(store, pending)).state == OpState.PENDING  # type: ignore[union-attr]
    (h,) = await history(store, task)
    assert h.new == {"v": "write to alpha dropped by ops"} and h.via == "outbox" and h.source == "ops"
    assert h.old == {"v": f"update #{parked} parked: HTTP 401: refused"}
    # Gone for good: a retry of it is an unknown id.
    (again,) = await deadletters.retry_operations(ctx, [parked], who="ops")
    assert again.reason == "unknown"


async def test_failed_deliveries_are_listed_retried_and_dropped(store: Store) -> None:
    ctx = context(store)
    f1 = await seed_delivery(store, "alpha", DeliveryState.FAILED, "d1")
    done = await seed_delivery(store, "alpha", DeliveryState.DONE, "d2")
    f2 = await seed_delivery(store, "beta", DeliveryState.FAILED, "d3")
    f3 = await seed_delivery(store, "alpha", DeliveryState.FAILED, "d4")

    page = await deadletters.list_deliveries(ctx)
    assert [d.id for d in page.items] == [f3, f2, f1]
    assert page.items[0].error == "unreadable delivery" and page.items[0].delivery_key == "d4"
    assert [d.id for d in (await deadletters.list_deliveries(ctx, connector="beta")).items] == [f2]
    assert [d.id for d in (await deadletters.list_deliveries(ctx, state=DeliveryState.DONE)).items] == [done]

    ctx.inbox_ready.clear()
    results = await deadletters.retry_deliveries(ctx, [f1, done, 77], who="ops")
    assert [(r.ok, r.reason) for r in results] == [(True, None), (False, "wrong_state"), (False, "unknown")]
    assert ctx.inbox_ready.is_set()
    async with store.read() as session:
        row = await session.get(InboxRow, f1)
    assert row is not None
    assert (row.state, row.attempts, row.received_at, row.processed_at) == ("pending", 0, NOW, None)

    assert [r.id for r in await deadletters.retry_failed(ctx, who="ops", connector="beta")] == [f2]

    dropped = await deadletters.drop_deliveries(ctx, [f3, f1], who="ops")
    assert [(r.ok, r.reason) for r in dropped] == [(True, None), (False, "wrong_state")]  # f1 is pending
    async with store.read() as session:
        assert await session.get(InboxRow, f3) is None
    assert (await deadletters.list_deliveries(ctx)).items == []


# -- with the worker and real fakes ------------------------------------------------------------------


def refuse_credential(monkeypatch: pytest.MonkeyPatch, conn: Any, name: str) -> None:
    """The platform answers this connector's reads and writes of a task 401, as it would a
    revoked token."""

    async def refused(*args: Any, **kwargs: Any) -> Any:
        raise AuthFailed("the token was refused", status=401, connector=name)

    monkeypatch.setattr(conn, "get_task", refused)
    monkeypatch.setattr(conn, "update_task", refused)


async def park_an_edit(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch, title: str
) -> list[int]:
    """A task on every platform, then an edit on vortask whose writes to agentkanban are parked
    by a 401 (the edit's, and the one queued again when its other writes landed). Returns the
    parked operations' ids."""
    vt_id = ops.create(world, "vortask", title)
    await harness.settle()
    assert title in ops.view(world, "agentkanban")
    refuse_credential(monkeypatch, harness.ctx.connectors["agentkanban"], "agentkanban")
    ops.edit(world, "vortask", vt_id, title=f"{title} (edited)")
    await harness.poll("vortask")
    await harness.drain()
    await harness.drain()
    parked = (await deadletters.list_operations(harness.ctx)).items
    assert parked and {p.connector for p in parked} == {"agentkanban"}
    assert all("401" in (p.last_error or "") for p in parked)
    monkeypatch.undo()  # the credential is fixed
    await harness.settle()  # the bridge alone never takes them out of the parking lot
    assert f"{title} (edited)" not in ops.view(world, "agentkanban")
    assert len((await deadletters.list_operations(harness.ctx)).items) == len(parked)
    return [p.id for p in parked]


async def test_retried_writes_reach_the_platform(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    parked = await park_an_edit(harness, world, monkeypatch, "retry me")

    results = await deadletters.retry_parked(harness.ctx, who="ops", connector="agentkanban")
    assert sorted(r.id for r in results) == sorted(parked) and all(r.ok for r in results)
    await harness.drain()

    assert "retry me (edited)" in ops.view(world, "agentkanban")
    for op in parked:
        assert (await op_row(harness.ctx.store, op)).state == OpState.DONE  # type: ignore[union-attr]
    assert (await deadletters.list_operations(harness.ctx)).items == []


async def test_dropped_writes_never_run(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    parked = await park_an_edit(harness, world, monkeypatch, "drop me")
    task_id = (await op_row(harness.ctx.store, parked[0])).task_id  # type: ignore[union-attr]
    writes_before = world.fakes["agentkanban"].requests.writes()

    results = await deadletters.drop_operations(harness.ctx, parked, who="ops")
    assert all(r.ok for r in results)
    await harness.settle()

    assert "drop me" in ops.view(world, "agentkanban")  # the edit never went out
    assert world.fakes["agentkanban"].requests.writes() == writes_before
    assert all(
        r.reason == "unknown" for r in await deadletters.retry_operations(harness.ctx, parked, who="ops")
    )
    dropped = [h for h in await history(harness.ctx.store, task_id) if h.via == "outbox"]
    assert [h.new for h in dropped] == [{"v": "write to agentkanban dropped by ops"}] * len(parked)


def landed_then_refused(monkeypatch: pytest.MonkeyPatch, conn: Any, method: str) -> None:
    """The connector's `method` reaches the platform, which applies it, and then fails for good
    (an answer it cannot read, a follow-up request refused): the write parks, having landed."""
    real = getattr(conn, method)

    async def landed(*args: Any, **kwargs: Any) -> Any:
        await real(*args, **kwargs)
        raise Permanent("the platform's answer could not be read", status=422)

    monkeypatch.setattr(conn, method, landed)


async def test_a_retried_create_or_comment_that_had_landed_is_not_sent_twice(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A person's retry gives a parked write a fresh budget, but a create or a comment that ran
    may be on the platform already: its retry looks for it first, as the outbox's own retries do."""
    landed_then_refused(monkeypatch, harness.ctx.connectors["impactly"], "create_task")
    vt_id = ops.create(world, "vortask", "made once")
    await harness.settle()
    monkeypatch.undo()
    ops.comment(world, "vortask", vt_id, "said once")
    landed_then_refused(monkeypatch, harness.ctx.connectors["agentkanban"], "add_comment")
    await harness.settle()
    monkeypatch.undo()
    parked = (await deadletters.list_operations(harness.ctx)).items
    assert sorted((p.op, p.connector) for p in parked) == [("comment", "agentkanban"), ("create", "impactly")]
    assert [t["title"] for t in ops.raw_tasks(world, "impactly")].count("made once") == 1

    results = await deadletters.retry_parked(harness.ctx, who="ops")
    assert all(r.ok for r in results) and len(results) == 2
    await harness.settle()

    assert [t["title"] for t in ops.raw_tasks(world, "impactly")].count("made once") == 1
    ak_id = str(ops.view(world, "agentkanban")["made once"]["id"])
    assert [c for c in ops.comments(world, "agentkanban", ak_id) if c.endswith("said once")] == [
        "Bob via vortask: said once"
    ]
    assert (await deadletters.list_operations(harness.ctx)).items == []
