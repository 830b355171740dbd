"""Several daemon replicas on one PostgreSQL: one truth, shared work, takeover after a crash."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import func, select, text

from bridge.store import Store
from bridge.store.tables import LeaseRow, OutboxRow
from connectors.fakekit import free_port
from tests import ops
from tests.conftest import drop_pg_database, fresh_pg_database, pg_url_or_skip
from tests.e2e.conftest import DaemonProcess, wait_until
from tests.world import World

pytestmark = pytest.mark.postgres

ALL = ("impactly", "vortask", "agentkanban", "runs", "squads")


@pytest.fixture
def world() -> Iterator[World]:
    w = World(ALL).start()
    yield w
    w.stop()


@pytest.fixture
def pg_url() -> Iterator[str]:
    server = pg_url_or_skip()
    url, name = asyncio.run(fresh_pg_database(server))
    yield url
    asyncio.run(drop_pg_database(server, name))


ADMIN = "tb_admin_replicas"


def replicas(
    world: World, tmp: Path, pg_url: str, n: int, *, poll_interval: str = "1s", **workers: Any
) -> list[DaemonProcess]:
    """n replicas of one config: one PostgreSQL, each its own port, webhooks to the first (the
    address a load balancer would have)."""
    ports = [free_port() for _ in range(n)]
    tokens = [{"name": "ops", "sha256": hashlib.sha256(ADMIN.encode()).hexdigest(), "scopes": ["admin"]}]
    base = world.config(
        tmp, port=ports[0], public=True, poll_interval=poll_interval, store_url=pg_url, server_tokens=tokens
    )
    cfg = yaml.safe_load(base.read_text())
    cfg["workers"] = {"lease_ttl": "5s", "claim_ttl": "30s", **workers}
    out = []
    for i, port in enumerate(ports):
        cfg["server"]["listen"] = f"127.0.0.1:{port}"
        path = tmp / f"replica{i}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        out.append(DaemonProcess(path, port, tmp / f"replica{i}.log"))
    return out


async def _query(url: str, fn: Any) -> Any:
    store = Store.open(url)
    try:
        async with store.sessions() as s:
            return await fn(s)
    finally:
        await store.close()


def query(url: str, fn: Any) -> Any:
    return asyncio.run(_query(url, fn))


def creates(world: World, platform: str) -> int:
    fake = world.fakes[platform]
    route = {
        "impactly": "/api/v1/tasks",
        "vortask": "/api/projects/{project_id}/tasks",
        "agentkanban": "/api/ext/v1/boards/{board_id}/tasks",
        "runs": "/api/projects/{project_id}/tasks/",
        "squads": "/api/tasks",
    }[platform]
    return fake.requests.count("POST", route, status=201)


def everywhere_once(world: World, wanted: set[str], *, timeout: float) -> None:
    """Every task titled in `wanted` on every platform, then, after more polls by whoever owns
    each connector, still each once and nothing else."""
    wait_until(
        lambda: all(wanted <= set(ops.view(world, p)) for p in ALL),
        timeout=timeout,
        interval=1,
        what="every task everywhere",
    )
    time.sleep(3)
    for p in ALL:
        assert len(ops.view(world, p)) == len(wanted), p  # view() also fails on a duplicate title


def parked(pg_url: str) -> int:
    """Operations parked in the replicas' store."""
    return int(
        query(
            pg_url,
            lambda s: s.scalar(
                select(func.count()).select_from(OutboxRow).where(OutboxRow.state == "parked")
            ),
        )
    )


def test_three_replicas_share_a_burst_without_duplicate_or_loss(
    world: World, tmp_path: Path, pg_url: str
) -> None:
    group = replicas(world, tmp_path, pg_url, 3)
    try:
        group[0].start()  # migrates the schema first
        for r in group[1:]:
            r.start()
        for fake in world.fakes.values():
            fake.requests.clear()
        # Each write takes a while, as on a real platform: the burst then outlasts the other
        # replicas' idle wait (1 s), so whether they share it does not depend on how fast this
        # machine happens to be (on loopback a single replica could finish it alone). 300 ms:
        # at 100 ms, the first replica's eight slots took 80 writes a second, and on a loaded
        # run (CI, once) its deliveries queued the creates no faster than it wrote them, so the
        # others woke to nothing pending; at 27 a second it falls behind any burst of 7 tasks a
        # second or more, and the others find the rest.
        for p in ("impactly", "agentkanban", "runs", "squads"):
            world.fakes[p].faults.update({"latency": 0.3})
        n = 30
        for i in range(n):
            ops.create(world, "vortask", f"shared {i}")
        everywhere_once(world, {f"shared {i}" for i in range(n)}, timeout=120)
        for p in ("impactly", "agentkanban", "runs", "squads"):
            assert creates(world, p) == n, (p, world.fakes[p].requests.by_route())  # zero duplicate writes
        done_by = query(
            pg_url,
            lambda s: s.execute(
                select(OutboxRow.done_by, func.count())
                .where(OutboxRow.state == "done")
                .group_by(OutboxRow.done_by)
            ),
        )
        spread = dict(done_by.all())
        assert sum(spread.values()) >= 4 * n
        assert len(spread) >= 2, f"claims did not spread across replicas: {spread}"
        assert parked(pg_url) == 0
    finally:
        for r in group:
            r.kill()


def test_three_replicas_share_a_backfill_to_vortask_in_bulk_without_duplicate(
    world: World, tmp_path: Path, pg_url: str
) -> None:
    """Work that exists before the replicas start (a backfill: a trickle of new tasks is
    claimed as it comes, one create at a time): its creates on Vortask go out in bulk, each
    replica's claim taking more of them (FOR UPDATE SKIP LOCKED); no create is taken by two
    replicas, none is lost."""
    n = 120
    for i in range(n):
        ops.create(world, "impactly", f"bulk {i}")
    for p in ALL:
        world.fakes[p].faults.update({"latency": 0.1})  # the work outlasts one replica's turn
        world.fakes[p].requests.clear()
    group = replicas(world, tmp_path, pg_url, 3)
    try:
        for r in group:
            r.start()
        everywhere_once(world, {f"bulk {i}" for i in range(n)}, timeout=180)
        vortask = world.fakes["vortask"]
        assert creates(world, "vortask") < n // 4, vortask.requests.by_route()  # most went in bulk
        done_by = query(
            pg_url,
            lambda s: s.execute(
                select(OutboxRow.done_by, func.count())
                .where(OutboxRow.state == "done", OutboxRow.connector == "vortask", OutboxRow.op == "create")
                .group_by(OutboxRow.done_by)
            ),
        )
        assert sum(dict(done_by.all()).values()) == n  # each recorded once (a run here: 50, 50, 20)
        assert parked(pg_url) == 0
    finally:
        for r in group:
            r.kill()


def test_killing_the_lease_holder_hands_polling_over(world: World, tmp_path: Path, pg_url: str) -> None:
    group = replicas(world, tmp_path, pg_url, 3)
    try:
        for r in group:
            r.start()
        ops.create(world, "squads", "before the crash")  # squads has no webhooks: polling only
        wait_until(lambda: "before the crash" in ops.view(world, "vortask"), timeout=60, what="first sync")
        holder = query(
            pg_url, lambda s: s.scalar(select(LeaseRow.holder).where(LeaseRow.name == "poll:squads"))
        )
        victim = next(r for r in group if holder.endswith(f":{r.port}"))
        victim.kill()  # SIGKILL: the lease is not released
        killed_at = time.monotonic()

        def new_holder() -> str | None:
            h = query(
                pg_url, lambda s: s.scalar(select(LeaseRow.holder).where(LeaseRow.name == "poll:squads"))
            )
            return h if h and h != holder else None

        taken_by = wait_until(new_holder, timeout=30, interval=0.2, what="another replica taking the lease")
        takeover = time.monotonic() - killed_at
        assert takeover <= 5 + 1 + 2.5, f"takeover took {takeover:.1f}s (TTL 5s + poll 1s)"
        assert not taken_by.endswith(f":{victim.port}")
        ops.create(world, "squads", "after the crash")
        wait_until(
            lambda: all("after the crash" in ops.view(world, p) for p in ALL),
            timeout=60,
            what="polling resumed by the new owner",
        )
        for p in ALL:
            ops.view(world, p)  # nothing twice
        for p in ("impactly", "agentkanban", "runs", "vortask"):
            assert creates(world, p) == 2, p
    finally:
        for r in group:
            r.kill()


def test_hot_queries_can_use_their_indexes(pg_url: str) -> None:
    """EXPLAIN of the claim and list queries on PostgreSQL: each can run from an index."""

    async def explain() -> dict[str, str]:
        store = Store.open(pg_url)
        await store.migrate()
        plans = {}
        try:
            async with store.engine.begin() as conn:
                # A store that has run a while: 50,000 operations done, a few pending; as many tasks.
                await conn.execute(
                    text(
                        "INSERT INTO outbox (task_id, link_id, route, connector, op, payload, state, attempts, "
                        "next_attempt_at, observed_at, created_at) SELECT 't' || (g % 5000), g % 5000, 'main', 'c', "
                        "'update', '{}', CASE WHEN g % 1000 = 0 THEN 'pending' ELSE 'done' END, 0, now(), now(), now() "
                        "FROM generate_series(1, 50000) g"
                    )
                )
                await conn.execute(
                    text(
                        "INSERT INTO tasks (id, route, data, title, status, created_at, updated_at, version) "
                        "SELECT lpad(g::text, 26, '0'), 'main', '{}', 't', 'todo', now(), now() - g * interval '1 s', 1 "
                        "FROM generate_series(1, 50000) g"
                    )
                )
                await conn.execute(
                    text(
                        "INSERT INTO links (task_id, route, connector, scope, remote_id, state, base, is_mirror, "
                        "created_at, updated_at) SELECT lpad(g::text, 26, '0'), 'main', 'c' || (g % 5), 's', "
                        "'r' || g, 'active', '{}', false, now(), now() FROM generate_series(1, 50000) g"
                    )
                )
                await conn.execute(
                    text(
                        "INSERT INTO inbox (connector, delivery_key, body, state, attempts, received_at) "
                        "SELECT 'c', 'k' || g, '{}', CASE WHEN g % 1000 = 0 THEN 'pending' ELSE 'done' END, 1, now() "
                        "FROM generate_series(1, 50000) g"
                    )
                )
                await conn.execute(text("ANALYZE"))
            async with store.engine.connect() as conn:
                for name, sql in {
                    "claim": "SELECT id FROM outbox o WHERE o.state = 'pending' AND o.next_attempt_at <= now() "
                    "AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.link_id = o.link_id AND e.id < o.id "
                    "AND e.state IN ('pending','claimed')) ORDER BY o.next_attempt_at, o.id LIMIT 16 "
                    "FOR UPDATE SKIP LOCKED",
                    "link_by_remote": "SELECT * FROM links WHERE connector = 'a' AND remote_id = 'b'",
                    "pending_update": "SELECT * FROM outbox WHERE link_id = 7 AND op = 'update' AND state = 'pending'",
                    "api_list": "SELECT * FROM tasks WHERE deleted_at IS NULL ORDER BY updated_at DESC, id DESC LIMIT 50",
                    "inbox": "SELECT * FROM inbox WHERE state = 'pending' ORDER BY id LIMIT 50",
                }.items():
                    rows = await conn.execute(text("EXPLAIN " + sql))
                    plans[name] = "\n".join(r[0] for r in rows)
        finally:
            await store.close()
        return plans

    plans = asyncio.run(explain())
    # Unfinished operations are few beside the done ones: the claim reads them through a
    # state-led index, and its "no earlier unfinished op of this link" probe through that or the
    # link's own (link_id, state, id), whichever the planner costs lower.
    state_led = ("ix_outbox_claimable", "ix_outbox_state_done_at")
    assert any(f"{i} on outbox o" in plans["claim"] for i in state_led), plans["claim"]
    probe_indexes = (*state_led, "ix_outbox_link_state")
    assert any(f"{i} on outbox e" in plans["claim"] for i in probe_indexes), plans["claim"]
    for name, plan in plans.items():
        assert "Seq Scan" not in plan, (name, plan)
    assert "uq_links_connector_remote_id" in plans["link_by_remote"], plans["link_by_remote"]
    assert "ix_tasks_listing" in plans["api_list"], plans["api_list"]
    assert (
        "ix_outbox_link_state" in plans["pending_update"]
        or "ix_outbox_claimable" in plans["pending_update"]
        or "ix_outbox_state_done_at" in plans["pending_update"]
    )


def health(d: DaemonProcess) -> dict[str, tuple[bool, str | None, str | None]]:
    r = d.get("/api/v1/connectors", ADMIN)
    r.raise_for_status()
    return {c["name"]: (c["healthy"], c["last_poll"], c["last_error"]) for c in r.json()}


def test_every_replica_reports_the_same_connector_health(world: World, tmp_path: Path, pg_url: str) -> None:
    group = replicas(world, tmp_path, pg_url, 2)
    try:
        for r in group:
            r.start()

        def same(want_squads_healthy: bool) -> Any:
            a, b = (health(r) for r in group)
            squads_ok = a["squads"][0] == want_squads_healthy
            others_ok = all(a[p][0] for p in ALL if p != "squads")
            return a == b and squads_ok and others_ok and a

        wait_until(lambda: same(True), timeout=30, what="both replicas: every connector healthy")
        world.fakes["squads"].faults.error_rate = 1.0  # every request 500
        failing = wait_until(lambda: same(False), timeout=30, what="both replicas: squads failing")
        assert "500" in (failing["squads"][2] or "")
        world.fakes["squads"].faults.reset()
        recovered = wait_until(lambda: same(True), timeout=30, what="both replicas: squads recovered")
        assert recovered["squads"][2] is None  # a recovered connector clears its error
        log = "".join(r.log.read_text() for r in group)
        assert log.count("connector squads is failing") == 1  # said once, by the lease holder
        assert log.count("connector squads recovered") == 1
    finally:
        for r in group:
            r.kill()


def test_sync_triggers_coalesce_and_go_to_the_lease_owner(world: World, tmp_path: Path, pg_url: str) -> None:
    group = replicas(world, tmp_path, pg_url, 2, poll_interval="1h")  # only the first poll, then ours
    try:
        for r in group:
            r.start()
        wait_until(lambda: all(health(r)["squads"][1] for r in group), timeout=30, what="the first poll")
        holder = query(
            pg_url, lambda s: s.scalar(select(LeaseRow.holder).where(LeaseRow.name == "poll:squads"))
        )
        owner = next(r for r in group if holder.endswith(f":{r.port}"))
        other = next(r for r in group if r is not owner)
        r = httpx.post(
            other.url + "/api/v1/connectors/squads/sync", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert r.status_code == 409 and holder in r.json()["detail"]

        fake = world.fakes["squads"]
        listings_before = fake.requests.count("GET", "/api/tasks")
        # Each poll outlasts the burst (a listing takes 1 s), as the count below assumes: a burst
        # longer than a poll rightly starts another one after it.
        fake.faults.update({"latency": 1.0})

        def trigger(_: int) -> str:
            answer = httpx.post(
                owner.url + "/api/v1/connectors/squads/sync", headers={"Authorization": f"Bearer {ADMIN}"}
            )
            assert answer.status_code == 202, answer.text
            return str(answer.json()["status"])

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(trigger, range(20)))
        assert answers.count("started") <= 2 and set(answers) <= {"started", "coalesced"}
        # The polls those triggers started run to their end (a loaded machine may take a while).
        wait_until(
            lambda: fake.requests.count("GET", "/api/tasks") > listings_before, timeout=30, what="a listing"
        )
        time.sleep(3)  # time enough for a second listing, were the triggers not coalesced
        listed = fake.requests.count("GET", "/api/tasks") - listings_before
        assert 1 <= listed <= 2, f"20 triggers made {listed} listings"
    finally:
        world.fakes["squads"].faults.reset()
        for r in group:
            r.kill()
