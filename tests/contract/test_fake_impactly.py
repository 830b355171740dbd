"""Contract tests of the Impactly fake, over real loopback HTTP.

They pin the documented API (shared/platforms/impactly.txt + NOTES.md) and the assumptions listed in
connectors/impactly/fake.py's docstring, so a connector written against the fake stays honest.
"""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.fakekit import free_port
from connectors.impactly.fake import DEFAULT_PROJECT_ID, ImpactlyFake

TOKEN = "imp_test"
READ_ONLY = "imp_readonly"
TASK_KEYS = {
    "id",
    "title",
    "description",
    "status",
    "priority",
    "assignee_id",
    "project_id",
    "parent_task_id",
    "due_date",
    "created_at",
    "updated_at",
}
REPO = Path(__file__).resolve().parents[2]


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[ImpactlyFake]:
    server = ImpactlyFake(token=TOKEN)
    server.add_key(READ_ONLY, write=False, name="Reader")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def control(fake: ImpactlyFake) -> Iterator[httpx.Client]:
    """The harness's /_fake routes. Clients are module-scoped: building one costs ~0.2 s (TLS setup)."""
    with httpx.Client(base_url=fake.url, timeout=5) as c:
        yield c


@pytest.fixture(autouse=True)
def clean(control: httpx.Client) -> None:
    assert control.post("/_fake/reset").status_code == 200


def client(fake: ImpactlyFake, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=f"{fake.url}/api/v1", headers=headers, timeout=5)


@pytest.fixture(scope="module")
def api(fake: ImpactlyFake) -> Iterator[httpx.Client]:
    with client(fake, TOKEN) as c:
        yield c


@pytest.fixture(scope="module")
def reader(fake: ImpactlyFake) -> Iterator[httpx.Client]:
    with client(fake, READ_ONLY) as c:
        yield c


@pytest.fixture(scope="module")
def anon(fake: ImpactlyFake) -> Iterator[httpx.Client]:
    with client(fake, None) as c:
        yield c


def new_task(api: httpx.Client, title: str = "Write the report", **fields: Any) -> dict[str, Any]:
    resp = api.post("/tasks", json={"title": title, **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()


def assert_error(resp: httpx.Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    uuid.UUID(body["request_id"])
    if field is None:
        assert "field" not in body
    else:
        assert body["field"] == field
    return body


def all_pages(api: httpx.Client, path: str, limit: int, **params: Any) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        resp = api.get(path, params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert set(body) == {"data", "next_cursor", "has_more"}
        assert (body["next_cursor"] is None) == (not body["has_more"])
        pages.append(body["data"])
        if not body["has_more"]:
            return pages
        cursor = body["next_cursor"]


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def my_agent_id(api: httpx.Client) -> str:
    return str(api.get("/agents/me").json()["id"])


# -- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "imp_wrong"])
@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/tasks"),
        ("POST", "/tasks"),
        ("GET", "/health"),
        ("GET", "/projects"),
        ("GET", "/agents/me"),
        ("POST", "/search"),
    ],
)
def test_missing_or_wrong_token_is_401(anon: httpx.Client, token: str | None, method: str, path: str) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = anon.request(method, path, json={"title": "x", "query": "x"}, headers=headers)
    assert_error(resp, 401, "unauthorized")


def test_non_bearer_scheme_is_401(anon: httpx.Client) -> None:
    assert_error(anon.get("/tasks", headers={"Authorization": f"Basic {TOKEN}"}), 401, "unauthorized")


def test_read_only_key_reads_but_cannot_write(api: httpx.Client, reader: httpx.Client) -> None:
    task = new_task(api)
    other = new_task(api, "Other")
    hook = api.post("/webhooks", json={"url": "http://127.0.0.1:9/h", "events": ["*"]}).json()
    writes = [
        ("POST", "/tasks", {"title": "x"}),
        ("PATCH", f"/tasks/{task['id']}", {"title": "y"}),
        ("DELETE", f"/tasks/{task['id']}", None),
        ("POST", f"/tasks/{task['id']}/comments", {"content": "hi"}),
        ("POST", f"/tasks/{task['id']}/blockers", {"blocker_id": other["id"]}),
        ("DELETE", f"/tasks/{task['id']}/blockers/{other['id']}", None),
        ("POST", f"/tasks/{task['id']}/dependents", {"dependent_id": other["id"]}),
        ("DELETE", f"/tasks/{task['id']}/dependents/{other['id']}", None),
        ("POST", "/webhooks", {"url": "http://127.0.0.1:9/h", "events": ["*"]}),
        ("DELETE", f"/webhooks/{hook['id']}", None),
    ]
    for method, path, body in writes:
        resp = reader.request(method, path, json=body)
        assert assert_error(resp, 403, "forbidden")["message"] == "Insufficient permissions", path
    assert api.get(f"/tasks/{task['id']}").json()["title"] == "Write the report"
    for path in [
        "/tasks",
        f"/tasks/{task['id']}",
        f"/tasks/{task['id']}/comments",
        "/projects",
        "/activity",
        "/webhooks",
        "/health",
        f"/tasks/{task['id']}/blockers",
    ]:
        assert reader.get(path).status_code == 200, path
    assert reader.post("/search", json={"query": "report"}).json()["data"][0]["id"] == task["id"]
    assert reader.get("/agents/me").json()["permissions"] == ["read"]


# -- health, unknown routes -----------------------------------------------------------------------


def test_health(api: httpx.Client) -> None:
    resp = api.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


def test_unknown_route_and_method_use_the_error_shape(api: httpx.Client) -> None:
    assert_error(api.get("/nope"), 404, "not_found")
    assert_error(api.put("/tasks"), 405, "method_not_allowed")


# -- projects -------------------------------------------------------------------------------------


def test_projects_list_and_get(fake: ImpactlyFake, api: httpx.Client) -> None:
    assert fake.project_id == DEFAULT_PROJECT_ID
    body = api.get("/projects").json()
    assert body["has_more"] is False and body["next_cursor"] is None
    [project] = body["data"]
    assert project["id"] == DEFAULT_PROJECT_ID
    assert project["name"] == "Default" and project["visibility"] == "public" and project["color"] is None
    assert set(project) == {"id", "name", "color", "visibility", "created_at"}
    assert api.get(f"/projects/{DEFAULT_PROJECT_ID}").json() == project
    assert_error(api.get(f"/projects/{uuid.uuid4()}"), 404, "not_found")
    assert_error(api.get("/projects/not-a-uuid"), 404, "not_found")


def test_projects_paginate(fake: ImpactlyFake, api: httpx.Client) -> None:
    second = fake.call(lambda: fake.add_project("Grants", visibility="private", color="#ff8800"))
    pages = all_pages(api, "/projects", 1)
    assert [[p["id"] for p in page] for page in pages] == [[DEFAULT_PROJECT_ID], [second]]
    assert pages[1][0]["visibility"] == "private" and pages[1][0]["color"] == "#ff8800"


def test_project_tasks(fake: ImpactlyFake, api: httpx.Client) -> None:
    other = fake.call(lambda: fake.add_project("Grants"))
    mine = [new_task(api, f"t{i}")["id"] for i in range(3)]
    new_task(api, "elsewhere", project_id=other)
    pages = all_pages(api, f"/projects/{DEFAULT_PROJECT_ID}/tasks", 2)
    assert [t["id"] for page in pages for t in page] == mine
    # Undocumented there: task filters are ignored, not applied.
    body = api.get(f"/projects/{DEFAULT_PROJECT_ID}/tasks", params={"status": "completed"}).json()
    assert len(body["data"]) == 3
    assert [t["title"] for t in api.get(f"/projects/{other}/tasks").json()["data"]] == ["elsewhere"]
    assert_error(api.get(f"/projects/{uuid.uuid4()}/tasks"), 404, "not_found")


# -- tasks: create, get -----------------------------------------------------------------------


def test_create_task_minimal_defaults(api: httpx.Client) -> None:
    resp = api.post("/tasks", json={"title": "Call the printer"})
    assert resp.status_code == 201
    task = resp.json()
    assert set(task) == TASK_KEYS
    uuid.UUID(task["id"])
    assert task["title"] == "Call the printer"
    assert task["status"] == "active"
    assert task["project_id"] == DEFAULT_PROJECT_ID
    assert task["description"] is None and task["priority"] is None and task["assignee_id"] is None
    assert task["parent_task_id"] is None and task["due_date"] is None
    assert task["created_at"] == task["updated_at"] and task["created_at"].endswith("Z")
    assert api.get(f"/tasks/{task['id']}").json() == task


def test_create_task_all_fields(fake: ImpactlyFake, api: httpx.Client) -> None:
    alice = fake.member_id("Alice Chen")
    parent = new_task(api, "Parent")
    task = new_task(
        api,
        "Child",
        project_id=DEFAULT_PROJECT_ID,
        description="Details",
        assignee_id=alice,
        priority="urgent",
        parent_task_id=parent["id"],
        due_date="2030-02-28",
    )
    assert (task["description"], task["assignee_id"], task["priority"]) == ("Details", alice, "urgent")
    assert (task["parent_task_id"], task["due_date"]) == (parent["id"], "2030-02-28")
    # An agent can be an assignee too, and a subtask without project_id joins its parent's project.
    other = fake.call(lambda: fake.add_project("Grants"))
    top = new_task(api, "Top", project_id=other)
    sub = new_task(api, "Sub", parent_task_id=top["id"], assignee_id=my_agent_id(api))
    assert sub["project_id"] == other


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "title"),
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"title": 5}, "title"),
        ({"title": None}, "title"),
        ({"title": "x" * 501}, "title"),
        ({"title": "x", "priority": "critical"}, "priority"),
        ({"title": "x", "priority": "High"}, "priority"),
        ({"title": "x", "assignee_id": "bob"}, "assignee_id"),
        ({"title": "x", "assignee_id": str(uuid.uuid4())}, "assignee_id"),
        ({"title": "x", "due_date": "2024-02-30"}, "due_date"),
        ({"title": "x", "due_date": "2024-02-03T10:00:00Z"}, "due_date"),
        ({"title": "x", "due_date": "03/02/2024"}, "due_date"),
        ({"title": "x", "parent_task_id": str(uuid.uuid4())}, "parent_task_id"),
        ({"title": "x", "parent_task_id": "12"}, "parent_task_id"),
        ({"title": "x", "project_id": str(uuid.uuid4())}, "project_id"),
        ({"title": "x", "project_id": None}, "project_id"),
        ({"title": "x", "description": 3}, "description"),
        ({"title": "x", "status": "completed"}, "status"),  # not a create field
        ({"title": "x", "tags": ["a"]}, "tags"),
    ],
)
def test_create_task_validation(api: httpx.Client, body: dict[str, Any], field: str) -> None:
    assert_error(api.post("/tasks", json=body), 400, "validation_error", field)
    assert api.get("/tasks").json()["data"] == []


def test_create_task_body_must_be_a_json_object(api: httpx.Client) -> None:
    assert_error(
        api.post("/tasks", content=b"{not json", headers={"Content-Type": "application/json"}),
        400,
        "validation_error",
    )
    assert_error(api.post("/tasks", json=["title"]), 400, "validation_error")


def test_subtask_parent_must_share_the_project(fake: ImpactlyFake, api: httpx.Client) -> None:
    other = fake.call(lambda: fake.add_project("Grants"))
    parent = new_task(api, "Parent", project_id=other)
    resp = api.post(
        "/tasks", json={"title": "x", "project_id": DEFAULT_PROJECT_ID, "parent_task_id": parent["id"]}
    )
    assert_error(resp, 400, "validation_error", "parent_task_id")


def test_get_unknown_task_is_404(api: httpx.Client) -> None:
    assert_error(api.get(f"/tasks/{uuid.uuid4()}"), 404, "not_found")
    assert_error(api.get("/tasks/123"), 404, "not_found")


# -- tasks: update, delete ------------------------------------------------------------------------


def test_patch_task(fake: ImpactlyFake, api: httpx.Client) -> None:
    bob = fake.member_id("Bob Okafor")
    task = new_task(api, description="old", priority="low", due_date="2030-01-01")
    resp = api.patch(
        f"/tasks/{task['id']}",
        json={
            "title": "New",
            "priority": "high",
            "assignee_id": bob,
            "status": "completed",
            "due_date": "2030-01-31",
        },
    )
    assert resp.status_code == 200
    updated = resp.json()
    assert (updated["title"], updated["priority"], updated["assignee_id"]) == ("New", "high", bob)
    assert (updated["status"], updated["due_date"]) == ("completed", "2030-01-31")
    assert updated["created_at"] == task["created_at"] and updated["updated_at"] > task["updated_at"]
    cleared = api.patch(
        f"/tasks/{task['id']}",
        json={
            "description": None,
            "priority": None,
            "assignee_id": None,
            "due_date": None,
            "status": "active",
        },
    ).json()
    assert [cleared[k] for k in ("description", "priority", "assignee_id", "due_date")] == [None] * 4
    assert cleared["status"] == "active"
    assert api.get(f"/tasks/{task['id']}").json() == cleared


def test_patch_without_changes_still_bumps_updated_at(api: httpx.Client) -> None:
    task = new_task(api)
    same = api.patch(f"/tasks/{task['id']}", json={"title": task["title"]}).json()
    assert same["updated_at"] > task["updated_at"]


@pytest.mark.parametrize(
    "body,field",
    [
        ({"status": "done"}, "status"),
        ({"status": None}, "status"),
        ({"title": None}, "title"),
        ({"title": ""}, "title"),
        ({"priority": "urgentest"}, "priority"),
        ({"due_date": "tomorrow"}, "due_date"),
        ({"assignee_id": str(uuid.uuid4())}, "assignee_id"),
        ({"project_id": DEFAULT_PROJECT_ID}, "project_id"),  # not a PATCH field: tasks do not move
        ({"id": str(uuid.uuid4())}, "id"),
        ({"parent_task_id": str(uuid.uuid4())}, "parent_task_id"),
    ],
)
def test_patch_validation(api: httpx.Client, body: dict[str, Any], field: str) -> None:
    task = new_task(api)
    assert_error(api.patch(f"/tasks/{task['id']}", json=body), 400, "validation_error", field)
    assert api.get(f"/tasks/{task['id']}").json() == task


def test_patch_empty_body_and_unknown_task(api: httpx.Client) -> None:
    task = new_task(api)
    assert_error(api.patch(f"/tasks/{task['id']}", json={}), 400, "validation_error")
    assert_error(api.patch(f"/tasks/{uuid.uuid4()}", json={"title": "x"}), 404, "not_found")


def test_patch_parent_cannot_make_a_cycle(api: httpx.Client) -> None:
    top = new_task(api, "Top")
    mid = new_task(api, "Mid", parent_task_id=top["id"])
    leaf = new_task(api, "Leaf", parent_task_id=mid["id"])
    for parent in (top, leaf):
        resp = api.patch(f"/tasks/{top['id']}", json={"parent_task_id": parent["id"]})
        assert_error(resp, 400, "validation_error", "parent_task_id")
    moved = api.patch(f"/tasks/{leaf['id']}", json={"parent_task_id": top["id"]}).json()
    assert moved["parent_task_id"] == top["id"]
    detached = api.patch(f"/tasks/{leaf['id']}", json={"parent_task_id": None}).json()
    assert detached["parent_task_id"] is None


def test_delete_task_cascades(api: httpx.Client) -> None:
    parent = new_task(api, "Parent")
    child = new_task(api, "Child", parent_task_id=parent["id"])
    keeper = new_task(api, "Keeper")
    api.post(f"/tasks/{keeper['id']}/blockers", json={"blocker_id": parent["id"]})
    api.post(f"/tasks/{parent['id']}/comments", json={"content": "note"})
    resp = api.delete(f"/tasks/{parent['id']}")
    assert resp.status_code == 204 and resp.content == b""
    for gone in (parent, child):
        assert_error(api.get(f"/tasks/{gone['id']}"), 404, "not_found")
    assert_error(api.get(f"/tasks/{parent['id']}/comments"), 404, "not_found")
    assert api.get(f"/tasks/{keeper['id']}/blockers").json() == []
    assert [t["id"] for t in api.get("/tasks").json()["data"]] == [keeper["id"]]
    assert_error(api.delete(f"/tasks/{parent['id']}"), 404, "not_found")


# -- tasks: list, filters, pagination ---------------------------------------------------------


def test_list_filters(fake: ImpactlyFake, api: httpx.Client) -> None:
    alice, bob = fake.member_id("Alice Chen"), fake.member_id("Bob Okafor")
    other = fake.call(lambda: fake.add_project("Grants"))
    a = new_task(api, "a", priority="high", assignee_id=alice, due_date="2030-01-10")
    b = new_task(api, "b", priority="low", assignee_id=bob, due_date="2030-01-20")
    c = new_task(api, "c", project_id=other)
    api.patch(f"/tasks/{b['id']}", json={"status": "completed"})

    def ids(**params: Any) -> list[str]:
        resp = api.get("/tasks", params=params)
        assert resp.status_code == 200, resp.text
        return [t["id"] for t in resp.json()["data"]]

    assert ids() == [a["id"], b["id"], c["id"]]
    assert ids(status="completed") == [b["id"]]
    assert ids(status="active") == [a["id"], c["id"]]
    assert ids(priority="high") == [a["id"]]
    assert ids(assignee_id=bob) == [b["id"]]
    assert ids(project_id=other) == [c["id"]]
    assert ids(project_id=str(uuid.uuid4())) == []
    assert ids(due_date_before="2030-01-10") == [a["id"]]  # inclusive
    assert ids(due_date_after="2030-01-10") == [a["id"], b["id"]]  # inclusive; no due date never matches
    assert ids(due_date_after="2030-01-11", due_date_before="2030-01-20") == [b["id"]]
    assert ids(status="active", priority="high", assignee_id=alice) == [a["id"]]


@pytest.mark.parametrize(
    "params,field",
    [
        ({"status": "open"}, "status"),
        ({"priority": "none"}, "priority"),
        ({"project_id": "default"}, "project_id"),
        ({"assignee_id": "alice"}, "assignee_id"),
        ({"due_date_before": "2030-13-01"}, "due_date_before"),
        ({"due_date_after": "soon"}, "due_date_after"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "-5"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "!!!"}, "cursor"),
        ({"cursor": "bm9wZQ"}, "cursor"),  # base64 of "nope"
    ],
)
def test_list_rejects_bad_parameters(api: httpx.Client, params: dict[str, str], field: str) -> None:
    assert_error(api.get("/tasks", params=params), 400, "validation_error", field)


def test_pagination_empty_and_max_limit(api: httpx.Client) -> None:
    assert api.get("/tasks").json() == {"data": [], "next_cursor": None, "has_more": False}
    assert api.get("/tasks", params={"limit": 100, "cursor": ""}).json()["data"] == []


def test_pagination_exact_boundary(api: httpx.Client) -> None:
    created = [new_task(api, f"t{i}")["id"] for i in range(4)]
    first = api.get("/tasks", params={"limit": 2}).json()
    assert [t["id"] for t in first["data"]] == created[:2] and first["has_more"] is True
    last = api.get("/tasks", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [t["id"] for t in last["data"]] == created[2:]
    assert last["has_more"] is False and last["next_cursor"] is None
    whole = api.get("/tasks", params={"limit": 4}).json()
    assert len(whole["data"]) == 4 and whole["has_more"] is False


def test_pagination_walk_and_default_limit(api: httpx.Client) -> None:
    created = [new_task(api, f"t{i}")["id"] for i in range(7)]
    pages = all_pages(api, "/tasks", 3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [t["id"] for page in pages for t in page] == created
    filtered = all_pages(api, "/tasks", 1, status="active")
    assert len(filtered) == 7


def test_default_limit_is_50(api: httpx.Client) -> None:
    for i in range(51):
        new_task(api, f"t{i}")
    body = api.get("/tasks").json()
    assert len(body["data"]) == 50 and body["has_more"] is True


def test_cursor_survives_deleting_the_last_seen_task(api: httpx.Client) -> None:
    created = [new_task(api, f"t{i}")["id"] for i in range(4)]
    first = api.get("/tasks", params={"limit": 2}).json()
    assert api.delete(f"/tasks/{created[1]}").status_code == 204
    rest = api.get("/tasks", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [t["id"] for t in rest["data"]] == created[2:]


def test_cursor_of_another_list_is_rejected(api: httpx.Client) -> None:
    for i in range(2):
        new_task(api, f"t{i}")
    cursor = api.get("/activity", params={"limit": 1}).json()["next_cursor"]
    assert_error(api.get("/tasks", params={"cursor": cursor}), 400, "validation_error", "cursor")


# -- dependencies ---------------------------------------------------------------------------------


def test_blockers(api: httpx.Client) -> None:
    task, blocker, second = new_task(api, "Task"), new_task(api, "Blocker"), new_task(api, "Second")
    assert api.get(f"/tasks/{task['id']}/blockers").json() == []
    resp = api.post(f"/tasks/{task['id']}/blockers", json={"blocker_id": blocker["id"]})
    assert resp.status_code == 201
    assert resp.json() == [api.get(f"/tasks/{blocker['id']}").json()]
    again = api.post(f"/tasks/{task['id']}/blockers", json={"blocker_id": blocker["id"]})
    assert again.status_code == 200 and [t["id"] for t in again.json()] == [blocker["id"]]
    api.post(f"/tasks/{task['id']}/blockers", json={"blocker_id": second["id"]})
    assert [t["id"] for t in api.get(f"/tasks/{task['id']}/blockers").json()] == [blocker["id"], second["id"]]
    assert [t["id"] for t in api.get(f"/tasks/{blocker['id']}/dependents").json()] == [task["id"]]
    removed = api.delete(f"/tasks/{task['id']}/blockers/{blocker['id']}")
    assert removed.status_code == 200 and [t["id"] for t in removed.json()] == [second["id"]]
    assert_error(api.delete(f"/tasks/{task['id']}/blockers/{blocker['id']}"), 404, "not_found")
    assert api.get(f"/tasks/{blocker['id']}/dependents").json() == []


def test_dependents(api: httpx.Client) -> None:
    task, dependent = new_task(api, "Task"), new_task(api, "Dependent")
    resp = api.post(f"/tasks/{task['id']}/dependents", json={"dependent_id": dependent["id"]})
    assert resp.status_code == 201 and [t["id"] for t in resp.json()] == [dependent["id"]]
    assert (
        api.post(f"/tasks/{task['id']}/dependents", json={"dependent_id": dependent["id"]}).status_code == 200
    )
    assert [t["id"] for t in api.get(f"/tasks/{dependent['id']}/blockers").json()] == [task["id"]]
    removed = api.delete(f"/tasks/{task['id']}/dependents/{dependent['id']}")
    assert removed.status_code == 200 and removed.json() == []
    assert_error(api.delete(f"/tasks/{task['id']}/dependents/{dependent['id']}"), 404, "not_found")


def test_dependency_validation(api: httpx.Client) -> None:
    a, b, c = new_task(api, "a"), new_task(api, "b"), new_task(api, "c")
    base = f"/tasks/{a['id']}/blockers"
    assert_error(api.post(base, json={}), 400, "validation_error", "blocker_id")
    assert_error(api.post(base, json={"blocker_id": "b"}), 400, "validation_error", "blocker_id")
    assert_error(
        api.post(base, json={"blocker_id": str(uuid.uuid4())}), 400, "validation_error", "blocker_id"
    )
    assert_error(api.post(base, json={"blocker_id": a["id"]}), 400, "validation_error", "blocker_id")
    assert_error(api.post(f"/tasks/{a['id']}/dependents", json={}), 400, "validation_error", "dependent_id")
    # a <- b <- c (a is blocked by b, b by c); c blocked by a would close the loop.
    api.post(base, json={"blocker_id": b["id"]})
    api.post(f"/tasks/{b['id']}/blockers", json={"blocker_id": c["id"]})
    assert_error(
        api.post(f"/tasks/{c['id']}/blockers", json={"blocker_id": a["id"]}),
        400,
        "validation_error",
        "blocker_id",
    )
    assert_error(
        api.post(f"/tasks/{a['id']}/dependents", json={"dependent_id": c["id"]}),
        400,
        "validation_error",
        "dependent_id",
    )
    missing = uuid.uuid4()
    assert_error(api.get(f"/tasks/{missing}/blockers"), 404, "not_found")
    assert_error(api.get(f"/tasks/{missing}/dependents"), 404, "not_found")
    assert_error(api.post(f"/tasks/{missing}/blockers", json={"blocker_id": a["id"]}), 404, "not_found")


# -- comments ------------------------------------------------------------------------------------


def test_comments(fake: ImpactlyFake, api: httpx.Client) -> None:
    task = new_task(api)
    resp = api.post(f"/tasks/{task['id']}/comments", json={"content": "Looks good"})
    assert resp.status_code == 201
    comment = resp.json()
    assert set(comment) == {"id", "task_id", "content", "author_id", "author_name", "created_at"}
    assert (comment["task_id"], comment["content"]) == (task["id"], "Looks good")
    assert (comment["author_id"], comment["author_name"]) == (my_agent_id(api), "Default agent")
    alice = fake.member_id("Alice Chen")
    by_alice = fake.call(lambda: fake.add_comment(task["id"], "From the web app", author_id=alice))
    assert by_alice["author_name"] == "Alice Chen"
    api.post(f"/tasks/{task['id']}/comments", json={"content": "Third"})
    pages = all_pages(api, f"/tasks/{task['id']}/comments", 2)
    assert [[c["content"] for c in page] for page in pages] == [["Looks good", "From the web app"], ["Third"]]
    assert pages[0][0] == comment
    # The comment does not count as a change to the task itself.
    assert api.get(f"/tasks/{task['id']}").json()["updated_at"] == task["updated_at"]


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "content"),
        ({"content": ""}, "content"),
        ({"content": 1}, "content"),
        ({"content": "x" * 10_001}, "content"),
        ({"content": "x", "author": "me"}, "author"),
    ],
)
def test_comment_validation(api: httpx.Client, body: dict[str, Any], field: str) -> None:
    task = new_task(api)
    assert_error(api.post(f"/tasks/{task['id']}/comments", json=body), 400, "validation_error", field)
    assert api.get(f"/tasks/{task['id']}/comments").json()["data"] == []


def test_comments_of_unknown_task(api: httpx.Client) -> None:
    missing = uuid.uuid4()
    assert_error(api.get(f"/tasks/{missing}/comments"), 404, "not_found")
    assert_error(api.post(f"/tasks/{missing}/comments", json={"content": "x"}), 404, "not_found")


# -- agents and activity ------------------------------------------------------------------------


def test_agent_profile_and_usage(api: httpx.Client) -> None:
    task = new_task(api)
    new_task(api, "second")
    api.post(f"/tasks/{task['id']}/comments", json={"content": "hi"})
    api.patch(f"/tasks/{task['id']}", json={"status": "completed"})
    me = api.get("/agents/me").json()
    assert me["name"] == "Default agent" and me["permissions"] == ["read", "write"]
    uuid.UUID(me["id"])
    usage = me["usage"]
    assert usage["requests"] == 5  # four writes and this read, since the reset
    assert (usage["tasks_created"], usage["tasks_completed"], usage["comments_created"]) == (2, 1, 1)
    assert (usage["tasks_updated"], usage["tasks_deleted"]) == (0, 0)
    assert usage["last_action_at"] is not None


def test_activity_records_every_change(fake: ImpactlyFake, api: httpx.Client) -> None:
    me = my_agent_id(api)
    task = new_task(api)
    api.patch(f"/tasks/{task['id']}", json={"title": "Renamed"})
    api.patch(f"/tasks/{task['id']}", json={"status": "completed"})
    comment = api.post(f"/tasks/{task['id']}/comments", json={"content": "done"}).json()
    api.delete(f"/tasks/{task['id']}")
    entries = api.get("/activity").json()["data"]
    assert [e["type"] for e in entries] == [
        "task.created",
        "task.updated",
        "task.completed",
        "comment.created",
        "task.deleted",
    ]
    for entry in entries:
        assert set(entry) == {
            "id",
            "type",
            "task_id",
            "comment_id",
            "project_id",
            "actor_id",
            "actor_type",
            "created_at",
            "changes",
        }
        assert (entry["task_id"], entry["project_id"]) == (task["id"], DEFAULT_PROJECT_ID)
        assert (entry["actor_id"], entry["actor_type"]) == (me, "agent")
    assert entries[1]["changes"] == {"title": {"from": "Write the report", "to": "Renamed"}}
    assert entries[2]["changes"] == {"status": {"from": "active", "to": "completed"}}
    assert entries[3]["comment_id"] == comment["id"]
    assert entries[0]["changes"] is None and entries[4]["changes"] is None
    times = [e["created_at"] for e in entries]
    assert times == sorted(times) and len(set(times)) == len(times)


def test_activity_filters(fake: ImpactlyFake, api: httpx.Client) -> None:
    me = my_agent_id(api)
    alice = fake.member_id("Alice Chen")
    other = fake.call(lambda: fake.add_project("Grants"))
    first = new_task(api, "first")
    new_task(api, "elsewhere", project_id=other)
    fake.call(lambda: fake.update_task(first["id"], title="edited in the web app"))
    entries = api.get("/activity").json()["data"]
    assert [(e["actor_id"], e["actor_type"]) for e in entries][-1] == (alice, "user")

    def types(**params: Any) -> list[str]:
        resp = api.get("/activity", params=params)
        assert resp.status_code == 200, resp.text
        return [e["type"] for e in resp.json()["data"]]

    assert types(project_id=other) == ["task.created"]
    assert types(agent_id=me) == ["task.created", "task.created"]
    assert types(agent_id=alice) == ["task.updated"]
    assert types(since=entries[1]["created_at"]) == ["task.created", "task.updated"]  # inclusive
    after_first = datetime.fromisoformat(entries[0]["created_at"]) + timedelta(microseconds=1)
    assert types(since=after_first.isoformat()) == ["task.created", "task.updated"]
    assert types(since=entries[2]["created_at"].replace("Z", "+00:00")) == ["task.updated"]
    assert types(since="24h") == ["task.created", "task.created", "task.updated"]
    assert types(since="30d", project_id=DEFAULT_PROJECT_ID) == ["task.created", "task.updated"]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert types(since=future) == []


@pytest.mark.parametrize(
    "params,field",
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "0h"}, "since"),
        ({"since": "7w"}, "since"),
        ({"project_id": "x"}, "project_id"),
        ({"agent_id": "me"}, "agent_id"),
        ({"limit": "101"}, "limit"),
        ({"cursor": "abc"}, "cursor"),
    ],
)
def test_activity_rejects_bad_parameters(api: httpx.Client, params: dict[str, str], field: str) -> None:
    assert_error(api.get("/activity", params=params), 400, "validation_error", field)


def test_activity_pagination(api: httpx.Client) -> None:
    for i in range(5):
        new_task(api, f"t{i}")
    everything = api.get("/activity").json()["data"]
    pages = all_pages(api, "/activity", 2, since="1h")
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [e["id"] for page in pages for e in page] == [e["id"] for e in everything]


# -- webhooks -----------------------------------------------------------------------------------


def test_webhook_crud(fake: ImpactlyFake, api: httpx.Client) -> None:
    resp = api.post("/webhooks", json={"url": "https://example.org/hooks", "events": ["task.created"]})
    assert resp.status_code == 201
    hook = resp.json()
    assert set(hook) == {"id", "url", "events", "active", "created_at", "secret"}
    assert hook["secret"].startswith("whsec_") and len(hook["secret"]) > 20
    given = api.post(
        "/webhooks", json={"url": "http://127.0.0.1:9/x", "events": ["*"], "secret": "s3cret"}
    ).json()
    assert given["secret"] == "s3cret"
    listed = api.get("/webhooks").json()["data"]
    assert [h["id"] for h in listed] == [hook["id"], given["id"]]
    assert all("secret" not in h for h in listed)
    assert listed[0] == {k: v for k, v in hook.items() if k != "secret"}
    # Another agent neither sees nor deletes them.
    fake.call(lambda: fake.add_key("imp_other", write=True, name="Other"))
    with client(fake, "imp_other") as other:
        assert other.get("/webhooks").json()["data"] == []
        assert_error(other.delete(f"/webhooks/{hook['id']}"), 404, "not_found")
    resp = api.delete(f"/webhooks/{hook['id']}")
    assert resp.status_code == 204 and resp.content == b""
    assert [h["id"] for h in api.get("/webhooks").json()["data"]] == [given["id"]]
    assert_error(api.delete(f"/webhooks/{hook['id']}"), 404, "not_found")


@pytest.mark.parametrize(
    "body,field",
    [
        ({"events": ["*"]}, "url"),
        ({"url": "not a url", "events": ["*"]}, "url"),
        ({"url": "ftp://example.org/x", "events": ["*"]}, "url"),
        ({"url": "https://example.org/x"}, "events"),
        ({"url": "https://example.org/x", "events": []}, "events"),
        ({"url": "https://example.org/x", "events": "task.created"}, "events"),
        ({"url": "https://example.org/x", "events": ["task.moved"]}, "events"),
        ({"url": "https://example.org/x", "events": ["*"], "secret": 42}, "secret"),
        ({"url": "https://example.org/x", "events": ["*"], "active": True}, "active"),
    ],
)
def test_webhook_validation(api: httpx.Client, body: dict[str, Any], field: str) -> None:
    assert_error(api.post("/webhooks", json=body), 400, "validation_error", field)
    assert api.get("/webhooks").json()["data"] == []


def test_webhook_signature_and_payload(api: httpx.Client, webhook_receiver: Any) -> None:
    hook = api.post("/webhooks", json={"url": f"{webhook_receiver.url}/in", "events": ["*"]}).json()
    task = new_task(api, "Signed")
    [delivery] = webhook_receiver.wait_for(1)
    headers = delivery.headers
    assert headers["x-impactly-signature"] == signature(hook["secret"], delivery.body)
    assert hmac.compare_digest(headers["x-impactly-signature"], signature(hook["secret"], delivery.body))
    tampered = delivery.body.replace(b"Signed", b"Forged")
    assert tampered != delivery.body
    assert not hmac.compare_digest(headers["x-impactly-signature"], signature(hook["secret"], tampered))
    assert headers["x-impactly-signature"] != signature("whsec_wrong", delivery.body)
    payload = delivery.json()
    assert payload["event"] == "task.created" and headers["x-impactly-event"] == "task.created"
    assert payload["id"] == headers["x-impactly-delivery"]
    assert abs(int(headers["x-impactly-timestamp"]) - time.time()) < 60
    assert payload["data"] == task and payload["actor_id"] == my_agent_id(api)
    assert "changes" not in payload and delivery.path == "/in"


def test_webhook_events_for_every_change_and_subscription_filter(
    fake: ImpactlyFake, api: httpx.Client, webhook_receiver: Any
) -> None:
    secret = "topsecret"
    api.post("/webhooks", json={"url": f"{webhook_receiver.url}/all", "events": ["*"], "secret": secret})
    api.post(
        "/webhooks",
        json={"url": f"{webhook_receiver.url}/comments", "events": ["comment.created"], "secret": secret},
    )
    task = new_task(api)
    api.patch(f"/tasks/{task['id']}", json={"priority": "high"})
    api.patch(f"/tasks/{task['id']}", json={"status": "completed"})
    comment = api.post(f"/tasks/{task['id']}/comments", json={"content": "note"}).json()
    fake.call(lambda: fake.update_task(task["id"], title="From the web app"))
    api.delete(f"/tasks/{task['id']}")
    received = webhook_receiver.wait_for(7)
    assert all(r.headers["x-impactly-signature"] == signature(secret, r.body) for r in received)
    everything = [r.json() for r in received if r.path == "/all"]
    assert [p["event"] for p in everything] == [
        "task.created",
        "task.updated",
        "task.completed",
        "comment.created",
        "task.updated",
        "task.deleted",
    ]
    assert everything[1]["changes"] == {"priority": {"from": None, "to": "high"}}
    assert everything[1]["data"]["priority"] == "high"
    assert everything[3]["data"] == comment
    assert everything[4]["actor_id"] == fake.member_id("Alice Chen")
    assert everything[5]["data"]["title"] == "From the web app"
    assert len({p["id"] for p in everything}) == 6
    only_comments = [r.json() for r in received if r.path == "/comments"]
    assert [p["event"] for p in only_comments] == ["comment.created"]


def test_webhook_retried_after_500(control: httpx.Client, api: httpx.Client, webhook_receiver: Any) -> None:
    api.post("/webhooks", json={"url": webhook_receiver.url, "events": ["task.created"]})
    webhook_receiver.status = 500
    new_task(api)
    first, second = webhook_receiver.wait_for(2)
    assert first.body == second.body
    assert first.headers["x-impactly-delivery"] == second.headers["x-impactly-delivery"]
    webhook_receiver.status = 200
    webhook_receiver.wait_for(3)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        [delivery] = control.get("/_fake/webhooks").json()
        if delivery["outcome"] == "delivered":
            break
        time.sleep(0.02)
    assert (delivery["outcome"], delivery["attempts"]) == ("delivered", 3)


def test_webhook_drop_switch(control: httpx.Client, api: httpx.Client, webhook_receiver: Any) -> None:
    api.post("/webhooks", json={"url": webhook_receiver.url, "events": ["task.created"]})
    control.post("/_fake/faults", json={"drop_webhook_rate": 1})
    new_task(api, "dropped")
    control.post("/_fake/faults", json={"drop_webhook_rate": 0})
    new_task(api, "delivered")
    [only] = webhook_receiver.wait_for(1)
    assert only.json()["data"]["title"] == "delivered"
    outcomes = [d["outcome"] for d in control.get("/_fake/webhooks").json()]
    assert outcomes[0] == "dropped" and len(outcomes) == 2


# -- search ----------------------------------------------------------------------------------------


def test_search(api: httpx.Client) -> None:
    docs = new_task(api, "Write docs", description="Explain the LOGIN flow")
    bug = new_task(api, "Fix login bug", description="Users cannot sign in")
    new_task(api, "Unrelated")

    def hits(query: str) -> list[str]:
        resp = api.post("/search", json={"query": query})
        assert resp.status_code == 200, resp.text
        return [t["id"] for t in resp.json()["data"]]

    assert hits("login") == [bug["id"], docs["id"]]  # title matches first
    assert hits("LOGIN bug") == [bug["id"]]
    assert hits("sign") == [bug["id"]]
    assert hits("payroll") == []
    assert api.post("/search", json={"query": "docs"}).json()["data"][0] == docs


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "query"),
        ({"query": " "}, "query"),
        ({"query": 3}, "query"),
        ({"query": "x", "limit": 5}, "limit"),
    ],
)
def test_search_validation(api: httpx.Client, body: dict[str, Any], field: str) -> None:
    assert_error(api.post("/search", json=body), 400, "validation_error", field)


# -- faults and the request log ---------------------------------------------------------------------


def test_rate_limit_burst(control: httpx.Client, api: httpx.Client) -> None:
    control.post("/_fake/faults", json={"rate_limit_burst": 2, "retry_after": 7})
    for _ in range(2):
        resp = api.get("/tasks")
        assert_error(resp, 429, "rate_limited")
        assert resp.headers["Retry-After"] == "7"
    assert api.get("/tasks").status_code == 200


def test_error_rate(control: httpx.Client, api: httpx.Client) -> None:
    control.post("/_fake/faults", json={"error_rate": 1})
    assert_error(api.post("/tasks", json={"title": "x"}), 500, "internal_error")
    control.post("/_fake/faults", json={"error_rate": 0})
    assert api.get("/tasks").json()["data"] == []  # the failed request changed nothing


def test_latency(control: httpx.Client, api: httpx.Client) -> None:
    control.post("/_fake/faults", json={"latency": 0.05})
    started = time.monotonic()
    assert api.get("/health").status_code == 200
    assert time.monotonic() - started >= 0.05


def test_request_log(fake: ImpactlyFake, control: httpx.Client, api: httpx.Client) -> None:
    task = new_task(api)
    new_task(api, "two")
    api.get(f"/tasks/{task['id']}")
    api.get(f"/tasks/{uuid.uuid4()}")
    api.get("/tasks")
    log = control.get("/_fake/requests").json()
    assert log["total"] == 5 and log["writes"] == 2
    assert log["by_route"] == {
        "POST /api/v1/tasks": 2,
        "GET /api/v1/tasks/{task_id}": 2,
        "GET /api/v1/tasks": 1,
    }
    assert fake.requests.count("GET", "/api/v1/tasks/{task_id}", status=404) == 1


# -- seeding and standalone ---------------------------------------------------------------------------


def test_seed_is_deterministic() -> None:
    def content(seed: int | None) -> dict[str, Any]:
        state = ImpactlyFake(token=TOKEN, seed=seed).snapshot()
        strip = ("created_at", "updated_at")
        return {
            "tasks": [{k: v for k, v in t.items() if k not in strip} for t in state["tasks"]],
            "comments": [{k: v for k, v in c.items() if k != "created_at"} for c in state["comments"]],
            "dependencies": state["dependencies"],
        }

    first, again, other = content(7), content(7), content(8)
    assert first == again
    assert first["tasks"] != other["tasks"]
    assert 5 <= len(first["tasks"]) <= 8
    assert first["comments"] and first["dependencies"]
    assert any(t["parent_task_id"] for t in first["tasks"])
    assert {t["status"] for t in first["tasks"]} == {"active", "completed"}
    assert content(None)["tasks"] == []


def test_runs_standalone(tmp_path: Path) -> None:
    port = free_port()
    code = (
        "from connectors.impactly.fake import ImpactlyFake; "
        f"ImpactlyFake(token='imp_cli', seed=3).serve_forever({port})"
    )
    log = (tmp_path / "fake.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/api/v1"
        headers = {"Authorization": "Bearer imp_cli"}
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{url}/health", headers=headers).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "fake.log").read_text()
            time.sleep(0.05)
        tasks = httpx.get(f"{url}/tasks", headers=headers).json()["data"]
        assert 5 <= len(tasks) <= 8
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
