"""Impactly connector: an Impactly project (scope = project id) as canonical tasks.

Fields: title, description, status (active | completed, through mappings/impactly.yaml), priority
(low..urgent or null), assignees (Impactly has ONE assignee, `assignee_id`), due_date (a date),
parent (`parent_task_id`). Impactly has no tags, no start date and no archive.

Round trip (what `roundtrip` promises and `create_task`/`update_task` read back):
- assignees: only people the PeopleMap can name on Impactly can be written; of those, the first by
  person key (`sorted(mappable)[0]`) is kept and written as `assignee_id`; an empty set (or one with
  nobody mappable) writes `assignee_id: null`.
- title: Impactly takes 1..500 characters, not blank. A longer title is cut to 500 characters; a blank
  one is written as "Untitled". Descriptions are written and read verbatim (null reads as "").
- status/priority: the mapping's losses (in_progress/blocked -> active -> todo, cancelled -> completed
  -> done); priority none <-> null.

Subtasks (`capabilities.subtasks`, `parent` read and written): a task's `parent_task_id` is
reported as RemoteTask.parent_id (an Impactly task id; the engine translates it to a bridge task
through its links), and `parent` in the values written is an Impactly task id (or None): sent as
`parent_task_id` on POST /tasks (with the project: a parent must be in the same project) and on
PATCH (null makes the task top level again). The platform refuses a parent that would make a task
its own ancestor (400); the engine never sends one.

Listing (watermark `{"since": ISO time, "polls": n}`):
- No watermark, or every FULL_LISTING_EVERY-th poll (10; `polls` counts the incremental polls since
  the last full one): a full listing of GET /projects/{id}/tasks, every page (limit 100); `all_ids`
  is set. The feed may hold only agents' actions (see the fake's risk note), so full listings are
  what catches changes the feed misses.
- Otherwise incremental: GET /activity?since=<since>&project_id=<scope> (every page; `since` is
  inclusive, so the overlap only repeats work); each task id named by the feed is fetched once
  (a task whose last event is task.deleted, or whose GET answers 404, goes into `deleted_ids`).
  comment.created entries count as a change of their task, so the engine gets a chance to look
  at its comments. When the feed names more than INCREMENTAL_MAX tasks a full listing is cheaper
  (pages of 100 against one GET each) and is done instead, without reading the rest of the feed.
- A full listing is handed to the engine a page at a time (it observes each page's tasks before
  the next is read); an incremental one, at most INCREMENTAL_MAX tasks, once they are fetched.
- `since` is the fetch's start time (our clock, UTC) less SKEW (5 s).

Webhooks: one workspace-wide subscription per URL (listed first; an existing one with the same URL
is kept), events ["*"]. `X-Impactly-Signature: sha256=<hex HMAC-SHA256(raw body)>` is checked in
constant time (as bytes) against each given secret. Replays are caught by the body's `id`, which the
signature covers: it is the event's `delivery_id`, which the engine deduplicates on
(`X-Impactly-Delivery` is not signed, so it is never used for that). `X-Impactly-Timestamp` is
NOT part of the signed message (the fake's docstring: only the raw body is signed), so it proves
nothing on its own; it is still checked when present (unix seconds, at most 300 s from now, as
Stripe does), which refuses a captured delivery re-sent with its headers as they were. The event
type is read from the body's `event`, else from `X-Impactly-Event` (`webhook_headers`, so the
inbox keeps it for processing).

Comments: an agent's comment shows the agent as author, so the mirrored author's name goes into the
content as a prefix: "**Alice via Vortask:** text". Comments written with this key (`author_id` ==
GET /agents/me `id`) are `by_us`; for those the prefix is parsed back into `author` and `body`.

Deletion: DELETE /tasks/{id} (not on the scraped page; the fake serves it; it cascades to subtasks).
A 404 there raises NotFound (the engine may treat that as already done). No archive: archive_task
raises Permanent and `capabilities.archive` is false, so the engine closes instead.

Discovery (`taskbridge scopes` / `people`):
- list_scopes: GET /projects, every page: id, name, visibility and color (every key sees every
  project). No web URL is documented, so `url` is None.
- list_people: Impactly documents no endpoint listing the workspace's members (nor their emails),
  so people are gathered from what the API shows of them, and never carry an email:
  the `assignee_id` of every task (of the scope's project, else of the workspace: GET
  /projects/{id}/tasks or GET /tasks, every page), and the people (`actor_type: "user"`; agents are
  left out) acting in GET /activity over the last PEOPLE_ACTIVITY_WINDOW (90 days; of the scope's
  project when given). A name comes from the person's own comments: for each person the feed
  shows commenting (`comment.created`), one GET /tasks/{id}/comments of that task reads their
  `author_name`. Someone only ever assigned, or who has not commented within the window, is
  reported by id with no name.

Assumed (the docs are silent):
- Paths, envelopes, the activity entry shape, the webhook payload and headers are those listed in
  connectors/impactly/fake.py's docstring.
- Status can't be given on create (the API rejects it): a task is created, then PATCHed to its
  status when that isn't `active` (two calls; the PATCH emits its own event).
- find_by_marker uses POST /search (workspace-wide, at most 50 hits, terms matched in title and
  description) and keeps a hit of the scope whose description contains the marker verbatim; when
  search finds none (its index may lag behind a create, and its tokenising is undocumented) it
  falls back to a full listing of the scope. It is only called on a retried create.
- A task whose project is not the scope is reported GoneFromView by get_task (a move between
  projects is not a deletion).
- comment.created deliveries carry the comment, which has no project id: their WebhookEvent has
  scope "" (the engine finds the task by connector + remote id).
- Task webhooks carry the whole task, so their WebhookEvent has `task` set (with `updated_at`, for
  the engine to discard an out-of-order older delivery); task.deleted carries `task=None`.
- Impactly's retries resend a delivery's original `X-Impactly-Timestamp` (as the fake's do, within
  seconds); a retry more than 300 s after the first try would be refused (401), and polling then
  brings the change instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.mapping import MappingError
from bridge.model import Values, normalize_values, parse_date, parse_timestamp
from connectors.base import (
    BadSignature,
    BaseConnector,
    Capabilities,
    ConnectorSettings,
    GoneFromView,
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
    fields,
    verify_hmac,
    verify_timestamp,
)
from connectors.impactly.client import ImpactlyClient, Json

TITLE_MAX = 500
BLANK_TITLE = "Untitled"
SKEW = timedelta(seconds=5)
FULL_LISTING_EVERY = 10
INCREMENTAL_MAX = 100  # more changed tasks than this: a full listing is cheaper
FETCH_CONCURRENCY = 8
WEBHOOK_EVENTS = ["*"]

PEOPLE_ACTIVITY_WINDOW = "90d"  # the feed's relative `since`: how far back list_people looks

SIGNATURE_HEADER = "x-impactly-signature"
TIMESTAMP_HEADER = "x-impactly-timestamp"
EVENT_HEADER = "x-impactly-event"
_HEX = re.compile(r"[0-9a-fA-F]{64}")

_PREFIX = re.compile(r"\*\*(?P<author>[^\n]+?):\*\* (?P<body>.*)\Z", re.S)


def comment_content(body: str, author: str) -> str:
    """What add_comment posts: the mirrored author's name, then the text."""
    return f"**{author}:** {body}" if author else body


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _valid_since(value: Any) -> str | None:
    """A stored watermark time as the feed's `since` (ISO, UTC); None when absent or unreadable."""
    try:
        moment = parse_timestamp(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return _iso(moment) if moment is not None else None


def _same_id(a: Any, b: Any) -> bool:
    """UUIDs compare case-insensitively (the API answers lower case, a config may not)."""
    return a is not None and b is not None and str(a).lower() == str(b).lower()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


class ImpactlyConnector(BaseConnector):
    webhook_headers = (EVENT_HEADER,)
    capabilities = Capabilities(
        fields=fields("title", "description", "status", "priority", "assignees", "due_date", "parent"),
        writable=fields("title", "description", "status", "priority", "assignees", "due_date", "parent"),
        webhooks=True,
        comments=True,
        incremental=True,
        delete=True,
        archive=False,
        subtasks=True,
    )

    def __init__(self, settings: ConnectorSettings, *, observer: RequestObserver | None = None) -> None:
        super().__init__(settings, observer=observer)
        self.client = ImpactlyClient(self.http)
        self._agent_id: str | None = None
        self.clock = time.time  # for the webhook timestamp check (tests may replace it)

    # -- canonical <-> Impactly ---------------------------------------------------------------

    def _values(self, task: Json) -> Values:
        try:
            status = self.status_from(task.get("status"))
            priority = self.priority_from(task.get("priority"))
        except MappingError as exc:
            raise Permanent(f"task {task.get('id')}: {exc}", connector=self.name) from exc
        assignee = task.get("assignee_id")
        return normalize_values(
            {
                "title": task.get("title") or "",
                "description": task.get("description"),
                "status": status,
                "priority": priority,
                "assignees": [self.people.to_key(assignee)] if assignee else [],
                "due_date": parse_date(task.get("due_date")),
            }
        )

    def _remote(self, task: Json, scope: str | None = None) -> RemoteTask:
        """`scope`: the caller's spelling of the project id (ids compare case-insensitively)."""
        return RemoteTask(
            remote_id=str(task["id"]),
            scope=scope if scope is not None else str(task.get("project_id") or ""),
            values=self._values(task),
            updated_at=parse_timestamp(task.get("updated_at")),
            created_at=parse_timestamp(task.get("created_at")),
            parent_id=str(task["parent_task_id"]) if task.get("parent_task_id") else None,
        )

    def _assignee(self, keys: frozenset[str]) -> str | None:
        mappable = sorted(k for k in keys if self.people.to_remote(k) is not None)
        return self.people.to_remote(mappable[0]) if mappable else None

    @staticmethod
    def _title(title: str) -> str:
        return title[:TITLE_MAX] if title.strip() else BLANK_TITLE

    def _body(self, values: Values) -> Json:
        """The PATCH/POST fields for canonical `values` (already normalized, writable only)."""
        body: Json = {}
        for name, value in values.items():
            if name == "title":
                body["title"] = self._title(value)
            elif name == "description":
                body["description"] = value
            elif name == "status":
                body["status"] = self.status_to(value)
            elif name == "priority":
                body["priority"] = self.priority_to(value)
            elif name == "assignees":
                body["assignee_id"] = self._assignee(value)
            elif name == "due_date":
                body["due_date"] = value.isoformat() if value is not None else None
            elif name == "parent":
                body["parent_task_id"] = value  # an Impactly task id (the engine translated it)
        return body

    def roundtrip_field(self, name: str, value: Any) -> Any:
        if name == "assignees":
            remote = self._assignee(value)
            return frozenset({self.people.to_key(remote)}) if remote is not None else frozenset()
        if name == "title":
            return self._title(value)
        return super().roundtrip_field(name, value)

    def _in_scope(self, scope: str, task: Json) -> RemoteTask:
        if not _same_id(task.get("project_id"), scope):
            raise GoneFromView(
                f"task {task.get('id')} is in project {task.get('project_id')}, not {scope}",
                connector=self.name,
            )
        return self._remote(task, scope)

    # -- listing ------------------------------------------------------------------------------

    async def _listing(
        self, scope: str, watermark: Mapping[str, Any] | None
    ) -> AsyncIterator[RemoteTask | ListingEnd]:
        started = datetime.now(UTC)
        since = _valid_since((watermark or {}).get("since"))
        try:
            polls = int((watermark or {}).get("polls") or 0) + 1
        except (TypeError, ValueError):
            polls = FULL_LISTING_EVERY
        if since and polls < FULL_LISTING_EVERY:
            incremental = await self._incremental(scope, since, started, polls)
            if incremental is not None:
                tasks, end = incremental
                for task in tasks:
                    yield task
                yield end
                return
        ids: set[str] = set()
        try:
            async for page in self.client.project_task_pages(scope):
                for item in page:
                    if _same_id(item.get("project_id"), scope):
                        task = self._remote(item, scope)
                        ids.add(task.remote_id)
                        yield task
        except NotFound as exc:
            # Not a task's 404: the scope itself is missing, which must not read as "all deleted".
            raise Permanent(
                f"project {scope} not found ({exc.message})", status=404, connector=self.name
            ) from exc
        yield ListingEnd(all_ids=frozenset(ids), watermark={"since": _iso(started - SKEW), "polls": 0})

    async def _incremental(
        self, scope: str, since: str, started: datetime, polls: int
    ) -> tuple[list[RemoteTask], ListingEnd] | None:
        last_event: dict[str, str] = {}  # task id -> its latest event, in feed order (oldest first)
        async with contextlib.aclosing(self.client.activity_pages(since=since, project_id=scope)) as pages:
            async for entries in pages:
                for entry in entries:
                    task_id = entry.get("task_id")
                    if task_id and _same_id(entry.get("project_id") or scope, scope):
                        last_event.pop(str(task_id), None)
                        last_event[str(task_id)] = str(entry.get("type") or "")
                if len(last_event) > INCREMENTAL_MAX:
                    return None  # the rest of the feed (a bulk import's, say) need not be read
        deleted = {tid for tid, event in last_event.items() if event == "task.deleted"}
        to_fetch = [tid for tid in last_event if tid not in deleted]
        gate = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def fetch(task_id: str) -> RemoteTask | str | None:
            async with gate:
                try:
                    return self._in_scope(scope, await self.client.get_task(task_id))
                except NotFound:
                    return task_id  # deleted since the feed was read
                except GoneFromView:
                    return None

        tasks: list[RemoteTask] = []
        for result in await asyncio.gather(*(fetch(t) for t in to_fetch)):
            if isinstance(result, RemoteTask):
                tasks.append(result)
            elif isinstance(result, str):
                deleted.add(result)
        return tasks, ListingEnd(
            all_ids=None,
            watermark={"since": _iso(started - SKEW), "polls": polls},
            deleted_ids=frozenset(deleted),
        )

    # -- tasks --------------------------------------------------------------------------------

    async def get_task(self, scope: str, remote_id: str) -> RemoteTask:
        return self._in_scope(scope, await self.client.get_task(remote_id))

    async def create_task(self, scope: str, values: Values) -> RemoteTask:
        values = self.writable(normalize_values(values))
        body = self._body(values)
        status = body.pop("status", None)
        if "parent_task_id" in body and body["parent_task_id"] is None:
            del body["parent_task_id"]  # top level: nothing to say
        body.setdefault("title", BLANK_TITLE)
        created = await self.client.create_task({**body, "project_id": scope})
        if status is not None and status != created.get("status"):
            created = await self.client.update_task(str(created["id"]), {"status": status})
        return self._remote(created, scope)

    async def update_task(self, scope: str, remote_id: str, changes: Values) -> RemoteTask:
        body = self._body(self.writable(normalize_values(changes)))
        if not body:
            return await self.get_task(scope, remote_id)
        return self._remote(await self.client.update_task(remote_id, body), scope)

    async def delete_task(self, scope: str, remote_id: str) -> None:
        await self.client.delete_task(remote_id)

    async def archive_task(self, scope: str, remote_id: str) -> RemoteTask:
        raise Permanent(
            "Impactly has no archive (capabilities.archive is false); close the task instead",
            connector=self.name,
        )

    async def find_by_marker(self, scope: str, marker: str) -> RemoteTask | None:
        return (await self.find_by_markers(scope, [marker])).get(marker)

    async def find_by_markers(
        self, scope: str, markers: Collection[str], *, created_after: datetime | None = None
    ) -> dict[str, RemoteTask]:
        """Each marker searched for (at most 50 hits, workspace-wide); those the search missed,
        in one listing of the project. `created_after` is not used: the searches and the listing
        are read whole either way, and a delivery's signature time is checked only when sent,
        so nothing would tell of a clock far enough off to make a margin against ours unsafe."""
        search, found = MarkerSearch(markers), {}

        def look(tasks: list[Json]) -> None:
            for task in tasks:
                if _same_id(task.get("project_id"), scope):
                    for marker in search.hits(task.get("description")):
                        found[marker] = self._remote(task, scope)

        for marker in sorted(search.wanted):
            query = marker.strip()
            if marker in search.wanted and len(query) <= 500:  # (a search may find another's too)
                look(await self.client.search(query))
        if not search.done:
            look(await self.client.list_project_tasks(scope))
        return found

    # -- comments -----------------------------------------------------------------------------

    async def agent_id(self) -> str:
        """The id of the API agent this key authenticates as (the author of our comments)."""
        if self._agent_id is None:
            self._agent_id = str((await self.client.me())["id"])
        return self._agent_id

    def _comment(self, comment: Json, agent_id: str) -> RemoteComment:
        content = str(comment.get("content") or "")
        author = str(comment.get("author_name") or comment.get("author_id") or "")
        by_us = str(comment.get("author_id")) == agent_id
        if by_us and (m := _PREFIX.match(content)):
            author, content = m["author"], m["body"]
        return RemoteComment(
            remote_id=str(comment["id"]),
            body=content,
            author=author,
            created_at=parse_timestamp(comment.get("created_at")),
            by_us=by_us,
        )

    async def list_comments(self, scope: str, remote_id: str) -> list[RemoteComment]:
        agent_id = await self.agent_id()
        return [self._comment(c, agent_id) for c in await self.client.list_comments(remote_id)]

    async def add_comment(self, scope: str, remote_id: str, body: str, author: str) -> RemoteComment:
        agent_id = await self.agent_id()
        return self._comment(
            await self.client.add_comment(remote_id, comment_content(body, author)), agent_id
        )

    # -- webhooks -----------------------------------------------------------------------------

    async def register_webhook(
        self, scope: str, url: str, secret: str | None, *, rotate: bool = False
    ) -> str | None:
        # Subscriptions are workspace-wide: one per URL serves every project (scope).
        for hook in await self.client.list_webhooks():
            if hook.get("url") == url:
                return None
        created = await self.client.create_webhook(url, WEBHOOK_EVENTS, secret)
        return None if secret is not None else created.get("secret")

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]) -> None:
        header = _header(headers, SIGNATURE_HEADER)
        if not header:
            raise BadSignature("missing X-Impactly-Signature header")
        scheme, _, signature = header.strip().partition("=")
        if scheme.lower() != "sha256" or not _HEX.fullmatch(signature.strip()):
            raise BadSignature("X-Impactly-Signature is not 'sha256=<hex>'")
        usable = [s for s in secrets if s]
        if not usable:
            raise BadSignature("no webhook secret to verify X-Impactly-Signature with")
        # Check every secret (no early exit), so the time taken doesn't tell which one matched.
        matches = [verify_hmac(secret, body, signature) for secret in usable]
        if not any(matches):
            raise BadSignature("X-Impactly-Signature does not match the body")
        timestamp = _header(headers, TIMESTAMP_HEADER)
        if timestamp is not None:
            verify_timestamp(timestamp, self.clock(), what="X-Impactly-Timestamp")

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[WebhookEvent]:
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise BadSignature(f"webhook body is not JSON: {exc}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
            raise BadSignature("webhook body has no 'data' object")
        event = str(payload.get("event") or _header(headers, EVENT_HEADER) or "")
        data: Json = payload["data"]
        # The body's id, which the signature covers (X-Impactly-Delivery is not signed).
        delivery_id = str(payload["id"]) if payload.get("id") else None
        if event == "comment.created":
            task_id = data.get("task_id")
            if not task_id:
                raise BadSignature("comment.created delivery without data.task_id")
            return [
                WebhookEvent(
                    scope=str(data.get("project_id") or ""),
                    remote_id=str(task_id),
                    kind="comment",
                    delivery_id=delivery_id,
                )
            ]
        if not event.startswith("task.") or not data.get("id"):
            return []  # an event this connector doesn't use
        kind = {"task.created": "created", "task.deleted": "deleted"}.get(event, "updated")
        task: RemoteTask | None = None
        if kind != "deleted":
            try:
                task = self._remote(data)
            except (Permanent, KeyError, TypeError, ValueError):
                task = None  # not a whole task we can read: the engine GETs it
        return [
            WebhookEvent(
                scope=str(data.get("project_id") or ""),
                remote_id=str(data["id"]),
                kind=kind,
                delivery_id=delivery_id,
                task=task,
            )
        ]

    # -- health -------------------------------------------------------------------------------

    async def check(self, scope: str) -> str:
        me = await self.client.me()
        try:
            project = await self.client.get_project(scope)
        except NotFound as exc:
            raise Permanent(
                f"project {scope} not found ({exc.message})", status=404, connector=self.name
            ) from exc
        tasks = await self.client.first_page_of_project(scope)
        more = "+" if len(tasks) >= 100 else ""
        return (
            f"impactly: agent {me.get('name')!r} ({', '.join(me.get('permissions') or [])}), "
            f"project {project.get('name')!r}: {len(tasks)}{more} tasks on the first page"
        )

    # -- discovery ------------------------------------------------------------------------------

    async def list_scopes(self) -> list[ScopeInfo]:
        return [
            ScopeInfo(
                id=str(p["id"]),
                name=str(p.get("name") or ""),
                extra={k: str(p[k]) for k in ("visibility", "color") if p.get(k) is not None},
            )
            for p in await self.client.list_projects()
            if p.get("id") is not None
        ]

    async def list_people(self, scope: str | None = None) -> list[PersonInfo]:
        """Assignees and people acting in the activity feed; names from their comments, no email
        (see the module's docstring: Impactly lists no members)."""
        if scope:
            tasks = await self.client.list_project_tasks(scope)
        else:
            tasks = await self.client.list_tasks()
        feed = await self.client.activity(since=PEOPLE_ACTIVITY_WINDOW, project_id=scope or None)
        ids = {str(t["assignee_id"]) for t in tasks if t.get("assignee_id")}
        commented_on: dict[str, str] = {}  # person id -> a task they commented on
        for entry in feed:
            if entry.get("actor_type") != "user" or not entry.get("actor_id"):
                continue
            person = str(entry["actor_id"])
            ids.add(person)
            if entry.get("type") == "comment.created" and entry.get("task_id"):
                commented_on.setdefault(person, str(entry["task_id"]))
        names: dict[str, str] = {}
        for task_id in dict.fromkeys(commented_on.values()):
            try:
                comments = await self.client.list_comments(task_id)
            except NotFound:
                continue  # deleted since: that person's name is simply not read
            for comment in comments:
                author = str(comment.get("author_id") or "")
                if author in ids and comment.get("author_name"):
                    names.setdefault(author, str(comment["author_name"]))
        return self.distinct_people(PersonInfo(i, names.get(i)) for i in ids)
