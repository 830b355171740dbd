"""ListingStream: a listing read once, whose end (ids, watermark) is known only after the last
task, and which refuses to pass off a listing cut short as a whole one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from connectors.base import Listing, ListingEnd, ListingStream, RemoteTask, chunked

END = ListingEnd(all_ids=frozenset({"1", "2"}), watermark={"since": "x"})


def task(remote_id: str) -> RemoteTask:
    return RemoteTask(remote_id=remote_id, scope="s", values={"title": remote_id})


async def source(
    *items: RemoteTask | ListingEnd, closed: list[bool] | None = None
) -> AsyncIterator[RemoteTask | ListingEnd]:
    try:
        for item in items:
            yield item
    finally:
        if closed is not None:
            closed.append(True)


async def test_the_end_is_known_once_the_tasks_are_read() -> None:
    stream = ListingStream(source(task("1"), task("2"), END))
    with pytest.raises(RuntimeError, match="once it is read to its end"):
        _ = stream.end
    assert [t.remote_id async for t in stream] == ["1", "2"]
    assert stream.end == END


async def test_a_listing_is_read_once() -> None:
    stream = ListingStream(source(task("1"), END))
    _ = [t async for t in stream]
    with pytest.raises(RuntimeError, match="read once"):
        _ = [t async for t in stream]


@pytest.mark.parametrize(
    "items, message",
    [
        ((task("1"),), "ended without its ListingEnd"),
        ((task("1"), END, task("2")), "a task after its ListingEnd"),
    ],
)
async def test_a_listing_without_its_end_in_place_is_an_error(
    items: tuple[RemoteTask | ListingEnd, ...], message: str
) -> None:
    stream = ListingStream(source(*items))
    with pytest.raises(RuntimeError, match=message):
        _ = [t async for t in stream]
    with pytest.raises(RuntimeError):
        _ = stream.end


async def test_leaving_it_half_read_closes_the_source_and_leaves_no_end() -> None:
    closed: list[bool] = []
    async with ListingStream(source(task("1"), task("2"), END, closed=closed)) as stream:
        async for _ in stream:
            break
    assert closed == [True]
    with pytest.raises(RuntimeError, match="closed"):
        _ = stream.end


async def test_collect_reads_it_whole() -> None:
    listing = await ListingStream(source(task("1"), task("2"), END)).collect()
    assert listing == Listing(all_ids=END.all_ids, watermark=END.watermark, tasks=[task("1"), task("2")])


async def test_chunked() -> None:
    async def numbers(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    assert [c async for c in chunked(numbers(5), 2)] == [[0, 1], [2, 3], [4]]
    assert [c async for c in chunked(numbers(0), 2)] == []
