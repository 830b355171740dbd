"""The console's routes: sign-in, the overview, a task, and the actions (POST, then a redirect
back with a message: POST/redirect/GET). What each page shows is read by the API's own code
(`bridge.api.routes`, `bridge.engine.deadletters`); each action calls the engine function the
API calls, as the session's token (its name is the actor history and the log record)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from bridge import __version__
from bridge.api import routes as api
from bridge.console import views
from bridge.console.markup import Html, join, page
from bridge.console.sessions import TTL, Session, Sessions
from bridge.engine import api_ops, deadletters
from bridge.model import encode
from bridge.store.states import ConflictState, OpState
from bridge.store.tables import ConflictRow, HistoryRow, TaskRow

log = logging.getLogger("taskbridge.console")

PREFIX = "/console"
STATIC_PATH = f"{PREFIX}/static"
COOKIE = "tb_console"  # the session's id
LOGIN_COOKIE = "tb_console_login"  # the sign-in form's nonce (login CSRF), for that form only
ACTIVITY = 50  # history rows on the overview
PARKED = 100  # parked writes listed
WAITING = 20  # waiting writes listed
MAX_FORM = 16_384  # bytes: the console's forms are small

# The pages load and send nothing but their own origin, and run no script at all.
CSP = "; ".join(
    [
        "default-src 'none'",
        "style-src 'self'",
        "img-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
NOTICES = {
    "out": ("ok", "Signed out."),
    "ended": ("error", "Your session ended (it expired, or its token changed): sign in again."),
}

router = APIRouter(prefix=PREFIX, include_in_schema=False)


def _base(request: Request) -> str:
    # Behind a proxy that mounts the daemon under a prefix, every URL carries it (as /docs does).
    return str(request.scope.get("root_path", "")).rstrip("/") + PREFIX


def _https(request: Request) -> bool:
    return request.url.scheme == "https"


def _sessions(request: Request) -> Sessions:
    return request.app.state.console_sessions  # type: ignore[no-any-return]


def _session(request: Request) -> Session | None:
    daemon = request.app.state.daemon
    return _sessions(request).get(request.cookies.get(COOKIE), daemon.cfg.server.tokens)


def _platforms(request: Request) -> dict[str, str]:
    return {name: c.platform for name, c in request.app.state.daemon.cfg.connectors.items()}


def _html(
    request: Request, title: str, content: Html, session: Session | None, status: int = 200
) -> HTMLResponse:
    base = _base(request)
    body = page(
        "layout.html",
        title=title,
        base=base,
        static=_base(request).removesuffix(PREFIX) + STATIC_PATH,
        nav=views.nav(base, session),
        flashes=views.flashes(session.take_flashes() if session else []),
        content=content,
        version=__version__,
    )
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def _message(request: Request, session: Session | None, status: int, heading: str, text: str) -> HTMLResponse:
    base = _base(request)
    back, label = (base, "Back to the overview") if session else (f"{base}/login", "Sign in")
    content = page("message.html", heading=heading, text=text, back=back, back_label=label)
    return _html(request, heading, content, session, status)


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=HEADERS)


def _to_login(request: Request) -> RedirectResponse:
    """To the sign-in page; a session cookie that no longer names a session is cleared."""
    had = bool(request.cookies.get(COOKIE))
    response = _redirect(f"{_base(request)}/login" + ("?m=ended" if had else ""))
    if had:
        _clear(request, response, COOKIE, _base(request))
    return response


def _cookie(request: Request) -> dict[str, Any]:
    """What every cookie of the console is, set or cleared: never read by a script, never sent
    cross-site, and sent over https only when the page came over https."""
    return {"secure": _https(request), "httponly": True, "samesite": "strict"}


def _clear(request: Request, response: Response, name: str, path: str) -> None:
    response.delete_cookie(name, path=path, **_cookie(request))


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body (the only kind the console's forms send); {} for anything else."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return {}
    body = await request.body()
    if len(body) > MAX_FORM:
        return {}
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20))
    except (UnicodeDecodeError, ValueError):
        return {}


def _check_token(request: Request, token: str) -> Any:
    """The API's own check (`app.state.authenticate`, over the config in force) of a token typed
    into the form: its Principal, or None."""
    if not token or not token.isascii() or not token.isprintable():
        return None  # no header could carry it
    probe = Request({"type": "http", "headers": [(b"authorization", f"Bearer {token}".encode("ascii"))]})
    try:
        return request.app.state.authenticate(probe)
    except HTTPException:
        return None


# -- signing in and out ------------------------------------------------------------------------------


def _login_page(request: Request, notice: tuple[str, str] | None, status: int = 200) -> HTMLResponse:
    base = _base(request)
    nonce = secrets.token_urlsafe(24)
    content = Html(views.flashes([notice] if notice else []) + page("login.html", base=base, nonce=nonce))
    response = _html(request, "Sign in", content, None, status)
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, path=f"{base}/login", **_cookie(request))
    return response


@router.get("/login")
async def login_form(request: Request) -> Response:
    if _session(request) is not None:
        return _redirect(_base(request))
    return _login_page(request, NOTICES.get(request.query_params.get("m", "")))


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not nonce or not secrets.compare_digest(nonce.encode(), form.get("nonce", "").encode()):
        # Not the form this console served to this browser (or its cookie was refused): a
        # cross-site form must not sign a browser in, even with a good token.
        return _login_page(
            request, ("error", "This sign-in form expired or was not this console's: try again."), 403
        )
    token = form.get("token", "").strip()
    principal = _check_token(request, token)
    if principal is None:
        log.warning("console sign-in refused: unknown token")
        return _login_page(request, ("error", "Unknown token: sign-in refused."), 401)
    sessions = _sessions(request)
    sessions.end(request.cookies.get(COOKIE))  # a new id at every sign-in, never the old one
    session = sessions.start(principal.name, principal.scopes, token)
    log.info("console: token %s signed in", principal.name)
    base = _base(request)
    response = _redirect(base)
    response.set_cookie(COOKIE, session.id, max_age=int(TTL), path=base, **_cookie(request))
    _clear(request, response, LOGIN_COOKIE, f"{base}/login")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    posted = await _posted(request)
    if isinstance(posted, Response):
        return posted
    session, _ = posted
    _sessions(request).end(session.id)
    log.info("console: token %s signed out", session.name)
    response = _redirect(f"{_base(request)}/login?m=out")
    _clear(request, response, COOKIE, _base(request))
    return response


# -- pages -------------------------------------------------------------------------------------------


async def _recent_activity(request: Request, limit: int) -> list[Any]:
    ctx = api._ctx(request)
    query = (
        select(HistoryRow, TaskRow.title)
        .outerjoin(TaskRow, TaskRow.id == HistoryRow.task_id)
        .order_by(HistoryRow.id.desc())
        .limit(limit)
    )
    async with ctx.store.read() as session:
        return list((await session.execute(query)).all())


async def _waiting(request: Request) -> list[Any]:
    ctx = api._ctx(request)
    items: list[Any] = []
    for state in (OpState.PENDING, OpState.CLAIMED):
        items += (await deadletters.list_operations(ctx, state=state, limit=WAITING)).items
    return sorted(items, key=lambda op: op.id, reverse=True)[:WAITING]


@router.get("")
async def overview(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _to_login(request)
    base = _base(request)
    if not session.may("read"):
        content = views.needs("read", "Seeing connectors, conflicts and activity")
        return _html(request, "Overview", content, session)
    connectors = await api.list_connectors(request)  # what GET /api/v1/connectors answers
    conflicts = await api.list_conflicts(request, state="open", limit=100)
    parked = waiting = None
    if session.may("admin"):
        page_ = await deadletters.list_operations(api._ctx(request), state=OpState.PARKED, limit=PARKED)
        parked, waiting = page_.items, await _waiting(request)
    activity = await _recent_activity(request, ACTIVITY)
    content = join(
        [
            views.section("connectors", "Connectors", views.connectors(connectors)),
            views.section("conflicts", "Open conflicts", views.conflicts(base, session, conflicts)),
            views.section("outbox", "Outbox", views.outbox(base, session, connectors, parked, waiting)),
            views.section(
                "activity",
                "Recent activity",
                views.activity(base, activity, _platforms(request)),
                note="newest first",
            ),
        ]
    )
    return _html(request, "Overview", content, session)


@router.get("/tasks/{task_id}")
async def task_page(request: Request, task_id: str) -> Response:
    session = _session(request)
    if session is None:
        return _to_login(request)
    if not session.may("read"):
        return _message(request, session, 403, "Not allowed", "Seeing a task needs the 'read' scope.")
    if "\x00" in task_id or len(task_id) > 200:
        return _message(request, session, 404, "No such task", "No task has that id.")
    try:
        task = await api.get_task(request, task_id)  # what GET /api/v1/tasks/{id} answers
    except HTTPException as exc:
        if exc.status_code != 404:
            raise
        return _message(request, session, 404, "No such task", f"No task has the id {task_id}.")
    ctx = api._ctx(request)
    async with ctx.store.read() as db:
        rows = (
            await db.scalars(
                select(ConflictRow)
                .where(ConflictRow.task_id == task_id, ConflictRow.state == ConflictState.OPEN)
                .order_by(ConflictRow.id)
            )
        ).all()
        open_conflicts = await api._conflicts_out(request, db, rows)
    base = _base(request)
    content = page(
        "task.html",
        base=base,
        task_id=task.id,
        title=task.title,
        fields=views.task_fields(task),
        sections=join(
            [
                views.section(
                    "links",
                    "Copies",
                    views.links(task.links or []),
                    note=f"one per member of route {task.route}",
                ),
                views.section(
                    "conflicts",
                    "Open conflicts",
                    views.conflicts(base, session, open_conflicts, back_task=task.id),
                ),
                views.section(
                    "history",
                    "History",
                    views.history(task.history or [], _platforms(request)),
                    note="newest first",
                ),
            ]
        ),
    )
    return _html(request, task.title or task.id, content, session)


# -- actions -----------------------------------------------------------------------------------------

Act = Callable[[Request, Session, dict[str, str]], Awaitable[tuple[str, str]]]
RowId = Annotated[int, PathParam(ge=1, le=2**63 - 1)]  # an outbox operation's or a conflict's id


def _csrf_refused(request: Request, session: Session) -> HTMLResponse:
    log.warning("console: a form without this session's CSRF token refused (token %s)", session.name)
    return _message(
        request,
        session,
        403,
        "Form refused",
        "This form did not come from this console session (its CSRF token is missing or stale). "
        "Nothing was changed: reload the page and try again.",
    )


async def _posted(request: Request) -> tuple[Session, dict[str, str]] | Response:
    """The session and form of a console POST, or the answer refusing it: to sign-in without a
    session, "Form refused" without this session's CSRF token."""
    session = _session(request)
    if session is None:
        return _to_login(request)
    form = await _form(request)
    if not session.csrf_ok(form.get("csrf")):
        return _csrf_refused(request, session)
    return session, form


async def _action(request: Request, needed: str, what: str, anchor: str, act: Act) -> Response:
    posted = await _posted(request)
    if isinstance(posted, Response):
        return posted
    session, form = posted
    base = _base(request)
    back = form.get("back_task")
    target = views.task_url(base, back) if back else f"{base}#{anchor}"
    if not session.may(needed):
        session.flash("error", f"Refused: this token lacks the {needed!r} scope, which {what} needs.")
    else:
        session.flash(*await act(request, session, form))
    return _redirect(target)


OnParked = Callable[..., Awaitable[list[deadletters.Result]]]  # deadletters' retry/drop_operations


async def _on_parked(request: Request, op_id: int, run: OnParked, what: str, done: str) -> Response:
    """Retry or drop (`run`) the parked write `op_id`, as the admin signed in."""

    async def act(request: Request, session: Session, form: dict[str, str]) -> tuple[str, str]:
        (result,) = await run(api._ctx(request), [op_id], who=session.name)
        if not result.ok:
            return "error", f"Refused: {result.error}."
        return "ok", f"Write #{result.id} to {result.connector} {done}."

    return await _action(request, "admin", what, "outbox", act)


@router.post("/outbox/retry")
async def retry_all(request: Request) -> Response:
    async def act(request: Request, session: Session, form: dict[str, str]) -> tuple[str, str]:
        results = await deadletters.retry_parked(api._ctx(request), who=session.name)
        if not results:
            return "ok", "No parked write to retry."
        return "ok", f"{len(results)} parked write(s) retried: they run again now."

    return await _action(request, "admin", "retrying parked writes", "outbox", act)


@router.post("/outbox/{op_id}/retry")
async def retry(request: Request, op_id: RowId) -> Response:
    return await _on_parked(
        request, op_id, deadletters.retry_operations, "retrying a parked write", "retried: it runs again now"
    )


@router.post("/outbox/{op_id}/drop")
async def drop(request: Request, op_id: RowId) -> Response:
    return await _on_parked(
        request,
        op_id,
        deadletters.drop_operations,
        "dropping a parked write",
        "dropped: it will never run, and its task's history says so",
    )


@router.post("/conflicts/{conflict_id}/resolve")
async def resolve(request: Request, conflict_id: RowId) -> Response:
    async def act(request: Request, session: Session, form: dict[str, str]) -> tuple[str, str]:
        choose = form.get("choose", "")
        if not choose:
            return "error", "Choose a side to keep."
        try:
            chosen = await api_ops.resolve_conflict(
                api._ctx(request), conflict_id, choose=choose, actor=session.name
            )
        except api_ops.ApiError as exc:
            if exc.status == 400 and not session.may("read"):
                return "error", "Refused: not a choice this conflict takes."  # as the API says it
            return "error", f"Refused: {exc.message}."
        ((field, value),) = chosen.items()
        shown = views.plain(encode(field, value), 120)
        return "ok", f"Conflict #{conflict_id} resolved: {field} is now {shown} (from {choose})."

    return await _action(request, "write", "resolving a conflict", "conflicts", act)
