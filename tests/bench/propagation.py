"""propagation, raw_limit and cost: one set of tasks mirrored on all five platforms, edited on
Vortask, and the fakes' own request logs timing and counting what follows.

How latency is measured (from outside the daemon): the benchmark edits a task's title with a PUT
to Vortask's REST API (as a person would). Every fake records the moment it answered each request
(`TimedLog`, stamped when the response starts, i.e. after the state changed). The edit's time is
Vortask's stamp of that PUT; the mirror's time is the target fake's stamp of the write (PATCH or
PUT) to that task's mirror; the propagation time is the latest of the four mirrors' writes less
the edit's time. Resolution: time.monotonic() (ns), blurred by GIL scheduling in the benchmark
process (switch interval 1 ms), so about a millisecond. Each edit goes to a different task of a
pool, cycling, so a task is edited again only after `pool / rate` seconds: a write is matched to
the latest edit of its task before it. The daemon's own histogram (taskbridge_propagation_seconds,
from its observation of the change, not the edit) is reported beside it, by bucket bound. Each
webhook phase also reports `deliveries`, per platform that sends them: how long the fakes'
deliveries waited in the sender's queue (a fake has `DEFAULT_DELIVERIES_AT_ONCE` out at once) and
how long the daemon took to answer them, so a run says whether its latency was the daemon's or
the queue's in front of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import ops
from tests.bench import seed
from tests.bench.common import (
    ALL,
    BenchDaemon,
    Setup,
    TimedLog,
    classify,
    counts,
    install_timed_logs,
    log,
    summary,
    wait_for,
    webhooks_pending,
)
from tests.world import World

SOURCE = "vortask"
_EDIT_NO = re.compile(r" e(\d+)$")


def edit_number(title: Any) -> int:
    """The edit number a pool title carries ("prop 7 w20 e123" -> 123); -1 for the original."""
    m = _EDIT_NO.search(title) if isinstance(title, str) else None
    return int(m.group(1)) if m else -1


TARGETS = ("impactly", "agentkanban", "runs", "squads")
POOL = 200  # tasks edited in turn (quick: 8)
WEBHOOK_MODE_POLL_S = 60
# Polling alone: every poll lists and observes the whole pool on all five platforms (no platform
# here offers a cheap "changed since" for this route but Impactly and AgentKanban), so a shorter
# interval than this saturates the daemon with 200 tasks (a 1 s interval with 400 tasks left the
# backlog growing for minutes even at 5 edits/s).
POLLING_MODE_POLL_S = 5.0
# Deliveries a platform's sender has out at once (`WebhookSender.concurrency`). One at a time
# (as every earlier figure was measured), Vortask's 50 deliveries a second must each be answered
# within 20 ms or they queue at the fake; `deliveries` in each webhook phase's figures says how
# long they queued there and how long the daemon took to answer. TASKBRIDGE_BENCH_DELIVERIES_AT_ONCE
# sets more (docs/performance.md, session 32: what 4 at once changed).
DEFAULT_DELIVERIES_AT_ONCE = 1


LOOP_LAG = "taskbridge_event_loop_lag_seconds"


def deliveries_at_once() -> int:
    return int(os.environ.get("TASKBRIDGE_BENCH_DELIVERIES_AT_ONCE") or DEFAULT_DELIVERIES_AT_ONCE)


@dataclass
class Edit:
    k: int
    task: int  # index in the pool
    title: str
    t_send: float
    t_ack: float = 0.0
    t0: float | None = None  # Vortask's stamp of the PUT


@dataclass
class Rig:
    """The pool of tasks (made on Vortask, mirrored by the daemon) and the phases run over it."""

    setup: Setup
    quick: bool
    pool: int
    only_rates: list[float] | None = None  # `--rates`: run just these (edits/s)
    logs: dict[str, TimedLog] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)  # platform -> remote id per pool index
    index: dict[str, dict[str, int]] = field(default_factory=dict)  # platform -> remote id -> pool index
    port: int = 0
    store_url: str = ""
    results: dict[str, Any] = field(default_factory=dict)
    final_titles: dict[int, str] = field(default_factory=dict)
    running: BenchDaemon | None = None
    running_key: tuple[Any, ...] = ()
    next_k: int = 0  # edit numbers grow across phases, so a newer title always has a larger one
    extra_tasks: int = 0  # tasks made beside the pool (the cost phase's creates)

    def take_k(self, count: int) -> int:
        k, self.next_k = self.next_k, self.next_k + count
        return k

    @property
    def world(self) -> World:
        return self.setup.world

    # -- set-up -------------------------------------------------------------------------------

    def prepare(self) -> None:
        from connectors.fakekit import free_port

        self.logs = install_timed_logs(self.world)
        for fake in self.world.fakes.values():
            fake.webhooks.concurrency = deliveries_at_once()
        self.port = free_port()
        (self.setup.tmp / "prop").mkdir(parents=True, exist_ok=True)
        self.store_url = f"sqlite+aiosqlite:///{self.setup.tmp}/prop/bridge.db"
        log(f"propagation rig: {self.pool} tasks on vortask, mirrored to the four others")
        seed.vortask_tasks(self.world, self.pool, lambda i: f"prop {i}")
        d = self.use_daemon("setup", public=True, poll_interval=self.webhook_poll())
        t0 = time.monotonic()
        ok = wait_for(
            lambda: (
                all(seed.count_tasks(self.world, p) >= self.pool for p in TARGETS) and d.outbox_depth() == 0
            ),
            timeout=600,
            interval=0.5,
        )
        if not ok:
            raise RuntimeError(f"the pool was not mirrored in 600 s:\n{d.log_tail()}")
        log(f"pool mirrored in {time.monotonic() - t0:.1f} s")
        for p in ALL:
            view = ops.view(self.world, p)
            self.ids[p] = [view[f"prop {i}"]["id"] for i in range(self.pool)]
            self.index[p] = {rid: i for i, rid in enumerate(self.ids[p])}
        self.final_titles = {i: f"prop {i}" for i in range(self.pool)}

    def daemon(self, name: str, **kw: Any) -> BenchDaemon:
        kw.setdefault("store_url", self.store_url)
        return self.setup.daemon(name, port=self.port, **kw)

    def webhook_poll(self) -> str:
        # Full: config.example.yaml's 60 s (polls catch lost deliveries; webhooks carry changes).
        # Quick: one daemon serves set-up, the webhook phase and cost (polls only when asked).
        return "1h" if self.quick else f"{WEBHOOK_MODE_POLL_S}s"

    def use_daemon(self, name: str, *, public: bool, poll_interval: str) -> BenchDaemon:
        """The running daemon if its config matches, else a new one (the old one stopped)."""
        key = (public, poll_interval)
        if (
            self.running is not None
            and self.running_key == key
            and self.running.proc
            and self.running.proc.poll() is None
        ):
            return self.running
        self.stop_daemon()
        d = self.daemon(f"prop-{name}", public=public, poll_interval=poll_interval)
        d.start()
        self.running, self.running_key = d, key
        return d

    def stop_daemon(self) -> None:
        if self.running is not None and self.running.proc and self.running.proc.poll() is None:
            try:
                self.running.terminate()
            except subprocess.TimeoutExpired:
                # A daemon still draining a backlog outlives its grace period; the figures were
                # taken already, so it is stopped the hard way rather than losing them.
                log("daemon did not stop within its grace period; killed")
                self.running.kill()
        self.running = None

    def set_drop(self, rate: float) -> None:
        for fake in self.world.fakes.values():
            fake.faults.drop_webhook_rate = rate

    def settle(self, d: BenchDaemon, quiet: float = 1.0, timeout: float = 120) -> bool:
        """Until the outbox is empty and no fake took a write for `quiet` seconds (polls, which
        only read, go on all the time at short intervals)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if d.outbox_depth() == 0 and time.monotonic() - self.last_write() >= quiet:
                return True
            time.sleep(0.2)
        log(f"settle: not quiet after {timeout} s")
        return False

    def quiet_all(self, quiet: float, timeout: float = 60) -> None:
        """Until no fake served any request for `quiet` seconds (cost phase: no timed polls)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = max((lg.times[-1] for lg in self.logs.values() if lg.times), default=0.0)
            if time.monotonic() - last >= quiet:
                return
            time.sleep(0.05)

    def last_write(self) -> float:
        last = 0.0
        for lg in self.logs.values():
            n = min(len(lg.times), len(lg.entries))
            for j in range(n - 1, max(-1, n - 400), -1):
                if classify(lg.entries[j]) == "write":
                    last = max(last, lg.times[j])
                    break
        return last

    # -- edits and matching ------------------------------------------------------------------

    def edit_stream(self, rate: float, count: int, label: str, start_k: int) -> list[Edit]:
        """`count` title edits on Vortask at `rate` per second, open loop, from a process of their
        own (raw_client's `edits`): sent from this one, they took the interpreter lock the five
        fakes share, and the fakes answered the daemon slower for it."""
        scope = self.world.scopes[SOURCE]
        edits: list[Edit] = []
        items: list[dict[str, Any]] = []
        for j in range(count):
            k = start_k + j
            i = k % self.pool
            edits.append(Edit(k, i, f"prop {i} {label} e{k}", 0.0))
            self.final_titles[i] = edits[-1].title
            items.append(
                {"url": f"/projects/{scope}/tasks/{self.ids[SOURCE][i]}", "body": {"title": edits[-1].title}}
            )
        spec = {
            "mode": "edits",
            "rate": rate,
            "items": items,
            "base_url": self.world.base_url(SOURCE),
            "headers": self.world.auth_headers(SOURCE),
        }
        result = run_raw(spec, timeout=60 + count / rate * 3)
        if result["error_count"]:
            raise RuntimeError(f"{result['error_count']} edits refused: {result['errors'][:3]}")
        for r in result["results"]:
            edits[r["j"]].t_send, edits[r["j"]].t_ack = r["t_send"], r["t_ack"]
        return edits

    def stamp_edits(self, edits: list[Edit], from_index: int) -> None:
        """Each edit's time: Vortask's stamp of the PUT that left the edit's title there."""
        stamp: dict[str, float] = {}
        for t, e, value in self.logs[SOURCE].since_with_values(from_index):
            if e.method == "PUT" and isinstance(value, str):
                stamp.setdefault(value, t)
        for e in edits:
            e.t0 = stamp.get(e.title, e.t_send)

    def mirror_writes(self, platform: str, from_index: int) -> dict[int, list[tuple[float, int]]]:
        """pool index -> (stamp, edit number the mirror's title carries after the write), for
        every write to that task's mirror on `platform`, in order."""
        out: dict[int, list[tuple[float, int]]] = {}
        idx = self.index[platform]
        for t, e, value in self.logs[platform].since_with_values(from_index):
            if classify(e) != "write":
                continue
            for seg in reversed(e.path.strip("/").split("/")):
                i = idx.get(seg)
                if i is not None:
                    out.setdefault(i, []).append((t, edit_number(value)))
                    break
        return out

    def latencies(
        self, edits: list[Edit], starts: dict[str, int], targets: tuple[str, ...] = TARGETS
    ) -> tuple[list[float], dict[str, list[float]], dict[str, int]]:
        """Per edit: when the last of the four mirrors first showed that edit's title (or a later
        edit's, which supersedes it) less the edit's time. Returns (latencies, per-target
        latencies, {"unmatched": edits never seen on some mirror, "superseded": edits whose own
        title some mirror never showed because a later edit of the task got there first})."""
        writes = {p: self.mirror_writes(p, starts[p]) for p in targets}
        out: list[float] = []
        per: dict[str, list[float]] = {p: [] for p in targets}
        unmatched = superseded = 0
        for e in edits:
            assert e.t0 is not None
            worst = 0.0
            ok = True
            skipped = False
            for p in targets:
                w = next(((t, kw) for t, kw in writes[p].get(e.task, []) if kw >= e.k), None)
                if w is None:
                    ok = False
                    break
                skipped = skipped or w[1] > e.k
                per[p].append(w[0] - e.t0)
                worst = max(worst, w[0] - e.t0)
            if ok:
                out.append(worst)
                superseded += skipped
            else:
                unmatched += 1
        return out, per, {"unmatched": unmatched, "superseded": superseded}

    def starts(self) -> dict[str, int]:
        return {p: len(lg.times) for p, lg in self.logs.items()}

    def all_matched(self, edits: list[Edit], starts: dict[str, int]) -> bool:
        """Every target shows (a title at least as new as) each task's last edit."""
        last: dict[int, int] = {}
        for e in edits:
            last[e.task] = max(last.get(e.task, -1), e.k)
        for p in TARGETS:
            seen: dict[int, int] = {}
            for i, ws in self.mirror_writes(p, starts[p]).items():
                seen[i] = max(kw for _, kw in ws)
            if any(seen.get(i, -1) < k for i, k in last.items()):
                return False
        return True

    # -- phases ---------------------------------------------------------------------------------

    def rates(self) -> list[float]:
        # 1/s is below what the daemon sustains here: its unloaded latency. 5, 20, 50/s: the issue's.
        if self.only_rates:
            return list(self.only_rates)
        return [5.0] if self.quick else [1.0, 5.0, 20.0, 50.0]

    def quiet_s(self) -> float:
        """How long without requests counts as "the effects of that change are over"."""
        return 0.7 if self.quick else 1.5

    def drain_timeout(self) -> float:
        return 60.0 if self.quick else 600.0

    def seconds_per_rate(self) -> float:
        return 1.2 if self.quick else 20.0

    def run_rates(self, d: BenchDaemon, mode: str, poll_interval: float | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        rates = self.rates() if mode == "webhook" or not self.quick else [5.0]
        for rate in rates:
            count = int(rate * self.seconds_per_rate())
            k = self.take_k(count)
            before_hist = _hist_snapshot(d)
            before_lag = _hist_snapshot(d, LOOP_LAG)
            cpu_before = d.cpu_times()
            starts = self.starts()
            log(f"{mode}: {count} edits at {rate:g}/s")
            t_begin = time.monotonic()
            edits = self.edit_stream(rate, count, f"{mode[0]}{rate:g}", k)
            sent_over = time.monotonic() - t_begin
            t_sent = time.monotonic()
            # Drained: every edit written everywhere, and the echoes of those writes answered.
            drained = wait_for(
                lambda e=edits, s=starts: self.all_matched(e, s) and webhooks_pending(self.world) == 0,
                timeout=self.drain_timeout(),
                interval=0.5,
            )
            drained_after = time.monotonic() - t_sent
            user, system = d.cpu_since(cpu_before)
            cpu = user + system
            mirror_writes = sum(
                sum(len(ws) for ws in self.mirror_writes(p, starts[p]).values()) for p in TARGETS
            )
            self.stamp_edits(edits, starts[SOURCE])
            lat, per, matching = self.latencies(edits, starts)
            entry: dict[str, Any] = {
                "rate_per_s": rate,
                "edits": count,
                "achieved_rate_per_s": round(count / sent_over, 2) if sent_over else None,
                "drained": bool(drained),
                "drain_seconds_after_last_edit": round(drained_after, 1),
                **matching,
                "latency_ms": summary(lat),
                "per_target_p50_ms": {p: summary(v)["p50"] for p, v in per.items()},
                "daemon_histogram": _hist_diff(before_hist, _hist_snapshot(d)),
                # How late the daemon's loop woke its timer over the phase (by bucket bound):
                # what every answer and reply waited for its one thread.
                "daemon_loop_lag": _hist_diff(before_lag, _hist_snapshot(d, LOOP_LAG)),
                # The daemon's own user+system CPU (from /proc) over the phase, per write to a
                # mirror (all the daemon's work for the phase, reads and webhooks included).
                "daemon_cpu_s": round(cpu, 2),
                # The kernel's part of it (system time): what sockets and files cost, as against
                # the interpreter's work. A sampling profiler counts a thread the kernel has
                # switched away from inside a send as busy there; this says what the kernel took.
                "daemon_cpu_kernel_share": round(system / cpu, 3) if cpu else None,
                "mirror_writes": mirror_writes,
                "daemon_cpu_ms_per_mirror_write": round(1000 * cpu / mirror_writes, 2)
                if mirror_writes
                else None,
            }
            if poll_interval is None:
                entry["deliveries"] = self.delivery_times(t_begin)
            else:
                entry["latency_minus_poll_interval_ms"] = summary([x - poll_interval for x in lat])
            out[f"{rate:g}/s"] = entry
            self.settle(d, quiet=0.5)
        return out

    def delivery_times(self, since: float) -> dict[str, Any]:
        """Each fake's webhook deliveries queued since `since` (time.monotonic()): how long they
        waited in its sender's queue for their first attempt (a fake has `deliveries_at_once()`
        out at once) and how long the receiver took to answer each one's last attempt, in ms;
        `unsent`, those still queued when asked. A platform's queue that grows is the receiver
        answering slower than the platform sends, not the daemon's own lag. The answer time is
        as the fake sees it: the daemon's, and the loop turns of both sides."""
        out: dict[str, Any] = {}
        for p, fake in self.world.fakes.items():
            queued = [
                x for x in list(fake.webhooks.deliveries) if x.queued_at >= since and x.outcome != "dropped"
            ]
            if not queued:
                continue
            out[p] = {
                "count": len(queued),
                "unsent": sum(1 for x in queued if x.sent_at is None),
                "queued_ms": summary([x.sent_at - x.queued_at for x in queued if x.sent_at is not None]),
                "answer_ms": summary(
                    [
                        x.answered_at - x.attempt_at
                        for x in queued
                        if x.answered_at is not None and x.attempt_at is not None
                    ]
                ),
            }
        return out

    def webhook_phase(self) -> dict[str, Any]:
        if "webhook" in self.results:
            return self.results["webhook"]
        self.set_drop(0.0)
        d = self.use_daemon("webhook", public=True, poll_interval=self.webhook_poll())
        self.settle(d)
        res = self.run_rates(d, "webhook", None)
        res["daemon_log_errors"] = d.errors_in_log()[:10]
        self.results["webhook"] = res
        return res

    def polling_phase(self) -> dict[str, Any]:
        if "polling" in self.results:
            return self.results["polling"]
        interval = POLLING_MODE_POLL_S
        self.set_drop(1.0)  # webhooks off: every delivery is dropped at the source
        d = self.use_daemon("polling", public=False, poll_interval=f"{interval:g}s")
        self.settle(d)
        res = self.run_rates(d, "polling", interval)
        res["poll_interval_s"] = interval
        res["daemon_log_errors"] = d.errors_in_log()[:10]
        self.stop_daemon()
        self.set_drop(0.0)
        self.results["polling"] = res
        return res

    def check_final(self) -> dict[str, Any]:
        """Every platform shows each pool task once, with the last title written."""
        problems: list[str] = []
        for p in ALL:
            try:
                view = ops.view(self.world, p)
            except AssertionError as exc:
                problems.append(f"{p}: {exc}")
                continue
            for i, title in self.final_titles.items():
                if title not in view:
                    problems.append(f"{p}: task {i} does not show {title!r}")
            want = self.pool + self.extra_tasks
            if len(view) != want:
                problems.append(f"{p}: {len(view)} tasks, expected {want}")
        return {"ok": not problems, "problems": problems[:10]}

    # -- raw baseline ---------------------------------------------------------------------------

    def raw_items(self, count: int, label: str, start_k: int) -> list[dict[str, Any]]:
        w = self.world
        base = {p: w.base_url(p) for p in ALL}
        items = []
        for j in range(count):
            k = start_k + j
            i = k % self.pool
            title = f"prop {i} {label} e{k}"
            items.append(
                {
                    "task": i,
                    "title": title,
                    "read": {
                        "platform": SOURCE,
                        "url": f"{base[SOURCE]}/projects/{w.scopes[SOURCE]}/tasks/{self.ids[SOURCE][i]}",
                    },
                    "writes": [
                        {
                            "platform": "impactly",
                            "method": "PATCH",
                            "url": f"{base['impactly']}/tasks/{self.ids['impactly'][i]}",
                            "body": {"title": title},
                        },
                        {
                            "platform": "agentkanban",
                            "method": "PATCH",
                            "url": f"{base['agentkanban']}/boards/{w.scopes['agentkanban']}/tasks/{self.ids['agentkanban'][i]}",
                            "body": {"title": title},
                        },
                        {
                            "platform": "runs",
                            "method": "PATCH",
                            "url": f"{base['runs']}/projects/{w.scopes['runs']}/tasks/{self.ids['runs'][i]}/",
                            "body": {"title": title, "title_manually_set": True},
                        },
                        {
                            "platform": "squads",
                            "method": "PUT",
                            "url": f"{base['squads']}/tasks/{self.ids['squads'][i]}",
                            "body": {"title": title},
                        },
                    ],
                }
            )
        return items

    def raw_phase(self) -> dict[str, Any]:
        """The raw client at the same rates, against the same fakes, with no daemon running."""
        if "raw" in self.results:
            return self.results["raw"]
        self.stop_daemon()  # nothing but the raw client talks to the fakes now
        self.set_drop(1.0)  # the mirrors' own webhooks would go to a daemon that isn't there
        out: dict[str, Any] = {}
        for rate in self.rates():
            count = int(rate * self.seconds_per_rate())
            k = self.take_k(count)
            items = self.raw_items(count, f"raw{rate:g}", k)
            starts = self.starts()
            spec = {"mode": "propagate", "rate": rate, "items": items, "headers": platform_headers()}
            log(f"raw: {count} propagations at {rate:g}/s")
            result = run_raw(spec, timeout=60 + count / rate * 3)
            edits = []
            for r in result["results"]:
                item = items[r["k"]]
                edits.append(Edit(k + r["k"], item["task"], item["title"], r["t0"], r["t0"], t0=r["t0"]))
            lat, per, matching = self.latencies(edits, starts)
            out[f"{rate:g}/s"] = {
                "rate_per_s": rate,
                "propagations": count,
                "errors": len(result["errors"]),
                **matching,
                "latency_ms": summary(lat),
                "client_side_latency_ms": summary([r["seconds"] for r in result["results"]]),
                "per_target_p50_ms": {p: summary(v)["p50"] for p, v in per.items()},
                # The same CPU figure as the daemon's: the floor of HTTP alone (1 read, 4 writes)
                "client_cpu_s": round(result["cpu_s"], 2),
                "client_cpu_ms_per_mirror_write": round(1000 * result["cpu_s"] / (len(TARGETS) * count), 2),
            }
            time.sleep(0.5)
        self.set_drop(0.0)
        self.results["raw"] = out
        return out

    # -- cost ------------------------------------------------------------------------------------

    def cost_phase(self) -> dict[str, Any]:
        if "cost" in self.results:
            return self.results["cost"]
        self.set_drop(0.0)
        # Polls only when asked (the first runs at start-up), so each count is of one thing.
        d = self.use_daemon("cost", public=True, poll_interval="1h")
        wait_for(
            lambda: all(d.metric_sum("taskbridge_polls_total", connector=p) >= 1 for p in ALL), timeout=120
        )
        self.settle(d, quiet=self.quiet_s())
        self.quiet_all(self.quiet_s())
        n_edits = 2 if self.quick else 40
        n_creates = 1 if self.quick else 20
        n_comments = 1 if self.quick else 10
        n_polls = 1 if self.quick else 5
        res: dict[str, Any] = {}

        # 1. title edits on Vortask, one at a time (no coalescing), by webhook.
        starts = self.starts()
        mark = self.outbox_mark()
        edits = []
        for _ in range(n_edits):
            e = self.edit_stream(1000.0, 1, "cost", self.take_k(1))[0]
            edits.append(e)
            wait_for(lambda e=e, s=starts: self.all_matched([e], s), timeout=60, interval=0.02)
        self.settle(d, quiet=self.quiet_s())
        self.quiet_all(self.quiet_s())
        res["edit"] = self.window_cost(starts, n_edits, own={SOURCE: {"PUT": n_edits}})
        res["edit"]["store"] = self.ops_since(mark, n_edits)
        # One change at a time on an otherwise idle daemon: its unloaded propagation latency.
        self.stamp_edits(edits, starts[SOURCE])
        lat, _, _ = self.latencies(edits, starts)
        res["edit"]["one_at_a_time_latency_ms"] = summary(lat)

        # 1b. title edits a person makes on Impactly (in-process, webhooked as the app's are),
        # each waited for on Vortask: what a mirrored edit costs a target whose deliveries lack
        # the task (Vortask's read before the write, the write, and the delivery of that write).
        impactly: Any = self.world.fakes["impactly"]
        starts = self.starts()
        mark = self.outbox_mark()
        for _ in range(n_edits):
            k = self.take_k(1)
            i = k % self.pool
            title = f"prop {i} cost-elsewhere e{k}"
            impactly.call(lambda i=i, t=title: impactly.update_task(self.ids["impactly"][i], title=t))
            self.final_titles[i] = title
            wait_for(lambda i=i, t=title: self.vortask_title(i) == t, timeout=60, interval=0.02)
        wait_for(lambda: webhooks_pending(self.world) == 0, timeout=60, interval=0.05)
        self.settle(d, quiet=self.quiet_s())
        self.quiet_all(self.quiet_s())
        res["edit_elsewhere"] = self.window_cost(starts, n_edits, own={})
        res["edit_elsewhere"]["store"] = self.ops_since(mark, n_edits)

        # 2. creates on Vortask (REST), each waited for on the four others.
        starts = self.starts()
        mark = self.outbox_mark()
        have = {p: seed.count_tasks(self.world, p) for p in TARGETS}
        scope = self.world.scopes[SOURCE]
        with self.world.client(SOURCE) as c:
            for j in range(n_creates):
                r = c.post(
                    f"/projects/{scope}/tasks", json={"title": f"cost create {j}", "priority": "Medium"}
                )
                assert r.status_code == 201, r.text
                self.extra_tasks += 1
                want = {p: have[p] + j + 1 for p in TARGETS}
                wait_for(
                    lambda w=want: all(seed.count_tasks(self.world, p) >= w[p] for p in TARGETS),
                    timeout=60,
                    interval=0.05,
                )
        self.settle(d, quiet=self.quiet_s())
        self.quiet_all(self.quiet_s())
        res["create"] = self.window_cost(starts, n_creates, own={SOURCE: {"POST": n_creates}})
        res["create"]["store"] = self.ops_since(mark, n_creates)

        # 3. comments a person adds on Impactly (in-process: no request of ours to subtract).
        fake: Any = self.world.fakes["impactly"]
        task_id = self.ids["impactly"][0]
        ak_task = self.ids["agentkanban"][0]
        before = _agentkanban_comment_count(self.world, ak_task)
        starts = self.starts()
        mark = self.outbox_mark()
        for j in range(n_comments):
            fake.call(lambda j=j: fake.add_comment(task_id, f"cost comment {j}"))
            wait_for(
                lambda j=j: _agentkanban_comment_count(self.world, ak_task) >= before + j + 1,
                timeout=60,
                interval=0.05,
            )
        self.settle(d, quiet=self.quiet_s())
        self.quiet_all(self.quiet_s())
        res["comment"] = self.window_cost(starts, n_comments, own={})
        res["comment"]["store"] = self.ops_since(mark, n_comments)

        # 4. idle polls, one connector at a time, triggered through the API.
        polls: dict[str, Any] = {}
        for p in ALL:
            starts = self.starts()
            for _ in range(n_polls):
                before_n = d.metric_sum("taskbridge_polls_total", connector=p)
                r = d.api("POST", f"/api/v1/connectors/{p}/sync")
                assert r.status_code == 202, r.text
                wait_for(
                    lambda b=before_n, p=p: d.metric_sum("taskbridge_polls_total", connector=p) > b,
                    timeout=60,
                    interval=0.05,
                )
                self.quiet_all(
                    0.5 if self.quick else 1.0
                )  # the comment sweep runs after the poll's metric moves
            entries = [e for _, e in self.logs[p].since(starts[p])]
            others = {q: len(self.logs[q].times) - starts[q] for q in ALL if q != p}
            c = counts(entries)
            polls[p] = {
                "per_poll": {key: round(v / n_polls, 2) for key, v in c.items()},
                "by_route_per_poll": _by_route(entries, n_polls),
                "requests_on_other_fakes": others,
                "writes": c["write"],
            }
        res["idle_poll"] = polls
        res["counts"] = {
            "edits": n_edits,
            "creates": n_creates,
            "comments": n_comments,
            "polls_per_connector": n_polls,
        }
        res["daemon_log_errors"] = d.errors_in_log()[:10]
        self.results["cost"] = res
        return res

    def vortask_title(self, i: int) -> str:
        """The title of pool task `i` as the Vortask fake holds it (in-process: no request)."""
        fake: Any = self.world.fakes[SOURCE]
        task = fake.projects[int(self.world.scopes[SOURCE])].tasks[int(self.ids[SOURCE][i])]
        return str(task["title"] if isinstance(task, dict) else task.title)

    def store_path(self) -> str:
        return self.store_url.split("///", 1)[1]

    def outbox_mark(self) -> tuple[int, int]:
        import sqlite3

        with contextlib.closing(sqlite3.connect(f"file:{self.store_path()}?mode=ro", uri=True)) as db:
            o = db.execute("select coalesce(max(id), 0) from outbox").fetchone()[0]
            i = db.execute("select coalesce(max(id), 0) from inbox").fetchone()[0]
        return int(o), int(i)

    def ops_since(self, mark: tuple[int, int], n: int) -> dict[str, Any]:
        """Outbox operations and webhook deliveries recorded since `mark`, per change."""
        import sqlite3

        with contextlib.closing(sqlite3.connect(f"file:{self.store_path()}?mode=ro", uri=True)) as db:
            ops = db.execute(
                "select connector, op, count(*) from outbox where id > ? group by connector, op", (mark[0],)
            ).fetchall()
            inbox = db.execute(
                "select connector, count(*) from inbox where id > ? group by connector", (mark[1],)
            ).fetchall()
        return {
            "outbox_ops_per_change": {f"{c} {o}": round(k / n, 2) for c, o, k in ops},
            "webhook_deliveries_per_change": {c: round(k / n, 2) for c, k in inbox},
        }

    def window_cost(
        self, starts: dict[str, int], n: int, own: dict[str, dict[str, int | None]]
    ) -> dict[str, Any]:
        """Requests each fake served since `starts`, per change, less the benchmark's own."""
        out: dict[str, Any] = {}
        for p in ALL:
            entries = [e for _, e in self.logs[p].since(starts[p])]
            mine = own.get(p, {})
            kept = []
            budget = {m: c for m, c in mine.items()}
            for e in entries:
                if e.method in budget and classify(e) != "mcp":
                    left = budget[e.method]
                    if left is None:
                        continue  # all of this method are ours
                    if left > 0:
                        budget[e.method] = left - 1
                        continue
                kept.append(e)
            c = counts(kept)
            out[p] = {
                "per_change": {key: round(v / n, 2) for key, v in c.items()},
                "by_route_per_change": _by_route(kept, n),
            }
        return out


def _agentkanban_comment_count(world: World, task_id: str) -> int:
    """In-process (no request of ours in the window being counted)."""
    fake: Any = world.fakes["agentkanban"]
    return int(fake.call(lambda: len(fake.boards[world.scopes["agentkanban"]].tasks[task_id].comments)))


def _by_route(entries: list[Any], n: int) -> dict[str, float]:
    c: dict[str, int] = {}
    for e in entries:
        key = f"{e.method} {e.route}"
        c[key] = c.get(key, 0) + 1
    return {k: round(v / n, 2) for k, v in sorted(c.items())}


def _hist_snapshot(d: BenchDaemon, metric: str = "taskbridge_propagation_seconds") -> dict[float, float]:
    import math

    agg: dict[float, float] = {}
    for (name, labels), value in d.metrics().items():
        if name == metric + "_bucket":
            le = dict(labels)["le"]
            key = math.inf if le == "+Inf" else float(le)
            agg[key] = agg.get(key, 0.0) + value
    return agg


def _hist_diff(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    diff = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = diff[-1][1] if diff else 0
    out: dict[str, Any] = {"observations": int(total)}
    for q in (50, 95, 99):
        out[f"p{q}_bucket_le_s"] = next((le for le, cum in diff if total and cum >= total * q / 100), None)
    return out


def platform_headers() -> dict[str, dict[str, str]]:
    """Each platform's auth, as the raw client's spec carries it."""
    return {p: World.auth_headers(p) for p in ALL}


def run_raw(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bench.raw_client"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"raw client failed: {proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout))


# -- the benchmarks ---------------------------------------------------------------------------


def get_rig(ctx: Any) -> Rig:
    rig = ctx.shared.get("rig")
    if rig is None:
        setup = ctx.setup()
        rig = Rig(
            setup=setup,
            quick=ctx.quick,
            pool=8 if ctx.quick else POOL,
            only_rates=getattr(ctx, "rates", None),
        )
        rig.prepare()
        ctx.shared["rig"] = rig
    return rig


def params(rig: Rig) -> dict[str, Any]:
    return {
        "source": SOURCE,
        "targets": list(TARGETS),
        "route_members": list(ALL),
        "pool_tasks": rig.pool,
        "rates_per_s": rig.rates(),
        "seconds_per_rate": rig.seconds_per_rate(),
        "change": "title edit (PUT on Vortask's REST API)",
        "webhook_mode_poll_interval_s": "1h (polls only at start-up)" if rig.quick else WEBHOOK_MODE_POLL_S,
        "polling_mode_poll_interval_s": POLLING_MODE_POLL_S,
        "fakes": "in-process (tests.world.World), five uvicorn threads",
        "deliveries_at_once": deliveries_at_once(),
        "daemon": "python -m bridge run (a separate process), SQLite store",
        "method": "fake-side stamps of the edit and of each mirror write (TimedLog); latency = last "
        "mirror write - edit",
    }


def bench_propagation(ctx: Any) -> dict[str, Any]:
    rig = get_rig(ctx)
    started = ctx.started()
    webhook = rig.webhook_phase()
    if "cost" in getattr(ctx, "names", ()):
        rig.cost_phase()  # while this daemon runs (quick: the same config); emitted by `cost`
    # Quick: no polling-only phase (another daemon start; the smoke run has 90 s for everything).
    try:
        polling = {"skipped": "quick"} if ctx.quick else rig.polling_phase()
    except Exception as exc:  # the webhook figures stand on their own; keep them
        log(f"polling phase failed: {exc!r}")
        polling = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    final = rig.check_final()
    return ctx.emit(
        "propagation",
        started,
        params(rig),
        {"webhook": webhook, "polling_only": polling, "final_state": final},
    )


def bench_raw_limit(ctx: Any) -> dict[str, Any]:
    rig = get_rig(ctx)
    started = ctx.started()
    webhook = rig.webhook_phase()
    raw = rig.raw_phase()
    ratios: dict[str, Any] = {}
    for key, r in raw.items():
        dm = webhook.get(key, {}).get("latency_ms", {})
        rl = r["latency_ms"]
        ratios[key] = {
            q: (round(dm[q] / rl[q], 1) if dm.get(q) and rl.get(q) else None) for q in ("p50", "p99")
        }
    p = params(rig)
    p["raw_calls_per_propagation"] = (
        "GET the Vortask task; then PATCH/PATCH/PATCH/PUT the four mirrors concurrently"
    )
    return ctx.emit(
        "raw_limit",
        started,
        p,
        {
            "raw": raw,
            "daemon_webhook": {
                k: v["latency_ms"] for k, v in webhook.items() if isinstance(v, dict) and "latency_ms" in v
            },
            "ratio_daemon_over_raw": ratios,
        },
    )


MINIMUM = {
    "edit": {
        "vortask": {
            "read": 1,
            "write": 0,
            "why": "one GET of the task: the webhook body is a trigger (it lacks the description and due date)",
        },
        "impactly": {"read": 0, "write": 1, "why": "one PATCH of the changed field"},
        "agentkanban": {"read": 0, "write": 1, "why": "one PATCH (a title edit needs no lane move)"},
        "runs": {"read": 0, "write": 1, "why": "one PATCH"},
        "squads": {"read": 0, "write": 1, "why": "one PUT of the changed field"},
    },
    "edit_elsewhere": {
        "impactly": {"read": 0, "write": 0, "why": "the task.updated webhook carries the task"},
        "vortask": {
            "read": 0,
            "write": 1,
            "why": "one PUT (its delivery, which lacks the task, read by nothing)",
        },
        "agentkanban": {"read": 0, "write": 1, "why": "one PATCH"},
        "runs": {"read": 0, "write": 1, "why": "one PATCH"},
        "squads": {"read": 0, "write": 1, "why": "one PUT of the changed field"},
    },
    "create": {
        "vortask": {"read": 1, "write": 0, "why": "one GET after the task.created webhook"},
        "impactly": {"read": 0, "write": 1, "why": "one POST (status active is the default)"},
        "agentkanban": {"read": 0, "write": 1, "why": "one POST (lane, priority and tags go in the create)"},
        "runs": {"read": 0, "write": 1, "why": "one POST"},
        "squads": {"read": 0, "write": 1, "why": "one POST"},
    },
    "comment": {
        "impactly": {"read": 0, "write": 0, "why": "the comment.created webhook carries the comment"},
        "vortask": {"mcp": 1, "why": "one MCP tools/call add_comment on an open session"},
        "agentkanban": {"read": 0, "write": 1, "why": "one POST of the comment"},
    },
    "idle_poll": {
        "impactly": {
            "read": 1,
            "why": "one GET /activity?since= (incremental); every 10th poll a full listing, ceil(n/100) pages",
        },
        "vortask": {
            "read": 1,
            "why": "one GET of the unpaginated task list (no changed-since filter); Vortask sends no comment webhooks, so seeing new comments needs one MCP list_comments per task (the daemon reads at most 50 a poll, round robin)",
        },
        "agentkanban": {"read": 1, "why": "one GET of the board's task list (lanes rarely change)"},
        "runs": {"read": "ceil(n/100)", "why": "every page of the task list (no changed-since filter)"},
        "squads": {"read": 1, "why": "one GET of the squad's task list"},
    },
}


def bench_cost(ctx: Any) -> dict[str, Any]:
    rig = get_rig(ctx)
    started = ctx.started()
    cost = rig.cost_phase()
    echo = {
        "vortask_writes_per_edit_by_daemon": cost["edit"]["vortask"]["per_change"]["write"],
        "idle_poll_writes": {p: v["writes"] for p, v in cost["idle_poll"].items()},
    }
    echo["zero"] = echo["vortask_writes_per_edit_by_daemon"] == 0 and not any(
        echo["idle_poll_writes"].values()
    )
    p = params(rig)
    p.update(
        {
            "poll_interval": "1h (the start-up poll, then only polls triggered through the API)",
            "webhooks": True,
            "read_before_write": True,
            "comment_sweep_budget": 50,
        }
    )
    return ctx.emit(
        "cost",
        started,
        p,
        {"measured": cost, "minimum": MINIMUM, "echo_writes": echo},
    )


@contextlib.contextmanager
def _nothing() -> Any:
    yield
