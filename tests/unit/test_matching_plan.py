"""Matching's decisions (bridge.engine.matching.plan), by table: listings in, links out."""

from __future__ import annotations

import pytest

from bridge.engine.matching import normalise, plan
from tests.unit.test_recovery_plan import A, B, C, X, copy, route


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("Ship it!", "ship it"),
        ("  ship   IT ", "ship it"),
        ("Café: déjà vu", "cafe deja vu"),
        ("fix_the-bug", "fix the bug"),
        ("", ""),
    ],
)
def test_normalise(raw: str, key: str) -> None:
    assert normalise(raw) == key


def test_same_title_on_two_members_is_one_task_with_a_confidence() -> None:
    result = plan(route(), [copy(A, "a1", "Ship it"), copy(B, "b1", "ship  it!")])
    [m] = result.matches
    assert {c.task.remote_id for c in m.copies} == {"a1", "b1"} and m.confidence == 0.9
    exact = plan(route(), [copy(A, "a1", "Ship it"), copy(B, "b1", "Ship it")]).matches[0]
    assert exact.confidence == 1.0


def test_a_title_one_member_holds_twice_is_ambiguous_unless_the_due_date_tells() -> None:
    twins = [copy(A, "a1", "twin"), copy(B, "b1", "twin"), copy(B, "b2", "Twin")]
    result = plan(route(), twins)
    assert result.matches == [] and {c.task.remote_id for c in result.ambiguous} == {"a1", "b1", "b2"}
    dated = [
        copy(A, "a1", "twin", due_date="2026-12-01"),
        copy(B, "b1", "twin", due_date="2026-12-01"),
        copy(B, "b2", "twin", due_date="2026-12-24"),
    ]
    result = plan(route(), dated)
    [m] = result.matches
    assert {c.task.remote_id for c in m.copies} == {"a1", "b1"} and m.confidence == 0.8
    assert [c.task.remote_id for c in result.ambiguous] == ["b2"]  # its title is shared: not "unmatched"


def test_a_task_on_one_member_only_is_unmatched_and_markers_come_first() -> None:
    result = plan(
        route(),
        [
            copy(A, "a1", "alone"),
            copy(A, "a2", "ours"),  # the origin of X
            copy(B, "b1", "ours", X, created=1),  # its mirror
            copy(C, "c1", "other"),
        ],
    )
    assert sorted(c.task.remote_id for c in result.unmatched) == ["a1", "c1"]
    by_marker = next(m for m in result.matches if m.task_id == X)
    assert {c.task.remote_id for c in by_marker.copies} == {"a2", "b1"}


def test_the_newest_value_of_each_field_wins() -> None:
    [m] = plan(
        route(),
        [copy(A, "a1", "t", updated=1, status="todo"), copy(B, "b1", "t", updated=5, status="done")],
    ).matches
    assert m.canonical["status"] == "done"
