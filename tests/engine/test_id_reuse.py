"""A platform that reuses ids (a restored project, a fake restarted) must cause no crash, no
stuck operation and no rename of an unrelated task (issue 15)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import select

from bridge.store.states import LinkState, OpState
from bridge.store.tables import HistoryRow, LinkRow, OutboxRow
from tests import ops
from tests.engine.conftest import Harness
from tests.engine.test_engine import create_on, titles
from tests.world import World

OTHERS = ("impactly", "agentkanban", "runs", "squads")


async def test_an_id_reused_for_another_task_is_a_new_task_not_a_rename(
    harness: Harness, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    create_on(world, "vortask", "first one")
    create_on(world, "vortask", "first two")
    await harness.settle()
    for p in OTHERS:
        assert {"first one", "first two"} <= set(titles(world, p)), p

    # Vortask's project starts over: its task ids count from 1 again.
    fake = world.fakes["vortask"]
    fake.call(fake.reset_state)
    world.prepare()
    await asyncio.sleep(1.5)  # a creation time the platform reports apart from the first tasks'
    reused = [create_on(world, "vortask", "second one"), create_on(world, "vortask", "second two")]
    async with harness.ctx.store.read() as s:
        linked = set((await s.scalars(select(LinkRow.remote_id).where(LinkRow.connector == "vortask"))).all())
    assert set(reused) <= linked, "the fake did not reuse the ids; the test proves nothing"

    with caplog.at_level(logging.WARNING):
        await harness.settle()
    for p in OTHERS:
        assert sorted(titles(world, p)) == ["first one", "first two", "second one", "second two"], p
    assert sorted(titles(world, "vortask")) == ["second one", "second two"]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert "now names another task" in caplog.text
    async with harness.ctx.store.read() as s:
        stuck = (await s.scalars(select(OutboxRow).where(OutboxRow.state != OpState.DONE))).all()
        old = (
            await s.scalars(
                select(LinkRow).where(LinkRow.connector == "vortask", LinkRow.remote_id.is_(None))
            )
        ).all()
        noted = (await s.scalars(select(HistoryRow).where(HistoryRow.source == "vortask"))).all()
    assert stuck == []
    assert len(old) == 2 and all(link.state == LinkState.GONE for link in old)
    assert sum(h.new == {"v": "remote id reused for another task"} for h in noted) == 2
    # An edit of an old task still reaches the platforms that hold it, and not Vortask's new one.
    first = ops.view(world, "squads")["first one"]["id"]
    ops.edit(world, "squads", first, title="first one, edited")
    await harness.settle()
    assert "first one, edited" in titles(world, "impactly")
    assert sorted(titles(world, "vortask")) == ["second one", "second two"]
