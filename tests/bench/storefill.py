"""Filling the bridge's store directly (SQLAlchemy Core bulk inserts into bridge/store/tables.py),
for the benchmarks that need a big store (api, memory): the daemon then serves and syncs it.

The schema comes from the daemon's own migrations (`Store.migrate()`), so the rows are the
daemon's: canonical tasks with encoded values, links with their bases, history rows.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, text

from bridge.model import new_id
from bridge.store import Store
from bridge.store.search import index_rows
from bridge.store.tables import HistoryRow, LinkRow, TaskAssigneeRow, TaskRow, TaskTagRow, WatermarkRow

CHUNK = 2000


@dataclass
class LinkSpec:
    """How each canonical task is linked on one connector."""

    connector: str
    scope: str
    remote_id: Callable[[int], str]
    base: Callable[[int], dict[str, Any]]
    is_mirror: bool = True


def _chunks(n: int, size: int = CHUNK) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


async def fill(
    url: str,
    n: int,
    *,
    route: str,
    data: Callable[[int], dict[str, Any]],
    links: list[LinkSpec],
    history_per_task: int = 2,
    watermarks: dict[tuple[str, str], dict[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
    ids: list[str] | None = None,
) -> list[str]:
    """Migrate the store at `url` and insert `n` tasks, their links and history. Returns the ids."""
    store = Store.open(url)
    await store.migrate()
    now = datetime.now(UTC)
    ids = ids if ids is not None else [new_id() for _ in range(n)]
    try:
        for part in _chunks(n):
            tasks, link_rows, history, tags, assignees = [], [], [], [], []
            for i in part:
                values = data(i)
                updated = now - timedelta(seconds=(n - i) * 7)  # spread over time, newest last
                # Core inserts bypass the ORM flush that indexes a task: index it here.
                found = index_rows(ids[i], values, updated)
                tags += found.tags
                assignees += found.assignees
                tasks.append(
                    {
                        "id": ids[i],
                        "route": route,
                        "data": values,
                        "title": values.get("title", ""),
                        "status": values.get("status", "todo"),
                        "priority": found.priority,
                        "created_at": updated - timedelta(days=1),
                        "updated_at": updated,
                        "deleted_at": None,
                        "version": 1 + history_per_task,
                    }
                )
                for spec in links:
                    link_rows.append(
                        {
                            "task_id": ids[i],
                            "route": route,
                            "connector": spec.connector,
                            "scope": spec.scope,
                            "remote_id": spec.remote_id(i),
                            "state": "active",
                            "base": spec.base(i),
                            "remote_updated_at": None,
                            "content_hash": None,
                            "remote_url": None,
                            "is_mirror": spec.is_mirror,
                            "created_at": updated,
                            "updated_at": updated,
                        }
                    )
                for h in range(history_per_task):
                    history.append(
                        {
                            "task_id": ids[i],
                            "field": "*" if h == 0 else "title",
                            "old": None if h == 0 else {"v": f"old title {i}"},
                            "new": {"v": "created"} if h == 0 else {"v": values.get("title")},
                            "source": links[0].connector if links else "api",
                            "via": "poll",
                            "at": updated - timedelta(seconds=h),
                        }
                    )
            async with store.transaction() as session:
                await session.execute(insert(TaskRow), tasks)
                if tags:
                    await session.execute(insert(TaskTagRow), tags)
                if assignees:
                    await session.execute(insert(TaskAssigneeRow), assignees)
                if link_rows:
                    await session.execute(insert(LinkRow), link_rows)
                if history:
                    await session.execute(insert(HistoryRow), history)
            if progress is not None and (part.stop % 20000 == 0 or part.stop == n):
                progress(f"store: {part.stop}/{n} tasks")
        if watermarks:
            async with store.transaction() as session:
                for (connector, scope), value in watermarks.items():
                    session.add(WatermarkRow(connector=connector, scope=scope, value=value, updated_at=now))
        if store.dialect == "postgresql":
            # As a store in service is, by autovacuum, long before anyone measures it: else
            # autovacuum vacuums and analyzes the fresh rows during the first minutes of the
            # measurement, on the same two cores.
            async with store.engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
                await conn.execute(text("VACUUM ANALYZE"))
    finally:
        await store.close()
    return ids


def fill_sync(url: str, n: int, **kw: Any) -> list[str]:
    return asyncio.run(fill(url, n, **kw))


# -- PostgreSQL --------------------------------------------------------------------------------


class Postgres:
    """The PostgreSQL server of TASKBRIDGE_TEST_PG_URL, else a throwaway one started with
    scripts/start-postgres.sh (and stopped at the end). `database()` makes a fresh database."""

    def __init__(self, repo: str, env_url: str | None) -> None:
        self.repo = repo
        self.url = env_url
        self.stop_cmd: str | None = None
        self.started_here = False

    def start(self) -> str:
        if self.url:
            return self.url
        out = subprocess.run(
            ["bash", "scripts/start-postgres.sh"], cwd=self.repo, capture_output=True, text=True, timeout=120
        )
        if out.returncode != 0:
            raise RuntimeError(f"scripts/start-postgres.sh failed: {out.stderr[-2000:]}")
        for line in out.stdout.splitlines():
            m = re.match(r"export (\w+)=(.*)$", line.strip())
            if not m:
                continue
            value = m.group(2).strip()
            if value.startswith("'") and value.endswith("'"):
                value = value[1:-1]
            if m.group(1) == "TASKBRIDGE_TEST_PG_URL":
                self.url = value
            elif m.group(1) == "TASKBRIDGE_TEST_PG_STOP":
                self.stop_cmd = value
        if not self.url:
            raise RuntimeError(f"scripts/start-postgres.sh printed no URL: {out.stdout!r}")
        self.started_here = True
        return self.url

    def stop(self) -> None:
        if self.started_here and self.stop_cmd:
            subprocess.run(self.stop_cmd, shell=True, capture_output=True, timeout=60)

    def database(self) -> str:
        import asyncpg
        from sqlalchemy.engine import make_url

        assert self.url
        base = make_url(self.url)
        name = f"tb_bench_{uuid.uuid4().hex[:10]}"

        async def create() -> None:
            conn = await asyncpg.connect(
                host=base.host,
                port=base.port,
                user=base.username,
                password=base.password,
                database=base.database,
            )
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        return base.set(database=name).render_as_string(hide_password=False)
