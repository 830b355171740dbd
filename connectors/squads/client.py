"""The Nucleus (squads) HTTP API: thin, typed calls over `connectors.base.HttpClient`.

Every method returns the platform's JSON with the envelope taken off (`{"tasks": [...]}` -> the
list, `{"task": {...}}` -> the dict). Nothing here knows the canonical model.

Authentication is a Cloudflare Access service token: each request carries `CF-Access-Client-Id`
and `CF-Access-Client-Secret` (never an Authorization header). Three answers mean "bad
credentials" and all raise AuthFailed:
- 401 (what the origin, and the fake, answer),
- 403 with an HTML body (the Access edge's login page, served before the origin is reached),
- a redirect to `<team>.cloudflareaccess.com` or to `/cdn-cgi/access/login` (the edge's other
  answer). Redirects are never followed, so the service token is never sent elsewhere.
A 403 with a JSON body is the origin's own refusal (a missing tasks permission): Permanent,
with the platform's message.

Errors are `{"error": "<message>"}`; `default_error_message` already reads that shape.
/api/tasks is not paginated: one GET returns every matching task.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from connectors.base import (
    AuthFailed,
    ConnectorSettings,
    HttpClient,
    Permanent,
    default_error_message,
)

Json = dict[str, Any]

ACCESS_HOST_SUFFIX = "cloudflareaccess.com"
ACCESS_LOGIN_PATH = "/cdn-cgi/access/login"


def credentials(settings: ConnectorSettings) -> tuple[str, str]:
    """(client id, client secret) from the settings; `token: "ID:SECRET"` is accepted as a fallback
    (the form the fake's --token takes)."""
    client_id, secret = settings.client_id, settings.client_secret
    if not (client_id and secret) and settings.token and ":" in settings.token:
        client_id, _, secret = settings.token.partition(":")
    if not (client_id and secret):
        raise ValueError(
            f"{settings.name}: squads needs client_id and client_secret (a Cloudflare Access service token)"
        )
    return client_id, secret


def _is_html(response: httpx.Response) -> bool:
    return "text/html" in response.headers.get("content-type", "").lower()


def auth_headers(settings: ConnectorSettings) -> dict[str, str]:
    """A Cloudflare Access service token, in the two headers Access reads."""
    client_id, secret = credentials(settings)
    return {"CF-Access-Client-Id": client_id, "CF-Access-Client-Secret": secret}


def error_message(response: httpx.Response, connector: str) -> str:
    """The platform's message; a 403 login page from the Access edge is an auth failure."""
    if response.status_code == 403 and _is_html(response):
        # HttpClient maps every 403 to Permanent; this one means the service token was refused
        # before the request reached Nucleus, so it is raised here as AuthFailed instead.
        raise AuthFailed(
            f"{response.request.method} {response.request.url.path}: Cloudflare Access refused the "
            "service token (403 login page); check client_id and client_secret",
            status=403,
            connector=connector,
        )
    return default_error_message(response)


class SquadsClient:
    """The Nucleus Tasks API, config lists and squads, as documented in squads.txt and NOTES.md."""

    def __init__(self, http: HttpClient) -> None:
        self.http = http
        self.name = http.settings.name
        # httpx does not follow redirects by default; say so, since the auth check relies on it.
        self.http.client.follow_redirects = False

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        response = await self.http.request(method, path, json_body=body, params=params)
        if 300 <= response.status_code < 400:
            raise self._redirect_error(method, path, response)
        if response.status_code == 204 or not response.content:
            return None
        if _is_html(response):
            raise self._html_error(method, path, response)
        try:
            return response.json()
        except ValueError as exc:
            raise Permanent(
                f"{method} {path}: the body is not JSON ({exc})",
                status=response.status_code,
                connector=self.name,
            ) from None

    def _html_error(self, method: str, path: str, response: httpx.Response) -> Permanent:
        return Permanent(
            f"{method} {path}: answered HTML, not JSON (a Cloudflare Access login page? check "
            "base_url, client_id and client_secret)",
            status=response.status_code,
            connector=self.name,
        )

    def _redirect_error(self, method: str, path: str, response: httpx.Response) -> Exception:
        location = urlsplit(response.headers.get("location", ""))
        host = (location.hostname or "").lower()
        where = f"{host}{location.path}" if host else location.path
        if (
            host == ACCESS_HOST_SUFFIX
            or host.endswith("." + ACCESS_HOST_SUFFIX)
            or location.path.startswith(ACCESS_LOGIN_PATH)
        ):
            return AuthFailed(
                f"{method} {path}: redirected to the Cloudflare Access login ({where}); "
                "the service token was refused, check client_id and client_secret",
                status=response.status_code,
                connector=self.name,
            )
        return Permanent(
            f"{method} {path}: unexpected redirect to {where or '?'}",
            status=response.status_code,
            connector=self.name,
        )

    def _field(self, data: Any, key: str, what: str) -> Any:
        if not isinstance(data, dict) or key not in data:
            raise Permanent(f"{what}: unexpected response shape (no {key!r})", connector=self.name)
        return data[key]

    @staticmethod
    def _task_path(task_id: str) -> str:
        return f"/tasks/{quote(str(task_id), safe='')}"

    # -- tasks -----------------------------------------------------------------------------------

    async def list_tasks(
        self, *, squad: str | None = None, search: str | None = None, **filters: str | None
    ) -> list[Json]:
        """GET /api/tasks: every task the credential can see that matches (no pagination).
        `filters` are the other documented query parameters (assignee_id, status_id, parent_id...)."""
        return [task async for task in self.iter_tasks(squad=squad, search=search, **filters)]

    async def iter_tasks(
        self, *, squad: str | None = None, search: str | None = None, **filters: str | None
    ) -> AsyncIterator[Json]:
        """`list_tasks` parsed as the answer arrives: a squad's whole list is one answer."""
        params = {"squad": squad, "search": search, **filters}
        async with self.http.stream("/tasks", params=params) as answer:
            response = answer.response
            if 300 <= response.status_code < 400:
                raise self._redirect_error("GET", "/tasks", response)
            if _is_html(response):
                raise self._html_error("GET", "/tasks", response)
            async with contextlib.aclosing(answer.objects("tasks.item")) as tasks:
                async for task in tasks:
                    yield task

    async def get_task(self, task_id: str) -> Json:
        """GET /api/tasks/:id: `{"task", "todos", "subtasks", "watchers"}`. A 404 means deleted OR
        out of the credential's view; the API does not say which."""
        data = await self._call("GET", self._task_path(task_id))
        self._field(data, "task", f"GET /tasks/{task_id}")
        return dict(data)

    async def create_task(self, body: Mapping[str, Any]) -> Json:
        """POST /api/tasks -> the created task (201 `{task}`)."""
        data = await self._call("POST", "/tasks", body=dict(body))
        return dict(self._field(data, "task", "POST /tasks"))

    async def update_task(self, task_id: str, body: Mapping[str, Any]) -> Json:
        """PUT /api/tasks/:id with only the fields to change -> the task with joined labels."""
        data = await self._call("PUT", self._task_path(task_id), body=dict(body))
        return dict(self._field(data, "task", f"PUT /tasks/{task_id}"))

    async def delete_task(self, task_id: str) -> None:
        """DELETE /api/tasks/:id (needs the tasks manage permission; cascades to subtasks)."""
        await self._call("DELETE", self._task_path(task_id))

    async def duplicate_task(self, task_id: str) -> Json:
        data = await self._call("POST", self._task_path(task_id) + "/duplicate")
        return dict(self._field(data, "task", f"POST /tasks/{task_id}/duplicate"))

    # -- todos (checklist items) -------------------------------------------------------------

    async def list_todos(self, task_id: str) -> list[Json]:
        """The task's todos, from GET /api/tasks/:id (there is no separate todos listing)."""
        data = await self.get_task(task_id)
        return list(data.get("todos") or [])

    async def replace_todos(self, task_id: str, todos: Sequence[Mapping[str, Any]]) -> list[Json]:
        """PUT /api/tasks/:id/todos. This REPLACES the whole set: todos left out are deleted.
        A caller must send the complete list: existing items with their `id` (to keep/update
        them), new items without one. Returns the task's todos after the change."""
        data = await self._call(
            "PUT", self._task_path(task_id) + "/todos", body={"todos": [dict(t) for t in todos]}
        )
        return list(self._field(data, "todos", f"PUT /tasks/{task_id}/todos"))

    # -- subtasks ----------------------------------------------------------------------------

    async def list_subtasks(self, task_id: str) -> list[Json]:
        data = await self._call("GET", self._task_path(task_id) + "/subtasks")
        return list(self._field(data, "subtasks", f"GET /tasks/{task_id}/subtasks"))

    async def create_subtask(self, task_id: str, body: Mapping[str, Any]) -> Json:
        """POST /api/tasks/:id/subtasks; the platform takes only title, assignee_id and due_date."""
        data = await self._call("POST", self._task_path(task_id) + "/subtasks", body=dict(body))
        return dict(self._field(data, "task", f"POST /tasks/{task_id}/subtasks"))

    # -- config lists and squads -------------------------------------------------------------

    async def config_items(self, key: str) -> list[Json]:
        """GET /api/config-lists/{key}/items (keys: task_status, task_priority, task_type)."""
        data = await self._call("GET", f"/config-lists/{quote(key, safe='')}/items")
        return list(self._field(data, "items", f"GET /config-lists/{key}/items"))

    async def config_lists(self, key: str | None = None) -> list[Json]:
        data = await self._call("GET", "/config-lists", params={"key": key})
        return list(self._field(data, "lists", "GET /config-lists"))

    async def list_squads(self) -> list[Json]:
        data = await self._call("GET", "/squads")
        return list(self._field(data, "squads", "GET /squads"))

    async def aclose(self) -> None:
        await self.http.aclose()
