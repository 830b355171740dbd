"""Contract tests of the runs connector (PostHog Tasks) against its fake, over real loopback HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio

import bridge.mapping
from bridge.mapping import MappingError, PlatformMapping
from bridge.model import Priority, Status
from connectors.base import (
    AuthFailed,
    BadSignature,
    Connector,
    ConnectorSettings,
    GoneFromView,
    NotFound,
    PeopleMap,
    Permanent,
    RateLimited,
    Retryable,
    writes_fail_fast,
)
from connectors.runs.client import RunsClient, UsageLimitExceeded
from connectors.runs.connector import RunsConnector
from connectors.runs.fake import RunsFake
from tests.contract.recording import Recorder

TOKEN = "phx_connector_main"
READ_ONLY = "phx_connector_read_only"
TEAMMATE = "phx_connector_teammate"  # Sam's key: a person on the same team, not the bridge
SCOPE = "1"
LIST = "/api/projects/{project_id}/tasks/"
ONE = "/api/projects/{project_id}/tasks/{task_id}/"
RUN = "/api/projects/{project_id}/tasks/{task_id}/run/"


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[RunsFake]:
    fake = RunsFake(token=TOKEN, users=[f"Sam:{TEAMMATE}"])
    fake.add_key(READ_ONLY, scopes=["task:read"])
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def raw(fake: RunsFake) -> Iterator[httpx.Client]:
    """A plain client of project 1's tasks, for seeding and for moving runs along."""
    with httpx.Client(
        base_url=f"{fake.url}/api/projects/1/tasks/", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    ) as c:
        yield c


@pytest.fixture(autouse=True)
def clean(fake: RunsFake, raw: httpx.Client) -> None:
    assert raw.post(f"{fake.url}/_fake/reset").status_code == 200


Make = Callable[..., RunsConnector]


@pytest_asyncio.fixture
async def make(fake: RunsFake) -> AsyncIterator[Make]:
    made: list[RunsConnector] = []

    def build(
        *, token: str = TOKEN, mapping: PlatformMapping | None = None, **settings: Any
    ) -> RunsConnector:
        observer = settings.pop("observer", None)
        conn = RunsConnector(
            ConnectorSettings(
                name="runs1",
                platform="runs",
                base_url=fake.url + "/api",
                mapping=mapping or bridge.mapping.load("runs"),
                people=PeopleMap("runs1", {}),
                token=token,
                backoff=0.01,
                **settings,
            ),
            observer=observer,
        )
        made.append(conn)
        return conn

    yield build
    for conn in made:
        await conn.aclose()


@pytest_asyncio.fixture
async def conn(make: Make) -> RunsConnector:
    return make()


@pytest.fixture(scope="module")
def teammate(fake: RunsFake) -> Iterator[httpx.Client]:
    """Sam's client of project 1's tasks: what Sam makes is Sam's (created_by)."""
    with httpx.Client(
        base_url=f"{fake.url}/api/projects/1/tasks/",
        headers={"Authorization": f"Bearer {TEAMMATE}"},
        timeout=10,
    ) as c:
        yield c


def seed(raw: httpx.Client, n: int, **fields: Any) -> list[str]:
    ids = []
    for i in range(n):
        resp = raw.post("", json={"title": f"Task {i}", "description": f"body {i}", **fields})
        assert resp.status_code == 201, resp.text
        ids.append(resp.json()["id"])
    return ids


def call(raw: httpx.Client, method: str, path: str, **kw: Any) -> httpx.Response:
    """A direct call to the fake, outside the connector (blocking: the fake serves from its own thread)."""
    return raw.request(method, path, **kw)


def set_run_status(raw: httpx.Client, task_id: str, status: str) -> None:
    run = raw.get(f"{task_id}/").json()["latest_run"]
    assert run is not None
    assert raw.patch(f"{task_id}/runs/{run['id']}/", json={"status": status}).status_code == 200


# -- shape ------------------------------------------------------------------------------------------


def test_capabilities_are_declared_honestly(conn: RunsConnector) -> None:
    caps = conn.capabilities
    assert isinstance(conn, Connector)
    assert caps.fields == {"title", "description", "status", "archived"}
    assert caps.writable == {
        "title",
        "description",
        "archived",
        "status",
    }  # status: start_run_on values start a run
    assert (caps.webhooks, caps.comments, caps.incremental) == (False, False, False)
    assert (caps.delete, caps.archive, caps.subtasks, caps.todos) == (True, True, False, False)


async def test_check_reads_one_page(conn: RunsConnector, raw: httpx.Client, fake: RunsFake) -> None:
    seed(raw, 3)
    fake.requests.clear()
    assert "3 tasks" in await conn.check(SCOPE)
    assert fake.requests.count() == 1


# -- list -------------------------------------------------------------------------------------------


async def test_list_walks_every_page_and_sees_the_whole_scope(
    conn: RunsConnector, raw: httpx.Client, fake: RunsFake
) -> None:
    ids = seed(raw, 230)
    assert call(raw, "PATCH", f"{ids[0]}/", json={"archived": True}).status_code == 200  # hidden by default
    fake.requests.clear()
    listing = await conn.list_tasks(SCOPE, None)
    assert fake.requests.count("GET", LIST) == 3  # 100 + 100 + 30
    assert [t.remote_id for t in listing.tasks] == list(reversed(ids))  # newest first, no duplicates
    assert listing.all_ids == frozenset(ids)
    assert listing.watermark == {}
    assert listing.deleted_ids == frozenset()
    by_id = {t.remote_id: t for t in listing.tasks}
    assert by_id[ids[0]].values["archived"] is True
    task = by_id[ids[5]]
    assert task.values == {
        "title": "Task 5",
        "description": "body 5",
        "status": Status.TODO,
        "archived": False,
    }
    assert task.scope == SCOPE and task.created_at is not None and task.updated_at is not None
    assert task.url == f"{fake.url}/project/1/tasks/{ids[5]}"
    # No updated-since filter: the next poll lists everything again, with the same content hashes.
    again = await conn.list_tasks(SCOPE, listing.watermark)
    assert [t.content_hash for t in again.tasks] == [t.content_hash for t in listing.tasks]


async def test_empty_project_is_a_complete_listing(conn: RunsConnector) -> None:
    listing = await conn.list_tasks(SCOPE, {})
    assert listing.tasks == [] and listing.all_ids == frozenset()


async def test_task_created_while_paging_is_deduplicated_and_listing_not_complete(
    make: Make, raw: httpx.Client, fake: RunsFake
) -> None:
    ids = seed(raw, 150)
    done: list[str] = []

    def create_between_pages(name: str, method: str, status: str, seconds: float) -> None:
        if not done:  # after the first page: a newer task pushes every task one place down
            done.append(seed(raw, 1)[0])

    conn = make(observer=create_between_pages)
    listing = await conn.list_tasks(SCOPE, None)
    seen = [t.remote_id for t in listing.tasks]
    assert len(seen) == len(set(seen)) == 150  # page 2 repeated page 1's last task: dropped
    assert set(seen) == set(ids)
    assert listing.all_ids is None  # count moved between pages: no deletion may be inferred


async def test_task_deleted_while_paging_makes_listing_not_complete(
    make: Make, raw: httpx.Client, fake: RunsFake
) -> None:
    ids = seed(raw, 150)
    done: list[bool] = []

    def delete_between_pages(name: str, method: str, status: str, seconds: float) -> None:
        if not done:  # a task of page 1 goes: page 2 shifts up and one task is never seen
            done.append(True)
            assert call(raw, "DELETE", f"{ids[-1]}/").status_code == 204

    conn = make(observer=delete_between_pages)
    listing = await conn.list_tasks(SCOPE, None)
    assert len(listing.tasks) == 149  # one task skipped by the shift (the deleted one was seen)
    assert listing.all_ids is None


# -- get, status from the latest run ------------------------------------------------------------------


async def test_status_is_the_latest_runs_status(conn: RunsConnector, raw: httpx.Client) -> None:
    (task_id,) = seed(raw, 1)
    assert (await conn.get_task(SCOPE, task_id)).values["status"] == Status.TODO  # no run
    assert call(raw, "POST", f"{task_id}/runs/", json={}).status_code == 201  # a run, not started
    assert (await conn.get_task(SCOPE, task_id)).values["status"] == Status.TODO
    expected = {
        "queued": Status.IN_PROGRESS,
        "in_progress": Status.IN_PROGRESS,
        "completed": Status.DONE,
        "failed": Status.BLOCKED,
        "cancelled": Status.CANCELLED,
        "not_started": Status.TODO,
    }
    for run_status, canonical in expected.items():
        set_run_status(raw, task_id, run_status)
        assert (await conn.get_task(SCOPE, task_id)).values["status"] == canonical, run_status


async def test_get_unknown_task_is_gone_from_view_not_a_deletion(conn: RunsConnector) -> None:
    # PostHog's 404 does not tell a deleted task from one the key may no longer see.
    with pytest.raises(GoneFromView) as info:
        await conn.get_task(SCOPE, str(uuid.uuid4()))
    assert info.value.status == 404 and not isinstance(info.value, NotFound)


async def test_unknown_project_is_permanent_not_a_deletion(conn: RunsConnector) -> None:
    with pytest.raises(Permanent) as info:
        await conn.get_task("999", str(uuid.uuid4()))
    assert not isinstance(info.value, NotFound | GoneFromView)
    assert "Project not found." in str(info.value)
    for attempt in (conn.list_tasks("999", None), conn.create_task("999", {"title": "x"}), conn.check("999")):
        with pytest.raises(Permanent) as info:
            await attempt
        assert not isinstance(info.value, NotFound) and "project 999 not found" in str(info.value)


# -- create, update, delete, archive ------------------------------------------------------------------


async def test_create_sends_writable_fields_only(make: Make) -> None:
    rec = Recorder()
    conn = make(transport=rec)
    task = await conn.create_task(
        SCOPE,
        {
            "title": "Ship it",
            "description": "Details\n\nsynced by taskbridge",
            "archived": False,
            "priority": Priority.HIGH,
            "assignees": frozenset({"alice"}),
            "tags": frozenset({"x"}),
            "status": "todo",
        },
    )
    assert task.values == {
        "title": "Ship it",
        "description": "Details\n\nsynced by taskbridge",
        "status": Status.TODO,
        "archived": False,
    }
    assert rec.writes() == [
        (
            "POST",
            "/api/projects/1/tasks/",
            {
                "title": "Ship it",
                "title_manually_set": True,
                "description": "Details\n\nsynced by taskbridge",
                "archived": False,
            },
        )
    ]
    assert (await conn.get_task(SCOPE, task.remote_id)).values == task.values


async def test_create_in_progress_starts_a_run(make: Make, raw: httpx.Client) -> None:
    rec = Recorder()
    conn = make(transport=rec)
    task = await conn.create_task(SCOPE, {"title": "Go", "status": Status.IN_PROGRESS})
    assert task.values["status"] == Status.IN_PROGRESS
    assert [(m, p) for m, p, _ in rec.writes()] == [
        ("POST", "/api/projects/1/tasks/"),
        ("POST", f"/api/projects/1/tasks/{task.remote_id}/run/"),
    ]
    assert call(raw, "GET", f"{task.remote_id}/").json()["latest_run"]["status"] == "queued"


async def test_blank_title_on_create_is_generated_by_the_platform(conn: RunsConnector) -> None:
    task = await conn.create_task(SCOPE, {"title": "  ", "description": "First line\nsecond"})
    assert task.values["title"] == "First line"  # documented: shows up as a remote edit


async def test_update_is_partial(make: Make, raw: httpx.Client, fake: RunsFake) -> None:
    (task_id,) = seed(raw, 1)
    rec = Recorder()
    conn = make(transport=rec)
    task = await conn.update_task(SCOPE, task_id, {"title": "Renamed"})
    assert task.values == {
        "title": "Renamed",
        "description": "body 0",
        "status": Status.TODO,
        "archived": False,
    }
    assert rec.sent == [
        ("PATCH", f"/api/projects/1/tasks/{task_id}/", {"title": "Renamed", "title_manually_set": True})
    ]
    rec.sent.clear()
    task = await conn.update_task(SCOPE, task_id, {"description": "New body", "archived": True})
    assert task.values["description"] == "New body" and task.values["archived"] is True
    assert task.values["title"] == "Renamed"
    assert rec.sent == [
        ("PATCH", f"/api/projects/1/tasks/{task_id}/", {"description": "New body", "archived": True})
    ]
    rec.sent.clear()
    # Fields this platform does not hold are not written; the task is read back as it is.
    task = await conn.update_task(
        SCOPE, task_id, {"priority": "urgent", "tags": ["a"], "due_date": "2026-01-02"}
    )
    assert rec.sent == [("GET", f"/api/projects/1/tasks/{task_id}/", None)]
    assert task.values["title"] == "Renamed"


async def test_status_write_never_patches_and_starts_a_run_only_when_idle(
    make: Make, raw: httpx.Client
) -> None:
    (task_id,) = seed(raw, 1)
    rec = Recorder()
    conn = make(transport=rec)
    # A status outside start_run_on does nothing on this platform.
    task = await conn.update_task(SCOPE, task_id, {"status": Status.DONE})
    assert task.values["status"] == Status.TODO
    assert rec.writes() == []
    # in_progress starts a run; the answer carries the new latest run.
    task = await conn.update_task(SCOPE, task_id, {"status": Status.IN_PROGRESS})
    assert task.values["status"] == Status.IN_PROGRESS
    assert [(m, p) for m, p, _ in rec.writes()] == [("POST", f"/api/projects/1/tasks/{task_id}/run/")]
    assert rec.writes()[0][2] == {"mode": "background"}
    # Already queued (then in progress): no second run.
    for run_status in ("queued", "in_progress"):
        rec.sent.clear()
        if run_status != "queued":
            set_run_status(raw, task_id, run_status)
        task = await conn.update_task(SCOPE, task_id, {"status": Status.IN_PROGRESS, "title": "T"})
        assert [m for m, _, _ in rec.writes()] == ["PATCH"]
        assert task.values["status"] == Status.IN_PROGRESS
    # Finished: moving it to in_progress again starts a new run.
    set_run_status(raw, task_id, "completed")
    rec.sent.clear()
    task = await conn.update_task(SCOPE, task_id, {"status": Status.IN_PROGRESS})
    assert task.values["status"] == Status.IN_PROGRESS
    assert [(m, p) for m, p, _ in rec.sent] == [
        ("GET", f"/api/projects/1/tasks/{task_id}/"),
        ("POST", f"/api/projects/1/tasks/{task_id}/run/"),
    ]
    runs = call(raw, "GET", f"{task_id}/runs/").json()
    assert [r["status"] for r in runs["results"]] == ["queued", "completed"]


async def test_start_run_on_is_configurable(make: Make, raw: httpx.Client) -> None:
    (task_id,) = seed(raw, 1)
    rec = Recorder()
    never = make(transport=rec, mapping=bridge.mapping.load("runs", {"options": {"start_run_on": []}}))
    task = await never.update_task(SCOPE, task_id, {"status": Status.IN_PROGRESS})
    assert task.values["status"] == Status.TODO and rec.writes() == []
    assert never.roundtrip({"status": Status.IN_PROGRESS}) == {}
    on_done = make(mapping=bridge.mapping.load("runs", {"options": {"start_run_on": ["done"]}}))
    task = await on_done.update_task(SCOPE, task_id, {"status": Status.DONE})
    assert task.values["status"] == Status.IN_PROGRESS  # a queued run reads as in_progress
    assert on_done.roundtrip({"status": "done"}) == {"status": Status.IN_PROGRESS}
    with pytest.raises(MappingError, match="start_run_on"):
        make(mapping=bridge.mapping.load("runs", {"options": {"start_run_on": ["started"]}}))
    with pytest.raises(MappingError, match="status"):
        make(mapping=PlatformMapping("runs", {}))


async def test_delete_is_soft_and_then_not_found(
    conn: RunsConnector, raw: httpx.Client, fake: RunsFake
) -> None:
    (task_id,) = seed(raw, 1)
    fake.requests.clear()
    await conn.delete_task(SCOPE, task_id)
    assert fake.requests.count("DELETE", ONE, status=204) == 1
    with pytest.raises(GoneFromView):  # a read's 404: deleted or out of view, PostHog won't say
        await conn.get_task(SCOPE, task_id)
    with pytest.raises(NotFound):  # a write's 404: for the engine to confirm
        await conn.delete_task(SCOPE, task_id)
    with pytest.raises(NotFound):
        await conn.update_task(SCOPE, task_id, {"title": "x"})
    with pytest.raises(NotFound):
        await conn.archive_task(SCOPE, task_id)
    assert (await conn.list_tasks(SCOPE, None)).all_ids == frozenset()


async def test_archive_patches_archived_and_stays_listed(
    conn: RunsConnector, raw: httpx.Client, fake: RunsFake
) -> None:
    (task_id,) = seed(raw, 1)
    fake.requests.clear()
    task = await conn.archive_task(SCOPE, task_id)
    assert task.values["archived"] is True
    assert fake.requests.by_route() == {f"PATCH {ONE}": 1}
    listing = await conn.list_tasks(SCOPE, None)
    assert listing.all_ids == {task_id} and listing.tasks[0].values["archived"] is True


# -- what the key's user sees and controls (PostHog's visibility rules) --------------------------------


async def test_a_teammates_private_task_is_out_of_view(
    conn: RunsConnector, raw: httpx.Client, teammate: httpx.Client, fake: RunsFake
) -> None:
    (mine,) = seed(raw, 1)
    (theirs,) = seed(teammate, 1, title="Sam's own")
    listing = await conn.list_tasks(SCOPE, None)
    assert listing.all_ids == {mine}  # a complete listing of what the key sees
    with pytest.raises(GoneFromView) as info:
        await conn.get_task(SCOPE, theirs)
    assert not isinstance(info.value, NotFound)
    assert call(teammate, "GET", f"{theirs}/").status_code == 200  # it exists all the same


async def test_a_task_filed_out_of_view_is_gone_from_view_not_deleted(
    conn: RunsConnector, raw: httpx.Client, fake: RunsFake
) -> None:
    (task_id,) = seed(raw, 1)
    assert (await conn.list_tasks(SCOPE, None)).all_ids == {task_id}
    fake.set_task(task_id, channel=fake.add_channel("sam's", owner=fake.teammate, personal=True))
    assert (await conn.list_tasks(SCOPE, None)).all_ids == frozenset()
    with pytest.raises(GoneFromView):
        await conn.get_task(SCOPE, task_id)


async def test_a_teammates_experiments_task_is_read_but_not_written(
    conn: RunsConnector, teammate: httpx.Client, fake: RunsFake
) -> None:
    (task_id,) = seed(teammate, 1, origin_product="experiments")
    listing = await conn.list_tasks(SCOPE, None)
    assert listing.all_ids == {task_id}
    task = await conn.get_task(SCOPE, task_id)
    assert task.values["title"] == "Task 0"
    fake.requests.clear()
    with pytest.raises(NotFound) as info:
        await conn.update_task(SCOPE, task_id, {"title": "Renamed by the bridge"})
    assert info.value.status == 404 and "may change" in str(info.value)
    with pytest.raises(NotFound):
        await conn.update_task(SCOPE, task_id, {"status": Status.IN_PROGRESS})  # GET 200, then run/ 404
    with pytest.raises(NotFound):
        await conn.archive_task(SCOPE, task_id)
    with pytest.raises(NotFound):
        await conn.delete_task(SCOPE, task_id)
    assert (
        fake.requests.count("GET", ONE, status=200) == 1 and fake.requests.count("POST", RUN, status=404) == 1
    )
    after = call(teammate, "GET", f"{task_id}/").json()
    assert (after["title"], after["archived"], after["latest_run"]) == ("Task 0", False, None)
    assert (await conn.get_task(SCOPE, task_id)).values == task.values  # still in view


async def test_usage_limit_run_is_rate_limited_without_retry_after(
    conn: RunsConnector, raw: httpx.Client, fake: RunsFake
) -> None:
    (task_id,) = seed(raw, 1)
    reset_at = datetime(2031, 2, 1, tzinfo=UTC)
    fake.exceed_usage_limit(reset_at=reset_at)
    fake.requests.clear()
    started = time.monotonic()
    with pytest.raises(RateLimited) as info:
        await conn.update_task(SCOPE, task_id, {"status": Status.IN_PROGRESS})
    assert time.monotonic() - started < 1.0  # no inline wait
    exc = info.value
    assert isinstance(exc, UsageLimitExceeded) and exc.retry_after is None and exc.reset_at == reset_at
    assert exc.status == 429 and "usage limit" in str(exc) and "usage_limit_exceeded" in str(exc)
    assert fake.requests.count("POST", RUN, status=429) == 1  # not resent
    with writes_fail_fast(), pytest.raises(UsageLimitExceeded):
        await conn.update_task(SCOPE, task_id, {"status": Status.IN_PROGRESS})
    # Everything else still works; the task has no run.
    assert (await conn.update_task(SCOPE, task_id, {"title": "Edited"})).values["status"] == Status.TODO
    fake.clear_usage_limit()
    assert (await conn.update_task(SCOPE, task_id, {"status": Status.IN_PROGRESS})).values[
        "status"
    ] == Status.IN_PROGRESS


async def test_usage_limit_on_create_raises_after_the_task_is_made(
    make: Make, raw: httpx.Client, fake: RunsFake
) -> None:
    fake.exceed_usage_limit(reset_at=None)
    conn = make()
    with pytest.raises(UsageLimitExceeded):
        await conn.create_task(SCOPE, {"title": "Start me", "status": Status.IN_PROGRESS})
    (task,) = call(raw, "GET", "").json()["results"]  # made, without a run: a retried create finds it
    assert (task["title"], task["latest_run"]) == ("Start me", None)


# -- round trip -------------------------------------------------------------------------------------


ROUNDTRIP_CASES: list[dict[str, Any]] = [
    {"title": "Plain", "description": "", "archived": False},
    {"title": "x" * 300, "description": "long title"},
    {
        "title": "  padded  ",
        "description": "\n  body with spaces \n\nsynced by taskbridge · 01J00000000000000000000000\n",
    },
    {"title": " " + "y" * 254 + " z", "description": "cut inside, then trimmed"},
    {"title": "Ünïcødé ✓", "description": "line 1\nline 2", "archived": True, "status": Status.DONE},
    {
        "title": "Started",
        "status": Status.IN_PROGRESS,
        "priority": Priority.URGENT,
        "assignees": frozenset({"alice"}),
        "tags": frozenset({"t"}),
        "due_date": "2026-03-20",
    },
    {"title": "Blocked one", "status": "blocked", "archived": False},
]


@pytest.mark.parametrize("values", ROUNDTRIP_CASES)
async def test_roundtrip_is_what_create_and_update_read_back(
    conn: RunsConnector, raw: httpx.Client, values: dict[str, Any]
) -> None:
    expected = conn.roundtrip(values)
    assert set(expected) <= conn.capabilities.fields

    def restricted(task_values: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in task_values.items() if k in expected}

    created = await conn.create_task(SCOPE, values)
    assert restricted(created.values) == expected
    assert restricted((await conn.get_task(SCOPE, created.remote_id)).values) == expected
    (other,) = seed(raw, 1)
    updated = await conn.update_task(SCOPE, other, values)
    assert restricted(updated.values) == expected
    assert restricted((await conn.get_task(SCOPE, other)).values) == expected


def test_roundtrip_losses(conn: RunsConnector) -> None:
    assert conn.roundtrip({"title": "a" * 300})["title"] == "a" * 255
    assert conn.roundtrip({"title": "a" * 254 + " b"})["title"] == "a" * 254  # cut, then trimmed
    assert conn.roundtrip({"description": "  text \n"}) == {"description": "text"}
    # Status: a start_run_on value reads back as a queued run; any other makes no claim.
    assert conn.roundtrip({"status": "in_progress"}) == {"status": Status.IN_PROGRESS}
    assert conn.roundtrip({"status": "done", "title": "t"}) == {"title": "t"}
    assert conn.roundtrip({"priority": "high", "assignees": ["a"], "tags": ["b"], "archived": True}) == {
        "archived": True
    }


# -- find by marker ---------------------------------------------------------------------------------


async def test_find_by_marker_searches_the_scope(
    conn: RunsConnector, raw: httpx.Client, fake: RunsFake
) -> None:
    marker = "synced by taskbridge · 01JABCDEFGHJKMNPQRSTVWXYZ0"
    seed(raw, 3)
    call(raw, "POST", "", json={"title": marker, "description": "marker only in the title"})
    target = await conn.create_task(
        SCOPE, {"title": "Mirror", "description": f"Body\n\n{marker}", "archived": True}
    )
    fake.requests.clear()
    found = await conn.find_by_marker(SCOPE, marker)
    assert found is not None and found.remote_id == target.remote_id
    assert fake.requests.count() == 1  # one search, not a listing of the scope
    assert await conn.find_by_marker(SCOPE, "synced by taskbridge · 01JZZZZZZZZZZZZZZZZZZZZZZZ") is None
    assert await conn.find_by_marker(SCOPE, "   ") is None


# -- no comments, no webhooks -----------------------------------------------------------------------


async def test_no_comments_and_no_webhooks(conn: RunsConnector, raw: httpx.Client, fake: RunsFake) -> None:
    (task_id,) = seed(raw, 1)
    fake.requests.clear()
    assert await conn.list_comments(SCOPE, task_id) == []
    with pytest.raises(Permanent, match="runs has no comments"):
        await conn.add_comment(SCOPE, task_id, "hello", "Alice")
    assert await conn.register_webhook(SCOPE, "http://127.0.0.1:1/hook", "s3cret") is None
    assert await conn.register_webhook(SCOPE, "http://127.0.0.1:1/hook", "s3cret") is None
    assert fake.requests.count() == 0  # none of these calls the platform
    with pytest.raises(BadSignature, match="runs has no webhooks"):
        conn.verify_webhook({"x-signature": "abc"}, b"{}", ["s3cret"])
    assert conn.parse_webhook({}, b'{"id": "x"}') == []


# -- errors -----------------------------------------------------------------------------------------


async def test_bad_token_is_auth_failed(make: Make) -> None:
    conn = make(token="phx_wrong")
    with pytest.raises(AuthFailed) as info:
        await conn.list_tasks(SCOPE, None)
    assert info.value.status == 401 and "invalid" in str(info.value)
    assert "phx_wrong" not in str(info.value)


async def test_read_only_key_gets_permanent_403_on_writes(make: Make, raw: httpx.Client) -> None:
    (task_id,) = seed(raw, 1)
    conn = make(token=READ_ONLY)
    assert (await conn.get_task(SCOPE, task_id)).values["title"] == "Task 0"
    for write in (
        conn.create_task(SCOPE, {"title": "nope"}),
        conn.update_task(SCOPE, task_id, {"title": "nope"}),
        conn.update_task(SCOPE, task_id, {"status": Status.IN_PROGRESS}),
        conn.archive_task(SCOPE, task_id),
        conn.delete_task(SCOPE, task_id),
    ):
        with pytest.raises(Permanent) as info:
            await write
        assert info.value.status == 403
        assert "API key missing required scope 'task:write'" in str(info.value)
    assert call(raw, "GET", f"{task_id}/").json()["title"] == "Task 0"


async def test_validation_error_is_permanent_with_the_platforms_message(conn: RunsConnector) -> None:
    client = RunsClient(conn.http)
    with pytest.raises(Permanent) as info:
        await client.create_task(SCOPE, {"title": "x" * 300})
    assert info.value.status == 400
    assert "title: Ensure this field has no more than 255 characters. (max_length)" in str(info.value)


async def test_429_waits_for_retry_after(conn: RunsConnector, fake: RunsFake) -> None:
    fake.faults.retry_after = 1
    fake.faults.rate_limit_burst = 1
    started = time.monotonic()
    listing = await conn.list_tasks(SCOPE, None)
    assert time.monotonic() - started >= 1.0
    assert listing.all_ids == frozenset()
    assert fake.requests.count("GET", LIST, status=429) == 1
    assert fake.requests.count("GET", LIST, status=200) == 1


async def test_transient_5xx_is_retried(make: Make, raw: httpx.Client, fake: RunsFake) -> None:
    (task_id,) = seed(raw, 1)
    fake.requests.clear()
    fake.faults.error_rate = 1.0

    def heal(name: str, method: str, status: str, seconds: float) -> None:
        fake.faults.error_rate = 0.0  # only the first attempt fails

    conn = make(observer=heal)
    assert (await conn.get_task(SCOPE, task_id)).remote_id == task_id
    assert fake.requests.count("GET", ONE, status=500) == 1
    assert fake.requests.count("GET", ONE, status=200) == 1


async def test_persistent_5xx_is_retryable(make: Make, raw: httpx.Client, fake: RunsFake) -> None:
    (task_id,) = seed(raw, 1)
    fake.requests.clear()
    fake.faults.error_rate = 1.0
    conn = make(max_retries=2)
    with pytest.raises(Retryable) as info:
        await conn.get_task(SCOPE, task_id)
    assert info.value.status == 500
    assert fake.requests.count("GET", ONE, status=500) == 3
    # A POST that got a 5xx may have happened: it is not repeated.
    fake.requests.clear()
    with pytest.raises(Retryable):
        await conn.update_task(SCOPE, task_id, {"status": Status.IN_PROGRESS})
    assert fake.requests.count("GET", ONE) == 3 and fake.requests.count("POST") == 0


async def test_timeout_is_retryable(make: Make, raw: httpx.Client, fake: RunsFake) -> None:
    fake.faults.timeout_rate = 1.0
    fake.faults.hang_seconds = 0.5
    conn = make(timeout=0.2, max_retries=1)
    started = time.monotonic()
    with pytest.raises(Retryable, match="timed out"):
        await conn.list_tasks(SCOPE, None)
    assert time.monotonic() - started < 3
