"""A world of platform fakes on loopback and a config that routes over them.

Used by the engine tests (in-process daemon), the end-to-end tests (the daemon as a real process),
the benchmarks and `taskbridge demo`'s test. Each fake is a real HTTP server; tests talk to them
over HTTP like any client would.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

import connectors
from connectors.fakekit import Fake

TOKENS = {
    "impactly": "imp_world",
    "vortask": "vt_world",
    "agentkanban": "ak_world",
    "runs": "phx_world",
    "squads": "cfid_world:cfsecret_world",
}
WEBHOOK_SECRET = "whsec_world_shared_secret"
# Credentials of a person (not the bridge) where a test must act as someone else.
PERSON_TOKENS = {"vortask": "vt_bob_person"}  # Bob's, made by VortaskFake.people()


@dataclass
class World:
    platforms: tuple[str, ...]
    seed: int | None = None
    fakes: dict[str, Fake] = field(default_factory=dict)
    scopes: dict[str, str] = field(default_factory=dict)
    people: dict[str, dict[str, str]] = field(default_factory=dict)

    def start(self) -> World:
        for platform in self.platforms:
            fake = connectors.fake_class(platform)(token=TOKENS[platform], seed=self.seed)
            fake.start()
            self.fakes[platform] = fake
        self.prepare()
        return self

    def reset(self) -> None:
        """Every fake back to its initial state, with the world's containers and people again."""
        for fake in self.fakes.values():
            fake.call(fake.reset_state)
            fake.faults.reset()
            fake.requests.clear()
            fake.webhooks.deliveries.clear()
        self.prepare()

    def prepare(self) -> None:
        """Containers the APIs can create, and two people known on several platforms."""
        self.people = {"alice": {}, "bob": {}}
        for platform, fake in self.fakes.items():
            self.scopes[platform] = fake.scope()
            for key, remote_id in fake.people().items():
                self.people.setdefault(key, {})[platform] = remote_id

    def stop(self) -> None:
        for fake in self.fakes.values():
            fake.stop()

    def base_url(self, platform: str) -> str:
        fake = self.fakes[platform]
        return fake.url + fake.api_root

    @staticmethod
    def auth_headers(platform: str) -> dict[str, str]:
        """The headers a fake's own users authenticate with."""
        if platform == "squads":
            cid, _, secret = TOKENS[platform].partition(":")
            return {"CF-Access-Client-Id": cid, "CF-Access-Client-Secret": secret}
        return {"Authorization": f"Bearer {TOKENS[platform]}"}

    def client(self, platform: str) -> httpx.Client:
        """An HTTP client speaking to a fake as its own users would (the platform's auth)."""
        return httpx.Client(base_url=self.base_url(platform), headers=self.auth_headers(platform), timeout=30)

    def config(
        self,
        tmp: Path,
        *,
        port: int = 0,
        public: bool = False,
        poll_interval: str = "1s",
        route: dict[str, Any] | None = None,
        store_url: str | None = None,
        members: Iterable[str] | None = None,
        extra_connector: dict[str, Any] | None = None,
        server_tokens: list[dict[str, Any]] | None = None,
        workers: dict[str, Any] | None = None,
    ) -> Path:
        """Write a config routing every fake (or `members`) and return its path."""
        conns: dict[str, Any] = {}
        for platform in self.platforms:
            c: dict[str, Any] = {
                **self.fakes[platform].connector_config(),
                "poll_interval": poll_interval,
                "timeout": "10s",
                "webhooks": public,
            }
            if platform in ("vortask", "impactly"):
                c["webhook_secret"] = WEBHOOK_SECRET
            c.update((extra_connector or {}).get(platform, {}))
            conns[platform] = c
        chosen = list(members) if members is not None else list(self.platforms)
        r = {
            "name": "main",
            "members": [{"connector": p, "scope": self.scopes[p]} for p in chosen],
            "fields": ["title", "description", "status", "priority", "assignees", "tags", "due_date"],
            "conflict": "newest",
        }
        r.update(route or {})
        people = {
            key: {"name": key.title(), "ids": {p: rid for p, rid in ids.items() if p in self.platforms}}
            for key, ids in self.people.items()
            if ids
        }
        cfg = {
            "store": {"url": store_url or f"sqlite+aiosqlite:///{tmp}/bridge.db"},
            "server": {
                "listen": f"127.0.0.1:{port}",
                "public_url": f"http://127.0.0.1:{port}" if public else None,
                "tokens": server_tokens or [],
            },
            "log": {"level": "info"},
            "people": people,
            "connectors": conns,
            "routes": [r],
        }
        if workers:
            cfg["workers"] = workers
        path = tmp / "taskbridge.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def state(self, platform: str) -> Any:
        return json.loads(httpx.get(self.fakes[platform].url + "/_fake/state", timeout=30).text)

    def requests(self, platform: str) -> dict[str, Any]:
        return httpx.get(self.fakes[platform].url + "/_fake/requests", timeout=30).json()
