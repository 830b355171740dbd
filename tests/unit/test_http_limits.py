"""The deadline and the size bound of one platform call, over real HTTP through the fault proxy
(tests/faultproxy.py) in front of a small fake platform: HttpClient (REST) and the Vortask MCP
client."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from bridge import mapping
from connectors import base
from connectors.fakekit import Fake
from connectors.vortask.fake import VortaskFake
from connectors.vortask.mcp_client import VortaskMcp
from tests.faultproxy import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "sekrit-limits-token"
ITEMS = [{"id": i, "title": f"task {i}", "description": "d" * 40} for i in range(30)]  # ~2.5 KB
HUGE = 150 * 1024 * 1024  # the answer that took the daemon from 139 to 581 MB


class ItemsFake(Fake):
    platform = "items"

    def routes(self, app: FastAPI) -> None:
        @app.get("/api/items")
        async def items() -> list[dict[str, Any]]:
            return ITEMS

        @app.get("/api/ok")
        async def ok() -> dict[str, bool]:
            return {"ok": True}

        @app.get("/api/empty")
        async def empty() -> dict[str, list[Any]]:
            return {"data": []}


@pytest.fixture(scope="module")
def proxy() -> Iterator[FaultProxy]:
    upstream = ItemsFake(token=TOKEN).start()
    with FaultProxy(upstream.url) as p:
        yield p
    upstream.stop()


@pytest.fixture(autouse=True)
def _reset(proxy: FaultProxy) -> None:
    proxy.reset()


def settings(url: str, **kw: Any) -> base.ConnectorSettings:
    values: dict[str, Any] = {
        "name": "items1",
        "platform": "items",
        "base_url": url,
        "mapping": mapping.PlatformMapping("items"),
        "people": base.PeopleMap("items1"),
        "token": TOKEN,
        "backoff": 0.01,
        "timeout": 5.0,
    }
    values.update(kw)
    return base.ConnectorSettings(**values)


def client(proxy: FaultProxy, **kw: Any) -> base.HttpClient:
    seen: list[tuple[str, str]] = []
    http = base.HttpClient(settings(proxy.url, **kw), observer=lambda _c, m, sc, _s: seen.append((m, sc)))
    http.seen = seen  # type: ignore[attr-defined]
    return http


async def test_a_normal_answer_passes_through_unchanged(proxy: FaultProxy) -> None:
    http = client(proxy)  # the defaults: a 60 s deadline, 32 MiB
    assert http.settings.deadline == base.DEFAULT_REQUEST_DEADLINE
    assert http.settings.max_response_bytes == base.DEFAULT_MAX_RESPONSE_BYTES
    response = await http.request("GET", "/api/items")
    assert response.json() == ITEMS
    assert response.content == json.dumps(ITEMS, separators=(",", ":")).encode()
    assert response.headers["content-type"] == "application/json"
    assert proxy.requests == [("GET", "/api/items")]
    await http.aclose()


async def test_a_trickled_answer_ends_at_the_deadline(proxy: FaultProxy) -> None:
    # 40 bytes/s: the whole answer would take a minute, yet bytes keep coming every 50 ms, so the
    # 5 s per-phase timeout never trips. The deadline does, and the call is not retried.
    proxy.switches.trickle = 40
    http = client(proxy, deadline=1.0, max_retries=3)
    started = time.monotonic()
    with pytest.raises(base.DeadlineExceeded) as info:
        await http.get("/api/items")
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 2.0
    assert isinstance(info.value, base.Retryable)
    assert str(info.value) == "items1: GET /api/items: no complete answer within the 1 s deadline; cancelled"
    assert TOKEN not in str(info.value)
    assert 0 < proxy.body_bytes_sent < 200  # some of it came, then the client hung up
    assert proxy.requests == [("GET", "/api/items")]  # once: a retry would hold the poll again
    assert http.seen == [("GET", "error")]  # type: ignore[attr-defined]
    await http.aclose()


async def test_headers_then_silence_ends_at_the_deadline(proxy: FaultProxy) -> None:
    proxy.switches.short = 1000  # a Content-Length within the bound, ten bytes, then nothing
    http = client(proxy, deadline=1.0, timeout=30.0)
    started = time.monotonic()
    with pytest.raises(base.DeadlineExceeded, match="within the 1 s deadline"):
        await http.get("/api/items")
    assert 1.0 <= time.monotonic() - started < 2.0
    await http.aclose()


async def test_a_content_length_over_the_bound_is_refused_before_reading(proxy: FaultProxy) -> None:
    # The proxy declares 100 MiB and then sends nothing more: reading the body would wait out the
    # 5 s deadline, so an answer within a second is one refused from its headers alone.
    proxy.switches.short = 100 * 1024 * 1024
    http = client(proxy, deadline=5.0)
    started = time.monotonic()
    with pytest.raises(base.ResponseTooLarge) as info:
        await http.get("/api/items")
    assert time.monotonic() - started < 1.0
    assert isinstance(info.value, base.Permanent)
    assert info.value.declared == 100 * 1024 * 1024
    assert str(info.value) == (
        "items1: GET /api/items: the answer is too large: its Content-Length is 104,857,600 bytes, "
        "over the 32 MiB max_response_bytes; refused unread"
    )
    assert proxy.requests == [("GET", "/api/items")]  # Permanent: not retried
    await http.aclose()


async def test_a_huge_streamed_answer_is_cut_off_at_the_bound(proxy: FaultProxy) -> None:
    proxy.switches.huge = HUGE  # chunked: no Content-Length to refuse it by
    http = client(proxy, max_response_bytes=1024 * 1024)
    started = time.monotonic()
    with pytest.raises(base.ResponseTooLarge, match="passed the 1 MiB max_response_bytes; stopped reading"):
        await http.get("/api/items")
    assert time.monotonic() - started < 2.0
    assert proxy.body_bytes_sent < 16 * 1024 * 1024  # the rest was never sent: the client hung up
    assert proxy.requests == [("GET", "/api/items")]
    await http.aclose()


MEMORY_PROBE = textwrap.dedent(
    """
    import asyncio, json, os, resource, sys, threading, time
    from bridge import mapping
    from connectors import base

    def rss() -> int:  # resident bytes now (Linux: /proc); elsewhere the peak so far (getrusage)
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return peak if sys.platform == "darwin" else peak * 1024

    async def main(url: str, limit: int) -> None:
        settings = base.ConnectorSettings(
            name="items1", platform="items", base_url=url, mapping=mapping.PlatformMapping("items"),
            people=base.PeopleMap("items1"), token="probe-token", max_response_bytes=limit,
        )
        http = base.HttpClient(settings)
        await http.get("/api/ok")  # warm: the machinery of a request is in memory before we measure
        before = rss()
        peak, done = [before], threading.Event()

        def sample() -> None:  # the highest resident size while the request runs
            while not done.is_set():
                peak[0] = max(peak[0], rss())
                time.sleep(0.001)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            await http.get("/api/items")
            error = None
        except base.ConnectorError as exc:
            error = type(exc).__name__
        done.set()
        sampler.join()
        print(json.dumps({"before": before, "peak": max(peak[0], rss()), "error": error}))
        await http.aclose()

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def test_a_150_mb_answer_leaves_memory_bounded(proxy: FaultProxy) -> None:
    """In a fresh process, its resident size sampled while the request runs: with the default
    bound, 32 MiB are read and refused; the rest of the 150 MiB answer never reaches memory.
    (Unbounded, the same answer grew it by ~450 MiB: the body, its copy, its JSON.)"""
    proxy.switches.huge = HUGE
    proxy.switches.only = "/api/items"  # the warm-up request passes through
    limit = base.DEFAULT_MAX_RESPONSE_BYTES
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, proxy.url, str(limit)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    growth = probe["peak"] - probe["before"]
    print(f"RSS growth, a {HUGE >> 20} MiB answer bounded at {limit >> 20} MiB: {growth / 2**20:.1f} MiB")
    assert probe["error"] == "ResponseTooLarge"
    assert growth < 2 * limit < HUGE / 2  # the bound plus chunks in flight, not the body
    assert proxy.body_bytes_sent < HUGE / 2


async def test_an_error_status_with_a_huge_body_keeps_its_error() -> None:
    """A 503 whose body passes the bound stays Retryable (the body is dropped, not the status)."""
    transport = httpx.MockTransport(lambda _r: httpx.Response(503, content=b"x" * (128 * 1024)))
    http = base.HttpClient(
        settings("http://platform.invalid", max_response_bytes=64 * 1024, transport=transport, max_retries=0)
    )
    with pytest.raises(base.Retryable) as info:
        await http.get("/api/items")
    assert info.value.status == 503 and not isinstance(info.value, base.ResponseTooLarge)
    await http.aclose()


async def test_malformed_http_and_json(proxy: FaultProxy) -> None:
    http = client(proxy, max_retries=0)
    proxy.switches.malformed = "http"
    with pytest.raises(base.Retryable, match="GET /api/items failed"):
        await http.get("/api/items")
    proxy.switches.malformed = "json"
    with pytest.raises(base.Permanent, match="not JSON"):
        await http.get("/api/items")
    proxy.switches.malformed = None
    assert await http.get("/api/items") == ITEMS
    await http.aclose()


# -- an answer read as it arrives (HttpClient.stream) ----------------------------------------------


async def streamed(http: base.HttpClient, path: str, prefix: str, *, pause: float = 0.0) -> list[Any]:
    out = []
    async with http.stream(path) as answer:
        async for item in answer.items(prefix):
            out.append(item)
            await asyncio.sleep(pause)
    return out


async def test_a_streamed_answer_yields_its_items(proxy: FaultProxy) -> None:
    http = client(proxy)
    assert await streamed(http, "/api/items", "item") == ITEMS
    assert await streamed(http, "/api/empty", "data.item") == []
    await http.aclose()


async def test_a_streamed_answer_of_another_shape_is_refused(proxy: FaultProxy) -> None:
    """No item where the listing should be is an error, never an empty scope."""
    http = client(proxy, max_retries=0)
    with pytest.raises(base.Permanent, match="expected a JSON array at 'item'"):
        await streamed(http, "/api/ok", "item")
    with pytest.raises(base.Permanent, match=r"expected a JSON array at 'tasks\.item'"):
        await streamed(http, "/api/empty", "tasks.item")
    proxy.switches.malformed = "json"
    with pytest.raises(base.Permanent, match="not JSON"):
        await streamed(http, "/api/items", "item")
    await http.aclose()


async def test_a_streamed_answer_counts_only_the_platforms_time_against_the_deadline(
    proxy: FaultProxy,
) -> None:
    http = client(proxy, deadline=1.0)
    # The caller's own time between items (30 x 50 ms here) is not the platform's.
    assert len(await streamed(http, "/api/items", "item", pause=0.05)) == len(ITEMS)
    proxy.switches.trickle = 40  # the platform's is: a minute to send it all
    started = time.monotonic()
    with pytest.raises(base.DeadlineExceeded, match="within the 1 s deadline"):
        await streamed(http, "/api/items", "item")
    assert 1.0 <= time.monotonic() - started < 2.0
    await http.aclose()


async def test_a_streamed_item_over_the_bound_is_refused(proxy: FaultProxy) -> None:
    proxy.switches.huge = 4 * 1024 * 1024  # items of 64 KiB each
    http = client(proxy, max_response_bytes=32 * 1024)
    with pytest.raises(base.ResponseTooLarge, match="passed the 32 KiB max_response_bytes"):
        await streamed(http, "/api/items", "data.item")
    await http.aclose()


def mock_client(handler: Any) -> base.HttpClient:
    return base.HttpClient(
        settings("http://platform.invalid", transport=httpx.MockTransport(handler), max_retries=0)
    )


async def test_a_streamed_answer_that_breaks_says_what_broke_but_never_quotes_the_body() -> None:
    secret = "pw=hunter2-in-a-description"
    http = mock_client(lambda _r: httpx.Response(200, content=b'[{"d": "' + secret.encode() + b'"}, {oops'))
    with pytest.raises(base.Permanent) as info:
        await streamed(http, "/api/items", "item")
    assert "not JSON" in str(info.value) and "hunter2" not in str(info.value)
    corrupt = {"content-encoding": "gzip", "content-type": "application/json"}
    http = mock_client(lambda _r: httpx.Response(200, content=b"not gzip at all", headers=corrupt))
    with pytest.raises(base.Permanent, match=r"not JSON|could not be decoded"):
        await streamed(http, "/api/items", "item")
    with pytest.raises(base.Permanent, match="could not be decoded"):
        await http.get("/api/items")  # the same body read whole
    http = mock_client(lambda _r: httpx.Response(200, json=[{"id": 1}, 2]))
    with pytest.raises(base.Permanent, match="expected JSON objects at 'item', found int"):
        async with http.stream("/api/items") as answer:
            _ = [task async for task in answer.objects("item")]
    await http.aclose()


STREAM_PROBE = textwrap.dedent(
    """
    import asyncio, json, os, sys, threading, time
    from bridge import mapping
    from connectors import base

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    async def main(url: str) -> None:
        settings = base.ConnectorSettings(
            name="items1", platform="items", base_url=url, mapping=mapping.PlatformMapping("items"),
            people=base.PeopleMap("items1"), token="probe-token",
        )
        http = base.HttpClient(settings)
        await http.get("/api/ok")
        before = rss()
        peak, done = [before], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss())
                time.sleep(0.001)

        sampler = threading.Thread(target=sample)
        sampler.start()
        items = size = 0
        async with http.stream("/api/items") as answer:
            async for item in answer.items("data.item"):
                items += 1
                size += len(item)
        done.set()
        sampler.join()
        print(json.dumps({"before": before, "peak": max(peak[0], rss()), "items": items, "size": size}))
        await http.aclose()

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads its RSS from /proc")
def test_a_streamed_answer_past_the_bound_is_read_whole_in_bounded_memory(proxy: FaultProxy) -> None:
    """An answer twice `max_response_bytes` is read to its end when streamed, one item at a time:
    the process grows by a few items and chunks, not by the body."""
    size = 2 * base.DEFAULT_MAX_RESPONSE_BYTES
    proxy.switches.huge = size
    proxy.switches.only = "/api/items"
    result = subprocess.run(
        [sys.executable, "-c", STREAM_PROBE, proxy.url], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    growth = probe["peak"] - probe["before"]
    print(f"RSS growth, a {size >> 20} MiB answer streamed: {growth / 2**20:.1f} MiB")
    assert probe["size"] > size * 0.99  # every byte of every item came through
    assert growth < 16 * 1024 * 1024


# -- the Vortask MCP client: its own HTTP path, the same bounds ------------------------------------

MCP_TOKEN = "vt_alice_limits"


@pytest.fixture(scope="module", params=["json", "sse"])
def mcp_proxy(request: pytest.FixtureRequest) -> Iterator[FaultProxy]:
    fake = VortaskFake(token=MCP_TOKEN, mcp_json_response=request.param == "json").start()
    with FaultProxy(fake.url) as p:
        yield p
    fake.stop()


async def test_mcp_calls_have_the_deadline_and_the_bound(mcp_proxy: FaultProxy) -> None:
    mcp_proxy.reset()
    # The first call opens the session, which on a machine busy with other tests took longer than
    # the 1 s deadline this test is about (CI, 2026-12-05): that one has ten.
    s = settings(mcp_proxy.url + "/api", name="vortask1", token=MCP_TOKEN, deadline=10.0)
    mcp = VortaskMcp(s, mcp_proxy.url + "/mcp")
    try:
        projects = await mcp.call("list_projects", {})  # the session is open, the answer intact
        assert mcp.handshakes == 1
        mcp.settings = dataclasses.replace(s, deadline=1.0)

        mcp_proxy.switches.trickle, mcp_proxy.switches.only = 40, "/mcp"
        started = time.monotonic()
        with pytest.raises(base.DeadlineExceeded) as late:
            await mcp.call("list_projects", {})
        assert 1.0 <= time.monotonic() - started < 3.0
        assert (
            str(late.value)
            == "vortask1: MCP list_projects: no complete answer within the 1 s deadline; cancelled"
        )

        mcp_proxy.switches.reset()
        await mcp.connect()  # a new session: the late call's was dropped, with the POST it held
        assert mcp.handshakes == 2

        mcp_proxy.switches.huge, mcp_proxy.switches.only = HUGE, "/mcp"
        with pytest.raises(base.ResponseTooLarge, match="MCP list_projects: the answer is too large"):
            await mcp.call("list_projects", {})
        assert mcp_proxy.body_bytes_sent < 64 * 1024 * 1024

        mcp_proxy.switches.reset()
        assert await mcp.call("list_projects", {}) == projects
        assert mcp.handshakes == 2  # the session outlived the refused answer
    finally:
        await mcp.aclose()


async def test_a_write_whose_answer_was_lost_is_not_sent_again(mcp_proxy: FaultProxy) -> None:
    """add_comment reached Vortask, which added the comment; the answer never came back (the
    connection closed). The call fails Retryable (the outbox's retry looks for the comment
    before posting again) and is not re-sent on a new session: it may have happened. A read
    that meets the same is re-sent, once, on a new session."""
    mcp_proxy.reset()
    s = settings(mcp_proxy.url + "/api", name="vortask1", token=MCP_TOKEN, deadline=5.0)
    mcp = VortaskMcp(s, mcp_proxy.url + "/mcp")
    try:
        project = (await mcp.call("list_projects", {}))[0]
        task = await mcp.call("create_task", {"projectId": project["id"], "title": "commented"})
        mcp_proxy.switches.cut = b"answer lost"
        with pytest.raises(base.Retryable):
            await mcp.call("add_comment", {"taskId": task["id"], "body": "answer lost on the way"})
        mcp_proxy.switches.reset()
        comments = await mcp.call("list_comments", {"taskId": task["id"]})
        assert [c["body"] for c in comments] == ["answer lost on the way"]
        assert mcp_proxy.cut_answers == 1 and mcp.handshakes == 2  # the lost session was dropped

        mcp_proxy.switches.cut = b'"name":"list_comments"'
        with pytest.raises(base.Retryable, match="MCP list_comments"):
            await mcp.call("list_comments", {"taskId": task["id"]})
        assert mcp_proxy.cut_answers == 3 and mcp.handshakes == 3  # sent again once, on a new session
    finally:
        await mcp.aclose()
