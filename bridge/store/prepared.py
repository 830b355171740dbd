"""Statements of the hot paths, built once and run with parameters.

Building an ORM statement and computing its key for SQLAlchemy's compiled cache costs more
CPU than running it on SQLite: a one-row SELECT by key took 149 us built afresh and 62 us
prepared, and the outbox's claim query took 0.7 ms just to build. The outbox, the committer
and the inbox run these thousands of times a minute under a burst, so they take their
statements from here (docs/performance.md). A statement here is immutable; parameters go in
at execution (`session.scalars(stmt, {"ids": [...]})`), lists of ids through `any_of`.

A list in `in_()` (a parameter's or constants) is an "expanding" parameter: SQLAlchemy rewrites
the compiled SQL string for it at every execution, a quarter of a small statement's CPU on
SQLite. `one_of` (constants) and `any_of` (a list given at execution) say the same without it.

`run(session, stmt, params)` executes one of these statements as `session.execute` would; on
SQLite it runs it on the driver directly, past SQLAlchemy's execution machinery (`_sqlite.py`
says what that saves and which statements qualify), and returns rows with the reading methods
the hot paths use (`all`, `first`, `one`, `scalar_one`, `scalars`, `rowcount`, iteration).
"""

from __future__ import annotations

import collections
import functools
import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import (
    Boolean,
    Select,
    String,
    Table,
    Text,
    Update,
    bindparam,
    inspect,
    literal,
    select,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstanceState, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.type_api import TypeDecorator
from sqlalchemy.sql.visitors import InternalTraversal

from bridge.store import _sqlite


def one_of(column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """`column IN (values)` for values known when the statement is built (states, kinds), as
    one plain parameter each: no rewriting of the SQL at execution."""
    return column.in_([literal(value, column.type) for value in values])  # type: ignore[no-any-return]


def any_of(column: Any, name: str = "ids") -> ColumnElement[bool]:
    """`column IN (the list given as parameter `name` at execution)`, for string and integer
    columns. On SQLite the list goes in as one JSON parameter that `json_each` reads (the
    compiled SQL stays as it is), its values taken as text for a text column (JSON numbers
    would not match text, as `IN` makes them); elsewhere it is SQLAlchemy's expanding
    parameter. Ids hold no NUL (neither store can: PostgreSQL's text refuses it, and SQLite's
    JSON ends a string there)."""
    return _AnyOf(column, name)


class _JsonList(TypeDecorator[list[Any]]):
    """A list of ids bound as one JSON array (SQLite's `json_each` reads it)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str:
        if isinstance(value, str | bytes):  # iterable, but one id, not a list of its characters
            raise TypeError(f"a list of ids is wanted, not {type(value).__name__}")
        return json.dumps(list(value))


class _AnyOf(ColumnElement[bool]):
    inherit_cache = True
    type = Boolean()
    _is_implicitly_boolean = True  # a comparison: no "= 1" after it where booleans are integers
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("name", InternalTraversal.dp_string),
    ]

    def __init__(self, column: Any, name: str) -> None:
        self.column = column
        self.name = name

    @property
    def _from_objects(self) -> list[Any]:
        return self.column._from_objects  # type: ignore[no-any-return]  # the column's table, in FROM


@compiles(_AnyOf)
def _any_of(element: _AnyOf, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column.in_(bindparam(element.name, expanding=True)), **kw)


@compiles(_AnyOf, "sqlite")
def _any_of_sqlite(element: _AnyOf, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    values = compiler.process(bindparam(element.name, type_=_JsonList()), **kw)
    value = "CAST(value AS TEXT)" if element.column.type._type_affinity is String else "value"
    return f"{column} IN (SELECT {value} FROM json_each({values}))"


@functools.cache
def rows_in(entity: Any, column: str = "id") -> Select[Any]:
    """`SELECT entity WHERE entity.<column> IN :ids` (a list)."""
    return select(entity).where(any_of(getattr(entity, column)))


@functools.cache
def copy_type(entity: Any) -> type[tuple[Any, ...]]:
    """A named tuple of `entity`'s columns: a row read as a plain value (`copies`)."""
    return collections.namedtuple(f"{entity.__name__}Copy", [c.key for c in entity.__table__.c])  # type: ignore[misc]


async def copies(on: AsyncSession | AsyncConnection, entity: Any, ids: Iterable[Any]) -> list[Any]:
    """The rows of `entity` with these ids, as named tuples of its columns (`copy_type`), not
    objects of the session: for a snapshot that is only read (a claimed operation's task and
    link), where the ORM's loading cost three times the statement. `_replace` makes a changed
    copy."""
    make = copy_type(entity)._make  # type: ignore[attr-defined]
    return [make(row) for row in (await run(on, _columns_of(rows_in(entity))[1], by_ids(ids))).all()]


async def loaded(session: AsyncSession, entity: Any, ids: Iterable[Any]) -> list[Any]:
    """`session.scalars(rows_in(entity), by_ids(ids))` at a third of its CPU (`loaded_by`)."""
    return await loaded_by(session, rows_in(entity), by_ids(ids))


async def got(session: AsyncSession, entity: Any, ident: Any) -> Any:
    """`session.get(entity, ident)` at a third of its CPU: the object the session holds, else
    the row loaded (`loaded_by`), else None."""
    held = session.sync_session.identity_map.get(_mapper(entity).identity_key_from_primary_key([ident]))
    if held is not None and not inspect(held).expired_attributes:
        return held
    found = await loaded(session, entity, [ident])
    return found[0] if found else None


async def loaded_by(session: AsyncSession, statement: Select[Any], parameters: Any) -> list[Any]:
    """`session.scalars(statement, parameters)` for a statement that selects one entity (a
    module's constant), at a third of the CPU: the rows read with `run` as its table's columns,
    and made the session's objects as the ORM's loading makes them. What the session has pending
    is flushed first; a row the session holds already is that object, unchanged (what of it
    was expired read again); any other becomes a new object of the session with the row's values as stored.
    The ORM's loading of one object cost about 250 us of CPU; this about 80."""
    entity, columns = _columns_of(statement)
    # An entity's SELECT of columns is ORM-enabled: `run` flushes what is pending first.
    rows = (await run(session, columns, parameters)).all()
    identity = session.sync_session.identity_map
    mapper = _mapper(entity)
    names = copy_type(entity)._fields  # type: ignore[attr-defined]
    keys = _key_positions(entity)
    out = []
    for row in rows:
        held = identity.get(mapper.identity_key_from_primary_key([row[i] for i in keys]))
        if held is not None:
            expired = inspect(held).expired_attributes
            if expired:  # what the ORM's loading fills in: the attributes expired, only those
                await session.refresh(held, list(expired))
            out.append(held)
            continue
        out.append(attach(session, entity, dict(zip(names, row, strict=True))))
    return out


def attach(session: AsyncSession, entity: Any, values: Mapping[str, Any]) -> Any:
    """An object of `entity` holding `values` (every column), made the session's own as if it
    had loaded them: for a row read or written with Core statements, which a later change to
    the object then updates through the ORM's flush as usual."""
    # Filled as the ORM's loading fills an object (its state's dict, no attribute events), not
    # through the constructor's instrumented setattr of each column: 12 us against 30.
    obj = _mapper(entity).class_manager.new_instance()
    obj.__dict__.update(values)
    make_transient_to_detached(obj)  # the values are what is stored: no history, nothing pending
    session.sync_session.add(obj)
    return obj


@functools.lru_cache(maxsize=256)  # statements built once (a per-call one would only miss)
def _columns_of(statement: Select[Any]) -> tuple[Any, Select[Any]]:
    """(the entity `statement` selects, the same SELECT of its table's columns)."""
    described = statement.column_descriptions
    entity = described[0].get("entity") if len(described) == 1 else None
    if entity is None or described[0].get("expr") is not entity:
        raise TypeError("loaded_by() wants a SELECT of one entity")
    _mapper(entity)
    return entity, statement.with_only_columns(*entity.__table__.c)


@functools.cache
def _mapper(entity: Any) -> Any:
    mapper = inspect(entity)
    # Attributes named as their columns (the store's tables all are), and nothing but columns.
    if [p.key for p in mapper.column_attrs] != [c.key for c in entity.__table__.c] or mapper.relationships:
        raise TypeError(f"{entity.__name__}: not a table's columns only, named as they are")
    return mapper


@functools.cache
def _key_positions(entity: Any) -> tuple[int, ...]:
    columns = list(entity.__table__.c)
    return tuple(columns.index(c) for c in entity.__table__.primary_key.columns)


def by_ids(values: Any) -> dict[str, list[Any]]:
    """The parameters of a `rows_in` statement: the values as a list (sets have no order)."""
    return {"ids": list(values)}


@functools.cache
def update_columns(table: Table, columns: tuple[str, ...]) -> Update:
    """`UPDATE table SET <columns> WHERE id = :row_id`, each column set from its own parameter."""
    return (
        update(table)
        .where(table.c.id == bindparam("row_id"))
        .values({name: bindparam(name) for name in columns})
    )


def show_stored(row: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    """Of `values` (column -> new value), those that differ from the loaded row's, set on it as
    its stored values (not dirty: no flush writes them). The caller writes what this returns."""
    changed = {name: value for name, value in values.items() if value != getattr(row, name)}
    for name, value in changed.items():
        set_committed_value(row, name, value)
    return changed


async def write_loaded(session: AsyncSession, row: Any, values: Mapping[str, Any]) -> bool:
    """Write the columns of a loaded row that `values` changes, as one Core UPDATE now, and show
    them on it as stored: an ORM flush of the same change cost twice the CPU
    (docs/performance.md). Only changed columns are written, as the flush would: on PostgreSQL
    another transaction's change to any other column stands. A row not stored yet, or with an
    ORM change pending (which a later flush would write over the Core write), gets `values` set
    for the flush instead. True when they were written now."""
    state: InstanceState[Any] = inspect(row)
    if not state.persistent or state.modified:
        for name, value in values.items():
            setattr(row, name, value)
        return False
    changed = show_stored(row, values)
    if changed:
        names = tuple(sorted(changed))
        await run(session, update_columns(type(row).__table__, names), {"row_id": row.id, **changed})
    return True


# (id(statement), the columns an INSERT or UPDATE is given) -> (the statement, the dialect it
# was planned for, its plan)
_PLANS: dict[tuple[int, tuple[str, ...] | None], tuple[Any, Any, _sqlite.Plan | None]] = {}
PLANS_KEPT = 1_000  # statements planned at most: the hot paths' own are a few dozen


async def run(on: AsyncSession | AsyncConnection, statement: Any, parameters: Any = None) -> Any:
    """`on.execute(statement, parameters)` for a statement built once (a module's constant or
    a cached builder's), run on SQLite's driver itself when the statement allows it (see
    `_sqlite.plan`). `parameters`: a mapping, or a list of them (an executemany). Returns
    SQLAlchemy's result, or `_sqlite.Rows` with the same reading methods."""
    connection = _direct_connection(on)
    if connection is None:
        return await on.execute(statement, parameters)
    many = isinstance(parameters, list)
    # An INSERT or UPDATE compiles to the columns its parameters name (as SQLAlchemy's own
    # execution does): one plan per set of names.
    columns = None
    if statement.is_insert or statement.is_update:
        first = parameters[0] if many and parameters else parameters
        columns = tuple(sorted(first)) if first else ()
    dialect = connection.dialect
    key = (id(statement), columns)
    entry = _PLANS.get(key)
    if entry is None or entry[0] is not statement or entry[1] is not dialect:
        if len(_PLANS) >= PLANS_KEPT:  # statements built per call: SQLAlchemy's cache keys them
            return await on.execute(statement, parameters)
        entry = _PLANS[key] = (statement, dialect, _sqlite.plan(statement, dialect, columns))
    plan = entry[2]
    # A list given to an ORM write is SQLAlchemy's "bulk by primary key", not an executemany;
    # a connection that logs its SQL (echo, or the sqlalchemy.engine logger) logs these too.
    if plan is None or (many and (plan.returns or plan.orm or not parameters)) or connection._echo:
        return await on.execute(statement, parameters)
    try:
        bound = (
            [_sqlite.bind(plan, p) for p in parameters] if many else [_sqlite.bind(plan, parameters or {})]
        )
    except Exception:  # a value its type refuses: SQLAlchemy's execution raises its own error
        bound = [None]
    if any(b is None for b in bound):
        return await on.execute(statement, parameters)  # SQLAlchemy names what is missing or wrong
    if not connection.in_transaction() and not (
        plan.returns and statement.is_select and connection._execution_options.get(_sqlite.UNTRANSACTED)
    ):
        # Begun as the statement's execution would have begun it (the connection's "begin"
        # event chooses the BEGIN), and the statement then runs directly like the rest.
        await (on.connection() if isinstance(on, AsyncSession) else on.begin())
    if plan.orm and isinstance(on, AsyncSession) and on.sync_session.autoflush:
        sync = on.sync_session
        if not sync._is_clean() and not sync._flushing:
            await on.flush()  # as the ORM's execute would, before it
    return _sqlite.execute(connection, plan, bound, many)  # type: ignore[arg-type]


def _direct_connection(on: AsyncSession | AsyncConnection) -> Any:
    """The sync Connection a statement of `on` would run in, when it is SQLite's inline driver."""
    if isinstance(on, AsyncSession):
        bind = on.bind
        if not isinstance(bind, AsyncConnection):
            return None
        on = bind
    connection = on.sync_connection
    if connection is None or not isinstance(connection.dialect, _sqlite.InlineDialect):
        return None
    return connection
