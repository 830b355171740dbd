"""Contract tests: the AgentKanban connector against its fake, over real loopback HTTP.

Most tests share one fake and make their own board (`board` fixture), so they do not depend on
each other; webhook tests get a fresh fake because the fake's hooks fire for every board.
A recording transport (a real HTTP transport that also keeps each request's method, path and
body) shows exactly what the connector sent.
"""

from __future__ import annotations

import dataclasses
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
from bridge.model import Priority, Status, normalize_values, parse_timestamp, utcnow
from connectors.agentkanban.connector import AgentKanbanConnector
from connectors.agentkanban.fake import AgentKanbanFake, sign
from connectors.base import (
    CREATION_MARGIN,
    AuthFailed,
    BadSignature,
    Connector,
    ConnectorSettings,
    NotFound,
    PeopleMap,
    Permanent,
    RateLimited,
    Retryable,
    recordable_headers,
)
from tests.conftest import WebhookReceiver
from tests.contract.recording import Recorder

TOKEN = "ak_connector_test_key"
API = "/api/ext/v1"
TASKS_ROUTE = f"{API}/boards/{{board_id}}/tasks"
TASK_ROUTE = f"{TASKS_ROUTE}/{{task_id}}"
MOVE_ROUTE = f"{TASK_ROUTE}/move"
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


class Served:
    """The requests the fake served for one board, as (method, route template), from its own log."""

    def __init__(self, fake: AgentKanbanFake, board: str) -> None:
        self.fake, self.board = fake, board
        self.mark = len(fake.requests.entries)

    def take(self) -> list[tuple[str, str]]:
        """Those served since the last take (or since this was made); `self.paths` their paths."""
        entries = self.fake.requests.entries[self.mark :]
        self.mark += len(entries)
        mine = [e for e in entries if f"/boards/{self.board}" in e.path]
        self.paths = [e.path for e in mine]
        return [(e.method, e.route) for e in mine]


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
    assert (got.remote_id, got.scope, got.values) == (created.remote_id, created.scope, created.values)
    assert got.scope == board and got.created_at is not None and got.updated_at is not None
    # no GET after the create: its answer ({id, title, laneId}) carries no timestamps
    assert created.updated_at is None and created.created_at is None
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
        assert (await conn.get_task(board, created.remote_id)).values == created.values

        # Update to the "next" combination, with a partial change set each time.
        nxt_status, nxt_priority = combos[(i + 7) % len(combos)]
        changes = normalize_values(
            {"status": nxt_status, "priority": nxt_priority, "tags": tag_sets[(i + 1) % len(tag_sets)]}
            if i % 2
            else {"title": titles[(i + 1) % len(titles)], "archived": i % 3 != 0, "status": nxt_status}
        )
        updated = await conn.update_task(board, created.remote_id, changes)
        assert updated.values == conn.roundtrip(changes)  # the fields written, as they read back
        got = (await conn.get_task(board, created.remote_id)).values
        assert {k: got[k] for k in changes} == updated.values
        untouched = {k: v for k, v in expected.items() if k not in changes}
        assert {k: got[k] for k in untouched} == untouched


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
    assert [(m, body) for m, _, body in rec.sent] == [("PATCH", {"title": "After"})]  # nothing read back
    assert after.values == {"title": "After"}  # the fields written, not the whole task
    assert (await conn.get_task(board, task.remote_id)).values == {**task.values, "title": "After"}

    # A field the connector cannot write is not sent at all; nothing is read either.
    rec.clear()
    nothing = await conn.update_task(
        board, task.remote_id, {"assignees": ["someone"], "due_date": "2026-01-01"}
    )
    assert rec.sent == [] and nothing.values == {}

    # Status moves the task with the move endpoint, never PATCH laneId.
    lanes = await lane_ids(conn, board)
    rec.clear()
    moved = await conn.update_task(board, task.remote_id, {"status": "done", "priority": "urgent"})
    assert rec.calls("PATCH") == [("PATCH", f"{API}/boards/{board}/tasks/{task.remote_id}", {"priority": 4})]
    assert [c[2] for c in rec.calls("POST", "/move")] == [{"laneId": lanes["Done"]}]
    assert [m for m, _, _ in rec.sent] == ["PATCH", "POST"]
    assert moved.values == {"status": Status.DONE, "priority": Priority.URGENT}
    assert (await conn.get_task(board, task.remote_id)).values["description"] == "keep me"


async def test_status_write_keeps_a_lane_that_already_reads_so(
    conn: AgentKanbanConnector, rec: Recorder, board: str
) -> None:
    lanes = await lane_ids(conn, board)
    task = await conn.create_task(board, {"title": "reviewing"})
    await conn.client.move_task(board, task.remote_id, lanes["In Review"])
    await conn.get_task(board, task.remote_id)  # a fresh sighting, as the engine's read-before-write GET
    rec.clear()
    same = await conn.update_task(board, task.remote_id, {"status": "in_progress"})
    assert rec.sent == [] and same.values == {"status": Status.IN_PROGRESS}
    # lossy: blocked is written as To Do
    rec.clear()
    blocked = await conn.update_task(board, task.remote_id, {"status": "blocked"})
    assert [c[2] for c in rec.calls("POST", "/move")] == [{"laneId": lanes["To Do"]}]
    assert blocked.values["status"] == Status.TODO == conn.roundtrip({"status": "blocked"})["status"]
    rec.clear()
    await conn.update_task(board, task.remote_id, {"status": "blocked"})  # already To Do (its move said so)
    assert not rec.calls("POST", "/move")


async def test_only_a_fresh_sighting_spares_a_move(
    fake: AgentKanbanFake, conn: AgentKanbanConnector, rec: Recorder, board: str
) -> None:
    lanes = await lane_ids(conn, board)
    task = await conn.create_task(board, {"title": "reviewing", "status": "in_progress"})
    await conn.client.move_task(board, task.remote_id, lanes["In Review"])
    await conn.get_task(board, task.remote_id)
    now = time.monotonic()
    conn.monotonic = lambda: now + conn.LANE_FRESH  # the sighting is too old now
    rec.clear()
    moved = await conn.update_task(board, task.remote_id, {"status": "in_progress"})
    assert [c[2] for c in rec.calls("POST", "/move")] == [{"laneId": lanes["Doing"]}]
    assert moved.values == {"status": Status.IN_PROGRESS}

    # A connector that never saw the task (a restart, another replica) moves it too.
    await conn.client.move_task(board, task.remote_id, lanes["In Review"])
    other_rec = Recorder()
    other = AgentKanbanConnector(make_settings(fake, transport=other_rec))
    try:
        await other.update_task(board, task.remote_id, {"status": "in_progress"})
        assert [c[2] for c in other_rec.calls("POST", "/move")] == [{"laneId": lanes["Doing"]}]
        # ... and its move is a sighting: the same write again moves nothing
        other_rec.clear()
        await other.update_task(board, task.remote_id, {"status": "in_progress"})
        assert other_rec.sent == []
    finally:
        await other.aclose()
    assert (await conn.get_task(board, task.remote_id)).values["status"] == Status.IN_PROGRESS


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


async def test_find_by_markers_reads_the_board_once(
    fake: AgentKanbanFake, conn: AgentKanbanConnector, rec: Recorder, board: str
) -> None:
    made = {}
    for i in range(3):
        made[f"[tb:01M{i}]"] = await conn.create_task(
            board, {"title": f"m {i}", "description": f"[tb:01M{i}]"}
        )
    cold_rec = Recorder()
    cold = AgentKanbanConnector(make_settings(fake, transport=cold_rec))  # no descriptions held
    try:
        found = await cold.find_by_markers(board, [*made, "[tb:none]"])
        assert {m: t.remote_id for m, t in found.items()} == {m: t.remote_id for m, t in made.items()}
        listings = [p for m, p, _ in cold_rec.sent if m == "GET" and p == f"{API}/boards/{board}/tasks"]
        assert len(listings) == 1
        assert detail_gets(cold_rec, board) == len(made)  # each task's details read once
    finally:
        await cold.aclose()


async def test_find_by_markers_reads_no_task_dated_before_the_look(
    fake: AgentKanbanFake, conn: AgentKanbanConnector, board: str
) -> None:
    """A retried create's look after a restart (nothing cached) reads details only of the tasks
    the listing dates after its operation was queued (less the clocks' margin): a marker that
    is not there cost a GET for every task of the board."""
    old = [await conn.create_task(board, {"title": f"old {i}", "description": f"old {i}"}) for i in range(12)]
    near = await conn.create_task(board, {"title": "near", "description": "[tb:01NEAR]"})
    recent = await conn.create_task(board, {"title": "recent", "description": "[tb:01RECENT]"})
    queued = utcnow()
    tasks = fake.boards[board].tasks
    for task in old:  # made long before: an hour before the operation was queued
        tasks[task.remote_id].created_at = queued - timedelta(hours=1)
    # Dated before the queueing by less than the margin: a platform clock a little behind ours.
    tasks[near.remote_id].created_at = queued - CREATION_MARGIN + timedelta(minutes=1)
    cold_rec = Recorder()
    cold = AgentKanbanConnector(make_settings(fake, transport=cold_rec))
    try:
        found = await cold.find_by_markers(
            board, ["[tb:01NEAR]", "[tb:01RECENT]", "[tb:none]"], created_after=queued
        )
        assert {m: t.remote_id for m, t in found.items()} == {
            "[tb:01NEAR]": near.remote_id,
            "[tb:01RECENT]": recent.remote_id,
        }
        assert detail_gets(cold_rec, board) == 2  # the two recent tasks; none of the twelve old ones
        cold_rec.clear()
        # Without a time, every task may be the one: each is read.
        assert await cold.find_by_markers(board, ["[tb:none]"]) == {}
        assert detail_gets(cold_rec, board) == 12
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


# -- request budget of writes (issue 14) ----------------------------------------------------------------


async def test_write_request_budget(fake: AgentKanbanFake, board: str) -> None:
    """With a warm lane cache a mirrored create is one request (two when archived) and an update
    one, plus a move when its status changes lane: nothing is read back, no lane list re-read."""
    conn = AgentKanbanConnector(make_settings(fake))
    served = Served(fake, board)
    try:
        # A cold cache: the first status write reads the lanes, once.
        cold = await conn.create_task(board, {"title": "cold", "status": "in_progress"})
        assert served.take() == [("GET", LANES_ROUTE), ("POST", TASKS_ROUTE)]
        await conn.list_tasks(board, None)  # a poll: lanes and listing (the creates' details are known)
        assert served.take() == [("GET", LANES_ROUTE), ("GET", TASKS_ROUTE)]

        a = await conn.create_task(
            board, {"title": "a", "description": "d", "status": "done", "priority": "high", "tags": ["x"]}
        )
        assert served.take() == [("POST", TASKS_ROUTE)]
        plain = await conn.create_task(board, {"title": "no status"})
        assert served.take() == [("POST", TASKS_ROUTE)]
        old = await conn.create_task(board, {"title": "old", "status": "done", "archived": True})
        assert served.take() == [("POST", TASKS_ROUTE), ("PATCH", TASK_ROUTE)]

        await conn.update_task(board, a.remote_id, {"title": "b", "tags": ["y"]})
        assert served.take() == [("PATCH", TASK_ROUTE)]
        await conn.update_task(board, a.remote_id, {"status": "todo"})
        assert served.take() == [("POST", MOVE_ROUTE)]
        await conn.update_task(board, a.remote_id, {"status": "in_progress", "priority": "low"})
        assert served.take() == [("PATCH", TASK_ROUTE), ("POST", MOVE_ROUTE)]
        await conn.update_task(board, a.remote_id, {"status": "in_progress"})  # its move said it is there
        assert served.take() == []
        await conn.archive_task(board, a.remote_id)
        assert served.take() == [("PATCH", TASK_ROUTE)]

        # A mix of mirrored creates and updates: issue 14's target is <= 1.5 requests each.
        ops = requests = 0
        mixed = []
        for i in range(4):
            t = await conn.create_task(board, {"title": f"m{i}", "description": f"d{i}", "status": "todo"})
            await conn.update_task(board, t.remote_id, {"description": f"d{i}, edited"})
            await conn.update_task(board, t.remote_id, {"status": "done"})
            await conn.update_task(board, t.remote_id, {"status": "in_progress", "priority": "high"})
            mixed.append(t.remote_id)
            ops += 4
            requests += len(served.take())
        assert requests / ops == 1.25

        # The next poll reads the detail of the tasks written since their creation only.
        listing = await conn.list_tasks(board, None)
        served_now = served.take()
        read = {
            path.rsplit("/", 1)[1]
            for (_, route), path in zip(served_now, served.paths, strict=True)
            if route == TASK_ROUTE
        }
        assert {m for (m, route) in served_now if route == TASK_ROUTE} == {"GET"}
        assert read == {a.remote_id, old.remote_id, *mixed}
        everything = {cold.remote_id, a.remote_id, plain.remote_id, old.remote_id, *mixed}
        assert {t.remote_id for t in listing.tasks} == everything
    finally:
        await conn.aclose()


# What a created task reads as in the fields it was not given: "Untitled" (a blank title too), no
# description, priority 0 (none), no tags, the board's first lane ("To Do"), not archived.
CREATE_DEFAULTS = {
    "title": "Untitled",
    "description": "",
    "priority": Priority.NONE,
    "tags": frozenset(),
    "status": Status.TODO,
    "archived": False,
}


async def test_write_answers_read_as_a_get(conn: AgentKanbanConnector, rec: Recorder, board: str) -> None:
    """What create and update return (built from what was sent and the answers, no GET) equals
    what a GET reports afterwards, for the platform's normalisations: trimmed titles and tags,
    duplicate tags dropped, a blank title as "Untitled", "" and null descriptions, lossy statuses."""
    await conn.list_tasks(board, None)  # a warm lane cache
    creates: list[dict[str, Any]] = [
        {"title": "", "tags": ["a", " a ", "b  "], "description": "", "priority": "none"},
        {
            "title": "  padded  ",
            "description": "  keep  \n spaces ",
            "status": "blocked",
            "priority": "urgent",
        },
        {"title": "Ünïcode ✓", "tags": [], "status": "cancelled", "priority": "low", "archived": True},
        {"title": "\t", "description": "marker: tb-1", "status": "in_progress", "tags": ["x", "x", " y"]},
        {"title": "only a title"},
        {"title": "done", "status": "done", "priority": "medium", "tags": ["  ", "z"], "description": None},
        {"title": "t", "status": "todo", "priority": "high", "archived": False, "assignees": ["p"]},
    ]
    ids = []
    for values in creates:
        rec.clear()
        created = await conn.create_task(board, values)
        assert not rec.calls("GET"), values
        got = await conn.get_task(board, created.remote_id)
        assert (created.remote_id, created.scope, created.values) == (got.remote_id, got.scope, got.values), (
            values
        )
        assert created.values == {**CREATE_DEFAULTS, **conn.roundtrip(normalize_values(values))}, values
        ids.append(created.remote_id)
    updates: list[dict[str, Any]] = [
        {"title": "   "},
        {"tags": [" dup", "dup ", "z"]},
        {"description": ""},
        {"description": " x \n"},
        {"priority": "none", "title": " t "},
        {"status": "blocked", "archived": True},
        {"archived": False, "status": "cancelled"},
        {"status": "todo", "tags": [], "priority": "high", "description": "multi\nline"},
        {"status": "in_progress", "title": "Ü", "tags": ["  ", "q"]},
        {"status": "done"},
    ]
    for i, changes in enumerate(updates):
        task_id = ids[i % len(ids)]
        rec.clear()
        updated = await conn.update_task(board, task_id, changes)
        assert not rec.calls("GET"), changes
        got = await conn.get_task(board, task_id)
        assert updated.values == {k: got.values[k] for k in changes}, changes
        assert updated.values == conn.roundtrip(normalize_values(changes)), changes


async def test_an_update_is_timed_after_every_version_seen_before_it(
    fake: AgentKanbanFake, conn: AgentKanbanConnector, board: str
) -> None:
    """The answers carry no updatedAt; the engine uses an update's time only so that a report
    fetched before the write reads as older than it. The connector gives a lower bound."""
    task = await conn.create_task(board, {"title": "t"})
    assert task.updated_at is None  # nothing to bound it with; no report can predate the task
    before = await conn.get_task(board, task.remote_id)  # e.g. the engine's read-before-write
    stale = await conn.list_tasks(board, None)  # a listing fetched before the write...
    updated = await conn.update_task(board, task.remote_id, {"title": "t2", "status": "done"})
    after = await conn.get_task(board, task.remote_id)
    assert before.updated_at is not None and updated.updated_at is not None and after.updated_at is not None
    assert before.updated_at < updated.updated_at <= after.updated_at
    [old] = [t for t in stale.tasks if t.remote_id == task.remote_id]
    assert old.updated_at is not None and old.updated_at < updated.updated_at  # ...reads as older
    await conn.client.update_task(board, task.remote_id, {"title": "someone else"})
    later = await conn.get_task(board, task.remote_id)
    assert later.updated_at is not None and later.updated_at > updated.updated_at  # a later edit does not
    # A connector that never saw the task has nothing to bound the time with.
    other = AgentKanbanConnector(make_settings(fake))
    try:
        assert (await other.update_task(board, task.remote_id, {"priority": "low"})).updated_at is None
    finally:
        await other.aclose()


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
    await conn.list_tasks(board, None)  # the poll re-reads the lanes (writes do not: see below)
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


async def test_lane_renames_are_seen_at_the_next_poll(
    conn: AgentKanbanConnector, rec: Recorder, board: str
) -> None:
    """The trade-off the module doc describes: status writes use the cached lanes, which a poll
    re-reads; a rename in between sends a write to the lane by its old name, and the next poll
    reports that task by the lane's new name."""
    lanes = await lane_ids(conn, board)
    task = await conn.create_task(board, {"title": "t"})
    first = await conn.list_tasks(board, None)
    # Swap the names of two lanes behind the connector's back: ids stay, meanings change.
    await conn.client.update_lane(board, lanes["Doing"], name="Done")
    await conn.client.update_lane(board, lanes["Done"], name="Doing")
    rec.clear()
    done = await conn.update_task(board, task.remote_id, {"status": "done"})
    assert [m for m, _, _ in rec.sent] == ["POST"]  # no lane read before the write
    assert [c[2] for c in rec.calls("POST", "/move")] == [{"laneId": lanes["Done"]}]  # "Done" when cached
    assert done.values == {"status": Status.DONE}
    # The next poll re-reads the lanes and reports the task by its lane's new name.
    rec.clear()
    second = await conn.list_tasks(board, first.watermark)
    assert len(rec.calls("GET", "/lanes")) == 1
    assert [(t.remote_id, t.values["status"]) for t in second.tasks] == [(task.remote_id, Status.IN_PROGRESS)]
    # From then on the lane now named "Done" is where done goes.
    rec.clear()
    again = await conn.update_task(board, task.remote_id, {"status": "done"})
    assert [c[2] for c in rec.calls("POST", "/move")] == [{"laneId": lanes["Doing"]}]  # now named "Done"
    assert again.values == {"status": Status.DONE}
    assert (await conn.get_task(board, task.remote_id)).values["status"] == Status.DONE


async def test_a_lane_renamed_or_added_is_found_by_a_refresh_on_a_miss(
    fake: AgentKanbanFake, board: str
) -> None:
    override = {
        "status": {
            "write": {"done": "Shipped", "blocked": "Backlog"},
            "read": {"Shipped": "done", "Backlog": "blocked"},
            "lossy": ["cancelled"],
        }
    }
    conn = AgentKanbanConnector(make_settings(fake, override=override))
    served = Served(fake, board)
    try:
        lanes = await lane_ids(conn, board)
        task = await conn.create_task(board, {"title": "t", "status": "todo"})
        await conn.list_tasks(board, None)  # a poll: the cache holds the four default lanes
        # A lane renamed to the name the mapping writes: the cache lacks the name, one re-read finds it.
        await conn.client.update_lane(board, lanes["Done"], name="Shipped")
        served.take()
        done = await conn.update_task(board, task.remote_id, {"status": "done"})
        assert served.take() == [("GET", LANES_ROUTE), ("POST", MOVE_ROUTE)]
        assert done.values == {"status": Status.DONE}
        assert (await conn.client.get_task(board, task.remote_id))["laneId"] == lanes["Done"]
        assert (await conn.get_task(board, task.remote_id)).values["status"] == Status.DONE
        served.take()
        await conn.create_task(board, {"title": "t2", "status": "done"})
        assert served.take() == [("POST", TASKS_ROUTE)]  # known now
        # A lane added on the board: the same.
        backlog = await conn.client.create_lane(board, "Backlog")
        served.take()
        blocked = await conn.create_task(board, {"title": "t3", "status": "blocked"})
        assert served.take() == [("GET", LANES_ROUTE), ("POST", TASKS_ROUTE)]
        assert blocked.values["status"] == Status.BLOCKED
        assert (await conn.client.get_task(board, blocked.remote_id))["laneId"] == backlog["id"]
        assert (await conn.get_task(board, blocked.remote_id)).values == blocked.values
    finally:
        await conn.aclose()


async def test_a_deleted_lane_is_resolved_again_when_the_write_is_refused(
    conn: AgentKanbanConnector, rec: Recorder, board: str
) -> None:
    lanes = await lane_ids(conn, board)
    task = await conn.create_task(board, {"title": "t", "status": "todo"})  # caches the lanes
    # "Done" deleted and made again behind the connector's back: same name, a new id.
    await conn.http.delete(f"boards/{board}/lanes/{lanes['Done']}")
    new_done = (await conn.client.create_lane(board, "Done"))["id"]
    rec.clear()
    done = await conn.update_task(board, task.remote_id, {"status": "done"})
    assert [(m, p.rsplit("/", 1)[1], b) for m, p, b in rec.sent] == [
        ("POST", "move", {"laneId": lanes["Done"]}),  # refused: no such lane
        ("GET", "lanes", None),
        ("POST", "move", {"laneId": new_done}),
    ]
    assert done.values == {"status": Status.DONE}
    assert (await conn.client.get_task(board, task.remote_id))["laneId"] == new_done
    rec.clear()
    await conn.create_task(board, {"title": "t2", "status": "done"})
    assert [(m, b["laneId"]) for m, _, b in rec.sent] == [("POST", new_done)]
    # A refusal that is not about the lane is raised as it is, after the one re-read.
    await conn.client.delete_task(board, task.remote_id)
    rec.clear()
    with pytest.raises(NotFound):
        await conn.update_task(board, task.remote_id, {"status": "todo"})
    assert [(m, p.rsplit("/", 1)[1]) for m, p, _ in rec.sent] == [("POST", "move"), ("GET", "lanes")]


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


async def test_a_registration_whose_secret_was_lost_is_replaced_when_asked(
    hooked: tuple[AgentKanbanFake, AgentKanbanConnector], webhook_receiver: WebhookReceiver
) -> None:
    fake, conn = hooked
    board = fake.create_board("hooks")
    url = webhook_receiver.url + "/hook"
    lost = await conn.register_webhook(board, url, None)
    rotated = await conn.register_webhook(board, url, None, rotate=True)
    assert rotated is not None and rotated != lost
    hooks = await conn.client.list_webhooks()
    assert len(hooks) == 1  # replaced, not added to
    await conn.create_task(board, {"title": "signed anew"})
    [hook] = webhook_receiver.wait_for(1)
    conn.verify_webhook(hook.headers, hook.body, [rotated])
    with pytest.raises(BadSignature):
        conn.verify_webhook(hook.headers, hook.body, [lost or ""])


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


async def test_a_delivery_carries_its_task_so_an_echo_costs_no_get(
    hooked: tuple[AgentKanbanFake, AgentKanbanConnector], webhook_receiver: WebhookReceiver
) -> None:
    """A created or updated task's delivery holds its signed detail: `event_task` reads the task
    from it (no request); a delivery older than a version seen since is left to a GET."""
    fake, conn = hooked
    board = fake.create_board("carried")
    await conn.register_webhook(board, webhook_receiver.url + "/hook", None)
    task = await conn.create_task(board, {"title": "carried", "status": "in_progress", "priority": "high"})
    await conn.update_task(board, task.remote_id, {"title": "carried on", "status": "done"})
    # Three deliveries: the creation, the PATCH of the title, the move to the done lane.
    created, patched, updated = (
        conn.parse_webhook(h.headers, h.body)[0] for h in webhook_receiver.wait_for(3)
    )
    assert (created.kind, patched.kind, updated.kind) == ("created", "updated", "updated")
    served = len(fake.requests.entries)

    got = await conn.event_task(updated)

    assert len(fake.requests.entries) == served, "read without a request"
    assert got is not None and got.remote_id == task.remote_id
    fresh = await conn.get_task(board, task.remote_id)
    assert got.values == fresh.values and got.updated_at == fresh.updated_at
    assert got.values["title"] == "carried on" and got.values["status"] == "done"
    # The earlier deliveries, processed late, are older than the version seen: a GET tells.
    assert await conn.event_task(patched) is None
    assert await conn.event_task(created) is None
    # A delivery whose data lacks a key of a detail is a trigger: a key missing is no field
    # cleared. Deletions and comments carry nothing to read; a detail of another task is refused.
    payload = json.loads(webhook_receiver.received[2].body)  # the move's delivery
    del payload["data"]["description"]
    (partial,) = conn.parse_webhook({}, json.dumps(payload).encode())
    assert partial.kind == "updated" and partial.detail is None and await conn.event_task(partial) is None
    assert await conn.event_task(dataclasses.replace(updated, detail=None)) is None
    assert await conn.event_task(dataclasses.replace(updated, remote_id="another")) is None


def test_a_hostile_signature_header_is_refused_never_a_crash(fake: AgentKanbanFake) -> None:
    conn = AgentKanbanConnector(make_settings(fake))
    secret, body = "whsec_test", b'{"id":"d1","event":"task.updated","boardId":"b1","data":{"id":"t1"}}'
    now = 1_800_000_000
    conn.clock = lambda: now
    ts = str(now)
    conn.verify_webhook({"X-AgentKanban-Signature": f"t={ts},v1={sign(secret, ts, body)}"}, body, [secret])
    # Headers arrive decoded as latin-1: compare_digest on a non-ASCII str raised TypeError (a 500).
    for header in (
        f"t={ts},v1=\xe9",
        f"t={ts},v1=" + "\xe9" * 64,
        f"t={ts},v1=\ud800",
        f"t={ts},v1=\xe9,v1={sign(secret, ts, body).upper()}x",
    ):
        with pytest.raises(BadSignature, match="does not match"):
            conn.verify_webhook({"X-AgentKanban-Signature": header}, body, [secret])
    # A timestamp that is not plain unix seconds is refused before anything is computed.
    for stamp in ("\xe9", "\u0661" * 10, "\xb9\xb2", "1_800_000_000", " ", "1.8e9"):
        with pytest.raises(BadSignature, match="timestamp"):
            conn.verify_webhook(
                {"X-AgentKanban-Signature": f"t={stamp},v1={sign(secret, stamp, body)}"}, body, [secret]
            )


def test_the_delivery_id_is_the_signed_body_id_and_the_event_may_be_a_header(fake: AgentKanbanFake) -> None:
    conn = AgentKanbanConnector(make_settings(fake))
    body = json.dumps({"id": "dlv1", "event": "task.updated", "boardId": "b1", "data": {"id": "t1"}}).encode()
    # X-AgentKanban-Delivery is outside the signed "<t>.<body>": a replay could change it at will.
    (event,) = conn.parse_webhook({"X-AgentKanban-Delivery": "forged"}, body)
    assert event.delivery_id == "dlv1"
    headers = {
        "x-agentkanban-event": "task.deleted",
        "x-agentkanban-signature": "t=1,v1=00",
        "x-agentkanban-delivery": "forged",
    }
    bare = json.dumps({"id": "dlv2", "boardId": "b1", "data": {"id": "t1"}}).encode()
    kept = recordable_headers(headers, conn.webhook_headers)
    assert kept == {"x-agentkanban-event": "task.deleted"}
    (event,) = conn.parse_webhook(kept, bare)
    assert (event.kind, event.remote_id, event.delivery_id) == ("deleted", "t1", "dlv2")


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
