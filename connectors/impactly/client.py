"""Impactly's External API (`/api/v1`) over the shared HTTP layer.

Thin and typed: each method is one documented call (or one paginated walk) and returns the
platform's JSON. Envelopes and cursor pagination are handled here, platform meaning is not
(that is the connector's job).

Paths not published on the vendor's page (NOTES.md: dependencies, comments, activity, webhooks,
search, health) are the REST-conventional ones the fake serves; DELETE /tasks/{id} is not on the
scraped page either. All of them are listed in connectors/impactly/fake.py's docstring.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from connectors.base import ConnectorSettings, HttpClient, Permanent, RequestObserver, default_error_message

Json = dict[str, Any]

PAGE_LIMIT = 100  # the documented maximum


def impactly_error_message(response: httpx.Response) -> str:
    """`{"error": code, "message", "field"?, "request_id"}` -> "message (field: f; code; request r)"."""
    try:
        body = response.json()
    except ValueError:
        return default_error_message(response)
    if not isinstance(body, dict) or not isinstance(body.get("message"), str):
        return default_error_message(response)
    details = []
    if body.get("field"):
        details.append(f"field: {body['field']}")
    if body.get("error"):
        details.append(str(body["error"]))
    if body.get("request_id"):
        details.append(f"request {body['request_id']}")
    return f"{body['message']} ({'; '.join(details)})" if details else body["message"]


class ImpactlyClient:
    """`http` is the connector's HttpClient (so one connection pool serves both); its error
    messages are switched to Impactly's error shape."""

    def __init__(self, http: HttpClient) -> None:
        self.http = http
        http.error_message = impactly_error_message

    @classmethod
    def from_settings(
        cls, settings: ConnectorSettings, *, observer: RequestObserver | None = None
    ) -> ImpactlyClient:
        return cls(HttpClient(settings, observer=observer))

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- pagination ---------------------------------------------------------------------------

    async def pages(self, path: str, params: Mapping[str, Any] | None = None) -> AsyncIterator[list[Json]]:
        """Every page of a cursor-paginated list (`{"data", "next_cursor", "has_more"}`), to its end."""
        query = {**(params or {}), "limit": PAGE_LIMIT}
        cursor: str | None = None
        while True:
            body = await self.http.get(path, params={**query, "cursor": cursor})
            if not isinstance(body, dict) or not isinstance(body.get("data"), list):
                raise Permanent(
                    f"GET {path}: expected a paginated list, got {type(body).__name__}",
                    connector=self.http.settings.name,
                )
            yield body["data"]
            cursor = body.get("next_cursor")
            if not body.get("has_more") or not cursor:
                return

    async def collect(self, path: str, params: Mapping[str, Any] | None = None) -> list[Json]:
        items: list[Json] = []
        async for page in self.pages(path, params):
            items.extend(page)
        return items

    # -- tasks --------------------------------------------------------------------------------

    async def list_tasks(self, **filters: Any) -> list[Json]:
        """GET /tasks with the documented filters (project_id, status, priority, assignee_id,
        due_date_before, due_date_after), every page."""
        return await self.collect("/tasks", filters)

    async def first_page_of_project(self, project_id: str) -> list[Json]:
        body = await self.http.get(f"/projects/{project_id}/tasks", params={"limit": PAGE_LIMIT})
        return list(body.get("data") or [])

    async def list_project_tasks(self, project_id: str) -> list[Json]:
        """GET /projects/{id}/tasks, every page (404 for a project that does not exist)."""
        return await self.collect(f"/projects/{project_id}/tasks")

    def project_task_pages(self, project_id: str) -> AsyncIterator[list[Json]]:
        """`list_project_tasks` a page at a time."""
        return self.pages(f"/projects/{project_id}/tasks")

    async def get_task(self, task_id: str) -> Json:
        return await self.http.get(f"/tasks/{task_id}")

    async def create_task(self, body: Mapping[str, Any]) -> Json:
        return await self.http.post("/tasks", dict(body))

    async def create_subtask(self, parent_task_id: str, body: Mapping[str, Any]) -> Json:
        """A subtask: the project is the parent's unless `body` names one."""
        return await self.http.post("/tasks", {**body, "parent_task_id": parent_task_id})

    async def update_task(self, task_id: str, body: Mapping[str, Any]) -> Json:
        return await self.http.patch(f"/tasks/{task_id}", dict(body))

    async def set_parent(self, task_id: str, parent_task_id: str | None) -> Json:
        return await self.http.patch(f"/tasks/{task_id}", {"parent_task_id": parent_task_id})

    async def delete_task(self, task_id: str) -> None:
        await self.http.delete(f"/tasks/{task_id}")

    # -- dependencies -------------------------------------------------------------------------

    async def blockers(self, task_id: str) -> list[Json]:
        return await self.http.get(f"/tasks/{task_id}/blockers")

    async def add_blocker(self, task_id: str, blocker_id: str) -> list[Json]:
        # Idempotent on the platform (an existing blocker answers 200), so a retry is safe.
        return await self.http.post(f"/tasks/{task_id}/blockers", {"blocker_id": blocker_id}, retry=True)

    async def remove_blocker(self, task_id: str, blocker_id: str) -> list[Json]:
        return await self.http.delete(f"/tasks/{task_id}/blockers/{blocker_id}")

    # -- comments -----------------------------------------------------------------------------

    async def list_comments(self, task_id: str) -> list[Json]:
        return await self.collect(f"/tasks/{task_id}/comments")

    async def add_comment(self, task_id: str, content: str) -> Json:
        return await self.http.post(f"/tasks/{task_id}/comments", {"content": content})

    # -- projects, agents, activity -------------------------------------------------------------

    async def list_projects(self) -> list[Json]:
        """GET /projects, every page (the workspace's projects: every key sees them all)."""
        return await self.collect("/projects")

    async def get_project(self, project_id: str) -> Json:
        return await self.http.get(f"/projects/{project_id}")

    async def me(self) -> Json:
        return await self.http.get("/agents/me")

    async def activity(
        self, *, since: str | None = None, project_id: str | None = None, agent_id: str | None = None
    ) -> list[Json]:
        """GET /activity (oldest first), every page."""
        return await self.collect(
            "/activity", {"since": since, "project_id": project_id, "agent_id": agent_id}
        )

    def activity_pages(self, *, since: str, project_id: str) -> AsyncIterator[list[Json]]:
        """`activity` of one project a page at a time."""
        return self.pages("/activity", {"since": since, "project_id": project_id})

    # -- webhooks -----------------------------------------------------------------------------

    async def list_webhooks(self) -> list[Json]:
        body = await self.http.get("/webhooks")
        return list(body.get("data") or []) if isinstance(body, dict) else list(body or [])

    async def create_webhook(self, url: str, events: list[str], secret: str | None = None) -> Json:
        body: Json = {"url": url, "events": events}
        if secret is not None:
            body["secret"] = secret
        return await self.http.post("/webhooks", body)

    async def delete_webhook(self, webhook_id: str) -> None:
        await self.http.delete(f"/webhooks/{webhook_id}")

    # -- search, health -------------------------------------------------------------------------

    async def search(self, query: str) -> list[Json]:
        # A search is a read, so repeating it is harmless.
        body = await self.http.post("/search", {"query": query}, retry=True)
        return list(body.get("data") or []) if isinstance(body, dict) else list(body or [])

    async def health(self) -> Json:
        return await self.http.get("/health")
