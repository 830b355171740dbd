"""Re-adoption: a new store takes back, by their markers, the tasks platforms already hold in sync.

A store can be lost (a deleted file, a dropped database, a host moved without its state). The
platforms still hold every origin and its mirrors, and each mirror's description ends in the
route's marker, which names the bridge task it copies. Polling a new store as if the platforms
were new would take each copy for a new task and mirror it again: four copies of everything on
five platforms. So when the daemon starts on a store with no link, it first lists every member of
every route completely and re-adopts what it finds, before any poll, webhook or write runs:

- every mirror is linked to the bridge task its marker names (that task is created again, under
  the same id, so the markers stay true);
- the origin is the one task, on a member holding no mirror of it, that carries no marker and
  reads the same title (and, to break ties, the same description) as its mirrors, created before
  them; the newest such candidate wins a tie that remains;
- the canonical values are each copy's values laid over the others oldest first, so an edit that
  had not propagated when the store was lost is the newest and reaches the others as an update;
  a copy that shows an older value as its lossy mapping reads it back (Vortask's Medium for a
  priority of none) agrees with it rather than overriding it;
- `parent`, where a route syncs it, the same way once every task of the route has its links: each
  copy's parent is a remote id, which only those links translate (`sync.link_parents`), so a
  tree comes back whole, its children under their parents before any poll;
- a member holding no copy gets a mirror created only when the origin was found (otherwise the
  missing copy may be the unmatched origin itself, and a create would duplicate it).

Everything else (tasks without a marker that match no mirror) is left to the first poll, which
treats it as the `initial` policy says. Comments need no pass of their own: a comment written
before this store existed is looked for among ours before it is posted (`comments.py`).

`plan()` decides from listings alone (a pure function, tested by tables); `readopt()` lists and
applies the plan in one transaction per route. If a listing fails, the daemon does not start:
a partial picture would duplicate what it could not see.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from bridge.engine import core, leases
from bridge.engine.context import EngineContext
from bridge.engine.routes import Member, Route
from bridge.engine.sync import active_link, create_mirrors, link_parents, new_task, queue_updates_many
from bridge.model import Values
from bridge.store.tables import LinkRow, TaskRow
from connectors.base import ConnectorError, RemoteTask

log = logging.getLogger("taskbridge.recovery")


class RecoveryFailed(Exception):
    """A member could not be listed, so re-adoption cannot be sure what exists."""


@dataclass(frozen=True)
class Copy:
    """One remote task of a member, as re-adoption weighs it."""

    member: Member
    task: RemoteTask
    values: Values  # what the member reports for the route's fields, marker stripped
    marker: str | None  # the bridge task id the marker names, if any


@dataclass(frozen=True)
class Adoption:
    task_id: str
    canonical: Values
    origin: Copy | None
    mirrors: tuple[Copy, ...]
    missing: tuple[Member, ...]  # members to create a mirror on (only when the origin was found)


@dataclass
class Plan:
    adoptions: list[Adoption] = field(default_factory=list)
    extra: list[Copy] = field(default_factory=list)  # a second copy with the same marker on one member
    no_origin: list[str] = field(default_factory=list)  # task ids whose origin was not found


Roundtrip = Callable[[Member, str, Any], Any]  # what a value reads back as on a member's side


def as_is(member: Member, name: str, value: Any) -> Any:
    return value


def plan(route: Route, copies: Sequence[Copy], roundtrip: Roundtrip = as_is) -> Plan:
    """What to link, for one route, from complete listings of its members. `roundtrip` says what
    a value reads back as on a member (its mapping may be lossy); as is by default."""
    result = Plan()
    by_marker: dict[str, dict[tuple[str, str], Copy]] = {}
    for c in sorted((c for c in copies if c.marker is not None), key=_created):
        mirrors = by_marker.setdefault(c.marker or "", {})
        if c.member.key in mirrors:
            result.extra.append(c)  # the older copy holds the link; this one is left alone
        else:
            mirrors[c.member.key] = c
    unmarked: dict[str, list[Copy]] = {}  # by title: a scan per marker would be quadratic
    for c in copies:
        if c.marker is None and not c.task.deleted:
            unmarked.setdefault(_norm(c.values.get("title")), []).append(c)
    taken: set[tuple[str, str]] = set()
    for task_id, mirrors in sorted(by_marker.items()):
        origin = _origin(list(mirrors.values()), unmarked, taken)
        if origin is not None:
            taken.add((origin.member.connector, origin.task.remote_id))
        else:
            result.no_origin.append(task_id)
        held = set(mirrors) | ({origin.member.key} if origin else set())
        missing = tuple(m for m in route.members if m.key not in held and m.writes_any) if origin else ()
        everything = sorted([*mirrors.values(), *([origin] if origin else [])], key=_updated)
        canonical = laid_over(everything, roundtrip)
        result.adoptions.append(Adoption(task_id, canonical, origin, tuple(mirrors.values()), missing))
    return result


def laid_over(copies: Sequence[Copy], roundtrip: Roundtrip) -> Values:
    """The copies' values, oldest first, each laid over the ones before it: the newest report wins
    each field. A copy that shows an older value as its mapping reads it back there agrees with
    it and overrides nothing: Vortask writes a priority of `none` as Medium, its neutral value,
    and its copy, were it the newest, must not turn the task's `none` into `medium` everywhere."""
    canonical: Values = {}
    for c in copies:
        for name, value in c.values.items():
            if name in canonical and roundtrip(c.member, name, canonical[name]) == value:
                continue
            canonical[name] = value
    return canonical


def _origin(mirrors: list[Copy], unmarked: dict[str, list[Copy]], taken: set[tuple[str, str]]) -> Copy | None:
    holders = {m.member.key for m in mirrors}
    first_mirror = min((m.task.created_at for m in mirrors if m.task.created_at), default=None)
    descriptions = {_norm(m.values.get("description")) for m in mirrors}
    candidates = [
        c
        for title in {_norm(m.values.get("title")) for m in mirrors}
        for c in unmarked.get(title, ())
        if c.member.key not in holders
        and (c.member.connector, c.task.remote_id) not in taken
        and (first_mirror is None or c.task.created_at is None or c.task.created_at <= first_mirror)
    ]
    if len(candidates) > 1:
        closer = [c for c in candidates if _norm(c.values.get("description")) in descriptions]
        candidates = closer or candidates
    return max(candidates, key=_created) if candidates else None


def _norm(value: object) -> str:
    return " ".join(str(value or "").split())


_NEVER = datetime(1970, 1, 1, tzinfo=UTC)  # sorts a copy without a time first


def _created(c: Copy) -> tuple[datetime, str]:
    return (c.task.created_at or _NEVER, c.task.remote_id)


def _updated(c: Copy) -> tuple[datetime, int]:
    # Oldest first, the origin last among equals: the newest report wins each field.
    return (c.task.updated_at or _NEVER, 0 if c.marker else 1)


# -- I/O -------------------------------------------------------------------------------------------


RECOVERY_LEASE = "recovery"
DEFAULT_RECOVERY_TTL = 900.0  # seconds one replica may spend re-adopting before another may try


async def store_is_new(ctx: EngineContext) -> bool:
    async with ctx.store.read() as session:
        return await session.scalar(select(LinkRow.id).limit(1)) is None


async def recover_if_new(ctx: EngineContext, *, wait: float = 1.0) -> int:
    """At start: re-adopt when the store holds no link. One replica does it (a lease); another
    starting meanwhile waits until it is done rather than polling a half-adopted store."""
    return await under_lease(ctx, store_is_new, readopt, wait=wait)


async def under_lease(
    ctx: EngineContext,
    needed: Callable[[EngineContext], Awaitable[bool]],
    work: Callable[[EngineContext], Awaitable[int]],
    *,
    wait: float = 1.0,
) -> int:
    """Do `work` once across replicas while `needed` holds: one replica under the recovery lease,
    the others waiting until it no longer holds (so none polls a half-adopted store)."""
    while await needed(ctx):
        if await leases.acquire(ctx, RECOVERY_LEASE, DEFAULT_RECOVERY_TTL):
            try:
                return await work(ctx) if await needed(ctx) else 0
            finally:
                await leases.release(ctx, RECOVERY_LEASE)
        log.info("another replica is adopting existing tasks into the store; waiting")
        await asyncio.sleep(wait)
    return 0


# What a start that could not list a member tells the operator: a new store may be a first run
# (a wrong scope, a credential that cannot read) as well as one replacing a lost store.
START_ADVICE = (
    "starting now could duplicate them. Fix the connector (its scope, its credential) and start "
    "again; a store replacing a lost one can also be restored with `taskbridge store import`."
)


async def list_route(ctx: EngineContext, route: Route, *, why: str, advice: str = START_ADVICE) -> list[Copy]:
    """Every member's tasks, listed completely. RecoveryFailed (saying `why` it was listing, and
    `advice`) when one cannot be: a partial picture would duplicate what it missed."""
    copies: list[Copy] = []
    for member in route.members:
        if not member.reads_any:
            continue
        conn = ctx.connectors[member.connector]
        try:
            async with conn.stream_tasks(member.scope, None) as listing:
                async for rt in listing:
                    values, marker = core.readable_values(conn, route, member, rt)
                    copies.append(Copy(member, rt, values, marker))
                end = listing.end
        except ConnectorError as exc:
            raise RecoveryFailed(
                f"{member.connector}/{member.scope} could not be listed {why} ({exc}); {advice}"
            ) from exc
        if end.all_ids is None:
            log.warning(
                "%s/%s: the listing was not complete; tasks it did not show are left to the polls",
                member.connector,
                member.scope,
            )
    return copies


async def readopt(ctx: EngineContext) -> int:
    """Re-adopt, route by route, what carries our markers. Returns how many bridge tasks were
    re-adopted. RecoveryFailed when a member cannot be listed."""
    adopted = 0
    for route in ctx.routes:
        adopted += await readopt_route(ctx, route, await list_route(ctx, route, why="to re-adopt its tasks"))
    return adopted


async def readopt_route(ctx: EngineContext, route: Route, copies: Sequence[Copy]) -> int:
    result = plan(
        route,
        copies,
        lambda member, name, value: core.side_roundtrip(ctx.connectors[member.connector], name, value),
    )
    if result.adoptions:
        await _apply(ctx, route, result)
    for c in result.extra:
        log.warning(
            "%s: task %s carries the marker of %s, already re-adopted from another task there; left alone",
            c.member.connector,
            c.task.remote_id,
            c.marker,
        )
    if result.no_origin:
        log.warning(
            "route %s: %d re-adopted tasks have no origin that could be told apart by title "
            "(their mirrors are linked; the origin, if it exists, will show as a new task)",
            route.name,
            len(result.no_origin),
        )
    if result.adoptions:
        log.warning(
            "route %s: re-adopted %d tasks already in sync (the store was new; markers found)",
            route.name,
            len(result.adoptions),
        )
    return len(result.adoptions)


async def _apply(ctx: EngineContext, route: Route, result: Plan) -> None:
    now = ctx.now()
    async with ctx.store.transaction() as session:
        queued = []
        linked: list[tuple[TaskRow, list[Copy]]] = []
        for a in result.adoptions:
            newest = max(
                (
                    c.task.updated_at
                    for c in (*a.mirrors, *([a.origin] if a.origin else []))
                    if c.task.updated_at
                ),
                default=None,
            )
            task = await new_task(
                session,
                route,
                a.canonical,
                source="recovery",
                via="recovery",
                now=now,
                updated_at=newest,
                task_id=a.task_id,
            )
            for c, mirror in [*((m, True) for m in a.mirrors), *([(a.origin, False)] if a.origin else [])]:
                session.add(active_link(route, c.member, task.id, c.task, c.values, now, mirror=mirror))
            if a.missing:
                await create_mirrors(ctx, session, route, task, only=a.missing, observed_at=now)
            queued.append((route, task, now))
            # oldest first, as `plan` laid the copies' other fields over
            linked.append((task, sorted((*a.mirrors, *([a.origin] if a.origin else [])), key=_updated)))
        await session.flush()
        # Each copy's parent, once every task of the route has its links: a tree re-adopted whole.
        await link_parents(ctx, session, route, linked, source="recovery")
        await queue_updates_many(ctx, session, queued)
