"""A move to a new store with real processes: the daemon syncs the five fakes, is stopped, its
store is exported with `taskbridge store export`, deleted, and imported into a new one with
`taskbridge store import`; the daemon started on it writes nothing to any platform (no task and no
comment twice), and edits made afterwards still reach every platform."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests import clirun, ops
from tests.e2e.conftest import DaemonProcess, wait_until
from tests.e2e.test_daemon import ALL, everywhere, no_duplicates
from tests.world import TOKENS, WEBHOOK_SECRET, World

pytestmark = pytest.mark.slow

COMMENTING = ("impactly", "vortask", "agentkanban")
TITLES = {
    "vortask": "moved from vortask",
    "squads": "moved from squads",
    "agentkanban": "moved from agentkanban",
}


def taskbridge(*args: str) -> subprocess.CompletedProcess[str]:
    return clirun.run(args, env=clirun.clean_env(), timeout=60)


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:  # beside the daemon: WAL lets a reader in
        return conn.execute(sql).fetchall()


def polled_since(db: Path, since: datetime) -> bool:
    """Every connector's scopes were listed completely since `since` (their watermarks moved)."""
    stamp = since.strftime("%Y-%m-%d %H:%M:%S.%f")  # as SQLite holds the store's UTC times
    last = query(db, "SELECT connector, min(updated_at) FROM watermarks GROUP BY connector")
    return len(last) == len(ALL) and all(polled > stamp for _, polled in last)


def comments_once(world: World, ids: dict[str, str], texts: list[str]) -> bool:
    for p in COMMENTING:
        shown = ops.comments(world, p, ids[p])
        if any(sum(t in c for c in shown) != 1 for t in texts):
            return False
    return True


def platform_writes(world: World) -> dict[str, list[str]]:
    """Writes each fake served (the test's own MCP reads and webhook registrations aside)."""
    return {
        p: [
            f"{e.method} {e.route}"
            for e in world.fakes[p].requests.entries
            if e.method in ("POST", "PUT", "PATCH", "DELETE")
            and e.route != "/mcp"
            and "webhook" not in e.route
        ]
        for p in ALL
    }


def test_export_delete_import_restart_duplicates_nothing(
    world: World, daemon_factory: Any, tmp_path: Path
) -> None:
    d: DaemonProcess = daemon_factory(world, public=True, poll_interval="1s").start()
    db = tmp_path / "bridge.db"
    made = {p: ops.create(world, p, title) for p, title in TITLES.items()}
    for title in TITLES.values():
        wait_until(partial(everywhere, world, title), what=f"{title!r} everywhere")
    views = {p: ops.view(world, p) for p in COMMENTING}
    ids = {p: views[p][TITLES["vortask"]]["id"] for p in COMMENTING}
    ops.comment(world, "vortask", ids["vortask"], "said before the move")
    wait_until(lambda: comments_once(world, ids, ["said before the move"]), what="the comment everywhere")
    wait_until(
        lambda: query(db, "SELECT count(*) FROM outbox WHERE state IN ('pending', 'claimed')") == [(0,)],
        what="the outbox drained",
    )
    assert d.terminate() == 0
    held = query(db, "SELECT value FROM meta WHERE key LIKE 'webhook_secrets:%'")
    secrets = [secret for (value,) in held for secret in json.loads(value)["secrets"]]
    assert secrets  # AgentKanban issued one: the export must leave it behind

    exported = taskbridge("store", "export", "--config", str(d.config))
    assert exported.returncode == 0, exported.stderr
    assert exported.stderr.startswith("exported 3 tasks, 15 links, 1 comment, 3 comment links"), (
        exported.stderr
    )
    assert "warning" not in exported.stderr
    for secret in [*secrets, *TOKENS.values(), WEBHOOK_SECRET]:
        assert secret not in exported.stdout and "webhook_secrets" not in exported.stdout
    state = tmp_path / "state.jsonl"
    state.write_text(exported.stdout)

    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    imported = taskbridge("store", "import", "--config", str(d.config), str(state))
    assert imported.returncode == 0, imported.stderr
    assert imported.stderr.startswith("imported 3 tasks, 15 links, 1 comment, 3 comment links")
    again = taskbridge("store", "import", "--config", str(d.config), str(state))
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr

    for fake in world.fakes.values():
        fake.requests.clear()
    d.start()
    # Every platform polled twice over (and the webhooks registered again): nothing was queued,
    # nothing written.
    for _ in range(2):
        since = datetime.now(UTC)
        wait_until(partial(polled_since, db, since), what="a poll of every platform")
    assert query(db, "SELECT op, connector FROM outbox") == []
    assert platform_writes(world) == {p: [] for p in ALL}
    no_duplicates(world)
    for p in ALL:
        assert set(ops.view(world, p)) == set(TITLES.values()), p
    assert comments_once(world, ids, ["said before the move"])

    # Afterwards, an edit and a comment on one platform reach every other.
    ops.edit(world, "squads", made["squads"], title="moved from squads, edited", status="done")
    wait_until(lambda: everywhere(world, "moved from squads, edited"), what="the edit everywhere")
    ops.comment(world, "agentkanban", ids["agentkanban"], "said after the move")
    wait_until(
        lambda: comments_once(world, ids, ["said before the move", "said after the move"]),
        what="the new comment everywhere, the old one still once",
    )
    no_duplicates(world)
    for p in ALL:
        assert len(ops.view(world, p)) == len(TITLES), p
    assert d.terminate() == 0
    assert "Traceback" not in d.log.read_text()
