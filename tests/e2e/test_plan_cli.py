"""`taskbridge plan` as an operator runs it, on the demo's seeded fakes (issue 18)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import PLATFORMS
from tests.engine.test_engine import writes
from tests.world import World

pytestmark = pytest.mark.slow


@pytest.fixture
def seeded() -> Iterator[World]:
    w = World(PLATFORMS, seed=20261202).start()  # each fake with its demo tasks
    yield w
    w.stop()


def test_plan_lists_the_creates_of_a_first_sync_and_writes_nothing(seeded: World, tmp_path: Path) -> None:
    path = seeded.config(tmp_path)
    before = {p: writes(f) for p, f in seeded.fakes.items()}
    run = subprocess.run(
        [sys.executable, "-m", "bridge", "plan", "--config", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    plan = json.loads(run.stdout)
    assert {p: writes(f) for p, f in seeded.fakes.items()} == before, "the plan wrote to a platform"
    creates = [w for w in plan["writes"] if w["op"] == "create"]
    assert creates and set(plan["counts"]) == set(PLATFORMS)
    # Every seeded task is planned on every platform but its own.
    by_title: dict[str, set[str]] = {}
    for w in creates:
        by_title.setdefault(w["title"], set()).add(w["connector"])
    assert all(len(targets) == len(PLATFORMS) - 1 for targets in by_title.values()), by_title

    text = subprocess.run(
        [sys.executable, "-m", "bridge", "plan", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert text.returncode == 0 and "create on " in text.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "bridge", "plan", "--config", str(path), "--route", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "no route 'nope'" in bad.stderr and "Traceback" not in bad.stderr
