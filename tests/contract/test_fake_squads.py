"""Contract tests for the squads (Nucleus) fake, over real loopback HTTP."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors import fakekit
from connectors.squads.fake import SquadsFake

TOKEN = "bridge.access:s3cret-value"
SEED = 11
ALL_TITLES = {
    "Migrate CI runners to ARM",
    "Benchmark ARM build times",
    "Fix flaky login test",
    "Rotate database credentials",
    "Sync roadmap with Growth",
    "Launch referral programme landing page",
    "Email onboarding A/B test",
    "Quarterly pricing review",
}
GROWTH_TITLES = {
    "Launch referral programme landing page",
    "Email onboarding A/B test",
    "Quarterly pricing review",
}
DOCUMENTED_TASK_KEYS = {
    "id",
    "title",
    "description",
    "resource_type",
    "resource_id",
    "status_id",
    "priority_id",
    "type_id",
    "phase_id",
    "assignee_id",
    "reporter_id",
    "parent_task_id",
    "roadmap_item_id",
    "due_date",
    "start_date",
    "estimated_hours",
    "internal_hours",
    "is_private",
    "sort_order",
    "assignee_name",
    "assignee_picture",
    "reporter_name",
    "created_by_name",
    "status_label",
    "status_color",
    "status_value",
    "priority_label",
    "priority_color",
    "priority_value",
    "type_label",
    "type_value",
    "phase_label",
    "phase_color",
    "approved_by_name",
    "subtask_count",
    "todo_count",
    "todo_done_count",
}
EXTRA_TASK_KEYS = {
    "created_by",
    "sprint_id",
    "reported_by_contact_id",
    "requirements",
    "scope",
    "estimate_compute_hours",
    "estimate_total_cost",
    "approved_by_user_id",
    "approved_at",
    "delivery_notes",
    "testing_notes",
    "created_at",
    "updated_at",
}
TODO_KEYS = {
    "id",
    "task_id",
    "title",
    "is_done",
    "position",
    "assignee_id",
    "assignee_name",
    "assignee_picture",
    "due_date",
}
SUBTASK_KEYS = {
    "id",
    "title",
    "assignee_name",
    "assignee_picture",
    "status_label",
    "status_color",
    "status_value",
}
RESOURCE_KEYS = {
    "id",
    "task_id",
    "type",
    "url",
    "title",
    "description",
    "icon",
    "sort_order",
    "created_by",
    "created_by_name",
    "created_at",
}
ITEM_KEYS = {"id", "list_id", "label", "value", "color", "icon", "is_default", "is_system", "position"}
# One TLS context for every client: httpx builds a fresh one per client otherwise (~0.1 s each).
SSL_CONTEXT = ssl.create_default_context()


def cf_headers(token: str = TOKEN) -> dict[str, str]:
    client_id, _, secret = token.partition(":")
    return {"CF-Access-Client-Id": client_id, "CF-Access-Client-Secret": secret}


def api_client(fake: SquadsFake, token: str = TOKEN) -> httpx.Client:
    return httpx.Client(
        base_url=f"{fake.url}/api", headers=cf_headers(token), timeout=5.0, verify=SSL_CONTEXT
    )


@pytest.fixture(scope="module")
def raw() -> Iterator[httpx.Client]:
    """A client without credentials, for the harness routes and unauthenticated calls."""
    with httpx.Client(timeout=5.0, verify=SSL_CONTEXT) as client:
        yield client


@pytest.fixture(scope="module")
def server() -> Iterator[SquadsFake]:
    fake = SquadsFake(token=TOKEN, seed=SEED)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(server: SquadsFake) -> SquadsFake:
    """The shared server, reset to freshly seeded demo data (cheaper than a server per test)."""

    def fresh() -> None:
        server.requests.clear()
        server.faults.reset()
        server.reset_state()
        server.seed_demo()

    server.call(fresh)
    return server


@pytest.fixture
def api(fake: SquadsFake) -> Iterator[httpx.Client]:
    with api_client(fake) as client:
        yield client


@pytest.fixture
def client_as(fake: SquadsFake) -> Iterator[Callable[..., httpx.Client]]:
    """client_as(user_id) -> a client whose service token acts as that user."""
    clients: list[httpx.Client] = []

    def make(user_id: str) -> httpx.Client:
        token = f"client-{len(clients)}.access:secret-{len(clients)}"
        fake.add_credential(token, user_id=user_id)
        clients.append(api_client(fake, token))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def ids_by_title(client: httpx.Client, **params: str) -> dict[str, str]:
    resp = client.get("/tasks", params=params)
    assert resp.status_code == 200, resp.text
    return {t["title"]: t["id"] for t in resp.json()["tasks"]}


def titles(client: httpx.Client, **params: str) -> set[str]:
    return set(ids_by_title(client, **params))


def item_ids(client: httpx.Client, key: str) -> dict[str, str]:
    return {i["value"]: i["id"] for i in client.get(f"/config-lists/{key}/items").json()["items"]}


def assert_error(resp: httpx.Response, status: int, contains: str = "") -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert contains.lower() in body["error"].lower()


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def day(offset: int) -> str:
    return (datetime.now(UTC).date() + timedelta(days=offset)).isoformat()


# -- auth and permissions -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/tasks", "/squads", "/config-lists", "/config-lists/task_status/items"])
def test_missing_or_wrong_service_token_is_401(fake: SquadsFake, path: str, raw: httpx.Client) -> None:
    client_id, secret = TOKEN.split(":", 1)
    attempts: list[dict[str, str]] = [
        {},
        {"CF-Access-Client-Id": client_id},
        {"CF-Access-Client-Secret": secret},
        {"CF-Access-Client-Id": client_id, "CF-Access-Client-Secret": secret + "x"},
        {"CF-Access-Client-Id": "other.access", "CF-Access-Client-Secret": secret},
        {"Authorization": f"Bearer {TOKEN}"},
    ]
    for headers in attempts:
        assert_error(raw.get(f"{fake.url}/api{path}", headers=headers), 401, "unauthorized")
    assert raw.get(f"{fake.url}/api{path}", headers=cf_headers()).status_code == 200


def test_constructor_validates_token_and_role() -> None:
    with pytest.raises(ValueError):
        SquadsFake(token="no-colon")
    with pytest.raises(ValueError):
        SquadsFake(token="a:b", role="intern")
    fake = SquadsFake(token="id:with:colons")  # split on the first ':' only
    assert fake.credentials["id"][0] == "with:colons"
    assert fake.default_squad == "Platform"
    assert fake.users[fake.caller_id]["name"] == "Bridge Bot"


def test_view_only_permission_cannot_write(
    fake: SquadsFake, api: httpx.Client, client_as: Callable[..., httpx.Client]
) -> None:
    viewer = client_as(fake.add_user("Vic Viewer", role="executive", tasks_permission="view"))
    task_id = ids_by_title(api)["Migrate CI runners to ARM"]
    resource_id = api.get(f"/tasks/{task_id}/resources").json()["resources"][0]["id"]
    assert viewer.get("/tasks").status_code == 200
    assert viewer.get(f"/tasks/{task_id}").status_code == 200
    for method, path, body in [
        ("POST", "/tasks", {"title": "x"}),
        ("POST", f"/tasks/{task_id}/duplicate", None),
        ("PUT", f"/tasks/{task_id}", {"title": "x"}),
        ("PUT", f"/tasks/{task_id}/todos", {"todos": []}),
        ("POST", f"/tasks/{task_id}/subtasks", {"title": "x"}),
        ("POST", f"/tasks/{task_id}/resources", {"url": "https://a.example", "title": "x"}),
        ("DELETE", f"/tasks/{task_id}/resources/{resource_id}", None),
        ("PUT", f"/tasks/{task_id}/resources/reorder", {"order": [resource_id]}),
        ("DELETE", f"/tasks/{task_id}", None),
    ]:
        assert_error(viewer.request(method, path, json=body), 403, "permission")
    # watching is not a task write: view suffices
    assert viewer.post(f"/tasks/{task_id}/watch").json() == {"watching": True}
    assert len(api.get("/tasks").json()["tasks"]) == 8  # nothing was written


def test_no_tasks_permission_blocks_tasks_only(
    fake: SquadsFake, client_as: Callable[..., httpx.Client]
) -> None:
    outsider = client_as(fake.add_user("Nia None", role="executive", tasks_permission="none"))
    assert_error(outsider.get("/tasks"), 403)
    assert_error(outsider.get("/tasks/anything"), 403)
    assert outsider.get("/squads").status_code == 200
    assert outsider.get("/config-lists", params={"key": "task_status"}).status_code == 200


def test_delete_needs_manage_permission(fake: SquadsFake, client_as: Callable[..., httpx.Client]) -> None:
    employee = client_as(fake.user_id("Ben Okafor"))
    manager = client_as(fake.user_id("Ada Park"))
    task_id = ids_by_title(employee)["Migrate CI runners to ARM"]
    assert employee.put(f"/tasks/{task_id}", json={"title": "Migrate CI to ARM"}).status_code == 200
    assert_error(employee.delete(f"/tasks/{task_id}"), 403, "manage")
    assert manager.delete(f"/tasks/{task_id}").json() == {"ok": True}


# -- role scoping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("executive", ALL_TITLES),
        ("head", ALL_TITLES),
        # Platform's tasks (by assignee, else reporter) plus the Growth task the caller watches
        ("manager", ALL_TITLES - GROWTH_TITLES | {"Launch referral programme landing page"}),
        # assigned to the caller, or watched by it
        ("lead", {"Sync roadmap with Growth", "Launch referral programme landing page"}),
        ("employee", {"Sync roadmap with Growth", "Launch referral programme landing page"}),
    ],
)
def test_role_scopes_what_the_caller_sees(role: str, expected: set[str]) -> None:
    with SquadsFake(token=TOKEN, seed=SEED, role=role) as fake, api_client(fake) as api:
        assert titles(api) == expected
        hidden = {t["title"]: t["id"] for t in fake.tasks.values()}
        for title in ALL_TITLES - expected:
            assert_error(api.get(f"/tasks/{hidden[title]}"), 404, "not found")


def test_invisible_task_answers_404_on_every_route(
    fake: SquadsFake, api: httpx.Client, client_as: Callable[..., httpx.Client]
) -> None:
    eve = client_as(fake.user_id("Eve Tanaka"))  # Growth employee
    task_id = ids_by_title(api)["Migrate CI runners to ARM"]  # Platform, not hers
    for method, path, body in [
        ("GET", f"/tasks/{task_id}", None),
        ("PUT", f"/tasks/{task_id}", {"title": "mine now"}),
        ("POST", f"/tasks/{task_id}/duplicate", None),
        ("PUT", f"/tasks/{task_id}/todos", {"todos": []}),
        ("GET", f"/tasks/{task_id}/subtasks", None),
        ("POST", f"/tasks/{task_id}/subtasks", {"title": "x"}),
        ("POST", f"/tasks/{task_id}/watch", None),
        ("GET", f"/tasks/{task_id}/resources", None),
        ("POST", f"/tasks/{task_id}/resources", {"url": "https://a.example", "title": "x"}),
        ("PUT", f"/tasks/{task_id}/resources/reorder", {"order": ["x"]}),
    ]:
        assert_error(eve.request(method, path, json=body), 404, "not found")
    growth_manager = client_as(fake.user_id("Dan Weiss"))
    assert_error(growth_manager.delete(f"/tasks/{task_id}"), 404)
    assert api.get(f"/tasks/{task_id}").json()["task"]["title"] == "Migrate CI runners to ARM"


def test_employee_sees_what_they_created_are_assigned_or_watch(
    fake: SquadsFake, api: httpx.Client, client_as: Callable[..., httpx.Client]
) -> None:
    zoe_id = fake.add_user("Zoe Lim", squad="Growth", role="employee")
    zoe = client_as(zoe_id)
    assert titles(zoe) == set()
    ada = fake.user_id("Ada Park")
    own = zoe.post("/tasks", json={"title": "Zoe's own", "assignee_id": ada}).json()["task"]
    assigned = api.post("/tasks", json={"title": "For Zoe", "assignee_id": zoe_id}).json()["task"]
    assert titles(zoe) == {"Zoe's own", "For Zoe"}
    assert zoe.post(f"/tasks/{assigned['id']}/watch").json() == {"watching": True}
    api.put(f"/tasks/{assigned['id']}", json={"assignee_id": fake.user_id("Ben Okafor")})
    assert titles(zoe) == {"Zoe's own", "For Zoe"}  # still watching
    assert zoe.delete(f"/tasks/{assigned['id']}/watch").json() == {"watching": False}
    assert titles(zoe) == {"Zoe's own"}
    assert_error(zoe.get(f"/tasks/{assigned['id']}"), 404)
    assert zoe.get(f"/tasks/{own['id']}").status_code == 200


def test_manager_sees_squad_by_assignee_else_reporter(
    fake: SquadsFake, api: httpx.Client, client_as: Callable[..., httpx.Client]
) -> None:
    dan = client_as(fake.user_id("Dan Weiss"))  # Growth manager
    assert "Quarterly pricing review" in titles(dan)  # unassigned, reported by Farah (Growth)
    task = api.post("/tasks", json={"title": "Unassigned from Platform"}).json()["task"]
    assert_error(dan.get(f"/tasks/{task['id']}"), 404)  # reporter is the Platform caller
    api.put(f"/tasks/{task['id']}", json={"assignee_id": fake.user_id("Eve Tanaka")})
    assert dan.get(f"/tasks/{task['id']}").status_code == 200


# -- config lists and squads ----------------------------------------------------------------------


def test_config_list_by_key(api: httpx.Client) -> None:
    resp = api.get("/config-lists", params={"key": "task_status"})
    assert resp.status_code == 200
    (status_list,) = resp.json()["lists"]
    assert set(status_list) == {"id", "key", "name", "items"} and status_list["key"] == "task_status"
    items = status_list["items"]
    assert [i["value"] for i in items] == [
        "backlog",
        "todo",
        "in_progress",
        "in_review",
        "blocked",
        "done",
        "cancelled",
    ]
    assert all(set(i) == ITEM_KEYS and i["list_id"] == status_list["id"] for i in items)
    assert [i["position"] for i in items] == list(range(7))
    assert [(i["value"], i["label"]) for i in items if i["is_default"] == 1] == [("todo", "To Do")]
    assert all(i["id"] != i["value"] and i["is_system"] == 1 for i in items)
    assert len({i["id"] for i in items}) == 7


def test_config_lists_all_and_unknown(api: httpx.Client) -> None:
    lists = api.get("/config-lists").json()["lists"]
    assert {lst["key"] for lst in lists} == {"task_status", "task_priority", "task_type"}
    assert api.get("/config-lists", params={"key": "nope"}).json() == {"lists": []}


@pytest.mark.parametrize(
    ("key", "values", "default"),
    [
        (
            "task_status",
            ["backlog", "todo", "in_progress", "in_review", "blocked", "done", "cancelled"],
            "todo",
        ),
        ("task_priority", ["low", "medium", "high", "urgent"], "medium"),
        ("task_type", ["task", "bug", "feature", "agent_task"], "task"),
    ],
)
def test_config_list_items(api: httpx.Client, key: str, values: list[str], default: str) -> None:
    items = api.get(f"/config-lists/{key}/items").json()["items"]
    assert [i["value"] for i in items] == values
    assert [i["value"] for i in items if i["is_default"]] == [default]
    assert all(set(i) == ITEM_KEYS for i in items)


def test_config_items_unknown_key_is_404(api: httpx.Client) -> None:
    assert_error(api.get("/config-lists/task_color/items"), 404, "not found")


def test_added_config_item_is_listed_and_usable(fake: SquadsFake, api: httpx.Client) -> None:
    item = fake.add_config_item("task_status", "qa", "QA", color="#0ea5e9")
    items = api.get("/config-lists/task_status/items").json()["items"]
    assert items[-1] == {**item, "position": 7, "is_default": 0, "is_system": 0}
    task = api.post("/tasks", json={"title": "Needs QA", "status_id": item["id"]}).json()["task"]
    assert (task["status_value"], task["status_label"], task["status_color"]) == ("qa", "QA", "#0ea5e9")


def test_squads(fake: SquadsFake, api: httpx.Client) -> None:
    squads = api.get("/squads").json()["squads"]
    assert all(set(s) == {"id", "name"} for s in squads)
    assert sorted(s["name"] for s in squads) == ["Growth", "Platform"]
    assert fake.default_squad in {s["name"] for s in squads}


# -- list tasks -----------------------------------------------------------------------------------


def test_list_shape_and_joined_fields(fake: SquadsFake, api: httpx.Client) -> None:
    tasks = {t["title"]: t for t in api.get("/tasks").json()["tasks"]}
    assert set(tasks) == ALL_TITLES
    assert all(set(t) == DOCUMENTED_TASK_KEYS | EXTRA_TASK_KEYS for t in tasks.values())
    migrate = tasks["Migrate CI runners to ARM"]
    assert (migrate["status_value"], migrate["status_label"]) == ("in_progress", "In Progress")
    assert (migrate["priority_value"], migrate["priority_label"]) == ("high", "High")
    assert (migrate["type_value"], migrate["type_label"]) == ("task", "Task")
    assert migrate["assignee_name"] == "Ben Okafor" and migrate["reporter_name"] == "Ada Park"
    assert migrate["created_by_name"] == "Ada Park" and migrate["created_by"] == fake.user_id("Ada Park")
    assert (migrate["subtask_count"], migrate["todo_count"], migrate["todo_done_count"]) == (1, 2, 1)
    assert migrate["is_private"] == 0 and migrate["due_date"] == day(5)
    assert tasks["Benchmark ARM build times"]["parent_task_id"] == migrate["id"]
    assert tasks["Quarterly pricing review"]["assignee_id"] is None
    assert tasks["Quarterly pricing review"]["assignee_name"] is None
    assert (
        tasks["Launch referral programme landing page"]["assignee_picture"]
        == "https://avatars.example.com/eve.png"
    )
    assert all(t["created_at"].endswith("Z") and t["updated_at"] == t["created_at"] for t in tasks.values())


def test_list_sorted_by_sort_order_due_date_then_newest(fake: SquadsFake, api: httpx.Client) -> None:
    fake.call(fake.reset_state)

    def create(title: str, **fields: Any) -> str:
        return str(api.post("/tasks", json={"title": title, **fields}).json()["task"]["id"])

    create("no due, older")
    create("due later", due_date="2030-01-05")
    create("due sooner", due_date="2030-01-01")
    create("no due, newer")
    ordered_1 = create("sort 1")
    ordered_0 = create("sort 0", due_date="2029-01-01")
    api.put(f"/tasks/{ordered_1}", json={"sort_order": 1})
    api.put(f"/tasks/{ordered_0}", json={"sort_order": 0})
    got = [t["title"] for t in api.get("/tasks").json()["tasks"]]
    assert got == ["no due, newer", "no due, older", "due sooner", "due later", "sort 0", "sort 1"]


def test_list_empty(fake: SquadsFake, api: httpx.Client) -> None:
    fake.call(fake.reset_state)
    assert api.get("/tasks").json() == {"tasks": []}


def test_filter_by_ids(fake: SquadsFake, api: httpx.Client) -> None:
    ben, dan = fake.user_id("Ben Okafor"), fake.user_id("Dan Weiss")
    assert titles(api, assignee_id=ben) == {"Migrate CI runners to ARM", "Benchmark ARM build times"}
    assert titles(api, assignee_id=f"{ben},{dan}") == {
        "Migrate CI runners to ARM",
        "Benchmark ARM build times",
        "Email onboarding A/B test",
    }
    status, priority, kind = (item_ids(api, k) for k in ("task_status", "task_priority", "task_type"))
    assert titles(api, status_id=status["todo"]) == {
        "Benchmark ARM build times",
        "Fix flaky login test",
        "Sync roadmap with Growth",
    }
    assert titles(api, status_id=f"{status['done']},{status['blocked']}") == {
        "Quarterly pricing review",
        "Email onboarding A/B test",
    }
    assert titles(api, priority_id=priority["urgent"]) == {"Fix flaky login test"}
    assert titles(api, type_id=f"{kind['bug']},{kind['feature']}") == {
        "Fix flaky login test",
        "Launch referral programme landing page",
        "Email onboarding A/B test",
    }
    assert titles(api, status_id="todo") == set()  # values are not ids


def test_filter_by_squad(api: httpx.Client) -> None:
    assert titles(api, squad="Growth") == GROWTH_TITLES
    assert titles(api, squad="Platform") == ALL_TITLES - GROWTH_TITLES
    assert titles(api, squad="Platform,Growth") == ALL_TITLES
    assert titles(api, squad="Nowhere") == set()


def test_filter_by_resource_and_roadmap(api: httpx.Client) -> None:
    api.post("/tasks", json={"title": "Linked", "resource_type": "project", "resource_id": "p-1"})
    api.post("/tasks", json={"title": "Other project", "resource_type": "project", "resource_id": "p-2"})
    task_id = ids_by_title(api)["Fix flaky login test"]
    api.put(f"/tasks/{task_id}", json={"roadmap_item_id": "rm-9"})
    assert titles(api, resource_type="project") == {"Linked", "Other project"}
    assert titles(api, resource_type="project", resource_id="p-1") == {"Linked"}
    assert titles(api, roadmap_item_id="rm-9") == {"Fix flaky login test"}


def test_filter_by_parent_and_subtasks(api: httpx.Client) -> None:
    parent = ids_by_title(api)["Migrate CI runners to ARM"]
    top_level = ALL_TITLES - {"Benchmark ARM build times"}
    assert titles(api, parent_id="null") == top_level
    assert titles(api, parent_id="") == top_level
    assert titles(api, parent_id=parent) == {"Benchmark ARM build times"}
    assert titles(api, show_subtasks="false") == top_level
    assert titles(api, show_subtasks="true") == ALL_TITLES


def test_filter_by_due(api: httpx.Client) -> None:
    assert titles(api, due="today") == {"Fix flaky login test"}
    assert titles(api, due="upcoming") == {
        "Fix flaky login test",
        "Launch referral programme landing page",
        "Benchmark ARM build times",
        "Migrate CI runners to ARM",
    }
    # the done pricing review is past due but not overdue
    assert titles(api, due="overdue") == {"Rotate database credentials"}
    assert titles(api, overdue="true") == {"Rotate database credentials"}
    assert_error(api.get("/tasks", params={"due": "tomorrow"}), 400, "due")


def test_search_title_and_description(api: httpx.Client) -> None:
    assert titles(api, search="arm") == {"Migrate CI runners to ARM", "Benchmark ARM build times"}
    assert titles(api, search="ONE RUN IN TWENTY") == {"Fix flaky login test"}
    assert titles(api, search="zzz") == set()
    assert titles(api, search="arm", show_subtasks="false") == {"Migrate CI runners to ARM"}


# -- get task -------------------------------------------------------------------------------------


def test_get_task_with_todos_subtasks_watchers(fake: SquadsFake, api: httpx.Client) -> None:
    ids = ids_by_title(api)
    body = api.get(f"/tasks/{ids['Migrate CI runners to ARM']}").json()
    assert set(body) == {"task", "todos", "subtasks", "watchers"}
    assert set(body["task"]) == DOCUMENTED_TASK_KEYS | EXTRA_TASK_KEYS
    assert [(t["title"], t["is_done"], t["position"]) for t in body["todos"]] == [
        ("Provision runner pool", 1, 0),
        ("Port the build cache", 0, 1),
    ]
    assert all(set(t) == TODO_KEYS for t in body["todos"])
    assert body["todos"][1]["assignee_name"] == "Ben Okafor"
    (subtask,) = body["subtasks"]
    assert set(subtask) == SUBTASK_KEYS | {"priority_label", "priority_color"}
    assert (subtask["id"], subtask["status_value"], subtask["priority_label"]) == (
        ids["Benchmark ARM build times"],
        "todo",
        "Medium",
    )
    assert body["watchers"] == []
    watched = api.get(f"/tasks/{ids['Launch referral programme landing page']}").json()
    assert watched["watchers"] == [{"id": fake.caller_id, "name": "Bridge Bot", "picture": None}]


def test_get_unknown_task_is_404(api: httpx.Client) -> None:
    assert_error(api.get("/tasks/does-not-exist"), 404, "task not found")


def test_unknown_route_and_method(api: httpx.Client) -> None:
    assert_error(api.get("/projects"), 404)
    assert_error(api.patch("/tasks"), 405)


# -- create ---------------------------------------------------------------------------------------


def test_create_with_defaults(fake: SquadsFake, api: httpx.Client) -> None:
    resp = api.post("/tasks", json={"title": "  Plain task  "})
    assert resp.status_code == 201
    task = resp.json()["task"]
    assert set(resp.json()) == {"task"} and set(task) == DOCUMENTED_TASK_KEYS | EXTRA_TASK_KEYS
    assert task["title"] == "Plain task"
    assert (task["status_value"], task["status_label"]) == ("todo", "To Do")
    assert task["priority_id"] is None and task["type_id"] is None and task["assignee_id"] is None
    assert task["reporter_id"] == task["created_by"] == fake.caller_id
    assert task["reporter_name"] == "Bridge Bot" and task["is_private"] == 0
    assert task["created_at"] == task["updated_at"]
    assert api.get(f"/tasks/{task['id']}").json()["task"] == task
    assert task["id"] in ids_by_title(api).values()


def test_create_with_all_fields_and_side_effects(
    fake: SquadsFake, api: httpx.Client, raw: httpx.Client
) -> None:
    status, priority, kind = (item_ids(api, k) for k in ("task_status", "task_priority", "task_type"))
    ben = fake.user_id("Ben Okafor")
    parent = ids_by_title(api)["Fix flaky login test"]
    body = {
        "title": "Agent: triage flakes",
        "description": "Look at the last 50 runs",
        "resource_type": "project",
        "resource_id": "p-7",
        "type_id": kind["agent_task"],
        "status_id": status["in_progress"],
        "priority_id": priority["high"],
        "assignee_id": ben,
        "parent_task_id": parent,
        "due_date": "2030-02-28",
        "start_date": "2030-02-01",
        "estimated_hours": 3.5,
        "internal_hours": 1,
        "is_private": True,
        "reported_by_contact_id": "contact-1",
    }
    task = api.post("/tasks", json=body).json()["task"]
    for key, value in body.items():
        assert task[key] == (1 if key == "is_private" else value), key
    assert (task["type_value"], task["status_value"], task["priority_value"]) == (
        "agent_task",
        "in_progress",
        "high",
    )
    state = raw.get(f"{fake.url}/_fake/state").json()
    assert task["id"] in state["agent_task_meta"]
    assert {"task_id": task["id"], "event": "created", "user_id": fake.caller_id} in [
        {k: h[k] for k in ("task_id", "event", "user_id")} for h in state["history"]
    ]
    assert [(n["type"], n["user_id"]) for n in state["notifications"] if n["task_id"] == task["id"]] == [
        ("task_assigned", ben)
    ]
    assert api.get(f"/tasks/{parent}").json()["task"]["subtask_count"] == 1


def test_create_validation_errors(fake: SquadsFake, api: httpx.Client) -> None:
    priority_high = item_ids(api, "task_priority")["high"]
    bad_bodies: list[tuple[dict[str, Any], str]] = [
        ({}, "title"),
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"title": 5}, "title"),
        ({"title": None}, "title"),
        ({"title": "x", "status_id": "nope"}, "status_id"),
        ({"title": "x", "status_id": priority_high}, "status_id"),  # an item of another list
        ({"title": "x", "priority_id": "high"}, "priority_id"),  # a value, not an id
        ({"title": "x", "type_id": "bug"}, "type_id"),
        ({"title": "x", "assignee_id": "ghost"}, "assignee_id"),
        ({"title": "x", "parent_task_id": "ghost"}, "parent_task_id"),
        ({"title": "x", "due_date": "2030-13-01"}, "due_date"),
        ({"title": "x", "due_date": "01/02/2030"}, "due_date"),
        ({"title": "x", "start_date": "2030-2-1"}, "start_date"),
        ({"title": "x", "due_date": "2030-01-01T10:00:00Z"}, "due_date"),
        ({"title": "x", "estimated_hours": "3"}, "estimated_hours"),
        ({"title": "x", "internal_hours": True}, "internal_hours"),
        ({"title": "x", "is_private": "yes"}, "is_private"),
        ({"title": "x", "is_private": 1}, "is_private"),
        ({"title": "x", "description": 5}, "description"),
    ]
    for body, word in bad_bodies:
        assert_error(api.post("/tasks", json=body), 400, word)
    assert_error(
        api.post("/tasks", content=b"{not json", headers={"Content-Type": "application/json"}), 400, "json"
    )
    assert_error(api.post("/tasks", json=["title"]), 400, "object")
    assert len(fake.tasks) == 8


def test_duplicate(fake: SquadsFake, api: httpx.Client) -> None:
    original_id = ids_by_title(api)["Migrate CI runners to ARM"]
    original = api.get(f"/tasks/{original_id}").json()["task"]
    resp = api.post(f"/tasks/{original_id}/duplicate")
    assert resp.status_code == 201
    copy = resp.json()["task"]
    assert copy["id"] != original_id and copy["title"] == "Migrate CI runners to ARM (copy)"
    assert copy["status_value"] == "todo"  # reset to the default
    assert copy["reporter_id"] == copy["created_by"] == fake.caller_id
    for key in ("description", "assignee_id", "priority_id", "type_id", "due_date", "estimated_hours"):
        assert copy[key] == original[key], key
    assert (copy["todo_count"], copy["subtask_count"]) == (0, 0)
    assert_error(api.post("/tasks/ghost/duplicate"), 404, "not found")


# -- update and delete ----------------------------------------------------------------------------


def test_update_fields_history_and_updated_at(fake: SquadsFake, api: httpx.Client, raw: httpx.Client) -> None:
    task_id = ids_by_title(api)["Fix flaky login test"]
    before = api.get(f"/tasks/{task_id}").json()["task"]
    status = item_ids(api, "task_status")
    eve, ada = fake.user_id("Eve Tanaka"), fake.user_id("Ada Park")
    changes = {
        "title": "Fix the flaky login test",
        "status_id": status["in_review"],
        "assignee_id": eve,
        "sprint_id": "sprint-3",
        "phase_id": "phase-1",
        "sort_order": 4,
        "requirements": "green CI",
        "scope": "tests only",
        "estimate_compute_hours": 0.5,
        "estimate_total_cost": 12,
        "approved_by_user_id": ada,
        "approved_at": "2030-01-01T00:00:00Z",
        "delivery_notes": "d",
        "testing_notes": "t",
        "reported_by_contact_id": "c-2",
        "unknown_field": "ignored",
    }
    resp = api.put(f"/tasks/{task_id}", json=changes)
    assert resp.status_code == 200 and set(resp.json()) == {"task"}
    task = resp.json()["task"]
    for key, value in changes.items():
        if key != "unknown_field":
            assert task[key] == value, key
    assert "unknown_field" not in task
    assert (task["status_label"], task["assignee_name"], task["approved_by_name"]) == (
        "In Review",
        "Eve Tanaka",
        "Ada Park",
    )
    assert task["updated_at"] > before["updated_at"] and task["created_at"] == before["created_at"]
    state = raw.get(f"{fake.url}/_fake/state").json()
    events = [(h["event"], h.get("old"), h.get("new")) for h in state["history"] if h["task_id"] == task_id]
    assert ("status_changed", before["status_id"], status["in_review"]) in events
    assert ("assigned", before["assignee_id"], eve) in events
    assert ("task_assigned", eve) in [
        (n["type"], n["user_id"]) for n in state["notifications"] if n["task_id"] == task_id
    ]


def test_update_clears_with_null_and_sets_agent_meta(
    fake: SquadsFake, api: httpx.Client, raw: httpx.Client
) -> None:
    task_id = ids_by_title(api)["Migrate CI runners to ARM"]
    agent = item_ids(api, "task_type")["agent_task"]
    task = api.put(f"/tasks/{task_id}", json={"assignee_id": None, "due_date": None, "type_id": agent}).json()
    assert task["task"]["assignee_id"] is None and task["task"]["due_date"] is None
    assert task["task"]["type_value"] == "agent_task"
    assert task_id in raw.get(f"{fake.url}/_fake/state").json()["agent_task_meta"]


def test_update_errors(api: httpx.Client) -> None:
    ids = ids_by_title(api)
    parent, child = ids["Migrate CI runners to ARM"], ids["Benchmark ARM build times"]
    assert_error(api.put(f"/tasks/{parent}", json={}), 400, "no fields")
    assert_error(api.put(f"/tasks/{parent}", json={"nonsense": 1}), 400, "no fields")
    assert_error(api.put(f"/tasks/{parent}", json={"title": ""}), 400, "title")
    assert_error(api.put(f"/tasks/{parent}", json={"status_id": "done"}), 400, "status_id")
    assert_error(api.put(f"/tasks/{parent}", json={"parent_task_id": parent}), 400, "parent_task_id")
    assert_error(api.put(f"/tasks/{parent}", json={"parent_task_id": child}), 400, "ancestor")
    assert_error(api.put(f"/tasks/{parent}", json={"due_date": "soon"}), 400, "due_date")
    assert_error(api.put("/tasks/ghost", json={"title": "x"}), 404, "not found")
    assert api.get(f"/tasks/{parent}").json()["task"]["title"] == "Migrate CI runners to ARM"


def test_delete_cascades(fake: SquadsFake, api: httpx.Client, raw: httpx.Client) -> None:
    ids = ids_by_title(api)
    parent, child = ids["Migrate CI runners to ARM"], ids["Benchmark ARM build times"]
    resp = api.delete(f"/tasks/{parent}")
    assert resp.status_code == 200 and resp.json() == {"ok": True}
    assert_error(api.get(f"/tasks/{parent}"), 404)
    assert_error(api.get(f"/tasks/{child}"), 404)
    state = raw.get(f"{fake.url}/_fake/state").json()
    assert not [t for t in state["todos"] if t["task_id"] == parent]
    assert not [r for r in state["resources"] if r["task_id"] == parent]
    assert len(state["tasks"]) == 6
    assert_error(api.delete(f"/tasks/{parent}"), 404)


# -- todos ----------------------------------------------------------------------------------------


def test_replace_todos(fake: SquadsFake, api: httpx.Client, raw: httpx.Client) -> None:
    task_id = ids_by_title(api)["Migrate CI runners to ARM"]
    first, second = api.get(f"/tasks/{task_id}").json()["todos"]
    eve = fake.user_id("Eve Tanaka")
    resp = api.put(
        f"/tasks/{task_id}/todos",
        json={
            "todos": [
                {
                    "title": "Write the rollout plan",
                    "assignee_id": eve,
                    "due_date": "2030-03-01",
                    "position": 1,
                },
                {"id": second["id"], "title": "Port the build cache (v2)", "is_done": True, "position": 0},
                {"id": "todo-chosen-by-client", "title": "Keep my id"},
            ]
        },
    )
    assert resp.status_code == 200 and set(resp.json()) == {"todos"}
    todos = resp.json()["todos"]
    assert all(set(t) == TODO_KEYS and t["task_id"] == task_id for t in todos)
    assert [(t["title"], t["is_done"], t["position"]) for t in todos] == [
        ("Port the build cache (v2)", 1, 0),
        ("Write the rollout plan", 0, 1),
        ("Keep my id", 0, 2),
    ]
    assert todos[0]["id"] == second["id"] and first["id"] not in {t["id"] for t in todos}
    assert todos[2]["id"] == "todo-chosen-by-client"
    assert (todos[1]["assignee_name"], todos[1]["due_date"]) == ("Eve Tanaka", "2030-03-01")
    task = api.get(f"/tasks/{task_id}").json()["task"]
    assert (task["todo_count"], task["todo_done_count"]) == (3, 1)
    notes = raw.get(f"{fake.url}/_fake/state").json()["notifications"]
    assert ("todo_assigned", eve) in [(n["type"], n["user_id"]) for n in notes]
    assert api.put(f"/tasks/{task_id}/todos", json={"todos": []}).json() == {"todos": []}
    assert api.get(f"/tasks/{task_id}").json()["task"]["todo_count"] == 0


def test_todos_validation_changes_nothing(api: httpx.Client) -> None:
    ids = ids_by_title(api)
    task_id = ids["Migrate CI runners to ARM"]
    before = api.get(f"/tasks/{task_id}").json()["todos"]
    api.put(f"/tasks/{ids['Fix flaky login test']}/todos", json={"todos": [{"id": "foreign", "title": "x"}]})
    for body, word in [
        ({}, "todos"),
        ({"todos": "x"}, "todos"),
        ({"todos": [{"title": "ok"}, "x"]}, "todos[1]"),
        ({"todos": [{"title": ""}]}, "title"),
        ({"todos": [{"title": "x", "is_done": "yes"}]}, "is_done"),
        ({"todos": [{"title": "x", "position": "1"}]}, "position"),
        ({"todos": [{"title": "x", "assignee_id": "ghost"}]}, "assignee_id"),
        ({"todos": [{"title": "x", "due_date": "tomorrow"}]}, "due_date"),
        ({"todos": [{"id": "a", "title": "x"}, {"id": "a", "title": "y"}]}, "duplicate"),
        ({"todos": [{"id": "foreign", "title": "x"}]}, "another task"),
    ]:
        assert_error(api.put(f"/tasks/{task_id}/todos", json=body), 400, word)
    assert api.get(f"/tasks/{task_id}").json()["todos"] == before
    assert_error(api.put("/tasks/ghost/todos", json={"todos": []}), 404)


# -- subtasks -------------------------------------------------------------------------------------


def test_subtasks_list_and_create(fake: SquadsFake, api: httpx.Client) -> None:
    parent = ids_by_title(api)["Migrate CI runners to ARM"]
    (existing,) = api.get(f"/tasks/{parent}/subtasks").json()["subtasks"]
    assert set(existing) == SUBTASK_KEYS and existing["title"] == "Benchmark ARM build times"
    ben = fake.user_id("Ben Okafor")
    resp = api.post(
        f"/tasks/{parent}/subtasks",
        json={"title": "Write the runbook", "assignee_id": ben, "due_date": "2030-04-01"},
    )
    assert resp.status_code == 201
    task = resp.json()["task"]
    assert (task["parent_task_id"], task["assignee_id"], task["due_date"]) == (parent, ben, "2030-04-01")
    assert task["status_value"] == "todo" and task["reporter_id"] == fake.caller_id
    listed = api.get(f"/tasks/{parent}/subtasks").json()["subtasks"]
    assert [s["title"] for s in listed] == ["Benchmark ARM build times", "Write the runbook"]
    assert api.get(f"/tasks/{parent}").json()["task"]["subtask_count"] == 2
    assert_error(api.post(f"/tasks/{parent}/subtasks", json={"title": ""}), 400, "title")
    assert_error(api.post(f"/tasks/{parent}/subtasks", json={"assignee_id": ben}), 400, "title")
    assert_error(api.post(f"/tasks/{parent}/subtasks", json={"title": "x", "due_date": "x"}), 400, "due_date")
    assert_error(api.post("/tasks/ghost/subtasks", json={"title": "x"}), 404)
    assert_error(api.get("/tasks/ghost/subtasks"), 404)


# -- watch ----------------------------------------------------------------------------------------


def test_watch_is_idempotent(fake: SquadsFake, api: httpx.Client) -> None:
    task_id = ids_by_title(api)["Rotate database credentials"]
    for _ in range(2):
        resp = api.post(f"/tasks/{task_id}/watch")
        assert resp.status_code == 200 and resp.json() == {"watching": True}
    assert [w["id"] for w in api.get(f"/tasks/{task_id}").json()["watchers"]] == [fake.caller_id]
    assert api.delete(f"/tasks/{task_id}/watch").json() == {"watching": False}
    assert api.get(f"/tasks/{task_id}").json()["watchers"] == []
    assert api.delete(f"/tasks/{task_id}/watch").json() == {"watching": False}
    assert_error(api.post("/tasks/ghost/watch"), 404)


# -- resources ------------------------------------------------------------------------------------


def test_resources_list_add_delete(api: httpx.Client) -> None:
    task_id = ids_by_title(api)["Migrate CI runners to ARM"]
    (seeded,) = api.get(f"/tasks/{task_id}/resources").json()["resources"]
    assert set(seeded) == RESOURCE_KEYS
    assert (seeded["icon"], seeded["type"], seeded["created_by_name"]) == ("github", "link", "Ada Park")
    added = []
    for url, icon in [
        ("https://www.figma.com/file/x", "figma"),
        ("https://docs.google.com/document/d/1", "google-docs"),
        ("https://team.slack.com/archives/C1", "slack"),
        ("https://example.org/page", "link"),
    ]:
        resp = api.post(f"/tasks/{task_id}/resources", json={"url": url, "title": icon, "description": "d"})
        assert resp.status_code == 201 and set(resp.json()) == {"resource"}
        resource = resp.json()["resource"]
        assert set(resource) == RESOURCE_KEYS
        assert (resource["icon"], resource["task_id"], resource["created_by_name"]) == (
            icon,
            task_id,
            "Bridge Bot",
        )
        added.append(resource)
    listed = api.get(f"/tasks/{task_id}/resources").json()["resources"]
    assert [r["id"] for r in listed] == [seeded["id"], *(r["id"] for r in added)]
    assert [r["sort_order"] for r in listed] == [0, 1, 2, 3, 4]
    assert api.delete(f"/tasks/{task_id}/resources/{added[0]['id']}").json() == {"ok": True}
    assert_error(api.delete(f"/tasks/{task_id}/resources/{added[0]['id']}"), 404)
    assert len(api.get(f"/tasks/{task_id}/resources").json()["resources"]) == 4
    for body in (
        {"title": "no url"},
        {"url": "https://a.example"},
        {"url": "", "title": "x"},
        {"url": "https://a.example", "title": " "},
    ):
        assert_error(api.post(f"/tasks/{task_id}/resources", json=body), 400, "required")


def test_resources_reorder(api: httpx.Client) -> None:
    task_id = ids_by_title(api)["Migrate CI runners to ARM"]
    for n in range(2):
        api.post(f"/tasks/{task_id}/resources", json={"url": f"https://e.example/{n}", "title": f"r{n}"})
    ids = [r["id"] for r in api.get(f"/tasks/{task_id}/resources").json()["resources"]]
    resp = api.put(f"/tasks/{task_id}/resources/reorder", json={"order": ids[::-1]})
    assert resp.status_code == 200 and resp.json() == {"ok": True}
    listed = api.get(f"/tasks/{task_id}/resources").json()["resources"]
    assert [r["id"] for r in listed] == ids[::-1] and [r["sort_order"] for r in listed] == [0, 1, 2]
    assert_error(api.put(f"/tasks/{task_id}/resources/reorder", json={"order": []}), 400, "order")
    assert_error(api.put(f"/tasks/{task_id}/resources/reorder", json={}), 400, "order")
    assert_error(api.put(f"/tasks/{task_id}/resources/reorder", json={"order": [ids[0], "ghost"]}), 400)
    assert_error(api.put(f"/tasks/{task_id}/resources/reorder", json={"order": [ids[0], ids[0]]}), 400)


# -- faults, request log, harness -----------------------------------------------------------------


def test_rate_limit_burst_answers_429_with_retry_after(
    fake: SquadsFake, api: httpx.Client, raw: httpx.Client
) -> None:
    fake.faults.retry_after = 7
    fake.faults.rate_limit_burst = 1
    resp = api.get("/tasks")
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "7"
    assert resp.json() == {"error": "Too many requests"}
    assert api.get("/tasks").status_code == 200
    raw.post(f"{fake.url}/_fake/faults", json={"rate_limit_burst": 1})  # the switch over HTTP too
    assert api.get("/squads").status_code == 429


def test_error_rate_answers_500_in_platform_shape(fake: SquadsFake, api: httpx.Client) -> None:
    fake.faults.error_rate = 1.0
    resp = api.post("/tasks", json={"title": "never stored"})
    assert resp.status_code == 500 and resp.json() == {"error": "Internal server error"}
    fake.faults.error_rate = 0.0
    assert "never stored" not in titles(api)


def test_latency_delays_requests(fake: SquadsFake, api: httpx.Client) -> None:
    fake.faults.latency = 0.05
    started = time.monotonic()
    assert api.get("/squads").status_code == 200
    assert time.monotonic() - started >= 0.05


def test_request_log_counts(fake: SquadsFake, api: httpx.Client, raw: httpx.Client) -> None:
    task_id = ids_by_title(api)["Fix flaky login test"]
    api.get(f"/tasks/{task_id}")
    api.put(f"/tasks/{task_id}", json={"title": "Flaky"})
    api.post("/tasks", json={"title": "new"})
    raw.get(f"{fake.url}/api/tasks")  # unauthenticated, still served and counted
    raw.get(f"{fake.url}/_fake/state")  # control routes are not counted
    log = fake.requests
    assert log.count("GET", "/api/tasks") == 2
    assert log.count("GET", "/api/tasks", status=401) == 1
    assert log.count("GET", "/api/tasks/{task_id}") == 1
    assert log.count("PUT", "/api/tasks/{task_id}") == 1
    assert log.writes() == 2
    served = raw.get(f"{fake.url}/_fake/requests").json()
    assert served["total"] == 5 and served["by_route"]["POST /api/tasks"] == 1


def test_no_webhooks_are_sent(fake: SquadsFake, api: httpx.Client, raw: httpx.Client) -> None:
    task = api.post("/tasks", json={"title": "quiet"}).json()["task"]
    api.put(f"/tasks/{task['id']}", json={"title": "still quiet"})
    api.delete(f"/tasks/{task['id']}")
    assert fake.webhooks.deliveries == []
    assert raw.get(f"{fake.url}/_fake/webhooks").json() == []


def test_state_and_reset(fake: SquadsFake, api: httpx.Client, raw: httpx.Client) -> None:
    state = raw.get(f"{fake.url}/_fake/state").json()
    assert len(state["tasks"]) == 8 and len(state["users"]) == 7 and len(state["squads"]) == 2
    status_ids = item_ids(api, "task_status")
    fake.add_config_item("task_status", "qa", "QA")
    assert raw.post(f"{fake.url}/_fake/reset").json() == {"ok": True}
    assert api.get("/tasks").json() == {"tasks": []}
    assert item_ids(api, "task_status") == status_ids  # as constructed: same ids, no added item
    assert len(raw.get(f"{fake.url}/_fake/state").json()["users"]) == 7


def test_seed_is_deterministic() -> None:
    def tasks(seed: int) -> list[tuple[str, str, Any]]:
        rows = SquadsFake(token=TOKEN, seed=seed).tasks.values()
        return [(t["id"], t["title"], t["estimated_hours"]) for t in rows]

    assert tasks(3) == tasks(3)
    assert tasks(3) != tasks(4)
    assert {title for _, title, _ in tasks(3)} == ALL_TITLES
    assert SquadsFake(token=TOKEN).tasks == {}


def test_serves_standalone(raw: httpx.Client) -> None:
    port = fakekit.free_port()
    code = (
        "from connectors.squads.fake import SquadsFake; "
        f"SquadsFake(token={TOKEN!r}, seed=1).serve_forever({port})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                resp = raw.get(f"http://127.0.0.1:{port}/api/tasks", headers=cf_headers(), timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "standalone fake did not start"
                time.sleep(0.05)
        assert resp.status_code == 200 and len(resp.json()["tasks"]) == 8
    finally:
        proc.terminate()
        proc.wait(timeout=10)
