"""Discovery through the Connector protocol: `list_scopes` and `list_people` of each connector
against its fake, over real loopback HTTP (a World of the five fakes); then the matching that
`taskbridge people` does with what they return (`bridge.discover.propose`, pure)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bridge import config as config_mod
from bridge import discover
from bridge.wiring import build_connectors
from connectors.base import AuthFailed, Connector, Permanent, PersonInfo
from tests.world import PERSON_TOKENS, World

PLATFORMS = ("impactly", "vortask", "agentkanban", "runs", "squads")
WRONG_SCOPE = {
    "impactly": "00000000-0000-4000-8000-000000000000",
    "vortask": "999",
    "runs": "999",
    "squads": "No Such Squad",
}


@pytest.fixture(scope="module")
def five() -> Iterator[World]:
    w = World(PLATFORMS).start()
    yield w
    w.stop()


@pytest.fixture
def world(five: World) -> World:
    """The five fakes, back to their first state (the World's scopes and people again)."""
    five.reset()
    return five


@pytest.fixture
def config(world: World, tmp_path: Path) -> config_mod.Config:
    return config_mod.load(world.config(tmp_path))


@pytest_asyncio.fixture
async def conns(config: config_mod.Config) -> AsyncIterator[dict[str, Connector]]:
    built = build_connectors(config)
    yield built
    for conn in built.values():
        await conn.aclose()


# -- what each fake holds, read in-process (the expected answers) ---------------------------------


def more_scopes(world: World, platform: str) -> None:
    """A second project/board/squad, made the way the platform allows (its API where it has a
    create call, else the fake's helper standing in for the web app)."""
    fake = world.fakes[platform]
    if platform == "impactly":  # projects are read-only over the API
        fake.call(lambda: fake.add_project("Grants 2026", visibility="private", color="#ff8800"))
    elif platform == "vortask":
        with world.client(platform) as c:
            c.post("/projects", json={"name": "Website"}).raise_for_status()
    elif platform == "agentkanban":
        with world.client(platform) as c:
            c.post("/boards", json={"name": "Roadmap"}).raise_for_status()
    elif platform == "squads":
        fake.call(lambda: fake.add_squad("Support"))


def fake_scopes(world: World, platform: str) -> set[tuple[str, str]]:
    """(scope id, name) of every container the fake holds for the World's credential."""
    fake: Any = world.fakes[platform]
    if platform == "impactly":
        return fake.call(lambda: {(p.id, p.name) for p in fake.projects.values()})
    if platform == "vortask":
        alice = fake.alice.id
        return fake.call(lambda: {(str(p.id), p.name) for p in fake.projects.values() if p.member_of(alice)})
    if platform == "agentkanban":
        return fake.call(lambda: {(b.id, b.name) for b in fake.boards.values()})
    if platform == "squads":  # a squad's scope is its name
        return fake.call(lambda: {(s["name"], s["name"]) for s in fake.squads.values()})
    return set()  # runs: PostHog's Tasks API lists no projects


def seed_people(world: World, platform: str) -> set[PersonInfo]:
    """Make the people of `platform` visible as its API shows them; the people list_people of
    the World's scope must then return."""
    fake: Any = world.fakes[platform]
    scope = world.scopes[platform]
    alice, bob = world.people["alice"].get(platform), world.people["bob"].get(platform)
    if platform == "impactly":
        # no members endpoint: Bob is seen as an assignee (an id only), Alice by her comment
        with world.client(platform) as c:
            task = c.post("/tasks", json={"title": "Q3 report", "project_id": scope, "assignee_id": bob})
            task.raise_for_status()
        fake.call(lambda: fake.add_comment(task.json()["id"], "I can review it", author_id=alice))
        return {PersonInfo(alice, "Alice Chen"), PersonInfo(bob)}
    if platform == "vortask":  # the project's members, with emails
        return fake.call(
            lambda: {
                PersonInfo(m.user_id, fake.users[m.user_id].display_name, fake.users[m.user_id].email)
                for m in fake.projects[int(scope)].members.values()
            }
        )
    if platform == "runs":  # the creators of the project's tasks
        with world.client(platform) as c:
            c.post(f"/projects/{scope}/tasks/", json={"title": "Triage flaky test"}).raise_for_status()
        user = fake.user
        return {PersonInfo(str(user.id), f"{user.first_name} {user.last_name}", user.email)}
    if platform == "squads":  # whom the visible tasks name: assignee, reporter and creator
        with world.client(platform) as c:
            c.post("/tasks", json={"title": "Rotate keys", "assignee_id": alice}).raise_for_status()
        bot = fake.call(lambda: next(u for u in fake.users.values() if u["name"] == "Bridge Bot"))
        return {PersonInfo(alice, "Ada Park"), PersonInfo(str(bot["id"]), "Bridge Bot")}
    return set()  # agentkanban: no people in its API


# -- list_scopes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_list_scopes_returns_the_platforms_containers(
    world: World, conns: dict[str, Connector], platform: str
) -> None:
    more_scopes(world, platform)
    expected = fake_scopes(world, platform)
    found = await conns[platform].list_scopes()
    assert {(s.id, s.name) for s in found} == expected
    assert len(found) == len(expected)  # each once
    if platform == "runs":
        assert found == []
        assert world.fakes[platform].requests.count() == 0  # nothing asked: there is nothing to ask
    else:
        assert world.scopes[platform] in {s.id for s in found}, "the World's own scope is listed"
        assert len(expected) >= 2


async def test_list_scopes_carries_what_the_platform_says_of_a_scope(
    world: World, conns: dict[str, Connector]
) -> None:
    more_scopes(world, "impactly")
    grants = next(s for s in await conns["impactly"].list_scopes() if s.name == "Grants 2026")
    assert grants.extra == {"visibility": "private", "color": "#ff8800"}
    default = next(s for s in await conns["vortask"].list_scopes() if s.id == "1")
    assert default.extra == {"role": "Admin", "tasks": "0"}
    board = next(s for s in await conns["agentkanban"].list_scopes() if s.id == world.scopes["agentkanban"])
    assert board.extra == {"permission": "edit"}
    platform = next(s for s in await conns["squads"].list_scopes() if s.id == "Platform")
    assert set(platform.extra) == {"squad_id"}


@pytest.mark.parametrize("platform", [p for p in PLATFORMS if p != "runs"])
async def test_list_scopes_with_a_refused_credential_is_auth_failed(
    world: World, tmp_path: Path, platform: str
) -> None:
    wrong = {"client_secret": "wrong"} if platform == "squads" else {"token": "wrong_token"}
    cfg = config_mod.load(world.config(tmp_path, extra_connector={platform: wrong}))
    conn = build_connectors(cfg)[platform]
    try:
        with pytest.raises(AuthFailed):
            await conn.list_scopes()
    finally:
        await conn.aclose()


# -- list_people ----------------------------------------------------------------------------------


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_list_people_returns_whom_the_platform_shows(
    world: World, conns: dict[str, Connector], platform: str
) -> None:
    expected = seed_people(world, platform)
    found = await conns[platform].list_people(world.scopes[platform])
    assert set(found) == expected
    assert len({p.remote_id for p in found}) == len(found)  # each once
    if platform == "vortask":  # the only platform here that shows emails of the World's people
        assert {p.email for p in found} == {"alice@example.com", "bob@example.com"}
    elif platform != "runs":
        assert all(p.email is None for p in found)


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_list_people_without_a_scope(world: World, conns: dict[str, Connector], platform: str) -> None:
    expected = seed_people(world, platform)
    found = set(await conns[platform].list_people())
    if platform == "runs":
        assert found == set()  # no project to read: the API lists none
    else:
        assert found == expected  # the World's fakes have people in one scope only


async def test_vortask_people_of_every_project_each_once(world: World, conns: dict[str, Connector]) -> None:
    fake: Any = world.fakes["vortask"]
    with world.client("vortask") as c:
        project = c.post("/projects", json={"name": "Website"}).raise_for_status().json()
    carol = fake.add_user("carol@example.com", "Carol", project_id=int(project["id"]))
    found = await conns["vortask"].list_people()
    assert {p.name for p in found} == {"Alice", "Bob", "Carol"}  # Alice is in both projects: once
    assert PersonInfo(carol.id, "Carol", "carol@example.com") in found
    only_website = await conns["vortask"].list_people(str(project["id"]))
    assert {p.name for p in only_website} == {"Alice", "Carol"}


@pytest.mark.parametrize("platform", sorted(WRONG_SCOPE))
async def test_list_people_of_a_wrong_scope_is_an_error_not_nobody(
    conns: dict[str, Connector], platform: str
) -> None:
    with pytest.raises(Permanent):
        await conns[platform].list_people(WRONG_SCOPE[platform])


async def test_vortask_token_without_projects_read_is_refused(world: World, tmp_path: Path) -> None:
    fake: Any = world.fakes["vortask"]
    fake.add_token(fake.alice.id, "vt_tasks_only", scopes=["tasks:read", "tasks:write"])
    cfg = config_mod.load(world.config(tmp_path, extra_connector={"vortask": {"token": "vt_tasks_only"}}))
    conn = build_connectors(cfg)["vortask"]
    try:
        with pytest.raises(Permanent) as caught:
            await conn.list_scopes()
        assert caught.value.status == 403
    finally:
        await conn.aclose()


# -- the whole of `people` over the World ---------------------------------------------------------


async def test_people_over_the_world_matches_nobody_it_cannot_tell_apart(
    world: World, config: config_mod.Config, conns: dict[str, Connector]
) -> None:
    """As the World is made, its alice and bob are "Alice Chen" (Impactly: no email shown),
    "Alice" <alice@example.com> (Vortask) and "Ada Park" (Nucleus): nothing the APIs show says
    they are one person, so nothing is matched; each is reported instead."""
    for platform in PLATFORMS:
        seed_people(world, platform)
    result = await discover.people(config, conns=conns)
    assert result.people == {}
    assert result.errors == {}
    assert set(result.skipped) == {"agentkanban", "runs"}  # they sync no assignees
    labels = {(s.connector, s.person.name) for s in result.unmatched}
    assert {
        ("impactly", "Alice Chen"),
        ("vortask", "Alice"),
        ("vortask", "Bob"),
        ("squads", "Ada Park"),
    } <= labels


async def test_people_matches_by_name_once_the_names_agree(
    world: World, config: config_mod.Config, conns: dict[str, Connector]
) -> None:
    for platform in PLATFORMS:
        seed_people(world, platform)
    fake: Any = world.fakes["impactly"]
    bob_task = fake.call(lambda: fake.create_task("Volunteers", assignee_id=world.people["bob"]["impactly"]))
    fake.call(lambda: fake.add_comment(bob_task["id"], "On it", author_id=world.people["bob"]["impactly"]))
    for token, name in ((None, "Alice Chen"), (PERSON_TOKENS["vortask"], "Bob Okafor")):
        with world.client("vortask") as c:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            c.put("/profile", json={"displayName": name}, headers=headers).raise_for_status()
    result = await discover.people(config, conns=conns)
    assert result.people == {
        "alice": {
            "name": "Alice Chen",
            "email": "alice@example.com",
            "ids": {
                "impactly": world.people["alice"]["impactly"],
                "vortask": world.people["alice"]["vortask"],
            },
        },
        "bob": {
            "name": "Bob Okafor",
            "email": "bob@example.com",
            "ids": {"impactly": world.people["bob"]["impactly"], "vortask": world.people["bob"]["vortask"]},
        },
    }
    assert sorted(result.kept_keys) == ["alice", "bob"]  # the config's keys for these ids
    assert {(s.connector, s.person.name) for s in result.unmatched} >= {("squads", "Ada Park")}


# -- matching (pure) --------------------------------------------------------------------------------


def P(rid: str, name: str | None = None, email: str | None = None) -> PersonInfo:
    return PersonInfo(rid, name, email)


def test_emails_match_case_insensitively_whatever_the_names() -> None:
    result = discover.propose(
        {
            "a": [P("a1", "Alice", "Alice@Example.com")],
            "b": [P("b1", "A. Chen", "alice@example.COM ")],
            "c": [P("c1", "Carol", "carol@example.com")],
        }
    )
    assert result.people == {
        "a-chen": {"name": "A. Chen", "email": "Alice@Example.com", "ids": {"a": "a1", "b": "b1"}}
    }
    assert [(s.connector, s.person.remote_id) for s in result.unmatched] == [("c", "c1")]


def test_the_email_less_join_by_normalised_full_name_only() -> None:
    result = discover.propose(
        {
            "mail": [P("m1", "José O'Neil", "jose@example.com"), P("m2", "Bob Okafor", "bob@example.com")],
            "names": [P("n1", "  jose  oneil "), P("n2", "Ben Okafor"), P("n3", "Bob")],
            "more": [P("x1", "JOSÉ O'NEIL")],
        }
    )
    assert result.people == {
        "jose-o-neil": {
            "name": "José O'Neil",
            "email": "jose@example.com",
            "ids": {"mail": "m1", "names": "n1", "more": "x1"},
        }
    }
    unmatched = {s.person.remote_id for s in result.unmatched}
    assert unmatched == {"m2", "n2", "n3"}  # a surname or a first name alone matches nothing
    assert result.ambiguous == []


def test_people_without_email_match_each_other_by_name() -> None:
    result = discover.propose({"a": [P("a1", "Dan Weiss")], "b": [P("b1", "dan weiss")], "c": [P("c1")]})
    assert result.people == {"dan-weiss": {"name": "Dan Weiss", "ids": {"a": "a1", "b": "b1"}}}
    assert [s.person.remote_id for s in result.unmatched] == ["c1"]  # no name, no email


def test_ambiguous_names_are_reported_not_guessed() -> None:
    result = discover.propose(
        {
            "a": [P("a1", "Alex Kim", "alex@one.example"), P("a2", "Sam Lee")],
            "b": [P("b1", "Alex Kim", "alex@two.example"), P("b2", "Sam Lee"), P("b3", "Sam Lee")],
            "c": [P("c1", "Alex Kim")],
        }
    )
    assert result.people == {}
    reasons = sorted(a.reason for a in result.ambiguous)
    assert any("fits 2 people" in r for r in reasons)  # c1: which Alex Kim?
    assert any("b shows 2 people with the name 'Sam Lee'" in r for r in reasons)
    assert any("one name, 2 emails" in r for r in reasons)
    # the Alex Kims stay apart (one per email) and a's Sam Lee is left alone
    assert {s.person.remote_id for s in result.unmatched} == {"a1", "b1", "a2"}


def test_the_configs_keys_are_kept_and_new_keys_are_unique() -> None:
    result = discover.propose(
        {
            "a": [
                P("a1", "Alice Chen", "alice@example.com"),
                P("a2", "Alice Chen", "alice.chen@example.org"),
            ],
            "b": [P("b1", "Alice", "alice@example.com"), P("b2", "A Chen", "alice.chen@example.org")],
        },
        existing={"alice": {"b": "b1"}, "alice-chen": {"x": "1"}},
        order=["b", "a"],
    )
    assert result.people["alice"] == {
        "name": "Alice Chen",
        "email": "alice@example.com",
        "ids": {"b": "b1", "a": "a1"},  # in the config's connector order
    }
    assert result.people["alice-chen-2"]["ids"] == {"b": "b2", "a": "a2"}
    assert result.kept_keys == ["alice"]


def test_the_block_is_yaml_the_config_takes() -> None:
    import yaml

    result = discover.propose(
        {"a": [P("1", "Zoë Ünal", "zoe@example.com")], "b": [P("7", "Zoe Unal")]}  # numeric-looking ids
    )
    text = discover.render_people_yaml(result)
    data = yaml.safe_load(text)
    assert data == {
        "people": {"zoe-unal": {"name": "Zoë Ünal", "email": "zoe@example.com", "ids": {"a": "1", "b": "7"}}}
    }
    for key, person in data["people"].items():
        config_mod.PersonConfig(**person)  # the schema takes it as is
        assert key
