"""SQLite's plans for the outbox's hot statements, on a freshly migrated store: what the daemon
runs with (it never gathers statistics, so SQLite plans from its heuristics alone). Each must
read through an index led by what it names, and the claim must stop at its limit, not sort every
due operation: a plan that reads all pending operations costs nothing in a test and everything
under a backfill's 40,000 (the PostgreSQL side: tests/scale/test_replicas.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.dialects import sqlite

from bridge.engine.outbox import _CLAIMED_ROWS, _OPEN_OF, _STUCK_LINKS, _runnable
from bridge.engine.sync import _LINKS_BY_REMOTES, _WAITING_UPDATES_OF
from bridge.store import Store

PARAMS = {"ids": [1, 2, 3], "now": datetime(2026, 12, 3, tzinfo=UTC), "limit": 16}
TASK_IDS = {"ids": ["a", "b", "c"]}


def plan_of(store_path: Path, statement: Any, params: dict[str, Any]) -> str:
    import sqlite3

    compiled = statement.compile(dialect=sqlite.dialect())
    expanded = compiled.construct_expanded_state({**compiled.params, **params})
    process = compiled._bind_processors  # what the driver is given: a list of ids as JSON
    values = tuple(
        process[name](expanded.parameters[name]) if name in process else expanded.parameters[name]
        for name in expanded.positiontup or ()
    )
    with sqlite3.connect(store_path) as conn:
        rows = conn.execute("EXPLAIN QUERY PLAN " + expanded.statement, values).fetchall()
    return "\n".join(row[-1] for row in rows)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import asyncio

    path = tmp_path_factory.mktemp("plans") / "bridge.db"

    async def migrate() -> None:
        store = Store.open(f"sqlite+aiosqlite:///{path}")
        try:
            await store.migrate()
        finally:
            await store.close()

    asyncio.run(migrate())
    return path


@pytest.mark.parametrize(
    ("name", "statement", "params", "index"),
    [
        (
            "a task's waiting updates",
            _WAITING_UPDATES_OF,
            TASK_IDS,
            "ix_outbox_task_state (task_id=? AND state=?)",
        ),
        # what waits behind a finished link, and which changes are unfinished (apply_outcomes)
        ("a task's open operations", _OPEN_OF, TASK_IDS, "ix_outbox_task_state (task_id=? AND state=?)"),
        ("a task's stuck links", _STUCK_LINKS, TASK_IDS, "ix_outbox_task_state (task_id=? AND state=?)"),
        # the lists go in as JSON (`any_of`): json_each's rows must still be looked up, one by one
        (
            "links by remote id",
            _LINKS_BY_REMOTES,
            {"connectors": ["c", "d"], "ids": ["r1", "r2"]},
            "sqlite_autoindex_links_1 (connector=? AND remote_id=?)",
        ),
    ],
)
def test_lookups_of_a_few_links_or_tasks_read_their_index(
    store_path: Path, name: str, statement: Any, params: dict[str, Any], index: str
) -> None:
    plan = plan_of(store_path, statement, params)
    assert f"USING INDEX {index}" in plan or f"USING COVERING INDEX {index}" in plan, (name, plan)


def test_claimed_operations_are_read_by_primary_key(store_path: Path) -> None:
    plan = plan_of(store_path, _CLAIMED_ROWS, PARAMS)
    assert "SEARCH outbox USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan


def test_the_claim_reads_due_operations_in_order_and_stops_at_its_limit(store_path: Path) -> None:
    plan = plan_of(store_path, _runnable(within=False, skip_locked=False), PARAMS)
    assert "ix_outbox_claimable (state=? AND next_attempt_at<?)" in plan, plan
    assert "TEMP B-TREE" not in plan, plan  # no sort of every due operation
    assert "ix_outbox_link_state (link_id=? AND state=? AND id<?)" in plan, plan  # the earlier-op probe


def test_the_bulk_creates_claim_reads_as_the_claim_does(store_path: Path) -> None:
    """More never-tried creates of one connector: the claim's order and stop, filtered."""
    plan = plan_of(
        store_path,
        _runnable(within=False, skip_locked=False, first_creates=True),
        {**PARAMS, "connector": "x"},
    )
    assert "ix_outbox_claimable (state=? AND next_attempt_at<?)" in plan, plan
    assert "TEMP B-TREE" not in plan, plan
