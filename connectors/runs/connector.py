"""The runs connector: PostHog Tasks, whose status is the status of the task's latest run.

A scope is a PostHog project id; tasks live at `{base_url}/projects/{scope}/tasks/` with
`base_url = https://HOST/api`. Canonical fields read: title, description, status, archived.

Status is read-only. It is the latest run's `status` (`not_started` when the task has no run),
read through `mappings/runs.yaml`. Nothing edits it except starting a run, so a status "write":
- never PATCHes the task;
- when the canonical status is in `mapping.options["start_run_on"]` (default `[in_progress]`)
  and the latest run is not already `queued`/`in_progress`, POSTs `{id}/run/`, which makes a
  `queued` run; the answer is the task with its new `latest_run`;
- otherwise does nothing: the platform keeps whatever status its runs have.
So `status` is writable only in that sense: the run is a side effect of `update_task`/`create_task`
when `changes` carry such a status. The RemoteTask they return shows the real status after the call.
`roundtrip(values)` says what the platform will REPORT: for a status in `start_run_on`, the
mapping's reading of `queued` (`in_progress`); for any other status it makes no claim (the key
is left out), because the remote status stays what it was and roundtrip cannot know it; the
engine keeps its last observed status as the base (for a create that is `todo`: no run yet,
which is also what the returned RemoteTask says).
Starting a run costs real agent work: a route whose initial sync creates many `in_progress`
mirrors here starts one run each. Set `mapping: {options: {start_run_on: []}}` to never start one.

Listing: no updated-since filter exists, so every poll lists the whole project (limit/offset,
100 a page, followed to the end) and the engine compares content hashes; the watermark is `{}`.
`all_ids` is given only when the walk reached the end with a consistent `count` (see
`TaskWalk`: the list is newest first, so tasks created or deleted while we page shift
pages; duplicates are dropped by id, and a walk that may have skipped one is not complete).

Platform losses, in `roundtrip`: text is trimmed of surrounding whitespace (DRF CharField), and
a title is cut to 255 characters (then trimmed again, as the platform would).

What the key sees: PostHog scopes tasks to the key's user, not to the project (visibility.py in
PostHog's source; the fake's docstring has the rules). The listing holds only the tasks that user
may see: its own, those with no creator, those of team-visible origins, those in channels it can
see. Writes (PATCH, DELETE, `run/`) reach only the tasks it controls, a narrower set: a
teammate's `experiments` task is listed and read, but not written.
PostHog answers 404 alike for a deleted task, a task outside the key's view, and (on a write) a
visible task the key may not control. So:
- a 404 on a task's GET raises `GoneFromView`, never `NotFound`: the engine unlinks the task
  rather than believing it deleted and archiving or deleting its mirrors. The price: a task
  really deleted in PostHog is unlinked too, its mirrors kept. Removal that does propagate is
  archiving (`archived` is mapped and lists ask for `archived=all`, so it is seen as a change);
- a 404 on a write (PATCH, DELETE, `run/`) raises `NotFound`; it may mean "deleted" or "not
  yours to change", and it is the engine's to confirm with a GET and a complete listing before
  it believes a deletion;
- either way, a 404 is first checked against the project (below): a wrong scope is Permanent.
The usage limit: `POST {id}/run/` over the team's PostHog Desktop limit answers 429
`usage_limit_exceeded` with a `reset_at` and no Retry-After; it raises `UsageLimitExceeded`
(connectors/runs/client.py), a `RateLimited` with `retry_after=None` and the `reset_at`, at once
(no inline wait or resend: the limit lasts hours or weeks).

Not here: priority, assignees (`created_by` is the task's creator, the API key's user, not an
assignee, so it is not mapped to `assignees`), tags, dates, parent, comments, webhooks (polling
only: `register_webhook` returns None without a call, `verify_webhook` raises BadSignature,
`parse_webhook` returns [], `list_comments` returns [], `add_comment` raises Permanent).

Discovery (`taskbridge scopes` / `people`): the vendor's page documents only the Tasks
endpoints, under a project id the caller must already know; it lists no projects and no users.
So `list_scopes` returns [] without a request (`taskbridge scopes` then checks the scopes the
config names instead), and `list_people(scope)` returns the users the scope's tasks show as
`created_by` ({id, first_name, last_name, email}: the task list's `created_by` filter takes that
integer id), every page with `archived=all`; without a scope, [] (no project to read). Only
creators of tasks the key can see are found, and the connector maps no assignees, so these ids
do nothing in `people:` today.

Assumed (the docs are silent; correct here when a real account shows otherwise):
- Lists ask for `archived=all`, so archiving is seen as a change of `archived`, not as the task
  leaving the project; `internal` is left out (PostHog's own internal tasks stay hidden).
- Pagination follows our own offsets (offset += page length) until `next` is null, rather than
  the absolute `next` URL, which names the host as the server sees it.
- A 404 on a task is the task's (GoneFromView on a read, NotFound on a write) only when the
  project itself still answers: the connector then lists one task of the project; if that 404s
  too, the scope is wrong (Permanent), so a mistyped project id never reads as "every task was
  deleted".
- A blank title on create is filled by PostHog (the fake: the description's first line); that
  title then shows up as a remote edit. A non-blank title is sent with `title_manually_set:
  true`, as PostHog's UI does when a person types one, so PostHog does not rename it.
- `POST {id}/run/` is sent `{"mode": "background"}` (no person is watching a bridge-started
  run). It is not retried inline (not idempotent); a retried update re-reads the latest run
  first, so a run that did start is not started twice.
- `url` of a task: `<origin of base_url>/project/{project}/tasks/{id}` (PostHog's app routes).
- `find_by_marker` uses the list's `search` filter (case-insensitive substring of title or
  description), with `archived=all`, and confirms the (whitespace-trimmed) marker is in the
  description.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from bridge.mapping import MappingError
from bridge.model import Status, Values, normalize_values, parse_timestamp
from connectors.base import (
    BadSignature,
    BaseConnector,
    Capabilities,
    ConnectorSettings,
    GoneFromView,
    ListingEnd,
    NotFound,
    Permanent,
    PersonInfo,
    RateLimited,
    RemoteComment,
    RemoteTask,
    RequestObserver,
    ScopeInfo,
    WebhookEvent,
    fields,
)
from connectors.runs.client import RunsClient, error_message, usage_limit

log = logging.getLogger("taskbridge.connector.runs")

T = TypeVar("T")

RUN_STATUSES = ("not_started", "queued", "in_progress", "completed", "failed", "cancelled")
ACTIVE_RUN = frozenset({"queued", "in_progress"})  # a run already going: don't start another
TITLE_MAX = 255
DEFAULT_START_RUN_ON = ("in_progress",)


class RunsConnector(BaseConnector):
    capabilities = Capabilities(
        fields=fields("title", "description", "status", "archived"),
        # status: writing one in start_run_on starts a run; roundtrip() claims nothing for others.
        writable=fields("title", "description", "archived", "status"),
        webhooks=False,
        comments=False,
        incremental=False,
        delete=True,
        archive=True,
    )

    def error_message(self, response: httpx.Response) -> str:
        return error_message(response)

    def rate_limited(self, response: httpx.Response, throttle: RateLimited) -> RateLimited:
        return usage_limit(response, throttle)  # the usage limit: raised at once, never waited out

    def __init__(self, settings: ConnectorSettings, *, observer: RequestObserver | None = None) -> None:
        # The mapping is checked before BaseConnector opens an HTTP client that a failed
        # construction would leak.
        self.name, self.mapping = settings.name, settings.mapping
        self._check_status_mapping()
        self.start_run_on = self._start_run_on()
        super().__init__(settings, observer=observer)
        self.client = RunsClient(self.http)
        base = settings.base_url.rstrip("/")
        self._app_origin = base[: -len("/api")] if base.endswith("/api") else base

    # -- configuration --------------------------------------------------------------------------

    def _check_status_mapping(self) -> None:
        status = self.mapping.status
        if status is None:
            raise MappingError(f"{self.name}: the runs mapping needs a status section")
        missing = [s for s in RUN_STATUSES if s not in status.read]
        if missing:
            raise MappingError(
                f"{self.name}: run statuses {missing} have no mapping; add them under mapping.status.read"
            )

    def _start_run_on(self) -> frozenset[Status]:
        raw = self.mapping.options.get("start_run_on", DEFAULT_START_RUN_ON)
        if raw is None:
            return frozenset()
        if isinstance(raw, str):
            raw = [raw]
        out = set()
        for value in raw:
            try:
                out.add(Status(value))
            except ValueError:
                allowed = ", ".join(s.value for s in Status)
                raise MappingError(
                    f"{self.name}: mapping.options.start_run_on: {value!r} is not a canonical status ({allowed})"
                ) from None
        return frozenset(out)

    # -- conversion -----------------------------------------------------------------------------

    def _remote(self, scope: str, data: Mapping[str, Any]) -> RemoteTask:
        latest = data.get("latest_run")
        run_status = (latest.get("status") if isinstance(latest, Mapping) else None) or "not_started"
        values = normalize_values(
            {
                "title": data.get("title"),
                "description": data.get("description"),
                "status": self.status_from(run_status),  # UnmappedValue (a MappingError) names it
                "archived": bool(data.get("archived", False)),
            }
        )
        task_id = str(data["id"])
        return RemoteTask(
            remote_id=task_id,
            scope=scope,
            values=values,
            updated_at=parse_timestamp(data.get("updated_at")),
            created_at=parse_timestamp(data.get("created_at")),
            url=f"{self._app_origin}/project/{scope}/tasks/{task_id}",
        )

    def _body(self, values: Values) -> dict[str, Any]:
        """The PATCH/POST body for the writable fields among `values` (already normalized)."""
        body: dict[str, Any] = {}
        if "title" in values:
            body["title"] = self.roundtrip_field("title", values["title"])
            if body["title"]:
                body["title_manually_set"] = True
        if "description" in values:
            body["description"] = self.roundtrip_field("description", values["description"])
        if "archived" in values:
            body["archived"] = bool(values["archived"])
        return body

    def _starts_run(self, values: Values) -> bool:
        return "status" in values and values["status"] in self.start_run_on

    # -- round trip -----------------------------------------------------------------------------

    def roundtrip(self, values: Values) -> Values:
        out: Values = {}
        for name, value in normalize_values(values).items():
            if name not in self.capabilities.fields:
                continue
            value = self.roundtrip_field(name, value)
            if value is not None:  # None: the platform's value after the write is not ours to say
                out[name] = value
        return out

    def roundtrip_field(self, name: str, value: Any) -> Any:
        if name == "title":
            return value.strip()[:TITLE_MAX].strip()
        if name == "description":
            return value.strip()
        if name == "status":
            return self.status_from("queued") if value in self.start_run_on else None
        return super().roundtrip_field(name, value)

    # -- errors ---------------------------------------------------------------------------------

    def _project_missing(self, scope: str, exc: NotFound) -> Permanent:
        """A 404 on the project's task list: the scope is wrong (not a deleted task)."""
        return Permanent(
            f"project {scope} not found ({exc.message}); check the route's scope",
            status=404,
            connector=self.name,
        )

    async def _task_missing(self, scope: str, remote_id: str, exc: NotFound, *, read: bool) -> Permanent:
        """A task's 404, as the task's only if the project still answers: GoneFromView on a read
        (deleted or out of the key's view: PostHog does not say which), NotFound on a write."""
        try:
            await self.client.list_page(scope, limit=1)
        except NotFound as project_exc:
            return self._project_missing(scope, project_exc)
        if read:
            return GoneFromView(
                f"task {remote_id} is not in this key's view of project {scope}: deleted, or no "
                f"longer visible to the key's user ({exc.message})",
                status=404,
                connector=self.name,
            )
        return NotFound(
            f"task {remote_id} not found in project {scope}, or not one this key's user may change "
            f"({exc.message})",
            status=404,
            connector=self.name,
        )

    async def _read(self, scope: str, remote_id: str) -> dict[str, Any]:
        try:
            return await self.client.get_task(scope, remote_id)
        except NotFound as exc:
            raise await self._task_missing(scope, remote_id, exc, read=True) from None

    async def _write(self, scope: str, remote_id: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except NotFound as exc:
            raise await self._task_missing(scope, remote_id, exc, read=False) from None

    # -- tasks ----------------------------------------------------------------------------------

    async def _listing(
        self, scope: str, watermark: Mapping[str, Any] | None
    ) -> AsyncIterator[RemoteTask | ListingEnd]:
        walk = self.client.walk(scope, archived="all")
        try:
            async for task in walk:
                yield self._remote(scope, task)
        except NotFound as exc:
            raise self._project_missing(scope, exc) from None
        if not walk.complete:
            log.info(
                "%s: project %s changed while it was listed (count %s, %d pages); "
                "not a complete listing this time",
                self.name,
                scope,
                walk.count,
                walk.pages,
            )
        yield ListingEnd(all_ids=walk.ids() if walk.complete else None)

    async def get_task(self, scope: str, remote_id: str) -> RemoteTask:
        return self._remote(scope, await self._read(scope, remote_id))

    async def create_task(self, scope: str, values: Values) -> RemoteTask:
        values = normalize_values(values)
        try:
            data = await self.client.create_task(scope, self._body(values))
        except NotFound as exc:
            raise self._project_missing(scope, exc) from None
        if self._starts_run(values):
            data = await self._start_run_if_idle(scope, str(data["id"]), data)
        return self._remote(scope, data)

    async def update_task(self, scope: str, remote_id: str, changes: Values) -> RemoteTask:
        changes = normalize_values(changes)
        body = self._body(changes)
        data: dict[str, Any] | None = None
        if body:
            data = await self._write(
                scope, remote_id, lambda: self.client.update_task(scope, remote_id, body)
            )
        if self._starts_run(changes):
            if data is None:
                data = await self._read(scope, remote_id)
            data = await self._start_run_if_idle(scope, remote_id, data)
        if data is None:  # nothing this platform writes: report the task as it is
            data = await self._read(scope, remote_id)
        return self._remote(scope, data)

    async def _start_run_if_idle(self, scope: str, remote_id: str, data: dict[str, Any]) -> dict[str, Any]:
        latest = data.get("latest_run")
        if isinstance(latest, Mapping) and latest.get("status") in ACTIVE_RUN:
            return data
        log.info("%s: starting a run of task %s in project %s", self.name, remote_id, scope)
        return await self._write(
            scope, remote_id, lambda: self.client.start_run(scope, remote_id, {"mode": "background"})
        )

    async def delete_task(self, scope: str, remote_id: str) -> None:
        await self._write(scope, remote_id, lambda: self.client.delete_task(scope, remote_id))

    async def archive_task(self, scope: str, remote_id: str) -> RemoteTask:
        data = await self._write(
            scope, remote_id, lambda: self.client.update_task(scope, remote_id, {"archived": True})
        )
        return self._remote(scope, data)

    async def find_by_marker(self, scope: str, marker: str) -> RemoteTask | None:
        needle = marker.strip()
        if not needle:  # a blank `search` is no filter at all on PostHog
            return None
        try:
            pages = await self.client.list_all(scope, search=needle, archived="all")
        except NotFound as exc:
            raise self._project_missing(scope, exc) from None
        for task in pages.tasks:
            if needle in (task.get("description") or ""):
                return self._remote(scope, task)
        return None

    # -- comments and webhooks: not on this platform ------------------------------------------

    async def list_comments(self, scope: str, remote_id: str) -> list[RemoteComment]:
        return []

    async def add_comment(self, scope: str, remote_id: str, body: str, author: str) -> RemoteComment:
        raise Permanent("runs has no comments", connector=self.name)

    async def register_webhook(self, scope: str, url: str, secret: str | None) -> str | None:
        return None  # PostHog Tasks has no webhooks: this platform is polled

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]) -> None:
        raise BadSignature("runs has no webhooks")

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[WebhookEvent]:
        return []

    # -- health ---------------------------------------------------------------------------------

    async def check(self, scope: str) -> str:
        try:
            body = await self.client.list_page(scope, limit=1, archived="all")
        except NotFound as exc:
            raise self._project_missing(scope, exc) from None
        return f"{self.name}: project {scope}: {body.get('count', '?')} tasks, read access ok"

    # -- discovery ------------------------------------------------------------------------------

    async def list_scopes(self) -> list[ScopeInfo]:
        """[]: PostHog's Tasks API lists no projects (see the module's docstring)."""
        return []

    async def list_people(self, scope: str | None = None) -> list[PersonInfo]:
        """The creators of the scope's tasks the key can see; [] without a scope."""
        if not scope:
            return []
        try:
            pages = await self.client.list_all(scope, archived="all")
        except NotFound as exc:
            raise self._project_missing(scope, exc) from None
        people = []
        for task in pages.tasks:
            user = task.get("created_by")
            if isinstance(user, dict) and user.get("id") is not None:
                name = " ".join(str(user.get(k) or "").strip() for k in ("first_name", "last_name")).strip()
                people.append(PersonInfo(str(user["id"]), name or None, user.get("email")))
        return self.distinct_people(people)
