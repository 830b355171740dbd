"""Webhook deliveries: recorded fast, deduplicated, processed from the inbox.

The promise: a delivery is answered 2xx only once it is recorded, or once it is known to report
nothing new; so a delivery the platform sees accepted is never lost with the process.

`receive()` (called by the HTTP endpoint) verifies the signature, parses the body, and records
the delivery under its signed event id (or the body's hash) in the inbox, with the few non-secret
headers its connector's `parse_webhook` reads (`webhook_headers`); a second delivery with the same
key is a duplicate, whatever unsigned headers it arrives with. A delivery that carries its tasks
and shows each as its link already agreed (most often our own write coming back), or as a
mirror our create made before the create's outcome is recorded, is answered without being
recorded (`_unrecorded`; one recorded before is still a duplicate). Every refusal
is a 4xx counted in `taskbridge_webhooks_received_total` by result. Nothing else happens before
the answer but that judging (a read of the links, a second for a marked task whose id no link
holds, and, when a connector reads a carried task, a lookup of what it caches, such as a board's
lanes, on a miss), so the platform gets its 2xx fast.
A recorded delivery is claimed by the replica that received it and handed to its inbox loop in
memory; one left behind (the process died) is released at the next start, or its claim expires.
`process_pending()` takes recorded deliveries, parses each with the headers recorded with it
and, for each task event, GETs the task unless the delivery carries a
version no older than one seen (deliveries can arrive out of order: a payload that only names a
task is a trigger, not the truth) and observes it: a batch's tasks each after the parent it names
when the batch holds that parent too, so a child is linked under a parent created in the same
batch however the platform ordered their deliveries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, Select, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bridge import metrics
from bridge.defaults import (
    DEFAULT_INBOX_BATCH,
    DEFAULT_INBOX_FETCHES,
    DEFAULT_INBOX_MAX_ATTEMPTS,
)
from bridge.engine import core
from bridge.engine.comments import sync_comments
from bridge.engine.context import EngineContext, HandedDelivery
from bridge.engine.routes import Member, Route
from bridge.engine.sync import (
    Observation,
    apply_remote_deletion,
    date_contested,
    link_by_remote,
    linked_parents,
    mark_gone_from_view,
    needs_observing,
    observe,
    our_create_coming_back,
    prefetch_links,
    undated_contested,
)
from bridge.logs import log_context
from bridge.model import as_utc
from bridge.store import refusal
from bridge.store.prepared import any_of, run
from bridge.store.states import DeliveryState, LinkState, advance
from bridge.store.tables import InboxRow, LinkRow
from connectors.base import (
    BadSignature,
    ConnectorError,
    GoneFromView,
    NotFound,
    RemoteTask,
    Retryable,
    WebhookEvent,
    recordable_headers,
)

log = logging.getLogger("taskbridge.inbox")

# While deliveries are handed to the inbox loop in memory, it still claims from the store at
# least this often (seconds): what waits there (a retry come due, a claim another replica let
# expire, a delivery a person retried) is not starved by a steady stream of new ones.
INBOX_STORE_LOOK = 1.0
# Deliveries held in memory for the inbox loop at most; past that (the loop is far behind) they
# are recorded unclaimed, for the loop, or any replica, to claim from the store.
INBOX_HANDED_MAX = 1000


@dataclass(frozen=True)
class Receipt:
    status: int  # the HTTP status to answer
    result: str  # ok | unchanged | duplicate | bad_signature | malformed | unknown_connector
    detail: str = ""


async def receive(ctx: EngineContext, connector: str, headers: dict[str, str], body: bytes) -> Receipt:
    with log_context(connector=connector if connector in ctx.connectors else None):
        conn = ctx.connectors.get(connector)
        if conn is None or not conn.capabilities.webhooks:
            metrics.webhooks_received.labels("unknown", "unknown_connector").inc()
            return Receipt(404, "unknown_connector", "no such connector takes webhooks")
        try:
            conn.verify_webhook(headers, body, ctx.webhook_secrets.get(connector, []))
        except BadSignature as exc:
            metrics.webhooks_received.labels(connector, "bad_signature").inc()
            log.warning("webhook for %s refused: %s", connector, _text(str(exc)))
            return Receipt(401, "bad_signature", _text(str(exc)))
        except Exception:
            # A verifier must refuse what a stranger sends, never crash on it: unauthenticated all the same.
            metrics.webhooks_received.labels(connector, "bad_signature").inc()
            log.exception("webhook for %s refused: its signature could not be checked", connector)
            return Receipt(401, "bad_signature", "the signature could not be checked")
        try:
            events = conn.parse_webhook(headers, body)
            key = _delivery_key(events, body)
        except Exception as exc:  # a signed body that is too deep, not UTF-8, not the platform's shape
            metrics.webhooks_received.labels(connector, "malformed").inc()
            # In words, without class names: connectors refuse a body with BadSignature, which in
            # an answer to a correctly signed delivery would read as a signature failure. Its
            # message says what is wrong; anything else is what reading the body ran into.
            if isinstance(exc, BadSignature):
                detail = _text(str(exc))
            else:
                detail = _text(f"webhook body could not be read: {exc}")
            log.warning("webhook for %s refused: %s", connector, detail)
            return Receipt(400, "malformed", detail)
        judged = await _unrecorded(ctx, connector, key, events)
        if judged is not None:
            metrics.webhooks_received.labels(connector, judged.result).inc()
            return judged
        kept = recordable_headers(headers, getattr(conn, "webhook_headers", ()))
        now = ctx.now()
        text = body.decode("utf-8", "replace")
        expires = now + timedelta(seconds=ctx.inbox_claim_ttl)
        # Recorded claimed by this replica and handed to its inbox loop: the loop's own claim of
        # it (a write transaction) is saved. Its claim expires as any other: a process that dies
        # holding it leaves it to the next start's `release_claims`, or to any replica later.
        hand = ctx.inbox_handing and len(ctx.inbox_handed) < INBOX_HANDED_MAX
        record = {
            "connector": connector,
            "delivery_key": key,
            "body": text,
            "headers": kept or None,
            "state": DeliveryState.CLAIMED if hand else DeliveryState.PENDING,
            "claimed_by": ctx.replica if hand else None,
            "claim_expires_at": expires if hand else None,
            "attempts": 0,
            "received_at": now,
        }
        try:
            async with ctx.store.statements(answers=True) as db:
                row_id = (await run(db, _RECORD, record)).scalar_one()
        except IntegrityError:
            metrics.webhooks_received.labels(connector, "duplicate").inc()
            return _DUPLICATE
        metrics.webhooks_received.labels(connector, "ok").inc()
        if hand:
            ctx.inbox_handed.append(HandedDelivery(row_id, connector, text, kept, expires))
        ctx.inbox_ready.set()
        return Receipt(202, "ok")


async def _unrecorded(
    ctx: EngineContext, connector: str, key: str, events: list[WebhookEvent]
) -> Receipt | None:
    """The answer to a delivery that needs no record, or None to record it. A delivery that
    carries its tasks (no GET needed) and shows each as its link already agreed, by the rule
    that lets a poll skip an unchanged task (`needs_observing`), reports nothing to act on: most
    are our own writes coming back, one for nearly every mirror write to a platform that sends
    webhooks, and each would otherwise cost a write transaction to record, a claim, an
    observation and a mark. Such a delivery recorded before is a duplicate, as any; one never
    recorded is not deduplicated, and a replay of it is judged again, as a late delivery is (a
    report older than one applied changes nothing). What cannot be judged here is recorded."""
    if not events:
        return None
    conn = ctx.connectors[connector]
    carried: list[tuple[Route, Member, RemoteTask]] = []
    stamped: list[WebhookEvent] = []  # creations and edits reported by a stamp alone, not the task
    try:
        for event in events:
            located = ctx.member(connector, event.scope) if event.scope else None
            if event.kind not in _CARRYING or located is None:
                return None
            task = await conn.event_task(event)
            if task is not None:
                carried.append((*located, task))
            elif event.stamp is not None:
                stamped.append(event)
            else:
                return None
        async with ctx.store.reading() as db:
            for event in stamped:
                if not _answered_to_us(ctx, connector, event) and not await _known(db, connector, event):
                    return None
            for route, member, task in carried:
                if await needs_observing(ctx, db, route, member, [task]) and not (
                    await our_create_coming_back(db, route, member, task)
                ):
                    return None  # news: recording it finds a duplicate, without a read first
            if (await run(db, _RECORDED, {"connector": connector, "key": key})).first() is not None:
                return _DUPLICATE
    except Exception:  # the connector or the store could not say: recording will
        return None
    return Receipt(202, "unchanged")


_CARRYING = frozenset({"created", "updated"})  # event kinds that may carry the task they report
_LINKS = LinkRow.__table__

# The active links of a remote task: the times the store knows of it there.
_KNOWN = select(_LINKS.c.remote_created_at, _LINKS.c.remote_updated_at, _LINKS.c.is_mirror).where(
    _LINKS.c.connector == bindparam("connector"),
    _LINKS.c.remote_id == bindparam("remote_id"),
    _LINKS.c.state == LinkState.ACTIVE,
)


async def _known(db: Any, connector: str, event: WebhookEvent) -> bool:
    """Whether a delivery that reports a task by its stamp alone reports what the store knows
    already. A creation: the link our create made holds the id, with the creation time our
    create's answer gave (a creation says nothing more than what was created, which that answer
    said; any edit since has its own delivery; an id the platform gave anew to another task was
    made at another time, and is read). An edit: the link's time of the task there is the
    stamp, the version our last write's answer (or the last observation) showed: most are our
    own writes coming back. An edit made there within the same millisecond as our write would
    carry the same stamp; the next poll, which compares values, finds it."""
    assert event.stamp is not None
    stamp = as_utc(event.stamp)
    rows = (await run(db, _KNOWN, {"connector": connector, "remote_id": event.remote_id})).all()
    for created_at, updated_at, is_mirror in rows:
        if event.kind == "created":
            if is_mirror and created_at is not None and as_utc(created_at) == stamp:
                return True
        elif updated_at is not None and as_utc(updated_at) == stamp:
            return True
    return False


def _answered_to_us(ctx: EngineContext, connector: str, event: WebhookEvent) -> bool:
    """`_known` for a write of this process whose answer came and whose outcome is not recorded
    yet: a platform's delivery of our write often arrives before the record commits (it is sent
    as the write is answered). Nothing is lost by answering it so: the record to come keeps
    what our write wrote, which is all its delivery reports, and where the record fails the
    write is retried (a create first finds its task by its marker)."""
    assert event.stamp is not None
    answered = ctx.answered_writes.get((connector, event.remote_id))
    if answered is None:
        return False
    known = answered.created_at if event.kind == "created" else answered.updated_at
    return known is not None and as_utc(known) == as_utc(event.stamp)


async def _known_by_now(ctx: EngineContext, connector: str, event: WebhookEvent) -> bool:
    """Whether a recorded delivery reporting a task by its stamp alone reports a write of ours
    known since it was recorded: its answer came (`_answered_to_us`), or, for a creation, its
    record was made (`_known`). A bulk create's deliveries are sent as the platform creates,
    before the request is answered, so the intake could not tell them ours. Edits are not
    looked up in the store here: nearly every one recorded is a person's, and the look would
    cost a statement each on the busiest path."""
    if event.stamp is None or event.kind not in _CARRYING:
        return False
    if _answered_to_us(ctx, connector, event):
        return True
    if event.kind != "created":
        return False
    try:
        async with ctx.store.reading() as db:
            return await _known(db, connector, event)
    except Exception:  # the store could not say: the task is read, as the intake would have had it
        return False


def _delivery_key(events: list[WebhookEvent], body: bytes) -> str:
    """What a delivery is deduplicated on: its signed event id (connectors take `delivery_id` only
    from what the signature covers), else the hash of the raw body. Raises UnicodeEncodeError for
    an event whose ids are not text the store can hold (a lone surrogate from a JSON escape)."""
    for event in events:
        for value in (event.scope, event.remote_id, event.delivery_id or ""):
            value.encode()
    delivery = next((e.delivery_id for e in events if e.delivery_id), None)
    if delivery is None:
        return "sha256:" + hashlib.sha256(body).hexdigest()
    if len(delivery) > 190 or not delivery.isprintable():
        return "id-sha256:" + hashlib.sha256(delivery.encode()).hexdigest()
    return delivery


def _text(detail: str) -> str:
    """`detail` as text any answer or log line can carry (no lone surrogates), at most 500 chars."""
    return detail.encode("utf-8", "backslashreplace").decode()[:500]


_INBOX = InboxRow.__table__
_DUPLICATE = Receipt(409, "duplicate", "this delivery was received before")
# Core statements, built once (see bridge/store/prepared.py): a delivery is recorded, claimed and
# marked without loading it into an ORM session, the webhook path's most frequent writes.
_RECORD = insert(_INBOX).returning(_INBOX.c.id)
_RECORDED = select(_INBOX.c.id).where(
    _INBOX.c.connector == bindparam("connector"), _INBOX.c.delivery_key == bindparam("key")
)
_CLAIM = (
    update(_INBOX)
    .where(any_of(_INBOX.c.id))
    .values(
        state=DeliveryState.CLAIMED, claimed_by=bindparam("replica"), claim_expires_at=bindparam("expires")
    )
)
_MARK = (
    update(_INBOX)
    # Only while the claim is still ours: a batch slower than its claim may find the delivery
    # taken (and maybe finished) by another replica, whose record it must not overwrite.
    .where(
        _INBOX.c.id == bindparam("row_id"),
        _INBOX.c.state == DeliveryState.CLAIMED,
        _INBOX.c.claimed_by == bindparam("replica"),
    )
    .values(
        state=bindparam("new_state"),
        attempts=_INBOX.c.attempts + 1,
        error=bindparam("new_error"),
        claimed_by=None,
        claim_expires_at=None,
        # A retry waits by moving its place in time; the others keep theirs.
        received_at=func.coalesce(
            bindparam("retry_at", type_=_INBOX.c.received_at.type), _INBOX.c.received_at
        ),
        processed_at=bindparam("new_processed_at"),
    )
)


@functools.cache
def _claimable(*, skip_locked: bool) -> Select[Any]:
    """Deliveries to process: pending, or claimed by a worker whose claim expired (built once:
    see bridge/store/prepared.py)."""
    now = bindparam("now")
    query = (
        select(
            InboxRow.id,
            InboxRow.connector,
            InboxRow.body,
            InboxRow.attempts,
            InboxRow.headers,
            InboxRow.state,
        )
        .where(
            InboxRow.received_at <= now,
            (InboxRow.state == DeliveryState.PENDING)
            | ((InboxRow.state == DeliveryState.CLAIMED) & (InboxRow.claim_expires_at < now)),
        )
        .order_by(InboxRow.id)
        .limit(bindparam("limit", type_=Integer))
    )
    return query.with_for_update(skip_locked=True, of=InboxRow) if skip_locked else query


_RELEASE = (
    update(_INBOX)
    .where(_INBOX.c.state == DeliveryState.CLAIMED, _INBOX.c.claimed_by == bindparam("replica"))
    .values(state=DeliveryState.PENDING, claimed_by=None, claim_expires_at=None)
)


async def release_claims(ctx: EngineContext) -> int:
    """Give back every delivery this replica holds claimed (a stop, or a start after a crash:
    the replica's id outlives its process), so they wait for no claim to expire; the deliveries
    handed to this process's loop are forgotten with them. A daemon hands none over until its
    start has run this (`ctx.inbox_handing`)."""
    ctx.inbox_handed.clear()
    async with ctx.store.statements() as conn:
        result = await conn.execute(_RELEASE, {"replica": ctx.replica})
        return int(result.rowcount or 0)


def _take_handed(ctx: EngineContext, now: datetime, limit: int) -> list[HandedDelivery]:
    """Up to `limit` deliveries handed by the webhook endpoint, oldest first. One whose claim
    has less than half its time left is dropped: the loop is far behind, and a claim that might
    expire while it is processed is left to expire and be claimed again from the store."""
    taken: list[HandedDelivery] = []
    margin = timedelta(seconds=ctx.inbox_claim_ttl / 2)
    while ctx.inbox_handed and len(taken) < limit:
        handed = ctx.inbox_handed.popleft()
        if handed.claim_expires_at - now >= margin:
            taken.append(handed)
    return taken


def _give_back(ctx: EngineContext, taken: list[HandedDelivery]) -> None:
    """Handed deliveries a batch took but could not finish (the store refused it): first in
    line again, still claimed, rather than left to wait out their claim."""
    ctx.inbox_handed.extendleft(reversed(taken))


async def process_pending(
    ctx: EngineContext,
    *,
    limit: int = DEFAULT_INBOX_BATCH,
    fetches: int = DEFAULT_INBOX_FETCHES,
) -> int:
    """Claim recorded deliveries, oldest first, and process them as one batch. Any replica may
    run this: a claim (FOR UPDATE SKIP LOCKED on PostgreSQL) keeps two from processing one
    delivery, and expires (after `ctx.inbox_claim_ttl`, as a handed delivery's claim does), so a
    crashed replica's deliveries go back to the pool.

    The batch costs two write transactions however many deliveries it holds: the claim, and one
    that observes every task fetched and marks every delivery. Deliveries this replica's webhook
    endpoint recorded are claimed already and handed over in memory (`ctx.inbox_handed`): a
    batch of only those costs the second alone; the store is looked at too when none were
    handed, and at least every INBOX_STORE_LOOK seconds. The tasks are fetched between the
    two, `fetches` at a time, each task once however many deliveries name it, and observed each
    after the parent it names when the batch holds that too (`_parents_first`). A delivery whose
    processing fails (a platform error, or anything unforeseen) is retried with a backoff and set
    aside as failed after DEFAULT_INBOX_MAX_ATTEMPTS, and holds back none of the others. Returns
    how many deliveries were handled."""
    now = ctx.now()
    # A look at the store is due: half the batch at most is taken from memory first, so a
    # stream of handed deliveries filling every batch cannot starve what waits there.
    look = time.monotonic() - ctx.inbox_looked_at >= INBOX_STORE_LOOK
    taken = _take_handed(ctx, now, limit // 2 if look else limit)
    rows: list[Any] = []
    if look or not taken:
        ctx.inbox_looked_at = time.monotonic()
        try:
            async with ctx.store.statements() as conn:
                query = _claimable(skip_locked=ctx.store.dialect == "postgresql")
                rows = list((await run(conn, query, {"now": now, "limit": limit - len(taken)})).all())
                for row in rows:
                    advance(row.state, DeliveryState.CLAIMED)
                if rows:
                    params = {"ids": [r.id for r in rows], "replica": ctx.replica}
                    await run(
                        conn, _CLAIM, {**params, "expires": now + timedelta(seconds=ctx.inbox_claim_ttl)}
                    )
        except BaseException:
            _give_back(ctx, taken)
            raise
    taken += _take_handed(ctx, now, limit - len(taken) - len(rows))  # the room the store left
    work = [_Delivery(h.id, h.connector, h.body, 0, h.headers) for h in taken]
    held = {d.id for d in work}  # a delivery in memory is never claimable, but never twice
    work += [
        _Delivery(r.id, r.connector, r.body, r.attempts, r.headers or {}) for r in rows if r.id not in held
    ]
    if not work:
        return 0
    for d in work:
        with log_context(**_log_fields(d)):
            try:
                d.events = _parse(ctx, d.connector, d.body.encode(), d.headers)
            except ConnectorError as exc:
                d.error, d.final = str(exc), True
            except Exception as exc:  # a connector's bug: this delivery is retried, the others go on
                log.exception("webhook delivery %s of %s could not be parsed", d.id, d.connector)
                d.error = f"internal error ({type(exc).__name__}); see the daemon log"
    await _resolve_scopes(ctx, [d for d in work if d.error is None])
    await _fetch_all(ctx, work, fetches)
    await _date_contested(ctx, work)
    found = _parents_first(ctx, work)
    try:
        async with ctx.store.transaction() as session:
            parents = await _linked_parents(ctx, session, work)
            seen: dict[str, set[str]] = {}
            for d, _, result in found:
                if isinstance(result, RemoteTask):
                    seen.setdefault(d.connector, set()).add(result.remote_id)
            for connector, remote_ids in seen.items():
                await prefetch_links(session, connector, remote_ids)
            late = await _dated_too_early(ctx, session, found)
            for d in work:
                if d.id in late:
                    d.error, d.results = DATED_TOO_EARLY, []
            for d, event, result in found:
                if d.id not in late:
                    await _observe(ctx, session, d, event, result, parents)
            await _mark(ctx, session, *work)
    except Exception as exc:
        if refusal(exc) is not None:
            _give_back(ctx, taken)  # tried again from memory once the store takes writes
            raise  # one by one would be refused too: the inbox loop says it once
        log.exception(
            "recording a batch of %d webhook deliveries failed; recording them one by one", len(work)
        )
        by_delivery: dict[int, list[Found]] = {}
        for f in found:
            by_delivery.setdefault(f[0].id, []).append(f)
        for d in _deliveries_in(found, work):
            try:
                async with ctx.store.transaction() as session:
                    for _, event, result in by_delivery.get(d.id, []):
                        await _observe(ctx, session, d, event, result)
                    await _mark(ctx, session, d)
            except Exception as exc:
                with log_context(**_log_fields(d)):
                    log.exception("webhook delivery %s of %s could not be processed", d.id, d.connector)
                d.error, d.final, d.results = (
                    f"internal error ({type(exc).__name__}); see the daemon log",
                    False,
                    [],
                )
                async with ctx.store.transaction() as session:
                    await _mark(ctx, session, d)
    return len(work)


DATED_TOO_EARLY = "a field another side changed since its times were judged: read and dated again"


async def _dated_too_early(ctx: EngineContext, session: AsyncSession, found: list[Found]) -> set[int]:
    """Deliveries on their first try whose task holds a field contested now but undated
    (`undated_contested`: judged before this transaction, when another side's observation since
    may have changed the bridge's value). They are tried again shortly, read and dated; a second
    try observes as it finds, so a delivery never fails for this."""
    wanted: dict[tuple[str, str], list[tuple[int, RemoteTask]]] = {}
    for d, event, result in found:
        if not d.attempts and isinstance(result, RemoteTask) and ctx.member(d.connector, event.scope):
            wanted.setdefault((d.connector, event.scope), []).append((d.id, result))
    late: set[int] = set()
    for (connector, scope), items in wanted.items():
        route, member = ctx.member(connector, scope)  # type: ignore[misc]
        undated = await undated_contested(ctx, session, route, member, [rt for _, rt in items])
        late.update(d_id for d_id, rt in items if rt.remote_id in undated)
    return late


def _log_fields(d: _Delivery) -> dict[str, str]:
    """What a delivery's log lines carry: its connector and id (as request_id)."""
    return {"connector": d.connector, "request_id": f"delivery-{d.id}"}


@dataclass
class _Delivery:
    id: int
    connector: str
    body: str
    attempts: int
    headers: dict[str, str]  # what the connector's webhook_headers kept of the delivery's
    events: list[WebhookEvent] = field(default_factory=list)
    # What each task event found: the task, or NotFound / GoneFromView; in event order.
    results: list[tuple[WebhookEvent, RemoteTask | ConnectorError]] = field(default_factory=list)
    error: str | None = None
    final: bool = False  # the error will not go away by retrying (an unreadable body)


def _parse(ctx: EngineContext, connector: str, body: bytes, headers: dict[str, str]) -> list[WebhookEvent]:
    """The delivery's events, parsed as it arrived: with the headers recorded for its connector."""
    conn = ctx.connectors.get(connector)
    if conn is None:
        raise ConnectorError("the connector is no longer configured", connector=connector)
    try:
        return conn.parse_webhook(headers, body)
    except (BadSignature, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ConnectorError(f"unreadable delivery: {exc}", connector=connector) from None


async def _resolve_scopes(ctx: EngineContext, work: list[_Delivery]) -> None:
    """Some payloads (e.g. comment events) don't name their scope; the link knows it."""
    wanted = {(d.connector, e.remote_id) for d in work for e in d.events if not e.scope}
    if not wanted:
        return
    scopes: dict[tuple[str, str], str] = {}
    async with ctx.store.read() as session:
        for connector in {c for c, _ in wanted}:  # one read per connector, not per event
            rows = await session.execute(
                select(LinkRow.remote_id, LinkRow.scope).where(
                    LinkRow.connector == connector,
                    LinkRow.remote_id.in_([r for c, r in wanted if c == connector]),
                )
            )
            scopes.update({(connector, remote_id): scope for remote_id, scope in rows.all()})
    for d in work:
        d.events = [
            dataclasses.replace(e, scope=scopes[(d.connector, e.remote_id)]) if not e.scope else e
            for e in d.events
            if e.scope or (d.connector, e.remote_id) in scopes
        ]


async def _date_contested(ctx: EngineContext, work: list[_Delivery]) -> None:
    """The tasks fetched for the deliveries, dated field by field where they hold a contested
    field and their platform dates fields (`date_contested`): a GET shows every edit made there
    since the bridge last saw the task, dated by the latest."""
    fetched: dict[tuple[str, str], list[RemoteTask]] = {}
    for d in work:
        conn = ctx.connectors.get(d.connector)
        if conn is None or not conn.capabilities.field_history:
            continue
        for event, result in d.results:
            if isinstance(result, RemoteTask):
                fetched.setdefault((d.connector, event.scope), []).append(result)
    dated: dict[tuple[str, str], RemoteTask] = {}
    for (connector, scope), tasks in fetched.items():
        located = ctx.member(connector, scope)
        if located is not None:
            for rt in await date_contested(ctx, *located, tasks):
                if rt.field_times is not None:
                    dated[(connector, rt.remote_id)] = rt
    if dated:
        for d in work:
            d.results = [
                (event, dated.get((d.connector, r.remote_id), r) if isinstance(r, RemoteTask) else r)
                for event, r in d.results
            ]


async def _fetch_all(ctx: EngineContext, work: list[_Delivery], fetches: int) -> None:
    """GET every task the deliveries name (each once), `fetches` at a time; sync the comments
    of comment events. Deliveries are triggers, not the truth: they can arrive out of order."""
    gate = asyncio.Semaphore(fetches)
    found: dict[tuple[str, str, str], asyncio.Task[RemoteTask]] = {}

    async def get(connector: str, event: WebhookEvent) -> RemoteTask:
        async with gate:
            return await ctx.connectors[connector].get_task(event.scope, event.remote_id)

    async def one(d: _Delivery) -> None:
        with log_context(**_log_fields(d)):
            try:
                for event in d.events:
                    located = ctx.member(d.connector, event.scope)
                    if located is None:
                        continue  # a scope no route syncs
                    route, member = located
                    if event.kind == "comment":
                        async with gate:
                            await _sync_comments_of(ctx, route, member, event.remote_id)
                        continue
                    carried = await ctx.connectors[d.connector].event_task(event)
                    if carried is not None:  # the delivery carries the task: no GET
                        d.results.append((event, carried))
                        continue
                    if await _known_by_now(ctx, d.connector, event):
                        continue  # ours, answered or recorded since the delivery was: nothing to read
                    key = (d.connector, event.scope, event.remote_id)
                    if key not in found:
                        found[key] = asyncio.ensure_future(get(d.connector, event))
                    try:
                        d.results.append((event, await asyncio.shield(found[key])))
                    except (NotFound, GoneFromView) as exc:
                        d.results.append((event, exc))
            except Retryable as exc:
                d.error = str(exc)
            except ConnectorError as exc:
                d.error, d.final = str(exc), True
            except Exception as exc:
                log.exception("webhook delivery %s of %s could not be processed", d.id, d.connector)
                d.error = f"internal error ({type(exc).__name__}); see the daemon log"

    await asyncio.gather(*(one(d) for d in work if d.error is None))


async def _sync_comments_of(ctx: EngineContext, route: Route, member: Member, remote_id: str) -> None:
    async with ctx.store.read() as session:
        link = await link_by_remote(session, member.connector, remote_id)
        link_id = link.id if link is not None else None
    if link_id is not None:
        await sync_comments(ctx, route, member, link_id)


async def _linked_parents(
    ctx: EngineContext, session: AsyncSession, work: list[_Delivery]
) -> dict[tuple[str, str], dict[str, str]]:
    """Per (route, connector), the bridge tasks linked to the parents the batch's tasks name: one
    read for each that syncs `parent` (observe looks up only a parent linked since)."""
    wanted: dict[tuple[str, str], set[str]] = {}
    for d in work:
        for event, result in d.results:
            if not isinstance(result, RemoteTask) or result.parent_id is None:
                continue
            located = ctx.member(d.connector, event.scope)
            if located is not None and core.reads_parent(ctx.connectors[d.connector], *located):
                wanted.setdefault((located[0].name, d.connector), set()).add(result.parent_id)
    return {key: await linked_parents(session, *key, ids) for key, ids in wanted.items()}


Found = tuple[_Delivery, WebhookEvent, RemoteTask | ConnectorError]


def _parents_first(ctx: EngineContext, work: list[_Delivery]) -> list[Found]:
    """What the batch's deliveries found, in the order to observe it: a task after the parent it
    names when the batch holds that parent too (whatever deliveries they came in, in whatever
    order: a platform may send a child's creation before its parent's), else in delivery order
    (`core.parents_first_order`). Observed the other way round, the child would be linked with no
    parent and mirrored top level, and only a later observation of it would move it. Only a side
    whose parent is synced names one here; a delivery that failed observes nothing."""
    found = [(d, event, result) for d in work if d.error is None for event, result in d.results]
    keys: list[tuple[str, str]] = []
    parents: list[tuple[str, str] | None] = []
    for d, event, result in found:
        keys.append((d.connector, event.remote_id))
        parent = None
        if isinstance(result, RemoteTask) and result.parent_id is not None:
            located = ctx.member(d.connector, event.scope)
            if located is not None and core.reads_parent(ctx.connectors[d.connector], *located):
                parent = (d.connector, result.parent_id)
        parents.append(parent)
    return [found[i] for i in core.parents_first_order(keys, parents)]


def _deliveries_in(found: list[Found], work: list[_Delivery]) -> list[_Delivery]:
    """The deliveries, one at a time (when the batch could not be recorded at once): in the order
    of the first thing each found, then those that found nothing."""
    out: dict[int, _Delivery] = {}
    for d, _, _ in found:
        out.setdefault(d.id, d)
    for d in work:
        out.setdefault(d.id, d)
    return list(out.values())


async def _observe(
    ctx: EngineContext,
    session: AsyncSession,
    d: _Delivery,
    event: WebhookEvent,
    result: RemoteTask | ConnectorError,
    parents: dict[tuple[str, str], dict[str, str]] | None = None,
) -> None:
    """Observe what one event of a delivery found, in the caller's transaction."""
    located = ctx.member(d.connector, event.scope)
    if located is None:
        return
    route, member = located
    with log_context(**_log_fields(d)):
        if isinstance(result, NotFound):
            await apply_remote_deletion(ctx, session, route, member, event.remote_id)
        elif isinstance(result, GoneFromView):
            await mark_gone_from_view(ctx, session, member, event.remote_id)
        elif isinstance(result, RemoteTask):
            known = (parents or {}).get((route.name, d.connector))
            await observe(ctx, session, Observation(route, member, result, "webhook", known))


async def _mark(ctx: EngineContext, session: AsyncSession, *work: _Delivery) -> None:
    """Record how each delivery ended (one statement for all of them): done, failed for good,
    or given back to wait before its next try. The attempts counted are those of its claim,
    which this process holds."""
    now = ctx.now()
    params = []
    for d in work:
        attempts = d.attempts + 1
        retry_at = None
        if d.error is None:
            state = DeliveryState.DONE
        elif d.final or attempts >= DEFAULT_INBOX_MAX_ATTEMPTS:
            state = DeliveryState.FAILED
        else:
            state = DeliveryState.PENDING
            # Wait before the next try by moving its place in time; polling covers it meanwhile.
            retry_at = now + timedelta(seconds=min(300, 2**attempts))
        metrics.webhooks_processed.labels(d.connector, str(state)).inc()
        params.append(
            {
                "row_id": d.id,
                "new_state": state,
                "replica": ctx.replica,
                "new_error": d.error,
                "retry_at": retry_at,
                "new_processed_at": now if state != DeliveryState.PENDING else None,
            }
        )
    if params:
        await run(session, _MARK, params)
