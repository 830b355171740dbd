"""The lifecycle states of the store's rows, and the moves between them that are legal.

Each state is a `StrEnum`, so it is stored as its plain value (the columns are strings, and rows
written before these enums existed read the same). A move goes through `advance()`, which raises
`IllegalTransition` for a move the table below does not allow: a bug found where it happens
rather than as a row in a state nothing will ever take it out of.

Links (`LinkState`): a mirror's link is `creating` until its create lands, then `active`. A side
that deleted its task, or that the credential no longer sees, is `gone`; a task that left the
route's filter, or whose route unlinks on delete, leaves its links `unlinked`, from which a
task coming back into the filter relinks them.

Outbox operations (`OpState`): `pending` until a worker claims it, `claimed` while one works on
it (the claim expires, returning it to `pending`), then `done` or `parked` (a failure a person
must look at); a parked operation returns to `pending` only when a person retries it.

Webhook deliveries (`DeliveryState`): `pending`, `claimed` while processed (the claim expires),
then `done` or `failed`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar


class LinkState(StrEnum):
    CREATING = "creating"
    ACTIVE = "active"
    GONE = "gone"
    UNLINKED = "unlinked"


class OpState(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    DONE = "done"
    PARKED = "parked"


class OpKind(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    ARCHIVE = "archive"
    COMMENT = "comment"


# The writes that are not idempotent: an attempt may have made the task or comment before its
# answer was lost, so a retry looks for it first, and waits for it to land (outbox, deadletters).
LOOKS_FIRST = frozenset({OpKind.CREATE, OpKind.COMMENT})


class DeliveryState(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"


class ConflictState(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


# Where each state may go. A move to the state a row is already in is always allowed (a repeat
# of an idempotent step), so it is not listed.
TRANSITIONS: dict[type[StrEnum], dict[StrEnum, frozenset[StrEnum]]] = {
    LinkState: {
        LinkState.CREATING: frozenset({LinkState.ACTIVE, LinkState.GONE, LinkState.UNLINKED}),
        LinkState.ACTIVE: frozenset({LinkState.GONE, LinkState.UNLINKED}),
        LinkState.GONE: frozenset({LinkState.ACTIVE, LinkState.CREATING}),
        LinkState.UNLINKED: frozenset({LinkState.ACTIVE, LinkState.CREATING}),
    },
    OpState: {
        OpState.PENDING: frozenset({OpState.CLAIMED, OpState.DONE, OpState.PARKED}),
        OpState.CLAIMED: frozenset({OpState.PENDING, OpState.DONE, OpState.PARKED}),
        OpState.DONE: frozenset(),
        OpState.PARKED: frozenset({OpState.PENDING}),
    },
    DeliveryState: {
        DeliveryState.PENDING: frozenset({DeliveryState.CLAIMED, DeliveryState.DONE, DeliveryState.FAILED}),
        DeliveryState.CLAIMED: frozenset({DeliveryState.PENDING, DeliveryState.DONE, DeliveryState.FAILED}),
        DeliveryState.DONE: frozenset(),
        DeliveryState.FAILED: frozenset({DeliveryState.PENDING}),
    },
    ConflictState: {
        ConflictState.OPEN: frozenset({ConflictState.RESOLVED}),
        ConflictState.RESOLVED: frozenset(),
    },
}


class IllegalTransition(RuntimeError):
    """A row asked to move between two states that its lifecycle does not connect."""


S = TypeVar("S", bound=StrEnum)


def allowed(current: str | None, new: S) -> bool:
    kind = type(new)
    if current is None or current == new:
        return True
    try:
        return new in TRANSITIONS[kind][kind(current)]
    except ValueError:
        return False  # a value that is no state of this kind


def advance(current: str | None, new: S) -> S:
    """`new`, after checking that a row in `current` may move there (None: a new row)."""
    if not allowed(current, new):
        raise IllegalTransition(f"{type(new).__name__}: {current!r} -> {new.value!r} is not a legal move")
    return new
