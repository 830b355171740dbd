"""`/console`: a small web page served by the daemon, for a person looking after the bridge.

Server-rendered HTML (`string.Template` pages under `templates/`, every value escaped by
`markup.py`), one stylesheet and an icon under `static/`, no script, no build step and nothing
from another origin: the pages' Content-Security-Policy allows their own origin only, and no
script at all.

- `/console/login`: sign in with an API token, checked by the API's own check
  (`app.state.authenticate`, over the config in force). The browser gets a session cookie with a
  random id only (`sessions.py`: what it maps to, and when it ends); the sign-in form carries a
  nonce matched against a cookie of its own, so another site cannot sign a browser in.
- `/console`: connectors with health, lag and last error (what `GET /api/v1/connectors`
  answers, by its code); open conflicts with the task's title and each side's platform, value and
  time, each side with a button to keep it (`write`); the outbox, and its parked writes with Retry
  and Drop (`admin`); the last 50 history rows, newest first.
- `/console/tasks/{id}`: a task's values, its copies on each platform with their pages, its open
  conflicts and its history.

Every action is a POST carrying the session's CSRF token, runs the engine function the API runs
(`deadletters.retry_operations|drop_operations|retry_parked`, `api_ops.resolve_conflict` with
the token's name as the actor), and redirects back with a message (POST/redirect/GET). A token
without the scope an action needs gets a message saying so; nothing is changed.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from bridge.console.pages import STATIC_PATH, router
from bridge.console.sessions import Sessions

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Serve the console under `/console` (none of it in the OpenAPI schema). The pages read the
    daemon through `app.state.daemon`, as the API does, so a reloaded config is seen at once."""
    app.state.console_sessions = Sessions()
    # check_dir off: an install without the assets answers 404 for them rather than not starting.
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC, check_dir=False), name="console-static")
    app.include_router(router)
