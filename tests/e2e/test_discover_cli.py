"""`taskbridge scopes`, `taskbridge people` and `check --connect`'s scope hint as real processes
(`python -m bridge ...`) against the five fakes on loopback."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.fakekit import free_port
from tests import clirun
from tests.world import PERSON_TOKENS, World

pytestmark = pytest.mark.slow

PLATFORMS = ("impactly", "vortask", "agentkanban", "runs", "squads")
ROOT = Path(__file__).resolve().parents[2]


def taskbridge(*args: str) -> subprocess.CompletedProcess[str]:
    return clirun.run(args, env=clirun.clean_env())


def rows(stdout: str) -> list[list[str]]:
    """The scopes table's rows (after its header), split on runs of two spaces or more."""
    import re

    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines[0].split()[:3] == ["CONNECTOR", "SCOPE", "NAME"]
    return [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]


def rewrite(path: Path, change: Any) -> Path:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


# -- scopes ---------------------------------------------------------------------------------------


def test_scopes_lists_what_each_credential_reaches(world: World, tmp_path: Path) -> None:
    config = world.config(tmp_path)
    result = taskbridge("scopes", "--config", str(config))
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    table = rows(result.stdout)
    for platform in PLATFORMS:  # the World's connectors are named after their platforms
        scopes = {row[1] for row in table if row[0] == platform}
        assert world.scopes[platform] in scopes, (platform, result.stdout)
    assert {row[1] for row in table if row[0] == "squads"} == {"Platform", "Growth"}
    runs = next(row for row in table if row[0] == "runs")
    assert "not listed by the platform" in runs[3] and "check ok" in runs[3]  # the configured one, read

    as_json = taskbridge("scopes", "--config", str(config), "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    by_connector = {entry["connector"]: entry for entry in data}
    assert set(by_connector) == set(PLATFORMS)
    for platform in PLATFORMS:
        ids = {s["id"] for s in by_connector[platform]["scopes"]}
        assert world.scopes[platform] in ids
        assert by_connector[platform]["error"] is None
    vortask = by_connector["vortask"]["scopes"][0]
    assert vortask == {
        "id": "1",
        "name": "Default",
        "url": None,
        "extra": {"role": "Admin", "tasks": "0"},
        "listed": True,
        "routes": ["main"],
        "check": None,
    }

    one = taskbridge("scopes", "--config", str(config), "agentkanban")
    assert one.returncode == 0, one.stderr
    assert {row[0] for row in rows(one.stdout)} == {"agentkanban"}
    unknown = taskbridge("scopes", "--config", str(config), "nope")
    assert unknown.returncode == 2
    assert "no connector 'nope'" in unknown.stderr
    no_traceback(unknown)


def test_failures_are_one_line_per_connector_and_exit_1(world: World, tmp_path: Path) -> None:
    config = world.config(
        tmp_path,
        extra_connector={
            "impactly": {"token": "imp_revoked"},
            "vortask": {"base_url": f"http://127.0.0.1:{free_port()}/api", "max_retries": 0},
        },
    )
    for command in ("scopes", "people"):
        result = taskbridge(command, "--config", str(config))
        assert result.returncode == 1, result.stderr
        no_traceback(result)
        failed = [line for line in result.stderr.splitlines() if "FAILED" in line]
        assert len(failed) == 2, result.stderr
        assert any(line.startswith("impactly (impactly): FAILED, HTTP 401") for line in failed)
        assert any(line.startswith("vortask (vortask): FAILED, ") for line in failed)
        assert "imp_revoked" not in result.stderr + result.stdout  # a credential is never shown
    scopes = taskbridge("scopes", "--config", str(config))
    listed = {row[0]: row for row in rows(scopes.stdout)}
    assert listed["impactly"][1] == "-" and listed["impactly"][3].startswith("FAILED")
    assert world.scopes["agentkanban"] in scopes.stdout  # the others still answered


# -- people ---------------------------------------------------------------------------------------


def make_people_visible(world: World) -> None:
    """What the platforms show of the World's alice and bob once they have some work: Impactly
    (no member listing) shows its assignees and, by their comments, their names; Nucleus the
    people its tasks name; Vortask lists its members with their emails already."""
    impactly: Any = world.fakes["impactly"]
    with world.client("impactly") as c:
        for person in ("alice", "bob"):
            pid = world.people[person]["impactly"]
            task = c.post(
                "/tasks",
                json={
                    "title": f"{person}'s report",
                    "project_id": world.scopes["impactly"],
                    "assignee_id": pid,
                },
            ).raise_for_status()
            task_id = task.json()["id"]
            impactly.call(lambda t=task_id, p=pid: impactly.add_comment(t, "On it.", author_id=p))
    with world.client("squads") as c:
        for person in ("alice", "bob"):
            c.post("/tasks", json={"title": "Rotate keys", "assignee_id": world.people[person]["squads"]})


def test_people_proposes_a_block_to_paste(world: World, tmp_path: Path) -> None:
    config = world.config(tmp_path)
    make_people_visible(world)

    # As the World makes them, alice and bob are "Alice Chen"/"Bob Okafor" on Impactly (no email
    # shown), "Alice" <alice@example.com>/"Bob" <bob@example.com> on Vortask, and "Ada Park"/"Ben
    # Okafor" on Nucleus (no email shown). Nothing the APIs show ties them: nothing is matched.
    before = taskbridge("people", "--config", str(config))
    assert before.returncode == 0, before.stderr
    no_traceback(before)
    assert yaml.safe_load(before.stdout) == {"people": {}}
    for seen in (
        "impactly: Alice Chen",
        "vortask: Alice <alice@example.com>",
        "squads: Ada Park",
        "squads: Ben Okafor",
    ):
        assert seen in before.stderr, before.stderr
    assert "not asked: agentkanban" in before.stderr and "not asked: runs" in before.stderr

    # Alice and Bob put their full names on Vortask (PUT /profile): now the names agree.
    for token, name in ((None, "Alice Chen"), (PERSON_TOKENS["vortask"], "Bob Okafor")):
        with world.client("vortask") as c:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            c.put("/profile", json={"displayName": name}, headers=headers).raise_for_status()

    after = taskbridge("people", "--config", str(config))
    assert after.returncode == 0, after.stderr
    no_traceback(after)
    block = yaml.safe_load(after.stdout)
    assert block == {
        "people": {
            person: {
                "name": name,
                "email": f"{person}@example.com",
                "ids": {p: world.people[person][p] for p in ("impactly", "vortask")},
            }
            for person, name in (("alice", "Alice Chen"), ("bob", "Bob Okafor"))
        }
    }
    assert "squads: Ada Park" in after.stderr  # still nobody's match: another name, no email
    assert "kept the config's keys" in after.stderr

    # ready to paste: the config with this block in place of its own is valid
    pasted = rewrite(Path(config), lambda data: data.update(block))
    check = taskbridge("check", "--config", str(pasted))
    assert check.returncode == 0, check.stderr + check.stdout

    as_json = taskbridge("people", "--config", str(config), "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["people"] == block["people"]
    assert {(u["connector"], u["name"]) for u in data["unmatched"]} >= {("squads", "Ada Park")}
    assert data["errors"] == {} and set(data["skipped"]) == {"agentkanban", "runs"}


# -- check --connect --------------------------------------------------------------------------------


def test_check_connect_shows_the_scopes_that_exist(world: World, tmp_path: Path) -> None:
    wrong = {
        "impactly": "00000000-0000-4000-8000-000000000000",
        "vortask": "999",
        "agentkanban": "01nosuchboard0000000000000",
        "runs": "999",
        "squads": "Plattform",
    }

    def break_scopes(data: dict[str, Any]) -> None:
        for member in data["routes"][0]["members"]:
            member["scope"] = wrong[member["connector"]]

    config = rewrite(world.config(tmp_path), break_scopes)
    result = taskbridge("check", "--config", str(config), "--connect")
    assert result.returncode == 1
    no_traceback(result)
    lines = result.stdout.splitlines()
    for platform in PLATFORMS:
        at = next(i for i, line in enumerate(lines) if line.startswith(f"  {platform} ") and "FAILED" in line)
        hint = []
        for line in lines[at + 1 :]:
            if not line.startswith("    "):
                break
            hint.append(line.strip())
        if platform == "runs":
            assert hint == []  # PostHog's Tasks API lists no projects: nothing to show
            continue
        assert hint[0].startswith(f"{wrong[platform]!r} is not among the"), hint
        assert any(h.split()[0] == world.scopes[platform] for h in hint[1:]), (platform, hint)
    squads = lines[next(i for i, line in enumerate(lines) if line.startswith("  squads "))]
    assert "Plattform" in squads
