"""The bridge's store: SQLAlchemy 2 async over SQLite (WAL, the default) or PostgreSQL.

`Store.open(url)` connects; `await store.migrate()` brings the schema to Alembic's head (the
daemon does this at start-up, so an upgrade is: stop, install, start). Queries the engine needs
live beside the tables in this package; nothing here knows a platform.

Two ways in: `store.transaction()` for anything that writes, `store.read()` for reads. On SQLite
they differ in how they begin: a write transaction begins IMMEDIATE (it holds the database's one
write lock from the start, so a read-then-write cannot fail half-way) and, inside one process,
queues on an asyncio lock first, so writers take turns in order instead of sleeping in SQLite's
busy handler (which backs off up to 100 ms a try and dominated the daemon's time under load). A
read begins DEFERRED and, in WAL mode, never waits for a writer. On PostgreSQL both are plain
transactions; row locks (FOR UPDATE SKIP LOCKED) do the queueing. A `sqlite+aiosqlite` URL
runs on the dialect in `_sqlite.py`: aiosqlite opens the connections, and the statements run on
the event loop's thread (a hand-off to aiosqlite's thread cost a hundred times the statement).

What the API filters tasks on (priority, tags, assignees) is indexed by the store itself on every
ORM flush (bridge/store/search.py); a Core write of tasks must call its `index_rows` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session

from bridge.store import _sqlite
from bridge.store import search as search  # registers the flush events that keep the task index true

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT = 5.0  # seconds a statement waits for another process's write lock


def alembic_config(url: str | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def redact_url(url: str) -> str:
    """The URL without its password, for logs and errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<invalid store url>"


@dataclass
class Store:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    url: str
    reads: async_sessionmaker[AsyncSession] | None = None
    # SQLite only: writers in this process take turns here (see the module docstring).
    _write_turn: asyncio.Lock | None = field(default=None, repr=False)
    # SQLite only: the engine whose transactions begin DEFERRED (reads; see `_reader`).
    _read_engine: AsyncEngine | None = field(default=None, repr=False)

    @classmethod
    def open(cls, url: str, *, pool_size: int = 5, echo: bool = False) -> Store:
        kwargs: dict[str, Any] = {"echo": echo}
        target: str | URL = url
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.get_driver_name() == "aiosqlite":
            target = parsed.set(drivername=f"sqlite+{_sqlite.DRIVER}")  # statements in-loop
        if url.startswith("sqlite"):
            _create_private(parsed.database)
            # One writer at a time is SQLite's rule. In this process writers take turns on
            # `_write_turn` before they begin; the busy timeout covers another process writing
            # the same file (not a supported setup: replicas share PostgreSQL), and is short
            # because statements run on the event loop's thread (see _sqlite.py).
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT}
            # Sessions always end their transactions (commit or rollback): no second rollback on
            # the way back to the pool.
            kwargs["pool_reset_on_return"] = None
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        engine = create_async_engine(target, **kwargs)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(engine.sync_engine, "begin", _sqlite_begin)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        if engine.dialect.name != "sqlite":
            return cls(engine, sessions, url, reads=sessions)
        reader = engine.execution_options(taskbridge_read=True)
        return cls(
            engine,
            sessions,
            url,
            reads=async_sessionmaker(reader, expire_on_commit=False),
            _write_turn=asyncio.Lock(),
            _read_engine=reader,
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def migrate(self) -> None:
        """Upgrade the schema to head (idempotent)."""
        async with self._turn(), self.engine.begin() as conn:
            await conn.run_sync(_upgrade)

    async def schema_is_current(self) -> bool:
        async with self._reader().connect() as conn:
            return bool(await conn.run_sync(_is_current))

    async def ping(self) -> bool:
        async with self._reader().connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True

    def _reader(self) -> AsyncEngine:
        # On SQLite a connection outside `transaction()` must not BEGIN IMMEDIATE: it would take
        # the write lock without waiting for its turn (and statements run on the loop's thread,
        # so a writer waiting for it would wait with the loop stopped).
        return self._read_engine or self.engine

    def _turn(self) -> asyncio.Lock | contextlib.nullcontext[None]:
        return self._write_turn if self._write_turn is not None else contextlib.nullcontext()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in one write transaction: committed on success, rolled back on error."""
        async with self._turn(), self.sessions() as session, session.begin():
            yield session

    def read(self) -> AsyncSession:
        """A session for reads only (`async with store.read() as session:`)."""
        return (self.reads or self.sessions)()

    async def close(self) -> None:
        await self.engine.dispose()


def _create_private(database: str | None) -> None:
    """Create a new SQLite store file readable by its owner only (0600): it holds the webhook
    secrets that platforms issue. SQLite gives the -wal and -shm files it makes beside it the
    same mode. An existing file keeps the mode it has (the operator's to choose)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if path.exists() or not path.parent.is_dir():
        return  # a missing directory is reported by the connect, with its path
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def on_commit(session: AsyncSession, callback: Callable[[], None]) -> None:
    """Call `callback` once the session's transaction has committed (never on a rollback). Wake a
    worker this way for rows you wrote: woken before the commit, it may look before they exist
    (they would wait for its next idle timeout)."""
    session.sync_session.info.setdefault("on_commit", []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_on_commit(session: Session) -> None:
    for callback in session.info.pop("on_commit", []):
        callback()


@event.listens_for(Session, "after_rollback")
def _drop_on_commit(session: Session) -> None:
    session.info.pop("on_commit", None)


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    # Transactions begin IMMEDIATE (below): a transaction that reads and then writes would
    # otherwise fail at once with "database is locked" when another writer got in between.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql(
        "BEGIN" if conn.get_execution_options().get("taskbridge_read") else "BEGIN IMMEDIATE"
    )


def _upgrade(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def _is_current(connection: Connection) -> bool:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    return MigrationContext.configure(connection).get_current_revision() == head
