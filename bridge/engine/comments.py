"""Comments: append-only across the members that have them, attributed, never posted twice.

A new comment seen on one member becomes a canonical comment with a comment link for where it was
seen, and a `creating` comment link plus a `comment` operation for every other member, in one
transaction: the mirror is linked before anything can observe it. Comments this bridge wrote
(`by_us`) are never taken for new ones. A repeated `comment` operation first looks for the text it
would post among the target's comments by us, so a crash between the platform's answer and our
commit doesn't post it twice.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.engine.context import EngineContext
from bridge.engine.routes import Member, Route
from bridge.engine.sync import enqueue, op_values
from bridge.model import new_id
from bridge.store import on_commit
from bridge.store.prepared import any_of, by_ids
from bridge.store.states import LinkState, OpKind
from bridge.store.tables import CommentLinkRow, CommentRow, LinkRow, TaskRow, WatermarkRow
from connectors.base import Connector, GoneFromView, NotFound, RemoteComment

log = logging.getLogger("taskbridge.comments")


def commenting(ctx: EngineContext, route: Route, member: Member) -> bool:
    return route.comments and ctx.connectors[member.connector].capabilities.comments


# Link ids bound in one read: asyncpg takes at most 32,767 parameters a statement, and a
# planning sweep reads up to 100,000 links.
IDS_PER_READ = 1000
# The (remote id, task) of the links that comments are read through: active, with a remote id.
_READABLE_IN = select(LinkRow.id, LinkRow.remote_id, LinkRow.task_id).where(
    any_of(LinkRow.id),
    LinkRow.state == LinkState.ACTIVE,
    LinkRow.remote_id.is_not(None),
)


async def sync_comments(ctx: EngineContext, route: Route, member: Member, link_id: int) -> int:
    """Read one linked task's comments on `member`; mirror the new ones. Returns how many."""
    if not commenting(ctx, route, member) or not member.reads_any:
        return 0
    async with ctx.store.read() as session:
        found = (await session.execute(_READABLE_IN, by_ids([link_id]))).first()
    if found is None:
        return 0
    return await _sync_link(ctx, route, member, found.remote_id, found.task_id)


async def _sync_link(ctx: EngineContext, route: Route, member: Member, remote_id: str, task_id: str) -> int:
    """Read the comments of the task linked as `remote_id` on `member`; mirror the new ones."""
    conn = ctx.connectors[member.connector]
    try:
        remote = await conn.list_comments(member.scope, remote_id)
    except (NotFound, GoneFromView):
        return 0  # the task is gone or out of view: the poll's deletion checks deal with that
    fresh = [c for c in remote if not c.by_us]
    if not fresh:
        return 0
    async with ctx.store.transaction() as session:
        # The link was read before the listing (a sweep reads all of its links at once): if it
        # no longer holds this id for this task (closed, or the id reused for another task since),
        # these comments are not this task's.
        held = await session.execute(
            _HOLDS, {"connector": member.connector, "id": remote_id, "task": task_id}
        )
        if held.first() is None:
            return 0
        return await _record(ctx, session, route, member, task_id, fresh)


_HOLDS = select(LinkRow.id).where(
    LinkRow.connector == bindparam("connector"),
    LinkRow.remote_id == bindparam("id"),
    LinkRow.task_id == bindparam("task"),
    LinkRow.state == LinkState.ACTIVE,
)


async def _record(
    ctx: EngineContext,
    session: AsyncSession,
    route: Route,
    member: Member,
    task_id: str,
    comments: list[RemoteComment],
) -> int:
    task = await session.get(TaskRow, task_id)
    if task is None:
        return 0
    known = set(
        (
            await session.scalars(
                select(CommentLinkRow.remote_id).where(
                    CommentLinkRow.connector == member.connector,
                    CommentLinkRow.remote_id.in_([c.remote_id for c in comments]),
                )
            )
        ).all()
    )
    targets = await _targets(ctx, session, route, member, task_id)
    now = ctx.now()
    added = 0
    for rc in comments:
        if rc.remote_id in known:
            continue
        comment = CommentRow(
            id=new_id(),
            task_id=task_id,
            body=rc.body,
            author=rc.author,
            origin=member.connector,
            created_at=rc.created_at or now,
        )
        session.add(comment)
        await session.flush()
        session.add(
            CommentLinkRow(
                comment_id=comment.id,
                connector=member.connector,
                remote_id=rc.remote_id,
                state=LinkState.ACTIVE,
                created_at=now,
            )
        )
        _fan_out(session, task, comment, targets, now)
        added += 1
    if added and targets:
        on_commit(session, ctx.outbox_ready.set)
    return added


async def add_api_comment(
    ctx: EngineContext, session: AsyncSession, task: TaskRow, body: str, author: str
) -> CommentRow:
    """A comment written through the unified API: mirrored to every comment-capable member."""
    route = ctx.route(task.route)
    now = ctx.now()
    comment = CommentRow(id=new_id(), task_id=task.id, body=body, author=author, origin=None, created_at=now)
    session.add(comment)
    await session.flush()
    if route is not None:
        _fan_out(session, task, comment, await _targets(ctx, session, route, None, task.id), now)
        on_commit(session, ctx.outbox_ready.set)
    return comment


def _fan_out(
    session: AsyncSession, task: TaskRow, comment: CommentRow, targets: list[LinkRow], now: datetime
) -> None:
    """A `creating` comment link and a `comment` operation for each member the comment goes to."""
    for target_link in targets:
        session.add(
            CommentLinkRow(
                comment_id=comment.id,
                connector=target_link.connector,
                remote_id=None,
                state=LinkState.CREATING,
                created_at=now,
            )
        )
        enqueue(
            session,
            op_values(task, target_link, OpKind.COMMENT, {}, observed_at=now, now=now, comment_id=comment.id),
        )


async def _targets(
    ctx: EngineContext, session: AsyncSession, route: Route, source: Member | None, task_id: str
) -> list[LinkRow]:
    links = (
        await session.scalars(
            select(LinkRow).where(
                LinkRow.task_id == task_id, LinkRow.state.in_((LinkState.ACTIVE, LinkState.CREATING))
            )
        )
    ).all()
    out = []
    for link in links:
        member = route.member(link.connector, link.scope)
        if member is None or (source is not None and member.key == source.key):
            continue
        if commenting(ctx, route, member) and member.writes_any:
            out.append(link)
    return out


def mirror_text(comment: CommentRow) -> tuple[str, str]:
    """(body, author) as posted to other platforms: "Alice via vortask"."""
    author = f"{comment.author} via {comment.origin}" if comment.origin else comment.author
    return comment.body, author


async def mirror_comment(
    ctx: EngineContext,
    conn: Connector,
    member: Member,
    remote_task_id: str,
    comment: CommentRow,
    *,
    retried: bool,
) -> str:
    """Post one canonical comment to a member's copy of its task (the `comment` outbox operation);
    returns the posted comment's remote id, which the outbox links. A retried post first looks
    for its text among our comments there that nothing links yet: an earlier attempt may have
    posted it and died before the link was recorded."""
    body, author = mirror_text(comment)
    if retried:
        for rc in await conn.list_comments(member.scope, remote_task_id):
            if rc.by_us and body in rc.body and await _unlinked(ctx, member.connector, rc.remote_id):
                return rc.remote_id
    posted = await conn.add_comment(member.scope, remote_task_id, body, author)
    return posted.remote_id


async def _unlinked(ctx: EngineContext, connector: str, remote_id: str) -> bool:
    async with ctx.store.read() as session:
        return (
            await session.scalar(
                select(CommentLinkRow.id).where(
                    CommentLinkRow.connector == connector, CommentLinkRow.remote_id == remote_id
                )
            )
        ) is None


async def sweep_comments(
    ctx: EngineContext, route: Route, member: Member, *, budget: int, extra: list[int]
) -> int:
    """Read comments of up to `budget` linked tasks of a member, round-robin by link id (the
    position is kept in the member's watermark row), plus the links in `extra` (tasks that just
    changed). Bounds the cost of comment polling on big scopes while covering every task in turn."""
    if not commenting(ctx, route, member):
        return 0
    async with ctx.store.read() as session:
        row = await session.get(WatermarkRow, member.key)
        after = int((row.value if row else {}).get("comments_after", 0))
        ids = list(
            (
                await session.scalars(
                    select(LinkRow.id)
                    .where(
                        LinkRow.connector == member.connector,
                        LinkRow.scope == member.scope,
                        LinkRow.state == LinkState.ACTIVE,
                        LinkRow.id > after,
                    )
                    .order_by(LinkRow.id)
                    .limit(budget)
                )
            ).all()
        )
        # What each link's comments are read through, in one read: a read session per link
        # was an eighth of the polling daemon's time inside SQLAlchemy (propagation --sql-cpu).
        wanted = list(dict.fromkeys([*extra, *ids]))
        readable: dict[int, Any] = {}
        for start in range(0, len(wanted), IDS_PER_READ):
            part = wanted[start : start + IDS_PER_READ]
            readable.update({r.id: r for r in (await session.execute(_READABLE_IN, by_ids(part))).all()})
    next_after = ids[-1] if len(ids) == budget else 0
    added = 0
    if member.reads_any:
        for link_id in wanted:
            found = readable.get(link_id)
            if found is not None:
                added += await _sync_link(ctx, route, member, found.remote_id, found.task_id)
    async with ctx.store.transaction() as session:
        row = await session.get(WatermarkRow, member.key)
        if row is not None:
            value: dict[str, Any] = dict(row.value)
            value["comments_after"] = next_after
            row.value = value
    return added
