"""A webhook delivery is recorded claimed by the replica that received it and handed to its inbox
loop in memory: the loop's claim of it, a write transaction a delivery, is saved. What that must
not cost: a delivery processed twice, one left unprocessed, or what waits in the store starved by
a steady stream of new ones. Over the fakes on loopback, on SQLite and on PostgreSQL (skipped
without TASKBRIDGE_TEST_PG_URL)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from bridge import config
from bridge.daemon import Daemon
from bridge.engine import inbox
from bridge.engine.inbox import Receipt, process_pending, receive
from bridge.store.states import DeliveryState
from bridge.store.tables import InboxRow
from connectors.fakekit import free_port
from tests import ops
from tests.engine import test_hierarchy
from tests.engine.conftest import Harness
from tests.engine.test_engine import create_on, titles
from tests.engine.test_hierarchy import signed_delivery
from tests.statements import statements_sent
from tests.world import World

harness = test_hierarchy.harness
new_store = test_hierarchy.new_store

OK = Receipt(202, "ok")


def inbox_statements(harness: Harness) -> AbstractContextManager[list[str]]:
    """The statements run on the inbox table meanwhile."""
    return statements_sent(harness.ctx.store, about="inbox")


async def deliveries(harness: Harness) -> dict[int, tuple[str, str | None]]:
    async with harness.ctx.store.read() as session:
        rows = (await session.execute(select(InboxRow.id, InboxRow.state, InboxRow.claimed_by))).all()
    return {row.id: (row.state, row.claimed_by) for row in rows}


async def linked(harness: Harness, world: World, *titles: str) -> None:
    """Tasks made on Vortask and linked everywhere; the harness's daemon (never started) hands
    deliveries over as a started one does."""
    harness.ctx.inbox_handing = True
    for title in titles:
        create_on(world, "vortask", title)
    await harness.settle()


def edit_delivered(world: World, title: str) -> tuple[dict[str, str], bytes]:
    """A linked task edited on Impactly: the delivery of the edit, not yet received."""
    remote_id = next(str(t["id"]) for t in ops.raw_tasks(world, "impactly") if t["title"] == title)
    ops.edit(world, "impactly", remote_id, title=f"{title}, edited there")
    return signed_delivery(world, remote_id, "task.updated")


async def an_edit_delivered(harness: Harness, world: World, title: str) -> tuple[dict[str, str], bytes]:
    await linked(harness, world, title)
    return edit_delivered(world, title)


async def test_a_delivery_is_handed_over_claimed_and_processed_without_a_claim(
    harness: Harness, world: World
) -> None:
    ctx = harness.ctx
    ctx.inbox_looked_at = 1e18  # the store was just looked at: only what is handed is taken
    delivery = await an_edit_delivered(harness, world, "handed")
    with inbox_statements(harness) as statements:
        assert await receive(ctx, "impactly", *delivery) == OK
        [(row_id, held)] = (await deliveries(harness)).items()
        assert held == (DeliveryState.CLAIMED, ctx.replica)
        assert [h.id for h in ctx.inbox_handed] == [row_id]
        statements.clear()
        assert await process_pending(ctx) == 1
    assert not ctx.inbox_handed
    # One statement on the inbox: the mark. No look for claimable deliveries, no claim.
    assert len(statements) == 1 and statements[0].startswith("UPDATE inbox SET state="), statements
    assert await deliveries(harness) == {row_id: (DeliveryState.DONE, None)}
    await harness.daemon.worker.run_until_idle()
    assert all("handed, edited there" in titles(world, p) for p in world.platforms)
    # A replay is still a duplicate, and nothing is handed for it.
    assert (await receive(ctx, "impactly", *delivery)).result == "duplicate"
    assert not ctx.inbox_handed


async def test_a_handed_delivery_whose_claim_runs_short_is_left_to_the_store(
    harness: Harness, world: World
) -> None:
    """The loop far behind: a handed delivery with less than half its claim left is not taken from
    memory (its claim could expire while it is processed, and another replica take it too). Its
    claim expires, and it is claimed from the store like any other: processed once."""
    ctx = harness.ctx
    assert await receive(ctx, "impactly", *await an_edit_delivered(harness, world, "late")) == OK
    start = ctx.now()
    ctx.clock = lambda: start + timedelta(seconds=ctx.inbox_claim_ttl * 0.6)
    assert await process_pending(ctx) == 0  # dropped from memory, still claimed in the store
    assert not ctx.inbox_handed
    [(row_id, held)] = (await deliveries(harness)).items()
    assert held == (DeliveryState.CLAIMED, ctx.replica)
    ctx.clock = lambda: start + timedelta(seconds=ctx.inbox_claim_ttl + 1)
    assert await process_pending(ctx) == 1  # the claim expired: taken from the store
    assert await deliveries(harness) == {row_id: (DeliveryState.DONE, None)}
    assert await process_pending(ctx) == 0


async def test_what_waits_in_the_store_is_taken_while_new_deliveries_keep_coming(
    harness: Harness, world: World
) -> None:
    """A delivery pending in the store (here: one given back by a stop) is claimed beside the
    handed ones at least every INBOX_STORE_LOOK seconds, however many keep being handed."""
    ctx = harness.ctx
    await linked(harness, world, "waiting", "streaming", "next")
    assert await receive(ctx, "impactly", *edit_delivered(world, "waiting")) == OK
    assert await inbox.release_claims(ctx) == 1  # a stop: given back to the store, forgotten here
    assert not ctx.inbox_handed
    [(waiting, held)] = (await deliveries(harness)).items()
    assert held == (DeliveryState.PENDING, None)

    ctx.inbox_looked_at = 1e18  # looked just now: the handed one goes alone
    assert await receive(ctx, "impactly", *edit_delivered(world, "streaming")) == OK
    assert await process_pending(ctx) == 1
    assert (await deliveries(harness))[waiting] == (DeliveryState.PENDING, None)

    ctx.inbox_looked_at = 0.0  # a look is due: the store's delivery goes with the next handed one
    assert await receive(ctx, "impactly", *edit_delivered(world, "next")) == OK
    assert await process_pending(ctx) == 2
    assert set((await deliveries(harness)).values()) == {(DeliveryState.DONE, None)}
    await harness.daemon.worker.run_until_idle()
    for title in ("waiting", "streaming", "next"):
        assert all(f"{title}, edited there" in titles(world, p) for p in world.platforms), title


async def test_nothing_is_handed_while_the_daemon_does_not_hand(harness: Harness, world: World) -> None:
    """A daemon hands nothing over before its start has given back what a dead process of its
    replica id held (that release would take back what it was handed), nor once its stop has
    begun (its memory is about to go): what it records then is pending, for any replica."""
    ctx = harness.ctx
    await linked(harness, world, "not handed")
    ctx.inbox_handing = False
    assert await receive(ctx, "impactly", *edit_delivered(world, "not handed")) == OK
    assert not ctx.inbox_handed
    assert set((await deliveries(harness)).values()) == {(DeliveryState.PENDING, None)}
    assert await process_pending(ctx) == 1  # claimed from the store, as before the handing
    assert set((await deliveries(harness)).values()) == {(DeliveryState.DONE, None)}


async def test_a_daemon_hands_over_only_between_its_start_and_its_stop(world: World, tmp_path: Any) -> None:
    daemon = Daemon(config.load(world.config(tmp_path, port=free_port(), poll_interval="1h")))
    assert daemon.ctx.inbox_handing is False
    await daemon.start()
    try:
        assert daemon.ctx.inbox_handing is True
    finally:
        await daemon.stop()
    assert daemon.ctx.inbox_handing is False


async def test_full_batches_of_handed_deliveries_leave_room_for_the_store(
    harness: Harness, world: World
) -> None:
    """With a look at the store due, a batch takes at most half its size from memory: a stream of
    handed deliveries that fills every batch does not keep what waits in the store waiting."""
    ctx = harness.ctx
    await linked(harness, world, "waiting", "a", "b")
    assert await receive(ctx, "impactly", *edit_delivered(world, "waiting")) == OK
    await inbox.release_claims(ctx)
    [(waiting, _)] = (await deliveries(harness)).items()
    for title in ("a", "b"):
        assert await receive(ctx, "impactly", *edit_delivered(world, title)) == OK
    ctx.inbox_looked_at = 0.0
    assert await process_pending(ctx, limit=1) == 1
    assert (await deliveries(harness))[waiting] == (DeliveryState.DONE, None)  # the store's, first
    assert len(ctx.inbox_handed) == 2
    assert await process_pending(ctx, limit=1) == 1  # a look is not due: from memory
    assert len(ctx.inbox_handed) == 1
    ctx.inbox_looked_at = 0.0
    assert await process_pending(ctx, limit=1) == 1  # due, and the store empty: memory fills it
    assert not ctx.inbox_handed
    assert set((await deliveries(harness)).values()) == {(DeliveryState.DONE, None)}


async def test_a_batch_the_store_refused_gives_its_handed_deliveries_back(
    harness: Harness, world: World, monkeypatch: Any
) -> None:
    """Still claimed in the store, they would otherwise wait out their claim."""
    ctx = harness.ctx
    await linked(harness, world, "given back")
    assert await receive(ctx, "impactly", *edit_delivered(world, "given back")) == OK
    [handed] = list(ctx.inbox_handed)
    real = ctx.store.statements

    @contextlib.asynccontextmanager
    async def locked() -> AsyncIterator[Any]:
        raise OperationalError("SELECT", {}, Exception("database is locked"))
        yield

    monkeypatch.setattr(ctx.store, "statements", locked)
    ctx.inbox_looked_at = 0.0
    with pytest.raises(OperationalError):
        await process_pending(ctx)
    assert list(ctx.inbox_handed) == [handed]
    monkeypatch.setattr(ctx.store, "statements", real)
    assert await process_pending(ctx) == 1
    assert set((await deliveries(harness)).values()) == {(DeliveryState.DONE, None)}


async def test_a_mark_for_a_claim_another_replica_took_changes_nothing(
    harness: Harness, world: World
) -> None:
    """A handed delivery whose claim was taken meanwhile (expired, claimed by another replica)
    is still processed here (an observation is idempotent), but marked only by its holder:
    that replica's record of it stands."""
    ctx = harness.ctx
    assert await receive(ctx, "impactly", *await an_edit_delivered(harness, world, "taken")) == OK
    [row_id] = [h.id for h in ctx.inbox_handed]
    async with ctx.store.transaction() as session:
        await session.execute(
            update(InboxRow).where(InboxRow.id == row_id).values(claimed_by="other-replica")
        )
    assert await process_pending(ctx) == 1
    assert await deliveries(harness) == {row_id: (DeliveryState.CLAIMED, "other-replica")}


async def test_past_the_bound_deliveries_are_recorded_for_the_store(
    harness: Harness, world: World, monkeypatch: Any
) -> None:
    """Memory holds at most INBOX_HANDED_MAX deliveries for a loop far behind: the next ones are
    recorded unclaimed, and claimed from the store."""
    ctx = harness.ctx
    monkeypatch.setattr(inbox, "INBOX_HANDED_MAX", 1)
    await linked(harness, world, "first", "second")
    assert await receive(ctx, "impactly", *edit_delivered(world, "first")) == OK
    assert await receive(ctx, "impactly", *edit_delivered(world, "second")) == OK
    [handed] = [h.id for h in ctx.inbox_handed]
    states = await deliveries(harness)
    assert states[handed] == (DeliveryState.CLAIMED, ctx.replica)
    assert [v for k, v in states.items() if k != handed] == [(DeliveryState.PENDING, None)]
    ctx.inbox_looked_at = 0.0
    assert await process_pending(ctx) == 2
    assert set((await deliveries(harness)).values()) == {(DeliveryState.DONE, None)}
