"""Fixtures shared by every test layer."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import pytest_asyncio


@dataclass
class ReceivedHook:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """A real HTTP server on loopback that records every POST it receives.

    `status` is what it answers (set it to 500 to make a fake retry). `url` is its base URL.
    """

    url: str
    received: list[ReceivedHook] = field(default_factory=list)
    status: int = 200
    event: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedHook]:
        """Block until at least `count` deliveries arrived (or fail the test)."""
        with self.event:
            ok = self.event.wait_for(lambda: len(self.received) >= count, timeout=timeout)
        if not ok:
            raise AssertionError(f"expected {count} webhook deliveries, got {len(self.received)}")
        return list(self.received)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver: WebhookReceiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with receiver.event:
                receiver.received.append(
                    ReceivedHook(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                receiver.event.notify_all()
            self.send_response(receiver.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = WebhookReceiver(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


# -- the store, on SQLite and on PostgreSQL ---------------------------------------------------


def pg_url_or_skip() -> str:
    """The test server's URL; a skip when there is none, a failure in CI (TASKBRIDGE_REQUIRE_PG)."""
    url = os.environ.get("TASKBRIDGE_TEST_PG_URL")
    if not url:
        if os.environ.get("TASKBRIDGE_REQUIRE_PG"):
            pytest.fail("TASKBRIDGE_REQUIRE_PG is set but TASKBRIDGE_TEST_PG_URL is not")
        pytest.skip("no PostgreSQL server (set TASKBRIDGE_TEST_PG_URL)")
    return url


async def pg_execute(url: str, sql: str, *args: Any) -> Any:
    """Run one statement on its own connection to the database of `url` (a SQLAlchemy URL), out
    of any pool; returns its first value."""
    import asyncpg
    from sqlalchemy.engine import make_url

    base = make_url(url)
    conn = await asyncpg.connect(
        host=base.host, port=base.port, user=base.username, password=base.password, database=base.database
    )
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def fresh_pg_database(url: str) -> tuple[str, str]:
    """Create an empty database on the test server; returns (its URL, its name)."""
    from sqlalchemy.engine import make_url

    name = f"tb_{uuid.uuid4().hex[:12]}"
    await pg_execute(url, f'CREATE DATABASE "{name}"')
    return make_url(url).set(database=name).render_as_string(hide_password=False), name


async def drop_pg_database(url: str, name: str) -> None:
    await pg_execute(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def terminate_pg_backends(url: str, pid: int | None = None) -> int:
    """Close server-side the connections to the database of `url` (the one of `pid` only, if
    given), as a server restart does; returns how many were closed."""
    if pid is not None:
        return 1 if await pg_execute(url, "SELECT pg_terminate_backend($1)", pid) else 0
    return int(
        await pg_execute(
            url,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
    )


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    """A store URL for an empty database; each test using it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/store.db"
    return "postgres"  # resolved by the async fixture below, which can await


@pytest_asyncio.fixture
async def store(store_url: str) -> AsyncIterator[object]:
    from bridge.store import Store

    dropped: tuple[str, str] | None = None
    url = store_url
    if store_url == "postgres":
        server = pg_url_or_skip()
        url, name = await fresh_pg_database(server)
        dropped = (server, name)
    s = Store.open(url)
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()
        if dropped:
            await drop_pg_database(*dropped)
