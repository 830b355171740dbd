"""The squads (Nucleus) connector: squad-scoped tasks <-> canonical values.

Scope is a squad NAME. A poll is one GET /api/tasks?squad=<name> (unpaginated, so every poll is
a complete listing: `all_ids` is always set). Nucleus has no updated-since filter and no
webhooks, so the watermark is `{}` and the engine finds changes by content hash.

Fields: title, description, status, priority, assignees (one: `assignee_id`), due_date,
start_date, parent (`parent_task_id`). Status and priority are config items: a task carries `status_id` / `priority_id`
(item ids) and, in every documented task shape, the joined `status_value` / `priority_value`.
Values map through mappings/squads.yaml (item `value` <-> canonical). Reading prefers the joined
value; a row without it is resolved through a cache of the config lists (item id -> value), which
is refreshed once when it meets an unknown id; an id still unknown is a Permanent error naming it.
Writing goes canonical -> value (mapping) -> item id (cache, refreshed once on a miss).

Deletions are never confirmed on squads. GET /api/tasks/:id answers 404 both for a deleted task
and for one that left the credential's view (role scoping: employees and leads see their own
tasks, managers also their squad's), and the two cannot be told apart. So every 404 on a task
raises GoneFromView, never NotFound: a deletion is only ever reported as "gone from view".

Subtasks (`capabilities.subtasks`, `parent` read and written): a row's `parent_task_id` is reported
as RemoteTask.parent_id (a Nucleus task id; the engine translates it to a bridge task through its
links), and `parent` in the values written is a Nucleus task id (or None), sent as `parent_task_id`
in the POST /api/tasks body (documented there; POST /tasks/:id/subtasks takes only title, assignee
and due date, so it is not used) and in the PUT. The platform refuses a parent that would make a
task its own ancestor (400); the engine never sends one.

Not synced: tags (none on the platform), archived (no archive). Todos (checklist items) are
exposed as `list_todos` / `replace_todos`; comments and webhooks do not exist.

Discovery (`taskbridge scopes` / `people`): list_scopes is GET /api/squads (NOTES.md); a squad's
scope id is its NAME (what the `squad` filter takes), its uuid is kept in `extra`. Nucleus
documents no users endpoint, so list_people gathers the people the visible tasks name: GET
/api/tasks (`squad=<scope>` when given; one unpaginated request) -> `assignee_id`/`assignee_name`,
`reporter_id`/`reporter_name`, `created_by`/`created_by_name`. No emails (the API shows none),
and only people on tasks the service token may see (role scoping) are found: a member with no
task, or with tasks out of the token's view, is missing.

Assumed (the docs are silent; correct here when a real account shows otherwise):
- Every task row (list, GET /:id, POST and PUT answers) carries `updated_at` / `created_at`
  (ISO 8601 UTC), used for RemoteTask.updated_at / created_at; the docs only imply the columns.
- The POST and PUT answers carry the whole task row with the joined `*_value` columns (PUT's is
  documented "with joined status, priority, and type labels"), so no GET follows a write.
- A task with no status item (status_id null) reads as canonical `todo`; no priority item reads
  through mapping `priority.read[null]` (`none` by default), and writing `none` clears priority_id.
- A task belongs to the squad of its assignee, else of its reporter (the service token's user):
  Nucleus has no squad field on a task. A task created in a squad other than the token user's
  lands in that squad only once it is assigned to one of its members.
- Titles are stored trimmed (leading/trailing whitespace dropped); `roundtrip` says so.
- PUT `parent_task_id: null` makes a task top level again (the docs list the field as a string;
  null is how every other nullable column is cleared).
- Squad names are matched exactly; a name with a comma cannot be used (the `squad` filter is
  comma-separated). An unknown squad name is a Permanent error (checked against GET /api/squads),
  never an empty listing, so a renamed squad cannot look like "every task was deleted".
- Search (`search=`) is a substring match on title and description; find_by_marker confirms
  the marker in the description itself.
- The task's web URL is not documented, so RemoteTask.url is None.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx

from bridge.mapping import MappingError, UnmappedValue
from bridge.model import Status, Values, normalize_values, parse_date, parse_timestamp
from connectors.base import (
    LISTING_BATCH,
    BadSignature,
    BaseConnector,
    Capabilities,
    ConnectorSettings,
    GoneFromView,
    ListingEnd,
    NotFound,
    Permanent,
    PersonInfo,
    RemoteComment,
    RemoteTask,
    RequestObserver,
    ScopeInfo,
    WebhookEvent,
    chunked,
    fields,
)
from connectors.squads.client import Json, SquadsClient
from connectors.squads.client import auth_headers as client_auth_headers
from connectors.squads.client import error_message as client_error_message

STATUS_LIST = "task_status"
PRIORITY_LIST = "task_priority"
SECTION_LIST = {"status": STATUS_LIST, "priority": PRIORITY_LIST}

FIELDS = fields("title", "description", "status", "priority", "assignees", "due_date", "start_date", "parent")
# The (user id, name) column pairs of a task row: whom list_people can find.
PEOPLE_COLUMNS = (
    ("assignee_id", "assignee_name"),
    ("reporter_id", "reporter_name"),
    ("created_by", "created_by_name"),
)


class UnmappedItem(Permanent, MappingError):
    """A config item the connector cannot map: an id the platform's list does not have, or a value
    the mapping does not cover. Permanent (the same task fails the same way until someone fixes
    the mapping or the list) and a MappingError (it is a mapping gap)."""


class ConfigItems:
    """The task_status / task_priority config lists, cached: item id <-> item value.

    `refresh(key)` re-reads one list; callers refresh at most once per lookup batch.
    """

    def __init__(self, client: SquadsClient, connector: str) -> None:
        self.client = client
        self.connector = connector
        self.by_id: dict[str, dict[str, str]] = {}
        self.by_value: dict[str, dict[str, str]] = {}
        self._lock = asyncio.Lock()

    def loaded(self, key: str) -> bool:
        return key in self.by_id

    async def refresh(self, key: str) -> None:
        async with self._lock:
            items = await self.client.config_items(key)
            self.by_id[key] = {str(i["id"]): str(i["value"]) for i in items if i.get("value") is not None}
            self.by_value[key] = {}
            for item in sorted(items, key=lambda i: i.get("position") or 0):
                # first item wins when two share a value (the list's order decides)
                self.by_value[key].setdefault(str(item["value"]), str(item["id"]))

    async def ensure(self, key: str) -> None:
        if not self.loaded(key):
            await self.refresh(key)

    async def id_of(self, key: str, value: str) -> str:
        """The id of the item of list `key` whose value is `value`; refreshes once on a miss."""
        await self.ensure(key)
        if value not in self.by_value[key]:
            await self.refresh(key)
        try:
            return self.by_value[key][value]
        except KeyError:
            known = ", ".join(sorted(self.by_value[key])) or "none"
            raise UnmappedItem(
                f"the platform's {key} list has no item with value {value!r} (it has: {known}); add the "
                f"item on the platform or change this connector's mapping write section",
                connector=self.connector,
            ) from None


class SquadsConnector(BaseConnector):
    capabilities = Capabilities(
        fields=FIELDS,
        writable=FIELDS,
        webhooks=False,
        comments=False,
        incremental=False,
        delete=True,
        archive=False,
        subtasks=True,  # parent_task_id, read and written (see the module's docstring)
        todos=True,
    )

    def __init__(self, settings: ConnectorSettings, *, observer: RequestObserver | None = None) -> None:
        super().__init__(settings, observer=observer)
        self.client = SquadsClient(self.http)
        self.items = ConfigItems(self.client, self.name)
        self._squads: set[str] | None = None

    # -- reading ------------------------------------------------------------------------------

    def _canonical(self, section: str, value: Any) -> Any:
        field_map = self.mapping.sections[section]
        try:
            return field_map.to_canonical(value)
        except UnmappedValue as exc:
            if section == "status" and value is None:
                return Status.TODO  # assumed: a task without a status item is still to do
            raise UnmappedItem(str(exc), connector=self.name) from None

    async def _prefetch_items(self, rows: Sequence[Json]) -> None:
        """Refresh each config list at most once for a batch of rows with unknown item ids."""
        for section, key in SECTION_LIST.items():
            unknown = {
                str(r[f"{section}_id"])
                for r in rows
                if r.get(f"{section}_value") is None and r.get(f"{section}_id") not in (None, "")
            }
            if not unknown:
                continue
            if not self.items.loaded(key) or unknown - self.items.by_id[key].keys():
                await self.items.refresh(key)

    async def _remote_task(self, scope: str, row: Json, *, refreshed: bool = False) -> RemoteTask:
        if not refreshed:
            await self._prefetch_items([row])
        values: Values = {
            "title": row.get("title") or "",
            "description": row.get("description") or "",
            "status": self._canonical("status", self._resolved(row, "status")),
            "priority": self._canonical("priority", self._resolved(row, "priority")),
            "assignees": self._assignees(row.get("assignee_id")),
            "due_date": parse_date(row.get("due_date")),
            "start_date": parse_date(row.get("start_date")),
        }
        return RemoteTask(
            remote_id=str(row["id"]),
            scope=scope,
            values=normalize_values(values),
            updated_at=parse_timestamp(row.get("updated_at")),
            created_at=parse_timestamp(row.get("created_at")),
            parent_id=str(row["parent_task_id"]) if row.get("parent_task_id") else None,
        )

    def _resolved(self, row: Json, section: str) -> Any:
        """The row's item value, with no further refresh (the batch's one refresh is done)."""
        joined = row.get(f"{section}_value")
        if joined is not None:
            return joined
        item_id = row.get(f"{section}_id")
        if item_id in (None, ""):
            return None
        key = SECTION_LIST[section]
        value = self.items.by_id.get(key, {}).get(str(item_id))
        if value is None:
            raise UnmappedItem(
                f"{key} item id {item_id!r} of task {row.get('id')!r} is not in the platform's {key} list "
                "(even after re-reading it)",
                connector=self.name,
            )
        return value

    def _assignees(self, assignee_id: Any) -> frozenset[str]:
        if assignee_id in (None, ""):
            return frozenset()
        return frozenset({self.people.to_key(str(assignee_id))})

    async def _known_squad(self, scope: str, *, refresh: bool = False) -> None:
        if self._squads is None or refresh or scope not in self._squads:
            self._squads = {str(s.get("name")) for s in await self.client.list_squads()}
        if scope not in self._squads:
            known = ", ".join(sorted(self._squads)) or "none"
            raise Permanent(f"no squad named {scope!r} (squads: {known})", connector=self.name)

    async def _listing(
        self, scope: str, watermark: Mapping[str, Any] | None
    ) -> AsyncIterator[RemoteTask | ListingEnd]:
        await self._known_squad(scope)
        ids: set[str] = set()
        async with contextlib.aclosing(
            chunked(self.client.iter_tasks(squad=scope), LISTING_BATCH)
        ) as batches:
            async for rows in batches:
                await self._prefetch_items(rows)  # one refresh of the config lists for the batch
                for row in rows:
                    task = await self._remote_task(scope, row, refreshed=True)
                    ids.add(task.remote_id)
                    yield task
        if not ids:
            # an empty squad, or one renamed since we last looked: re-check before reporting "empty"
            await self._known_squad(scope, refresh=True)
        yield ListingEnd(all_ids=frozenset(ids))

    async def get_task(self, scope: str, remote_id: str) -> RemoteTask:
        """The task, or GoneFromView for any 404: deleted and out-of-view look the same here."""
        try:
            data = await self.client.get_task(remote_id)
        except NotFound as exc:
            raise self._gone(remote_id, exc) from None
        return await self._remote_task(scope, data["task"])

    def _gone(self, remote_id: str, exc: NotFound) -> GoneFromView:
        return GoneFromView(
            f"task {remote_id} is gone from this credential's view (deleted, or out of its role's view: "
            f"squads answers 404 for both) [{exc.message}]",
            status=exc.status,
            connector=self.name,
        )

    # -- writing ------------------------------------------------------------------------------

    def _assignee_key(self, keys: frozenset[str]) -> str | None:
        """The one person written: sorted(people this platform knows)[0]."""
        mappable = sorted(k for k in keys if self.people.to_remote(k) is not None)
        return mappable[0] if mappable else None

    async def _body(self, changes: Values, *, create: bool) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "title":
                body["title"] = value
            elif name == "description":
                if value or not create:
                    body["description"] = value
            elif name in SECTION_LIST:
                remote = self.status_to(value) if name == "status" else self.priority_to(value)
                if remote is None:
                    if not create:
                        body[f"{name}_id"] = None
                else:
                    body[f"{name}_id"] = await self.items.id_of(SECTION_LIST[name], str(remote))
            elif name == "assignees":
                key = self._assignee_key(value)
                if key is not None:
                    body["assignee_id"] = self.people.to_remote(key)
                elif not create:
                    body["assignee_id"] = None
            elif name in ("due_date", "start_date"):
                if value is not None:
                    body[name] = value.isoformat()
                elif not create:
                    body[name] = None
            elif name == "parent":
                if value is not None or not create:
                    body["parent_task_id"] = value  # a Nucleus task id (the engine translated it)
        return body

    async def create_task(self, scope: str, values: Values) -> RemoteTask:
        await self._known_squad(scope)
        body = await self._body(self.writable(normalize_values(values)), create=True)
        row = await self.client.create_task(body)
        return await self._remote_task(scope, row)

    async def update_task(self, scope: str, remote_id: str, changes: Values) -> RemoteTask:
        """PUT only the given writable fields; the PUT answer is the whole task (no extra GET)."""
        body = await self._body(self.writable(normalize_values(changes)), create=False)
        if not body:  # nothing this platform holds changed; a PUT without fields is a 400
            return await self.get_task(scope, remote_id)
        try:
            row = await self.client.update_task(remote_id, body)
        except NotFound as exc:
            raise self._gone(remote_id, exc) from None
        return await self._remote_task(scope, row)

    async def delete_task(self, scope: str, remote_id: str) -> None:
        """DELETE /api/tasks/:id; needs the tasks manage permission (a 403 is Permanent)."""
        try:
            await self.client.delete_task(remote_id)
        except NotFound as exc:
            raise self._gone(remote_id, exc) from None

    async def archive_task(self, scope: str, remote_id: str) -> RemoteTask:
        raise Permanent(
            "squads has no archive; use the route's on_delete close or delete", connector=self.name
        )

    async def find_by_marker(self, scope: str, marker: str) -> RemoteTask | None:
        rows = await self.client.list_tasks(squad=scope, search=marker)
        for row in rows:
            if marker in (row.get("description") or ""):
                return await self._remote_task(scope, row)
        return None

    # -- todos ------------------------------------------------------------------------------------

    async def list_todos(self, scope: str, remote_id: str) -> list[Json]:
        """The task's checklist items as the platform reports them."""
        try:
            return await self.client.list_todos(remote_id)
        except NotFound as exc:
            raise self._gone(remote_id, exc) from None

    async def replace_todos(
        self, scope: str, remote_id: str, todos: Sequence[Mapping[str, Any]]
    ) -> list[Json]:
        """Replace the task's whole checklist. Send the COMPLETE list: items left out are deleted
        on the platform; keep an item by sending its `id`, add one by leaving `id` out."""
        try:
            return await self.client.replace_todos(remote_id, todos)
        except NotFound as exc:
            raise self._gone(remote_id, exc) from None

    # -- comments and webhooks: none on squads ---------------------------------------------------

    async def list_comments(self, scope: str, remote_id: str) -> list[RemoteComment]:
        return []

    async def add_comment(self, scope: str, remote_id: str, body: str, author: str) -> RemoteComment:
        raise Permanent("squads has no comments", connector=self.name)

    async def register_webhook(
        self, scope: str, url: str, secret: str | None, *, rotate: bool = False
    ) -> str | None:
        return None  # Nucleus has no webhooks: polling only

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str]) -> None:
        raise BadSignature("squads has no webhooks")

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[WebhookEvent]:
        return []

    # -- round trip and health --------------------------------------------------------------------

    def roundtrip_field(self, name: str, value: Any) -> Any:
        if name == "title":
            return value.strip()
        if name == "assignees":
            key = self._assignee_key(value)
            if key is None:
                return frozenset()
            remote = self.people.to_remote(key)
            assert remote is not None
            return frozenset({self.people.to_key(remote)})
        return super().roundtrip_field(name, value)

    async def check(self, scope: str) -> str:
        await self._known_squad(scope, refresh=True)
        rows = await self.client.list_tasks(squad=scope)
        return f"{self.name}: squad {scope!r}: {len(rows)} tasks visible to this service token"

    # -- discovery ------------------------------------------------------------------------------

    async def list_scopes(self) -> list[ScopeInfo]:
        squads = await self.client.list_squads()
        self._squads = {str(s.get("name")) for s in squads}
        return [
            ScopeInfo(
                id=str(s["name"]),
                name=str(s["name"]),
                extra={"squad_id": str(s["id"])} if s.get("id") else {},
            )
            for s in squads
            if s.get("name")
        ]

    async def list_people(self, scope: str | None = None) -> list[PersonInfo]:
        """The assignees, reporters and creators of the tasks the token sees (no emails)."""
        if scope:
            await self._known_squad(scope)
        rows = await self.client.list_tasks(squad=scope or None)
        return self.distinct_people(
            PersonInfo(str(row[id_key]), row.get(name_key))
            for row in rows
            for id_key, name_key in PEOPLE_COLUMNS
            if row.get(id_key)
        )

    def auth_headers(self, settings: ConnectorSettings) -> dict[str, str]:
        return client_auth_headers(settings)

    def error_message(self, response: httpx.Response) -> str:
        return client_error_message(response, self.settings.name)

    async def aclose(self) -> None:
        await self.http.aclose()
