"""The sync core's decisions (bridge.engine.core) and the states' legal moves, by tables.

These used to need five fakes and a database to exercise (a write racing an edit, an echo
arriving before our commit, a lossy priority). Here each is a row: loaded state in, decision out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.engine import core
from bridge.engine.core import NO_CLAIM
from bridge.engine.routes import Marker, Member, Route
from bridge.model import Priority, Status, Values, normalize_values
from bridge.store.states import (
    TRANSITIONS,
    DeliveryState,
    IllegalTransition,
    LinkState,
    OpState,
    advance,
    allowed,
)
from connectors.base import Capabilities, RemoteTask

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ALL = ("title", "description", "status", "priority", "tags", "assignees", "due_date")


@dataclass
class FakeConn:
    """Just what the core uses of a connector: capabilities and a pure roundtrip."""

    fields: frozenset[str] = frozenset(ALL)
    writable: frozenset[str] = frozenset(ALL)
    lossy: dict[str, dict[Any, Any]] = field(default_factory=dict)  # field -> {canonical: as read back}
    unpredictable: frozenset[str] = frozenset()  # fields roundtrip() leaves out

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(fields=self.fields, writable=self.writable)

    def roundtrip(self, values: Values) -> Values:
        out = {}
        for name, value in values.items():
            if name not in self.fields or name in self.unpredictable:
                continue
            lossy = self.lossy.get(name, {})
            out[name] = lossy.get(value, value) if lossy else value
        return out


def route(fields: tuple[str, ...] = ALL, members: tuple[Member, ...] = ()) -> Route:
    return Route(
        name="r",
        members=members or (Member("a", "s1"), Member("b", "s2")),
        fields=fields,
        conflict="newest",
        prefer=None,
        on_delete="archive",
        initial="mirror",
        filter=None,
        comments=True,
        max_delete_share=0.5,
        marker=Marker("synced by taskbridge · {id}"),
    )


A = Member("a", "s1")
PULL_ONLY = Member("a", "s1", direction="pull")
NO_TITLE_WRITES = Member("a", "s1", field_directions={"title": "pull"})
VORTASK_LIKE = FakeConn(lossy={"priority": {Priority.URGENT: Priority.HIGH}})


# -- what an update writes ------------------------------------------------------------------------

PLAN_CASES = [
    # (why, conn, member, canonical, base, held, queued fields, expected write)
    ("nothing differs: a repeat writes nothing", FakeConn(), A, {"title": "x"}, {"title": "x"}, (), None, {}),
    (
        "a changed title is written",
        FakeConn(),
        A,
        {"title": "y"},
        {"title": "x"},
        (),
        ["title"],
        {"title": "y"},
    ),
    (
        "only the fields it was queued for",
        FakeConn(),
        A,
        {"title": "y", "description": "d2"},
        {"title": "x", "description": "d1"},
        (),
        ["title"],
        {"title": "y"},
    ),
    (
        "no queued list: every stale field",
        FakeConn(),
        A,
        {"title": "y", "description": "d2"},
        {"title": "x", "description": "d1"},
        (),
        None,
        {"title": "y", "description": "d2"},
    ),
    (
        "a field held by a conflict waits",
        FakeConn(),
        A,
        {"title": "y"},
        {"title": "x"},
        ("title",),
        ["title"],
        {},
    ),
    (
        "a pull-only member takes no writes",
        FakeConn(),
        PULL_ONLY,
        {"title": "y"},
        {"title": "x"},
        (),
        None,
        {},
    ),
    (
        "a field pulled only is not written",
        FakeConn(),
        NO_TITLE_WRITES,
        {"title": "y"},
        {"title": "x"},
        (),
        None,
        {},
    ),
    (
        "a field the platform cannot write is not written",
        FakeConn(writable=frozenset({"description"})),
        A,
        {"title": "y"},
        {"title": "x"},
        (),
        None,
        {},
    ),
    (
        "lossy: urgent already reads as high there, so nothing to write",
        VORTASK_LIKE,
        A,
        {"priority": Priority.URGENT},
        {"priority": Priority.HIGH},
        (),
        None,
        {},
    ),
    (
        "lossy: urgent over low is written (as urgent; it reads back high)",
        VORTASK_LIKE,
        A,
        {"priority": Priority.URGENT},
        {"priority": Priority.LOW},
        (),
        None,
        {"priority": Priority.URGENT},
    ),
    (
        "unpredictable round trip: nothing claimed, nothing written",
        FakeConn(unpredictable=frozenset({"status"})),
        A,
        {"status": Status.DONE},
        {"status": Status.TODO},
        (),
        None,
        {},
    ),
    (
        "an unset canonical field is written as its default",
        FakeConn(),
        A,
        {},
        {"tags": ["a"]},
        (),
        ["tags"],
        {"tags": []},
    ),
]


@pytest.mark.parametrize(
    ("conn", "member", "canonical", "base", "held", "queued", "expected"),
    [c[1:] for c in PLAN_CASES],
    ids=[c[0] for c in PLAN_CASES],
)
def test_plan_update(
    conn: FakeConn,
    member: Member,
    canonical: Values,
    base: Values,
    held: tuple[str, ...],
    queued: list[str] | None,
    expected: Values,
) -> None:
    fields = tuple(sorted({*canonical, *base, *(queued or ())}))
    canonical, base, expected = (
        normalize_values(canonical),
        normalize_values(base),
        normalize_values(expected),
    )
    planned = core.plan_update(conn, route(fields), member, canonical, base, held, queued)  # type: ignore[arg-type]
    assert planned == expected


CLAIMED_PLAN_CASES = [
    # (why, canonical, base, claims (our writes whose outcome was never recorded), planned)
    ("no claims: as the base says", {"title": "v0"}, {"title": "v0"}, [], {}),
    (
        "a lost write set the field otherwise (the edit was undone meanwhile): written again",
        {"title": "v0"},
        {"title": "v0"},
        [{"title": "v1"}],
        {"title": "v0"},
    ),
    (
        "the claim holds what is true: nothing more to write",
        {"title": "v1"},
        {"title": "v1"},
        [{"title": "v1"}],
        {},
    ),
    (
        "a claim of another field says nothing of this one",
        {"title": "v0"},
        {"title": "v0"},
        [{"status": "done"}],
        {},
    ),
]


@pytest.mark.parametrize(
    ("canonical", "base", "claims", "expected"),
    [c[1:] for c in CLAIMED_PLAN_CASES],
    ids=[c[0] for c in CLAIMED_PLAN_CASES],
)
def test_plan_update_with_claims(
    canonical: Values, base: Values, claims: list[Values], expected: Values
) -> None:
    canonical, base = normalize_values(canonical), normalize_values(base)
    claims = [normalize_values(c) for c in claims]
    planned = core.plan_update(FakeConn(), route(("title",)), A, canonical, base, (), ["title"], claims)  # type: ignore[arg-type]
    assert planned == normalize_values(expected)


# -- echoes and stale reports ---------------------------------------------------------------------

AGREED_CASES = [
    # (why, reported, base, claims (our writes that may have landed, oldest first), unmoved?)
    ("the side shows its base: nothing moved", {"title": "x"}, {"title": "x"}, [], True),
    ("the side shows something else: it moved", {"title": "y"}, {"title": "x"}, [], False),
    (
        "our write in flight landing before its commit is our echo",
        {"title": "y"},
        {"title": "x"},
        [{"title": "y"}],
        True,
    ),
    (
        "an in-flight value the side does not show changes nothing",
        {"title": "z"},
        {"title": "x"},
        [{"title": "y"}],
        False,
    ),
    (
        "an earlier write whose answer was lost, shown while a newer one is planned: our echo",
        {"title": "y"},
        {"title": "x"},
        [{"title": "y"}, {"title": "z"}],
        True,
    ),
    (
        "claims of two writes, each showing its own field: both ours",
        {"title": "y", "status": "done"},
        {"title": "x", "status": "todo"},
        [{"status": "done"}, {"title": "y"}],
        True,
    ),
    (
        "one field ours, another edited there: moved",
        {"title": "y", "status": "blocked"},
        {"title": "x", "status": "todo"},
        [{"title": "y", "status": "done"}],
        False,
    ),
    ("a field the base never had: moved", {"title": "x", "tags": ["a"]}, {"title": "x"}, [], False),
    (
        "the side reports fewer fields than the base: unmoved",
        {"title": "x"},
        {"title": "x", "tags": []},
        [],
        True,
    ),
]


@pytest.mark.parametrize(
    ("reported", "base", "claims", "expected"),
    [c[1:] for c in AGREED_CASES],
    ids=[c[0] for c in AGREED_CASES],
)
def test_unmoved_against_what_was_agreed(
    reported: Values, base: Values, claims: list[Values], expected: bool
) -> None:
    assert core.unmoved(reported, core.agreed(reported, base, claims)) is expected


WITH_CLAIM_CASES = [
    # (why, claims before, the new write, claims after)
    ("the first write", [], {"title": "a"}, [{"title": "a"}]),
    (
        "an earlier write never confirmed is kept",
        [{"title": "a"}],
        {"title": "b"},
        [{"title": "a"}, {"title": "b"}],
    ),
    ("the same write again is one claim", [{"title": "a"}], {"title": "a"}, [{"title": "a"}]),
    (
        "a repeat moves to the end (the newest)",
        [{"title": "a"}, {"title": "b"}],
        {"title": "a"},
        [{"title": "b"}, {"title": "a"}],
    ),
    ("nothing to write claims nothing", [{"title": "a"}], {}, [{"title": "a"}]),
    (
        "the oldest is forgotten past CLAIMS_KEPT",
        [{"title": str(i)} for i in range(core.CLAIMS_KEPT)],
        {"title": "new"},
        [{"title": str(i)} for i in range(1, core.CLAIMS_KEPT)] + [{"title": "new"}],
    ),
]


@pytest.mark.parametrize(
    ("before", "claim", "after"), [c[1:] for c in WITH_CLAIM_CASES], ids=[c[0] for c in WITH_CLAIM_CASES]
)
def test_with_claim(before: list[Values], claim: Values, after: list[Values]) -> None:
    assert core.with_claim(before, claim) == after


@pytest.mark.parametrize(
    ("reported", "applied", "older"),
    [
        (T0, T0 + timedelta(seconds=1), True),
        (T0 + timedelta(seconds=1), T0, False),
        (T0, T0, False),
        (None, T0, False),
        (T0, None, False),
    ],
)
def test_older_than_applied(reported: datetime | None, applied: datetime | None, older: bool) -> None:
    assert core.older_than_applied(reported, applied) is older


# Our write of title "ours" landed at T0+10 s; the side had agreed "before" at T0 and our earlier
# write "claimed" may have landed in between (its answer lost).
WINDOW = core.Overwritten(
    after=T0,
    until=T0 + timedelta(seconds=10),
    before={"title": "before"},
    wrote={"title": "ours"},
    claims=[{"title": "claimed"}, {"title": "ours"}],
)
AS_WRITTEN = {"title": "ours", "status": Status.TODO}  # the link's base: the side agrees on our write


@pytest.mark.parametrize(
    ("reported", "values", "last", "base", "lost"),
    [
        # A person's edit inside the window, replaced by our write: the edit it was.
        (
            T0 + timedelta(seconds=5),
            {"title": "theirs", "status": Status.DONE},
            WINDOW,
            AS_WRITTEN,
            {"title": "theirs"},
        ),
        # Outside the window: before the side was known (stale), or at or after our write.
        (T0, {"title": "theirs"}, WINDOW, AS_WRITTEN, {}),
        (T0 - timedelta(seconds=1), {"title": "theirs"}, WINDOW, AS_WRITTEN, {}),
        (T0 + timedelta(seconds=10), {"title": "theirs"}, WINDOW, AS_WRITTEN, {}),
        # What the side agreed before, or a write of ours that may have landed: no edit.
        (T0 + timedelta(seconds=5), {"title": "before"}, WINDOW, AS_WRITTEN, {}),
        (T0 + timedelta(seconds=5), {"title": "claimed"}, WINDOW, AS_WRITTEN, {}),
        # A field the write did not set: the side still shows it, a later report says so.
        (T0 + timedelta(seconds=5), {"status": Status.DONE}, WINDOW, AS_WRITTEN, {}),
        # The side showed a newer title since (a later edit there, merged): this report is stale.
        (T0 + timedelta(seconds=5), {"title": "theirs"}, WINDOW, {**AS_WRITTEN, "title": "later"}, {}),
        # No write recorded, or a report with no time.
        (T0 + timedelta(seconds=5), {"title": "theirs"}, None, AS_WRITTEN, {}),
        (None, {"title": "theirs"}, WINDOW, AS_WRITTEN, {}),
    ],
)
def test_overwritten_edits(
    reported: datetime | None, values: Values, last: core.Overwritten | None, base: Values, lost: Values
) -> None:
    assert core.overwritten_edits(values, reported, last, base) == lost


# -- what a link's base becomes ------------------------------------------------------------------


def rt(values: Values, remote_id: str = "r1") -> RemoteTask:
    return RemoteTask(remote_id=remote_id, scope="s1", values=values, updated_at=T0)


BASE_CASES = [
    # (why, conn, base, written, reported, expected)
    (
        "an update moves the written fields",
        FakeConn(),
        {"title": "x", "tags": []},
        {"title": "y"},
        None,
        {"title": "y", "tags": []},
    ),
    (
        "a lossy value is recorded as it reads back",
        VORTASK_LIKE,
        {},
        {"priority": Priority.URGENT},
        None,
        {"priority": Priority.HIGH},
    ),
    (
        "a create takes what the platform reported, marker stripped",
        FakeConn(),
        {},
        {"title": "t"},
        rt({"title": "t", "description": "body\n\nsynced by taskbridge · 01HZZZZZZZZZZZZZZZZZZZZZZZ"}),
        {"title": "t", "description": "body"},
    ),
    (
        "an unpredictable field keeps its old base",
        FakeConn(unpredictable=frozenset({"status"})),
        {"status": Status.TODO},
        {"status": Status.DONE},
        None,
        {"status": Status.TODO},
    ),
    (
        "a field outside the platform is not recorded",
        FakeConn(fields=frozenset({"title"})),
        {},
        {"tags": ["a"]},
        None,
        {},
    ),
]


@pytest.mark.parametrize(
    ("conn", "base", "written", "reported", "expected"),
    [c[1:] for c in BASE_CASES],
    ids=[c[0] for c in BASE_CASES],
)
def test_base_after_write(
    conn: FakeConn, base: Values, written: Values, reported: RemoteTask | None, expected: Values
) -> None:
    assert core.base_after_write(conn, route(), A, base, written, reported) == expected  # type: ignore[arg-type]


def test_inflight_claims_leave_out_what_cannot_be_predicted() -> None:
    conn = FakeConn(unpredictable=frozenset({"status"}), lossy={"priority": {Priority.URGENT: Priority.HIGH}})
    claims = core.inflight_claims(conn, {"status": Status.DONE, "priority": Priority.URGENT, "title": "t"})  # type: ignore[arg-type]
    assert claims == {"priority": Priority.HIGH, "title": "t"}


def test_moved_since_base_is_the_read_before_write() -> None:
    conn = FakeConn()
    assert not core.moved_since_base(conn, route(), A, rt({"title": "x"}), {"title": "x"})  # type: ignore[arg-type]
    assert core.moved_since_base(conn, route(), A, rt({"title": "edited there"}), {"title": "x"})  # type: ignore[arg-type]
    # Our own earlier write, its answer lost, is not an edit there.
    assert not core.moved_since_base(
        conn,  # type: ignore[arg-type]
        route(),
        A,
        rt({"title": "ours, unconfirmed"}),
        {"title": "x"},
        claims=[{"title": "ours, unconfirmed"}, {"title": "ours, now"}],
    )


def test_readable_values_keep_to_the_route_and_the_member() -> None:
    conn = FakeConn()
    values, marker = core.readable_values(
        conn,  # type: ignore[arg-type]
        route(fields=("title", "description")),
        NO_TITLE_WRITES,
        rt(
            {
                "title": "t",
                "tags": ["x"],
                "description": "d\n\nsynced by taskbridge · 01HZZZZZZZZZZZZZZZZZZZZZZZ",
            }
        ),
    )
    assert values == {"title": "t", "description": "d"}
    assert marker == "01HZZZZZZZZZZZZZZZZZZZZZZZ"


def test_no_claim_equals_nothing() -> None:
    assert NO_CLAIM != NO_CLAIM or NO_CLAIM is NO_CLAIM  # identity only
    assert NO_CLAIM != "x" and NO_CLAIM != None  # noqa: E711


# The property behind echo suppression: once a write's base is recorded, planning again writes
# nothing (the repeat after a crash is a no-op), whatever the values and losses.
VALUES = st.fixed_dictionaries(
    {},
    optional={
        "title": st.text(max_size=5),
        "priority": st.sampled_from(list(Priority)),
        "tags": st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True),
    },
)


@given(canonical=VALUES, base=VALUES)
def test_a_recorded_write_is_never_planned_again(canonical: Values, base: Values) -> None:
    canonical, base = normalize_values(canonical), normalize_values(base)
    conn = VORTASK_LIKE
    r = route(fields=("title", "priority", "tags"))
    write = core.plan_update(conn, r, A, canonical, base, (), None)  # type: ignore[arg-type]
    after = core.base_after_write(conn, r, A, base, write, None)  # type: ignore[arg-type]
    assert core.plan_update(conn, r, A, canonical, after, (), None) == {}  # type: ignore[arg-type]


# -- states ---------------------------------------------------------------------------------------

MOVES = [
    (LinkState.CREATING, LinkState.ACTIVE, True),
    (LinkState.ACTIVE, LinkState.GONE, True),
    (LinkState.ACTIVE, LinkState.CREATING, False),
    (LinkState.UNLINKED, LinkState.ACTIVE, True),
    (OpState.PENDING, OpState.CLAIMED, True),
    (OpState.CLAIMED, OpState.DONE, True),
    (OpState.DONE, OpState.PENDING, False),
    (OpState.DONE, OpState.PARKED, False),
    (OpState.PARKED, OpState.PENDING, True),
    (OpState.PARKED, OpState.DONE, False),
    (DeliveryState.FAILED, DeliveryState.DONE, False),
    (DeliveryState.CLAIMED, DeliveryState.FAILED, True),
]


@pytest.mark.parametrize(("current", "new", "legal"), MOVES)
def test_state_moves(current: Any, new: Any, legal: bool) -> None:
    assert allowed(str(current), new) is legal
    if legal:
        assert advance(str(current), new) is new
    else:
        with pytest.raises(IllegalTransition):
            advance(str(current), new)


def test_a_repeat_and_a_new_row_are_always_legal() -> None:
    for kind, table in TRANSITIONS.items():
        for state in table:
            assert advance(str(state), state) is state
        for state in kind:
            assert advance(None, state) is state
        assert set(table) == set(kind)  # every state has its row


def test_an_unknown_stored_value_is_refused() -> None:
    with pytest.raises(IllegalTransition):
        advance("sleeping", OpState.DONE)


@pytest.mark.parametrize(
    ("marker", "known", "created", "same", "why"),
    [
        (None, None, None, True, "nothing to tell them apart by"),
        (None, T0, T0, True, "the same creation time"),
        (None, T0, T0 + timedelta(milliseconds=900), True, "within the rounding a platform may do"),
        (None, T0, T0 + timedelta(seconds=5), False, "made at another time: the id was reused"),
        (None, None, T0, True, "a link made before the column: it learns the time"),
        ("01JF0000000000000000000000", T0, T0, True, "our own marker"),
        ("01JF0000000000000000000001", T0, T0, False, "the marker of another bridge task"),
    ],
)
def test_same_remote_task(
    marker: str | None, known: datetime | None, created: datetime | None, same: bool, why: str
) -> None:
    assert core.same_remote_task("01JF0000000000000000000000", known, marker, created) is same, why


# -- the hierarchy: parent ids between platforms and the bridge ----------------------------------

NESTED = (*ALL, "parent")
NESTS = FakeConn(fields=frozenset(NESTED), writable=frozenset(NESTED))  # Impactly, Nucleus
FLAT = FakeConn()  # Vortask, AgentKanban, PostHog: no `parent` among their fields


def child(parent_id: str | None, remote_id: str = "r1") -> RemoteTask:
    return RemoteTask(remote_id=remote_id, scope="s1", values={"title": "t"}, parent_id=parent_id)


TRANSLATE_CASES = [
    # (why, parent, links, expected)
    ("top level stays top level", None, {"r9": "T9"}, None),
    ("read: a remote parent becomes the bridge task linked to it", "r9", {"r9": "T9"}, "T9"),
    ("write: a bridge parent becomes its copy's id there", "T9", {"T9": "r9"}, "r9"),
    ("no link: unlinked, never guessed", "r8", {"r9": "T9"}, core.UNLINKED),
    ("no links at all", "r8", {}, core.UNLINKED),
]


@pytest.mark.parametrize(
    ("parent", "links", "expected"), [c[1:] for c in TRANSLATE_CASES], ids=[c[0] for c in TRANSLATE_CASES]
)
def test_translate_parent(parent: str | None, links: dict[str, str], expected: Any) -> None:
    assert (
        core.translate_parent(parent, links) is expected or core.translate_parent(parent, links) == expected
    )


READ_PARENT_CASES = [
    # (why, conn, fields, member, reported parent id, parents map, expected values)
    (
        "a linked parent is reported as its bridge task",
        NESTS,
        NESTED,
        A,
        "r9",
        {"r9": "T9"},
        {"parent": "T9"},
    ),
    ("top level is reported as None", NESTS, NESTED, A, None, {}, {"parent": None}),
    ("a parent not linked yet is not reported", NESTS, NESTED, A, "r8", {"r9": "T9"}, {}),
    ("no map given (recovery, matching): not reported", NESTS, NESTED, A, "r9", None, {}),
    ("the route does not sync parent", NESTS, ALL, A, "r9", {"r9": "T9"}, {}),
    ("a platform without subtasks never reports one", FLAT, NESTED, A, "r9", {"r9": "T9"}, {}),
    (
        "a member that does not read parent",
        NESTS,
        NESTED,
        Member("a", "s1", field_directions={"parent": "push"}),
        "r9",
        {"r9": "T9"},
        {},
    ),
]


@pytest.mark.parametrize(
    ("conn", "fields", "member", "parent_id", "parents", "expected"),
    [c[1:] for c in READ_PARENT_CASES],
    ids=[c[0] for c in READ_PARENT_CASES],
)
def test_readable_parent(
    conn: FakeConn,
    fields: tuple[str, ...],
    member: Member,
    parent_id: str | None,
    parents: dict[str, str] | None,
    expected: Values,
) -> None:
    values, _ = core.readable_values(conn, route(fields=fields), member, child(parent_id), parents)  # type: ignore[arg-type]
    assert {k: v for k, v in values.items() if k == "parent"} == expected


def test_parent_is_written_only_where_the_platform_nests() -> None:
    nested, flat = route(fields=NESTED), route(fields=ALL)
    base = {**core.DEFAULTS, "title": "t"}
    canonical = {**base, "parent": "T9"}
    assert core.plan_update(NESTS, nested, A, canonical, base, (), None) == {"parent": "T9"}  # type: ignore[arg-type]
    assert core.plan_update(FLAT, nested, A, canonical, base, (), None) == {}  # type: ignore[arg-type]
    assert core.plan_update(NESTS, flat, A, canonical, base, (), None) == {}  # type: ignore[arg-type]
    # held (its copy there is missing, or a loop): not planned, and nothing else is held with it
    moved = {**canonical, "title": "u"}
    assert core.plan_update(NESTS, nested, A, moved, base, {"parent"}, None) == {"title": "u"}  # type: ignore[arg-type]
    assert core.writes_parent(NESTS, nested, A)  # type: ignore[arg-type]
    assert not core.writes_parent(FLAT, nested, A)  # type: ignore[arg-type]
    assert not core.writes_parent(NESTS, nested, PULL_ONLY)  # type: ignore[arg-type]


LOOP_CASES = [
    # (why, task, new parent, canonical parents, closes a loop)
    ("top level never loops", "A", None, {"B": "A"}, False),
    ("a task under itself", "A", "A", {}, True),
    ("under its own child", "A", "B", {"B": "A"}, True),
    ("under its grandchild", "A", "C", {"C": "B", "B": "A"}, True),
    ("under a sibling", "A", "B", {"B": "P", "A": "P"}, False),
    ("an ancestor chain that ends", "A", "B", {"B": "C", "C": None}, False),
    ("an ancestor not loaded ends the walk", "A", "B", {"B": "Z"}, False),
    ("a loop above that does not contain the task", "A", "B", {"B": "C", "C": "B"}, False),
]


@pytest.mark.parametrize(
    ("task", "parent", "parent_of", "loops"), [c[1:] for c in LOOP_CASES], ids=[c[0] for c in LOOP_CASES]
)
def test_closes_loop(task: str, parent: str | None, parent_of: dict[str, str | None], loops: bool) -> None:
    assert core.closes_loop(task, parent, parent_of) is loops


HOLD_CASES = [
    # (why, parent, its id there, canonical parents, parents there as last agreed, hold)
    ("top level is always written", None, None, {}, {}, None),
    ("a parent with a copy there is written", "P", "rP", {"P": None}, {"P": None}, None),
    ("the parent's copy is not there yet", "P", core.UNLINKED, {"P": None}, {}, "unlinked"),
    ("the bridge's own parents loop: refused", "P", "rP", {"P": "A"}, {"P": None}, "loop"),
    ("the target still has the task above the parent", "P", "rP", {"P": None}, {"P": "A"}, "loop-there"),
    ("...two levels up there", "P", "rP", {"P": None}, {"P": "Q", "Q": "A"}, "loop-there"),
    ("unlinked comes first (nothing to loop with there)", "P", core.UNLINKED, {"P": "A"}, {}, "unlinked"),
]


@pytest.mark.parametrize(
    ("parent", "there", "parent_of", "parent_of_there", "hold"),
    [c[1:] for c in HOLD_CASES],
    ids=[c[0] for c in HOLD_CASES],
)
def test_parent_hold(
    parent: str | None,
    there: Any,
    parent_of: dict[str, str | None],
    parent_of_there: dict[str, str | None],
    hold: str | None,
) -> None:
    assert core.parent_hold("A", parent, there, parent_of, parent_of_there) == hold


def test_parents_first_puts_a_listed_parent_before_its_children() -> None:
    listing = [
        child("p", "c1"),
        child(None, "x"),
        child("c1", "g"),
        child(None, "p"),
        child("elsewhere", "o"),
    ]
    order = [t.remote_id for t in core.parents_first(listing)]
    assert sorted(order) == sorted(t.remote_id for t in listing)
    assert order.index("p") < order.index("c1") < order.index("g")
    assert order == ["p", "c1", "x", "g", "o"]
    # a cycle in a listing (the platform's bug) or an id listed twice: everything kept
    looped = [child("b", "a"), child("a", "b")]
    assert sorted(t.remote_id for t in core.parents_first(looped)) == ["a", "b"]
    twice = [child(None, "a"), child(None, "a")]
    assert core.parents_first(twice) == twice


def stamped(remote_id: str, at: datetime | None) -> RemoteTask:
    return RemoteTask(remote_id=remote_id, scope="s1", values={"title": "t"}, updated_at=at)


@pytest.mark.parametrize(
    ("listing", "order"),
    [
        # a burst of edits that wrapped around a list sorted by id: the oldest edit goes first
        ([("1", 30), ("2", 40), ("8", 10), ("9", 20)], [("8", 10), ("9", 20), ("1", 30), ("2", 40)]),
        # equal times keep the listed order; a task without a time goes first
        ([("b", 5), ("a", 5), ("c", None), ("d", 1)], [("c", None), ("d", 1), ("b", 5), ("a", 5)]),
        # the same task reported twice: its newer report is observed last
        ([("a", 9), ("b", 3), ("a", 2)], [("a", 2), ("b", 3), ("a", 9)]),
        ([], []),
    ],
)
def test_oldest_change_first(
    listing: list[tuple[str, int | None]], order: list[tuple[str, int | None]]
) -> None:
    def at(seconds: int | None) -> datetime | None:
        return None if seconds is None else T0 + timedelta(seconds=seconds)

    got = core.oldest_change_first([stamped(rid, at(s)) for rid, s in listing])
    assert [(t.remote_id, t.updated_at) for t in got] == [(rid, at(s)) for rid, s in order]


def test_oldest_change_first_reads_naive_times_as_utc() -> None:
    aware = stamped("aware", datetime(2026, 1, 1, 12, 0, 1, tzinfo=UTC))
    naive = stamped("naive", datetime(2026, 1, 1, 12, 0, 0))
    assert [t.remote_id for t in core.oldest_change_first([aware, naive])] == ["naive", "aware"]


ORDER_CASES = [
    # (why, batch as (key, parent it names), order observed)
    ("nothing names a parent: batch order", [("a", None), ("b", None)], [0, 1]),
    ("a child before its parent: the parent first", [("c", "p"), ("p", None)], [1, 0]),
    ("a parent already first: unchanged", [("p", None), ("c", "p")], [0, 1]),
    ("a parent not in the batch: in place", [("c", "x"), ("a", None)], [0, 1]),
    ("three levels, the youngest first", [("g", "c"), ("c", "p"), ("p", None)], [2, 1, 0]),
    (
        "siblings keep their order, after the parent",
        [("c1", "p"), ("x", None), ("c2", "p"), ("p", None)],
        [3, 0, 1, 2],
    ),
    ("a task reported twice: its reports in order", [("c", "p"), ("c", None), ("p", None)], [2, 0, 1]),
    ("...moved under a parent later in the batch", [("c", None), ("p", None), ("c", "p")], [0, 1, 2]),
    ("a parent reported twice: after its first report", [("c", "p"), ("p", None), ("p", None)], [1, 0, 2]),
    ("a loop: each placed once, nothing waits forever", [("a", "b"), ("b", "a")], [1, 0]),
    ("a task naming itself", [("a", "a")], [0]),
    ("a loop through a task reported twice", [("a", "b"), ("b", "a"), ("a", "b")], [1, 0, 2]),
    ("an empty batch", [], []),
]


@pytest.mark.parametrize(("batch", "order"), [c[1:] for c in ORDER_CASES], ids=[c[0] for c in ORDER_CASES])
def test_parents_first_order(batch: list[tuple[str, str | None]], order: list[int]) -> None:
    assert core.parents_first_order([k for k, _ in batch], [p for _, p in batch]) == order


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from([None, *"abcdefz"])), max_size=12))
def test_parents_first_order_places_everything_once(batch: list[tuple[str, str | None]]) -> None:
    keys, parents = [k for k, _ in batch], [p for _, p in batch]
    order = core.parents_first_order(keys, parents)
    assert sorted(order) == list(range(len(batch)))  # nothing dropped, nothing twice
    at = {i: n for n, i in enumerate(order)}
    for i, key in enumerate(keys):  # a task's reports stay in order
        later = [j for j in range(i + 1, len(keys)) if keys[j] == key]
        assert all(at[i] < at[j] for j in later)
    parent_of = dict(batch)
    if len(set(keys)) == len(keys) and not any(core.closes_loop(k, p, parent_of) for k, p in batch):
        first = {k: i for i, k in enumerate(keys)}
        assert all(at[first[p]] < at[i] for i, p in enumerate(parents) if p in first)


T1 = T0 + timedelta(minutes=5)
ADOPT_CASES = [
    # (why, reports (time, translated parent) in the caller's order, (parent, its time))
    ("no copy says anything: nothing to set", [], (NO_CLAIM, None)),
    ("one copy nests it", [(T0, "P")], ("P", T0)),
    ("the newest report wins", [(T1, "P"), (T0, "Q")], ("P", T1)),
    ("top level is a report too", [(T0, "P"), (T1, None)], (None, T1)),
    ("a copy under a task the bridge has no link to has no say", [(T0, "P"), (T1, core.UNLINKED)], ("P", T0)),
    ("only such copies: nothing to set", [(T0, core.UNLINKED)], (NO_CLAIM, None)),
    ("equal times: the later in the caller's order", [(T0, "P"), (T0, "Q")], ("Q", T0)),
    ("a report without a time counts as the oldest", [(T0, "P"), (None, "Q")], ("P", T0)),
]


@pytest.mark.parametrize(
    ("reports", "expected"), [c[1:] for c in ADOPT_CASES], ids=[c[0] for c in ADOPT_CASES]
)
def test_adopted_parent(
    reports: list[tuple[datetime | None, Any]], expected: tuple[Any, datetime | None]
) -> None:
    parent, at = core.adopted_parent(reports)
    assert (parent is expected[0] or parent == expected[0]) and at == expected[1]


ACYCLIC_CASES = [
    # (why, chosen (task, parent) in order, canonical parents known, taken, refused)
    ("a tree: all taken", [("c", "p"), ("g", "c")], {}, {"c": "p", "g": "c"}, []),
    ("copies disagreeing into a loop: the second refused", [("a", "b"), ("b", "a")], {}, {"a": "b"}, ["b"]),
    ("a loop through the parents known", [("a", "b")], {"b": "a"}, {}, ["a"]),
    ("under itself", [("a", "a")], {}, {}, ["a"]),
    ("top level never loops", [("a", None)], {"b": "a"}, {"a": None}, []),
    (
        "three copies around a loop: the last refused",
        [("a", "b"), ("b", "c"), ("c", "a")],
        {},
        {"a": "b", "b": "c"},
        ["c"],
    ),
]


@pytest.mark.parametrize(
    ("chosen", "known", "taken", "refused"), [c[1:] for c in ACYCLIC_CASES], ids=[c[0] for c in ACYCLIC_CASES]
)
def test_acyclic_parents(
    chosen: list[tuple[str, str | None]],
    known: dict[str, str | None],
    taken: dict[str, str | None],
    refused: list[str],
) -> None:
    assert core.acyclic_parents(chosen, known) == (taken, refused)


def test_the_read_before_write_counts_an_unknown_parent_as_a_move() -> None:
    r = route(fields=NESTED)
    base = {"title": "t", "parent": "T9"}
    assert not core.moved_since_base(NESTS, r, A, child("r9"), base, {"r9": "T9"})  # type: ignore[arg-type]
    assert core.moved_since_base(NESTS, r, A, child(None), base, {"r9": "T9"})  # type: ignore[arg-type]
    assert core.moved_since_base(NESTS, r, A, child("r7"), base, {"r9": "T9"})  # type: ignore[arg-type]
    assert not core.moved_since_base(NESTS, r, A, child("r7"), base)  # type: ignore[arg-type]  # no map: not read


def test_a_written_parent_reads_back_as_written() -> None:
    r = route(fields=NESTED)
    created = child("r9")  # the create's answer: the platform's id, not translated here
    assert core.base_after_write(NESTS, r, A, {}, {"title": "t", "parent": "T9"}, created) == {  # type: ignore[arg-type]
        "title": "t",
        "parent": "T9",
    }
    assert core.inflight_claims(NESTS, {"parent": "T9"}) == {"parent": "T9"}  # type: ignore[arg-type]
