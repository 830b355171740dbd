"""The daemon as a real process against the five fakes as real servers (issue 5's "done when")."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connectors.fakekit import free_port
from tests import clirun, ops
from tests.e2e.conftest import DaemonProcess, wait_until
from tests.world import World

pytestmark = pytest.mark.slow

ALL = ("impactly", "vortask", "agentkanban", "runs", "squads")
HOLDS = {  # which canonical fields each platform shows
    "title": ALL,
    "status": ("impactly", "vortask", "agentkanban", "squads"),
    "priority": ("impactly", "vortask", "agentkanban", "squads"),
    "assignees": ("impactly", "vortask", "squads"),
    "due_date": ("impactly", "vortask", "squads"),
    "tags": ("vortask", "agentkanban"),
}


def everywhere(world: World, title: str, check: Callable[[str, dict[str, Any]], bool] | None = None) -> bool:
    """True when every platform shows a task titled `title` (passing `check`)."""
    for platform in ALL:
        task = ops.view(world, platform).get(title)
        if task is None or (check is not None and not check(platform, task)):
            return False
    return True


def no_duplicates(world: World) -> None:
    for platform in ALL:
        ops.view(world, platform)  # asserts titles are unique


def writes(world: World, platform: str) -> int:
    entries = world.requests(platform)["entries"]
    return sum(
        1 for e in entries if e["method"] in ("POST", "PUT", "PATCH", "DELETE") and e["route"] != "/mcp"
    )


def test_tasks_and_edits_flow_everywhere_through_webhooks(world: World, daemon_factory: Any) -> None:
    # runs and squads have no webhooks: they are polled; the others arrive by webhook first.
    d: DaemonProcess = daemon_factory(world, public=True, poll_interval="2s").start()
    ids = {
        p: ops.create(world, p, f"made on {p}", **({"priority": "high"} if p != "runs" else {})) for p in ALL
    }
    for p in ALL:
        wait_until(lambda p=p: everywhere(world, f"made on {p}"), what=f"the task made on {p} everywhere")
    # Status and priority arrive mapped (the platforms with priority were given high).
    for p in ("impactly", "vortask", "agentkanban", "squads"):
        assert ops.view(world, "vortask")[f"made on {p}"]["priority"] == "high"
        assert ops.view(world, "squads")[f"made on {p}"]["priority"] == "high"
    # Edits of each field on one side reach every side that holds the field.
    ops.edit(world, "runs", ids["runs"], title="renamed on runs")
    wait_until(lambda: everywhere(world, "renamed on runs"), what="a title edit from runs")
    ops.edit(world, "agentkanban", ids["agentkanban"], status="done", tags={"ops", "q4"})
    ops.edit(world, "squads", ids["squads"], priority="urgent")
    ops.edit(world, "vortask", ids["vortask"], assignee="bob")
    ops.edit(world, "impactly", ids["impactly"], due_date=ops.today_plus(9))
    expected = {
        ("made on agentkanban", "status"): "done",
        ("made on agentkanban", "tags"): {"ops", "q4"},
        ("made on squads", "priority"): "urgent",
        ("made on vortask", "assignees"): {"bob"},
        ("made on impactly", "due_date"): ops.today_plus(9),
    }

    def landed() -> bool:
        views = {p: ops.view(world, p) for p in ALL}
        for (title, field), value in expected.items():
            for p in HOLDS[field]:
                shown = views[p][title].get(field)
                if field == "priority" and p == "vortask":
                    value_here = "high"  # urgent is High on Vortask: a declared loss
                else:
                    value_here = value
                if shown != value_here:
                    return False
        return True

    wait_until(landed, what="every edit on every side that holds its field")
    no_duplicates(world)
    assert d.terminate() == 0


def test_comments_appear_once_on_each_other_platform(world: World, daemon_factory: Any) -> None:
    daemon_factory(world, public=True, poll_interval="2s").start()
    ids = {"vortask": ops.create(world, "vortask", "discussed")}
    wait_until(lambda: everywhere(world, "discussed"), what="the task everywhere")
    for p in ("impactly", "agentkanban"):
        ids[p] = ops.view(world, p)["discussed"]["id"]
    for p in ("impactly", "vortask", "agentkanban"):
        ops.comment(world, p, ids[p], f"note from {p}")

    def all_there() -> bool:
        for p in ("impactly", "vortask", "agentkanban"):
            texts = ops.comments(world, p, ids[p])
            for q in ("impactly", "vortask", "agentkanban"):
                if sum(f"note from {q}" in t for t in texts) != 1:
                    return False
        return True

    wait_until(all_there, what="each comment once on each comment platform")
    time.sleep(5)  # more polls and deliveries: still once
    assert all_there()
    texts = ops.comments(world, "agentkanban", ids["agentkanban"])
    assert any("via vortask" in t and "note from vortask" in t for t in texts)  # attributed


def test_polling_alone_converges(world: World, daemon_factory: Any) -> None:
    daemon_factory(world, public=False, poll_interval="1s").start()
    task = ops.create(world, "squads", "polled")
    wait_until(lambda: everywhere(world, "polled"), what="the task everywhere without webhooks")
    ops.edit(world, "squads", task, title="polled and edited", status="blocked")
    wait_until(
        lambda: everywhere(
            world, "polled and edited", lambda p, t: p == "runs" or t["status"] in ("blocked", "todo")
        ),
        what="the edit everywhere without webhooks",
    )
    assert all(f.webhooks.deliveries == [] for f in world.fakes.values())  # none were registered


def test_dropped_webhooks_still_converge(world: World, daemon_factory: Any) -> None:
    for fake in world.fakes.values():
        fake.faults.drop_webhook_rate = 0.5
    d = daemon_factory(world, public=True, poll_interval="2s").start()
    # Registered after the daemon is ready: edits made before would send no delivery to drop.
    wait_until(lambda: "webhooks of vortask/" in d.log.read_text(), what="Vortask's webhooks registered")
    made = [ops.create(world, "vortask", f"lossy {i}") for i in range(4)]
    for i, task in enumerate(made):
        ops.edit(world, "vortask", task, title=f"lossy {i} edited")
    for i in range(4):
        wait_until(lambda i=i: everywhere(world, f"lossy {i} edited"), what=f"lossy {i} everywhere")
    dropped = sum(1 for d in world.fakes["vortask"].webhooks.deliveries if d.outcome == "dropped")
    assert dropped > 0  # the fault really happened
    no_duplicates(world)


def test_a_platform_slow_to_register_webhooks_holds_up_no_other(world: World, daemon_factory: Any) -> None:
    """Registering webhooks asks each platform; one slow to answer (here every request to
    Impactly, the first in the config, waits 1 s) delays its own registration and catch-up
    poll, not the others'. Each connector polls once its registration is answered (a change
    made between a poll and the registration would otherwise wait a whole interval), and the
    daemon is ready once every registration is."""
    ops.create(world, "vortask", "made while the daemon was down")
    world.fakes["impactly"].faults.latency = 1.0
    try:
        d = daemon_factory(world, public=True, poll_interval="60s").start(wait=False)
        d.wait_ready(timeout=60)
    finally:
        world.fakes["impactly"].faults.reset()
    lines = d.log.read_text().splitlines()

    def first(text: str) -> int:
        """The line's index; past the end if the log has none."""
        return next((i for i, line in enumerate(lines) if text in line), len(lines))

    impactly_registered = first("webhooks of impactly/")
    shown = "\n".join(lines[-40:])
    assert first("webhooks of vortask/") < first("poll vortask: ") < impactly_registered, shown
    assert first("webhooks of agentkanban/") < impactly_registered, shown
    assert impactly_registered < first("taskbridge ready"), shown


def test_no_echo_writes(world: World, daemon_factory: Any) -> None:
    daemon_factory(world, public=True, poll_interval="1s").start()
    task = ops.create(world, "vortask", "counted")
    wait_until(lambda: everywhere(world, "counted"), what="the task everywhere")
    time.sleep(3)
    for fake in world.fakes.values():
        fake.requests.clear()
    n = 5
    for i in range(n):
        ops.edit(world, "vortask", task, title=f"counted {i}")
        wait_until(lambda i=i: everywhere(world, f"counted {i}"), what=f"edit {i} everywhere")
    time.sleep(4)  # several more polls and any echo deliveries
    # Each edit needs one write on each other platform, and none back on Vortask.
    assert writes(world, "vortask") == n  # the test's own PUTs
    for p in ("impactly", "agentkanban", "runs", "squads"):
        assert writes(world, p) == n, (p, world.requests(p)["by_route"])


def test_sigkill_during_a_burst_loses_nothing_and_duplicates_nothing(
    world: World, daemon_factory: Any, tmp_path: Path
) -> None:
    d: DaemonProcess = daemon_factory(world, public=True, poll_interval="1s").start()
    rng = random.Random(20261122)
    made: dict[str, str] = {}
    finals: dict[str, str] = {}
    errors: list[BaseException] = []

    def burst() -> None:
        try:
            for i in range(24):
                p = ALL[i % len(ALL)]
                title = f"burst {i}"
                made[title] = p
                task = ops.create(world, p, title)
                finals[title] = title
                if i % 3 == 0:
                    final = f"burst {i} edited"
                    ops.edit(world, p, task, title=final)
                    finals[title] = final
                time.sleep(rng.uniform(0.05, 0.3))
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)

    worker = threading.Thread(target=burst)
    worker.start()
    for _ in range(4):
        time.sleep(rng.uniform(0.5, 2.5))
        d.kill()  # SIGKILL at a random moment: no cleanup at all
        time.sleep(rng.uniform(0.0, 0.5))
        d.start()
    worker.join()
    assert not errors, errors
    for title in finals.values():
        wait_until(
            lambda t=title: everywhere(world, t), timeout=120, what=f"{title!r} everywhere after crashes"
        )
    no_duplicates(world)  # no task twice on any platform
    for p in ALL:
        assert len(ops.view(world, p)) == len(finals), p  # and nothing extra


def test_sigterm_drains_and_exits_cleanly(world: World, daemon_factory: Any) -> None:
    d: DaemonProcess = daemon_factory(world, public=True, poll_interval="1s").start()
    ops.create(world, "impactly", "before shutdown")
    wait_until(lambda: everywhere(world, "before shutdown"), what="the task everywhere")
    assert d.terminate() == 0
    log = d.log.read_text()
    assert "taskbridge stopped" in log
    assert "Traceback" not in log


def test_sigterm_lets_polls_in_progress_finish(world: World, daemon_factory: Any) -> None:
    """A stop lets the polls it finds running end (their watermarks land) instead of cancelling
    them, and says nothing alarming: APScheduler's shutdown used to cancel them all at once and
    log a job cancelled before its first step as an error with a traceback."""
    d: DaemonProcess = daemon_factory(world, poll_interval="1s").start()
    for fake in world.fakes.values():
        fake.faults.latency = 1.5  # every request: each connector's poll is nearly always running
    try:
        time.sleep(4)
        assert d.terminate() == 0
    finally:
        for fake in world.fakes.values():
            fake.faults.reset()
    log = d.log.read_text()
    assert "taskbridge stopped" in log
    assert "stopped by the shutdown" not in log, log[-3000:]
    assert "Traceback" not in log and "Error running job" not in log, log[-3000:]


def test_demo_starts_and_shows_tasks_flowing(tmp_path: Path) -> None:
    """The demo as a person runs it: its progress lines until every seeded task is on every
    platform, then Ctrl-C's twin (SIGTERM), which it takes as a stop: exit 0 and a last line."""
    from connectors.fakekit import free_port

    progress = re.compile(
        r"\[ *\d+s\] (\d+) tasks; linked on ((?:\w+ \d+, ){4}\w+ \d+); (\d+) writes waiting"
    )

    def everywhere(tasks: str, linked: str) -> bool:
        counts = [int(n) for n in re.findall(r"\w+ (\d+)", linked)]
        return int(tasks) > 10 and len(counts) == 5 and all(n == int(tasks) for n in counts)

    with (tmp_path / "stderr").open("w+") as stderr:
        argv = ["demo", "--port", str(free_port()), "--seconds", "120", "--dir", str(tmp_path / "demo")]
        demo = subprocess.Popen(
            [sys.executable, "-m", "bridge", *argv],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "COLUMNS": "60"},  # narrower than any line: none may wrap mid-phrase
        )
        # A bound on the test: the demo killed if it wedges (reading its lines has no deadline).
        deadline = threading.Timer(240, demo.kill)
        deadline.start()
        try:
            assert demo.stdout is not None
            out, converged = [], False
            for line in demo.stdout:  # a progress line every 3 s; the demo ends by itself at 120
                out.append(line)
                shown = progress.fullmatch(line.rstrip("\n"))
                if shown and everywhere(shown.group(1), shown.group(2)):
                    converged = True
                    demo.send_signal(signal.SIGTERM)
                    break
            rest, _ = demo.communicate(timeout=60)
        finally:
            deadline.cancel()
            demo.kill()
        stderr.seek(0)
        errors = stderr.read()
    out_text = "".join(out) + rest
    assert demo.returncode == 0, out_text + errors
    assert converged, out_text[-2000:]  # before the demo's own end
    final = re.search(
        r"^demo stopped: (\d+) tasks; linked on (.*?); (\d+) writes waiting$", rest, re.MULTILINE
    )
    assert final and everywhere(final.group(1), final.group(2)), out_text[-1500:]
    assert "Traceback" not in errors


def test_demo_removes_the_temporary_directory_it_made(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "demo", "--port", str(free_port()), "--seconds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # where tempfile makes the demo's directory
    )
    assert result.returncode == 0, result.stdout + result.stderr
    made = re.search(r"config\s+(\S+)/taskbridge.yaml", result.stdout)
    assert made and Path(made.group(1)).parent == tmp_path, result.stdout[:1000]
    assert "demo stopped:" in result.stdout
    assert not list(tmp_path.iterdir())  # its config and store went with it


def test_demo_check_takes_the_tour_by_itself_and_prints_commands_that_paste(tmp_path: Path) -> None:
    from connectors.fakekit import free_port

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge",
            "demo",
            "--check",
            "--port",
            str(free_port()),
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "60"},  # a narrow terminal: nothing may wrap a command
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "check passed: the edit reached every platform" in result.stdout
    assert re.search(r"first sync settled in [\d.]+ s", result.stdout)
    for line in result.stdout.splitlines():
        if line.strip().startswith("curl"):
            assert line.rstrip().split()[-1].startswith("http://127.0.0.1:"), line  # whole, one line
    assert "Traceback" not in result.stdout + result.stderr


def test_sync_once_does_one_full_pass_and_exits(world: World, tmp_path: Path) -> None:
    for p in ALL:
        ops.create(world, p, f"once {p}")
    path = world.config(tmp_path, port=free_port())
    result = clirun.run(["sync", "--config", str(path), "--once"], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sync done:" in result.stderr and "0 errors" in result.stderr
    for p in ALL:
        assert {f"once {q}" for q in ALL} <= set(ops.view(world, p)), p
    usage = clirun.run(["sync", "--config", str(path)])
    assert usage.returncode == 2 and "--once" in usage.stderr
