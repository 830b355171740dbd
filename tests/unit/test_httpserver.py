"""The HTTP server's gathering transport (bridge/httpserver.py): what a connection writes in one
turn of the loop leaves as one write, in order; a close sends what was gathered first, an abort
drops it, and a connection lost meanwhile is not written to. Then a real server over loopback:
each answer of a keep-alive connection leaves in one write, a streamed one chunk by chunk."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest
import uvicorn

from bridge.httpserver import GatheringHttpToolsProtocol, _GatheringTransport


class _Wire:
    """A transport that records what it is asked to do."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", None))
        self.closing = True

    def write_eof(self) -> None:
        self.calls.append(("write_eof", None))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def test_the_writes_of_one_turn_leave_as_one() -> None:
    wire = _Wire()
    t = _GatheringTransport(wire, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.write(b"")  # nothing, as asyncio's own
    t.writelines([b"{", b"}"])
    assert wire.calls == [] and t.get_write_buffer_size() == 19 + 2 + 7
    await asyncio.sleep(0)
    assert wire.calls == [("write", b"HTTP/1.1 200 OK\r\n\r\n{}")]
    t.write(b"next")  # a later turn: a write of its own
    await asyncio.sleep(0)
    assert wire.calls[-1] == ("write", b"next")
    assert t.get_extra_info("peername") == "info:peername"  # the rest is the transport's


@pytest.mark.parametrize("ending", ["close", "write_eof"])
async def test_a_close_sends_what_was_gathered_first(ending: str) -> None:
    wire = _Wire()
    t = _GatheringTransport(wire, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"a")
    t.write(b"b")
    getattr(t, ending)()
    assert wire.calls == [("write", b"ab"), (ending, None)]
    await asyncio.sleep(0)  # the turn's flush finds nothing left
    assert len(wire.calls) == 2


async def test_an_abort_or_a_lost_connection_drops_what_was_gathered() -> None:
    wire = _Wire()
    t = _GatheringTransport(wire, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"a")
    t.abort()
    await asyncio.sleep(0)
    assert wire.calls == [("abort", None)]

    lost = _Wire()
    t = _GatheringTransport(lost, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"a")
    lost.closing = True  # the peer went away before the turn ended
    await asyncio.sleep(0)
    assert lost.calls == []


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        for i in range(3):
            await send({"type": "http.response.body", "body": f"part {i}\n".encode(), "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"end\n"})
        return
    body = scope["path"].encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _Counting:
    """The socket's transport, its writes counted (under the gathering one)."""

    def __init__(self, transport: Any, writes: list[int]) -> None:
        self._transport, self._writes = transport, writes

    def write(self, data: bytes) -> None:
        self._writes.append(len(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


WRITES: list[int] = []


class _Counted(GatheringHttpToolsProtocol):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(_Counting(transport, WRITES))


async def test_a_server_answers_in_one_write_over_loopback() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_app, log_level="warning", lifespan="off", http=_Counted))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):  # uvicorn says it has started by a flag alone
            if server.started:
                break
            await asyncio.sleep(0.01)
        WRITES.clear()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            answers = [await client.get(f"/task/{i}") for i in range(20)]  # one kept-alive connection
            assert [a.text for a in answers] == [f"/task/{i}" for i in range(20)]
            assert len(WRITES) == 20  # status line, headers and body in one write each (uvicorn: two)
            streamed = await client.get("/stream")
            assert streamed.text == "part 0\npart 1\npart 2\nend\n"
            assert len(WRITES) - 20 >= 3  # a streamed answer still leaves as it is sent
    finally:
        server.should_exit = True
        await serving
