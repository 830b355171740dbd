"""SQLAlchemy's aiosqlite dialect, with SQLite's statements run on the event loop's thread.

aiosqlite runs each SQLite connection on a thread of its own and hands it every call through a
queue; SQLAlchemy's adapter makes four such calls per statement (open a cursor, execute, fetch,
close). Each hand-off wakes a thread and the event loop and passes the GIL back and forth:
measured here, a one-row SELECT cost about 320 us of CPU that way against 3 us in sqlite3
itself, and under load 41% of the daemon's profile was aiosqlite's thread. With one hand-off per
statement (this module's first form) it was still 32%.

So this dialect lets aiosqlite open and close connections (on its thread, as usual) and runs
each statement, commit and rollback directly on the sqlite3 connection, on the event loop's
thread: the store's statements take microseconds (indexed lookups on a local file), far less
than one hand-off. What this relies on, and why it holds:
- one thread uses a connection at a time: only the event loop's thread runs statements, and a
  statement runs to its end without yielding (there is no await inside one);
- nothing waits long on a lock with the loop blocked: in this process writers queue on the
  store's asyncio lock before BEGIN IMMEDIATE, and in WAL mode readers never wait for a writer
  (another process writing the same file is the one case that waits, up to the busy timeout);
- `Connection._connection` is aiosqlite's sqlite3 connection, opened with
  check_same_thread=False (SQLAlchemy's own adapter relies on the same attribute).
Everything else (the pool, transactions, errors) is SQLAlchemy's aiosqlite dialect unchanged;
`Store.open` uses this dialect for `sqlite+aiosqlite` URLs.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

DRIVER = "taskbridge_aiosqlite"  # the name Store.open gives sqlite+aiosqlite URLs
BEGIN = "taskbridge_begin"  # a pooled connection's info: the BEGIN its next transaction runs


def _run(
    conn: sqlite3.Connection, operation: str, parameters: Any, many: bool
) -> tuple[Any, list[Any], int, Any]:
    """On aiosqlite's thread: the whole statement, start to finish."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class InlineCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: Any) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]  # no driver cursor outlives a statement
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: Any = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass

    async def _async_soft_close(self) -> None:
        return  # nothing is held open on the driver's side

    def close(self) -> None:
        self._rows.clear()

    async def _call(self, operation: Any, parameters: Any, many: bool) -> None:
        # No await between start and end: no other statement can interleave on this connection.
        result = _run(self._connection._conn, operation, parameters, many)
        self._description, rows, self._rowcount, self._lastrowid = result
        self._rows = collections.deque(rows)

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        await self._call(operation, parameters, False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Sequence[Any]) -> Any:
        await self._call(operation, seq_of_parameters, True)

    def nextset(self) -> None:
        return None

    def setinputsizes(self, *inputsizes: Any) -> None:
        return None


class InlineConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = InlineCursor

    def _end(self, commit: bool) -> None:
        if not self.in_transaction:
            return  # nothing open: nothing to end
        conn = self._connection._connection
        try:
            conn.commit() if commit else conn.rollback()
        except Exception as error:
            self._handle_exception(error)

    @property
    def in_transaction(self) -> bool:
        """SQLite's own word: a COMMIT that failed may leave a transaction open there which
        SQLAlchemy no longer counts."""
        conn = self._connection._connection
        return conn is not None and conn.in_transaction

    def rollback(self) -> None:
        self._end(commit=False)

    def commit(self) -> None:
        self._end(commit=True)


class InlineDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> InlineConnection:
        kw["check_same_thread"] = False  # statements run on the loop's thread (see the docstring)
        connection = self.aiosqlite.connect(*arg, **kw)
        connection._thread.daemon = True  # as SQLAlchemy's adapter does: never hold up exit
        return InlineConnection(self, await_(connection))


class InlineDialect(SQLiteDialect_aiosqlite):
    driver = DRIVER
    supports_statement_cache = True

    def do_begin(self, dbapi_connection: Any) -> None:
        # The BEGIN that the store's "begin" event chose for this transaction (IMMEDIATE for a
        # writer, DEFERRED for a reader), run on the driver's cursor: as a statement of
        # SQLAlchemy's (`exec_driver_sql`) it took a sixth of a one-statement read's CPU. Here,
        # inside SQLAlchemy's begin, its failure is wrapped like any statement's.
        statement = dbapi_connection.info.pop(BEGIN, None)
        if statement is not None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(statement)
            finally:
                cursor.close()

    @classmethod
    def import_dbapi(cls) -> InlineDBAPI:  # type: ignore[override]
        return InlineDBAPI(__import__("aiosqlite"), __import__("sqlite3"))


registry.register(f"sqlite.{DRIVER}", __name__, "InlineDialect")
