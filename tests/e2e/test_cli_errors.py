"""The operator's mistakes (issue 17), each made through the CLI as a real process (`taskbridge
...`, forked with its modules imported: tests/clirun.py): every one gets an exit code (2
configuration or usage, 1 the work failed) and a message of a line or two that says what to fix,
never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from connectors.fakekit import free_port
from tests import clirun, ops
from tests.world import World

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PLATFORMS = ("impactly", "vortask", "agentkanban", "runs", "squads")

# Two connectors nobody answers for (the failures under test come before any platform is called).
CONFIG = """\
store:
  url: {url}
connectors:
  imp:
    platform: impactly
    base_url: http://127.0.0.1:9/api/v1
    token: imp_x
  vt:
    platform: vortask
    base_url: http://127.0.0.1:9/api
    token: {token}
routes:
  - name: main
    members:
      - {{connector: imp, scope: p1}}
      - {{connector: vt, scope: {scope}}}
"""


def taskbridge(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = clirun.run(args, env=clirun.clean_env(env), cwd=cwd, timeout=timeout)
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


def config(tmp_path: Path, *, url: str = "", token: str = "vt_x", scope: str = "1", extra: str = "") -> Path:
    path = tmp_path / "taskbridge.yaml"
    url = url or f"sqlite+aiosqlite:///{tmp_path}/bridge.db"
    path.write_text(CONFIG.format(url=url, token=token, scope=scope) + textwrap.dedent(extra))
    return path


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def make_store(path: Path) -> None:
    """A migrated SQLite store at `path`, as a daemon leaves it."""
    from bridge.store import Store

    async def migrate() -> None:
        store = Store.open(f"sqlite+aiosqlite:///{path}")
        await store.migrate()
        await store.close()

    asyncio.run(migrate())


# -- the store's URL ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("sqlite:///{tmp}/sync.db", "SQLite"),
        ("postgres://bridge:hunter2@db.example.com/bridge", "PostgreSQL"),
        ("postgresql://bridge:hunter2@db.example.com/bridge", "PostgreSQL"),
    ],
)
def test_a_store_url_without_the_async_driver_is_read_as_the_shipped_one(
    tmp_path: Path, url: str, kind: str
) -> None:
    result = taskbridge("check", "--config", str(config(tmp_path, url=url.format(tmp=tmp_path))))
    assert result.returncode == 0, result.stderr
    assert f"store {kind})" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr


def test_a_sqlite_url_without_the_driver_opens_the_store(tmp_path: Path) -> None:
    # `store export` reads the store through the config's URL: the mapped one reaches Store.open.
    make_store(tmp_path / "plain.db")
    path = tmp_path / "taskbridge.yaml"
    path.write_text(f"store:\n  url: sqlite:///{tmp_path}/plain.db\n")
    result = taskbridge("store", "export", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert f"from sqlite+aiosqlite:///{tmp_path}/plain.db" in result.stderr
    assert result.stdout.startswith('{"format"')


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mysql://x", "'mysql://x'"),
        ("garbage", "'garbage'"),
        ("mysql://u:hunter2@h/db", "'mysql://u:***@h/db'"),
    ],
)
def test_check_refuses_an_unsupported_store_url(tmp_path: Path, url: str, shown: str) -> None:
    path = config(tmp_path, url=url)
    result = taskbridge("check", "--config", str(path))
    assert result.returncode == 2
    assert lines(result.stderr) == [
        "configuration error:",
        f"{path}:2: store.url: {shown} is not a supported store URL; use sqlite+aiosqlite:///PATH or "
        "postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE (sqlite://, postgresql:// and "
        "postgres:// are read as these)",
    ]
    assert "hunter2" not in result.stderr


def test_a_sqlite_store_in_a_missing_directory_is_named_by_check_and_refused_by_run(tmp_path: Path) -> None:
    path = config(tmp_path, url=f"sqlite+aiosqlite:///{tmp_path}/absent/bridge.db")
    problem = (
        f"{path}:2: store.url: the directory {tmp_path}/absent does not exist: create it, or put "
        "the store elsewhere"
    )
    # `check` may run where the daemon does not (the directory is made by systemd's
    # StateDirectory= or is a container's volume): it says so, and the config is otherwise fine.
    result = taskbridge("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert lines(result.stderr) == [f"warning: {problem} (`run` and `sync` refuse to start without it)"]
    for command in (["run"], ["sync", "--once"]):
        result = taskbridge(*command, "--config", str(path))
        assert (result.returncode, lines(result.stderr)) == (2, ["configuration error:", problem]), command
    assert not (tmp_path / "absent").exists()
    # A relative path is relative to the working directory: the message says so.
    relative = config(tmp_path, url="sqlite:///absent/bridge.db")
    result = taskbridge("run", "--config", str(relative), cwd=tmp_path)
    assert result.returncode == 2
    assert f"the directory {tmp_path}/absent does not exist" in result.stderr
    assert "relative to the working directory" in result.stderr


def test_a_store_url_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    env = {"TASKBRIDGE_STORE__URL": f"sqlite:///{tmp_path}/absent/x.db"}
    result = taskbridge("run", "--config", str(config(tmp_path)), env=env)
    assert result.returncode == 2
    assert lines(result.stderr) == [
        "configuration error:",
        f"TASKBRIDGE_STORE__URL (environment variable): store.url: the directory {tmp_path}/absent "
        "does not exist: create it, or put the store elsewhere",
    ]


# -- a store that cannot be opened or written: `run` and `sync` exit 1 with one line ------------


def _one_line_failure(result: subprocess.CompletedProcess[str], prefix: str) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    failing = [line for line in lines(result.stderr) if line.startswith(prefix)]
    assert len(failing) == 1, result.stderr
    # Nothing but the daemon's own "starting" line besides it.
    assert all(" INFO " in line for line in lines(result.stderr) if line not in failing), result.stderr
    return failing[0]


def test_run_reports_a_store_it_cannot_create_in_one_line(tmp_path: Path) -> None:
    # /sys takes no new files, for root too: the store file cannot be created.
    path = config(tmp_path, url="sqlite+aiosqlite:////sys/taskbridge-test.db")
    assert taskbridge("check", "--config", str(path)).returncode == 0  # the directory exists
    line = _one_line_failure(taskbridge("run", "--config", str(path)), "taskbridge could not start:")
    assert line.startswith("taskbridge could not start: /sys/taskbridge-test.db: ")  # Permission denied


def test_run_and_sync_report_a_store_that_is_not_a_database_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "bridge.db").write_text("not a database, whatever the name says\n")
    path = config(tmp_path)
    line = _one_line_failure(taskbridge("run", "--config", str(path)), "taskbridge could not start:")
    assert line == (
        f"taskbridge could not start: the store sqlite+aiosqlite:///{tmp_path}/bridge.db: file is not a database"
    )
    result = taskbridge("sync", "--config", str(path), "--once", "--no-progress")
    assert lines(result.stderr) == [
        f"sync could not run: the store sqlite+aiosqlite:///{tmp_path}/bridge.db: file is not a database"
    ]
    assert result.returncode == 1


@pytest.mark.parametrize("kind", ["not-a-database", "unreachable-postgres"])
def test_plan_and_link_report_a_store_they_cannot_open_in_one_line(tmp_path: Path, kind: str) -> None:
    if kind == "not-a-database":
        (tmp_path / "bridge.db").write_text("not a database, whatever the name says\n")
        path = config(tmp_path)
        expected = f"the store sqlite+aiosqlite:///{tmp_path}/bridge.db: file is not a database"
    else:  # nothing listens on port 1; the password is masked
        path = config(tmp_path, url="postgresql+asyncpg://u:hunter2@127.0.0.1:1/x")
        expected = "the store postgresql+asyncpg://u:***@127.0.0.1:1/x: "
    for command in (["plan"], ["plan", "--apply"], ["link", "--route", "main"]):
        result = taskbridge(*command, "--config", str(path))
        assert result.returncode == 1, (command, result.stderr)
        [line] = lines(result.stderr)
        assert line.startswith(f"{command[0]} could not run: {expected}"), (command, line)
        assert "hunter2" not in result.stdout + result.stderr


def test_run_and_sync_refuse_a_store_from_a_newer_taskbridge_in_one_line(tmp_path: Path) -> None:
    """A rollback onto a store a newer version migrated: refused before anything reads it."""
    import sqlite3

    make_store(tmp_path / "bridge.db")
    with sqlite3.connect(tmp_path / "bridge.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    path = config(tmp_path)
    line = _one_line_failure(taskbridge("run", "--config", str(path)), "taskbridge could not start:")
    assert "schema is at revision '9999', which this taskbridge does not know" in line, line
    assert "a newer taskbridge made or upgraded it" in line, line
    result = taskbridge("sync", "--config", str(path), "--once", "--no-progress")
    assert result.returncode == 1, result.stderr
    assert lines(result.stderr)[-1].startswith("taskbridge could not open its store: the store's schema"), (
        result.stderr
    )


def test_run_reports_a_read_only_store_in_one_line(tmp_path: Path) -> None:
    """A store file that takes no writes. Root writes through file modes, so the file is made
    immutable (chattr +i), where the filesystem and the process's capabilities allow it."""
    path = config(tmp_path)
    store = tmp_path / "bridge.db"
    make_store(store)
    if os.geteuid() != 0:
        store.chmod(0o400)
    elif (
        not shutil.which("chattr")
        or subprocess.run(["chattr", "+i", str(store)], capture_output=True).returncode
    ):
        pytest.skip("cannot make a file read-only for root here (no chattr +i)")
    try:
        line = _one_line_failure(taskbridge("run", "--config", str(path)), "taskbridge could not start:")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(store)], check=False)
    assert line == (
        f"taskbridge could not start: the store sqlite+aiosqlite:///{tmp_path}/bridge.db: "
        "attempt to write a readonly database"
    )


# -- a port already in use ----------------------------------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_run_reports_a_port_in_use_in_one_line(tmp_path: Path, taken_port: int) -> None:
    path = config(tmp_path, extra=f"server:\n  listen: 127.0.0.1:{taken_port}\n")
    result = taskbridge("run", "--config", str(path))
    assert result.returncode == 1  # not uvicorn's 3
    assert lines(result.stderr) == [
        f"taskbridge could not start: cannot listen on 127.0.0.1:{taken_port}: the address is already "
        "in use (by another program)"
    ]
    assert "error while attempting to bind" not in result.stderr  # uvicorn's own words
    assert not (tmp_path / "bridge.db").exists()  # refused before the store was touched


def test_demo_checks_its_port_before_the_banner(taken_port: int) -> None:
    result = taskbridge("demo", "--port", str(taken_port), "--seconds", "1", timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""  # no banner telling anyone to open it
    assert lines(result.stderr) == [
        f"demo could not start: cannot listen on 127.0.0.1:{taken_port}: the address is already in "
        "use (by another program); choose another port with --port N"
    ]


def test_demo_names_a_directory_it_cannot_create() -> None:
    result = taskbridge("demo", "--dir", "/proc/nope", "--port", str(free_port()), "--seconds", "1")
    assert result.returncode == 1
    assert result.stdout == ""
    assert lines(result.stderr) == [
        "demo could not start: cannot create the directory /proc/nope: No such file or directory"
    ]


@pytest.mark.parametrize("name", ["taskbridge.db", "taskbridge.yaml"])
def test_demo_refuses_a_directory_that_holds_a_store_or_config(tmp_path: Path, name: str) -> None:
    # An earlier demo's store links tasks of fakes that are gone (and a live demo's is in use);
    # a config there may be a person's: the demo starts fresh, deleting nothing.
    (tmp_path / name).write_text("kept\n")
    result = taskbridge("demo", "--dir", str(tmp_path), "--port", str(free_port()), "--seconds", "1")
    assert result.returncode == 2
    assert result.stdout == ""
    assert lines(result.stderr) == [
        f"demo: {tmp_path} already holds {name} (an earlier demo's, or someone's): the demo starts "
        "from an empty store; choose another --dir, or leave it out for a temporary one"
    ]
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert (tmp_path / name).read_text() == "kept\n"


def test_demo_refuses_the_directory_of_a_live_demo(tmp_path: Path) -> None:
    env = clirun.clean_env()
    live = subprocess.Popen(
        [sys.executable, "-m", "bridge", "demo", "--dir", str(tmp_path), "--port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        assert live.stdout is not None
        for line in live.stdout:
            if line.startswith("Ctrl-C stops the demo"):
                break
        config = (tmp_path / "taskbridge.yaml").read_text()
        result = taskbridge("demo", "--dir", str(tmp_path), "--port", str(free_port()), "--seconds", "1")
        assert result.returncode == 2
        assert "already holds taskbridge.db" in result.stderr
        assert (tmp_path / "taskbridge.yaml").read_text() == config  # the live demo's, untouched
    finally:
        live.terminate()
        live.communicate(timeout=60)
    assert live.returncode == 0


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["squads", "--token", "nocolon"], "squads token must be 'CLIENT_ID:CLIENT_SECRET'"),
        (["squads", "--role", "emperor"], "role must be one of executive, head, manager, lead, employee"),
        (["runs", "--user", "badformat"], "a user is NAME:KEY, not 'badformat'"),
        (["vortask", "--role", "lead"], "--role is for the squads fake (Nucleus's roles)"),
        (["vortask", "--user", "a:k"], "--user is for the runs fake (PostHog's per-user visibility)"),
    ],
)
def test_fake_refuses_bad_options_with_the_message_alone(
    taken_port: int, given: list[str], message: str
) -> None:
    # The port is taken: a fake that got past its options would not serve forever here.
    result = taskbridge("fake", *given, "--port", str(taken_port), timeout=60)
    assert (result.returncode, lines(result.stderr)) == (2, [message])
    assert result.stdout == ""


def test_fake_reports_a_port_in_use_in_one_line(taken_port: int) -> None:
    result = taskbridge("fake", "vortask", "--port", str(taken_port), timeout=60)
    assert result.returncode == 1  # not uvicorn's 3
    assert lines(result.stderr) == [
        f"fake could not start: cannot listen on 127.0.0.1:{taken_port}: the address is already in use "
        "(by another program)"
    ]
    assert result.stdout == ""  # no banner for a server that is not there


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["--port", "70000"], "argument --port: not a port (1-65535): '70000'"),
        (["--port", "0"], "argument --port: not a port (1-65535): '0'"),
        (["--port", "http"], "argument --port: not a port (1-65535): 'http'"),
        (["--seconds", "-1"], "argument --seconds: not a number of seconds above 0: '-1'"),
        (["--seconds", "0"], "argument --seconds: not a number of seconds above 0: '0'"),
        (["--seconds", "nan"], "argument --seconds: not a number of seconds above 0: 'nan'"),
    ],
)
def test_demo_options_out_of_range_are_usage_errors(tmp_path: Path, given: list[str], message: str) -> None:
    result = taskbridge("demo", "--dir", str(tmp_path / "d"), *given, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert lines(result.stderr)[-1] == f"taskbridge demo: error: {message}"
    assert not (tmp_path / "d").exists()  # refused before anything started


# -- usage errors ---------------------------------------------------------------------------------------


def test_status_without_a_token_is_a_usage_error() -> None:
    result = taskbridge("status", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert lines(result.stderr) == [
        "no API token: pass --token or set TASKBRIDGE_TOKEN (the config holds only tokens' hashes; "
        "`taskbridge token new` mints one)"
    ]


@pytest.mark.parametrize("url", ["notaurl", "ftp://h/x", "http://", "127.0.0.1:8080"])
@pytest.mark.parametrize("command", [["status"], ["conflicts", "list"], ["outbox", "list"]])
def test_a_malformed_url_is_a_usage_error(command: list[str], url: str) -> None:
    result = taskbridge(*command, "--url", url, "--token", "t")
    assert result.returncode == 2
    assert lines(result.stderr)[-1] == (
        f"taskbridge {' '.join(command)}: error: argument --url: {url!r} is not an absolute http(s) URL "
        "with a host (e.g. https://host.example.com)"
    )


@pytest.mark.parametrize("kind", ["outbox", "inbox"])
@pytest.mark.parametrize("value", ["-1", "0", "abc", "1.5"])
def test_list_limit_must_be_a_positive_integer(kind: str, value: str) -> None:
    result = taskbridge(kind, "list", "--limit", value, "--token", "t", "--url", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert lines(result.stderr)[-1] == (
        f"taskbridge {kind} list: error: argument --limit: must be a positive integer, not {value!r}"
    )


@pytest.mark.parametrize("kind", ["outbox", "inbox"])
def test_list_limit_past_the_apis_page_is_a_usage_error(kind: str) -> None:
    result = taskbridge(kind, "list", "--limit", "5000", "--token", "t", "--url", "http://127.0.0.1:9")
    assert result.returncode == 2  # before any request: the API would answer 422
    assert (
        lines(result.stderr)[-1]
        == f"taskbridge {kind} list: error: argument --limit: at most 1000 a page, not 5000"
    )


# Names that YAML would read as something else, or not at all, written as they are.
TOKEN_NAMES = ["ci: deploy", "#ops", "- dash", "yes", "123", '{a: "b"}', "it's", "josé", "tab\there", " pad "]


def test_token_new_prints_a_line_that_check_accepts_whatever_the_name(tmp_path: Path) -> None:
    from bridge import config as config_mod

    entries = []
    for name in TOKEN_NAMES:
        result = taskbridge("token", "new", name, "--scopes", "read,,write,read")
        assert result.returncode == 0, result.stderr
        token = result.stdout.splitlines()[0].rpartition(" ")[2]
        entries.append((name, token, result.stdout.splitlines()[-1]))
    extra = "server:\n  tokens:\n" + "".join(f"  {line}\n" for _, _, line in entries)
    path = config(tmp_path, extra=extra)
    result = taskbridge("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    tokens = config_mod.load(path, env={}).server.tokens
    assert [t.name for t in tokens] == TOKEN_NAMES
    assert all(t.scopes == ["read", "write"] for t in tokens)  # each scope once, in the order given
    assert [t.sha256 for t in tokens] == [hashlib.sha256(tok.encode()).hexdigest() for _, tok, _ in entries]


@pytest.mark.parametrize("name", ["", "   "])
def test_token_new_refuses_an_empty_name(name: str) -> None:
    result = taskbridge("token", "new", name)
    assert (result.returncode, lines(result.stderr)) == (
        2,
        ["the token's name is empty: give who or what uses it (shown in the config and the logs)"],
    )
    assert result.stdout == ""  # no token minted


@pytest.mark.parametrize("given", [[], ["--choose", "bridge", "--value", "x"]])
def test_conflicts_resolve_needs_exactly_one_of_choose_and_value(given: list[str]) -> None:
    result = taskbridge("conflicts", "resolve", "7", *given, "--token", "t", "--url", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert lines(result.stderr) == ["give exactly one of --choose SIDE or --value JSON"]


@pytest.mark.parametrize(
    ("given", "contents", "message"),
    [
        (["--reviewed", "{dir}/plan.json"], None, "--reviewed goes with --apply"),
        (["--apply", "--reviewed", "{dir}/missing.json"], None, "cannot read the reviewed plan"),
        (["--apply", "--reviewed", "{dir}/plan.json"], "{not json", "cannot read the reviewed plan"),
        (["--apply", "--reviewed", "{dir}/plan.json"], "[1, 2]", "is not a plan's JSON"),
        (
            ["--apply", "--reviewed", "{dir}/plan.json"],
            '{"writes": [{"op": "create"}]}',
            "is not a plan's JSON",
        ),
    ],
)
def test_plan_apply_refuses_a_reviewed_plan_it_cannot_read(
    tmp_path: Path, given: list[str], contents: str | None, message: str
) -> None:
    if contents is not None:
        (tmp_path / "plan.json").write_text(contents)
    argv = [a.format(dir=tmp_path) for a in given]
    result = taskbridge("plan", "--config", str(config(tmp_path)), *argv)
    # Found out before the store or a platform is touched (nobody answers for these platforms).
    assert result.returncode == 2 and lines(result.stderr) == [lines(result.stderr)[0]], result.stderr
    assert message in result.stderr, result.stderr


# -- what `check` refuses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        (
            "{id: 1}",
            "must be a string or a number (the id of a project, board or squad), not a mapping: {'id': 1}",
        ),
        ("[1, 2]", "must be a string or a number (the id of a project, board or squad), not a list: [1, 2]"),
        ("''", "empty: give the id of a project, board or squad on the platform"),
    ],
)
def test_check_refuses_a_scope_that_is_not_an_id(tmp_path: Path, scope: str, message: str) -> None:
    path = config(tmp_path, scope=scope)
    result = taskbridge("check", "--config", str(path))
    assert result.returncode == 2
    assert lines(result.stderr) == [
        "configuration error:",
        f"{path}:16: routes[0].members[1].scope: {message}",
    ]


def test_check_refuses_an_empty_token(tmp_path: Path) -> None:
    path = config(tmp_path, token='""')
    result = taskbridge("check", "--config", str(path))
    assert (result.returncode, lines(result.stderr)) == (
        2,
        ["configuration error:", f"{path}:11: connectors.vt.token: empty: vortask needs a token"],
    )
    path = config(tmp_path, token="${VORTASK_TOKEN}")
    result = taskbridge("check", "--config", str(path), env={"VORTASK_TOKEN": ""})
    assert (result.returncode, lines(result.stderr)) == (
        2,
        [
            "configuration error:",
            f"{path}:11: connectors.vt.token: empty: vortask needs a token (${{VORTASK_TOKEN}} is set but empty)",
        ],
    )


def test_check_refuses_an_empty_file_saying_what_a_config_needs(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    result = taskbridge("check", "--config", str(path))
    assert result.returncode == 2
    [_, message] = lines(result.stderr)
    assert message.startswith(
        f"{path}: (top level): nothing to sync: a config needs `connectors:` (each a name with "
        "platform, base_url and token) and `routes:` (each a name and two or more members, "
        "{connector: NAME, scope: ID}); "
    )
    assert message.endswith("config.example.yaml documents every key")


def test_check_and_run_warn_of_connectors_without_routes(tmp_path: Path) -> None:
    from tests.e2e.conftest import DaemonProcess

    port = free_port()
    path = config(tmp_path)
    path.write_text(path.read_text().split("routes:")[0] + f"server:\n  listen: 127.0.0.1:{port}\n")
    warning = (
        f"{path}: routes: none: nothing is synced until a route names two or more members, "
        "{connector: NAME, scope: ID} (`taskbridge scopes` lists each connector's scopes)"
    )
    result = taskbridge("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert lines(result.stderr) == [f"warning: {warning}"]
    daemon = DaemonProcess(path, port, tmp_path / "daemon.log").start()  # it runs, as before
    try:
        assert any(
            " WARNING " in line and line.endswith(warning) for line in daemon.log.read_text().splitlines()
        ), daemon.log.read_text()
    finally:
        assert daemon.terminate() == 0


def test_check_refuses_an_unknown_taskbridge_variable_with_the_nearest_key(tmp_path: Path) -> None:
    path = config(tmp_path)
    result = taskbridge("check", "--config", str(path), env={"TASKBRIDGE_SERVR__LISTEN": "127.0.0.1:9999"})
    assert result.returncode == 2
    assert lines(result.stderr) == [
        "configuration error:",
        "TASKBRIDGE_SERVR__LISTEN (environment variable): no config key servr.listen; did you mean "
        "TASKBRIDGE_SERVER__LISTEN?",
    ]
    # The project's own variables are not overrides, nor is one the file reads as ${VAR}.
    own = {
        "TASKBRIDGE_TOKEN": "t",
        "TASKBRIDGE_REPLICA_ID": "r1",
        "TASKBRIDGE_LOG_LIBRARIES": "debug",
        "TASKBRIDGE_REQUIRE_PG": "1",
        "TASKBRIDGE_TEST_PG_URL": "postgresql://x",
        "TASKBRIDGE_DB_URL": f"sqlite:///{tmp_path}/env.db",
        "TASKBRIDGE_LOG__LEVEL": "debug",
    }
    reads = config(tmp_path, url="${TASKBRIDGE_DB_URL}")
    result = taskbridge("check", "--config", str(reads), env=own)
    assert result.returncode == 0, result.stderr


def test_a_bad_override_names_the_variable_not_a_line(tmp_path: Path) -> None:
    path = config(tmp_path, extra="server:\n  listen: 127.0.0.1:8080\n")
    result = taskbridge("check", "--config", str(path), env={"TASKBRIDGE_SERVER__LISTEN": "everywhere"})
    assert result.returncode == 2
    assert lines(result.stderr) == [
        "configuration error:",
        "TASKBRIDGE_SERVER__LISTEN (environment variable): server.listen: 'everywhere' is not HOST:PORT",
    ]


# -- status and conflicts read the daemon's address from --config ---------------------------------------


class FakeApi:
    """A stand-in for the daemon's API: answers the two GETs `status` makes, noting the token."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.tokens.append(self.headers.get("Authorization", ""))
                body: object = []
                if self.path.startswith("/api/v1/connectors"):
                    body = [
                        {
                            "name": "vt",
                            "platform": "vortask",
                            "healthy": True,
                            "last_poll": "2026-12-02T10:00:00Z",
                            "lag_seconds": 3.0,
                            "outbox_depth": 0,
                            "outbox_parked": 0,
                        }
                    ]
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi()
    yield api
    api.close()


def test_status_reads_the_address_from_the_config_and_the_token_from_the_environment(
    tmp_path: Path, fake_api: FakeApi
) -> None:
    # The platforms' secrets are not in this shell (they are the daemon's): only server.* is read.
    path = config(tmp_path, token="${VORTASK_TOKEN}", extra=f"server:\n  listen: 0.0.0.0:{fake_api.port}\n")
    result = taskbridge("status", "--config", str(path), env={"TASKBRIDGE_TOKEN": "tb_ops"})
    assert result.returncode == 0, result.stderr
    assert "vortask" in result.stdout and "0 open conflicts" in result.stdout
    assert fake_api.tokens == ["Bearer tb_ops", "Bearer tb_ops"]


def test_status_falls_back_to_the_public_url(tmp_path: Path, fake_api: FakeApi) -> None:
    extra = f"server:\n  listen: 127.0.0.1:{free_port()}\n  public_url: http://127.0.0.1:{fake_api.port}\n"
    result = taskbridge(
        "conflicts", "list", "--config", str(config(tmp_path, extra=extra)), "--token", "tb_x"
    )
    assert result.returncode == 0, result.stderr
    assert fake_api.tokens == ["Bearer tb_x"]


def test_status_names_the_addresses_it_could_not_reach(tmp_path: Path) -> None:
    dead, also_dead = free_port(), free_port()
    extra = f"server:\n  listen: 127.0.0.1:{dead}\n  public_url: http://127.0.0.1:{also_dead}\n"
    result = taskbridge("status", "--config", str(config(tmp_path, extra=extra)), "--token", "tb_x")
    assert result.returncode == 1
    assert lines(result.stderr) == [
        f"cannot reach the daemon at http://127.0.0.1:{dead} or http://127.0.0.1:{also_dead}: ConnectError"
    ]


def test_status_with_a_bad_server_section_names_its_line(tmp_path: Path) -> None:
    path = config(tmp_path, extra="server:\n  listen: nowhere\n")
    result = taskbridge("status", "--config", str(path), "--token", "tb_x")
    assert result.returncode == 2
    assert lines(result.stderr) == [
        "configuration error:",
        f"{path}:18: server.listen: 'nowhere' is not HOST:PORT",
    ]


# -- sync --once ------------------------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
FINISHED = "\x1b[38;2;114;156;31m"  # rich's bar.finished (green)
UNFINISHED = "\x1b[38;2;249;38;114m"  # rich's bar.complete: a bar part-filled (red)


def test_sync_once_says_what_it_did_and_ends_with_every_bar_full(world: World, tmp_path: Path) -> None:
    for p in PLATFORMS:
        ops.create(world, p, f"once {p}")
    path = world.config(tmp_path, port=free_port())
    # A terminal, as an operator has one: rich draws the bars (and their colours).
    terminal = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLORTERM": "truecolor", "COLUMNS": "120"}
    for n in (1, 2):  # the second pass changes nothing: no bar may stay part-filled
        result = taskbridge("sync", "--config", str(path), "--once", env=terminal, timeout=300)
        assert result.returncode == 0, result.stderr
        final = result.stderr[result.stderr.rfind("polled ") :]
        bars = [line for line in final.splitlines() if "━" in line]
        assert [ANSI.sub("", b).split()[0] for b in bars] == [
            "polled",
            "tasks",
            "writes",
        ], final
        assert all(FINISHED in b and UNFINISHED not in b for b in bars), (n, final)
        [summary] = [s for s in ANSI.sub("", final).splitlines() if s.startswith("sync done:")]
        assert re.fullmatch(
            r"sync done: \d+ tasks observed, \d+ changed, \d+ writes applied, 0 errors", summary
        )
        if n == 1:  # five new tasks, each written to the four other platforms
            assert summary == "sync done: 5 tasks observed, 5 changed, 20 writes applied, 0 errors"


# -- --help -------------------------------------------------------------------------------------------------


def test_every_option_has_help_and_the_description_needs_no_readme_file() -> None:
    from bridge.cli import build_parser

    def walk(parser: argparse.ArgumentParser, where: str) -> Iterator[str]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{where} {name}")
            elif not action.help and action.dest not in ("help", "command", "action", "token_command"):
                yield f"{where} {'/'.join(action.option_strings) or action.dest}"

    parser = build_parser()
    assert list(walk(parser, "taskbridge")) == []
    assert "README.md" not in (parser.description or "")
    result = taskbridge("--help")
    assert result.returncode == 0 and "See README.md" not in result.stdout
    assert "config.example.yaml" in result.stdout


def test_a_scope_the_platform_cannot_mean_is_a_config_error_with_its_line(tmp_path: Path) -> None:
    """Vortask's scopes are project ids (integers): `check` says so with the line, as it does for
    any other key, rather than only `check --connect` or the daemon's first poll."""
    result = taskbridge("check", "--config", str(config(tmp_path, scope="acme")))
    assert result.returncode == 2
    assert (
        f"{tmp_path / 'taskbridge.yaml'}:16: routes[0].members[1].scope: a Vortask scope is a project id (an integer), not 'acme'"
        in result.stderr
    )
