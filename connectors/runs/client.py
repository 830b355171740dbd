"""HTTP client of PostHog's Tasks API (the "runs" platform), over `connectors.base.HttpClient`.

Thin, typed calls that return the platform's JSON. Paths are relative to `base_url`
(`https://HOST/api`): `projects/{project_id}/tasks/...`, always with PostHog's trailing slash.
This module owns the list envelope (`{"count", "next", "previous", "results"}`) and the
limit/offset walk; what a task *means* is the connector's business.

Errors arrive in drf-exceptions-hog's shape `{"type", "code", "detail", "attr"}`; `error_message`
turns one into "attr: detail (code)" so a parked operation shows the platform's own words. The
task-run errors (`POST {id}/run/`) carry `error` where the others carry `detail`.

The usage-limit 429 (`POST {id}/run/` when the team is over its PostHog Desktop limit) is no
throttle: `{"type": "rate_limited", "code": "usage_limit_exceeded", "error", "reset_at"?}` and no
Retry-After, and it lasts until `reset_at` (a day or a month away). `usage_limit` (the
connector's `rate_limited` hook, see connectors/base.py) makes it `UsageLimitExceeded`, a
`RateLimited` with `retry_after=None` and `wait_inline=False`: HttpClient raises it at once rather
than backing off and resending it (right for a throttle, pointless for a limit that lasts until
`reset_at`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from bridge.model import parse_timestamp
from connectors.base import HttpClient, Permanent, RateLimited

Json = dict[str, Any]

PAGE_SIZE = 100  # the documented maximum; PostHog clamps anything larger to it
USAGE_LIMIT_CODE = "usage_limit_exceeded"


class UsageLimitExceeded(RateLimited):
    """The team is over its usage limit: no run starts before `reset_at` (None: not said).

    `retry_after` is None: PostHog sends no Retry-After, and a wait of hours is the engine's to
    schedule, not a request's to sleep through (so `wait_inline` is False too)."""

    def __init__(self, message: str, *, reset_at: datetime | None, **kw: Any) -> None:
        super().__init__(message, retry_after=None, wait_inline=False, **kw)
        self.reset_at = reset_at


def error_message(response: httpx.Response) -> str:
    """PostHog's error body as one line: "title: Ensure this field ... (max_length)"."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or f"HTTP {response.status_code}"
    if not isinstance(body, dict):
        return str(body)[:300]
    text = body.get("detail") if isinstance(body.get("detail"), str) else body.get("error")
    if not isinstance(text, str):
        return str(body)[:300]
    attr = body.get("attr")
    code = body.get("code")
    message = f"{attr}: {text}" if attr else text
    return f"{message} ({code})" if code else message


def usage_limit(response: httpx.Response, throttle: RateLimited) -> RateLimited:
    """The connector's `rate_limited` hook: a usage-limit 429 as UsageLimitExceeded (raised at
    once, with its `reset_at`); any other 429 is the throttle it is."""
    try:
        body = response.json()
    except ValueError:
        return throttle
    if not isinstance(body, dict) or body.get("code") != USAGE_LIMIT_CODE:
        return throttle
    reset_at: datetime | None
    try:
        reset_at = parse_timestamp(body.get("reset_at"))
    except (TypeError, ValueError):
        reset_at = None  # an unreadable reset time is no reason to lose the refusal itself
    until = f"; resets at {reset_at.isoformat()}" if reset_at else ""
    return UsageLimitExceeded(
        f"{throttle.message}{until}", reset_at=reset_at, status=throttle.status, connector=throttle.connector
    )


@dataclass(frozen=True)
class TaskPages:
    """Every task of one walk over a list, deduplicated by id (first sighting wins).

    `complete` holds when the walk reached the last page (`next` was null), every page reported
    the same `count`, and exactly `count` distinct tasks were seen: only then is nothing known to
    have been skipped by a page shift (see `TaskWalk`).
    """

    tasks: list[Json]
    count: int | None
    complete: bool
    pages: int


class TaskWalk:
    """One walk over the task list, from offset 0 to the end, yielding each task the first time
    it is seen; once iterated to the end, `count`, `complete` and `pages` say what it saw.

    The list is ordered newest first, so a task created while we page pushes every later task one
    place down: the next page repeats the last task of the previous one (dropped here by id). A
    task deleted (or leaving the filter) while we page pulls later tasks one place up, and one of
    them can be skipped. Both change `count`, so a walk whose pages disagree on `count`, or that
    saw a different number of distinct tasks than `count`, is reported incomplete.
    """

    def __init__(self, client: RunsClient, project: str, filters: Mapping[str, Any]) -> None:
        self.client = client
        self.project = project
        self.filters = dict(filters)
        self.pages = 0
        self._seen: set[str] = set()
        self._counts: set[int] = set()
        self._reached_end = False

    @property
    def count(self) -> int | None:
        return next(iter(self._counts)) if len(self._counts) == 1 else None

    @property
    def complete(self) -> bool:
        return self._reached_end and self.count is not None and self.count == len(self._seen)

    def ids(self) -> frozenset[str]:
        """The id of every task seen so far."""
        return frozenset(self._seen)

    async def __aiter__(self) -> AsyncIterator[Json]:
        offset = 0
        size = self.client.page_size
        while True:
            body = await self.client.list_page(self.project, limit=size, offset=offset, **self.filters)
            self.pages += 1
            results = body["results"]
            if isinstance(body.get("count"), int):
                self._counts.add(body["count"])
            for task in results:
                task_id = str(task["id"])
                if task_id not in self._seen:
                    self._seen.add(task_id)
                    yield task
            if not body.get("next"):
                self._reached_end = True
                return
            if not results:  # a `next` link but an empty page: stop rather than loop
                return
            # Our own offsets rather than the absolute `next` URL, which names the host as the
            # server sees it (behind a proxy, possibly not the one we were configured with).
            offset += len(results)


class RunsClient:
    """PostHog Tasks endpoints under `projects/{project}/tasks/`."""

    def __init__(self, http: HttpClient, *, page_size: int = PAGE_SIZE) -> None:
        self.http = http
        self.page_size = page_size

    # -- paths ------------------------------------------------------------------------------

    @staticmethod
    def tasks_path(project: str) -> str:
        return f"projects/{quote(str(project), safe='@')}/tasks/"

    @classmethod
    def task_path(cls, project: str, task_id: str) -> str:
        return f"{cls.tasks_path(project)}{quote(str(task_id), safe='')}/"

    # -- tasks ------------------------------------------------------------------------------

    async def list_page(self, project: str, *, limit: int, offset: int = 0, **filters: Any) -> Json:
        """One page of the task list: `{"count", "next", "previous", "results"}`."""
        params = {"limit": limit, "offset": offset or None, **filters}
        body = await self.http.get(self.tasks_path(project), params=params)
        if not isinstance(body, dict) or not isinstance(body.get("results"), list):
            raise Permanent(
                f"the task list of project {project} is not a paginated list",
                connector=self.http.settings.name,
            )
        return body

    async def list_all(self, project: str, **filters: Any) -> TaskPages:
        """Every page of the task list, from offset 0 to the end (`walk`, read whole)."""
        walk = self.walk(project, **filters)
        tasks = [task async for task in walk]
        return TaskPages(tasks, walk.count, walk.complete, walk.pages)

    def walk(self, project: str, **filters: Any) -> TaskWalk:
        """The task list a page at a time, each task once (see TaskWalk)."""
        return TaskWalk(self, project, filters)

    async def get_task(self, project: str, task_id: str) -> Json:
        return await self.http.get(self.task_path(project, task_id))

    async def create_task(self, project: str, body: Json) -> Json:
        return await self.http.post(self.tasks_path(project), body)

    async def update_task(self, project: str, task_id: str, body: Json) -> Json:
        return await self.http.patch(self.task_path(project, task_id), body)

    async def delete_task(self, project: str, task_id: str) -> None:
        await self.http.delete(self.task_path(project, task_id))

    async def start_run(self, project: str, task_id: str, body: Json | None = None) -> Json:
        """`POST {id}/run/`: a new queued run; answers the task with its new `latest_run`.

        Not retried on 5xx or a timeout (it is not idempotent); the connector makes it safe to
        repeat by checking the latest run first. Over the team's usage limit: UsageLimitExceeded,
        at once.
        """
        return await self.http.post(f"{self.task_path(project, task_id)}run/", body)

    async def aclose(self) -> None:
        await self.http.aclose()
