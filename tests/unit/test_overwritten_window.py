"""`links.overwritten` as stored: read back as it was written; a window kept by an earlier build
without every key (a95c5f0 wrote no `wrote`), or otherwise unreadable, is no window, since a
poll or a delivery that meets it must not fail on it every time."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from bridge.engine import core
from bridge.engine.sync import encode_overwritten, link_overwritten

AFTER = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
UNTIL = datetime(2026, 12, 5, 12, 0, 1, tzinfo=UTC)


def test_a_window_reads_back_as_written() -> None:
    window = core.Overwritten(
        after=AFTER, until=UNTIL, before={"title": "a"}, wrote={"title": "b"}, claims=[{"title": "c"}]
    )
    assert link_overwritten(SimpleNamespace(overwritten=encode_overwritten(window))) == window  # type: ignore[arg-type]


WRITTEN = encode_overwritten(core.Overwritten(after=AFTER, until=UNTIL, before={}, wrote={}))


@pytest.mark.parametrize(
    "raw",
    [
        {k: v for k, v in WRITTEN.items() if k != "wrote"},  # as a95c5f0 kept it
        {**WRITTEN, "after": "not a time"},
        {**WRITTEN, "until": None},
        {**WRITTEN, "claims": None},
    ],
)
def test_an_unreadable_window_is_none(raw: dict[str, Any]) -> None:
    assert link_overwritten(SimpleNamespace(overwritten=raw)) is None  # type: ignore[arg-type]
