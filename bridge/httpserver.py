"""uvicorn's HTTP protocol (httptools), with what a response writes in one turn sent as one.

uvicorn writes a response's status line and headers when the app starts it and the body when
the app sends it: two `send` calls, two TCP segments on the wire. Each write to a loopback or
LAN peer costs a system call that also delivers the segment and wakes the reader, which then
reads twice to parse one answer. The daemon answers a webhook delivery for nearly every mirror
write, and the fakes answer every request the benchmarks make, so a response paid that twice.

Here the writes a connection makes within one turn of the event loop are gathered and leave
together at the end of that turn (`loop.call_soon`): a small response goes out as one segment,
a streamed one (server-sent events, a long listing) chunk by chunk as before, each a turn later
at most. Closing or aborting the connection, and flow control's pause, see the writes gathered
so far first, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _GatheringTransport:
    """A transport whose writes of one loop turn are sent as one; the rest is the transport's."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._pending is None:
            self._pending = [bytes(data)]
            self._loop.call_soon(self._flush)
        else:
            self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            # A connection closing here was lost (a close of ours flushes first): nobody reads.
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        pending = sum(len(p) for p in self._pending) if self._pending else 0
        return pending + self._transport.get_write_buffer_size()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatheringHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `_GatheringTransport` (`uvicorn.Config(http=...)`)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        gathering = _GatheringTransport(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        super().connection_made(gathering)  # type: ignore[arg-type]
