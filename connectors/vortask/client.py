"""Vortask's REST API (`https://HOST/api`, v1) over the shared HTTP layer.

Thin and typed: one method per documented call, returning the platform's JSON (camelCase, as
the page shows it). Vortask has no envelopes and no pagination (lists are plain arrays), so
there is nothing to unwrap. Errors are `{"errors": [...], "message": "..."}`; HttpClient maps
the status, `vortask_error_message` turns the body into one line.

Comments are not in the REST API: see mcp_client.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from connectors.base import ConnectorSettings, HttpClient, Permanent, RequestObserver, default_error_message

Json = dict[str, Any]


def vortask_error_message(response: httpx.Response) -> str:
    """`{"errors": ["Title is required."], "message": "Validation failed"}` ->
    "Validation failed: Title is required."."""
    try:
        body = response.json()
    except ValueError:
        return default_error_message(response)
    if not isinstance(body, dict):
        return default_error_message(response)
    message = body.get("message") if isinstance(body.get("message"), str) else None
    errors = body.get("errors")
    details = "; ".join(str(e) for e in errors) if isinstance(errors, list) and errors else None
    if message and details:
        return f"{message}: {details}"
    return message or details or default_error_message(response)


class VortaskClient:
    """`http` is the connector's HttpClient; its error messages are switched to Vortask's shape."""

    def __init__(self, http: HttpClient) -> None:
        self.http = http
        http.error_message = vortask_error_message

    @classmethod
    def from_settings(
        cls, settings: ConnectorSettings, *, observer: RequestObserver | None = None
    ) -> VortaskClient:
        return cls(HttpClient(settings, observer=observer))

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- profile and projects ------------------------------------------------------------------

    async def get_profile(self) -> Json:
        return _object(await self.http.get("/profile"), "GET /profile")

    async def list_projects(self) -> list[Json]:
        """GET /projects: every project the token's user is a member of (unpaginated)."""
        return _array(await self.http.get("/projects"), "GET /projects")

    async def get_project(self, project_id: int) -> Json:
        return _object(await self.http.get(f"/projects/{project_id}"), "GET /projects/:id")

    async def list_members(self, project_id: int) -> list[Json]:
        """GET /projects/:id/members: `[{id, userId, email, displayName, role, joinedAt}]`."""
        return _array(await self.http.get(f"/projects/{project_id}/members"), "GET /projects/:id/members")

    # -- tasks --------------------------------------------------------------------------------

    async def iter_tasks(self, project_id: int, **filters: Any) -> AsyncIterator[Json]:
        """Every task of the project, with the documented filters (status, priority, assigneeId,
        label, dueBefore, dueAfter), parsed as the answer arrives: the list is unpaginated."""
        async with self.http.stream(f"/projects/{project_id}/tasks", params=filters or None) as answer:
            async with contextlib.aclosing(answer.objects("item")) as tasks:
                async for task in tasks:
                    yield task

    async def get_task(self, project_id: int, task_id: int) -> Json:
        return _object(await self.http.get(f"/projects/{project_id}/tasks/{task_id}"), "GET task")

    async def create_task(self, project_id: int, body: Json) -> Json:
        return _object(await self.http.post(f"/projects/{project_id}/tasks", body), "POST task")

    async def update_task(self, project_id: int, task_id: int, body: Json) -> Json:
        """PUT with only the fields to change (all are optional); answers the whole task."""
        return _object(await self.http.put(f"/projects/{project_id}/tasks/{task_id}", body), "PUT task")

    async def delete_task(self, project_id: int, task_id: int) -> None:
        await self.http.delete(f"/projects/{project_id}/tasks/{task_id}")

    async def task_history(self, project_id: int, task_id: int) -> list[Json]:
        return _array(await self.http.get(f"/projects/{project_id}/tasks/{task_id}/history"), "GET history")

    # -- webhooks -----------------------------------------------------------------------------

    async def list_webhooks(self, project_id: int) -> list[Json]:
        return _array(await self.http.get(f"/projects/{project_id}/webhooks"), "GET webhooks")

    async def create_webhook(self, project_id: int, callback_url: str, secret: str | None) -> Json:
        body: Json = {"callbackUrl": callback_url}
        if secret is not None:
            body["secret"] = secret
        return _object(await self.http.post(f"/projects/{project_id}/webhooks", body), "POST webhook")

    async def update_webhook(self, project_id: int, webhook_id: int, body: Json) -> Json:
        """PUT `callbackUrl`, `isActive` and/or `secret`."""
        return _object(
            await self.http.put(f"/projects/{project_id}/webhooks/{webhook_id}", body), "PUT webhook"
        )

    async def delete_webhook(self, project_id: int, webhook_id: int) -> None:
        await self.http.delete(f"/projects/{project_id}/webhooks/{webhook_id}")


def _object(body: Any, what: str) -> Json:
    if not isinstance(body, dict):
        raise Permanent(f"{what}: expected a JSON object, got {type(body).__name__}")
    return body


def _array(body: Any, what: str) -> list[Json]:
    if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
        raise Permanent(f"{what}: expected a JSON array of objects")
    return body
