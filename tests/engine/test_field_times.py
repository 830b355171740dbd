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

import pytest

from bridge.engine.inbox import process_pending, receive
from tests import ops
from tests.engine import test_hierarchy
from tests.engine.conftest import Harness
from tests.engine.test_engine import create_on, titles
from tests.world import WEBHOOK_SECRET, World

# The store's backend is these fixtures' parameter, as in those tests.
harness = test_hierarchy.harness
new_store = test_hierarchy.new_store


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
    vt_id = create_on(world, "vortask", "dated")
    await harness.settle()
    imp_id = ops.view(world, "impactly")["dated"]["id"]
    ops.edit(world, "vortask", vt_id, title="dated on vortask")
    await asyncio.sleep(0.05)
    ops.edit(world, "impactly", imp_id, title="dated on impactly")
    await harness.poll("impactly")  # the bridge's title: Impactly's; its write to Vortask waits
    await asyncio.sleep(0.05)
    ops.edit(world, "vortask", vt_id, due_date="2031-03-04")
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
    await harness.settle()
    for platform in world.platforms:
        assert "dated on impactly" in titles(world, platform), platform
    for platform in ("impactly", "vortask", "squads"):
        assert ops.view(world, platform)["dated on impactly"]["due_date"] == "2031-03-04", platform
