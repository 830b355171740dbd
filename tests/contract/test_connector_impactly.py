"""Contract tests of the Impactly connector against the Impactly fake, over real loopback HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from bridge.mapping import load
from bridge.model import Priority, Status
from connectors.base import (
    AuthFailed,
    BadSignature,
    ConnectorSettings,
    GoneFromView,
    NotFound,
    PeopleMap,
    Permanent,
    RateLimited,
    Retryable,
    recordable_headers,
)
from connectors.impactly.connector import FULL_LISTING_EVERY, INCREMENTAL_MAX, SKEW, ImpactlyConnector
from connectors.impactly.fake import ImpactlyFake, sign
from tests.contract.recording import Recorder

TOKEN = "imp_connector_test"
READ_ONLY = "imp_connector_reader"
TASK_ROUTE = "/api/v1/tasks/{task_id}"
PROJECT_TASKS_ROUTE = "/api/v1/projects/{project_id}/tasks"


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[ImpactlyFake]:
    server = ImpactlyFake(token=TOKEN)
    server.add_key(READ_ONLY, write=False, name="Reader")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def control(fake: ImpactlyFake) -> Iterator[httpx.Client]:
    """The harness's /_fake routes (one client: building one costs a TLS context)."""
    with httpx.Client(base_url=fake.url, timeout=5) as c:
        yield c


@pytest.fixture(autouse=True)
def clean(control: httpx.Client) -> None:
    assert control.post("/_fake/reset").status_code == 200


@pytest.fixture
def scope(fake: ImpactlyFake) -> str:
    return fake.project_id


@pytest.fixture
def people(fake: ImpactlyFake) -> dict[str, str]:
    return {
        "alice": fake.member_id("Alice Chen"),
        "bob": fake.member_id("Bob Okafor"),
        "carmen": fake.member_id("Carmen Diaz"),
    }


Make = Callable[..., ImpactlyConnector]


@pytest_asyncio.fixture
async def make(fake: ImpactlyFake, people: dict[str, str]) -> AsyncIterator[Make]:
    built: list[ImpactlyConnector] = []

    def factory(**overrides: Any) -> ImpactlyConnector:
        options: dict[str, Any] = {
            "name": "impactly1",
            "platform": "impactly",
            "base_url": fake.url + "/api/v1",
            "mapping": load("impactly"),
            "people": PeopleMap("impactly1", people),
            "token": TOKEN,
            "backoff": 0.01,
            **overrides,
        }
        connector = ImpactlyConnector(ConnectorSettings(**options))
        built.append(connector)
        return connector

    yield factory
    for connector in built:
        await connector.aclose()


@pytest_asyncio.fixture
async def conn(make: Make) -> ImpactlyConnector:
    return make()


def seed(fake: ImpactlyFake, count: int, **fields: Any) -> list[dict[str, Any]]:
    """Tasks made by a person in the web app (the fake's in-process helper)."""
    return fake.call(lambda: [fake.create_task(f"Seeded task {i:03}", **fields) for i in range(count)])


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- capabilities and reading -------------------------------------------------------------------


def test_capabilities_are_honest(conn: ImpactlyConnector) -> None:
    caps = conn.capabilities
    assert caps.fields == {"title", "description", "status", "priority", "assignees", "due_date", "parent"}
    assert caps.writable == caps.fields
    assert "tags" not in caps.fields and "archived" not in caps.fields
    assert caps.webhooks and caps.comments and caps.incremental and caps.delete and caps.subtasks
    assert not caps.archive and not caps.todos


async def test_get_task_reads_every_field(
    conn: ImpactlyConnector, fake: ImpactlyFake, scope: str, people: dict[str, str]
) -> None:
    raw = fake.call(
        lambda: fake.create_task(
            "Draft the report",
            description=None,
            priority="urgent",
            assignee_id=people["bob"],
            due_date="2026-03-20",
        )
    )
    fake.call(lambda: fake.update_task(raw["id"], status="completed"))
    task = await conn.get_task(scope, raw["id"])
    assert task.remote_id == raw["id"] and task.scope == scope
    assert task.values == {
        "title": "Draft the report",
        "description": "",
        "status": Status.DONE,
        "priority": Priority.URGENT,
        "assignees": frozenset({"bob"}),
        "due_date": date(2026, 3, 20),
    }
    assert task.updated_at is not None and task.updated_at.tzinfo is not None and task.created_at is not None

    # An assignee the people map doesn't name keeps its remote id; priority null is none.
    agent = fake.agents[TOKEN].id
    other = fake.call(lambda: fake.create_task("Unassigned", assignee_id=agent))
    values = (await conn.get_task(scope, other["id"])).values
    assert values["assignees"] == {f"impactly1:{agent}"}
    assert (
        values["priority"] is Priority.NONE and values["due_date"] is None and values["status"] is Status.TODO
    )


async def test_get_task_errors(conn: ImpactlyConnector, fake: ImpactlyFake, scope: str) -> None:
    with pytest.raises(NotFound):
        await conn.get_task(scope, str(uuid.uuid4()))
    other_project = fake.call(lambda: fake.add_project("Elsewhere"))
    elsewhere = fake.call(lambda: fake.create_task("Not ours", project_id=other_project))
    with pytest.raises(GoneFromView):
        await conn.get_task(scope, elsewhere["id"])


async def test_scope_ids_compare_case_insensitively(conn: ImpactlyConnector, fake: ImpactlyFake) -> None:
    upper = fake.project_id.upper()
    task = await conn.create_task(upper, {"title": "Shouty config"})
    assert task.scope == upper
    assert (await conn.get_task(upper, task.remote_id)).scope == upper
    listing = await conn.list_tasks(upper, None)
    assert listing.all_ids == {task.remote_id} and listing.tasks[0].scope == upper


def test_mapping_gap_is_a_clear_permanent_error(conn: ImpactlyConnector, scope: str) -> None:
    bogus = {
        "id": str(uuid.uuid4()),
        "title": "x",
        "status": "archived",
        "priority": None,
        "project_id": scope,
    }
    with pytest.raises(Permanent, match=r"status value 'archived' has no mapping"):
        conn._remote(bogus)


# -- listing ------------------------------------------------------------------------------------


async def test_full_listing_walks_every_page(conn: ImpactlyConnector, fake: ImpactlyFake, scope: str) -> None:
    seeded = seed(fake, 230)
    other_project = fake.call(lambda: fake.add_project("Elsewhere"))
    fake.call(lambda: fake.create_task("Other project", project_id=other_project))
    fake.requests.clear()
    before = datetime.now(UTC)
    listing = await conn.list_tasks(scope, None)
    assert fake.requests.count("GET", PROJECT_TASKS_ROUTE) == 3  # 100 + 100 + 30
    assert listing.all_ids == {t["id"] for t in seeded}
    assert len(listing.tasks) == 230 and listing.deleted_ids == frozenset()
    assert listing.watermark["polls"] == 0
    since = datetime.fromisoformat(listing.watermark["since"].replace("Z", "+00:00"))
    assert before - SKEW - timedelta(seconds=1) <= since <= before - SKEW + timedelta(seconds=1)


async def test_full_listing_of_a_missing_project_is_permanent_not_empty(conn: ImpactlyConnector) -> None:
    with pytest.raises(Permanent, match="project") as info:
        await conn.list_tasks(str(uuid.uuid4()), None)
    assert not isinstance(info.value, NotFound)


async def test_incremental_listing_uses_the_activity_feed(
    conn: ImpactlyConnector, fake: ImpactlyFake, scope: str
) -> None:
    a, b, c, untouched = [await conn.create_task(scope, {"title": t}) for t in "ABCD"]
    # The fake's clock, not ours: it runs ahead of real time after bursts (strictly increasing).
    mark = fake.call(fake.now)
    for n in range(3):  # a person edits A three times: one GET is enough
        fake.call(lambda n=n: fake.update_task(a.remote_id, title=f"A v{n}"))
    fake.call(lambda: fake.add_comment(b.remote_id, "a comment counts as a change of its task"))
    await conn.delete_task(scope, c.remote_id)
    other_project = fake.call(lambda: fake.add_project("Elsewhere"))
    fake.call(lambda: fake.create_task("Other project", project_id=other_project))
    fake.requests.clear()

    started = datetime.now(UTC)
    listing = await conn.list_tasks(scope, {"since": iso(mark), "polls": 3})
    assert listing.all_ids is None
    assert {t.remote_id for t in listing.tasks} == {a.remote_id, b.remote_id}
    assert next(t for t in listing.tasks if t.remote_id == a.remote_id).values["title"] == "A v2"
    assert listing.deleted_ids == {c.remote_id}
    assert untouched.remote_id not in {t.remote_id for t in listing.tasks}
    assert listing.watermark["polls"] == 4
    since = datetime.fromisoformat(listing.watermark["since"].replace("Z", "+00:00"))
    assert since <= started - SKEW + timedelta(milliseconds=1)
    assert fake.requests.count("GET", "/api/v1/activity") == 1
    assert fake.requests.count("GET", TASK_ROUTE) == 2  # A and B once each; C known deleted
    assert fake.requests.count("GET", PROJECT_TASKS_ROUTE) == 0


async def test_incremental_feed_pages_and_duplicates(
    conn: ImpactlyConnector, fake: ImpactlyFake, scope: str
) -> None:
    task = await conn.create_task(scope, {"title": "Busy"})
    mark = datetime.now(UTC) - timedelta(seconds=1)
    fake.call(lambda: [fake.update_task(task.remote_id, title=f"Busy {i}") for i in range(150)])
    fake.requests.clear()
    listing = await conn.list_tasks(scope, {"since": iso(mark), "polls": 1})
    assert fake.requests.count("GET", "/api/v1/activity") == 2  # 151 entries: two pages of 100
    assert fake.requests.count("GET", TASK_ROUTE) == 1
    assert [t.values["title"] for t in listing.tasks] == ["Busy 149"]


async def test_a_feed_naming_too_many_tasks_is_left_after_the_page_that_shows_it(
    conn: ImpactlyConnector, fake: ImpactlyFake, scope: str
) -> None:
    """A bulk import's feed can hold a million entries: once a page takes it past INCREMENTAL_MAX
    tasks the rest is not read (nor held); the full listing follows at once."""
    mark = datetime.now(UTC) - timedelta(seconds=1)
    seed(fake, 3 * INCREMENTAL_MAX)  # 300 creations: three pages of the feed
    fake.requests.clear()
    listing = await conn.list_tasks(scope, {"since": iso(mark), "polls": 1})
    assert fake.requests.count("GET", "/api/v1/activity") == 2  # 100 tasks, then 200: enough
    assert listing.all_ids is not None and len(listing.all_ids) == 3 * INCREMENTAL_MAX
    assert listing.watermark["polls"] == 0


async def test_a_task_deleted_after_the_feed_was_read_is_reported_deleted(
    conn: ImpactlyConnector, fake: ImpactlyFake, scope: str
) -> None:
    task = await conn.create_task(scope, {"title": "Short-lived"})
    mark = iso(datetime.now(UTC) - timedelta(seconds=1))
    original = conn.client.get_task

    async def get_after_delete(task_id: str) -> dict[str, Any]:
        fake.call(lambda: fake.delete_task(task_id) if task_id in fake.tasks else None)
        return await original(task_id)

    conn.client.get_task = get_after_delete  # type: ignore[method-assign]
    # The feed read first says "created"; by the time of the GET the task is gone.
    listing = await conn.list_tasks(scope, {"since": mark, "polls": 1})
    assert listing.deleted_ids == {task.remote_id} and listing.tasks == []


async def test_every_tenth_poll_and_a_bad_watermark_list_in_full(
    conn: ImpactlyConnector, fake: ImpactlyFake, scope: str
) -> None:
    seed(fake, 3)
    recent = iso(datetime.now(UTC))
    for watermark in (
        {"since": recent, "polls": FULL_LISTING_EVERY - 1},
        {"since": "yesterday-ish"},
        {},
        None,
    ):
        fake.requests.clear()
        listing = await conn.list_tasks(scope, watermark)
        assert listing.all_ids is not None and len(listing.all_ids) == 3, watermark
        assert listing.watermark["polls"] == 0
        assert fake.requests.count("GET", "/api/v1/activity") == 0
    fake.requests.clear()
    listing = await conn.list_tasks(scope, {"since": recent, "polls": FULL_LISTING_EVERY - 2})
    assert listing.all_ids is None and listing.watermark["polls"] == FULL_LISTING_EVERY - 1


async def test_many_changes_switch_to_a_full_listing(
    conn: ImpactlyConnector, fake: ImpactlyFake, scope: str
) -> None:
    mark = iso(datetime.now(UTC) - timedelta(seconds=1))
    seed(fake, 101)
    fake.requests.clear()
    listing = await conn.list_tasks(scope, {"since": mark, "polls": 2})
    assert listing.all_ids is not None and len(listing.all_ids) == 101
    assert fake.requests.count("GET", TASK_ROUTE) == 0
    assert fake.requests.count("GET", PROJECT_TASKS_ROUTE) == 2


# -- writing ------------------------------------------------------------------------------------


async def test_create_posts_then_patches_a_non_default_status(
    make: Make, fake: ImpactlyFake, scope: str, people: dict[str, str]
) -> None:
    recorder = Recorder()
    conn = make(transport=recorder)
    task = await conn.create_task(
        scope,
        {
            "title": "Ship it",
            "description": "Body\n\nmarker",
            "status": "done",
            "priority": "high",
            "assignees": ["carmen"],
            "due_date": "2026-05-01",
            "tags": ["ignored"],
            "start_date": "2026-04-01",
        },
    )
    assert recorder.bodies("POST") == [
        {
            "title": "Ship it",
            "description": "Body\n\nmarker",
            "priority": "high",
            "assignee_id": people["carmen"],
            "due_date": "2026-05-01",
            "project_id": scope,
        }
    ]
    assert recorder.bodies("PATCH") == [{"status": "completed"}]
    assert task.values["status"] is Status.DONE
    assert fake.tasks[task.remote_id].status == "completed"

    recorder.sent.clear()
    todo = await conn.create_task(scope, {"title": "Still open", "status": "todo"})
    assert [m for m, _, _ in recorder.sent] == ["POST"]
    assert todo.values["status"] is Status.TODO


async def test_partial_update_sends_only_the_changes(
    make: Make, fake: ImpactlyFake, scope: str, people: dict[str, str]
) -> None:
    recorder = Recorder()
    conn = make(transport=recorder)
    task = await conn.create_task(
        scope, {"title": "Original", "description": "Keep me", "assignees": ["alice"]}
    )
    # Meanwhile a person renames it in the web app: a priority update must not revert that.
    fake.call(lambda: fake.update_task(task.remote_id, title="Renamed by Alice"))
    recorder.sent.clear()
    updated = await conn.update_task(scope, task.remote_id, {"priority": "high", "tags": ["not on impactly"]})
    assert recorder.sent == [("PATCH", f"/api/v1/tasks/{task.remote_id}", {"priority": "high"})]
    assert updated.values["title"] == "Renamed by Alice" and updated.values["priority"] is Priority.HIGH
    assert updated.values["description"] == "Keep me" and updated.values["assignees"] == {"alice"}

    recorder.sent.clear()
    cleared = await conn.update_task(scope, task.remote_id, {"assignees": [], "due_date": None})
    assert recorder.sent == [
        ("PATCH", f"/api/v1/tasks/{task.remote_id}", {"assignee_id": None, "due_date": None})
    ]
    assert cleared.values["assignees"] == frozenset()

    recorder.sent.clear()
    same = await conn.update_task(scope, task.remote_id, {"tags": ["nothing writable"]})
    assert [m for m, _, _ in recorder.sent] == ["GET"]  # no empty PATCH (the API rejects one)
    assert same.values == cleared.values


ROUNDTRIP_CASES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (
        {
            "title": "Plain",
            "description": "",
            "status": "todo",
            "priority": "none",
            "assignees": [],
            "due_date": None,
        },
        {"status": "done", "priority": "urgent", "assignees": ["bob"], "due_date": "2026-12-31"},
    ),
    (
        {
            "title": "Lossy",
            "description": "line 1\n  line 2  \n\n<!-- taskbridge:01ABC -->\n",
            "status": "in_progress",
            "priority": "low",
            "assignees": ["carmen", "alice", "bob"],
            "due_date": "2026-01-02",
        },
        {"status": "cancelled", "assignees": ["zed", "alice"], "description": "  spaces kept  "},
    ),
    (
        {"title": "x" * 600, "status": "blocked", "priority": "medium", "assignees": ["zed"]},
        {"title": "   ", "status": "todo", "priority": "none", "assignees": ["impactly1:" + "PLACEHOLDER"]},
    ),
    (
        {
            "title": "Ünïcödé ✓ title",
            "status": "done",
            "assignees": ["bob", "alice"],
            "tags": ["a", "b"],
            "start_date": "2026-01-01",
            "archived": True,
        },
        {"status": "in_progress", "title": "Back to work", "due_date": None, "assignees": []},
    ),
]


@pytest.mark.parametrize(("first", "second"), ROUNDTRIP_CASES)
async def test_roundtrip_property(
    conn: ImpactlyConnector,
    fake: ImpactlyFake,
    scope: str,
    people: dict[str, str],
    first: dict[str, Any],
    second: dict[str, Any],
) -> None:
    second = {
        k: ([a.replace("PLACEHOLDER", people["carmen"]) for a in v] if k == "assignees" else v)
        for k, v in second.items()
    }
    caps = conn.capabilities.fields

    created = await conn.create_task(scope, first)
    expected = conn.roundtrip(first)
    assert set(expected) <= caps
    assert {k: created.values[k] for k in expected} == expected
    assert {k: (await conn.get_task(scope, created.remote_id)).values[k] for k in expected} == expected

    updated = await conn.update_task(scope, created.remote_id, second)
    assert {k: updated.values[k] for k in conn.roundtrip(second)} == conn.roundtrip(second)
    both = conn.roundtrip({**first, **second})
    assert {k: updated.values[k] for k in both} == both
    # Writing the round-tripped values again is a fixed point (what keeps lossy mappings from flapping).
    assert conn.roundtrip(both) == both
    assert (await conn.get_task(scope, created.remote_id)).values == updated.values


def test_roundtrip_rules(conn: ImpactlyConnector, people: dict[str, str]) -> None:
    rt = conn.roundtrip(
        {
            "assignees": ["carmen", "bob", "nobody"],
            "title": "t" * 501,
            "tags": ["x"],
            "parent": "01PARENT",
            "status": "blocked",
            "priority": None,
        }
    )
    assert rt == {
        "assignees": frozenset({"bob"}),
        "title": "t" * 500,
        "status": Status.TODO,
        "priority": Priority.NONE,
        "parent": "01PARENT",  # ids are the engine's to translate: the round trip keeps them
    }
    assert conn.roundtrip({"assignees": [f"impactly1:{people['alice']}"]}) == {"assignees": {"alice"}}
    assert conn.roundtrip({"assignees": ["nobody"], "title": ""}) == {
        "assignees": frozenset(),
        "title": "Untitled",
    }


async def test_subtasks_through_the_client(conn: ImpactlyConnector, fake: ImpactlyFake, scope: str) -> None:
    parent = await conn.create_task(scope, {"title": "Parent"})
    child = await conn.client.create_subtask(parent.remote_id, {"title": "Child"})
    assert child["parent_task_id"] == parent.remote_id and child["project_id"] == scope
    other = await conn.create_task(scope, {"title": "Loose"})
    moved = await conn.client.set_parent(other.remote_id, parent.remote_id)
    assert moved["parent_task_id"] == parent.remote_id
    read = await conn.get_task(scope, child["id"])
    assert "parent" not in read.values and read.parent_id == parent.remote_id  # an Impactly id


async def test_delete_and_no_archive(conn: ImpactlyConnector, fake: ImpactlyFake, scope: str) -> None:
    task = await conn.create_task(scope, {"title": "Doomed"})
    fake.requests.clear()
    await conn.delete_task(scope, task.remote_id)
    assert fake.requests.count("DELETE", TASK_ROUTE, status=204) == 1
    with pytest.raises(NotFound):
        await conn.get_task(scope, task.remote_id)
    with pytest.raises(NotFound):
        await conn.delete_task(scope, task.remote_id)
    with pytest.raises(Permanent, match="no archive"):
        await conn.archive_task(scope, task.remote_id)


async def test_find_by_marker(conn: ImpactlyConnector, fake: ImpactlyFake, scope: str) -> None:
    marker = "<!-- taskbridge:01HZYX3K -->"
    other_project = fake.call(lambda: fake.add_project("Elsewhere"))
    fake.call(
        lambda: fake.create_task("Copy elsewhere", description=f"text\n{marker}", project_id=other_project)
    )
    await conn.create_task(
        scope, {"title": "Near miss", "description": "taskbridge:01HZYX3K without the frame"}
    )
    mine = await conn.create_task(scope, {"title": "Mirror", "description": f"Body\n\n{marker}"})
    fake.requests.clear()
    found = await conn.find_by_marker(scope, marker)
    assert found is not None and found.remote_id == mine.remote_id
    assert fake.requests.count("POST", "/api/v1/search") == 1
    assert fake.requests.count("GET", PROJECT_TASKS_ROUTE) == 0

    fake.requests.clear()
    assert await conn.find_by_marker(scope, "<!-- taskbridge:01NOPE -->") is None
    assert fake.requests.count("POST", "/api/v1/search") == 1
    assert fake.requests.count("GET", PROJECT_TASKS_ROUTE) == 1  # the fallback listing


async def test_find_by_markers_searches_each_and_lists_once_for_the_rest(
    conn: ImpactlyConnector, fake: ImpactlyFake, scope: str
) -> None:
    markers = [f"<!-- taskbridge:01M{i} -->" for i in range(2)]
    mine = {m: await conn.create_task(scope, {"title": m, "description": f"Body\n\n{m}"}) for m in markers}
    fake.requests.clear()
    found = await conn.find_by_markers(
        scope, [*markers, "<!-- taskbridge:01NOPE -->", "<!-- taskbridge:01NADA -->"]
    )
    assert {m: t.remote_id for m, t in found.items()} == {m: t.remote_id for m, t in mine.items()}
    assert fake.requests.count("POST", "/api/v1/search") == 4
    assert fake.requests.count("GET", PROJECT_TASKS_ROUTE) == 1  # one fallback listing for both misses


# -- comments -----------------------------------------------------------------------------------


async def test_comments_paginate_and_mark_ours(
    conn: ImpactlyConnector, fake: ImpactlyFake, scope: str
) -> None:
    task = await conn.create_task(scope, {"title": "Discussed"})
    fake.call(lambda: [fake.add_comment(task.remote_id, f"person comment {i}") for i in range(120)])
    added = await conn.add_comment(scope, task.remote_id, "Looks good **to me**", "Alice via Vortask")
    assert added.by_us and added.author == "Alice via Vortask" and added.body == "Looks good **to me**"
    stored = fake.comments[added.remote_id]
    assert stored.content == "**Alice via Vortask:** Looks good **to me**"

    fake.requests.clear()
    comments = await conn.list_comments(scope, task.remote_id)
    assert fake.requests.count("GET", "/api/v1/tasks/{task_id}/comments") == 2
    assert len(comments) == 121
    assert comments[-1] == added
    assert (
        comments[0].body == "person comment 0"
        and comments[0].author == "Alice Chen"
        and not comments[0].by_us
    )
    assert not any(c.by_us for c in comments[:-1])
    with pytest.raises(NotFound):
        await conn.list_comments(scope, str(uuid.uuid4()))


# -- webhooks -----------------------------------------------------------------------------------


async def test_register_webhook_is_idempotent(
    conn: ImpactlyConnector, fake: ImpactlyFake, scope: str
) -> None:
    url = "https://bridge.example.org/webhooks/impactly1"
    assert await conn.register_webhook(scope, url, "configured-secret") is None
    assert await conn.register_webhook(scope, url, "configured-secret") is None
    hooks = await conn.client.list_webhooks()
    assert [h["url"] for h in hooks] == [url]
    assert next(iter(fake.subscriptions.values())).secret == "configured-secret"

    generated = await conn.register_webhook(scope, url + "/other", None)
    assert generated is not None and generated.startswith("whsec_")
    assert await conn.register_webhook(scope, url + "/other", None) is None  # kept, secret not shown again
    assert len(await conn.client.list_webhooks()) == 2


async def test_webhook_deliveries_verify_and_parse(
    conn: ImpactlyConnector, fake: ImpactlyFake, scope: str, webhook_receiver: Any
) -> None:
    await conn.register_webhook(scope, webhook_receiver.url + "/hook", "s3cret")
    raw = fake.call(lambda: fake.create_task("From the web app", priority="high"))
    fake.call(lambda: fake.update_task(raw["id"], status="completed"))
    fake.call(lambda: fake.add_comment(raw["id"], "hello"))
    fake.call(lambda: fake.delete_task(raw["id"]))
    hooks = webhook_receiver.wait_for(4)

    kinds = []
    for hook in hooks:
        conn.verify_webhook(hook.headers, hook.body, ["old-secret", "s3cret"])
        [event] = conn.parse_webhook(hook.headers, hook.body)
        assert event.remote_id == raw["id"]
        assert event.delivery_id == hook.headers["x-impactly-delivery"]
        kinds.append(event.kind)
        if event.kind in ("created", "updated"):
            assert event.scope == scope
            assert event.task is not None and event.task.values["priority"] is Priority.HIGH
        elif event.kind == "deleted":
            assert event.scope == scope and event.task is None
        else:
            assert event.scope == "" and event.task is None  # a comment carries no project id
    assert kinds == ["created", "updated", "comment", "deleted"]
    assert conn.parse_webhook(hooks[1].headers, hooks[1].body)[0].task.values["status"] is Status.DONE  # type: ignore[union-attr]

    first = hooks[0]
    with pytest.raises(BadSignature, match="does not match"):
        conn.verify_webhook(first.headers, first.body.replace(b"From", b"Frum"), ["s3cret"])
    with pytest.raises(BadSignature, match="does not match"):
        conn.verify_webhook(first.headers, first.body, ["wrong"])
    with pytest.raises(BadSignature, match="missing"):
        conn.verify_webhook(
            {k: v for k, v in first.headers.items() if k != "x-impactly-signature"}, first.body, ["s3cret"]
        )
    with pytest.raises(BadSignature, match="sha256"):
        conn.verify_webhook({**first.headers, "x-impactly-signature": "md5=abc"}, first.body, ["s3cret"])
    with pytest.raises(BadSignature, match="no webhook secret"):
        conn.verify_webhook(first.headers, first.body, [])
    # Header names arrive in any case.
    conn.verify_webhook({k.title(): v for k, v in first.headers.items()}, first.body, ["s3cret"])


async def test_generated_secret_verifies_deliveries(
    conn: ImpactlyConnector, fake: ImpactlyFake, scope: str, webhook_receiver: Any
) -> None:
    secret = await conn.register_webhook(scope, webhook_receiver.url + "/hook", None)
    assert secret
    await conn.create_task(scope, {"title": "Made by the bridge"})
    [hook] = webhook_receiver.wait_for(1)
    conn.verify_webhook(hook.headers, hook.body, [secret])
    [event] = conn.parse_webhook(hook.headers, hook.body)
    assert (
        event.kind == "created"
        and event.task is not None
        and event.task.values["title"] == "Made by the bridge"
    )


def test_parse_webhook_rejects_malformed_and_skips_unknown(conn: ImpactlyConnector) -> None:
    with pytest.raises(BadSignature):
        conn.parse_webhook({}, b"not json")
    with pytest.raises(BadSignature):
        conn.parse_webhook({}, b'{"event": "task.updated"}')
    assert conn.parse_webhook({}, b'{"event": "project.created", "data": {"id": "p"}}') == []
    # A task payload the connector can't read whole is still a trigger (the engine GETs it).
    [event] = conn.parse_webhook(
        {}, b'{"id": "d1", "event": "task.updated", "data": {"id": "t1", "status": "?"}}'
    )
    assert event.kind == "updated" and event.task is None and event.delivery_id == "d1"


def test_a_hostile_signature_is_refused_never_a_crash(conn: ImpactlyConnector) -> None:
    body = b'{"id": "d1", "event": "task.updated", "data": {"id": "t1"}}'
    conn.verify_webhook({"x-impactly-signature": sign("s3cret", body)}, body, ["s3cret"])
    # Headers arrive decoded as latin-1, so any character can be in one (compare_digest on a
    # non-ASCII str raised TypeError: an unauthenticated 500).
    for bad in (
        "sha256=\xe9\xe9",
        "sha256=" + "\xe9" * 64,
        "sha256=" + "\u0661" * 64,
        "sha256=\ud800",
        "sha256=",
    ):
        with pytest.raises(BadSignature, match="sha256"):
            conn.verify_webhook({"x-impactly-signature": bad}, body, ["s3cret"])
    # The shared helper compares bytes, whatever it is given.
    from connectors.base import verify_hmac

    assert not verify_hmac("s3cret", body, "\xe9" * 64) and not verify_hmac("s3cret", body, "\ud800")
    assert verify_hmac("s3cret", body, sign("s3cret", body).removeprefix("sha256=").upper())


def test_the_timestamp_header_is_checked_when_present(conn: ImpactlyConnector) -> None:
    body = b'{"id": "d1", "event": "task.updated", "data": {"id": "t1"}}'
    signed = {"x-impactly-signature": sign("s3cret", body)}
    now = 1_800_000_000
    conn.clock = lambda: now
    conn.verify_webhook(signed, body, ["s3cret"])  # absent: nothing to check
    for fresh in (now, now - 300, now + 300):
        conn.verify_webhook({**signed, "X-Impactly-Timestamp": str(fresh)}, body, ["s3cret"])
    for stale in (now - 301, now + 301, 0):
        with pytest.raises(BadSignature, match="stale X-Impactly-Timestamp"):
            conn.verify_webhook({**signed, "x-impactly-timestamp": str(stale)}, body, ["s3cret"])
    for bad in ("soon", "", "1.8e9", "-5", "\xb9\xb2", "\u0661" * 10, str(now) + "0" * 20):
        with pytest.raises(BadSignature, match="X-Impactly-Timestamp"):
            conn.verify_webhook({**signed, "x-impactly-timestamp": bad}, body, ["s3cret"])
    # A bad signature is refused as such, whatever the timestamp.
    with pytest.raises(BadSignature, match="does not match"):
        conn.verify_webhook({**signed, "x-impactly-timestamp": str(now)}, body + b" ", ["s3cret"])


def test_the_delivery_id_is_the_signed_body_id_and_the_event_may_be_a_header(conn: ImpactlyConnector) -> None:
    body = b'{"id": "d1", "event": "task.updated", "data": {"id": "t1"}}'
    # X-Impactly-Delivery is not signed: a replay could change it at will.
    [event] = conn.parse_webhook({"x-impactly-delivery": "forged"}, body)
    assert event.delivery_id == "d1"
    [event] = conn.parse_webhook(
        {"x-impactly-delivery": "forged"}, b'{"data": {"id": "t1"}, "event": "task.created"}'
    )
    assert event.delivery_id is None  # the inbox then keys on the body's hash
    # The event type only in a header: parsed from it, and it is a header the inbox keeps.
    headers = {
        "X-Impactly-Event": "task.deleted",
        "X-Impactly-Signature": "sha256=00",
        "X-Impactly-Delivery": "x",
    }
    [event] = conn.parse_webhook(headers, b'{"id": "d2", "data": {"id": "t1"}}')
    assert (event.kind, event.remote_id, event.delivery_id) == ("deleted", "t1", "d2")
    kept = recordable_headers(headers, conn.webhook_headers)
    assert kept == {"x-impactly-event": "task.deleted"}
    assert conn.parse_webhook(kept, b'{"id": "d2", "data": {"id": "t1"}}')[0].kind == "deleted"
    assert conn.parse_webhook({}, b'{"id": "d2", "data": {"id": "t1"}}') == []  # what processing saw
    # A signature or a credential is never kept, even if a connector were to declare it.
    assert (
        recordable_headers(
            {**headers, "Authorization": "Bearer x"}, ["x-impactly-signature", "authorization"]
        )
        == {}
    )


# -- errors -------------------------------------------------------------------------------------


async def test_401_is_auth_failed(make: Make, scope: str) -> None:
    conn = make(token="imp_wrong")
    with pytest.raises(AuthFailed, match="Missing or invalid API key"):
        await conn.list_tasks(scope, None)


async def test_403_is_permanent_with_the_platform_message(make: Make, scope: str) -> None:
    conn = make(token=READ_ONLY)
    assert (await conn.list_tasks(scope, None)).all_ids == frozenset()
    with pytest.raises(Permanent, match="Insufficient permissions") as info:
        await conn.create_task(scope, {"title": "Not allowed"})
    assert info.value.status == 403


async def test_400_is_permanent_with_the_platform_message(make: Make, fake: ImpactlyFake, scope: str) -> None:
    conn = make(people=PeopleMap("impactly1", {"ghost": str(uuid.uuid4())}))
    with pytest.raises(Permanent, match=r"Assignee is not a member.*field: assignee_id") as info:
        await conn.create_task(scope, {"title": "Haunted", "assignees": ["ghost"]})
    assert info.value.status == 400 and not isinstance(info.value, NotFound)


async def test_404_is_not_found(conn: ImpactlyConnector, scope: str) -> None:
    with pytest.raises(NotFound, match="Task not found"):
        await conn.update_task(scope, str(uuid.uuid4()), {"title": "Nobody home"})


async def test_429_honours_retry_after(conn: ImpactlyConnector, fake: ImpactlyFake, scope: str) -> None:
    fake.faults.retry_after = 1
    fake.faults.rate_limit_burst = 1
    started = time.monotonic()
    task = await conn.create_task(scope, {"title": "Patient"})  # a POST refused with 429 is repeated
    assert time.monotonic() - started >= 1.0
    assert task.values["title"] == "Patient"
    assert fake.requests.count("POST", "/api/v1/tasks", status=429) == 1
    assert fake.requests.count("POST", "/api/v1/tasks", status=201) == 1


async def test_429_longer_than_max_wait_raises_rate_limited(
    make: Make, fake: ImpactlyFake, scope: str
) -> None:
    conn = make(max_wait=0.5)
    fake.faults.retry_after = 7
    fake.faults.rate_limit_burst = 1
    with pytest.raises(RateLimited) as info:
        await conn.get_task(scope, str(uuid.uuid4()))
    assert info.value.retry_after == 7


async def test_5xx_is_retried_then_succeeds(conn: ImpactlyConnector, fake: ImpactlyFake, scope: str) -> None:
    fake.rng.seed(4)  # draws 0.24, 0.10, 0.40: two 500s, then through
    fake.faults.error_rate = 0.3
    listing = await conn.list_tasks(scope, None)
    assert listing.all_ids == frozenset()
    assert fake.requests.count("GET", PROJECT_TASKS_ROUTE, status=500) == 2
    assert fake.requests.count("GET", PROJECT_TASKS_ROUTE, status=200) == 1


async def test_persistent_5xx_is_retryable(make: Make, fake: ImpactlyFake, scope: str) -> None:
    conn = make(max_retries=2)
    fake.faults.error_rate = 1.0
    with pytest.raises(Retryable, match="Internal server error") as info:
        await conn.get_task(scope, str(uuid.uuid4()))
    assert info.value.status == 500
    assert fake.requests.count("GET", TASK_ROUTE, status=500) == 3
    # A create that may have happened is not repeated: one POST, then the engine's marker check.
    with pytest.raises(Retryable):
        await conn.create_task(scope, {"title": "Maybe made"})
    assert fake.requests.count("POST", "/api/v1/tasks") == 1


async def test_timeout_is_retryable(make: Make, fake: ImpactlyFake, scope: str) -> None:
    conn = make(timeout=0.2, max_retries=1)
    fake.faults.hang_seconds = 0.4
    fake.faults.timeout_rate = 1.0
    started = time.monotonic()
    with pytest.raises(Retryable, match="timed out"):
        await conn.get_task(scope, str(uuid.uuid4()))
    assert time.monotonic() - started < 2


# -- check --------------------------------------------------------------------------------------


async def test_check(conn: ImpactlyConnector, fake: ImpactlyFake, scope: str) -> None:
    seed(fake, 2)
    summary = await conn.check(scope)
    assert "Default agent" in summary and "'Default'" in summary and "2 tasks" in summary
    with pytest.raises(Permanent, match="not found"):
        await conn.check(str(uuid.uuid4()))


# -- the hierarchy (issue 18) ----------------------------------------------------------------------


async def test_parent_is_read_and_written_as_impactly_ids(make: Make, fake: ImpactlyFake, scope: str) -> None:
    """`parent` goes out as `parent_task_id` and comes back as RemoteTask.parent_id, both in
    Impactly's own ids (the engine translates them), never among the canonical values."""
    recorder = Recorder()
    conn = make(transport=recorder)
    parent = await conn.create_task(scope, {"title": "Launch", "parent": None})
    other = await conn.create_task(scope, {"title": "Docs"})
    assert (
        parent.parent_id is None and "parent_task_id" not in recorder.bodies("POST")[0]
    )  # top level: unsaid

    child = await conn.create_task(scope, {"title": "Write the post", "parent": parent.remote_id})
    assert recorder.bodies("POST")[-1] == {
        "title": "Write the post",
        "parent_task_id": parent.remote_id,
        "project_id": scope,
    }
    assert child.parent_id == parent.remote_id and "parent" not in child.values
    assert (await conn.get_task(scope, child.remote_id)).parent_id == parent.remote_id
    listed = {t.remote_id: t.parent_id for t in (await conn.list_tasks(scope, None)).tasks}
    assert listed == {parent.remote_id: None, other.remote_id: None, child.remote_id: parent.remote_id}
    assert fake.tasks[child.remote_id].parent_task_id == parent.remote_id

    recorder.clear()
    moved = await conn.update_task(scope, child.remote_id, {"parent": other.remote_id})
    assert recorder.bodies("PATCH") == [{"parent_task_id": other.remote_id}]
    assert moved.parent_id == other.remote_id
    top = await conn.update_task(scope, child.remote_id, {"parent": None})
    assert recorder.bodies("PATCH")[-1] == {"parent_task_id": None}
    assert top.parent_id is None and fake.tasks[child.remote_id].parent_task_id is None
    # a parent change shows in the content hash (values alone would not)
    assert moved.content_hash != top.content_hash and moved.values == top.values


async def test_parent_in_the_incremental_feed_and_webhooks(
    conn: ImpactlyConnector, fake: ImpactlyFake, scope: str, webhook_receiver: Any
) -> None:
    first = await conn.list_tasks(scope, None)
    await conn.register_webhook(scope, webhook_receiver.url + "/hook", "s3cret")
    parent = fake.call(lambda: fake.create_task("Launch"))
    child = fake.call(lambda: fake.create_task("Write the post"))
    fake.call(lambda: fake.update_task(child["id"], parent_task_id=parent["id"]))
    hooks = webhook_receiver.wait_for(3)
    [moved] = conn.parse_webhook(hooks[2].headers, hooks[2].body)
    assert moved.task is not None and moved.task.parent_id == parent["id"]
    feed = await conn.list_tasks(scope, first.watermark)
    assert {t.remote_id: t.parent_id for t in feed.tasks} == {parent["id"]: None, child["id"]: parent["id"]}


async def test_a_parent_the_platform_refuses(conn: ImpactlyConnector, scope: str) -> None:
    """What the engine never sends (a loop, a task of nowhere) is the platform's 400: Permanent."""
    parent = await conn.create_task(scope, {"title": "Launch"})
    child = await conn.create_task(scope, {"title": "Write the post", "parent": parent.remote_id})
    with pytest.raises(Permanent, match="own ancestor"):
        await conn.update_task(scope, parent.remote_id, {"parent": child.remote_id})
    with pytest.raises(Permanent, match="not found"):
        await conn.update_task(scope, child.remote_id, {"parent": str(uuid.uuid4())})
