"""`taskbridge plan` as an operator runs it, on the demo's seeded fakes (issue 18)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import clirun, ops
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
    run = clirun.run(["plan", "--config", str(path), "--json"])
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

    text = clirun.run(["plan", "--config", str(path)])
    assert text.returncode == 0 and "create on " in text.stdout
    bad = clirun.run(["plan", "--config", str(path), "--route", "nope"], timeout=60)
    assert bad.returncode == 2 and "no route 'nope'" in bad.stderr and "Traceback" not in bad.stderr

    # Applied after review, the plan makes exactly the writes it showed (a platform may take more
    # than one request for one: a create, then its status), and every seeded task is then once on
    # every platform.
    reviewed = tmp_path / "plan.json"
    reviewed.write_text(json.dumps(plan))
    applied = clirun.run(
        ["plan", "--config", str(path), "--apply", "--reviewed", str(reviewed), "--json"], timeout=300
    )
    assert applied.returncode == 0, applied.stdout + applied.stderr
    result = json.loads(applied.stdout)
    assert not result["failed"] and not result["unreviewed"] and result["follow_ups"] == 0

    def shown(writes: list[dict[str, Any]]) -> list[str]:
        return sorted(
            json.dumps([w[k] for k in ("connector", "scope", "op", "title", "fields")]) for w in writes
        )

    assert shown(result["made"]) == shown(plan["writes"])
    for p in PLATFORMS:
        assert set(ops.view(seeded, p)) == set(by_title), p


def test_link_joins_what_a_running_route_left_apart(tmp_path: Path) -> None:
    """A route on `new-only` left the existing twins alone; `taskbridge link` links them (and
    copies nothing), then an edit crosses."""
    w = World(("impactly", "vortask")).start()
    try:
        for i in range(3):
            ops.create(w, "impactly", f"Kept by hand {i}")
            ops.create(w, "vortask", f"kept  BY hand {i}")
        ops.create(w, "vortask", "only here")
        path = w.config(tmp_path, route={"initial": "new-only"})

        def bridge(*argv: str) -> subprocess.CompletedProcess[str]:
            return clirun.run([*argv, "--config", str(path)])

        assert bridge("sync", "--once", "--no-progress").returncode == 0
        assert len(ops.view(w, "impactly")) == 3  # new-only: nothing existing was copied
        dry = bridge("link", "--route", "main", "--dry-run")
        assert dry.returncode == 0 and "would link 3 tasks" in dry.stdout, dry.stdout + dry.stderr
        done = bridge("link", "--route", "main")
        assert (
            done.returncode == 0
            and "linked 3 tasks" in done.stdout
            and "1 tasks matched nowhere" in done.stdout
        )
        assert "Traceback" not in done.stderr
        assert bridge("sync", "--once", "--no-progress").returncode == 0
        assert len(ops.view(w, "impactly")) == 3 and len(ops.view(w, "vortask")) == 4  # no copy made
        vt = next(t["id"] for title, t in ops.view(w, "vortask").items() if "1" in title)
        ops.edit(w, "vortask", vt, title="kept by hand 1, renamed")
        assert bridge("sync", "--once", "--no-progress").returncode == 0
        assert "kept by hand 1, renamed" in ops.view(w, "impactly")
        again = bridge("link", "--route", "main")
        assert "linked 0 tasks" in again.stdout  # what is linked stays as it is
        bad = bridge("link", "--route", "nope")
        assert bad.returncode == 2 and "no route 'nope'" in bad.stderr
        # A member that cannot be listed: a dry run says it decided nothing (it starts nothing
        # that could duplicate, and there is no store to restore).
        w.fakes["vortask"].faults.error_rate = 1.0
        failed = bridge("link", "--route", "main", "--dry-run")
        assert failed.returncode == 1 and "Traceback" not in failed.stderr
        assert "could not be listed to match route main's tasks" in failed.stderr
        assert "nothing was decided" in failed.stderr and "store import" not in failed.stderr
    finally:
        w.stop()
