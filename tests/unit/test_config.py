"""The config loader: good files load; each kind of bad file gets a message naming file, key and line."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from bridge import config
from tests import clirun

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"
EXAMPLE_ENV = {
    "IMPACTLY_TOKEN": "imp_x",
    "VORTASK_TOKEN": "vt_x",
    "AGENTKANBAN_TOKEN": "ak_x",
    "POSTHOG_TOKEN": "phx_x",
    "NUCLEUS_CLIENT_ID": "id",
    "NUCLEUS_CLIENT_SECRET": "secret",
}

GOOD = """\
store:
  url: sqlite+aiosqlite:///t.db
connectors:
  imp:
    platform: impactly
    base_url: http://127.0.0.1:9/api/v1
    token: ${IMP_TOKEN}
    poll_interval: 30s
  vt:
    platform: vortask
    base_url: http://127.0.0.1:9/api
    token: vt_plain
routes:
  - name: main
    members:
      - {connector: imp, scope: p1}
      - {connector: vt, scope: 1}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as info:
        config.load(path, env={"IMP_TOKEN": "imp_x"} if env is None else env)
    return str(info.value)


def test_good_file_loads_with_env_and_defaults(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD), env={"IMP_TOKEN": "imp_secret"})
    assert cfg.connectors["imp"].token is not None
    assert cfg.connectors["imp"].token.get_secret_value() == "imp_secret"
    assert cfg.connectors["imp"].poll_interval == 30.0
    assert cfg.connectors["vt"].poll_interval == 60.0
    assert cfg.routes[0].members[1].scope == "1"  # an int in YAML is a scope string
    assert cfg.routes[0].conflict == "newest"
    assert "imp_secret" not in repr(cfg)  # secrets don't leak through repr


def test_taskbridge_env_overrides_the_file(tmp_path: Path) -> None:
    cfg = config.load(
        write(tmp_path, GOOD),
        env={
            "IMP_TOKEN": "x",
            "TASKBRIDGE_STORE__URL": "sqlite+aiosqlite:///other.db",
            "TASKBRIDGE_LOG__LEVEL": "debug",
        },
    )
    assert cfg.store.url == "sqlite+aiosqlite:///other.db"
    assert cfg.log.level == "debug"


def test_default_in_interpolation(tmp_path: Path) -> None:
    text = GOOD.replace("sqlite+aiosqlite:///t.db", "${DB_URL:-sqlite+aiosqlite:///fallback.db}")
    assert (
        config.load(write(tmp_path, text), env={"IMP_TOKEN": "x"}).store.url
        == "sqlite+aiosqlite:///fallback.db"
    )


def test_missing_variable_names_key_and_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD, env={})
    assert message == (
        f"{tmp_path}/cfg.yaml:7: connectors.imp.token: environment variable IMP_TOKEN is not set "
        "(referenced as ${IMP_TOKEN})"
    )


def test_unknown_platform(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("platform: vortask", "platform: vortsk"))
    assert message == (
        f"{tmp_path}/cfg.yaml:10: connectors.vt.platform: unknown platform 'vortsk'; "
        "known: impactly, vortask, agentkanban, runs, squads"
    )


def test_member_naming_unknown_connector(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("{connector: vt, scope: 1}", "{connector: nope, scope: 1}"))
    assert message == (
        f"{tmp_path}/cfg.yaml:17: routes[0].members[1].connector: unknown connector 'nope'; known: imp, vt"
    )


def test_duplicate_connector_name(tmp_path: Path) -> None:
    text = GOOD.replace("  vt:\n", "  imp:\n")
    message = error_of(tmp_path, text)
    assert message == f"{tmp_path}/cfg.yaml:9: (top level): duplicate key 'imp'"


def test_duplicate_route_name(tmp_path: Path) -> None:
    text = (
        GOOD
        + "  - name: main\n    members:\n      - {connector: imp, scope: p2}\n      - {connector: vt, scope: 2}\n"
    )
    message = error_of(tmp_path, text)
    assert message == f"{tmp_path}/cfg.yaml:18: routes[1].name: duplicate route name 'main' (also routes[0])"


def test_bad_duration(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("poll_interval: 30s", "poll_interval: 5x"))
    assert (
        message
        == f"{tmp_path}/cfg.yaml:8: connectors.imp.poll_interval: '5x' is not a duration (use 30s, 5m, 1h)"
    )


def test_unknown_key_and_missing_key(tmp_path: Path) -> None:
    text = GOOD.replace("    poll_interval: 30s\n", "    poll_intervall: 30s\n").replace(
        "    base_url: http://127.0.0.1:9/api\n", ""
    )
    message = error_of(tmp_path, text)
    assert f"{tmp_path}/cfg.yaml:8: connectors.imp.poll_intervall: unknown key" in message
    assert f"{tmp_path}/cfg.yaml:9: connectors.vt.base_url: required key is missing" in message


def test_prefer_must_name_a_member(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD + "    conflict: {prefer: ghost}\n")
    assert (
        message == f"{tmp_path}/cfg.yaml:18: routes[0].conflict.prefer: 'ghost' is not a member of this route"
    )


def test_squads_needs_service_token(tmp_path: Path) -> None:
    text = GOOD.replace("platform: vortask", "platform: squads").replace("    token: vt_plain\n", "")
    message = error_of(tmp_path, text)
    assert message == (
        f"{tmp_path}/cfg.yaml:9: connectors.vt: squads needs client_id and client_secret "
        "(a Cloudflare Access service token)"
    )


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("  imp:\n", "  imp: [\n"))
    assert message.startswith(f"{tmp_path}/cfg.yaml:")
    assert "not valid YAML" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="cannot read the file"):
        config.load(tmp_path / "absent.yaml", env={})


@pytest.mark.parametrize(
    ("data", "where", "byte", "offset"),
    [
        (b"\xff\n", ":1", "0xff", 0),
        ("store: {}\n".encode("utf-16"), ":1", "0xff", 0),  # Notepad's "Unicode": a UTF-16 BOM first
        (b"store:\n  url: caf\xe9\n", ":2", "0xe9", 17),  # Latin-1
    ],
    ids=["stray-byte", "utf-16", "latin-1"],
)
def test_a_file_that_is_not_utf8_is_a_config_error(
    tmp_path: Path, data: bytes, where: str, byte: str, offset: int
) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_bytes(data)
    with pytest.raises(config.ConfigError) as info:
        config.load(path, env={})
    assert str(info.value) == (
        f"{path}{where}: (top level): not UTF-8 text (byte {byte} at offset {offset}): save the file as UTF-8"
    )


def laughs(levels: int) -> str:
    """A "billion laughs": each level a list of ten aliases to the one before (10**levels values)."""
    out = ["routes:", "  - name: x", "    members: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        out.append(f"    fields{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]")
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("levels", [5, 9])
def test_aliases_that_expand_without_bound_are_refused(tmp_path: Path, levels: int) -> None:
    # Refused while the aliases are expanded, before memory or time go: 9 levels would be 10**9.
    # 12330 values from fields1..3, then 11111 from each alias in fields4: its 8th is too many.
    assert error_of(tmp_path, laughs(levels), env={}) == (
        f"{tmp_path}/cfg.yaml:7: routes[0].fields4[7]: its aliases (*NAME) expand to more than 100000 "
        "values; write what they repeat out, or alias less deeply"
    )


def test_anchors_aliases_and_merge_keys_still_load(tmp_path: Path) -> None:
    text = GOOD.replace("  vt:\n", "  vt: &vt\n") + (
        "    fields: &fields [title, status]\n"
        "  - name: other\n"
        "    fields: *fields\n"
        "    members:\n"
        "      - {connector: imp, scope: p2}\n"
        "      - {connector: vt2, scope: 2}\n"
    )
    text = text.replace("routes:\n", "  vt2:\n    <<: *vt\n    poll_interval: 5m\nroutes:\n")
    cfg = config.load(write(tmp_path, text), env={"IMP_TOKEN": "x"})
    assert [r.fields for r in cfg.routes] == [["title", "status"]] * 2
    assert cfg.connectors["vt2"].base_url == cfg.connectors["vt"].base_url
    assert (cfg.connectors["vt2"].poll_interval, cfg.connectors["vt"].poll_interval) == (300, 60)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("500ms", 0.5), ("5m", 300.0), ("1h", 3600.0), ("1.5s", 1.5), (2, 2.0)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert config.parse_duration(text) == seconds


def test_example_config_passes_check() -> None:
    cfg = config.load(EXAMPLE, env=EXAMPLE_ENV)
    assert set(cfg.connectors) == {"impactly", "vortask", "agentkanban", "posthog", "nucleus"}
    assert {c.platform for c in cfg.connectors.values()} == set(config.KNOWN_PLATFORMS)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return clirun.run(args, env=clirun.clean_env(env))


def test_cli_check_example_ok() -> None:
    result = run_cli("check", "--config", str(EXAMPLE), env=EXAMPLE_ENV)
    assert result.returncode == 0, result.stderr
    assert "OK (5 connectors, 1 routes" in result.stdout


def test_cli_check_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("poll_interval: 30s", "poll_interval: soon"))
    result = run_cli("check", "--config", str(path), env={"IMP_TOKEN": "x"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{path}:8: connectors.imp.poll_interval: 'soon' is not a duration" in result.stderr


def test_cli_check_bad_mapping_override_names_connector(tmp_path: Path) -> None:
    text = GOOD.replace(
        "    poll_interval: 30s\n",
        "    poll_interval: 30s\n    mapping:\n      status:\n        read: {active: nonsense}\n",
    )
    result = run_cli("check", "--config", str(write(tmp_path, text)), env={"IMP_TOKEN": "x"})
    assert result.returncode == 2
    assert f"{tmp_path}/cfg.yaml:9: connectors.imp.mapping:" in result.stderr
    assert "'nonsense' is not a canonical status" in result.stderr


def test_cli_help_and_version() -> None:
    assert "check" in run_cli("--help").stdout
    assert run_cli("version").stdout.startswith("taskbridge ")


def test_a_scope_belongs_to_one_route(tmp_path: Path) -> None:
    text = (
        GOOD
        + "  - name: other\n    members:\n      - {connector: imp, scope: p1}\n      - {connector: vt, scope: 2}\n"
    )
    message = error_of(tmp_path, text)
    assert (
        message == f"{tmp_path}/cfg.yaml:20: routes[1].members[0]: imp:p1 is already a member of route 'main'"
    )


@pytest.mark.parametrize(
    "url",
    ["not a url", "file:///etc/passwd", "ftp://host/x", "http://", "http://:80", "http://h:99999", "//h/x"],
)
def test_public_url_must_be_an_absolute_http_url(tmp_path: Path, url: str) -> None:
    message = error_of(tmp_path, GOOD + f"server:\n  public_url: {url}\n")
    assert message == (
        f"{tmp_path}/cfg.yaml:19: server.public_url: {url!r} is not an absolute http(s) URL with a host "
        "(e.g. https://host.example.com)"
    )


@pytest.mark.parametrize("url", ["not a url", "file:///etc/passwd", "https://", "http://exa mple.com/api"])
def test_base_url_must_be_an_absolute_http_url(tmp_path: Path, url: str) -> None:
    message = error_of(tmp_path, GOOD.replace("base_url: http://127.0.0.1:9/api\n", f"base_url: {url}\n"))
    assert message == (
        f"{tmp_path}/cfg.yaml:11: connectors.vt.base_url: {url!r} is not an absolute http(s) URL with a host "
        "(e.g. https://host.example.com)"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:SECRETPASS@h:bad/x", "https://u:***@h:bad/x"),
        ("ftp://u:SECRETPASS@h/x?a=1#f", "ftp://u:***@h/x?a=1#f"),
        ("https://u:SECRET PASS@h/x", "https://u:***@h/x"),
        # A raw @ or / in the password: masked as far as any URL reader takes the password.
        ("https://u:SECRET@PASS@h:bad/x", "https://u:***@h:bad/x"),
        ("http://u:SECRET/PASS@h:bad/x", "http://u:***@h:bad/x"),
    ],
)
def test_a_bad_url_is_echoed_without_its_password(tmp_path: Path, url: str, shown: str) -> None:
    text = GOOD.replace("base_url: http://127.0.0.1:9/api\n", f"base_url: '{url}'\n    mcp_url: '{url}'\n")
    text += f"server:\n  public_url: '{url}'\n"
    message = error_of(tmp_path, text)
    assert "SECRET" not in message and "PASS" not in message
    suffix = "is not an absolute http(s) URL with a host (e.g. https://host.example.com)"
    assert message.splitlines() == [
        f"{tmp_path}/cfg.yaml:20: server.public_url: {shown!r} {suffix}",
        f"{tmp_path}/cfg.yaml:11: connectors.vt.base_url: {shown!r} {suffix}",
        f"{tmp_path}/cfg.yaml:12: connectors.vt.mcp_url: {shown!r} {suffix}",
    ]


def test_good_urls_load_and_an_empty_public_url_is_unset(tmp_path: Path) -> None:
    text = GOOD + "server:\n  public_url: https://bridge.example.com/\n"
    cfg = config.load(write(tmp_path, text), env={"IMP_TOKEN": "x"})
    assert cfg.server.public_url == "https://bridge.example.com"
    assert cfg.connectors["vt"].base_url == "http://127.0.0.1:9/api"
    text = GOOD + "server:\n  public_url: ${PUBLIC_URL:-}\n"
    assert config.load(write(tmp_path, text), env={"IMP_TOKEN": "x"}).server.public_url is None


def test_cli_check_names_the_bad_public_url(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "server:\n  public_url: file:///etc/passwd\n")
    result = run_cli("check", "--config", str(path), env={"IMP_TOKEN": "x"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        f"{path}:19: server.public_url: 'file:///etc/passwd' is not an absolute http(s) URL" in result.stderr
    )


# -- store.retention ---------------------------------------------------------------------------

RETENTION = GOOD.replace(
    "  url: sqlite+aiosqlite:///t.db\n",
    "  url: sqlite+aiosqlite:///t.db\n  retention:\n    inbox_done: 12h\n    history: null\n",
)


def test_retention_defaults_and_overrides(tmp_path: Path) -> None:
    from bridge import defaults

    kept = config.load(write(tmp_path, GOOD), env={"IMP_TOKEN": "x"}).store.retention
    assert kept.inbox_done == defaults.DEFAULT_RETAIN_INBOX_DONE == 3 * 86400
    assert kept.inbox_failed == defaults.DEFAULT_RETAIN_INBOX_FAILED == 30 * 86400
    assert kept.outbox_done == defaults.DEFAULT_RETAIN_OUTBOX_DONE == 14 * 86400
    assert kept.outbox_parked is defaults.DEFAULT_RETAIN_OUTBOX_PARKED is None  # kept for a person
    assert kept.history == kept.conflicts_resolved == 90 * 86400
    cfg = config.load(write(tmp_path, RETENTION), env={"IMP_TOKEN": "x"})
    assert cfg.store.retention.inbox_done == 12 * 3600
    assert cfg.store.retention.history is None  # null: forever
    assert cfg.store.retention.outbox_done == 14 * 86400  # the keys not given keep their defaults
    # The environment has no null: the word stands for it.
    env = {
        "IMP_TOKEN": "x",
        "TASKBRIDGE_STORE__RETENTION__HISTORY": "7d",
        "TASKBRIDGE_STORE__RETENTION__OUTBOX_DONE": "null",
    }
    cfg = config.load(write(tmp_path, RETENTION), env=env)
    assert (cfg.store.retention.history, cfg.store.retention.outbox_done) == (7 * 86400, None)
    assert cfg.store.retention.inbox_done == 12 * 3600


def test_the_example_documents_every_retention_key_at_its_default() -> None:
    from bridge.config import RetentionConfig

    example = config.load(EXAMPLE, env=EXAMPLE_ENV).store.retention
    assert example == RetentionConfig()
    text = EXAMPLE.read_text()
    for key in RetentionConfig.model_fields:
        assert f"\n    {key}: " in text, f"config.example.yaml does not document store.retention.{key}"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("history: 3x", "store.retention.history: '3x' is not a duration (use 30s, 5m, 1h)"),
        ("history: -1", "store.retention.history: -1 must be a positive duration"),
        (
            "inbox_failed: 0",
            "store.retention.inbox_failed: 0 is not a retention: use null to keep forever, "
            "or a duration like 3d",
        ),
        (
            "outbox_done: 0s",
            "store.retention.outbox_done: '0s' is not a retention: use null to keep forever, "
            "or a duration like 3d",
        ),
        ("tasks: 30d", "store.retention.tasks: unknown key"),
    ],
)
def test_a_bad_retention_names_its_key_and_line(tmp_path: Path, line: str, message: str) -> None:
    text = RETENTION.replace("    history: null\n", f"    {line}\n")
    assert error_of(tmp_path, text) == f"{tmp_path}/cfg.yaml:5: {message}"


def test_cli_check_names_a_bad_retention(tmp_path: Path) -> None:
    path = write(tmp_path, RETENTION.replace("inbox_done: 12h", "inbox_done: soon"))
    result = run_cli("check", "--config", str(path), env={"IMP_TOKEN": "x"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{path}:4: store.retention.inbox_done: 'soon' is not a duration" in result.stderr


# -- per-connector request bounds: deadline, max_response_bytes (issue 16) ------------------------


def test_request_bounds_default_and_load(tmp_path: Path) -> None:
    from connectors.base import DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_REQUEST_DEADLINE

    cfg = config.load(write(tmp_path, GOOD), env={"IMP_TOKEN": "x"})
    assert cfg.connectors["vt"].deadline == DEFAULT_REQUEST_DEADLINE == 60.0
    assert cfg.connectors["vt"].max_response_bytes == DEFAULT_MAX_RESPONSE_BYTES == 32 * 1024 * 1024
    text = GOOD.replace(
        "    poll_interval: 30s\n",
        "    poll_interval: 30s\n    deadline: 90s\n    max_response_bytes: 1048576\n",
    )
    imp = config.load(write(tmp_path, text), env={"IMP_TOKEN": "x"}).connectors["imp"]
    assert (imp.deadline, imp.max_response_bytes) == (90.0, 1048576)
    env = {"IMP_TOKEN": "x", "TASKBRIDGE_CONNECTORS__VT__MAX_RESPONSE_BYTES": "2097152"}
    cfg = config.load(write(tmp_path, GOOD), env=env)
    assert cfg.connectors["vt"].max_response_bytes == 2097152  # digits from the environment


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("deadline", "0", "0 must be a positive duration"),
        ("deadline", "500ms", "0.5s is out of range: a whole request (connect, headers, body) gets 1s to 1h"),
        ("deadline", "2h", "7200s is out of range: a whole request (connect, headers, body) gets 1s to 1h"),
        ("deadline", "soon", "'soon' is not a duration (use 30s, 5m, 1h)"),
        ("max_response_bytes", "0", "0 is not a number of bytes from 65536 (64 KiB) to 1073741824 (1 GiB)"),
        ("max_response_bytes", "-5", "-5 is not a number of bytes from 65536"),
        ("max_response_bytes", "2147483648", "2147483648 is not a number of bytes from 65536"),
        ("max_response_bytes", "32MiB", "'32MiB' is not a number of bytes from 65536"),
        ("max_response_bytes", "true", "True is not a number of bytes from 65536"),
        ("max_response_bytes", "1.5e7", "15000000.0 is not a number of bytes from 65536"),
    ],
)
def test_request_bounds_refuse_nonsense(tmp_path: Path, key: str, value: str, message: str) -> None:
    text = GOOD.replace("    poll_interval: 30s\n", f"    poll_interval: 30s\n    {key}: {value}\n")
    assert error_of(tmp_path, text).startswith(f"{tmp_path}/cfg.yaml:9: connectors.imp.{key}: {message}")


def test_the_example_documents_the_request_bounds_at_their_defaults() -> None:
    from connectors.base import DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_REQUEST_DEADLINE

    imp = config.load(EXAMPLE, env=EXAMPLE_ENV).connectors["impactly"]
    assert (imp.deadline, imp.max_response_bytes) == (DEFAULT_REQUEST_DEADLINE, DEFAULT_MAX_RESPONSE_BYTES)
    text = EXAMPLE.read_text()
    assert (
        "\n    deadline: 60s\n" in text
        and f"\n    max_response_bytes: {DEFAULT_MAX_RESPONSE_BYTES}\n" in text
    )


# -- the operator's mistakes (issue 17) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "mapped"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        (
            "sqlite:////var/lib/taskbridge/taskbridge.db",
            "sqlite+aiosqlite:////var/lib/taskbridge/taskbridge.db",
        ),
        ("sqlite+pysqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u:p%40ss@db/bridge", "postgresql+asyncpg://u:p%40ss@db/bridge"),
        ("postgres://u:pw@db:5433/bridge", "postgresql+asyncpg://u:pw@db:5433/bridge"),
        ("postgresql+psycopg2://u@db/bridge", "postgresql+asyncpg://u@db/bridge"),
        ("postgresql+asyncpg://u@db/bridge", "postgresql+asyncpg://u@db/bridge"),
        ("postgres://u:pw@db/bridge?sslmode=require", "postgresql+asyncpg://u:pw@db/bridge?ssl=require"),
    ],
)
def test_store_urls_get_the_shipped_async_driver(url: str, mapped: str) -> None:
    assert config.store_url(url) == mapped


def test_every_user_of_the_config_sees_the_mapped_store_url(tmp_path: Path) -> None:
    text = GOOD.replace("sqlite+aiosqlite:///t.db", "postgres://bridge:s3cret@db/bridge")
    cfg = config.load(write(tmp_path, text), env={"IMP_TOKEN": "x"})
    assert cfg.store.url == "postgresql+asyncpg://bridge:s3cret@db/bridge"
    assert "s3cret" in cfg.connector_secrets()  # still redacted from logs
    env = {"IMP_TOKEN": "x", "TASKBRIDGE_STORE__URL": "sqlite:///other.db"}
    assert config.load(write(tmp_path, GOOD), env=env).store.url == "sqlite+aiosqlite:///other.db"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mysql://x", "'mysql://x'"),
        ("garbage", "'garbage'"),
        ("mysql://root:s3cret@db/x", "'mysql://root:***@db/x'"),
        ("http://u:s3cret@h/x", "'http://u:***@h/x'"),
    ],
)
def test_unsupported_store_urls_are_refused_without_their_password(
    tmp_path: Path, url: str, shown: str
) -> None:
    message = error_of(tmp_path, GOOD.replace("sqlite+aiosqlite:///t.db", url))
    assert message == (
        f"{tmp_path}/cfg.yaml:2: store.url: {shown} is not a supported store URL; use "
        "sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE "
        "(sqlite://, postgresql:// and postgres:// are read as these)"
    )
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        ("{id: 1}", "not a mapping: {'id': 1}"),
        ("[1, 2]", "not a list: [1, 2]"),
        ("true", "not true or false: True"),
    ],
)
def test_a_scope_is_a_string_or_a_number(tmp_path: Path, scope: str, message: str) -> None:
    text = GOOD.replace("{connector: vt, scope: 1}", f"{{connector: vt, scope: {scope}}}")
    assert error_of(tmp_path, text) == (
        f"{tmp_path}/cfg.yaml:17: routes[0].members[1].scope: must be a string or a number "
        f"(the id of a project, board or squad), {message}"
    )
    for empty in ("''", "null"):
        text = GOOD.replace("{connector: vt, scope: 1}", f"{{connector: vt, scope: {empty}}}")
        assert error_of(tmp_path, text).endswith(
            "scope: empty: give the id of a project, board or squad on the platform"
        )
    cfg = config.load(write(tmp_path, GOOD.replace("scope: 1}", "scope: 2.5}")), env={"IMP_TOKEN": "x"})
    assert cfg.routes[0].members[1].scope == "2.5"


def test_an_empty_credential_is_refused_where_the_platform_needs_it(tmp_path: Path) -> None:
    assert error_of(tmp_path, GOOD.replace("token: vt_plain", 'token: " "')) == (
        f"{tmp_path}/cfg.yaml:12: connectors.vt.token: empty: vortask needs a token"
    )
    # Through ${VAR}: the message names the variable that was empty.
    assert error_of(tmp_path, GOOD, env={"IMP_TOKEN": ""}) == (
        f"{tmp_path}/cfg.yaml:7: connectors.imp.token: empty: impactly needs a token "
        "(${IMP_TOKEN} is set but empty)"
    )
    squads = GOOD.replace("platform: vortask", "platform: squads").replace(
        "    token: vt_plain\n", "    client_id: ${CF_ID}\n    client_secret: ${CF_SECRET}\n    token: ''\n"
    )
    assert error_of(tmp_path, squads, env={"IMP_TOKEN": "x", "CF_ID": "id", "CF_SECRET": ""}) == (
        f"{tmp_path}/cfg.yaml:13: connectors.vt.client_secret: empty: squads needs client_id and "
        "client_secret (${CF_SECRET} is set but empty)"
    )  # and its unused token may be empty
    # An empty webhook secret (`${VT_HOOKS:-}`) still means none is configured, as before.
    text = GOOD.replace("token: vt_plain", "token: vt_plain\n    webhook_secret: ${VT_HOOKS:-}")
    cfg = config.load(write(tmp_path, text), env={"IMP_TOKEN": "x"})
    assert cfg.connectors["vt"].webhook_secret is not None
    assert cfg.connectors["vt"].webhook_secret.get_secret_value() == ""


def test_unknown_taskbridge_variables_are_refused_with_the_nearest_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)

    def message(name: str) -> str:
        with pytest.raises(config.ConfigError) as info:
            config.load(path, env={"IMP_TOKEN": "x", name: "1"})
        return str(info.value)

    assert message("TASKBRIDGE_SERVR__LISTEN") == (
        "TASKBRIDGE_SERVR__LISTEN (environment variable): no config key servr.listen; "
        "did you mean TASKBRIDGE_SERVER__LISTEN?"
    )
    assert message("TASKBRIDGE_STORE_URL").endswith("did you mean TASKBRIDGE_STORE__URL?")
    assert message("TASKBRIDGE_LOG__LEVL").endswith("did you mean TASKBRIDGE_LOG__LEVEL?")
    assert message("TASKBRIDGE_CONNECTORS__VT__TOKN").endswith(
        "did you mean TASKBRIDGE_CONNECTORS__VT__TOKEN?"
    )
    # A key of a connector the file does not have is no key either (it would make a connector).
    assert message("TASKBRIDGE_CONNECTORS__VTT__TOKEN").endswith(
        "did you mean TASKBRIDGE_CONNECTORS__VT__TOKEN?"
    )
    assert message("TASKBRIDGE_NONSENSE") == (
        "TASKBRIDGE_NONSENSE (environment variable): no config key nonsense (an override is "
        "TASKBRIDGE_ and a key's path joined by __, e.g. TASKBRIDGE_SERVER__LISTEN)"
    )


def test_the_projects_own_variables_are_not_overrides(tmp_path: Path) -> None:
    own = {name: "x" for name in config.NOT_OVERRIDES} | {
        "TASKBRIDGE_TEST_PG_URL": "postgresql://x",
        "TASKBRIDGE_TEST_PG_STOP": "1",
        "TASKBRIDGE_BENCH_PROFILE": "1",
        "TASKBRIDGE_DB_URL": "sqlite:///from-env.db",
        "IMP_TOKEN": "x",
    }
    assert {
        "TASKBRIDGE_TOKEN",
        "TASKBRIDGE_REPLICA_ID",
        "TASKBRIDGE_DB_URL",
        "TASKBRIDGE_LOG_LIBRARIES",
    } <= set(config.NOT_OVERRIDES)
    text = GOOD.replace("sqlite+aiosqlite:///t.db", "${TASKBRIDGE_DB_URL}")
    assert config.load(write(tmp_path, text), env=own).store.url == "sqlite+aiosqlite:///from-env.db"
    # Every TASKBRIDGE_ name the code reads is a key, or listed as not an override.
    root = Path(__file__).resolve().parents[2]
    import re

    read = set()
    for source in [
        *(root / "bridge").rglob("*.py"),
        *(root / "connectors").rglob("*.py"),
        root / "config.example.yaml",
    ]:
        read |= set(re.findall(r"\bTASKBRIDGE_[A-Z0-9_]*[A-Z0-9]\b", source.read_text()))
    for name in read:
        if name.startswith(config.NOT_OVERRIDE_PREFIXES) or name in config.NOT_OVERRIDES:
            continue
        parts = tuple(name.removeprefix("TASKBRIDGE_").lower().split("__"))
        assert config._is_key(config.Config, parts, {}), f"{name}: neither a key nor in NOT_OVERRIDES"


def test_a_bad_override_names_the_variable_not_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "server:\n  listen: 127.0.0.1:8080\n")

    def message(**env: str) -> str:
        with pytest.raises(config.ConfigError) as info:
            config.load(path, env={"IMP_TOKEN": "x", **env})
        return str(info.value)

    assert message(TASKBRIDGE_SERVER__LISTEN="everywhere") == (
        "TASKBRIDGE_SERVER__LISTEN (environment variable): server.listen: 'everywhere' is not HOST:PORT"
    )
    assert message(TASKBRIDGE_CONNECTORS__IMP__POLL_INTERVAL="soon") == (
        "TASKBRIDGE_CONNECTORS__IMP__POLL_INTERVAL (environment variable): connectors.imp.poll_interval: "
        "'soon' is not a duration (use 30s, 5m, 1h)"
    )
    assert message(TASKBRIDGE_CONNECTORS__VT__TOKEN="") == (
        "TASKBRIDGE_CONNECTORS__VT__TOKEN (environment variable): connectors.vt.token: empty: vortask needs a token"
    )
    assert message(TASKBRIDGE_SERVER="{not json") == (
        "TASKBRIDGE_SERVER (environment variable): server: not valid JSON (a section or a list set "
        "from the environment is written as JSON)"
    )
    assert message(TASKBRIDGE_SERVER='{"listen": "nowhere"}') == (
        "TASKBRIDGE_SERVER (environment variable): server.listen: 'nowhere' is not HOST:PORT"
    )
    # The file's own mistakes keep their lines beside them.
    both = message(TASKBRIDGE_LOG__LEVEL="loud", IMP_TOKEN="")
    assert f"{tmp_path}/cfg.yaml:7: connectors.imp.token: empty" in both
    assert "TASKBRIDGE_LOG__LEVEL (environment variable): log.level: " in both


def test_preflight_nothing_to_sync_and_the_store_directory(tmp_path: Path) -> None:
    empty = config.load(write(tmp_path, "# nothing yet\n"), env={})
    [problem] = empty.preflight()
    assert problem.render("cfg.yaml").startswith(
        "cfg.yaml: (top level): nothing to sync: a config needs `connectors:`"
    )
    assert empty.preflight(syncing=False) == []  # `store export|import` needs only a store
    no_routes = GOOD.split("routes:")[0]  # connectors alone: a daemon may run so (nothing routed yet)
    assert config.load(write(tmp_path, no_routes), env={"IMP_TOKEN": "x"}).preflight(store=False) == []

    missing = GOOD.replace("sqlite+aiosqlite:///t.db", f"sqlite:///{tmp_path}/no/such/dir/t.db")
    [problem] = config.load(write(tmp_path, missing), env={"IMP_TOKEN": "x"}).preflight()
    assert problem.render("cfg.yaml") == (
        f"cfg.yaml:2: store.url: the directory {tmp_path}/no/such/dir does not exist: create it, "
        "or put the store elsewhere"
    )
    (tmp_path / "file").write_text("")
    under_a_file = GOOD.replace("sqlite+aiosqlite:///t.db", f"sqlite:///{tmp_path}/file/t.db")
    [problem] = config.load(write(tmp_path, under_a_file), env={"IMP_TOKEN": "x"}).preflight()
    assert problem.message == f"{tmp_path}/file is not a directory"
    a_directory = GOOD.replace("sqlite+aiosqlite:///t.db", f"sqlite:///{tmp_path}")
    [problem] = config.load(write(tmp_path, a_directory), env={"IMP_TOKEN": "x"}).preflight()
    assert problem.message == f"{tmp_path} is a directory, not a SQLite file"
    fine = GOOD.replace("sqlite+aiosqlite:///t.db", f"sqlite:///{tmp_path}/t.db")
    assert config.load(write(tmp_path, fine), env={"IMP_TOKEN": "x"}).preflight() == []
    postgres = GOOD.replace("sqlite+aiosqlite:///t.db", "postgresql://u@nowhere/db")
    assert config.load(write(tmp_path, postgres), env={"IMP_TOKEN": "x"}).preflight() == []


def test_connectors_without_routes_are_a_warning(tmp_path: Path) -> None:
    # Allowed (`scopes` and `people` help write the routes; a daemon may run before any), but
    # nothing is synced: `check` and `run` say so.
    no_routes = GOOD.split("routes:")[0]
    [warning] = config.load(write(tmp_path, no_routes), env={"IMP_TOKEN": "x"}).warnings()
    expected = (
        "none: nothing is synced until a route names two or more members, {connector: NAME, "
        "scope: ID} (`taskbridge scopes` lists each connector's scopes)"
    )
    assert warning.render("cfg.yaml") == f"cfg.yaml: routes: {expected}"
    [warning] = config.load(write(tmp_path, no_routes + "routes: []\n"), env={"IMP_TOKEN": "x"}).warnings()
    assert warning.render("cfg.yaml") == f"cfg.yaml:13: routes: {expected}"
    assert config.load(write(tmp_path, GOOD), env={"IMP_TOKEN": "x"}).warnings() == []
    assert config.load(write(tmp_path, "# nothing yet\n"), env={}).warnings() == []  # preflight's


def test_load_server_reads_only_the_server_section(tmp_path: Path) -> None:
    text = GOOD + "server:\n  listen: 0.0.0.0:9090\n  public_url: https://bridge.example.com/\n"
    path = write(tmp_path, text)
    server = config.load_server(path, env={})  # IMP_TOKEN unset: the connectors are not read
    assert (server.host, server.port, server.public_url) == ("0.0.0.0", 9090, "https://bridge.example.com")
    env = {"TASKBRIDGE_SERVER__LISTEN": "127.0.0.1:7070", "TASKBRIDGE_STORE__URL": "mysql://ignored"}
    assert config.load_server(path, env=env).listen == "127.0.0.1:7070"
    with pytest.raises(config.ConfigError) as info:
        config.load_server(write(tmp_path, GOOD + "server:\n  listen: nowhere\n"), env={})
    assert str(info.value) == f"{tmp_path}/cfg.yaml:19: server.listen: 'nowhere' is not HOST:PORT"
    assert config.load_server(write(tmp_path, "# empty\n"), env={}).listen == "127.0.0.1:8080"

    from bridge.client_cli import daemon_urls

    assert daemon_urls(server) == ["http://127.0.0.1:9090", "https://bridge.example.com"]
    assert daemon_urls(config.ServerConfig(listen="[::]:8080")) == ["http://[::1]:8080"]
    assert daemon_urls(config.ServerConfig(listen="10.0.0.5:80")) == ["http://10.0.0.5:80"]


def test_listen_problem_names_an_address_in_use() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.listen()
        assert config.listen_problem("127.0.0.1", port) == (
            f"cannot listen on 127.0.0.1:{port}: the address is already in use (by another program)"
        )
    assert config.listen_problem("127.0.0.1", port) is None
    assert config.listen_problem("no-such-host.invalid", 8080).startswith(
        "cannot listen on no-such-host.invalid:8080: not an address of this machine"
    )
