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
from typing import Any

from sqlalchemy import Select, bindparam, select


@functools.cache
def rows_in(entity: Any, column: str = "id") -> Select[Any]:
    """`SELECT entity WHERE entity.<column> IN :ids` (a list)."""
    return select(entity).where(getattr(entity, column).in_(bindparam("ids", expanding=True)))


def by_ids(values: Any) -> dict[str, list[Any]]:
    """The parameters of a `rows_in` statement: the values as a list (sets have no order)."""
    return {"ids": list(values)}
