"""Linking what already exists: `initial: match` (and `match-only`), and `taskbridge link`.

Real teams never start empty: two boards kept in step by hand hold the same work twice, and
mirroring each into the other would double it. Before a route's first poll, matching lists every
member completely and links the tasks that are the same work instead of copying them:

1. by the bridge's marker (a mirror names its task: the re-adoption of `recovery.py`);
2. by normalised title (case, whitespace and punctuation ignored), the due date breaking a tie.

A group of tasks sharing a key, at most one per member, on two members or more, becomes one
canonical task linked to each (confidence 1.0 for the same title exactly, 0.9 for the same once
normalised, 0.8 when only the due date told them apart). A key two tasks of one member share
(with the same due date) is ambiguous: none of its tasks is linked, each is listed, and each is
held apart (a `held_apart:<route>` meta row, loaded into the context) so that no poll takes it for
a new task and copies it again. Linking
takes the newest value of each field (the route's `newest` rule; under `manual` and `prefer` the
same, since nothing was ever agreed to conflict with) and queues writes only where a copy differs.

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

from bridge.engine.context import EngineContext
from bridge.engine.recovery import Copy, list_route, readopt_route, store_is_new, under_lease
from bridge.engine.recovery import plan as plan_markers
from bridge.engine.routes import Member, Route
from bridge.engine.sync import active_link, create_mirrors, new_task, queue_updates_many
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
        taken.update((c.member.connector, c.task.remote_id) for c in group)
        result.matches.append(Match(group, 1.0, adoption.canonical, adoption.task_id))
    live = [
        c
        for c in copies
        if c.marker is None and not c.task.deleted and (c.member.connector, c.task.remote_id) not in taken
    ]
    by_title: dict[str, list[Copy]] = {}
    for c in live:
        by_title.setdefault(normalise(c.values.get("title")), []).append(c)
    for key, group in sorted(by_title.items()):
        if not key:
            result.unmatched.extend(group)
            continue
        members = {c.member.key for c in group}
        if len(members) < 2:
            result.unmatched.extend(group)
            continue
        if len(group) == len(members):  # one task per member
            exact = len({str(c.values.get("title")) for c in group}) == 1
            result.matches.append(Match(tuple(group), 1.0 if exact else 0.9, _newest(group)))
            continue
        _by_due_date(group, result)
    return result


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
    canonical: Values = {}
    for c in sorted(group, key=lambda c: c.task.updated_at or _NEVER):
        canonical.update(c.values)
    return canonical


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
                    ctx, route, await list_route(ctx, route, why="to re-adopt its tasks")
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
            "route %s: %s task %s %r has a twin of the same title there; left unlinked",
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
                    new={"v": f"linked across {len(m.copies)} members (confidence {m.confidence:g})"},
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
        await queue_updates_many(ctx, session, queued)
