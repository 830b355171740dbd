"""SQLAlchemy's aiosqlite dialect, with one trip to aiosqlite's thread per statement.

aiosqlite runs each SQLite connection on a thread of its own and hands it every call through a
queue; SQLAlchemy's adapter makes four such calls per statement (open a cursor, execute, fetch,
close). Each hand-off wakes a thread and the event loop and passes the GIL twice: measured here,
a one-row SELECT costs about 320 us of CPU that way against 3 us in sqlite3 itself, and the
daemon's profile under load was dominated by it. This adapter's cursor sends one function per
statement, which opens, executes, fetches and closes the sqlite3 cursor on that thread, and keeps
what it returned (rows, description, row count, last row id).

Everything else (connections, transactions, the pool, errors) is SQLAlchemy's aiosqlite dialect
unchanged, but for a commit or rollback with no transaction open, which makes no trip at all;
`Store.open` uses this dialect for `sqlite+aiosqlite` URLs. It relies on two details of
aiosqlite that SQLAlchemy's own adapter relies on too: `Connection._execute(fn, *args)` runs `fn`
on the connection's thread, and `Connection._conn` is the sqlite3 connection.
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


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
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
        async with self._adapt_connection._execute_mutex:
            conn = self._connection
            result = await conn._execute(_run, conn._conn, operation, parameters, many)
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


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneTripCursor

    def _idle(self) -> bool:
        """No transaction open: nothing for a commit or rollback to do, so no trip is made.
        (`in_transaction` only reads SQLite's autocommit flag; the connection is opened with
        check_same_thread=False so that this thread may read it.)"""
        conn = self._connection._connection
        return conn is None or not conn.in_transaction

    def rollback(self) -> None:
        if not self._idle():
            super().rollback()

    def commit(self) -> None:
        if not self._idle():
            super().commit()


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        kw["check_same_thread"] = False  # see OneTripConnection._idle
        connection = self.aiosqlite.connect(*arg, **kw)
        connection._thread.daemon = True  # as SQLAlchemy's adapter does: never hold up exit
        return OneTripConnection(self, await_(connection))


class OneTripDialect(SQLiteDialect_aiosqlite):
    driver = DRIVER
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> OneTripDBAPI:  # type: ignore[override]
        return OneTripDBAPI(__import__("aiosqlite"), __import__("sqlite3"))


registry.register(f"sqlite.{DRIVER}", __name__, "OneTripDialect")
