from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import model
from bridge.model import Priority, Status, Task


def test_dates_stay_dates_whatever_the_timezone() -> None:
    assert model.parse_date("2026-03-20T23:30:00-08:00") == date(2026, 3, 20)
    assert model.parse_date("2026-03-20T00:00:00Z") == date(2026, 3, 20)
    assert model.parse_date("2026-03-20") == date(2026, 3, 20)
    assert model.parse_date(None) is None


def test_timestamps_are_utc() -> None:
    ts = model.parse_timestamp("2026-03-20T10:00:00+02:00")
    assert ts == datetime(2026, 3, 20, 8, 0, tzinfo=UTC)
    assert ts is not None and ts.utcoffset() == timedelta(0)
    naive = model.as_utc(datetime(2026, 1, 1, 12, 0))
    assert naive.tzinfo is UTC


def test_normalize_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        model.normalize("status", "started")
    with pytest.raises(ValueError):
        model.normalize("tags", "not-a-list")
    with pytest.raises(ValueError):
        model.normalize("colour", "red")


def test_task_values_and_diff() -> None:
    task = Task.from_values("01J", "r", {"title": "A", "status": "in_progress", "tags": ["x", "y"]})
    assert task.status is Status.IN_PROGRESS
    assert task.priority is Priority.NONE
    changed = task.with_values({"tags": ["y", "x"], "title": "B"})
    assert model.diff(task.values(), changed.values()) == {"title"}


values_strategy = st.fixed_dictionaries(
    {},
    optional={
        "title": st.text(max_size=30),
        "description": st.text(max_size=30),
        "status": st.sampled_from(list(Status)),
        "priority": st.sampled_from(list(Priority)),
        "assignees": st.frozensets(st.text(min_size=1, max_size=5), max_size=3),
        "tags": st.frozensets(st.text(min_size=1, max_size=5), max_size=3),
        "due_date": st.none() | st.dates(),
        "start_date": st.none() | st.dates(),
        "parent": st.none() | st.text(min_size=1, max_size=26),
        "archived": st.booleans(),
    },
)


@given(values_strategy)
def test_encode_decode_roundtrip(values: model.Values) -> None:
    assert model.decode_values(model.encode_values(values)) == values


def test_new_ids_sort_by_time() -> None:
    a = model.new_id()
    b = model.new_id()
    assert len(a) == 26 and a <= b


def test_as_utc_converts_other_zones() -> None:
    other = datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=5)))
    assert model.as_utc(other) == datetime(2026, 1, 1, 7, 0, tzinfo=UTC)
