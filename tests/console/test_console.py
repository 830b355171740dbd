"""`/console` (bridge/console, issue 18) over real HTTP against the daemon as a process with the five
fakes: token sign-in and its cookie, pages behind the session, CSRF on every POST, scope refusals
shown as messages, escaping, assets from the daemon only; then a real headless Chromium that signs
in through the form, sees the connectors healthy, and resolves a real conflict (two platforms
edited differently under `conflict: manual`) from the page, the value reaching every fake."""

from __future__ import annotations

import contextlib
import html
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import pytest_asyncio

from bridge import config
from bridge.api.app import create_app
from bridge.daemon import Daemon
from tests import ops
from tests.browser import chromium, loopback_only
from tests.daemons import daemon_fixture, in_process, store_url, token_entry, world_fixture
from tests.e2e.conftest import DaemonProcess, wait_until
from tests.world import World

READ, WRITE, ADMIN = "tb_con_read_0123456789", "tb_con_write_0123456789", "tb_con_admin_0123456789"
ALL = ("impactly", "vortask", "agentkanban", "runs", "squads")
ROOT = Path(__file__).resolve().parents[2]
TOKENS = [
    token_entry("reader", READ, ["read"]),
    token_entry("writer", WRITE, ["read", "write"]),
    token_entry("ops", ADMIN, ["admin"]),
]


world = world_fixture(ALL)
# Conflicts held for a person; polls at start, then only when a test asks (deterministic edits).
daemon = daemon_fixture(TOKENS, poll_interval="60s", route={"conflict": "manual"})


def api(d: DaemonProcess, method: str, path: str, token: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, d.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30, **kw)


def make(d: DaemonProcess, title: str) -> dict[str, Any]:
    r = api(d, "POST", "/api/v1/tasks", WRITE, json={"route": "main", "title": title})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _store(d: DaemonProcess, code: str, *args: str) -> str:
    """Run `code` (an async main(store, *args)) against the daemon's store in another process, as
    tests/api/test_api.py seeds a conflict; returns what it prints."""
    script = (
        "import asyncio, sys\n"
        "from datetime import UTC, datetime\n"
        "from sqlalchemy import select\n"
        "from bridge.store import Store\n"
        "from bridge.store.tables import ConflictRow, LinkRow, OutboxRow\n"
        f"{code}\n"
        "async def run():\n"
        "    s = Store.open(sys.argv[1])\n"
        "    try:\n"
        "        await main(s, *sys.argv[2:])\n"
        "    finally:\n"
        "        await s.close()\n"
        "asyncio.run(run())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, store_url(d), *args], check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


SEED_CONFLICT = """
async def main(s, task_id, title, other):
    async with s.transaction() as t:
        row = ConflictRow(task_id=task_id, route='main', field='title', state='open',
                          candidates={'bridge': title, 'squads': other}, created_at=datetime.now(UTC))
        t.add(row)
        await t.flush()
        print(row.id)
"""

SEED_PARKED = """
async def main(s, task_id, connector):
    async with s.transaction() as t:
        link = await t.scalar(select(LinkRow).where(LinkRow.task_id == task_id, LinkRow.connector == connector))
        now = datetime.now(UTC)
        row = OutboxRow(task_id=task_id, link_id=link.id, route='main', connector=connector, op='update',
                        payload={}, state='parked', attempts=3, next_attempt_at=now,
                        last_error=connector + ': HTTP 422: refused <b>here</b>', observed_at=now,
                        created_at=now, done_at=now)
        t.add(row)
        await t.flush()
        print(row.id)
"""


def seed_conflict(d: DaemonProcess, task: dict[str, Any], other: str) -> int:
    return int(_store(d, SEED_CONFLICT, task["id"], task["title"], other))


def linked(d: DaemonProcess, task_id: str) -> dict[str, Any]:
    def check() -> Any:
        t = api(d, "GET", f"/api/v1/tasks/{task_id}", READ).json()
        return t if sum(lk["state"] == "active" for lk in t["links"]) == len(ALL) else None

    return dict(wait_until(check, timeout=30, what="a copy on every platform"))


def seed_parked(d: DaemonProcess, task_id: str, connector: str) -> int:
    return int(_store(d, SEED_PARKED, task_id, connector))


def op_state(d: DaemonProcess, op_id: int) -> str | None:
    ops_ = api(d, "GET", "/api/v1/outbox?state=all&limit=1000", ADMIN).json()["operations"]
    return next((o["state"] for o in ops_ if o["id"] == op_id), None)


def conflict_state(d: DaemonProcess, conflict_id: int) -> str:
    every = api(d, "GET", "/api/v1/conflicts?state=all&limit=1000", READ).json()
    return str(next(c["state"] for c in every if c["id"] == conflict_id))


# -- the browser's side, in plain HTTP ------------------------------------------------------------------


def browser_client(d: DaemonProcess) -> httpx.Client:
    return httpx.Client(base_url=d.url, timeout=30, follow_redirects=False)


def sign_in(c: httpx.Client, token: str) -> httpx.Response:
    form = c.get("/console/login")
    assert form.status_code == 200, form.text
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
    assert nonce is not None
    return c.post("/console/login", data={"nonce": nonce.group(1), "token": token})


@contextlib.contextmanager
def signed_in(d: DaemonProcess, token: str) -> Iterator[httpx.Client]:
    with browser_client(d) as c:
        r = sign_in(c, token)
        assert (r.status_code, r.headers["location"]) == (303, "/console"), r.text
        yield c


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, "no form on the page"
    return found.group(1)


def flashes(page: str) -> list[str]:
    return [
        html.unescape(re.sub(r"<[^>]+>", "", m))
        for m in re.findall(r'<div class="flash [a-z]+"[^>]*>(.*?)</div>', page)
    ]


def post_back(c: httpx.Client, path: str, data: dict[str, str]) -> httpx.Response:
    """A console POST, and the page it redirects to (POST/redirect/GET)."""
    r = c.post(path, data=data)
    assert r.status_code == 303, (r.status_code, r.text[:500])
    page = c.get(r.headers["location"].split("#")[0])
    assert page.status_code == 200
    return page


def set_cookies(r: httpx.Response) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in r.headers.get_list("set-cookie")}


# -- signing in ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", "nope", READ + "x", "tb_con_read_0123456789\u00e9", "a\tb"])
def test_sign_in_is_refused_with_a_bad_token(daemon: DaemonProcess, token: str) -> None:
    with browser_client(daemon) as c:
        r = sign_in(c, token)
        assert r.status_code == 401 and "Unknown token" in r.text
        assert "tb_console" not in set_cookies(r)
        assert c.get("/console").status_code == 303  # still no session


def test_sign_in_needs_the_form_this_console_served(daemon: DaemonProcess) -> None:
    # A form posted from elsewhere carries no nonce cookie: refused even with a good token.
    with browser_client(daemon) as c:
        r = c.post("/console/login", data={"nonce": "forged", "token": ADMIN})
        assert r.status_code == 403 and "tb_console" not in set_cookies(r)
        c.get("/console/login")  # the nonce cookie, without its value in the form
        r = c.post("/console/login", data={"nonce": "forged", "token": ADMIN})
        assert r.status_code == 403 and "tb_console" not in set_cookies(r)


def test_the_session_cookie_holds_an_opaque_id_and_no_token(daemon: DaemonProcess) -> None:
    with browser_client(daemon) as c:
        r = sign_in(c, READ)
        assert r.status_code == 303 and r.headers["location"] == "/console"
        cookie = set_cookies(r)["tb_console"]
        attrs = [a.strip().lower() for a in cookie.split(";")]
        assert "httponly" in attrs and "samesite=strict" in attrs and "path=/console" in attrs
        assert "secure" not in attrs  # plain http here; https below
        value = cookie.split(";")[0].split("=", 1)[1]
        assert len(value) >= 40 and READ not in value and "reader" not in value
        assert READ not in json.dumps(dict(r.headers))
        page = c.get("/console")
        assert page.status_code == 200 and "signed in as <b>reader</b> (read)" in page.text
        assert READ not in page.text
        for name, header in HEADERS_EXPECTED.items():
            assert page.headers[name] == header, name
    # Behind a TLS proxy on loopback (uvicorn takes its X-Forwarded-Proto), the cookie is Secure.
    with browser_client(daemon) as c:
        c.headers["X-Forwarded-Proto"] = "https"
        form = c.get("/console/login")
        nonce_cookie = set_cookies(form)["tb_console_login"]
        assert "secure" in [a.strip().lower() for a in nonce_cookie.split(";")]
        nonce = nonce_cookie.split(";")[0].split("=", 1)[1]  # sent back as a browser on https would
        r = c.post(
            "/console/login",
            data={"nonce": nonce, "token": READ},
            headers={"Cookie": f"tb_console_login={nonce}"},
        )
        assert r.status_code == 303
        assert "secure" in [a.strip().lower() for a in set_cookies(r)["tb_console"].split(";")]


HEADERS_EXPECTED = {
    "content-security-policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


def test_pages_and_actions_need_a_session(daemon: DaemonProcess) -> None:
    task = make(daemon, "needs a session")
    with browser_client(daemon) as c:
        for path in ("/console", f"/console/tasks/{task['id']}", "/console/tasks/nope"):
            r = c.get(path)
            assert (r.status_code, r.headers["location"]) == (303, "/console/login"), path
            assert task["title"] not in r.text
        for path in ("/console/outbox/1/retry", "/console/outbox/1/drop", "/console/conflicts/1/resolve"):
            r = c.post(path, data={"csrf": "x", "choose": "bridge"})
            assert (r.status_code, r.headers["location"]) == (303, "/console/login"), path
        c.cookies.set("tb_console", "made-up-session-id", domain="127.0.0.1", path="/console")
        r = c.get("/console")
        assert (r.status_code, r.headers["location"]) == (303, "/console/login?m=ended")
        assert "Max-Age=0" in set_cookies(r)["tb_console"]  # the stale cookie cleared


def test_sign_out_ends_the_session_for_good(daemon: DaemonProcess) -> None:
    with signed_in(daemon, READ) as c:
        page = c.get("/console")
        sid = c.cookies["tb_console"]
        r = c.post("/console/logout", data={"csrf": csrf_of(page.text)})
        assert (r.status_code, r.headers["location"]) == (303, "/console/login?m=out")
        assert "Max-Age=0" in set_cookies(r)["tb_console"]
        assert "Signed out." in c.get("/console/login?m=out").text
    with browser_client(daemon) as replay:  # the old id, sent again, opens nothing
        replay.cookies.set("tb_console", sid, domain="127.0.0.1", path="/console")
        assert replay.get("/console").status_code == 303


# -- actions ------------------------------------------------------------------------------------------


def test_every_post_needs_the_sessions_csrf_token(daemon: DaemonProcess) -> None:
    task = make(daemon, "csrf guarded")
    linked(daemon, task["id"])
    op_id = seed_parked(daemon, task["id"], "vortask")
    conflict_id = seed_conflict(daemon, task, "csrf guarded (squads)")
    with signed_in(daemon, ADMIN) as admin, signed_in(daemon, ADMIN) as other:
        mine = csrf_of(admin.get("/console").text)
        theirs = csrf_of(other.get("/console").text)
        assert mine != theirs
        attempts = [
            (f"/console/outbox/{op_id}/retry", {}),
            (f"/console/outbox/{op_id}/drop", {}),
            ("/console/outbox/retry", {}),
            (f"/console/conflicts/{conflict_id}/resolve", {"choose": "squads"}),
            ("/console/logout", {}),
        ]
        for path, data in attempts:
            for csrf in (None, "", theirs, mine + "x"):
                body = {**data, **({"csrf": csrf} if csrf is not None else {})}
                r = admin.post(path, data=body)
                assert r.status_code == 403 and "Form refused" in r.text, (path, csrf)
            # The right token, but not as a form (JSON): no form, no token.
            r = admin.post(path, json={**data, "csrf": mine})
            assert r.status_code == 403, path
        assert op_state(daemon, op_id) == "parked"
        assert conflict_state(daemon, conflict_id) == "open"
        assert admin.get("/console").status_code == 200  # still signed in


def test_a_read_token_cannot_retry_drop_or_resolve(daemon: DaemonProcess) -> None:
    task = make(daemon, "read only here")
    linked(daemon, task["id"])
    op_id = seed_parked(daemon, task["id"], "squads")
    conflict_id = seed_conflict(daemon, task, "read only (squads)")
    with signed_in(daemon, READ) as c:
        page = c.get("/console")
        assert "Listing, retrying and dropping parked writes needs the <code>admin</code> scope" in page.text
        assert f'data-conflict="{conflict_id}"' in page.text  # a reader sees the conflict...
        assert "Resolving a conflict needs the <code>write</code> scope" in page.text  # ...no button
        assert f"/console/conflicts/{conflict_id}/resolve" not in page.text
        csrf = csrf_of(page.text)
        for path, scope in (
            (f"/console/outbox/{op_id}/retry", "admin"),
            (f"/console/outbox/{op_id}/drop", "admin"),
            ("/console/outbox/retry", "admin"),
        ):
            shown = post_back(c, path, {"csrf": csrf})
            assert any(f"lacks the '{scope}' scope" in f for f in flashes(shown.text)), path
        shown = post_back(c, f"/console/conflicts/{conflict_id}/resolve", {"csrf": csrf, "choose": "squads"})
        assert any("lacks the 'write' scope" in f for f in flashes(shown.text))
        assert flashes(c.get("/console").text) == []  # a message is shown once
    assert op_state(daemon, op_id) == "parked"
    assert conflict_state(daemon, conflict_id) == "open"


def test_admin_retries_and_drops_parked_writes(daemon: DaemonProcess) -> None:
    task = make(daemon, "parked twice")
    linked(daemon, task["id"])
    retried, dropped = seed_parked(daemon, task["id"], "impactly"), seed_parked(daemon, task["id"], "runs")
    with signed_in(daemon, ADMIN) as c:
        page = c.get("/console")
        assert f'data-op="{retried}"' in page.text and f'data-op="{dropped}"' in page.text
        assert "HTTP 422: refused &lt;b&gt;here&lt;/b&gt;" in page.text  # an error is text too
        csrf = csrf_of(page.text)
        shown = post_back(c, f"/console/outbox/{retried}/retry", {"csrf": csrf})
        assert f"Write #{retried} to impactly retried: it runs again now." in flashes(shown.text)
        shown = post_back(c, f"/console/outbox/{dropped}/drop", {"csrf": csrf})
        assert any(f.startswith(f"Write #{dropped} to runs dropped") for f in flashes(shown.text))
        assert f'data-op="{dropped}"' not in shown.text
        again = post_back(c, f"/console/outbox/{dropped}/drop", {"csrf": csrf})
        assert flashes(again.text) == [f"Refused: no outbox operation {dropped}."]
        every = flashes(post_back(c, "/console/outbox/retry", {"csrf": csrf}).text)
        assert len(every) == 1 and re.fullmatch(
            r"\d+ parked write\(s\) retried: they run again now\.|No parked write to retry\.", every[0]
        )
        assert 'data-op="' not in c.get("/console").text  # nothing parked any more
    wait_until(lambda: op_state(daemon, retried) == "done", timeout=30, what="the retried write done")
    assert op_state(daemon, dropped) is None
    history = api(daemon, "GET", f"/api/v1/tasks/{task['id']}", READ).json()["history"]
    notes = {h["new"] for h in history if h["via"] == "outbox"}
    assert notes == {"write to impactly retried by ops", "write to runs dropped by ops"}


def test_values_are_escaped_everywhere(daemon: DaemonProcess) -> None:
    title = "<script>alert('t')</script> & \"quoted\""
    task = make(daemon, title)
    linked(daemon, task["id"])
    seed_conflict(daemon, task, "<img src=x onerror=alert(1)>")
    with signed_in(daemon, ADMIN) as c:
        for path in ("/console", f"/console/tasks/{task['id']}"):
            page = c.get(path).text
            assert "<script" not in page and "<img" not in page, path
            assert "&lt;script&gt;alert(&#x27;t&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;" in page, path
            assert "&lt;img src=x onerror=alert(1)&gt;" in page, path


def test_the_task_page_shows_copies_with_their_pages_and_history(daemon: DaemonProcess) -> None:
    task = make(daemon, "a task page")
    full = linked(daemon, task["id"])
    with signed_in(daemon, READ) as c:
        page = c.get(f"/console/tasks/{task['id']}")
        assert page.status_code == 200
        for lk in full["links"]:
            assert f'data-link="{lk["connector"]}"' in page.text
            assert lk["remote_id"] in page.text
            if lk["remote_url"]:
                assert f'href="{lk["remote_url"]}"' in page.text.replace("&amp;", "&")
        assert "token writer" in page.text  # who created it (history's source)
        missing = c.get("/console/tasks/01JD3XK2Q4W6Y8Z0A2C4E6G8J0")
        assert missing.status_code == 404 and "No such task" in missing.text


class _Urls(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.assets: list[str] = []  # what a browser loads by itself
        self.links: list[str] = []  # what a person may follow

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "embed", "source", "audio", "video") and a.get("src"):
            self.assets.append(str(a["src"]))
        if tag == "link" and a.get("href"):
            self.assets.append(str(a["href"]))
        if tag == "a" and a.get("href"):
            self.links.append(str(a["href"]))
        if tag == "form" and a.get("action"):
            self.links.append(str(a["action"]))


def test_every_asset_url_on_the_pages_is_the_daemons(daemon: DaemonProcess) -> None:
    task = make(daemon, "assets")
    full = linked(daemon, task["id"])
    remote_pages = {lk["remote_url"] for lk in full["links"] if lk["remote_url"]}
    assert remote_pages  # runs gives its tasks' pages: the task page links to them
    with browser_client(daemon) as anonymous, signed_in(daemon, ADMIN) as c:
        for client, path in (
            (anonymous, "/console/login"),
            (c, "/console"),
            (c, f"/console/tasks/{task['id']}"),
        ):
            r = client.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "http" not in r.headers["content-security-policy"]
            found = _Urls()
            found.feed(r.text)
            assert len(found.assets) >= 2, found.assets  # the stylesheet and the icon
            for url in found.assets:
                parts = urlsplit(url)
                assert not parts.scheme and not parts.netloc and url.startswith("/console/static/"), url
                asset = client.get(urljoin(str(r.url), url))
                assert asset.status_code == 200 and asset.content, url
                kind = {".css": "text/css", ".svg": "image/svg+xml"}[PurePosixPath(parts.path).suffix]
                assert asset.headers["content-type"].split(";")[0] == kind, url
            for url in found.links:  # every link the daemon's own, but a copy's page on its platform
                assert url in remote_pages or (not urlsplit(url).netloc and url.startswith("/console")), url
    assert (ROOT / "bridge/console/static/console.css").stat().st_size < 8000  # small, hand-written


def test_templates_and_assets_ship_in_the_wheel() -> None:
    import tomllib

    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = [
        PurePosixPath(p.relative_to(ROOT / "bridge").as_posix())
        for d in ("templates", "static")
        for p in (ROOT / "bridge/console" / d).rglob("*")
        if p.is_file()
    ]
    assert len(files) >= 6
    for path in files:
        assert any(
            len(PurePosixPath(p).parts) == len(path.parts) and path.match(p) for p in shipped["bridge"]
        ), path


# -- sessions and the config in force (in process: the config swapped as a reload swaps it) ------------


@pytest_asyncio.fixture
async def local(world: World, tmp_path: Path) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient, Any]]:
    async with in_process(config.load(world.config(tmp_path, server_tokens=TOKENS))) as d:
        app = create_app(d)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://bridge") as c:
            yield d, c, app


async def _sign_in_async(c: httpx.AsyncClient, token: str) -> httpx.Response:
    nonce = re.search(r'name="nonce" value="([^"]+)"', (await c.get("/console/login")).text)
    assert nonce is not None
    return await c.post("/console/login", data={"nonce": nonce.group(1), "token": token})


async def test_a_reload_that_removes_or_narrows_a_token_reaches_its_sessions(
    local: tuple[Daemon, httpx.AsyncClient, Any], world: World, tmp_path: Path
) -> None:
    d, c, _ = local
    reload = tmp_path / "reload"
    reload.mkdir()
    r = await _sign_in_async(c, WRITE)
    assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()  # over https
    assert "signed in as <b>writer</b> (read, write)" in (await c.get("/console")).text
    narrowed = [token_entry("writer", WRITE, ["read"]), *TOKENS[:1]]
    d.cfg = config.load(world.config(reload, server_tokens=narrowed))
    page = await c.get("/console")
    assert "signed in as <b>writer</b> (read)" in page.text
    shown = await c.post("/console/conflicts/1/resolve", data={"csrf": csrf_of(page.text), "choose": "x"})
    assert shown.status_code == 303
    assert any("lacks the 'write' scope" in f for f in flashes((await c.get("/console")).text))
    d.cfg = config.load(world.config(reload, server_tokens=TOKENS[:1]))  # writer's token gone
    r = await c.get("/console")
    assert (r.status_code, r.headers["location"]) == (303, "/console/login?m=ended")
    assert (await _sign_in_async(c, WRITE)).status_code == 401


async def test_a_session_expires(local: tuple[Daemon, httpx.AsyncClient, Any]) -> None:
    _, c, app = local
    app_sessions = app.state.console_sessions
    now = [1000.0]
    app_sessions.clock = lambda: now[0]
    assert (await _sign_in_async(c, READ)).status_code == 303
    assert (await c.get("/console")).status_code == 200
    now[0] += 8 * 3600 - 1
    assert (await c.get("/console")).status_code == 200
    now[0] += 2
    assert (await c.get("/console")).headers["location"] == "/console/login?m=ended"
    assert len(app_sessions) == 0


# -- in a browser --------------------------------------------------------------------------------------


def _make_conflict(d: DaemonProcess, world: World) -> tuple[dict[str, Any], dict[str, Any]]:
    """A real conflict: the task's title changed on impactly and on squads before the bridge saw
    either, under `conflict: manual`. Impactly's edit is taken first (the bridge's title), so
    squads' is the one held against it (found by the outbox's read before its write to squads,
    or by squads' poll)."""
    task = make(d, "browser: contested")
    full = linked(d, task["id"])
    ids = {lk["connector"]: lk["remote_id"] for lk in full["links"]}
    ops.edit(world, "impactly", ids["impactly"], title="browser: as impactly has it")
    ops.edit(world, "squads", ids["squads"], title="browser: as squads has it")

    def held() -> Any:
        return next(
            (c for c in api(d, "GET", "/api/v1/conflicts", READ).json() if c["task_id"] == task["id"]), None
        )

    def title() -> str:
        return str(api(d, "GET", f"/api/v1/tasks/{task['id']}", READ).json()["title"])

    assert api(d, "POST", "/api/v1/connectors/impactly/sync", ADMIN).status_code == 202
    wait_until(lambda: held() or title() == "browser: as impactly has it", timeout=30, what="impactly's edit")
    assert api(d, "POST", "/api/v1/connectors/squads/sync", ADMIN).status_code == 202
    return task, dict(wait_until(held, timeout=30, what="the conflict held"))


def _artifact(shot: Path) -> Path:
    """The screenshot, also under tests/artifacts when the repository keeps such a directory."""
    artifacts = ROOT / "tests" / "artifacts"
    if artifacts.is_dir():
        shutil.copy(shot, artifacts / shot.name)
        return artifacts / shot.name
    return shot


def test_resolve_a_conflict_in_a_browser(
    daemon: DaemonProcess, world: World, tmp_path: Path, record_property: Any
) -> None:
    executable = chromium()
    started = time.monotonic()
    task, conflict = _make_conflict(daemon, world)
    sides = {s["side"]: s for s in conflict["sides"]}
    assert set(sides) == {"impactly", "squads"}, sides
    assert conflict["title"] == sides["impactly"]["value"] == "browser: as impactly has it"
    wanted = sides["squads"]["value"]  # the value the bridge does not hold: keeping it changes the task
    assert wanted == "browser: as squads has it"
    base = daemon.url
    # Every request off loopback is refused: the page can use nothing else.
    with loopback_only(executable, tmp_path / "profile") as browser:
        page = browser.page(viewport=(1280, 900))
        page.navigate(base + "/console")
        page.until("location.pathname === '/console/login' && !!document.querySelector('#token')", "sign-in")
        page.evaluate(
            f"document.querySelector('#token').value = {json.dumps(WRITE)};"
            "document.querySelector('form button[type=submit]').click(); true"
        )
        page.until("location.pathname === '/console' && !!document.querySelector('#connectors')", "overview")
        health = page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('#connectors tr[data-connector]')]"
            ".map(tr => [tr.dataset.connector, tr.querySelector('.badge').textContent]))"
        )
        assert health == dict.fromkeys(ALL, "healthy"), health
        card = f"#conflicts article[data-conflict='{conflict['id']}']"
        shown = page.evaluate(
            f'[...document.querySelectorAll("{card} .side")].map(s => [s.dataset.side,'
            " s.querySelector('.value').textContent, s.querySelector('.meta').textContent])"
        )
        assert {s[0]: s[1] for s in shown} == {k: v["value"] for k, v in sides.items()}, shown
        assert all("squads" in m or "impactly" in m for _, _, m in shown)
        assert conflict["title"] == page.evaluate(f'document.querySelector("{card} h3 a").textContent')
        shot = page.screenshot(tmp_path / "console.png")

        page.evaluate(f"document.querySelector(\"{card} .side[data-side='squads'] button\").click(); true")
        message = page.until(
            "document.querySelector('.flash.ok') && document.querySelector('.flash.ok').textContent",
            "the flash message",
        )
        assert message == f"Conflict #{conflict['id']} resolved: title is now {wanted} (from squads)."
        assert page.evaluate(f'document.querySelector("{card}") === null')
        page.screenshot(tmp_path / "console-resolved.png")

        requested = browser.requested()
        assert base + "/console/static/console.css" in requested
        elsewhere = [u for u in requested if not u.startswith(base + "/")]
        assert elsewhere == [], elsewhere
        problems = browser.problems()
        assert problems == [], problems
    assert conflict_state(daemon, conflict["id"]) == "resolved"
    resolved = api(daemon, "GET", f"/api/v1/tasks/{task['id']}", READ).json()
    assert resolved["title"] == wanted
    assert any(h["source"] == "api:writer" and h["via"] == "conflict" for h in resolved["history"])
    wait_until(
        lambda: all(wanted in ops.view(world, p) for p in ALL), timeout=30, what="the value on every fake"
    )
    saved = _artifact(shot)
    record_property("screenshot", str(saved))
    print(f"console screenshot: {saved}")
    assert time.monotonic() - started < 45  # about 10 s
