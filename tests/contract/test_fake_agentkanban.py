"""Contract tests for the AgentKanban fake, over real loopback HTTP.

Most tests share one seeded fake and make their own board, so they do not depend on each other;
webhook and fault tests get a fresh fake because they watch everything it sends.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors import fakekit
from connectors.agentkanban.fake import DEFAULT_LANES, AgentKanbanFake
from tests.conftest import WebhookReceiver

TOKEN = "ak_owner_test_key"
API = "/api/ext/v1"
REPO = Path(__file__).resolve().parents[2]


# -- fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[AgentKanbanFake]:
    f = AgentKanbanFake(token=TOKEN, seed=7)
    f.start()
    yield f
    f.stop()


@pytest.fixture
def fresh() -> Iterator[AgentKanbanFake]:
    f = AgentKanbanFake(token=TOKEN)
    f.webhooks.backoff = 0.05  # keep retry tests quick
    f.start()
    yield f
    f.stop()


def client_for(f: AgentKanbanFake, token: str | None = TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # plain-HTTP loopback: skipping certificate loading saves ~40 ms per client
    return httpx.Client(base_url=f.url + API, headers=headers, timeout=10, verify=False)


@pytest.fixture(scope="module")
def _shared_client(fake: AgentKanbanFake) -> Iterator[httpx.Client]:
    with client_for(fake) as c:
        yield c


@pytest.fixture
def api(fake: AgentKanbanFake, _shared_client: httpx.Client) -> httpx.Client:
    fake.faults.reset()
    return _shared_client


@pytest.fixture
def fapi(fresh: AgentKanbanFake) -> Iterator[httpx.Client]:
    with client_for(fresh) as c:
        yield c


def ok(resp: httpx.Response, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json()["data"]


def err(resp: httpx.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    return str(body["error"]["message"])


def new_board(api: httpx.Client, name: str = "Test Board") -> tuple[str, dict[str, str]]:
    board = ok(api.post("/boards", json={"name": name}), 201)
    lanes = ok(api.get(f"/boards/{board['id']}/lanes"))
    return board["id"], {lane["name"]: lane["id"] for lane in lanes}


def new_task(api: httpx.Client, board_id: str, **fields: Any) -> str:
    return str(ok(api.post(f"/boards/{board_id}/tasks", json={"title": "A task", **fields}), 201)["id"])


def verify_signature(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Independent check of the documented scheme: t=<ts>,v1=hex(HMAC-SHA256(secret, "<ts>.<body>"))."""
    parts = dict(p.split("=", 1) for p in headers["x-agentkanban-signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def hook_for(api: httpx.Client, receiver: WebhookReceiver, events: list[str] | None = None) -> dict[str, Any]:
    return dict(
        ok(api.post("/webhooks", json={"url": receiver.url + "/hook", "events": events or ["*"]}), 201)
    )


# -- auth and errors ---------------------------------------------------------------------------------


def test_missing_and_wrong_key_are_401(fake: AgentKanbanFake) -> None:
    with client_for(fake, None) as anon:
        err(anon.get("/boards"), 401, "missing_auth")
    with client_for(fake, "ak_not_a_key") as wrong:
        err(wrong.get("/boards"), 401, "invalid_key")
        err(wrong.post("/boards", json={"name": "x"}), 401, "invalid_key")
    with httpx.Client(base_url=fake.url + API, headers={"Authorization": f"Basic {TOKEN}"}) as basic:
        err(basic.get("/boards"), 401, "invalid_key")


def test_revoked_key_is_401(fake: AgentKanbanFake) -> None:
    fake.add_key("ak_short_lived")
    with client_for(fake, "ak_short_lived") as c:
        assert c.get("/boards").status_code == 200
        fake.revoke_key("ak_short_lived")
        err(c.get("/boards"), 401, "invalid_key")


def test_unknown_route_and_method_use_platform_shape(api: httpx.Client) -> None:
    err(api.get("/nothing-here"), 404, "not_found")
    err(api.put("/boards"), 405, "method_not_allowed")


def test_bad_json_and_non_object_bodies_are_400(api: httpx.Client) -> None:
    err(
        api.post("/boards", content=b"{not json", headers={"Content-Type": "application/json"}),
        400,
        "invalid_body",
    )
    err(api.post("/boards", json=["Sprint"]), 400, "validation_error")
    err(api.post("/boards", json={"name": "x", "color": "red"}), 400, "validation_error")


# -- permissions --------------------------------------------------------------------------------------


def test_read_key_can_read_but_every_write_is_403(fake: AgentKanbanFake, api: httpx.Client) -> None:
    board_id, lanes = new_board(api)
    task_id = new_task(api, board_id)
    comment_id = ok(api.post(f"/boards/{board_id}/tasks/{task_id}/comments", json={"body": "hi"}), 201)["id"]
    todo_id = ok(api.post(f"/boards/{board_id}/tasks/{task_id}/todos", json={"text": "t"}), 201)["id"]
    fake.add_key("ak_reader", boards={board_id: "read"})
    base = f"/boards/{board_id}"
    task = f"{base}/tasks/{task_id}"
    with client_for(fake, "ak_reader") as reader:
        assert ok(reader.get("/boards")) == [{"id": board_id, "name": "Test Board", "permission": "read"}]
        for path in (
            base,
            f"{base}/lanes",
            f"{base}/tasks",
            task,
            f"{task}/comments",
            f"{task}/todos",
            f"{task}/todos/{todo_id}",
            f"{task}/turns",
            f"{task}/turns/watermark",
        ):
            assert reader.get(path).status_code == 200, path
        writes = [
            ("POST", "/boards", {"name": "mine"}),
            ("DELETE", base, None),
            ("POST", f"{base}/lanes", {"name": "L"}),
            ("PATCH", f"{base}/lanes/{lanes['Done']}", {"name": "L"}),
            ("DELETE", f"{base}/lanes/{lanes['Done']}", None),
            ("POST", f"{base}/tasks", {"title": "x"}),
            ("PATCH", task, {"title": "x"}),
            ("POST", f"{task}/move", {"laneId": lanes["Done"]}),
            ("DELETE", task, None),
            ("POST", f"{task}/comments", {"body": "x"}),
            ("DELETE", f"{task}/comments/{comment_id}", None),
            ("POST", f"{task}/todos", {"text": "x"}),
            ("PATCH", f"{task}/todos/{todo_id}", {"done": True}),
            ("DELETE", f"{task}/todos/{todo_id}", None),
            ("POST", f"{task}/todos/reorder", {"orderedIds": [todo_id]}),
            ("POST", f"{task}/turns", {"turns": []}),
        ]
        for method, path, body in writes:
            err(reader.request(method, path, json=body), 403, "forbidden")
    assert ok(api.get(task))["title"] == "A task"  # nothing changed


def test_key_without_the_board_gets_403_and_does_not_see_it(fake: AgentKanbanFake, api: httpx.Client) -> None:
    board_id, _ = new_board(api, "Secret")
    other_id, _ = new_board(api, "Shared")
    fake.add_key("ak_partial", boards={other_id: "edit"})
    with client_for(fake, "ak_partial") as partial:
        assert [b["id"] for b in ok(partial.get("/boards"))] == [other_id]
        message = err(partial.get(f"/boards/{board_id}"), 403, "forbidden")
        assert "access" in message
        err(partial.get(f"/boards/{board_id}/tasks"), 403, "forbidden")
        err(partial.get("/boards/01doesnotexist0000000000000"), 403, "forbidden")
        created = ok(partial.post("/boards", json={"name": "Made by partial"}), 201)
        assert {"id": created["id"], "name": "Made by partial", "permission": "edit"} in ok(
            partial.get("/boards")
        )
    fake.add_key("ak_read_only", boards={other_id: "read"})
    with client_for(fake, "ak_read_only") as read_only:
        err(read_only.post("/boards", json={"name": "no"}), 403, "forbidden")


# -- boards -----------------------------------------------------------------------------------------------


def test_seeded_board_and_tasks(fake: AgentKanbanFake, api: httpx.Client) -> None:
    boards = ok(api.get("/boards"))
    assert boards[0] == {"id": fake.demo_board_id, "name": "Sprint Board", "permission": "edit"}
    detail = ok(api.get(f"/boards/{fake.demo_board_id}"))
    assert [lane["name"] for lane in detail["lanes"]] == list(DEFAULT_LANES)
    tasks = ok(api.get(f"/boards/{fake.demo_board_id}/tasks"))
    assert 5 <= len(tasks) <= 8
    assert sum(lane["taskCount"] for lane in detail["lanes"]) == len(tasks)
    commented = [t for t in tasks if ok(api.get(f"/boards/{fake.demo_board_id}/tasks/{t['id']}/comments"))]
    assert commented, "seed should include comments"


def test_seed_is_deterministic() -> None:
    a, b = AgentKanbanFake(token=TOKEN, seed=3), AgentKanbanFake(token=TOKEN, seed=3)
    assert a.snapshot()["boards"][0]["id"] == b.snapshot()["boards"][0]["id"]
    assert [t["shortId"] for t in a.snapshot()["boards"][0]["tasks"]] == [
        t["shortId"] for t in b.snapshot()["boards"][0]["tasks"]
    ]
    assert AgentKanbanFake(token=TOKEN).snapshot()["boards"] == []


def test_board_create_get_delete(api: httpx.Client) -> None:
    created = ok(api.post("/boards", json={"name": "New Board"}), 201)
    assert set(created) == {"id", "name"} and created["name"] == "New Board"
    assert len(created["id"]) == 26 and created["id"].startswith("01")
    detail = ok(api.get(f"/boards/{created['id']}"))
    assert detail["id"] == created["id"]
    assert [(lane["name"], lane["taskCount"]) for lane in detail["lanes"]] == [(n, 0) for n in DEFAULT_LANES]
    assert all(set(lane) == {"id", "name", "taskCount"} for lane in detail["lanes"])
    assert api.delete(f"/boards/{created['id']}").status_code == 204
    err(api.get(f"/boards/{created['id']}"), 404, "not_found")
    err(api.delete(f"/boards/{created['id']}"), 404, "not_found")
    assert created["id"] not in [b["id"] for b in ok(api.get("/boards"))]


def test_board_validation(api: httpx.Client) -> None:
    assert err(api.post("/boards", json={}), 400, "validation_error") == "Board name is required"
    err(api.post("/boards", json={"name": "   "}), 400, "validation_error")
    err(api.post("/boards", json={"name": 5}), 400, "validation_error")


def test_in_process_create_board(fake: AgentKanbanFake, api: httpx.Client) -> None:
    board_id = fake.create_board("Made in process")
    assert ok(api.get(f"/boards/{board_id}"))["name"] == "Made in process"


# -- lanes --------------------------------------------------------------------------------------------------


def test_lane_crud_and_reorder(api: httpx.Client) -> None:
    board_id, lanes = new_board(api)
    listed = ok(api.get(f"/boards/{board_id}/lanes"))
    assert listed == [{"id": lanes[n], "name": n, "position": i} for i, n in enumerate(DEFAULT_LANES)]
    lane = ok(api.post(f"/boards/{board_id}/lanes", json={"name": "Blocked"}), 201)
    assert set(lane) == {"id", "name"} and lane["name"] == "Blocked"
    assert ok(api.get(f"/boards/{board_id}/lanes"))[-1] == {
        "id": lane["id"],
        "name": "Blocked",
        "position": 4,
    }

    renamed = ok(api.patch(f"/boards/{board_id}/lanes/{lanes['In Review']}", json={"name": "Code Review"}))
    assert renamed == {"id": lanes["In Review"], "name": "Code Review"}
    ok(api.patch(f"/boards/{board_id}/lanes/{lane['id']}", json={"position": 1}))
    names = [x["name"] for x in ok(api.get(f"/boards/{board_id}/lanes"))]
    assert names == ["To Do", "Blocked", "Doing", "Code Review", "Done"]
    ok(api.patch(f"/boards/{board_id}/lanes/{lanes['To Do']}", json={"position": 99}))
    listed = ok(api.get(f"/boards/{board_id}/lanes"))
    assert [x["name"] for x in listed] == ["Blocked", "Doing", "Code Review", "Done", "To Do"]
    assert [x["position"] for x in listed] == [0, 1, 2, 3, 4]

    assert api.delete(f"/boards/{board_id}/lanes/{lane['id']}").status_code == 204
    err(api.delete(f"/boards/{board_id}/lanes/{lane['id']}"), 404, "not_found")
    assert len(ok(api.get(f"/boards/{board_id}/lanes"))) == 4


def test_lane_validation_and_non_empty_delete(api: httpx.Client) -> None:
    board_id, lanes = new_board(api)
    err(api.post(f"/boards/{board_id}/lanes", json={}), 400, "validation_error")
    err(
        api.patch(f"/boards/{board_id}/lanes/{lanes['Done']}", json={"position": -1}), 400, "validation_error"
    )
    err(api.patch(f"/boards/{board_id}/lanes/{lanes['Done']}", json={"name": ""}), 400, "validation_error")
    err(
        api.patch(f"/boards/{board_id}/lanes/01nolane000000000000000000", json={"name": "x"}),
        404,
        "not_found",
    )
    new_task(api, board_id, laneId=lanes["Doing"])
    err(api.delete(f"/boards/{board_id}/lanes/{lanes['Doing']}"), 400, "validation_error")
    err(api.get("/boards/01noboard00000000000000000/lanes"), 404, "not_found")


# -- tasks ----------------------------------------------------------------------------------------------------


def test_task_create_defaults_and_detail(api: httpx.Client) -> None:
    board_id, lanes = new_board(api)
    created = ok(api.post(f"/boards/{board_id}/tasks", json={"title": "New task"}), 201)
    assert set(created) == {"id", "title", "laneId"}
    assert created["title"] == "New task" and created["laneId"] == lanes["To Do"]
    detail = ok(api.get(f"/boards/{board_id}/tasks/{created['id']}"))
    assert set(detail) == {
        "id",
        "shortId",
        "title",
        "description",
        "laneId",
        "priority",
        "tags",
        "archived",
        "createdAt",
        "updatedAt",
        "lastTurnAt",
    }
    assert detail["priority"] == 0 and detail["tags"] == [] and detail["archived"] is False
    assert detail["description"] is None and detail["lastTurnAt"] is None
    assert len(detail["shortId"]) == 8 and int(detail["shortId"], 16) >= 0
    assert detail["createdAt"] == detail["updatedAt"] and detail["createdAt"].endswith("Z")

    full = ok(
        api.post(
            f"/boards/{board_id}/tasks",
            json={
                "title": "Fix login bug",
                "laneId": lanes["Doing"],
                "description": "Crashes",
                "priority": 4,
                "tags": ["bug", "auth"],
            },
        ),
        201,
    )
    detail = ok(api.get(f"/boards/{board_id}/tasks/{full['id']}"))
    assert (detail["laneId"], detail["description"], detail["priority"], detail["tags"]) == (
        lanes["Doing"],
        "Crashes",
        4,
        ["bug", "auth"],
    )


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"title": ""},
        {"title": 7},
        {"title": "x", "priority": 5},
        {"title": "x", "priority": -1},
        {"title": "x", "priority": "2"},
        {"title": "x", "priority": True},
        {"title": "x", "priority": 2.5},
        {"title": "x", "tags": "bug"},
        {"title": "x", "tags": [1]},
        {"title": "x", "description": 3},
        {"title": "x", "laneId": "01nolane000000000000000000"},
        {"title": "x", "archived": True},
    ],
)
def test_task_create_validation(api: httpx.Client, body: dict[str, Any]) -> None:
    board_id, _ = new_board(api)
    err(api.post(f"/boards/{board_id}/tasks", json=body), 400, "validation_error")
    assert ok(api.get(f"/boards/{board_id}/tasks")) == []


def test_task_list_filters(api: httpx.Client) -> None:
    board_id, lanes = new_board(api)
    a = new_task(api, board_id, title="a", laneId=lanes["Doing"])
    b = new_task(api, board_id, title="b")
    c = new_task(api, board_id, title="c")
    ok(api.patch(f"/boards/{board_id}/tasks/{c}", json={"archived": True}))
    listed = ok(api.get(f"/boards/{board_id}/tasks"))
    assert [t["id"] for t in listed] == [b, a]  # lane order, then position; archived hidden
    assert set(listed[0]) == {
        "id",
        "shortId",
        "title",
        "laneId",
        "priority",
        "tags",
        "archived",
        "createdAt",
        "updatedAt",
    }
    with_archived = ok(api.get(f"/boards/{board_id}/tasks", params={"includeArchived": "true"}))
    assert [t["id"] for t in with_archived] == [b, c, a]
    assert [t["id"] for t in ok(api.get(f"/boards/{board_id}/tasks", params={"laneId": lanes["Doing"]}))] == [
        a
    ]
    assert ok(api.get(f"/boards/{board_id}/tasks", params={"laneId": lanes["Done"]})) == []
    short = ok(api.get(f"/boards/{board_id}/tasks/{a}"))["shortId"]
    by_prefix = ok(api.get(f"/boards/{board_id}/tasks", params={"shortIdPrefix": short[:6].upper()}))
    assert [t["id"] for t in by_prefix] == [a]
    err(api.get(f"/boards/{board_id}/tasks", params={"includeArchived": "yes"}), 400, "validation_error")
    err(
        api.get(f"/boards/{board_id}/tasks", params={"laneId": "01nolane000000000000000000"}),
        400,
        "validation_error",
    )
    detail = ok(api.get(f"/boards/{board_id}"))
    assert {lane["name"]: lane["taskCount"] for lane in detail["lanes"]}["To Do"] == 1  # archived not counted


def test_task_patch(api: httpx.Client) -> None:
    board_id, _ = new_board(api)
    task_id = new_task(api, board_id)
    before = ok(api.get(f"/boards/{board_id}/tasks/{task_id}"))
    patched = ok(
        api.patch(f"/boards/{board_id}/tasks/{task_id}", json={"title": "Updated title", "priority": 2})
    )
    assert patched == {"id": task_id, "title": "Updated title", "priority": 2}
    after = ok(api.get(f"/boards/{board_id}/tasks/{task_id}"))
    assert after["title"] == "Updated title" and after["priority"] == 2
    assert after["updatedAt"] > before["updatedAt"] and after["createdAt"] == before["createdAt"]
    ok(
        api.patch(
            f"/boards/{board_id}/tasks/{task_id}",
            json={"description": "More", "tags": ["x"], "archived": True},
        )
    )
    after = ok(api.get(f"/boards/{board_id}/tasks/{task_id}"))
    assert (after["description"], after["tags"], after["archived"]) == ("More", ["x"], True)
    assert (
        ok(api.patch(f"/boards/{board_id}/tasks/{task_id}", json={"description": None}))["description"]
        is None
    )


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"laneId": "x"},
        {"title": ""},
        {"priority": 9},
        {"archived": "yes"},
        {"tags": None},
        {"shortId": "x"},
    ],
)
def test_task_patch_validation(api: httpx.Client, body: dict[str, Any]) -> None:
    board_id, _ = new_board(api)
    task_id = new_task(api, board_id)
    before = ok(api.get(f"/boards/{board_id}/tasks/{task_id}"))
    message = err(api.patch(f"/boards/{board_id}/tasks/{task_id}", json=body), 400, "validation_error")
    if "laneId" in body:
        assert "move" in message
    assert ok(api.get(f"/boards/{board_id}/tasks/{task_id}")) == before


def test_task_move(api: httpx.Client) -> None:
    board_id, lanes = new_board(api)
    done = [new_task(api, board_id, laneId=lanes["Done"]) for _ in range(2)]
    task_id = new_task(api, board_id)
    before = ok(api.get(f"/boards/{board_id}/tasks/{task_id}"))["updatedAt"]
    moved = ok(api.post(f"/boards/{board_id}/tasks/{task_id}/move", json={"laneId": lanes["Done"]}))
    assert moved == {"id": task_id, "laneId": lanes["Done"], "position": 2}  # appended
    after = ok(api.get(f"/boards/{board_id}/tasks/{task_id}"))
    assert after["laneId"] == lanes["Done"] and after["updatedAt"] > before
    moved = ok(
        api.post(f"/boards/{board_id}/tasks/{task_id}/move", json={"laneId": lanes["Done"], "position": 0})
    )
    assert moved["position"] == 0
    order = [t["id"] for t in ok(api.get(f"/boards/{board_id}/tasks", params={"laneId": lanes["Done"]}))]
    assert order == [task_id, *done]
    moved = ok(
        api.post(f"/boards/{board_id}/tasks/{task_id}/move", json={"laneId": lanes["Doing"], "position": 50})
    )
    assert moved["position"] == 0
    err(api.post(f"/boards/{board_id}/tasks/{task_id}/move", json={}), 400, "validation_error")
    err(
        api.post(f"/boards/{board_id}/tasks/{task_id}/move", json={"laneId": "nope"}), 400, "validation_error"
    )
    err(
        api.post(f"/boards/{board_id}/tasks/{task_id}/move", json={"laneId": lanes["Done"], "position": -2}),
        400,
        "validation_error",
    )


def test_task_delete_and_404s(api: httpx.Client) -> None:
    board_id, _ = new_board(api)
    other_board, _ = new_board(api)
    task_id = new_task(api, board_id)
    err(api.get(f"/boards/{other_board}/tasks/{task_id}"), 404, "not_found")  # wrong board
    assert api.delete(f"/boards/{board_id}/tasks/{task_id}").content == b""
    err(api.get(f"/boards/{board_id}/tasks/{task_id}"), 404, "not_found")
    err(api.delete(f"/boards/{board_id}/tasks/{task_id}"), 404, "not_found")
    err(api.patch(f"/boards/{board_id}/tasks/{task_id}", json={"title": "x"}), 404, "not_found")
    err(api.get(f"/boards/{board_id}/tasks/{task_id}/comments"), 404, "not_found")


# -- comments ------------------------------------------------------------------------------------------------------


def test_comments(api: httpx.Client) -> None:
    board_id, _ = new_board(api)
    task_id = new_task(api, board_id)
    path = f"/boards/{board_id}/tasks/{task_id}/comments"
    assert ok(api.get(path)) == []
    first = ok(api.post(path, json={"body": "Work completed.", "authorName": "CI Bot", "source": "api"}), 201)
    assert set(first) == {"id", "body", "authorName", "authorSource", "createdAt"}
    assert (first["body"], first["authorName"], first["authorSource"]) == ("Work completed.", "CI Bot", "api")
    second = ok(api.post(path, json={"body": "From the agent", "source": "agent"}), 201)
    assert second["authorSource"] == "agent" and second["authorName"] == "API Key"
    default = ok(api.post(path, json={"body": "plain"}), 201)
    assert default["authorSource"] == "api"
    assert [c["id"] for c in ok(api.get(path))] == [first["id"], second["id"], default["id"]]
    assert api.delete(f"{path}/{second['id']}").status_code == 204
    err(api.delete(f"{path}/{second['id']}"), 404, "not_found")
    assert [c["id"] for c in ok(api.get(path))] == [first["id"], default["id"]]


def test_seeded_comments_carry_user_source(fake: AgentKanbanFake, api: httpx.Client) -> None:
    board = fake.demo_board_id
    sources = {
        c["authorSource"]
        for t in ok(api.get(f"/boards/{board}/tasks"))
        for c in ok(api.get(f"/boards/{board}/tasks/{t['id']}/comments"))
    }
    assert sources <= {"user", "api", "agent"} and sources


@pytest.mark.parametrize(
    "body", [{}, {"body": ""}, {"body": "x", "source": "user"}, {"body": "x", "authorName": 3}]
)
def test_comment_validation(api: httpx.Client, body: dict[str, Any]) -> None:
    board_id, _ = new_board(api)
    task_id = new_task(api, board_id)
    err(api.post(f"/boards/{board_id}/tasks/{task_id}/comments", json=body), 400, "validation_error")


# -- todos ------------------------------------------------------------------------------------------------------------


def test_todos_crud_order_and_reorder(api: httpx.Client) -> None:
    board_id, _ = new_board(api)
    task_id = new_task(api, board_id)
    path = f"/boards/{board_id}/tasks/{task_id}/todos"
    later = ok(api.post(path, json={"text": "Update release notes", "iteration": 2, "source": "agent"}), 201)
    assert set(later) == {"id", "text", "done", "iteration", "order", "source", "createdAt"}
    assert (later["text"], later["iteration"], later["source"], later["done"]) == (
        "Update release notes",
        2,
        "agent",
        False,
    )
    a = ok(api.post(path, json={"text": "a"}), 201)
    b = ok(api.post(path, json={"text": "b"}), 201)
    assert a["iteration"] == 1 and a["source"] == "api"
    assert [t["id"] for t in ok(api.get(path))] == [a["id"], b["id"], later["id"]]

    reordered = ok(api.post(f"{path}/reorder", json={"orderedIds": [b["id"], later["id"], a["id"]]}))
    assert [t["id"] for t in reordered] == [b["id"], a["id"], later["id"]]  # iteration still first
    assert [t["id"] for t in ok(api.get(path))] == [b["id"], a["id"], later["id"]]

    assert ok(api.get(f"{path}/{a['id']}"))["text"] == "a"
    patched = ok(api.patch(f"{path}/{a['id']}", json={"text": "a2", "done": True, "iteration": 2}))
    assert (patched["text"], patched["done"], patched["iteration"]) == ("a2", True, 2)
    assert [t["id"] for t in ok(api.get(path))] == [b["id"], later["id"], a["id"]]  # joined iteration 2 last

    assert api.delete(f"{path}/{a['id']}").status_code == 204
    err(api.get(f"{path}/{a['id']}"), 404, "not_found")
    err(api.patch(f"{path}/{a['id']}", json={"done": True}), 404, "not_found")


def test_todo_validation_and_bad_reorder(api: httpx.Client) -> None:
    board_id, _ = new_board(api)
    task_id = new_task(api, board_id)
    path = f"/boards/{board_id}/tasks/{task_id}/todos"
    one = ok(api.post(path, json={"text": "one"}), 201)["id"]
    two = ok(api.post(path, json={"text": "two"}), 201)["id"]
    for body in ({}, {"text": ""}, {"text": "x", "iteration": 0}, {"text": "x", "source": "user"}):
        err(api.post(path, json=body), 400, "validation_error")
    err(api.patch(f"{path}/{one}", json={"done": "yes"}), 400, "validation_error")
    for ids in ([one], [one, two, "extra"], [one, one], "nope", [two, "01zzzzzzzzzzzzzzzzzzzzzzzz"]):
        err(api.post(f"{path}/reorder", json={"orderedIds": ids}), 400, "validation_error")
    assert [t["id"] for t in ok(api.get(path))] == [one, two]


# -- turns ----------------------------------------------------------------------------------------------------------


def turn(source_id: str, captured: str, source: str = "copilot", role: str = "user") -> dict[str, Any]:
    return {
        "source": source,
        "sourceId": source_id,
        "role": role,
        "content": f"turn {source_id}",
        "capturedAt": captured,
    }


def test_turn_batch_upsert_and_watermarks(api: httpx.Client) -> None:
    board_id, _ = new_board(api)
    task_id = new_task(api, board_id)
    path = f"/boards/{board_id}/tasks/{task_id}/turns"
    empty_marks = api.get(f"{path}/watermark")
    assert empty_marks.status_code == 200 and empty_marks.json() == {"watermarks": {}}
    resp = api.post(
        path,
        json={
            "turns": [
                turn("abc123", "2025-06-20T10:30:00Z"),
                turn("def456", "2025-06-20T10:30:05Z", role="assistant"),
            ]
        },
    )
    assert resp.status_code == 201
    assert resp.json() == {
        "data": {"inserted": 2},
        "watermarks": {"copilot": {"sourceId": "def456", "capturedAt": "2025-06-20T10:30:05Z"}},
    }
    again = api.post(
        path,
        json={
            "turns": [
                turn("abc123", "2025-06-20T10:30:00Z"),
                turn("x1", "2025-06-21T08:00:00.250Z", source="codex"),
                turn("x1", "2025-06-21T09:00:00Z", source="codex"),
            ]
        },
    )
    assert again.json()["data"] == {"inserted": 1}  # repeat and in-batch duplicate ignored
    marks = api.get(f"{path}/watermark").json()
    assert marks == {
        "watermarks": {
            "codex": {"sourceId": "x1", "capturedAt": "2025-06-21T08:00:00.250Z"},
            "copilot": {"sourceId": "def456", "capturedAt": "2025-06-20T10:30:05Z"},
        }
    }
    assert ok(api.get(f"/boards/{board_id}/tasks/{task_id}"))["lastTurnAt"] == "2025-06-21T08:00:00.250Z"


@pytest.mark.parametrize(
    "turns",
    [
        [],
        "nope",
        [turn(str(i), "2025-06-20T10:30:00Z") for i in range(101)],
        [{k: v for k, v in turn("a", "2025-06-20T10:30:00Z").items() if k != "sourceId"}],
        [turn("a", "yesterday")],
        [turn("a", "2025-06-20T10:30:00Z", role="robot")],
        [{**turn("a", "2025-06-20T10:30:00Z"), "content": None}],
        [turn("ok", "2025-06-20T10:30:00Z"), {**turn("b", "2025-06-20T10:30:00Z"), "extra": 1}],
    ],
)
def test_turn_validation(api: httpx.Client, turns: Any) -> None:
    board_id, _ = new_board(api)
    task_id = new_task(api, board_id)
    path = f"/boards/{board_id}/tasks/{task_id}/turns"
    err(api.post(path, json={"turns": turns}), 400, "validation_error")
    assert api.get(path).json()["data"] == []  # a bad batch stores nothing


def test_turn_batch_of_exactly_100_is_accepted(api: httpx.Client) -> None:
    board_id, _ = new_board(api)
    task_id = new_task(api, board_id)
    resp = api.post(
        f"/boards/{board_id}/tasks/{task_id}/turns",
        json={"turns": [turn(f"t{i}", f"2025-06-20T10:{i // 60:02d}:{i % 60:02d}Z") for i in range(100)]},
    )
    assert resp.status_code == 201 and resp.json()["data"] == {"inserted": 100}


def test_turn_list_filters_and_cursor_pagination(api: httpx.Client) -> None:
    board_id, _ = new_board(api)
    task_id = new_task(api, board_id)
    path = f"/boards/{board_id}/tasks/{task_id}/turns"
    empty = api.get(path).json()
    assert empty == {"data": [], "watermarks": {}, "cursor": None}
    batch = [turn(f"c{i}", f"2025-06-20T10:30:0{i}Z") for i in range(5)]
    batch += [turn(f"k{i}", f"2025-06-20T10:30:0{i}Z", source="codex") for i in range(2)]
    api.post(path, json={"turns": batch})

    first = api.get(path, params={"source": "copilot", "limit": 2}).json()
    assert [t["sourceId"] for t in first["data"]] == ["c0", "c1"]
    assert set(first["data"][0]) == {
        "id",
        "source",
        "sourceId",
        "role",
        "content",
        "toolUseOnly",
        "capturedAt",
    }
    assert first["data"][0]["toolUseOnly"] is False
    assert first["watermarks"] == {"copilot": {"sourceId": "c4", "capturedAt": "2025-06-20T10:30:04Z"}}
    assert first["cursor"]
    second = api.get(path, params={"source": "copilot", "limit": 2, "cursor": first["cursor"]}).json()
    assert [t["sourceId"] for t in second["data"]] == ["c2", "c3"] and second["cursor"]
    last = api.get(path, params={"source": "copilot", "limit": 2, "cursor": second["cursor"]}).json()
    assert [t["sourceId"] for t in last["data"]] == ["c4"] and last["cursor"] is None

    exact = api.get(path, params={"source": "copilot", "limit": 5}).json()
    assert len(exact["data"]) == 5 and exact["cursor"] is None  # exact page boundary: no next page
    everything = api.get(path).json()
    assert len(everything["data"]) == 7 and set(everything["watermarks"]) == {"codex", "copilot"}
    after = api.get(path, params={"after": "2025-06-20T10:30:02Z", "source": "copilot"}).json()
    assert [t["sourceId"] for t in after["data"]] == ["c3", "c4"]

    for params in (
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"cursor": "!!garbage!!"},
        {"after": "not-a-date"},
    ):
        err(api.get(path, params=params), 400, "validation_error")


# -- webhooks -------------------------------------------------------------------------------------------------------


def test_webhook_crud(fresh: AgentKanbanFake, fapi: httpx.Client) -> None:
    assert ok(fapi.get("/webhooks")) == []
    created = ok(
        fapi.post("/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["task.created"]}), 201
    )
    assert set(created) == {"id", "url", "events", "active", "secret"}
    assert created["secret"].startswith("whsec_") and created["active"] is True
    hook_id = created["id"]
    listed = ok(fapi.get("/webhooks"))
    assert listed == [
        {"id": hook_id, "url": "http://127.0.0.1:9/hook", "events": ["task.created"], "active": True}
    ]
    detail = ok(fapi.get(f"/webhooks/{hook_id}"))
    assert "secret" not in detail and detail["deliveries"] == []
    patched = ok(
        fapi.patch(
            f"/webhooks/{hook_id}", json={"events": ["*"], "active": False, "url": "https://example.test/h"}
        )
    )
    assert patched == {"id": hook_id, "url": "https://example.test/h", "events": ["*"], "active": False}
    for body in ({"url": "ftp://x"}, {"events": []}, {"events": ["task.exploded"]}, {"active": "no"}):
        err(fapi.patch(f"/webhooks/{hook_id}", json=body), 400, "validation_error")
    for body in ({"events": ["*"]}, {"url": "not a url", "events": ["*"]}, {"url": "http://x.test"}):
        err(fapi.post("/webhooks", json=body), 400, "validation_error")

    fresh.add_key("ak_other")
    with client_for(fresh, "ak_other") as other:
        assert ok(other.get("/webhooks")) == []
        err(other.get(f"/webhooks/{hook_id}"), 404, "not_found")
        err(other.delete(f"/webhooks/{hook_id}"), 404, "not_found")
    with client_for(fresh, None) as anon:
        err(anon.get("/webhooks"), 401, "missing_auth")

    assert fapi.delete(f"/webhooks/{hook_id}").status_code == 204
    err(fapi.get(f"/webhooks/{hook_id}"), 404, "not_found")


def test_webhook_delivery_is_signed(
    fresh: AgentKanbanFake, fapi: httpx.Client, webhook_receiver: WebhookReceiver
) -> None:
    hook = hook_for(fapi, webhook_receiver)
    board_id, _ = new_board(fapi)  # board.created
    task_id = new_task(fapi, board_id, title="Signed", priority=3)  # task.created
    hooks = webhook_receiver.wait_for(2)
    assert [h.headers["x-agentkanban-event"] for h in hooks] == ["board.created", "task.created"]
    delivered = hooks[1]
    assert delivered.path == "/hook" and delivered.headers["content-type"] == "application/json"
    assert verify_signature(hook["secret"], delivered.headers, delivered.body)
    assert not verify_signature(
        hook["secret"], delivered.headers, delivered.body.replace(b"Signed", b"Forged")
    )
    assert not verify_signature("whsec_wrong", delivered.headers, delivered.body)
    t = int(dict(p.split("=", 1) for p in delivered.headers["x-agentkanban-signature"].split(","))["t"])
    assert abs(t - time.time()) < 60

    payload = json.loads(delivered.body)
    assert set(payload) == {"id", "event", "createdAt", "boardId", "data"}
    assert payload["event"] == "task.created" and payload["boardId"] == board_id
    assert payload["id"] == delivered.headers["x-agentkanban-delivery"]
    assert payload["data"]["id"] == task_id and payload["data"]["priority"] == 3
    assert payload["data"]["title"] == "Signed" and "lastTurnAt" in payload["data"]
    assert json.loads(hooks[0].body)["data"] == {"id": board_id, "name": "Test Board"}
    assert hooks[0].headers["x-agentkanban-delivery"] != delivered.headers["x-agentkanban-delivery"]

    wait_until(
        lambda: all(
            d["outcome"] == "delivered" for d in ok(fapi.get(f"/webhooks/{hook['id']}"))["deliveries"]
        )
    )
    deliveries = ok(fapi.get(f"/webhooks/{hook['id']}"))["deliveries"]
    assert [d["event"] for d in deliveries] == ["task.created", "board.created"]  # newest first
    assert deliveries[0]["id"] == payload["id"] and deliveries[0]["status"] == 200


def test_every_event_kind_fires(
    fresh: AgentKanbanFake, fapi: httpx.Client, webhook_receiver: WebhookReceiver
) -> None:
    board_id, lanes = new_board(fapi)
    hook_for(fapi, webhook_receiver)
    task_id = new_task(fapi, board_id)
    task = f"/boards/{board_id}/tasks/{task_id}"
    ok(fapi.patch(task, json={"title": "Renamed"}))
    ok(fapi.post(f"{task}/move", json={"laneId": lanes["Done"]}))
    ok(fapi.post(f"{task}/comments", json={"body": "Shipped"}), 201)
    assert fapi.delete(task).status_code == 204
    hooks = webhook_receiver.wait_for(5)
    events = [(h.headers["x-agentkanban-event"], json.loads(h.body)["data"]) for h in hooks]
    assert [e for e, _ in events] == [
        "task.created",
        "task.updated",
        "task.updated",
        "comment.created",
        "task.deleted",
    ]
    assert events[1][1]["title"] == "Renamed"
    assert events[2][1]["laneId"] == lanes["Done"]  # a move is a task.updated
    assert events[3][1]["body"] == "Shipped" and events[3][1]["taskId"] == task_id
    assert events[4][1]["id"] == task_id


def test_webhook_event_filter_inactive_and_board_visibility(
    fresh: AgentKanbanFake, fapi: httpx.Client, webhook_receiver: WebhookReceiver
) -> None:
    visible, _ = new_board(fapi, "Visible")
    hidden, _ = new_board(fapi, "Hidden")
    fresh.add_key("ak_scoped", boards={visible: "read"})
    with client_for(fresh, "ak_scoped") as scoped:
        hook_for(scoped, webhook_receiver, ["task.created"])
    inactive = hook_for(fapi, webhook_receiver, ["*"])
    ok(fapi.patch(f"/webhooks/{inactive['id']}", json={"active": False}))
    new_task(fapi, hidden, title="hidden")  # the scoped key cannot see it
    task_id = new_task(fapi, visible, title="seen")
    ok(fapi.patch(f"/boards/{visible}/tasks/{task_id}", json={"priority": 1}))  # not subscribed
    new_task(fapi, visible, title="marker")
    webhook_receiver.wait_for(2)
    time.sleep(0.2)  # a short grace period in which nothing else may arrive
    titles = [json.loads(h.body)["data"]["title"] for h in webhook_receiver.received]
    assert titles == ["seen", "marker"]


def test_webhook_retries_on_500(
    fresh: AgentKanbanFake, fapi: httpx.Client, webhook_receiver: WebhookReceiver
) -> None:
    board_id, _ = new_board(fapi)
    hook = hook_for(fapi, webhook_receiver)
    webhook_receiver.status = 500
    new_task(fapi, board_id)
    hooks = webhook_receiver.wait_for(2)
    webhook_receiver.status = 200
    hooks = webhook_receiver.wait_for(3)
    assert len({h.headers["x-agentkanban-delivery"] for h in hooks}) == 1  # the same delivery, resent
    assert hooks[0].body == hooks[-1].body
    assert verify_signature(hook["secret"], hooks[-1].headers, hooks[-1].body)
    wait_until(lambda: ok(fapi.get(f"/webhooks/{hook['id']}"))["deliveries"][0]["outcome"] == "delivered")
    assert ok(fapi.get(f"/webhooks/{hook['id']}"))["deliveries"][0]["attempts"] >= 2


def test_dropped_webhooks_never_arrive(
    fresh: AgentKanbanFake, fapi: httpx.Client, webhook_receiver: WebhookReceiver
) -> None:
    board_id, _ = new_board(fapi)
    hook = hook_for(fapi, webhook_receiver)
    fresh.faults.drop_webhook_rate = 1
    new_task(fapi, board_id)
    fresh.faults.drop_webhook_rate = 0
    new_task(fapi, board_id, title="after")
    webhook_receiver.wait_for(1)
    time.sleep(0.1)
    assert [json.loads(h.body)["data"]["title"] for h in webhook_receiver.received] == ["after"]
    assert [d["outcome"] for d in ok(fapi.get(f"/webhooks/{hook['id']}"))["deliveries"]][-1] == "dropped"


def test_revoking_a_key_deletes_its_webhooks(
    fresh: AgentKanbanFake, fapi: httpx.Client, webhook_receiver: WebhookReceiver
) -> None:
    fresh.add_key("ak_temp")
    with client_for(fresh, "ak_temp") as temp:
        hook_for(temp, webhook_receiver)
    hook_for(fapi, webhook_receiver, ["board.created"])
    fresh.revoke_key("ak_temp")
    assert len(fresh.snapshot()["webhooks"]) == 1
    fresh.create_board("In process")  # in-process changes fire too
    hooks = webhook_receiver.wait_for(1)
    time.sleep(0.1)
    assert len(webhook_receiver.received) == 1
    assert json.loads(hooks[0].body)["data"]["name"] == "In process"


# -- faults, request log, control routes ----------------------------------------------------------------------------


def test_rate_limit_burst_answers_429_with_retry_after(fresh: AgentKanbanFake, fapi: httpx.Client) -> None:
    fresh.faults.rate_limit_burst = 2
    fresh.faults.retry_after = 12
    for _ in range(2):
        resp = fapi.get("/boards")
        assert resp.headers["Retry-After"] == "12"
        assert err(resp, 429, "rate_limited") == "Rate limit exceeded. Try again later."
    assert fapi.get("/boards").status_code == 200


def test_error_rate_answers_500_in_platform_shape(fresh: AgentKanbanFake, fapi: httpx.Client) -> None:
    fresh.faults.error_rate = 1
    err(fapi.get("/boards"), 500, "internal_error")
    fresh.faults.error_rate = 0
    assert fapi.get("/boards").status_code == 200


def test_latency_is_applied(fresh: AgentKanbanFake, fapi: httpx.Client) -> None:
    fresh.faults.latency = 0.15
    started = time.monotonic()
    fapi.get("/boards")
    assert time.monotonic() - started >= 0.15


def test_faults_over_http_and_request_log(fresh: AgentKanbanFake, fapi: httpx.Client) -> None:
    board_id, _ = new_board(fapi)
    new_task(fapi, board_id)
    fapi.get(f"/boards/{board_id}/tasks")
    fapi.get(f"/boards/{board_id}/tasks")
    with client_for(fresh, None) as anon:
        anon.get("/boards")
    assert fresh.requests.count("GET", f"{API}/boards/{{board_id}}/tasks") == 2
    assert fresh.requests.count("POST", f"{API}/boards/{{board_id}}/tasks") == 1
    assert fresh.requests.count("GET", f"{API}/boards", status=401) == 1
    log = httpx.get(fresh.url + "/_fake/requests").json()
    assert log["writes"] == 2 and log["by_route"][f"GET {API}/boards/{{board_id}}/tasks"] == 2

    assert httpx.post(fresh.url + "/_fake/faults", json={"rate_limit_burst": 1}).status_code == 200
    err(fapi.get("/boards"), 429, "rate_limited")
    assert httpx.post(fresh.url + "/_fake/faults", json={"bogus": 1}).status_code == 400


def test_state_snapshot_and_reset(fresh: AgentKanbanFake, fapi: httpx.Client) -> None:
    board_id, _ = new_board(fapi)
    task_id = new_task(fapi, board_id)
    ok(fapi.post(f"/boards/{board_id}/tasks/{task_id}/comments", json={"body": "c"}), 201)
    state = httpx.get(fresh.url + "/_fake/state").json()
    assert state["boards"][0]["id"] == board_id
    assert state["boards"][0]["tasks"][0]["comments"][0]["body"] == "c"
    assert [k["token"] for k in state["keys"]] == [TOKEN]
    assert httpx.post(fresh.url + "/_fake/reset").json() == {"ok": True}
    assert ok(fapi.get("/boards")) == []
    assert fresh.requests.count() == 1


def test_seeded_reset_restores_the_demo_board() -> None:
    f = AgentKanbanFake(token=TOKEN, seed=11)
    with f, client_for(f) as c:
        seeded = ok(c.get("/boards"))
        c.post("/boards", json={"name": "extra"})
        httpx.post(f.url + "/_fake/reset")
        assert ok(c.get("/boards")) == seeded


def test_serve_forever_standalone() -> None:
    port = fakekit.free_port()
    code = (
        "from connectors.agentkanban.fake import AgentKanbanFake;"
        f"AgentKanbanFake(token='ak_cli', seed=1).serve_forever({port})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}{API}/boards"
        deadline = time.monotonic() + 10
        while True:
            try:
                resp = httpx.get(url, headers={"Authorization": "Bearer ak_cli"})
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert [b["name"] for b in ok(resp)] == ["Sprint Board"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
