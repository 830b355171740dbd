"""The store's timestamps as SQLite holds them: `UTCDateTime`'s own text for SQLite is exactly
the text SQLAlchemy's two steps make (this type's conversion to naive UTC, then DATETIME's
format), since rows are compared and ordered by that text (due times, claims' expiry)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.types import TypeDecorator

from bridge.store.tables import UTCDateTime

_SQLITE = sqlite.dialect()
_OURS = UTCDateTime().dialect_impl(_SQLITE).bind_processor(_SQLITE)
_THEIRS = TypeDecorator.bind_processor(UTCDateTime().dialect_impl(_SQLITE), _SQLITE)
_ZONES = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11))])


@settings(max_examples=2000, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    zone=_ZONES,
)
def test_the_sqlite_text_of_a_time_is_sqlalchemys(moment: datetime, zone: timezone) -> None:
    aware = moment.replace(tzinfo=zone)
    assert _OURS(aware) == _THEIRS(aware)


def test_none_and_naive_times_as_sqlalchemys() -> None:
    assert _OURS(None) is None
    with pytest.raises(ValueError, match="naive datetime"):
        _OURS(datetime(2026, 12, 6))
    with pytest.raises(ValueError, match="naive datetime"):
        _THEIRS(datetime(2026, 12, 6))


def test_postgresql_keeps_sqlalchemys_processing() -> None:
    dialect = postgresql.dialect()
    ours = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    theirs = TypeDecorator.bind_processor(UTCDateTime().dialect_impl(dialect), dialect)
    moment = datetime(2026, 12, 6, 7, 0, tzinfo=timezone(timedelta(hours=2)))
    assert (ours or (lambda v: v))(moment) == (theirs or (lambda v: v))(moment) == moment.astimezone(UTC)


def test_a_stored_time_reads_back_aware() -> None:
    moment = datetime(2026, 12, 6, 7, 0, 1, 5, tzinfo=UTC)
    read = UTCDateTime().dialect_impl(_SQLITE).result_processor(_SQLITE, None)
    assert read is not None and read(_OURS(moment)) == moment
