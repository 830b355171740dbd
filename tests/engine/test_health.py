"""Connector health as the store keeps it (issue 16): the outcome of the last poll and of the
writes, an unforeseen failure counted as one, and a recovery clearing the error."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from bridge.engine import health
from bridge.engine.poller import poll_connector
from connectors.base import AuthFailed
from tests import ops
from tests.engine.conftest import Harness
from tests.engine.test_engine import create_on
from tests.world import World


async def known(h: Harness) -> dict[str, health.Health]:
    async with h.ctx.store.read() as s:
        return await health.load(s)


async def test_a_poll_failing_unexpectedly_is_unhealthy_and_a_recovery_clears_it(
    harness: Harness, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    await harness.settle()
    assert (await known(harness))["squads"].healthy
    conn = harness.ctx.connectors["squads"]
    real = conn.stream_tasks

    def broken(scope: str, watermark: Any) -> Any:
        raise TypeError("a bug in the connector")

    conn.stream_tasks = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="taskbridge.health"):
        for _ in range(3):
            report = await poll_connector(harness.ctx, "squads")
            assert report.errors
        sick = (await known(harness))["squads"]
        assert not sick.healthy and "internal error (TypeError)" in (sick.last_error or "")
        conn.stream_tasks = real  # type: ignore[method-assign]
        await poll_connector(harness.ctx, "squads")
    well = (await known(harness))["squads"]
    assert well.healthy and well.last_error is None
    said = [r.getMessage() for r in caplog.records if r.name == "taskbridge.health"]
    assert [m.split(":")[0] for m in said] == [
        "connector squads is failing",
        "connector squads recovered (it was failing",
    ]


async def test_writes_failing_for_the_connector_make_it_unhealthy_until_one_lands(
    harness: Harness, world: World
) -> None:
    task_id = create_on(world, "squads", "written")
    await harness.settle()
    conn = harness.ctx.connectors["vortask"]
    real = conn.update_task

    async def refused(scope: str, remote_id: str, changes: Any) -> Any:
        raise AuthFailed("PUT task: the token was refused", status=401)

    conn.update_task = refused  # type: ignore[method-assign]
    ops.edit(world, "squads", task_id, title="written, once")
    await harness.settle()
    sick = (await known(harness))["vortask"]
    assert not sick.healthy and "token was refused" in (sick.write_error or "")
    assert sick.poll_error is None  # its polls are fine: the writes are what fails
    conn.update_task = real  # type: ignore[method-assign]
    ops.edit(world, "squads", task_id, title="written, twice")
    await harness.settle()
    assert (await known(harness))["vortask"].healthy
