"""AgentKanban connector: a board's tasks as canonical tasks, and back.

Scope = a board id. Status is the task's lane, read by lane *name* through `mapping.status`
(lane name -> canonical) and written the other way (canonical -> lane name -> that board's lane
id); priority is the integer 0..4 through `mapping.priority`; tags and `archived` map directly.
AgentKanban tasks have no assignees, dates or parents, so the connector neither reads nor writes
them.

Lanes: each board's lanes (id <-> name) are cached. They are re-read (one cheap GET) by every
poll and on a miss, never before a write: when the mapping writes a lane name the cache lacks,
when a task is in a lane id the cache lacks, and when the platform refuses a write (a 4xx) that
carried a cached lane id which the re-read lanes no longer hold (a deleted lane: the write is sent
once more, to the lane that now has the name). A lane the mapping names that the board lacks
after the re-read, or a lane holding a task that the mapping cannot read, is a `Permanent` error
naming the lane and the board (never a KeyError); a status write resolves its lane before it
writes anything.
The trade-off (issue 14: a status write used to re-read the lanes first, one more request each):
a renamed lane keeps its id, so between a rename and the next poll the cache still knows the lane
by its old name. A status write then goes to the lane that *had* the mapped name (after "Done" is
renamed "Shipped", a task set to done goes to "Shipped"; after two lanes swap names, to the lane
that now has the other name), and reads read that lane by its old name. The next poll re-reads
the lanes and reports every task of a renamed lane again (see `lanes` below), that task included,
by the lane's new name: the outcome is the one of a rename made just after the write, and lasts
at most one poll interval. A rename that leaves the mapping without its lane surfaces there as the
`Permanent` error above (as a write would have at once before).

Writes read nothing back (the platform stores what was sent, normalised as assumed below, and the
answers say the rest): a create is one POST, or POST + PATCH `archived=true` for an archived task
(create takes no `archived`); an update is one PATCH of the fields other than status, plus a move
when the status needs one; `archive_task` is one PATCH. With a warm lane cache, that is 1 request
per create (2 when archived) and 1 or 2 per update (none for a status the task is seen to read
as already, below).
- `create_task` returns the task built from what was sent (title and tags as the round trip
  writes them, description verbatim, priority 0 and no tags when not sent, not archived unless
  archived), with every field an answer carries on top, the status read from the answered
  `laneId` through the lane cache. Its values read exactly as a GET would. If the answer carried
  no `laneId` and none was sent, a GET follows (the status would be unknown).
- `update_task` (and `archive_task`) returns only the fields written (values as the answer and
  the round trip give them; status as the task's lane now reads), not the whole task: the other
  fields are not known without a GET, and the engine reads only `updated_at` from it.
- `updated_at` and `created_at` are those of the answers, and the documented answers carry
  neither. A create's `updated_at` is None then (the engine tolerates it: no report of the new
  task can predate it). An update's is a lower bound instead, when this connector has seen the
  task's `updatedAt` (a listing, a detail GET such as the engine's read-before-write): one
  microsecond after the newest it saw. Every write sets a newer `updatedAt` than any before it,
  so the bound is never later than the write's own: a report fetched before the write (a
  listing returned after it) reads as older than the write, which is what the engine uses the
  time for, while the write's echo and every later edit do not. Without a sighting it is None,
  and such a stale report is compared by its values only.
- A status write moves the task to the lane the status is written as, unless the lane this
  connector last saw the task in, less than `LANE_FRESH` (10 s) ago, already reads as the written
  status (a task in "In Review" that the bridge sets to in_progress stays there). Sightings are a
  detail GET (the engine's read-before-write GET among them), a listing (of the tasks it shows
  changed: a board's others would only be stale ten seconds later), and this connector's own
  create and move answers. An older sighting is not trusted (the task may have moved since, and
  keeping it would leave it in a lane that no longer reads so); without a fresh one the task is
  moved, at worst between two lanes that read the same. A move appends the task to the end of
  the target lane.

Listing (polls stay cheap): the task list is unpaginated and complete, but it lacks `description`,
which only the task detail carries. So `list_tasks` lists the board once (`includeArchived=true`,
so an archived task is reported archived rather than vanishing) and GETs the detail only of the
tasks that changed since the watermark. `all_ids` is always the whole listing.
The watermark is `{"since", "seen", "lanes", "map"}`:
- `since`: the newest `updatedAt` seen in a listing, less a margin (`UPDATED_MARGIN`, 5 s), as
  the *platform* wrote it. This is the "max updatedAt seen minus a few seconds" form, chosen over
  our own fetch start time because it never compares our clock with the platform's: a clock
  skew between us and AgentKanban cannot hide a change. The margin covers a write whose
  `updatedAt` was stamped before the listing but became visible only after it.
- `seen`: `{task id: updatedAt}` of the tasks inside that margin that were already reported, so
  an idle board is not re-read every poll (the map is bounded by the writes of the last few
  seconds before the newest one).
- `lanes`: `{lane id: name}` at the poll. Renaming a lane changes no task's `updatedAt`, so the
  tasks of a renamed lane are reported again (their status may have changed meaning).
- `map`: a fingerprint of the status/priority read maps; a changed mapping makes the next poll
  a full one. No watermark (or a changed mapping) means a full listing: every task's detail.
Descriptions read from details are cached in memory by (task id, updatedAt), so a detail is not
fetched again for a task that has not changed (lane renames, `find_by_marker`). A task this
connector created is cached with the description it sent, good while a listing shows its
`updatedAt` equal to its `createdAt` (no write since its creation), so the poll after a create
reads no detail. An update's answer has no `updatedAt` to key the cache with, so the next poll
that sees the task changed reads its detail.

Discovery (`taskbridge scopes` / `people`): list_scopes is GET /boards (every board the key may
see; `extra` holds its `permission`, read or edit). AgentKanban has no people to list: tasks
carry no assignees and the API documents no users endpoint (a comment's `authorName` is free
text, not an account), so list_people returns [] without a request. No web URL is documented
for a board, so `url` is None.

Assumed (the docs are silent; the fake in fake.py implements the same):
- Create accepts `description`, `priority`, `tags` besides the documented title/laneId, and
  answers only `{id, title, laneId}` (as documented). A new task's `updatedAt` equals its
  `createdAt` (the documented list example shows a new task so); every PATCH and move sets a
  new `updatedAt`, later than any before it.
- PATCH answers `{id, <each field sent>: <its stored value>}` (the documented example answers
  the fields sent) and the move answers `{id, laneId, position}`; neither carries `updatedAt`.
- Titles and tags are trimmed by the platform and duplicate tags dropped; a blank title is
  refused, so a blank canonical title is written as "Untitled" (the round trip says so).
  Descriptions are stored verbatim; `null` reads as "". A create without `priority` or `tags`
  stores 0 and [], and one without `laneId` puts the task in the board's first lane.
- Comments: `authorSource == "api"` is taken to mean "written through the external API", i.e. by
  this connector (`by_us`). The API cannot tell one key from another, so comments other API
  integrations post (source "api") also count as ours and are not mirrored. Comments are
  added with `source: "api"` and `authorName` = the author the engine passes ("Alice via X").
- Webhooks belong to the API key, not to a board: one registration per URL serves every board
  the key sees, and `register_webhook` ignores the scope (events carry `boardId`; the engine
  drops boards it does not route). The platform generates the secret (`whsec_...`) and shows it
  only at creation: `register_webhook` returns it then. When a hook for the URL already exists,
  it is kept (re-activated and given the task/comment events if it lacked them) and None is
  returned: the secret is unknown to us then and the engine keeps the one it stored. The
  configured `secret` argument is not used (the platform accepts none).
- Signature: `X-AgentKanban-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>"
  keyed with the whole "whsec_..." string>` (NOTES: Stripe-like); several v1 entries are
  accepted (compared as bytes); a timestamp more than 300 s from now is refused. Delivery id: the
  body's `id`, which the signature covers (`X-AgentKanban-Delivery` is not signed, so it is not
  used: a captured delivery re-sent with a new one inside the 300 s is still a duplicate). The
  event type is the body's `event`, else `X-AgentKanban-Event` (`webhook_headers`).
- Webhook bodies are `{id, event, createdAt, boardId, data}`; data is the task for task.* events
  and the comment plus `taskId` for comment.created. The shape of data is not published: a
  created or updated task's data is read as the task (`event_task`, sparing the GET an echo of
  our own write would cost) only when it has every key a detail GET answers with
  (`DETAIL_KEYS`); any other shape, a deletion, a comment or a delivery older than a version
  seen since is a trigger, and the engine GETs the task. A key missing must never read as a
  field cleared.
- Todos exist (capability `todos`), reachable through `self.client.list_todos/add_todo`; the
  engine does not sync them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bridge.mapping import UnmappedValue
from bridge.model import Status, Values, normalize_values, parse_timestamp
from connectors.agentkanban.client import TASK_EVENTS, AgentKanbanClient, Json
from connectors.base import (
    LISTING_BATCH,
    WEBHOOK_TOLERANCE,
    BadSignature,
    BaseConnector,
    Capabilities,
    ConnectorError,
    ConnectorSettings,
    ListingEnd,
    MarkerSearch,
    NotFound,
    Permanent,
    PersonInfo,
    RemoteComment,
    RemoteTask,
    RequestObserver,
    ScopeInfo,
    WebhookEvent,
    chunked,
    created_before,
    fields,
    verify_hmac,
    verify_timestamp,
)

SIGNATURE_HEADER = "X-AgentKanban-Signature"
EVENT_HEADER = "X-AgentKanban-Event"
SIGNATURE_TOLERANCE = WEBHOOK_TOLERANCE  # seconds between the signature's timestamp and now
# An update's time when its answers carry none: this much after the newest updatedAt seen (a
# write's updatedAt is later than every earlier one, so this never exceeds it).
WRITTEN_AFTER = timedelta(microseconds=1)
UNTITLED = "Untitled"
EVENT_KINDS = {
    "task.created": "created",
    "task.updated": "updated",
    "task.deleted": "deleted",
    "comment.created": "comment",
}

FIELD_ORDER = ("title", "description", "status", "priority", "tags", "archived")
# What a task detail holds (GET .../tasks/:id): a delivery's data is read as the task only with all.
DETAIL_KEYS = frozenset(
    {"id", "title", "description", "laneId", "priority", "tags", "archived", "createdAt", "updatedAt"}
)
FIELDS = fields(*FIELD_ORDER)


@dataclass
class _Lanes:
    """One board's lanes: id -> name, and name -> id of the first lane (by position) so named."""

    by_id: dict[str, str] = field(default_factory=dict)
    by_name: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, lanes: Iterable[Json]) -> _Lanes:
        out = cls()
        for lane in lanes:
            lane_id, name = str(lane.get("id")), str(lane.get("name"))
            out.by_id[lane_id] = name
            out.by_name.setdefault(name, lane_id)
        return out


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


class AgentKanbanConnector(BaseConnector):
    webhook_headers = (EVENT_HEADER,)
    capabilities = Capabilities(
        fields=FIELDS,
        writable=FIELDS,
        webhooks=True,
        comments=True,
        incremental=True,  # `tasks` holds only what changed since the watermark; all_ids is complete
        delete=True,
        archive=True,
        subtasks=False,
        todos=True,
    )

    UPDATED_MARGIN = timedelta(seconds=5)
    DETAIL_CONCURRENCY = 8
    LANE_FRESH = 10.0  # seconds a sighting of a task's lane may spare a status write its move

    def __init__(self, settings: ConnectorSettings, *, observer: RequestObserver | None = None) -> None:
        super().__init__(settings, observer=observer)
        self.client = AgentKanbanClient(self.http)
        self._lanes: dict[str, _Lanes] = {}
        # (board, task id) -> (updatedAt as the platform wrote it, description)
        self._descriptions: dict[tuple[str, str], tuple[str | None, str | None]] = {}
        # (board, task id) -> the description this connector created it with, good while the
        # task's updatedAt equals its createdAt (promoted to _descriptions when a listing shows so)
        self._created: dict[tuple[str, str], str | None] = {}
        # (board, task id) -> (lane id, self.monotonic() when seen there)
        self._sightings: dict[tuple[str, str], tuple[str, float]] = {}
        # (board, task id) -> the newest updatedAt seen (a lower bound for the next write's)
        self._newest: dict[tuple[str, str], datetime] = {}
        self.clock = time.time  # for the webhook timestamp check (tests may replace it)
        self.monotonic = time.monotonic  # for sightings' age (tests may replace it)

    # -- lanes ------------------------------------------------------------------------------------

    async def _refresh_lanes(self, board: str) -> _Lanes:
        lanes = _Lanes.of(await self.client.list_lanes(board))
        self._lanes[board] = lanes
        return lanes

    async def _board_lanes(self, board: str) -> _Lanes:
        cached = self._lanes.get(board)
        return cached if cached is not None else await self._refresh_lanes(board)

    async def _lane_name(self, board: str, lane_id: Any) -> str:
        lanes = await self._board_lanes(board)
        if lane_id not in lanes.by_id:
            lanes = await self._refresh_lanes(board)
        if lane_id not in lanes.by_id:
            raise Permanent(
                f"board {board}: a task is in lane {lane_id!r}, which the board's lane list lacks",
                connector=self.name,
            )
        return lanes.by_id[lane_id]

    async def _lane_status(self, board: str, lane_id: Any) -> Status:
        name = await self._lane_name(board, lane_id)
        try:
            return Status(self.status_from(name))
        except UnmappedValue:
            raise Permanent(
                f"board {board}: lane {name!r} ({lane_id}) has no status mapping; "
                f"add it under mapping.status.read of connector {self.name}",
                connector=self.name,
            ) from None

    async def _reads_as(self, board: str, lane_id: Any) -> Status | None:
        """The status a task in this lane reads as; None when the lane is unmapped or gone."""
        try:
            return await self._lane_status(board, lane_id)
        except Permanent:
            return None

    async def _lane_for(self, board: str, status: Status) -> str:
        """The id of the lane that `status` is written as on this board, from the cache, which is
        re-read once when it lacks the lane's name (a renamed lane keeps its id, so until a poll
        or a miss re-reads them a cached name may name a lane renamed since: see the module doc)."""
        name = self.status_to(status)
        lanes = await self._board_lanes(board)
        if name not in lanes.by_name:
            lanes = await self._refresh_lanes(board)
        if name not in lanes.by_name:
            known = ", ".join(repr(n) for n in lanes.by_name) or "none"
            raise Permanent(
                f"board {board} has no lane named {name!r} (mapping.status.write[{status.value!r}]); "
                f"its lanes: {known}. Create the lane or change the mapping of connector {self.name}",
                connector=self.name,
            )
        return lanes.by_name[name]

    async def _to_lane(
        self, board: str, status: Status, lane_id: str, write: Callable[[str], Awaitable[Json]]
    ) -> tuple[str, Json]:
        """`write(lane_id)`, and the lane id it was written with. When the platform refuses it and
        the re-read lanes lack that id (a lane deleted since the cache was read), `status` is
        resolved again and written once more."""
        try:
            return lane_id, await write(lane_id)
        except Permanent:
            lanes = await self._refresh_lanes(board)
            if lane_id in lanes.by_id:
                raise  # the lane is there: the refusal is about something else
        lane_id = await self._lane_for(board, status)
        return lane_id, await write(lane_id)

    # -- sightings of a task's lane -----------------------------------------------------------------

    def _saw(self, board: str, task: Json, *, lane: bool = True) -> None:
        """Note the lane (unless not `lane`) and the updatedAt of a task as the platform just
        showed them."""
        if task.get("id") is None:
            return
        key = (board, str(task["id"]))
        if lane and task.get("laneId") is not None:
            self._sightings[key] = (str(task["laneId"]), self.monotonic())
        updated = parse_timestamp(task.get("updatedAt"))
        if updated is not None and (key not in self._newest or updated > self._newest[key]):
            self._newest[key] = updated

    def _fresh_lane(self, board: str, task_id: str) -> str | None:
        """The lane this connector saw the task in less than LANE_FRESH seconds ago, if any."""
        seen = self._sightings.get((board, task_id))
        if seen is None or self.monotonic() - seen[1] >= self.LANE_FRESH:
            return None
        return seen[0]

    def _forget(self, board: str, task_id: str) -> None:
        for cache in (self._descriptions, self._created, self._sightings, self._newest):
            cache.pop((board, task_id), None)

    # -- platform JSON <-> canonical --------------------------------------------------------------

    def _priority_in(self, board: str, value: Any) -> Any:
        try:
            return self.priority_from(value)
        except UnmappedValue:
            raise Permanent(
                f"board {board}: priority {value!r} has no mapping; add it under mapping.priority.read",
                connector=self.name,
            ) from None

    async def _values(self, board: str, task: Json, names: Iterable[str] = FIELD_ORDER) -> Values:
        """The canonical values of the fields `names` of a task in the platform's JSON."""
        wanted = set(names)
        raw: dict[str, Any] = {}
        for name in FIELD_ORDER:
            if name not in wanted:
                continue
            if name == "status":
                raw[name] = await self._lane_status(board, task.get("laneId"))
            elif name == "priority":
                raw[name] = self._priority_in(board, task.get("priority", 0))
            elif name == "tags":
                raw[name] = task.get("tags") or []
            elif name == "archived":
                raw[name] = bool(task.get("archived"))
            else:
                raw[name] = task.get(name)
        return normalize_values(raw)

    async def _remote(self, board: str, task: Json, names: Iterable[str] = FIELD_ORDER) -> RemoteTask:
        """A task detail (or a summary with its description added, or what a write sent and its
        answers said) as a RemoteTask of the fields `names`."""
        return RemoteTask(
            remote_id=str(task["id"]),
            scope=board,
            values=await self._values(board, task, names),
            updated_at=parse_timestamp(task.get("updatedAt")),
            created_at=parse_timestamp(task.get("createdAt")),
        )

    @staticmethod
    def _title_out(value: str) -> str:
        return value.strip() or UNTITLED

    @staticmethod
    def _tags_out(value: Iterable[str]) -> list[str]:
        return sorted({t.strip() for t in value if t.strip()})

    def _plain_fields(self, values: Values) -> Json:
        """The PATCH/create body for every field but status."""
        body: Json = {}
        if "title" in values:
            body["title"] = self._title_out(values["title"])
        if "description" in values:
            body["description"] = values["description"]
        if "priority" in values:
            body["priority"] = self.priority_to(values["priority"])
        if "tags" in values:
            body["tags"] = self._tags_out(values["tags"])
        if "archived" in values:
            body["archived"] = bool(values["archived"])
        return body

    def roundtrip_field(self, name: str, value: Any) -> Any:
        if name == "title":
            return self._title_out(value)
        if name == "tags":
            return frozenset(self._tags_out(value))
        return super().roundtrip_field(name, value)

    # -- details (the only view with a description) -------------------------------------------------

    async def _detail(self, board: str, task_id: str) -> Json:
        try:
            task = await self.client.get_task(board, task_id)
        except NotFound:
            self._forget(board, task_id)
            raise
        self._descriptions[(board, task_id)] = (task.get("updatedAt"), task.get("description"))
        self._created.pop((board, task_id), None)
        self._saw(board, task)
        return task

    def _known_description(self, board: str, item: Json) -> tuple[bool, str | None]:
        """(True, description) when the description of the task `item` lists is known without
        a GET: cached at its current updatedAt, or sent by our create with no write since."""
        key = (board, str(item["id"]))
        cached = self._descriptions.get(key)
        if cached is not None and cached[0] == item.get("updatedAt"):
            return True, cached[1]
        if key in self._created:
            updated = parse_timestamp(item.get("updatedAt"))
            if updated is not None and updated == parse_timestamp(item.get("createdAt")):
                description = self._created.pop(key)
                self._descriptions[key] = (item.get("updatedAt"), description)
                return True, description
            if updated is not None:
                del self._created[key]  # written since its creation: the sent description may be stale
        return False, None

    async def _details(self, board: str, summaries: Sequence[Json]) -> dict[str, Json]:
        """Full views of `summaries` by id: from the description cache when the task has not
        changed since, else a GET (several at a time). Tasks that 404 meanwhile are left out."""
        out: dict[str, Json] = {}
        missing: list[str] = []
        for item in summaries:
            task_id = str(item["id"])
            known, description = self._known_description(board, item)
            if known:
                out[task_id] = {**item, "description": description}
            else:
                missing.append(task_id)
        if not missing:
            return out
        gate = asyncio.Semaphore(self.DETAIL_CONCURRENCY)

        async def fetch(task_id: str) -> None:
            async with gate:
                try:
                    out[task_id] = await self._detail(board, task_id)
                except NotFound:
                    pass  # deleted since the listing: the engine confirms with its own GET

        try:
            async with asyncio.TaskGroup() as group:
                for task_id in missing:
                    group.create_task(fetch(task_id))
        except BaseExceptionGroup as failed:
            errors = list(failed.exceptions)
            raise next((e for e in errors if isinstance(e, ConnectorError)), errors[0]) from None
        return out

    def _mapping_fingerprint(self) -> str:
        reads = {
            name: sorted((str(k), str(v)) for k, v in section.read.items())
            for name, section in self.mapping.sections.items()
        }
        return hashlib.sha256(json.dumps(reads, sort_keys=True).encode()).hexdigest()[:16]

    # -- the protocol: tasks ------------------------------------------------------------------------

    async def _listing(
        self, scope: str, watermark: Mapping[str, Any] | None
    ) -> AsyncIterator[RemoteTask | ListingEnd]:
        prev = dict(watermark or {})
        fingerprint = self._mapping_fingerprint()
        since = parse_timestamp(prev.get("since")) if prev.get("map") == fingerprint else None
        full = since is None
        seen_before: Mapping[str, str] = {} if full else (prev.get("seen") or {})
        lanes_before: Mapping[str, str] = {} if full else (prev.get("lanes") or {})

        lanes = await self._refresh_lanes(scope)
        renamed = {i for i, name in lanes.by_id.items() if i in lanes_before and lanes_before[i] != name}
        ids: set[str] = set()
        vanished: set[str] = set()
        newest: datetime | None = None
        # The tasks that may belong in the next mark's `seen`: updated within UPDATED_MARGIN of
        # the newest so far (the newest only grows, so what falls out never comes back).
        recent: dict[str, tuple[str, datetime]] = {}
        kept = 0
        listed = chunked(self.client.iter_tasks(scope, include_archived=True), LISTING_BATCH)
        async with contextlib.aclosing(listed) as batches:
            async for batch in batches:
                changed: list[Json] = []
                for item in batch:
                    task_id = str(item["id"])
                    ids.add(task_id)
                    # A lane sighting serves a write within LANE_FRESH seconds, and the outbox
                    # reads a task before writing it: kept for the changed tasks only, so a board
                    # of 100,000 does not leave 100,000 sightings that are stale ten seconds later.
                    self._saw(scope, item, lane=False)
                    updated = parse_timestamp(item.get("updatedAt"))
                    if updated is not None:
                        newest = updated if newest is None or updated > newest else newest
                        recent[task_id] = (item["updatedAt"], updated)
                    if (
                        full
                        or updated is None
                        or (updated > since and seen_before.get(task_id) != item.get("updatedAt"))
                        or item.get("laneId") in renamed
                    ):
                        changed.append(item)
                if changed:
                    for item in changed:
                        self._saw(scope, item)
                    details = await self._details(scope, changed)
                    for item in changed:
                        detail = details.get(str(item["id"]))
                        if detail is None:
                            vanished.add(str(item["id"]))  # deleted since the listing
                        else:
                            yield await self._remote(scope, detail)
                if newest is not None and len(recent) > 2 * kept + LISTING_BATCH:
                    floor = newest - self.UPDATED_MARGIN
                    recent = {i: seen for i, seen in recent.items() if seen[1] > floor}
                    kept = len(recent)

        new_since = since
        if newest is not None:
            candidate = newest - self.UPDATED_MARGIN
            new_since = candidate if new_since is None or candidate > new_since else new_since
        seen = {
            task_id: raw
            for task_id, (raw, updated) in recent.items()
            if new_since is not None and updated > new_since and task_id not in vanished
        }
        mark = {
            "since": new_since.isoformat().replace("+00:00", "Z") if new_since is not None else None,
            "seen": seen,
            "lanes": dict(lanes.by_id),
            "map": fingerprint,
        }
        yield ListingEnd(all_ids=frozenset(ids - vanished), watermark=mark)

    async def get_task(self, scope: str, remote_id: str) -> RemoteTask:
        return await self._remote(scope, await self._detail(scope, remote_id))

    async def create_task(self, scope: str, values: Values) -> RemoteTask:
        values = normalize_values(self.writable(values))
        body = self._plain_fields(values)
        body["title"] = self._title_out(values.get("title", ""))
        archived = bool(body.pop("archived", False))  # create takes no `archived`: a PATCH follows
        if body.get("description") == "":
            del body["description"]  # null and "" read the same
        # What the platform stores from this body (see the module doc); the answers go on top.
        task: Json = {"priority": 0, "tags": [], "description": None, **body, "archived": False}
        if "status" in values:
            status = Status(values["status"])

            async def post(lane_id: str) -> Json:
                return await self.client.create_task(scope, {**body, "laneId": lane_id})

            task["laneId"], created = await self._to_lane(
                scope, status, await self._lane_for(scope, status), post
            )
        else:
            created = await self.client.create_task(scope, body)
        task.update(created)
        remote_id = str(task["id"])
        final = created
        if archived:
            final = await self.client.update_task(scope, remote_id, {"archived": True})
            task["archived"] = True
            task.update(final)
        if task.get("laneId") is None:
            return await self.get_task(scope, remote_id)  # no lane sent nor answered: status unknown
        self._saw(scope, task)
        key = (scope, remote_id)
        if final.get("updatedAt") is not None:
            self._descriptions[key] = (final["updatedAt"], task.get("description"))
        elif not archived:
            self._created[key] = task.get("description")
        return await self._remote(scope, task)

    async def update_task(self, scope: str, remote_id: str, changes: Values) -> RemoteTask:
        changes = normalize_values(self.writable(changes))
        body = self._plain_fields(changes)
        task: Json = {**body, "id": remote_id}
        status: Status | None = None
        target: str | None = None
        if "status" in changes:
            # Resolve the lane before writing anything, so a mapping gap fails cleanly.
            status = Status(changes["status"])
            lane_id = await self._lane_for(scope, status)
            seen = self._fresh_lane(scope, remote_id)
            if seen is not None and (
                seen == lane_id or await self._reads_as(scope, seen) == self.roundtrip_field("status", status)
            ):
                task["laneId"] = seen  # it already reads so: it stays where it is
            else:
                target = lane_id
        if body:
            patched = await self.client.update_task(scope, remote_id, body)
            task.update(patched)
            self._saw(scope, patched)  # in case the answer carries the lane
        if status is not None and target is not None:

            async def move(lane_id: str) -> Json:
                return await self.client.move_task(scope, remote_id, lane_id)

            task["laneId"], moved = await self._to_lane(scope, status, target, move)
            task.update(moved)
            self._saw(scope, task)
        # The answers carry no updatedAt (module doc); every write sets a newer one than any seen.
        written_at = parse_timestamp(task.get("updatedAt"))
        seen_at = self._newest.get((scope, remote_id))
        if written_at is None and seen_at is not None and (body or target is not None):
            written_at = seen_at + WRITTEN_AFTER
        return RemoteTask(
            remote_id=remote_id,
            scope=scope,
            values=await self._values(scope, task, changes),
            updated_at=written_at,
            created_at=parse_timestamp(task.get("createdAt")),
        )

    async def delete_task(self, scope: str, remote_id: str) -> None:
        await self.client.delete_task(scope, remote_id)
        self._forget(scope, remote_id)

    async def archive_task(self, scope: str, remote_id: str) -> RemoteTask:
        return await self.update_task(scope, remote_id, {"archived": True})

    async def find_by_marker(self, scope: str, marker: str) -> RemoteTask | None:
        return (await self.find_by_markers(scope, [marker])).get(marker)

    async def find_by_markers(
        self, scope: str, markers: Collection[str], *, created_after: datetime | None = None
    ) -> dict[str, RemoteTask]:
        """No search endpoint: the board is listed and the descriptions read, newest task first,
        from the cache where it is current and otherwise a batch of GETs at a time, until every
        marker is found. Tasks the listing dates before `created_after` by more than
        CREATION_MARGIN are not read: after a restart (nothing cached) a marker not there cost a
        GET for every task of the board. The margin is safe here because AgentKanban's clock is
        checked against ours: its signatures carry a time, refused 300 s away."""
        search, found = MarkerSearch(markers), {}
        if search.done:
            return found

        async def look(items: list[Json], details: Mapping[str, Json]) -> None:
            for item in items:
                task = details.get(str(item["id"]))
                if task is not None:
                    for marker in search.hits(task.get("description")):
                        found[marker] = await self._remote(scope, task)

        items = [
            item
            for item in await self.client.list_tasks(scope, include_archived=True)
            if not created_before(item.get("createdAt"), created_after)
        ]
        items.sort(key=lambda t: str(t.get("createdAt") or ""), reverse=True)
        cached = await self._details(scope, [i for i in items if self._known_description(scope, i)[0]])
        await look(items, cached)
        rest = [i for i in items if str(i["id"]) not in cached]
        step = self.DETAIL_CONCURRENCY
        for start in range(0, len(rest), step):
            if search.done:
                break
            batch = rest[start : start + step]
            await look(batch, await self._details(scope, batch))
        return found

    # -- comments -------------------------------------------------------------------------------------

    @staticmethod
    def _comment(comment: Json) -> RemoteComment:
        return RemoteComment(
            remote_id=str(comment["id"]),
            body=str(comment.get("body") or ""),
            author=str(comment.get("authorName") or ""),
            created_at=parse_timestamp(comment.get("createdAt")),
            by_us=comment.get("authorSource") == "api",
        )

    async def list_comments(self, scope: str, remote_id: str) -> list[RemoteComment]:
        return [self._comment(c) for c in await self.client.list_comments(scope, remote_id)]

    async def add_comment(self, scope: str, remote_id: str, body: str, author: str) -> RemoteComment:
        created = await self.client.add_comment(
            scope, remote_id, body, author_name=author.strip() or None, source="api"
        )
        return self._comment(created)

    # -- webhooks ---------------------------------------------------------------------------------------

    async def register_webhook(
        self, scope: str, url: str, secret: str | None, *, rotate: bool = False
    ) -> str | None:
        for hook in await self.client.list_webhooks():
            if hook.get("url") != url:
                continue
            if rotate:
                # Its secret was shown once, to a store that is gone: no delivery would verify.
                await self.client.delete_webhook(str(hook["id"]))
                break
            events = list(hook.get("events") or [])
            lacking = "*" not in events and not set(TASK_EVENTS) <= set(events)
            if lacking or hook.get("active") is False:
                update: Json = {"active": True}
                if lacking:
                    update["events"] = list(dict.fromkeys([*events, *TASK_EVENTS]))
                await self.client.update_webhook(str(hook["id"]), **update)
            return None  # kept; its secret was shown only at creation and the engine has it
        created = await self.client.create_webhook(url, list(TASK_EVENTS))
        new_secret = created.get("secret")
        return str(new_secret) if new_secret else None

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]) -> None:
        header = _header(headers, SIGNATURE_HEADER)
        if not header:
            raise BadSignature(f"no {SIGNATURE_HEADER} header")
        timestamp: str | None = None
        signatures: list[str] = []
        for part in header.split(","):
            key, sep, value = part.strip().partition("=")
            if not sep:
                continue
            if key == "t":
                timestamp = value.strip()
            elif key == "v1":
                signatures.append(value.strip())
        if timestamp is None or not signatures:
            raise BadSignature(f"{SIGNATURE_HEADER} lacks t= or v1=")
        verify_timestamp(
            timestamp, self.clock(), what=f"{SIGNATURE_HEADER} timestamp", tolerance=SIGNATURE_TOLERANCE
        )
        usable = [s for s in secrets if s]
        if not usable:
            raise BadSignature("no webhook secret to verify with")
        message = timestamp.encode() + b"." + body
        if not any(verify_hmac(secret, message, sig) for secret in usable for sig in signatures):
            raise BadSignature("signature does not match the body with any known secret")

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[WebhookEvent]:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadSignature(f"webhook body is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise BadSignature("webhook body is not a JSON object")
        event = payload.get("event") or _header(headers, EVENT_HEADER)
        kind = EVENT_KINDS.get(str(event))
        if kind is None:
            return []  # board.created and anything newer: nothing about a task
        data = payload.get("data")
        board = payload.get("boardId")
        if not isinstance(data, dict) or not board:
            raise BadSignature(f"{event} delivery without boardId or data")
        remote_id = data.get("taskId") if kind == "comment" else data.get("id")
        if not remote_id:
            raise BadSignature(f"{event} delivery without a task id")
        delivery = payload.get("id")  # signed with the body; X-AgentKanban-Delivery is not
        return [
            WebhookEvent(
                scope=str(board),
                remote_id=str(remote_id),
                kind=kind,
                delivery_id=str(delivery) if delivery else None,
                # A created or updated task's detail, signed with the body: `event_task` reads it
                # (its lane's name may need the board's lanes), so an echo of our own write costs
                # no GET. Deletions and comments stay triggers.
                detail=data if kind in ("created", "updated") and DETAIL_KEYS <= data.keys() else None,
            )
        ]

    async def event_task(self, event: WebhookEvent) -> RemoteTask | None:
        """The task a delivery's detail shows, unless it is older than a version this connector
        has seen (deliveries can arrive out of order): then None, and the engine GETs it."""
        detail = event.detail
        if detail is None or str(detail.get("id")) != event.remote_id:
            return None
        updated = parse_timestamp(detail.get("updatedAt"))
        newest = self._newest.get((event.scope, event.remote_id))
        if updated is None or (newest is not None and updated < newest):
            return None
        task = dict(detail)
        self._descriptions[(event.scope, event.remote_id)] = (task.get("updatedAt"), task.get("description"))
        self._created.pop((event.scope, event.remote_id), None)
        self._saw(event.scope, task)
        return await self._remote(event.scope, task)

    # -- health -------------------------------------------------------------------------------------------

    async def check(self, scope: str) -> str:
        board = await self.client.get_board(scope)
        lanes = _Lanes.of(board.get("lanes") or [])
        self._lanes[scope] = lanes
        assert self.mapping.status is not None
        missing = sorted({str(n) for n in self.mapping.status.write.values()} - set(lanes.by_name))
        if missing:
            raise Permanent(
                f"board {scope} ({board.get('name')!r}) lacks the lanes {missing} that mapping.status.write "
                f"names; create them or change the mapping of connector {self.name}",
                connector=self.name,
            )
        items = await self.client.list_tasks(scope, include_archived=True)
        unread = {
            lane_id: name for lane_id, name in lanes.by_id.items() if name not in self.mapping.status.read
        }
        busy = sorted({unread[i["laneId"]] for i in items if i.get("laneId") in unread})
        if busy:
            raise Permanent(
                f"board {scope} ({board.get('name')!r}): lanes {busy} hold tasks but have no status mapping; "
                f"add them under mapping.status.read of connector {self.name}",
                connector=self.name,
            )
        note = f"; unmapped empty lanes: {sorted(set(unread.values()))}" if unread else ""
        return f"board {board.get('name')!r} ({scope}): {len(lanes.by_id)} lanes, {len(items)} tasks{note}"

    # -- discovery ------------------------------------------------------------------------------

    async def list_scopes(self) -> list[ScopeInfo]:
        return [
            ScopeInfo(
                id=str(b["id"]),
                name=str(b.get("name") or ""),
                extra={"permission": str(b["permission"])} if b.get("permission") else {},
            )
            for b in await self.client.list_boards()
            if b.get("id")
        ]

    async def list_people(self, scope: str | None = None) -> list[PersonInfo]:
        """None to list: AgentKanban has no assignees and no users endpoint (module docstring)."""
        return []
