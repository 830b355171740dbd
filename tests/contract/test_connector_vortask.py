"""Contract tests of the Vortask connector against the Vortask fake, over real loopback HTTP
(REST under /api, comments through the fake's MCP server at /mcp with the official SDK client)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, date, datetime
from typing import Any

import httpx
import pytest

import bridge.mapping
from bridge.model import Priority, Status, Values
from connectors.base import (
    AuthFailed,
    BadSignature,
    BulkRefused,
    Connector,
    ConnectorSettings,
    NotFound,
    PeopleMap,
    Permanent,
    RateLimited,
    RemoteTask,
    Retryable,
    WebhookEvent,
)
from connectors.vortask import fake as fake_mcp
from connectors.vortask.connector import VortaskConnector, default_mcp_url
from connectors.vortask.fake import VortaskFake
from tests.conftest import WebhookReceiver
from tests.contract.recording import Recorder

ALICE = "vt_alice_0000000000"
BOB = "vt_bob_member"
CAROL = "vt_carol_viewer"
SECRET = "whsec_vortask_test"
TASKS = "/api/projects/{project_id}/tasks"
TASK = "/api/projects/{project_id}/tasks/{task_id}"


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[VortaskFake]:
    fake = VortaskFake(token=ALICE)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(server: VortaskFake) -> VortaskFake:
    """The module's fake, reset to Alice (Admin of project 1) + Bob (Member) + Carol (Viewer)."""
    assert httpx.post(server.url + "/_fake/reset").status_code == 200
    server.webhooks.backoff = 0.05
    server.add_user("bob@example.com", "Bob", role="Member", token=BOB)
    server.add_user("carol@example.com", "Carol", role="Viewer", token=CAROL)
    return server


def user_id(fake: VortaskFake, email: str) -> str:
    return next(u.id for u in fake.users.values() if u.email == email)


def settings(fake: VortaskFake, token: str = ALICE, **overrides: Any) -> ConnectorSettings:
    people = PeopleMap(
        "vortask1",
        {
            "alice": user_id(fake, "alice@example.com"),
            "bob": user_id(fake, "bob@example.com"),
            "stranger": "00000000-0000-4000-8000-000000000000",
        },
    )
    values: dict[str, Any] = {
        "name": "vortask1",
        "platform": "vortask",
        "base_url": fake.url + "/api",
        "mapping": bridge.mapping.load("vortask"),
        "people": people,
        "token": token,
        "webhook_secret": SECRET,
        "backoff": 0.01,
        "timeout": 5.0,
    }
    values.update(overrides)
    return ConnectorSettings(**values)


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    yield rec
    await rec.aclose()


@pytest.fixture
async def make(fake: VortaskFake) -> AsyncIterator[Callable[..., VortaskConnector]]:
    made: list[VortaskConnector] = []

    def build(token: str = ALICE, **overrides: Any) -> VortaskConnector:
        connector = VortaskConnector(settings(fake, token, **overrides))
        made.append(connector)
        return connector

    yield build
    for connector in made:
        await connector.aclose()


@pytest.fixture
def conn(make: Callable[..., VortaskConnector], recorder: Recorder) -> VortaskConnector:
    return make(transport=recorder)


def rest(fake: VortaskFake, token: str = ALICE) -> httpx.Client:
    return httpx.Client(base_url=fake.url + "/api", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def seed_task(fake: VortaskFake, **fields: Any) -> dict[str, Any]:
    with rest(fake) as c:
        resp = c.post("/projects/1/tasks", json={"title": "Seeded", "priority": "Medium", **fields})
        assert resp.status_code == 201, resp.text
        return resp.json()


async def eventually(predicate: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- reading -------------------------------------------------------------------------------------


async def test_list_tasks_is_a_full_listing_in_canonical_values(
    fake: VortaskFake, conn: VortaskConnector
) -> None:
    alice, carol = user_id(fake, "alice@example.com"), user_id(fake, "carol@example.com")
    first = seed_task(
        fake,
        title="Implement login",
        description="Use OAuth",
        priority="High",
        dueDate="2026-03-20",
        tags=["backend", "auth"],
        assigneeIds=[alice, carol],
    )
    seed_task(fake, title="Second")
    with rest(fake) as c:
        c.put(f"/projects/1/tasks/{first['id']}", json={"status": "Blocked"})

    listing = await conn.list_tasks("1", None)
    assert [t.remote_id for t in listing.tasks] == [str(first["id"]), str(first["id"] + 1)]
    assert listing.all_ids == frozenset(t.remote_id for t in listing.tasks)
    assert listing.watermark == {} and listing.deleted_ids == frozenset()
    task = listing.tasks[0]
    assert task.scope == "1" and task.updated_at is not None and task.created_at is not None
    assert task.values == {
        "title": "Implement login",
        "description": "Use OAuth",
        "status": Status.BLOCKED,
        "priority": Priority.HIGH,
        "assignees": frozenset({"alice", f"vortask1:{carol}"}),
        "tags": frozenset({"backend", "auth"}),
        "due_date": date(2026, 3, 20),
    }
    second = listing.tasks[1].values
    assert second["description"] == "" and second["due_date"] is None and second["assignees"] == frozenset()
    assert second["status"] is Status.TODO and second["priority"] is Priority.MEDIUM

    # An idle poll reports the same content (the engine compares hashes).
    again = await conn.list_tasks("1", listing.watermark)
    assert [t.content_hash for t in again.tasks] == [t.content_hash for t in listing.tasks]


async def test_get_task_and_not_found(fake: VortaskFake, conn: VortaskConnector) -> None:
    task = seed_task(fake, dueDate="2026-04-01")
    got = await conn.get_task("1", str(task["id"]))
    assert got.remote_id == str(task["id"]) and got.values["due_date"] == date(2026, 4, 1)
    with pytest.raises(NotFound) as err:
        await conn.get_task("1", "999")
    assert err.value.status == 404 and "Task 999 not found" in str(err.value)
    with pytest.raises(NotFound):
        await conn.get_task("999", str(task["id"]))
    with pytest.raises(Permanent, match="project id"):
        await conn.get_task("default", "1")


async def test_field_times_date_each_field_by_its_last_change(
    fake: VortaskFake, conn: VortaskConnector
) -> None:
    """From the task's history (GET .../history, newest first): the newest change of each field
    it names; a field never changed since the task was made is left out."""
    task = seed_task(fake)
    task_id = str(task["id"])
    await conn.update_task("1", task_id, {"title": "first"})
    await asyncio.sleep(0.01)
    await conn.update_task("1", task_id, {"due_date": date(2031, 3, 4)})
    await asyncio.sleep(0.01)
    await conn.update_task("1", task_id, {"title": "second"})
    times = await conn.field_times("1", task_id)
    assert set(times) == {"title", "due_date"}
    assert times["due_date"] < times["title"]
    got = await conn.get_task("1", task_id)
    assert times["title"] == got.updated_at  # the last change of all
    with pytest.raises(NotFound):
        await conn.field_times("1", "999")


async def test_due_date_reads_the_date_part_without_a_timezone_shift(
    fake: VortaskFake, conn: VortaskConnector
) -> None:
    # Stored as "2026-03-20T23:30:00Z"; a local-time conversion would move it to another day.
    late = seed_task(fake, dueDate="2026-03-20T23:30:00Z")
    assert (await conn.get_task("1", str(late["id"]))).values["due_date"] == date(2026, 3, 20)
    created = await conn.create_task("1", {"title": "Dated", "due_date": date(2026, 12, 31)})
    assert created.values["due_date"] == date(2026, 12, 31)
    with rest(fake) as c:
        assert c.get(f"/projects/1/tasks/{created.remote_id}").json()["dueDate"] == "2026-12-31T00:00:00Z"


async def test_unmapped_status_is_a_permanent_error_not_a_crash(conn: VortaskConnector) -> None:
    with pytest.raises(Permanent, match="has no mapping"):
        conn._values({"id": 1, "title": "x", "status": "Archived", "priority": "Low"})


# -- writing -------------------------------------------------------------------------------------


async def test_create_task_then_puts_a_status_other_than_new(
    fake: VortaskFake, conn: VortaskConnector, recorder: Recorder
) -> None:
    values: Values = {
        "title": "Add dark mode",
        "description": "Support system theme\n\n<!-- tb:1 -->",
        "status": Status.IN_PROGRESS,
        "priority": Priority.URGENT,
        "assignees": frozenset({"alice", "bob", "nobody-known"}),
        "tags": frozenset({"ui", "frontend"}),
        "due_date": date(2026, 4, 1),
    }
    created = await conn.create_task("1", values)
    assert created.values == conn.roundtrip(values)
    assert created.values["priority"] is Priority.HIGH and created.values["assignees"] == {"alice", "bob"}
    posted, put = recorder.bodies("POST"), recorder.bodies("PUT")
    assert posted == [
        {
            "title": "Add dark mode",
            "description": "Support system theme\n\n<!-- tb:1 -->",
            "priority": "High",
            "assigneeIds": sorted([user_id(fake, "alice@example.com"), user_id(fake, "bob@example.com")]),
            "tags": ["frontend", "ui"],
            "dueDate": "2026-04-01",
        }
    ]
    assert put == [{"status": "Active"}]

    # A task that starts as todo needs no second call; priority defaults to Medium (required).
    fake.requests.clear()
    plain = await conn.create_task("1", {"title": "Plain", "status": Status.TODO})
    assert plain.values["status"] is Status.TODO and plain.values["priority"] is Priority.MEDIUM
    assert fake.requests.count("POST", TASKS) == 1 and fake.requests.count("PUT") == 0


async def test_create_tasks_is_one_bulk_request_then_each_status(
    fake: VortaskFake, conn: VortaskConnector
) -> None:
    """MCP bulk_create_tasks for all of them; a PUT only for a status other than New's."""
    items: list[Values] = [
        {"title": "One", "status": Status.TODO, "priority": Priority.LOW, "tags": frozenset({"a"})},
        {"title": "Two", "status": Status.DONE, "due_date": date(2026, 5, 6)},
        {"title": "  ", "description": "blank title"},
    ]
    fake.requests.clear()
    created = await conn.create_tasks("1", items)
    assert fake.requests.count("POST", TASKS) == 0 and fake.requests.count("PUT") == 1
    assert all(isinstance(t, RemoteTask) for t in created)
    one, two, untitled = created  # type: ignore[misc]
    assert {k: one.values[k] for k in items[0]} == conn.roundtrip(items[0])
    assert two.values["status"] is Status.DONE and two.values["due_date"] == date(2026, 5, 6)
    assert untitled.values["title"] == "Untitled" and untitled.values["status"] is Status.TODO
    with rest(fake) as c:
        listed = {t["title"]: t for t in c.get("/projects/1/tasks").json()}
    assert listed["Two"]["status"] == "Closed" and listed["One"]["tags"] == ["a"]
    assert conn.capabilities.bulk_create == 100


async def test_create_tasks_is_all_or_nothing_and_a_status_failure_is_its_items(
    fake: VortaskFake, conn: VortaskConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_body = conn._create_body

    def create_body(values: Values) -> tuple[dict[str, Any], str | None]:
        body, status = real_body(values)
        if body["title"] == "Nope":
            body["tags"] = [""]  # refused by Vortask
        return body, status

    monkeypatch.setattr(conn, "_create_body", create_body)
    with pytest.raises(BulkRefused, match="Task 2: Tags") as refused:
        await conn.create_tasks("1", [{"title": "Fine"}, {"title": "Nope"}])
    assert refused.value.status == 400
    with rest(fake) as c:
        assert not [t for t in c.get("/projects/1/tasks").json() if t["title"] in ("Fine", "Nope")]

    # Created, then one task's status refused: that item's entry is the error, the others' tasks.
    real_update = conn.client.update_task

    async def update_task(project: int, task_id: int, body: dict[str, Any]) -> dict[str, Any]:
        raise Permanent("no", status=403, connector="vortask")

    monkeypatch.setattr(conn.client, "update_task", update_task)
    out = await conn.create_tasks("1", [{"title": "A", "status": Status.DONE}, {"title": "B"}])
    assert isinstance(out[0], Permanent) and isinstance(out[1], RemoteTask)
    monkeypatch.setattr(conn.client, "update_task", real_update)
    with rest(fake) as c:
        assert sorted(t["title"] for t in c.get("/projects/1/tasks").json() if t["title"] in ("A", "B")) == [
            "A",
            "B",
        ]


async def test_create_tasks_pairs_items_by_what_was_created_and_a_refused_call_is_bulk_refused(
    fake: VortaskFake, conn: VortaskConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_call = conn.mcp.call

    async def reversed_answer(tool: str, arguments: Any) -> Any:
        answer = await real_call(tool, arguments)
        return {"created": list(reversed(answer["created"]))}

    monkeypatch.setattr(conn.mcp, "call", reversed_answer)
    out = await conn.create_tasks("1", [{"title": "First", "status": Status.DONE}, {"title": "Second"}])
    first, second = out
    assert isinstance(first, RemoteTask) and isinstance(second, RemoteTask)
    assert first.values["title"] == "First" and first.values["status"] is Status.DONE
    assert second.values["title"] == "Second" and second.values["status"] is Status.TODO

    # A server without the tool (a JSON-RPC error): refused as a whole, nothing created.
    async def unknown_tool(tool: str, arguments: Any) -> Any:
        return await real_call("no_bulk_here", arguments)

    monkeypatch.setattr(conn.mcp, "call", unknown_tool)
    with pytest.raises(BulkRefused):
        await conn.create_tasks("1", [{"title": "Never"}])
    with rest(fake) as c:
        assert not [t for t in c.get("/projects/1/tasks").json() if t["title"] == "Never"]


async def test_update_task_sends_only_the_changed_fields(
    fake: VortaskFake, conn: VortaskConnector, recorder: Recorder
) -> None:
    task = seed_task(
        fake, title="Keep me", description="Keep", tags=["a"], dueDate="2026-05-05", priority="Low"
    )
    fake.requests.clear()
    updated = await conn.update_task(
        "1", str(task["id"]), {"tags": frozenset({"b", "c"}), "status": Status.DONE}
    )
    assert recorder.bodies("PUT") == [{"tags": ["b", "c"], "status": "Closed"}]
    assert fake.requests.count("PUT", TASK) == 1 and fake.requests.count() == 1  # the PUT answers the task
    assert updated.values["tags"] == {"b", "c"} and updated.values["status"] is Status.DONE
    assert updated.values["title"] == "Keep me" and updated.values["priority"] is Priority.LOW
    assert updated.values["due_date"] == date(2026, 5, 5) and updated.values["description"] == "Keep"

    # Clearing: no due date, no assignees, no description.
    cleared = await conn.update_task(
        "1", str(task["id"]), {"due_date": None, "assignees": frozenset(), "description": ""}
    )
    assert recorder.bodies("PUT")[-1] == {"dueDate": None, "assigneeIds": [], "description": ""}
    assert cleared.values["due_date"] is None and cleared.values["description"] == ""

    # Nothing writable to change: just a read.
    fake.requests.clear()
    same = await conn.update_task("1", str(task["id"]), {"start_date": date(2026, 1, 1)})
    assert same.values == cleared.values
    assert fake.requests.count("PUT") == 0 and fake.requests.count("GET", TASK) == 1

    with pytest.raises(NotFound):
        await conn.update_task("1", "999", {"title": "x"})


ROUNDTRIP_CASES: list[Values] = [
    {
        "title": "Everything",
        "description": "Body",
        "status": Status.BLOCKED,
        "priority": Priority.LOW,
        "assignees": frozenset({"alice"}),
        "tags": frozenset({"x"}),
        "due_date": date(2026, 1, 31),
    },
    {
        "title": "Lossy",
        "status": Status.CANCELLED,
        "priority": Priority.URGENT,
        "assignees": frozenset({"alice", "bob", "someone-else", "impactly1:u-9"}),
    },
    {"title": "   ", "priority": Priority.NONE, "tags": frozenset({"ok", "  "}), "due_date": None},
    {
        "title": "Done",
        "status": Status.DONE,
        "priority": Priority.HIGH,
        "description": "",
        "assignees": frozenset(),
        "tags": frozenset(),
    },
    {"title": "Ignored fields", "start_date": date(2026, 2, 2), "parent": "01HX", "archived": True},
]


@pytest.mark.parametrize("values", ROUNDTRIP_CASES)
async def test_roundtrip_is_what_create_and_update_read_back(conn: VortaskConnector, values: Values) -> None:
    expected = conn.roundtrip(values)
    assert set(expected) <= conn.capabilities.fields
    created = await conn.create_task("1", values)
    assert {k: created.values[k] for k in expected} == expected

    blank = await conn.create_task("1", {"title": "Blank"})
    updated = await conn.update_task("1", blank.remote_id, values)
    assert {k: updated.values[k] for k in expected} == expected
    # And a poll reports the same.
    polled = await conn.get_task("1", blank.remote_id)
    assert {k: polled.values[k] for k in expected} == expected


def test_roundtrip_losses(make: Callable[..., VortaskConnector]) -> None:
    conn = make()
    assert conn.roundtrip({"status": "cancelled", "priority": "urgent"}) == {
        "status": Status.DONE,
        "priority": Priority.HIGH,
    }
    assert conn.roundtrip({"priority": "none"}) == {"priority": Priority.MEDIUM}
    assert conn.roundtrip({"assignees": ["alice", "zed", "vortask1:u-1"]}) == {
        "assignees": {"alice", "vortask1:u-1"}
    }
    assert conn.roundtrip({"title": "", "tags": ["a", " "], "archived": True}) == {
        "title": "Untitled",
        "tags": {"a"},
    }


async def test_delete_task_needs_admin(fake: VortaskFake, make: Callable[..., VortaskConnector]) -> None:
    task = seed_task(fake)
    bob = make(BOB)
    with pytest.raises(Permanent) as err:
        await bob.delete_task("1", str(task["id"]))
    assert err.value.status == 403 and "Admin" in str(err.value) and not isinstance(err.value, NotFound)
    alice = make()
    await alice.delete_task("1", str(task["id"]))
    with pytest.raises(NotFound):
        await alice.get_task("1", str(task["id"]))
    with pytest.raises(NotFound):
        await alice.delete_task("1", str(task["id"]))


async def test_archive_is_not_supported(conn: VortaskConnector) -> None:
    assert conn.capabilities.archive is False and conn.capabilities.delete is True
    with pytest.raises(Permanent, match="no archive"):
        await conn.archive_task("1", "1")


async def test_find_by_marker(fake: VortaskFake, conn: VortaskConnector) -> None:
    seed_task(fake, title="Other", description="nothing here")
    marked = await conn.create_task("1", {"title": "Mirror", "description": "text\n\n[taskbridge:01ABC]"})
    found = await conn.find_by_marker("1", "[taskbridge:01ABC]")
    assert found is not None and found.remote_id == marked.remote_id
    assert await conn.find_by_marker("1", "[taskbridge:01XYZ]") is None


async def test_find_by_markers_lists_the_project_once(fake: VortaskFake, conn: VortaskConnector) -> None:
    made = {
        marker: await conn.create_task("1", {"title": marker, "description": f"text\n\n{marker}"})
        for marker in ("[taskbridge:01A]", "[taskbridge:01B]")
    }
    seed_task(fake, title="Other", description="nothing here")
    fake.requests.clear()
    found = await conn.find_by_markers("1", ["[taskbridge:01A]", "[taskbridge:01B]", "[taskbridge:01C]"])
    assert {m: t.remote_id for m, t in found.items()} == {m: t.remote_id for m, t in made.items()}
    assert fake.requests.count("GET", "/api/projects/{project_id}/tasks") == 1


async def test_check(conn: VortaskConnector) -> None:
    assert isinstance(conn, Connector)
    summary = await conn.check("1")
    assert "Default" in summary and "Alice" in summary and "Admin" in summary and "MCP" in summary


def test_mcp_url_defaults_to_the_origin_of_base_url(make: Callable[..., VortaskConnector]) -> None:
    assert default_mcp_url("https://vortask.example.com/api") == "https://vortask.example.com/mcp"
    assert default_mcp_url("http://127.0.0.1:8123/api/") == "http://127.0.0.1:8123/mcp"
    assert make(mcp_url="https://mcp.vortask.app").mcp.url == "https://mcp.vortask.app"


# -- comments over MCP ---------------------------------------------------------------------------


async def test_comments_add_list_by_us_and_one_session(
    fake: VortaskFake, make: Callable[..., VortaskConnector], monkeypatch: pytest.MonkeyPatch
) -> None:
    initializes: list[str] = []
    pin = fake_mcp._pin_protocol_version

    async def counting_pin(receive: Any) -> Any:
        replay = await pin(receive)
        message = await replay()
        if b'"initialize"' in message.get("body", b""):
            initializes.append("initialize")
        sent = False

        async def again() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return message
            return await replay()

        return again

    monkeypatch.setattr(fake_mcp, "_pin_protocol_version", counting_pin)
    task = seed_task(fake)
    tid = str(task["id"])
    alice, bob = make(), make(BOB, rate_limit=50.0)  # the token bucket covers tool calls too

    ours = await alice.add_comment("1", tid, "Looks good", "Bob via Impactly")
    assert ours.body == "Bob via Impactly: Looks good" and ours.author == "Alice" and ours.by_us
    theirs = await bob.add_comment("1", tid, "<p>Thanks</p>", "")
    assert theirs.body == "<p>Thanks</p>" and theirs.author == "Bob"
    await alice.add_comment("1", tid, "third", "Carol via AgentKanban")

    comments = await alice.list_comments("1", tid)
    assert [c.body for c in comments] == [
        "Bob via Impactly: Looks good",
        "<p>Thanks</p>",
        "Carol via AgentKanban: third",
    ]  # oldest first
    assert [c.by_us for c in comments] == [True, False, True]
    assert [c.author for c in comments] == ["Alice", "Bob", "Alice"]
    assert comments[0].remote_id == ours.remote_id and comments[0].created_at is not None
    assert [c.by_us for c in await bob.list_comments("1", tid)] == [False, True, False]

    # Alice's connector made 3 tool calls on ONE session: one initialize, profile read once.
    await alice.list_comments("1", tid)
    assert alice.mcp.handshakes == 1 and bob.mcp.handshakes == 1
    assert initializes == ["initialize", "initialize"]  # one per connector
    assert fake.requests.count("GET", "/api/profile") == 2  # once per connector
    # Per session: initialize + initialized + one tools/list (the SDK reads tool schemas once) + calls.
    await eventually(lambda: fake.requests.count("POST", "/mcp") == (3 + 4) + (3 + 2))
    assert fake.requests.count("DELETE", "/mcp") == 0
    await alice.aclose()
    await eventually(lambda: fake.requests.count("DELETE", "/mcp") == 1)  # the session is ended


async def test_comment_errors_are_mapped(fake: VortaskFake, make: Callable[..., VortaskConnector]) -> None:
    task = seed_task(fake)
    alice = make()
    with pytest.raises(NotFound, match="Task 999 not found"):
        await alice.list_comments("1", "999")
    with pytest.raises(Permanent, match="Body is required") as err:
        await alice.add_comment("1", str(task["id"]), "", "")
    assert err.value.status == 400
    carol = make(CAROL)
    with pytest.raises(Permanent, match="Member role") as err:
        await carol.add_comment("1", str(task["id"]), "hi", "Someone")
    assert err.value.status == 403
    with pytest.raises(Permanent, match="Unknown tool"):
        await alice.mcp.call("no_such_tool", {})
    fake.add_token(fake.alice.id, "vt_alice_readonly", scopes=["tasks:read"])
    reader = make("vt_alice_readonly")
    with pytest.raises(Permanent, match="tasks:write"):
        await reader.add_comment("1", str(task["id"]), "x", "")

    # A refused token: at the MCP endpoint itself (HTTP 401), and through the REST profile read.
    stranger = make("vt_not_a_token")
    with pytest.raises(AuthFailed) as auth:
        await stranger.mcp.call("list_comments", {"taskId": task["id"]})
    assert auth.value.status == 401 and "vt_not_a_token" not in str(auth.value)
    with pytest.raises(AuthFailed):
        await stranger.list_comments("1", str(task["id"]))

    # Nothing listens: Retryable.
    down = make(mcp_url="http://127.0.0.1:9/mcp", max_retries=1)
    with pytest.raises(Retryable, match="MCP initialize"):
        await down.mcp.call("list_comments", {"taskId": 1})


async def test_mcp_session_is_reopened_once_when_the_server_ends_it(
    fake: VortaskFake, make: Callable[..., VortaskConnector]
) -> None:
    task = seed_task(fake)
    alice = make()
    await alice.add_comment("1", str(task["id"]), "before", "")
    old = alice.mcp.session_id
    assert old
    # The server forgets the session (as after an idle expiry or a restart).
    async with httpx.AsyncClient() as http:
        ended = await http.delete(
            fake.url + "/mcp", headers={"Authorization": f"Bearer {ALICE}", "mcp-session-id": old}
        )
    assert ended.status_code == 200
    comments = await alice.list_comments("1", str(task["id"]))
    assert [c.body for c in comments] == ["before"]
    assert alice.mcp.handshakes == 2 and alice.mcp.session_id not in (None, old)
    await alice.add_comment("1", str(task["id"]), "after", "")  # a write on the new session works too
    assert alice.mcp.handshakes == 2


async def test_mcp_rate_limit_server_errors_and_timeouts(
    fake: VortaskFake, make: Callable[..., VortaskConnector]
) -> None:
    task = seed_task(fake)
    tid = str(task["id"])
    alice = make(timeout=0.5, max_retries=2)
    await alice.list_comments("1", tid)  # session open, profile cached

    fake.faults.rate_limit_burst = 1
    fake.faults.retry_after = 1
    started = time.monotonic()
    assert await alice.list_comments("1", tid) == []
    assert time.monotonic() - started >= 1.0
    await eventually(lambda: fake.requests.count("POST", "/mcp", status=429) == 1)

    fake.faults.error_rate = 1.0
    fake.requests.clear()
    with pytest.raises(Retryable, match="HTTP 500"):
        await alice.list_comments("1", tid)  # a read is retried...
    await eventually(lambda: fake.requests.count("POST", "/mcp", status=500) == 3)
    fake.requests.clear()
    with pytest.raises(Retryable):
        await alice.add_comment("1", tid, "once", "")  # ...a write is not (it may have happened)
    await eventually(lambda: fake.requests.count("POST", "/mcp", status=500) == 1)
    fake.faults.error_rate = 0.0

    fake.faults.timeout_rate = 1.0
    fake.faults.hang_seconds = 1.0
    with pytest.raises(Retryable, match="timed out"):
        await alice.add_comment("1", tid, "slow", "")
    fake.faults.timeout_rate = 0.0
    assert await alice.list_comments("1", tid) == []  # the session survived
    assert alice.mcp.handshakes == 1


async def test_mcp_with_json_responses() -> None:
    with VortaskFake(token=ALICE, mcp_json_response=True) as fake:
        fake.add_user("bob@example.com", "Bob")
        task = seed_task(fake)
        conn = VortaskConnector(settings(fake))
        try:
            added = await conn.add_comment("1", str(task["id"]), "plain JSON", "")
            assert [c.remote_id for c in await conn.list_comments("1", str(task["id"]))] == [added.remote_id]
        finally:
            await conn.aclose()


# -- webhooks ------------------------------------------------------------------------------------


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def test_register_webhook_is_idempotent(fake: VortaskFake, conn: VortaskConnector) -> None:
    url = "https://bridge.example.com/webhooks/vortask1"
    assert await conn.register_webhook("1", url, SECRET) is None
    assert await conn.register_webhook("1", url, SECRET) is None
    with rest(fake) as c:
        hooks = c.get("/projects/1/webhooks").json()
        assert [(h["callbackUrl"], h["isActive"]) for h in hooks] == [(url, True)]
        # Switched off by someone: registering again turns it back on, still one registration.
        c.put(f"/projects/1/webhooks/{hooks[0]['id']}", json={"isActive": False})
        await conn.register_webhook("1", url, SECRET)
        assert [(h["callbackUrl"], h["isActive"]) for h in c.get("/projects/1/webhooks").json()] == [
            (url, True)
        ]
    assert [w["secret"] for w in fake.snapshot()["projects"][0]["webhooks"]] == [SECRET]
    # A rotated secret is put on the kept registration.
    await conn.register_webhook("1", url, "whsec_rotated")
    assert [w["secret"] for w in fake.snapshot()["projects"][0]["webhooks"]] == ["whsec_rotated"]


async def test_register_webhook_needs_a_secret_and_admin(
    fake: VortaskFake, make: Callable[..., VortaskConnector]
) -> None:
    no_secret = make(webhook_secret=None)
    with pytest.raises(Permanent, match="webhook_secret"):
        await no_secret.register_webhook("1", "https://bridge.example.com/hook", None)
    with pytest.raises(Permanent) as err:
        await make(BOB).register_webhook("1", "https://bridge.example.com/hook", SECRET)
    assert err.value.status == 403 and "Admin" in str(err.value)


async def test_genuine_deliveries_verify_and_parse(
    fake: VortaskFake, conn: VortaskConnector, webhook_receiver: WebhookReceiver
) -> None:
    await conn.register_webhook("1", webhook_receiver.url, SECRET)
    created = await conn.create_task("1", {"title": "Hooked", "status": Status.IN_PROGRESS})
    await conn.delete_task("1", created.remote_id)
    hooks = webhook_receiver.wait_for(3)
    for hook in hooks:
        conn.verify_webhook(hook.headers, hook.body, ["some-old-secret", SECRET])
    events = [e for hook in hooks for e in conn.parse_webhook(hook.headers, hook.body)]
    assert events == [
        WebhookEvent(scope="1", remote_id=created.remote_id, kind=kind, delivery_id=None, task=None)
        for kind in ("created", "updated", "deleted")
    ]

    hook = hooks[0]
    with pytest.raises(BadSignature, match="does not match"):
        conn.verify_webhook(hook.headers, hook.body.replace(b"Hooked", b"Hacked"), [SECRET])
    with pytest.raises(BadSignature, match="does not match"):
        conn.verify_webhook(hook.headers, hook.body, ["wrong"])
    with pytest.raises(BadSignature, match="missing X-Vortask-Signature"):
        conn.verify_webhook({"content-type": "application/json"}, hook.body, [SECRET])
    with pytest.raises(BadSignature, match="not a hex"):
        conn.verify_webhook({"X-Vortask-Signature": "sha256=" + sign(SECRET, hook.body)}, hook.body, [SECRET])
    with pytest.raises(BadSignature, match="not a hex"):
        conn.verify_webhook({"X-Vortask-Signature": "é" * 64}, hook.body, [SECRET])
    # Header names are matched case-insensitively; an upper-case hex digest also verifies.
    conn.verify_webhook({"X-VORTASK-SIGNATURE": sign(SECRET, hook.body).upper()}, hook.body, [SECRET])


def test_parse_webhook_shapes(make: Callable[..., VortaskConnector]) -> None:
    conn = make()
    body = json.dumps(
        {
            "event": "task.updated",
            "projectId": 7,
            "task": {
                "id": 42,
                "title": "t",
                "status": "Closed",
                "priority": "High",
                "assignees": [{"email": "a@example.com"}],
                "tags": [],
                "updatedAt": "2026-03-17T14:00:00Z",
            },
        }
    ).encode()
    assert conn.parse_webhook({}, body) == [WebhookEvent(scope="7", remote_id="42", kind="updated")]
    assert (
        conn.parse_webhook(
            {}, json.dumps({"event": "project.renamed", "projectId": 7, "task": {"id": 1}}).encode()
        )
        == []
    )
    for bad in (
        b"not json",
        b"[]",
        json.dumps({"event": "task.created", "projectId": 7}).encode(),
        json.dumps({"event": "task.created", "task": {"id": 1}}).encode(),
    ):
        with pytest.raises(BadSignature):
            conn.parse_webhook({}, bad)


# -- HTTP errors ---------------------------------------------------------------------------------


async def test_401_is_auth_failed(make: Callable[..., VortaskConnector]) -> None:
    with pytest.raises(AuthFailed) as err:
        await make("vt_wrong").list_tasks("1", None)
    assert err.value.status == 401 and "vt_wrong" not in str(err.value)


async def test_403_and_400_are_permanent_with_vortasks_message(
    fake: VortaskFake, make: Callable[..., VortaskConnector]
) -> None:
    with pytest.raises(Permanent) as err:
        await make(CAROL).create_task("1", {"title": "Viewer cannot"})
    assert err.value.status == 403 and "requires the Member role" in str(err.value)
    with pytest.raises(Permanent) as err:
        await make().create_task("1", {"title": "Bad assignee", "assignees": frozenset({"stranger"})})
    assert err.value.status == 400
    assert "Validation failed: User 00000000-0000-4000-8000-000000000000 is not a member" in str(err.value)


async def test_429_waits_for_retry_after(fake: VortaskFake, conn: VortaskConnector) -> None:
    fake.faults.rate_limit_burst = 1
    fake.faults.retry_after = 1
    started = time.monotonic()
    listing = await conn.list_tasks("1", None)
    assert listing.all_ids == frozenset()
    assert time.monotonic() - started >= 1.0
    assert (
        fake.requests.count("GET", TASKS, status=429) == 1
        and fake.requests.count("GET", TASKS, status=200) == 1
    )


async def test_429_longer_than_max_wait_raises_rate_limited(
    fake: VortaskFake, make: Callable[..., VortaskConnector]
) -> None:
    fake.faults.rate_limit_burst = 1
    fake.faults.retry_after = 60
    with pytest.raises(RateLimited) as err:
        await make(max_wait=5).list_tasks("1", None)
    assert err.value.retry_after == 60


async def test_5xx_is_retried_then_retryable(
    fake: VortaskFake, make: Callable[..., VortaskConnector]
) -> None:
    conn = make(max_retries=2)
    fake.call(lambda: fake.rng.seed(1))  # first draw 0.13 (< 0.5: a 500), then 0.85 (served)
    fake.faults.error_rate = 0.5
    assert (await conn.list_tasks("1", None)).tasks == []
    assert (
        fake.requests.count("GET", TASKS, status=500) == 1
        and fake.requests.count("GET", TASKS, status=200) == 1
    )

    fake.faults.error_rate = 1.0
    fake.requests.clear()
    with pytest.raises(Retryable) as err:
        await conn.list_tasks("1", None)
    assert err.value.status == 500 and "Internal Server Error" in str(err.value)
    assert fake.requests.count("GET", TASKS) == 3  # 1 + max_retries


async def test_timeout_is_retryable(fake: VortaskFake, make: Callable[..., VortaskConnector]) -> None:
    conn = make(timeout=0.3, max_retries=1)
    fake.faults.timeout_rate = 1.0
    fake.faults.hang_seconds = 1.0
    started = time.monotonic()
    with pytest.raises(Retryable, match="timed out"):
        await conn.get_task("1", "1")
    assert time.monotonic() - started < 3


def test_a_delivery_carries_its_signed_stamp(conn: VortaskConnector) -> None:
    """The task's updatedAt (for a creation, when it was made): the engine knows its own creates
    by it. A stamp that is not a time is left out (the task is read), never a refusal."""

    def parsed(updated: Any) -> WebhookEvent:
        body = json.dumps({"event": "task.created", "projectId": 1, "task": {"id": 7, "updatedAt": updated}})
        [event] = conn.parse_webhook({}, body.encode())
        return event

    assert parsed("2026-12-06T18:00:00.250Z").stamp == datetime(2026, 12, 6, 18, 0, 0, 250000, tzinfo=UTC)
    assert parsed("yesterday").stamp is None
    assert parsed(None).stamp is None and parsed(5).stamp is None
