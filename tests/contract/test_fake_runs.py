"""Contract tests of the runs (PostHog Tasks) fake, over real loopback HTTP."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.fakekit import free_port
from connectors.runs.fake import Channel, RunsFake, User

TOKEN = "phx_contract_main"
SAM = "phx_contract_sam"  # the teammate's own key (users=, as `--user Sam:KEY`)
KIM = "phx_contract_kim"  # a third user, made from the name
READ_ONLY = "phx_contract_read_only"
WRITE_ONLY = "phx_contract_write_only"
NO_TASK_SCOPE = "phx_contract_insights_only"
EVERY_PROJECT = "phx_contract_every_project"
DEVICE = "0b7a0c55-2a44-4d0e-9d6e-2f5d7c0f6a11"
TEAMMATE_DEVICE = "7f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b"
REPO_ROOT = Path(__file__).resolve().parents[2]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def fake() -> Iterator[RunsFake]:
    fake = RunsFake(token=TOKEN, users=[f"Sam:{SAM}", f"Kim:{KIM}"])
    fake.add_key(READ_ONLY, scopes=["task:read"])
    fake.add_key(WRITE_ONLY, scopes=["task:write"])
    fake.add_key(NO_TASK_SCOPE, scopes=["insight:read"])
    fake.add_project(2, "Second project", "XYZ")
    fake.add_key(EVERY_PROJECT, scopes=["*"], projects=None)
    fake.add_device(DEVICE)
    fake.add_device(TEAMMATE_DEVICE, user=fake.teammate)
    # Channels are kept across /_fake/reset, like projects.
    fake.add_channel("general")
    fake.add_channel("me", personal=True)
    fake.add_channel("sam's", owner=fake.teammate, personal=True)
    fake.delete_channel(fake.add_channel("closed"))
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """A plain client (no credentials) shared by the module: creating clients is slow."""
    with httpx.Client(timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def client(fake: RunsFake) -> Iterator[httpx.Client]:
    """The main key's client, based at project 1's tasks."""
    with httpx.Client(base_url=f"{fake.url}/api/projects/1/tasks/", headers=bearer(TOKEN), timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def sam(fake: RunsFake) -> Iterator[httpx.Client]:
    """The teammate's client, based at project 1's tasks."""
    with httpx.Client(base_url=f"{fake.url}/api/projects/1/tasks/", headers=bearer(SAM), timeout=10) as c:
        yield c


@pytest.fixture(autouse=True)
def clean(fake: RunsFake, http: httpx.Client) -> None:
    assert http.post(f"{fake.url}/_fake/reset").status_code == 200


def create(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    resp = client.post("", json={"title": "A task", **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()


def assert_error(
    resp: httpx.Response, status: int, type_: str, code: str, attr: str | None = None
) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert (body["type"], body["code"], body["attr"]) == (type_, code, attr), body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def slugs(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [t["slug"] for t in resp.json()["results"]]


def channel(fake: RunsFake, name: str) -> Channel:
    return next(c for c in fake.channels.values() if c.name == name)


# -- tasks: create, retrieve, update, delete ------------------------------------------------


def test_create_answers_201_with_the_task_shape(client: httpx.Client) -> None:
    resp = client.post(
        "",
        json={
            "title": "  Fix login  ",
            "description": "Users cannot log in.",
            "repository": "PostHog/PostHog-JS",
            "json_schema": {"type": "object"},
            "signal_report_task_relationship": "implementation",
            "id": "ignored",
        },
    )
    assert resp.status_code == 201
    task = resp.json()
    assert set(task) == {
        "id",
        "task_number",
        "slug",
        "title",
        "title_manually_set",
        "description",
        "origin_product",
        "repository",
        "github_integration",
        "github_user_integration",
        "signal_report",
        "json_schema",
        "internal",
        "archived",
        "ci_prompt",
        "latest_run",
        "created_at",
        "updated_at",
        "created_by",
    }
    assert uuid.UUID(task["id"]).version == 4
    assert (task["task_number"], task["slug"]) == (1, "ABC-1")
    assert task["title"] == "Fix login"  # trimmed like a DRF CharField
    assert task["repository"] == "posthog/posthog-js"
    assert task["origin_product"] == "user_created"
    assert (task["internal"], task["archived"], task["latest_run"]) == (False, False, None)
    assert task["json_schema"] == {"type": "object"}
    assert task["created_at"].endswith("Z") and task["created_at"] == task["updated_at"]
    assert task["created_by"]["id"] == 1 and task["created_by"]["email"] == "alex@example.com"
    assert create(client)["slug"] == "ABC-2"


def test_blank_title_is_taken_from_the_description(client: httpx.Client) -> None:
    task = create(client, title="", description="Investigate the 500s\non checkout")
    assert task["title"] == "Investigate the 500s"


def test_retrieve_and_404s(client: httpx.Client) -> None:
    task = create(client, title="Look me up")
    resp = client.get(f"{task['id']}/")
    assert resp.status_code == 200 and resp.json() == task
    assert_error(client.get(f"{uuid.uuid4()}/"), 404, "invalid_request", "not_found")
    assert_error(client.get("not-a-uuid/"), 404, "invalid_request", "not_found")


def test_patch_is_partial_and_bumps_updated_at(client: httpx.Client) -> None:
    task = create(client, title="Before", description="Keep me", repository="acme/api")
    resp = client.patch(f"{task['id']}/", json={"title": "After", "archived": True, "internal": "yes"})
    assert resp.status_code == 200
    updated = resp.json()
    assert (updated["title"], updated["archived"], updated["internal"]) == ("After", True, True)
    assert (updated["description"], updated["repository"]) == ("Keep me", "acme/api")
    assert updated["created_at"] == task["created_at"]
    assert updated["updated_at"] > task["updated_at"]
    assert client.get(f"{task['id']}/").json() == updated


def test_delete_is_a_soft_delete(http: httpx.Client, fake: RunsFake, client: httpx.Client) -> None:
    task = create(client)
    resp = client.delete(f"{task['id']}/")
    assert resp.status_code == 204 and resp.content == b""
    assert_error(client.get(f"{task['id']}/"), 404, "invalid_request", "not_found")
    assert client.get("", params={"archived": "all", "internal": "false"}).json()["count"] == 0
    assert_error(client.delete(f"{task['id']}/"), 404, "invalid_request", "not_found")
    assert_error(client.post(f"{task['id']}/run/"), 404, "invalid_request", "not_found")
    state = http.get(f"{fake.url}/_fake/state").json()
    assert [(t["id"], t["deleted"]) for t in state["tasks"]] == [(task["id"], True)]
    assert create(client)["task_number"] == 2  # numbers are not reused


def test_trailing_slash_is_optional(fake: RunsFake) -> None:
    base = f"{fake.url}/api/projects/1/tasks"
    with httpx.Client(headers=bearer(TOKEN)) as c:
        created = c.post(base, json={"title": "No slash"})
        assert created.status_code == 201
        task_id = created.json()["id"]
        assert c.get(base).json()["count"] == 1
        assert c.get(f"{base}/{task_id}").json()["title"] == "No slash"
        assert c.patch(f"{base}/{task_id}", json={"title": "Still no slash"}).status_code == 200
    assert fake.requests.count("POST", "/api/projects/{project_id}/tasks/") == 1
    assert fake.requests.count("GET", "/api/projects/{project_id}/tasks/{task_id}/") == 1


def test_unknown_endpoint_and_method(client: httpx.Client) -> None:
    assert_error(client.put("", json={}), 405, "invalid_request", "method_not_allowed")
    assert_error(client.get("x/y/z/"), 404, "invalid_request", "not_found")


# -- auth ---------------------------------------------------------------------------------


def test_missing_and_wrong_credentials_are_401(http: httpx.Client, fake: RunsFake) -> None:
    url = f"{fake.url}/api/projects/1/tasks/"
    assert_error(http.get(url), 401, "authentication_error", "not_authenticated")
    assert_error(
        http.get(url, headers={"Authorization": f"Token {TOKEN}"}),
        401,
        "authentication_error",
        "not_authenticated",
    )
    assert_error(
        http.get(url, headers=bearer("phx_wrong")), 401, "authentication_error", "authentication_failed"
    )
    assert_error(http.post(url, json={"title": "x"}), 401, "authentication_error", "not_authenticated")


def test_scopes_are_enforced_with_403(http: httpx.Client, fake: RunsFake, client: httpx.Client) -> None:
    task = create(client)
    url = f"{fake.url}/api/projects/1/tasks/"
    read = bearer(READ_ONLY)
    assert http.get(url, headers=read).status_code == 200
    assert http.get(f"{url}{task['id']}/runs/", headers=read).status_code == 200
    body = assert_error(
        http.post(url, headers=read, json={"title": "x"}), 403, "authentication_error", "permission_denied"
    )
    assert "task:write" in body["detail"]
    for method, path in [
        ("PATCH", f"{task['id']}/"),
        ("DELETE", f"{task['id']}/"),
        ("POST", f"{task['id']}/run/"),
        ("POST", f"{task['id']}/presence/"),
        ("POST", f"{task['id']}/staged_artifacts/finalize_upload/"),
    ]:
        resp = http.request(method, url + path, headers=read, json={})
        assert_error(resp, 403, "authentication_error", "permission_denied")
    assert http.get(url, headers=bearer(WRITE_ONLY)).status_code == 200  # write implies read
    body = assert_error(
        http.get(url, headers=bearer(NO_TASK_SCOPE)), 403, "authentication_error", "permission_denied"
    )
    assert "task:read" in body["detail"]
    assert client.get(f"{task['id']}/").json()["title"] == "A task"  # nothing changed


def test_projects_unknown_404_and_out_of_scope_403(fake: RunsFake) -> None:
    with httpx.Client(headers=bearer(TOKEN)) as c:
        assert_error(c.get(f"{fake.url}/api/projects/999/tasks/"), 404, "invalid_request", "not_found")
        assert_error(c.get(f"{fake.url}/api/projects/abc/tasks/"), 404, "invalid_request", "not_found")
        assert_error(
            c.get(f"{fake.url}/api/projects/2/tasks/"), 403, "authentication_error", "permission_denied"
        )
        assert c.get(f"{fake.url}/api/projects/@current/tasks/").status_code == 200
    with httpx.Client(headers=bearer(EVERY_PROJECT)) as c:
        created = c.post(f"{fake.url}/api/projects/2/tasks/", json={"title": "Elsewhere"})
        assert created.status_code == 201 and created.json()["slug"] == "XYZ-1"
        task_id = created.json()["id"]
        assert c.get(f"{fake.url}/api/projects/1/tasks/").json()["count"] == 0
        assert_error(
            c.get(f"{fake.url}/api/projects/1/tasks/{task_id}/"), 404, "invalid_request", "not_found"
        )


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "attr"),
    [
        ({"title": "x" * 256}, "max_length", "title"),
        ({"title": None}, "null", "title"),
        ({"title": ["a"]}, "invalid_input", "title"),
        ({"repository": "no-slash"}, "invalid_input", "repository"),
        ({"repository": "a/b/c"}, "invalid_input", "repository"),
        ({"repository": "/repo"}, "invalid_input", "repository"),
        ({"origin_product": "nonsense"}, "invalid_choice", "origin_product"),
        ({"internal": "maybe"}, "invalid_input", "internal"),
        ({"archived": None}, "null", "archived"),
        ({"github_integration": "abc"}, "does_not_exist", "github_integration"),
        ({"github_integration": [1]}, "incorrect_type", "github_integration"),
        ({"signal_report": "not-a-uuid"}, "invalid_input", "signal_report"),
        (
            {"signal_report_task_relationship": "Has Spaces"},
            "invalid_input",
            "signal_report_task_relationship",
        ),
    ],
)
def test_create_validation_errors(client: httpx.Client, body: dict[str, Any], code: str, attr: str) -> None:
    assert_error(client.post("", json=body), 400, "validation_error", code, attr)
    assert client.get("").json()["count"] == 0


def test_validation_on_patch_leaves_the_task_alone(client: httpx.Client) -> None:
    task = create(client, title="Stable")
    assert_error(
        client.patch(f"{task['id']}/", json={"title": "Changed", "repository": "bad"}),
        400,
        "validation_error",
        "invalid_input",
        "repository",
    )
    assert client.get(f"{task['id']}/").json() == task


def test_bodies_must_be_json_objects(client: httpx.Client) -> None:
    assert_error(client.post("", json=["a list"]), 400, "validation_error", "invalid_input", None)
    bad = client.post("", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(bad, 400, "invalid_request", "parse_error")
    form = client.post("", content=b"title=x", headers={"Content-Type": "text/plain"})
    assert_error(form, 415, "invalid_request", "unsupported_media_type")


# -- listing: pagination, order, filters ----------------------------------------------------


def test_empty_list(client: httpx.Client) -> None:
    assert client.get("").json() == {"count": 0, "next": None, "previous": None, "results": []}


def test_pagination_pages_and_links(http: httpx.Client, fake: RunsFake, client: httpx.Client) -> None:
    for i in range(5):
        create(client, title=f"Task {i}")
    base = f"{fake.url}/api/projects/1/tasks/"
    first = client.get("", params={"limit": 2}).json()
    assert first["count"] == 5
    assert [t["slug"] for t in first["results"]] == ["ABC-5", "ABC-4"]  # newest first
    assert first["previous"] is None
    assert first["next"] == f"{base}?limit=2&offset=2"
    second = http.get(first["next"], headers=bearer(TOKEN)).json()
    assert [t["slug"] for t in second["results"]] == ["ABC-3", "ABC-2"]
    assert second["previous"] == f"{base}?limit=2"  # offset 0 is dropped, as DRF does
    last = http.get(second["next"], headers=bearer(TOKEN)).json()
    assert [t["slug"] for t in last["results"]] == ["ABC-1"]
    assert last["next"] is None and last["previous"] == f"{base}?limit=2&offset=2"
    exact = client.get("", params={"limit": 5}).json()
    assert len(exact["results"]) == 5 and exact["next"] is None
    boundary = client.get("", params={"limit": 2, "offset": 4, "search": "task"}).json()
    assert boundary["next"] is None and boundary["previous"] == f"{base}?limit=2&offset=2&search=task"
    beyond = client.get("", params={"offset": 50}).json()
    assert (beyond["count"], beyond["results"], beyond["next"]) == (5, [], None)


@pytest.mark.parametrize(
    "params", [{"limit": "abc"}, {"limit": "0"}, {"limit": "-3"}, {"offset": "x"}, {"offset": "-1"}]
)
def test_bad_limit_or_offset_falls_back_like_drf(client: httpx.Client, params: dict[str, str]) -> None:
    create(client)
    body = client.get("", params=params).json()
    assert body["count"] == 1 and len(body["results"]) == 1


def test_limit_is_clamped_to_100(client: httpx.Client) -> None:
    for i in range(101):
        client.post("", json={"title": f"Bulk {i}"}).raise_for_status()
    page = client.get("", params={"limit": 1000}).json()
    assert page["count"] == 101 and len(page["results"]) == 100
    assert page["next"].endswith("?limit=100&offset=100")
    assert len(client.get("").json()["results"]) == 50  # the default


def test_archived_and_internal_filters(client: httpx.Client) -> None:
    create(client, title="Plain")
    create(client, title="Archived", archived=True)
    create(client, title="Internal", internal=True)
    assert slugs(client.get("")) == ["ABC-1"]
    assert slugs(client.get("", params={"archived": "true"})) == ["ABC-2"]
    assert slugs(client.get("", params={"archived": "all"})) == ["ABC-2", "ABC-1"]
    assert slugs(client.get("", params={"internal": "true"})) == ["ABC-3"]
    assert slugs(client.get("", params={"internal": "false"})) == ["ABC-1"]
    assert_error(
        client.get("", params={"archived": "maybe"}), 400, "validation_error", "invalid_choice", "archived"
    )
    assert_error(
        client.get("", params={"internal": "perhaps"}), 400, "validation_error", "invalid_input", "internal"
    )


def test_repository_creator_product_and_search_filters(fake: RunsFake, client: httpx.Client) -> None:
    create(client, title="Web crash", repository="Acme/Web-App", origin_product="error_tracking")
    create(client, title="Api limits", description="Throttle the WEB hooks", repository="acme/api")
    create(client, title="Other org", repository="globex/web-app")
    with httpx.Client(base_url=client.base_url, headers=bearer(EVERY_PROJECT)) as c:
        c.post("", json={"title": "Same user"}).raise_for_status()
    assert slugs(client.get("", params={"organization": "ACME"})) == ["ABC-2", "ABC-1"]
    assert slugs(client.get("", params={"repository": "web-app"})) == ["ABC-3", "ABC-1"]
    assert slugs(client.get("", params={"repository": "acme/WEB-APP"})) == ["ABC-1"]
    assert slugs(client.get("", params={"origin_product": "error_tracking"})) == ["ABC-1"]
    assert slugs(client.get("", params={"created_by": 1})) == ["ABC-4", "ABC-3", "ABC-2", "ABC-1"]
    assert slugs(client.get("", params={"created_by": 2})) == []
    assert slugs(client.get("", params={"search": "web"})) == ["ABC-2", "ABC-1"]  # title or description
    assert slugs(client.get("", params={"search": "3"})) == ["ABC-3"]  # the task number
    assert slugs(client.get("", params={"search": ""})) == ["ABC-4", "ABC-3", "ABC-2", "ABC-1"]
    assert_error(
        client.get("", params={"created_by": "me"}), 400, "validation_error", "invalid_input", "created_by"
    )
    assert_error(client.get("", params={"stage": ""}), 400, "validation_error", "blank", "stage")


def test_status_matches_the_latest_run_and_stage_any_run(client: httpx.Client) -> None:
    idle, done, redo = (
        create(client, title="Idle"),
        create(client, title="Done"),
        create(client, title="Redo"),
    )
    for task in (done, redo):
        run = client.post(f"{task['id']}/run/").json()["latest_run"]
        client.patch(f"{task['id']}/runs/{run['id']}/", json={"status": "completed", "stage": "build"})
    client.post(f"{redo['id']}/run/").raise_for_status()  # a fresh queued run replaces "completed"
    assert slugs(client.get("", params={"status": "completed"})) == [done["slug"]]
    assert slugs(client.get("", params={"status": "queued"})) == [redo["slug"]]
    assert slugs(client.get("", params={"status": "not_started"})) == [idle["slug"]]
    assert slugs(client.get("", params={"stage": "build"})) == [redo["slug"], done["slug"]]
    assert_error(
        client.get("", params={"status": "done"}), 400, "validation_error", "invalid_choice", "status"
    )


# -- visibility and control (PostHog's visibility.py): per user, 404 alike -------------------

CREATORS = {"me": "Alex", "teammate": "Sam", "nobody": None}
# (creator, origin_product, channel or None, visible to Alex, controlled by Alex)
VISIBILITY: dict[str, tuple[str, str, str | None, bool, bool]] = {
    "own task": ("me", "user_created", None, True, True),
    "teammate's task": ("teammate", "user_created", None, False, False),
    "no creator": ("nobody", "user_created", None, True, True),
    "teammate's signal_report": ("teammate", "signal_report", None, True, True),
    "teammate's signals_scout": ("teammate", "signals_scout", None, True, True),
    "teammate's onboarding": ("teammate", "onboarding", None, True, True),
    "teammate's hogdesk": ("teammate", "hogdesk", None, True, True),
    "teammate's workflow": ("teammate", "workflow", None, True, True),
    "teammate's experiments": ("teammate", "experiments", None, True, False),
    "own experiments": ("me", "experiments", None, True, True),
    "teammate's error_tracking": ("teammate", "error_tracking", None, False, False),
    "own business_knowledge": ("me", "business_knowledge", None, False, False),
    "no-creator business_knowledge": ("nobody", "business_knowledge", None, False, False),
    "own task, public channel": ("me", "user_created", "general", True, True),
    "teammate's task, public channel": ("teammate", "user_created", "general", True, False),
    "no creator, public channel": ("nobody", "user_created", "general", True, False),
    "business_knowledge, public channel": ("me", "business_knowledge", "general", False, False),
    "own task, own personal channel": ("me", "user_created", "me", True, True),
    "teammate's task, their personal channel": ("teammate", "user_created", "sam's", False, False),
    "team-visible origin, their personal channel": ("teammate", "signal_report", "sam's", False, False),
    "own task, their personal channel": ("me", "user_created", "sam's", False, False),
    "own task, deleted channel": ("me", "user_created", "closed", False, False),
}


def make_task(fake: RunsFake, creator: str, origin: str, channel_name: str | None) -> dict[str, Any]:
    """A task made through the API by its creator's key, then filed as PostHog's products would."""
    token = SAM if creator == "teammate" else TOKEN
    with httpx.Client(base_url=f"{fake.url}/api/projects/1/tasks/", headers=bearer(token)) as c:
        task = create(c, title=f"{creator} {origin}", origin_product=origin)
    admin: dict[str, Any] = {}
    if CREATORS[creator] is None:
        admin["created_by"] = None
    if channel_name is not None:
        admin["channel"] = channel(fake, channel_name)
    if admin:
        fake.set_task(task["id"], **admin)
    return task


@pytest.mark.parametrize("case", list(VISIBILITY))
def test_visibility_and_control_per_user(
    http: httpx.Client, fake: RunsFake, client: httpx.Client, case: str
) -> None:
    creator, origin, channel_name, visible, controlled = VISIBILITY[case]
    task = make_task(fake, creator, origin, channel_name)
    listed = client.get("", params={"archived": "all"}).json()
    assert ([t["id"] for t in listed["results"]] == [task["id"]]) is visible
    assert listed["count"] == (1 if visible else 0)
    for path in (f"{task['id']}/", f"{task['id']}/runs/"):
        resp = client.get(path)
        if visible:
            assert resp.status_code == 200, (path, resp.text)
        else:
            assert_error(resp, 404, "invalid_request", "not_found")
    # Writes: 404 (never 403) on a task the key's user does not control, whether it sees it or not.
    writes = [("PATCH", f"{task['id']}/", {"title": "Changed"}), ("POST", f"{task['id']}/run/", {})]
    for method, path, body in writes:
        resp = client.request(method, path, json=body)
        if controlled:
            assert resp.status_code == 200, (method, resp.text)
        else:
            assert_error(resp, 404, "invalid_request", "not_found")
    if visible and not controlled:
        unchanged = client.get(f"{task['id']}/").json()
        assert (unchanged["title"], unchanged["latest_run"]) == (task["title"], None)
    resp = client.delete(f"{task['id']}/")
    if controlled:
        assert resp.status_code == 204
    else:
        assert_error(resp, 404, "invalid_request", "not_found")
    (row,) = http.get(f"{fake.url}/_fake/state").json()["tasks"]
    assert row["deleted"] is controlled


def test_the_creator_sees_and_drives_its_experiments_task(
    fake: RunsFake, client: httpx.Client, sam: httpx.Client
) -> None:
    task = create(sam, title="Try a new checkout", origin_product="experiments")
    assert task["created_by"]["id"] == fake.teammate.id
    assert client.get(f"{task['id']}/").status_code == 200  # team-readable
    assert_error(client.patch(f"{task['id']}/", json={"title": "x"}), 404, "invalid_request", "not_found")
    assert sam.patch(f"{task['id']}/", json={"title": "Mine"}).json()["title"] == "Mine"
    assert sam.post(f"{task['id']}/run/", json={}).json()["latest_run"]["status"] == "queued"
    assert sam.delete(f"{task['id']}/").status_code == 204


def test_other_users_tasks_presence_and_artifacts_are_404_too(
    fake: RunsFake, client: httpx.Client, sam: httpx.Client
) -> None:
    task = create(sam, title="Sam's own")
    for method, path, body in [
        ("POST", f"{task['id']}/runs/", {}),
        ("POST", f"{task['id']}/presence/", {"device_id": DEVICE}),
        ("POST", f"{task['id']}/staged_artifacts/finalize_upload/", {"artifacts": []}),
    ]:
        assert_error(client.request(method, path, json=body), 404, "invalid_request", "not_found")
    run = sam.post(f"{task['id']}/runs/", json={}).json()
    assert_error(client.get(f"{task['id']}/runs/{run['id']}/"), 404, "invalid_request", "not_found")


def test_users_given_to_the_constructor_own_what_they_create(
    fake: RunsFake, client: httpx.Client, sam: httpx.Client
) -> None:
    kim = fake.keys[KIM].user
    assert (kim.id, kim.first_name, kim.email) == (3, "Kim", "kim@example.com")
    assert fake.keys[SAM].user is fake.teammate  # an existing user, found by first name
    with httpx.Client(base_url=client.base_url, headers=bearer(KIM)) as kims:
        by_kim = create(kims, title="Kim's")
        assert by_kim["created_by"]["id"] == 3
        assert slugs(kims.get("")) == ["ABC-1"]
    by_sam = create(sam, title="Sam's")
    assert by_sam["created_by"]["id"] == fake.teammate.id
    assert create(client, title="Alex's")["created_by"]["id"] == fake.user.id
    assert slugs(client.get("")) == ["ABC-3"]
    assert slugs(sam.get("")) == ["ABC-2"]
    assert slugs(client.get("", params={"created_by": 2})) == []  # a filter never widens the view


def test_listings_are_kept_per_viewer(fake: RunsFake, client: httpx.Client, sam: httpx.Client) -> None:
    first = create(sam, title="Private 1")
    assert client.get("").json()["count"] == 0
    assert sam.get("").json()["count"] == 1
    create(sam, title="Private 2")  # lands in both viewers' kept filters
    assert (client.get("").json()["count"], sam.get("").json()["count"]) == (0, 2)
    fake.set_task(first["id"], channel=channel(fake, "general"))  # filed where the team sees it
    assert [t["id"] for t in client.get("").json()["results"]] == [first["id"]]
    fake.set_task(first["id"], channel=channel(fake, "sam's"))
    assert client.get("").json()["count"] == 0
    assert sam.get("").json()["count"] == 2


def test_patch_ignores_origin_product(client: httpx.Client) -> None:
    task = create(client)
    resp = client.patch(f"{task['id']}/", json={"origin_product": "business_knowledge", "title": "Kept"})
    assert resp.status_code == 200 and resp.json()["origin_product"] == "user_created"
    assert client.get(f"{task['id']}/").json()["title"] == "Kept"  # still visible
    assert_error(
        client.patch(f"{task['id']}/", json={"origin_product": "nonsense"}),
        400,
        "validation_error",
        "invalid_choice",
        "origin_product",
    )


def test_channels_and_creators_show_in_the_state(http: httpx.Client, fake: RunsFake) -> None:
    task = make_task(fake, "nobody", "user_created", "general")
    state = http.get(f"{fake.url}/_fake/state").json()
    (row,) = state["tasks"]
    assert (row["id"], row["created_by"], row["channel"]) == (task["id"], None, channel(fake, "general").id)
    assert {(c["name"], c["channel_type"], c["deleted"]) for c in state["channels"]} == {
        ("general", "public", False),
        ("me", "personal", False),
        ("sam's", "personal", False),
        ("closed", "public", True),
    }
    with pytest.raises(ValueError, match="cannot set"):
        fake.set_task(task["id"], title="not an admin field")


def test_user_specs_are_name_colon_key() -> None:
    with pytest.raises(ValueError, match="NAME:KEY"):
        RunsFake(token=TOKEN, users=["no-colon"])
    with pytest.raises(ValueError, match="NAME:KEY"):
        RunsFake(token=TOKEN, users=[":phx_key"])
    fake = RunsFake(token=TOKEN, users=["Dana Lee:phx_dana:with:colons"])
    key = fake.keys["phx_dana:with:colons"]
    assert isinstance(key.user, User) and key.user.email == "dana.lee@example.com"


# -- the usage limit (code_usage_gate) -------------------------------------------------------------


def test_usage_limit_answers_429_without_retry_after(
    http: httpx.Client, fake: RunsFake, client: httpx.Client
) -> None:
    task = create(client)
    fake.exceed_usage_limit(reset_at=datetime(2031, 2, 1, tzinfo=UTC), limit_type="burst")
    resp = client.post(f"{task['id']}/run/", json={"mode": "background"})
    assert resp.status_code == 429
    assert "retry-after" not in resp.headers
    assert resp.json() == {
        "type": "rate_limited",
        "code": "usage_limit_exceeded",
        "error": "You've reached your PostHog Desktop usage limit.",
        "is_pro": False,
        "limit_type": "burst",
        "reset_at": "2031-02-01T00:00:00.000Z",
    }
    assert client.get(f"{task['id']}/").json()["latest_run"] is None  # no run was made
    # Only starting a run is gated; the task (404) and the body (400) are checked first.
    assert client.patch(f"{task['id']}/", json={"title": "still editable"}).status_code == 200
    assert client.post(f"{task['id']}/runs/", json={}).status_code == 201
    assert_error(client.post(f"{uuid.uuid4()}/run/", json={}), 404, "invalid_request", "not_found")
    assert_error(
        client.post(f"{task['id']}/run/", json={"mode": "sideways"}),
        400,
        "validation_error",
        "invalid_choice",
        "mode",
    )
    fake.clear_usage_limit()
    assert client.post(f"{task['id']}/run/", json={}).status_code == 200


def test_usage_limit_switch_over_http_and_reset(
    http: httpx.Client, fake: RunsFake, client: httpx.Client
) -> None:
    task = create(client)
    switch = f"{fake.url}/_fake/usage_limit"
    on = http.post(switch, json={"exceeded": True}).json()["usage_limit"]
    assert on["limit_type"] == "sustained"
    reset_at = datetime.fromisoformat(on["reset_at"])
    assert reset_at > datetime.now(UTC) and (reset_at.day, reset_at.hour) == (1, 0)  # next month
    assert client.post(f"{task['id']}/run/").status_code == 429
    assert http.get(switch).json()["usage_limit"] == on
    assert http.post(switch, json={"exceeded": False}).json() == {"usage_limit": None}
    assert client.post(f"{task['id']}/run/").status_code == 200
    http.post(switch, json={"exceeded": True, "reset_at": "2031-01-01T00:00:00Z", "limit_type": None})
    body = client.post(f"{task['id']}/run/").json()
    assert body["reset_at"] == "2031-01-01T00:00:00.000Z" and "limit_type" not in body
    assert http.post(f"{fake.url}/_fake/reset").status_code == 200  # turned off, as the faults are
    assert http.get(switch).json() == {"usage_limit": None}
    assert http.post(switch, json={"exceeded": "yes"}).status_code == 400
    assert http.post(switch, json={"exceeded": True, "limit_type": "hourly"}).status_code == 400
    assert http.get(switch).json() == {"usage_limit": None}


# -- runs -----------------------------------------------------------------------------------


def test_start_run_answers_the_task_with_a_queued_latest_run(client: httpx.Client) -> None:
    task = create(client)
    resp = client.post(f"{task['id']}/run/", json={"mode": "background", "branch": "main"})
    assert resp.status_code == 200
    body = resp.json()
    run = body["latest_run"]
    assert body["id"] == task["id"] and body["updated_at"] > task["updated_at"]
    assert set(run) == {
        "id",
        "task",
        "status",
        "stage",
        "branch",
        "environment",
        "error_message",
        "output",
        "state",
        "artifacts",
        "created_at",
        "updated_at",
        "completed_at",
    }
    assert (run["task"], run["status"], run["branch"], run["completed_at"]) == (
        task["id"],
        "queued",
        "main",
        None,
    )
    assert_error(
        client.post(f"{task['id']}/run/", json={"mode": "sideways"}),
        400,
        "validation_error",
        "invalid_choice",
        "mode",
    )
    assert_error(client.post(f"{uuid.uuid4()}/run/"), 404, "invalid_request", "not_found")


def test_runs_list_create_retrieve_and_patch(client: httpx.Client) -> None:
    task = create(client)
    first = client.post(f"{task['id']}/runs/", json={"environment": "local"})
    assert first.status_code == 201
    first_run = first.json()
    assert (first_run["status"], first_run["environment"]) == ("not_started", "local")
    second_run = client.post(f"{task['id']}/run/").json()["latest_run"]
    listing = client.get(f"{task['id']}/runs/", params={"limit": 1}).json()
    assert listing["count"] == 2 and [r["id"] for r in listing["results"]] == [second_run["id"]]
    assert listing["next"].endswith("?limit=1&offset=1")
    assert client.get(f"{task['id']}/runs/{first_run['id']}/").json() == first_run

    before = client.get(f"{task['id']}/").json()["updated_at"]
    moved = client.patch(
        f"{task['id']}/runs/{second_run['id']}/",
        json={"status": "in_progress", "stage": "plan", "state": {"a": 1, "b": 2}},
    )
    assert moved.status_code == 200
    assert (moved.json()["status"], moved.json()["stage"], moved.json()["completed_at"]) == (
        "in_progress",
        "plan",
        None,
    )
    done = client.patch(
        f"{task['id']}/runs/{second_run['id']}/",
        json={
            "status": "completed",
            "output": {"pr_url": "https://x/1"},
            "state_remove_keys": ["a"],
            "state": {"c": 3},
        },
    ).json()
    assert done["completed_at"] is not None and done["output"] == {"pr_url": "https://x/1"}
    assert done["state"] == {"mode": "background", "b": 2, "c": 3}
    after = client.get(f"{task['id']}/").json()
    assert after["latest_run"] == done and after["updated_at"] > before  # run changes bump the task

    assert_error(
        client.patch(f"{task['id']}/runs/{second_run['id']}/", json={"status": "done"}),
        400,
        "validation_error",
        "invalid_choice",
        "status",
    )
    assert_error(
        client.patch(f"{task['id']}/runs/{second_run['id']}/", json={"state": [1]}),
        400,
        "validation_error",
        "not_a_dict",
        "state",
    )
    other = create(client, title="Other")
    assert_error(client.get(f"{other['id']}/runs/{first_run['id']}/"), 404, "invalid_request", "not_found")
    assert_error(client.get(f"{task['id']}/runs/{uuid.uuid4()}/"), 404, "invalid_request", "not_found")
    assert client.get(f"{other['id']}/runs/").json() == {
        "count": 0,
        "next": None,
        "previous": None,
        "results": [],
    }


def test_failed_run_records_its_error(client: httpx.Client) -> None:
    task = create(client)
    run = client.post(f"{task['id']}/run/").json()["latest_run"]
    failed = client.patch(
        f"{task['id']}/runs/{run['id']}/", json={"status": "failed", "error_message": "Sandbox timed out"}
    ).json()
    assert (failed["status"], failed["error_message"]) == ("failed", "Sandbox timed out")
    assert failed["completed_at"] is not None


# -- staged artifacts --------------------------------------------------------------------------


def artifact(i: int = 1, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"art-{i}",
        "name": f"notes-{i}.md",
        "type": "user_attachment",
        "storage_path": f"tasks/artifacts/art-{i}",
        "content_type": "text/markdown",
        **fields,
    }


def test_finalize_upload_then_attach_to_the_next_run(client: httpx.Client) -> None:
    task = create(client)
    resp = client.post(
        f"{task['id']}/staged_artifacts/finalize_upload/", json={"artifacts": [artifact(1), artifact(2)]}
    )
    assert resp.status_code == 200
    finalized = resp.json()["artifacts"]
    assert [a["id"] for a in finalized] == ["art-1", "art-2"]
    assert all(a["uploaded_at"].endswith("Z") and a["storage_path"].startswith("tasks/") for a in finalized)
    missing = client.post(f"{task['id']}/run/", json={"pending_user_artifact_ids": ["art-1", "art-9"]})
    body = assert_error(missing, 400, "validation_error", "invalid_input", "pending_user_artifact_ids")
    assert body["missing_artifact_ids"] == ["art-9"]
    run = client.post(f"{task['id']}/run/", json={"pending_user_artifact_ids": ["art-1"]}).json()[
        "latest_run"
    ]
    assert [a["id"] for a in run["artifacts"]] == ["art-1"]
    again = client.post(f"{task['id']}/run/", json={"pending_user_artifact_ids": ["art-1"]})
    assert again.status_code == 400  # attached once, then gone from the staging cache


@pytest.mark.parametrize(
    ("body", "code", "attr"),
    [
        ({}, "required", "artifacts"),
        ({"artifacts": []}, "invalid_input", "artifacts"),
        ({"artifacts": {"id": "x"}}, "not_a_list", "artifacts"),
        ({"artifacts": ["x"]}, "invalid_input", "artifacts__0"),
        ({"artifacts": [artifact(1), artifact(2, type="movie")]}, "invalid_choice", "artifacts__1__type"),
        (
            {"artifacts": [{k: v for k, v in artifact().items() if k != "storage_path"}]},
            "required",
            "artifacts__0__storage_path",
        ),
        ({"artifacts": [artifact(name="n" * 256)]}, "max_length", "artifacts__0__name"),
    ],
)
def test_finalize_upload_validation(client: httpx.Client, body: dict[str, Any], code: str, attr: str) -> None:
    task = create(client)
    assert_error(
        client.post(f"{task['id']}/staged_artifacts/finalize_upload/", json=body),
        400,
        "validation_error",
        code,
        attr,
    )


def test_finalize_upload_unknown_task_is_404(client: httpx.Client) -> None:
    resp = client.post(f"{uuid.uuid4()}/staged_artifacts/finalize_upload/", json={"artifacts": [artifact()]})
    assert_error(resp, 404, "invalid_request", "not_found")


# -- presence ----------------------------------------------------------------------------------


def test_presence_beacon_and_leave(http: httpx.Client, fake: RunsFake, client: httpx.Client) -> None:
    task = create(client)
    url = f"{task['id']}/presence/"
    resp = client.post(url, json={"device_id": DEVICE})
    assert resp.status_code == 204 and resp.content == b""
    assert client.post(url, json={"device_id": DEVICE}).status_code == 204  # idempotent upsert
    rows = http.get(f"{fake.url}/_fake/state").json()["presence"]
    assert [(r["task"], r["device_id"]) for r in rows] == [(task["id"], DEVICE)]
    assert client.request("DELETE", url, json={"device_id": DEVICE}).status_code == 204
    assert http.get(f"{fake.url}/_fake/state").json()["presence"] == []


def test_presence_errors(client: httpx.Client) -> None:
    task = create(client)
    url = f"{task['id']}/presence/"
    assert_error(client.post(url, json={"device_id": str(uuid.uuid4())}), 404, "invalid_request", "not_found")
    assert_error(client.post(url, json={"device_id": TEAMMATE_DEVICE}), 404, "invalid_request", "not_found")
    assert_error(
        client.request("DELETE", url, json={"device_id": str(uuid.uuid4())}),
        404,
        "invalid_request",
        "not_found",
    )
    assert_error(client.post(url, json={}), 400, "validation_error", "required", "device_id")
    assert_error(
        client.post(url, json={"device_id": "phone"}), 400, "validation_error", "invalid_input", "device_id"
    )
    assert_error(
        client.post(f"{uuid.uuid4()}/presence/", json={"device_id": DEVICE}),
        404,
        "invalid_request",
        "not_found",
    )


# -- faults, request log, webhooks, state -----------------------------------------------------


def test_rate_limit_burst_answers_429_with_retry_after(
    http: httpx.Client, fake: RunsFake, client: httpx.Client
) -> None:
    http.post(f"{fake.url}/_fake/faults", json={"rate_limit_burst": 2, "retry_after": 7}).raise_for_status()
    for _ in range(2):
        resp = client.get("")
        assert resp.headers["Retry-After"] == "7"
        body = assert_error(resp, 429, "throttled_error", "throttled")
        assert body["detail"] == "Request was throttled. Expected available in 7 seconds."
    assert client.get("").status_code == 200


def test_error_rate_answers_500(http: httpx.Client, fake: RunsFake, client: httpx.Client) -> None:
    http.post(f"{fake.url}/_fake/faults", json={"error_rate": 1}).raise_for_status()
    body = assert_error(client.post("", json={"title": "x"}), 500, "server_error", "error")
    assert body["detail"] == "A server error occurred."
    http.post(f"{fake.url}/_fake/faults", json={"error_rate": 0}).raise_for_status()
    assert client.get("").json()["count"] == 0  # the failed create did nothing


def test_latency_delays_responses(http: httpx.Client, fake: RunsFake, client: httpx.Client) -> None:
    http.post(f"{fake.url}/_fake/faults", json={"latency": 0.05}).raise_for_status()
    started = time.monotonic()
    assert client.get("").status_code == 200
    assert time.monotonic() - started >= 0.05


def test_request_log_counts_by_route(http: httpx.Client, fake: RunsFake, client: httpx.Client) -> None:
    task = create(client)
    client.get("")
    client.get("")
    client.patch(f"{task['id']}/", json={"title": "y"})
    client.get(f"{uuid.uuid4()}/")
    assert fake.requests.count("GET", "/api/projects/{project_id}/tasks/") == 2
    assert fake.requests.count("GET", "/api/projects/{project_id}/tasks/{task_id}/", status=404) == 1
    assert fake.requests.writes() == 2
    log = http.get(f"{fake.url}/_fake/requests").json()
    assert log["total"] == 5 and log["by_route"]["PATCH /api/projects/{project_id}/tasks/{task_id}/"] == 1


def test_no_webhooks_are_sent(http: httpx.Client, fake: RunsFake, client: httpx.Client) -> None:
    task = create(client)
    client.patch(f"{task['id']}/", json={"title": "changed"})
    client.post(f"{task['id']}/run/")
    client.delete(f"{task['id']}/")
    assert http.get(f"{fake.url}/_fake/webhooks").json() == []


TIMESTAMPS = {"created_at", "updated_at", "completed_at", "expires_at", "uploaded_at"}


def timeless(value: Any) -> Any:
    """The state without timestamps (the clock is real), to compare two seeded fakes."""
    if isinstance(value, dict):
        return {k: timeless(v) for k, v in value.items() if k not in TIMESTAMPS}
    if isinstance(value, list):
        return [timeless(v) for v in value]
    return value


def test_seeded_demo_data_is_deterministic_and_survives_reset(http: httpx.Client) -> None:
    one, two = RunsFake(token=TOKEN, seed=7), RunsFake(token=TOKEN, seed=7)
    assert timeless(one.snapshot()) == timeless(two.snapshot())
    assert timeless(one.snapshot()) != timeless(RunsFake(token=TOKEN, seed=8).snapshot())
    tasks = one.snapshot()["tasks"]
    assert 5 <= len(tasks) <= 8
    statuses = {t["latest_run"]["status"] if t["latest_run"] else "not_started" for t in tasks}
    assert {"completed", "in_progress", "failed", "queued", "not_started"} <= statuses
    assert sum(t["archived"] for t in tasks) == 1
    with one:
        with httpx.Client(base_url=f"{one.url}/api/projects/1/tasks/", headers=bearer(TOKEN)) as c:
            c.post("", json={"title": "extra"}).raise_for_status()
            assert c.get("").json()["count"] == len(tasks)  # the archived one is hidden, the extra shown
            http.post(f"{one.url}/_fake/reset").raise_for_status()
            assert timeless(one.snapshot()) == timeless(two.snapshot())


def test_standalone_serve_forever(http: httpx.Client) -> None:
    port = free_port()
    code = (
        "from connectors import fake_class\n"
        f"fake_class('runs')(token={TOKEN!r}, seed=1).serve_forever({port})\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                resp = http.get(f"http://127.0.0.1:{port}/api/projects/1/tasks/", headers=bearer(TOKEN))
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, "standalone fake did not start"
                time.sleep(0.05)
        assert resp.status_code == 200 and resp.json()["count"] >= 5
    finally:
        proc.terminate()
        proc.wait(timeout=10)
