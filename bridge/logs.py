"""Logging: text for a terminal or JSON lines for a pipeline, with every configured secret
redacted from every record, whoever logged it.

A record carries, besides its message, the structured fields set where it was logged (FIELDS):
`log_context(connector=..., task=...)` sets them for a block of code (and every task it starts),
nested blocks adding to them. The poller sets connector and route, the outbox connector, task and
op, the inbox connector and request_id (the delivery), the HTTP app a request_id per request.

Both formats stamp records in UTC with milliseconds (`2026-12-02T14:03:07.123Z`):

    2026-12-02T14:03:07.123Z INFO taskbridge.outbox: ... connector=vortask task=01J... op=update:42
    {"time": "2026-12-02T14:03:07.123Z", "level": "info", "logger": "taskbridge.outbox",
     "message": "...", "connector": "vortask", "task": "01J...", "op": "update:42"}

(one line in JSON; an exception's text is one more field, `exception`, there, and follows the
line in text). Redaction covers the message, every field and the exception's text.

The daemon's own loggers (`taskbridge.*`) log at the configured level; every other (aiosqlite,
sqlalchemy, httpx, httpcore, uvicorn, apscheduler, mcp, asyncio...) at WARNING or above, unless
the environment variable TASKBRIDGE_LOG_LIBRARIES names a level for them (e.g. `debug`).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from connectors.base import Redactor

OWN = "taskbridge"  # the daemon's loggers: taskbridge.*
LIBRARIES_ENV = "TASKBRIDGE_LOG_LIBRARIES"
FIELDS = ("connector", "route", "task", "op", "request_id")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

_EMPTY: Mapping[str, str] = {}
_fields: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("taskbridge_log_fields")


# -- structured fields ---------------------------------------------------------------------------


def bind(**fields: object) -> contextvars.Token[Mapping[str, str]]:
    """Add `fields` to the current context's (None removes one) until `unbind(token)`.
    Prefer `log_context`, which unbinds for you."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise TypeError(f"unknown log field(s) {sorted(unknown)}; known: {', '.join(FIELDS)}")
    merged = dict(_fields.get(_EMPTY))
    for name, value in fields.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = str(value)
    return _fields.set(merged)


def unbind(token: contextvars.Token[Mapping[str, str]]) -> None:
    _fields.reset(token)


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Records logged within the block (and by tasks started in it) carry `fields`."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def current_fields() -> dict[str, str]:
    return dict(_fields.get(_EMPTY))


# -- records -------------------------------------------------------------------------------------


class ContextFilter(logging.Filter):
    """Prepares each record once for the formatters: the message formatted and redacted, the
    structured fields attached (a field given with `extra=` wins over the context's), each
    redacted, and the exception's text formatted and redacted into `exc_text`."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.redact = Redactor(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(_message(record))
        record.args = None
        context = _fields.get(_EMPTY)
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = context.get(name)
            setattr(record, name, None if value is None else self.redact(str(value)))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # arguments that do not fit the format: say what came, not a traceback
        return f"{record.msg!s} (unformattable arguments: {record.args!r})"


def timestamp(record: logging.LogRecord) -> str:
    """A record's time in UTC with milliseconds: 2026-12-02T14:03:07.123Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(record.created))) + f".{int(record.msecs):03d}Z"


def _fields_of(record: logging.LogRecord) -> dict[str, str]:
    return {name: value for name in FIELDS if (value := getattr(record, name, None)) is not None}


def _exception_of(record: logging.LogRecord) -> str | None:
    text = record.exc_text
    if not text and record.exc_info:
        text = logging.Formatter().formatException(record.exc_info)
    if record.stack_info:
        text = f"{text}\n{record.stack_info}" if text else record.stack_info
    return text or None


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value...`, then the exception's text on its own lines."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{timestamp(record)} {record.levelname} {record.name}: {_message(record)}"
        for name, value in _fields_of(record).items():
            line += f" {name}={_quoted(value)}"
        exception = _exception_of(record)
        return f"{line}\n{exception}" if exception else line


def _quoted(value: str) -> str:
    if value and not any(c.isspace() or c in "\"'=" for c in value) and value.isprintable():
        return value
    return json.dumps(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the fields set, `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _message(record),
        }
        out.update(_fields_of(record))
        exception = _exception_of(record)
        if exception:
            out["exception"] = exception
        return json.dumps(out, default=str)


# -- setup ---------------------------------------------------------------------------------------


def setup(
    level: str,
    fmt: str,
    *,
    secrets: Sequence[str] = (),
    libraries: str | None = None,
    stream: IO[str] | None = None,
) -> None:
    """Log to stderr (or `stream`) in `fmt` (text | json): the daemon's loggers at `level`, the
    libraries' at WARNING (or what `level` asks above it), or at `libraries` (default: the
    TASKBRIDGE_LOG_LIBRARIES environment variable) when that names a level."""
    own = LEVELS.get(level.lower(), logging.INFO)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(ContextFilter(secrets))
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    asked = (libraries if libraries is not None else os.environ.get(LIBRARIES_ENV, "")).strip().lower()
    # Everyone else's loggers inherit the root's level: aiosqlite, sqlalchemy, httpcore, asyncio...
    root.setLevel(LEVELS[asked] if asked in LEVELS else max(own, logging.WARNING))
    logging.getLogger(OWN).setLevel(own)
    # Those a library (or an earlier setup) gave a level of their own follow the root's again.
    for name in ("httpx", "httpcore", "apscheduler", "uvicorn.access", "mcp", "alembic"):
        logging.getLogger(name).setLevel(logging.NOTSET)
    # warnings.warn() through the handler too, so that a JSON log holds nothing but JSON.
    logging.captureWarnings(True)
    # A poll longer than its interval makes APScheduler warn once per missed tick (every second
    # at a 1 s interval); the daemon says it once per overrun instead (Daemon.poll_once).
    logging.getLogger("apscheduler.scheduler").addFilter(_no_overlap_warnings)
    if asked and asked not in LEVELS:
        logging.getLogger(f"{OWN}.logs").warning(
            "%s=%r is not a level (%s); libraries log at WARNING", LIBRARIES_ENV, asked, "|".join(LEVELS)
        )


def _no_overlap_warnings(record: logging.LogRecord) -> bool:
    return "maximum number of running instances reached" not in record.getMessage()
