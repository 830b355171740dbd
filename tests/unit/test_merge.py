"""The three-way merge and the create marker, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import mapping
from bridge.engine.merge import merge
from bridge.engine.routes import Marker
from bridge.model import Priority, Status

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def identity(name: str, value: Any) -> Any:
    return value


def run(observed: dict[str, Any], base: dict[str, Any], canonical: dict[str, Any], **kw: Any) -> Any:
    args = dict(
        roundtrip=identity,
        policy="newest",
        side_is_preferred=False,
        side_updated_at=T0,
        canonical_updated_at=T0 - timedelta(seconds=1),
    )
    args.update(kw)
    at = args["canonical_updated_at"]
    if not callable(at):
        args["canonical_updated_at"] = lambda _name, at=at: at
    return merge(observed, base, canonical, **args)


def test_no_change_on_the_side_is_nothing() -> None:
    r = run({"title": "a"}, {"title": "a"}, {"title": "b"})
    assert r.changes == {} and not r.conflicts and not r.overruled


def test_change_on_the_side_is_taken_when_canonical_agreed() -> None:
    assert run({"title": "new"}, {"title": "a"}, {"title": "a"}).changes == {"title": "new"}


def test_side_catching_up_with_canonical_is_no_change() -> None:
    assert run({"title": "b"}, {"title": "a"}, {"title": "b"}).changes == {}


def test_lossy_side_does_not_flap() -> None:
    vortask = mapping.load("vortask").priority
    assert vortask is not None

    def rt(name: str, value: Any) -> Any:
        return vortask.roundtrip(value) if name == "priority" else value

    # canonical urgent, Vortask shows High (= high), its base is high: no change at all.
    r = merge(
        {"priority": Priority.HIGH},
        {"priority": Priority.HIGH},
        {"priority": Priority.URGENT},
        roundtrip=rt,
        policy="newest",
        side_is_preferred=False,
        side_updated_at=T0,
        canonical_updated_at=lambda _: T0,
    )
    assert r.changes == {} and not r.overruled
    # Vortask moves to Medium: canonical (urgent) still reads as its base (high) there, so take it.
    r = merge(
        {"priority": Priority.MEDIUM},
        {"priority": Priority.HIGH},
        {"priority": Priority.URGENT},
        roundtrip=rt,
        policy="newest",
        side_is_preferred=False,
        side_updated_at=T0,
        canonical_updated_at=lambda _: T0,
    )
    assert r.changes == {"priority": Priority.MEDIUM}


def test_newest_compares_with_the_time_of_the_field_not_of_the_task() -> None:
    # Canonical title from 12:00 (its due date changed at 12:05); the side's title edit at 12:01
    # is the newer title and wins; its edit of the due date at 12:01 is older than 12:05 and loses.
    times = {"title": T0, "due_date": T0 + timedelta(minutes=5)}
    r = run(
        {"title": "side", "due_date": "2030-01-02"},
        {"title": "base", "due_date": "2030-01-01"},
        {"title": "canonical", "due_date": "2030-01-03"},
        side_updated_at=T0 + timedelta(minutes=1),
        canonical_updated_at=times.get,
    )
    assert r.changes == {"title": "side"} and r.overruled == {"due_date"}


def test_both_moved_newest_wins() -> None:
    newer = run({"status": Status.DONE}, {"status": Status.TODO}, {"status": Status.BLOCKED})
    assert newer.changes == {"status": Status.DONE}
    older = run(
        {"status": Status.DONE},
        {"status": Status.TODO},
        {"status": Status.BLOCKED},
        side_updated_at=T0 - timedelta(minutes=5),
    )
    assert older.changes == {} and older.overruled == {"status"}


@pytest.mark.parametrize(
    ("title_changed_at", "title_wins"),
    [
        (None, True),  # not dated: the side's latest change (the due date's) dates it, and wins
        (T0 - timedelta(seconds=5), False),  # made before the bridge's title: the bridge's stays
        (T0 - timedelta(seconds=1), True),  # at the same moment as the bridge's: the side's, as undated
        (T0 - timedelta(milliseconds=500), True),  # after the bridge's
    ],
)
def test_a_side_that_dates_its_fields_is_judged_field_by_field(
    title_changed_at: datetime | None, title_wins: bool
) -> None:
    """The drill's case: the side changed its title, then its due date (its `updated_at`, T0, is
    the due date's); the bridge's title changed in between (T0 - 1 s). Dated by the task, the
    side's title looks newer than it is; dated by field, it is judged by when it was made."""
    times = {"due_date": T0} if title_changed_at is None else {"due_date": T0, "title": title_changed_at}
    r = run(
        {"title": "side", "due_date": "2030-01-02"},
        {"title": "base", "due_date": "2030-01-01"},
        {"title": "bridge", "due_date": "2030-01-01"},
        side_field_times=times,
    )
    assert r.changes == (
        {"title": "side", "due_date": "2030-01-02"} if title_wins else {"due_date": "2030-01-02"}
    )
    assert r.overruled == (set() if title_wins else {"title"})


def test_both_moved_prefer() -> None:
    kw = dict(policy="prefer", side_updated_at=T0 - timedelta(days=1))
    assert run({"title": "x"}, {"title": "a"}, {"title": "b"}, side_is_preferred=True, **kw).changes == {
        "title": "x"
    }
    lost = run({"title": "x"}, {"title": "a"}, {"title": "b"}, side_is_preferred=False, **kw)
    assert lost.changes == {} and lost.overruled == {"title"}


def test_both_moved_manual_holds_a_conflict() -> None:
    r = run({"title": "x"}, {"title": "a"}, {"title": "b"}, policy="manual")
    assert r.changes == {}
    assert [(c.field, c.canonical, c.remote) for c in r.conflicts] == [("title", "b", "x")]


def test_sets_merge_by_additions_and_removals() -> None:
    r = run(
        {"tags": frozenset({"a", "side"})},
        {"tags": frozenset({"a", "gone"})},
        {"tags": frozenset({"a", "gone", "bridge"})},
    )
    assert r.changes == {"tags": frozenset({"a", "side", "bridge"})}
    assert r.overruled == {"tags"}  # the side must get "bridge" written back


@given(
    st.frozensets(st.sampled_from("abcdef")),
    st.frozensets(st.sampled_from("abcdef")),
    st.frozensets(st.sampled_from("abcdef")),
)
def test_set_merge_keeps_both_sides_edits(
    base: frozenset[str], side: frozenset[str], canonical: frozenset[str]
) -> None:
    r = run({"tags": side}, {"tags": base}, {"tags": canonical})
    result = r.changes.get("tags", canonical)
    for added in side - base:
        assert added in result
    for removed in base - side:
        assert removed not in result


def test_marker_add_strip_roundtrip() -> None:
    m = Marker("synced by taskbridge · {id}")
    tid = "01JD3XK2Q4W6Y8Z0A2C4E6G8J0"
    text = m.add("Fix the login\n\nsteps", tid)
    assert text.endswith(f"\n\nsynced by taskbridge · {tid}")
    assert m.extract(text) == ("Fix the login\n\nsteps", tid)
    assert m.extract(m.add("", tid)) == ("", tid)
    assert m.add(m.add("x", tid), tid) == m.add("x", tid)  # never two markers
    assert m.extract("no marker here") == ("no marker here", None)
    assert m.extract(f"synced by taskbridge · {tid} is mentioned mid-text")[1] is None


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_marker_strip_inverts_add(description: str) -> None:
    m = Marker("— mirrored by taskbridge [{id}]")
    tid = "01JD3XK2Q4W6Y8Z0A2C4E6G8J0"
    stripped, found = m.extract(m.add(description, tid))
    assert found == tid
    assert stripped == m.extract(description)[0].rstrip()
