"""Contract tests for the squads (Nucleus) connector against its fake, over real loopback HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from bridge import mapping
from bridge.mapping import MappingError
from bridge.model import Priority, Status
from connectors import fakekit
from connectors.base import (
    AuthFailed,
    BadSignature,
    ConnectorError,
    ConnectorSettings,
    GoneFromView,
    NotFound,
    PeopleMap,
    Permanent,
    RateLimited,
    Retryable,
)
from connectors.squads.connector import SquadsConnector, UnmappedItem
from connectors.squads.fake import SquadsFake

TOKEN = "bridge.access:s3cret-value"
EXEC_TOKEN = "exec.access:exec-s3cret"
SEED = 11
PLATFORM_TITLES = {
    "Migrate CI runners to ARM",
    "Benchmark ARM build times",
    "Fix flaky login test",
    "Rotate database credentials",
    "Sync roadmap with Growth",
}
GROWTH_TITLES = {
    "Launch referral programme landing page",
    "Email onboarding A/B test",
    "Quarterly pricing review",
}
PEOPLE = {
    "ada": "Ada Park",
    "ben": "Ben Okafor",
    "chloe": "Chloe Reyes",
    "dan": "Dan Weiss",
    "eve": "Eve Tanaka",
    "bot": "Bridge Bot",
}


def today() -> date:
    return datetime.now(UTC).date()


# -- a recording transport: real HTTP, with every request's body kept for assertions -----------


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, str]
    body: Any
    headers: httpx.Headers


@dataclass
class Recorder(httpx.AsyncHTTPTransport):
    calls: list[Call] = field(default_factory=list)
    on_response: Callable[[httpx.Response], None] | None = None

    def __post_init__(self) -> None:
        super().__init__()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.calls.append(
            Call(request.method, request.url.path, dict(request.url.params), body, request.headers)
        )
        response = await super().handle_async_request(request)
        if self.on_response is not None:
            self.on_response(response)
        return response

    def of(self, method: str, path_part: str = "") -> list[Call]:
        return [c for c in self.calls if c.method == method and path_part in c.path]

    def clear(self) -> None:
        self.calls.clear()


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[SquadsFake]:
    fake = SquadsFake(token=TOKEN, seed=SEED)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(server: SquadsFake) -> SquadsFake:
    """The shared executive server, reset to freshly seeded demo data."""

    def fresh() -> None:
        server.requests.clear()
        server.faults.reset()
        server.reset_state()
        server.seed_demo()

    server.call(fresh)
    return server


def people_of(fake: SquadsFake, **extra: str) -> PeopleMap:
    ids = {key: fake.user_id(name) for key, name in PEOPLE.items()}
    return PeopleMap("squads1", {**ids, **extra})


def settings_for(
    fake: SquadsFake | fakekit.Fake,
    token: str = TOKEN,
    *,
    base: str = "/api",
    people: PeopleMap | None = None,
    override: dict[str, Any] | None = None,
    **kw: Any,
) -> ConnectorSettings:
    client_id, _, secret = token.partition(":")
    kw.setdefault("backoff", 0.01)
    return ConnectorSettings(
        name="squads1",
        platform="squads",
        base_url=fake.url + base,
        mapping=mapping.load("squads", override),
        people=people or PeopleMap("squads1"),
        client_id=client_id,
        client_secret=secret,
        **kw,
    )


@pytest_asyncio.fixture
async def make(fake: SquadsFake) -> AsyncIterator[Callable[..., tuple[SquadsConnector, Recorder]]]:
    """make(token=..., **settings) -> (connector, its recording transport); closed after the test."""
    made: list[SquadsConnector] = []

    def build(
        token: str = TOKEN, target: SquadsFake | None = None, **kw: Any
    ) -> tuple[SquadsConnector, Recorder]:
        on = target or fake
        recorder = Recorder()
        kw.setdefault("people", people_of(on, **kw.pop("extra_people", {})))
        connector = SquadsConnector(settings_for(on, token, transport=recorder, **kw))
        made.append(connector)
        return connector, recorder

    yield build
    for connector in made:
        await connector.aclose()


@pytest_asyncio.fixture
async def conn(make: Callable[..., tuple[SquadsConnector, Recorder]]) -> tuple[SquadsConnector, Recorder]:
    return make()


def exec_credential(fake: SquadsFake) -> str:
    """A second service token acting as an executive (sees every task)."""
    user = fake.add_user("Erin Exec", squad="Platform", role="executive")
    fake.add_credential(EXEC_TOKEN, user_id=user)
    return user


async def by_title(connector: SquadsConnector, scope: str = "Platform") -> dict[str, Any]:
    listing = await connector.list_tasks(scope, None)
    return {t.values["title"]: t for t in listing.tasks}


# -- listing and reading -------------------------------------------------------------------------


async def test_list_is_a_complete_listing_of_the_squad(
    fake: SquadsFake, conn: tuple[SquadsConnector, Recorder]
) -> None:
    connector, rec = conn
    listing = await connector.list_tasks("Platform", None)
    assert {t.values["title"] for t in listing.tasks} == PLATFORM_TITLES
    assert listing.all_ids == frozenset(t.remote_id for t in listing.tasks)
    assert listing.watermark == {} and listing.deleted_ids == frozenset()
    tasks = {t.values["title"]: t for t in listing.tasks}
    migrate = tasks["Migrate CI runners to ARM"]
    assert migrate.scope == "Platform"
    assert migrate.values == {
        "title": "Migrate CI runners to ARM",
        "description": "Move the build fleet to ARM runners; keep x86 for legacy images.",
        "status": Status.IN_PROGRESS,
        "priority": Priority.HIGH,
        "assignees": frozenset({"ben"}),
        "due_date": today() + timedelta(days=5),
        "start_date": None,
    }
    assert isinstance(migrate.updated_at, datetime) and migrate.updated_at.tzinfo is not None
    assert isinstance(migrate.created_at, datetime)
    assert tasks["Rotate database credentials"].values["status"] == Status.TODO  # backlog -> todo
    assert tasks["Benchmark ARM build times"].values["description"] == ""  # null -> ""
    assert tasks["Sync roadmap with Growth"].values["assignees"] == frozenset({"bot"})
    # one squad check, one list; the rows carry status_value/priority_value: no config-list calls
    assert [(c.method, c.path, c.params) for c in rec.calls] == [
        ("GET", "/api/squads", {}),
        ("GET", "/api/tasks", {"squad": "Platform"}),
    ]
    # every request carries the Access service token, never an Authorization header
    for call in rec.calls:
        assert call.headers["CF-Access-Client-Id"] == "bridge.access"
        assert call.headers["CF-Access-Client-Secret"] == "s3cret-value"
        assert "authorization" not in call.headers

    growth = {t.values["title"]: t for t in (await connector.list_tasks("Growth", None)).tasks}
    assert set(growth) == GROWTH_TITLES
    assert growth["Launch referral programme landing page"].values["status"] == Status.IN_PROGRESS
    assert growth["Quarterly pricing review"].values["assignees"] == frozenset()
    assert growth["Quarterly pricing review"].values["status"] == Status.DONE

    # an idle poll: same content, same hashes, and only the task list is fetched again
    rec.clear()
    again = await connector.list_tasks("Platform", listing.watermark)
    assert {t.remote_id: t.content_hash for t in again.tasks} == {
        t.remote_id: t.content_hash for t in listing.tasks
    }
    assert [(c.method, c.path) for c in rec.calls] == [("GET", "/api/tasks")]


async def test_unknown_squad_is_permanent_not_an_empty_listing(
    conn: tuple[SquadsConnector, Recorder],
) -> None:
    connector, _ = conn
    with pytest.raises(Permanent, match="no squad named 'Nope'"):
        await connector.list_tasks("Nope", None)


async def test_get_task_matches_the_listing(conn: tuple[SquadsConnector, Recorder]) -> None:
    connector, _ = conn
    for title, listed in (await by_title(connector)).items():
        got = await connector.get_task("Platform", listed.remote_id)
        assert got.values == listed.values, title
        assert got.updated_at == listed.updated_at


# -- writing and the round trip -------------------------------------------------------------------


def roundtrip_cases(fake: SquadsFake) -> list[dict[str, Any]]:
    eve = fake.user_id("Eve Tanaka")
    return [
        {
            "title": "  Padded title  ",
            "description": "Line one\n\n— ünïcödé —\n[taskbridge:01HX]",
            "status": "blocked",
            "priority": "urgent",
            "assignees": {"ben", "ada"},
            "due_date": today() + timedelta(days=3),
            "start_date": today(),
            "tags": {"x"},
            "archived": False,
        },
        {
            "title": "Minimal",
            "description": "",
            "status": "todo",
            "priority": "none",
            "assignees": set(),
            "due_date": None,
            "start_date": None,
        },
        {
            "title": "Cancelled one",
            "status": "cancelled",
            "priority": "low",
            "assignees": {"stranger", f"squads1:{eve}", "zed-unmapped"},
        },
        {
            "title": "Done",
            "status": "done",
            "priority": "medium",
            "assignees": {"bot"},
            "start_date": date(2026, 1, 31),
        },
        {
            "title": "Working",
            "status": "in_progress",
            "priority": "high",
            "due_date": date(2030, 12, 31),
            "description": "  keep my  whitespace  \n",
        },
    ]


async def test_create_reads_back_as_roundtrip(
    fake: SquadsFake, conn: tuple[SquadsConnector, Recorder]
) -> None:
    connector, rec = conn
    for values in roundtrip_cases(fake):
        expected = connector.roundtrip(values)
        assert set(expected) <= connector.capabilities.fields
        created = await connector.create_task("Platform", values)
        assert {k: created.values[k] for k in expected} == expected, values
        got = await connector.get_task("Platform", created.remote_id)
        assert got.values == created.values
    # lossy cases spelled out: title trimmed, one assignee (sorted keys first), unsynced fields dropped
    first = connector.roundtrip(roundtrip_cases(fake)[0])
    assert first["title"] == "Padded title" and first["assignees"] == frozenset({"ada"})
    assert "tags" not in first and "archived" not in first
    assert connector.roundtrip(roundtrip_cases(fake)[2])["assignees"] == frozenset({"eve"})
    # what was sent: item ids looked up by value; nothing for unset/empty fields on create
    posts = rec.of("POST", "/api/tasks")
    assert posts[0].body == {
        "title": "  Padded title  ",
        "description": "Line one\n\n— ünïcödé —\n[taskbridge:01HX]",
        "status_id": fake.item_id("task_status", "blocked"),
        "priority_id": fake.item_id("task_priority", "urgent"),
        "assignee_id": fake.user_id("Ada Park"),
        "due_date": (today() + timedelta(days=3)).isoformat(),
        "start_date": today().isoformat(),
    }
    assert posts[1].body == {"title": "Minimal", "status_id": fake.item_id("task_status", "todo")}
    # the config lists were read once each, then served from the cache
    assert len(rec.of("GET", "/config-lists/task_status/items")) == 1
    assert len(rec.of("GET", "/config-lists/task_priority/items")) == 1


async def test_create_without_status_takes_the_platform_default(
    fake: SquadsFake, conn: tuple[SquadsConnector, Recorder]
) -> None:
    connector, rec = conn
    created = await connector.create_task("Platform", {"title": "Bare", "assignees": {"ben"}})
    assert created.values["status"] == Status.TODO and created.values["priority"] == Priority.NONE
    assert rec.of("POST", "/api/tasks")[0].body == {
        "title": "Bare",
        "assignee_id": fake.user_id("Ben Okafor"),
    }
    assert not rec.of("GET", "/config-lists")


async def test_update_reads_back_as_roundtrip(
    fake: SquadsFake, conn: tuple[SquadsConnector, Recorder]
) -> None:
    connector, rec = conn
    task = await connector.create_task("Platform", {"title": "Start"})
    for values in roundtrip_cases(fake):
        expected = connector.roundtrip(values)
        rec.clear()
        updated = await connector.update_task("Platform", task.remote_id, values)
        assert {k: updated.values[k] for k in expected} == expected, values
        assert [(c.method, c.path) for c in rec.calls if "config-lists" not in c.path] == [
            ("PUT", f"/api/tasks/{task.remote_id}")
        ]  # the PUT answer is the task: no GET after it
        assert (await connector.get_task("Platform", task.remote_id)).values == updated.values


async def test_update_sends_only_the_changed_fields(
    fake: SquadsFake, conn: tuple[SquadsConnector, Recorder]
) -> None:
    connector, rec = conn
    migrate = (await by_title(connector))["Migrate CI runners to ARM"]
    rid = migrate.remote_id
    rec.clear()
    fake.requests.clear()

    renamed = await connector.update_task("Platform", rid, {"title": "Migrate CI to ARM"})
    assert rec.of("PUT")[0].body == {"title": "Migrate CI to ARM"}
    assert renamed.values == {**migrate.values, "title": "Migrate CI to ARM"}
    assert fake.requests.by_route() == {"PUT /api/tasks/{task_id}": 1}
    assert not [h for h in fake.history if h["task_id"] == rid and h["event"] != "created"]
    assert renamed.updated_at is not None and migrate.updated_at is not None
    assert renamed.updated_at > migrate.updated_at

    rec.clear()
    cleared = await connector.update_task(
        "Platform", rid, {"priority": "none", "assignees": set(), "due_date": None}
    )
    assert rec.of("PUT")[0].body == {"priority_id": None, "assignee_id": None, "due_date": None}
    assert cleared.values["priority"] == Priority.NONE and cleared.values["assignees"] == frozenset()
    assert cleared.values["due_date"] is None and cleared.values["status"] == Status.IN_PROGRESS

    rec.clear()
    moved = await connector.update_task("Platform", rid, {"status": "done", "assignees": {"chloe", "ben"}})
    assert rec.of("PUT")[0].body == {
        "status_id": fake.item_id("task_status", "done"),
        "assignee_id": fake.user_id("Ben Okafor"),
    }
    assert moved.values["status"] == Status.DONE and moved.values["assignees"] == frozenset({"ben"})
    events = [h["event"] for h in fake.history if h["task_id"] == rid]
    assert events.count("status_changed") == 1 and events.count("assigned") == 2

    # only fields the platform doesn't hold: no PUT (it would be a 400), the task is read instead
    rec.clear()
    same = await connector.update_task("Platform", rid, {"tags": {"a"}, "archived": True})
    assert [(c.method, c.path) for c in rec.calls] == [("GET", f"/api/tasks/{rid}")]
    assert same.values == moved.values


async def test_find_by_marker(conn: tuple[SquadsConnector, Recorder]) -> None:
    connector, rec = conn
    marker = "[taskbridge:01HXMARKER]"
    created = await connector.create_task(
        "Platform", {"title": "Mirror", "description": f"Body\n\n{marker}", "assignees": {"ben"}}
    )
    await connector.create_task("Platform", {"title": f"Title mentions {marker}", "assignees": {"ben"}})
    rec.clear()
    found = await connector.find_by_marker("Platform", marker)
    assert found is not None and found.remote_id == created.remote_id
    assert rec.calls[0].params == {"squad": "Platform", "search": marker}
    assert await connector.find_by_marker("Platform", "[taskbridge:01HXOTHER]") is None
    assert await connector.find_by_marker("Growth", marker) is None


# -- config items: cache, one refresh, clear errors ------------------------------------------------


async def test_item_ids_resolve_through_the_cache_with_one_refresh(
    fake: SquadsFake, make: Callable[..., tuple[SquadsConnector, Recorder]]
) -> None:
    connector, rec = make(override={"status": {"read": {"qa": "in_progress"}}})
    row = dict((await connector.client.list_tasks(squad="Platform"))[0])
    del row["status_value"], row["priority_value"]  # a row without the joined values
    row["status_id"] = fake.item_id("task_status", "done")
    rec.clear()
    task = await connector._remote_task("Platform", row)
    assert task.values["status"] == Status.DONE
    assert len(rec.of("GET", "/config-lists/task_status/items")) == 1

    # an item added on the platform after the cache was filled: one refresh finds it
    qa = fake.add_config_item("task_status", "qa", "QA")
    rec.clear()
    rows = [{**row, "id": f"t{i}", "status_id": qa["id"]} for i in range(3)]
    await connector._prefetch_items(rows)
    tasks = [await connector._remote_task("Platform", r, refreshed=True) for r in rows]
    assert {t.values["status"] for t in tasks} == {Status.IN_PROGRESS}
    assert len(rec.of("GET", "/config-lists/task_status/items")) == 1  # once for the whole batch

    # an id the platform doesn't have even after a refresh: Permanent, naming the id
    rec.clear()
    with pytest.raises(UnmappedItem, match="'no-such-item'") as err:
        await connector._remote_task("Platform", {**row, "status_id": "no-such-item"})
    assert isinstance(err.value, Permanent) and isinstance(err.value, MappingError)
    assert len(rec.of("GET", "/config-lists/task_status/items")) == 1


async def test_unmapped_item_value_is_a_clear_error(
    fake: SquadsFake, conn: tuple[SquadsConnector, Recorder]
) -> None:
    connector, _ = conn
    qa = fake.add_config_item("task_status", "qa", "QA")
    migrate = (await by_title(connector))["Migrate CI runners to ARM"]
    exec_credential(fake)
    async with httpx.AsyncClient(
        base_url=fake.url + "/api",
        headers={"CF-Access-Client-Id": "exec.access", "CF-Access-Client-Secret": "exec-s3cret"},
    ) as raw:
        resp = await raw.put(f"/tasks/{migrate.remote_id}", json={"status_id": qa["id"]})
        assert resp.status_code == 200, resp.text
    with pytest.raises(UnmappedItem, match=r"status value 'qa' has no mapping") as err:
        await connector.get_task("Platform", migrate.remote_id)
    assert isinstance(err.value, Permanent)


async def test_writing_a_value_the_platform_lacks(
    fake: SquadsFake, make: Callable[..., tuple[SquadsConnector, Recorder]]
) -> None:
    override = {"status": {"read": {"on_hold": "blocked"}, "write": {"blocked": "on_hold"}}}
    connector, rec = make(override=override)
    with pytest.raises(Permanent, match="no item with value 'on_hold'"):
        await connector.create_task("Platform", {"title": "Held", "status": "blocked"})
    assert not rec.of("POST")  # nothing was written
    fake.add_config_item("task_status", "on_hold", "On hold")
    created = await connector.create_task("Platform", {"title": "Held", "status": "blocked"})
    assert created.values["status"] == Status.BLOCKED
    assert rec.of("POST")[0].body["status_id"] == fake.item_id("task_status", "on_hold")


# -- deletion and role scoping ----------------------------------------------------------------------


async def test_delete_then_get_is_gone_from_view_never_not_found(
    conn: tuple[SquadsConnector, Recorder],
) -> None:
    connector, _ = conn
    created = await connector.create_task("Platform", {"title": "Doomed", "assignees": {"ben"}})
    await connector.delete_task("Platform", created.remote_id)
    for call in (connector.get_task, connector.delete_task, connector.list_todos):
        with pytest.raises(GoneFromView, match="gone from this credential's view") as err:
            await call("Platform", created.remote_id)
        assert not isinstance(err.value, NotFound)
    with pytest.raises(GoneFromView):
        await connector.update_task("Platform", created.remote_id, {"title": "x"})
    listing = await connector.list_tasks("Platform", None)
    assert listing.all_ids is not None and created.remote_id not in listing.all_ids


async def test_delete_without_manage_permission_is_permanent(
    fake: SquadsFake, make: Callable[..., tuple[SquadsConnector, Recorder]]
) -> None:
    employee = fake.add_user("Emil Employee", squad="Platform", role="employee")
    fake.add_credential("emp.access:emp-secret", user_id=employee)
    connector, _ = make("emp.access:emp-secret")
    created = await connector.create_task("Platform", {"title": "Mine"})
    with pytest.raises(Permanent, match="manage permission") as err:
        await connector.delete_task("Platform", created.remote_id)
    assert err.value.status == 403 and not isinstance(err.value, AuthFailed | NotFound)
    assert (await connector.get_task("Platform", created.remote_id)).values["title"] == "Mine"


@pytest.mark.parametrize(("role", "first_assignee"), [("manager", "ben"), ("employee", "bot")])
async def test_task_reassigned_out_of_view_is_gone_from_view(
    role: str, first_assignee: str, make: Callable[..., tuple[SquadsConnector, Recorder]]
) -> None:
    scoped = SquadsFake(token=TOKEN, role=role)
    scoped.start()
    try:
        exec_credential(scoped)
        mine, _ = make(target=scoped)
        boss, _ = make(EXEC_TOKEN, target=scoped)
        # created by someone else, so only the assignment (or the squad) makes it visible to us
        task = await boss.create_task("Platform", {"title": "Visible for now", "assignees": {first_assignee}})
        seen = await mine.list_tasks("Platform", None)
        assert seen.all_ids == frozenset({task.remote_id})
        assert (await mine.get_task("Platform", task.remote_id)).values["title"] == "Visible for now"

        await boss.update_task("Platform", task.remote_id, {"assignees": {"eve"}})  # to Growth
        after = await mine.list_tasks("Platform", None)
        assert after.all_ids == frozenset()
        with pytest.raises(GoneFromView) as err:
            await mine.get_task("Platform", task.remote_id)
        assert not isinstance(err.value, NotFound)
        with pytest.raises(GoneFromView):
            await mine.update_task("Platform", task.remote_id, {"title": "lost"})
        # it still exists: the executive reads it unchanged
        assert (await boss.get_task("Growth", task.remote_id)).values["title"] == "Visible for now"
    finally:
        scoped.stop()


# -- todos and subtasks ----------------------------------------------------------------------------


async def test_todos_list_and_replace_the_whole_set(conn: tuple[SquadsConnector, Recorder]) -> None:
    connector, rec = conn
    rid = (await by_title(connector))["Migrate CI runners to ARM"].remote_id
    todos = await connector.list_todos("Platform", rid)
    assert [(t["title"], t["is_done"]) for t in todos] == [
        ("Provision runner pool", 1),
        ("Port the build cache", 0),
    ]
    keep, _dropped = todos
    complete = [
        {"id": keep["id"], "title": keep["title"], "is_done": True},
        {"title": "Decommission x86 pool", "is_done": False},
    ]
    rec.clear()
    after = await connector.replace_todos("Platform", rid, complete)
    assert rec.of("PUT")[0].body == {"todos": complete}
    assert [t["title"] for t in after] == ["Provision runner pool", "Decommission x86 pool"]
    assert after[0]["id"] == keep["id"]
    assert [t["title"] for t in await connector.client.list_todos(rid)] == [t["title"] for t in after]
    # the todos never touch the task's own values
    assert (await connector.get_task("Platform", rid)).values["title"] == "Migrate CI runners to ARM"


async def test_client_subtasks(conn: tuple[SquadsConnector, Recorder], fake: SquadsFake) -> None:
    connector, _ = conn
    rid = (await by_title(connector))["Migrate CI runners to ARM"].remote_id
    assert [s["title"] for s in await connector.client.list_subtasks(rid)] == ["Benchmark ARM build times"]
    child = await connector.client.create_subtask(
        rid, {"title": "Port caches", "assignee_id": fake.user_id("Ben Okafor")}
    )
    assert child["parent_task_id"] == rid
    assert [s["title"] for s in await connector.client.list_subtasks(rid)] == [
        "Benchmark ARM build times",
        "Port caches",
    ]
    # subtasks are tasks of the squad too, reported with their parent's id
    assert (await by_title(connector))["Port caches"].parent_id == rid


# -- what squads does not have --------------------------------------------------------------------


async def test_no_webhooks_comments_or_archive(conn: tuple[SquadsConnector, Recorder]) -> None:
    connector, rec = conn
    caps = connector.capabilities
    assert (
        caps.fields
        == caps.writable
        == frozenset(
            {"title", "description", "status", "priority", "assignees", "due_date", "start_date", "parent"}
        )
    )
    assert (caps.webhooks, caps.comments, caps.archive, caps.incremental) == (False, False, False, False)
    assert caps.delete and caps.todos and caps.subtasks
    assert await connector.register_webhook("Platform", "http://127.0.0.1:1/webhooks/squads1", "s") is None
    with pytest.raises(BadSignature, match="no webhooks"):
        connector.verify_webhook({}, b"{}", ["s"])
    assert connector.parse_webhook({}, b"{}") == []
    assert await connector.list_comments("Platform", "x") == []
    with pytest.raises(Permanent, match="no comments"):
        await connector.add_comment("Platform", "x", "hi", "Alice")
    with pytest.raises(Permanent, match="no archive"):
        await connector.archive_task("Platform", "x")
    assert rec.calls == []  # none of that touched the network


async def test_check(conn: tuple[SquadsConnector, Recorder]) -> None:
    connector, _ = conn
    assert (
        await connector.check("Platform")
        == "squads1: squad 'Platform': 5 tasks visible to this service token"
    )
    with pytest.raises(Permanent, match="no squad named"):
        await connector.check("platform")


async def test_token_fallback_and_missing_credentials(fake: SquadsFake) -> None:
    rec = Recorder()
    settings = ConnectorSettings(
        name="squads1",
        platform="squads",
        base_url=fake.url + "/api",
        mapping=mapping.load("squads"),
        people=PeopleMap("squads1"),
        token=TOKEN,
        transport=rec,
    )
    connector = SquadsConnector(settings)
    try:
        assert len((await connector.list_tasks("Platform", None)).tasks) == 5
        assert all("authorization" not in c.headers for c in rec.calls)
    finally:
        await connector.aclose()
    with pytest.raises(ValueError, match="client_id and client_secret"):
        SquadsConnector(
            ConnectorSettings(
                name="squads1",
                platform="squads",
                base_url=fake.url,
                mapping=mapping.load("squads"),
                people=PeopleMap("squads1"),
            )
        )


# -- errors ---------------------------------------------------------------------------------------


async def test_401_is_auth_failed_and_the_secret_never_shows(
    make: Callable[..., tuple[SquadsConnector, Recorder]],
) -> None:
    connector, _ = make("bridge.access:wrong-secret-value")
    with pytest.raises(AuthFailed) as err:
        await connector.list_tasks("Platform", None)
    assert err.value.status == 401 and "Unauthorized" in str(err.value)
    assert "wrong-secret-value" not in str(err.value)


class AccessEdge(fakekit.Fake):
    """What the Cloudflare Access edge answers instead of the origin when the token is refused."""

    platform = "cf-edge"

    def routes(self, app: FastAPI) -> None:
        @app.get("/html/api/squads")
        async def login_page() -> HTMLResponse:
            return HTMLResponse("<html><title>Sign in ・ Cloudflare Access</title></html>", status_code=403)

        @app.get("/redirect/api/squads")
        async def to_team_domain() -> RedirectResponse:
            return RedirectResponse(
                "https://acme.cloudflareaccess.com/cdn-cgi/access/login/app?kid=1", status_code=302
            )

        @app.get("/loginpath/api/squads")
        async def to_login_path() -> RedirectResponse:
            return RedirectResponse(
                "/cdn-cgi/access/login/nucleus.example.com?redirect_url=%2Fapi", status_code=302
            )

        @app.get("/elsewhere/api/squads")
        async def to_elsewhere() -> RedirectResponse:
            return RedirectResponse("https://nucleus.example.com/api/squads", status_code=301)

        @app.get("/json403/api/squads")
        async def forbidden() -> JSONResponse:
            return JSONResponse({"error": "Forbidden: tasks view permission required"}, status_code=403)


@pytest.fixture(scope="module")
def edge() -> Iterator[AccessEdge]:
    with AccessEdge(token="-") as fake:
        yield fake  # type: ignore[misc]


@pytest.mark.parametrize(
    ("prefix", "error", "text"),
    [
        ("/html", AuthFailed, "403 login page"),
        ("/redirect", AuthFailed, "acme.cloudflareaccess.com"),
        ("/loginpath", AuthFailed, "Cloudflare Access login"),
        ("/elsewhere", Permanent, "unexpected redirect to nucleus.example.com/api/squads"),
        ("/json403", Permanent, "Forbidden: tasks view permission required"),
    ],
)
async def test_access_edge_answers(edge: AccessEdge, prefix: str, error: type[Exception], text: str) -> None:
    rec = Recorder()
    connector = SquadsConnector(settings_for(edge, base=prefix + "/api", transport=rec))
    try:
        with pytest.raises(error, match=text) as err:
            await connector.list_tasks("Platform", None)
        if error is Permanent:
            assert not isinstance(err.value, AuthFailed)
        assert len(rec.calls) == 1  # never followed, never retried
    finally:
        await connector.aclose()


async def test_400_is_permanent_with_the_platform_message(
    make: Callable[..., tuple[SquadsConnector, Recorder]],
) -> None:
    connector, _ = make(extra_people={"ghost": "no-such-user"})
    rid = (await by_title(connector))["Fix flaky login test"].remote_id
    with pytest.raises(Permanent, match="Title is required") as err:
        await connector.update_task("Platform", rid, {"title": "   "})
    assert err.value.status == 400
    with pytest.raises(Permanent, match="Invalid assignee_id: user not found"):
        await connector.create_task("Platform", {"title": "Haunted", "assignees": {"ghost"}})


async def test_403_is_permanent_with_the_platform_message(
    fake: SquadsFake, make: Callable[..., tuple[SquadsConnector, Recorder]]
) -> None:
    nobody = fake.add_user("Nora None", squad="Platform", role="employee", tasks_permission="none")
    fake.add_credential("none.access:none-secret", user_id=nobody)
    connector, rec = make("none.access:none-secret")
    with pytest.raises(Permanent, match="tasks view permission required") as err:
        await connector.list_tasks("Platform", None)
    assert err.value.status == 403 and not isinstance(err.value, AuthFailed)
    assert len(rec.of("GET", "/api/tasks")) == 1  # not retried


async def test_404_is_not_found_in_the_client_and_gone_from_view_on_a_task(
    conn: tuple[SquadsConnector, Recorder],
) -> None:
    connector, _ = conn
    with pytest.raises(NotFound, match="Config list not found"):
        await connector.client.config_items("task_nope")
    with pytest.raises(NotFound, match="Task not found"):
        await connector.client.get_task("no-such-task")
    with pytest.raises(GoneFromView, match="Task not found"):
        await connector.get_task("Platform", "no-such-task")


async def test_429_honours_retry_after(fake: SquadsFake, conn: tuple[SquadsConnector, Recorder]) -> None:
    connector, _ = conn
    fake.faults.retry_after = 1
    fake.faults.rate_limit_burst = 1
    started = time.monotonic()
    listing = await connector.list_tasks("Platform", None)
    assert time.monotonic() - started >= 1.0
    assert len(listing.tasks) == 5
    assert fake.requests.count(status=429) == 1


async def test_429_longer_than_max_wait_raises_rate_limited(
    fake: SquadsFake, make: Callable[..., tuple[SquadsConnector, Recorder]]
) -> None:
    connector, _ = make(max_wait=0.5)
    fake.faults.retry_after = 7
    fake.faults.rate_limit_burst = 1
    with pytest.raises(RateLimited) as err:
        await connector.list_tasks("Platform", None)
    assert err.value.retry_after == 7


async def test_5xx_is_retried(
    fake: SquadsFake, make: Callable[..., tuple[SquadsConnector, Recorder]]
) -> None:
    connector, rec = make()

    def heal(response: httpx.Response) -> None:  # the first 500 switches the fault off again
        if response.status_code == 500:
            fake.faults.error_rate = 0.0

    rec.on_response = heal
    fake.faults.error_rate = 1.0
    listing = await connector.list_tasks("Platform", None)
    assert len(listing.tasks) == 5
    assert fake.requests.count(status=500) == 1 and fake.requests.count("GET", "/api/squads") == 2


async def test_persistent_5xx_is_retryable(
    fake: SquadsFake, make: Callable[..., tuple[SquadsConnector, Recorder]]
) -> None:
    connector, _ = make(max_retries=2)
    fake.faults.error_rate = 1.0
    with pytest.raises(Retryable, match="Internal server error") as err:
        await connector.get_task("Platform", "any")
    assert err.value.status == 500 and fake.requests.count("GET") == 3
    # a create that failed with a 500 may have happened: it is not repeated (markers cover it)
    fake.requests.clear()
    with pytest.raises(Retryable):
        await connector.client.create_task({"title": "maybe"})
    assert fake.requests.count("POST") == 1


async def test_timeout_is_retryable(
    fake: SquadsFake, make: Callable[..., tuple[SquadsConnector, Recorder]]
) -> None:
    connector, _ = make(timeout=0.2, max_retries=1)
    fake.faults.timeout_rate = 1.0
    fake.faults.hang_seconds = 0.5
    started = time.monotonic()
    with pytest.raises(Retryable, match="timed out") as err:
        await connector.get_task("Platform", "any")
    assert not isinstance(err.value, RateLimited)
    assert isinstance(err.value, ConnectorError) and time.monotonic() - started < 2.0


# -- the hierarchy (issue 18) ----------------------------------------------------------------------


async def test_parent_is_read_and_written_as_nucleus_ids(
    conn: tuple[SquadsConnector, Recorder], fake: SquadsFake
) -> None:
    """`parent` goes out as `parent_task_id` (POST /api/tasks, PUT) and comes back as
    RemoteTask.parent_id, both in Nucleus's own ids, never among the canonical values."""
    connector, rec = conn
    seeded = await by_title(connector)
    migrate = seeded["Migrate CI runners to ARM"]
    assert seeded["Benchmark ARM build times"].parent_id == migrate.remote_id  # the seeded subtask
    assert migrate.parent_id is None and "parent" not in migrate.values

    rec.clear()
    top = await connector.create_task("Platform", {"title": "Launch", "parent": None})
    assert "parent_task_id" not in rec.of("POST", "/api/tasks")[0].body and top.parent_id is None
    child = await connector.create_task("Platform", {"title": "Write the post", "parent": top.remote_id})
    assert rec.of("POST", "/api/tasks")[-1].body == {
        "title": "Write the post",
        "parent_task_id": top.remote_id,
    }
    assert child.parent_id == top.remote_id and "parent" not in child.values
    assert (await connector.get_task("Platform", child.remote_id)).parent_id == top.remote_id
    assert (await by_title(connector))["Write the post"].parent_id == top.remote_id
    assert [s["title"] for s in await connector.client.list_subtasks(top.remote_id)] == ["Write the post"]

    rec.clear()
    moved = await connector.update_task("Platform", child.remote_id, {"parent": migrate.remote_id})
    assert rec.of("PUT")[0].body == {"parent_task_id": migrate.remote_id}
    assert moved.parent_id == migrate.remote_id
    assert await connector.client.list_subtasks(top.remote_id) == []
    cleared = await connector.update_task("Platform", child.remote_id, {"parent": None})
    assert rec.of("PUT")[-1].body == {"parent_task_id": None}
    assert cleared.parent_id is None and fake.tasks[child.remote_id]["parent_task_id"] is None
    assert moved.content_hash != cleared.content_hash  # a move shows, though the values are alike


async def test_a_parent_nucleus_refuses(conn: tuple[SquadsConnector, Recorder]) -> None:
    """What the engine never sends (a loop, a task of nowhere) is the platform's 400: Permanent."""
    connector, _ = conn
    seeded = await by_title(connector)
    migrate, bench = seeded["Migrate CI runners to ARM"], seeded["Benchmark ARM build times"]
    with pytest.raises(Permanent, match="own ancestor"):
        await connector.update_task("Platform", migrate.remote_id, {"parent": bench.remote_id})
    with pytest.raises(Permanent, match="not found"):
        await connector.create_task("Platform", {"title": "Orphan", "parent": "no-such-task"})
