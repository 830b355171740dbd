"""Webhook deliveries: recorded fast, deduplicated, processed from the inbox.

`receive()` (called by the HTTP endpoint) verifies the signature, parses the body, and records
the delivery under its delivery id (or the body's hash) in the inbox; a second delivery with the
same key is a duplicate. Nothing else happens before the answer, so the platform gets its 2xx
fast. `process_pending()` takes recorded deliveries and, for each task event, GETs the task
(deliveries can arrive out of order, so the payload is a trigger, not the truth) and observes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bridge import metrics
from bridge.engine.comments import sync_comments
from bridge.engine.context import EngineContext
from bridge.engine.poller import apply_remote_deletion, mark_gone_from_view
from bridge.engine.sync import Observation, link_by_remote, observe
from bridge.store.tables import InboxRow
from connectors.base import BadSignature, ConnectorError, GoneFromView, NotFound, Retryable, WebhookEvent

log = logging.getLogger("taskbridge.inbox")

MAX_ATTEMPTS = 10


@dataclass(frozen=True)
class Receipt:
    status: int  # the HTTP status to answer
    result: str  # ok | duplicate | bad_signature | malformed | unknown_connector
    detail: str = ""


async def receive(ctx: EngineContext, connector: str, headers: dict[str, str], body: bytes) -> Receipt:
    conn = ctx.connectors.get(connector)
    if conn is None or not conn.capabilities.webhooks:
        metrics.webhooks_received.labels("unknown", "unknown_connector").inc()
        return Receipt(404, "unknown_connector", "no such connector takes webhooks")
    try:
        conn.verify_webhook(headers, body, ctx.webhook_secrets.get(connector, []))
    except BadSignature as exc:
        metrics.webhooks_received.labels(connector, "bad_signature").inc()
        log.warning("webhook for %s refused: %s", connector, exc)
        return Receipt(401, "bad_signature", str(exc))
    try:
        events = conn.parse_webhook(headers, body)
    except (BadSignature, ValueError, KeyError, TypeError) as exc:
        metrics.webhooks_received.labels(connector, "malformed").inc()
        return Receipt(400, "malformed", f"not a delivery this connector understands: {exc}")
    delivery = next((e.delivery_id for e in events if e.delivery_id), None)
    key = delivery or "sha256:" + hashlib.sha256(body).hexdigest()
    try:
        async with ctx.store.transaction() as session:
            session.add(
                InboxRow(
                    connector=connector,
                    delivery_key=key[:200],
                    body=body.decode("utf-8", "replace"),
                    state="pending",
                    attempts=0,
                    received_at=ctx.now(),
                )
            )
    except IntegrityError:
        metrics.webhooks_received.labels(connector, "duplicate").inc()
        return Receipt(409, "duplicate", "this delivery was received before")
    metrics.webhooks_received.labels(connector, "ok").inc()
    ctx.inbox_ready.set()
    return Receipt(202, "ok")


async def process_pending(ctx: EngineContext, *, limit: int = 50, claim_ttl: float = 120.0) -> int:
    """Claim recorded deliveries, oldest first, and process them. Any replica may run this: a
    claim (FOR UPDATE SKIP LOCKED on PostgreSQL) keeps two from processing one delivery, and
    expires, so a crashed replica's deliveries go back to the pool. Returns how many were handled."""
    now = ctx.now()
    async with ctx.store.transaction() as session:
        query = (
            select(InboxRow)
            .where(
                InboxRow.received_at <= now,
                (InboxRow.state == "pending")
                | ((InboxRow.state == "claimed") & (InboxRow.claim_expires_at < now)),
            )
            .order_by(InboxRow.id)
            .limit(limit)
        )
        if ctx.store.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        rows = (await session.scalars(query)).all()
        for row in rows:
            row.state = "claimed"
            row.claimed_by = ctx.replica
            row.claim_expires_at = now + timedelta(seconds=claim_ttl)
        work = [(r.id, r.connector, r.body, r.attempts) for r in rows]
    for inbox_id, connector, body, attempts in work:
        try:
            await _process(ctx, connector, body.encode())
        except Retryable as exc:
            await _mark(
                ctx, inbox_id, "failed" if attempts + 1 >= MAX_ATTEMPTS else "pending", str(exc), retry=True
            )
            continue
        except ConnectorError as exc:
            await _mark(ctx, inbox_id, "failed", str(exc))
            continue
        await _mark(ctx, inbox_id, "done", None)
    return len(work)


async def _mark(
    ctx: EngineContext, inbox_id: int, state: str, error: str | None, *, retry: bool = False
) -> None:
    async with ctx.store.transaction() as session:
        row = await session.get(InboxRow, inbox_id)
        if row is None:
            return
        row.state = state
        row.error = error
        row.attempts += 1
        row.claimed_by = None
        row.claim_expires_at = None
        if retry and state == "pending":
            # Wait before the next try by moving its place in time; polling covers it meanwhile.
            row.received_at = ctx.now() + timedelta(seconds=min(300, 2**row.attempts))
        if state in ("done", "failed"):
            row.processed_at = ctx.now()


async def _process(ctx: EngineContext, connector: str, body: bytes) -> None:
    conn = ctx.connectors[connector]
    try:
        events = conn.parse_webhook({}, body)
    except (BadSignature, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ConnectorError(f"unreadable delivery: {exc}", connector=connector) from None
    for event in events:
        await handle_event(ctx, connector, event)


async def handle_event(ctx: EngineContext, connector: str, event: WebhookEvent) -> None:
    if not event.scope:
        # Some payloads (e.g. comment events) don't name their scope; the link knows it.
        async with ctx.store.read() as session:
            link = await link_by_remote(session, connector, event.remote_id)
        if link is None:
            return
        event = WebhookEvent(link.scope, event.remote_id, event.kind, event.delivery_id, event.task)
    found = ctx.member(connector, event.scope)
    if found is None:
        return  # a scope no route syncs
    route, member = found
    conn = ctx.connectors[connector]
    if event.kind == "comment":
        async with ctx.store.read() as session:
            link = await link_by_remote(session, connector, event.remote_id)
            link_id = link.id if link is not None else None
        if link_id is not None:
            await sync_comments(ctx, route, member, link_id)
        return
    try:
        rt = event.task if event.task is not None else await conn.get_task(event.scope, event.remote_id)
    except NotFound:
        async with ctx.store.transaction() as session:
            await apply_remote_deletion(ctx, session, route, member, event.remote_id)
        return
    except GoneFromView:
        async with ctx.store.transaction() as session:
            await mark_gone_from_view(ctx, session, member, event.remote_id)
        return
    async with ctx.store.transaction() as session:
        await observe(ctx, session, Observation(route, member, rt, "webhook"))
