"""`/api/v1/outbox` and `/api/v1/inbox`: dead letters (parked writes, failed webhook deliveries)
listed, retried and dropped by a person. Every endpoint needs the `admin` scope; what each action
does is `bridge.engine.deadletters`'s docstring. An unknown id answers 404, a row in the wrong
state for the action (retrying an operation that is not parked) 409; the bulk retries answer a
result per row."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from bridge.api.routes import ADMIN, Error, GuardedRoute, _ctx, errors
from bridge.engine import deadletters
from bridge.store.states import DeliveryState, OpState

router = APIRouter(
    prefix="/api/v1",
    route_class=GuardedRoute,
    tags=["dead letters"],
    responses={
        401: {"model": Error, "description": "no or unknown bearer token"},
        403: {"model": Error, "description": "the token lacks the scope"},
        413: {"model": Error, "description": "request body too large"},
    },
)


# A parameter's FieldInfo must not be shared between endpoints (FastAPI records the name of the
# first parameter it serves on it), so each endpoint gets its own.
def _id() -> Any:
    return PathParam(ge=1, le=2**63 - 1)


def _limit() -> Any:
    return Query(100, ge=1, le=deadletters.MAX_PAGE, description="at most this many, newest first")


def _cursor() -> Any:
    return Query(None, ge=1, le=2**63 - 1, description="the next_cursor of the page before")


class OperationOut(BaseModel):
    """A write the outbox owes one connector."""

    id: int
    task_id: str
    title: str | None = Field(description="the task's title; null once the task is gone")
    route: str
    connector: str = Field(description="the connector the write goes to")
    op: str = Field(description="what it writes (create, update, comment, archive, delete...)")
    state: str = Field(description="pending, claimed, done or parked")
    attempts: int
    last_error: str | None = Field(description="why its last attempt failed")
    created_at: datetime
    next_attempt_at: datetime
    done_at: datetime | None


class OperationPage(BaseModel):
    """A page of outbox operations, newest first."""

    operations: list[OperationOut]
    next_cursor: int | None = Field(
        description="pass it as `cursor` for the next page; null when this page was not full"
    )


class DeliveryOut(BaseModel):
    """A webhook delivery the inbox received."""

    id: int
    connector: str
    delivery_key: str = Field(description="the platform's delivery id, or the body's hash")
    state: str = Field(description="pending, claimed, done or failed")
    attempts: int
    error: str | None = Field(description="why its processing failed")
    received_at: datetime
    processed_at: datetime | None


class DeliveryPage(BaseModel):
    """A page of webhook deliveries, newest first."""

    deliveries: list[DeliveryOut]
    next_cursor: int | None = Field(
        description="pass it as `cursor` for the next page; null when this page was not full"
    )


class ResultOut(BaseModel):
    """What an action did to one row."""

    id: int
    ok: bool = Field(description="whether the action applied to the row")
    state: str | None = Field(description="the row's state afterwards; null once dropped")
    connector: str | None
    error: str | None = Field(description="why the action was refused; null when it applied")
    reason: Literal["unknown", "wrong_state"] | None = Field(
        description="why it was refused: no such id, or the row is not in the state the action needs"
    )


class Report(BaseModel):
    """What a bulk retry did, row by row."""

    done: int = Field(description="how many rows the action applied to")
    failed: int = Field(description="how many it was refused for")
    results: list[ResultOut]


class RetryAll(BaseModel):
    """Which rows a bulk retry takes (the body may be left out: every connector's)."""

    model_config = ConfigDict(extra="forbid")
    connector: str | None = Field(None, description="only this connector's (default: every one)")


def _out(result: deadletters.Result) -> ResultOut:
    return ResultOut.model_validate(result, from_attributes=True)


def _one(results: list[deadletters.Result]) -> ResultOut:
    """The single result of an action on one id, or its refusal as an HTTP error."""
    (result,) = results
    if result.reason == "unknown":
        raise HTTPException(404, result.error)
    if not result.ok:
        raise HTTPException(409, result.error)
    return _out(result)


def _report(results: list[deadletters.Result]) -> Report:
    done = sum(1 for r in results if r.ok)
    return Report(done=done, failed=len(results) - done, results=[_out(r) for r in results])


def _who(principal: Any) -> str:
    return str(getattr(principal, "name", None) or "api")


def _known_connector(request: Request, connector: str | None) -> None:
    if connector and connector not in _ctx(request).connectors:
        raise HTTPException(404, f"no connector {connector!r} is configured")


# -- outbox ------------------------------------------------------------------------------------------


@router.get("/outbox", response_model=OperationPage, dependencies=[ADMIN])
async def list_outbox(
    request: Request,
    state: Literal["pending", "claimed", "done", "parked", "all"] = "parked",
    connector: str | None = None,
    limit: int = _limit(),
    cursor: int | None = _cursor(),
) -> OperationPage:
    """Outbox operations, newest first: by default the parked ones, the writes the outbox will
    not retry by itself (a 4xx from the platform, attempts used up). Filter by `state` and
    `connector`; a full page carries a `next_cursor`. Needs `admin`."""
    page = await deadletters.list_operations(
        _ctx(request),
        state=None if state == "all" else OpState(state),
        connector=connector,
        limit=limit,
        cursor=cursor,
    )
    return OperationPage(
        operations=[OperationOut.model_validate(i, from_attributes=True) for i in page.items],
        next_cursor=page.next_cursor,
    )


@router.post("/outbox/retry", response_model=Report, responses=errors(404))
async def retry_outbox(request: Request, body: RetryAll | None = None, principal: Any = ADMIN) -> Report:
    """Retry every parked operation (of `connector`, when given; 404 for one not configured): each
    goes back to pending, runnable now, its attempts back to 0, noted in its task's history.
    Answers a result per row. Needs `admin`."""
    connector = body.connector if body else None
    _known_connector(request, connector)
    results = await deadletters.retry_parked(_ctx(request), who=_who(principal), connector=connector)
    return _report(results)


@router.post("/outbox/{op_id}/retry", response_model=ResultOut, responses=errors(404, 409))
async def retry_operation(request: Request, op_id: int = _id(), principal: Any = ADMIN) -> ResultOut:
    """Retry one parked operation: back to pending, runnable now, its attempts back to 0, noted in
    its task's history. It then runs after the earlier writes of its link, planned from the task
    as it is now. 404 for an unknown id, 409 for an operation that is not parked. Needs `admin`."""
    return _one(await deadletters.retry_operations(_ctx(request), [op_id], who=_who(principal)))


@router.delete("/outbox/{op_id}", response_model=ResultOut, responses=errors(404, 409))
async def drop_operation(request: Request, op_id: int = _id(), principal: Any = ADMIN) -> ResultOut:
    """Drop one parked operation: it is deleted and never runs; its task's history names it, its
    last error and who dropped it. 404 for an unknown id, 409 for an operation that is not
    parked. Needs `admin`."""
    return _one(await deadletters.drop_operations(_ctx(request), [op_id], who=_who(principal)))


# -- inbox -------------------------------------------------------------------------------------------


@router.get("/inbox", response_model=DeliveryPage, dependencies=[ADMIN])
async def list_inbox(
    request: Request,
    state: Literal["pending", "claimed", "done", "failed", "all"] = "failed",
    connector: str | None = None,
    limit: int = _limit(),
    cursor: int | None = _cursor(),
) -> DeliveryPage:
    """Webhook deliveries, newest first: by default the failed ones, those the inbox could not
    process. Filter by `state` and `connector`; a full page carries a `next_cursor`. Needs
    `admin`."""
    page = await deadletters.list_deliveries(
        _ctx(request),
        state=None if state == "all" else DeliveryState(state),
        connector=connector,
        limit=limit,
        cursor=cursor,
    )
    return DeliveryPage(
        deliveries=[DeliveryOut.model_validate(i, from_attributes=True) for i in page.items],
        next_cursor=page.next_cursor,
    )


@router.post("/inbox/retry", response_model=Report, responses=errors(404))
async def retry_inbox(request: Request, body: RetryAll | None = None, principal: Any = ADMIN) -> Report:
    """Retry every failed delivery (of `connector`, when given; 404 for one not configured): each
    goes back to pending, due now, its attempts back to 0. Answers a result per row. Needs
    `admin`."""
    connector = body.connector if body else None
    _known_connector(request, connector)
    results = await deadletters.retry_failed(_ctx(request), who=_who(principal), connector=connector)
    return _report(results)


@router.post("/inbox/{delivery_id}/retry", response_model=ResultOut, responses=errors(404, 409))
async def retry_delivery(request: Request, delivery_id: int = _id(), principal: Any = ADMIN) -> ResultOut:
    """Retry one failed delivery: back to pending, due now, its attempts back to 0. 404 for an
    unknown id, 409 for a delivery that has not failed. Needs `admin`."""
    return _one(await deadletters.retry_deliveries(_ctx(request), [delivery_id], who=_who(principal)))


@router.delete("/inbox/{delivery_id}", response_model=ResultOut, responses=errors(404, 409))
async def drop_delivery(request: Request, delivery_id: int = _id(), principal: Any = ADMIN) -> ResultOut:
    """Drop one failed delivery: it is deleted and never processed (the platform, answered when it
    was received, will not send it again). 404 for an unknown id, 409 for a delivery that has not
    failed. Needs `admin`."""
    return _one(await deadletters.drop_deliveries(_ctx(request), [delivery_id], who=_who(principal)))
