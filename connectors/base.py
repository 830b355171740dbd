"""What every connector shares: the protocol the engine drives, the errors it decides on, and the
HTTP layer (auth, timeouts, a deadline and a size bound per request, retries with jittered
backoff, 429 handling, a rate limit, request metrics, redacted logging).

The engine sees a connector only through `Connector` below. A connector turns one platform's
tasks into canonical `Values` (through its `PlatformMapping` and `PeopleMap`) and back.

Errors mirror what the caller must decide:

    ConnectorError
    ├── Retryable        5xx, timeouts, connection errors: try again later with backoff
    │   ├── RateLimited  429: try again after `retry_after` seconds
    │   └── DeadlineExceeded  no whole answer within the connector's `deadline`
    ├── AuthFailed       401: the credential is wrong or revoked; retrying won't help
    └── Permanent        other 4xx (400/403/404/409/422): park the operation and show the message
        ├── NotFound     404: for a task, confirmed gone
        ├── GoneFromView the task left the credential's view (role scoping): not a deletion
        └── ResponseTooLarge  an answer over the connector's `max_response_bytes`

Delivery promise of the HTTP layer: idempotent requests (GET/PUT/PATCH/DELETE) are retried up to
`max_retries` times on retryable failures; a POST is retried only when it surely did not reach
the platform (connection refused) or was refused with 429, because a create that timed out may
have happened; the engine's create markers deal with that case. A 429 is waited out inline
(`rate_limit_wait`) unless the connector's `rate_limited` hook calls it a refusal that lasts
(`wait_inline=False`, such as a usage limit until a reset time): that one is raised at once.

Bounds of one request: httpx's `timeout` bounds each phase alone (connecting, each wait for the
next bytes), so a platform trickling its answer a byte at a time never trips it. `deadline` bounds
the whole exchange (connect, headers and every byte of the body); a request still running then is
cancelled and raises DeadlineExceeded, which is not retried inside the call (a platform that slow
would hold the caller for `deadline` once per retry): the next poll or outbox attempt tries again.
The body is streamed and counted, never read whole first: an answer whose Content-Length exceeds
`max_response_bytes`, or whose bytes pass it, is refused unread or cut off there (ResponseTooLarge),
so one answer never holds more than that in memory. An error answer (4xx/5xx) that big keeps its
status's error, with the body dropped. An unpaginated listing is not read whole at all:
`HttpClient.stream` hands its JSON items over one at a time as the bytes arrive (`OpenAnswer`);
there the bound applies to each item, and the deadline to the platform's waits for the body's
bytes together (the daemon's own time between items does not count).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import random
import re
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar, runtime_checkable

import httpx
import ijson

from bridge.mapping import PlatformMapping
from bridge.model import SYNC_FIELDS, Values, as_utc, encode_values, normalize_values, parse_timestamp
from connectors._aiohttp import DEFAULT_READ_WHOLE_UP_TO, Transport

log = logging.getLogger("taskbridge.connector")

# -- errors ------------------------------------------------------------------------------------


class ConnectorError(Exception):
    """A platform call that failed. `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None, connector: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.connector = connector

    def __str__(self) -> str:
        where = f"{self.connector}: " if self.connector else ""
        code = f"HTTP {self.status}: " if self.status else ""
        return f"{where}{code}{self.message}"


class Retryable(ConnectorError):
    """Worth trying again later (5xx, timeout, connection error)."""


class RateLimited(Retryable):
    """A 429. `retry_after` is the platform's Retry-After in seconds, or None when it sent none
    (then the caller backs off exponentially, and the outbox parks after its attempts).

    `wait_inline`: the HTTP layer may wait it out and send the request again within the call (a
    throttle). False for a refusal that lasts (a usage limit until a reset time, see
    `BaseConnector.rate_limited`): raised at once, for the engine to schedule."""

    def __init__(
        self, message: str, *, retry_after: float | None, wait_inline: bool = True, **kw: Any
    ) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        self.wait_inline = wait_inline


class AuthFailed(ConnectorError):
    """The credential was refused (401)."""


class Permanent(ConnectorError):
    """The platform refused the request itself (4xx); the same request will fail again."""


class NotFound(Permanent):
    """The resource does not exist (404)."""


class BulkRefused(Permanent):
    """`create_tasks`'s request was refused as a whole, so none of its tasks was created: each
    may be created alone (the refusal may be one item's value, or the bulk path's own)."""


class GoneFromView(Permanent):
    """The task exists or may exist, but this credential can no longer see it."""


class DeadlineExceeded(Retryable):
    """A request that did not complete (connect, headers and the whole body) within the
    connector's `deadline`, and was cancelled. Retryable: the platform may be quick again at the
    next poll or outbox attempt. But not retried inside the call (see the module's docstring)."""

    def __init__(self, what: str, deadline: float, *, connector: str | None = None) -> None:
        super().__init__(
            f"{what}: no complete answer within the {deadline:g} s deadline; cancelled", connector=connector
        )
        self.deadline = deadline


class ResponseTooLarge(Permanent):
    """An answer larger than the connector's `max_response_bytes`: refused unread when its
    Content-Length says so, else cut off as soon as the bytes received pass the bound.

    Permanent, not Retryable: an answer's size is the platform's data (a scope grown past the
    bound) or its fault, not a passing state. Asked again, it answers the same, and each retry
    would download the bound again. So a write is parked, for a person to raise
    `max_response_bytes` or look at the platform (a retried update is idempotent, a retried
    create looks for its marker first), and a poll reports the error until the bound or the data
    changes."""

    def __init__(
        self, what: str, limit: int, *, declared: int | None = None, connector: str | None = None
    ) -> None:
        bound = f"the {_size(limit)} max_response_bytes"
        if declared is not None:
            detail = f"its Content-Length is {declared:,} bytes, over {bound}; refused unread"
        else:
            detail = f"it passed {bound}; stopped reading it there"
        super().__init__(f"{what}: the answer is too large: {detail}", connector=connector)
        self.limit = limit
        self.declared = declared


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n:,} bytes"


class BadSignature(Exception):
    """A webhook whose signature, timestamp or shape does not verify."""


# -- what connectors report ---------------------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """What a connector can do. `fields` are the canonical fields it reads; `writable` those it
    can write (a subset).

    `subtasks`: the platform nests tasks. A connector that reads and writes the hierarchy also
    lists `parent` in `fields`/`writable`, and speaks it in the platform's own ids: it reports a
    task's parent as `RemoteTask.parent_id` (never in `values`), and is given `parent` in the
    values of `create_task`/`update_task` as the parent's id on the platform (None: top level).
    The engine translates both ways through its links, so canonical `parent` (a bridge task id)
    never reaches a connector; `roundtrip` leaves `parent` as it is."""

    fields: frozenset[str]
    writable: frozenset[str]
    webhooks: bool = False
    comments: bool = False
    incremental: bool = False
    delete: bool = False
    archive: bool = False
    subtasks: bool = False
    todos: bool = False
    # The platform dates each field's changes (a task's history): `field_times` says when each
    # field last changed, where one `updated_at` a task cannot.
    field_history: bool = False
    # The most tasks one `create_tasks` request creates (1: the platform has no bulk create).
    bulk_create: int = 1


@dataclass(frozen=True)
class RemoteTask:
    """One task as a platform reports it, already in canonical values."""

    remote_id: str
    scope: str
    values: Values
    updated_at: datetime | None = None
    created_at: datetime | None = None
    url: str | None = None
    deleted: bool = False  # the platform reports it deleted (soft delete, a delete event)
    # The platform's id of the task's parent (None: top level), from a connector whose
    # capabilities include `parent`; the engine translates it to the bridge's task id.
    parent_id: str | None = None
    # Canonical field -> when it last changed there, where the engine asked (`field_times`): a
    # task reported with two edits since the bridge last saw it is dated by the later, which
    # says nothing of when the other was made. Empty: asked, and its `updated_at` dates all it
    # moved (one field, or a task new to the bridge). Not part of what the task is (equality, hash).
    field_times: Mapping[str, datetime] | None = field(default=None, compare=False)

    @property
    def content_hash(self) -> str:
        if self.parent_id is None:
            return content_hash(self.values)
        return content_hash({**self.values, "parent": self.parent_id})


@dataclass(frozen=True)
class RemoteComment:
    remote_id: str
    body: str
    author: str  # display name as the platform shows it
    created_at: datetime | None = None
    by_us: bool = False  # written by this connector's credential (an echo of a mirror)


@dataclass(frozen=True)
class ListingEnd:
    """What a listing knows once it has been read to its end.

    `all_ids` is the id of every task in the scope when the listing saw the whole scope to its
    end, else None; only then may the engine suspect a linked task missing from it (and confirm
    with a GET). `watermark` is what to store for the next poll: the engine stores it after the
    changes listed before it, so it never runs ahead of them. A watermark built from a time must
    be the fetch's start time less a skew margin, never "now" after the fetch.
    """

    all_ids: frozenset[str] | None
    watermark: dict[str, Any] = field(default_factory=dict)
    deleted_ids: frozenset[str] = frozenset()  # reported deleted by an incremental feed


@dataclass(frozen=True)
class Listing(ListingEnd):
    """A listing read whole (`ListingStream.collect`): for callers that want every task at
    once. `tasks` are the tasks that may have changed (all of them on a full listing)."""

    tasks: list[RemoteTask] = field(default_factory=list)


class StreamState(enum.Enum):
    NEW = "new"
    READING = "reading"
    ENDED = "ended"
    CLOSED = "closed"


class ListingStream:
    """One poll of a scope, as the platform's answers arrive: iterate it once (`async for`) for
    the tasks that may have changed, then read `end`. A scope of 100,000 tasks is never held
    whole: the engine observes it a chunk at a time while the connector reads the next pages (or
    the next bytes of an unpaginated answer). `async with` closes an answer left half read.

    A connector builds one from an async generator that yields the tasks and then exactly one
    ListingEnd; the stream checks that it does (a listing cut short must never read as
    complete, or its missing tasks would look deleted).
    """

    def __init__(self, source: AsyncIterator[RemoteTask | ListingEnd]) -> None:
        self._source = source
        self._state = StreamState.NEW
        self._end: ListingEnd | None = None

    async def __aenter__(self) -> ListingStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[RemoteTask]:
        if self._state is not StreamState.NEW:
            raise RuntimeError(f"a listing is read once (this one is {self._state.value})")
        self._state = StreamState.READING
        return self._tasks()

    async def _tasks(self) -> AsyncIterator[RemoteTask]:
        async for item in self._source:
            if self._end is not None:
                raise RuntimeError("a listing yielded a task after its ListingEnd")
            if isinstance(item, ListingEnd):
                self._end = item
            else:
                yield item
        if self._end is None:
            raise RuntimeError("a listing ended without its ListingEnd")
        self._state = StreamState.ENDED

    @property
    def end(self) -> ListingEnd:
        if self._state is not StreamState.ENDED or self._end is None:
            raise RuntimeError(
                f"a listing's end is known once it is read to its end (it is {self._state.value})"
            )
        return self._end

    async def collect(self) -> Listing:
        """Every task at once, with the end: the listing read whole."""
        async with self:
            tasks = [task async for task in self]
        end = self.end
        return Listing(all_ids=end.all_ids, watermark=end.watermark, deleted_ids=end.deleted_ids, tasks=tasks)

    async def aclose(self) -> None:
        if self._state is not StreamState.ENDED:
            self._state = StreamState.CLOSED
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()


# Items of a streamed listing a connector converts at once (one refresh of what they refer to,
# one round of detail reads).
LISTING_BATCH = 100

T = TypeVar("T")


async def chunked(items: AsyncIterable[T], size: int) -> AsyncIterator[list[T]]:
    """`items` in lists of `size` (the last may be shorter, never empty). Closing it closes
    `items`, so an answer left half read is closed at once, not when collected."""
    chunk: list[T] = []
    iterator = aiter(items)
    try:
        async for item in iterator:
            chunk.append(item)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass(frozen=True)
class WebhookEvent:
    """One task event parsed from a webhook delivery."""

    scope: str
    remote_id: str
    kind: str  # created | updated | deleted | comment
    delivery_id: str | None = None  # the platform's signed event id (in the body), if it has one
    task: RemoteTask | None = None  # when the payload carries the whole task
    # The task as the signed body carries it, when turning it into `task` needs what only an
    # await can give (a lane's name): the connector's `event_task` does it, sparing a GET.
    detail: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)
    # The task's own time as the signed body gives it, where the body does not carry the whole
    # task: for a `created` event when the task was made, for an `updated` one its time after the
    # edit. The engine knows its own writes coming back by it.
    stamp: datetime | None = field(default=None, hash=False, compare=False)


@dataclass(frozen=True)
class ScopeInfo:
    """One scope a credential reaches (a project, a board, a squad), as `list_scopes` reports it.

    `id` is what a route member's `scope` takes; `name` is the platform's display name; `url` its
    web page where the platform documents one; `extra` a few facts worth showing beside it (the
    credential's role or permission there, a task count), as plain strings."""

    id: str
    name: str
    url: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class PersonInfo:
    """One person a credential can see, as `list_people` reports it: `remote_id` is the id the
    `people:` block takes for this connector (the one tasks name as assignee); `name` and `email`
    as the platform shows them, None where it shows none."""

    remote_id: str
    name: str | None = None
    email: str | None = None


def content_hash(values: Mapping[str, Any]) -> str:
    encoded = json.dumps(encode_values(values), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


# -- settings and people -------------------------------------------------------------------------


class PeopleMap:
    """One connector's view of `people:`: remote user id <-> person key.

    A remote user with no person is kept as "<connector>:<remote id>", so it survives a round
    trip through its own platform and is simply not mirrored elsewhere.
    """

    def __init__(self, connector: str, ids: Mapping[str, str] | None = None) -> None:
        self.connector = connector
        self._to_key = {remote: key for key, remote in (ids or {}).items()}
        self._to_remote = dict(ids or {})

    def to_key(self, remote_id: str) -> str:
        return self._to_key.get(remote_id, f"{self.connector}:{remote_id}")

    def to_remote(self, key: str) -> str | None:
        if key in self._to_remote:
            return self._to_remote[key]
        prefix = f"{self.connector}:"
        return key[len(prefix) :] if key.startswith(prefix) else None

    def keys_to_remote(self, keys: Iterable[str]) -> list[str]:
        """The remote ids of the people this platform knows, sorted for a stable order."""
        return sorted(r for r in (self.to_remote(k) for k in keys) if r is not None)


# The longest one request may take, connect to last byte of the body (`deadline`). `timeout`
# (15 s) bounds each phase alone, so a platform trickling its answer never trips it. Four
# timeouts: room for a platform to build a big listing before its headers (up to one `timeout`)
# and to send DEFAULT_MAX_RESPONSE_BYTES at ~1 MB/s, while a stuck request ends within a minute
# (a 1 byte/s answer held a poll for 90 s before there was a deadline).
DEFAULT_REQUEST_DEADLINE = 60.0
# The largest answer read whole, in bytes after decoding (`max_response_bytes`). Impactly and
# PostHog page at most 100 tasks (a few KB each: under 2 MB a page); a 150 MB answer (which took
# the daemon from 139 to 581 MB) is refused. AgentKanban's board listing, Vortask's project
# listing and Nucleus's /api/tasks are not paginated (a whole board in one answer, ~125 MB at
# 100,000 tasks), so they are read as they arrive (`HttpClient.stream`), where it bounds one item.
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ConnectorSettings:
    """Everything a connector is built from (the daemon fills it from the config)."""

    name: str
    platform: str
    base_url: str
    mapping: PlatformMapping
    people: PeopleMap
    token: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    webhook_secret: str | None = None
    mcp_url: str | None = None
    timeout: float = 15.0  # each phase of a request: connect, each read, write
    deadline: float = DEFAULT_REQUEST_DEADLINE  # a whole request: connect, headers, whole body
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    rate_limit: float | None = None  # requests per second
    max_retries: int = 4
    backoff: float = 0.5  # first retry delay in seconds; doubles, with jitter
    max_wait: float = 30.0  # longest Retry-After honoured inline; longer ones raise RateLimited
    transport: httpx.AsyncBaseTransport | None = None  # the seam for tests
    # Every other secret of the config: a platform's error text (which reaches logs, the API and
    # the store) must not carry another connector's token either.
    other_secrets: tuple[str, ...] = ()

    @property
    def secrets(self) -> list[str]:
        own = [s for s in (self.token, self.client_secret, self.webhook_secret) if s]
        return own + [s for s in self.other_secrets if s and s not in own]


RequestObserver = Callable[[str, str, str, float], None]
"""(connector, method, status class "2xx"/"4xx"/"429"/"5xx"/"error", seconds) -> None; the metrics."""


# -- the protocol ---------------------------------------------------------------------------------


@runtime_checkable
class Connector(Protocol):
    name: str
    capabilities: Capabilities
    webhook_headers: tuple[str, ...]
    """The headers `parse_webhook` reads besides the body (an event type sent only in a header):
    the inbox records these with a delivery and passes them back to `parse_webhook` when it
    processes it, and keeps no other. Never a signature or a credential (those are dropped)."""

    def stream_tasks(self, scope: str, watermark: Mapping[str, Any] | None) -> ListingStream:
        """One poll of the scope from `watermark` (the last ListingEnd's, or None), read as it
        arrives. Nothing is sent before the stream is iterated."""
        ...

    async def list_tasks(self, scope: str, watermark: Mapping[str, Any] | None) -> Listing:
        """`stream_tasks` read whole."""
        ...

    async def get_task(self, scope: str, remote_id: str) -> RemoteTask:
        """The task, or NotFound (deleted) / GoneFromView (no longer visible)."""
        ...

    async def field_times(self, scope: str, remote_id: str) -> Mapping[str, datetime]:
        """When each canonical field of the task last changed there (`capabilities.field_history`)."""
        ...

    async def create_task(self, scope: str, values: Values) -> RemoteTask: ...

    async def create_tasks(self, scope: str, items: Sequence[Values]) -> list[RemoteTask | ConnectorError]:
        """Create each of `items` as `create_task` would, up to `capabilities.bulk_create` in
        one request. That request is all or nothing: when it fails, this raises and none of them
        was created (BulkRefused where the platform refused it, so each may go alone). The
        answer has one entry an item, in their order, each paired with its item by what the
        created task shows (never by place alone). An item's follow-up request failing after it
        (a status the platform cannot set on create) is that item's entry, its task created; the
        others are unaffected."""
        ...

    async def update_task(self, scope: str, remote_id: str, changes: Values) -> RemoteTask:
        """Write only `changes` (canonical values of writable fields, but `parent`: the platform's
        id, see Capabilities.subtasks); returns the task after."""
        ...

    async def delete_task(self, scope: str, remote_id: str) -> None: ...

    async def archive_task(self, scope: str, remote_id: str) -> RemoteTask: ...

    async def find_by_marker(self, scope: str, marker: str) -> RemoteTask | None:
        """A task of the scope whose description contains `marker` (a retried create's check)."""
        ...

    async def find_by_markers(
        self, scope: str, markers: Collection[str], *, created_after: datetime | None = None
    ) -> dict[str, RemoteTask]:
        """The same check for many markers at once: marker -> the task whose description contains
        it, for those found. A platform that can only list the scope for it lists it once.
        `created_after` (our clock): no task sought was created before it, so a connector may
        leave unread a task the platform dates earlier by more than CREATION_MARGIN
        (`created_before`), where its platform's clock is checked against ours."""
        ...

    async def list_comments(self, scope: str, remote_id: str) -> list[RemoteComment]: ...

    async def add_comment(self, scope: str, remote_id: str, body: str, author: str) -> RemoteComment: ...

    async def register_webhook(
        self, scope: str, url: str, secret: str | None, *, rotate: bool = False
    ) -> str | None:
        """Make sure the platform posts this scope's events to `url` (idempotent: an existing
        registration of the same URL is kept). `secret` is the configured webhook_secret, for
        platforms that take one. Returns a secret the platform generated (shown only at
        creation), which the engine stores and passes back to `verify_webhook`. `rotate` says
        the store holds no generated secret (a lost store): a platform that generates them then
        replaces an existing registration, so that its deliveries can be verified again."""
        ...

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]) -> None:
        """Raise BadSignature unless the delivery is signed with one of `secrets` (and fresh, where
        the scheme carries a timestamp)."""
        ...

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[WebhookEvent]:
        """The task events in a verified delivery; BadSignature for a body that isn't one. When
        processed later, `headers` holds only the `webhook_headers`. An event's `delivery_id` must
        come from what the signature covers (the body's signed event id), never from an unsigned
        header: the inbox deduplicates on it (on the body's hash when there is none)."""
        ...

    async def event_task(self, event: WebhookEvent) -> RemoteTask | None:
        """The task a delivery reports, without a request where the delivery carries it (`task`,
        or a `detail` the connector can read); None when only a GET can tell."""
        ...

    def roundtrip(self, values: Values) -> Values:
        """What this platform would report after we write `values`: only the fields it holds,
        through its mapping's losses. The engine stores this as the link's base."""
        ...

    async def check(self, scope: str) -> str:
        """Authenticate and read one page of the scope; a one-line summary."""
        ...

    async def list_scopes(self) -> list[ScopeInfo]:
        """The scopes this credential reaches, as the platform lists them; [] for a platform that
        lists none (the connector's docstring says so, and what it does instead)."""
        ...

    async def list_people(self, scope: str | None = None) -> list[PersonInfo]:
        """The people this credential can see (in `scope` when given, else wherever it reaches):
        members or users where the platform lists them, else those its tasks name. Each once."""
        ...

    async def aclose(self) -> None: ...


# -- shared behaviour for connectors ------------------------------------------------------------


class BaseConnector:
    """Common parts of the five connectors: settings, HTTP, mapping helpers, the round trip.

    Subclasses set `capabilities`, implement the protocol's platform calls, and override
    `roundtrip_field` for platform-specific losses (e.g. a single assignee, a title limit).
    """

    capabilities: Capabilities

    @classmethod
    def scope_problem(cls, scope: str) -> str | None:
        """What is wrong with `scope` as this platform writes its ids, seen without a request (a
        config error then names its line), or None when it may be right."""
        return None

    webhook_headers: tuple[str, ...] = ()  # see Connector.webhook_headers

    def __init__(self, settings: ConnectorSettings, *, observer: RequestObserver | None = None) -> None:
        self.settings = settings
        self.name = settings.name
        self.mapping = settings.mapping
        self.people = settings.people
        self.http = HttpClient(
            settings,
            auth_headers=self.auth_headers(settings),
            observer=observer,
            error_message=self.error_message,
            rate_limited=self.rate_limited,
        )

    # platform hooks for the HTTP layer ---------------------------------------------------------

    def stream_tasks(self, scope: str, watermark: Mapping[str, Any] | None) -> ListingStream:
        return ListingStream(self._listing(scope, watermark))

    def _listing(
        self, scope: str, watermark: Mapping[str, Any] | None
    ) -> AsyncIterator[RemoteTask | ListingEnd]:
        """The connector's listing: an async generator of the tasks, then one ListingEnd."""
        raise NotImplementedError

    async def list_tasks(self, scope: str, watermark: Mapping[str, Any] | None) -> Listing:
        return await self.stream_tasks(scope, watermark).collect()

    def auth_headers(self, settings: ConnectorSettings) -> Mapping[str, str] | None:
        """Headers that authenticate every request; None: `Authorization: Bearer <token>`."""
        return None

    def error_message(self, response: httpx.Response) -> str:
        """The platform's message from an error response (may raise a more precise error)."""
        return default_error_message(response)

    async def event_task(self, event: WebhookEvent) -> RemoteTask | None:
        return event.task  # a platform whose deliveries carry a readable `detail` says more

    async def field_times(self, scope: str, remote_id: str) -> Mapping[str, datetime]:
        """Canonical field -> when it last changed on the platform, from its record of the task's
        changes (`capabilities.field_history`); a field it has no record of is left out."""
        raise Permanent(f"{self.name} does not date a task's fields", connector=self.name)

    async def create_tasks(self, scope: str, items: Sequence[Values]) -> list[RemoteTask | ConnectorError]:
        raise Permanent(f"{self.name} has no bulk create", connector=self.name)

    async def find_by_markers(
        self, scope: str, markers: Collection[str], *, created_after: datetime | None = None
    ) -> dict[str, RemoteTask]:
        # One check a marker: right where the platform searches (a search a marker is cheaper
        # than a listing). `created_after` saves no read here, and find_by_marker answers one
        # task: passing an older one by could miss a newer one it did not show. A platform
        # that lists the scope overrides this with one pass (MarkerSearch), and its
        # find_by_marker asks this for one.
        found: dict[str, RemoteTask] = {}
        for marker in markers:
            task = await self.find_by_marker(scope, marker)  # type: ignore[attr-defined]
            if task is not None:
                found[marker] = task
        return found

    def rate_limited(self, response: httpx.Response, throttle: RateLimited) -> RateLimited:
        """The error to raise for a 429 answer. `throttle` is the HTTP layer's own (message,
        status, Retry-After already read): a throttle, waited out inline (up to `max_wait`, or
        with backoff when there is no Retry-After). A platform whose 429 may mean something else,
        a refusal that lasts until a reset time, returns a RateLimited with `wait_inline=False`
        for that one: raised at once, for the outbox to back off and park."""
        return throttle

    # mapping helpers ------------------------------------------------------------------------

    def status_from(self, remote: Any) -> Any:
        assert self.mapping.status is not None
        return self.mapping.status.to_canonical(remote)

    def status_to(self, canonical: Any) -> Any:
        assert self.mapping.status is not None
        return self.mapping.status.to_remote(canonical)

    def priority_from(self, remote: Any) -> Any:
        assert self.mapping.priority is not None
        return self.mapping.priority.to_canonical(remote)

    def priority_to(self, canonical: Any) -> Any:
        assert self.mapping.priority is not None
        return self.mapping.priority.to_remote(canonical)

    def roundtrip(self, values: Values) -> Values:
        values = normalize_values(values)
        out: Values = {}
        for name, value in values.items():
            if name in self.capabilities.fields:
                out[name] = self.roundtrip_field(name, value)
        return out

    def roundtrip_field(self, name: str, value: Any) -> Any:
        section = self.mapping.sections.get(name)
        if section is not None:
            return section.roundtrip(value)
        if name == "assignees":
            # Only people this platform knows can be written; others don't come back.
            return frozenset(k for k in value if self.people.to_remote(k) is not None)
        return value

    def writable(self, changes: Values) -> Values:
        """The subset of `changes` this connector writes."""
        return {k: v for k, v in changes.items() if k in self.capabilities.writable}

    @staticmethod
    def distinct_people(people: Iterable[PersonInfo]) -> list[PersonInfo]:
        """Each remote id once (its first name and email seen, blanks as None), sorted by name
        then id: what `list_people` returns when it gathers people from several places."""
        found: dict[str, PersonInfo] = {}
        for p in people:
            name, email = (p.name or "").strip() or None, (p.email or "").strip() or None
            had = found.get(p.remote_id)
            if had is None:
                found[p.remote_id] = PersonInfo(p.remote_id, name, email)
            elif (had.name is None and name) or (had.email is None and email):
                found[p.remote_id] = PersonInfo(p.remote_id, had.name or name, had.email or email)
        return sorted(found.values(), key=lambda p: ((p.name or "").casefold(), p.remote_id))

    async def aclose(self) -> None:
        await self.http.aclose()


# How far behind ours a platform's clock may be for its creation times to be weighed against
# ours (`created_before`). Generous on purpose: passing by the task an earlier attempt made
# would create it twice. Only a connector whose platform's clock is checked against ours may
# use it, so that a clock this far off is heard of first (AgentKanban: its signatures carry a
# time refused 300 s away), and only where it saves reads.
CREATION_MARGIN = timedelta(minutes=10)


def created_before(created: str | datetime | None, bound: datetime | None) -> bool:
    """Whether a task the platform says was created at `created` (a datetime or as the platform
    writes it) surely predates `bound` (our clock's time, before which nothing sought was
    created), CREATION_MARGIN allowed for the two clocks. Unknown or unreadable: it may not be
    passed by."""
    if bound is None or created is None:
        return False
    try:
        when = parse_timestamp(created)
    except ValueError:
        return False
    return when is not None and when < as_utc(bound) - CREATION_MARGIN


class MarkerSearch:
    """Markers looked for in one pass over a scope's tasks: each description is matched against
    the markers not found yet, so a listing read for many retried creates stops once all are."""

    def __init__(self, markers: Iterable[str]) -> None:
        self.wanted = {m for m in markers if m.strip()}  # a blank marker would match any task

    def hits(self, description: str | None) -> list[str]:
        """The markers `description` holds (each found only once)."""
        text = description or ""
        found = [m for m in self.wanted if m in text]
        self.wanted.difference_update(found)
        return found

    @property
    def done(self) -> bool:
        return not self.wanted


def fields(*names: str) -> frozenset[str]:
    unknown = set(names) - set(SYNC_FIELDS)
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    return frozenset(names)


# -- HTTP -----------------------------------------------------------------------------------------


class RateLimiter:
    """A token bucket: at most `rate` requests per second on average, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


def status_class(status: int | None) -> str:
    """The metrics' status class: "2xx".."5xx", "429" on its own (rate limiting is watched apart
    from other refusals), "error" when there was no HTTP answer."""
    if status is None:
        return "error"
    return "429" if status == 429 else f"{status // 100}xx"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None without a usable one."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def backoff_delay(settings: ConnectorSettings, rng: random.Random, attempt: int) -> float:
    """The wait before retry number `attempt` (1, 2, ...): doubling, with "equal jitter" so that
    many callers failing together do not retry together."""
    base = settings.backoff * 2 ** (attempt - 1)
    return rng.uniform(base / 2, base)


def rate_limit_wait(
    settings: ConnectorSettings, rng: random.Random, exc: RateLimited, attempt: int
) -> float | None:
    """How long to wait out a 429 inside a request before trying again, or None to raise it: the
    retries are spent, the Retry-After is longer than `max_wait` (the engine's to schedule), or
    the refusal is not one to wait out inline (`wait_inline` False). Without a Retry-After the wait
    backs off as for any failure."""
    if attempt > settings.max_retries or not exc.wait_inline:
        return None
    if exc.retry_after is None:
        return backoff_delay(settings, rng, attempt)
    if exc.retry_after > settings.max_wait:
        return None
    return exc.retry_after + rng.uniform(0, 0.1)


class Redactor:
    """Removes known secrets from text before it reaches a log line or an error."""

    def __init__(self, secrets: Sequence[str]) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self._pattern = (
            re.compile("|".join(re.escape(s) for s in sorted(set(secrets), key=len, reverse=True) if s))
            if any(secrets)
            else None
        )

    def __call__(self, text: str) -> str:
        return self._pattern.sub("***", text) if self._pattern else text


ErrorMessage = Callable[[httpx.Response], str]
RateLimitHook = Callable[[httpx.Response, RateLimited], RateLimited]
"""(the 429 answer, the HTTP layer's RateLimited for it) -> the error to raise; see
`BaseConnector.rate_limited`."""


def throttled(response: httpx.Response, throttle: RateLimited) -> RateLimited:
    """The default `RateLimitHook`: every 429 is a throttle, waited out inline."""
    return throttle


async def bounded_body(
    chunks: AsyncIterable[bytes],
    limit: int,
    content_length: str | None,
    *,
    what: str,
    connector: str | None = None,
) -> AsyncIterator[bytes]:
    """The chunks of an answer's body while their total stays within `limit` bytes. Raises
    ResponseTooLarge before reading any when `content_length` (the header) already exceeds it,
    else as soon as the bytes received pass it; the caller then closes the response unread."""
    try:
        declared = int(content_length) if content_length is not None else None
    except ValueError:
        declared = None  # not a length: httpx refuses the body itself
    if declared is not None and declared > limit:
        raise ResponseTooLarge(what, limit, declared=declared, connector=connector)
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise ResponseTooLarge(what, limit, connector=connector)
        yield chunk


def default_error_message(response: httpx.Response) -> str:
    """The platform's message from a JSON error body, whatever its shape; else the status text."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or "error"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err.get("code") or err)
        for key in ("message", "detail", "error"):
            if isinstance(body.get(key), str):
                extra = body.get("errors") or body.get("attr") or body.get("field")
                return f"{body[key]} ({extra})" if extra else str(body[key])
    return json.dumps(body)[:300]


_writes_fail_fast: ContextVar[bool] = ContextVar("writes_fail_fast", default=False)


@contextlib.contextmanager
def writes_fail_fast() -> Iterator[None]:
    """Within this block a write that is refused (429) or fails retryably raises at once instead
    of waiting and trying again. The outbox writes over a task it has just read: a write sent
    late would overwrite whatever was edited there meanwhile, so it fails and the operation
    reads the task afresh when it is retried. Reads still wait and retry as usual."""
    token = _writes_fail_fast.set(True)
    try:
        yield
    finally:
        _writes_fail_fast.reset(token)


class _Cookies(httpx.Cookies):
    """httpx's cookie jar, read only for an answer that sets a cookie. httpx hands every answer
    to urllib's cookiejar, which wraps the request and the answer in its compatibility objects
    before finding no Set-Cookie: 2.1 % of the daemon's CPU under a burst of edits (py-spy,
    2026-12-05). The platforms' APIs authenticate each request by header, so an answer that
    sets a cookie is rare; one that does still has it kept and sent back, as before."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers or "set-cookie2" in response.headers:
            super().extract_cookies(response)


class _Client(httpx.AsyncClient):
    """An httpx client whose cookie jar is `_Cookies`."""

    def __init__(self, **kwargs: Any) -> None:
        self._jar = _Cookies(kwargs.pop("cookies", None))
        super().__init__(**kwargs)

    @property
    def cookies(self) -> httpx.Cookies:
        return self._jar

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        self._jar = _Cookies(cookies)

    def _merge_url(self, url: httpx.URL | str) -> httpx.URL:
        # A path (every platform call is one, with its leading slash or without: httpx joins both
        # to the base URL's path). Not what could read as a scheme ("a:b") or a host ("//h"):
        # httpx's own join decides those. tests/unit/test_http_layer.py holds both ways below
        # equal to httpx's join, for any text.
        if (
            isinstance(url, str)
            and url
            and not url.startswith("//")
            and "#" not in url
            and ":" not in url.partition("/")[0]
        ):
            base = self.base_url
            if not base.query and not base.fragment:
                ref = base._uri_reference  # httpx's parsed form of a URL
                path, mark, query = url.partition("?")
                if _PLAIN_PATH.fullmatch(path) and _PLAIN_QUERY.fullmatch(query) and not _dot_segment(path):
                    # Characters httpx's parse leaves as they are, no "." or ".." to drop: the
                    # base's parse with the path appended is the parse of the joined text, at
                    # 3.5 us against the parse's 19 (the costliest step of building a request).
                    # The base's path ends in "/" (httpx's rule), but for the root's, left empty.
                    joined = httpx.URL.__new__(httpx.URL)
                    joined._uri_reference = ref._replace(
                        path=(ref.path or "/") + path.lstrip("/"), query=query if mark else None
                    )
                    return joined
                # Else the base URL's text and the path parsed as one URL (httpx parses the
                # path, then again the base URL it copies with the joined path: twice the CPU).
                # Its path ends in "/" (httpx's rule), which the text leaves out for the root.
                text = str(base)
                return httpx.URL(f"{text}{'' if text.endswith('/') else '/'}{url.lstrip('/')}")
        return super()._merge_url(url)


# What httpx's URL parse keeps as written in a path and in a query: RFC 3986's unreserved
# characters and the separators (tests/unit/test_http_layer.py).
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._~/-]*")
_PLAIN_QUERY = re.compile(r"[A-Za-z0-9._~=&-]*")


def _dot_segment(path: str) -> bool:
    """Whether `path` has a "." or ".." segment, which a URL's parse drops."""
    return "." in path and any(segment in (".", "..") for segment in path.split("/"))


class HttpClient:
    """httpx.AsyncClient plus what every platform call needs. `auth_headers` are added to each
    request and never logged."""

    IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"})

    def __init__(
        self,
        settings: ConnectorSettings,
        *,
        auth_headers: Mapping[str, str] | None = None,
        observer: RequestObserver | None = None,
        error_message: ErrorMessage = default_error_message,
        rate_limited: RateLimitHook = throttled,
    ) -> None:
        self.settings = settings
        self.observer = observer
        self.error_message = error_message
        self.rate_limited = rate_limited
        self.redact = Redactor(settings.secrets)
        headers = dict(auth_headers) if auth_headers is not None else self._default_auth(settings)
        self.client = _Client(
            base_url=settings.base_url,
            headers={"User-Agent": "taskbridge", "Accept": "application/json", **headers},
            timeout=settings.timeout,
            transport=settings.transport
            or Transport(
                settings.base_url, read_whole_up_to=min(DEFAULT_READ_WHOLE_UP_TO, settings.max_response_bytes)
            ),
        )
        self.limiter = RateLimiter(settings.rate_limit) if settings.rate_limit else None
        self.rng = random.Random()

    @staticmethod
    def _default_auth(settings: ConnectorSettings) -> dict[str, str]:
        return {"Authorization": f"Bearer {settings.token}"} if settings.token else {}

    def set_auth_headers(self, headers: Mapping[str, str]) -> None:
        self.client.headers.update(headers)

    async def request(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        retry: bool | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """One platform call with retries; returns a 2xx response or raises a ConnectorError.
        With `stream`, a 2xx answer's body is left unread and the caller must close it (see
        `stream`, which does)."""
        method = method.upper()
        retry_5xx = method in self.IDEMPOTENT if retry is None else retry
        once_only = method not in ("GET", "HEAD") and _writes_fail_fast.get()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._once(method, url, json_body, params, headers, stream)
            except RateLimited as exc:
                # 429 means the request was not processed, so any method may repeat it.
                wait = rate_limit_wait(self.settings, self.rng, exc, attempt)
                if once_only or wait is None:
                    raise
                await asyncio.sleep(wait)
            except DeadlineExceeded:
                raise  # not retried here: see the module's docstring
            except Retryable as exc:
                surely_unsent = isinstance(exc.__cause__, httpx.ConnectError)
                if once_only or attempt > self.settings.max_retries or not (retry_5xx or surely_unsent):
                    raise
                await asyncio.sleep(self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(self.settings, self.rng, attempt)

    async def _once(
        self,
        method: str,
        url: str,
        json_body: Any,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        stream: bool = False,
    ) -> httpx.Response:
        if self.limiter is not None:
            await self.limiter.acquire()
        started = time.perf_counter()
        name = self.settings.name
        what = f"{method} {self._path(url)}"
        request = self.client.build_request(
            method, url, json=json_body, params=_clean_params(params), headers=headers
        )
        deadline = asyncio.timeout(self.settings.deadline)
        try:
            async with deadline:
                response = await self.client.send(request, stream=True)
                if stream and 200 <= response.status_code < 300:
                    too_large = None  # the caller reads it
                else:
                    try:
                        too_large = await self._read(response, what)
                    finally:
                        await response.aclose()
        except httpx.TimeoutException as exc:
            self._observe(method, "error", started)
            log.debug("%s %s %s: timeout", name, method, self._path(url))
            raise Retryable(f"{method} {self._path(url)} timed out", connector=name) from exc
        except httpx.DecodingError as exc:  # a corrupt gzip or br body: not a network failure
            self._observe(method, "error", started)
            raise Permanent(
                f"{method} {self._path(url)}: the body could not be decoded ({type(exc).__name__})",
                connector=name,
            ) from exc
        except httpx.TransportError as exc:
            self._observe(method, "error", started)
            log.debug("%s %s %s: %s", name, method, self._path(url), type(exc).__name__)
            raise Retryable(
                f"{method} {self._path(url)} failed: {self.redact(str(exc)) or type(exc).__name__}",
                connector=name,
            ) from exc
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            self._observe(method, "error", started)
            log.debug(
                "%s %s: no complete answer within the %g s deadline", name, what, self.settings.deadline
            )
            raise DeadlineExceeded(what, self.settings.deadline, connector=name) from exc
        status = response.status_code
        self._observe(method, status_class(status), started)
        log.debug("%s %s %s -> %s", name, method, self._path(url), status)
        if status < 400:
            if too_large is not None:
                log.warning("%s %s", name, too_large.message)
                raise too_large
            return response
        message = self.redact(self.error_message(response))
        where = f"{method} {self._path(url)}: {message}"
        if status == 429:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            throttle = RateLimited(where, retry_after=wait, status=status, connector=name)
            raise self.rate_limited(response, throttle)  # the connector's say: a throttle, or lasting
        if status >= 500:
            raise Retryable(where, status=status, connector=name)
        if status == 401:
            raise AuthFailed(where, status=status, connector=name)
        if status == 404:
            raise NotFound(where, status=status, connector=name)
        raise Permanent(where, status=status, connector=name)

    async def _read(self, response: httpx.Response, what: str) -> ResponseTooLarge | None:
        """Read the body into `response` as `Response.aread()` does, but never more than
        `max_response_bytes` of it. Over that, the rest stays unread (closing the response closes
        the connection), the body is left empty, and the refusal is returned: a 2xx raises it, an
        error status keeps its own error."""
        content = getattr(response, "_content", None)
        if (
            content is not None
            and len(content) <= self.settings.max_response_bytes
            and response.headers.get("content-length") == str(len(content))
        ):
            return None  # read whole already, by the transport, within the bound
        chunks: list[bytes] = []
        refused = None
        try:
            async for chunk in bounded_body(
                response.aiter_bytes(),
                self.settings.max_response_bytes,
                response.headers.get("content-length"),
                what=what,
                connector=self.settings.name,
            ):
                chunks.append(chunk)
        except ResponseTooLarge as exc:
            chunks, refused = [], exc
        response._content = b"".join(chunks)  # exactly what aread() stores; .content/.json() read it
        return refused

    @contextlib.asynccontextmanager
    async def stream(self, url: str, *, params: Mapping[str, Any] | None = None) -> AsyncIterator[OpenAnswer]:
        """A GET whose answer is read as it arrives (`OpenAnswer.items`), retried as `request`
        retries a GET until its status line; closed on leaving the block, read or not."""
        response = await self.request("GET", url, params=params, stream=True)
        try:
            yield OpenAnswer(response, f"GET {self._path(url)}", self.settings)
        finally:
            await response.aclose()

    def _path(self, url: str) -> str:
        # Paths only: a query string could hold something sensitive.
        return self.redact(url.split("?", 1)[0])

    def _observe(self, method: str, status_class: str, started: float) -> None:
        if self.observer is not None:
            self.observer(self.settings.name, method, status_class, time.perf_counter() - started)

    async def get(self, url: str, **kw: Any) -> Any:
        return _json(await self.request("GET", url, **kw))

    async def post(self, url: str, body: Any = None, **kw: Any) -> Any:
        return _json(await self.request("POST", url, json_body=body, **kw))

    async def put(self, url: str, body: Any = None, **kw: Any) -> Any:
        return _json(await self.request("PUT", url, json_body=body, **kw))

    async def patch(self, url: str, body: Any = None, **kw: Any) -> Any:
        return _json(await self.request("PATCH", url, json_body=body, **kw))

    async def delete(self, url: str, **kw: Any) -> Any:
        return _json(await self.request("DELETE", url, **kw))

    async def aclose(self) -> None:
        await self.client.aclose()


# What an answer that yielded no item may weigh: it is read whole to tell an empty list from an
# answer of another shape (which must never read as "the scope is empty").
EMPTY_ANSWER_BYTES = 64 * 1024


class OpenAnswer:
    """A 2xx answer whose body is still on the wire (`HttpClient.stream`).

    Bounds: the waits for the body's bytes share one `deadline` (the time the caller spends on
    the items between does not count; at ~2 MB/s a 125 MB board fits the default 60 s), and no
    one item may take more than `max_response_bytes` to arrive, so memory holds one item and one
    network chunk however long the answer. An answer cut short, or not JSON, raises when its end
    is reached; the items yielded before it stay yielded (the caller must not treat them as the
    whole answer until the iteration ends without error). A parse error names its kind only:
    the parser's own message quotes the body, which may hold anything.
    """

    def __init__(self, response: httpx.Response, what: str, settings: ConnectorSettings) -> None:
        self.response = response
        self.what = what
        self.settings = settings

    async def items(self, prefix: str) -> AsyncIterator[Any]:
        """The JSON values under `prefix` in ijson's notation: `item` for the elements of a
        top-level array, `tasks.item` for those of the array in a top-level object's `tasks`.
        An answer where no value sits there must be an empty array at `prefix`, else Permanent."""
        async with contextlib.aclosing(self.response.aiter_bytes()) as chunks:
            async for item in self._parse(chunks, prefix):
                yield item

    async def objects(self, prefix: str) -> AsyncIterator[dict[str, Any]]:
        """`items` that must each be a JSON object (a task); anything else is Permanent."""
        async for item in self.items(prefix):
            if not isinstance(item, dict):
                raise Permanent(
                    f"{self.what}: expected JSON objects at {prefix!r}, found {type(item).__name__}",
                    connector=self.settings.name,
                )
            yield item

    async def _parse(self, chunks: AsyncIterator[bytes], prefix: str) -> AsyncIterator[Any]:
        name = self.settings.name
        found = ijson.sendable_list()
        parser = ijson.items_coro(found, prefix, use_float=True)
        budget = self.settings.deadline
        pending = 0  # bytes received since the last whole item
        yielded = 0
        head = bytearray()  # the first bytes, kept to check an answer that yields nothing
        while True:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(max(budget, 0.0)):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except TimeoutError as exc:
                raise DeadlineExceeded(self.what, self.settings.deadline, connector=name) from exc
            except httpx.TimeoutException as exc:
                raise Retryable(f"{self.what} timed out", connector=name) from exc
            except httpx.DecodingError as exc:  # a corrupt gzip or br body: not a network failure
                raise self._not_json(exc) from exc
            except httpx.TransportError as exc:
                raise Retryable(f"{self.what} failed: {type(exc).__name__}", connector=name) from exc
            budget -= time.perf_counter() - started
            pending += len(chunk)
            if not yielded and len(head) <= EMPTY_ANSWER_BYTES:
                head += chunk[: EMPTY_ANSWER_BYTES + 1 - len(head)]
            try:
                parser.send(chunk)
            except ijson.JSONError as exc:
                raise self._not_json(exc) from None
            if found:
                pending = 0
                yielded += len(found)
                items = list(found)
                del found[:]
                for item in items:
                    yield item
            elif pending > self.settings.max_response_bytes:
                raise ResponseTooLarge(
                    self.what + " (one item)", self.settings.max_response_bytes, connector=name
                )
        try:
            parser.close()
        except ijson.JSONError as exc:
            raise self._not_json(exc) from None
        for item in found:
            yielded += 1
            yield item
        if not yielded:
            self._check_empty(bytes(head), prefix)

    def _not_json(self, exc: Exception) -> Permanent:
        return Permanent(
            f"{self.what}: the platform answered with a body that is not JSON ({type(exc).__name__})",
            status=self.response.status_code,
            connector=self.settings.name,
        )

    def _check_empty(self, head: bytes, prefix: str) -> None:
        shape = f"{self.what}: expected a JSON array at {prefix!r}"
        if len(head) > EMPTY_ANSWER_BYTES:
            raise Permanent(f"{shape}; found none in a longer answer", connector=self.settings.name)
        try:
            value: Any = json.loads(head) if head.strip() else None
        except ValueError as exc:
            raise self._not_json(exc) from None
        for key in prefix.split(".")[:-1]:
            value = value.get(key) if isinstance(value, dict) else None
        if value != []:
            raise Permanent(shape, connector=self.settings.name)


def _json(response: httpx.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise Permanent(
            f"the platform answered with a body that is not JSON ({exc})", status=response.status_code
        ) from None


def _clean_params(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if params is None:
        return None
    return {k: v for k, v in params.items() if v is not None}


# -- helpers for connectors ----------------------------------------------------------------------


WEBHOOK_TOLERANCE = 300  # seconds a webhook's timestamp may be from now (Stripe's default)

# Header names that carry a signature or a credential: never recorded with a delivery, whatever a
# connector declares in `webhook_headers`.
_SECRET_HEADER = re.compile(r"signature|authorization|cookie|secret|token|api-key|password", re.I)


def verify_hmac(secret: str, message: bytes, signature: str) -> bool:
    """Constant-time comparison of a hex HMAC-SHA256 signature, as bytes.

    A header may carry any character (the server decodes headers as latin-1), and
    `hmac.compare_digest` raises TypeError for a str with a non-ASCII character, so both sides are
    compared as bytes: a signature that isn't ASCII hex simply does not match."""
    import hmac

    expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest().encode("ascii")
    given = signature.strip().encode("utf-8", "replace").lower()  # bytes.lower(): ASCII only
    return hmac.compare_digest(expected, given)


def verify_timestamp(
    value: str, now: float, *, what: str = "timestamp", tolerance: float = WEBHOOK_TOLERANCE
) -> int:
    """A webhook's timestamp (unix seconds, plain ASCII digits), or BadSignature when it is not one
    or lies more than `tolerance` seconds from `now` (either way: a clock ahead is as suspect)."""
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise BadSignature(f"{what} {value!r} is not an integer of unix seconds")
    age = now - int(text)
    if abs(age) > tolerance:
        raise BadSignature(f"stale {what}: {age:.0f} s from now (tolerance {tolerance:.0f} s)")
    return int(text)


def recordable_headers(headers: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """The headers of a delivery to record with it: those `names` lists (a connector's
    `webhook_headers`), lowercased, less any that carries a signature or a credential."""
    wanted = {n.lower() for n in names if not _SECRET_HEADER.search(n)}
    return {k.lower(): v for k, v in headers.items() if k.lower() in wanted}
