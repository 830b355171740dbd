"""Re-adoption's decisions (bridge.engine.recovery.plan), by tables: complete listings in, links out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bridge.engine.recovery import Copy, plan
from bridge.engine.routes import Member, Route
from connectors.base import RemoteTask
from tests.unit.test_core import route as core_route

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
A, B, C = Member("a", "s1"), Member("b", "s2"), Member("c", "s3")
X = "01JF0000000000000000000000"
Y = "01JF0000000000000000000001"


def route(*members: Member) -> Route:
    return core_route(("title", "description", "status"), members or (A, B, C))


def copy(
    member: Member,
    rid: str,
    title: str,
    marker: str | None = None,
    *,
    created: int = 0,
    updated: int = 0,
    description: str = "",
    deleted: bool = False,
    **values: object,
) -> Copy:
    rt = RemoteTask(
        rid,
        member.scope,
        {"title": title, "description": description, **values},
        updated_at=T0 + timedelta(minutes=updated),
        created_at=T0 + timedelta(minutes=created),
        deleted=deleted,
    )
    return Copy(member, rt, {"title": title, "description": description, **values}, marker)


def test_mirrors_link_to_the_task_their_marker_names_and_the_origin_is_found_by_title() -> None:
    result = plan(
        route(),
        [
            copy(A, "a1", "ship it", created=0),
            copy(B, "b1", "ship it", X, created=1),
            copy(C, "c1", "ship it", X, created=1),
            copy(A, "a2", "something else", created=0),
        ],
    )
    [adoption] = result.adoptions
    assert adoption.task_id == X
    assert adoption.origin is not None and adoption.origin.task.remote_id == "a1"
    assert {m.task.remote_id for m in adoption.mirrors} == {"b1", "c1"}
    assert adoption.missing == ()
    assert result.no_origin == []


@pytest.mark.parametrize(
    ("candidates", "expected", "why"),
    [
        ([copy(A, "a1", "other")], None, "no task of the title"),
        ([copy(A, "a1", "ship it", created=5)], None, "made after its mirrors: not their origin"),
        ([copy(B, "b9", "ship it")], None, "on a member that holds a mirror"),
        ([copy(A, "a1", "Ship  it ".replace("S", "s"))], "a1", "whitespace does not matter"),
        (
            [copy(A, "a1", "ship it", description="x"), copy(A, "a2", "ship it", description="same")],
            "a2",
            "a tie is broken by the description",
        ),
        (
            [copy(A, "a1", "ship it", created=-3), copy(A, "a2", "ship it", created=-1)],
            "a2",
            "then by the newest made before the mirrors",
        ),
        ([copy(A, "a1", "ship it", deleted=True)], None, "a deleted task is no origin"),
    ],
)
def test_which_unmarked_task_is_the_origin(candidates: list[Copy], expected: str | None, why: str) -> None:
    mirrors = [
        copy(B, "b1", "ship it", X, description="same"),
        copy(C, "c1", "ship it", X, description="same"),
    ]
    [adoption] = plan(route(), [*mirrors, *candidates]).adoptions
    found = adoption.origin.task.remote_id if adoption.origin else None
    assert found == expected, why


def test_one_origin_serves_one_task_only() -> None:
    result = plan(
        route(),
        [
            copy(A, "a1", "twin"),
            copy(B, "b1", "twin", X, created=1),
            copy(B, "b2", "twin", Y, created=1),
        ],
    )
    origins = [a.origin.task.remote_id if a.origin else None for a in result.adoptions]
    assert sorted(map(str, origins)) == ["None", "a1"]
    assert len(result.no_origin) == 1


def test_the_newest_copy_wins_each_field_so_an_unpropagated_edit_is_kept() -> None:
    [adoption] = plan(
        route(),
        [
            copy(A, "a1", "old title", updated=0, status="todo"),
            copy(B, "b1", "old title", X, created=1, updated=1, status="todo"),
            copy(C, "c1", "new title", X, created=1, updated=9, status="done"),
        ],
    ).adoptions
    assert adoption.canonical["title"] == "new title"
    assert adoption.canonical["status"] == "done"
    assert adoption.origin is not None  # found by a mirror's older title


def test_a_member_without_a_copy_gets_a_mirror_only_when_the_origin_was_found() -> None:
    with_origin = plan(route(), [copy(A, "a1", "t"), copy(B, "b1", "t", X, created=1)]).adoptions[0]
    assert with_origin.missing == (C,)
    without = plan(route(), [copy(B, "b1", "t", X, created=1)])
    assert without.adoptions[0].missing == ()  # the missing copy may be the unmatched origin
    assert without.no_origin == [X]


def test_a_second_copy_with_the_same_marker_on_one_member_is_left_alone() -> None:
    result = plan(route(), [copy(B, "b1", "t", X, created=1), copy(B, "b2", "t", X, created=2)])
    [adoption] = result.adoptions
    assert [m.task.remote_id for m in adoption.mirrors] == ["b1"]
    assert [c.task.remote_id for c in result.extra] == ["b2"]


def test_planning_is_linear_in_the_listing() -> None:
    # 2,000 tasks of one origin each: a scan per marker would be four million comparisons.
    copies = []
    for i in range(2000):
        tid = f"01JF{i:022d}"
        copies += [copy(A, f"a{i}", f"task {i}"), copy(B, f"b{i}", f"task {i}", tid, created=1)]
    result = plan(route(A, B), copies)
    assert len(result.adoptions) == 2000
    assert all(a.origin is not None for a in result.adoptions)


def _b_writes_none_as_medium(member: Member, name: str, value: object) -> object:
    """Member B's mapping, lossy as Vortask's: a priority of `none` reads back as `medium`."""
    return "medium" if member == B and name == "priority" and value == "none" else value


@pytest.mark.parametrize(
    ("b_shows", "newest", "expected", "why"),
    [
        ("medium", B, "none", "B's medium is how B shows none: it agrees, and changes nothing"),
        ("medium", C, "none", "the newest is C's none"),
        ("high", B, "high", "B's high is an edit there, and the newest"),
        ("medium", None, "none", "equal times: the origin, last among equals, wins"),
    ],
)
def test_a_lossy_copy_does_not_override_the_value_it_shows(
    b_shows: str, newest: Member | None, expected: str, why: str
) -> None:
    def at(member: Member) -> int:
        return 9 if member == newest else 1

    [adoption] = plan(
        route(),
        [
            copy(A, "a1", "t", updated=at(A) if newest else 1, priority="none"),
            copy(B, "b1", "t", X, created=1, updated=at(B) if newest else 1, priority=b_shows),
            copy(C, "c1", "t", X, created=1, updated=at(C) if newest else 1, priority="none"),
        ],
        _b_writes_none_as_medium,
    ).adoptions
    assert adoption.canonical["priority"] == expected, why
