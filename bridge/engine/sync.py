"""Observations in, outbox operations out: the sync model of DESIGN.md.

`observe()` takes one remote task as a side reports it and, in the caller's transaction:
links it (or recognises one of our own mirrors by its marker), merges it three ways against the
link's base, records history and conflicts, moves the base, and queues an outbox operation for
every member whose base now differs from the canonical value. The caller commits all of it at
once (with the watermark, for a poll), so a crash loses nothing and repeats nothing: observing
the same values again is a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, exists, insert, inspect, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from bridge import metrics
from bridge.engine import core
from bridge.engine.context import EngineContext
from bridge.engine.core import DEFAULTS
from bridge.engine.merge import contested, merge
from bridge.engine.routes import Member, Route
from bridge.model import Status, Values, as_utc, decode_values, encode, encode_values, new_id
from bridge.store import on_commit, search
from bridge.store.prepared import (
    any_of,
    attach,
    by_ids,
    copy_type,
    got,
    loaded_by,
    one_of,
    run,
    write_loaded,
)
from bridge.store.states import ConflictState, LinkState, OpKind, OpState, advance
from bridge.store.tables import ConflictRow, HistoryRow, LinkRow, OutboxRow, TaskRow, WatermarkRow
from connectors.base import Connector, ConnectorError, RemoteTask

log = logging.getLogger("taskbridge.sync")


@dataclass(frozen=True)
class Observation:
    """A remote task seen by side `member` of `route`, through `via` (poll, webhook, api).
    `parents`: remote ids on the member's connector -> the bridge tasks linked to them, read for
    a whole batch at once (`linked_parents`); observe looks up a parent it does not hold."""

    route: Route
    member: Member
    task: RemoteTask
    via: str
    parents: Mapping[str, str] | None = None


_LINK_BY_REMOTE = select(LinkRow).where(
    LinkRow.connector == bindparam("connector"), LinkRow.remote_id == bindparam("remote_id")
)


# Remote ids of one connector or several in one read: the pairs asked for are picked out of what
# it finds (the unique index on connector, remote_id serves both lists).
_LINKS_BY_REMOTES = select(LinkRow).where(
    any_of(LinkRow.connector, "connectors"),
    any_of(LinkRow.remote_id),
)
_PREFETCHED = "taskbridge.links_by_remote"  # session.info key: (connector, remote_id) -> LinkRow


async def links_holding(
    session: AsyncSession, wanted: Mapping[str, Iterable[str]]
) -> dict[tuple[str, str], LinkRow]:
    """(connector, remote id) -> the link holding it, for every connector's remote ids in `wanted`,
    in one read."""
    pairs = {(connector, remote_id) for connector, ids in wanted.items() for remote_id in ids}
    if not pairs:
        return {}
    params = {"connectors": sorted({c for c, _ in pairs}), "ids": sorted({r for _, r in pairs})}
    rows = await loaded_by(session, _LINKS_BY_REMOTES, params)
    return {
        (link.connector, link.remote_id): link
        for link in rows
        if link.remote_id is not None and (link.connector, link.remote_id) in pairs
    }


async def prefetch_links(session: AsyncSession, connector: str, remote_ids: Iterable[str]) -> None:
    """Load, in one read, the links a batch of observations of `connector` will look up, for
    `link_by_remote` in this session (a poll observes its listing ten tasks to a transaction)."""
    wanted = set(remote_ids)
    if len(wanted) < 2:
        return  # one lookup either way
    session.info.setdefault(_PREFETCHED, {}).update(await links_holding(session, {connector: wanted}))


async def link_by_remote(session: AsyncSession, connector: str, remote_id: str) -> LinkRow | None:
    link = session.info.get(_PREFETCHED, {}).get((connector, remote_id))
    # Only a link found by the prefetch is taken from it, and only while it still answers to
    # this key in the session (a link released or adopted meanwhile is looked up afresh); a key
    # it did not find may have been linked since, so that is read.
    if link is not None and link.connector == connector and link.remote_id == remote_id:
        state = inspect(link)
        if not (state.deleted or state.was_deleted or state.detached):
            return link
    found = await loaded_by(session, _LINK_BY_REMOTE, {"connector": connector, "remote_id": remote_id})
    return found[0] if found else None


class _Claimed(Protocol):
    """A link as the checks of what a side agreed read it: a LinkRow, or a row of its columns."""

    base: Any
    inflight: Any
    overwritten: Any


def link_claims(link: _Claimed) -> list[Values]:
    """The writes of ours that may show on the link's side (`core.with_claim`). A bare mapping
    (one claim, as before migration 0010) still reads."""
    raw = link.inflight
    if not raw:
        return []
    return [decode_values(claim) for claim in (raw if isinstance(raw, list) else [raw])]


def claim_write(conn: Connector, link: LinkRow, changes: Values) -> None:
    """Record on its link a write about to go out, as it will read back there, before it goes:
    the platform may report it before the write's outcome is recorded, or the outcome may never
    be (`core.agreed` then knows it for ours)."""
    link.inflight = claimed_inflight(conn, link, changes)


def claimed_inflight(conn: Connector, link: _Claimed, changes: Values) -> list[dict[str, Any]] | None:
    """`links.inflight` once a write of `changes` is claimed on the link (`claim_write`)."""
    claims = core.with_claim(link_claims(link), core.inflight_claims(conn, changes))
    return [encode_values(claim) for claim in claims] or None


def encode_overwritten(last: core.Overwritten) -> dict[str, Any]:
    """`links.overwritten` as stored (times in ISO form, values as the task's JSON holds them)."""
    return {
        "after": last.after.isoformat(),
        "until": last.until.isoformat(),
        "before": encode_values(last.before),
        "wrote": encode_values(last.wrote),
        "claims": [encode_values(claim) for claim in last.claims],
    }


def link_overwritten(link: _Claimed) -> core.Overwritten | None:
    """What our last update of the link's side replaced there (`links.overwritten`), if known."""
    raw = link.overwritten
    if not raw:
        return None
    try:
        return core.Overwritten(
            after=as_utc(datetime.fromisoformat(raw["after"])),
            until=as_utc(datetime.fromisoformat(raw["until"])),
            before=decode_values(raw["before"]),
            wrote=decode_values(raw["wrote"]),
            claims=[decode_values(claim) for claim in raw["claims"]],
        )
    except (KeyError, TypeError, ValueError):
        # A window kept by an earlier build without every key (a95c5f0 wrote no `wrote`):
        # nothing can be judged from it, and a poll must not fail on it at every interval.
        return None


def _replaced_edits(values: Values, reported_at: datetime | None, link: _Claimed) -> Values:
    """The edits a report older than the link's last write shows, which that write replaced
    (`core.overwritten_edits`): `needs_observing` and `observe` judge a stale report by it."""
    last = link_overwritten(link)
    if last is None:
        return {}
    return core.overwritten_edits(values, reported_at, last, decode_values(link.base))


def _agreed(values: Values, link: _Claimed) -> Values:
    return core.agreed(values, decode_values(link.base), link_claims(link))


# -- the hierarchy: links between remote parent ids and bridge tasks --------------------------------

MAX_DEPTH = 64  # ancestors followed up a hierarchy (platforms nest a few levels)
_loops_logged: set[tuple[str, str | None]] = set()  # (task, parent) refused as a loop, logged once


async def linked_parents(
    session: AsyncSession | AsyncConnection, route: str, connector: str, remote_ids: Iterable[str | None]
) -> dict[str, str]:
    """Remote id -> bridge task id, for the tasks among `remote_ids` linked on `connector` in
    `route` (one read for a batch: what a listing's parents translate to)."""
    wanted = sorted({r for r in remote_ids if r is not None})
    if not wanted:
        return {}
    rows = await run(session, _LINKED, {"route": route, "connector": connector, "ids": wanted})
    return {str(remote_id): task_id for remote_id, task_id in rows.all()}


# Core statements over the links' table, built once (bridge/store/prepared.py): a poll's every
# chunk and a webhook's every delivery read them.
_LINKS = LinkRow.__table__
_LINKED = select(_LINKS.c.remote_id, _LINKS.c.task_id).where(
    _LINKS.c.route == bindparam("route"),
    _LINKS.c.connector == bindparam("connector"),
    any_of(_LINKS.c.remote_id),
    one_of(_LINKS.c.state, (LinkState.ACTIVE, LinkState.CREATING)),
)
# What `needs_observing` reads of a link: enough to tell an unmoved side without loading it.
_AGREED_COLUMNS = select(
    _LINKS.c.remote_id,
    _LINKS.c.state,
    _LINKS.c.remote_updated_at,
    _LINKS.c.base,
    _LINKS.c.inflight,
    _LINKS.c.overwritten,
).where(_LINKS.c.connector == bindparam("connector"))
_AGREED = _AGREED_COLUMNS.where(any_of(_LINKS.c.remote_id))
# One task (a webhook's): an equality, without json_each's table of one value.
_AGREED_ONE = _AGREED_COLUMNS.where(_LINKS.c.remote_id == bindparam("id"))


async def _parents_for(
    session: AsyncSession,
    conn: Connector,
    route: Route,
    member: Member,
    rt: RemoteTask,
    given: Mapping[str, str] | None,
) -> Mapping[str, str] | None:
    """What `readable_values` translates this task's parent with: None when the side's parent is
    not synced; the batch's map when it holds the parent, else one read (a parent linked since
    the batch's read, e.g. observed just before in the same transaction)."""
    if not core.reads_parent(conn, route, member):
        return None
    if rt.parent_id is None:
        return {}
    if given is not None and rt.parent_id in given:
        return given
    return await linked_parents(session, route.name, member.connector, [rt.parent_id])


@dataclass
class Hierarchy:
    """What writing `parent` to targets needs, loaded by `load_hierarchy`: the canonical parent of
    each task loaded, and each target's links of those tasks (their ids there, their parents
    there as last agreed)."""

    parent_of: dict[str, str | None]
    links: dict[tuple[str, str], dict[str, LinkRow]]
    _remote_ids: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    _parent_of_there: dict[tuple[str, str], dict[str, str | None]] = field(default_factory=dict)

    def remote_ids(self, target: tuple[str, str]) -> dict[str, str]:
        """Task id -> its copy's id on `target` (copies whose create has landed)."""
        if target not in self._remote_ids:
            self._remote_ids[target] = {
                t: link.remote_id for t, link in self.links.get(target, {}).items() if link.remote_id
            }
        return self._remote_ids[target]

    def parent_of_there(self, target: tuple[str, str]) -> dict[str, str | None]:
        """Task id -> its parent on `target` as last agreed (the link's base)."""
        if target not in self._parent_of_there:
            self._parent_of_there[target] = {
                t: link.base.get("parent")
                for t, link in self.links.get(target, {}).items()
                if "parent" in (link.base or {})
            }
        return self._parent_of_there[target]

    def hold(self, task_id: str, parent: str | None, target: tuple[str, str]) -> str | None:
        """core.parent_hold for one task on one target."""
        return core.parent_hold(
            task_id,
            parent,
            core.translate_parent(parent, self.remote_ids(target)),
            self.parent_of,
            self.parent_of_there(target),
        )

    def remote_parent(self, parent: str | None, target: tuple[str, str]) -> str | None:
        """The parent's id on `target` (only for a parent `hold` lets through)."""
        there = core.translate_parent(parent, self.remote_ids(target))
        return None if there is core.UNLINKED else there


async def load_hierarchy(
    session: AsyncSession, starts: Iterable[str | None], targets: Iterable[tuple[str, str]] = ()
) -> Hierarchy:
    """The canonical parents of `starts` and of their ancestors, and on each target (connector,
    scope) the links of those tasks and of their ancestors there: two reads per level, for a
    whole batch of tasks (a hierarchy is a few levels deep)."""
    targets = set(targets)
    connectors = sorted({c for c, _ in targets})
    parent_of: dict[str, str | None] = {}
    links: dict[tuple[str, str], dict[str, LinkRow]] = {t: {} for t in targets}
    frontier = {s for s in starts if s is not None}
    seen: set[str] = set()
    for _ in range(MAX_DEPTH):
        if not frontier:
            break
        seen |= frontier
        following: set[str] = set()
        ids = sorted(frontier)
        for task_id, data in (
            await session.execute(select(TaskRow.id, TaskRow.data).where(TaskRow.id.in_(ids)))
        ).all():
            parent = (data or {}).get("parent")
            parent_of[task_id] = parent
            if parent is not None:
                following.add(parent)
        if connectors:
            for link in (
                await session.scalars(
                    select(LinkRow).where(
                        LinkRow.task_id.in_(ids),
                        LinkRow.connector.in_(connectors),
                        one_of(LinkRow.state, (LinkState.ACTIVE, LinkState.CREATING)),
                    )
                )
            ).all():
                key = (link.connector, link.scope)
                if key in links:
                    links[key][link.task_id] = link
                    parent = (link.base or {}).get("parent")
                    if parent is not None:
                        following.add(parent)
        frontier = following - seen
    return Hierarchy(parent_of, links)


async def children_of(
    session: AsyncSession, route: str, task_ids: Iterable[str], *, depth: int = 1
) -> list[TaskRow]:
    """The live tasks of `route` whose canonical parent is one of `task_ids` (and, `depth` > 1,
    their children, and so on): one read per level. Run only when a route syncs `parent` and a
    copy of a task that may have children landed somewhere."""
    out: list[TaskRow] = []
    frontier = set(task_ids)
    seen = set(frontier)
    for _ in range(depth):
        if not frontier:
            break
        rows = (
            await session.scalars(
                select(TaskRow).where(
                    TaskRow.route == route,
                    TaskRow.deleted_at.is_(None),
                    TaskRow.data["parent"].as_string().in_(sorted(frontier)),
                )
            )
        ).all()
        fresh = [row for row in rows if row.id not in seen]
        out.extend(fresh)
        seen |= {row.id for row in fresh}
        frontier = {row.id for row in fresh}
    return out


def log_loop_once(task_id: str, parent: str | None, where: str) -> None:
    """A parent refused as a loop is logged once per task and parent (a held write is re-checked
    every time its task is queued)."""
    if (task_id, parent) in _loops_logged:
        return
    if len(_loops_logged) > 10_000:
        _loops_logged.clear()
    _loops_logged.add((task_id, parent))
    log.warning(
        "task %s: parent %s refused on %s: it would make the task its own ancestor (not written)",
        task_id,
        parent,
        where,
        extra={"task": task_id},
    )


async def needs_observing(
    ctx: EngineContext,
    session: AsyncSession | AsyncConnection,
    route: Route,
    member: Member,
    tasks: Sequence[RemoteTask],
) -> list[RemoteTask]:
    """The tasks of a listing that `observe` would act on. The others (an active link showing what
    it last agreed, or a report older than one applied) it would leave untouched; sorting them out
    here takes one read of their links instead of a write transaction per task, which a poll of an
    unchanged scope (most polls) would otherwise spend."""
    if not member.reads_any or not tasks:
        return []
    conn = ctx.connectors[member.connector]
    ids = sorted({rt.remote_id for rt in tasks})
    found = await (
        run(session, _AGREED_ONE, {"connector": member.connector, "id": ids[0]})
        if len(ids) == 1
        else run(session, _AGREED, {"connector": member.connector, "ids": ids})
    )
    links = {link.remote_id: link for link in found.all()}
    parents: dict[str, str] | None = None
    if core.reads_parent(conn, route, member):
        parents = await linked_parents(session, route.name, member.connector, (rt.parent_id for rt in tasks))
    listed = {rt.remote_id for rt in tasks}
    out = []
    for rt in tasks:
        link = links.get(rt.remote_id)
        if link is not None and link.state == LinkState.ACTIVE:
            if core.older_than_applied(rt.updated_at, link.remote_updated_at):
                if link.overwritten and _replaced_edits(
                    core.readable_values(conn, route, member, rt, parents)[0], rt.updated_at, link
                ):
                    out.append(rt)  # an edit there that our write replaced
                continue
            values, _ = core.readable_values(conn, route, member, rt, parents)
            # A parent new in this very listing is linked when it is observed, just before.
            new_parent = parents is not None and rt.parent_id in listed and rt.parent_id not in parents
            if not new_parent and core.unmoved(values, _agreed(values, link)):
                continue
        out.append(rt)
    return out


# What `contested_by_time` reads of a task's active link on a member: what the two sides agreed,
# our writes that may show there, and the bridge's values now.
_TASKS = TaskRow.__table__
_CONTESTED = (
    select(_LINKS.c.remote_id, _LINKS.c.base, _LINKS.c.inflight, _LINKS.c.overwritten, _TASKS.c.data)
    .join(_TASKS, _TASKS.c.id == _LINKS.c.task_id)
    .where(
        _LINKS.c.connector == bindparam("connector"),
        any_of(_LINKS.c.remote_id),
        _LINKS.c.state == LinkState.ACTIVE,
    )
)


async def contested_by_time(
    ctx: EngineContext,
    db: AsyncSession | AsyncConnection,
    route: Route,
    member: Member,
    tasks: Sequence[RemoteTask],
) -> list[RemoteTask]:
    """Of `tasks` (reported changed by `member`), those holding a field that both sides changed
    since they last agreed: under `newest`, which change came last decides it. The platform's
    `updated_at` dates only its latest change of any field, so such a task is dated field by
    field first where the connector can (`date_contested`)."""
    return (await _judged(ctx, db, route, member, tasks))[0]


async def _judged(
    ctx: EngineContext,
    db: AsyncSession | AsyncConnection,
    route: Route,
    member: Member,
    tasks: Sequence[RemoteTask],
) -> tuple[list[RemoteTask], set[str]]:
    """(`contested_by_time`, the remote ids of the tasks whose `updated_at` dates all they
    moved: new to the bridge, or one field moved since the sides agreed), in one read."""
    conn = ctx.connectors[member.connector]
    if not tasks:
        return [], set()
    found = {
        row.remote_id: row
        for row in await run(
            db, _CONTESTED, {"connector": member.connector, "ids": sorted({rt.remote_id for rt in tasks})}
        )
    }
    out = []
    plain = set()
    for rt in tasks:
        row = found.get(rt.remote_id)
        if row is None:
            plain.add(rt.remote_id)
            continue  # new to the bridge, or not active: nothing of it to contest
        values, _ = core.readable_values(conn, route, member, rt)
        agreed = core.agreed(values, decode_values(row.base), link_claims(row))
        if contested(
            values,
            agreed,
            decode_values(row.data),
            roundtrip=lambda name, value: core.side_roundtrip(conn, name, value),
        ):
            out.append(rt)
        elif len(core.moved(values, agreed)) <= 1:
            plain.add(rt.remote_id)
    return out, plain


async def date_contested(
    ctx: EngineContext, route: Route, member: Member, tasks: Sequence[RemoteTask]
) -> list[RemoteTask]:
    """`tasks`, each one holding a contested field (`contested_by_time`) with the times its
    platform gives each field (`Connector.field_times`), for a connector that dates them; read
    before the observation's transaction, so no request to a platform holds the store's write
    turn. A task whose times cannot be read is merged by its `updated_at`, as without them.
    Only a route under `newest` merges by time: any other is left as it is, without a read."""
    conn = ctx.connectors[member.connector]
    if not conn.capabilities.field_history or route.conflict != "newest" or not tasks:
        return list(tasks)
    async with ctx.store.reading() as db:
        contested_now, plain = await _judged(ctx, db, route, member, tasks)
    undated = {rt.remote_id for rt in contested_now}
    out = []
    for rt in tasks:
        if rt.remote_id in plain and rt.field_times is None:
            # Its `updated_at` dates all it moved, however the bridge's values change before its
            # observation: no field times to read, now or then (`undated_contested`).
            rt = replace(rt, field_times={})
        elif rt.remote_id in undated:
            try:
                rt = replace(rt, field_times=await conn.field_times(rt.scope, rt.remote_id))
            except ConnectorError as exc:
                log.info(
                    "%s task %s: its fields' times could not be read (%s); merged by its updated_at",
                    member.connector,
                    rt.remote_id,
                    exc,
                )
        out.append(rt)
    return out


async def undated_contested(
    ctx: EngineContext,
    db: AsyncSession | AsyncConnection,
    route: Route,
    member: Member,
    tasks: Sequence[RemoteTask],
) -> set[str]:
    """Remote ids of `tasks` that hold a contested field now and have no field times, where the
    connector could give them. `date_contested` judged them before the observation's
    transaction; another side's observation since may have changed the bridge's value of a
    field (the drill lost a title so, 2026-12-06: Vortask's older title dated by its later due
    date, over the PostHog title observed in between), so the transaction asks this again.
    A task `date_contested` found dated by its `updated_at` (field_times empty) is not asked."""
    conn = ctx.connectors[member.connector]
    if not conn.capabilities.field_history or route.conflict != "newest":
        return set()
    bare = [rt for rt in tasks if rt.field_times is None]
    return {rt.remote_id for rt in await contested_by_time(ctx, db, route, member, bare)}


# A mirror our create made, reported before that create's outcome is recorded: the marked task's
# link on the member has no remote id yet, and no link holds the reported one.
_other = LinkRow.__table__.alias("held")
_CREATING = select(_LINKS.c.id).where(
    _LINKS.c.task_id == bindparam("task"),
    _LINKS.c.connector == bindparam("connector"),
    _LINKS.c.scope == bindparam("scope"),
    _LINKS.c.remote_id.is_(None),
    ~exists().where(_other.c.connector == bindparam("connector"), _other.c.remote_id == bindparam("id")),
)


async def our_create_coming_back(
    db: AsyncSession | AsyncConnection, route: Route, member: Member, rt: RemoteTask
) -> bool:
    """Whether `rt` is a mirror our create just made, reported before the create's outcome is
    recorded: it carries the marker of a task whose link on this member waits for its remote id,
    and no link holds its id. Observing it would only link it early (`_adopt_mirror`), which
    recording the create's outcome does too; a create whose outcome is lost looks for its marker
    when it is tried again, and a poll adopts what a create that parked made anyway."""
    if "description" not in rt.values or not member.reads_any or rt.deleted:
        return False
    _, marker_id = route.marker.extract(rt.values["description"] or "")
    if marker_id is None:
        return False
    params = {"task": marker_id, "connector": member.connector, "scope": member.scope, "id": rt.remote_id}
    return (await run(db, _CREATING, params)).first() is not None


async def observe(ctx: EngineContext, session: AsyncSession, obs: Observation) -> bool:
    """Apply one observation. Returns True when it changed a canonical task."""
    route, member, rt = obs.route, obs.member, obs.task
    if not member.reads_any:
        return False
    conn = ctx.connectors[member.connector]
    parents = await _parents_for(session, conn, route, member, rt, obs.parents)
    values, marker_id = core.readable_values(conn, route, member, rt, parents)
    link = await link_by_remote(session, member.connector, rt.remote_id)
    now = ctx.now()
    if link is not None and not core.same_remote_task(
        link.task_id, link.remote_created_at, marker_id, rt.created_at
    ):
        await release_reused(ctx, session, link, member.connector)
        link = None
    if link is not None and link.remote_created_at is None:
        link.remote_created_at = rt.created_at  # links made before the column learn it here
    if link is None:
        if marker_id is not None and await _adopt_mirror(session, member, rt, marker_id, values, now):
            return False
        if (member.connector, rt.remote_id) in ctx.held_apart:
            return False  # ambiguous at matching: a person links it (or it stays alone)
        if rt.deleted or not route.matches(values):
            return False
        if route.initial in ("new-only", "match-only") and not await _is_new(ctx, session, member, rt):
            return False
        await _create_canonical(ctx, session, obs, values, now)
        metrics.changes_detected.labels(member.connector, obs.via).inc()
        return True
    if link.state == LinkState.CREATING:
        # The create is still in flight on this link, but the platform already shows the task.
        link.state = advance(link.state, LinkState.ACTIVE)
    if link.state == LinkState.ACTIVE and core.older_than_applied(rt.updated_at, link.remote_updated_at):
        lost = _replaced_edits(values, rt.updated_at, link)
        if not lost:
            return False  # an older report than one already applied (a late webhook delivery)
        return await _overwritten_edit(ctx, session, obs, link, lost, now)
    if link.state == LinkState.ACTIVE and core.unmoved(values, _agreed(values, link)):
        return False  # the checks below, made before the task is read: an echo of ours costs one read
    task = await got(session, TaskRow, link.task_id)
    if task is None or task.deleted_at is not None:
        return False
    if link.state in (LinkState.UNLINKED, LinkState.GONE):
        if not route.matches(values):
            return False
        await _relink(session, task, now)
    if core.older_than_applied(rt.updated_at, link.remote_updated_at):
        return False  # an older report than one already applied (a late webhook delivery)
    base = _agreed(values, link)
    if core.unmoved(values, base):
        return False  # nothing moved on this side: the common case, and how echoes die
    moved = {"base": encode_values({**base, **values}), "remote_updated_at": rt.updated_at, "updated_at": now}
    await write_loaded(session, link, moved)
    return await _merge_report(ctx, session, obs, task, values, base, now)


async def _overwritten_edit(
    ctx: EngineContext,
    session: AsyncSession,
    obs: Observation,
    link: LinkRow,
    lost: Values,
    now: datetime,
) -> bool:
    """A report from before our last write to its side landed, showing an edit there that the
    write replaced (`core.overwritten_edits`). It is merged as the edit it was, at its own time,
    against what the side agreed before the write; where it wins, every side gets it written,
    this one too: its base stays what it shows now (our write)."""
    task = await got(session, TaskRow, link.task_id)
    reported_at = obs.task.updated_at
    last = link_overwritten(link)
    if task is None or task.deleted_at is not None or reported_at is None or last is None:
        return False
    before = {**decode_values(link.base), **last.before}
    # What the window held up to this report is merged now: an older report from it, or this
    # one again, is stale (it must not undo what this merge, or a person's resolution, decides).
    link.overwritten = encode_overwritten(replace(last, after=reported_at))
    log.warning(
        "an edit of %s on %s made at %s was replaced by our write at %s; merging it now",
        ", ".join(sorted(lost)),
        obs.member.connector,
        reported_at.isoformat(),
        last.until.isoformat(),
        extra={"task": task.id},
    )
    return await _merge_report(ctx, session, obs, task, {**before, **lost}, before, now)


async def _merge_report(
    ctx: EngineContext,
    session: AsyncSession,
    obs: Observation,
    task: TaskRow,
    values: Values,
    base: Values,
    now: datetime,
) -> bool:
    """Merge what a side reports (`values`, against what it had agreed: `base`) into the
    canonical task, and queue the writes that follow. True when the canonical task changed."""
    route, member, rt = obs.route, obs.member, obs.task
    conn = ctx.connectors[member.connector]
    canonical = decode_values(task.data)
    result = merge(
        values,
        base,
        canonical,
        roundtrip=lambda name, value: core.side_roundtrip(conn, name, value),
        policy=route.conflict,
        side_is_preferred=route.prefer == member.connector,
        side_updated_at=rt.updated_at,
        canonical_updated_at=lambda name: field_time(task, name),
        side_field_times=rt.field_times,
    )
    new_parent = result.changes.get("parent")
    if new_parent is not None:
        ancestors = await load_hierarchy(session, [new_parent])
        if core.closes_loop(task.id, new_parent, ancestors.parent_of):
            # Refused: the bridge's hierarchy stays a forest, and this side is written back.
            del result.changes["parent"]
            result.overruled.add("parent")
            log_loop_once(task.id, new_parent, member.connector)
    for conflict in result.conflicts:
        await _open_conflict(
            session, route, task, member, conflict.field, conflict.canonical, conflict.remote, now
        )
    if result.conflicts:
        metrics.conflicts_detected.labels(route.name, route.conflict).inc(len(result.conflicts))
    elif result.overruled:
        metrics.conflicts_detected.labels(route.name, route.conflict).inc(len(result.overruled))
    changed = bool(result.changes)
    if changed:
        await apply_changes(
            session,
            task,
            canonical,
            result.changes,
            source=member.connector,
            via=obs.via,
            now=now,
            remote_time=rt.updated_at,
            field_times=rt.field_times,
        )
        metrics.changes_detected.labels(member.connector, obs.via).inc()
        if not route.matches(decode_values(task.data)):
            await unlink_task(session, task, now, reason="left the route's filter")
            return True
    # An update carrying this change is due since the platform made it: a poll that finds a
    # burst of changes gets the oldest written first, whatever order the listing gave them in.
    await queue_updates(
        ctx,
        session,
        route,
        task,
        observed_at=now,
        due=rt.updated_at if changed else None,
    )
    return changed


def field_time(task: TaskRow, name: str) -> datetime | None:
    """When the canonical `name` last changed: an edit of another field since then doesn't make
    this one newer (the `newest` policy compares an edit with the value it competes with)."""
    times = task.field_times or {}
    stamp = times.get(name) or times.get("*")
    return as_utc(datetime.fromisoformat(stamp)) if stamp else task.updated_at


async def apply_changes(
    session: AsyncSession,
    task: TaskRow,
    canonical: Values,
    changes: Mapping[str, Any],
    *,
    source: str,
    via: str,
    now: datetime,
    remote_time: datetime | None = None,
    field_times: Mapping[str, datetime] | None = None,
) -> None:
    """Write changes to the canonical task with a history row for each field."""
    new = {**canonical, **changes}
    history = [
        {
            "task_id": task.id,
            "field": name,
            "old": {"v": encode(name, canonical.get(name))},
            "new": {"v": encode(name, value)},
            "source": source,
            "via": via,
            "at": now,
        }
        for name, value in changes.items()
    ]
    # The remote's own time orders edits for the `newest` policy; never let it go backwards.
    # A side that dates its fields (`RemoteTask.field_times`) gives each change its own time.
    stamp = remote_time or now
    times = dict(task.field_times or {})
    for name in changes:
        times[name] = (field_times or {}).get(name, stamp).isoformat()
    data = encode_values(new)
    updated_at = max(stamp, task.updated_at) if task.updated_at else stamp
    values = {
        "data": data,
        "title": new.get("title", ""),
        "status": str(new.get("status", "todo")),
        "updated_at": updated_at,
        "field_times": times,
        "version": (task.version or 0) + 1,
    }
    indexed = task.data
    if not await write_loaded(session, task, {**values, "priority": search.priority_of(data)}):
        session.add_all(HistoryRow(**row) for row in history)  # with the task, at the flush
        return
    # Written now (a stored task with nothing else pending): its history and index as Core
    # statements too, the index as the flush's listeners would keep it.
    if history:
        await run(session, _ADD_HISTORY, history)
    for statement, params in search.reindex(task.id, indexed, data, updated_at):
        await run(session, statement, params)


_ADD_HISTORY = insert(HistoryRow.__table__)


async def queue_updates(
    ctx: EngineContext,
    session: AsyncSession,
    route: Route,
    task: TaskRow,
    *,
    observed_at: datetime,
    due: datetime | None = None,
) -> int:
    """Queue an update for every member whose base differs from the canonical values (see
    `queue_updates_many`); `due`: when those updates fell due (the change's time)."""
    return await queue_updates_many(
        ctx, session, [(route, task, observed_at)], due={task.id: due} if due is not None else None
    )


# Read as rows, not loaded as objects: the re-check only reads them (through the ORM's columns,
# so that what the session has pending is flushed first, as a load would).
_LIVE_LINKS_OF = select(*(getattr(LinkRow, c.key) for c in LinkRow.__table__.columns)).where(
    any_of(LinkRow.task_id),
    one_of(LinkRow.state, (LinkState.ACTIVE, LinkState.CREATING)),
)
_WAITING_UPDATES_OF = select(OutboxRow).where(
    any_of(OutboxRow.task_id),
    OutboxRow.op == OpKind.UPDATE,
    OutboxRow.state == OpState.PENDING,
)


async def queue_updates_many(
    ctx: EngineContext,
    session: AsyncSession,
    items: Sequence[tuple[Route, TaskRow, datetime]],
    *,
    parked: Collection[int] = (),
    due: Mapping[str, datetime] | None = None,
) -> int:
    """For each (route, task, observed_at): queue an update for every member whose base differs
    from the canonical values. An update already waiting (unclaimed) for a link absorbs the new
    fields instead of adding a second one; behind an update being written (claimed) a new one is
    queued, which plans from what is true when it is claimed. Four reads however many tasks
    (and, when a parent is among the fields to write, two per level of the hierarchy:
    `load_hierarchy`): the outbox records a batch
    of finished writes in one transaction, and each may leave its task needing more. `parked`:
    links whose write was just parked; nothing more is queued there, or one change would park
    once per write that lands beside it (a person's retry writes what is true by then). `due`:
    when a task's new updates fell due (its change's time, `enqueue`); an update already waiting
    keeps its own time (it may be backing off)."""
    if not items:
        return 0
    task_ids = list({task.id for _, task, _ in items})
    links_of: dict[str, list[Any]] = {}  # rows of LinkRow's columns
    for link in (await run(session, _LIVE_LINKS_OF, by_ids(task_ids))).all():
        links_of.setdefault(link.task_id, []).append(link)
    held = await held_fields_many(session, task_ids)
    # An update being written (claimed) carries what was planned at its claim; a change observed
    # since is queued behind it. Its landing re-checks the task as well (_succeed), but on
    # PostgreSQL that re-check and this transaction can run side by side, neither seeing the
    # other's work: left to the re-check alone, such a change was written nowhere (a test over
    # the fakes lost a due date this way, 2026-12-06). The update behind plans nothing, and
    # sends nothing, where the write before it already carried the change.
    waiting = {
        row.link_id: row
        for row in await loaded_by(session, _WAITING_UPDATES_OF, by_ids(task_ids))
        if row.id > ctx.sealed_ops
    }
    done: set[str] = set()
    stale: list[tuple[TaskRow, Any, datetime, list[str]]] = []
    for route, task, observed_at in items:
        if task.id in done:
            continue
        done.add(task.id)
        canonical = decode_values(task.data)
        for link in links_of.get(task.id, []):
            member = route.member(link.connector, link.scope)
            if member is None or link.id in parked or link.state == LinkState.CREATING:
                continue  # a create in flight writes everything once it lands
            conn = ctx.connectors[member.connector]
            fields = core.stale_fields(
                conn,
                route,
                member,
                canonical,
                decode_values(link.base),
                held.get(task.id, ()),
                link_claims(link),
            )
            if fields:
                stale.append((task, link, observed_at, fields))
    if any("parent" in fields for *_, fields in stale):
        # A parent is written only where its copy exists and no loop comes of it (parent_hold);
        # what waits is queued again when the parent's copy (or move) lands there.
        moving = [(task, link, fields) for task, link, _, fields in stale if "parent" in fields]
        hierarchy = await load_hierarchy(
            session,
            (task.data.get("parent") for task, _, _ in moving),
            {(link.connector, link.scope) for _, link, _ in moving},
        )
        for task, link, fields in moving:
            parent = task.data.get("parent")
            hold = hierarchy.hold(task.id, parent, (link.connector, link.scope))
            if hold == "loop":
                log_loop_once(task.id, parent, link.connector)
            if hold is not None:
                fields.remove("parent")
    new_ops: list[dict[str, Any]] = []
    now = ctx.now()
    for task, link, observed_at, fields in stale:
        if not fields:
            continue
        row = waiting.get(link.id)
        if row is not None:
            row.payload = {"fields": sorted(set(row.payload.get("fields", [])) | set(fields))}
            row.observed_at = min(row.observed_at, observed_at)
            continue
        new_ops.append(
            op_values(
                task,
                link,
                OpKind.UPDATE,
                {"fields": sorted(fields)},
                observed_at=observed_at,
                now=now,
                due=due.get(task.id) if due else None,
            )
        )
    if new_ops:
        # One statement for them all: added as ORM rows, they cost the flush twice as much.
        await run(session, _NEW_OPS, new_ops)
        on_commit(session, ctx.outbox_ready.set)
    return len(new_ops)


async def held_fields(session: AsyncSession, task_id: str) -> set[str]:
    return (await held_fields_many(session, [task_id])).get(task_id, set())


_OPEN_CONFLICT_FIELDS = select(ConflictRow.task_id, ConflictRow.field).where(
    any_of(ConflictRow.task_id), ConflictRow.state == ConflictState.OPEN
)


async def held_fields_many(session: AsyncSession, task_ids: Sequence[str]) -> dict[str, set[str]]:
    """The fields of each task that an open conflict holds (written only once it is resolved)."""
    out: dict[str, set[str]] = {}
    if not task_ids:
        return out
    rows = await run(session, _OPEN_CONFLICT_FIELDS, by_ids(task_ids))
    for task_id, name in rows.all():
        out.setdefault(task_id, set()).add(name)
    return out


def op_values(
    task: TaskRow,
    link: LinkRow,
    op: OpKind,
    payload: dict[str, Any],
    *,
    observed_at: datetime,
    now: datetime,
    comment_id: str | None = None,
    due: datetime | None = None,
) -> dict[str, Any]:
    """The columns of a new operation, due now, or since `due` when that is earlier: the claim
    takes the longest due first, so an operation carrying an older change goes ahead of newer
    ones."""
    if due is None or as_utc(due) >= as_utc(now):
        due = now
    return {
        "task_id": task.id,
        "link_id": link.id,
        "comment_id": comment_id,
        "route": task.route,
        "connector": link.connector,
        "op": op,
        "payload": payload,
        "state": OpState.PENDING,
        "attempts": 0,
        "next_attempt_at": due,
        "observed_at": observed_at,
        "created_at": now,
    }


_NEW_OPS = insert(OutboxRow.__table__)


def enqueue(session: AsyncSession, values: dict[str, Any]) -> OutboxRow:
    """A new operation (its columns from `op_values`) added as an ORM row, for the callers that
    queue a few beside other ORM work; the hot paths insert many at once with `_NEW_OPS`."""
    row = OutboxRow(**values)
    session.add(row)
    return row


async def release_reused(ctx: EngineContext, session: AsyncSession, link: LinkRow, source: str) -> None:
    """The platform now uses this link's remote id for another task: the task the link pointed at
    is gone from there (not deleted: nothing says so), and the id is free for the new one."""
    log.warning(
        "%s: id %s now names another task; the link of %s to it is closed (nothing renamed or deleted)",
        link.connector,
        link.remote_id,
        link.task_id,
    )
    if link.state != LinkState.GONE:
        link.state = advance(link.state, LinkState.GONE)
    session.add(
        HistoryRow(
            task_id=link.task_id,
            field="*",
            old={"v": link.remote_id},
            new={"v": "remote id reused for another task"},
            source=source,
            via="sync",
            at=ctx.now(),
        )
    )
    link.remote_id = None
    link.inflight = None
    link.overwritten = None
    link.updated_at = ctx.now()
    await session.flush()  # the id is free before anything links it again


async def _adopt_mirror(
    session: AsyncSession, member: Member, rt: RemoteTask, marker_id: str, values: Values, now: datetime
) -> bool:
    """A new remote task carrying our marker is a mirror whose create hasn't committed yet (or
    whose commit was lost in a crash): link it instead of taking it for a new task."""
    link = await session.scalar(
        select(LinkRow).where(
            LinkRow.task_id == marker_id, LinkRow.connector == member.connector, LinkRow.scope == member.scope
        )
    )
    if link is None:
        return False
    if link.remote_id is not None and link.remote_id != rt.remote_id:
        log.warning(
            "%s: task %s carries the marker of %s, which is already linked to %s; ignoring it",
            member.connector,
            rt.remote_id,
            marker_id,
            link.remote_id,
        )
        return True
    adopted = {
        "remote_id": rt.remote_id,
        "state": advance(link.state, LinkState.ACTIVE),
        "base": encode_values(values),
        "remote_updated_at": rt.updated_at,
        "remote_created_at": rt.created_at,
        "remote_url": rt.url,
        "content_hash": rt.content_hash,
        "updated_at": now,
    }
    # Stored now: a child observed next in the batch looks its parent's link up by remote id
    # with a Core read, which no flush precedes.
    if not await write_loaded(session, link, adopted):
        await session.flush()
    return True


async def _is_new(ctx: EngineContext, session: AsyncSession, member: Member, rt: RemoteTask) -> bool:
    """Under `initial: new-only` (or `match-only`), whether a task appeared after the member's
    first poll."""
    started = await first_seen(session, member)
    if started is None:
        return False  # the first poll is the baseline: what it sees existed before us
    # A task created before the first listing was fetched existed before the route; one created
    # since is new. (Clock skew between the platform and us blurs the seconds around that line.)
    created = rt.created_at or rt.updated_at
    return created is None or created >= started


async def _create_canonical(
    ctx: EngineContext, session: AsyncSession, obs: Observation, values: Values, now: datetime
) -> TaskRow:
    route, member, rt = obs.route, obs.member, obs.task
    task = await new_task(
        session, route, values, source=member.connector, via=obs.via, now=now, updated_at=rt.updated_at
    )
    # A Core insert, as create_mirrors' links: later statements of this transaction (a child
    # observed next in the batch looking up its parent's link) find it without a flush.
    await run(session, _NEW_LINK, active_link_values(route, member, task.id, rt, values, now, mirror=False))
    await create_mirrors(ctx, session, route, task, exclude=member, observed_at=now)
    return task


def active_link(
    route: Route, member: Member, task_id: str, rt: RemoteTask, values: Values, now: datetime, *, mirror: bool
) -> LinkRow:
    """A link, active, of `task_id` to the remote task `rt` that `member` reports as `values`
    (which become the link's base): what an observation, a re-adoption and a match all make.
    The last two link many copies at once, read before any had a link: `link_parents` adds their
    parents once all are made."""
    return LinkRow(**active_link_values(route, member, task_id, rt, values, now, mirror=mirror))


def active_link_values(
    route: Route, member: Member, task_id: str, rt: RemoteTask, values: Values, now: datetime, *, mirror: bool
) -> dict[str, Any]:
    """`active_link`'s columns (`link_values`)."""
    return link_values(
        route, member, task_id, now, state=LinkState.ACTIVE, base=encode_values(values), mirror=mirror, rt=rt
    )


def link_values(
    route: Route,
    member: Member,
    task_id: str,
    now: datetime,
    *,
    state: LinkState,
    base: dict[str, Any],
    mirror: bool,
    rt: RemoteTask | None = None,
) -> dict[str, Any]:
    """Every column of a new link (a Core insert of them needs no defaults); without `rt`, a
    mirror's link before its create lands: nothing of the remote task known yet."""
    return {
        "task_id": task_id,
        "route": route.name,
        "connector": member.connector,
        "scope": member.scope,
        "remote_id": rt.remote_id if rt else None,
        "state": state,
        "base": base,
        "remote_updated_at": rt.updated_at if rt else None,
        "remote_created_at": rt.created_at if rt else None,
        "content_hash": rt.content_hash if rt else None,
        "remote_url": rt.url if rt else None,
        "is_mirror": mirror,
        "inflight": None,
        "overwritten": None,
        "created_at": now,
        "updated_at": now,
    }


class SeenCopy(Protocol):
    """A remote task a member reports, about to be linked (re-adoption's and matching's `Copy`)."""

    @property
    def member(self) -> Member: ...

    @property
    def task(self) -> RemoteTask: ...


async def link_parents(
    ctx: EngineContext,
    session: AsyncSession,
    route: Route,
    linked: Sequence[tuple[TaskRow, Sequence[SeenCopy]]],
    *,
    source: str,
) -> int:
    """The hierarchy of tasks just linked, all at once, to copies that already exist (re-adoption,
    matching): their links were made (`active_link`) from values read before any task had a
    link, so with no parent; once all of them are, each copy's remote parent translates to the
    bridge task linked to it (`core.translate_parent`). Each link's base takes what its side
    reports, so a side already nesting the task as we do is not written; the canonical parent is
    the copies' newest report (`core.adopted_parent`), refused where copies disagree into a loop
    (`core.acyclic_parents`: those sides are written back). Call it after the links are added and
    before `queue_updates_many`, which then writes the parent where a side differs. Two reads per
    connector that nests, and one per level of the parents' ancestors; nothing when the route
    does not sync `parent`. Returns how many tasks got a parent."""
    if "parent" not in route.fields or not linked:
        return 0
    reading = {
        copy.member.key
        for _, copies in linked
        for copy in copies
        if core.reads_parent(ctx.connectors[copy.member.connector], route, copy.member)
    }
    if not reading:
        return 0
    await session.flush()  # the links just added are what the parents translate through
    wanted: dict[str, set[str]] = {}
    for _, copies in linked:
        for copy in copies:
            if copy.member.key in reading and copy.task.parent_id is not None:
                wanted.setdefault(copy.member.connector, set()).add(copy.task.parent_id)
    ids = {c: await linked_parents(session, route.name, c, remote) for c, remote in wanted.items()}
    links = {
        (link.connector, link.remote_id): link
        for link in (
            await session.scalars(
                select(LinkRow).where(
                    LinkRow.task_id.in_([task.id for task, _ in linked]),
                    LinkRow.connector.in_(sorted({c for c, _ in reading})),
                )
            )
        ).all()
    }
    chosen: list[tuple[TaskRow, str, datetime | None]] = []
    for task, copies in linked:
        reports: list[tuple[datetime | None, Any]] = []
        for copy in copies:
            if copy.member.key not in reading:
                continue
            parent = core.translate_parent(copy.task.parent_id, ids.get(copy.member.connector, {}))
            reports.append((copy.task.updated_at, parent))
            link = links.get((copy.member.connector, copy.task.remote_id))
            if link is not None and parent is not core.UNLINKED:
                # a new dict: a JSON column does not see a change made in place
                link.base = {**(link.base or {}), "parent": parent}
        parent, at = core.adopted_parent(reports)
        if parent is not core.NO_CLAIM and parent is not None and parent != task.data.get("parent"):
            chosen.append((task, parent, at))
    if not chosen:
        return 0
    known = await load_hierarchy(session, [parent for _, parent, _ in chosen])
    taken, refused = core.acyclic_parents([(task.id, parent) for task, parent, _ in chosen], known.parent_of)
    refused_ids = set(refused)
    for task, parent, at in chosen:
        if task.id in refused_ids:
            log_loop_once(task.id, parent, source)
            continue
        canonical = decode_values(task.data)
        await apply_changes(
            session,
            task,
            canonical,
            {"parent": parent},
            source=source,
            via=source,
            now=ctx.now(),
            remote_time=at,
        )
    return len(taken)


async def new_task(
    session: AsyncSession,
    route: Route,
    values: Values,
    *,
    source: str,
    via: str,
    now: datetime,
    updated_at: datetime | None = None,
    task_id: str | None = None,
) -> TaskRow:
    """A new canonical task (defaults for what `values` leaves out) with its "created" history row.
    `task_id` is given only to take back a task under the id its mirrors' markers name."""
    canonical = {**DEFAULTS, **values}
    data = encode_values(canonical)
    stamp = updated_at or now
    row = {
        "id": task_id or new_id(),
        "route": route.name,
        "data": data,
        "title": canonical["title"],
        "status": str(canonical["status"]),
        "priority": search.priority_of(data),
        "created_at": now,
        "updated_at": stamp,
        "deleted_at": None,
        "version": 1,
        "field_times": {"*": stamp.isoformat()},
    }
    # Core statements, indexed as the flush's listeners would index it (`search.reindex`), and
    # then the session's object: added as an ORM row, its flush cost a poll 435 us a new task.
    await run(session, _NEW_TASK, row)
    for statement, params in search.reindex(row["id"], None, data, stamp):
        await run(session, statement, params)
    await run(
        session,
        _ADD_HISTORY,
        {
            "task_id": row["id"],
            "field": "*",
            "old": None,
            "new": {"v": "created"},
            "source": source,
            "via": via,
            "at": now,
        },
    )
    return attach(session, TaskRow, row)


_NEW_TASK = insert(TaskRow.__table__)


async def create_mirrors(
    ctx: EngineContext,
    session: AsyncSession,
    route: Route,
    task: TaskRow,
    *,
    exclude: Member | None = None,
    only: Sequence[Member] | None = None,
    observed_at: datetime,
) -> None:
    """A link in state `creating` and a create operation for every member that takes writes
    (but `exclude`; or only those in `only`). The link exists before the create runs, so an
    observation of the new remote task (a webhook racing the create's commit) finds it through
    the marker."""
    now = ctx.now()
    if inspect(task).pending:
        await session.flush()  # the task stored before the links that name it
    creates: list[dict[str, Any]] = []
    for other in route.members:
        if exclude is not None and other.key == exclude.key:
            continue
        if only is not None and other.key not in {m.key for m in only}:
            continue
        if not other.writes_any:
            continue
        values = link_values(route, other, task.id, now, state=LinkState.CREATING, base={}, mirror=True)
        # Inserted as Core statements, each returning its id for its operation: added as ORM
        # rows, their flush cost a new task more than these statements and the operations'.
        link = _LINK_COPY(id=(await run(session, _NEW_LINK, values)).scalar_one(), **values)
        creates.append(op_values(task, link, OpKind.CREATE, {}, observed_at=observed_at, now=now))
    if not creates:
        return
    await run(session, _NEW_OPS, creates)  # one statement, as queue_updates_many's
    on_commit(session, ctx.outbox_ready.set)


_NEW_LINK = insert(LinkRow.__table__).returning(LinkRow.__table__.c.id)
_LINK_COPY = copy_type(LinkRow)


async def _open_conflict(
    session: AsyncSession,
    route: Route,
    task: TaskRow,
    member: Member,
    name: str,
    canonical: Any,
    remote: Any,
    now: datetime,
) -> None:
    existing = await session.scalar(
        select(ConflictRow).where(
            ConflictRow.task_id == task.id, ConflictRow.field == name, ConflictRow.state == ConflictState.OPEN
        )
    )
    # The bridge's value came from somewhere: name the platform whose change it was, so a person
    # choosing sees two platforms, not "bridge" (which stays for values of no platform: the API's).
    origin = await session.scalar(
        select(HistoryRow.source)
        .where(HistoryRow.task_id == task.id, HistoryRow.field == name)
        .order_by(HistoryRow.id.desc())
        .limit(1)
    )
    ours = (
        origin if origin in {m.connector for m in route.members} and origin != member.connector else "bridge"
    )
    candidates = {ours: encode(name, canonical), member.connector: encode(name, remote)}
    if existing is not None:
        existing.candidates = {**existing.candidates, **candidates}
        return
    session.add(
        ConflictRow(
            task_id=task.id,
            route=route.name,
            field=name,
            candidates=candidates,
            state=ConflictState.OPEN,
            created_at=now,
        )
    )
    task_id, title, sides = task.id, (task.title or "")[:80], " vs ".join(candidates)
    on_commit(
        session,
        lambda: log.info(
            "conflict opened on task %s %r, field %s: %s",
            task_id,
            title,
            name,
            sides,
            extra={"task": task_id, "route": route.name, "connector": member.connector},
        ),
    )


async def _relink(session: AsyncSession, task: TaskRow, now: datetime) -> None:
    """A task back in the route's filter: its earlier links (kept on unlink) come back to life."""
    links = await session.scalars(
        select(LinkRow).where(LinkRow.task_id == task.id, LinkRow.state == LinkState.UNLINKED)
    )
    for link in links:
        link.state = advance(link.state, LinkState.ACTIVE if link.remote_id else LinkState.CREATING)
        link.updated_at = now


async def unlink_task(session: AsyncSession, task: TaskRow, now: datetime, *, reason: str) -> None:
    """Stop syncing a task without touching any platform (filter change, `on_delete: unlink`)."""
    links = await session.scalars(
        select(LinkRow).where(LinkRow.task_id == task.id, LinkRow.state == LinkState.ACTIVE)
    )
    for link in links:
        link.state = advance(link.state, LinkState.UNLINKED)
        link.updated_at = now
    session.add(
        HistoryRow(
            task_id=task.id,
            field="*",
            old=None,
            new={"v": f"unlinked: {reason}"},
            source="bridge",
            via="policy",
            at=now,
        )
    )


async def first_seen(session: AsyncSession, member: Member) -> datetime | None:
    """When the member's first poll began (its watermark keeps it), or None before that."""
    row = await session.get(WatermarkRow, (member.connector, member.scope))
    if row is None or "first_poll" not in row.value:
        return None
    return as_utc(datetime.fromisoformat(row.value["first_poll"]))


async def mark_gone_from_view(
    ctx: EngineContext, session: AsyncSession, member: Member, remote_id: str
) -> None:
    """The credential can no longer see the task: stop syncing that one copy, delete nothing."""
    link = await link_by_remote(session, member.connector, remote_id)
    if link is None or link.state != LinkState.ACTIVE:
        return
    link.state = advance(link.state, LinkState.GONE)
    link.updated_at = ctx.now()
    session.add(
        HistoryRow(
            task_id=link.task_id,
            field="*",
            old=None,
            new={"v": "gone from view"},
            source=member.connector,
            via="poll",
            at=ctx.now(),
        )
    )
    log.info("%s: task %s left the credential's view; unlinked, not deleted", member.connector, remote_id)


async def apply_remote_deletion(
    ctx: EngineContext, session: AsyncSession, route: Route, member: Member, remote_id: str
) -> bool:
    """A deletion confirmed by the platform (a GET answered 404): apply the route's policy."""
    link = await link_by_remote(session, member.connector, remote_id)
    if link is None or link.state not in (LinkState.ACTIVE, LinkState.CREATING):
        return False
    now = ctx.now()
    link.state = advance(link.state, LinkState.GONE)
    link.updated_at = now
    task = await got(session, TaskRow, link.task_id)
    if task is None:
        return False
    session.add(
        HistoryRow(
            task_id=task.id,
            field="*",
            old=None,
            new={"v": f"deleted on {member.connector}"},
            source=member.connector,
            via="poll",
            at=now,
        )
    )
    others = (
        await session.scalars(
            select(LinkRow).where(
                LinkRow.task_id == task.id, one_of(LinkRow.state, (LinkState.ACTIVE, LinkState.CREATING))
            )
        )
    ).all()
    if route.on_delete == "unlink":
        for other in others:
            other.state = advance(other.state, LinkState.UNLINKED)
            other.updated_at = now
        # The mirrors live on as unrelated tasks: a deleted canonical task is never relinked
        # (unlike one that merely left the route's filter).
        task.deleted_at = now
        return True
    canonical = decode_values(task.data)
    if route.on_delete == "delete":
        task.deleted_at = now
    else:
        canonical = {**canonical, "archived": True, "status": Status.CANCELLED}
        task.data = encode_values(canonical)
        task.status = str(Status.CANCELLED)
    task.updated_at = now
    for other in others:
        target = route.member(other.connector, other.scope)
        if target is None or not target.writes_any:
            continue
        enqueue(session, op_values(task, other, OpKind(route.on_delete), {}, observed_at=now, now=now))
    on_commit(session, ctx.outbox_ready.set)
    return True
