"""Contract tests of the Vortask fake: REST under /api and the MCP server at /mcp, over real HTTP."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from connectors.fakekit import free_port
from connectors.vortask.fake import VortaskFake
from tests.conftest import WebhookReceiver

ALICE = "vt_alice_0000000000"
BOB = "vt_bob_member"
CAROL = "vt_carol_viewer"
MCP_ACCEPT = {"Accept": "application/json, text/event-stream"}
# One TLS context for every client: building one per httpx.Client costs ~50 ms each.
SSL = ssl.create_default_context()
TASK_KEYS = {
    "id",
    "title",
    "description",
    "status",
    "priority",
    "dueDate",
    "tags",
    "assignees",
    "createdAt",
    "updatedAt",
}


@pytest.fixture(scope="module")
def server() -> Iterator[VortaskFake]:
    fake = VortaskFake(token=ALICE)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(server: VortaskFake) -> VortaskFake:
    """The module's fake, reset to Alice + project 1, with Bob (Member) and Carol (Viewer)."""
    assert plain(server, "POST", "/_fake/reset").status_code == 200
    server.webhooks.backoff = 0.25
    server.add_user("bob@example.com", "Bob", role="Member", token=BOB)
    server.add_user("carol@example.com", "Carol", role="Viewer", token=CAROL)
    return server


def client(fake: VortaskFake, token: str | None = ALICE) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=fake.url + "/api", headers=headers, timeout=10, verify=SSL)


def plain(fake: VortaskFake, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request without auth at the fake's origin: control routes, preview, /mcp."""
    with httpx.Client(base_url=fake.url, timeout=10, verify=SSL) as c:
        return c.request(method, path, **kwargs)


@pytest.fixture
def alice(fake: VortaskFake) -> Iterator[httpx.Client]:
    with client(fake) as c:
        yield c


def assert_error(resp: httpx.Response, status: int, fragment: str = "") -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"errors", "message"}
    assert isinstance(body["errors"], list) and body["errors"]
    assert all(isinstance(e, str) for e in body["errors"])
    assert fragment in " ".join(body["errors"])


def make_task(c: httpx.Client, project: int = 1, **fields: Any) -> dict[str, Any]:
    resp = c.post(f"/projects/{project}/tasks", json={"title": "Write tests", "priority": "Medium", **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()


def user_id(fake: VortaskFake, email: str) -> str:
    return next(u.id for u in fake.users.values() if u.email == email)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# -- auth, errors, routing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/profile", "/projects", "/projects/1/tasks", "/apitokens", "/projects/1/webhooks"]
)
def test_missing_or_wrong_token_is_401(fake: VortaskFake, path: str) -> None:
    for token in (None, "vt_nope"):
        with client(fake, token) as c:
            resp = c.get(path)
        assert_error(resp, 401)
        assert resp.json()["message"] == "Unauthorized"
        assert resp.headers["www-authenticate"] == "Bearer"


def test_unknown_route_and_bad_ids_are_404_in_vortask_shape(alice: httpx.Client) -> None:
    assert_error(alice.get("/nothing-here"), 404)
    assert_error(alice.get("/projects/abc"), 404)
    assert_error(alice.get("/projects/999"), 404)
    assert_error(alice.get("/projects/1/tasks/999"), 404)


def test_non_json_body_is_415_and_broken_json_is_400(alice: httpx.Client) -> None:
    resp = alice.post("/projects", content=b"name=x", headers={"Content-Type": "text/plain"})
    assert_error(resp, 415)
    resp = alice.post("/projects", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(resp, 400, "not valid JSON")
    assert_error(alice.post("/projects", json=["a list"]), 400, "JSON object")


# -- profile ---------------------------------------------------------------------------------------


def test_profile_get_put_delete(fake: VortaskFake, alice: httpx.Client) -> None:
    profile = alice.get("/profile").json()
    assert set(profile) == {"id", "email", "displayName", "avatarUrl", "createdAt"}
    assert profile["email"] == "alice@example.com" and profile["displayName"] == "Alice"
    assert profile["avatarUrl"] is None and profile["createdAt"].endswith("Z")
    assert len(profile["id"]) == 36

    resp = alice.put(
        "/profile", json={"displayName": "Alice Smith", "avatarUrl": "https://example.com/a.jpg"}
    )
    assert resp.status_code == 200
    assert (
        resp.json()["displayName"] == "Alice Smith"
        and resp.json()["avatarUrl"] == "https://example.com/a.jpg"
    )
    assert_error(alice.put("/profile", json={"displayName": ""}), 400, "DisplayName")
    assert_error(alice.put("/profile", json={"avatarUrl": "not a url"}), 400, "AvatarUrl")

    with client(fake, BOB) as bob:
        assert bob.delete("/profile").status_code == 204
        assert_error(bob.get("/profile"), 401)
    members = alice.get("/projects/1/members").json()
    assert "bob@example.com" not in [m["email"] for m in members]


# -- projects --------------------------------------------------------------------------------------


def test_projects_list_get_create_update_delete(fake: VortaskFake, alice: httpx.Client) -> None:
    projects = alice.get("/projects").json()
    assert projects == [alice.get("/projects/1").json()]
    assert set(projects[0]) == {"id", "name", "description", "taskCount", "myRole", "createdAt"}
    assert (
        projects[0]["name"] == "Default"
        and projects[0]["myRole"] == "Admin"
        and projects[0]["taskCount"] == 0
    )

    resp = alice.post("/projects", json={"name": "Launch", "description": "Q3 launch"})
    assert resp.status_code == 201
    created = resp.json()
    assert created["id"] == 2 and created["myRole"] == "Admin" and created["description"] == "Q3 launch"
    assert_error(alice.post("/projects", json={"description": "no name"}), 400, "Name is required.")

    # Bob is not a member of project 2: it is invisible to him.
    with client(fake, BOB) as bob:
        assert [p["id"] for p in bob.get("/projects").json()] == [1]
        assert_error(bob.get("/projects/2"), 404)
        assert bob.get("/projects/1").json()["myRole"] == "Member"
        updated = bob.put("/projects/1", json={"name": "Renamed"})  # Member+ may update
        assert updated.status_code == 200 and updated.json()["name"] == "Renamed"
        assert_error(bob.delete("/projects/1"), 403, "Admin")
    with client(fake, CAROL) as carol:
        assert_error(carol.put("/projects/1", json={"name": "x"}), 403)

    make_task(alice, project=2)
    assert alice.get("/projects/2").json()["taskCount"] == 1
    assert alice.delete("/projects/2").status_code == 204
    assert_error(alice.get("/projects/2"), 404)


# -- members and invitations -----------------------------------------------------------------------


def test_members_list_role_change_and_removal(fake: VortaskFake, alice: httpx.Client) -> None:
    members = alice.get("/projects/1/members").json()
    assert [m["email"] for m in members] == ["alice@example.com", "bob@example.com", "carol@example.com"]
    assert set(members[0]) == {"id", "userId", "email", "displayName", "role", "joinedAt"}
    bob = members[1]
    assert bob["role"] == "Member"

    resp = alice.put(f"/projects/1/members/{bob['id']}", json={"role": "Viewer"})
    assert resp.status_code == 200 and resp.json()["role"] == "Viewer"
    assert_error(alice.put(f"/projects/1/members/{bob['id']}", json={"role": "Owner"}), 400, "Role")
    assert_error(alice.put(f"/projects/1/members/{members[0]['id']}", json={"role": "Member"}), 400, "Admin")
    assert_error(alice.delete(f"/projects/1/members/{members[0]['id']}"), 400, "Admin")
    assert_error(alice.delete("/projects/1/members/999"), 404)
    with client(fake, CAROL) as carol:
        assert_error(carol.put(f"/projects/1/members/{bob['id']}", json={"role": "Admin"}), 403)

    task = make_task(alice, assigneeIds=[bob["userId"]])
    assert alice.delete(f"/projects/1/members/{bob['id']}").status_code == 204
    assert "bob@example.com" not in [m["email"] for m in alice.get("/projects/1/members").json()]
    assert alice.get(f"/projects/1/tasks/{task['id']}").json()["assignees"] == []


def test_invite_preview_accept_and_cancel(fake: VortaskFake, alice: httpx.Client) -> None:
    resp = alice.post("/projects/1/members", json={"email": "dave@example.com", "role": "Viewer"})
    assert resp.status_code == 201
    invitation = resp.json()
    assert invitation["email"] == "dave@example.com" and invitation["role"] == "Viewer"
    assert_error(alice.post("/projects/1/members", json={"email": "dave@example.com"}), 400, "pending")
    assert_error(
        alice.post("/projects/1/members", json={"email": "bob@example.com"}), 400, "already a member"
    )
    assert_error(alice.post("/projects/1/members", json={"email": "nope", "role": "Boss"}), 400)
    with client(fake, BOB) as bob:
        assert_error(bob.post("/projects/1/members", json={"email": "x@example.com"}), 403)

    # The token travels by email; the fake exposes it in its state.
    state = plain(fake, "GET", "/_fake/state").json()
    token = next(i["token"] for i in state["invitations"] if i["id"] == invitation["id"])
    assert token == fake.invitation_token(invitation["id"])

    preview = plain(fake, "GET", "/api/invitations/preview", params={"token": token})  # no auth
    assert preview.status_code == 200
    assert preview.json()["projectName"] == "Default" and preview.json()["email"] == "dave@example.com"
    assert preview.json()["role"] == "Viewer" and preview.json()["expiresAt"].endswith("Z")
    assert_error(plain(fake, "GET", "/api/invitations/preview", params={"token": "inv_bogus"}), 404)

    with client(fake, BOB) as bob:  # wrong email
        assert_error(bob.post("/invitations/accept", params={"token": token}), 403, "different email")
    fake.add_user("dave@example.com", "Dave", token="vt_dave", project_id=1)
    with client(fake, "vt_dave") as dave:  # already a member by now
        assert_error(dave.post("/invitations/accept", params={"token": token}), 400, "already a member")

    # A fresh invitee accepts; then the token is spent.
    inv2 = alice.post("/projects", json={"name": "Second"}).json()
    resp = alice.post(f"/projects/{inv2['id']}/members", json={"email": "dave@example.com", "role": "Member"})
    token2 = fake.invitation_token(resp.json()["id"])
    with client(fake, "vt_dave") as dave:
        accepted = dave.post("/invitations/accept", params={"token": token2})
        assert accepted.status_code == 200
        assert accepted.json() == {"projectId": inv2["id"], "projectName": "Second"}
        assert dave.get(f"/projects/{inv2['id']}").json()["myRole"] == "Member"
        assert_error(dave.post("/invitations/accept", params={"token": token2}), 404)

    # Cancelling.
    inv3 = alice.post("/projects/1/members", json={"email": "erin@example.com", "role": "Member"}).json()
    assert alice.delete(f"/projects/1/invitations/{inv3['id']}").status_code == 204
    assert_error(alice.delete(f"/projects/1/invitations/{inv3['id']}"), 404)
    assert_error(
        plain(fake, "GET", "/api/invitations/preview", params={"token": fake.invitation_token(inv3["id"])}),
        404,
    )


# -- tasks -----------------------------------------------------------------------------------------


def test_create_task_shape_defaults_and_dates(fake: VortaskFake, alice: httpx.Client) -> None:
    bob_id = user_id(fake, "bob@example.com")
    task = make_task(
        alice,
        title="Add dark mode",
        description="Support system theme",
        priority="High",
        dueDate="2026-04-01",
        tags=["frontend", "ui"],
        assigneeIds=[bob_id],
        status="Closed",
    )
    assert set(task) == TASK_KEYS
    assert task["status"] == "New"  # a status sent on create is ignored
    assert task["priority"] == "High" and task["tags"] == ["frontend", "ui"]
    assert task["dueDate"] == "2026-04-01T00:00:00Z"
    assert task["assignees"] == [{"userId": bob_id, "email": "bob@example.com", "displayName": "Bob"}]
    assert task["createdAt"] == task["updatedAt"] and task["createdAt"].endswith("Z")
    assert isinstance(task["id"], int)
    assert alice.get(f"/projects/1/tasks/{task['id']}").json() == task

    offset = make_task(alice, dueDate="2026-03-20T10:30:00+02:00")
    assert offset["dueDate"] == "2026-03-20T08:30:00Z"
    assert make_task(alice)["description"] is None


def test_create_task_validation(fake: VortaskFake, alice: httpx.Client) -> None:
    resp = alice.post("/projects/1/tasks", json={"description": "no title, no priority"})
    assert_error(resp, 400, "Title is required.")
    assert resp.json()["errors"] == ["Title is required.", "Priority is required."]
    assert resp.json()["message"] == "Validation failed"
    assert_error(alice.post("/projects/1/tasks", json={"title": "x", "priority": "Urgent"}), 400, "Priority")
    assert_error(
        alice.post("/projects/1/tasks", json={"title": "x", "priority": "Low", "dueDate": "soon"}),
        400,
        "DueDate",
    )
    assert_error(
        alice.post("/projects/1/tasks", json={"title": "x", "priority": "Low", "tags": "a,b"}), 400, "Tags"
    )
    stranger = "00000000-0000-4000-8000-000000000000"
    assert_error(
        alice.post("/projects/1/tasks", json={"title": "x", "priority": "Low", "assigneeIds": [stranger]}),
        400,
        "not a member",
    )
    assert_error(alice.post("/projects/9/tasks", json={"title": "x", "priority": "Low"}), 404)
    with client(fake, CAROL) as carol:
        assert_error(carol.post("/projects/1/tasks", json={"title": "x", "priority": "Low"}), 403, "Member")
    with client(fake, BOB) as bob:
        assert bob.post("/projects/1/tasks", json={"title": "x", "priority": "Low"}).status_code == 201


def test_update_task_partial_and_validation(fake: VortaskFake, alice: httpx.Client) -> None:
    task = make_task(alice, tags=["backend"], dueDate="2026-04-01")
    resp = alice.put(f"/projects/1/tasks/{task['id']}", json={"status": "Active"})
    assert resp.status_code == 200
    updated = resp.json()
    assert (
        updated["status"] == "Active" and updated["title"] == task["title"] and updated["tags"] == ["backend"]
    )
    assert updated["dueDate"] == "2026-04-01T00:00:00Z" and updated["updatedAt"] > task["updatedAt"]

    cleared = alice.put(
        f"/projects/1/tasks/{task['id']}", json={"dueDate": None, "tags": [], "title": "New"}
    ).json()
    assert cleared["dueDate"] is None and cleared["tags"] == [] and cleared["title"] == "New"
    assert_error(alice.put(f"/projects/1/tasks/{task['id']}", json={"status": "Done"}), 400, "Status")
    assert_error(alice.put(f"/projects/1/tasks/{task['id']}", json={"title": ""}), 400, "Title")
    assert_error(alice.put("/projects/1/tasks/999", json={"status": "Active"}), 404)
    with client(fake, CAROL) as carol:
        assert_error(carol.put(f"/projects/1/tasks/{task['id']}", json={"status": "Closed"}), 403)


def test_delete_task_needs_admin(fake: VortaskFake, alice: httpx.Client) -> None:
    task = make_task(alice)
    with client(fake, BOB) as bob:
        assert_error(bob.delete(f"/projects/1/tasks/{task['id']}"), 403, "Admin")
    assert alice.delete(f"/projects/1/tasks/{task['id']}").status_code == 204
    assert_error(alice.get(f"/projects/1/tasks/{task['id']}"), 404)
    assert_error(alice.delete(f"/projects/1/tasks/{task['id']}"), 404)


def test_task_in_another_project_is_404(alice: httpx.Client) -> None:
    other = alice.post("/projects", json={"name": "Other"}).json()
    task = make_task(alice, project=other["id"])
    assert_error(alice.get(f"/projects/1/tasks/{task['id']}"), 404)
    assert alice.get(f"/projects/{other['id']}/tasks/{task['id']}").status_code == 200


def test_list_tasks_filters_unpaginated(fake: VortaskFake, alice: httpx.Client) -> None:
    assert alice.get("/projects/1/tasks").json() == []
    bob_id = user_id(fake, "bob@example.com")
    a = make_task(alice, title="A", priority="High", tags=["backend", "auth"], dueDate="2026-03-10")
    b = make_task(
        alice, title="B", priority="Low", tags=["frontend"], dueDate="2026-04-10", assigneeIds=[bob_id]
    )
    c = make_task(alice, title="C", priority="High")
    alice.put(f"/projects/1/tasks/{a['id']}", json={"status": "Active"})
    for n in range(30):  # no pagination: everything comes back at once
        make_task(alice, title=f"bulk {n}", priority="Medium")

    def ids(**params: str) -> list[int]:
        resp = alice.get("/projects/1/tasks", params=params)
        assert resp.status_code == 200, resp.text
        return [t["id"] for t in resp.json()]

    assert len(ids()) == 33 and ids() == sorted(ids())
    assert ids(status="Active") == [a["id"]]
    assert ids(status="Active", priority="High") == [a["id"]]
    assert ids(priority="High") == [a["id"], c["id"]]
    assert ids(assigneeId=bob_id) == [b["id"]]
    assert ids(label="END") == [a["id"], b["id"]]  # partial, case-insensitive: backEND, frontEND
    assert ids(label="auth") == [a["id"]]
    assert ids(dueBefore="2026-04-01") == [a["id"]]
    assert ids(dueAfter="2026-03-10") == [b["id"]]  # strict
    assert ids(dueAfter="2026-03-01", dueBefore="2026-05-01") == [a["id"], b["id"]]
    assert ids(status="Blocked") == []
    assert_error(alice.get("/projects/1/tasks", params={"status": "Open"}), 400, "status")
    assert_error(alice.get("/projects/1/tasks", params={"dueBefore": "next week"}), 400, "dueBefore")


def test_task_history_newest_first(fake: VortaskFake, alice: httpx.Client) -> None:
    task = make_task(alice, title="Implement login", priority="Low")
    alice.put(f"/projects/1/tasks/{task['id']}", json={"status": "Active"})
    with client(fake, BOB) as bob:
        bob.put(f"/projects/1/tasks/{task['id']}", json={"priority": "High", "status": "Active"})
    history = alice.get(f"/projects/1/tasks/{task['id']}/history").json()
    assert [h["action"] for h in history] == ["PriorityChanged", "StatusChanged", "Created"]
    assert set(history[0]) == {"id", "actorId", "actorName", "action", "detail", "createdAt"}
    assert history[0]["actorName"] == "Bob" and history[0]["detail"] == "Low → High"
    assert history[1]["detail"] == "New → Active" and history[1]["actorId"] == fake.alice.id
    assert_error(alice.get("/projects/1/tasks/999/history"), 404)


# -- tokens and scopes -----------------------------------------------------------------------------


def test_api_tokens_list_create_use_revoke(fake: VortaskFake, alice: httpx.Client) -> None:
    tokens = alice.get("/apitokens").json()
    assert len(tokens) == 1
    assert set(tokens[0]) == {"id", "name", "tokenPrefix", "isActive", "createdAt", "expiresAt"}
    assert tokens[0]["tokenPrefix"] == ALICE[:11] and tokens[0]["isActive"] is True

    resp = alice.post("/apitokens", json={"name": "CI Deploy", "expiresAt": "2099-01-01"})
    assert resp.status_code == 201
    created = resp.json()
    assert set(created) == {"id", "name", "token", "createdAt"} and created["token"].startswith("vt_")
    listed = {t["id"]: t for t in alice.get("/apitokens").json()}
    assert listed[created["id"]]["expiresAt"] == "2099-01-01T00:00:00.000Z"
    assert "token" not in listed[created["id"]]

    with client(fake, created["token"]) as ci:
        assert ci.get("/profile").json()["email"] == "alice@example.com"
        assert alice.delete(f"/apitokens/{created['id']}").status_code == 204
        assert_error(ci.get("/profile"), 401)
    assert_error(alice.delete(f"/apitokens/{created['id']}"), 404)
    bob_token = next(t for t in fake.tokens.values() if t.value == BOB)
    assert_error(alice.delete(f"/apitokens/{bob_token.id}"), 404)  # someone else's
    assert_error(alice.post("/apitokens", json={}), 400, "Name")
    assert_error(alice.post("/apitokens", json={"name": "old", "expiresAt": "2020-01-01"}), 400, "future")


def test_expired_token_is_401(fake: VortaskFake) -> None:
    fake.add_token(fake.alice.id, "vt_expired", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with client(fake, "vt_expired") as c:
        assert_error(c.get("/profile"), 401)


def test_token_scopes_give_403(fake: VortaskFake, alice: httpx.Client) -> None:
    created = alice.post("/apitokens", json={"name": "reader", "scopes": ["tasks:read"]}).json()
    task = make_task(alice)
    with client(fake, created["token"]) as reader:
        assert reader.get("/projects/1/tasks").status_code == 200
        assert reader.get(f"/projects/1/tasks/{task['id']}/history").status_code == 200
        assert_error(
            reader.post("/projects/1/tasks", json={"title": "x", "priority": "Low"}), 403, "tasks:write"
        )
        assert_error(reader.delete(f"/projects/1/tasks/{task['id']}"), 403, "tasks:delete")
        assert_error(reader.get("/projects"), 403, "projects:read")
        assert_error(reader.get("/projects/1/members"), 403, "projects:read")
        assert_error(reader.post("/apitokens", json={"name": "escalate"}), 403)
        assert reader.get("/profile").status_code == 200
    assert_error(alice.post("/apitokens", json={"name": "bad", "scopes": ["admin"]}), 400, "Scopes")
    fake.add_user(
        "ops@example.com", "Ops", role="Admin", token="vt_ops", scopes=["projects:read", "projects:write"]
    )
    with client(fake, "vt_ops") as ops:
        assert ops.get("/projects/1/members").status_code == 200
        assert (
            ops.post("/projects/1/webhooks", json={"callbackUrl": "http://127.0.0.1:1/h"}).status_code == 201
        )
        assert_error(ops.get("/projects/1/tasks"), 403, "tasks:read")


# -- webhooks --------------------------------------------------------------------------------------


def test_webhook_crud_and_admin_only(fake: VortaskFake, alice: httpx.Client) -> None:
    assert alice.get("/projects/1/webhooks").json() == []
    resp = alice.post(
        "/projects/1/webhooks", json={"callbackUrl": "https://example.com/hook", "secret": "s3"}
    )
    assert resp.status_code == 201
    hook = resp.json()
    assert hook == {
        "id": hook["id"],
        "projectId": 1,
        "callbackUrl": "https://example.com/hook",
        "isActive": True,
        "createdAt": hook["createdAt"],
    }
    assert alice.get("/projects/1/webhooks").json() == [hook]
    resp = alice.put(
        f"/projects/1/webhooks/{hook['id']}", json={"isActive": False, "callbackUrl": "https://e.com/2"}
    )
    assert (
        resp.status_code == 200
        and resp.json()["isActive"] is False
        and resp.json()["callbackUrl"] == "https://e.com/2"
    )
    assert_error(alice.post("/projects/1/webhooks", json={"callbackUrl": "ftp://x"}), 400, "CallbackUrl")
    assert_error(alice.put(f"/projects/1/webhooks/{hook['id']}", json={"isActive": "no"}), 400, "IsActive")
    with client(fake, BOB) as bob:
        assert_error(bob.get("/projects/1/webhooks"), 403, "Admin")
        assert_error(bob.post("/projects/1/webhooks", json={"callbackUrl": "https://x.com"}), 403)
    assert alice.delete(f"/projects/1/webhooks/{hook['id']}").status_code == 204
    assert_error(alice.delete(f"/projects/1/webhooks/{hook['id']}"), 404)


def test_webhooks_signed_payloads_for_every_task_event(
    fake: VortaskFake, alice: httpx.Client, webhook_receiver: WebhookReceiver
) -> None:
    secret = "whsec_vortask"
    alice.post("/projects/1/webhooks", json={"callbackUrl": webhook_receiver.url + "/hook", "secret": secret})
    task = make_task(alice, title="Deploy to production", priority="High", tags=["backend"])
    with client(fake, BOB) as bob:  # someone else's change fires too
        bob.put(f"/projects/1/tasks/{task['id']}", json={"status": "Closed", "assigneeIds": [fake.alice.id]})
    alice.delete(f"/projects/1/tasks/{task['id']}")

    hooks = webhook_receiver.wait_for(3)
    assert [h.json()["event"] for h in hooks] == ["task.created", "task.updated", "task.deleted"]  # type: ignore[index]
    for hook in hooks:
        assert hook.path == "/hook"
        assert hook.headers["content-type"] == "application/json"
        assert hmac.compare_digest(hook.headers["x-vortask-signature"], sign(secret, hook.body))
        assert not hmac.compare_digest(hook.headers["x-vortask-signature"], sign(secret, hook.body + b" "))
        assert sign("wrong-secret", hook.body) != hook.headers["x-vortask-signature"]
    updated = hooks[1].json()
    assert updated == {
        "event": "task.updated",
        "projectId": 1,
        "task": {
            "id": task["id"],
            "title": "Deploy to production",
            "status": "Closed",
            "priority": "High",
            "assignees": [{"email": "alice@example.com"}],
            "tags": ["backend"],
            "updatedAt": updated["task"]["updatedAt"],
        },  # type: ignore[index]
    }
    assert updated["task"]["updatedAt"] > task["updatedAt"]  # type: ignore[index]


def test_webhook_without_secret_is_unsigned_and_inactive_does_not_fire(
    fake: VortaskFake, alice: httpx.Client, webhook_receiver: WebhookReceiver
) -> None:
    off = alice.post("/projects/1/webhooks", json={"callbackUrl": webhook_receiver.url + "/off"}).json()
    alice.put(f"/projects/1/webhooks/{off['id']}", json={"isActive": False})
    alice.post("/projects/1/webhooks", json={"callbackUrl": webhook_receiver.url + "/on"})
    make_task(alice)
    make_task(alice)
    hooks = webhook_receiver.wait_for(2)
    time.sleep(0.1)  # room for a wrongly fired inactive delivery to show up
    assert [h.path for h in webhook_receiver.received] == ["/on", "/on"]
    assert all("x-vortask-signature" not in h.headers for h in hooks)


def test_webhook_retried_when_receiver_fails(
    fake: VortaskFake, alice: httpx.Client, webhook_receiver: WebhookReceiver
) -> None:
    fake.webhooks.backoff = 0.05
    webhook_receiver.status = 500
    alice.post("/projects/1/webhooks", json={"callbackUrl": webhook_receiver.url, "secret": "k"})
    make_task(alice)
    first = webhook_receiver.wait_for(2)
    assert first[0].body == first[1].body  # the same delivery again
    webhook_receiver.status = 200
    hooks = webhook_receiver.wait_for(3)
    assert len({h.body for h in hooks}) == 1
    wait_until(lambda: plain(fake, "GET", "/_fake/webhooks").json()[0]["outcome"] == "delivered")
    assert plain(fake, "GET", "/_fake/webhooks").json()[0]["attempts"] == len(webhook_receiver.received) >= 3


def test_drop_webhook_rate_drops(
    fake: VortaskFake, alice: httpx.Client, webhook_receiver: WebhookReceiver
) -> None:
    alice.post("/projects/1/webhooks", json={"callbackUrl": webhook_receiver.url})
    plain(fake, "POST", "/_fake/faults", json={"drop_webhook_rate": 1})
    make_task(alice)
    time.sleep(0.2)
    assert webhook_receiver.received == []
    assert [d["outcome"] for d in plain(fake, "GET", "/_fake/webhooks").json()] == ["dropped"]


# -- faults, request log, state ----------------------------------------------------------------------


def test_rate_limit_429_with_retry_after(fake: VortaskFake, alice: httpx.Client) -> None:
    fake.faults.rate_limit_burst = 1
    fake.faults.retry_after = 7
    resp = alice.get("/projects")
    assert_error(resp, 429, "Rate limit")
    assert resp.json()["message"] == "Too Many Requests" and resp.headers["retry-after"] == "7"
    assert alice.get("/projects").status_code == 200


def test_error_rate_and_latency(fake: VortaskFake, alice: httpx.Client) -> None:
    fake.faults.error_rate = 1.0
    resp = alice.get("/projects")
    assert_error(resp, 500)
    assert resp.json()["message"] == "Internal Server Error"
    fake.faults.error_rate = 0.0
    fake.faults.latency = 0.05
    started = time.monotonic()
    assert alice.get("/projects").status_code == 200
    assert time.monotonic() - started >= 0.05


def test_request_log_counts(fake: VortaskFake, alice: httpx.Client) -> None:
    make_task(alice)
    make_task(alice)
    alice.get("/projects/1/tasks")
    assert fake.requests.count("POST", "/api/projects/{project_id}/tasks") == 2
    assert fake.requests.count("GET", "/api/projects/{project_id}/tasks") == 1
    assert fake.requests.writes() == 2
    log = plain(fake, "GET", "/_fake/requests").json()
    assert log["by_route"]["POST /api/projects/{project_id}/tasks"] == 2 and log["total"] == 3


def test_seed_is_deterministic_and_reset_restores() -> None:
    def content(fake: VortaskFake) -> list[tuple[Any, ...]]:
        tasks = fake.snapshot()["projects"][0]["tasks"]
        return [
            (
                t["title"],
                t["status"],
                t["priority"],
                t["dueDate"],
                t["tags"],
                [a["email"] for a in t["assignees"]],
            )
            for t in tasks
        ]

    first, second = VortaskFake(token=ALICE, seed=7), VortaskFake(token=ALICE, seed=7)
    assert content(first) == content(second) != content(VortaskFake(token=ALICE, seed=8))
    assert first.alice.id == second.alice.id
    tasks = first.snapshot()["projects"][0]["tasks"]
    assert 5 <= len(tasks) <= 8 and len(first.comments) >= 3
    with first:
        with client(first) as alice:
            make_task(alice)
            alice.post("/projects", json={"name": "Extra"})
            assert plain(first, "POST", "/_fake/reset").json() == {"ok": True}
            assert [t["title"] for t in alice.get("/projects/1/tasks").json()] == [t["title"] for t in tasks]
            assert [p["id"] for p in alice.get("/projects").json()] == [1]
            assert alice.get("/profile").json()["id"] == first.alice.id


# -- MCP: raw JSON-RPC over httpx --------------------------------------------------------------------


def rpc_messages(resp: httpx.Response) -> list[dict[str, Any]]:
    """JSON-RPC messages of a response: an SSE stream's `data:` lines, or a JSON body."""
    if resp.headers["content-type"].startswith("text/event-stream"):
        return [
            json.loads(line[5:])
            for line in resp.text.splitlines()
            if line.startswith("data:") and line[5:].strip()
        ]
    return [resp.json()]


class RawMcp:
    """Minimal hand-written MCP client: what a non-SDK integration would send."""

    def __init__(self, fake: VortaskFake, token: str = ALICE) -> None:
        self.http = httpx.Client(
            base_url=fake.url,
            timeout=10,
            verify=SSL,
            headers={"Authorization": f"Bearer {token}", **MCP_ACCEPT},
        )
        self.session: str | None = None
        self.next_id = 0

    def post(
        self, method: str, params: dict[str, Any] | None = None, *, notify: bool = False
    ) -> httpx.Response:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        if not notify:
            self.next_id += 1
            message["id"] = self.next_id
        headers = {"mcp-session-id": self.session} if self.session else {}
        return self.http.post("/mcp", json=message, headers=headers)

    def initialize(self) -> dict[str, Any]:
        resp = self.post(
            "initialize",
            {
                "protocolVersion": "2024-11-05",
                "capabilities": {},
                "clientInfo": {"name": "contract-test", "version": "1.0"},
            },
        )
        assert resp.status_code == 200, resp.text
        self.session = resp.headers["mcp-session-id"]
        assert self.post("notifications/initialized", notify=True).status_code == 202
        return rpc_messages(resp)[0]

    def call(self, tool: str, **arguments: Any) -> tuple[Any, bool]:
        resp = self.post("tools/call", {"name": tool, "arguments": arguments})
        assert resp.status_code == 200, resp.text
        result = rpc_messages(resp)[-1]["result"]
        return json.loads(result["content"][0]["text"]), bool(result.get("isError"))


def test_mcp_raw_handshake_tools_and_comments(fake: VortaskFake, alice: httpx.Client) -> None:
    task = make_task(alice)
    mcp = RawMcp(fake)
    init = mcp.initialize()
    assert init["result"]["protocolVersion"] == "2024-11-05"
    assert init["result"]["serverInfo"]["name"] == "vortask"
    assert mcp.session

    tools = rpc_messages(mcp.post("tools/list"))[0]["result"]["tools"]
    assert [t["name"] for t in tools] == [
        "get_context",
        "list_projects",
        "list_tasks",
        "get_task",
        "get_task_history",
        "create_task",
        "bulk_create_tasks",
        "update_task",
        "delete_task",
        "list_members",
        "create_project",
        "list_comments",
        "add_comment",
        "delete_comment",
    ]
    schemas = {t["name"]: t["inputSchema"] for t in tools}
    assert schemas["create_task"]["required"] == ["projectId", "title"]
    assert schemas["add_comment"]["required"] == ["taskId", "body"]

    first, error = mcp.call("add_comment", taskId=task["id"], body="<p>First</p>")
    assert not error
    assert set(first) == {"id", "taskId", "authorId", "authorName", "body", "createdAt"}
    assert first["body"] == "<p>First</p>" and first["authorName"] == "Alice" and isinstance(first["id"], int)
    mcp.call("add_comment", taskId=task["id"], body="second, plain")
    comments, _ = mcp.call("list_comments", taskId=task["id"])
    assert [c["body"] for c in comments] == ["<p>First</p>", "second, plain"]  # oldest first
    assert mcp.call("add_comment", taskId=task["id"], body="")[1] is True


def test_mcp_requires_session_id_and_token(fake: VortaskFake) -> None:
    mcp = RawMcp(fake)
    mcp.initialize()
    session = mcp.session
    mcp.session = None
    resp = mcp.post("tools/list")
    assert resp.status_code == 400 and "session" in resp.json()["error"]["message"].lower()
    mcp.session = "not-a-session"
    assert mcp.post("tools/list").status_code == 404

    for token in ("vt_wrong", None):
        headers = {**MCP_ACCEPT, **({"Authorization": f"Bearer {token}"} if token else {})}
        resp = plain(
            fake, "POST", "/mcp", headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        )
        assert_error(resp, 401)
        assert resp.headers["www-authenticate"] == "Bearer"

    # Another valid token cannot ride Alice's session.
    bob = RawMcp(fake, BOB)
    bob.session = session
    assert bob.post("tools/list").status_code == 404
    # A post-2024-era protocol header is refused (SDK clients then fall back to initialize).
    resp = plain(
        fake,
        "POST",
        "/mcp",
        headers={**MCP_ACCEPT, "Authorization": f"Bearer {ALICE}", "MCP-Protocol-Version": "2026-07-28"},
        json={"jsonrpc": "2.0", "id": 1, "method": "server/discover"},
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == -32600
    mcp.session = session
    resp = mcp.post("tools/call", {"name": "no_such_tool", "arguments": {}})
    assert rpc_messages(resp)[0]["error"]["code"] == -32602


def test_mcp_task_tools_fire_webhooks(
    fake: VortaskFake, alice: httpx.Client, webhook_receiver: WebhookReceiver
) -> None:
    alice.post("/projects/1/webhooks", json={"callbackUrl": webhook_receiver.url, "secret": "mcp"})
    mcp = RawMcp(fake)
    mcp.initialize()
    created, error = mcp.call("create_task", projectId=1, title="From an agent", dueDate="2026-05-01")
    assert not error and set(created) == TASK_KEYS
    assert (
        created["priority"] == "Medium"
        and created["status"] == "New"
        and created["dueDate"] == "2026-05-01T00:00:00Z"
    )
    updated, _ = mcp.call("update_task", taskId=created["id"], status="Blocked", tags=["agent"])
    assert updated["status"] == "Blocked" and updated["tags"] == ["agent"]
    assert mcp.call("get_task", taskId=created["id"])[0] == updated
    history, _ = mcp.call("get_task_history", taskId=created["id"])
    assert [h["action"] for h in history] == ["TagsChanged", "StatusChanged", "Created"]
    mcp.call("add_comment", taskId=created["id"], body="no webhook for comments")
    assert mcp.call("delete_task", taskId=created["id"])[0] == {"deleted": True, "taskId": created["id"]}
    hooks = webhook_receiver.wait_for(3)
    time.sleep(0.1)
    assert [h.json()["event"] for h in webhook_receiver.received] == [  # type: ignore[index]
        "task.created",
        "task.updated",
        "task.deleted",
    ]
    assert all(h.headers["x-vortask-signature"] == sign("mcp", h.body) for h in hooks)
    assert mcp.call("get_task", taskId=created["id"])[0]["message"] == "Not Found"


def test_mcp_other_tools(fake: VortaskFake, alice: httpx.Client) -> None:
    make_task(alice, title="Old", priority="Low")
    mcp = RawMcp(fake)
    mcp.initialize()
    context, _ = mcp.call("get_context")
    assert context["profile"]["email"] == "alice@example.com"
    assert context["projects"][0]["id"] == 1 and [
        t["title"] for t in context["projects"][0]["recentTasks"]
    ] == ["Old"]
    project, _ = mcp.call("create_project", name="Agent project")
    assert project["myRole"] == "Admin" and project["taskCount"] == 0
    assert [p["id"] for p in mcp.call("list_projects")[0]] == [1, project["id"]]
    bulk, error = mcp.call(
        "bulk_create_tasks",
        projectId=project["id"],
        tasks=[{"title": "one"}, {"title": "two", "priority": "High"}],
    )
    assert not error and [t["title"] for t in bulk["created"]] == ["one", "two"]
    bad, error = mcp.call(
        "bulk_create_tasks", projectId=project["id"], tasks=[{"title": "ok"}, {"title": ""}]
    )
    assert error and bad["status"] == 400 and "Task 2" in bad["errors"][0]
    assert len(mcp.call("list_tasks", projectId=project["id"])[0]) == 2  # nothing half-created
    assert [t["title"] for t in mcp.call("list_tasks", projectId=project["id"], priority="High")[0]] == [
        "two"
    ]
    assert mcp.call("bulk_create_tasks", projectId=1, tasks=[{"title": "x"}] * 101)[1] is True
    alice.post("/projects/1/members", json={"email": "zed@example.com", "role": "Viewer"})
    members, _ = mcp.call("list_members", projectId=1)
    assert len(members["members"]) == 3 and [i["email"] for i in members["invitations"]] == [
        "zed@example.com"
    ]
    missing, error = mcp.call("list_tasks", projectId=999)
    assert error and missing == {"errors": ["Project 999 not found."], "message": "Not Found", "status": 404}
    assert mcp.call("get_task", taskId="1")[1] is True  # ids are integers


def test_mcp_roles_and_comment_ownership(fake: VortaskFake, alice: httpx.Client) -> None:
    task = make_task(alice)
    bob, carol, admin = RawMcp(fake, BOB), RawMcp(fake, CAROL), RawMcp(fake)
    for m in (bob, carol, admin):
        m.initialize()
    denied, error = carol.call("add_comment", taskId=task["id"], body="viewer")
    assert error and denied["status"] == 403
    assert carol.call("list_comments", taskId=task["id"])[1] is False
    assert bob.call("delete_task", taskId=task["id"])[0]["status"] == 403
    admins_comment, _ = admin.call("add_comment", taskId=task["id"], body="admin")
    bobs_comment, _ = bob.call("add_comment", taskId=task["id"], body="bob")
    assert bob.call("delete_comment", commentId=admins_comment["id"])[0]["status"] == 403
    assert bob.call("delete_comment", commentId=bobs_comment["id"])[0] == {
        "deleted": True,
        "commentId": bobs_comment["id"],
    }
    bobs_again, _ = bob.call("add_comment", taskId=task["id"], body="bob again")
    assert admin.call("delete_comment", commentId=bobs_again["id"])[1] is False  # Admin may delete any
    assert [c["body"] for c in admin.call("list_comments", taskId=task["id"])[0]] == ["admin"]
    assert admin.call("delete_comment", commentId=999)[0]["status"] == 404

    fake.add_token(fake.alice.id, "vt_alice_readonly", scopes=["tasks:read"])
    reader = RawMcp(fake, "vt_alice_readonly")
    reader.initialize()
    assert reader.call("list_comments", taskId=task["id"])[1] is False
    assert reader.call("add_comment", taskId=task["id"], body="x")[0]["status"] == 403
    assert reader.call("list_projects")[0]["errors"] == ["This API token lacks the 'projects:read' scope."]


def test_mcp_json_response_mode() -> None:
    with VortaskFake(token=ALICE, mcp_json_response=True) as fake:
        mcp = RawMcp(fake)
        resp = mcp.post(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        )
        assert resp.headers["content-type"].startswith("application/json")
        assert resp.json()["result"]["protocolVersion"] == "2024-11-05"  # pinned whatever is asked


# -- MCP: the official SDK client --------------------------------------------------------------------


async def test_mcp_sdk_client_interoperates(fake: VortaskFake) -> None:
    with client(fake) as alice:
        task = make_task(alice, title="SDK task")
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {ALICE}"}) as http,
        Client(streamable_http_client(fake.url + "/mcp", http_client=http)) as mcp,
    ):
        assert mcp.session.initialize_result is not None
        assert mcp.session.initialize_result.protocol_version == "2024-11-05"
        tools = await mcp.list_tools()
        assert len(tools.tools) == 14
        added = await mcp.call_tool("add_comment", {"taskId": task["id"], "body": "via SDK"})
        assert added.is_error is False
        listed = await mcp.call_tool("list_comments", {"taskId": task["id"]})
        assert [c["body"] for c in json.loads(listed.content[0].text)] == ["via SDK"]  # type: ignore[union-attr]
        missing = await mcp.call_tool("get_task", {"taskId": 424242})
        assert missing.is_error is True
    assert fake.requests.count("DELETE", "/mcp") == 1  # the SDK ends its session


# -- standalone --------------------------------------------------------------------------------------


def test_serve_forever_standalone() -> None:
    port = free_port()
    code = (
        "from connectors.vortask.fake import VortaskFake;"
        f"VortaskFake(token={ALICE!r}, seed=3).serve_forever({port})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                resp = httpx.get(
                    f"http://127.0.0.1:{port}/api/projects/1/tasks",
                    verify=SSL,
                    headers={"Authorization": f"Bearer {ALICE}"},
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "standalone fake did not start"
                time.sleep(0.05)
        assert resp.status_code == 200 and len(resp.json()) >= 5
        init = httpx.post(
            f"http://127.0.0.1:{port}/mcp",
            verify=SSL,
            headers={"Authorization": f"Bearer {ALICE}", **MCP_ACCEPT},
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2024-11-05",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"},
                },
            },
        )
        assert init.status_code == 200 and init.headers["mcp-session-id"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
