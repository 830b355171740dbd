"""The fakes' webhook sender: how many deliveries it has out at once, in what order, and the
times it stamps on each (the propagation benchmark reads them), against a real receiver on
loopback."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiohttp import web

from connectors.fakekit import Faults, WebhookSender


class Receiver:
    """Holds every delivery until `release` is set; records the order and the most held at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.order: list[bytes] = []
        self.held = 0
        self.most_held = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.order.append(await request.read())
        self.held += 1
        self.most_held = max(self.most_held, self.held)
        try:
            await self.release.wait()
        finally:
            self.held -= 1
        return web.Response(status=202)


async def _serve(receiver: Receiver) -> tuple[web.AppRunner, str]:
    """The receiver on a loopback port of its own: (its runner, its URL)."""
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/hook"


async def _run(concurrency: int, count: int) -> tuple[Receiver, WebhookSender]:
    receiver = Receiver()
    runner, url = await _serve(receiver)
    sender = WebhookSender(Faults(), random.Random(1), concurrency=concurrency)
    await sender.start()
    try:
        for i in range(count):
            sender.send(url, "task.updated", str(i).encode(), {})
        for _ in range(200):  # until the sender has out all it may
            if receiver.held >= min(concurrency, count):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # and no more than that
        assert receiver.most_held == min(concurrency, count)
        receiver.release.set()
        for _ in range(500):
            if sender.pending == 0:
                break
            await asyncio.sleep(0.01)
        assert sender.pending == 0
    finally:
        await sender.stop()
        await runner.cleanup()
    return receiver, sender


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_deliveries_out_at_once_and_in_order_of_sending(concurrency: int) -> None:
    receiver, sender = await _run(concurrency, 6)
    # One at a time: one held, then each in turn, so they arrive in order. More: that many held
    # at once, started in order of sending (on connections of their own, so they may arrive in
    # another).
    assert receiver.most_held == concurrency
    if concurrency == 1:
        assert receiver.order == [str(i).encode() for i in range(6)]
    assert sorted(receiver.order) == [str(i).encode() for i in range(6)]
    sent = [d.sent_at for d in sender.deliveries]
    assert sent == sorted(sent)  # type: ignore[type-var]
    assert [d.outcome for d in sender.deliveries] == ["delivered"] * 6


async def test_each_delivery_is_stamped_queued_sent_and_answered() -> None:
    _, sender = await _run(2, 3)
    for d in sender.deliveries:
        assert d.sent_at is not None and d.answered_at is not None
        assert 0 < d.queued_at <= d.sent_at <= d.answered_at
    # The third waited for a place while the receiver held the first two.
    third = sender.deliveries[2]
    assert third.sent_at is not None and third.sent_at - third.queued_at >= 0.04


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_an_attempt_the_client_refuses_fails_and_the_sender_goes_on(concurrency: int) -> None:
    """A URL the client cannot even send to (not an HTTP error) is a failed attempt like any other:
    retried, then failed, `pending` back to 0, and the deliveries after it still go out."""
    receiver = Receiver()
    receiver.release.set()
    runner, url = await _serve(receiver)
    sender = WebhookSender(Faults(), random.Random(1), attempts=2, backoff=0.01, concurrency=concurrency)
    await sender.start()
    try:
        bad = sender.send("http://[::1/hook", "task.updated", b"bad", {})
        good = sender.send(url, "task.updated", b"good", {})
        for _ in range(500):
            if sender.pending == 0:
                break
            await asyncio.sleep(0.01)
        assert (bad.outcome, bad.attempts) == ("failed", 2)
        assert good.outcome == "delivered" and receiver.order == [b"good"]
    finally:
        await sender.stop()
        await runner.cleanup()
