r"""Linking what already exists: `initial: match` (and `match-only`), and `taskbridge link`.

Real teams never start empty: two boards kept in step by hand hold the same work twice, and
mirroring each into the other would double it. Before a route's first poll, matching lists every
member completely and links the tasks that are the same work instead of copying them:

1. by the bridge's marker (a mirror names its task: the re-adoption of `recovery.py`);
2. by the route's explicit key, when it names one (`match_key:`, below);
3. by normalised title (case, whitespace and punctuation ignored), the due date breaking a tie.

A group of tasks sharing a title, at most one per member, on two members or more, becomes one
canonical task linked to each (confidence 1.0 for the same title exactly, 0.9 for the same once
normalised, 0.8 when only the due date told them apart). A title two tasks of one member share
(with the same due date) is ambiguous: none of its tasks is linked, each is listed, and each is
held apart (a `held_apart:<route>` meta row, loaded into the context) so that no poll takes it for
a new task and copies it again. Linking
takes the newest value of each field (the route's `newest` rule; under `manual` and `prefer` the
same, since nothing was ever agreed to conflict with) and queues writes only where a copy differs.

The explicit key. A route may name what marks two tasks as one piece of work, one kind of key:

    match_key: {tag: "ext:"}        # a tag with this prefix: `ext:ABC-12` on two members
    match_key: {url: true}          # a task's description holds another member's task's address
    match_key: {title_regex: '\[([A-Z]+-\d+)\]'}   # "[ABC-12] Fix login": the group, or the match

Key values are read from what each platform reports, whether or not the route syncs that field,
and compared without case (a tag's less its prefix; a URL without fragment or trailing slash). A
`url` key is a task's own web address (`RemoteTask.url`, from the connectors that have one),
pasted into the description of a task on another member: both then carry it; a URL that is no
listed task's address is no key. Tasks sharing a key value, or tied through several (a task with
two keys), form a group: one task per member on two members or more is a match (confidence 1.0,
`by="key"`); two tasks of one member in a group that spans members are ambiguous, exactly like a
title twin (none linked, each listed and held apart); a key only one member holds, even twice, is
unmatched. A task whose key matched nothing falls through to the titles (a `title_regex` key is
taken out of its title first), but two such tasks are never linked by title to each other: their
keys differ, so they are different work, and a title they share with a task without a key is
ambiguous. `only: true` keeps a task with a key out of the titles altogether.

Tasks matched nowhere follow the route: `initial: match` mirrors them at the first poll, as
`mirror` would, and a linked task gets a mirror on each member that lacks it; `match-only`
leaves both alone, as `new-only` would.

`plan()` decides from listings alone (pure, tested by tables); `match_route()` lists and applies.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select

from bridge.config import MatchKeyConfig
from bridge.engine.context import EngineContext
from bridge.engine.recovery import (
    Copy,
    as_is,
    laid_over,
    list_route,
    readopt_route,
    store_is_new,
    under_lease,
)
from bridge.engine.recovery import plan as plan_markers
from bridge.engine.routes import Member, Route
from bridge.engine.sync import active_link, create_mirrors, link_parents, new_task, queue_updates_many
from bridge.model import Values, new_id
from bridge.store.tables import HistoryRow, LinkRow, MetaRow

log = logging.getLogger("taskbridge.matching")

MATCH_MODES = ("match", "match-only")
HELD_APART = "held_apart:"  # meta rows (one per route) of the tasks matching left unlinked
_NEVER = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Match:
    """Tasks of several members that are one piece of work."""

    copies: tuple[Copy, ...]
    confidence: float
    canonical: Values
    task_id: str | None = None  # set when a marker named it (a mirror of ours)
    by: str = "title"  # what told: "marker", "key" (the route's match_key) or "title"


@dataclass
class MatchPlan:
    matches: list[Match] = field(default_factory=list)
    ambiguous: list[Copy] = field(default_factory=list)
    unmatched: list[Copy] = field(default_factory=list)


def normalise(title: object) -> str:
    """A title as matching compares it: accents, case, punctuation and spacing ignored."""
    text = unicodedata.normalize("NFKD", str(title or ""))
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def plan(route: Route, copies: Sequence[Copy]) -> MatchPlan:
    """What to link, for one route, from complete listings of its members."""
    result = MatchPlan()
    taken: set[tuple[str, str]] = set()
    for adoption in plan_markers(route, copies).adoptions:
        group = (*adoption.mirrors, *([adoption.origin] if adoption.origin else []))
        taken.update(_id(c) for c in group)
        result.matches.append(Match(group, 1.0, adoption.canonical, adoption.task_id, by="marker"))
    live = [c for c in copies if c.marker is None and not c.task.deleted and _id(c) not in taken]
    keyed: set[tuple[str, str]] = set()  # carry a key that matched nothing: never linked by title to another
    if route.match_key is not None:
        live, keyed = _by_key(route.match_key, live, result)
    by_title: dict[str, list[Copy]] = {}
    for c in live:
        by_title.setdefault(normalise(_title(route.match_key, c)), []).append(c)
    for key, group in sorted(by_title.items()):
        if not key:
            result.unmatched.extend(group)
            continue
        members = {c.member.key for c in group}
        if len(members) < 2:
            result.unmatched.extend(group)
            continue
        with_key = [c for c in group if _id(c) in keyed]
        if len(with_key) > 1:
            # Their keys differ, so they are different work; an unkeyed one could be any of them.
            if len(with_key) == len(group):
                result.unmatched.extend(group)
            else:
                result.ambiguous.extend(group)
            continue
        if len(group) == len(members):  # one task per member
            exact = len({str(c.values.get("title")) for c in group}) == 1
            result.matches.append(Match(tuple(group), 1.0 if exact else 0.9, _newest(group)))
            continue
        _by_due_date(group, result)
    return result


def _id(c: Copy) -> tuple[str, str]:
    return (c.member.connector, c.task.remote_id)


def _title(key: MatchKeyConfig | None, c: Copy) -> str:
    """The title as the titles compare it: without the key a `title_regex` finds in it (a task
    whose key matched nothing meets the same title without the key on another member)."""
    title = str(c.values.get("title") or "")
    return re.sub(key.title_regex, " ", title) if key is not None and key.title_regex is not None else title


# -- the explicit key (a route's `match_key`) ------------------------------------------------------

KEY_CONFIDENCE = 1.0
_URL = re.compile(r"https?://[^\s<>()\[\]{}\"'`|]+", re.IGNORECASE)


def _by_key(
    key: MatchKeyConfig, live: list[Copy], result: MatchPlan
) -> tuple[list[Copy], set[tuple[str, str]]]:
    """Link the tasks that share a key value (or are tied through several): a group with one task
    per member, on two members or more. A group holding two tasks of one member is ambiguous when
    it spans members, and unmatched when it does not. Returns the tasks left to the titles (the
    unkeyed, and unless `only`, those whose key matched nothing) and the ids of the latter."""
    values = _key_values(key, live)
    parent = list(range(len(live)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, c in enumerate(live):
        for v in sorted(values.get(_id(c), ())):
            j = first.setdefault(v, i)
            parent[root(i)] = root(j)
    groups: dict[int, list[Copy]] = {}
    for i, c in enumerate(live):
        if values.get(_id(c)):
            groups.setdefault(root(i), []).append(c)
    rest = [c for c in live if not values.get(_id(c))]
    fell_through: set[tuple[str, str]] = set()
    for group in groups.values():
        members = {c.member.key for c in group}
        if len(group) == 1:  # its key matched nothing
            if key.only:
                result.unmatched.extend(group)
            else:
                rest.append(group[0])
                fell_through.add(_id(group[0]))
        elif len(members) == 1:  # a key one member holds twice, and no other member
            result.unmatched.extend(group)
        elif len(group) != len(members):
            result.ambiguous.extend(group)
        else:
            result.matches.append(Match(tuple(group), KEY_CONFIDENCE, _newest(group), by="key"))
    return rest, fell_through


def _key_values(key: MatchKeyConfig, live: Sequence[Copy]) -> dict[tuple[str, str], set[str]]:
    """Each task's key values, from what its platform reports (whether or not the route syncs
    the field): tags under the prefix, less it; the title regex's group; or, for `url`, a task's
    own web address when another member's task holds it in its description (both carry it)."""
    out: dict[tuple[str, str], set[str]] = {}
    if key.tag is not None:
        prefix = key.tag.strip().casefold()
        for c in live:
            tags = (str(t).strip().casefold() for t in c.task.values.get("tags") or ())
            out[_id(c)] = {t[len(prefix) :].strip() for t in tags if t.startswith(prefix)} - {""}
    elif key.title_regex is not None:
        pattern = re.compile(key.title_regex)
        for c in live:
            found = pattern.finditer(str(c.task.values.get("title") or ""))
            out[_id(c)] = {
                ((m.group(1) if pattern.groups else m.group(0)) or "").strip().casefold() for m in found
            }
            out[_id(c)].discard("")
    else:
        owners = {_url(c.task.url): c for c in live if c.task.url}
        for c in live:
            text = str(c.task.values.get("description") or "")
            for found in _URL.findall(text):
                owner = owners.get(_url(found))
                if owner is not None and owner.member.key != c.member.key:
                    out.setdefault(_id(c), set()).add(_url(found))
                    out.setdefault(_id(owner), set()).add(_url(found))
    return out


def _url(text: str) -> str:
    """A web address as compared: scheme and host in lower case, no fragment, no trailing slash or
    sentence punctuation."""
    text = text.strip().rstrip(".,;:!?'\"")
    head, sep, rest = text.partition("://")
    host, slash, path = rest.partition("/")
    path = path.split("#", 1)[0].rstrip("/")
    return f"{head.lower()}{sep}{host.lower()}{slash if path else ''}{path}"


def _by_due_date(group: list[Copy], result: MatchPlan) -> None:
    """A title one member has twice: the due date may tell the pairs apart."""
    by_due: dict[object, list[Copy]] = {}
    for c in group:
        by_due.setdefault(c.values.get("due_date"), []).append(c)
    for sub in by_due.values():
        members = {c.member.key for c in sub}
        if len(sub) != len(members):
            result.ambiguous.extend(sub)
        elif len(members) < 2:
            # Alone under its due date, but its title is shared: which one it is cannot be told.
            result.ambiguous.extend(sub)
        else:
            result.matches.append(Match(tuple(sub), 0.8, _newest(sub)))


def _newest(group: Sequence[Copy]) -> Values:
    # Twins made by people: a value shown through a lossy mapping may be the one chosen there, so
    # each newer copy overrides as it reads (re-adoption's mirrors are judged by their round trip).
    return laid_over(sorted(group, key=lambda c: c.task.updated_at or _NEVER), as_is)


# -- I/O -------------------------------------------------------------------------------------------


async def route_is_unlinked(ctx: EngineContext, route: Route) -> bool:
    async with ctx.store.read() as session:
        return await session.scalar(select(LinkRow.id).where(LinkRow.route == route.name).limit(1)) is None


async def adopt_existing(ctx: EngineContext) -> int:
    """At start, before any poll: a new store re-adopts what carries our markers (recovery.py),
    and a route under `initial: match` or `match-only` with no link yet links what its members
    already share. Returns how many bridge tasks were linked. One replica does it."""

    async def needed(ctx: EngineContext) -> bool:
        return await store_is_new(ctx) or any([await _unmatched(ctx, r) for r in ctx.routes])

    async def work(ctx: EngineContext) -> int:
        new_store = await store_is_new(ctx)
        linked = 0
        for route in ctx.routes:
            if await _unmatched(ctx, route):
                linked += len((await match_route(ctx, route)).matches)
            elif new_store:
                linked += await readopt_route(
                    ctx,
                    route,
                    await list_route(ctx, route, why="to link the tasks already there (the store is new)"),
                )
        return linked

    linked = await under_lease(ctx, needed, work)
    await load_held_apart(ctx)
    return linked


async def load_held_apart(ctx: EngineContext) -> None:
    """What matching left unlinked as ambiguous, from the store (every replica the same)."""
    async with ctx.store.read() as session:
        rows = (await session.scalars(select(MetaRow).where(MetaRow.key.startswith(HELD_APART)))).all()
    ctx.held_apart = {(str(c), str(r)) for row in rows for c, r in row.value.get("tasks", [])}


async def _unmatched(ctx: EngineContext, route: Route) -> bool:
    return route.initial in MATCH_MODES and await route_is_unlinked(ctx, route)


async def match_route(ctx: EngineContext, route: Route, copies: Sequence[Copy] | None = None) -> MatchPlan:
    """Link what the members already share (one transaction), and return what was decided. Under
    `match-only` the first poll then leaves the unmatched alone, as under `new-only`: what it
    sees first existed before the route."""
    if copies is None:
        copies = await list_route(ctx, route, why=f"to match route {route.name}'s existing tasks")
    linked = await _linked_remote_ids(ctx, route)
    result = plan(route, [c for c in copies if (c.member.connector, c.task.remote_id) not in linked])
    await apply(ctx, route, result)
    for c in result.ambiguous:
        log.warning(
            "route %s: %s task %s %r has a twin there (same key, or same title and due date); left unlinked",
            route.name,
            c.member.connector,
            c.task.remote_id,
            c.values.get("title"),
        )
    log.info(
        "route %s: %d existing tasks linked across members, %d ambiguous, %d matched nowhere (%s)",
        route.name,
        len(result.matches),
        len(result.ambiguous),
        len(result.unmatched),
        "left alone" if route.initial == "match-only" else "mirrored by the first poll",
    )
    return result


def _missing(route: Route, m: Match) -> list[Member]:
    """The members a linked task still lacks, to mirror it to: under `match` (not `match-only`,
    which leaves the existing alone), and for a group found by marker only when its origin is in
    it (else the missing copy may be the origin matching could not tell apart)."""
    if route.initial != "match":
        return []
    if m.task_id is not None and all(c.marker is not None for c in m.copies):
        return []
    held = {c.member.key for c in m.copies}
    return [member for member in route.members if member.key not in held and member.writes_any]


async def _linked_remote_ids(ctx: EngineContext, route: Route) -> set[tuple[str, str]]:
    async with ctx.store.read() as session:
        rows = (
            await session.execute(
                select(LinkRow.connector, LinkRow.remote_id).where(
                    LinkRow.route == route.name, LinkRow.remote_id.is_not(None)
                )
            )
        ).all()
    return {(c, str(r)) for c, r in rows}


async def apply(ctx: EngineContext, route: Route, result: MatchPlan) -> None:
    now = ctx.now()
    async with ctx.store.transaction() as session:
        queued = []
        linked = []
        for m in result.matches:
            newest = max((c.task.updated_at for c in m.copies if c.task.updated_at), default=None)
            task = await new_task(
                session,
                route,
                m.canonical,
                source="match",
                via="match",
                now=now,
                updated_at=newest,
                task_id=m.task_id or new_id(),
            )
            session.add(
                HistoryRow(
                    task_id=task.id,
                    field="*",
                    old=None,
                    new={
                        "v": f"linked across {len(m.copies)} members by {m.by} (confidence {m.confidence:g})"
                    },
                    source="match",
                    via="match",
                    at=now,
                )
            )
            for c in m.copies:
                session.add(
                    active_link(route, c.member, task.id, c.task, c.values, now, mirror=c.marker is not None)
                )
            missing = _missing(route, m)
            if missing:
                await create_mirrors(ctx, session, route, task, only=missing, observed_at=now)
            queued.append((route, task, now))
            linked.append((task, m.copies))
        if result.ambiguous:
            key = HELD_APART + route.name
            row = await session.get(MetaRow, key)
            held = {tuple(x) for x in (row.value.get("tasks", []) if row else [])}
            held |= {(c.member.connector, c.task.remote_id) for c in result.ambiguous}
            value = {"tasks": sorted([list(x) for x in held])}
            if row is None:
                session.add(MetaRow(key=key, value=value))
            else:
                row.value = value
        await session.flush()
        # Each copy's parent, once every matched task has its links (a parent's may come later).
        await link_parents(ctx, session, route, linked, source="match")
        await queue_updates_many(ctx, session, queued)
