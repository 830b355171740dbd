"""The operator's configuration: one YAML file, `${VAR}` from the environment, `TASKBRIDGE_*` overrides.

`load(path)` returns a validated `Config` or raises `ConfigError`, whose message is one screen
naming the file, the key path and the line of each problem, e.g.

    config.yaml:14: connectors.tracker.poll_interval: '5x' is not a duration (use 30s, 5m, 1h)

Precedence, highest first: `TASKBRIDGE_*` environment variables (nested keys joined by `__`,
e.g. `TASKBRIDGE_STORE__URL`), then the file. `${VAR}` and `${VAR:-default}` are replaced in
every string of the file before validation, so secrets never need to sit in the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bridge.defaults import (
    DEFAULT_CLAIM_TTL,
    DEFAULT_COMMENTS_PER_POLL,
    DEFAULT_CONCURRENCY,
    DEFAULT_LEASE_TTL,
    DEFAULT_RETAIN_CONFLICTS_RESOLVED,
    DEFAULT_RETAIN_HISTORY,
    DEFAULT_RETAIN_INBOX_DONE,
    DEFAULT_RETAIN_INBOX_FAILED,
    DEFAULT_RETAIN_OUTBOX_DONE,
    DEFAULT_RETAIN_OUTBOX_PARKED,
)
from bridge.model import SYNC_FIELDS
from connectors.base import DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_REQUEST_DEADLINE

KNOWN_PLATFORMS: tuple[str, ...] = ("impactly", "vortask", "agentkanban", "runs", "squads")
Direction = Literal["both", "pull", "push"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def parse_duration(value: Any) -> float:
    """Seconds from `30`, `30s`, `500ms`, `5m`, `1h`, `1d`."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (use 30s, 5m, 1h)")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{str(value)!r} is not a duration (use 30s, 5m, 1h)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{value!r} must be a positive duration")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _parse_rate(value: Any) -> float | None:
    """Requests per second from `10`, `10/s`, `600/m`, `36000/h`; None or 0 means unlimited."""
    if value is None or value == 0:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*", str(value))
    if not match:
        raise ValueError(f"{str(value)!r} is not a rate (use 10/s, 600/m)")
    return float(match.group(1)) / {"s": 1, "m": 60, "h": 3600}[match.group(2)]


Rate = Annotated[float | None, BeforeValidator(_parse_rate)]


def http_url(value: str) -> str:
    """An absolute http(s) URL with a host (`https://tasks.example.com/api`), without a trailing slash."""
    problem = f"{value!r} is not an absolute http(s) URL with a host (e.g. https://host.example.com)"
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(problem)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a port that is not one)
    except ValueError:
        raise ValueError(problem) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(problem)
    return value.rstrip("/")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _parse_retention(value: Any) -> float | None:
    """Seconds a finished row is kept, from a duration (`3d`, `12h`); null keeps it forever.
    0 is refused rather than read either way (forever, or at once): null says forever."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~")):
        return None  # the strings: an environment variable (TASKBRIDGE_STORE__RETENTION__*) has no null
    match = None if isinstance(value, bool) else _DURATION.match(str(value))
    if match and float(match.group(1)) == 0:
        raise ValueError(f"{value!r} is not a retention: use null to keep forever, or a duration like 3d")
    return parse_duration(value)


Retention = Annotated[float | None, BeforeValidator(_parse_retention)]


class RetentionConfig(_Model):
    """How long the store keeps finished rows (bridge/engine/retention.py deletes the rest)."""

    inbox_done: Retention = DEFAULT_RETAIN_INBOX_DONE
    inbox_failed: Retention = DEFAULT_RETAIN_INBOX_FAILED
    outbox_done: Retention = DEFAULT_RETAIN_OUTBOX_DONE
    outbox_parked: Retention = DEFAULT_RETAIN_OUTBOX_PARKED
    history: Retention = DEFAULT_RETAIN_HISTORY
    conflicts_resolved: Retention = DEFAULT_RETAIN_CONFLICTS_RESOLVED


class StoreConfig(_Model):
    url: str = "sqlite+aiosqlite:///taskbridge.db"
    pool_size: int = Field(5, ge=1, le=200)
    echo_sql: bool = False
    retention: RetentionConfig = RetentionConfig()


class ApiToken(_Model):
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[Literal["read", "write", "admin"]] = ["read"]


class ServerConfig(_Model):
    listen: str = "127.0.0.1:8080"
    public_url: str | None = None
    tokens: list[ApiToken] = []
    max_body_bytes: int = Field(1_048_576, ge=1024)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        # Empty means unset, so `${PUBLIC_URL:-}` in the file can leave webhooks off.
        return http_url(value) if value else None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"{value!r} is not HOST:PORT")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class WorkersConfig(_Model):
    concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1, le=256)
    claim_ttl: Duration = DEFAULT_CLAIM_TTL
    lease_ttl: Duration = DEFAULT_LEASE_TTL
    comments_per_poll: int = Field(DEFAULT_COMMENTS_PER_POLL, ge=0, le=100_000)


class PersonConfig(_Model):
    name: str
    email: str | None = None
    ids: dict[str, str] = {}


class FieldMapOverride(_Model):
    read: dict[Any, str] | None = None
    write: dict[str, Any] | None = None
    lossy: list[str] | None = None


class MappingOverride(_Model):
    status: FieldMapOverride | None = None
    priority: FieldMapOverride | None = None
    options: dict[str, Any] | None = None


class ConnectorConfig(_Model):
    platform: str
    base_url: str
    token: SecretStr | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    mcp_url: str | None = None
    poll_interval: Duration = 60.0
    timeout: Duration = 15.0
    deadline: Duration = DEFAULT_REQUEST_DEADLINE
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    rate_limit: Rate = None
    max_retries: int = Field(4, ge=0, le=20)
    mapping: MappingOverride | None = None
    webhooks: bool = True

    # Bounds of one request: below them nothing real gets through, above them they bound nothing.
    DEADLINE_RANGE: ClassVar[tuple[float, float]] = (1.0, 3600.0)
    RESPONSE_BYTES_RANGE: ClassVar[tuple[int, int]] = (64 * 1024, 1024**3)

    @field_validator("platform")
    @classmethod
    def _known_platform(cls, value: str) -> str:
        if value not in KNOWN_PLATFORMS:
            raise ValueError(f"unknown platform {value!r}; known: {', '.join(KNOWN_PLATFORMS)}")
        return value

    @field_validator("base_url", "mcp_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return http_url(value) if value is not None else None

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, value: float) -> float:
        low, high = cls.DEADLINE_RANGE
        if not low <= value <= high:
            raise ValueError(
                f"{value:g}s is out of range: a whole request (connect, headers, body) gets "
                f"{low:g}s to {high / 3600:g}h"
            )
        return value

    @field_validator("max_response_bytes", mode="before")
    @classmethod
    def _max_response_bytes(cls, value: Any) -> int:
        low, high = cls.RESPONSE_BYTES_RANGE
        # A whole number of bytes: an int, or digits (an environment variable is text).
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(
                f"{value!r} is not a number of bytes from {low} ({low >> 10} KiB) to {high} "
                f"({high >> 30} GiB); the default is {DEFAULT_MAX_RESPONSE_BYTES}"
            )
        return value

    @model_validator(mode="after")
    def _credentials(self) -> ConnectorConfig:
        if self.platform == "squads":
            if not (self.client_id and self.client_secret):
                raise ValueError(
                    "squads needs client_id and client_secret (a Cloudflare Access service token)"
                )
        elif self.token is None:
            raise ValueError(f"{self.platform} needs a token")
        return self


class MemberConfig(_Model):
    connector: str
    scope: str
    direction: Direction = "both"
    fields: dict[str, Direction] = {}

    @field_validator("scope", mode="before")
    @classmethod
    def _scope_text(cls, value: Any) -> str:
        return str(value)

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, value: dict[str, Direction]) -> dict[str, Direction]:
        for name in value:
            if name not in SYNC_FIELDS:
                raise ValueError(f"unknown field {name!r}; known: {', '.join(SYNC_FIELDS)}")
        return value


class PreferPolicy(_Model):
    prefer: str


class RouteFilter(_Model):
    status: list[str] | None = None
    tags_any: list[str] | None = None
    title_matches: str | None = None


DEFAULT_FIELDS = ["title", "description", "status", "priority", "assignees", "tags", "due_date"]


class RouteConfig(_Model):
    name: str
    members: list[MemberConfig] = Field(min_length=2)
    fields: list[str] = DEFAULT_FIELDS
    conflict: Literal["newest", "manual"] | PreferPolicy = "newest"
    on_delete: Literal["archive", "delete", "unlink"] = "archive"
    initial: Literal["mirror", "new-only", "match", "match-only"] = "mirror"
    filter: RouteFilter | None = None
    comments: bool = True
    max_delete_share: float = Field(0.2, ge=0, le=1)
    marker: str = "synced by taskbridge · {id}"

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in SYNC_FIELDS:
                raise ValueError(f"unknown field {name!r}; known: {', '.join(SYNC_FIELDS)}")
        return value

    @field_validator("marker")
    @classmethod
    def _marker_has_id(cls, value: str) -> str:
        if "{id}" not in value:
            raise ValueError("the marker must contain {id}, the bridge's task id")
        return value


class Config(BaseSettings):
    """The whole file. Keys are documented in config.example.yaml."""

    model_config = SettingsConfigDict(
        env_prefix="TASKBRIDGE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    store: StoreConfig = StoreConfig()
    server: ServerConfig = ServerConfig()
    log: LogConfig = LogConfig()
    workers: WorkersConfig = WorkersConfig()
    people: dict[str, PersonConfig] = {}
    connectors: dict[str, ConnectorConfig] = {}
    routes: list[RouteConfig] = []

    _lines: dict[tuple[str | int, ...], int] = PrivateAttr(default_factory=dict)
    _filename: str = PrivateAttr(default="")

    def problem(self, path: tuple[str | int, ...], message: str) -> Problem:
        """A problem found after loading (e.g. in a mapping), located at its key's line."""
        return Problem(path, _line_for(path, self._lines), message)

    def error(self, problems: list[Problem]) -> ConfigError:
        return ConfigError(self._filename, problems)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file: that is what an operator's TASKBRIDGE_* is for.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        # Each error carries its location so the message can point at the line.
        problems: list[tuple[tuple[str | int, ...], str]] = []
        seen: dict[str, int] = {}
        member_routes: dict[tuple[str, str], str] = {}
        for i, route in enumerate(self.routes):
            if route.name in seen:
                problems.append(
                    (
                        ("routes", i, "name"),
                        f"duplicate route name {route.name!r} (also routes[{seen[route.name]}])",
                    )
                )
            seen[route.name] = i
            members_seen: set[tuple[str, str]] = set()
            for j, member in enumerate(route.members):
                if member.connector not in self.connectors:
                    known = ", ".join(self.connectors) or "none defined"
                    problems.append(
                        (
                            ("routes", i, "members", j, "connector"),
                            f"unknown connector {member.connector!r}; known: {known}",
                        )
                    )
                key = (member.connector, member.scope)
                if key in members_seen:
                    problems.append(
                        (("routes", i, "members", j), f"{member.connector}:{member.scope} is listed twice")
                    )
                elif key in member_routes:
                    # A remote task is linked to one canonical task, so a scope belongs to one route.
                    problems.append(
                        (
                            ("routes", i, "members", j),
                            f"{member.connector}:{member.scope} is already a member of route {member_routes[key]!r}",
                        )
                    )
                members_seen.add(key)
                member_routes.setdefault(key, route.name)
            if isinstance(route.conflict, PreferPolicy) and route.conflict.prefer not in {
                m.connector for m in route.members
            }:
                problems.append(
                    (
                        ("routes", i, "conflict", "prefer"),
                        f"{route.conflict.prefer!r} is not a member of this route",
                    )
                )
        for key, person in self.people.items():
            for connector in person.ids:
                if connector not in self.connectors:
                    problems.append((("people", key, "ids", connector), f"unknown connector {connector!r}"))
        if problems:
            raise CrossReferenceError(problems)
        return self

    def connector_secrets(self) -> list[str]:
        """Every secret in the config (the connectors' credentials and the store URL's password),
        for redaction from logs and from the error texts the API shows."""
        out: list[str] = []
        for c in self.connectors.values():
            for s in (c.token, c.client_secret, c.webhook_secret):
                if s is not None and s.get_secret_value():
                    out.append(s.get_secret_value())
        try:
            password = make_url(self.store.url).password
        except ArgumentError:
            password = None
        if password:
            out.append(str(password))
        return out


class CrossReferenceError(ValueError):
    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]) -> None:
        super().__init__("; ".join(msg for _, msg in problems))
        self.problems = problems


@dataclass(frozen=True)
class Problem:
    path: tuple[str | int, ...]
    line: int | None
    message: str

    def render(self, filename: str) -> str:
        where = f"{filename}:{self.line}" if self.line else filename
        key = format_path(self.path) or "(top level)"
        return f"{where}: {key}: {self.message}"


class ConfigError(Exception):
    """A configuration that can't be used; `str()` is the one-screen message for the operator."""

    def __init__(self, filename: str, problems: list[Problem]) -> None:
        self.filename = filename
        self.problems = problems
        lines = [p.render(filename) for p in problems[:20]]
        if len(problems) > 20:
            lines.append(f"... and {len(problems) - 20} more")
        super().__init__("\n".join(lines))


def format_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# -- YAML with line numbers -----------------------------------------------------------------


def _to_plain(node: Any, path: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> Any:
    """ruamel's tree as plain dicts/lists, recording the 1-based line of every key and item."""
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            try:
                lines[(*path, key)] = node.lc.key(key)[0] + 1
            except (KeyError, TypeError):
                pass
            out[key] = _to_plain(value, (*path, key), lines)
        return out
    if isinstance(node, CommentedSeq):
        result = []
        for i, value in enumerate(node):
            try:
                lines[(*path, i)] = node.lc.item(i)[0] + 1
            except (KeyError, TypeError, IndexError):
                pass
            result.append(_to_plain(value, (*path, i), lines))
        return result
    if node is not None and not isinstance(node, bool | int | float | str):
        return str(node)  # dates and other scalars stay as text; the schema decides
    return node


def _interpolate(
    node: Any,
    path: tuple[str | int, ...],
    env: Mapping[str, str],
    problems: list[tuple[tuple[str | int, ...], str]],
) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, (*path, k), env, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, (*path, i), env, problems) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append((path, f"environment variable {name} is not set (referenced as ${{{name}}})"))
            return ""

        return _VAR.sub(replace, node)
    return node


def _line_for(path: tuple[str | int, ...], lines: Mapping[tuple[str | int, ...], int]) -> int | None:
    for n in range(len(path), 0, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def _clean_loc(loc: tuple[Any, ...]) -> tuple[str | int, ...]:
    """Pydantic's location without its union/tag segments (e.g. 'literal[...]', 'PreferPolicy')."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, str) and (
            part.startswith(("literal[", "function-", "nullable[")) or part[:1].isupper()
        ):
            continue
        out.append(part)
    return tuple(out)


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate a config file; raise ConfigError naming file, key and line."""
    filename = str(path)
    env = os.environ if env is None else env
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(filename, [Problem((), None, f"cannot read the file: {exc.strerror}")]) from None
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        tree = yaml.load(text)
    except DuplicateKeyError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        key = re.search(r'found duplicate key "([^"]+)"', str(exc))
        message = f"duplicate key {key.group(1)!r}" if key else "duplicate key"
        raise ConfigError(filename, [Problem((), line, message)]) from None
    except MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise ConfigError(filename, [Problem((), line, f"not valid YAML: {exc.problem}")]) from None
    if tree is None:
        tree = CommentedMap()
    if not isinstance(tree, CommentedMap):
        raise ConfigError(filename, [Problem((), 1, "the file must be a mapping of top-level keys")])
    lines: dict[tuple[str | int, ...], int] = {}
    data = _to_plain(tree, (), lines)
    var_problems: list[tuple[tuple[str | int, ...], str]] = []
    data = _interpolate(data, (), env, var_problems)
    if var_problems:
        raise ConfigError(filename, [Problem(p, _line_for(p, lines), m) for p, m in var_problems])
    try:
        cfg = _validate(data, env)
        cfg._lines = lines
        cfg._filename = filename
        return cfg
    except CrossReferenceError as exc:
        raise ConfigError(filename, [Problem(p, _line_for(p, lines), m) for p, m in exc.problems]) from None
    except ValidationError as exc:
        raise ConfigError(filename, list(_problems(exc, lines))) from None


def _validate(data: dict[str, Any], env: Mapping[str, str]) -> Config:
    if env is os.environ:
        return Config(**data)
    # An explicit environment (tests) must not read the process's TASKBRIDGE_* variables.
    saved = {k: v for k, v in os.environ.items() if k.startswith("TASKBRIDGE_")}
    try:
        for k in saved:
            del os.environ[k]
        os.environ.update({k: v for k, v in env.items() if k.startswith("TASKBRIDGE_")})
        return Config(**data)
    finally:
        for k in [k for k in os.environ if k.startswith("TASKBRIDGE_")]:
            del os.environ[k]
        os.environ.update(saved)


def _problems(exc: ValidationError, lines: Mapping[tuple[str | int, ...], int]) -> Iterator[Problem]:
    seen: set[tuple[tuple[str | int, ...], str]] = set()
    for err in exc.errors(include_url=False):
        loc = _clean_loc(tuple(err["loc"]))
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, CrossReferenceError):
            for p, m in ctx_error.problems:
                yield Problem(p, _line_for(p, lines), m)
            continue
        message = str(ctx_error) if ctx_error is not None else err["msg"]
        message = message.removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
        key = (loc, message)
        if key in seen:
            continue
        seen.add(key)
        yield Problem(loc, _line_for(loc, lines), message)
