"""The AgentKanban external API (`/api/ext/v1`), as thin typed calls over `connectors.base.HttpClient`.

Every success body is `{"data": ...}`; these methods return what is inside the envelope (the
platform's own JSON, untouched). Errors (`{"error": {"code", "message"}}`) are turned into the
connector error tree by HttpClient, whose default message extractor already reads this shape.
Nothing is paginated except turns, which this client does not use.

Paths are relative to the configured `base_url` (`https://HOST/api/ext/v1`); ids are quoted.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

from connectors.base import HttpClient, Permanent

Json = dict[str, Any]

# The events the bridge listens to: every task change and new comments.
TASK_EVENTS: tuple[str, ...] = ("task.created", "task.updated", "task.deleted", "comment.created")


def _q(value: str) -> str:
    return quote(str(value), safe="")


class AgentKanbanClient:
    def __init__(self, http: HttpClient) -> None:
        self.http = http

    # -- envelope -----------------------------------------------------------------------------

    def _data(self, body: Any, what: str) -> Any:
        if not isinstance(body, dict) or "data" not in body:
            raise Permanent(
                f"{what}: AgentKanban answered without its {{'data': ...}} envelope",
                connector=self.http.settings.name,
            )
        return body["data"]

    def _object(self, body: Any, what: str) -> Json:
        value = self._data(body, what)
        if not isinstance(value, dict):
            raise Permanent(f"{what}: expected an object in 'data'", connector=self.http.settings.name)
        return value

    def _list(self, body: Any, what: str) -> list[Json]:
        value = self._data(body, what)
        if not isinstance(value, list):
            raise Permanent(f"{what}: expected a list in 'data'", connector=self.http.settings.name)
        return [item for item in value if isinstance(item, dict)]

    # -- boards and lanes -----------------------------------------------------------------------

    async def list_boards(self) -> list[Json]:
        return self._list(await self.http.get("boards"), "list boards")

    async def create_board(self, name: str) -> Json:
        return self._object(await self.http.post("boards", {"name": name}), "create board")

    async def get_board(self, board_id: str) -> Json:
        """`{id, name, lanes: [{id, name, taskCount}]}`."""
        return self._object(await self.http.get(f"boards/{_q(board_id)}"), "get board")

    async def list_lanes(self, board_id: str) -> list[Json]:
        """`[{id, name, position}]` in position order."""
        return self._list(await self.http.get(f"boards/{_q(board_id)}/lanes"), "list lanes")

    async def create_lane(self, board_id: str, name: str) -> Json:
        return self._object(
            await self.http.post(f"boards/{_q(board_id)}/lanes", {"name": name}), "create lane"
        )

    async def update_lane(self, board_id: str, lane_id: str, **fields: Any) -> Json:
        """`name` and/or `position`."""
        path = f"boards/{_q(board_id)}/lanes/{_q(lane_id)}"
        return self._object(await self.http.patch(path, fields), "update lane")

    # -- tasks -----------------------------------------------------------------------------------

    def _tasks(self, board_id: str) -> str:
        return f"boards/{_q(board_id)}/tasks"

    def _task(self, board_id: str, task_id: str) -> str:
        return f"{self._tasks(board_id)}/{_q(task_id)}"

    async def list_tasks(
        self,
        board_id: str,
        *,
        include_archived: bool = True,
        lane_id: str | None = None,
        short_id_prefix: str | None = None,
    ) -> list[Json]:
        """Task summaries (no description) of the whole board: the list is not paginated."""
        listed = self.iter_tasks(
            board_id, include_archived=include_archived, lane_id=lane_id, short_id_prefix=short_id_prefix
        )
        return [task async for task in listed]

    async def iter_tasks(
        self,
        board_id: str,
        *,
        include_archived: bool = True,
        lane_id: str | None = None,
        short_id_prefix: str | None = None,
    ) -> AsyncIterator[Json]:
        """`list_tasks` parsed as the answer arrives: a board's whole list is one answer."""
        params = {
            "includeArchived": "true" if include_archived else "false",
            "laneId": lane_id,
            "shortIdPrefix": short_id_prefix,
        }
        async with self.http.stream(self._tasks(board_id), params=params) as answer:
            async with contextlib.aclosing(answer.objects("data.item")) as tasks:
                async for task in tasks:
                    yield task

    async def get_task(self, board_id: str, task_id: str) -> Json:
        """The task detail, the only view that carries `description`."""
        return self._object(await self.http.get(self._task(board_id, task_id)), "get task")

    async def create_task(self, board_id: str, fields: Mapping[str, Any]) -> Json:
        """`fields`: title (required), laneId, description, priority, tags. Answers `{id, title, laneId}`."""
        return self._object(await self.http.post(self._tasks(board_id), dict(fields)), "create task")

    async def update_task(self, board_id: str, task_id: str, fields: Mapping[str, Any]) -> Json:
        """PATCH title, description, priority, tags, archived (never laneId: see `move_task`).
        Answers `{id, <each field sent>}`."""
        return self._object(await self.http.patch(self._task(board_id, task_id), dict(fields)), "update task")

    async def move_task(self, board_id: str, task_id: str, lane_id: str, position: int | None = None) -> Json:
        body: Json = {"laneId": lane_id}
        if position is not None:
            body["position"] = position
        # Moving to a lane is idempotent as far as the lane goes, so a 5xx may be retried.
        return self._object(
            await self.http.post(f"{self._task(board_id, task_id)}/move", body, retry=True), "move task"
        )

    async def delete_task(self, board_id: str, task_id: str) -> None:
        await self.http.delete(self._task(board_id, task_id))

    # -- comments --------------------------------------------------------------------------------

    async def list_comments(self, board_id: str, task_id: str) -> list[Json]:
        """`[{id, body, authorName, authorSource, createdAt}]`, oldest first."""
        return self._list(await self.http.get(f"{self._task(board_id, task_id)}/comments"), "list comments")

    async def add_comment(
        self, board_id: str, task_id: str, body: str, *, author_name: str | None = None, source: str = "api"
    ) -> Json:
        payload: Json = {"body": body, "source": source}
        if author_name:
            payload["authorName"] = author_name
        return self._object(
            await self.http.post(f"{self._task(board_id, task_id)}/comments", payload), "add comment"
        )

    async def delete_comment(self, board_id: str, task_id: str, comment_id: str) -> None:
        await self.http.delete(f"{self._task(board_id, task_id)}/comments/{_q(comment_id)}")

    # -- todos -----------------------------------------------------------------------------------

    async def list_todos(self, board_id: str, task_id: str) -> list[Json]:
        """`[{id, text, done, iteration, order, source, createdAt}]` by iteration, then order."""
        return self._list(await self.http.get(f"{self._task(board_id, task_id)}/todos"), "list todos")

    async def add_todo(
        self,
        board_id: str,
        task_id: str,
        text: str,
        *,
        iteration: int | None = None,
        source: str | None = None,
    ) -> Json:
        payload: Json = {"text": text}
        if iteration is not None:
            payload["iteration"] = iteration
        if source is not None:
            payload["source"] = source
        return self._object(
            await self.http.post(f"{self._task(board_id, task_id)}/todos", payload), "add todo"
        )

    async def update_todo(self, board_id: str, task_id: str, todo_id: str, **fields: Any) -> Json:
        """`text`, `done` and/or `iteration`."""
        path = f"{self._task(board_id, task_id)}/todos/{_q(todo_id)}"
        return self._object(await self.http.patch(path, fields), "update todo")

    # -- webhooks (they belong to the API key, not to a board) ------------------------------------

    async def list_webhooks(self) -> list[Json]:
        """`[{id, url, events, active}]` of this key (the secret is never listed)."""
        return self._list(await self.http.get("webhooks"), "list webhooks")

    async def create_webhook(self, url: str, events: list[str]) -> Json:
        """Answers `{id, url, events, active, secret}`; the secret is shown only here."""
        return self._object(
            await self.http.post("webhooks", {"url": url, "events": events}), "create webhook"
        )

    async def update_webhook(self, hook_id: str, **fields: Any) -> Json:
        """`url`, `events` and/or `active`."""
        return self._object(await self.http.patch(f"webhooks/{_q(hook_id)}", fields), "update webhook")

    async def delete_webhook(self, hook_id: str) -> None:
        await self.http.delete(f"webhooks/{_q(hook_id)}")
