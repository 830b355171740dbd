"""The outbox's marker looks (bridge/engine/lookups.py): retries that ask together share one
request; one that asks while a request runs waits for the next, never for an answer begun
before it asked; a failure is every asker's; a cancelled sender leaves its batch to the next."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import UTC, datetime, timedelta

import pytest

from bridge.engine.lookups import MarkerLookups
from connectors.base import CREATION_MARGIN, RemoteTask, Retryable, created_before


class _Platform:
    """A connector's `find_by_markers` over a scope's descriptions, each request held until
    `release` is set (a listing that takes a while), and recorded."""

    name = "listing-only"

    def __init__(self, descriptions: dict[str, str]) -> None:
        self.descriptions = descriptions  # remote id -> description
        self.requests: list[tuple[str, list[str]]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail: Exception | None = None
        self.times: list[datetime | None] = []  # each request's created_after

    async def find_by_markers(
        self, scope: str, markers: Collection[str], *, created_after: datetime | None = None
    ) -> dict[str, RemoteTask]:
        self.requests.append((scope, list(markers)))
        self.times.append(created_after)
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return {
            m: RemoteTask(remote_id=rid, scope=scope, values={})
            for m in markers
            for rid, text in self.descriptions.items()
            if m in text
        }


def _found(task: RemoteTask | None) -> str | None:
    return None if task is None else task.remote_id


async def test_looks_asked_together_share_one_request() -> None:
    platform = _Platform({"7": "a task [m1]", "9": "[m3] another"})
    lookups = MarkerLookups()
    answers = await asyncio.gather(*(lookups.find(platform, "p", m) for m in ("[m1]", "[m2]", "[m3]")))  # type: ignore[arg-type]
    assert [_found(a) for a in answers] == ["7", None, "9"]
    assert platform.requests == [("p", ["[m1]", "[m2]", "[m3]"])]


async def test_a_look_asked_while_a_request_runs_waits_for_the_next() -> None:
    platform = _Platform({"7": "[m1]", "8": "[m2]"})
    platform.release.clear()
    lookups = MarkerLookups()
    first = asyncio.create_task(lookups.find(platform, "p", "[m1]"))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert platform.requests == [("p", ["[m1]"])]  # running
    # Asked now: the running request began before it asked, so its answer is not this one's.
    later = [asyncio.create_task(lookups.find(platform, "p", m)) for m in ("[m2]", "[m3]")]  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert len(platform.requests) == 1  # waiting for the turn, not sent beside it
    platform.release.set()
    assert _found(await first) == "7"
    assert [_found(await t) for t in later] == ["8", None]
    assert platform.requests == [("p", ["[m1]"]), ("p", ["[m2]", "[m3]"])]


async def test_scopes_and_connectors_look_apart() -> None:
    platform = _Platform({"7": "[m1]"})
    platform.release.clear()
    lookups = MarkerLookups()
    looks = [asyncio.create_task(lookups.find(platform, scope, "[m1]")) for scope in ("p", "q")]  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert sorted(scope for scope, _ in platform.requests) == ["p", "q"]  # side by side
    platform.release.set()
    assert [_found(await t) for t in looks] == ["7", "7"]


async def test_a_failed_request_fails_every_look_of_it_and_the_next_asks_again() -> None:
    platform = _Platform({"7": "[m1]"})
    platform.fail = Retryable("503 from the listing", connector="listing-only")
    lookups = MarkerLookups()
    results = await asyncio.gather(
        *(lookups.find(platform, "p", m) for m in ("[m1]", "[m2]")),  # type: ignore[arg-type]
        return_exceptions=True,
    )
    assert all(isinstance(r, Retryable) for r in results), results
    assert len(platform.requests) == 1
    platform.fail = None
    assert _found(await lookups.find(platform, "p", "[m1]")) == "7"  # type: ignore[arg-type]
    assert len(platform.requests) == 2


async def test_a_cancelled_sender_leaves_its_batch_to_the_next_of_it() -> None:
    platform = _Platform({"7": "[m1]", "8": "[m2]"})
    platform.release.clear()
    lookups = MarkerLookups()
    sender = asyncio.create_task(lookups.find(platform, "p", "[m1]"))  # type: ignore[arg-type]
    other = asyncio.create_task(lookups.find(platform, "p", "[m2]"))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert platform.requests == [("p", ["[m1]", "[m2]"])]
    sender.cancel()  # a worker stopping: its request's answer never came
    with pytest.raises(asyncio.CancelledError):
        await sender
    platform.release.set()
    assert _found(await other) == "8"  # looked for again, not left waiting
    assert platform.requests == [("p", ["[m1]", "[m2]"]), ("p", ["[m1]", "[m2]"])]


T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


async def test_a_batch_asks_from_its_earliest_look() -> None:
    platform = _Platform({"7": "[m1]"})
    lookups = MarkerLookups()
    times = [T0 + timedelta(seconds=30), T0, T0 + timedelta(seconds=5)]
    await asyncio.gather(
        *(lookups.find(platform, "p", f"[m{i}]", created_after=t) for i, t in enumerate(times))  # type: ignore[arg-type]
    )
    assert platform.times == [T0]
    # A look that gives no time makes its batch unbounded, whichever order they join in.
    await asyncio.gather(
        lookups.find(platform, "p", "[m1]", created_after=T0),  # type: ignore[arg-type]
        lookups.find(platform, "p", "[m2]"),  # type: ignore[arg-type]
        lookups.find(platform, "p", "[m3]", created_after=T0),  # type: ignore[arg-type]
    )
    assert platform.times == [T0, None]


@pytest.mark.parametrize(
    ("created", "bound", "before"),
    [
        (T0 - CREATION_MARGIN - timedelta(seconds=1), T0, True),  # surely older, clocks allowed for
        (T0 - CREATION_MARGIN, T0, False),  # inside the margin: it may be ours
        (T0 + timedelta(seconds=1), T0, False),
        ((T0 - timedelta(hours=2)).isoformat().replace("+00:00", "Z"), T0, True),  # as a platform writes it
        ((T0 - timedelta(hours=2)).replace(tzinfo=None), T0, True),  # naive is UTC
        (None, T0, False),  # undated: may not be passed by
        ("yesterday-ish", T0, False),  # unreadable: nor this
        (T0 - timedelta(days=9), None, False),  # no bound
    ],
)
def test_created_before(created: object, bound: datetime | None, before: bool) -> None:
    assert created_before(created, bound) is before  # type: ignore[arg-type]
