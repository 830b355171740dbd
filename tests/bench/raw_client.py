"""The raw baseline: a minimal httpx program making exactly the HTTP calls the benchmarks compare
the daemon with, and nothing else (no store, no engine). Runs as its own process, like the daemon.

Reads one JSON spec on stdin and prints one JSON object on stdout.

mode "propagate": at `rate` per second (open loop) for `count` propagations: GET the source task,
then write the four mirrors (concurrently, as the daemon's outbox workers would). Reports, per
propagation, its start on CLOCK_MONOTONIC (the same clock as the benchmark process, so the fakes'
own stamps of the writes can be matched to it) and its client-side duration.

mode "create": `items` creates (method, url, body, platform), run with `concurrency` workers from
one queue, like the daemon's outbox (WorkerSettings.concurrency = 8). Reports the wall time.

mode "edits": the propagation benchmark's load, people's edits on the source platform: `items`
(url, body) PUT at `rate` per second (open loop, none waiting for another's answer) through one
client at `base_url`; each one's dispatch and answer on CLOCK_MONOTONIC. From a process of its
own, as people's edits come from outside the platform: sent from the benchmark process (by a
pool of eight threads, so at most eight at once), they took the interpreter lock the five
fakes share.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from connectors._aiohttp import Transport


def _clients(spec: dict[str, Any]) -> dict[str, httpx.AsyncClient]:
    """httpx over the daemon's own transport (aiohttp's, `connectors._aiohttp`), so that the floor
    is the same HTTP stack doing only the calls; `"transport": "httpcore"` in the spec measures
    httpx's default one instead."""
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)

    def transport() -> httpx.AsyncBaseTransport | None:
        return None if spec.get("transport") == "httpcore" else Transport("http://127.0.0.1", limits=limits)

    return {
        name: httpx.AsyncClient(headers=headers, timeout=30, limits=limits, transport=transport())
        for name, headers in spec["headers"].items()
    }


async def _open_loop(
    items: list[dict[str, Any]],
    rate: float,
    one: Callable[[int, dict[str, Any]], Awaitable[None]],
    *,
    lead: float,
) -> float:
    """`one(k, item)` for each item, the k-th started `lead + k / rate` seconds from now
    whatever the earlier ones' answers (open loop), then all awaited. Returns the start."""
    start = time.monotonic() + lead
    tasks = []
    for k, item in enumerate(items):
        delay = start + k / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(k, item)))
    await asyncio.gather(*tasks)
    return start


async def propagate(spec: dict[str, Any]) -> dict[str, Any]:
    cpu0 = time.process_time()
    clients = _clients(spec)
    rate, items = float(spec["rate"]), spec["items"]
    results: list[dict[str, Any]] = []
    errors: list[str] = []

    async def one(k: int, item: dict[str, Any]) -> None:
        t0 = time.monotonic()
        try:
            src = item["read"]
            r = await clients[src["platform"]].get(src["url"])
            r.raise_for_status()
            writes = [
                clients[w["platform"]].request(w["method"], w["url"], json=w["body"]) for w in item["writes"]
            ]
            for resp in await asyncio.gather(*writes):
                resp.raise_for_status()
        except httpx.HTTPError as exc:
            errors.append(f"{k}: {exc!r}")
            return
        results.append({"k": k, "t0": t0, "seconds": time.monotonic() - t0})

    start = await _open_loop(items, rate, one, lead=0.2)
    for c in clients.values():
        await c.aclose()
    # Its CPU for the whole run (start-up excluded): the floor the daemon's CPU per write is set against.
    return {
        "results": results,
        "errors": errors,
        "sent_over": time.monotonic() - start,
        "cpu_s": time.process_time() - cpu0,
    }


async def create(spec: dict[str, Any]) -> dict[str, Any]:
    clients = _clients(spec)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for item in spec["items"]:
        queue.put_nowait(item)
    errors: list[str] = []
    done = 0

    async def worker() -> None:
        nonlocal done
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                r = await clients[item["platform"]].request(item["method"], item["url"], json=item["body"])
                r.raise_for_status()
                done += 1
            except httpx.HTTPError as exc:
                errors.append(repr(exc))

    t0, cpu0 = time.monotonic(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(int(spec["concurrency"]))))
    seconds, cpu = time.monotonic() - t0, time.process_time() - cpu0
    for c in clients.values():
        await c.aclose()
    # Its CPU over the creates: what the same requests cost without anything else to do.
    return {"seconds": seconds, "done": done, "errors": errors[:20], "error_count": len(errors), "cpu_s": cpu}


async def load(spec: dict[str, Any]) -> dict[str, Any]:
    """GET `urls` (round robin) with `concurrency` workers for `seconds` (or `count` requests in
    all); per request its latency. The unified API benchmark's load generator."""
    headers = spec.get("headers") or {}
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    urls: list[str] = spec["urls"]
    latencies: list[float] = []
    errors: list[str] = []
    statuses: dict[int, int] = {}
    stop_at = time.monotonic() + float(spec.get("seconds", 1e9))
    budget = int(spec.get("count", 10**9))
    nxt = 0
    async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal nxt
            while time.monotonic() < stop_at and nxt < budget:
                url = urls[nxt % len(urls)]
                nxt += 1
                t0 = time.monotonic()
                try:
                    r = await client.get(url)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {url}")
                        continue
                    latencies.append(time.monotonic() - t0)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(int(spec["concurrency"]))))
        seconds = time.monotonic() - t0
    return {
        "seconds": seconds,
        "latencies": latencies,
        "statuses": statuses,
        "errors": errors[:10],
        "error_count": len(errors),
    }


async def loads(spec: dict[str, Any]) -> dict[str, Any]:
    """Several `load` runs one after the other (one process start for all of them)."""
    return {"runs": [await load({**spec, **run}) for run in spec["runs"]]}


async def edits(spec: dict[str, Any]) -> dict[str, Any]:
    sent: list[dict[str, Any]] = []
    errors: list[str] = []
    async with _clients({"headers": {"source": spec["headers"]}})["source"] as client:
        rate, items, base = float(spec["rate"]), spec["items"], spec["base_url"]

        async def one(j: int, item: dict[str, Any]) -> None:
            t_send = time.monotonic()
            try:
                r = await client.put(base + item["url"], json=item["body"])
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
            sent.append({"j": j, "t_send": t_send, "t_ack": time.monotonic()})

        await _open_loop(items, rate, one, lead=0.1)
    return {"results": sent, "errors": errors[:20], "error_count": len(errors)}


def main() -> None:
    spec = json.loads(sys.stdin.read())
    run = {"propagate": propagate, "create": create, "load": load, "loads": loads, "edits": edits}[
        spec["mode"]
    ]
    print(json.dumps(asyncio.run(run(spec))), flush=True)


if __name__ == "__main__":
    main()
