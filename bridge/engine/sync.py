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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bridge import metrics
from bridge.engine.context import EngineContext
from bridge.engine.merge import merge
from bridge.engine.routes import Member, Route
from bridge.model import (
    Priority,
    Status,
    Values,
    as_utc,
    decode_values,
    encode,
    encode_values,
    new_id,
    normalize_values,
)
from bridge.store import on_commit
from bridge.store.tables import ConflictRow, HistoryRow, LinkRow, OutboxRow, TaskRow
from connectors.base import Connector, RemoteTask

log = logging.getLogger("taskbridge.sync")

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


@dataclass(frozen=True)
class Observation:
    """A remote task seen by side `member` of `route`, through `via` (poll, webhook, api)."""

    route: Route
    member: Member
    task: RemoteTask
    via: str


def readable_values(
    ctx: EngineContext, route: Route, member: Member, rt: RemoteTask
) -> tuple[Values, str | None]:
    """The canonical values side `member` reports for the route's fields, with the marker line
    stripped from the description; and the bridge task id the marker named, if any."""
    conn = ctx.connectors[member.connector]
    values = {
        f: v
        for f, v in rt.values.items()
        if f in route.fields and member.reads(f) and f in conn.capabilities.fields
    }
    marker_id = None
    if "description" in rt.values:
        text, marker_id = route.marker.extract(rt.values["description"] or "")
        if "description" in values:
            values["description"] = text
    return values, marker_id


class _NoClaim:
    """A connector's roundtrip() left a field out: writing that value has no effect it can
    predict (e.g. a read-only status that only some values act on). Equal to nothing."""

    def __repr__(self) -> str:
        return "NO_CLAIM"


NO_CLAIM: Any = _NoClaim()


def side_roundtrip(conn: Connector, name: str, value: Any) -> Any:
    if name not in conn.capabilities.fields:
        return value
    return conn.roundtrip({name: value}).get(name, NO_CLAIM)


async def link_by_remote(session: AsyncSession, connector: str, remote_id: str) -> LinkRow | None:
    return await session.scalar(
        select(LinkRow).where(LinkRow.connector == connector, LinkRow.remote_id == remote_id)
    )


def _older_than_applied(rt: RemoteTask, link: LinkRow) -> bool:
    return bool(rt.updated_at and link.remote_updated_at and rt.updated_at < link.remote_updated_at)


def _agreed(values: Values, link: LinkRow) -> Values:
    """What this side last agreed with us: the link's base, where a write of ours in flight
    already shows its value (seen landing before its commit), that value."""
    base = decode_values(link.base)
    for name, value in decode_values(link.inflight or {}).items():
        if values.get(name, NO_CLAIM) == value:
            base[name] = value
    return base


def _unmoved(values: Values, agreed: Values) -> bool:
    """The side shows, for every field it reports, what it last agreed with us."""
    return all(f in agreed and agreed[f] == v for f, v in values.items())


async def needs_observing(
    ctx: EngineContext, session: AsyncSession, route: Route, member: Member, tasks: Sequence[RemoteTask]
) -> list[RemoteTask]:
    """The tasks of a listing that `observe` would act on. The others (an active link showing what
    it last agreed, or a report older than one applied) it would leave untouched; sorting them out
    here takes one read of their links instead of a write transaction per task, which a poll of an
    unchanged scope (most polls) would otherwise spend."""
    if not member.reads_any or not tasks:
        return []
    links = {
        link.remote_id: link
        for link in (
            await session.scalars(
                select(LinkRow).where(
                    LinkRow.connector == member.connector,
                    LinkRow.remote_id.in_([rt.remote_id for rt in tasks]),
                )
            )
        ).all()
    }
    out = []
    for rt in tasks:
        link = links.get(rt.remote_id)
        if link is not None and link.state == "active":
            if _older_than_applied(rt, link):
                continue
            values, _ = readable_values(ctx, route, member, rt)
            if _unmoved(values, _agreed(values, link)):
                continue
        out.append(rt)
    return out


async def observe(ctx: EngineContext, session: AsyncSession, obs: Observation) -> bool:
    """Apply one observation. Returns True when it changed a canonical task."""
    route, member, rt = obs.route, obs.member, obs.task
    if not member.reads_any:
        return False
    values, marker_id = readable_values(ctx, route, member, rt)
    link = await link_by_remote(session, member.connector, rt.remote_id)
    now = ctx.now()
    if link is None:
        if marker_id is not None and await _adopt_mirror(session, member, rt, marker_id, values, now):
            return False
        if rt.deleted or not route.matches(values):
            return False
        if route.initial == "new-only" and not await _is_new(ctx, session, member, rt):
            return False
        await _create_canonical(ctx, session, obs, values, now)
        metrics.changes_detected.labels(member.connector, obs.via).inc()
        return True
    if link.state == "creating":
        # The create is still in flight on this link, but the platform already shows the task.
        link.state = "active"
    task = await session.get(TaskRow, link.task_id)
    if task is None or task.deleted_at is not None:
        return False
    if link.state in ("unlinked", "gone"):
        if not route.matches(values):
            return False
        await _relink(session, task, now)
    if _older_than_applied(rt, link):
        return False  # an older report than one already applied (a late webhook delivery)
    base = _agreed(values, link)
    if _unmoved(values, base):
        return False  # nothing moved on this side: the common case, and how echoes die
    canonical = decode_values(task.data)
    conn = ctx.connectors[member.connector]
    result = merge(
        values,
        base,
        canonical,
        roundtrip=lambda name, value: side_roundtrip(conn, name, value),
        policy=route.conflict,
        side_is_preferred=route.prefer == member.connector,
        side_updated_at=rt.updated_at,
        canonical_updated_at=lambda name: field_time(task, name),
    )
    link.base = encode_values({**base, **values})
    link.remote_updated_at = rt.updated_at
    link.updated_at = now
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
        apply_changes(
            session,
            task,
            canonical,
            result.changes,
            source=member.connector,
            via=obs.via,
            now=now,
            remote_time=rt.updated_at,
        )
        metrics.changes_detected.labels(member.connector, obs.via).inc()
        if not route.matches(decode_values(task.data)):
            await unlink_task(session, task, now, reason="left the route's filter")
            return True
    await queue_updates(ctx, session, route, task, observed_at=now)
    return changed


def field_time(task: TaskRow, name: str) -> datetime | None:
    """When the canonical `name` last changed: an edit of another field since then doesn't make
    this one newer (the `newest` policy compares an edit with the value it competes with)."""
    times = task.field_times or {}
    stamp = times.get(name) or times.get("*")
    return as_utc(datetime.fromisoformat(stamp)) if stamp else task.updated_at


def apply_changes(
    session: AsyncSession,
    task: TaskRow,
    canonical: Values,
    changes: Mapping[str, Any],
    *,
    source: str,
    via: str,
    now: datetime,
    remote_time: datetime | None = None,
) -> None:
    """Write changes to the canonical task with a history row for each field."""
    new = {**canonical, **changes}
    for name, value in changes.items():
        session.add(
            HistoryRow(
                task_id=task.id,
                field=name,
                old={"v": encode(name, canonical.get(name))},
                new={"v": encode(name, value)},
                source=source,
                via=via,
                at=now,
            )
        )
    task.data = encode_values(new)
    task.title = new.get("title", "")
    task.status = str(new.get("status", "todo"))
    # The remote's own time orders edits for the `newest` policy; never let it go backwards.
    stamp = remote_time or now
    task.updated_at = max(stamp, task.updated_at) if task.updated_at else stamp
    times = dict(task.field_times or {})
    for name in changes:
        times[name] = stamp.isoformat()
    task.field_times = times
    task.version = (task.version or 0) + 1


async def queue_updates(
    ctx: EngineContext, session: AsyncSession, route: Route, task: TaskRow, *, observed_at: datetime
) -> int:
    """Queue an update for every member whose base differs from the canonical values. An update
    already waiting (unclaimed) for a link absorbs the new fields instead of adding a second one;
    a link with an update being written (claimed) is left to that write's own re-check."""
    canonical = decode_values(task.data)
    links = (
        await session.scalars(
            select(LinkRow).where(LinkRow.task_id == task.id, LinkRow.state.in_(("active", "creating")))
        )
    ).all()
    held = await held_fields(session, task.id)
    # A side whose update is being written now re-checks the whole task when it lands (_succeed),
    # so a second update queued behind it would only re-read what the first one writes.
    writing = set(
        (
            await session.scalars(
                select(OutboxRow.link_id).where(
                    OutboxRow.task_id == task.id, OutboxRow.op == "update", OutboxRow.state == "claimed"
                )
            )
        ).all()
    )
    queued = 0
    for link in links:
        member = route.member(link.connector, link.scope)
        if member is None or link.id in writing:
            continue
        fields = stale_fields(ctx, route, member, canonical, decode_values(link.base), held)
        if not fields or link.state == "creating":
            continue  # a create in flight writes everything once it lands
        waiting = await session.scalar(
            select(OutboxRow).where(
                OutboxRow.link_id == link.id, OutboxRow.op == "update", OutboxRow.state == "pending"
            )
        )
        if waiting is not None:
            waiting.payload = {"fields": sorted(set(waiting.payload.get("fields", [])) | set(fields))}
            waiting.observed_at = min(waiting.observed_at, observed_at)
            continue
        enqueue(
            session, task, link, "update", {"fields": sorted(fields)}, observed_at=observed_at, now=ctx.now()
        )
        queued += 1
    if queued:
        on_commit(session, ctx.outbox_ready.set)
    return queued


def stale_fields(
    ctx: EngineContext,
    route: Route,
    member: Member,
    canonical: Values,
    base: Values,
    held: Iterable[str] = (),
) -> list[str]:
    """The route fields this member writes whose base differs from what the canonical value would
    read back as there."""
    conn = ctx.connectors[member.connector]
    out = []
    held = set(held)
    for name in route.fields:
        if name in held or not member.writes(name) or name not in conn.capabilities.writable:
            continue
        shown = side_roundtrip(conn, name, canonical.get(name, DEFAULTS[name]))
        if shown is not NO_CLAIM and shown != base.get(name):
            out.append(name)
    return out


async def held_fields(session: AsyncSession, task_id: str) -> set[str]:
    rows = await session.scalars(
        select(ConflictRow.field).where(ConflictRow.task_id == task_id, ConflictRow.state == "open")
    )
    return set(rows.all())


def enqueue(
    session: AsyncSession,
    task: TaskRow,
    link: LinkRow,
    op: str,
    payload: dict[str, Any],
    *,
    observed_at: datetime,
    now: datetime,
    comment_id: str | None = None,
) -> OutboxRow:
    row = OutboxRow(
        task_id=task.id,
        link_id=link.id,
        comment_id=comment_id,
        route=task.route,
        connector=link.connector,
        op=op,
        payload=payload,
        state="pending",
        attempts=0,
        next_attempt_at=now,
        observed_at=observed_at,
        created_at=now,
    )
    session.add(row)
    return row


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
    link.remote_id = rt.remote_id
    link.state = "active"
    link.base = encode_values(values)
    link.remote_updated_at = rt.updated_at
    link.remote_url = rt.url
    link.content_hash = rt.content_hash
    link.updated_at = now
    return True


async def _is_new(ctx: EngineContext, session: AsyncSession, member: Member, rt: RemoteTask) -> bool:
    """Under `initial: new-only`, whether a task appeared after the member's first poll."""
    from bridge.engine.poller import first_seen

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
    session.add(
        LinkRow(
            task_id=task.id,
            route=route.name,
            connector=member.connector,
            scope=member.scope,
            remote_id=rt.remote_id,
            state="active",
            base=encode_values(values),
            remote_updated_at=rt.updated_at,
            content_hash=rt.content_hash,
            remote_url=rt.url,
            is_mirror=False,
            created_at=now,
            updated_at=now,
        )
    )
    await create_mirrors(ctx, session, route, task, exclude=member, observed_at=now)
    return task


async def new_task(
    session: AsyncSession,
    route: Route,
    values: Values,
    *,
    source: str,
    via: str,
    now: datetime,
    updated_at: datetime | None = None,
) -> TaskRow:
    """A new canonical task (defaults for what `values` leaves out) with its "created" history row."""
    canonical = {**DEFAULTS, **values}
    task = TaskRow(
        id=new_id(),
        route=route.name,
        data=encode_values(canonical),
        title=canonical["title"],
        status=str(canonical["status"]),
        created_at=now,
        updated_at=updated_at or now,
        version=1,
        field_times={"*": (updated_at or now).isoformat()},
    )
    session.add(task)
    await session.flush()
    session.add(
        HistoryRow(task_id=task.id, field="*", old=None, new={"v": "created"}, source=source, via=via, at=now)
    )
    return task


async def create_mirrors(
    ctx: EngineContext,
    session: AsyncSession,
    route: Route,
    task: TaskRow,
    *,
    exclude: Member | None,
    observed_at: datetime,
) -> None:
    """A link in state `creating` and a create operation for every member that takes writes.
    The link exists before the create runs, so an observation of the new remote task (a
    webhook racing the create's commit) finds it through the marker."""
    now = ctx.now()
    for other in route.members:
        if exclude is not None and other.key == exclude.key:
            continue
        if not other.writes_any:
            continue
        link = LinkRow(
            task_id=task.id,
            route=route.name,
            connector=other.connector,
            scope=other.scope,
            remote_id=None,
            state="creating",
            base={},
            is_mirror=True,
            created_at=now,
            updated_at=now,
        )
        session.add(link)
        await session.flush()
        enqueue(session, task, link, "create", {}, observed_at=observed_at, now=now)
    on_commit(session, ctx.outbox_ready.set)


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
            ConflictRow.task_id == task.id, ConflictRow.field == name, ConflictRow.state == "open"
        )
    )
    candidates = {"bridge": encode(name, canonical), member.connector: encode(name, remote)}
    if existing is not None:
        existing.candidates = {**existing.candidates, **candidates}
        return
    session.add(
        ConflictRow(
            task_id=task.id, route=route.name, field=name, candidates=candidates, state="open", created_at=now
        )
    )


async def _relink(session: AsyncSession, task: TaskRow, now: datetime) -> None:
    """A task back in the route's filter: its earlier links (kept on unlink) come back to life."""
    links = await session.scalars(
        select(LinkRow).where(LinkRow.task_id == task.id, LinkRow.state == "unlinked")
    )
    for link in links:
        link.state = "active" if link.remote_id else "creating"
        link.updated_at = now


async def unlink_task(session: AsyncSession, task: TaskRow, now: datetime, *, reason: str) -> None:
    """Stop syncing a task without touching any platform (filter change, `on_delete: unlink`)."""
    links = await session.scalars(
        select(LinkRow).where(LinkRow.task_id == task.id, LinkRow.state == "active")
    )
    for link in links:
        link.state = "unlinked"
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
