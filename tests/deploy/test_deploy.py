"""The deployment artifacts in deploy/, checked with the real tools and against a real daemon.

- the systemd unit with `systemd-analyze verify` (and its offline security score);
- the compose file against the compose spec, and what it mounts, builds and interpolates;
- the Prometheus rules and config with promtool, and the alerts' unit tests;
- the Docker build context (.dockerignore) and a non-editable install built from it;
- every metric name the dashboard and the alerts use, against a live daemon's /metrics;
- the daemon under a real notify socket, as systemd runs it (READY=1, WATCHDOG=1, STOPPING=1,
  MemoryDenyWriteExecute and UMask emulated);
- a real Prometheus server scraping the daemon, evaluating the alerts and answering every
  dashboard query.

The daemon runs the compose demo's own config (deploy/demo/taskbridge.yaml) against the five
fakes started with the compose file's own commands, so the demo profile is tested too.

A missing tool fails the test (CI installs them: .ci/run), it never skips.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from connectors.fakekit import free_port
from tests.e2e.conftest import wait_until

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "taskbridge.service"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "taskbridge.json"
DEMO_CONFIG = DEPLOY / "demo" / "taskbridge.yaml"
DEMO_ENV = DEPLOY / "demo" / "demo.env"
UNIT_EXEC = "/opt/taskbridge/bin/taskbridge"
PLATFORMS = ("impactly", "vortask", "agentkanban", "runs", "squads")
# Series Prometheus makes itself; everything else an expression names must be the daemon's.
PROMETHEUS_OWN = {"up"}


# -- helpers ------------------------------------------------------------------------------------


def tool(name: str, package: str) -> str:
    """The path of a command-line tool (the venv's bin first); a failure, never a skip, without it."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed (it comes from {package}; .ci/run installs it)")
    return found


def run(*argv: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as compose's --env-file and systemd's EnvironmentFile= read them."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: not KEY=VALUE: {line!r}"
            env[key.strip()] = value.strip()
    return env


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        current = env.get(name)
        if op in (":-", ":?"):
            current = current or None
        if current is not None:
            return current
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise AssertionError(f"compose would refuse to start: {name} is unset ({arg})")
        return ""

    return _VAR.sub(sub, value)


def interpolated(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolated(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolated(v, env) for k, v in node.items()}
    return node


def compose(env: dict[str, str]) -> dict[str, Any]:
    return interpolated(yaml.safe_load(COMPOSE.read_text()), env)


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def exprs_of_dashboard() -> list[str]:
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    out.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(DASHBOARD.read_text()))
    return out


def exprs_of_alerts() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


METRIC = re.compile(r"\b(taskbridge_[a-zA-Z0-9_]+|up)\b(?!\s*\()")
SELECTOR = re.compile(r"\b(taskbridge_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")


def metric_names(exprs: list[str]) -> set[str]:
    return {m.group(1) for e in exprs for m in METRIC.finditer(e)}


def served_names(text: str) -> dict[str, str]:
    """Every sample name /metrics can carry (suffixes by type, whether or not a sample exists yet),
    mapped to its family."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
        "stateset": ("",),
        "unknown": ("",),
    }
    names = {}
    for family in text_string_to_metric_families(text):
        for suffix in suffixes[family.type]:
            names[family.name + suffix] = family.name
        for sample in family.samples:
            names[sample.name] = family.name
    return names


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKBRIDGE_", "NOTIFY_", "WATCHDOG_"))}
    env.update(extra)
    return env


# -- processes: the demo's fakes and the daemon ------------------------------------------------------


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 45) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def spawn(name: str, argv: list[str], log: Path, env: dict[str, str], **kw: Any) -> Proc:
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, **kw)
    return Proc(name, proc, log)


def port_open(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Demo:
    """The compose demo without Docker: the five fakes as compose runs them, on loopback ports."""

    env: dict[str, str]
    fakes: dict[str, int] = field(default_factory=dict)  # compose service -> local port
    procs: list[Proc] = field(default_factory=list)
    daemon_port: int = field(default_factory=free_port)  # the `daemon` fixture's, scraped from the start
    prometheus_url: str = ""

    def config(self, path: Path, port: int, *, routes: bool = True) -> Path:
        """deploy/demo/taskbridge.yaml with compose's service names replaced by loopback ports."""
        cfg = yaml.safe_load(DEMO_CONFIG.read_text())
        for conn in cfg["connectors"].values():
            url = urlsplit(conn["base_url"])
            conn["base_url"] = url._replace(netloc=f"127.0.0.1:{self.fakes[url.hostname]}").geturl()
        cfg["server"]["listen"] = f"127.0.0.1:{port}"
        cfg["server"]["public_url"] = f"http://127.0.0.1:{port}"
        if not routes:
            cfg["routes"] = []
            cfg["server"]["public_url"] = None
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def daemon(
        self, config: Path, db: Path, log: Path, extra: dict[str, str] | None = None, **kw: Any
    ) -> Proc:
        env = child_env({**self.env, "TASKBRIDGE_DB_URL": f"sqlite+aiosqlite:///{db}", **(extra or {})})
        argv = [sys.executable, "-m", "bridge", "run", "--config", str(config)]
        proc = spawn("taskbridge", argv, log, env, **kw)
        self.procs.append(proc)
        return proc


def start_prometheus(tmp: Path, target_port: int) -> tuple[Proc, str]:
    """The Debian prometheus server on a free loopback port, scraping taskbridge every second and
    evaluating deploy/prometheus/alerts.yml every second."""
    binary = tool("prometheus", "the Debian package prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "taskbridge", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [
        binary,
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    return spawn(
        "prometheus", argv, tmp / "prometheus.log", child_env({}), cwd=tmp
    ), f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """The fakes, and (started alongside, since it waits for nothing) Prometheus."""
    tmp = tmp_path_factory.mktemp("demo")
    env = read_env_file(DEMO_ENV)
    services = compose(env)["services"]
    d = Demo(env)
    try:
        proc, d.prometheus_url = start_prometheus(tmp, d.daemon_port)
        d.procs.append(proc)
        for name, svc in services.items():
            if "demo" not in svc.get("profiles", []):
                continue
            argv = list(svc["command"])
            port = free_port()
            argv[argv.index("--port") + 1] = str(port)
            argv[argv.index("--host") + 1] = "127.0.0.1"
            d.fakes[name] = port
            d.procs.append(
                spawn(name, [sys.executable, "-m", "bridge", *argv], tmp / f"{name}.log", child_env({}))
            )
        for proc in d.procs:
            if proc.name not in d.fakes:
                continue
            port = d.fakes[proc.name]

            def up(proc: Proc = proc, port: int = port) -> bool:
                assert proc.proc.poll() is None, f"fake {proc.name} exited:\n{proc.tail()}"
                return port_open(port)

            wait_until(up, timeout=30, what=f"fake {proc.name} on port {port}")
        yield d
    finally:
        for proc in reversed(d.procs):
            proc.stop(timeout=15)


@dataclass
class Daemon:
    proc: Proc
    port: int
    db: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text


@pytest.fixture(scope="module")
def daemon(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """`taskbridge run` with the demo config, once every connector has polled successfully."""
    tmp = tmp_path_factory.mktemp("daemon")
    port = demo.daemon_port
    d = Daemon(
        demo.daemon(demo.config(tmp / "taskbridge.yaml", port), tmp / "taskbridge.db", tmp / "daemon.log"),
        port,
        tmp / "taskbridge.db",
    )

    def polled_all() -> bool:
        assert d.proc.proc.poll() is None, f"daemon exited:\n{d.proc.tail()}"
        ok = {
            s.labels["connector"]
            for f in text_string_to_metric_families(d.metrics())
            if f.name == "taskbridge_polls"
            for s in f.samples
            if s.name == "taskbridge_polls_total" and s.labels["result"] == "ok" and s.value >= 1
        }
        return ok >= set(yaml.safe_load(DEMO_CONFIG.read_text())["connectors"])

    try:
        wait_until(polled_all, timeout=40, what="a successful poll of every demo connector")
        yield d
    finally:
        d.proc.stop()


# -- 1. systemd -------------------------------------------------------------------------------------


def unit_directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def verify_unit(tmp: Path, text: str) -> tuple[int, str]:
    """`systemd-analyze verify` of the unit, its ExecStart pointed at this venv's console script
    (verify insists the binary exists). Returns the exit code and the lines about our unit."""
    analyze = tool("systemd-analyze", "the Debian package systemd")
    console = Path(sys.executable).parent / "taskbridge"
    assert console.exists(), f"{console} missing: install the package (pip install -e .)"
    unit = tmp / "taskbridge.service"
    unit.write_text(text.replace(UNIT_EXEC, str(console)))
    result = run(analyze, "verify", "--man=no", str(unit))
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "taskbridge" in line]
    return result.returncode, "\n".join(ours)


def test_systemd_unit_verifies_without_warnings(tmp_path: Path) -> None:
    text = UNIT.read_text()
    code, output = verify_unit(tmp_path, text)
    assert code == 0 and not output, f"systemd-analyze verify:\n{output}"
    # The check is real: this systemd reports a misspelt directive in exactly that output.
    code, output = verify_unit(tmp_path, text.replace("WatchdogSec=", "WatchdogSecs="))
    assert "WatchdogSecs" in output, "systemd-analyze verify no longer reports unknown keys"


def test_systemd_unit_settings_and_exposure(tmp_path: Path) -> None:
    d = unit_directives(UNIT.read_text())
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "TimeoutStopSec": "45",
        "DynamicUser": "yes",
        "StateDirectory": "taskbridge",
        "ConfigurationDirectory": "taskbridge",
        "EnvironmentFile": "-/etc/taskbridge/taskbridge.env",
        "ExecStart": f"{UNIT_EXEC} run --config /etc/taskbridge/taskbridge.yaml",
        "UMask": "0077",
        "CapabilityBoundingSet": "",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert d.get(key, [None])[-1] == value, f"{key}= is {d.get(key)}, want {value!r}"
    assert "@system-service" in d["SystemCallFilter"]
    # The SQLite store lands in the state directory.
    assert "TASKBRIDGE_DB_URL=sqlite+aiosqlite:////var/lib/taskbridge/taskbridge.db" in d["Environment"]
    assert d["WorkingDirectory"] == ["/var/lib/taskbridge"]
    # systemd's own score of the sandbox: exposure at most 2.0 of 10 ("OK").
    analyze = tool("systemd-analyze", "the Debian package systemd")
    unit = tmp_path / "taskbridge.service"
    unit.write_text(UNIT.read_text().replace(UNIT_EXEC, str(Path(sys.executable).parent / "taskbridge")))
    result = run(analyze, "security", "--offline=true", "--threshold=20", "--no-pager", str(unit))
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]


# -- 2. compose ---------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec(tmp_path: Path) -> None:
    checker = tool("check-jsonschema", "PyPI (the test extra)")
    result = run(checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr
    # The schema is strict enough to catch a misspelt key.
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_periods:"))
    result = run(checker, "--builtin-schema", "vendor.compose-spec", str(broken))
    assert result.returncode != 0, "check-jsonschema accepted an unknown service key"


@pytest.mark.parametrize("mode", ["production", "demo"])
def test_compose_references_resolve(mode: str) -> None:
    """Everything the file mounts, builds or reads exists; the secrets come from variables."""
    if mode == "demo":
        env = read_env_file(DEMO_ENV)
    else:
        env = {k: "x" for k in read_env_file(DEPLOY / "env.example")}
    raw = yaml.safe_load(COMPOSE.read_text())
    doc = interpolated(raw, env)
    services = doc["services"]
    active = {n for n, s in services.items() if not s.get("profiles") or mode in s["profiles"]}
    assert {"taskbridge", "postgres", "prometheus", "grafana"} <= active
    assert (mode == "demo") == ({"impactly", "vortask", "agentkanban", "runs", "squads"} <= active)

    for name in active:
        svc = services[name]
        if "build" in svc:
            context = (DEPLOY / svc["build"]["context"]).resolve()
            assert (context / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            if mode == "production" and target == "/etc/taskbridge":
                continue  # the operator's own config dir (README: "Running in production")
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"
        for env_file in svc.get("env_file", []):
            if mode == "demo":
                assert (DEPLOY / env_file).exists(), f"{name} reads {env_file}, which does not exist"
    tb = services["taskbridge"]
    assert tb["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"]
    assert int(tb["stop_grace_period"].rstrip("s")) >= 45
    if mode == "demo":
        config_dir = next(v.split(":")[0] for v in tb["volumes"] if v.endswith(":/etc/taskbridge:ro"))
        assert (DEPLOY / config_dir / "taskbridge.yaml").resolve() == DEMO_CONFIG

    # No secret is written inline: every secret-looking value is a ${VAR}.
    for name, svc in raw["services"].items():
        environment = svc.get("environment", {})
        for key, value in environment.items():
            if re.search("PASSWORD|TOKEN|SECRET|_URL", key):
                assert "${" in str(value), f"{name}: {key} is written inline"
        command = svc.get("command", [])
        if "--token" in command:
            assert "${" in option(command, "--token"), f"{name}: its token is written inline"

    # Prometheus scrapes the service by its compose name and port.
    prom = yaml.safe_load(PROM_CONFIG.read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert "taskbridge:8080" in targets


def test_demo_config_matches_the_fakes_compose_runs() -> None:
    """deploy/demo/taskbridge.yaml points at the fake services by name and port, and its scopes and
    people ids are the ones those seeded fakes have; `taskbridge check` accepts it."""
    import connectors

    env = read_env_file(DEMO_ENV)
    services = compose(env)["services"]
    cfg = yaml.safe_load(DEMO_CONFIG.read_text())
    scopes = {m["connector"]: str(m["scope"]) for r in cfg["routes"] for m in r["members"]}
    seen = set()
    for name, conn in cfg["connectors"].items():
        url = urlsplit(conn["base_url"])
        svc = services[url.hostname]
        argv = svc["command"]
        assert argv[:2] == ["fake", conn["platform"]], f"{name} points at {url.hostname}: {argv}"
        assert int(option(argv, "--port")) == url.port
        assert option(argv, "--host") == "0.0.0.0"
        seed = int(option(argv, "--seed"))
        fake = connectors.fake_class(conn["platform"])(token=option(argv, "--token"), seed=seed)
        assert scopes[name] == fake.scope(), f"{name}: scope {scopes[name]} vs the fake's {fake.scope()}"
        assert url.path == fake.api_root
        for person, ids in ((k, p["ids"]) for k, p in cfg["people"].items()):
            if person in fake.people():
                assert ids.get(name) == fake.people()[person], f"{person}'s id on {name}"
        seen.add(url.hostname)
    assert seen == {n for n, s in services.items() if "demo" in s.get("profiles", [])}
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "check", "--config", str(DEMO_CONFIG)],
        env=child_env({**env, "TASKBRIDGE_DB_URL": "postgresql+asyncpg://taskbridge:x@postgres/taskbridge"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- 3. Prometheus rules and config ------------------------------------------------------------------


def test_promtool_accepts_rules_config_and_rule_tests() -> None:
    promtool = tool("promtool", "the Debian package prometheus")
    for argv in (
        ("check", "rules", str(ALERTS)),
        ("check", "config", str(PROM_CONFIG)),  # loads alerts.yml from beside it
        ("test", "rules", str(ALERTS.parent / "alerts_test.yml")),
    ):
        result = run(promtool, *argv, cwd=ALERTS.parent)
        assert result.returncode == 0, f"promtool {' '.join(argv)}:\n{result.stdout}{result.stderr}"
    # Every alert has a unit test that makes it fire.
    tested = set(re.findall(r"alertname: (\w+)", (ALERTS.parent / "alerts_test.yml").read_text()))
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert alerts <= tested, f"alerts without a test: {sorted(alerts - tested)}"


# -- the Docker image, short of building it (no engine here) ----------------------------------------


_DI_CACHE: dict[str, re.Pattern[str]] = {}


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    if pattern not in _DI_CACHE:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        _DI_CACHE[pattern] = re.compile(out + "$")
    return _DI_CACHE[pattern]


def build_context(root: Path) -> list[str]:
    """The files `docker build` sends from root, per root/.dockerignore (last match wins; a
    pattern matching a directory matches everything in it)."""
    rules = []
    for line in (root / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, _dockerignore_regex(line.lstrip("!").strip("/"))))
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or rel.startswith((".git/", ".venv/")):
            continue
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for negate, regex in rules:
            if any(regex.match(p) for p in prefixes):
                excluded = not negate
        if not excluded:
            files.append(rel)
    return files


def test_docker_build_context_and_install(tmp_path: Path) -> None:
    """The files .dockerignore lets through are exactly what the Dockerfile copies, no secret or
    store slips in, and a non-editable install built from them (as the image's `pip install .`)
    carries the migrations, the mappings and the example config: the store migrates, the demo's
    config source is there, and the demo config checks."""
    files = build_context(REPO)
    for leaked in (".venv/", ".git/", "tests/", ".hypothesis/", "deploy/"):
        assert not any(f.startswith(leaked) for f in files), f"{leaked} is in the build context"
    assert not any(f.endswith((".db", ".env", ".pyc")) for f in files), "stores, env files or bytecode leak"
    dockerfile = DOCKERFILE.read_text()
    copied = [
        src for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M) for src in line.split()[:-1]
    ]
    for src in copied:
        assert any(f == src or f.startswith(src.rstrip("/") + "/") for f in files), (
            f"COPY {src}: not in context"
        )
    # The image runs as a non-root user behind tini, checks /healthz, keeps config and state in volumes.
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)
    assert re.search(r'^ENTRYPOINT \["/usr/bin/tini", "--", "taskbridge"\]$', dockerfile, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*127\.0\.0\.1:8080/healthz", dockerfile, re.M)
    assert '"/etc/taskbridge", "/var/lib/taskbridge"' in dockerfile
    assert "install -y --no-install-recommends tini" in dockerfile

    context = tmp_path / "context"
    for rel in files:
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, context / rel)
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # As in the image: pip builds in isolation, with the build backend pyproject.toml asks for.
    build = run(*pip, "wheel", "--no-deps", "-w", str(wheels), str(context), timeout=120)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = wheels.glob("taskbridge-*.whl")
    install = run(*pip, "install", "--no-deps", "--target", str(site), str(wheel), timeout=120)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    probe = (
        "import asyncio, sys, bridge, connectors\n"
        f"assert bridge.__file__.startswith({str(site)!r}), bridge.__file__\n"
        "from bridge.store import Store\n"
        "async def main():\n"
        f"    s = Store.open('sqlite+aiosqlite:///{tmp_path}/probe.db')\n"
        "    await s.migrate()\n"
        "    assert await s.schema_is_current()\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
        "from bridge.demo import EXAMPLE\n"
        f"assert EXAMPLE.is_file() and str(EXAMPLE).startswith({str(site)!r}), EXAMPLE\n"
        "from bridge.cli import main as cli\n"
        f"sys.exit(cli(['check', '--config', {str(DEMO_CONFIG)!r}]))\n"
    )
    env = child_env(
        {
            **read_env_file(DEMO_ENV),
            "PYTHONPATH": str(site),
            "TASKBRIDGE_DB_URL": "sqlite+aiosqlite:////var/lib/taskbridge/taskbridge.db",
        }
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


# -- 4. metric names ---------------------------------------------------------------------------------


def test_dashboard_and_alerts_use_only_metrics_the_daemon_serves(daemon: Daemon) -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from bridge import metrics

    served = served_names(daemon.metrics())
    dashboard, alerts = exprs_of_dashboard(), exprs_of_alerts()
    for what, exprs in (("dashboard", dashboard), ("alerts.yml", alerts)):
        used = metric_names(exprs)
        unknown = {n for n in used if n not in served and n not in PROMETHEUS_OWN}
        assert not unknown, f"{what} uses metrics the daemon does not serve: {sorted(unknown)}"

    # Label names in selectors exist on their metric (plus what Prometheus adds).
    labels: dict[str, set[str]] = {}
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            family = obj._name  # type: ignore[attr-defined]
            for sample_name, fam in served.items():
                if fam in (family, family.removesuffix("_total")):
                    labels[sample_name] = set(obj._labelnames) | {"job", "instance"}  # type: ignore[attr-defined]
                    if sample_name.endswith("_bucket"):
                        labels[sample_name].add("le")
    for expr in dashboard + alerts:
        for m in SELECTOR.finditer(expr):
            named = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2)))
            assert named <= labels[m.group(1)], f"{m.group(0)}: no label {sorted(named - labels[m.group(1)])}"

    # The dashboard covers what an operator needs.
    used = metric_names(dashboard)
    for needed in (
        "taskbridge_propagation_seconds_bucket",
        "taskbridge_changes_detected_total",
        "taskbridge_writes_total",
        "taskbridge_remote_requests_total",
        "taskbridge_outbox_depth",
        "taskbridge_outbox_oldest_age_seconds",
        "taskbridge_outbox_parked",
        "taskbridge_conflicts_open",
        "taskbridge_watermark_age_seconds",
        "taskbridge_webhooks_received_total",
        "taskbridge_connector_up",
    ):
        assert needed in used, f"the dashboard does not chart {needed}"
    text = DASHBOARD.read_text()
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(taskbridge_propagation_seconds_bucket" in text


# -- 5. systemd's notify protocol, for real ------------------------------------------------------------

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def systemd_like_sandbox() -> None:
    """Run in the child before exec: what UMask=0077 and MemoryDenyWriteExecute=yes do
    (the kernel's PR_SET_MDWE, which systemd itself uses where the kernel has it)."""
    os.umask(0o077)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE) failed")


@dataclass
class Notification:
    at: float
    pid: int
    fields: dict[str, str]


def receive(sock: socket.socket, timeout: float) -> Notification | None:
    sock.settimeout(timeout)
    try:
        data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
    except TimeoutError:
        return None
    pid = -1
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("3i", payload[: struct.calcsize("3i")])[0]
    fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
    return Notification(time.monotonic(), pid, fields)


def test_daemon_speaks_systemds_notify_protocol(demo: Demo, tmp_path: Path) -> None:
    # The sandbox is real: W+X memory is refused under it.
    control = subprocess.run(
        [sys.executable, "-c", "import mmap; mmap.mmap(-1, 4096, prot=7)"],
        preexec_fn=systemd_like_sandbox,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert control.returncode != 0 and "PermissionError" in control.stderr, control.stderr

    sockdir = Path(tempfile.mkdtemp(prefix="tb-notify-"))  # short: AF_UNIX paths are <= 107 bytes
    path = sockdir / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        port = free_port()
        config = demo.config(tmp_path / "taskbridge.yaml", port, routes=False)
        db = tmp_path / "taskbridge.db"
        proc = demo.daemon(
            config,
            db,
            tmp_path / "daemon.log",
            extra={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"},
            preexec_fn=systemd_like_sandbox,
        )
        url = f"http://127.0.0.1:{port}"
        got: list[Notification] = []
        try:
            deadline = time.monotonic() + 40
            while not any("READY" in n.fields for n in got):
                assert time.monotonic() < deadline, f"no READY=1 in 40 s; got {got}\n{proc.tail()}"
                assert proc.proc.poll() is None, f"daemon exited:\n{proc.tail()}"
                n = receive(sock, 1.0)
                if n:
                    got.append(n)
            ready = got[-1]
            assert ready.fields["READY"] == "1"
            # READY=1 comes after the store is migrated, the API listens and the scheduler runs.
            r = httpx.get(url + "/readyz", timeout=5)
            assert r.status_code == 200, r.text
            assert httpx.get(url + "/healthz", timeout=5).status_code == 200
            assert stat.S_IMODE(db.stat().st_mode) & 0o077 == 0, "the store is readable by others"

            # WATCHDOG_USEC=2 s: a ping every second; two within 4 s of READY=1.
            window = ready.at + 4.0
            while len([n for n in got if n.fields.get("WATCHDOG") == "1"]) < 2 and time.monotonic() < window:
                n = receive(sock, max(0.05, window - time.monotonic()))
                if n:
                    got.append(n)
            pings = [n for n in got if n.fields.get("WATCHDOG") == "1" and n.at <= window]
            assert len(pings) >= 2, f"{len(pings)} WATCHDOG=1 in 4 s: {[n.fields for n in got]}"

            proc.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while not any("STOPPING" in n.fields for n in got):
                assert time.monotonic() < deadline, f"no STOPPING=1 after SIGTERM: {[n.fields for n in got]}"
                n = receive(sock, 1.0)
                if n:
                    got.append(n)
            assert proc.proc.wait(timeout=45) == 0, proc.tail()
        finally:
            proc.stop(signal.SIGKILL, timeout=10)
        # NotifyAccess=main: every message comes from the main process itself.
        assert {n.pid for n in got} == {proc.proc.pid}, [(n.pid, n.fields) for n in got]
        assert [n.fields for n in got].count({"READY": "1", "STATUS": "syncing"}) == 1
        assert got[-1].fields == {"STOPPING": "1"}
    finally:
        sock.close()
        shutil.rmtree(sockdir, ignore_errors=True)


# -- 6. a real Prometheus scraping the daemon ------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(demo: Demo, daemon: Daemon) -> str:
    proc = next(p for p in demo.procs if p.name == "prometheus")

    def answering() -> bool:
        assert proc.proc.poll() is None, f"prometheus exited:\n{proc.tail()}"
        return httpx.get(demo.prometheus_url + "/-/ready", timeout=2).status_code == 200

    wait_until(answering, timeout=30, what="prometheus to start")
    return demo.prometheus_url


def query(url: str, promql: str) -> list[Any]:
    r = httpx.get(url + "/api/v1/query", params={"query": promql}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{promql}: {body}"
    return body["data"]["result"]


def test_prometheus_scrapes_the_daemon_and_evaluates_everything(prometheus: str) -> None:
    connectors = set(yaml.safe_load(DEMO_CONFIG.read_text())["connectors"])

    def every_connector_scraped() -> list[Any] | None:
        # Polls finish one connector at a time: wait for a scrape that has all of them.
        result = query(prometheus, "taskbridge_polls_total")
        return result if {s["metric"]["connector"] for s in result} == connectors else None

    result = wait_until(
        every_connector_scraped, timeout=30, what="taskbridge_polls_total for every connector"
    )
    assert {s["metric"]["job"] for s in result} == {"taskbridge"}

    # Every alert rule loaded and evaluated without an error against the live series.
    def rules_ok() -> list[dict[str, Any]] | None:
        groups = httpx.get(prometheus + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] == "ok" for r in rules) else None

    rules = wait_until(rules_ok, timeout=15, what="every rule to evaluate healthy")
    assert {r["name"] for r in rules} == {
        r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]
    }

    # Every dashboard query is valid PromQL to this Prometheus, with Grafana's variables filled in.
    grafana_vars = {"$__rate_interval": "15s", "$connector": ".*", "$route": ".*"}
    for expr in exprs_of_dashboard():
        m = re.fullmatch(r"label_values\((\w+), *(\w+)\)", expr.strip())
        if m:  # a variable's query: its values come from the live series
            r = httpx.get(
                f"{prometheus}/api/v1/label/{m.group(2)}/values", params={"match[]": m.group(1)}, timeout=10
            ).json()
            assert r["status"] == "success" and r["data"], f"{expr}: no values"
            continue
        for name, value in grafana_vars.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, f"an unknown Grafana variable in {expr}"
        query(prometheus, expr)


def test_scaled_profile_balances_over_every_replica() -> None:
    """The `scaled` profile: the proxy's upstreams are exactly the taskbridge replicas, which share
    the one PostgreSQL, and Prometheus finds each replica."""
    raw = yaml.safe_load(COMPOSE.read_text())
    services = raw["services"]
    replicas = {name for name in services if name.startswith("taskbridge")}
    assert replicas == {"taskbridge", "taskbridge-2", "taskbridge-3"}
    for name in replicas - {"taskbridge"}:
        assert services[name]["profiles"] == ["scaled"]
        assert "ports" not in services[name]  # reached through the proxy only
        assert (
            services[name]["environment"]["TASKBRIDGE_DB_URL"]
            == services["taskbridge"]["environment"]["TASKBRIDGE_DB_URL"]
        )
    nginx = (DEPLOY / "proxy" / "nginx.conf").read_text()
    upstreams = set(re.findall(r"^\s*server (taskbridge[\w-]*):8080", nginx, re.M))
    assert upstreams == replicas
    prom = yaml.safe_load(PROM_CONFIG.read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "taskbridge")
    found = {t.split(":")[0] for sc in job["static_configs"] for t in sc["targets"]}
    found |= {n for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    assert found == replicas
