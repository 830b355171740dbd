"""`/docs` and the schema it reads (bridge/api/docs.py, issue 17): the bearer scheme declared on
every /api/v1 operation (an Authorize button) with the token checks as they were, a described
operation everywhere, a page that loads nothing from anywhere but the daemon, and a token typed
into it that works. The last is shown in a real browser (Debian's chromium, headless, every
address but the daemon's unreachable) where one is installed; CI installs it (.ci/run)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import pytest_asyncio
import uvicorn

from bridge import config
from bridge.api import docs
from bridge.api.app import create_app
from bridge.daemon import Daemon, DaemonOptions
from tests.world import World

READER, SCRIBE, OPS = "tb_docs_reader_0123456789", "tb_docs_scribe_0123456789", "tb_docs_ops_0123456789"
ROOT = Path(__file__).resolve().parents[2]
CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
    ".json": ("application/json",),
}


def _token(name: str, token: str, scopes: list[str]) -> dict[str, Any]:
    return {"name": name, "sha256": hashlib.sha256(token.encode()).hexdigest(), "scopes": scopes}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World(("vortask", "impactly")).start()  # the config's connectors; never called here
    yield w
    w.stop()


def _config(world: World, tmp: Path) -> config.Config:
    tokens = [
        _token("reader", READER, ["read"]),
        _token("scribe", SCRIBE, ["write"]),
        _token("ops", OPS, ["admin"]),
    ]
    return config.load(
        world.config(tmp, store_url=f"sqlite+aiosqlite:///{tmp}/docs.db", server_tokens=tokens)
    )


@pytest_asyncio.fixture
async def daemon(world: World, tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(_config(world, tmp_path), options=DaemonOptions(poll=False, serve=False))
    await d.store.migrate()
    yield d
    for conn in d.ctx.connectors.values():
        await conn.aclose()
    await d.store.close()


@pytest_asyncio.fixture
async def client(daemon: Daemon) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(daemon))
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as c:
        yield c


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in {"get", "put", "post", "patch", "delete", "head", "options"}:
                yield path, method, op


# -- the schema --------------------------------------------------------------------------------------


async def test_the_schema_declares_the_bearer_scheme_on_every_api_operation(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    scheme = spec["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "server.tokens" in scheme["description"]
    ops = list(_operations(spec))
    assert len([op for path, _, op in ops if path.startswith("/api/v1/")]) >= 19
    for path, method, op in ops:
        if path.startswith("/api/v1/"):
            assert op.get("security") == [{"bearer": []}], (method, path)
        else:
            assert not op.get("security"), (method, path)  # nothing else takes a token
    # Health, metrics, webhooks and the docs page stay out of the schema, token-free.
    assert not {p for p in spec["paths"] if p in ("/healthz", "/readyz", "/metrics", "/docs")}
    assert not {p for p in spec["paths"] if p.startswith("/webhooks/")}


async def test_every_api_operation_is_described(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path, method, op in _operations(spec):
        description = op.get("description", "")
        assert len(description) > 60, (method, path, description)
        assert "\f" not in description
    create = spec["components"]["schemas"]["TaskCreate"]
    assert create["examples"][0]["route"] == "main"  # the route every config of the tests has


@pytest.mark.parametrize(
    ("authorization", "status", "detail"),
    [
        (None, 401, "a bearer token is required"),
        ("Basic b3BzOnNlY3JldA==", 401, "a bearer token is required"),
        ("Bearer", 401, "a bearer token is required"),
        ("Bearer    ", 401, "unknown token"),  # a token of spaces is a token, and unknown
        ("Bearer tb_not_a_token", 401, "unknown token"),
        (f"bearer {READER}", 200, None),
        (f"Bearer  {READER} ", 200, None),
        (f"Bearer {SCRIBE}", 403, "this token lacks the 'read' scope"),
    ],
)
async def test_the_declared_scheme_leaves_the_token_checks_as_they_were(
    client: httpx.AsyncClient, authorization: str | None, status: int, detail: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    r = await client.get("/api/v1/conflicts", headers=headers)
    assert r.status_code == status, r.text
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"
    if detail:
        assert r.json() == {"detail": detail}


async def test_the_admin_routes_check_their_scope_as_before(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/outbox", headers={"Authorization": f"Bearer {READER}"})
    assert (r.status_code, r.json()) == (403, {"detail": "this token lacks the 'admin' scope"})
    r = await client.get("/api/v1/outbox", headers={"Authorization": f"Bearer {OPS}"})
    assert r.status_code == 200, r.text


# -- the page ----------------------------------------------------------------------------------------


class _Assets(HTMLParser):
    """Every URL a page names in src= or href=, and its data-openapi-url."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.openapi: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.urls.append(value)
            if name == "data-openapi-url":
                self.openapi = value


def _assets(page: str) -> _Assets:
    parser = _Assets()
    parser.feed(page)
    return parser


async def _check_page(client: httpx.AsyncClient, page_url: str) -> _Assets:
    r = await client.get(page_url)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    found = _assets(r.text)
    assert len(found.urls) >= 4, found.urls  # the stylesheet, the icon, Swagger UI, its starter
    base = str(r.url)
    for url in found.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{url}: not on the daemon"
        assert url.startswith("/"), url  # absolute paths: right whatever the page's own URL
        asset = await client.get(urljoin(base, url))
        assert asset.status_code == 200, url
        suffix = PurePosixPath(parts.path).suffix
        assert asset.headers["content-type"].split(";")[0] in CONTENT_TYPES[suffix], (url, asset.headers)
        assert asset.content, url
    assert found.openapi is not None
    spec = await client.get(urljoin(base, found.openapi))
    assert spec.status_code == 200 and "/api/v1/tasks" in spec.json()["paths"]
    return found


async def test_docs_is_served_from_the_package_with_nothing_from_elsewhere(
    client: httpx.AsyncClient,
) -> None:
    found = await _check_page(client, "/docs")
    assert f"{docs.STATIC_PATH}/swagger/swagger-ui-bundle.js" in found.urls
    assert f"{docs.STATIC_PATH}/docs.js" in found.urls
    assert (await client.get("/redoc")).status_code == 404  # FastAPI's ReDoc page came from a CDN
    assert (await client.get("/docs/static/../app.py")).status_code == 404


async def test_docs_behind_a_path_prefix_names_its_assets_under_it(daemon: Daemon) -> None:
    transport = httpx.ASGITransport(app=create_app(daemon), root_path="/taskbridge")
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as c:
        found = await _check_page(c, "/taskbridge/docs")
    assert all(url.startswith("/taskbridge/") for url in found.urls), found.urls
    assert found.openapi == "/taskbridge/openapi.json"


async def test_a_token_sent_as_the_page_sends_it_is_taken(client: httpx.AsyncClient) -> None:
    # Swagger UI's Try it out calls the schema's server (none declared: the page's own origin) with
    # the credentials its scheme describes: for http/bearer, `Authorization: Bearer <token>`.
    page = await client.get("/docs")
    spec = (await client.get(_assets(page.text).openapi or "")).json()
    assert "servers" not in spec or spec["servers"] == [{"url": "/"}]
    scheme = spec["components"]["securitySchemes"]["bearer"]
    header = {"Authorization": f"{scheme['scheme'].capitalize()} {READER}"}
    url = urljoin(str(page.url), "/api/v1/connectors")
    assert (await client.get(url)).status_code == 401
    r = await client.get(url, headers=header)
    assert r.status_code == 200 and {c["name"] for c in r.json()} == {"vortask", "impactly"}


def test_the_vendored_assets_keep_their_licence_and_ship_in_the_wheel() -> None:
    swagger = ROOT / "bridge/api/static/swagger"
    for name in ("LICENSE", "NOTICE", "swagger-ui-bundle.js.LICENSE.txt"):
        assert (swagger / name).is_file(), name
    assert "Apache License" in (swagger / "LICENSE").read_text()
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = patterns["bridge"]
    files = [p.relative_to(ROOT / "bridge") for p in (ROOT / "bridge/api/static").rglob("*") if p.is_file()]
    assert len(files) >= 7
    for rel in files:
        path = PurePosixPath(rel.as_posix())
        # setuptools globs: a `*` stays within one directory.
        assert any(len(PurePosixPath(p).parts) == len(path.parts) and path.match(p) for p in shipped), (
            f"bridge/{path} is not in [tool.setuptools.package-data]"
        )


# -- in a browser, with nowhere to go but the daemon -----------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
    pytest.skip("no chromium installed (apt-get install chromium)")


@contextlib.contextmanager
def _served(world: World, tmp: Path) -> Iterator[str]:
    """The daemon's app over real HTTP on loopback (its own event loop, on a thread)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # a request sent before the server runs waits for it rather than failing
    port = sock.getsockname()[1]
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        d = Daemon(_config(world, tmp), options=DaemonOptions(poll=False, serve=False))
        await d.store.migrate()
        server = uvicorn.Server(
            uvicorn.Config(create_app(d), log_level="warning", lifespan="off", access_log=False)
        )
        holder["server"] = server
        started.set()
        try:
            await server.serve(sockets=[sock])
        finally:
            for conn in d.ctx.connectors.values():
                await conn.aclose()
            await d.store.close()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported by the waiting test
            holder["error"] = exc
            started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(30), "the daemon's store did not open"
    assert "error" not in holder, holder.get("error")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        holder["server"].should_exit = True
        thread.join(10)
        sock.close()


class _Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
    commands in on fd 3, answers out on fd 4, each a JSON message ended by a NUL)."""

    def __init__(self, chromium: str, profile: Path, args: list[str]) -> None:
        to_chromium, commands = os.pipe()
        answers, from_chromium = os.pipe()
        # Above the descriptors bash redirects to, so that no redirection overwrites its source.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chromium, from_chromium)]
        os.close(to_chromium)
        os.close(from_chromium)
        argv = [chromium, "--headless=new", "--remote-debugging-pipe", f"--user-data-dir={profile}", *args]
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{ends[0]} 4>&{ends[1]} {ends[0]}<&- {ends[1]}>&-', "bash", *argv],
            pass_fds=ends,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its renderers and helpers in a group of their own, ended with it
        )
        for fd in ends:
            os.close(fd)
        self._commands = os.fdopen(commands, "wb", buffering=0)
        self._answers_in = os.fdopen(answers, "rb", buffering=0)
        self._lock = threading.Lock()
        self._last = 0
        self._waiting: dict[int, queue.Queue[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        pending = b""
        while chunk := self._answers_in.read(65536):
            pending += chunk
            *messages, pending = pending.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                with self._lock:
                    waiter = self._waiting.pop(message["id"], None) if "id" in message else None
                    if waiter is None:
                        self.events.append(message)
                if waiter is not None:
                    waiter.put(message)

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 15,
    ) -> dict[str, Any]:
        answer: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._last += 1
            ident = self._last
            self._waiting[ident] = answer
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._commands.write(json.dumps(message).encode() + b"\0")
        try:
            got = answer.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"chromium did not answer {method} within {timeout} s") from None
        assert "error" not in got, (method, got["error"])
        return dict(got["result"])

    def of(self, method: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e["params"] for e in self.events if e["method"] == method]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout=5)
        with contextlib.suppress(OSError):
            self._commands.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group started for it, and nothing else
        self.proc.wait()


# Run in the page: authorize with a token through the dialog, then try one operation out. Each
# step waits for what Swagger UI shows next (10 s at most).
AUTHORIZE_AND_TRY = r"""
(async (token, path) => {
  const until = async (what, find) => {
    for (let i = 0; i < 200; i++) {
      const found = find();
      if (found) return found;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error("the page never showed " + what);
  };
  (await until("the Authorize button", () => document.querySelector(".auth-wrapper .btn.authorize"))).click();
  const input = await until("the token input", () => document.querySelector(".modal-ux input#auth-bearer-value"));
  Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, "value").set.call(input, token);
  input.dispatchEvent(new Event("input", { bubbles: true }));
  document.querySelector(".modal-ux .auth-btn-wrapper .btn.authorize").click();
  (await until("the dialog's Close", () => document.querySelector(".modal-ux .auth-btn-wrapper .btn-done"))).click();
  await until("the closed padlock", () => document.querySelector(".auth-wrapper .btn.authorize.locked"));
  const summary = await until("the operation", () =>
    document.querySelector(`.opblock-get .opblock-summary-path[data-path="${path}"]`));
  const op = summary.closest(".opblock");
  op.querySelector(".opblock-summary-control").click();
  (await until("Try it out", () => op.querySelector(".try-out__btn"))).click();
  (await until("Execute", () => op.querySelector(".btn.execute"))).click();
  const status = await until("the response", () =>
    op.querySelector(".live-responses-table tr.response .response-col_status"));
  return status.textContent.trim();
})
"""


def test_the_docs_page_works_in_a_browser_that_can_reach_only_the_daemon(
    world: World, tmp_path: Path
) -> None:
    chromium = _chromium()
    # Every request the browser would send off the host goes to this "proxy", which refuses it:
    # a bound port that never listens. Loopback is reached directly (Chromium's default).
    refuser = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    refuser.bind(("127.0.0.1", 0))
    started = time.monotonic()
    with _served(world, tmp_path) as base, contextlib.closing(refuser):
        spec = httpx.get(base + "/openapi.json", timeout=10).json()
        browser = _Browser(
            chromium,
            tmp_path / "profile",
            [
                "--no-sandbox",  # CI runs as root
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-extensions",
                "--disable-sync",
                f"--proxy-server=http://127.0.0.1:{refuser.getsockname()[1]}",
            ],
        )
        try:
            target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            page = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Network", "Runtime", "Log", "Page"):
                browser.call(f"{domain}.enable", session=page)

            def evaluate(expression: str) -> Any:
                result = browser.call(
                    "Runtime.evaluate",
                    {"expression": expression, "returnByValue": True, "awaitPromise": True},
                    session=page,
                )
                assert "exceptionDetails" not in result, json.dumps(result["exceptionDetails"])[:2000]
                return result["result"].get("value")

            browser.call("Page.navigate", {"url": base + "/docs"}, session=page)
            evaluate(
                "new Promise((resolve, reject) => { let n = 0; const t = setInterval(() => {"
                " if (document.querySelector('.opblock')) { clearInterval(t); resolve(true); }"
                " else if (++n > 200) { clearInterval(t); reject(new Error('no operation rendered')); }"
                " }, 50); })"
            )
            shown = set(
                evaluate("[...document.querySelectorAll('.opblock-summary-path')].map(e => e.dataset.path)")
            )
            assert shown == set(spec["paths"]), set(spec["paths"]) ^ shown

            status = evaluate(f"({AUTHORIZE_AND_TRY})({json.dumps(READER)}, '/api/v1/connectors')")
            assert status == "200", status
            sent = [
                r["request"]
                for r in browser.of("Network.requestWillBeSent")
                if r["request"]["url"] == base + "/api/v1/connectors"
            ]
            assert [r["headers"].get("Authorization") for r in sent] == [f"Bearer {READER}"]

            requested = [r["request"]["url"] for r in browser.of("Network.requestWillBeSent")]
            assert base + "/docs/static/swagger/swagger-ui-bundle.js" in requested
            elsewhere = [u for u in requested if not u.startswith((base + "/", "data:"))]
            assert elsewhere == [], elsewhere
            problems = [e["entry"] for e in browser.of("Log.entryAdded") if e["entry"]["level"] == "error"]
            problems += browser.of("Runtime.exceptionThrown")
            assert problems == [], problems  # a policy violation or a script error, say
        finally:
            browser.close()
    assert time.monotonic() - started < 60  # about 10 s; far more means something waited for a timeout
