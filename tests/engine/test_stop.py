"""A stop keeps to one budget for the work it finds in progress, and gives back its claims.

The deploy files give a stop 45 s before they kill the daemon (TimeoutStopSec,
stop_grace_period). A poll in progress, the outbox's writes in flight and the inbox's batch
finish side by side within DEFAULT_STOP_GRACE; before, the writes got their own 30 s after the
polls' 20 s, and a stop during a slow poll could end in a kill mid-drain. What is cut short is
given back for the next start (or another replica): operations and deliveries alike.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bridge import config
from bridge import daemon as daemon_module
from bridge.daemon import Daemon, DaemonOptions
from bridge.defaults import DEFAULT_LANDING_WAIT
from bridge.model import as_utc
from bridge.store import Store
from bridge.store.states import DeliveryState, OpKind, OpState
from bridge.store.tables import InboxRow, OutboxRow
from tests import ops
from tests.world import World

GRACE = 2.0


async def test_a_stop_keeps_to_one_budget_and_gives_back_its_claims(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_module, "DEFAULT_STOP_GRACE", GRACE)
    monkeypatch.setattr(daemon_module, "DEFAULT_JOB_GRACE", GRACE / 2)
    ops.create(world, "vortask", "cut short")
    daemon = Daemon(
        config.load(world.config(tmp_path, poll_interval="30s")), options=DaemonOptions(serve=False)
    )
    writing = asyncio.Event()

    async def slow_create(*args: Any, **kwargs: Any) -> Any:
        writing.set()
        await asyncio.sleep(300)  # the platform never answers

    daemon.ctx.connectors["impactly"].create_task = slow_create  # type: ignore[method-assign]
    await daemon.start()
    stopped = False
    try:
        await asyncio.wait_for(writing.wait(), timeout=20)  # the start-up polls found the task
        world.fakes["squads"].faults.latency = 300  # and a poll of Nucleus now never ends
        job = daemon.scheduler.get_job("poll:squads")
        assert job is not None
        job.modify(next_run_time=datetime.now(UTC))
        await asyncio.sleep(1)
        assert any(not t.done() for t in daemon._jobs), "the poll of Nucleus is not running"
        async with daemon.store.transaction() as session:
            delivery = InboxRow(
                connector="impactly",
                delivery_key="held at the stop",
                body="{}",
                state=DeliveryState.CLAIMED,
                claimed_by=daemon.ctx.replica,
                attempts=0,
                received_at=datetime.now(UTC),
            )
            session.add(delivery)

        started, stopped_at = time.monotonic(), datetime.now(UTC)
        await daemon.stop()
        stopped = True
        # The budget, the 5 s a cancelled poll may take to end, and a little for the closing.
        assert time.monotonic() - started < GRACE + 5 + 2
    finally:
        if not stopped:
            await daemon.stop()

    reopened = Store.open(f"sqlite+aiosqlite:///{tmp_path}/bridge.db")
    try:
        async with reopened.read() as session:
            create = (
                await session.scalars(
                    select(OutboxRow).where(OutboxRow.op == OpKind.CREATE, OutboxRow.connector == "impactly")
                )
            ).one()
            held = (await session.scalars(select(InboxRow))).one()
        assert (create.state, create.claimed_by) == (OpState.PENDING, None)
        # Cut off mid-request, it may be landing still: its retry looks for it only later.
        assert as_utc(create.next_attempt_at) > stopped_at + timedelta(seconds=DEFAULT_LANDING_WAIT - 5)
        assert (held.state, held.claimed_by) == (DeliveryState.PENDING, None)
    finally:
        await reopened.close()
