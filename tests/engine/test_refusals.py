"""A store that refuses writes (a full disk, a read-only file system) is the operator's to fix:
every loop that meets it says so in one line when it starts and one when it ends, never a
traceback a round, and a poll does not blame its connector for it."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import exc, select

from bridge.engine.inbox import process_pending, receive
from bridge.engine.outbox import Committer, Outcome, Worker
from bridge.engine.poller import poll_connector
from bridge.store import Store
from bridge.store.states import OpState
from bridge.store.tables import OutboxRow
from tests import ops
from tests.engine.conftest import Harness
from tests.engine.test_hierarchy import signed_delivery
from tests.world import World

FULL = "database or disk is full"


class Refuser:
    """Makes the store's write transactions fail as SQLite does on a full disk, until `stop()`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
        self.refusing = True
        for name in ("transaction", "statements"):
            original = getattr(store, name)
            monkeypatch.setattr(store, name, self._wrap(original))

    def _wrap(self, original: Any) -> Any:
        @asynccontextmanager
        async def refused() -> AsyncIterator[Any]:
            async with original() as session:
                yield session
                if self.refusing:  # as the commit meets the full disk
                    raise exc.OperationalError("COMMIT", {}, sqlite3.OperationalError(FULL))

        return refused

    def stop(self) -> None:
        self.refusing = False


@pytest.fixture
def refuser(monkeypatch: pytest.MonkeyPatch, harness: Harness) -> Iterator[Refuser]:
    yield Refuser(monkeypatch, harness.ctx.store)


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("taskbridge")]


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in lines(caplog) if r.exc_info]


async def test_a_poll_the_store_refuses_is_not_its_connectors_fault(
    harness: Harness, world: World, refuser: Refuser, caplog: pytest.LogCaptureFixture
) -> None:
    ops.create(world, "vortask", "Written while the disk is full")
    with pytest.raises(exc.OperationalError, match="disk is full"):
        await poll_connector(harness.ctx, "vortask")
    assert tracebacks(caplog) == []


async def test_a_job_says_the_refusal_once_and_once_more_when_it_ends(
    harness: Harness, world: World, refuser: Refuser, caplog: pytest.LogCaptureFixture
) -> None:
    ops.create(world, "vortask", "Written while the disk is full")
    job = harness.daemon._guarded(harness.daemon.poll_once, "vortask")
    caplog.set_level(logging.INFO, logger="taskbridge")
    for _ in range(3):
        await job()
    said = [r.getMessage() for r in lines(caplog) if "refuses writes" in r.getMessage()]
    assert said == [f"job poll_once vortask failed: the store refuses writes: {FULL}"]
    assert tracebacks(caplog) == []
    refuser.stop()
    await job()
    await job()
    recovered = [r.getMessage() for r in lines(caplog) if "takes writes again" in r.getMessage()]
    assert recovered == ["job poll_once vortask: the store takes writes again"]


async def test_the_outbox_says_it_once_and_keeps_every_operation(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ops.create(world, "vortask", "Queued before the disk filled")
    await harness.poll("vortask")  # four creates queued
    refuser = Refuser(monkeypatch, harness.ctx.store)
    worker = Worker(harness.ctx, replace(harness.daemon.worker.settings, idle_wait=0.0))
    caplog.set_level(logging.INFO, logger="taskbridge")
    assert await worker._claim(16) == []
    assert await worker._claim(16) == []
    refuser.stop()
    claimed = await worker._claim(16)
    assert len(claimed) == 4
    # Recording their outcomes meets the full disk too: said once, and nothing is retried one by
    # one against it; the claims stay, to expire and run again.
    refuser.refusing = True
    committer = Committer(harness.ctx)
    for op in claimed:
        await committer.submit(op, Outcome(state=OpState.PENDING, result="retry", delay=0))
    refuser.stop()
    messages = [r.getMessage() for r in lines(caplog)]
    assert [m for m in messages if "refuses writes" in m] == [
        f"claiming outbox operations failed: the store refuses writes: {FULL}",
        f"recording outbox outcomes failed: the store refuses writes: {FULL}",
    ]
    assert "claiming outbox operations: the store takes writes again" in messages
    assert tracebacks(caplog) == []
    async with harness.ctx.store.read() as session:  # every operation still there, still ours
        states = (await session.scalars(select(OutboxRow.state))).all()
    assert sorted(states) == [OpState.CLAIMED] * 4  # their claims expire and they run again


async def test_the_inbox_does_not_retry_one_by_one_against_a_full_disk(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    task = ops.create(world, "impactly", "Delivered while the disk fills")
    assert (await receive(harness.ctx, "impactly", *signed_delivery(world, task))).status == 202
    refuser = Refuser(monkeypatch, harness.ctx.store)
    with pytest.raises(exc.OperationalError, match="disk is full"):
        await process_pending(harness.ctx)
    assert not [m for m in (r.getMessage() for r in lines(caplog)) if "one by one" in m]
    refuser.stop()
