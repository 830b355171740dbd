"""What people do on each platform, through that platform's own API, and what they see there.

Tests use these to make changes the bridge must notice (never through the bridge) and to check
what each platform shows afterwards, in canonical terms (via the platform's default mapping).
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import httpx

from bridge import mapping
from tests.world import PERSON_TOKENS, World

MAPS = {p: mapping.load(p) for p in ("impactly", "vortask", "agentkanban", "runs", "squads")}


def _unwrap(body: Any) -> Any:
    if isinstance(body, dict):
        for key in ("data", "task"):
            if key in body and isinstance(body[key], dict | list):
                return body[key]
    return body


def raw_tasks(world: World, platform: str) -> list[dict[str, Any]]:
    """Every task of the world's scope, as the platform lists it (archived included)."""
    scope = world.scopes[platform]
    with world.client(platform) as c:
        if platform == "impactly":
            out: list[dict[str, Any]] = []
            cursor = None
            while True:
                params: dict[str, Any] = {"limit": 100}
                if cursor:
                    params["cursor"] = cursor
                page = c.get(f"/projects/{scope}/tasks", params=params).json()
                out += page["data"]
                cursor = page.get("next_cursor")
                if not cursor:
                    return out
        if platform == "vortask":
            return list(c.get(f"/projects/{scope}/tasks").json())
        if platform == "agentkanban":
            tasks = c.get(f"/boards/{scope}/tasks", params={"includeArchived": "true"}).json()["data"]
            return [c.get(f"/boards/{scope}/tasks/{t['id']}").json()["data"] for t in tasks]
        if platform == "runs":
            out, offset = [], 0
            while True:
                page = c.get(
                    f"/projects/{scope}/tasks/", params={"limit": 100, "offset": offset, "archived": "all"}
                ).json()
                out += page["results"]
                if not page["next"]:
                    return out
                offset += 100
        return list(c.get("/tasks", params={"squad": scope}).json()["tasks"])


def view(world: World, platform: str) -> dict[str, dict[str, Any]]:
    """title -> canonical-ish view of each task on a platform (fails on duplicate titles)."""
    out: dict[str, dict[str, Any]] = {}
    lanes = _lanes(world) if platform == "agentkanban" else {}
    for t in raw_tasks(world, platform):
        v = _canonical(world, platform, t, lanes)
        assert v["title"] not in out, f"duplicate task {v['title']!r} on {platform}"
        out[v["title"]] = v
    return out


def parents(world: World, platform: str) -> dict[str, str | None]:
    """title -> the title of its parent there (None: top level), on Impactly or Nucleus."""
    tasks = raw_tasks(world, platform)
    title_of = {str(t["id"]): t["title"] for t in tasks}
    return {
        t["title"]: title_of.get(str(t["parent_task_id"])) if t.get("parent_task_id") else None for t in tasks
    }


def _person(world: World, platform: str, remote_id: str | None) -> str | None:
    for key, ids in world.people.items():
        if ids.get(platform) == remote_id:
            return key
    return remote_id


def _canonical(world: World, platform: str, t: dict[str, Any], lanes: dict[str, str]) -> dict[str, Any]:
    m = MAPS[platform]
    v: dict[str, Any] = {"id": str(t["id"]), "title": t["title"], "description": t.get("description") or ""}
    if platform == "impactly":
        v.update(
            status=m.status.to_canonical(t["status"]),
            priority=m.priority.to_canonical(t["priority"]),  # type: ignore[union-attr]
            due_date=t.get("due_date"),
            assignees={_person(world, platform, t["assignee_id"])} - {None},
        )
    elif platform == "vortask":
        v.update(
            status=m.status.to_canonical(t["status"]),
            priority=m.priority.to_canonical(t["priority"]),  # type: ignore[union-attr]
            due_date=(t.get("dueDate") or "")[:10] or None,
            tags=set(t.get("tags") or []),
            assignees={_person(world, platform, a["userId"]) for a in t.get("assignees") or []},
        )
    elif platform == "agentkanban":
        v.update(
            status=m.status.to_canonical(lanes[t["laneId"]]),
            priority=m.priority.to_canonical(t["priority"]),  # type: ignore[union-attr]
            tags=set(t.get("tags") or []),
            archived=t.get("archived", False),
        )
    elif platform == "runs":
        run = t.get("latest_run") or {}
        v.update(status=m.status.to_canonical(run.get("status", "not_started")), archived=t.get("archived"))  # type: ignore[union-attr]
    else:
        v.update(
            status=m.status.to_canonical(t.get("status_value") or "todo"),  # type: ignore[union-attr]
            priority=m.priority.to_canonical(t.get("priority_value")),  # type: ignore[union-attr]
            due_date=t.get("due_date"),
            assignees={_person(world, platform, t.get("assignee_id"))} - {None},
        )
    v["status"] = str(v["status"])
    if "priority" in v:
        v["priority"] = str(v["priority"])
    return v


def _lanes(world: World) -> dict[str, str]:
    with world.client("agentkanban") as c:
        return {
            lane["id"]: lane["name"]
            for lane in c.get(f"/boards/{world.scopes['agentkanban']}/lanes").json()["data"]
        }


def create(world: World, platform: str, title: str, **fields: Any) -> str:
    """Create a task as a person would; `fields` are canonical (status, priority, ...)."""
    scope = world.scopes[platform]
    m = MAPS[platform]
    with world.client(platform) as c:
        if platform == "impactly":
            body: dict[str, Any] = {"title": title, "project_id": scope}
            if "priority" in fields:
                body["priority"] = m.priority.to_remote(fields["priority"])  # type: ignore[union-attr]
            if "parent" in fields:
                body["parent_task_id"] = fields["parent"]  # the parent's id there
            r = c.post("/tasks", json=body)
        elif platform == "vortask":
            prio = m.priority.to_remote(fields.get("priority", "medium"))  # type: ignore[union-attr]
            r = c.post(
                f"/projects/{scope}/tasks",
                json={"title": title, "priority": prio, "tags": fields.get("tags", [])},
            )
        elif platform == "agentkanban":
            body = {"title": title}
            if "priority" in fields:
                body["priority"] = m.priority.to_remote(fields["priority"])  # type: ignore[union-attr]
            r = c.post(f"/boards/{scope}/tasks", json=body)
        elif platform == "runs":
            r = c.post(f"/projects/{scope}/tasks/", json={"title": title, "description": ""})
        else:
            body = {"title": title}
            if "priority" in fields:
                body["priority_id"] = _item(world, "task_priority", m.priority.to_remote(fields["priority"]))  # type: ignore[union-attr]
            if "parent" in fields:
                body["parent_task_id"] = fields["parent"]
            r = c.post("/tasks", json=body)
        assert r.status_code == 201, r.text
        task_id = str(_unwrap(r.json())["id"])
    rest = {
        k: v for k, v in fields.items() if k not in ("priority", "tags", "parent") or platform in ("runs",)
    }
    if rest:
        edit(world, platform, task_id, **rest)
    return task_id


def _item(world: World, key: str, value: str | None) -> str | None:
    if value is None:
        return None
    with world.client("squads") as c:
        items = c.get(f"/config-lists/{key}/items").json()["items"]
    return next(i["id"] for i in items if i["value"] == value)


def edit(world: World, platform: str, task_id: str, **fields: Any) -> None:
    """Change canonical fields of a task on a platform, through its own API."""
    scope = world.scopes[platform]
    m = MAPS[platform]
    ids = world.people
    with world.client(platform) as c:
        if platform == "impactly":
            body: dict[str, Any] = {}
            for k, v in fields.items():
                if k == "title":
                    body["title"] = v
                elif k == "status":
                    body["status"] = m.status.to_remote(v)  # type: ignore[union-attr]
                elif k == "priority":
                    body["priority"] = m.priority.to_remote(v)  # type: ignore[union-attr]
                elif k == "due_date":
                    body["due_date"] = str(v) if v else None
                elif k == "assignee":
                    body["assignee_id"] = ids[v]["impactly"] if v else None
                elif k == "description":
                    body["description"] = v
                elif k == "parent":
                    body["parent_task_id"] = v  # the parent's Impactly id, or None
            r = c.patch(f"/tasks/{task_id}", json=body)
        elif platform == "vortask":
            body = {}
            for k, v in fields.items():
                if k in ("title", "description", "tags"):
                    body[k] = sorted(v) if k == "tags" else v
                elif k == "status":
                    body["status"] = m.status.to_remote(v)  # type: ignore[union-attr]
                elif k == "priority":
                    body["priority"] = m.priority.to_remote(v)  # type: ignore[union-attr]
                elif k == "due_date":
                    body["dueDate"] = str(v) if v else None
                elif k == "assignee":
                    body["assigneeIds"] = [ids[v]["vortask"]] if v else []
            r = c.put(f"/projects/{scope}/tasks/{task_id}", json=body)
        elif platform == "agentkanban":
            body = {}
            for k, v in fields.items():
                if k in ("title", "description", "tags", "archived"):
                    body[k] = sorted(v) if k == "tags" else v
                elif k == "priority":
                    body["priority"] = m.priority.to_remote(v)  # type: ignore[union-attr]
            if "status" in fields:
                lanes = {name: lane_id for lane_id, name in _lanes(world).items()}
                lane = lanes[m.status.to_remote(fields["status"])]  # type: ignore[union-attr]
                mv = c.post(f"/boards/{scope}/tasks/{task_id}/move", json={"laneId": lane})
                assert mv.status_code == 200, mv.text
            r = c.patch(f"/boards/{scope}/tasks/{task_id}", json=body) if body else mv
        elif platform == "runs":
            body = {k: v for k, v in fields.items() if k in ("title", "description", "archived")}
            r = c.patch(f"/projects/{scope}/tasks/{task_id}/", json=body) if body else None  # type: ignore[assignment]
            if "status" in fields:
                r = _set_run_status(c, scope, task_id, m.status.to_remote(fields["status"]))  # type: ignore[union-attr]
        else:
            body = {}
            for k, v in fields.items():
                if k in ("title", "description"):
                    body[k] = v
                elif k == "status":
                    body["status_id"] = _item(world, "task_status", m.status.to_remote(v))  # type: ignore[union-attr]
                elif k == "priority":
                    body["priority_id"] = _item(world, "task_priority", m.priority.to_remote(v))  # type: ignore[union-attr]
                elif k == "due_date":
                    body["due_date"] = str(v) if v else None
                elif k == "assignee":
                    body["assignee_id"] = ids[v]["squads"] if v else None
                elif k == "parent":
                    body["parent_task_id"] = v  # the parent's Nucleus id, or None
            r = c.put(f"/tasks/{task_id}", json=body)
        assert r is not None and r.status_code in (200, 201), r.text


def _set_run_status(c: httpx.Client, scope: str, task_id: str, status: str) -> httpx.Response:
    """A run's agent moving it along: start a run, then set its status."""
    task = c.post(f"/projects/{scope}/tasks/{task_id}/run/", json={}).json()
    run_id = task["latest_run"]["id"]
    return c.patch(f"/projects/{scope}/tasks/{task_id}/runs/{run_id}/", json={"status": status})


def comment(world: World, platform: str, task_id: str, body: str) -> None:
    """A person's comment (not the bridge's own credential, whose comments it never re-reads)."""
    if platform == "impactly":
        fake: Any = world.fakes["impactly"]
        fake.call(lambda: fake.add_comment(task_id, body))
    elif platform == "agentkanban":
        with world.client(platform) as c:
            r = c.post(
                f"/boards/{world.scopes[platform]}/tasks/{task_id}/comments",
                json={"body": body, "authorName": "Bea", "source": "agent"},
            )
            assert r.status_code == 201, r.text
    elif platform == "vortask":
        mcp_call(world, "add_comment", {"taskId": int(task_id), "body": body}, token=PERSON_TOKENS["vortask"])
    else:
        raise ValueError(f"{platform} has no comments")


def comments(world: World, platform: str, task_id: str) -> list[str]:
    if platform == "impactly":
        with world.client(platform) as c:
            return [
                x["content"]
                for x in c.get(f"/tasks/{task_id}/comments", params={"limit": 100}).json()["data"]
            ]
    if platform == "agentkanban":
        with world.client(platform) as c:
            data = c.get(f"/boards/{world.scopes[platform]}/tasks/{task_id}/comments").json()["data"]
            return [f"{x.get('authorName')}: {x['body']}" for x in data]
    if platform == "vortask":
        result = mcp_call(world, "list_comments", {"taskId": int(task_id)})
        return [x["body"] for x in result]
    raise ValueError(f"{platform} has no comments")


def mcp_call(world: World, tool: str, arguments: dict[str, Any], *, token: str | None = None) -> Any:
    """One MCP tool call on the Vortask fake over raw JSON-RPC (Streamable HTTP)."""
    from tests.world import TOKENS

    url = world.fakes["vortask"].url + "/mcp"
    headers = {
        "Authorization": f"Bearer {token or TOKENS['vortask']}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    with httpx.Client(timeout=30) as c:
        init = c.post(
            url,
            headers=headers,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2024-11-05",
                    "capabilities": {},
                    "clientInfo": {"name": "tests", "version": "1"},
                },
            },
        )
        assert init.status_code == 200, init.text
        headers["mcp-session-id"] = init.headers["mcp-session-id"]
        c.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        r = c.post(
            url,
            headers=headers,
            json={
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": tool, "arguments": arguments},
            },
        )
        message = _jsonrpc(r)
    result = message["result"]
    assert not result.get("isError"), result
    return json.loads(result["content"][0]["text"])


def _jsonrpc(r: httpx.Response) -> dict[str, Any]:
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        for line in r.text.splitlines():
            if line.startswith("data:"):
                return json.loads(line[5:])
        raise AssertionError(f"no data in the event stream: {r.text!r}")
    return dict(r.json())


def today_plus(days: int) -> str:
    from datetime import timedelta

    return (date.today() + timedelta(days=days)).isoformat()
