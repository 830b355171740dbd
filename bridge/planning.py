"""`taskbridge plan`: what the next sync would do, with no write to any platform.

The plan is the engine's own answer, not a second implementation of it: the store's state is
copied (through the portable export, so SQLite and PostgreSQL alike, in one read transaction of
the real store) into a scratch SQLite store, and there the start-up adoption (re-adoption by
marker, `initial: match`) and one poll and comment sweep of every member run exactly as the
daemon would run them. Everything they decide lands in the scratch store: the links made (with
the matching's confidence), and the outbox operations queued (creates, updates field by field,
archives and deletions, comments). The plan reads those back; the outbox is never run, so the
platforms only ever see reads. The scratch store is deleted afterwards; the real one is only read.

Writes already queued in the real store (a daemon that stopped with work pending) are counted
apart: the next sync makes them too.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bridge.config import Config
from bridge.daemon import build_connectors
from bridge.engine.comments import sweep_comments
from bridge.engine.context import EngineContext
from bridge.engine.matching import MatchPlan, adopt_existing, load_held_apart, match_route
from bridge.engine.matching import plan as plan_matches
from bridge.engine.poller import poll_connector
from bridge.engine.recovery import list_route
from bridge.engine.routes import build_routes
from bridge.model import decode_values
from bridge.store import Store
from bridge.store.portable import encode_line, export_records, import_records, snapshot
from bridge.store.states import OpState
from bridge.store.tables import CommentRow, HistoryRow, LinkRow, OutboxRow, TaskRow
from connectors.base import ConnectorError

SWEEP_BUDGET = 100_000  # comments: every linked task of a member, as `sync --once` reads them


@dataclass(frozen=True)
class PlannedWrite:
    connector: str
    scope: str
    op: str  # create | update | archive | delete | comment
    task_id: str
    title: str
    fields: dict[str, Any] = field(default_factory=dict)  # an update's new values; a comment's text


@dataclass(frozen=True)
class PlannedLink:
    task_id: str
    title: str
    copies: list[tuple[str, str]]  # (connector, remote id)
    how: str  # "linked across 2 members (confidence 0.9)", or a re-adoption


@dataclass
class Plan:
    writes: list[PlannedWrite] = field(default_factory=list)
    links: list[PlannedLink] = field(default_factory=list)
    held_apart: list[tuple[str, str]] = field(default_factory=list)
    already_queued: dict[str, int] = field(default_factory=dict)  # connector -> writes pending
    errors: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter[str]] = {}
        for w in self.writes:
            out.setdefault(w.connector, Counter())[w.op] += 1
        return {c: dict(n) for c, n in sorted(out.items())}

    def as_json(self) -> dict[str, Any]:
        return {
            "counts": self.counts(),
            "writes": [asdict(w) for w in self.writes],
            "links": [asdict(x) for x in self.links],
            "held_apart": [list(x) for x in self.held_apart],
            "already_queued": self.already_queued,
            "errors": self.errors,
        }


async def make_plan(cfg: Config, *, routes: Sequence[str] = ()) -> Plan:
    """The plan for `routes` (all when empty). Raises ValueError for an unknown route name."""
    known = [r.name for r in cfg.routes]
    unknown = [r for r in routes if r not in known]
    if unknown:
        raise ValueError(f"no route {', '.join(map(repr, unknown))}; the config has {', '.join(known)}")
    plan = Plan()
    with tempfile.TemporaryDirectory(prefix="taskbridge-plan-") as tmp:
        scratch = Store.open(f"sqlite+aiosqlite:///{Path(tmp) / 'plan.db'}")
        connectors = build_connectors(cfg)
        try:
            held = await _copy_state(cfg, scratch, Path(tmp) / "state.jsonl", plan)
            chosen = [r for r in build_routes(cfg) if not routes or r.name in routes]
            ctx = EngineContext(scratch, chosen, connectors, replica="plan")
            await load_held_apart(ctx)
            ctx.held_apart |= held
            await adopt_existing(ctx)
            for name in dict.fromkeys(m.connector for r in chosen for m in r.members):
                report = await poll_connector(ctx, name)
                plan.errors.extend(report.errors + report.guard_tripped)
            for route in chosen:
                for member in route.members:
                    try:
                        await sweep_comments(ctx, route, member, budget=SWEEP_BUDGET, extra=[])
                    except ConnectorError as exc:
                        plan.errors.append(str(exc))
            await _read_back(scratch, plan)
            plan.held_apart = sorted(ctx.held_apart)
        finally:
            for conn in connectors.values():
                await conn.aclose()
            await scratch.close()
    return plan


async def _copy_state(cfg: Config, scratch: Store, path: Path, plan: Plan) -> set[tuple[str, str]]:
    """The real store's state into the scratch store; what matching held apart there."""
    real = Store.open(cfg.store.url)
    try:
        await real.migrate()  # a store never started is made, as any command on it would
        held_ctx = EngineContext(real, [], {}, replica="plan")
        await load_held_apart(held_ctx)
        async with snapshot(real) as session:
            with path.open("w", encoding="utf-8") as out:
                async for record in export_records(session):
                    out.write(encode_line(record) + "\n")
            rows = await session.execute(
                select(OutboxRow.connector, OutboxRow.id).where(
                    OutboxRow.state.in_((OpState.PENDING, OpState.CLAIMED))
                )
            )
            plan.already_queued = dict(Counter(c for c, _ in rows.all()))
    finally:
        await real.close()
    with path.open(encoding="utf-8") as lines:
        await import_records(scratch, lines)
    return held_ctx.held_apart


async def _read_back(scratch: Store, plan: Plan) -> None:
    async with scratch.read() as session:
        ops = (await session.scalars(select(OutboxRow).order_by(OutboxRow.id))).all()
        task_ids = {op.task_id for op in ops}
        adopted = (
            await session.scalars(select(HistoryRow).where(HistoryRow.via.in_(("match", "recovery"))))
        ).all()
        task_ids |= {h.task_id for h in adopted}
        tasks = {
            t.id: t for t in (await session.scalars(select(TaskRow).where(TaskRow.id.in_(task_ids)))).all()
        }
        links = {
            x.id: x
            for x in (await session.scalars(select(LinkRow).where(LinkRow.task_id.in_(task_ids)))).all()
        }
        comments: dict[str, CommentRow] = {}
        if any(op.comment_id for op in ops):
            ids = [op.comment_id for op in ops if op.comment_id]
            comments = {
                c.id: c
                for c in (await session.scalars(select(CommentRow).where(CommentRow.id.in_(ids)))).all()
            }
    for op in ops:
        task = tasks.get(op.task_id)
        canonical = decode_values(task.data) if task is not None else {}
        link = links.get(op.link_id) if op.link_id is not None else None
        detail: dict[str, Any] = {}
        if op.op == "update":
            detail = {f: _show(canonical.get(f)) for f in op.payload.get("fields", [])}
        elif op.op == "comment" and op.comment_id in comments:
            detail = {"body": comments[op.comment_id].body}
        plan.writes.append(
            PlannedWrite(
                connector=op.connector,
                scope=link.scope if link is not None else "",
                op=str(op.op),
                task_id=op.task_id,
                title=task.title if task is not None else "",
                fields=detail,
            )
        )
    by_task: dict[str, list[LinkRow]] = {}
    for link in links.values():
        if link.remote_id is not None:
            by_task.setdefault(link.task_id, []).append(link)
    for h in adopted:
        if h.field != "*" or not isinstance(h.new, dict) or h.new.get("v") == "created":
            continue
        task = tasks.get(h.task_id)
        plan.links.append(
            PlannedLink(
                task_id=h.task_id,
                title=task.title if task is not None else "",
                copies=sorted((x.connector, str(x.remote_id)) for x in by_task.get(h.task_id, [])),
                how=str(h.new.get("v")),
            )
        )


def _show(value: Any) -> Any:
    if isinstance(value, (list, tuple, set, frozenset)):
        return sorted(str(v) for v in value)
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def render(plan: Plan) -> str:
    """The plan for a person: counts per connector, then each write, link and held-apart task."""
    lines: list[str] = []
    if not plan.writes and not plan.links:
        lines.append("nothing to do: every member agrees with the store")
    for connector, counts in plan.counts().items():
        lines.append(f"{connector}: " + ", ".join(f"{n} {op}" for op, n in sorted(counts.items())))
    if plan.links:
        lines.append(f"links ({len(plan.links)} tasks that already exist on several members):")
        lines.extend(
            f"  {x.title!r}: {x.how}: " + ", ".join(f"{c}:{r}" for c, r in x.copies) for x in plan.links
        )
    if plan.writes:
        lines.append("writes:")
        for w in plan.writes:
            what = ", ".join(f"{k}={v!r}" for k, v in w.fields.items())
            lines.append(f"  {w.op} on {w.connector}/{w.scope}: {w.title!r}" + (f" ({what})" if what else ""))
    if plan.held_apart:
        lines.append("left unlinked as ambiguous (a title one member holds twice):")
        lines.extend(f"  {c}:{r}" for c, r in plan.held_apart)
    for connector, n in sorted(plan.already_queued.items()):
        lines.append(f"{connector}: {n} writes already queued in the store (the next sync makes them too)")
    lines.extend(f"error: {e}" for e in plan.errors)
    return "\n".join(lines)


async def link_route(cfg: Config, route_name: str, *, dry_run: bool = False) -> MatchPlan:
    """`taskbridge link`: run matching on a route that already runs, over the tasks no link
    holds yet (those `new-only` or `match-only` left alone, say): the same rules as `initial:
    match`. With `dry_run`, only decide. Raises ValueError for an unknown route."""
    routes = {r.name: r for r in build_routes(cfg)}
    if route_name not in routes:
        raise ValueError(f"no route {route_name!r}; the config has {', '.join(routes)}")
    store = Store.open(cfg.store.url)
    connectors = build_connectors(cfg)
    try:
        await store.migrate()
        ctx = EngineContext(store, list(routes.values()), connectors, replica="link")
        await load_held_apart(ctx)
        route = routes[route_name]
        if dry_run:
            copies = await list_route(ctx, route, why=f"to match route {route_name}'s tasks")
            linked = await _linked(store, route_name)
            return plan_matches(
                route, [c for c in copies if (c.member.connector, c.task.remote_id) not in linked]
            )
        return await match_route(ctx, route)
    finally:
        for conn in connectors.values():
            await conn.aclose()
        await store.close()


async def _linked(store: Store, route: str) -> set[tuple[str, str]]:
    async with store.read() as session:
        rows = await session.execute(
            select(LinkRow.connector, LinkRow.remote_id).where(
                LinkRow.route == route, LinkRow.remote_id.is_not(None)
            )
        )
        return {(c, str(r)) for c, r in rows.all()}


def render_links(result: MatchPlan, *, dry_run: bool) -> str:
    verb = "would link" if dry_run else "linked"
    lines = [f"{verb} {len(result.matches)} tasks found on several members:"]
    for m in result.matches:
        where = ", ".join(f"{c.member.connector}:{c.task.remote_id}" for c in m.copies)
        lines.append(f"  {m.canonical.get('title')!r} (confidence {m.confidence:g}): {where}")
    if result.ambiguous:
        lines.append(f"left unlinked as ambiguous ({len(result.ambiguous)}: a title one member holds twice):")
        lines.extend(
            f"  {c.member.connector}:{c.task.remote_id} {c.values.get('title')!r}" for c in result.ambiguous
        )
    lines.append(f"{len(result.unmatched)} tasks matched nowhere (left as they are)")
    return "\n".join(lines)
