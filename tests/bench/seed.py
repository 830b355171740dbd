"""Putting many tasks straight into the fakes' in-memory state (for backfill, memory and the
propagation set-up), on each fake's own loop so no request handler races it.

These use the fakes' own internal creation paths (the ones their REST handlers call), so the
tasks are exactly what the platform would hold after the same creates over HTTP: ids, times,
activity entries and webhooks (none are registered before the daemon starts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.world import World

CHUNK = 2000  # tasks per call on a fake's loop (fake.call() waits at most 10 s per call)


def _chunked(world: World, platform: str, n: int, make: Callable[[int], Any]) -> list[Any]:
    fake = world.fakes[platform]
    out: list[Any] = []
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        out += fake.call(lambda start=start, stop=stop: [make(i) for i in range(start, stop)])
    return out


def vortask_tasks(
    world: World, n: int, title: Callable[[int], str], description: Callable[[int], str] | None = None
) -> list[str]:
    from connectors.vortask.fake import Caller

    fake: Any = world.fakes["vortask"]
    project = fake.projects[int(world.scopes["vortask"])]
    owner = Caller(fake.alice, fake.tokens[fake.token])

    def make(i: int) -> str:
        body: dict[str, Any] = {"title": title(i), "priority": "Medium"}
        if description is not None:
            body["description"] = description(i)
        return str(fake.create_task(owner, project, body).id)

    return _chunked(world, "vortask", n, make)


def impactly_tasks(
    world: World, n: int, title: Callable[[int], str], description: Callable[[int], str] | None = None
) -> list[str]:
    fake: Any = world.fakes["impactly"]

    def make(i: int) -> str:
        fields: dict[str, Any] = {"project_id": world.scopes["impactly"]}
        if description is not None:
            fields["description"] = description(i)
        return str(fake.create_task(title(i), **fields)["id"])

    return _chunked(world, "impactly", n, make)


def agentkanban_tasks(
    world: World, n: int, title: Callable[[int], str], description: Callable[[int], str] | None = None
) -> list[str]:
    fake: Any = world.fakes["agentkanban"]
    board = fake.boards[world.scopes["agentkanban"]]
    lane = board.lanes[0]  # "To Do"

    def make(i: int) -> str:
        desc = description(i) if description is not None else None
        return str(fake._add_task(board, lane, title(i), description=desc or None).id)

    return _chunked(world, "agentkanban", n, make)


def runs_tasks(
    world: World, n: int, title: Callable[[int], str], description: Callable[[int], str] | None = None
) -> list[str]:
    fake: Any = world.fakes["runs"]
    project = fake.projects[int(world.scopes["runs"])]
    key = fake.keys[fake.token]

    def make(i: int) -> str:
        values: dict[str, Any] = {"title": title(i), "title_manually_set": True}
        if description is not None:
            values["description"] = description(i)
        return str(fake._new_task(project, key.user, values).id)

    return _chunked(world, "runs", n, make)


def squads_tasks(
    world: World, n: int, title: Callable[[int], str], description: Callable[[int], str] | None = None
) -> list[str]:
    fake: Any = world.fakes["squads"]
    user = fake.users[fake.caller_id]

    def make(i: int) -> str:
        fields: dict[str, Any] = {"title": title(i)}
        if description is not None:
            fields["description"] = description(i)
        return str(fake._insert_task(user, fields)["id"])

    return _chunked(world, "squads", n, make)


SEEDERS = {
    "vortask": vortask_tasks,
    "impactly": impactly_tasks,
    "agentkanban": agentkanban_tasks,
    "runs": runs_tasks,
    "squads": squads_tasks,
}


def count_tasks(world: World, platform: str) -> int:
    """How many live tasks a fake holds in the world's scope (in-process, cheap)."""
    fake: Any = world.fakes[platform]
    scope = world.scopes[platform]

    def count() -> int:
        if platform == "vortask":
            return len(fake.projects[int(scope)].tasks)
        if platform == "impactly":
            return sum(1 for t in fake.tasks.values() if str(t.project_id) == scope)
        if platform == "agentkanban":
            return len(fake.boards[scope].tasks)
        if platform == "runs":
            return sum(1 for t in fake.tasks.values() if not t.deleted and str(t.project_id) == scope)
        return len(fake.tasks)

    return int(fake.call(count, timeout=300))  # the fake may be serving a 10,000-task listing
