"""Fixtures shared by every test layer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class ReceivedHook:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """A real HTTP server on loopback that records every POST it receives.

    `status` is what it answers (set it to 500 to make a fake retry). `url` is its base URL.
    """

    url: str
    received: list[ReceivedHook] = field(default_factory=list)
    status: int = 200
    event: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedHook]:
        """Block until at least `count` deliveries arrived (or fail the test)."""
        with self.event:
            ok = self.event.wait_for(lambda: len(self.received) >= count, timeout=timeout)
        if not ok:
            raise AssertionError(f"expected {count} webhook deliveries, got {len(self.received)}")
        return list(self.received)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver: WebhookReceiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with receiver.event:
                receiver.received.append(
                    ReceivedHook(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                receiver.event.notify_all()
            self.send_response(receiver.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = WebhookReceiver(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
