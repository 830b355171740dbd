"""The connectors' transport (httpx over aiohttp): each way a platform's connection can fail
reaches `HttpClient` as the httpx error that says what happened, over real loopback sockets,
because only a connection never made lets a write be sent again."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from bridge import mapping
from connectors import base
from connectors._aiohttp import Transport, environment_proxy
from connectors.fakekit import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def settings(port: int, **kw: object) -> base.ConnectorSettings:
    return base.ConnectorSettings(
        name="x",
        platform="x",
        base_url=f"http://127.0.0.1:{port}",
        mapping=mapping.PlatformMapping("x"),
        people=base.PeopleMap("x"),
        token="t0ken",
        backoff=0.01,
        **kw,  # type: ignore[arg-type]
    )


class Server:
    """A socket server that answers each request as `handler` says, counting the requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests = 0
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            await reader.readexactly(length)
            self.requests += 1
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> Server:
        server = Server(handler)
        listening = await asyncio.start_server(server._serve, "127.0.0.1", 0)
        server.port = listening.sockets[0].getsockname()[1]
        servers.append(listening)
        return server

    yield start
    for s in servers:
        s.close()
        await s.wait_closed()


async def test_a_refused_connection_is_a_connect_error_and_a_post_is_tried_again() -> None:
    http = base.HttpClient(settings(free_port(), max_retries=2))
    with pytest.raises(base.Retryable) as info:
        await http.post("/api/create", {})
    assert isinstance(info.value.__cause__, httpx.ConnectError)  # httpx-aiohttp alone: a ConnectTimeout
    await http.aclose()


async def test_a_connection_dropped_after_the_request_is_not_sent_again(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def drop(_r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
        return  # the request was read; the connection closes without an answer

    server = await serve(drop)
    http = base.HttpClient(settings(server.port, max_retries=3))
    with pytest.raises(base.Retryable) as info:
        await http.post("/api/create", {"title": "once"})
    assert isinstance(info.value.__cause__, httpx.RemoteProtocolError), repr(info.value.__cause__)
    assert server.requests == 1  # it may have been processed: never repeated
    await http.aclose()


@pytest.mark.parametrize("method", ["PUT", "DELETE", "GET"])
async def test_no_request_is_sent_twice_by_the_transport(
    serve: Callable[..., Awaitable[Server]], method: str
) -> None:
    """aiohttp on its own sends these again when the connection drops: a PUT that the platform
    applied would go out a second time, late, over whatever was edited in between."""

    async def drop(_r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
        return

    server = await serve(drop)
    http = base.HttpClient(settings(server.port, max_retries=0))
    with pytest.raises(base.Retryable):
        await http.request(method, "/api/tasks/1", json_body={"title": "late"} if method == "PUT" else None)
    assert server.requests == 1
    await http.aclose()


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"HELLO THERE\r\n\r\n", httpx.RemoteProtocolError),  # not HTTP
        (b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"id": 1', httpx.ReadError),  # cut short
    ],
)
async def test_a_broken_answer_is_an_httpx_error(
    serve: Callable[..., Awaitable[Server]], answer: bytes, error: type[Exception]
) -> None:
    async def broken(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()

    server = await serve(broken)
    http = base.HttpClient(settings(server.port, max_retries=0))
    with pytest.raises(base.Retryable) as info:
        await http.get("/api/items")
    assert isinstance(info.value.__cause__, error), repr(info.value.__cause__)
    await http.aclose()


async def test_answers_and_keep_alive(serve: Callable[..., Awaitable[Server]]) -> None:
    connections = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        body = b'{"ok": true}'
        while True:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                + body
            )
            await writer.drain()
            try:
                await reader.readuntil(b"\r\n\r\n")  # the next request on the same connection
            except asyncio.IncompleteReadError:
                return

    server = await serve(answer)
    http = base.HttpClient(settings(server.port))
    for _ in range(3):
        assert await http.get("/api/ok") == {"ok": True}
    assert connections == 1
    await http.aclose()


@pytest.mark.parametrize(
    ("env", "url", "proxy"),
    [
        ({}, "https://api.example.com/v1", None),
        ({"HTTPS_PROXY": "http://proxy.corp:3128"}, "https://api.example.com/v1", "http://proxy.corp:3128"),
        ({"HTTPS_PROXY": "http://proxy.corp:3128"}, "http://api.example.com/v1", None),  # https only
        ({"ALL_PROXY": "http://all.corp:8080"}, "http://api.example.com", "http://all.corp:8080"),
        (
            {"HTTPS_PROXY": "http://proxy.corp:3128", "NO_PROXY": "example.com"},
            "https://api.example.com/v1",
            None,
        ),
    ],
)
def test_the_environment_names_the_proxy(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str, proxy: str | None
) -> None:
    for name in (
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "https_proxy",
        "http_proxy",
        "all_proxy",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    found = environment_proxy(url)
    assert (str(found.url) if found else None) == proxy
    assert (Transport(url).proxy is None) == (proxy is None)


async def test_a_cookie_the_platform_sets_is_sent_back_and_other_answers_skip_the_jar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    heads: list[bytes] = []

    async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                sets = b"Set-Cookie: lb=node-7; Path=/\r\n" if len(heads) == 1 else b""
                body = b'{"ok": true}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
                    % (sets, len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    listening = await asyncio.start_server(serve_one, "127.0.0.1", 0)
    http = base.HttpClient(settings(listening.sockets[0].getsockname()[1]))
    jar_reads: list[str] = []
    real = type(http.client.cookies.jar).extract_cookies

    def counted(jar: object, response: object, request: object) -> None:
        jar_reads.append("read")
        real(jar, response, request)  # type: ignore[arg-type]

    monkeypatch.setattr(type(http.client.cookies.jar), "extract_cookies", counted)
    try:
        for _ in range(3):
            assert await http.get("/api/ok") == {"ok": True}
    finally:
        await http.aclose()
        listening.close()
        await listening.wait_closed()
    assert [b"cookie: lb=node-7" in head.lower() for head in heads] == [False, True, True]
    assert jar_reads == ["read"]  # only the answer that set a cookie went through urllib's jar


@pytest.mark.parametrize(
    ("size", "encoding", "read_whole"),
    [
        (100, b"", True),  # a task's answer: read whole by the transport, in one call
        (101, b"", False),  # over `read_whole_up_to`: streamed, for HttpClient to bound as it reads
        (100, b"Content-Encoding: gzip\r\n", False),  # encoded: httpx decodes it as it streams
    ],
)
async def test_a_short_plain_answer_comes_up_read_and_any_other_streams(
    serve: Callable[..., Awaitable[Server]], size: int, encoding: bytes, read_whole: bool
) -> None:
    """Also holds httpx-aiohttp's `_aiohttp_response` (what the transport reads whole) to its
    name: renamed, the first case fails instead of every answer silently streaming again."""
    plain = b'{"title": "' + b"x" * (size - 13) + b'"}'
    body = gzip.compress(plain) if encoding else plain  # compressed: well under 100 bytes

    async def answer(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (encoding, len(body), body))
        await writer.drain()

    server = await serve(answer)
    async with httpx.AsyncClient(transport=Transport("http://127.0.0.1", read_whole_up_to=100)) as client:
        request = client.build_request("GET", f"http://127.0.0.1:{server.port}/api/tasks/1")
        response = await client.send(request, stream=True)
        if read_whole:
            assert response.content == plain
        else:
            with pytest.raises(httpx.ResponseNotRead):
                _ = response.content
            assert await response.aread() == plain
        await response.aclose()
