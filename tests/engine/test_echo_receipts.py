"""A webhook delivery that reports nothing new is answered without being recorded.

Most deliveries a busy route receives are our own writes coming back: each mirror write to a
platform that sends webhooks brings one. A delivery that carries its task and shows what the
task's link already agreed (by the rule that lets a poll skip an unchanged task) is answered 202
`unchanged`; anything else is recorded as before. Over the fakes on loopback (Impactly's
deliveries carry the whole task), on SQLite and on PostgreSQL (skipped without
TASKBRIDGE_TEST_PG_URL), with `parent` among the route's fields (the check translates it).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from bridge.engine.inbox import Receipt, process_pending, receive
from bridge.model import parse_timestamp
from bridge.store.tables import InboxRow
from tests import ops
from tests.engine import test_hierarchy
from tests.engine.conftest import Harness
from tests.engine.test_engine import create_on, edit_during_impactly_write, intercept_first_update, titles
from tests.engine.test_hierarchy import signed_delivery
from tests.world import WEBHOOK_SECRET, World

# The store's backend is these fixtures' parameter: SQLite and PostgreSQL, as in those tests.
harness = test_hierarchy.harness
new_store = test_hierarchy.new_store

UNCHANGED = Receipt(202, "unchanged")


async def recorded(harness: Harness) -> int:
    async with harness.ctx.store.read() as session:
        return int(await session.scalar(select(func.count()).select_from(InboxRow)) or 0)


def assert_everywhere(world: World, title: str) -> None:
    assert {p: title in titles(world, p) for p in world.platforms} == dict.fromkeys(world.platforms, True)


def impactly_id(world: World, title: str) -> str:
    return str(ops.view(world, "impactly")[title]["id"])


async def test_our_write_coming_back_is_not_recorded_and_an_edit_there_is(
    harness: Harness, world: World
) -> None:
    create_on(world, "vortask", "echoed")
    await harness.settle()
    imp = impactly_id(world, "echoed")

    # The task there shows what its link agreed: the delivery of it reports nothing new.
    assert await receive(harness.ctx, "impactly", *signed_delivery(world, imp, "task.updated")) == UNCHANGED
    assert await recorded(harness) == 0

    # A person's edit there is news: recorded, observed, and written everywhere.
    ops.edit(world, "impactly", imp, title="echoed, edited there")
    edit = signed_delivery(world, imp, "task.updated")
    assert await receive(harness.ctx, "impactly", *edit) == Receipt(202, "ok")
    assert await recorded(harness) == 1
    assert await process_pending(harness.ctx) == 1
    await harness.settle()
    assert_everywhere(world, "echoed, edited there")
    # Replayed once it is what the link agreed, a delivery recorded before is still a duplicate.
    assert (await receive(harness.ctx, "impactly", *edit)).result == "duplicate"


async def test_an_echo_delivered_while_its_write_is_unrecorded_is_ours(
    harness: Harness, world: World
) -> None:
    """The platform sends its delivery of our write before the write's outcome is committed: the
    link's claim knows the value for ours."""
    vt = create_on(world, "vortask", "in flight")
    await harness.settle()
    imp = impactly_id(world, "in flight")
    answers: list[Receipt] = []

    async def delivered_before_the_outcome(write: Any) -> Any:
        result = await write()
        answers.append(await receive(harness.ctx, "impactly", *signed_delivery(world, imp, "task.updated")))
        return result

    raced = intercept_first_update(harness.ctx.connectors["impactly"], delivered_before_the_outcome)
    ops.edit(world, "vortask", vt, title="in flight v2")
    await harness.poll("vortask")
    await harness.settle()
    assert raced and answers == [UNCHANGED]
    assert await recorded(harness) == 0
    assert_everywhere(world, "in flight v2")


async def test_a_replayed_echo_after_a_newer_write_changes_nothing(harness: Harness, world: World) -> None:
    """Not recorded, an echo is not deduplicated: a replay of it, after a newer value was written
    there, is judged again, as an older report than one applied, and changes nothing."""
    vt = create_on(world, "vortask", "replayed v1")
    await harness.settle()
    imp = impactly_id(world, "replayed v1")
    old = signed_delivery(world, imp, "task.updated")
    assert await receive(harness.ctx, "impactly", *old) == UNCHANGED

    ops.edit(world, "vortask", vt, title="replayed v2")
    await harness.poll("vortask")
    await harness.settle()
    assert "replayed v2" in titles(world, "impactly")

    assert await receive(harness.ctx, "impactly", *old) == UNCHANGED  # the same delivery, again
    await harness.settle()
    for platform in world.platforms:
        assert "replayed v2" in titles(world, platform), platform
        assert "replayed v1" not in titles(world, platform), platform


async def test_a_task_new_to_the_bridge_is_recorded(harness: Harness, world: World) -> None:
    imp = create_on(world, "impactly", "new there")
    assert await receive(harness.ctx, "impactly", *signed_delivery(world, imp)) == Receipt(202, "ok")
    assert await process_pending(harness.ctx) == 1
    await harness.settle()
    assert_everywhere(world, "new there")


def intercept_first_create(conn: Any, around: Any) -> list[bool]:
    """Send the connector's first create_task through `around(create)`, as intercept_first_update."""
    real_create = conn.create_task
    hit: list[bool] = []

    async def create(scope: str, values: Any) -> Any:
        if hit:
            return await real_create(scope, values)
        hit.append(True)
        return await around(lambda: real_create(scope, values))

    conn.create_task = create
    return hit


async def test_our_create_coming_back_before_its_outcome_is_ours(harness: Harness, world: World) -> None:
    """The platform sends its delivery of the mirror our create made before the create's outcome
    is committed (what a backfill's every create to a platform that sends webhooks brings): the
    task carries our marker and its link waits for a remote id, so it reports nothing new. The
    create's outcome links it, once."""
    answers: list[Receipt] = []

    async def delivered_before_the_outcome(create: Any) -> Any:
        made = await create()
        answers.append(await receive(harness.ctx, "impactly", *signed_delivery(world, made.remote_id)))
        return made

    raced = intercept_first_create(harness.ctx.connectors["impactly"], delivered_before_the_outcome)
    create_on(world, "vortask", "made by us")
    await harness.settle()
    assert raced and answers == [UNCHANGED]
    assert await recorded(harness) == 0
    assert_everywhere(world, "made by us")
    assert list(titles(world, "impactly")).count("made by us") == 1


async def test_a_copy_of_a_linked_mirror_carrying_its_marker_is_recorded(
    harness: Harness, world: World
) -> None:
    """A task there that carries the marker of a task already linked there (a person copied the
    mirror, marker and all) is not ours coming back: it is recorded, and observing it logs it."""
    create_on(world, "vortask", "copied there")
    await harness.settle()
    mirror = ops.view(world, "impactly")["copied there"]
    with world.client("impactly") as c:
        body = {"title": "copied there, again", "project_id": world.scopes["impactly"]}
        copy = str(c.post("/tasks", json={**body, "description": mirror["description"]}).json()["id"])
    assert await receive(harness.ctx, "impactly", *signed_delivery(world, copy)) == Receipt(202, "ok")


async def test_an_edit_our_write_replaced_is_merged_from_its_delivery(harness: Harness, world: World) -> None:
    """A person edits the title on Impactly after the outbox read the task there and before its
    write landed: no platform here takes a conditional write, so the write replaces the edit.
    Impactly's delivery of that edit is stamped before our write, yet it is no stale report: it
    is merged as the edit it was (newer than the change we wrote) and written everywhere,
    Impactly too. Before, it was answered `unchanged` and the edit was lost."""
    deliveries: list[tuple[dict[str, str], bytes]] = []

    def person_edits(imp: str) -> None:
        time.sleep(0.01)  # the platform stamps milliseconds: the edit, then our write, apart
        ops.edit(world, "impactly", imp, title="replaced, edited there")
        deliveries.append(signed_delivery(world, imp, "task.updated"))
        time.sleep(0.01)

    await edit_during_impactly_write(harness, world, "replaced", person_edits)
    assert "replaced from vortask" in titles(world, "impactly")  # the write replaced the edit there
    [delivery] = deliveries
    assert await receive(harness.ctx, "impactly", *delivery) == Receipt(202, "ok")
    assert await process_pending(harness.ctx) == 1
    await harness.settle()
    assert_everywhere(world, "replaced, edited there")

    # Once merged and written there, the same report is nothing new.
    replay = signed_delivery(world, impactly_id(world, "replaced, edited there"), "task.updated")
    assert await receive(harness.ctx, "impactly", *replay) == UNCHANGED


async def test_a_late_report_of_a_replaced_edit_after_a_newer_one_there_is_stale(
    harness: Harness, world: World
) -> None:
    """The edit our write replaced is reported late: after the person's next edit there was
    merged. That report is older than what the side showed since, so it changes nothing (it must
    not undo the newer edit, whatever the route's policy)."""
    deliveries: list[tuple[dict[str, str], bytes]] = []

    def person_edits(imp: str) -> None:
        time.sleep(0.01)
        ops.edit(world, "impactly", imp, title="late, first edit there")
        deliveries.append(signed_delivery(world, imp, "task.updated"))
        time.sleep(0.01)

    await edit_during_impactly_write(harness, world, "late", person_edits)
    imp = impactly_id(world, "late from vortask")
    ops.edit(world, "impactly", imp, title="late, second edit there")
    assert await receive(harness.ctx, "impactly", *signed_delivery(world, imp, "task.updated")) == Receipt(
        202, "ok"
    )
    assert await process_pending(harness.ctx) == 1
    await harness.settle()
    assert_everywhere(world, "late, second edit there")

    [first] = deliveries
    assert await receive(harness.ctx, "impactly", *first) == UNCHANGED
    await harness.settle()
    assert_everywhere(world, "late, second edit there")


def redelivered(delivery: tuple[dict[str, str], bytes]) -> tuple[dict[str, str], bytes]:
    """The same report delivered again under a new delivery id, as a platform's retry may."""
    payload = json.loads(delivery[1])
    payload["id"] = str(uuid.uuid4())
    body = json.dumps(payload).encode()
    signature = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {**delivery[0], "x-impactly-signature": f"sha256={signature}"}, body


async def test_an_edit_seen_while_our_write_was_in_flight_is_not_merged_again(
    harness: Harness, world: World
) -> None:
    """A person edits Impactly after the outbox read the task there, and that edit's delivery is
    observed before our write lands (which replaces it there, and is written over again: the
    edit is the newer). The write's window starts after that edit: a second report of it is
    stale, not an edit the write hid, so it is not merged a second time."""
    vt = create_on(world, "vortask", "seen")
    await harness.settle()
    imp = impactly_id(world, "seen")
    deliveries: list[tuple[dict[str, str], bytes]] = []

    async def observed_first(write: Any) -> Any:
        await asyncio.sleep(0.01)  # the platform stamps milliseconds: read, edit, write apart
        ops.edit(world, "impactly", imp, title="seen, edited there")
        deliveries.append(signed_delivery(world, imp, "task.updated"))
        assert await receive(harness.ctx, "impactly", *deliveries[0]) == Receipt(202, "ok")
        assert await process_pending(harness.ctx) == 1
        await asyncio.sleep(0.01)
        return await write()

    hit = intercept_first_update(harness.ctx.connectors["impactly"], observed_first)
    ops.edit(world, "vortask", vt, title="seen from vortask")
    await harness.poll("vortask")
    await harness.daemon.worker.run_until_idle(max_rounds=1)
    assert hit
    assert "seen from vortask" in titles(world, "impactly")  # our write replaced the edit there

    assert await receive(harness.ctx, "impactly", *redelivered(deliveries[0])) == UNCHANGED
    await harness.settle()
    assert_everywhere(world, "seen, edited there")


def vortask_delivery(world: World, task_id: str, event: str, stamp: str) -> tuple[dict[str, str], bytes]:
    """Vortask's delivery of `event` for one of its tasks, as its fake builds and signs one (the
    task's fields but its description and due date; `updatedAt` given)."""
    task = next(t for t in ops.raw_tasks(world, "vortask") if str(t["id"]) == task_id)
    body = json.dumps(
        {
            "event": event,
            "projectId": int(world.scopes["vortask"]),
            "task": {
                "id": int(task_id),
                "title": task["title"],
                "status": task["status"],
                "priority": task["priority"],
                "assignees": [],
                "tags": task["tags"],
                "updatedAt": stamp,
            },
        }
    ).encode()
    signature = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"x-vortask-signature": signature}, body


async def test_our_create_reported_by_its_stamp_alone_is_ours_and_no_other(
    harness: Harness, world: World
) -> None:
    """Vortask's deliveries leave out the description and due date, so the bridge reads the task
    they report; but a creation of ours, whose outcome is recorded, is known by its signed stamp
    (the creation time our create's answer gave), with no read and no record. The same id made
    at another time (an id given anew), an edit since, and a task a person made are read as before."""
    ops.create(world, "impactly", "made by the bridge")
    await harness.settle()
    ours = ops.view(world, "vortask")["made by the bridge"]["id"]
    made_at = next(t for t in ops.raw_tasks(world, "vortask") if str(t["id"]) == ours)["createdAt"]
    vortask = world.fakes["vortask"]
    creation = vortask_delivery(world, ours, "task.created", made_at)
    vortask.requests.clear()
    assert await receive(harness.ctx, "vortask", *creation) == UNCHANGED
    assert await recorded(harness) == 0
    assert vortask.requests.entries == []  # not read

    later = (parse_timestamp(made_at) + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")  # type: ignore[operator]
    reused = await receive(harness.ctx, "vortask", *vortask_delivery(world, ours, "task.created", later))
    assert reused == Receipt(202, "ok")
    edited = await receive(harness.ctx, "vortask", *vortask_delivery(world, ours, "task.updated", later))
    assert edited == Receipt(202, "ok")
    theirs = create_on(world, "vortask", "made by a person")
    their_time = next(t for t in ops.raw_tasks(world, "vortask") if str(t["id"]) == theirs)["createdAt"]
    person = await receive(
        harness.ctx, "vortask", *vortask_delivery(world, theirs, "task.created", their_time)
    )
    assert person == Receipt(202, "ok")
    assert await recorded(harness) == 3
    assert await process_pending(harness.ctx) == 3
    await harness.settle()
    assert_everywhere(world, "made by a person")
    assert len([t for t in ops.raw_tasks(world, "vortask") if t["title"] == "made by the bridge"]) == 1


async def test_our_create_reported_by_its_stamp_before_its_record_is_ours(
    harness: Harness, world: World
) -> None:
    """Vortask's delivery of a creation of ours often arrives after the create is answered and
    before its outcome is recorded, when the store cannot yet say it is ours: the worker keeps
    the answer until its record is done, so that delivery is answered `unchanged`, unread and
    unrecorded, and the record links the task once. Forgotten after the record (the store says
    from then); a delivery with another stamp is read."""
    committer = harness.daemon.worker.committer
    real_submit = committer.submit
    answers: list[Receipt] = []
    held: list[bool] = []

    async def delivered_before_the_record(op: Any, outcome: Any) -> None:
        if op.connector == "vortask" and op.op == "create" and not answers:
            made = outcome.remote
            stamp = made.created_at.isoformat().replace("+00:00", "Z")
            delivery = vortask_delivery(world, made.remote_id, "task.created", stamp)
            vortask = world.fakes["vortask"]
            vortask.requests.clear()
            answers.append(await receive(harness.ctx, "vortask", *delivery))
            assert vortask.requests.entries == []  # not read
            held.append(("vortask", made.remote_id) in harness.ctx.answered_writes)
        await real_submit(op, outcome)

    committer.submit = delivered_before_the_record  # type: ignore[method-assign]
    ops.create(world, "impactly", "answered, not recorded")
    await harness.settle()
    assert answers == [UNCHANGED] and held == [True]
    assert await recorded(harness) == 0
    assert harness.ctx.answered_writes == {}  # forgotten once recorded
    assert len([t for t in ops.raw_tasks(world, "vortask") if t["title"] == "answered, not recorded"]) == 1
    assert_everywhere(world, "answered, not recorded")


def _stamp(at: Any) -> str:
    return str(at.isoformat()).replace("+00:00", "Z")


async def test_our_update_reported_by_its_stamp_is_ours_before_and_after_its_record(
    harness: Harness, world: World
) -> None:
    """Vortask's delivery of our write to a task there carries the time our write's answer gave:
    before the record (the worker holds the answer) and after it (the link holds that time) it
    is answered `unchanged`, unread and unrecorded. A person's edit there since, stamped later,
    is read and mirrored."""
    ops.create(world, "impactly", "written to vortask")
    await harness.settle()
    target = ops.view(world, "vortask")["written to vortask"]["id"]
    vortask = world.fakes["vortask"]
    committer = harness.daemon.worker.committer
    real_submit = committer.submit
    echoes: list[tuple[dict[str, str], bytes]] = []
    answers: list[Receipt] = []

    async def delivered_before_the_record(op: Any, outcome: Any) -> None:
        if op.connector == "vortask" and op.op == "update" and not echoes:
            echoes.append(vortask_delivery(world, target, "task.updated", _stamp(outcome.remote_time)))
            vortask.requests.clear()
            answers.append(await receive(harness.ctx, "vortask", *echoes[0]))
            assert vortask.requests.entries == []  # not read
        await real_submit(op, outcome)

    committer.submit = delivered_before_the_record  # type: ignore[method-assign]
    imp = ops.view(world, "impactly")["written to vortask"]["id"]
    ops.edit(world, "impactly", imp, title="written to vortask, edited")
    await harness.settle()
    assert answers == [UNCHANGED]
    assert harness.ctx.answered_writes == {}  # forgotten once recorded
    vortask.requests.clear()
    assert await receive(harness.ctx, "vortask", *echoes[0]) == UNCHANGED  # the store says so now
    assert vortask.requests.entries == [] and await recorded(harness) == 0

    ops.edit(world, "vortask", target, title="edited on vortask")
    task = next(t for t in ops.raw_tasks(world, "vortask") if str(t["id"]) == target)
    edit = vortask_delivery(world, target, "task.updated", task["updatedAt"])
    assert await receive(harness.ctx, "vortask", *edit) == Receipt(202, "ok")
    assert await process_pending(harness.ctx) == 1
    await harness.settle()
    assert_everywhere(world, "edited on vortask")


async def test_a_stamp_of_ours_recorded_before_the_answer_is_not_read_once_known(
    harness: Harness, world: World
) -> None:
    """A platform sends a creation's delivery as it creates (a bulk request's, before its answer
    comes), when the intake cannot tell it ours, so it is recorded. Processed once the answer
    came (before the record: the worker holds it) or once the record was made (the link holds
    the creation time), it is known by its stamp and the task is not read. The same for an
    update answered by then."""
    vortask = world.fakes["vortask"]
    conn = harness.ctx.connectors["vortask"]
    real_create, real_update = conn.create_task, conn.update_task
    recorded_early: list[Receipt] = []

    async def create_reported_before_its_answer(scope: str, values: Any) -> Any:
        made = await real_create(scope, values)
        delivery = vortask_delivery(world, made.remote_id, "task.created", _stamp(made.created_at))
        recorded_early.append(await receive(harness.ctx, "vortask", *delivery))
        return made

    conn.create_task = create_reported_before_its_answer  # type: ignore[method-assign]
    ops.create(world, "impactly", "reported before its answer")
    await harness.poll("impactly")
    await harness.daemon.worker.run_until_idle()  # created and recorded; the delivery waits
    assert recorded_early == [Receipt(202, "ok")] and await recorded(harness) == 1
    target = ops.view(world, "vortask")["reported before its answer"]["id"]
    task_path = f"/api/projects/{world.scopes['vortask']}/tasks/{target}"
    vortask.requests.clear()
    assert await process_pending(harness.ctx) == 1
    assert [e for e in vortask.requests.entries if e.path == task_path] == []  # not read

    # An update's delivery recorded before its answer, processed between the answer and the
    # record: known by the answer the worker holds.
    updates: list[Any] = []

    async def update_reported_before_its_answer(scope: str, remote_id: str, changes: Any) -> Any:
        after = await real_update(scope, remote_id, changes)
        delivery = vortask_delivery(world, remote_id, "task.updated", _stamp(after.updated_at))
        assert await receive(harness.ctx, "vortask", *delivery) == Receipt(202, "ok")
        updates.append(remote_id)
        return after

    committer = harness.daemon.worker.committer
    real_submit = committer.submit
    processed: list[int] = []

    async def processed_before_the_record(op: Any, outcome: Any) -> None:
        if op.connector == "vortask" and op.op == "update" and updates and not processed:
            vortask.requests.clear()
            processed.append(await process_pending(harness.ctx))
            assert [e for e in vortask.requests.entries if e.path == task_path] == []  # not read
        await real_submit(op, outcome)

    conn.update_task = update_reported_before_its_answer  # type: ignore[method-assign]
    committer.submit = processed_before_the_record  # type: ignore[method-assign]
    imp = ops.view(world, "impactly")["reported before its answer"]["id"]
    ops.edit(world, "impactly", imp, title="reported before its answer, edited")
    await harness.settle()
    assert updates == [target] and processed == [1]
    assert_everywhere(world, "reported before its answer, edited")
    assert len([t for t in ops.raw_tasks(world, "vortask") if "reported before" in t["title"]]) == 1
