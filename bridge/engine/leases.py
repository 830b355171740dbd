"""Leases: one replica at a time owns a job (a connector's polling) until its lease expires.

The owner renews before expiry; a graceful shutdown releases; a dead owner's lease is taken over
once expired, so a replica that dies is replaced within the TTL plus one poll interval. On SQLite
(one replica) the same code runs and always wins: one code path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from bridge.engine.context import EngineContext
from bridge.store.tables import LeaseRow

PLAN_APPLY = "plan-apply"  # held by `taskbridge plan --apply`; a daemon does not start under it


class NotLeaseOwner(Exception):
    """Another replica holds the lease, so the work is that replica's to do."""

    def __init__(self, name: str, holder: str) -> None:
        super().__init__(f"{name} is held by replica {holder}: ask that replica")
        self.name = name
        self.holder = holder


async def acquire(ctx: EngineContext, name: str, ttl: float) -> bool:
    """Take or renew the lease `name` for this replica; False while another live replica holds it."""
    now = ctx.now()
    try:
        async with ctx.store.transaction() as session:
            query = select(LeaseRow).where(LeaseRow.name == name)
            if ctx.store.dialect == "postgresql":
                query = query.with_for_update()
            row = await session.scalar(query)
            if row is None:
                session.add(
                    LeaseRow(
                        name=name,
                        holder=ctx.replica,
                        expires_at=now + timedelta(seconds=ttl),
                        acquired_at=now,
                    )
                )
                return True
            if row.holder != ctx.replica and row.expires_at > now:
                return False
            if row.holder != ctx.replica:
                row.acquired_at = now
            row.holder = ctx.replica
            row.expires_at = now + timedelta(seconds=ttl)
            return True
    except IntegrityError:
        return False  # another replica inserted it first


async def release(ctx: EngineContext, name: str) -> None:
    async with ctx.store.transaction() as session:
        await session.execute(delete(LeaseRow).where(LeaseRow.name == name, LeaseRow.holder == ctx.replica))


async def holder(ctx: EngineContext, name: str) -> str | None:
    async with ctx.store.read() as session:
        row = await session.get(LeaseRow, name)
        return row.holder if row is not None and row.expires_at > ctx.now() else None


@contextlib.asynccontextmanager
async def holding(ctx: EngineContext, name: str, ttl: float) -> AsyncIterator[None]:
    """Hold the lease `name` for the block, renewed every third of `ttl`, released after it.
    NotLeaseOwner when another live replica holds it."""
    if not await acquire(ctx, name, ttl):
        raise NotLeaseOwner(name, await holder(ctx, name) or "another replica")

    async def renew() -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            await acquire(ctx, name, ttl)

    renewer = asyncio.create_task(renew(), name=f"lease:{name}")
    try:
        yield
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        await release(ctx, name)
