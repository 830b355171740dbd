"""The sync decisions, as plain functions over loaded state: no session, no clock, no I/O.

Everything here takes values already read (a task's canonical values, a link's base and write in
flight, the fields held by open conflicts, what a side reports) and returns what should change:
which fields a side reads, whether a report moved since the side last agreed with us, which
fields a side needs written, what a write will read back as there, the base a link has after a
write. `sync` (observations in), `outbox` (writes out) and `poller` do the I/O around these and
apply the results in their transactions; tests/unit/test_core.py drives them by tables.

A connector enters only through its `capabilities` and `roundtrip()` (what a canonical value
reads back as there): both are pure.

The hierarchy (`parent`) is the one field whose values differ per platform: canonical `parent` is
a bridge task id, a connector speaks its platform's ids (RemoteTask.parent_id on read, `parent` in
the values it writes). `translate_parent` maps one to the other through the links the caller
loaded; `parent_hold` says when a parent cannot be written to a target yet (its copy there does
not exist yet) or ever (it would make a task its own ancestor). `parents_first_order` puts what a
batch reports (a listing, a batch of webhook deliveries) parents before children, so a new parent
is linked before its children look it up; `adopted_parent` and `acyclic_parents` settle the
canonical parents of tasks linked to copies that already exist (re-adoption, matching).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.engine.routes import Member, Route
from bridge.model import Priority, Status, Values, as_utc, normalize_values
from connectors.base import Connector, RemoteTask

DEFAULTS: Values = normalize_values(
    {
        "title": "",
        "description": "",
        "status": Status.TODO,
        "priority": Priority.NONE,
        "assignees": [],
        "tags": [],
        "due_date": None,
        "start_date": None,
        "parent": None,
        "archived": False,
    }
)


class _NoClaim:
    """A connector's roundtrip() left a field out: writing that value has no effect it can
    predict (e.g. a read-only status that only some values act on). Equal to nothing."""

    def __repr__(self) -> str:
        return "NO_CLAIM"


NO_CLAIM: Any = _NoClaim()


def side_roundtrip(conn: Connector, name: str, value: Any) -> Any:
    """What `value` reads back as on `conn` once written there (NO_CLAIM: unpredictable)."""
    if name not in conn.capabilities.fields:
        return value
    return conn.roundtrip({name: value}).get(name, NO_CLAIM)


def readable_values(
    conn: Connector,
    route: Route,
    member: Member,
    rt: RemoteTask,
    parents: Mapping[str, str] | None = None,
) -> tuple[Values, str | None]:
    """The canonical values side `member` reports for the route's fields, with the marker line
    stripped from the description; and the bridge task id the marker named, if any.

    `parents` maps remote ids on this connector to the bridge task ids linked to them: with it,
    `parent` is reported (when the route syncs it and the side reads it) as the bridge task its
    remote parent is linked to, or None for a top-level task; a parent not linked (yet) is not
    reported at all. Without it, `parent` is never reported."""
    values = {
        f: v
        for f, v in rt.values.items()
        if f in route.fields and member.reads(f) and f in conn.capabilities.fields and f != "parent"
    }
    if parents is not None and reads_parent(conn, route, member):
        parent = translate_parent(rt.parent_id, parents)
        if parent is not UNLINKED:
            values["parent"] = parent
    marker_id = None
    if "description" in rt.values:
        text, marker_id = route.marker.extract(rt.values["description"] or "")
        if "description" in values:
            values["description"] = text
    return values, marker_id


REUSE_TOLERANCE = timedelta(seconds=1)  # creation times a platform reports may be rounded


def same_remote_task(
    link_task_id: str, known_created: datetime | None, marker_id: str | None, created: datetime | None
) -> bool:
    """Whether a task reported under a linked remote id is still the task the link points at. A
    platform that reuses ids (a restored project, a reset) reports another task under it: one
    carrying the marker of another bridge task, or made at another time than the one we knew."""
    if marker_id is not None and marker_id != link_task_id:
        return False
    return not (known_created and created and abs(created - known_created) > REUSE_TOLERANCE)


def older_than_applied(reported_at: datetime | None, applied_at: datetime | None) -> bool:
    """A report older than one already applied (a late webhook delivery, a stale listing)."""
    return bool(reported_at and applied_at and reported_at < applied_at)


@dataclass(frozen=True)
class Overwritten:
    """What a write of ours to a side replaced there. The side was known at `after` (its own
    time, as the read before the write saw it, or as the last edit merged from this window);
    the write landed at `until`; `before` holds the written fields' values the side had agreed
    before it, `wrote` what it wrote as they read back; `claims` the writes of ours that may
    have landed in between."""

    after: datetime
    until: datetime
    before: Values
    wrote: Values
    claims: Sequence[Values] = ()


def overwritten_edits(
    values: Values, reported_at: datetime | None, last: Overwritten | None, base: Values
) -> Values:
    """The edits a report older than our last write to its side shows there, which that write
    replaced: nothing told the bridge of them before (a person's edit landing between our read
    before the write and the write, a window no platform here closes with a conditional write).
    Only a report stamped inside the write's window counts, and only for the fields the write
    set that the side still agrees on as written (`base`: once the side showed a newer value of
    a field, an older report of it is stale), where it shows neither the value agreed before
    nor one of our own writes."""
    if last is None or reported_at is None or not last.after < reported_at < last.until:
        return {}
    return {
        name: value
        for name, value in values.items()
        if name in last.before
        and name in last.wrote
        and base.get(name, NO_CLAIM) == last.wrote[name]
        and value != last.before[name]
        and all(claim.get(name, NO_CLAIM) != value for claim in last.claims)
    }


# Writes of ours that may show on a side without their outcome recorded, kept per link: each
# claim's write may have landed (an answer lost to a timeout, a crash before the commit) while
# the next attempt already plans newer values. Past this many attempts with other values and no
# recorded outcome (lost answers, but also refusals: a 429 or a 4xx is not told apart here) the
# oldest is forgotten.
CLAIMS_KEPT = 8


def agreed(values: Values, base: Values, claims: Sequence[Values]) -> Values:
    """What a side last agreed with us: the link's base, except where a write of ours that may
    have landed (in flight, or sent and never confirmed) already shows its value: that value.
    Our own write, seen with the platform's later stamp, must never read as an edit there."""
    out = dict(base)
    for claim in claims:
        for name, value in claim.items():
            if values.get(name, NO_CLAIM) == value:
                out[name] = value
    return out


def with_claim(claims: Sequence[Values], claim: Values) -> list[Values]:
    """A link's claims once the write `claim` goes out: the earlier ones are kept, since the
    write whose outcome was never recorded may be what the side shows (`agreed`), and a field
    one of them set differently from what is true is written again (`stale_fields`); so a
    landed write's record may clear them all."""
    kept = [c for c in claims if c != claim]
    if claim:
        kept.append(claim)
    return kept[-CLAIMS_KEPT:]


def moved(values: Values, agreed_values: Values) -> list[str]:
    """The fields the side reports with another value than it last agreed with us."""
    return [f for f, v in values.items() if f not in agreed_values or agreed_values[f] != v]


def unmoved(values: Values, agreed_values: Values) -> bool:
    """The side shows, for every field it reports, what it last agreed with us."""
    return not moved(values, agreed_values)


def stale_fields(
    conn: Connector,
    route: Route,
    member: Member,
    canonical: Values,
    base: Values,
    held: Iterable[str] = (),
    claims: Sequence[Values] = (),
) -> list[str]:
    """The route fields this member writes whose base differs from what the canonical value would
    read back as there, or that a write of ours whose outcome was never recorded set to
    something else (`with_claim`: the side may show that value, and only a write of what is true
    now puts it right; the write that lands then clears the claims). Fields an open conflict
    holds wait for its resolution."""
    out = []
    held = set(held)
    for name in route.fields:
        if name in held or not member.writes(name) or name not in conn.capabilities.writable:
            continue
        shown = side_roundtrip(conn, name, canonical.get(name, DEFAULTS[name]))
        if shown is NO_CLAIM:
            continue
        if shown != base.get(name) or any(name in claim and claim[name] != shown for claim in claims):
            out.append(name)
    return out


def writable_values(
    conn: Connector, route: Route, member: Member, canonical: Values, names: Iterable[str]
) -> Values:
    """The canonical values of `names` that this member may write (defaults for unset fields)."""
    return {
        f: canonical.get(f, DEFAULTS[f])
        for f in names
        if f in route.fields and member.writes(f) and f in conn.capabilities.writable
    }


def plan_update(
    conn: Connector,
    route: Route,
    member: Member,
    canonical: Values,
    base: Values,
    held: Iterable[str],
    queued_fields: Sequence[str] | None,
    claims: Sequence[Values] = (),
) -> Values:
    """What an update operation writes now: of the fields it was queued for (all, when it names
    none), those that still differ there (`stale_fields`). Empty: nothing to write (a repeat, or
    someone else's write got there first)."""
    stale = stale_fields(conn, route, member, canonical, base, held, claims)
    wanted = [f for f in (queued_fields if queued_fields is not None else stale) if f in stale]
    return writable_values(conn, route, member, canonical, wanted)


def inflight_claims(conn: Connector, changes: Values) -> Values:
    """A write about to go out, as it will read back there: recorded on the link before the write
    so that a report of it arriving before our commit is recognised as our echo."""
    shown = {f: side_roundtrip(conn, f, v) for f, v in changes.items()}
    return {f: v for f, v in shown.items() if v is not NO_CLAIM}


def base_after_write(
    conn: Connector,
    route: Route,
    member: Member,
    base: Values,
    written: Mapping[str, Any],
    reported: RemoteTask | None,
) -> Values:
    """A link's base once a write landed: what the platform reported (a create's answer) for the
    fields it reports, and what was written, as it reads back there, for the rest."""
    out = dict(base)
    if reported is not None:
        out.update(readable_values(conn, route, member, reported)[0])
    for name, value in written.items():
        if name in route.fields and name in conn.capabilities.fields:
            shown = side_roundtrip(conn, name, value)
            if shown is not NO_CLAIM:
                out[name] = shown
    return out


def moved_since_base(
    conn: Connector,
    route: Route,
    member: Member,
    current: RemoteTask,
    base: Values,
    parents: Mapping[str, str] | None = None,
    *,
    claims: Sequence[Values] = (),
) -> bool:
    """The read before a write: whether the side changed since it last agreed with us (`agreed`,
    with our writes that may have landed there) (then its change is merged first, and the write
    goes out with what is true after that). `parents` as for `readable_values`; a parent it does
    not know counts as a move (the merge looks it up)."""
    seen, _ = readable_values(conn, route, member, current, parents)
    base = agreed(seen, base, claims)
    if (
        parents is not None
        and reads_parent(conn, route, member)
        and translate_parent(current.parent_id, parents) is UNLINKED
    ):
        return True
    return not all(base.get(f) == v for f, v in seen.items())


# -- the hierarchy ---------------------------------------------------------------------------------


class _Unlinked:
    """A parent id with no link on the other side of a translation."""

    def __repr__(self) -> str:
        return "UNLINKED"


UNLINKED: Any = _Unlinked()


def reads_parent(conn: Connector, route: Route, member: Member) -> bool:
    """Whether `parent` is read from this side: the route syncs it, the member reads it, and the
    connector reports it (only platforms with subtasks do)."""
    return "parent" in route.fields and member.reads("parent") and "parent" in conn.capabilities.fields


def writes_parent(conn: Connector, route: Route, member: Member) -> bool:
    """Whether `parent` is written to this side (a member without subtasks keeps tasks top-level)."""
    return "parent" in route.fields and member.writes("parent") and "parent" in conn.capabilities.writable


def translate_parent(parent: str | None, ids: Mapping[str, str]) -> Any:
    """A parent from one id space to the other through links: on read, a side's remote parent id
    to the bridge task linked to it on that connector (`ids`: remote id -> task id); on write, a
    canonical parent to its copy's id on the target (`ids`: task id -> remote id). None (top
    level) stays None; an id with no link is UNLINKED, never guessed."""
    if parent is None:
        return None
    return ids.get(parent, UNLINKED)


def closes_loop(task_id: str, parent: str | None, parent_of: Mapping[str, str | None]) -> bool:
    """Whether making `parent` the parent of `task_id` makes the task its own ancestor, following
    `parent_of` (task -> parent) up from `parent`; an ancestor it doesn't hold ends the walk."""
    seen: set[str] = set()
    node = parent
    while node is not None and node not in seen:
        if node == task_id:
            return True
        seen.add(node)
        node = parent_of.get(node)
    return False


def parent_hold(
    task_id: str,
    parent: str | None,
    there: Any,
    parent_of: Mapping[str, str | None],
    parent_of_there: Mapping[str, str | None],
) -> str | None:
    """Why the canonical `parent` of `task_id` cannot be written to a target now; None: it can.
    `there` is the parent's id on the target (`translate_parent`), `parent_of` the canonical
    parents of its ancestors, `parent_of_there` the target's as it last agreed with us (link bases).

    - "unlinked": the parent has no copy there (yet: its create may be in flight). Top level is
      written instead on a create; the link's base says so, and the parent follows once its
      copy's create lands.
    - "loop": the bridge's parents make the task its own ancestor (two sides nesting two tasks
      each under the other, a value set through the API): refused, never written.
    - "loop-there": the target still holds the task above its new parent (a move whose other
      half has not landed there yet): the platform would refuse it, so it waits for that write.
    """
    if parent is None:
        return None
    if there is UNLINKED:
        return "unlinked"
    if closes_loop(task_id, parent, parent_of):
        return "loop"
    if closes_loop(task_id, parent, parent_of_there):
        return "loop-there"
    return None


def parents_first_order(keys: Sequence[Hashable], parents: Sequence[Hashable | None]) -> list[int]:
    """An order of a batch's items (their indexes) in which each item comes after the first item
    of the parent it names (`parents[i]`, compared with `keys`) when the batch holds one, and after
    the earlier items of its own key (a task reported twice keeps its reports in order); otherwise
    items keep their order. Observed in this order, a new parent is linked before its children
    look it up. Every item is placed exactly once, and nothing waits forever: a loop of parents (a
    platform's bug, or a move caught half way) is cut where the walk finds it closing."""
    first: dict[Hashable, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    last: dict[Hashable, int] = {}
    before: list[list[int]] = []  # what each item waits for: its key's previous item, its parent
    for i, (key, parent) in enumerate(zip(keys, parents, strict=True)):
        waits = [last[key]] if key in last else []
        if parent is not None and parent != key and parent in first:
            waits.append(first[parent])
        before.append(waits)
        last[key] = i
    out: list[int] = []
    state = [0] * len(before)  # 0: not seen, 1: on the path being placed, 2: placed
    for root in range(len(before)):
        stack = [root]
        while stack:  # depth first without recursion: a hierarchy may be deep
            i = stack[-1]
            if state[i] == 0:
                state[i] = 1
                # its key's earlier item first, then its parent; one on the path closes a loop
                stack.extend(w for w in reversed(before[i]) if state[w] == 0)
                continue
            stack.pop()
            if state[i] == 1:
                state[i] = 2
                out.append(i)
    return out


def parents_first(tasks: Sequence[RemoteTask]) -> list[RemoteTask]:
    """A listing's tasks, each after its parent when the parent is listed too, else in listed
    order (`parents_first_order`)."""
    order = parents_first_order([t.remote_id for t in tasks], [t.parent_id for t in tasks])
    return [tasks[i] for i in order]


_NEVER = datetime(1970, 1, 1, tzinfo=UTC)  # sorts a report without a time first


def oldest_change_first(tasks: Sequence[RemoteTask]) -> list[RemoteTask]:
    """A listing's changed tasks in the order their changes were made (a task without a time
    first; equal times keep the listed order). A platform lists by id or by position, so a burst
    of edits that wrapped around its list would otherwise be written newest first, and the edit
    that waited longest for the poll would wait for all the others too."""
    return sorted(tasks, key=lambda t: as_utc(t.updated_at) if t.updated_at else _NEVER)


def adopted_parent(reports: Sequence[tuple[datetime | None, Any]]) -> tuple[Any, datetime | None]:
    """The canonical parent of a task linked at once to copies that already exist (re-adoption,
    matching), from what each copy reports: (its update time, its parent translated to a bridge
    task by `translate_parent`), in the order the caller laid the copies' other fields over. The
    newest report wins, as for every other field when copies are linked (nothing was agreed yet
    to conflict with); equal times keep that order. A copy under a task the bridge has no link
    to has no say (UNLINKED), as at an observation. Returns the parent and its report's time, or
    NO_CLAIM when no copy says anything."""
    out: tuple[Any, datetime | None] = (NO_CLAIM, None)
    for at, parent in sorted(reports, key=lambda r: r[0] or _NEVER):
        if parent is not UNLINKED and parent is not NO_CLAIM:
            out = (parent, at)
    return out


def acyclic_parents(
    chosen: Sequence[tuple[str, str | None]], parent_of: Mapping[str, str | None]
) -> tuple[dict[str, str | None], list[str]]:
    """The parents `chosen` for tasks being linked (task, parent), taken in order, each unless it
    would make its task its own ancestor given `parent_of` (the canonical parents known) and the
    ones taken before it. Copies linked together can disagree into a loop (A under B on one
    side, B under A on the other): the bridge's hierarchy stays a forest, and the task refused
    keeps its parent (its sides are written back). Returns (taken, refused task ids)."""
    known = dict(parent_of)
    taken: dict[str, str | None] = {}
    refused: list[str] = []
    for task_id, parent in chosen:
        if closes_loop(task_id, parent, known):
            refused.append(task_id)
            continue
        known[task_id] = parent
        taken[task_id] = parent
    return taken, refused
