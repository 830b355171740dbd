"""`taskbridge status`, `taskbridge conflicts list|resolve` and `taskbridge outbox|inbox
list|retry|drop`: the unified API, from a terminal."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from bridge.config import ServerConfig

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def daemon_urls(server: ServerConfig) -> list[str]:
    """Where a config's daemon answers: its `server.listen` (a wildcard address read as this
    machine's loopback), then its `server.public_url` if it has one."""
    host = server.host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    urls = [f"http://[{host}]:{server.port}" if ":" in host else f"http://{host}:{server.port}"]
    if server.public_url and server.public_url not in urls:
        urls.append(server.public_url)
    return urls


class ApiClient:
    """The API at `url`, or the first of several addresses that answers (`--config`: the listen
    address, then the public URL)."""

    def __init__(self, url: str | Sequence[str], token: str | None) -> None:
        self.urls = [u.rstrip("/") for u in ([url] if isinstance(url, str) else url)]
        self.url = self.urls[0]
        self.token = token or os.environ.get("TASKBRIDGE_TOKEN")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        if not self.token:
            raise UsageError(
                "no API token: pass --token or set TASKBRIDGE_TOKEN (the config holds only tokens' "
                "hashes; `taskbridge token new` mints one)"
            )
        r: httpx.Response | None = None
        for i, url in enumerate(self.urls):
            try:
                r = httpx.request(
                    method,
                    url + path,
                    json=body,
                    timeout=30,
                    headers={"Authorization": f"Bearer {self.token}"},
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if i < len(self.urls) - 1:
                    continue  # nothing listens there: the next address
                where = " or ".join(self.urls)
                raise CliError(f"cannot reach the daemon at {where}: {type(exc).__name__}") from None
            except httpx.HTTPError as exc:
                raise CliError(f"cannot reach the daemon at {url}: {type(exc).__name__}") from None
            self.url, self.urls = url, [url]  # the address that answered, from now on
            break
        assert r is not None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise CliError(
                f"{method} {path}: HTTP {r.status_code}: {detail}", status=r.status_code, detail=detail
            )
        return r.json() if r.content else None


class CliError(Exception):
    """The command failed; the message says why. `status` is the API's HTTP status when it
    answered (None when it could not be reached), `detail` what it said."""

    def __init__(self, message: str, *, status: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class UsageError(CliError):
    """The command was given arguments that do not fit together (exit 2)."""


def status(api: ApiClient, console: Console) -> int:
    rows = api.call("GET", "/api/v1/connectors")
    table = Table(title="connectors")
    for col in ("name", "platform", "healthy", "last poll", "lag s", "outbox", "parked", "last error"):
        table.add_column(col)
    unhealthy = 0
    for c in rows:
        healthy = bool(c["healthy"])
        unhealthy += not healthy
        lag = f"{c['lag_seconds']:.0f}" if c.get("lag_seconds") is not None else "-"
        error = c.get("deletion_guard") or c.get("last_error") or c.get("last_parked_error") or ""
        table.add_row(
            c["name"],
            c["platform"],
            "yes" if healthy else "[red]no[/red]",
            c.get("last_poll") or "never",
            lag,
            str(c["outbox_depth"]),
            str(c["outbox_parked"]),
            error[:80],
        )
    console.print(table)
    conflicts = api.call("GET", "/api/v1/conflicts?state=open")
    console.print(f"{len(conflicts)} open conflicts")
    return EXIT_FAILED if unhealthy else EXIT_OK


def conflicts_list(api: ApiClient, console: Console, state: str) -> int:
    rows = api.call("GET", f"/api/v1/conflicts?state={state}")
    table = Table(title=f"{state} conflicts")
    for col in ("id", "task", "route", "field", "candidates", "state"):
        table.add_column(col)
    for c in rows:
        candidates = ", ".join(f"{k}={json.dumps(v)}" for k, v in c["candidates"].items())
        table.add_row(str(c["id"]), c["task_id"], c["route"], c["field"], candidates, c["state"])
    console.print(table)
    return EXIT_OK


def conflicts_resolve(
    api: ApiClient, console: Console, conflict_id: int, choose: str | None, value: str | None
) -> int:
    if (choose is None) == (value is None):
        raise UsageError("give exactly one of --choose SIDE or --value JSON")
    body: dict[str, Any] = {"choose": choose} if choose is not None else {"value": _json_value(value or "")}
    result = api.call("POST", f"/api/v1/conflicts/{conflict_id}/resolve", body)
    if "field" not in result:  # a token without the read scope is told only that it worked
        console.print(f"conflict {conflict_id} resolved")
        return EXIT_OK
    console.print(
        f"conflict {conflict_id} resolved: {result['field']} = {json.dumps(result['resolution'].get('value'))}"
    )
    return EXIT_OK


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # a bare word is a string


# -- dead letters: `taskbridge outbox ...` and `taskbridge inbox ...` --------------------------------

# What each kind of dead letter is called, its API path and its listing's key; its table's columns
# (short ones kept whole, the long text last so it wraps) and each row's cells.
_KINDS: dict[str, dict[str, Any]] = {
    "outbox": {
        "noun": "operation",
        "nouns": "operations",
        "path": "/api/v1/outbox",
        "items": "operations",
        "columns": ("id", "connector", "op", "tries", "task", "last error"),
        "row": lambda o: (
            str(o["id"]),
            o["connector"],
            o["op"],
            str(o["attempts"]),
            o.get("title") or o["task_id"],
            (o.get("last_error") or "")[:200],
        ),
    },
    "inbox": {
        "noun": "delivery",
        "nouns": "deliveries",
        "path": "/api/v1/inbox",
        "items": "deliveries",
        "columns": ("id", "connector", "tries", "received", "error"),
        "row": lambda d: (
            str(d["id"]),
            d["connector"],
            str(d["attempts"]),
            d["received_at"][:19].replace("T", " "),
            (d.get("error") or "")[:200],
        ),
    },
}


def deadletters_list(
    api: ApiClient,
    console: Console,
    kind: str,
    *,
    state: str,
    connector: str | None,
    limit: int,
    cursor: int | None,
    as_json: bool,
) -> int:
    k = _KINDS[kind]
    query: dict[str, Any] = {"state": state, "limit": limit}
    if connector:
        query["connector"] = connector
    if cursor is not None:
        query["cursor"] = cursor
    page = api.call("GET", f"{k['path']}?{urlencode(query)}")
    if as_json:
        print(json.dumps(page, indent=2))
        return EXIT_OK
    rows = page[k["items"]]
    table = Table(title=f"{kind}: {state} {k['nouns']}" + (f" of {connector}" if connector else ""))
    columns = k["columns"] if state != "all" else (*k["columns"][:2], "state", *k["columns"][2:])
    for i, col in enumerate(columns):
        long_text = i >= len(columns) - 2 and col not in ("tries", "received", "state")
        table.add_column(col, no_wrap=not long_text, overflow="fold" if long_text else "ellipsis")
    for item in rows:
        cells = k["row"](item)
        table.add_row(*(cells if state != "all" else (*cells[:2], item["state"], *cells[2:])))
    console.print(table)
    more = f"; the next page: --cursor {page['next_cursor']}" if page.get("next_cursor") else ""
    console.print(f"{len(rows)} {k['nouns'] if len(rows) != 1 else k['noun']}{more}")
    return EXIT_OK


def deadletters_retry(
    api: ApiClient, console: Console, kind: str, ids: list[int], *, every: bool, connector: str | None
) -> int:
    k = _KINDS[kind]
    if every == bool(ids):
        raise UsageError(f"give the ids of the {k['nouns']} to retry, or --all (not both)")
    if connector and not every:
        raise UsageError("--connector goes with --all")
    if every:
        report = api.call("POST", f"{k['path']}/retry", {"connector": connector})
        for r in report["results"]:
            if not r["ok"]:
                _say_failed(k["noun"], r["id"], r["error"])
        where = f" of {connector}" if connector else ""
        state = "parked" if kind == "outbox" else "failed"
        console.print(f"{report['done']} {state} {k['nouns']}{where} retried")
        return EXIT_FAILED if report["failed"] else EXIT_OK
    return _each(api, console, k, ids, "POST", "/retry", "retried")


def deadletters_drop(api: ApiClient, console: Console, kind: str, ids: list[int]) -> int:
    k = _KINDS[kind]
    return _each(api, console, k, ids, "DELETE", "", "dropped")


def _each(
    api: ApiClient, console: Console, k: dict[str, Any], ids: list[int], method: str, suffix: str, done: str
) -> int:
    """The action on each id in turn, each reported; 1 when any of them was refused. An API that
    cannot be reached (or refuses the token) stops the command at once."""
    failed = 0
    for item_id in dict.fromkeys(ids):
        try:
            result = api.call(method, f"{k['path']}/{item_id}{suffix}")
        except CliError as exc:
            if exc.status not in (404, 409):
                raise
            failed += 1
            _say_failed(k["noun"], item_id, exc.detail)
            continue
        console.print(f"{k['noun']} {item_id} ({result.get('connector') or '?'}) {done}")
    return EXIT_FAILED if failed else EXIT_OK


def _say_failed(noun: str, item_id: int, why: Any) -> None:
    print(f"{noun} {item_id}: {why}", file=sys.stderr)
