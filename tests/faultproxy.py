"""A fault proxy for tests: a real HTTP server on loopback in front of an upstream (a fake
platform). It forwards every request and, per switch, spoils the answer as a bad platform or a
bad network would:

    trickle    the upstream's answer, its body sent at this many bytes per second
    huge       a generated JSON body of this many bytes, chunked, made as it is sent (never held)
    short      a Content-Length of this many bytes, a few bytes of body, then nothing until the
               client hangs up
    malformed  "http": a status line that is not HTTP; "json": a 200 application/json that is not JSON
    cut        a request whose body holds these bytes is forwarded, and its connection closed
               without an answer: the platform did the work, the answer was lost on the way

`only` limits the switches to request targets starting with it (e.g. "/mcp"); anything else is
forwarded untouched. Switches are plain attributes, set from the test's thread. Every answer
closes its connection (`Connection: close`), which keeps this server small; an upstream's answer
is read whole before it is sent on (a long-lived event stream is not for this proxy).

Raw asyncio streams on a thread of its own, so a test's client (in-process or a daemon process)
meets a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, fields

import httpx

HOP_BY_HOP = {"host", "connection", "content-length", "transfer-encoding", "accept-encoding", "keep-alive"}
PIECE = 64 * 1024  # bytes of a huge body written at once


@dataclass
class Switches:
    trickle: float | None = None  # bytes per second
    huge: int | None = None  # bytes
    short: int | None = None  # the Content-Length declared
    malformed: str | None = None  # "http" | "json"
    cut: bytes | None = None  # in a request's body: forwarded, answer dropped
    only: str | None = None  # request-target prefix the switches apply to

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, None)


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.switches = Switches()
        self.requests: list[tuple[str, str]] = []  # (method, target) of every request received
        self.body_bytes_sent = 0  # body bytes written to clients, all answers together
        self.cut_answers = 0  # answers dropped by `cut`
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        self.switches.reset()
        self.requests.clear()
        self.body_bytes_sent = 0
        self.cut_answers = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="faultproxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._client = httpx.AsyncClient(timeout=30)
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            await self._stop.wait()
            server.close()
            for task in list(self._handlers):  # a hanging answer waits for its client otherwise
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._client.aclose()

        asyncio.run(main())

    # -- one connection, one request -----------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = [tuple(part.strip() for part in line.split(":", 1)) for line in head[1:] if ":" in line]
            length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
            body = await reader.readexactly(length)
            self.requests.append((method, target))
            s = self.switches
            spoil = s.only is None or target.startswith(s.only)
            if spoil and s.malformed == "http":
                writer.write(b"HTTX/9 banana\r\nthis is: not http\r\n\r\n")
            elif spoil and s.huge:
                await self._huge(writer, s.huge)
            elif spoil and s.short:
                await self._short(reader, writer, s.short)
            elif spoil and s.cut and s.cut in body:
                await self._forward(method, target, headers, body)
                self.cut_answers += 1
            else:
                status, reason, answer_headers, content = await self._forward(method, target, headers, body)
                if spoil and s.malformed == "json":
                    status, reason, answer_headers = 200, "OK", [("Content-Type", "application/json")]
                    content = b'{"data": [{"id": 1, "title": '
                await self._answer(
                    writer, status, reason, answer_headers, content, s.trickle if spoil else None
                )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client hung up (at the deadline, or refusing a body): what the tests want
        except asyncio.CancelledError:
            pass  # stop(): ending here, rather than raising, keeps asyncio from logging it
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _forward(
        self, method: str, target: str, headers: list[tuple[str, ...]], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        sent = {k: v for k, v in headers if k.lower() not in HOP_BY_HOP}
        r = await self._client.request(method, self.upstream + target, headers=sent, content=body)
        kept = [(k, v) for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}]
        return r.status_code, r.reason_phrase, kept, r.content

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        content: bytes,
        trickle: float | None,
    ) -> None:
        lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers)]
        lines += [f"Content-Length: {len(content)}", "Connection: close"]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not trickle:
            writer.write(content)
            self.body_bytes_sent += len(content)
            return
        step = max(1, round(trickle / 20))  # twenty writes a second
        for i in range(0, len(content), step):
            writer.write(content[i : i + step])
            await writer.drain()  # raises once the client has hung up
            self.body_bytes_sent += len(content[i : i + step])
            await asyncio.sleep(step / trickle)

    async def _huge(self, writer: asyncio.StreamWriter, size: int) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        for piece in huge_json(size):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()  # only as fast as the client reads: nothing piles up here
            self.body_bytes_sent += len(piece)
        writer.write(b"0\r\n\r\n")

    async def _short(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, declared: int) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b'Content-Length: %d\r\nConnection: close\r\n\r\n{"data": [' % declared
        )
        await writer.drain()
        self.body_bytes_sent += len(b'{"data": [')
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the client hangs up


def huge_json(size: int) -> Iterator[bytes]:
    """A JSON document of `size` bytes (a list of long strings), made a piece at a time."""
    head, tail = b'{"data": [', b'"end"]}'
    item = b'"' + b"x" * (PIECE - 3) + b'",'
    yield head
    left = size - len(head) - len(tail)
    while left >= len(item):
        yield item
        left -= len(item)
    if left >= 3:
        yield b'"' + b"x" * (left - 3) + b'",'
    elif left > 0:
        yield b" " * left
    yield tail
