"""`/docs` and the schema it reads (bridge/api/docs.py, issue 17): the bearer scheme declared on
every /api/v1 operation (an Authorize button) with the token checks as they were, a described
operation everywhere, a page that loads nothing from anywhere but the daemon, and a token typed
into it that works. The last is shown in a real browser (Debian's chromium, headless, every
address but the daemon's unreachable) where one is installed; CI installs it (.ci/run)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
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
from bridge.daemon import Daemon
from tests.browser import chromium, loopback_only
from tests.daemons import in_process, token_entry, world_fixture
from tests.world import World

READER, SCRIBE, OPS = "tb_docs_reader_0123456789", "tb_docs_scribe_0123456789", "tb_docs_ops_0123456789"
ROOT = Path(__file__).resolve().parents[2]
CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
    ".json": ("application/json",),
}


world = world_fixture(("vortask", "impactly"))  # the config's connectors; never called here


def _config(world: World, tmp: Path) -> config.Config:
    tokens = [
        token_entry("reader", READER, ["read"]),
        token_entry("scribe", SCRIBE, ["write"]),
        token_entry("ops", OPS, ["admin"]),
    ]
    return config.load(
        world.config(tmp, store_url=f"sqlite+aiosqlite:///{tmp}/docs.db", server_tokens=tokens)
    )


@pytest_asyncio.fixture
async def daemon(world: World, tmp_path: Path) -> AsyncIterator[Daemon]:
    async with in_process(_config(world, tmp_path)) as d:
        yield d


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
        async with in_process(_config(world, tmp)) as d:
            server = uvicorn.Server(
                uvicorn.Config(create_app(d), log_level="warning", lifespan="off", access_log=False)
            )
            holder["server"] = server
            started.set()
            await server.serve(sockets=[sock])

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
    executable = chromium()
    started = time.monotonic()
    with _served(world, tmp_path) as base, loopback_only(executable, tmp_path / "profile") as browser:
        spec = httpx.get(base + "/openapi.json", timeout=10).json()
        page = browser.page()
        page.navigate(base + "/docs")
        page.until("!!document.querySelector('.opblock')", "an operation rendered")
        shown = set(
            page.evaluate("[...document.querySelectorAll('.opblock-summary-path')].map(e => e.dataset.path)")
        )
        assert shown == set(spec["paths"]), set(spec["paths"]) ^ shown

        status = page.evaluate(f"({AUTHORIZE_AND_TRY})({json.dumps(READER)}, '/api/v1/connectors')")
        assert status == "200", status
        sent = [
            r["request"]
            for r in browser.of("Network.requestWillBeSent")
            if r["request"]["url"] == base + "/api/v1/connectors"
        ]
        assert [r["headers"].get("Authorization") for r in sent] == [f"Bearer {READER}"]

        requested = browser.requested()
        assert base + "/docs/static/swagger/swagger-ui-bundle.js" in requested
        elsewhere = [u for u in requested if not u.startswith((base + "/", "data:"))]
        assert elsewhere == [], elsewhere
        problems = browser.problems()
        assert problems == [], problems  # a policy violation or a script error, say
    assert time.monotonic() - started < 60  # about 10 s; far more means something waited for a timeout
