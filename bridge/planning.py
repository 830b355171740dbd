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

`plan --apply` runs the same decisions (`_decide`) in the real store instead, with the daemon
stopped, and then has the outbox worker make the writes they queued and only those (it claims by
the range of their ids). What it printed is read back from that same store, so it is what it
does; given a plan printed before (`--reviewed FILE`, the JSON of `plan --json`), a write that
plan did not show (a platform changed between the two) is parked for a person instead of made.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bridge.config import Config
from bridge.defaults import DEFAULT_LEASE_TTL
from bridge.engine import leases
from bridge.engine.comments import sweep_comments
from bridge.engine.context import EngineContext
from bridge.engine.matching import MatchPlan, adopt_existing, load_held_apart, match_route
from bridge.engine.matching import plan as plan_matches
from bridge.engine.outbox import Worker, WorkerSettings
from bridge.engine.poller import poll_connector
from bridge.engine.recovery import list_route
from bridge.engine.routes import Route, build_routes
from bridge.model import decode_values
from bridge.store import Store
from bridge.store.portable import (
    encode_line,
    export_records,
    import_records,
    live_holders,
    snapshot,
    unfinished_writes,
)
from bridge.store.states import OpState, advance
from bridge.store.tables import CommentRow, HistoryRow, LinkRow, OutboxRow, TaskRow
from bridge.wiring import build_connectors
from connectors.base import ConnectorError

log = logging.getLogger("taskbridge.planning")

SWEEP_BUDGET = 100_000  # comments: every linked task of a member, as `sync --once` reads them


@dataclass(frozen=True)
class PlannedWrite:
    connector: str
    scope: str
    op: str  # create | update | archive | delete | comment
    task_id: str
    title: str
    fields: dict[str, Any] = field(default_factory=dict)  # an update's new values; a comment's text
    remote_id: str | None = None  # the platform's id of the task written; None for a create
    op_id: int = 0  # its outbox operation in the store the plan ran on (a scratch copy's, for `plan`)

    def key(self) -> str:
        """What a person reviewed of this write: where, on which remote task, what and which
        values. Not the bridge's task id: a task first seen by this run gets a new one each time."""
        return review_key(self.connector, self.scope, self.op, self.remote_id, self.title, self.fields)


def review_key(
    connector: str, scope: str, op: str, remote_id: str | None, title: str, fields: dict[str, Any]
) -> str:
    return json.dumps([connector, scope, op, remote_id, title, fields], sort_keys=True)


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
            # Without op_id: a plan's is its scratch store's, which names nothing in the real one.
            "writes": [{k: v for k, v in asdict(w).items() if k != "op_id"} for w in self.writes],
            "links": [asdict(x) for x in self.links],
            "held_apart": [list(x) for x in self.held_apart],
            "already_queued": self.already_queued,
            "errors": self.errors,
        }


def check_routes(cfg: Config, routes: Sequence[str]) -> None:
    """ValueError naming the routes the config has, when `routes` names one it has not."""
    known = [r.name for r in cfg.routes]
    unknown = [r for r in routes if r not in known]
    if unknown:
        raise ValueError(f"no route {', '.join(map(repr, unknown))}; the config has {', '.join(known)}")


def _chosen(cfg: Config, routes: Sequence[str]) -> list[Route]:
    """The routes a plan covers (all when `routes` is empty). Raises ValueError for an unknown name."""
    check_routes(cfg, routes)
    return [r for r in build_routes(cfg) if not routes or r.name in routes]


async def make_plan(cfg: Config, *, routes: Sequence[str] = ()) -> Plan:
    """The plan for `routes` (all when empty). Raises ValueError for an unknown route name."""
    chosen = _chosen(cfg, routes)
    plan = Plan()
    with tempfile.TemporaryDirectory(prefix="taskbridge-plan-") as tmp:
        scratch = Store.open(f"sqlite+aiosqlite:///{Path(tmp) / 'plan.db'}")
        connectors = build_connectors(cfg)
        try:
            held = await _copy_state(cfg, scratch, Path(tmp) / "state.jsonl", plan)
            ctx = EngineContext(scratch, chosen, connectors, replica="plan")
            await _decide(ctx, plan, held=held)
            await _read_back(scratch, plan)
        finally:
            for conn in connectors.values():
                await conn.aclose()
            await scratch.close()
    return plan


async def _decide(ctx: EngineContext, plan: Plan, *, held: set[tuple[str, str]] | None = None) -> None:
    """What the daemon's start and first pass decide, into `ctx.store`: the start-up adoption
    (re-adoption by marker, `initial: match`), one poll of every member and one comment sweep.
    The outbox is not run."""
    await load_held_apart(ctx)
    ctx.held_apart |= held or set()
    await adopt_existing(ctx)
    for name in dict.fromkeys(m.connector for r in ctx.routes for m in r.members):
        report = await poll_connector(ctx, name)
        plan.errors.extend(report.errors + report.guard_tripped)
    for route in ctx.routes:
        for member in route.members:
            try:
                await sweep_comments(ctx, route, member, budget=SWEEP_BUDGET, extra=[])
            except ConnectorError as exc:
                plan.errors.append(str(exc))
    plan.held_apart = sorted(ctx.held_apart)


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


async def _read_back(store: Store, plan: Plan, *, after: Floor | None = None) -> None:
    """The writes queued and the links made, into `plan`: everything in the store, or what came
    after `after` (the same store's outbox and history as they were before the plan's run)."""
    after = after or Floor()
    async with store.read() as session:
        ops = (
            await session.scalars(select(OutboxRow).where(OutboxRow.id > after.op).order_by(OutboxRow.id))
        ).all()
        task_ids = {op.task_id for op in ops}
        adopted = (
            await session.scalars(
                select(HistoryRow).where(
                    HistoryRow.via.in_(("match", "recovery")), HistoryRow.id > after.history
                )
            )
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
                remote_id=str(link.remote_id) if link is not None and link.remote_id is not None else None,
                op_id=op.id,
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
        # Said only of what was read: a member that could not be read may hold anything.
        lines.append(
            "nothing to do: every member agrees with the store"
            if not plan.errors
            else "nothing to do among the members that could be read; the plan misses those below"
        )
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
        lines.append("left unlinked as ambiguous (a title or match key one member holds twice):")
        lines.extend(f"  {c}:{r}" for c, r in plan.held_apart)
    for connector, n in sorted(plan.already_queued.items()):
        lines.append(f"{connector}: {n} writes already queued in the store (the next sync makes them too)")
    lines.extend(f"error: {e}" for e in plan.errors)
    return "\n".join(lines)


@dataclass(frozen=True)
class Floor:
    """The last outbox operation and history row of a store before a plan runs on it."""

    op: int = 0
    history: int = 0


NOT_REVIEWED = "not in the reviewed plan: retry it to make it, or drop it"


class ApplyRefused(Exception):
    """`plan --apply` will not run on this store now; the message says why and what to do."""


@dataclass
class Applied:
    plan: Plan
    made: list[PlannedWrite] = field(default_factory=list)
    failed: list[tuple[PlannedWrite, str]] = field(default_factory=list)  # with the platform's error
    unreviewed: list[PlannedWrite] = field(default_factory=list)  # parked: not in the reviewed plan
    follow_ups: int = 0  # writes the applied ones led to (a child's parent), left for the daemon

    def as_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan.as_json(),
            "made": [asdict(w) for w in self.made],
            "failed": [{**asdict(w), "error": e} for w, e in self.failed],
            "unreviewed": [asdict(w) for w in self.unreviewed],
            "follow_ups": self.follow_ups,
        }


@dataclass(frozen=True)
class Reviewed:
    """The writes of a plan a person reviewed, as what they read: platform, scope, operation,
    title and values (`PlannedWrite.key`), counted."""

    writes: Counter[str]

    @classmethod
    def parse(cls, data: Any) -> Reviewed:
        """From a plan's JSON as `plan --json` printed it; ValueError says what is wrong."""
        if not isinstance(data, dict) or not isinstance(data.get("writes"), list):
            raise ValueError(
                "is not a plan's JSON (`taskbridge plan --json` prints one): it has no writes list"
            )
        try:
            return cls(
                Counter(
                    review_key(
                        w["connector"], w["scope"], w["op"], w.get("remote_id"), w["title"], w["fields"]
                    )
                    for w in data["writes"]
                )
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"is not a plan's JSON (`taskbridge plan --json` prints one): a write lacks {exc}"
            ) from None


def unreviewed(plan: Plan, reviewed: Reviewed) -> list[PlannedWrite]:
    """The writes of `plan` beyond those `reviewed` holds."""
    budget = Counter(reviewed.writes)
    extra: list[PlannedWrite] = []
    for w in plan.writes:
        if budget[w.key()] > 0:
            budget[w.key()] -= 1
        else:
            extra.append(w)
    return extra


async def apply_plan(cfg: Config, *, routes: Sequence[str] = (), reviewed: Reviewed | None = None) -> Applied:
    """`taskbridge plan --apply`: decide as `make_plan` does, but in the real store, then make
    the writes so decided and no other: the worker claims only the operations this run queued.
    With `reviewed` (a plan printed before), a write it does not hold is parked instead, for a
    person to retry or drop. Writes the applied ones lead to (a child's parent, once its parent's
    create has landed) stay queued for the daemon, counted.

    The daemon must not run on the store meanwhile (two deciders would make the plan a guess): a
    live lease refuses the apply, and the apply holds the `plan-apply` lease, which a daemon
    starting meanwhile refuses to start under. No write may be queued from before (they would go
    out with these, unshown), and none is merged into the plan's own while they wait (the context
    seals them). Raises ValueError for an unknown route, ApplyRefused otherwise."""
    chosen = _chosen(cfg, routes)
    store = Store.open(cfg.store.url)
    connectors = build_connectors(cfg)
    ctx = EngineContext(store, chosen, connectors, replica=f"plan-apply-{os.getpid()}")
    try:
        await store.migrate()
        async with leases.holding(ctx, leases.PLAN_APPLY, DEFAULT_LEASE_TTL):
            return await _apply(ctx, cfg, reviewed)
    except leases.NotLeaseOwner as exc:
        raise ApplyRefused(f"another plan is being applied to this store (by {exc.holder})") from None
    finally:
        for conn in connectors.values():
            await conn.aclose()
        await store.close()


async def _apply(ctx: EngineContext, cfg: Config, reviewed: Reviewed | None) -> Applied:
    async with ctx.store.read() as session:
        holders = [h for h in await live_holders(session) if h != ctx.replica]
        queued = await unfinished_writes(session)
        floor = Floor(
            op=await session.scalar(select(func.coalesce(func.max(OutboxRow.id), 0))) or 0,
            history=await session.scalar(select(func.coalesce(func.max(HistoryRow.id), 0))) or 0,
        )
    if holders:
        raise ApplyRefused(
            f"a daemon runs on this store (replica {', '.join(holders)}): stop it, apply the plan, "
            "then start it again"
        )
    waiting = queued[OpState.PENDING] + queued[OpState.CLAIMED]
    if waiting:
        raise ApplyRefused(
            f"{waiting} writes are already queued in the store, and a plan shows only what the next "
            "sync decides: make them first (`taskbridge sync --once`), or see and drop them "
            "(`taskbridge outbox list`)"
        )
    result = Applied(plan=Plan())
    await _decide(ctx, result.plan)
    await _read_back(ctx.store, result.plan, after=floor)
    if not result.plan.writes:
        return result
    first, last = result.plan.writes[0].op_id, result.plan.writes[-1].op_id
    ctx.sealed_ops = last  # what is queued from now on goes behind these, never into them
    if reviewed is not None:
        result.unreviewed = unreviewed(result.plan, reviewed)
        await _park(ctx, [w.op_id for w in result.unreviewed])
    worker = Worker(ctx, WorkerSettings.from_config(cfg.workers))
    await worker.run_until_idle(within=(first, last))
    await _outcomes(ctx.store, result, floor)
    return result


async def _park(ctx: EngineContext, ids: Sequence[int]) -> None:
    """Park the writes a reviewed plan did not hold, as the worker parks a failure: for a person
    to retry or drop (`taskbridge outbox`, the API, the console)."""
    if not ids:
        return
    now = ctx.now()
    async with ctx.store.transaction() as session:
        for row in (await session.scalars(select(OutboxRow).where(OutboxRow.id.in_(ids)))).all():
            row.state = advance(row.state, OpState.PARKED)  # pending: nobody else runs on the store
            row.last_error = NOT_REVIEWED
            row.done_at = now
            row.done_by = ctx.replica
    log.info("parked %d writes the reviewed plan did not show", len(ids))


async def _outcomes(store: Store, result: Applied, floor: Floor) -> None:
    planned = {w.op_id: w for w in result.plan.writes}
    skipped = {w.op_id for w in result.unreviewed}
    async with store.read() as session:
        rows = (
            await session.execute(
                select(OutboxRow.id, OutboxRow.state, OutboxRow.last_error).where(OutboxRow.id > floor.op)
            )
        ).all()
    for op_id, state, error in rows:
        write = planned.get(op_id)
        if write is None:
            result.follow_ups += state in (OpState.PENDING, OpState.CLAIMED)
        elif op_id in skipped:
            continue
        elif state == OpState.DONE:
            result.made.append(write)
        else:
            result.failed.append((write, error or f"not made yet ({state})"))


def render_applied(result: Applied) -> str:
    lines = [render(result.plan), f"applied: {len(result.made)} writes made"]
    for w, error in result.failed:
        lines.append(f"  not made: {w.op} on {w.connector}/{w.scope}: {w.title!r}: {error}")
    if result.failed:
        lines.append(
            f"{len(result.failed)} writes not made: the daemon retries those waiting; "
            "`taskbridge outbox list` shows the parked ones"
        )
    if result.unreviewed:
        lines.append(f"{len(result.unreviewed)} writes not in the reviewed plan were parked, not made:")
        lines.extend(f"  {w.op} on {w.connector}/{w.scope}: {w.title!r}" for w in result.unreviewed)
        lines.append("  (`taskbridge outbox list` shows them; retry or drop each)")
    if result.follow_ups:
        lines.append(
            f"{result.follow_ups} writes the applied ones led to (a subtask's parent once its parent "
            "landed, or a side that changed under a write) are queued for the daemon"
        )
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
            copies = await list_route(
                ctx,
                route,
                why=f"to match route {route_name}'s tasks",
                advice="nothing was decided; fix the connector (its scope, its credential) and run it again.",
            )
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
        lines.append(f"  {m.canonical.get('title')!r} (by {m.by}, confidence {m.confidence:g}): {where}")
    if result.ambiguous:
        lines.append(
            f"left unlinked as ambiguous ({len(result.ambiguous)}: a title or match key one member holds twice):"
        )
        lines.extend(
            f"  {c.member.connector}:{c.task.remote_id} {c.values.get('title')!r}" for c in result.ambiguous
        )
    lines.append(f"{len(result.unmatched)} tasks matched nowhere (left as they are)")
    return "\n".join(lines)
