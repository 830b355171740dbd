"""`taskbridge status` and `taskbridge conflicts list|resolve`: the unified API, from a terminal."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class ApiClient:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token or os.environ.get("TASKBRIDGE_TOKEN")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        if not self.token:
            raise CliError("no API token: pass --token or set TASKBRIDGE_TOKEN (see `taskbridge token new`)")
        try:
            r = httpx.request(
                method,
                self.url + path,
                json=body,
                timeout=30,
                headers={"Authorization": f"Bearer {self.token}"},
            )
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the daemon at {self.url}: {type(exc).__name__}") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise CliError(f"{method} {path}: HTTP {r.status_code}: {detail}")
        return r.json() if r.content else None


class CliError(Exception):
    pass


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
        raise CliError("give exactly one of --choose SIDE or --value JSON")
    body: dict[str, Any] = {"choose": choose} if choose is not None else {"value": _json_value(value or "")}
    result = api.call("POST", f"/api/v1/conflicts/{conflict_id}/resolve", body)
    console.print(
        f"conflict {conflict_id} resolved: {result['field']} = {json.dumps(result['resolution'].get('value'))}"
    )
    return EXIT_OK


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # a bare word is a string
