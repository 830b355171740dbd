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


async def test_a_create_answered_with_an_id_an_old_link_holds_takes_it_over(
    harness: Harness, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """The committer's side of reuse: a mirror created where the platform hands out an id that
    a link of an older task still holds (the platform started over); the old link is closed and
    the new one takes the id, in the same batch as the write, however many creates share it."""
    create_on(world, "squads", "old task")
    await harness.settle()
    async with harness.ctx.store.read() as s:
        old_id = await s.scalar(select(LinkRow.remote_id).where(LinkRow.connector == "vortask"))
    assert old_id is not None

    fake = world.fakes["vortask"]
    fake.call(fake.reset_state)  # ids count from the start again; the old copy is gone
    world.prepare()
    create_on(world, "squads", "new task")
    await harness.poll("squads")
    with caplog.at_level(logging.WARNING):
        await harness.drain()
    assert "now names another task" in caplog.text
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    async with harness.ctx.store.read() as s:
        links = (await s.scalars(select(LinkRow).where(LinkRow.connector == "vortask"))).all()
        stuck = (await s.scalars(select(OutboxRow).where(OutboxRow.state != OpState.DONE))).all()
    holder = [link for link in links if link.remote_id == old_id]
    assert len(holder) == 1 and holder[0].state == LinkState.ACTIVE, [(x.task_id, x.remote_id) for x in links]
    assert [link.state for link in links if link.remote_id is None] == [LinkState.GONE]
    assert stuck == []
    assert titles(world, "vortask") == ["new task"]
