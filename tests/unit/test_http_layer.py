"""The shared HTTP layer against a real loopback server: retries, 429, error mapping, redaction."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import mapping
from connectors import base
from connectors.fakekit import Fake

TOKEN = "sekrit-token-123"


class EchoFake(Fake):
    platform = "echo"

    def routes(self, app: FastAPI) -> None:
        @app.get("/api/ok")
        async def ok(request: Request) -> JSONResponse:
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                return JSONResponse({"message": "bad token"}, status_code=401)
            return JSONResponse({"ok": True})

        @app.post("/api/create")
        async def create() -> JSONResponse:
            return JSONResponse({"id": 1}, status_code=201)

        @app.get("/api/status/{code}")
        async def status(code: int) -> JSONResponse:
            return JSONResponse({"error": {"code": "x", "message": f"nope {TOKEN}"}}, status_code=code)


@pytest.fixture(scope="module")
def fake() -> Iterator[EchoFake]:
    f = EchoFake(token=TOKEN)
    f.start()
    yield f
    f.stop()


@pytest.fixture(autouse=True)
def _reset(fake: EchoFake) -> None:
    fake.faults.reset()
    fake.requests.clear()


def client(fake: EchoFake, **kw: object) -> base.HttpClient:
    settings = base.ConnectorSettings(
        name="echo1",
        platform="echo",
        base_url=fake.url,
        mapping=mapping.PlatformMapping("echo"),
        people=base.PeopleMap("echo1"),
        **{"token": TOKEN, "backoff": 0.01, **kw},  # type: ignore[arg-type]
    )
    return base.HttpClient(settings)


async def test_ok_and_auth_header(fake: EchoFake) -> None:
    http = client(fake)
    assert await http.get("/api/ok") == {"ok": True}
    await http.aclose()


async def test_5xx_is_retried_then_raised_as_retryable(fake: EchoFake) -> None:
    fake.faults.error_rate = 1.0
    http = client(fake, max_retries=2)
    with pytest.raises(base.Retryable) as info:
        await http.get("/api/ok")
    assert info.value.status == 500
    assert fake.requests.count("GET", "/api/ok") == 3  # first try + 2 retries
    await http.aclose()


async def test_post_is_not_retried_on_5xx(fake: EchoFake) -> None:
    fake.faults.error_rate = 1.0
    http = client(fake, max_retries=3)
    with pytest.raises(base.Retryable):
        await http.post("/api/create", {})
    assert fake.requests.count("POST", "/api/create") == 1  # a create that may have happened isn't repeated
    await http.aclose()


async def test_429_waits_for_retry_after_then_succeeds(fake: EchoFake) -> None:
    fake.faults.rate_limit_burst = 1
    fake.faults.retry_after = 1
    http = client(fake)
    started = time.monotonic()
    assert await http.post("/api/create", {}) == {"id": 1}  # 429 means unprocessed: even POST repeats
    assert time.monotonic() - started >= 1.0
    assert fake.requests.count("POST", "/api/create", status=429) == 1
    await http.aclose()


async def test_writes_fail_fast_raises_a_write_at_once_but_reads_still_retry(fake: EchoFake) -> None:
    http = client(fake, max_retries=3)
    with base.writes_fail_fast():
        fake.faults.rate_limit_burst = 1
        fake.faults.retry_after = 1
        with pytest.raises(base.RateLimited):
            await http.post("/api/create", {})
        assert fake.requests.count("POST", "/api/create") == 1  # no second try after the wait
        fake.faults.error_rate = 1.0
        with pytest.raises(base.Retryable):
            await http.request("PUT", "/api/create")
        assert fake.requests.count("PUT", "/api/create") == 1  # idempotent, yet not repeated here
        with pytest.raises(base.Retryable):
            await http.get("/api/ok")
        assert fake.requests.count("GET", "/api/ok") == 4  # reads retry as usual
    fake.faults.reset()
    fake.faults.rate_limit_burst = 1
    fake.faults.retry_after = 0
    assert await http.post("/api/create", {}) == {"id": 1}  # outside the block: waits and repeats
    await http.aclose()


async def test_long_retry_after_is_raised_for_the_engine(fake: EchoFake) -> None:
    fake.faults.rate_limit_burst = 1
    fake.faults.retry_after = 120
    http = client(fake, max_wait=5)
    with pytest.raises(base.RateLimited) as info:
        await http.get("/api/ok")
    assert info.value.retry_after == 120
    await http.aclose()


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (400, base.Permanent),
        (403, base.Permanent),
        (404, base.NotFound),
        (401, base.AuthFailed),
        (409, base.Permanent),
    ],
)
async def test_4xx_map_to_permanent_errors_with_the_platform_message(
    fake: EchoFake, code: int, error: type[Exception]
) -> None:
    http = client(fake)
    with pytest.raises(error) as info:
        await http.get(f"/api/status/{code}")
    assert "nope ***" in str(info.value)  # the platform's message, with the secret redacted
    assert TOKEN not in str(info.value)
    assert fake.requests.count("GET", "/api/status/{code}") == 1  # never retried
    await http.aclose()


async def test_timeout_is_retryable(fake: EchoFake) -> None:
    fake.faults.timeout_rate = 1.0
    fake.faults.hang_seconds = 1.0
    http = client(fake, timeout=0.2, max_retries=1)
    with pytest.raises(base.Retryable, match="timed out"):
        await http.get("/api/ok")
    await http.aclose()


async def test_connection_refused_is_retryable_even_for_post() -> None:
    from connectors.fakekit import free_port

    settings = base.ConnectorSettings(
        name="x",
        platform="x",
        base_url=f"http://127.0.0.1:{free_port()}",
        mapping=mapping.PlatformMapping("x"),
        people=base.PeopleMap("x"),
        token=TOKEN,
        backoff=0.01,
        max_retries=2,
    )
    http = base.HttpClient(settings)
    with pytest.raises(base.Retryable):
        await http.post("/api/create", {})
    await http.aclose()


async def test_no_secret_in_logs(fake: EchoFake, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    http = client(fake, max_retries=0)
    await http.get("/api/ok")
    with pytest.raises(base.Permanent):
        await http.get("/api/status/400")
    await http.aclose()
    assert caplog.records
    assert TOKEN not in caplog.text


async def test_rate_limiter_spaces_requests() -> None:
    limiter = base.RateLimiter(rate=20, burst=1)
    started = time.monotonic()
    for _ in range(5):
        await limiter.acquire()
    assert time.monotonic() - started >= 4 / 20 * 0.9


def test_retry_after_parsing() -> None:
    assert base.parse_retry_after("12") == 12
    assert base.parse_retry_after(None) is None
    assert base.parse_retry_after("garbage") is None


def test_people_map_keeps_unknown_users_on_their_platform() -> None:
    people = base.PeopleMap("vt", {"alice": "u-1"})
    assert people.to_key("u-1") == "alice"
    assert people.to_key("u-9") == "vt:u-9"
    assert people.to_remote("vt:u-9") == "u-9"
    assert people.to_remote("imp:u-9") is None
    assert people.keys_to_remote(["alice", "imp:x", "vt:u-2"]) == ["u-1", "u-2"]


def test_hmac_verification() -> None:
    import hashlib
    import hmac

    sig = hmac.new(b"s", b"body", hashlib.sha256).hexdigest()
    assert base.verify_hmac("s", b"body", sig)
    assert not base.verify_hmac("s", b"bodx", sig)


def test_status_classes_keep_429_apart() -> None:
    assert [base.status_class(s) for s in (200, 301, 404, 429, 503, None)] == [
        "2xx",
        "3xx",
        "4xx",
        "429",
        "5xx",
        "error",
    ]


async def test_an_error_text_is_redacted_of_every_configured_secret(fake: EchoFake) -> None:
    """A platform's error text reaches logs, the store and the API: it must not carry another
    connector's secret either (issue 16). Here the echoed token is not this connector's own."""
    http = client(fake, token="this-connectors-own", other_secrets=(TOKEN, "a-third-one"))
    with pytest.raises(base.Permanent) as info:
        await http.get("/api/status/422")
    assert TOKEN not in str(info.value) and "nope ***" in str(info.value)
    await http.aclose()


_JOINING: dict[str, base._Client] = {}  # one client a base URL (a client's SSL context costs ms)


# Texts mostly of the characters a URL's parse keeps as written, with the ones it does not
# ("%", "#", ":", "?", a space, "." and ".." segments) among them: the client's join by text alone
# (`_PLAIN_PATH`) is tried on most, and must give up where httpx's parse would change anything.
_NEAR_PLAIN = st.lists(
    st.sampled_from([*"ab0_~-.//&=", "..", "%", "%2F", "#", ":", "?", " ", "ü"]), max_size=20
).map("".join)
_ANY = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=600, deadline=None)
@given(
    base_url=st.sampled_from(
        ["http://127.0.0.1:8123", "http://127.0.0.1:8123/api/v2", "https://h.example/a b/ü/"]
    ),
    path=_ANY | _NEAR_PLAIN,
    query=st.none() | _ANY | _NEAR_PLAIN,
    lead=st.sampled_from(["/", ""]),
)
def test_a_path_joins_the_base_url_as_httpx_joins_it(
    base_url: str, path: str, query: str | None, lead: str
) -> None:
    """The client's own join of a path to its base URL (by text alone where nothing in it needs
    parsing, else one parse, not two) gives the URL httpx's would, parsed alike, or fails where
    httpx's fails, for any text, with a leading slash or without (the platforms' clients send
    both), query or not."""
    client = _JOINING.get(base_url) or _JOINING.setdefault(base_url, base._Client(base_url=base_url))
    url = lead + path + ("" if query is None else "?" + query)
    try:
        wanted = httpx.AsyncClient._merge_url(client, url)
        expected: object = (str(wanted), wanted._uri_reference)
    except httpx.InvalidURL as error:
        expected = type(error)
    try:
        joined = client._merge_url(url)
        got: object = (str(joined), joined._uri_reference)
    except httpx.InvalidURL as error:
        got = type(error)
    assert got == expected


def test_a_plain_path_joins_without_a_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """The join by text alone is the one taken for the platforms' usual paths (a parse of a URL
    was a tenth of the client's CPU a request); one that needs parsing still gets it."""
    client = base._Client(base_url="http://127.0.0.1:8123/api/v2")
    parsed: list[str] = []
    real = httpx._urls.urlparse

    def counting(url: str = "", **kwargs: object) -> object:
        parsed.append(url)
        return real(url, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx._urls, "urlparse", counting)
    assert str(client._merge_url("/tasks/T-12?expand=comments")) == (
        "http://127.0.0.1:8123/api/v2/tasks/T-12?expand=comments"
    )
    assert parsed == []
    assert str(client._merge_url("tasks/a b")) == "http://127.0.0.1:8123/api/v2/tasks/a%20b"
    assert parsed == ["http://127.0.0.1:8123/api/v2/tasks/a b"]
