"""Statements of the hot paths, built once and run with parameters.

Building an ORM statement and computing its key for SQLAlchemy's compiled cache costs more
CPU than running it on SQLite: a one-row SELECT by key took 149 us built afresh and 62 us
prepared, and the outbox's claim query took 0.7 ms just to build. The outbox, the committer
and the inbox run these thousands of times a minute under a burst, so they take their
statements from here (docs/performance.md). A statement here is immutable; parameters go in
at execution (`session.scalars(stmt, {"ids": [...]})`), lists through expanding parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Select, Table, Update, bindparam, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstanceState
from sqlalchemy.orm.attributes import set_committed_value


@functools.cache
def rows_in(entity: Any, column: str = "id") -> Select[Any]:
    """`SELECT entity WHERE entity.<column> IN :ids` (a list)."""
    return select(entity).where(getattr(entity, column).in_(bindparam("ids", expanding=True)))


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
        await session.execute(update_columns(type(row).__table__, names), {"row_id": row.id, **changed})
    return True
