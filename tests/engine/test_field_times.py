"""A platform that dates each field (Vortask's task history) is merged field by field.

The drill lost a title this way (2026-12-06): edits on two platforms of one field, the first
platform's older one reported with a later edit of another field, and dated by it. Over the
fakes on loopback, on SQLite and on PostgreSQL (skipped without TASKBRIDGE_TEST_PG_URL).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any

import pytest

from bridge.engine import inbox, outbox, poller
from bridge.engine.inbox import process_pending, receive
from tests import ops
from tests.engine import test_hierarchy
from tests.engine.conftest import Harness
from tests.engine.test_engine import create_on, titles
from tests.world import WEBHOOK_SECRET, World

# The store's backend is these fixtures' parameter, as in those tests.
harness = test_hierarchy.harness
new_store = test_hierarchy.new_store


DUE = "2031-03-04"


async def _edited_on_both(
    harness: Harness,
    world: World,
    name: str,
    *,
    before_impactly: Any = None,
    after_impactly: Any = None,
) -> str:
    """A task made on Vortask, mirrored; then Vortask's title edit, Impactly's (newer), and
    Vortask's due date, the awaitables given run between them. Returns the Vortask id."""
    vt_id = create_on(world, "vortask", name)
    await harness.settle()
    imp_id = ops.view(world, "impactly")[name]["id"]
    ops.edit(world, "vortask", vt_id, title=f"{name} on vortask")
    await asyncio.sleep(0.05)
    if before_impactly is not None:
        await before_impactly(imp_id)
    ops.edit(world, "impactly", imp_id, title=f"{name} on impactly")
    if after_impactly is not None:
        await after_impactly()
    await asyncio.sleep(0.05)
    ops.edit(world, "vortask", vt_id, due_date=DUE)
    return vt_id


async def _impactly_won(harness: Harness, world: World, name: str) -> None:
    """Impactly's title, the newest, everywhere; Vortask's due date taken too."""
    await harness.settle()
    for platform in world.platforms:
        assert f"{name} on impactly" in titles(world, platform), platform
    for platform in ("impactly", "vortask", "squads"):
        assert ops.view(world, platform)[f"{name} on impactly"]["due_date"] == DUE, platform


@pytest.mark.parametrize("seen_by", ["poll", "webhook", "the read before a write"])
async def test_a_side_that_dates_its_fields_is_judged_by_when_each_was_made(
    harness: Harness, world: World, seen_by: str
) -> None:
    """The drill's lost title of 2026-12-06: Vortask's title edit, then Impactly's (observed),
    then Vortask's due date, all before the bridge looks at Vortask (by a poll, by the GET of a
    delivery of the due date's edit, or by the outbox's read before it writes Impactly's title
    there). Vortask's task is dated by the due date, after Impactly's title; its own history
    dates its title before it. Impactly's title is the newest and wins everywhere; Vortask's due
    date is taken too."""

    async def impactly_observed() -> None:
        await harness.poll("impactly")  # the bridge's title: Impactly's; its write to Vortask waits

    vt_id = await _edited_on_both(harness, world, "dated", after_impactly=impactly_observed)
    if seen_by == "poll":
        await harness.poll("vortask")
    elif seen_by == "webhook":
        body = json.dumps(
            {"event": "task.updated", "projectId": int(world.scopes["vortask"]), "task": {"id": int(vt_id)}}
        ).encode()
        signature = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        receipt = await receive(harness.ctx, "vortask", {"x-vortask-signature": signature}, body)
        assert receipt.status == 202, receipt
        assert await process_pending(harness.ctx) == 1
    else:
        fake = world.fakes["vortask"]
        fake.requests.clear()
        await harness.drain()  # Impactly's title to Vortask: its read finds the task moved there
        assert any(r.method == "GET" and r.path.endswith(f"/tasks/{vt_id}") for r in fake.requests.entries)
    await _impactly_won(harness, world, "dated")


async def test_a_side_observed_between_a_polls_dating_and_its_observation_is_dated_again(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drill's lost title of session 30: a poll of Vortask judged which tasks to date when
    its listing arrived, before another side's title (PostHog's, polled) was observed; by its
    observation the title was contested, undated, and Vortask's older title won by its later
    due date. The observation's transaction looks again, and the task is dated first."""
    await _edited_on_both(harness, world, "raced")
    real = poller.date_contested
    raced: list[bool] = []

    async def date_then_impactly_observed(ctx: Any, route: Any, member: Any, tasks: Any) -> Any:
        dated = await real(ctx, route, member, tasks)
        if member.connector == "vortask" and tasks and not raced:
            raced.append(True)
            assert all(rt.field_times is None for rt in dated)  # nothing contested yet
            await harness.poll("impactly")  # the bridge's title: Impactly's, newer than Vortask's
        return dated

    monkeypatch.setattr(poller, "date_contested", date_then_impactly_observed)
    await harness.poll("vortask")
    assert raced
    await _impactly_won(harness, world, "raced")


async def test_a_side_observed_between_a_deliverys_dating_and_its_observation_is_dated_on_retry(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race by webhook: the delivery's task was read and judged before Impactly's title
    was observed; its transaction finds the title contested and undated, so the delivery is
    tried again shortly, when its task is dated, rather than observed by its later due date."""
    vt_id = await _edited_on_both(harness, world, "raced by webhook")
    real = inbox._date_contested
    raced: list[bool] = []

    async def date_then_impactly_observed(ctx: Any, work: Any) -> None:
        await real(ctx, work)
        if not raced:
            raced.append(True)
            await harness.poll("impactly")

    monkeypatch.setattr(inbox, "_date_contested", date_then_impactly_observed)
    body = json.dumps(
        {"event": "task.updated", "projectId": int(world.scopes["vortask"]), "task": {"id": int(vt_id)}}
    ).encode()
    signature = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert (await receive(harness.ctx, "vortask", {"x-vortask-signature": signature}, body)).status == 202
    assert await process_pending(harness.ctx) == 1
    assert raced
    clock = harness.ctx.clock
    monkeypatch.setattr(harness.ctx, "clock", lambda: clock() + timedelta(seconds=5))  # its retry is due
    await process_pending(harness.ctx)
    await _impactly_won(harness, world, "raced by webhook")


async def test_a_side_observed_between_a_reads_dating_and_its_merge_is_dated_again(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race in the outbox: its read before writing Impactly's priority to Vortask finds
    Vortask's title and due date moved, judged before Impactly's title is observed; the merge's
    transaction finds the title contested and undated, and dates it first."""

    async def priority_observed(imp_id: str) -> None:
        ops.edit(world, "impactly", imp_id, priority="low")
        await harness.poll("impactly")  # the priority, to be written to Vortask

    await _edited_on_both(harness, world, "raced by a read", before_impactly=priority_observed)
    real = outbox.date_contested
    raced: list[bool] = []

    async def date_then_impactly_observed(ctx: Any, route: Any, member: Any, tasks: Any) -> Any:
        dated = await real(ctx, route, member, tasks)
        if member.connector == "vortask" and not raced:
            raced.append(True)
            assert all(rt.field_times is None for rt in dated)  # nothing contested yet
            await harness.poll("impactly")
        return dated

    monkeypatch.setattr(outbox, "date_contested", date_then_impactly_observed)
    await harness.drain()
    assert raced
    await _impactly_won(harness, world, "raced by a read")
