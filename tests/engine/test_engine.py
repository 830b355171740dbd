"""The sync model against five real fakes: mirrors, edits, echoes, conflicts, deletions, comments."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from bridge.engine import health, poller
from bridge.engine.poller import poll_connector
from bridge.store.states import LinkState
from bridge.store.tables import ConflictRow, LinkRow, OutboxRow, TaskRow, WatermarkRow
from connectors.base import ListingEnd, ListingStream, RemoteTask, Retryable
from tests import ops
from tests.engine.conftest import Harness, make_harness
from tests.world import World


def tasks_on(world: World, platform: str) -> list[dict[str, Any]]:
    return ops.raw_tasks(world, platform)


def create_on(world: World, platform: str, title: str) -> str:
    return ops.create(world, platform, title, **({"priority": "high"} if platform != "runs" else {}))


def titles(world: World, platform: str) -> list[str]:
    return sorted(t["title"] for t in tasks_on(world, platform))


def writes(fake: Any) -> int:
    """Write requests a fake served. MCP is JSON-RPC over POST, reads included, so its endpoint is
    left out here; tests of comment writes check the comments themselves."""
    return sum(
        1
        for e in fake.requests.entries
        if e.method in ("POST", "PUT", "PATCH", "DELETE") and e.route != "/mcp"
    )


def intercept_first_update(
    conn: Any, around: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]
) -> list[bool]:
    """Send the connector's first update_task through `around(write)` (which decides what happens
    before and after the real write); later ones go straight through. The list returned holds
    True once the interception has happened, so a test can assert its race was exercised."""
    real_update = conn.update_task
    hit: list[bool] = []

    async def update(scope: str, remote_id: str, changes: Any) -> Any:
        def write() -> Awaitable[Any]:
            return real_update(scope, remote_id, changes)

        if hit:
            return await write()
        hit.append(True)
        return await around(write)

    conn.update_task = update
    return hit


async def edit_during_impactly_write(
    harness: Harness,
    world: World,
    title: str,
    interfere: Callable[[str], None],
) -> None:
    """The read-to-write window: a task made on Vortask and mirrored, then its title edited there;
    the mirror's first update on Impactly runs `interfere(impactly_id)` after the outbox's read
    and before its write (what a person does there meanwhile), and the bridge settles."""
    vt_id = create_on(world, "vortask", title)
    await harness.settle()
    imp_id = ops.view(world, "impactly")[title]["id"]

    async def interfering(write: Callable[[], Awaitable[Any]]) -> Any:
        interfere(imp_id)
        return await write()

    interfered = intercept_first_update(harness.ctx.connectors["impactly"], interfering)
    ops.edit(world, "vortask", vt_id, title=f"{title} from vortask")
    await harness.poll("vortask")
    await harness.settle()
    assert interfered


async def count(h: Harness, model: Any, *where: Any) -> int:
    async with h.ctx.store.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def test_existing_tasks_are_mirrored_everywhere_once(harness: Harness, world: World) -> None:
    for platform in world.platforms:
        create_on(world, platform, f"from {platform}")
    await harness.settle()
    expected = sorted(f"from {p}" for p in world.platforms)
    for platform in world.platforms:
        assert titles(world, platform) == expected, platform
    assert await count(harness, TaskRow) == len(world.platforms)
    assert await count(harness, LinkRow, LinkRow.state == "active") == len(world.platforms) ** 2
    assert await count(harness, OutboxRow, OutboxRow.state == "parked") == 0


async def test_idle_polls_write_nothing(harness: Harness, world: World) -> None:
    create_on(world, "vortask", "steady")
    await harness.settle()
    for fake in world.fakes.values():
        fake.requests.clear()
    await harness.poll()
    assert await harness.drain() == 0
    for platform, fake in world.fakes.items():
        assert writes(fake) == 0, (platform, fake.requests.by_route())


async def test_status_and_priority_map_across_platforms(harness: Harness, world: World) -> None:
    create_on(world, "agentkanban", "mapped")
    await harness.settle()
    scope = world.scopes["agentkanban"]
    with world.client("agentkanban") as c:
        task = next(t for t in c.get(f"/boards/{scope}/tasks").json()["data"] if t["title"] == "mapped")
        lanes = {lane["name"]: lane["id"] for lane in c.get(f"/boards/{scope}/lanes").json()["data"]}
        assert (
            c.post(f"/boards/{scope}/tasks/{task['id']}/move", json={"laneId": lanes["Done"]}).status_code
            == 200
        )
        assert c.patch(f"/boards/{scope}/tasks/{task['id']}", json={"priority": 4}).status_code == 200
    await harness.settle()
    vt = next(t for t in tasks_on(world, "vortask") if t["title"] == "mapped")
    assert (vt["status"], vt["priority"]) == ("Closed", "High")  # urgent is High there (lossy)
    imp = next(t for t in tasks_on(world, "impactly") if t["title"] == "mapped")
    assert (imp["status"], imp["priority"]) == ("completed", "urgent")
    sq = next(t for t in tasks_on(world, "squads") if t["title"] == "mapped")
    assert (sq["status_value"], sq["priority_value"]) == ("done", "urgent")
    # The lossy Vortask copy must not flap the canonical priority back to high.
    for fake in world.fakes.values():
        fake.requests.clear()
    await harness.settle()
    assert sum(writes(f) for f in world.fakes.values()) == 0


async def test_an_edit_reaches_every_side_with_exactly_the_writes_needed(
    harness: Harness, world: World
) -> None:
    create_on(world, "squads", "edit me")
    await harness.settle()
    for fake in world.fakes.values():
        fake.requests.clear()
    vt = next(t for t in tasks_on(world, "vortask") if t["title"] == "edit me")
    with world.client("vortask") as c:
        r = c.put(
            f"/projects/{world.scopes['vortask']}/tasks/{vt['id']}", json={"title": "edited", "tags": ["x"]}
        )
        assert r.status_code == 200
    world.fakes["vortask"].requests.clear()
    await harness.settle()
    for platform in world.platforms:
        assert "edited" in titles(world, platform), platform
    # One write per other platform (squads' PUT, impactly's PATCH, runs' PATCH, agentkanban's PATCH),
    # none back to Vortask: its own edit must not echo.
    assert writes(world.fakes["vortask"]) == 0
    for platform in ("impactly", "agentkanban", "runs", "squads"):
        assert writes(world.fakes[platform]) == 1, (platform, world.fakes[platform].requests.by_route())


async def test_concurrent_edits_newest_wins(harness: Harness, world: World) -> None:
    create_on(world, "impactly", "race")
    await harness.settle()
    sq = next(t for t in tasks_on(world, "squads") if t["title"] == "race")
    imp = next(t for t in tasks_on(world, "impactly") if t["title"] == "race")
    with world.client("impactly") as c:
        assert c.patch(f"/tasks/{imp['id']}", json={"title": "race: impactly"}).status_code == 200
    with world.client("squads") as c:
        assert c.put(f"/tasks/{sq['id']}", json={"title": "race: squads"}).status_code == 200  # later
    await harness.settle()
    for platform in world.platforms:
        assert "race: squads" in titles(world, platform), platform


async def test_concurrent_edits_manual_holds_a_conflict(world: World, tmp_path: Path) -> None:
    h = await make_harness(world, tmp_path, route={"conflict": "manual"})
    try:
        create_on(world, "impactly", "held")
        await h.settle()
        sq = next(t for t in tasks_on(world, "squads") if t["title"] == "held")
        imp = next(t for t in tasks_on(world, "impactly") if t["title"] == "held")
        with world.client("impactly") as c:
            c.patch(f"/tasks/{imp['id']}", json={"title": "held: impactly"})
        with world.client("squads") as c:
            c.put(f"/tasks/{sq['id']}", json={"title": "held: squads"})
        await h.poll("impactly")
        await h.drain()
        await h.poll("squads")
        await h.drain()
        assert await count(h, ConflictRow, ConflictRow.state == "open") == 1
        async with h.ctx.store.sessions() as s:
            conflict = await s.scalar(select(ConflictRow))
        assert conflict is not None and conflict.field == "title"
        assert conflict.candidates == {
            "impactly": "held: impactly",
            "squads": "held: squads",
        }  # named by origin
        from bridge.engine.api_ops import resolve_conflict

        await resolve_conflict(h.ctx, conflict.id, choose="squads")
        await h.settle()
        for platform in world.platforms:
            assert "held: squads" in titles(world, platform), platform
    finally:
        for conn in h.ctx.connectors.values():
            await conn.aclose()
        await h.daemon.store.close()


async def test_comments_appear_once_on_every_comment_platform(harness: Harness, world: World) -> None:
    create_on(world, "agentkanban", "talk")
    await harness.settle()
    ak = next(t for t in tasks_on(world, "agentkanban") if t["title"] == "talk")
    with world.client("agentkanban") as c:
        # An agent's comment (the bridge's own key writes source "api", which it never re-reads).
        r = c.post(
            f"/boards/{world.scopes['agentkanban']}/tasks/{ak['id']}/comments",
            json={"body": "hello from the board", "authorName": "Bea", "source": "agent"},
        )
        assert r.status_code == 201
    imp = next(t for t in tasks_on(world, "impactly") if t["title"] == "talk")
    fake = world.fakes["impactly"]
    fake.call(lambda: fake.add_comment(imp["id"], "hi from impactly"))  # a person, in the web app
    await harness.settle()
    await harness.settle()
    with world.client("impactly") as c:
        bodies = [x["content"] for x in c.get(f"/tasks/{imp['id']}/comments").json()["data"]]
    assert sum("hello from the board" in b for b in bodies) == 1
    with world.client("agentkanban") as c:
        bodies = [
            x["body"]
            for x in c.get(f"/boards/{world.scopes['agentkanban']}/tasks/{ak['id']}/comments").json()["data"]
        ]
    assert sum("hi from impactly" in b for b in bodies) == 1
    assert sum("hello from the board" in b for b in bodies) == 1


async def test_deletion_is_confirmed_then_archived_elsewhere(harness: Harness, world: World) -> None:
    task_id = create_on(world, "vortask", "doomed")
    create_on(world, "vortask", "survivor")
    await harness.settle()
    with world.client("vortask") as c:
        assert c.delete(f"/projects/{world.scopes['vortask']}/tasks/{task_id}").status_code == 204
    await harness.settle()
    imp = next(t for t in tasks_on(world, "impactly") if t["title"] == "doomed")
    assert imp["status"] == "completed"  # archive where supported, else close
    ak = [t for t in tasks_on(world, "agentkanban") if t["title"] == "doomed"]
    assert ak and ak[0]["archived"] is True
    assert "survivor" in titles(world, "impactly")


async def test_comment_sweep_covers_every_task_in_turn(harness: Harness, world: World) -> None:
    from bridge.engine.comments import sweep_comments
    from bridge.engine.poller import poll_connector

    made = [ops.create(world, "agentkanban", f"sweep {i}") for i in range(5)]
    await harness.settle()
    ops.comment(world, "agentkanban", made[-1], "late comment on the last task")
    route, member = harness.ctx.member("agentkanban", world.scopes["agentkanban"])  # type: ignore[misc]
    for _ in range(3):  # a budget of 2 tasks a sweep reaches the fifth task on the third sweep
        await poll_connector(
            harness.ctx, "agentkanban"
        )  # stores the watermark; the sweep's place must survive
        await sweep_comments(harness.ctx, route, member, budget=2, extra=[])
    await harness.drain()
    imp = ops.view(world, "impactly")["sweep 4"]["id"]
    assert sum("late comment" in c for c in ops.comments(world, "impactly", imp)) == 1


async def test_a_sweep_reads_its_links_in_parts_and_misses_none(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge.engine import comments

    made = [ops.create(world, "agentkanban", f"parts {i}") for i in range(5)]
    await harness.settle()
    for i, task_id in enumerate(made):
        ops.comment(world, "agentkanban", task_id, f"comment on part {i}")
    monkeypatch.setattr(comments, "IDS_PER_READ", 2)  # PostgreSQL binds at most 32,767 a statement
    route, member = harness.ctx.member("agentkanban", world.scopes["agentkanban"])  # type: ignore[misc]
    await poll_connector(harness.ctx, "agentkanban")
    await comments.sweep_comments(harness.ctx, route, member, budget=1000, extra=[])
    await harness.drain()
    shown = ops.view(world, "impactly")
    for i in range(5):
        found = ops.comments(world, "impactly", shown[f"parts {i}"]["id"])
        assert [c for c in found if c.endswith(f"comment on part {i}")] == found and len(found) == 1


async def test_comments_of_a_link_closed_during_a_sweep_are_not_recorded(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep reads its links once, then each task's comments: a link closed meanwhile (its id
    reused for another task there, or unlinked) no longer says whose comments those are."""
    from bridge.engine.comments import sweep_comments

    task_id = ops.create(world, "agentkanban", "closed meanwhile")
    await harness.settle()
    ops.comment(world, "agentkanban", task_id, "not this task's any more")
    route, member = harness.ctx.member("agentkanban", world.scopes["agentkanban"])  # type: ignore[misc]
    await poll_connector(harness.ctx, "agentkanban")
    conn = harness.ctx.connectors["agentkanban"]
    listed = conn.list_comments

    async def closing_first(scope: str, remote_id: str) -> Any:
        async with harness.ctx.store.transaction() as session:
            link = await session.scalar(
                select(LinkRow).where(LinkRow.connector == "agentkanban", LinkRow.remote_id == remote_id)
            )
            assert link is not None
            link.state = LinkState.UNLINKED
        return await listed(scope, remote_id)

    monkeypatch.setattr(conn, "list_comments", closing_first)
    assert await sweep_comments(harness.ctx, route, member, budget=1000, extra=[]) == 0
    await harness.drain()
    assert ops.comments(world, "impactly", ops.view(world, "impactly")["closed meanwhile"]["id"]) == []


async def test_a_listing_that_lost_most_tasks_deletes_nothing(harness: Harness, world: World) -> None:
    made = [ops.create(world, "vortask", f"guarded {i}") for i in range(6)]
    await harness.settle()
    with world.client("vortask") as c:
        for task_id in made[:4]:  # two thirds gone at once: far over max_delete_share (0.2)
            assert c.delete(f"/projects/{world.scopes['vortask']}/tasks/{task_id}").status_code == 204
    await harness.poll("vortask")
    await harness.drain()
    async with harness.ctx.store.read() as s:
        guard = (await health.load(s))["vortask"].deletion_guard
    assert guard is not None and "max_delete_share" in guard
    for platform in ("impactly", "squads"):
        shown = ops.view(world, platform)
        assert all(shown[f"guarded {i}"]["status"] == "todo" for i in range(6)), platform  # nothing closed


async def _with(world: World, tmp_path: Path, **route: Any) -> Harness:
    return await make_harness(world, tmp_path, route=route)


async def _close(h: Harness) -> None:
    for conn in h.ctx.connectors.values():
        await conn.aclose()
    await h.daemon.store.close()


async def test_concurrent_edits_prefer_a_connector(world: World, tmp_path: Path) -> None:
    h = await _with(world, tmp_path, conflict={"prefer": "impactly"})
    try:
        create_on(world, "vortask", "preferred")
        await h.settle()
        imp = next(t for t in tasks_on(world, "impactly") if t["title"] == "preferred")
        sq = next(t for t in tasks_on(world, "squads") if t["title"] == "preferred")
        ops.edit(world, "impactly", imp["id"], title="preferred: impactly")
        ops.edit(world, "squads", sq["id"], title="preferred: squads")  # later, but not preferred
        await h.poll("impactly")
        await h.poll("squads")
        await h.settle()
        for platform in world.platforms:
            assert "preferred: impactly" in titles(world, platform), platform
    finally:
        await _close(h)


async def test_on_delete_delete_removes_the_mirrors(world: World, tmp_path: Path) -> None:
    h = await _with(world, tmp_path, on_delete="delete")
    try:
        doomed = create_on(world, "agentkanban", "removed everywhere")
        for i in range(5):
            create_on(world, "agentkanban", f"bystander {i}")
        await h.settle()
        with world.client("agentkanban") as c:
            assert c.delete(f"/boards/{world.scopes['agentkanban']}/tasks/{doomed}").status_code == 204
        await h.settle()
        for platform in ("impactly", "vortask", "squads"):  # runs soft-deletes: gone from its listing too
            assert "removed everywhere" not in titles(world, platform), platform
        assert "removed everywhere" not in titles(world, "runs")
        assert "bystander 0" in titles(world, "vortask")
    finally:
        await _close(h)


async def test_on_delete_unlink_leaves_the_mirrors_alone(world: World, tmp_path: Path) -> None:
    h = await _with(world, tmp_path, on_delete="unlink")
    try:
        doomed = create_on(world, "vortask", "let go")
        for i in range(5):
            create_on(world, "vortask", f"kept {i}")
        await h.settle()
        with world.client("vortask") as c:
            assert c.delete(f"/projects/{world.scopes['vortask']}/tasks/{doomed}").status_code == 204
        await h.settle()
        imp = ops.view(world, "impactly")["let go"]
        assert imp["status"] == "todo"  # untouched
        ops.edit(world, "impactly", imp["id"], title="let go, edited")
        await h.settle()
        assert "let go, edited" not in titles(world, "squads")  # no longer synced
    finally:
        await _close(h)


async def test_initial_new_only_leaves_existing_tasks_alone(world: World, tmp_path: Path) -> None:
    create_on(world, "squads", "existed before")
    h = await _with(world, tmp_path, initial="new-only")
    try:
        await h.settle()
        assert "existed before" not in titles(world, "vortask")
        create_on(world, "squads", "came after")
        await h.settle()
        for platform in world.platforms:
            assert "came after" in titles(world, platform), platform
        assert "existed before" not in titles(world, "impactly")
    finally:
        await _close(h)


async def test_filter_mirrors_matching_tasks_and_unlinks_leavers(world: World, tmp_path: Path) -> None:
    h = await _with(world, tmp_path, filter={"status": ["todo", "in_progress", "blocked"]})
    try:
        create_on(world, "vortask", "open work")
        closed = create_on(world, "vortask", "closed work")
        ops.edit(world, "vortask", closed, status="done")
        await h.settle()
        assert "open work" in titles(world, "impactly")
        assert "closed work" not in titles(world, "impactly")  # never matched the filter
        vt = ops.view(world, "vortask")["open work"]["id"]
        ops.edit(world, "vortask", vt, status="done")  # leaves the filter
        await h.settle()
        imp = ops.view(world, "impactly")["open work"]
        assert imp["status"] == "todo"  # unlinked, not closed or deleted elsewhere
        ops.edit(world, "vortask", vt, title="open work, renamed")
        await h.settle()
        assert "open work, renamed" not in titles(world, "impactly")
    finally:
        await _close(h)


async def test_an_echo_seen_before_its_write_commits_is_not_an_edit(harness: Harness, world: World) -> None:
    """The platform reports our write (webhook or poll) before the outbox commits the new base,
    while the source has moved on: the echo must not win as 'the newest edit'."""
    vt_id = create_on(world, "vortask", "raced")
    await harness.settle()

    async def echo_before_commit(write: Callable[[], Awaitable[Any]]) -> Any:
        ops.edit(world, "vortask", vt_id, title="raced v2")  # the source moves on first...
        await harness.poll("vortask")
        result = await write()  # ...then our older write lands
        await harness.poll("impactly")  # and is seen before this write commits its base
        return result

    raced = intercept_first_update(harness.ctx.connectors["impactly"], echo_before_commit)
    ops.edit(world, "vortask", vt_id, title="raced v1")
    await harness.poll("vortask")
    await harness.settle()
    assert raced
    for platform in world.platforms:
        assert "raced v2" in titles(world, platform), platform


async def test_a_write_that_landed_unrecorded_is_still_ours_when_tried_again(
    harness: Harness, world: World
) -> None:
    """A write goes out stale (the source moved on while it was in flight), lands, and its answer
    is lost (a timeout after the platform applied it; a SIGKILL before the commit is the same to
    the store). Its retry plans the newer value: the read before that write finds our older
    value there, stamped later than the source's edit. It is our echo, not an edit that wins as
    'the newest' (the drill once ended with a task's last title lost on every side this way)."""
    vt_id = create_on(world, "vortask", "unrecorded")
    await harness.settle()

    async def lands_then_times_out(write: Callable[[], Awaitable[Any]]) -> Any:
        ops.edit(world, "vortask", vt_id, title="unrecorded v2")  # the source moves on...
        await harness.poll("vortask")
        await write()  # ...our older write (v1) lands after that edit...
        raise Retryable("PUT timed out", connector="impactly")  # ...and its answer never comes

    raced = intercept_first_update(harness.ctx.connectors["impactly"], lands_then_times_out)
    ops.edit(world, "vortask", vt_id, title="unrecorded v1")
    await harness.poll("vortask")
    await harness.settle()
    assert raced
    for platform in world.platforms:
        assert "unrecorded v2" in titles(world, platform), platform


async def test_an_edit_undone_while_our_write_of_it_was_lost_is_undone_there_too(
    harness: Harness, world: World
) -> None:
    """A write lands, its answer is lost, and the source undoes the edit meanwhile: the retry has
    nothing left to write by the base, yet the side shows the lost write's value. It must be
    written back, not cleared from the claims and then taken for an edit there."""
    vt_id = create_on(world, "vortask", "undone")
    await harness.settle()

    async def lands_then_times_out(write: Callable[[], Awaitable[Any]]) -> Any:
        await write()  # our write of v1 lands...
        ops.edit(world, "vortask", vt_id, title="undone")  # ...the source undoes the edit...
        await harness.poll("vortask")
        raise Retryable("PUT timed out", connector="impactly")  # ...and the answer never comes

    raced = intercept_first_update(harness.ctx.connectors["impactly"], lands_then_times_out)
    ops.edit(world, "vortask", vt_id, title="undone v1")
    await harness.poll("vortask")
    await harness.settle()
    assert raced
    for platform in world.platforms:
        assert titles(world, platform) == ["undone"], platform


async def test_a_comment_landing_beside_a_lost_write_keeps_its_claim(harness: Harness, world: World) -> None:
    """A write's answer is lost and it parks; a comment mirrored to the same side lands; then the
    source undoes the edit. The side still shows the lost write's value: our echo, written back,
    never an edit there (the comment's landing once cleared the claim)."""
    vt_id = create_on(world, "vortask", "commented")
    await harness.settle()
    worker = harness.daemon.worker
    worker.settings = dataclasses.replace(worker.settings, max_attempts=1)  # parks at once

    async def lands_then_times_out(write: Callable[[], Awaitable[Any]]) -> Any:
        await write()
        raise Retryable("PUT timed out", connector="impactly")

    raced = intercept_first_update(harness.ctx.connectors["impactly"], lands_then_times_out)
    ops.edit(world, "vortask", vt_id, title="commented v1")
    await harness.poll("vortask")
    await harness.drain()  # Impactly's write lands, its answer is lost, and it parks
    ops.comment(world, "vortask", vt_id, "a note")
    await harness.poll("vortask")
    await harness.drain()  # the comment lands on Impactly
    shown = ops.comments(world, "impactly", ops.view(world, "impactly")["commented v1"]["id"])
    assert any(text.endswith("a note") for text in shown), shown
    ops.edit(world, "vortask", vt_id, title="commented")  # the source undoes the edit...
    await harness.poll("vortask")  # ...seen before Impactly is polled again
    await harness.drain()
    await harness.settle()
    assert raced
    for platform in world.platforms:
        assert titles(world, platform) == ["commented"], platform


async def test_a_listing_older_than_our_write_does_not_undo_it(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    vt_id = create_on(world, "vortask", "listed")
    await harness.settle()
    conn = harness.ctx.connectors["squads"]
    real_stream = conn.stream_tasks

    def list_then_write(scope: str, watermark: Any) -> ListingStream:
        async def stale() -> AsyncIterator[RemoteTask | ListingEnd]:
            listing = await real_stream(scope, watermark).collect()  # read while our write is queued
            await harness.drain()  # our write of "listed v1" lands and commits
            for task in listing.tasks:
                yield task
            yield ListingEnd(all_ids=listing.all_ids, watermark=listing.watermark)

        return ListingStream(stale())

    ops.edit(world, "vortask", vt_id, title="listed v1")
    await harness.poll("vortask")
    world.fakes["vortask"].requests.clear()
    monkeypatch.setattr(conn, "stream_tasks", list_then_write)
    report = await poll_connector_once(harness, "squads")
    monkeypatch.undo()
    assert report.seen == 1
    assert report.changed == 0  # the stale "listed" is older than our write: no change
    await harness.settle()
    for platform in world.platforms:
        assert "listed v1" in titles(world, platform), platform
    assert writes(world.fakes["vortask"]) == 0


async def test_a_big_poll_commits_a_few_tasks_at_a_time(
    harness: Harness, world: World, monkeypatch: Any
) -> None:
    """The outbox's writers queue on the same write lock as a poll's transactions: a first poll
    of many new tasks must commit them a few at a time (a 10,000-task backfill once mirrored 70
    tasks in its first two minutes), and still end with every task observed once."""
    import itertools

    for i in range(25):
        create_on(world, "vortask", f"batch {i}")
    sessions: list[Any] = []  # held, so no two sessions share an id()
    real_observe = poller.observe

    async def recording(ctx: Any, session: Any, observation: Any) -> bool:
        sessions.append(session)
        return await real_observe(ctx, session, observation)

    monkeypatch.setattr(poller, "observe", recording)
    report = await poll_connector_once(harness, "vortask")
    sizes = [len(list(group)) for _, group in itertools.groupby(sessions, key=id)]
    assert report.changed == 25 and sum(sizes) == 25
    assert max(sizes) <= poller.WRITE_BATCH and len(sizes) >= 3, sizes
    monkeypatch.undo()
    await harness.settle()
    for platform in world.platforms:
        assert sum(t.startswith("batch ") for t in titles(world, platform)) == 25, platform


async def poll_connector_once(harness: Harness, name: str) -> Any:
    from bridge.engine.poller import poll_connector

    return await poll_connector(harness.ctx, name)


async def test_one_update_per_side_while_another_sides_write_is_in_flight(
    harness: Harness, world: World
) -> None:
    """Each write's success re-checks the whole task; a side whose own update is still in flight
    must not get a second one queued behind it (it re-checks when it lands)."""
    import asyncio

    vt_id = create_on(world, "vortask", "slow side")
    await harness.settle()
    others = ("impactly", "runs", "squads")
    landed: list[str] = []
    originals: dict[str, Any] = {}

    def counting(name: str) -> Any:
        async def update(scope: str, remote_id: str, changes: Any) -> Any:
            result = await originals[name](scope, remote_id, changes)
            landed.append(name)
            return result

        return update

    async def slow_update(scope: str, remote_id: str, changes: Any) -> Any:
        for _ in range(400):  # until the three others have succeeded (or 10 s)
            if len(landed) >= len(others):
                break
            await asyncio.sleep(0.025)
        return await originals["agentkanban"](scope, remote_id, changes)

    for name in (*others, "agentkanban"):
        originals[name] = harness.ctx.connectors[name].update_task
    for name in others:
        harness.ctx.connectors[name].update_task = counting(name)  # type: ignore[method-assign]
    harness.ctx.connectors["agentkanban"].update_task = slow_update  # type: ignore[method-assign]
    async with harness.ctx.store.read() as s:
        task_id = await s.scalar(select(LinkRow.task_id).where(LinkRow.remote_id == vt_id))
        before = int(await s.scalar(select(func.count()).select_from(OutboxRow)) or 0)
    for fake in world.fakes.values():
        fake.requests.clear()
    ops.edit(world, "vortask", vt_id, title="slow side v2")
    await harness.poll("vortask")
    await harness.drain()
    assert sorted(landed) == sorted(others)
    async with harness.ctx.store.read() as s:
        rows = (await s.scalars(select(OutboxRow).where(OutboxRow.id > before))).all()
    assert sorted(r.connector for r in rows) == ["agentkanban", "impactly", "runs", "squads"], [
        (r.connector, r.op, r.state) for r in rows
    ]
    assert all(r.task_id == task_id and r.state == "done" for r in rows)
    assert writes(world.fakes["agentkanban"]) == 1
    for platform in world.platforms:
        assert "slow side v2" in titles(world, platform), platform


async def test_newest_weighs_an_edit_against_its_field_not_the_whole_task(
    harness: Harness, world: World
) -> None:
    """The drill's lost titles: AgentKanban's title edit is observed; Impactly's later title edit
    is not yet; then a due date changes on Vortask (the task is now 'newer' than both). Impactly's
    title is still the newest title and must win, everywhere."""
    import asyncio

    vt_id = create_on(world, "vortask", "fields")
    await harness.settle()
    view = {p: ops.view(world, p)["fields"]["id"] for p in ("agentkanban", "impactly")}
    ops.edit(world, "agentkanban", view["agentkanban"], title="fields from agentkanban")
    await harness.poll("agentkanban")  # canonical title: AgentKanban's (its update to Impactly waits)
    await asyncio.sleep(0.05)
    ops.edit(world, "impactly", view["impactly"], title="fields from impactly")
    await asyncio.sleep(0.05)
    ops.edit(world, "vortask", vt_id, due_date="2031-03-04")
    await harness.poll("vortask")  # the task's newest change is now this due date
    await harness.poll("impactly")  # Impactly's title: both moved; it is the newer title
    await harness.settle()
    for platform in world.platforms:
        assert "fields from impactly" in titles(world, platform), platform
    for platform in ("impactly", "vortask", "squads"):
        assert ops.view(world, platform)["fields from impactly"]["due_date"] == "2031-03-04", platform


async def test_a_poll_of_an_unchanged_scope_observes_nothing(
    harness: Harness, world: World, monkeypatch: Any
) -> None:
    """Unchanged tasks are sorted out with one read of their links; only what moved reaches
    observe() (and its write transaction)."""
    for i in range(3):
        create_on(world, "vortask", f"still {i}")
    await harness.settle()
    observed: list[tuple[str, str]] = []
    real = poller.observe

    async def counting(ctx: Any, session: Any, obs: Any) -> bool:
        observed.append((obs.member.connector, obs.task.values.get("title")))
        return await real(ctx, session, obs)

    monkeypatch.setattr(poller, "observe", counting)
    for name in world.platforms:
        await poll_connector_once(harness, name)
    assert observed == []
    ops.edit(world, "runs", ops.view(world, "runs")["still 1"]["id"], title="moved 1")
    await poll_connector_once(harness, "runs")
    assert observed == [("runs", "moved 1")]
    await harness.settle()
    for platform in world.platforms:
        assert "moved 1" in titles(world, platform), platform


async def test_an_edit_of_another_field_between_the_read_and_the_write_is_not_lost(
    harness: Harness, world: World
) -> None:
    """A person changes Impactly's priority after the outbox read the task there and before its
    title write lands. No platform offers a conditional write, so the write goes out; the
    person's edit is older than our write, yet it is not dropped as stale: what Impactly shows
    after the write (the next poll here; a webhook's GET or echo) differs from what the write
    agreed, and that difference is merged like any edit. (An edit of the same field in that
    window is overwritten there: see docs/performance.md, "What the daemon promises".)"""
    await edit_during_impactly_write(
        harness, world, "window 2", lambda imp_id: ops.edit(world, "impactly", imp_id, priority="urgent")
    )
    async with harness.ctx.store.read() as session:
        task = (await session.scalars(select(TaskRow))).one()
    assert task.data["title"] == "window 2 from vortask" and task.data["priority"] == "urgent"
    for platform in ("impactly", "agentkanban", "squads"):  # Vortask tops out at High; runs has none
        assert ops.view(world, platform)["window 2 from vortask"]["priority"] == "urgent", platform


async def test_a_write_refused_after_its_read_reads_again_before_writing(
    harness: Harness, world: World
) -> None:
    """An edit lands on Impactly after the outbox read the task there, and the write is then
    refused (429): the write must not go out late over that edit. It fails, is retried, reads
    again, and the newer Impactly edit wins everywhere."""

    def edit_then_refuse(imp_id: str) -> None:
        ops.edit(world, "impactly", imp_id, title="window from a person")
        world.fakes["impactly"].faults.update({"rate_limit_burst": 1, "retry_after": 0})

    await edit_during_impactly_write(harness, world, "window", edit_then_refuse)
    for platform in world.platforms:
        assert "window from a person" in titles(world, platform), platform


async def test_a_listing_that_breaks_half_way_keeps_what_it_observed_and_nothing_else(
    harness: Harness, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll observes a listing as it arrives, so a listing cut short after 30 of 50 tasks has
    linked the chunks it observed (true observations) but stores no watermark and suspects no
    deletion: the tasks it never saw are not "gone"."""
    monkeypatch.setattr(poller, "CHUNK", 20)
    for i in range(50):
        ops.create(world, "squads", f"listed {i:03d}")
    conn = harness.ctx.connectors["squads"]
    real = conn.stream_tasks

    def breaking(scope: str, watermark: Any) -> ListingStream:
        async def cut() -> AsyncIterator[RemoteTask | ListingEnd]:
            seen = 0
            async with real(scope, watermark) as listing:
                async for task in listing:
                    if seen == 30:
                        raise Retryable("GET /tasks: connection reset half way", connector="squads")
                    seen += 1
                    yield task

        return ListingStream(cut())

    monkeypatch.setattr(conn, "stream_tasks", breaking)
    report = await poll_connector(harness.ctx, "squads")
    assert report.errors == ["squads: GET /tasks: connection reset half way"]
    assert report.seen == 20 and report.deleted == 0  # observed a whole chunk at a time
    async with harness.ctx.store.read() as session:
        linked = await session.scalar(
            select(func.count()).select_from(LinkRow).where(LinkRow.connector == "squads")
        )
        watermark = await session.get(WatermarkRow, ("squads", world.scopes["squads"]))
    assert linked == 20 and watermark is None

    monkeypatch.setattr(conn, "stream_tasks", real)
    report = await poll_connector(harness.ctx, "squads")
    assert not report.errors and report.seen == 50 and report.changed == 30
