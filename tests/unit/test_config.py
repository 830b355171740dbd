"""The config loader: good files load; each kind of bad file gets a message naming file, key and line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bridge import config

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
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBRIDGE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args], capture_output=True, text=True, env=full_env
    )


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
