"""The console's pieces of HTML, from data the API's own code reads (see `pages.py`). Every value
goes through `markup.esc`; nothing here reads the store."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

from bridge.console.markup import Html, esc, fragment, join
from bridge.console.sessions import Session

MAX_VALUE = 300  # characters of a value shown in a table (a description can be long)
NOTHING = Html('<span class="empty">-</span>')  # an empty value or cell


# -- values ------------------------------------------------------------------------------------------


def when(value: datetime | str | None) -> Html:
    """A time as UTC, to the second, in a <time> element."""
    if value is None or value == "":
        return Html('<span class="empty">never</span>')
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return esc(value)
    iso = value.isoformat()
    return fragment('<time datetime="$iso">$text</time>', iso=iso, text=iso[:19].replace("T", " "))


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 90:
        return f"{s} s"
    if s < 90 * 60:
        return f"{s // 60} min"
    if s < 48 * 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d"


def plain(value: Any, limit: int = MAX_VALUE) -> str:
    """A field value as a person reads it: lists joined, nothing as a dash, long text cut."""
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, list | tuple | set | frozenset):
        text = ", ".join(str(v) for v in value)
    elif isinstance(value, dict):
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def show(value: Any, limit: int = MAX_VALUE) -> Html:
    """`plain`, as HTML (nothing as a muted dash)."""
    if value is None or value == "" or value == []:
        return NOTHING
    return esc(plain(value, limit))


def source_label(source: str, platforms: Mapping[str, str]) -> str:
    """History's `source` as a person reads it: a connector with its platform, or the token."""
    if source in platforms:
        return f"{source} ({platforms[source]})" if platforms[source] != source else source
    if source.startswith("api:"):
        return f"token {source[4:]}"
    return source


def task_url(base: str, task_id: str) -> str:
    return f"{base}/tasks/{quote(task_id, safe='')}"


def _task_link(base: str, task_id: str, title: str | None) -> Html:
    return fragment('<a href="$url">$title</a>', url=task_url(base, task_id), title=title or task_id)


def _table(head: Sequence[str], rows: Sequence[Html], empty: str, numeric: Iterable[int] = ()) -> Html:
    if not rows:
        return fragment('<p class="empty">$text</p>', text=empty)
    nums = set(numeric)
    cells = join(
        (
            fragment('<th class="num">$h</th>', h=h) if i in nums else fragment("<th>$h</th>", h=h)
            for i, h in enumerate(head)
        ),
        "",
    )
    return fragment(
        "<table><thead><tr>$cells</tr></thead><tbody>\n$rows\n</tbody></table>", cells=cells, rows=join(rows)
    )


def _csrf(session: Session) -> Html:
    return fragment('<input type="hidden" name="csrf" value="$csrf">', csrf=session.csrf)


def _button_form(
    action: str, session: Session, label: str, *, fields: Mapping[str, str] | None = None, cls: str = ""
) -> Html:
    hidden = join(
        (fragment('<input type="hidden" name="$k" value="$v">', k=k, v=v) for k, v in (fields or {}).items()),
        "",
    )
    return fragment(
        '<form class="inline" method="post" action="$action">$csrf$hidden'
        '<button type="submit" class="$cls">$label</button></form>',
        action=action,
        csrf=_csrf(session),
        hidden=hidden,
        cls=cls,
        label=label,
    )


def needs(scope: str, what: str) -> Html:
    return fragment(
        '<p class="note">$what needs the <code>$scope</code> scope, which this token lacks.</p>',
        what=what,
        scope=scope,
    )


def heading(tag: str, text: str, note: str | None = None) -> Html:
    """A heading (`tag`: h2, h3), with a muted `note` after its text."""
    small = fragment(" <small>$note</small>", note=note) if note else Html("")
    return fragment(f"<{tag}>$text$small</{tag}>", text=text, small=small)


def section(ident: str, title: str, content: Html, note: str | None = None) -> Html:
    """One part of a page: `<section id=ident>` under an h2 (`#ident` is its link)."""
    return fragment(
        '<section id="$id">\n$heading\n$content\n</section>',
        id=ident,
        heading=heading("h2", title, note),
        content=content,
    )


# -- the frame ---------------------------------------------------------------------------------------


def nav(base: str, session: Session | None) -> Html:
    if session is None:
        return Html("")
    return fragment(
        '<span class="who">signed in as <b>$name</b> ($scopes)</span>$logout',
        name=session.name,
        scopes=", ".join(sorted(session.scopes)) or "no scopes",
        logout=_button_form(f"{base}/logout", session, "Sign out"),
    )


def flashes(messages: Iterable[tuple[str, str]]) -> Html:
    return join(
        fragment('<div class="flash $level" role="status">$text</div>', level=level, text=text)
        for level, text in messages
    )


# -- the overview ------------------------------------------------------------------------------------


def connectors(rows: Sequence[Mapping[str, Any]]) -> Html:
    out = []
    for c in rows:
        if c["healthy"]:
            health = Html('<span class="badge ok">healthy</span>')
        elif not c["last_poll"]:
            health = Html('<span class="badge bad">not polled yet</span>')
        else:
            health = Html('<span class="badge bad">unhealthy</span>')
        problems = []
        if c.get("last_error"):
            problems.append(fragment('<div class="error">$e</div>', e=c["last_error"]))
        if c.get("last_parked_error"):
            problems.append(fragment("<div>last parked write: $e</div>", e=c["last_parked_error"]))
        if c.get("deletion_guard"):
            problems.append(fragment("<div>deletion guard: $e</div>", e=c["deletion_guard"]))
        out.append(
            fragment(
                '<tr data-connector="$name"><td><b>$name</b></td><td>$platform</td><td>$health</td>'
                '<td>$polled</td><td class="num">$lag</td><td class="num">$waiting</td>'
                '<td class="num">$parked</td><td class="num">$linked</td><td>$problems</td></tr>',
                name=c["name"],
                platform=c["platform"],
                health=health,
                polled=when(c["last_poll"]),
                lag=ago(c["lag_seconds"]),
                waiting=c["outbox_depth"],
                parked=c["outbox_parked"],
                linked=c["linked_tasks"],
                problems=join(problems, "") if problems else NOTHING,
            )
        )
    return _table(
        ["Connector", "Platform", "Health", "Last poll", "Lag", "Waiting", "Parked", "Linked", "Last error"],
        out,
        "No connector is configured.",
        numeric=(4, 5, 6, 7),
    )


def conflicts(base: str, session: Session, items: Sequence[Any], *, back_task: str | None = None) -> Html:
    """Open conflicts (the API's ConflictOut), each side with its platform, value and time, and a
    button to keep it."""
    if not items:
        return Html('<p class="empty">No open conflict.</p>')
    may = session.may("write")
    out = []
    for c in items:
        sides = []
        for s in c.sides:
            if s.side == "bridge":
                label = "bridge (a value no platform holds)"
            else:
                label = f"{s.side} ({s.platform})" if s.platform and s.platform != s.side else s.side
            fields = {"choose": s.side}
            if back_task:
                fields["back_task"] = back_task
            button = (
                _button_form(
                    f"{base}/conflicts/{c.id}/resolve",
                    session,
                    "Keep this value",
                    fields=fields,
                    cls="primary",
                )
                if may
                else Html("")
            )
            sides.append(
                fragment(
                    '<div class="side" data-side="$side"><div class="meta">$label · changed $at</div>'
                    '<div class="value">$value</div>$button</div>',
                    side=s.side,
                    label=label,
                    at=when(s.at),
                    value=show(s.value),
                    button=button,
                )
            )
        out.append(
            fragment(
                '<article class="conflict" data-conflict="$id"><h3>$task <small>field <code>$field</code>'
                " · route $route · held since $created</small></h3>"
                '<div class="sides">$sides</div></article>',
                id=c.id,
                task=_task_link(base, c.task_id, c.title),
                field=c.field,
                route=c.route,
                created=when(c.created_at),
                sides=join(sides, ""),
            )
        )
    if not may:
        out.append(needs("write", "Resolving a conflict"))
    return join(out)


def _write(base: str, op: Any) -> Html:
    """The cells that say which write an outbox row is: its id, task, connector and kind."""
    return fragment(
        '<td class="num">$id</td><td>$task</td><td>$connector</td><td>$op</td>',
        id=op.id,
        task=_task_link(base, op.task_id, op.title),
        connector=op.connector,
        op=op.op,
    )


def outbox(
    base: str,
    session: Session,
    connector_rows: Sequence[Mapping[str, Any]] | None,
    parked: Sequence[Any] | None,
    waiting: Sequence[Any] | None,
) -> Html:
    out = []
    if connector_rows is not None:
        counts = ", ".join(
            f"{c['name']} {c['outbox_depth']} waiting, {c['outbox_parked']} parked" for c in connector_rows
        )
        out.append(fragment('<p class="note">By connector: $counts.</p>', counts=counts or "none"))
    if parked is None or waiting is None:
        out.append(needs("admin", "Listing, retrying and dropping parked writes"))
        return join(out)
    note = "the outbox will not retry these by itself: retry once the cause is fixed, or drop"
    out.append(heading("h3", "Parked writes", note))
    if parked:
        out.append(_button_form(f"{base}/outbox/retry", session, "Retry every parked write"))
    rows = [
        fragment(
            '<tr data-op="$id">$write<td class="num">$attempts</td><td class="error">$error</td>'
            "<td>$created</td><td>$retry $drop</td></tr>",
            id=op.id,
            write=_write(base, op),
            attempts=op.attempts,
            error=show(op.last_error),
            created=when(op.created_at),
            retry=_button_form(f"{base}/outbox/{op.id}/retry", session, "Retry"),
            drop=_button_form(f"{base}/outbox/{op.id}/drop", session, "Drop", cls="danger"),
        )
        for op in parked
    ]
    out.append(
        _table(
            ["#", "Task", "Connector", "Write", "Attempts", "Last error", "Created", ""],
            rows,
            "No parked write.",
            numeric=(0, 4),
        )
    )
    out.append(heading("h3", "Waiting writes", "newest first, at most 20"))
    rows = [
        fragment(
            '<tr>$write<td>$state</td><td class="num">$attempts</td><td>$next</td>'
            '<td class="error">$error</td></tr>',
            write=_write(base, op),
            state=op.state,
            attempts=op.attempts,
            next=when(op.next_attempt_at),
            error=show(op.last_error),
        )
        for op in waiting
    ]
    out.append(
        _table(
            ["#", "Task", "Connector", "Write", "State", "Attempts", "Next attempt", "Last error"],
            rows,
            "Nothing waiting: every write went out.",
            numeric=(0, 5),
        )
    )
    return join(out)


def _history_row(
    at: datetime | str | None,
    field: str,
    old: Any,
    new: Any,
    source: str,
    via: str,
    platforms: Mapping[str, str],
    task: Html | None = None,
) -> Html:
    """One change of history as a table row: when, (the task,) the field, old → new, from, via."""
    return fragment(
        "<tr><td>$at</td>$task<td><code>$field</code></td>"
        '<td><span class="change">$old → $new</span></td><td>$source</td><td>$via</td></tr>',
        at=when(at),
        task=fragment("<td>$task</td>", task=task) if task is not None else Html(""),
        field=field,
        old=show(old, 120),
        new=show(new, 120),
        source=source_label(source, platforms),
        via=via,
    )


def activity(base: str, rows: Sequence[Any], platforms: Mapping[str, str]) -> Html:
    """History rows (with the task's title), newest first."""
    out = [
        _history_row(
            h.at,
            h.field,
            (h.old or {}).get("v"),
            (h.new or {}).get("v"),
            h.source,
            h.via,
            platforms,
            task=_task_link(base, h.task_id, title),
        )
        for h, title in rows
    ]
    return _table(["When", "Task", "Field", "Change", "From", "Via"], out, "Nothing has happened yet.")


# -- a task ------------------------------------------------------------------------------------------

TASK_FIELDS = ("status", "priority", "assignees", "tags", "due_date", "start_date", "archived", "description")


def task_fields(task: Any) -> Html:
    items = [("id", fragment("<code>$id</code>", id=task.id)), ("route", esc(task.route))]
    items += [(name.replace("_", " "), show(getattr(task, name), 2000)) for name in TASK_FIELDS]
    items += [("created", when(task.created_at)), ("updated", when(task.updated_at))]
    return fragment(
        '<dl class="fields">$items</dl>',
        items=join((fragment("<dt>$k</dt><dd>$v</dd>", k=k, v=v) for k, v in items), ""),
    )


def _remote(url: str | None) -> Html:
    if not url:
        return NOTHING
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        return esc(url)  # shown, never a link: only web pages are
    return fragment('<a href="$url" rel="noopener noreferrer">$url</a>', url=url)


def links(items: Sequence[Any]) -> Html:
    rows = [
        fragment(
            '<tr data-link="$connector"><td><b>$connector</b></td><td>$platform</td><td>$scope</td>'
            "<td><code>$remote_id</code></td><td>$state</td><td>$url</td></tr>",
            connector=lk.connector,
            platform=lk.platform,
            scope=lk.scope,
            remote_id=lk.remote_id or "-",
            state=lk.state,
            url=_remote(lk.remote_url),
        )
        for lk in items
    ]
    return _table(
        ["Connector", "Platform", "Scope", "Remote id", "State", "Remote page"], rows, "No copy yet."
    )


def history(items: Sequence[Mapping[str, Any]], platforms: Mapping[str, str]) -> Html:
    rows = [
        _history_row(h["at"], h["field"], h["old"], h["new"], h["source"], h["via"], platforms)
        for h in reversed(items)
    ]
    return _table(["When", "Field", "Change", "From", "Via"], rows, "No history.")
