"""A loopback transport that records what a connector sent, for tests that check request bodies
(the fakes' request logs count requests but keep no bodies)."""

from __future__ import annotations

import json
from typing import Any

import httpx


class Recorder(httpx.AsyncBaseTransport):
    """Real HTTP, plus (method, path, JSON body) of every request sent."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[tuple[str, str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.sent.append((request.method, request.url.path, body))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def calls(self, method: str | None = None, suffix: str = "") -> list[tuple[str, str, Any]]:
        return [c for c in self.sent if (method is None or c[0] == method) and c[1].endswith(suffix)]

    def bodies(self, method: str) -> list[Any]:
        return [body for m, _, body in self.sent if m == method]

    def writes(self) -> list[tuple[str, str, Any]]:
        return [s for s in self.sent if s[0] != "GET"]

    def clear(self) -> None:
        self.sent.clear()
