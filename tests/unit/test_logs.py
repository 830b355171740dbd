"""bridge/logs.py: both formats (UTC timestamps with milliseconds, the structured fields), the
fields' context, redaction of every field and of exceptions, libraries' loggers held at WARNING,
the HTTP app's request id, and a failing platform's retries kept out of WARNING."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from bridge import logs, mapping
from bridge.api.app import RequestId
from bridge.logs import bind, current_fields, log_context, unbind
from connectors import base

SECRET = "s3cr3t-token-xyz"
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LIBRARIES = (
    "aiosqlite",
    "sqlalchemy.engine",
    "httpcore",
    "httpx",
    "uvicorn.error",
    "apscheduler",
    "mcp",
    "asyncio",
)
own = logging.getLogger("taskbridge.test")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """setup() configures the process's logging: give the other tests theirs back."""
    root = logging.getLogger()
    names = ("taskbridge", *LIBRARIES)
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in names})
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)


def configure(level: str = "info", fmt: str = "json", **kw: object) -> io.StringIO:
    out = io.StringIO()
    logs.setup(level, fmt, stream=out, **kw)  # type: ignore[arg-type]
    return out


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def records(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in lines(out)]


# -- formats -------------------------------------------------------------------------------------


def test_timestamps_are_utc_with_milliseconds_and_a_zone() -> None:
    stamp = datetime(2026, 12, 2, 14, 3, 7, 123456, tzinfo=UTC).timestamp()
    record = logging.makeLogRecord({"created": stamp, "msecs": 123.456})
    assert logs.timestamp(record) == "2026-12-02T14:03:07.123Z"  # whatever the local zone


def test_json_lines_carry_time_level_logger_message_and_only_the_fields_set() -> None:
    out = configure()
    own.info("plain %s", "words")
    with log_context(connector="vortask", route="main"):
        own.warning("from a poll")
    first, second = records(out)
    assert list(first) == ["time", "level", "logger", "message"]
    assert TIME.match(str(first["time"]))
    assert first | {"time": None} == {
        "time": None,
        "level": "info",
        "logger": "taskbridge.test",
        "message": "plain words",
    }
    assert second["connector"] == "vortask" and second["route"] == "main" and second["level"] == "warning"
    assert "task" not in second and "exception" not in second


def test_text_lines_append_the_fields_set_as_key_value() -> None:
    out = configure(fmt="text")
    with log_context(connector="vortask", task="01J0TASK", op="update:42"):
        own.info("written")
    with log_context(route="a route"):
        own.info("spaced")
    written, spaced = lines(out)
    stamp, rest = written.split(" ", 1)
    assert TIME.match(stamp)
    assert rest == "INFO taskbridge.test: written connector=vortask task=01J0TASK op=update:42"
    assert spaced.endswith('spaced route="a route"')  # a value with a space stays one token


def test_exception_is_one_json_field_and_follows_the_text_line() -> None:
    out = configure()
    try:
        raise ValueError("broken")
    except ValueError:
        own.exception("it failed")
    (record,) = records(out)
    assert record["message"] == "it failed"
    assert "Traceback" in str(record["exception"]) and "ValueError: broken" in str(record["exception"])
    out = configure(fmt="text")
    try:
        raise ValueError("broken")
    except ValueError:
        own.exception("it failed")
    text = out.getvalue()
    assert text.splitlines()[0].endswith("it failed") and "ValueError: broken" in text


def test_a_message_whose_arguments_do_not_fit_is_still_one_json_line() -> None:
    out = configure()
    own.info("two %s %s", "only one")
    (record,) = records(out)
    assert "two %s %s" in str(record["message"])


# -- context -------------------------------------------------------------------------------------


def test_contexts_nest_and_unwind() -> None:
    with log_context(connector="a"):
        with log_context(task="t1", op="create:1"):
            assert current_fields() == {"connector": "a", "task": "t1", "op": "create:1"}
            with log_context(connector="b", task=None):  # None takes a field away
                assert current_fields() == {"connector": "b", "op": "create:1"}
        assert current_fields() == {"connector": "a"}
    assert current_fields() == {}
    token = bind(request_id="r1")
    assert current_fields() == {"request_id": "r1"}
    unbind(token)
    assert current_fields() == {}
    with pytest.raises(TypeError):
        bind(tenant="x")


async def test_tasks_started_in_a_context_carry_it_and_tasks_do_not_share_theirs() -> None:
    out = configure()

    async def work(name: str) -> None:
        with log_context(task=name):
            await asyncio.sleep(0.01)
            own.info("done %s", name)

    with log_context(connector="vortask"):
        await asyncio.gather(work("t1"), work("t2"))
    got = {(r["task"], r["connector"]) for r in records(out)}
    assert got == {("t1", "vortask"), ("t2", "vortask")}


def test_a_field_given_with_extra_wins_over_the_context() -> None:
    out = configure()
    with log_context(connector="poller", route="main"):
        own.info("conflict", extra={"connector": "vortask", "task": "01J0TASK"})
    (record,) = records(out)
    assert record["connector"] == "vortask" and record["task"] == "01J0TASK" and record["route"] == "main"


# -- redaction -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_secrets_are_redacted_in_the_message_every_field_and_the_exception(fmt: str) -> None:
    out = configure(fmt=fmt, secrets=[SECRET])
    with log_context(connector=f"c-{SECRET}", request_id=SECRET):
        own.info("token is %s", SECRET, extra={"task": f"task {SECRET}"})
        try:
            raise RuntimeError(f"refused {SECRET}")
        except RuntimeError:
            own.exception("call with %s failed", SECRET)
    text = out.getvalue()
    assert SECRET not in text
    assert "***" in text
    if fmt == "json":
        first, second = records(out)
        assert first["connector"] == "c-***" and first["request_id"] == "***" and first["task"] == "task ***"
        assert "RuntimeError: refused ***" in str(second["exception"])


# -- libraries' loggers --------------------------------------------------------------------------


def test_debug_raises_only_our_loggers_libraries_stay_at_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(logs.LIBRARIES_ENV, raising=False)
    out = configure("debug")
    own.debug("ours")
    for name in LIBRARIES:
        logging.getLogger(name).debug("theirs")
        logging.getLogger(name).info("theirs")
    logging.getLogger("aiosqlite").warning("a library's warning")
    said = [(r["logger"], r["message"]) for r in records(out)]
    assert said == [("taskbridge.test", "ours"), ("aiosqlite", "a library's warning")]


def test_libraries_are_let_through_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    out = configure("info", libraries="debug")
    logging.getLogger("aiosqlite").debug("statement")
    own.debug("ours, below info")
    assert [r["logger"] for r in records(out)] == ["aiosqlite"]
    monkeypatch.setenv(logs.LIBRARIES_ENV, "debug")
    out = configure("debug")
    logging.getLogger("httpcore").debug("connect")
    assert [r["logger"] for r in records(out)] == ["httpcore"]


def test_a_quiet_level_quiets_libraries_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(logs.LIBRARIES_ENV, raising=False)
    out = configure("error")
    logging.getLogger("aiosqlite").warning("library warning")
    own.warning("our warning")
    own.error("our error")
    assert [r["message"] for r in records(out)] == ["our error"]


def test_python_warnings_go_through_the_handler() -> None:
    import warnings

    out = configure()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(True)  # catch_warnings put showwarning back: capture again inside
        warnings.warn("deprecated thing", UserWarning, stacklevel=1)
    (record,) = records(out)
    assert record["logger"] == "py.warnings" and "deprecated thing" in str(record["message"])


# -- the HTTP app's request id --------------------------------------------------------------------


async def test_each_request_gets_an_id_in_its_log_lines_and_its_answer() -> None:
    out = configure()

    async def hello(request: Request) -> PlainTextResponse:
        own.info("handling")
        return PlainTextResponse("hi")

    app = RequestId(Starlette(routes=[Route("/", hello)]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        first = await client.get("/")
        second = await client.get("/")
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert ids[0] != ids[1]
    assert [r["request_id"] for r in records(out)] == ids
    assert current_fields() == {}


# -- a failing platform ----------------------------------------------------------------------------


async def test_a_failing_platform_logs_its_retries_at_debug_not_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    settings = base.ConnectorSettings(
        name="down1",
        platform="down",
        base_url="http://down.invalid",
        mapping=mapping.PlatformMapping("down"),
        people=base.PeopleMap("down1"),
        token=SECRET,
        backoff=0.001,
        max_retries=3,
        transport=httpx.MockTransport(refuse),
    )
    http = base.HttpClient(settings)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(base.Retryable):
        await http.get("/tasks")
    await http.aclose()
    mine = [r for r in caplog.records if r.name == "taskbridge.connector"]
    assert len(mine) == 4  # the first try and 3 retries, each a debug line
    assert all(r.levelno == logging.DEBUG for r in mine)
