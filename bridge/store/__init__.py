"""The bridge's store: SQLAlchemy 2 async over SQLite (WAL, the default) or PostgreSQL.

`Store.open(url)` connects; `await store.migrate()` brings the schema to Alembic's head (the
daemon does this at start-up, so an upgrade is: stop, install, start). Queries the engine needs
live beside the tables in this package; nothing here knows a platform.

Two ways in: `store.transaction()` for anything that writes, `store.read()` for reads. On SQLite
they differ in how they begin: a write transaction begins IMMEDIATE (it holds the database's one
write lock from the start, so a read-then-write cannot fail half-way) and, inside one process,
queues for its turn first (`_turns.py`: in order, a webhook's record ahead), instead of sleeping
in SQLite's busy handler (which backs off up to 100 ms a try and dominated the daemon's time under load);
taking turns, they share one connection held for them, not one from the pool each. A
read begins DEFERRED and, in WAL mode, never waits for a writer. On PostgreSQL writes are plain
transactions and reads run in autocommit (no BEGIN and ROLLBACK round trips; under READ
COMMITTED each statement sees its own snapshot either way); row locks (FOR UPDATE SKIP LOCKED)
do the queueing. A `sqlite+aiosqlite` URL runs on the dialect in `_sqlite.py`: aiosqlite opens
the connections, and the statements run on the event loop's thread (a hand-off to aiosqlite's
thread cost a hundred times the statement).

Every store carries an identity (a `meta` row written once, when the store is new). A daemon
remembers the identity it opened, and on SQLite the file's inode too; `check()` compares them,
so a store deleted or replaced under a running daemon is noticed: `transaction()` then raises
`StoreLost` (writes stop instead of going into a file nobody will read again) and readiness says
why. The identity's `created_at` also tells the engine which remote work may predate this store
(mirrors made by a store that was lost).

What the API filters tasks on (priority, tags, assignees) is indexed by the store itself on every
ORM flush (bridge/store/search.py); a Core write of tasks must call its `index_rows` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, exc, pool, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from bridge.defaults import DEFAULT_POOL_SIZE
from bridge.model import new_id, utcnow
from bridge.store import _sqlite
from bridge.store import search as search  # registers the flush events that keep the task index true
from bridge.store._turns import UrgentTurn, WriteTurns
from bridge.store.tables import MetaRow

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT = 5.0  # seconds a statement waits for another process's write lock
# SQLite: connections kept open. SQLAlchemy's default five for reads, plus the one the writers
# hold (`Store._writing`) and the one the echo checks hold (`Store.reading`): with five in all,
# reads overflowed a few times a minute under load, each overflow a connection opened and
# closed on aiosqlite's thread.
SQLITE_POOL_SIZE = 7
CLOSE_WAIT = 5.0  # seconds Store.close waits for a write transaction in progress to end
IDENTITY_KEY = "store"  # the meta row that names this store
PROBE_KEY = "probe"  # the meta row readiness writes to prove the store takes writes
# PostgreSQL: a pooled connection idle longer than this is pinged before it is handed out (a
# server restarted meanwhile has closed it); one back sooner is not. HikariCP's
# `aliveBypassWindowMs` is the same rule, with the same window. Pinging every checkout, as
# SQLAlchemy's `pool_pre_ping` does, cost three round trips (BEGIN, ";", ROLLBACK) per API
# request: a sixth of the daemon's CPU on a busy API, and as much again in the server.
PING_AFTER_IDLE = 0.5
_CHECKED_IN = "taskbridge_checked_in"  # the connection record's info key: when it came back

log = logging.getLogger("taskbridge.store")


class StoreLost(Exception):
    """The store this process opened was deleted or replaced under it: nothing more is written."""


# What a database says when it refuses writes for a reason outside the daemon (SQLite's and
# PostgreSQL's wording): a person frees the disk or remounts, and the daemon carries on.
_REFUSALS = ("disk is full", "no space left", "readonly database", "read-only", "disk i/o error")


def refusal(error: BaseException) -> str | None:
    """The store's own first line when `error` says it refuses writes (a full disk, a read-only
    file system), else None: what to log in one line instead of a traceback."""
    if not isinstance(error, exc.DBAPIError):
        return None
    words = str(error.orig if error.orig is not None else error).splitlines()
    first = words[0] if words else ""
    return first if any(k in first.lower() for k in _REFUSALS) else None


class RefusalLog:
    """What one loop says of a store that refuses writes: once when the refusals start, once when
    the store takes writes again, in a line each (a full disk is the operator's to fix, and the
    loop retrying every second must not print a traceback every second). Anything else is the
    caller's to report."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._log = logger
        self._what = what
        self.refusing = False

    def failed(self, error: BaseException) -> bool:
        """Whether `error` is the store refusing writes (said once until it recovers)."""
        reason = refusal(error)
        if reason is None:
            return False
        if not self.refusing:
            self.refusing = True
            self._log.error("%s failed: the store refuses writes: %s", self._what, reason)
        return True

    def succeeded(self) -> None:
        if self.refusing:
            self.refusing = False
            self._log.info("%s: the store takes writes again", self._what)


@dataclass(frozen=True)
class Identity:
    id: str
    created_at: datetime


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
    _write_turn: WriteTurns | None = field(default=None, repr=False)
    # SQLite only: the engine whose transactions begin DEFERRED (reads; see `_reader`).
    _read_engine: AsyncEngine | None = field(default=None, repr=False)
    identity: Identity | None = None  # set by `migrate()`
    lost: str | None = None  # why, once `check()` found the store deleted or replaced
    _file: tuple[int, int] | None = field(default=None, repr=False)  # SQLite: (device, inode)
    # SQLite on a file only: writers share one connection, held for them (`_writing`). An
    # in-memory store's pool is that one connection already, shared with the readers.
    _holds_writer: bool = field(default=False, repr=False)
    _writer: AsyncConnection | None = field(default=None, repr=False)
    # SQLite on a file only: the connection `reading()` holds, and the turns taken on it.
    _read_turn: asyncio.Lock | None = field(default=None, repr=False)
    _held_reader: AsyncConnection | None = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)  # since close(): a pooled connection per writer

    @classmethod
    def open(cls, url: str, *, pool_size: int = DEFAULT_POOL_SIZE, echo: bool = False) -> Store:
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
            if holds_writer := _pools_connections(target):
                kwargs["pool_size"] = SQLITE_POOL_SIZE
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size)
        engine = create_async_engine(target, **kwargs)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        if engine.dialect.name != "sqlite":
            _ping_after_idle(engine)
            # Reads run in autocommit: each statement is its own transaction, which under READ
            # COMMITTED (PostgreSQL's default) is what a statement in a transaction sees anyway,
            # without a BEGIN and a ROLLBACK around it (two of a list request's three round
            # trips). No autoflush: an object changed in a read session can never be written.
            reader = engine.execution_options(isolation_level="AUTOCOMMIT")
            reads = async_sessionmaker(reader, expire_on_commit=False, autoflush=False)
            return cls(engine, sessions, url, reads=reads, _read_engine=reader)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        reader = engine.execution_options(taskbridge_read=True)
        return cls(
            engine,
            sessions,
            url,
            reads=async_sessionmaker(reader, expire_on_commit=False),
            _write_turn=WriteTurns(),
            _read_engine=reader,
            _holds_writer=holds_writer,
            _read_turn=asyncio.Lock() if holds_writer else None,
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def migrate(self) -> None:
        """Upgrade the schema to head (idempotent), and learn (or give) the store its identity."""
        async with self._turn(), self.engine.begin() as conn:
            await conn.run_sync(_upgrade)
        self._file = self._file_id()
        async with self.transaction() as session:
            row = await session.get(MetaRow, IDENTITY_KEY)
            if row is None:
                row = MetaRow(key=IDENTITY_KEY, value={"id": new_id(), "created_at": utcnow().isoformat()})
                session.add(row)
            self.identity = Identity(row.value["id"], datetime.fromisoformat(row.value["created_at"]))

    async def check(self) -> str | None:
        """Why this store is no longer the one opened (deleted, replaced), or None. Once lost,
        always lost: the process must be restarted onto the store it should use."""
        if self.lost is not None or self.identity is None:
            return self.lost
        path = self._path()
        if path is not None and self._file is not None:
            current = self._file_id()
            if current is None:
                return self._lose(f"the store file {path} was deleted")
            if current != self._file:
                return self._lose(f"the store file {path} was replaced")
        async with self.read() as session:
            row = await session.get(MetaRow, IDENTITY_KEY)
        if row is None or row.value.get("id") != self.identity.id:
            return self._lose("the store was replaced (its identity changed)")
        return None

    async def probe_write(self, replica: str) -> None:
        """Write a row and commit it: readiness must fail when the store is full or read-only,
        which a read never notices. Raises what the store raised."""
        async with self.transaction() as session:
            row = await session.get(MetaRow, PROBE_KEY)
            value = {"at": utcnow().isoformat(), "by": replica}
            if row is None:
                session.add(MetaRow(key=PROBE_KEY, value=value))
            else:
                row.value = value

    def _lose(self, reason: str) -> str:
        self.lost = f"{reason}: writes stopped; restart the daemon (it re-adopts mirrors by marker)"
        return self.lost

    def _path(self) -> Path | None:
        url = make_url(self.url)
        database = url.database
        if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
            return None
        return None if database.startswith("file:") else Path(database)

    def _file_id(self) -> tuple[int, int] | None:
        path = self._path()
        if path is None:
            return None
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino)

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

    def _turn(self, *, answers: bool = False) -> WriteTurns | UrgentTurn | contextlib.nullcontext[None]:
        if self._write_turn is None:
            return contextlib.nullcontext()
        return self._write_turn.urgent() if answers else self._write_turn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in one write transaction: committed on success, rolled back on error."""
        if self.lost is not None:
            raise StoreLost(self.lost)
        async with self._writing() as conn:
            session = self.sessions(bind=conn)
            try:
                # Begun by its first statement (SQLAlchemy's autobegin), not by `session.begin()`
                # up front: each of the async session's calls into SQLAlchemy is a greenlet's round
                # trip, about 20 us of CPU, and a write transaction made five.
                yield session
                await session.commit()
            except BaseException:
                # A commit that failed too: SQLAlchemy leaves the connection's transaction
                # inactive but open until a rollback, and the held writer's next BEGIN would be
                # refused. (The on_commit callbacks, after a COMMIT that went through, never
                # raise: see `_run_on_commit`.)
                await session.rollback()
                raise
            finally:
                # Closed here, not by the session's own context manager, which closes in a task
                # of its own so that a cancellation cannot cut a connection's return short: this
                # session holds no connection (`_writing` does). Ended, it closes without I/O (it
                # only lets go of its objects), so without a greenlet's round trip.
                if session.in_transaction():
                    await session.close()
                else:
                    session.sync_session.close()

    @asynccontextmanager
    async def statements(self, *, answers: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection in one write transaction, for Core statements only: the hot paths that
        write a few rows they need not load (a webhook's record, its claim) skip the ORM's unit
        of work, which cost more CPU than the statements themselves. `answers=True` for a
        writer that answers someone as soon as it has written and writes no more (see
        `_writing`)."""
        if self.lost is not None:
            raise StoreLost(self.lost)
        async with self._writing(answers=answers) as conn, conn.begin():
            yield conn

    @asynccontextmanager
    async def _writing(self, *, answers: bool = False) -> AsyncIterator[AsyncConnection]:
        """The connection a write transaction runs on, in its turn. SQLite on disk: one held for
        every writer of this process, as they take turns anyway: a checkout from the pool and
        back cost each write transaction about 80 us of CPU, more than a statement. PostgreSQL
        (writers run side by side), SQLite in memory, or a store closed: one from the pool.
        A writer that `answers` someone waiting (a webhook's record) takes its turn ahead of the
        writers queued (`_turns.py`) and does not yield after it."""
        async with self._turn(answers=answers):
            if self._holds_writer and not self._closed:
                conn = await self._held_writer()
                try:
                    yield conn
                finally:
                    if conn.invalidated:  # the driver lost it: the next writer connects anew
                        self._writer = None
                        await _close_quietly(conn)
            else:
                async with self.engine.connect() as pooled:
                    yield pooled
            if self._write_turn is not None and not answers:
                # SQLite's statements run inline, so a write transaction never yields to the
                # loop: without this, a run of transactions (a poll observing its listing, chunk
                # after chunk) would hold the loop for all of them, and the platforms' answers
                # waiting meanwhile with it. Yielding before the turn passes on lets every writer
                # made ready meanwhile queue for it first, in order. A webhook's record is one
                # transaction and then its answer: the yield would put the platform's answer
                # behind everything else ready on the loop (a loop turn, several ms under load,
                # and a platform that sends one delivery at a time waits for each answer).
                await asyncio.sleep(0)

    async def _held_writer(self) -> AsyncConnection:
        """The writers' connection, ready for a transaction (`_ready_held`)."""
        conn = self._writer = await _ready_held(self._writer, self.engine)
        return conn

    def read(self) -> AsyncSession:
        """A session for reads only (`async with store.read() as session:`)."""
        return (self.reads or self.sessions)()

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for Core reads only (`async with store.reading() as conn:`): a read
        session's connection without the session around it, for a hot path that reads a row or
        two (a webhook's echo check, where the session cost more than its statement). On SQLite
        on a file, one connection is held for these reads, taken in turns: a pool's checkout and
        return cost a check about 200 us of CPU, more than its statements, and statements run
        inline, so a turn lasts microseconds. There, a prepared SELECT run with `prepared.run`
        is a read of its own (SQLite's autocommit: what was committed when it started, no
        transaction begun and rolled back around it, which cost SQLAlchemy more than the read),
        as every read of PostgreSQL's reader is; anything else begins a transaction, ended as
        the use returns. Either way the next use reads what was committed since."""
        if self._read_turn is None or self._closed:
            async with self._reader().connect() as pooled:
                yield pooled
            return
        if self.lost is not None:
            raise StoreLost(self.lost)
        async with self._read_turn:
            conn = await _ready_held(self._held_reader, self._reader())
            if conn is not self._held_reader:
                await conn.execution_options(**{_sqlite.UNTRANSACTED: True})
                self._held_reader = conn
            try:
                yield conn
            finally:
                # The driver lost it: the next use connects anew. Or the store closed meanwhile
                # (while this use connected, say), and nobody else would close it.
                if conn.invalidated or self._closed:
                    self._held_reader = None
                    await _close_quietly(conn)
                elif conn.in_transaction():
                    await conn.rollback()

    async def close(self) -> None:
        """Close the store's connections. On SQLite a write transaction in progress ends first
        (for up to CLOSE_WAIT seconds); writers after this take a pooled connection each."""
        self._closed = True
        turn = self._write_turn if self._writer is not None else None
        held = False
        if turn is not None:
            try:
                await asyncio.wait_for(turn.acquire(), CLOSE_WAIT)
                held = True
            except TimeoutError:
                log.warning(
                    "closing the store under a write transaction still running after %g s", CLOSE_WAIT
                )
        try:
            writer, self._writer = self._writer, None
            if writer is not None:
                await _close_quietly(writer)
            reader, self._held_reader = self._held_reader, None
            if reader is not None:
                await _close_quietly(reader)
        finally:
            if held and turn is not None:
                turn.release()
        await self.engine.dispose()


def _pools_connections(target: str | URL) -> bool:
    """Whether SQLAlchemy keeps a pool of connections for this SQLite URL (a database on disk);
    an in-memory one gets a single connection that everyone shares."""
    url = make_url(target)
    return url.get_driver_name() == _sqlite.DRIVER and issubclass(
        _sqlite.InlineDialect.get_pool_class(url), pool.QueuePool
    )


async def _ready_held(conn: AsyncConnection | None, engine: AsyncEngine) -> AsyncConnection:
    """A connection the store holds (the writers', the echo checks'), connected from `engine` if
    need be, with no transaction open: one left open (a use cut short, or a COMMIT that failed
    while SQLite kept the transaction, which SQLAlchemy no longer counts as open) is rolled back
    here, as each use begins its own."""
    if conn is None or conn.closed or conn.invalidated:
        return await engine.connect()
    if conn.in_transaction():
        await conn.rollback()
    driver = conn.sync_connection.connection.dbapi_connection
    if isinstance(driver, _sqlite.InlineConnection) and driver.in_transaction:
        driver.rollback()
    return conn


async def _close_quietly(conn: AsyncConnection) -> None:
    """Close a connection whose driver may already have lost it: what it says then is nothing a
    caller can act on (the pool replaces it)."""
    try:
        await conn.close()
    except Exception as error:  # a dead connection's last word
        log.debug("closing a store connection failed: %s", type(error).__name__)


def _ping_after_idle(engine: AsyncEngine) -> None:
    """Ping a connection at checkout when it was idle longer than PING_AFTER_IDLE. A dead one
    (the server restarted) invalidates the pool, which reconnects, as `pool_pre_ping` would."""
    pool = engine.sync_engine.pool
    dialect = engine.sync_engine.dialect

    @event.listens_for(pool, "checkin")
    def checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        # A connection just made has no checkin time: its record's info is cleared on reconnect.
        last = record.info.get(_CHECKED_IN)
        if last is None or time.monotonic() - last < PING_AFTER_IDLE:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if dialect.is_disconnect(error, dbapi_connection, None):
                raise exc.InvalidatePoolError("the store's connection was closed while idle") from error
            raise


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
    # The commit stands whatever a callback does: raised from here, an error would come out of
    # the commit as if it had failed, and the rollback after it would be refused.
    for callback in session.info.pop("on_commit", []):
        try:
            callback()
        except Exception:
            log.exception("a callback after a commit failed (the commit stands)")


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
    statement = "BEGIN" if conn.get_execution_options().get("taskbridge_read") else "BEGIN IMMEDIATE"
    if isinstance(conn.dialect, _sqlite.InlineDialect):
        conn.connection.info[_sqlite.BEGIN] = statement  # its do_begin, which follows, runs it
    else:
        conn.exec_driver_sql(statement)


class StoreTooNew(RuntimeError):
    """The store's schema is at a revision this taskbridge does not know: a newer one made it."""


def _upgrade(connection: Connection) -> None:
    cfg = alembic_config()
    script = ScriptDirectory.from_config(cfg)
    current = MigrationContext.configure(connection).get_current_revision()
    if current is not None and current not in {r.revision for r in script.walk_revisions()}:
        # Alembic says "Can't locate revision" with a traceback; this is a version mix-up
        # (a rollback), and the store must not be touched by code that cannot read it.
        raise StoreTooNew(
            f"the store's schema is at revision {current!r}, which this taskbridge does not know "
            f"(its newest is {script.get_current_head()!r}): a newer taskbridge made or upgraded "
            "it; run that version or a newer one"
        )
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def _is_current(connection: Connection) -> bool:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    return MigrationContext.configure(connection).get_current_revision() == head
