"""Vortask connector: a Vortask project (scope = project id, an integer as a string) as canonical tasks.

Fields: title, description, status (New | Active | Blocked | Closed) and priority (Low | Medium |
High) through mappings/vortask.yaml, assignees (several: `assigneeIds`, user uuids, through the
PeopleMap), tags, due_date (a date). Vortask has no start date, no parent and no archive.
Task ids are integers; `remote_id` is str(id).

Round trip (what `roundtrip` promises, and what `create_task`/`update_task` read back):
- status/priority: the mapping's losses (cancelled -> Closed -> done; urgent -> High -> high;
  none -> Medium -> medium, since priority is required).
- assignees: every person the PeopleMap can name on Vortask is written; the others don't come
  back (the mappable subset). A person who is not a member of the project is refused by
  Vortask (400 -> Permanent, naming the user).
- tags: blank tags are dropped (Vortask refuses them), the rest are written as a sorted list.
- title: a blank title is written as "Untitled" (Vortask requires one). Descriptions are written
  and read verbatim (null reads as "").
- due_date: written as "YYYY-MM-DD"; Vortask answers "YYYY-MM-DDT00:00:00Z", of which only the
  date part is read (no timezone shift, whatever time a date-time written elsewhere carries).

Writes: create is POST (title and priority required; a new task always starts New), then, when
the canonical status is not one written as New, a PUT of the status. `create_tasks` (a backfill's
creates, `capabilities.bulk_create`) is MCP `bulk_create_tasks`, up to 100 tasks, all validated
before any is created (a 400 names the item: "Task 3: ..."; any refusal of the call is
BulkRefused, nothing created), then each one's status PUT. Update is a PUT of only the
changed writable fields (all optional on Vortask); its answer is the whole task. Delete is DELETE
(Admin only: a Member's token gets 403 -> Permanent with Vortask's message). No archive:
`archive_task` raises Permanent and `capabilities.archive` is false, so the engine closes instead.

Listing: the task list is unpaginated and has no "changed since" filter, so every poll is a full
listing of the project: `all_ids` is set and the watermark is `{}` (the engine compares content
hashes, so an idle poll writes nothing). `find_by_marker` lists the project and matches the
description (there is no search endpoint).

Field times (`capabilities.field_history`): the task's history (GET .../history, newest first,
one entry a changed field: TitleChanged, DueDateChanged, ...) dates each field's last change,
which the engine asks for only when a field was changed on both sides since they agreed.

Webhooks (per project; Admin role needed): `register_webhook` lists the project's webhooks and
keeps one whose callbackUrl is the URL, else POSTs {callbackUrl, secret}. A kept registration
gets one PUT {isActive: true, secret}: it turns the webhook back on if someone switched it off,
and puts the configured secret on it, because Vortask never shows a webhook's secret and after a
secret rotation in the config a kept registration would otherwise go on signing with the old
one, so every delivery would be rejected. Returns None (we supply the secret). A webhook_secret is required: Vortask signs deliveries only
when a secret is set. `X-Vortask-Signature` is the lowercase hex HMAC-SHA256 of the raw body,
checked in constant time against each given secret. The scheme has no timestamp and Vortask
sends no delivery id, so `delivery_id` is None: the engine deduplicates deliveries by body hash
(each body carries the task's `updatedAt`, so a replay is a duplicate). The payload lacks the
description and due date, so events carry `task=None` and the engine GETs the task.

Comments go through Vortask's MCP server (settings.mcp_url, default `<origin of base_url>/mcp`),
one session kept open and reused (see mcp_client.py): tools `list_comments {taskId}` (oldest
first) and `add_comment {taskId, body}`. The MCP tools name the task only (ids are global), so
the scope is not checked for comments. A comment is always written as the token's user, so a
mirrored comment is posted as "<author>: <body>" (the engine's author string, e.g. "Bob via
Impactly: text"); it is read back verbatim. `by_us` is true for comments whose `authorId` is
the token's user (GET /profile, once, cached).

Discovery (`taskbridge scopes` / `people`): list_scopes is GET /projects (the projects the
token's user is a member of; `extra` holds its role there and the task count). list_people is
GET /projects/:id/members of the scope, or of every listed project (each user once): `userId`
(the id `assigneeIds` takes), `displayName`, `email`. Both need the `projects:read` token scope
(403 otherwise). Pending invitations are not people yet (no user id to assign), so they are left
out. No web URL is documented for a project, so `url` is None.

Assumed (the docs are silent; the fake, connectors/vortask/fake.py, follows the same list):
- The REST error body's `errors` hold the details; a 404 on a task path is the task gone (or
  the project invisible to the token); other people's projects answer 404, not 403.
- `dueDate` accepts a bare date; `null` clears it; `tags`/`assigneeIds` replace the whole list.
- MCP tool ids are integers; a failing tool returns `isError` with the REST error body and its
  HTTP-equivalent `status`.
- The webhook payload is the page's: {event, projectId, task: {id, title, status, priority,
  assignees: [{email}], tags, updatedAt}}; the signature is bare hex (no "sha256=" prefix).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from datetime import date, datetime
from typing import Any
from urllib.parse import urlsplit

from bridge.mapping import UnmappedValue
from bridge.model import Priority, Status, Values, normalize_values, parse_date, parse_timestamp
from connectors.base import (
    BadSignature,
    BaseConnector,
    BulkRefused,
    Capabilities,
    ConnectorError,
    ConnectorSettings,
    ListingEnd,
    MarkerSearch,
    Permanent,
    PersonInfo,
    RemoteComment,
    RemoteTask,
    RequestObserver,
    Retryable,
    ScopeInfo,
    WebhookEvent,
    fields,
    verify_hmac,
)

from .client import Json, VortaskClient
from .mcp_client import ToolRefused, VortaskMcp

SIGNATURE_HEADER = "X-Vortask-Signature"
EVENT_KINDS = {"task.created": "created", "task.updated": "updated", "task.deleted": "deleted"}
UNTITLED = "Untitled"
# A history entry's `action` -> the canonical field it changed (the task's other entries, such as
# its creation, date no one field).
HISTORY_FIELDS = {
    "TitleChanged": "title",
    "DescriptionChanged": "description",
    "StatusChanged": "status",
    "PriorityChanged": "priority",
    "DueDateChanged": "due_date",
    "TagsChanged": "tags",
    "AssigneesChanged": "assignees",
}
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


def default_mcp_url(base_url: str) -> str:
    """`https://HOST/api` -> `https://HOST/mcp` (the origin of the REST base, path /mcp)."""
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}/mcp"


class VortaskConnector(BaseConnector):
    capabilities = Capabilities(
        fields=fields("title", "description", "status", "priority", "assignees", "tags", "due_date"),
        writable=fields("title", "description", "status", "priority", "assignees", "tags", "due_date"),
        webhooks=True,
        comments=True,
        incremental=False,
        delete=True,
        archive=False,
        field_history=True,
        bulk_create=100,  # MCP bulk_create_tasks: 1 to 100 tasks
    )
    # Vortask signs deliveries only when a secret is set: without one configured, the daemon
    # leaves this connector's webhooks off (polling only) and says so once at start.
    webhook_secret_required = True

    @classmethod
    def scope_problem(cls, scope: str) -> str | None:
        if str(scope).strip().isdigit():
            return None
        return f"a Vortask scope is a project id (an integer), not {scope!r}"

    def __init__(self, settings: ConnectorSettings, *, observer: RequestObserver | None = None) -> None:
        super().__init__(settings, observer=observer)
        self.client = VortaskClient(self.http)
        self.mcp = VortaskMcp(
            settings,
            settings.mcp_url or default_mcp_url(settings.base_url),
            observer=observer,
            limiter=self.http.limiter,
        )
        self._me: Json | None = None  # GET /profile, read once

    # -- reading --------------------------------------------------------------------------------

    async def _listing(
        self, scope: str, watermark: Mapping[str, Any] | None
    ) -> AsyncIterator[RemoteTask | ListingEnd]:
        ids: set[str] = set()
        async with contextlib.aclosing(self.client.iter_tasks(_project(scope))) as items:
            async for item in items:
                task = self._remote(scope, item)
                ids.add(task.remote_id)
                yield task
        yield ListingEnd(all_ids=frozenset(ids))

    async def get_task(self, scope: str, remote_id: str) -> RemoteTask:
        return self._remote(scope, await self.client.get_task(_project(scope), _task(remote_id)))

    async def field_times(self, scope: str, remote_id: str) -> Mapping[str, datetime]:
        """From the task's history (GET .../history: one entry a changed field, newest first,
        each with its `action` and `createdAt`): the newest change of each field named there."""
        times: dict[str, datetime] = {}
        for entry in await self.client.task_history(_project(scope), _task(remote_id)):
            name = HISTORY_FIELDS.get(str(entry.get("action")))
            at = parse_timestamp(entry.get("createdAt"))
            if name is not None and at is not None and (name not in times or at > times[name]):
                times[name] = at
        return times

    async def find_by_marker(self, scope: str, marker: str) -> RemoteTask | None:
        return (await self.find_by_markers(scope, [marker])).get(marker)

    async def find_by_markers(
        self, scope: str, markers: Collection[str], *, created_after: datetime | None = None
    ) -> dict[str, RemoteTask]:
        # `created_after` is not used: the listing is one answer whatever it holds, so passing
        # old tasks by saves no request, and Vortask's clock is checked by nothing (its
        # signatures carry no time) to make a margin against ours safe.
        search, found = MarkerSearch(markers), {}
        if search.done:
            return found
        async with contextlib.aclosing(self.client.iter_tasks(_project(scope))) as tasks:
            async for task in tasks:
                for marker in search.hits(task.get("description")):
                    found[marker] = self._remote(scope, task)
                if search.done:
                    break
        return found

    async def check(self, scope: str) -> str:
        profile = await self._profile()
        project = await self.client.get_project(_project(scope))
        tasks = 0
        async for _ in self.client.iter_tasks(_project(scope)):
            tasks += 1
        await self.mcp.connect()
        return (
            f"vortask project {project.get('id')} {project.get('name')!r}: {tasks} tasks; "
            f"as {profile.get('displayName')} ({project.get('myRole')}); MCP session open at {self.mcp.url}"
        )

    # -- discovery ------------------------------------------------------------------------------

    async def list_scopes(self) -> list[ScopeInfo]:
        return [
            ScopeInfo(
                id=str(p["id"]),
                name=str(p.get("name") or ""),
                extra={
                    k: str(p[v])
                    for k, v in (("role", "myRole"), ("tasks", "taskCount"))
                    if p.get(v) is not None
                },
            )
            for p in await self.client.list_projects()
            if p.get("id") is not None
        ]

    async def list_people(self, scope: str | None = None) -> list[PersonInfo]:
        if scope:
            projects = [_project(scope)]
        else:
            projects = [int(p["id"]) for p in await self.client.list_projects() if p.get("id") is not None]
        people = [
            PersonInfo(str(m["userId"]), m.get("displayName"), m.get("email"))
            for project in projects
            for m in await self.client.list_members(project)
            if m.get("userId")
        ]
        return self.distinct_people(people)

    # -- writing --------------------------------------------------------------------------------

    async def create_task(self, scope: str, values: Values) -> RemoteTask:
        project = _project(scope)
        body, status = self._create_body(values)
        return await self._set_status(scope, project, await self.client.create_task(project, body), status)

    async def create_tasks(self, scope: str, items: Sequence[Values]) -> list[RemoteTask | ConnectorError]:
        """MCP `bulk_create_tasks` (up to 100; Vortask validates every item before it creates
        any), then each task's status as `create_task` sets it. Each item takes the created task
        showing its title and description (the engine's carry its marker), not merely the one in
        its place: an answer in another order must not swap two tasks' ids. An item no created
        task shows is Retryable (it may exist: the retry looks for its marker)."""
        project = _project(scope)
        made = [self._create_body(values) for values in items]
        try:
            answer = await self.mcp.call(
                "bulk_create_tasks", {"projectId": project, "tasks": [b for b, _ in made]}
            )
        except ToolRefused as exc:  # nothing created: each may go alone
            raise BulkRefused(exc.message, status=exc.status, connector=self.name) from exc
        created = answer.get("created") if isinstance(answer, dict) else None
        if (
            not isinstance(created, list)
            or len(created) != len(made)
            or not all(isinstance(t, dict) and _is_id(t.get("id")) for t in created)
        ):
            raise Permanent(
                f"MCP bulk_create_tasks: expected {len(made)} created tasks in its answer",
                connector=self.name,
            )
        shown: dict[tuple[Any, str], list[Json]] = {}
        for task in created:
            shown.setdefault((task.get("title"), task.get("description") or ""), []).append(task)
        out: list[RemoteTask | ConnectorError] = []
        for body, status in made:
            same = shown.get((body["title"], body.get("description") or ""))
            if not same:
                out.append(
                    Retryable(
                        "MCP bulk_create_tasks: no created task in its answer shows this one",
                        connector=self.name,
                    )
                )
                continue
            try:
                out.append(await self._set_status(scope, project, same.pop(0), status))
            except ConnectorError as exc:  # this one's status: the task was created
                out.append(exc)
        return out

    def _create_body(self, values: Values) -> tuple[Json, str | None]:
        """A create's body, and the status to PUT after it (a new task always starts New)."""
        values = self.writable(normalize_values(values))
        body = self._body(values)
        body.setdefault("title", UNTITLED)
        body.setdefault("priority", self.priority_to(Priority.NONE))  # required by Vortask
        body.pop("status", None)  # ignored on create
        return body, self.status_to(values["status"]) if "status" in values else None

    async def _set_status(self, scope: str, project: int, task: Json, status: str | None) -> RemoteTask:
        if status is not None and task.get("status") != status:
            task = await self.client.update_task(project, int(task["id"]), {"status": status})
        return self._remote(scope, task)

    async def update_task(self, scope: str, remote_id: str, changes: Values) -> RemoteTask:
        body = self._body(self.writable(normalize_values(changes)))
        project, task_id = _project(scope), _task(remote_id)
        if not body:
            return await self.get_task(scope, remote_id)
        return self._remote(scope, await self.client.update_task(project, task_id, body))

    async def delete_task(self, scope: str, remote_id: str) -> None:
        await self.client.delete_task(_project(scope), _task(remote_id))

    async def archive_task(self, scope: str, remote_id: str) -> RemoteTask:
        raise Permanent("Vortask has no archive (capabilities.archive is false)", connector=self.name)

    # -- comments (MCP) ---------------------------------------------------------------------------

    async def list_comments(self, scope: str, remote_id: str) -> list[RemoteComment]:
        me = (await self._profile()).get("id")
        comments = await self.mcp.call("list_comments", {"taskId": _task(remote_id)})
        if not isinstance(comments, list):
            raise Permanent("MCP list_comments: expected a list of comments", connector=self.name)
        return [self._comment(c, me) for c in comments if isinstance(c, dict)]

    async def add_comment(self, scope: str, remote_id: str, body: str, author: str) -> RemoteComment:
        me = (await self._profile()).get("id")
        text = f"{author}: {body}" if author else body
        comment = await self.mcp.call("add_comment", {"taskId": _task(remote_id), "body": text})
        if not isinstance(comment, dict):
            raise Permanent("MCP add_comment: expected the new comment", connector=self.name)
        return self._comment(comment, me)

    # -- webhooks -------------------------------------------------------------------------------

    async def register_webhook(
        self, scope: str, url: str, secret: str | None, *, rotate: bool = False
    ) -> str | None:
        secret = secret or self.settings.webhook_secret
        if not secret:
            raise Permanent(
                "Vortask signs webhook deliveries only when a secret is set: configure webhook_secret",
                connector=self.name,
            )
        project = _project(scope)
        for hook in await self.client.list_webhooks(project):
            if hook.get("callbackUrl") == url:
                # Kept; the configured secret is put back on it (it may have been rotated).
                await self.client.update_webhook(
                    project, int(hook["id"]), {"isActive": True, "secret": secret}
                )
                return None
        await self.client.create_webhook(project, url, secret)
        return None

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]) -> None:
        signature = _header(headers, SIGNATURE_HEADER)
        if signature is None:
            raise BadSignature(f"missing {SIGNATURE_HEADER} header")
        signature = signature.strip()
        if not _HEX.match(signature):
            raise BadSignature(f"{SIGNATURE_HEADER} is not a hex HMAC-SHA256")
        usable = [s for s in secrets if s]
        if not usable:
            raise BadSignature("no webhook secret to verify with")
        if not any(verify_hmac(secret, body, signature) for secret in usable):
            raise BadSignature(f"{SIGNATURE_HEADER} does not match the body with any known secret")

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[WebhookEvent]:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadSignature(f"webhook body is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise BadSignature("webhook body is not a JSON object")
        event = payload.get("event")
        task = payload.get("task")
        project = payload.get("projectId")
        if (
            not isinstance(event, str)
            or not isinstance(task, dict)
            or not _is_id(task.get("id"))
            or not _is_id(project)
        ):
            raise BadSignature("webhook body lacks event, projectId or task.id")
        kind = EVENT_KINDS.get(event)
        if kind is None:
            return []  # an event we don't act on (none other is documented)
        # No delivery id on Vortask: the engine deduplicates by body hash. The payload lacks
        # description and dueDate, so the engine GETs the task (task=None), but for a creation
        # it made itself, which its stamp (the task's updatedAt: made then) tells it.
        try:
            stamp = parse_timestamp(task.get("updatedAt")) if isinstance(task.get("updatedAt"), str) else None
        except ValueError:
            stamp = None  # not a time: the engine reads the task
        return [WebhookEvent(scope=str(int(project)), remote_id=str(int(task["id"])), kind=kind, stamp=stamp)]

    # -- round trip -----------------------------------------------------------------------------

    def roundtrip_field(self, name: str, value: Any) -> Any:
        if name == "title":
            return value if value.strip() else UNTITLED
        if name == "tags":
            return frozenset(t for t in value if t.strip())
        return super().roundtrip_field(name, value)

    async def aclose(self) -> None:
        try:
            await self.mcp.aclose()
        finally:
            await super().aclose()

    # -- conversion -----------------------------------------------------------------------------

    def _remote(self, scope: str, task: Json) -> RemoteTask:
        return RemoteTask(
            remote_id=str(task["id"]),
            scope=scope,
            values=self._values(task),
            updated_at=parse_timestamp(task.get("updatedAt")),
            created_at=parse_timestamp(task.get("createdAt")),
        )

    def _values(self, task: Json) -> Values:
        try:
            status = self.status_from(task.get("status"))
            priority = self.priority_from(task.get("priority"))
        except UnmappedValue as exc:
            raise Permanent(f"task {task.get('id')}: {exc}", connector=self.name) from None
        assignees = task.get("assignees") or []
        return normalize_values(
            {
                "title": task.get("title") or "",
                "description": task.get("description"),
                "status": status,
                "priority": priority,
                "assignees": [self.people.to_key(str(a["userId"])) for a in assignees if a.get("userId")],
                "tags": task.get("tags") or [],
                # "2026-04-01T00:00:00Z": the date part, as written (never shifted by a timezone).
                "due_date": parse_date(task["dueDate"][:10]) if task.get("dueDate") else None,
            }
        )

    def _body(self, values: Values) -> Json:
        """Vortask's fields for canonical values (only those given)."""
        body: Json = {}
        for name, value in values.items():
            if name == "title":
                body["title"] = value if value.strip() else UNTITLED
            elif name == "description":
                body["description"] = value
            elif name == "status":
                body["status"] = self.status_to(Status(value))
            elif name == "priority":
                body["priority"] = self.priority_to(Priority(value))
            elif name == "assignees":
                body["assigneeIds"] = self.people.keys_to_remote(value)
            elif name == "tags":
                body["tags"] = sorted(t for t in value if t.strip())
            elif name == "due_date":
                body["dueDate"] = value.isoformat() if isinstance(value, date) else None
        return body

    def _comment(self, comment: Json, me: Any) -> RemoteComment:
        return RemoteComment(
            remote_id=str(comment.get("id")),
            body=str(comment.get("body") or ""),
            author=str(comment.get("authorName") or comment.get("authorId") or ""),
            created_at=parse_timestamp(comment.get("createdAt")),
            by_us=me is not None and comment.get("authorId") == me,
        )

    async def _profile(self) -> Json:
        """The token's user (GET /profile once; its id tells our comments apart)."""
        if self._me is None:
            self._me = await self.client.get_profile()
        return self._me


def _project(scope: str) -> int:
    problem = VortaskConnector.scope_problem(scope)
    if problem:
        raise Permanent(problem)
    return int(str(scope).strip())


def _task(remote_id: str) -> int:
    text = str(remote_id).strip()
    if not text.isdigit():
        raise Permanent(f"a Vortask task id is an integer, not {remote_id!r}")
    return int(text)


def _is_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and value.isdigit()
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None
