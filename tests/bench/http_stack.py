"""http_stack: the CPU one HTTP exchange costs the daemon's own stack, client and server side.

Every mirror write is two or three HTTP exchanges of the daemon's (the read before the write,
the write, and the echo the platform delivers back as a webhook), so their cost is a floor
under the CPU per write that no change to the sync core moves. This measures it alone: a
server process runs uvicorn with a minimal ASGI app (it reads the body and answers a small JSON
object, its length declared as the platforms' fakes declare theirs), a client process makes N
PUTs with a JSON body at concurrency 8 (through httpx.AsyncClient over httpx's own transport and
over httpx-aiohttp's, and through the connectors' HttpClient over the daemon's transport), and
each side's CPU comes from its own accounting (the client's `time.process_time`, the server's
/proc/<pid>/stat), divided by N. Run for the server's HTTP parser, h11 and httptools (the
daemon's, bridge/daemon.py); with uvloop installed, also on uvloop's event loop (it showed no
gain here on 2026-12-02, so the daemon does not use it).

By name only (`python -m tests.bench http_stack`), not part of `all`; `--quick` (the suite's smoke
test) measures each server parser against the daemon's client only.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

from connectors.fakekit import free_port
from tests.bench.common import log

CONCURRENCY = 8
BODY = {"title": "x" * 50, "status": "in_progress"}
ANSWER = b'{"id": "t-1", "title": "hello", "status": "todo", "updated_at": "2026-12-02T00:00:00Z"}'


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


def _serve(port: int, http: str, loop: str) -> None:
    import uvicorn

    uvicorn.run(_app, host="127.0.0.1", port=port, log_level="warning", http=http, loop=loop)


def _transport(name: str) -> Any:
    if name == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport()
    return None  # httpx's own (httpcore, h11)


async def _timed(put: Any, n: int) -> dict[str, float]:
    """`n` calls of `put` (one PUT, its answer parsed) at CONCURRENCY, after 200 to warm up."""
    for _ in range(200):  # warm: connections open, code paths imported
        await put()
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with sem:
            await put()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}


async def _daemon_client(port: int, n: int) -> dict[str, float]:
    """The same PUTs through the connectors' HttpClient: the daemon's whole client layer."""
    from bridge.mapping import PlatformMapping
    from connectors.base import ConnectorSettings, HttpClient, PeopleMap

    settings = ConnectorSettings(
        name="x",
        platform="x",
        base_url=f"http://127.0.0.1:{port}",
        mapping=PlatformMapping("x"),
        people=PeopleMap("x"),
        token="t0ken",
    )
    http = HttpClient(settings)

    async def put() -> None:
        (await http.request("PUT", "/t", json_body=BODY)).json()

    try:
        return await _timed(put, n)
    finally:
        await http.aclose()


async def _client(port: int, n: int, transport: str) -> dict[str, float]:
    import httpx

    if transport == "daemon":
        return await _daemon_client(port, n)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", transport=_transport(transport)) as c:

        async def put() -> None:
            (await c.put("/t", json=BODY)).json()

        return await _timed(put, n)


def _run_client(port: int, n: int, loop: str, transport: str) -> dict[str, float]:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(_client(port, n, transport))  # type: ignore[no-any-return]
    return asyncio.run(_client(port, n, transport))


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _measure(
    server: tuple[str, str], client_loop: str, n: int, transport: str = "httpcore"
) -> dict[str, Any]:
    port = free_port()
    http, loop = server
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.http_stack", "serve", str(port), http, loop],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"http_stack server ({http}, {loop}) did not start") from None
                time.sleep(0.05)
        before = _cpu_ticks(proc.pid)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.bench.http_stack",
                "client",
                str(port),
                str(n),
                client_loop,
                transport,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        server_s = (_cpu_ticks(proc.pid) - before) / os.sysconf("SC_CLK_TCK")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    client = json.loads(out.stdout)
    # The server's figure includes the client's 200 warm-up requests: counted in.
    return {
        "server": f"uvicorn {http} on {loop}",
        "client": (
            f"the daemon's HttpClient on {client_loop}"
            if transport == "daemon"
            else f"httpx over {transport} on {client_loop}"
        ),
        "requests": n,
        "client_cpu_us_per_request": round(client["cpu_s"] / n * 1e6),
        "server_cpu_us_per_request": round(server_s / (n + 200) * 1e6),
        "requests_per_s": round(n / client["wall_s"]),
    }


def bench_http_stack(ctx: Any) -> dict[str, Any]:
    started = ctx.started()
    n = 500 if ctx.quick else 4000
    loops = ["asyncio"]
    if importlib.util.find_spec("uvloop") is not None:
        loops.append("uvloop")
    runs = []
    # Quick (the suite's smoke test): each server parser against the daemon's client only.
    transports = [] if ctx.quick else ["httpcore"]
    if not ctx.quick and importlib.util.find_spec("httpx_aiohttp") is not None:
        transports.append("aiohttp")
    transports.append("daemon")  # connectors.base.HttpClient over the daemon's transport
    for http in ("h11", "httptools"):
        for server_loop in loops:
            for client_loop in loops:
                for transport in transports:
                    r = _measure((http, server_loop), client_loop, n, transport)
                    log(f"http_stack: {r}")
                    runs.append(r)
    params = {
        "requests_per_run": n,
        "concurrency": CONCURRENCY,
        "request": "PUT with a 70-byte JSON body; a 90-byte JSON answer, parsed",
        "processes": "server and client each their own process, on loopback",
    }
    return ctx.emit("http_stack", started, params, {"runs": runs})


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "serve":
        _serve(port, sys.argv[3], sys.argv[4])
    else:
        print(json.dumps(_run_client(port, int(sys.argv[3]), sys.argv[4], sys.argv[5])))
