"""Contract tests: the AgentKanban connector against its fake, over real loopback HTTP.

Most tests share one fake and make their own board (`board` fixture), so they do not depend on
each other; webhook tests get a fresh fake because the fake's hooks fire for every board.
A recording transport (a real HTTP transport that also keeps each request's method, path and
body) shows exactly what the connector sent.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from bridge import mapping
from bridge.model import Priority, Status, normalize_values, parse_timestamp
from connectors.agentkanban.connector import AgentKanbanConnector
from connectors.agentkanban.fake import AgentKanbanFake, sign
from connectors.base import (
    AuthFailed,
    BadSignature,
    Connector,
    ConnectorSettings,
    NotFound,
    PeopleMap,
    Permanent,
    RateLimited,
    Retryable,
)
from tests.conftest import WebhookReceiver
from tests.contract.recording import Recorder

TOKEN = "ak_connector_test_key"
API = "/api/ext/v1"
TASK_ROUTE = f"{API}/boards/{{board_id}}/tasks/{{task_id}}"
LANES_ROUTE = f"{API}/boards/{{board_id}}/lanes"


def make_settings(fake: AgentKanbanFake, **kw: Any) -> ConnectorSettings:
    override = kw.pop("override", None)
    options: dict[str, Any] = {"token": TOKEN, "backoff": 0.01, **kw}
    return ConnectorSettings(
        name="agentkanban1",
        platform="agentkanban",
        base_url=fake.url + API,
        mapping=mapping.load("agentkanban", override),
        people=PeopleMap("agentkanban1", {}),
        **options,
    )


@pytest.fixture(scope="module")
def fake() -> Iterator[AgentKanbanFake]:
    f = AgentKanbanFake(token=TOKEN, seed=11)
    f.start()
    yield f
    f.stop()


@pytest.fixture
def board(fake: AgentKanbanFake) -> str:
    fake.faults.reset()
    return fake.create_board("Contract board")


@pytest_asyncio.fixture
async def rec() -> AsyncIterator[Recorder]:
    yield Recorder()


@pytest_asyncio.fixture
async def conn(fake: AgentKanbanFake, rec: Recorder) -> AsyncIterator[AgentKanbanConnector]:
    c = AgentKanbanConnector(make_settings(fake, transport=rec))
    yield c
    await c.aclose()


async def lane_ids(conn: AgentKanbanConnector, board: str) -> dict[str, str]:
    return {lane["name"]: lane["id"] for lane in await conn.client.list_lanes(board)}


def detail_gets(rec: Recorder, board: str) -> int:
    prefix = f"{API}/boards/{board}/tasks/"
    return sum(
        1 for m, p, _ in rec.sent if m == "GET" and p.startswith(prefix) and p.count("/") == prefix.count("/")
    )


# -- capabilities -----------------------------------------------------------------------------------


def test_capabilities_are_honest(fake: AgentKanbanFake) -> None:
    caps = AgentKanbanConnector.capabilities
    assert caps.fields == {"title", "description", "status", "priority", "tags", "archived"}
    assert caps.writable == caps.fields
    assert "assignees" not in caps.fields and not caps.subtasks
    assert (
        caps.webhooks and caps.comments and caps.delete and caps.archive and caps.todos and caps.incremental
    )


# -- listing ----------------------------------------------------------------------------------------------


async def test_full_listing_then_only_changes(conn: AgentKanbanConnector, rec: Recorder, board: str) -> None:
    ids = [
        (
            await conn.create_task(
                board, {"title": f"Task {i}", "description": f"body {i}", "priority": "high"}
            )
        ).remote_id
        for i in range(5)
    ]
    rec.clear()
    first = await conn.list_tasks(board, None)
    assert {t.remote_id for t in first.tasks} == set(ids)
    assert first.all_ids == frozenset(ids)
    assert all(t.values["description"].startswith("body ") for t in first.tasks)
    assert (
        first.tasks[0].values["status"] == Status.TODO and first.tasks[0].values["priority"] == Priority.HIGH
    )
    # one lane read, one listing (archived included), descriptions from the cache the creates filled
    assert rec.calls("GET", "/lanes") and rec.calls("GET", "/tasks")[0][1].endswith("/tasks")
    assert detail_gets(rec, board) == 0

    # An idle poll reports nothing, reads no detail, and returns the same watermark.
    rec.clear()
    second = await conn.list_tasks(board, first.watermark)
    assert second.tasks == [] and second.all_ids == frozenset(ids)
    assert detail_gets(rec, board) == 0
    assert second.watermark == first.watermark

    # One change: only that task comes back, with one detail read.
    await conn.client.update_task(board, ids[2], {"title": "Renamed"})
    rec.clear()
    third = await conn.list_tasks(board, second.watermark)
    assert [t.remote_id for t in third.tasks] == [ids[2]]
    assert third.tasks[0].values["title"] == "Renamed" and third.tasks[0].values["description"] == "body 2"
    assert detail_gets(rec, board) == 1

    # Archived tasks are reported archived, not missing; deleted ones leave all_ids.
    await conn.client.update_task(board, ids[0], {"archived": True})
    await conn.client.delete_task(board, ids[1])
    fourth = await conn.list_tasks(board, third.watermark)
    assert [(t.remote_id, t.values["archived"]) for t in fourth.tasks] == [(ids[0], True)]
    assert fourth.all_ids == frozenset(ids) - {ids[1]}


async def test_full_listing_without_cache_reads_each_detail(fake: AgentKanbanFake, board: str) -> None:
    rec = Recorder()
    async with httpx.AsyncClient(
        base_url=fake.url + API, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as raw:
        for i in range(12):
            await raw.post(f"/boards/{board}/tasks", json={"title": f"T{i}", "description": f"d{i}"})
    conn = AgentKanbanConnector(make_settings(fake, transport=rec))
    try:
        listing = await conn.list_tasks(board, None)
        assert len(listing.tasks) == 12 and detail_gets(rec, board) == 12
        assert {t.values["description"] for t in listing.tasks} == {f"d{i}" for i in range(12)}
    finally:
        await conn.aclose()


async def test_watermark_is_newest_update_less_margin(conn: AgentKanbanConnector, board: str) -> None:
    empty = await conn.list_tasks(board, None)
    assert empty.tasks == [] and empty.all_ids == frozenset() and empty.watermark["since"] is None
    await conn.create_task(board, {"title": "a"})
    await conn.create_task(board, {"title": "b"})
    listing = await conn.list_tasks(board, empty.watermark)
    newest = max(t.updated_at for t in listing.tasks if t.updated_at)
    assert parse_timestamp(listing.watermark["since"]) == newest - timedelta(seconds=5)
    # the tasks inside the margin are remembered so they are not reported again
    assert set(listing.watermark["seen"]) == {t.remote_id for t in listing.tasks}


async def test_lane_rename_reports_its_tasks_again(conn: AgentKanbanConnector, board: str) -> None:
    lanes = await lane_ids(conn, board)
    task = await conn.create_task(board, {"title": "in review", "status": "in_progress"})
    await conn.client.move_task(board, task.remote_id, lanes["In Review"])
    first = await conn.list_tasks(board, None)
    assert first.tasks[0].values["status"] == Status.IN_PROGRESS
    idle = await conn.list_tasks(board, first.watermark)
    assert idle.tasks == []
    await conn.client.update_lane(board, lanes["In Review"], name="Done")  # no task's updatedAt changes
    again = await conn.list_tasks(board, idle.watermark)
    assert [(t.remote_id, t.values["status"]) for t in again.tasks] == [(task.remote_id, Status.DONE)]


async def test_changed_mapping_forces_a_full_listing(
    fake: AgentKanbanFake, conn: AgentKanbanConnector, board: str
) -> None:
    task = await conn.create_task(board, {"title": "x"})
    await conn.client.move_task(board, task.remote_id, (await lane_ids(conn, board))["In Review"])
    first = await conn.list_tasks(board, None)
    assert [t.values["status"] for t in first.tasks] == [Status.IN_PROGRESS]
    idle = await conn.list_tasks(board, first.watermark)
    assert idle.tasks == []
    other = AgentKanbanConnector(make_settings(fake, override={"status": {"read": {"In Review": "done"}}}))
    try:
        listing = await other.list_tasks(board, idle.watermark)
        assert [t.values["status"] for t in listing.tasks] == [Status.DONE]
    finally:
        await other.aclose()


# -- get / create / update / delete ---------------------------------------------------------------------


async def test_get_task_and_not_found(conn: AgentKanbanConnector, board: str) -> None:
    created = await conn.create_task(board, {"title": "Get me", "description": "desc", "tags": ["x"]})
    got = await conn.get_task(board, created.remote_id)
    assert got == created
    assert got.scope == board and got.created_at is not None and got.updated_at is not None
    with pytest.raises(NotFound, match="Task not found"):
        await conn.get_task(board, "01nosuchtask0000000000000")


STATUSES = list(Status)
PRIORITIES = list(Priority)


async def test_roundtrip_property_on_create_and_update(conn: AgentKanbanConnector, board: str) -> None:
    titles = ["Plain", "  padded title  ", "", "Ünïcode ✓"]
    descriptions = ["", "line one\n\n  line two  \n", "marker: tb-123"]
    tag_sets: list[list[str]] = [[], ["a", " b ", "b"], ["bug", "ui"], ["  ", "x"]]
    combos = list(itertools.product(STATUSES, PRIORITIES))
    caps = conn.capabilities.fields
    for i, (status, priority) in enumerate(combos):
        values = normalize_values(
            {
                "title": titles[i % len(titles)],
                "description": descriptions[i % len(descriptions)],
                "status": status,
                "priority": priority,
                "tags": tag_sets[i % len(tag_sets)],
                "archived": i % 3 == 0,
            }
        )
        created = await conn.create_task(board, values)
        expected = conn.roundtrip(values)
        assert {k: v for k, v in created.values.items() if k in caps} == expected, (status, priority)

        # Update to the "next" combination, with a partial change set each time.
        nxt_status, nxt_priority = combos[(i + 7) % len(combos)]
        changes = normalize_values(
            {"status": nxt_status, "priority": nxt_priority, "tags": tag_sets[(i + 1) % len(tag_sets)]}
            if i % 2
            else {"title": titles[(i + 1) % len(titles)], "archived": i % 3 != 0, "status": nxt_status}
        )
        updated = await conn.update_task(board, created.remote_id, changes)
        assert {k: updated.values[k] for k in changes} == conn.roundtrip(changes)
        untouched = {k: v for k, v in expected.items() if k not in changes}
        assert {k: updated.values[k] for k in untouched} == untouched


async def test_roundtrip_declares_platform_losses(conn: AgentKanbanConnector) -> None:
    rt = conn.roundtrip(
        {
            "title": "  t  ",
            "status": "blocked",
            "priority": "urgent",
            "tags": [" a", "a", ""],
            "assignees": ["p"],
        }
    )
    assert rt == {"title": "t", "status": Status.TODO, "priority": Priority.URGENT, "tags": frozenset({"a"})}
    assert conn.roundtrip({"status": "cancelled", "title": "  "}) == {
        "status": Status.DONE,
        "title": "Untitled",
    }


async def test_create_sends_lane_and_fields(conn: AgentKanbanConnector, rec: Recorder, board: str) -> None:
    lanes = await lane_ids(conn, board)
    rec.clear()
    task = await conn.create_task(
        board,
        {
            "title": "New",
            "description": "d",
            "status": "done",
            "priority": "low",
            "tags": ["b", "a"],
            "assignees": ["x"],
        },
    )
    posts = rec.calls("POST", "/tasks")
    assert len(posts) == 1
    assert posts[0][2] == {
        "title": "New",
        "laneId": lanes["Done"],
        "description": "d",
        "priority": 1,
        "tags": ["a", "b"],
    }
    assert not rec.calls("PATCH")  # not archived: no follow-up PATCH
    assert task.values["status"] == Status.DONE


async def test_create_archived_patches_after(conn: AgentKanbanConnector, rec: Recorder, board: str) -> None:
    rec.clear()
    task = await conn.create_task(board, {"title": "Old", "archived": True})
    assert "archived" not in rec.calls("POST", "/tasks")[0][2]
    assert [c[2] for c in rec.calls("PATCH")] == [{"archived": True}]
    assert task.values["archived"] is True


async def test_update_sends_only_the_changed_fields(
    fake: AgentKanbanFake, conn: AgentKanbanConnector, rec: Recorder, board: str
) -> None:
    task = await conn.create_task(
        board, {"title": "Before", "description": "keep me", "priority": "medium", "tags": ["t"]}
    )
    rec.clear()
    after = await conn.update_task(board, task.remote_id, {"title": "After"})
    assert [(m, body) for m, _, body in rec.sent if m != "GET"] == [("PATCH", {"title": "After"})]
    assert after.values == {**task.values, "title": "After"}

    # A field the connector cannot write is not sent at all.
    rec.clear()
    await conn.update_task(board, task.remote_id, {"assignees": ["someone"], "due_date": "2026-01-01"})
    assert [m for m, _, _ in rec.sent] == ["GET"]

    # Status moves the task with the move endpoint, never PATCH laneId.
    lanes = await lane_ids(conn, board)
    rec.clear()
    moved = await conn.update_task(board, task.remote_id, {"status": "done", "priority": "urgent"})
    assert rec.calls("PATCH") == [("PATCH", f"{API}/boards/{board}/tasks/{task.remote_id}", {"priority": 4})]
    assert [c[2] for c in rec.calls("POST", "/move")] == [{"laneId": lanes["Done"]}]
    assert moved.values["status"] == Status.DONE and moved.values["priority"] == Priority.URGENT
    assert moved.values["description"] == "keep me"


async def test_status_write_keeps_a_lane_that_already_reads_so(
    conn: AgentKanbanConnector, rec: Recorder, board: str
) -> None:
    lanes = await lane_ids(conn, board)
    task = await conn.create_task(board, {"title": "reviewing"})
    await conn.client.move_task(board, task.remote_id, lanes["In Review"])
    rec.clear()
    same = await conn.update_task(board, task.remote_id, {"status": "in_progress"})
    assert not rec.calls("POST", "/move") and same.values["status"] == Status.IN_PROGRESS
    # lossy: blocked is written as To Do
    rec.clear()
    blocked = await conn.update_task(board, task.remote_id, {"status": "blocked"})
    assert [c[2] for c in rec.calls("POST", "/move")] == [{"laneId": lanes["To Do"]}]
    assert blocked.values["status"] == Status.TODO == conn.roundtrip({"status": "blocked"})["status"]
    rec.clear()
    await conn.update_task(board, task.remote_id, {"status": "blocked"})  # already To Do: no move
    assert not rec.calls("POST", "/move")


async def test_archive_and_delete(conn: AgentKanbanConnector, rec: Recorder, board: str) -> None:
    task = await conn.create_task(board, {"title": "to archive"})
    rec.clear()
    archived = await conn.archive_task(board, task.remote_id)
    assert archived.values["archived"] is True
    assert rec.calls("PATCH")[0][2] == {"archived": True}
    await conn.delete_task(board, task.remote_id)
    assert rec.calls("DELETE")
    with pytest.raises(NotFound):
        await conn.get_task(board, task.remote_id)
    with pytest.raises(NotFound):
        await conn.delete_task(board, task.remote_id)


async def test_find_by_marker(
    fake: AgentKanbanFake, conn: AgentKanbanConnector, rec: Recorder, board: str
) -> None:
    for i in range(10):
        await conn.create_task(board, {"title": f"filler {i}", "description": f"nothing {i}"})
    target = await conn.create_task(board, {"title": "mirror", "description": "text\n\n[tb:01MARKER]"})
    await conn.create_task(
        board, {"title": "archived mirror", "description": "[tb:01ARCH]", "archived": True}
    )
    rec.clear()
    found = await conn.find_by_marker(board, "[tb:01MARKER]")
    assert found is not None and found.remote_id == target.remote_id
    assert detail_gets(rec, board) == 0  # descriptions the connector already holds are not re-read
    archived = await conn.find_by_marker(board, "[tb:01ARCH]")
    assert archived is not None and archived.values["archived"] is True
    assert await conn.find_by_marker(board, "[tb:none]") is None

    # Without a cache (a restarted daemon), it reads details, in batches, and still finds it.
    cold_rec = Recorder()
    cold = AgentKanbanConnector(make_settings(fake, transport=cold_rec))
    try:
        again = await cold.find_by_marker(board, "[tb:01MARKER]")
        assert again is not None and again.remote_id == target.remote_id
        assert 1 <= detail_gets(cold_rec, board) <= cold.DETAIL_CONCURRENCY
    finally:
        await cold.aclose()


# -- comments and todos ------------------------------------------------------------------------------------


async def test_comments(conn: AgentKanbanConnector, rec: Recorder, board: str) -> None:
    task = await conn.create_task(board, {"title": "discuss"})
    rec.clear()
    added = await conn.add_comment(board, task.remote_id, "Hello from elsewhere", "Alice via Vortask")
    assert rec.calls("POST", "/comments")[0][2] == {
        "body": "Hello from elsewhere",
        "source": "api",
        "authorName": "Alice via Vortask",
    }
    assert added.author == "Alice via Vortask" and added.by_us and added.created_at is not None
    await conn.client.add_comment(board, task.remote_id, "I did it", author_name="Claude", source="agent")
    comments = await conn.list_comments(board, task.remote_id)
    assert [(c.body, c.author, c.by_us) for c in comments] == [
        ("Hello from elsewhere", "Alice via Vortask", True),
        ("I did it", "Claude", False),
    ]
    assert comments[0].remote_id == added.remote_id


async def test_todos_through_the_client(conn: AgentKanbanConnector, board: str) -> None:
    task = await conn.create_task(board, {"title": "with todos"})
    await conn.client.add_todo(board, task.remote_id, "second", iteration=2)
    await conn.client.add_todo(board, task.remote_id, "first")
    todos = await conn.client.list_todos(board, task.remote_id)
    assert [(t["text"], t["iteration"], t["source"]) for t in todos] == [
        ("first", 1, "api"),
        ("second", 2, "api"),
    ]


# -- lanes and mapping gaps --------------------------------------------------------------------------------


async def test_unmapped_lane_is_a_clear_permanent_error(conn: AgentKanbanConnector, board: str) -> None:
    lane = await conn.client.create_lane(board, "QA")
    task = await conn.create_task(board, {"title": "in QA"})
    await conn.client.move_task(board, task.remote_id, lane["id"])
    for call in (conn.list_tasks(board, None), conn.get_task(board, task.remote_id)):
        with pytest.raises(Permanent) as info:
            await call
        assert (
            "'QA'" in str(info.value)
            and board in str(info.value)
            and "mapping.status.read" in str(info.value)
        )
    with pytest.raises(Permanent, match="hold tasks but have no status mapping"):
        await conn.check(board)
    # writing a status moves it out of the unmapped lane
    fixed = await conn.update_task(board, task.remote_id, {"status": "done"})
    assert fixed.values["status"] == Status.DONE


async def test_missing_lane_for_a_write_is_a_clear_permanent_error(
    conn: AgentKanbanConnector, board: str
) -> None:
    lanes = await lane_ids(conn, board)
    task = await conn.create_task(board, {"title": "t"})
    await conn.client.update_lane(board, lanes["Done"], name="Finished")
    with pytest.raises(Permanent) as info:
        await conn.update_task(board, task.remote_id, {"status": "done", "title": "not written"})
    assert "no lane named 'Done'" in str(info.value) and board in str(info.value)
    assert (await conn.get_task(board, task.remote_id)).values["title"] == "t"  # nothing was written
    with pytest.raises(Permanent, match="no lane named 'Done'"):
        await conn.create_task(board, {"title": "t2", "status": "done"})
    with pytest.raises(Permanent, match="lacks the lanes"):
        await conn.check(board)


async def test_lane_cache_is_refreshed_once_on_a_miss(
    fake: AgentKanbanFake, rec: Recorder, board: str
) -> None:
    conn = AgentKanbanConnector(
        make_settings(fake, transport=rec, override={"status": {"read": {"QA": "blocked"}}})
    )
    try:
        task = await conn.create_task(board, {"title": "t", "status": "todo"})
        await conn.get_task(board, task.remote_id)
        lane = await conn.client.create_lane(board, "QA")  # unknown to the cache
        await conn.client.move_task(board, task.remote_id, lane["id"])
        rec.clear()
        got = await conn.get_task(board, task.remote_id)
        assert got.values["status"] == Status.BLOCKED
        assert len(rec.calls("GET", "/lanes")) == 1
        rec.clear()
        await conn.get_task(board, task.remote_id)
        assert not rec.calls("GET", "/lanes")  # cached now
        # a lane id that stays unknown after the one refresh is a clear error, not a KeyError
        with pytest.raises(Permanent, match="lacks"):
            await conn._lane_status(board, "01nosuchlane")
    finally:
        await conn.aclose()


async def test_status_writes_use_fresh_lanes(conn: AgentKanbanConnector, rec: Recorder, board: str) -> None:
    lanes = await lane_ids(conn, board)
    task = await conn.create_task(board, {"title": "t"})
    # Swap the names of two lanes behind the connector's back: ids stay, meanings change.
    await conn.client.update_lane(board, lanes["Doing"], name="Done")
    await conn.client.update_lane(board, lanes["Done"], name="Doing")
    rec.clear()
    done = await conn.update_task(board, task.remote_id, {"status": "done"})
    assert [c[2] for c in rec.calls("POST", "/move")] == [{"laneId": lanes["Doing"]}]  # now named "Done"
    assert done.values["status"] == Status.DONE


async def test_check(conn: AgentKanbanConnector, board: str) -> None:
    await conn.client.create_lane(board, "Icebox")
    await conn.create_task(board, {"title": "t"})
    summary = await conn.check(board)
    assert "5 lanes, 1 tasks" in summary and "Icebox" in summary


# -- webhooks --------------------------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def hooked() -> AsyncIterator[tuple[AgentKanbanFake, AgentKanbanConnector]]:
    f = AgentKanbanFake(token=TOKEN)
    f.webhooks.backoff = 0.05
    f.start()
    c = AgentKanbanConnector(make_settings(f))
    yield f, c
    await c.aclose()
    f.stop()


async def test_register_webhook_is_idempotent(
    hooked: tuple[AgentKanbanFake, AgentKanbanConnector], webhook_receiver: WebhookReceiver
) -> None:
    fake, conn = hooked
    board = fake.create_board("hooks")
    url = webhook_receiver.url + "/webhooks/agentkanban1"
    secret = await conn.register_webhook(board, url, None)
    assert secret is not None and secret.startswith("whsec_")
    assert await conn.register_webhook(board, url, None) is None
    assert await conn.register_webhook("another-board", url, "ignored") is None
    hooks = await conn.client.list_webhooks()
    assert len(hooks) == 1 and hooks[0]["url"] == url
    assert set(hooks[0]["events"]) == {"task.created", "task.updated", "task.deleted", "comment.created"}

    # A deactivated hook, or one missing events, is repaired rather than duplicated.
    await conn.client.update_webhook(hooks[0]["id"], active=False, events=["task.created"])
    assert await conn.register_webhook(board, url, None) is None
    hooks = await conn.client.list_webhooks()
    assert len(hooks) == 1 and hooks[0]["active"] is True
    assert set(hooks[0]["events"]) >= {"task.created", "task.updated", "task.deleted", "comment.created"}


async def test_webhook_deliveries_verify_and_parse(
    hooked: tuple[AgentKanbanFake, AgentKanbanConnector], webhook_receiver: WebhookReceiver
) -> None:
    fake, conn = hooked
    board = fake.create_board("hooks")
    secret = await conn.register_webhook(board, webhook_receiver.url + "/hook", None)
    assert secret
    task = await conn.create_task(board, {"title": "hooked"})
    await conn.update_task(board, task.remote_id, {"status": "done"})
    await conn.add_comment(board, task.remote_id, "hi", "Bob via Impactly")
    await conn.delete_task(board, task.remote_id)
    received = webhook_receiver.wait_for(4)

    events = []
    for hook in received:
        conn.verify_webhook(hook.headers, hook.body, ["whsec_old_rotated", secret])
        events.extend(conn.parse_webhook(hook.headers, hook.body))
    assert [(e.scope, e.remote_id, e.kind) for e in events] == [
        (board, task.remote_id, "created"),
        (board, task.remote_id, "updated"),
        (board, task.remote_id, "comment"),
        (board, task.remote_id, "deleted"),
    ]
    assert all(e.task is None for e in events)
    assert [e.delivery_id for e in events] == [h.headers["x-agentkanban-delivery"] for h in received]
    assert len({e.delivery_id for e in events}) == 4

    genuine = received[0]
    # a tampered body, a wrong secret, no secret, a missing header: all refused
    with pytest.raises(BadSignature, match="does not match"):
        conn.verify_webhook(genuine.headers, genuine.body.replace(b"hooked", b"HOOKED"), [secret])
    with pytest.raises(BadSignature, match="does not match"):
        conn.verify_webhook(genuine.headers, genuine.body, ["whsec_wrong"])
    with pytest.raises(BadSignature, match="no webhook secret"):
        conn.verify_webhook(genuine.headers, genuine.body, [])
    with pytest.raises(BadSignature, match="no X-AgentKanban-Signature"):
        conn.verify_webhook({}, genuine.body, [secret])
    with pytest.raises(BadSignature, match="lacks"):
        conn.verify_webhook({"X-AgentKanban-Signature": "garbage"}, genuine.body, [secret])
    # header names are case-insensitive
    conn.verify_webhook({k.title(): v for k, v in genuine.headers.items()}, genuine.body, [secret])

    # a stale (or far-future) timestamp is refused even when correctly signed
    for offset in (-301, 301):
        ts = str(int(time.time()) + offset)
        headers = {"X-AgentKanban-Signature": f"t={ts},v1={sign(secret, ts, genuine.body)}"}
        with pytest.raises(BadSignature, match="stale"):
            conn.verify_webhook(headers, genuine.body, [secret])
    ts = str(int(time.time()) - 200)
    conn.verify_webhook(
        {"X-AgentKanban-Signature": f"t={ts},v1={sign(secret, ts, genuine.body)}"}, genuine.body, [secret]
    )


def test_parse_webhook_shapes(fake: AgentKanbanFake) -> None:
    conn = AgentKanbanConnector(make_settings(fake))
    assert isinstance(conn, Connector)
    body = json.dumps({"id": "dlv1", "event": "task.updated", "boardId": "b1", "data": {"id": "t1"}}).encode()
    (event,) = conn.parse_webhook({}, body)
    assert (event.scope, event.remote_id, event.kind, event.delivery_id) == ("b1", "t1", "updated", "dlv1")
    board_event = json.dumps({"id": "d2", "event": "board.created", "boardId": "b1", "data": {"id": "b1"}})
    assert conn.parse_webhook({}, board_event.encode()) == []
    for bad in (
        b"not json",
        b"[1]",
        json.dumps({"event": "task.created", "boardId": "b1", "data": {}}).encode(),
    ):
        with pytest.raises(BadSignature):
            conn.parse_webhook({}, bad)


# -- errors -----------------------------------------------------------------------------------------------------


async def test_401_is_auth_failed(fake: AgentKanbanFake, board: str) -> None:
    conn = AgentKanbanConnector(make_settings(fake, token="ak_wrong"))
    try:
        with pytest.raises(AuthFailed, match="Invalid or revoked API key"):
            await conn.list_tasks(board, None)
    finally:
        await conn.aclose()


async def test_403_and_400_are_permanent_with_the_platform_message(
    fake: AgentKanbanFake, conn: AgentKanbanConnector, board: str
) -> None:
    task = await conn.create_task(board, {"title": "t"})
    other = fake.create_board("someone else's")
    fake.add_key("ak_reader_only", boards={other: "read"})
    reader = AgentKanbanConnector(make_settings(fake, token="ak_reader_only"))
    try:
        with pytest.raises(Permanent, match="Key does not have access to that board") as info:
            await reader.get_task(board, task.remote_id)
        assert info.value.status == 403 and not isinstance(info.value, NotFound)
        with pytest.raises(Permanent, match="read-only access") as info:
            await reader.create_task(other, {"title": "nope"})
        assert info.value.status == 403
    finally:
        await reader.aclose()
    with pytest.raises(Permanent, match="Task title is required") as info:
        await conn.client.create_task(board, {"title": "  "})
    assert info.value.status == 400


async def test_429_retry_after_is_honoured(
    fake: AgentKanbanFake, conn: AgentKanbanConnector, board: str
) -> None:
    await conn.create_task(board, {"title": "t"})
    fake.faults.retry_after = 1
    fake.faults.rate_limit_burst = 1
    started = time.monotonic()
    listing = await conn.list_tasks(board, None)
    assert time.monotonic() - started >= 1.0
    assert len(listing.tasks) == 1
    assert fake.requests.count("GET", LANES_ROUTE, status=429) == 1


async def test_429_longer_than_max_wait_is_rate_limited(fake: AgentKanbanFake, board: str) -> None:
    conn = AgentKanbanConnector(make_settings(fake, max_wait=0.5))
    try:
        fake.faults.retry_after = 7
        fake.faults.rate_limit_burst = 1
        with pytest.raises(RateLimited) as info:
            await conn.get_task(board, "anything")
        assert info.value.retry_after == 7
    finally:
        fake.faults.reset()
        await conn.aclose()


async def test_5xx_is_retried_then_retryable(fake: AgentKanbanFake, board: str) -> None:
    patient = AgentKanbanConnector(make_settings(fake, max_retries=16, backoff=0.001))
    brief = AgentKanbanConnector(make_settings(fake, max_retries=2))
    try:
        created = await patient.create_task(board, {"title": "t"})
        before = fake.requests.count(status=500)
        fake.faults.error_rate = 0.5
        for _ in range(10):  # each GET gets through in the end (a failure here is odds of ~1e-4)
            assert (await patient.get_task(board, created.remote_id)).remote_id == created.remote_id
        assert fake.requests.count(status=500) > before
        fake.faults.error_rate = 1.0
        before = fake.requests.count(status=500)
        with pytest.raises(Retryable) as info:
            await brief.get_task(board, created.remote_id)
        assert info.value.status == 500 and "Internal server error" in str(info.value)
        assert fake.requests.count(status=500) - before == 3  # the first try and two retries
    finally:
        fake.faults.reset()
        await patient.aclose()
        await brief.aclose()


async def test_timeout_is_retryable(fake: AgentKanbanFake, board: str) -> None:
    conn = AgentKanbanConnector(make_settings(fake, timeout=0.2, max_retries=1))
    try:
        fake.faults.timeout_rate = 1.0
        fake.faults.hang_seconds = 0.5
        started = time.monotonic()
        with pytest.raises(Retryable, match="timed out"):
            await conn.list_tasks(board, None)
        assert time.monotonic() - started < 3
    finally:
        fake.faults.reset()
        await conn.aclose()
