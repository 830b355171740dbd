"""What a store sends to its database meanwhile: every statement, as its listeners see it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from bridge.store import Store


@contextmanager
def statements_sent(store: Store, about: str | None = None) -> Iterator[list[str]]:
    """Each statement on one line; with `about`, only those that name it (a table)."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if about is None or about in statement:
            sent.append(" ".join(statement.split()))

    event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", record)
