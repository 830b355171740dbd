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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.engine import Connection
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

DRIVER = "taskbridge_aiosqlite"  # the name Store.open gives sqlite+aiosqlite URLs
BEGIN = "taskbridge_begin"  # a pooled connection's info: the BEGIN its next transaction runs
# A connection's execution option: a prepared SELECT `prepared.run` sends on it runs as a read
# of its own (SQLite's autocommit), not in a transaction begun and rolled back around it, which
# cost SQLAlchemy more than the read (`Store.reading()`'s echo checks). Anything else sent on it
# begins a transaction as usual.
UNTRANSACTED = "taskbridge_untransacted"


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


# -- statements run on the driver, past SQLAlchemy's execution ---------------------------------
#
# SQLAlchemy's execution of a compiled, cached statement still costs 60-90 us of CPU on top of
# SQLite's few: an execution context, the parameters built through `construct_params`, a cursor
# adapter, a result object, and a greenlet switch each way. The hot paths run a few prepared
# statements thousands of times a minute, so `prepared.run` hands those to `execute` below: the
# statement compiled once by SQLAlchemy (its SQL, its parameters' order and type processing, its
# columns' result processing), run on the sqlite3 connection of the transaction it is given.
# Only what that reproduces exactly is planned (`plan` answers None otherwise, and the caller
# uses SQLAlchemy's execution): no Python-side column defaults, no expanding parameters, no ORM
# entities or ORM-synchronized writes.


class _Required:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED = _Required()  # a parameter the statement needs a value for at execution


@dataclass(frozen=True, slots=True)
class Plan:
    """A statement compiled once for SQLite, ready to run on the driver."""

    sql: str
    # For each `?` in order: the parameter's name, its value when the statement fixed one
    # (else REQUIRED), and SQLAlchemy's bind processing of its type (None: none).
    params: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...]
    row: type[tuple[Any, ...]] | None  # the rows' class (named fields), None: no rows returned
    results: tuple[tuple[int, Callable[[Any], Any]], ...]  # (column, its result processing)
    orm: bool  # ORM-enabled: the session flushes what it has pending first, as its execute would
    returns: bool


def plan(statement: Any, dialect: Any, columns: Sequence[str] | None = None) -> Plan | None:
    """The statement compiled for `execute`, or None when only SQLAlchemy's execution keeps its
    meaning (see above). `columns`: the parameters' names, which an INSERT or UPDATE compiles to."""
    orm = statement._propagate_attrs.get("compile_state_plugin") == "orm"
    if orm:
        if statement.is_select:
            # Columns only: an entity's rows are objects of the session's identity map.
            if any(_is_entity(d.get("expr")) for d in statement.column_descriptions):
                return None
        elif statement.is_dml and statement.get_execution_options().get("synchronize_session") is not False:
            return None  # the ORM would bring the session's loaded objects in line with the write
        elif not statement.is_dml:
            return None
    compiled = statement.compile(dialect=dialect, column_keys=list(columns) if columns is not None else None)
    if not compiled.positional or compiled.insert_prefetch or compiled.update_prefetch:
        return None
    if getattr(compiled, "_insertmanyvalues", None) is not None or compiled.has_out_parameters:
        return None
    params = []
    for name in compiled.positiontup or ():
        bind = compiled.binds[name]
        if bind.expanding or bind.callable is not None or bind.isoutparam:
            return None
        fixed = REQUIRED if bind.required else bind.value
        params.append((name, fixed, compiled._bind_processors.get(name)))
    row: type[tuple[Any, ...]] | None = None
    results: list[tuple[int, Callable[[Any], Any]]] = []
    returned = compiled._result_columns  # (key, name, objects, type) of each column returned
    if returned:
        names = [c[0] for c in returned]
        if len(set(names)) != len(names):
            return None
        row = collections.namedtuple("Row", names, rename=True)  # type: ignore[misc]
        for i, column in enumerate(returned):
            processor = column[3]._cached_result_processor(dialect, None)
            if processor is not None:
                results.append((i, processor))
    return Plan(
        sql=compiled.string,
        params=tuple(params),
        row=row,
        results=tuple(results),
        orm=orm,
        returns=bool(returned),
    )


def _is_entity(expr: Any) -> bool:
    return isinstance(expr, type) or hasattr(expr, "__mapper__") or getattr(expr, "is_aliased_class", False)


class Rows:
    """What `execute` returns: the part of SQLAlchemy's Result that the hot paths use."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def all(self) -> list[Any]:
        return self._rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise (
                exc.NoResultFound("No row was found when one was required")
                if not self._rows
                else (exc.MultipleResultsFound("Multiple rows were found when exactly one was required"))
            )
        return self._rows[0]

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalars(self) -> Rows:
        return Rows([r[0] for r in self._rows], self.rowcount)


def bind(plan: Plan, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """The driver's parameters for one execution, or None when one the statement needs is
    missing (SQLAlchemy's execution then says which)."""
    out = []
    for name, fixed, processor in plan.params:
        value = values.get(name, fixed)
        if value is REQUIRED:
            return None
        out.append(value if processor is None else processor(value))
    return tuple(out)


def execute(connection: Connection, plan: Plan, parameters: list[tuple[Any, ...]], many: bool) -> Rows:
    """Run a planned statement in `connection`'s transaction, on its sqlite3 connection. A
    failure is raised as SQLAlchemy's execution raises it (wrapped, the connection invalidated
    if the driver lost it)."""
    adapted = connection.connection.dbapi_connection
    assert isinstance(adapted, InlineConnection)
    sent = parameters if many else parameters[0]
    dispatch = connection.dispatch  # the engine's listeners too (a test counting statements)
    if dispatch.before_cursor_execute:
        dispatch.before_cursor_execute(connection, None, plan.sql, sent, None, many)
    try:
        try:
            _, raw, rowcount, _ = _run(adapted._connection._conn, plan.sql, sent, many)
        except Exception as error:
            adapted._handle_exception(error)  # the adapted driver's error, as SQLAlchemy sees it
            raise
    except Exception as error:
        connection._handle_dbapi_exception(error, plan.sql, sent, None, None)
    if dispatch.after_cursor_execute:
        dispatch.after_cursor_execute(connection, None, plan.sql, sent, None, many)
    if plan.row is None or not raw:
        return Rows([], rowcount)
    make = plan.row._make  # type: ignore[attr-defined]
    if not plan.results:
        return Rows([make(r) for r in raw], rowcount)
    rows = []
    for r in raw:
        values = list(r)
        for i, processor in plan.results:
            values[i] = processor(values[i])
        rows.append(make(values))
    return Rows(rows, rowcount)
