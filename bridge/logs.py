"""Logging: text for a terminal or JSON lines for a pipeline, with every configured secret
redacted from every record, whoever logged it."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence

from connectors.base import Redactor


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.redact = Redactor(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg = self.redact(message)
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


def setup(level: str, fmt: str, *, secrets: Sequence[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter(secrets))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries' own loggers would print request lines; ours say what matters.
    for noisy in ("httpx", "httpx2", "httpcore", "apscheduler", "uvicorn.access", "mcp", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A poll longer than its interval makes APScheduler warn once per missed tick (every second
    # at a 1 s interval); the daemon says it once per overrun instead (Daemon.poll_once).
    logging.getLogger("apscheduler.scheduler").addFilter(_no_overlap_warnings)


def _no_overlap_warnings(record: logging.LogRecord) -> bool:
    return "maximum number of running instances reached" not in record.getMessage()
