"""`initial: match`: two boards a team kept in step by hand are linked, not copied (issue 18)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from bridge.config import MatchKeyConfig
from bridge.engine.matching import KEY_CONFIDENCE, MatchPlan, adopt_existing, normalise, plan
from bridge.engine.recovery import Copy
from bridge.engine.routes import Member
from bridge.store.tables import HistoryRow, LinkRow, TaskRow
from tests import ops
from tests.engine.conftest import Harness, make_harness
from tests.unit.test_recovery_plan import A, B, C, X, copy, route
from tests.world import World

PAIR = ("impactly", "vortask")


@pytest.mark.parametrize("initial", ["match", "match-only"])
async def test_existing_twins_are_linked_not_copied(world: World, tmp_path: Path, initial: str) -> None:
    for i in range(30):
        ops.create(world, "impactly", f"Shared task {i}: ship it")
        ops.create(world, "vortask", f"  shared TASK {i} ship it ")  # case, spacing, punctuation
    for i in range(5):
        ops.create(world, "impactly", f"only on impactly {i}")
    ops.create(world, "impactly", "Twin")  # one member holds this title twice: ambiguous
    ops.create(world, "vortask", "twin")
    ops.create(world, "vortask", "TWIN")
    h: Harness = await make_harness(world, tmp_path, members=list(PAIR), route={"initial": initial})
    try:
        linked = await adopt_existing(h.ctx)
        assert linked == 30
        await h.settle()
        imp, vt = ops.view(world, "impactly"), ops.view(world, "vortask")  # both assert no duplicate
        only = 5 if initial == "match" else 0  # match mirrors the unmatched; match-only leaves them
        assert len(imp) == 30 + 5 + 1 and len(vt) == 30 + only + 2
        async with h.ctx.store.read() as s:
            pairs = await s.scalar(
                select(func.count()).select_from(
                    select(LinkRow.task_id).group_by(LinkRow.task_id).having(func.count() == 2).subquery()
                )
            )
            tasks = await s.scalar(select(func.count()).select_from(TaskRow))
        assert pairs == 30 + only
        assert tasks == 30 + only  # the twins stay out: no canonical task, no copy
        # Linking took the newest title (Vortask's, made last) for both: one write, where they differed.
        assert {normalise(t) for t in imp if "hared" in t or "HARED" in t} == {
            f"shared task {i} ship it" for i in range(30)
        }
        assert set(imp) - {f"only on impactly {i}" for i in range(5)} - {"Twin"} == set(vt) - {
            "twin",
            "TWIN",
        } - {f"only on impactly {i}" for i in range(5)}
        # A linked pair is live: an edit on one side reaches the other.
        task_id = next(t["id"] for title, t in imp.items() if normalise(title) == "shared task 7 ship it")
        ops.edit(world, "impactly", task_id, title="Shared task 7, renamed")
        await h.settle()
        assert "Shared task 7, renamed" in ops.view(world, "vortask")
    finally:
        for conn in h.ctx.connectors.values():
            await conn.aclose()
        await h.daemon.store.close()


# -- the route's explicit key (`match_key`), by table: listings in, links out ----------------------

TAG = {"tag": "ext:"}
SLUG = {"title_regex": r"\[([A-Z]+-\d+)\]"}
URL = {"url": True}
APP = "https://app.example.com/project/1/tasks"


def tagged(member: Member, rid: str, title: str, *tags: str, **kw: Any) -> Copy:
    return copy(member, rid, title, tags=frozenset(tags), **kw)


def at(c: Copy, url: str) -> Copy:
    """The copy with its platform's web address (what `url` keys are made of)."""
    return dataclasses.replace(c, task=dataclasses.replace(c.task, url=url))


def outcome(result: MatchPlan) -> tuple[set[tuple[frozenset[str], float, str]], set[str], set[str]]:
    matches = {(frozenset(c.task.remote_id for c in m.copies), m.confidence, m.by) for m in result.matches}
    return matches, {c.task.remote_id for c in result.ambiguous}, {c.task.remote_id for c in result.unmatched}


def linked(
    *rids: str, confidence: float = KEY_CONFIDENCE, by: str = "key"
) -> tuple[frozenset[str], float, str]:
    return (frozenset(rids), confidence, by)


KEY_TABLE: list[Any] = [
    pytest.param(
        TAG,
        [
            tagged(A, "a1", "Fix login", "ext:ABC-12", "urgent"),
            tagged(B, "b1", "Login is broken", "EXT:abc-12"),  # case ignored, titles differ
            tagged(A, "a2", "one", "team:x"),  # a tag without the prefix is no key
            tagged(B, "b2", "two", "team:x"),
        ],
        ({linked("a1", "b1")}, set(), {"a2", "b2"}),
        id="tag: titles differ, the keys agree",
    ),
    pytest.param(
        URL,
        [
            at(copy(A, "a1", "Fix login"), f"{APP}/7"),
            copy(B, "b1", "Login broken (pasted)", description=f"Same as {APP}/7/."),
            copy(B, "b2", "Unrelated", description=f"see {APP}/77 and https://docs.example.com/x"),
            at(copy(C, "c1", "Not referenced"), f"{APP}/8"),
        ],
        ({linked("a1", "b1")}, set(), {"b2", "c1"}),
        id="url: a description holds another member's task's address",
    ),
    pytest.param(
        URL,
        [at(copy(A, "a1", "t"), f"{APP}/7"), copy(A, "a2", "u", description=f"{APP}/7")],
        (set(), set(), {"a1", "a2"}),
        id="url: a reference within one member is no key",
    ),
    pytest.param(
        SLUG,
        [
            copy(A, "a1", "[ABC-12] Fix login"),
            copy(B, "b1", "Login broken [ABC-12]"),
            copy(C, "c1", "[ABC-13] x"),
        ],
        ({linked("a1", "b1")}, set(), {"c1"}),
        id="title_regex: the slug in the title",
    ),
    pytest.param(
        TAG,
        [
            tagged(A, "a1", "Fix login", "ext:1"),
            tagged(B, "b1", "Fix login", "ext:1"),
            tagged(B, "b2", "Login again", "ext:1"),
        ],
        (set(), {"a1", "b1", "b2"}, set()),
        id="a key one member holds twice is ambiguous",
    ),
    pytest.param(
        TAG,
        [tagged(A, "a1", "t1", "ext:1"), tagged(A, "a2", "t2", "ext:1"), copy(B, "b1", "t1")],
        (set(), set(), {"a1", "a2", "b1"}),
        id="a key only one member holds, twice, links nothing (not even by title)",
    ),
    pytest.param(
        TAG,
        [tagged(A, "a1", "Fix login", "ext:1"), tagged(B, "b1", "Fix login", "ext:2")],
        (set(), set(), {"a1", "b1"}),
        id="titles agree, the keys differ: not linked",
    ),
    pytest.param(
        TAG,
        [
            tagged(A, "a1", "Fix login", "ext:1"),
            tagged(B, "b1", "Fix login", "ext:2"),
            copy(C, "c1", "Fix login"),
        ],
        (set(), {"a1", "b1", "c1"}, set()),
        id="titles agree, the keys differ, and a third without a key could be either",
    ),
    pytest.param(
        TAG,
        [
            tagged(A, "a1", "Fix login", "ext:1"),
            copy(B, "b1", "Fix login"),  # the title twin
            tagged(B, "b2", "Something else", "ext:1"),  # the key twin wins
        ],
        ({linked("a1", "b2")}, set(), {"b1"}),
        id="the key before the title",
    ),
    pytest.param(
        TAG,
        [tagged(A, "a1", "Fix login!", "ext:1"), copy(B, "b1", "fix login")],
        ({linked("a1", "b1", confidence=0.9, by="title")}, set(), set()),
        id="a key matching nothing falls through to the title",
    ),
    pytest.param(
        {**TAG, "only": True},
        [tagged(A, "a1", "Fix login", "ext:1"), copy(B, "b1", "Fix login")],
        (set(), set(), {"a1", "b1"}),
        id="only: a key matching nothing keeps its task out of the titles",
    ),
    pytest.param(
        SLUG,
        [copy(A, "a1", "[ABC-12] Fix login"), copy(B, "b1", "Fix login")],
        ({linked("a1", "b1", confidence=0.9, by="title")}, set(), set()),
        id="title_regex: the titles compare without the slug",
    ),
    pytest.param(
        TAG,
        [
            tagged(A, "a1", "t", "ext:1", "ext:2"),
            tagged(B, "b1", "u", "ext:1"),
            tagged(C, "c1", "v", "ext:2"),
        ],
        ({linked("a1", "b1", "c1")}, set(), set()),
        id="a task with two keys ties their groups",
    ),
    pytest.param(
        TAG,
        [
            tagged(A, "a1", "ours", "ext:1"),  # the origin of X: the marker takes it first
            copy(B, "b1", "ours", X, created=1),
            tagged(C, "c1", "theirs", "ext:1"),
        ],
        ({linked("a1", "b1", confidence=1.0, by="marker")}, set(), {"c1"}),
        id="the marker before the key",
    ),
]


@pytest.mark.parametrize(("key", "copies", "expected"), KEY_TABLE)
def test_match_key(key: dict[str, Any], copies: list[Copy], expected: Any) -> None:
    keyed = dataclasses.replace(route(), match_key=MatchKeyConfig(**key))
    assert outcome(plan(keyed, copies)) == expected


def test_without_a_match_key_tags_and_slugs_are_only_text() -> None:
    copies = [tagged(A, "a1", "[ABC-1] Fix", "ext:1"), tagged(B, "b1", "[ABC-2] Fix", "ext:1")]
    assert outcome(plan(route(), copies)) == (set(), set(), {"a1", "b1"})


async def test_a_tag_key_links_across_platforms_before_titles(world: World, tmp_path: Path) -> None:
    members = ("vortask", "agentkanban")
    ops.create(world, "vortask", "Fix login", tags=["ext:ABC-12"])
    ops.create(world, "vortask", "Same title", tags=["ext:1"])  # keys differ: different work
    ops.create(world, "vortask", "Untagged work", tags=["ext:404"])  # its key matches nothing: by title
    # AgentKanban's copies are the newest, and by a clear margin: a platform reporting whole
    # seconds would otherwise tie with (or trail) the other's milliseconds.
    await asyncio.sleep(1.1)
    ak = ops.create(world, "agentkanban", "Login is broken")
    ops.edit(world, "agentkanban", ak, tags=["ext:ABC-12"])
    ak = ops.create(world, "agentkanban", "Same title")
    ops.edit(world, "agentkanban", ak, tags=["ext:2"])
    ops.create(world, "agentkanban", "untagged  WORK")
    route = {"initial": "match-only", "match_key": {"tag": "ext:"}}
    h: Harness = await make_harness(world, tmp_path, members=list(members), route=route)
    try:
        assert await adopt_existing(h.ctx) == 2
        await h.settle()
        vt, ak_view = ops.view(world, "vortask"), ops.view(world, "agentkanban")  # no duplicate
        # Linking took the newest title (AgentKanban's, made last) for the pair the key linked.
        assert set(vt) == set(ak_view) == {"Login is broken", "Same title", "untagged  WORK"}
        async with h.ctx.store.read() as s:
            rows = (await s.scalars(select(HistoryRow.new).where(HistoryRow.source == "match"))).all()
            assert await s.scalar(select(func.count()).select_from(TaskRow)) == 2
        assert sorted(r["v"] for r in rows if r["v"].startswith("linked")) == [
            "linked across 2 members by key (confidence 1)",
            "linked across 2 members by title (confidence 0.9)",
        ]
        ops.edit(world, "vortask", vt["Login is broken"]["id"], title="Login fixed")
        await h.settle()
        assert "Login fixed" in ops.view(world, "agentkanban")
    finally:
        for conn in h.ctx.connectors.values():
            await conn.aclose()
        await h.daemon.store.close()


async def test_a_url_key_links_the_task_whose_address_was_pasted(world: World, tmp_path: Path) -> None:
    members = ("runs", "vortask")
    run = ops.create(world, "runs", "Nightly export fails")
    pasted = ops.create(world, "vortask", "Export broken again")
    ops.create(world, "vortask", "Nightly export fails")  # the title twin: the address wins
    route = {"initial": "match-only", "match_key": {"url": True}}
    h: Harness = await make_harness(world, tmp_path, members=list(members), route=route)
    try:
        listing = await h.ctx.connectors["runs"].list_tasks(world.scopes["runs"], None)
        address = next(t.url for t in listing.tasks if t.remote_id == run)
        assert address
        ops.edit(world, "vortask", pasted, description=f"Seen in runs: {address}")
        assert await adopt_existing(h.ctx) == 1
        async with h.ctx.store.read() as s:
            links = dict((await s.execute(select(LinkRow.connector, LinkRow.remote_id))).all())
        assert links == {"runs": run, "vortask": pasted}
    finally:
        for conn in h.ctx.connectors.values():
            await conn.aclose()
        await h.daemon.store.close()
