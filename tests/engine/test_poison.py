"""Poison: an operation or a webhook delivery that fails in a way nobody foresaw (a bug) is set
aside after a few attempts, where a person can see it, and holds nothing else back (issue 15)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from bridge.defaults import DEFAULT_INBOX_MAX_ATTEMPTS, DEFAULT_MAX_UNEXPECTED
from bridge.engine.inbox import process_pending
from bridge.engine.outbox import Worker
from bridge.model import as_utc
from bridge.store.states import DeliveryState, OpState
from bridge.store.tables import InboxRow, OutboxRow
from connectors.base import RateLimited, Retryable, WebhookEvent
from tests import ops
from tests.engine.conftest import Harness
from tests.engine.test_engine import create_on, titles
from tests.world import World


async def test_a_poison_operation_is_parked_after_a_few_attempts_and_holds_nothing_back(
    harness: Harness, world: World
) -> None:
    poison = create_on(world, "squads", "poison")
    healthy = create_on(world, "squads", "healthy")
    await harness.settle()
    vortask = harness.ctx.connectors["vortask"]
    target = ops.view(world, "vortask")["poison"]["id"]
    real_update = vortask.update_task

    async def update_task(scope: str, remote_id: str, changes: Any) -> Any:
        if remote_id == target:
            raise KeyError("a bug in the connector")
        return await real_update(scope, remote_id, changes)

    vortask.update_task = update_task  # type: ignore[method-assign]
    worker = harness.daemon.worker
    worker.settings = dataclasses.replace(worker.settings, unexpected_delay=0.0)
    ops.edit(world, "squads", poison, title="poison, edited")
    ops.edit(world, "squads", healthy, title="healthy, edited")
    await harness.poll("squads")
    for _ in range(DEFAULT_MAX_UNEXPECTED + 2):
        await harness.drain()
    assert "healthy, edited" in titles(world, "vortask")  # not held back by its neighbour
    assert "poison, edited" in titles(world, "impactly")  # the same change elsewhere went through
    async with harness.ctx.store.read() as s:
        parked = (await s.scalars(select(OutboxRow).where(OutboxRow.state == OpState.PARKED))).all()
    assert [(r.connector, r.attempts) for r in parked] == [("vortask", DEFAULT_MAX_UNEXPECTED)]
    assert "internal error (KeyError)" in (parked[0].last_error or "")


async def test_a_poison_delivery_is_set_aside_and_its_batch_goes_through(
    harness: Harness, world: World
) -> None:
    made = [create_on(world, "vortask", f"delivered {i}") for i in range(3)]
    await harness.settle()
    for i, task_id in enumerate(made):
        ops.edit(world, "vortask", task_id, title=f"delivered {i}, edited")
    scope = world.scopes["vortask"]
    conn = harness.ctx.connectors["vortask"]

    def parse_webhook(headers: Any, body: bytes) -> Sequence[WebhookEvent]:
        text = body.decode()
        if text == "poison":
            raise RuntimeError("a bug in the connector's parser")  # not a body it cannot read
        return [WebhookEvent(scope, text, "updated")]

    conn.parse_webhook = parse_webhook  # type: ignore[method-assign]
    async with harness.ctx.store.transaction() as s:
        for key, body in [("p", "poison"), *((f"k{i}", task_id) for i, task_id in enumerate(made))]:
            s.add(
                InboxRow(
                    connector="vortask",
                    delivery_key=key,
                    body=body,
                    state=DeliveryState.PENDING,
                    attempts=0,
                    received_at=harness.ctx.now() - timedelta(seconds=1),
                )
            )
    await process_pending(harness.ctx)  # one batch: the poison and three good deliveries
    async with harness.ctx.store.read() as s:
        poison = await s.scalar(select(InboxRow).where(InboxRow.delivery_key == "p"))
    assert poison is not None and as_utc(poison.received_at) > harness.ctx.now()  # its retry waits
    await harness.drain()
    for i in range(3):
        assert f"delivered {i}, edited" in titles(world, "impactly")
    for _ in range(DEFAULT_INBOX_MAX_ATTEMPTS):
        async with harness.ctx.store.transaction() as s:  # its backoff, skipped
            await s.execute(update(InboxRow).values(received_at=harness.ctx.now() - timedelta(seconds=1)))
        await process_pending(harness.ctx)
    async with harness.ctx.store.read() as s:
        rows = {r.delivery_key: r for r in (await s.scalars(select(InboxRow))).all()}
    assert rows["p"].state == DeliveryState.FAILED
    assert rows["p"].attempts == DEFAULT_INBOX_MAX_ATTEMPTS
    assert "internal error (RuntimeError)" in (rows["p"].error or "")
    assert all(rows[f"k{i}"].state == DeliveryState.DONE and rows[f"k{i}"].attempts == 1 for i in range(3))


async def test_a_write_slower_than_its_claim_is_renewed_not_sent_twice(
    harness: Harness, world: World
) -> None:
    task_id = create_on(world, "squads", "slow")
    await harness.settle()
    vortask = harness.ctx.connectors["vortask"]
    real_update = vortask.update_task
    sent: list[str] = []

    async def slow_update(scope: str, remote_id: str, changes: Any) -> Any:
        sent.append(remote_id)
        await asyncio.sleep(2.5)  # far past the 0.6 s claim
        return await real_update(scope, remote_id, changes)

    vortask.update_task = slow_update  # type: ignore[method-assign]
    worker = Worker(
        harness.ctx, dataclasses.replace(harness.daemon.worker.settings, claim_ttl=0.6, idle_wait=0.05)
    )
    running = asyncio.create_task(worker.run())
    ops.edit(world, "squads", task_id, title="slow, edited")
    await harness.poll("squads")
    for _ in range(100):
        await asyncio.sleep(0.1)
        if "slow, edited" in titles(world, "vortask"):
            break
    await asyncio.sleep(1.0)  # any second attempt would have started by now
    worker.stop()
    await running
    assert "slow, edited" in titles(world, "vortask")
    assert len(sent) == 1, f"the write went out {len(sent)} times"


async def test_a_batch_slower_than_its_claim_leaves_another_replicas_record_alone(
    harness: Harness, world: World
) -> None:
    task_id = create_on(world, "vortask", "reclaimed")
    await harness.settle()
    scope = world.scopes["vortask"]
    conn = harness.ctx.connectors["vortask"]
    conn.parse_webhook = lambda headers, body: [WebhookEvent(scope, body.decode(), "updated")]  # type: ignore[method-assign]
    real_get = conn.get_task

    async def get_task(scope: str, remote_id: str) -> Any:
        # Meanwhile our claim expired, and another replica took the delivery and set it aside.
        async with harness.ctx.store.transaction() as s:
            await s.execute(
                update(InboxRow).values(
                    state=DeliveryState.FAILED, claimed_by=None, attempts=2, error="theirs"
                )
            )
        return await real_get(scope, remote_id)

    conn.get_task = get_task  # type: ignore[method-assign]
    async with harness.ctx.store.transaction() as s:
        s.add(
            InboxRow(
                connector="vortask",
                delivery_key="slow",
                body=task_id,
                state=DeliveryState.PENDING,
                attempts=0,
                received_at=harness.ctx.now() - timedelta(seconds=1),
            )
        )
    assert await process_pending(harness.ctx) == 1
    async with harness.ctx.store.read() as s:
        [row] = (await s.scalars(select(InboxRow))).all()
    assert (row.state, row.attempts, row.error) == (DeliveryState.FAILED, 2, "theirs")


async def test_a_throttled_write_spends_no_attempt(harness: Harness, world: World) -> None:
    """A 429 with Retry-After is the platform deferring a write it did not process, not a failure:
    it must neither grow the backoff of the next real failure nor bring the operation closer to
    being parked (a backfill throttled for minutes once needed only one 500 to park a write)."""
    task = create_on(world, "squads", "throttled")
    await harness.settle()
    vortask = harness.ctx.connectors["vortask"]
    real_update = vortask.update_task
    answers: list[Exception] = [
        *(RateLimited("HTTP 429", retry_after=0.0, connector="vortask") for _ in range(4)),
        Retryable("HTTP 500", connector="vortask"),
    ]

    async def update_task(scope: str, remote_id: str, changes: Any) -> Any:
        if answers:
            raise answers.pop(0)
        return await real_update(scope, remote_id, changes)

    vortask.update_task = update_task  # type: ignore[method-assign]
    worker = harness.daemon.worker
    worker.settings = dataclasses.replace(worker.settings, max_attempts=3, backoff=0.0)
    ops.edit(world, "squads", task, title="throttled, edited")
    await harness.poll("squads")
    for _ in range(8):
        await harness.drain()
    assert not answers
    assert "throttled, edited" in titles(world, "vortask")
    async with harness.ctx.store.read() as s:
        rows = (await s.scalars(select(OutboxRow).where(OutboxRow.connector == "vortask"))).all()
    assert [(r.state, r.attempts) for r in rows][-1] == (OpState.DONE, 2)  # the 500, then the write


async def test_a_create_throttled_after_it_landed_is_looked_for_not_made_again(
    harness: Harness, world: World
) -> None:
    """A create is more than one request on some platforms (a POST, then a PUT or a run): when the
    later one is refused with a 429 after the task was made, the retry must look for it by its
    marker, so that attempt stays counted."""
    vortask = harness.ctx.connectors["vortask"]
    real_create = vortask.create_task
    refused: list[bool] = []

    async def create_task(scope: str, values: Any) -> Any:
        created = await real_create(scope, values)
        if not refused:
            refused.append(True)  # the POST landed; its follow-up request is refused
            raise RateLimited("HTTP 429", retry_after=0.0, connector="vortask")
        return created

    vortask.create_task = create_task  # type: ignore[method-assign]
    create_on(world, "squads", "made once")
    await harness.poll("squads")
    for _ in range(4):
        await harness.drain()
    assert refused
    assert titles(world, "vortask").count("made once") == 1
