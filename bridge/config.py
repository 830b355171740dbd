"""The operator's configuration: one YAML file, `${VAR}` from the environment, `TASKBRIDGE_*` overrides.

`load(path)` returns a validated `Config` or raises `ConfigError`, whose message is one screen
naming the file, the key path and the line of each problem, e.g.

    config.yaml:14: connectors.tracker.poll_interval: '5x' is not a duration (use 30s, 5m, 1h)

Precedence, highest first: `TASKBRIDGE_*` environment variables (nested keys joined by `__`,
e.g. `TASKBRIDGE_STORE__URL`), then the file. `${VAR}` and `${VAR:-default}` are replaced in
every string of the file before validation, so secrets never need to sit in the file. A
`TASKBRIDGE_*` variable that names no key is refused (with the nearest key's variable), except
the project's own switches in `NOT_OVERRIDES`; a bad value from one names the variable:

    TASKBRIDGE_SERVER__LISTEN (environment variable): server.listen: 'x' is not HOST:PORT

`Config.preflight()` adds what keeps a valid config from running here (nothing to sync, a SQLite
store in a directory that does not exist); the CLI's `check`, `run` and `sync` apply it.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import os
import re
import socket
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bridge.defaults import (
    DEFAULT_BULK_CREATES,
    DEFAULT_CLAIM_TTL,
    DEFAULT_COMMENTS_PER_POLL,
    DEFAULT_CONCURRENCY,
    DEFAULT_LEASE_TTL,
    DEFAULT_POOL_SIZE,
    DEFAULT_RETAIN_CONFLICTS_RESOLVED,
    DEFAULT_RETAIN_HISTORY,
    DEFAULT_RETAIN_INBOX_DONE,
    DEFAULT_RETAIN_INBOX_FAILED,
    DEFAULT_RETAIN_OUTBOX_DONE,
    DEFAULT_RETAIN_OUTBOX_PARKED,
)
from bridge.model import SYNC_FIELDS
from connectors.base import DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_REQUEST_DEADLINE

ENV_PREFIX = "TASKBRIDGE_"  # of the variables that override keys (TASKBRIDGE_SERVER__LISTEN)
EXAMPLE_CONFIG = Path(__file__).resolve().parent / "config.example.yaml"  # installed with the package
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


def _redact(url: str) -> str:
    """A URL (a store's, a platform's) with its password masked, for messages; also when it does
    not parse, which is when it is echoed. The rest is left as written. Readers disagree on where
    a password with a raw @ or / ends (SQLAlchemy: at the first @; urllib and httpx: at the
    host's last @), so the mask covers the longer reading: no part of it is shown."""
    scheme, sep, rest = url.partition("://")
    user, colon, _ = rest.partition(":")
    if not sep or not colon or any(c in user for c in "/?#@"):
        return url  # no password
    start = len(user) + 1
    netloc_end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    end = max(rest.find("@", start), rest.rfind("@", start, netloc_end))
    if end < 0:
        return url
    return f"{scheme}://{user}:***{rest[end:]}"


def http_url(value: str) -> str:
    """An absolute http(s) URL with a host (`https://tasks.example.com/api`), without a trailing slash."""
    problem = f"{_redact(value)!r} is not an absolute http(s) URL with a host (e.g. https://host.example.com)"
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


# The store's URL schemes: each is read as the async driver the project ships (SQLAlchemy's
# asyncio engine takes no other), so `sqlite:///x.db` and `postgres://...` work as written.
STORE_SCHEMES: dict[str, str] = {
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "postgresql+pg8000": "postgresql+asyncpg",
}
SUPPORTED_STORES = (
    "sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE "
    "(sqlite://, postgresql:// and postgres:// are read as these)"
)


def store_url(value: str) -> str:
    """The store URL with the project's async driver (`sqlite:///x.db` -> `sqlite+aiosqlite:///x.db`,
    `postgres://...` -> `postgresql+asyncpg://...`); other schemes are refused."""
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    target = STORE_SCHEMES.get(scheme.lower()) if sep else None
    if not text:
        raise ValueError(f"empty: use {SUPPORTED_STORES}")
    if target is None:
        raise ValueError(f"{_redact(text)!r} is not a supported store URL; use {SUPPORTED_STORES}")
    url = f"{target}://{rest}"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ValueError(f"{_redact(text)!r} is not a valid URL; use {SUPPORTED_STORES}") from None
    if target == "postgresql+asyncpg" and "sslmode" in parsed.query:
        # libpq's name for it (in URLs written for psycopg); asyncpg takes the same values as `ssl`.
        query = dict(parsed.query)
        query["ssl"] = query.pop("sslmode")
        url = parsed.set(query=query).render_as_string(hide_password=False)
    return url


def _sqlite_directory_problem(url: str) -> str | None:
    """Why a SQLite store cannot be created where the URL puts it (its directory does not exist,
    or the path is a directory), or None. A directory this user may not look into (another
    user's state directory) is not judged: opening it will say."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        return None
    path = Path(database)
    directory = os.path.abspath(path.parent)
    relative = (
        ""
        if path.is_absolute()
        else (
            f" (the path in sqlite+aiosqlite:///{database} is relative to the working directory; "
            "four slashes, sqlite+aiosqlite:////PATH, make it absolute)"
        )
    )
    try:
        mode = os.stat(directory).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return f"the directory {directory} does not exist: create it, or put the store elsewhere{relative}"
    except OSError:
        return None
    if not stat.S_ISDIR(mode):
        return f"{directory} is not a directory{relative}"
    if path.is_dir():
        return f"{os.path.abspath(path)} is a directory, not a SQLite file"
    return None


class StoreConfig(_Model):
    url: str = "sqlite+aiosqlite:///taskbridge.db"
    pool_size: int = Field(DEFAULT_POOL_SIZE, ge=1, le=200)
    echo_sql: bool = False
    retention: RetentionConfig = RetentionConfig()

    @field_validator("url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        return store_url(value)


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


def listen_problem(host: str, port: int) -> str | None:
    """Why nothing could listen on host:port on this machine now (the address is in use, or not
    this machine's), or None. Bound and released at once, as uvicorn binds it (SO_REUSEADDR), so
    `run` and `demo` say so before they migrate, poll or print anything."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on {address}: not an address of this machine ({exc.strerror})"
    for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:  # as asyncio's server binds it: IPv6 only
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"cannot listen on {address}: the address is already in use (by another program)"
            return f"cannot listen on {address}: {exc.strerror or exc}"
    return None


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class WorkersConfig(_Model):
    concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1, le=256)
    claim_ttl: Duration = DEFAULT_CLAIM_TTL
    lease_ttl: Duration = DEFAULT_LEASE_TTL
    comments_per_poll: int = Field(DEFAULT_COMMENTS_PER_POLL, ge=0, le=100_000)
    bulk_creates: int = Field(DEFAULT_BULK_CREATES, ge=1, le=1000)


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

    @field_validator("token", "client_id", "client_secret")
    @classmethod
    def _credential_not_empty(cls, value: SecretStr | str | None, info: ValidationInfo) -> Any:
        # Empty is most often a `${VAR}` set to nothing: refused where the platform needs it, rather
        # than sent as an empty credential and answered 401 at the first poll.
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        platform = info.data.get("platform")
        needed = (info.field_name == "token") == (platform != "squads")
        if text is not None and not text.strip() and platform and needed:
            what = "a token" if info.field_name == "token" else "client_id and client_secret"
            raise ValueError(f"empty: {platform} needs {what}")
        return value

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
        # One container's id (a project, board or squad): `{id: 1}` or `[1, 2]` is a mistake that
        # str() would turn into a scope nobody has.
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValueError("empty: give the id of a project, board or squad on the platform")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            kind = (
                "a mapping"
                if isinstance(value, dict)
                else "a list"
                if isinstance(value, list)
                else "true or false"
                if isinstance(value, bool)
                else f"a {type(value).__name__}"
            )
            raise ValueError(
                f"must be a string or a number (the id of a project, board or squad), not {kind}: {value!r}"
            )
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

MATCH_KEY_KINDS = "tag: PREFIX, url: true or title_regex: REGEX"


class MatchKeyConfig(_Model):
    """A route's `match_key`: what says two existing tasks are one piece of work, for `initial:
    match` and `taskbridge link`, after the marker and before the title (bridge/engine/matching.py).
    Exactly one kind: `tag` (the prefix of a tag holding the key, e.g. "ext:" for `ext:ABC-12`),
    `url: true` (a task whose description holds another member's task's web address), or
    `title_regex` (the key in the title: the regex's one group, or its whole match). `only`: a
    task that carries a key matching nothing is left unmatched rather than matched by title."""

    tag: str | None = None
    url: bool = False
    title_regex: str | None = None
    only: bool = False

    @field_validator("tag")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError('empty: give the prefix of the tags holding the key, e.g. "ext:"')
        return value

    @field_validator("title_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            groups = re.compile(value).groups
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regular expression ({exc})") from None
        if groups > 1:
            raise ValueError(
                f"{value!r} has {groups} groups: capture the key in one group (or none: the whole match)"
            )
        if re.search(value, "") is not None:
            raise ValueError(
                f"{value!r} matches where there is no text at all: a key is one character or more"
            )
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> MatchKeyConfig:
        kinds = [k for k in ("tag", "url", "title_regex") if getattr(self, k) not in (None, False)]
        if len(kinds) != 1:
            given = f" (not {' and '.join(kinds)} together)" if kinds else ""
            raise ValueError(f"choose one key: {MATCH_KEY_KINDS}{given}")
        return self


class RouteConfig(_Model):
    name: str
    members: list[MemberConfig] = Field(min_length=2)
    fields: list[str] = DEFAULT_FIELDS
    conflict: Literal["newest", "manual"] | PreferPolicy = "newest"
    on_delete: Literal["archive", "delete", "unlink"] = "archive"
    initial: Literal["mirror", "new-only", "match", "match-only"] = "mirror"
    match_key: MatchKeyConfig | None = None
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

    @field_validator("match_key", mode="before")
    @classmethod
    def _match_key_mapping(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, dict | MatchKeyConfig):
            raise ValueError(
                f'{value!r} is not a mapping: use one of {MATCH_KEY_KINDS}, e.g. {{tag: "ext:"}}'
            )
        return value

    @field_validator("marker")
    @classmethod
    def _marker_has_id(cls, value: str) -> str:
        if "{id}" not in value:
            raise ValueError("the marker must contain {id}, the bridge's task id")
        return value


class _EnvOverFile(BaseSettings):
    """Settings read from the file with the environment over it: that is what an operator's
    TASKBRIDGE_* is for (no .env file, no secrets directory)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)


class Config(_EnvOverFile):
    """The whole file. Keys are documented in config.example.yaml."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
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
    _overrides: dict[tuple[str, ...], str] = PrivateAttr(default_factory=dict)

    def problem(self, path: tuple[str | int, ...], message: str) -> Problem:
        """A problem found after loading (e.g. in a mapping), located at its key's line, or at the
        `TASKBRIDGE_*` variable that set it."""
        return _locate(path, message, self._lines, self._overrides)

    def preflight(self, *, syncing: bool = True, store: bool = True) -> list[Problem]:
        """What keeps this valid config from running on this machine: nothing to sync (`syncing`:
        no connectors and no routes), or (`store`) a SQLite store whose directory does not exist.
        A store that exists but takes no writes is found by opening it."""
        problems: list[Problem] = []
        if syncing and not self.connectors and not self.routes:
            problems.append(
                Problem(
                    (),
                    None,
                    "nothing to sync: a config needs `connectors:` (each a name with platform, "
                    "base_url and token) and `routes:` (each a name and two or more members, "
                    f"{{connector: NAME, scope: ID}}); {EXAMPLE_CONFIG} documents every key",
                )
            )
        directory = _sqlite_directory_problem(self.store.url) if store else None
        if directory:
            problems.append(self.problem(("store", "url"), directory))
        return problems

    def warnings(self) -> list[Problem]:
        """What runs but does less than the operator likely meant: connectors with no routes
        sync nothing. Allowed, not refused: `scopes` and `people` need the connectors to help
        write the routes, and a daemon may run before any is routed."""
        if self.connectors and not self.routes:
            return [
                self.problem(
                    ("routes",),
                    "none: nothing is synced until a route names two or more members, "
                    "{connector: NAME, scope: ID} (`taskbridge scopes` lists each connector's scopes)",
                )
            ]
        return []

    def error(self, problems: list[Problem]) -> ConfigError:
        return ConfigError(self._filename, problems)

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
    env: str | None = None  # the TASKBRIDGE_* variable the bad value came from (not the file)

    def render(self, filename: str) -> str:
        if self.env:
            key = format_path(self.path)
            return f"{self.env} (environment variable): {key + ': ' if key else ''}{self.message}"
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


# How many values aliases (`*NAME`) may add to the file when expanded: far more than any
# config repeats (a merged connector, a shared list of fields), far fewer than a "billion
# laughs" (nested aliases, 10**9 values from a few lines) needs to exhaust memory.
MAX_ALIAS_VALUES = 100_000


@dataclass
class _Plain:
    """The walk of `_to_plain`: the line of every key and item, and what aliases added so far."""

    lines: dict[tuple[str | int, ...], int]
    walked: set[int] = dataclasses.field(default_factory=set)  # ids of the collections walked once
    aliased: int = 0  # values walked again, through an alias


def _to_plain(
    node: Any, path: tuple[str | int, ...], walk: _Plain, alias: tuple[str | int, ...] | None = None
) -> Any:
    """ruamel's tree as plain dicts/lists, recording the 1-based line of every key and item. An
    alias is the very collection it names (ruamel builds it once): walking it again is what
    expands the file, so those values are counted and refused past MAX_ALIAS_VALUES. `alias`:
    where the alias being expanded is written (the error names it: inside, the lines are those
    of the anchor's values)."""
    if isinstance(node, CommentedMap | CommentedSeq):
        if alias is None and id(node) in walk.walked:
            alias = path
        walk.walked.add(id(node))
    if alias is not None:
        walk.aliased += 1
        if walk.aliased > MAX_ALIAS_VALUES:
            raise _AliasBomb(alias)
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            try:
                walk.lines[(*path, key)] = node.lc.key(key)[0] + 1
            except (KeyError, TypeError):
                pass
            out[key] = _to_plain(value, (*path, key), walk, alias=alias)
        return out
    if isinstance(node, CommentedSeq):
        result = []
        for i, value in enumerate(node):
            try:
                walk.lines[(*path, i)] = node.lc.item(i)[0] + 1
            except (KeyError, TypeError, IndexError):
                pass
            result.append(_to_plain(value, (*path, i), walk, alias=alias))
        return result
    if node is not None and not isinstance(node, bool | int | float | str):
        return str(node)  # dates and other scalars stay as text; the schema decides
    return node


class _AliasBomb(Exception):
    def __init__(self, path: tuple[str | int, ...]) -> None:
        super().__init__(path)
        self.path = path


def _interpolate(
    node: Any,
    path: tuple[str | int, ...],
    env: Mapping[str, str],
    problems: list[tuple[tuple[str | int, ...], str]],
    empties: dict[tuple[str | int, ...], str] | None = None,
) -> Any:
    """`${VAR}` and `${VAR:-default}` replaced in every string; a string that a variable made
    empty is noted in `empties` (its path -> the variable), for the message if it is refused."""
    if isinstance(node, dict):
        return {k: _interpolate(v, (*path, k), env, problems, empties) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, (*path, i), env, problems, empties) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append((path, f"environment variable {name} is not set (referenced as ${{{name}}})"))
            return ""

        result = _VAR.sub(replace, node)
        names = _VAR.findall(node)
        if empties is not None and names and not result.strip():
            empties[path] = names[0][0]
        return result
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


def _utf8(filename: str, raw: bytes) -> str:
    """The file's text; a file saved in another encoding (Notepad's UTF-16, Latin-1) is a config
    error naming the first byte that is not UTF-8 and its line, not a UnicodeDecodeError."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = (
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): save the file as UTF-8"
        )
        raise ConfigError(filename, [Problem((), line, message)]) from None


def _read(filename: str) -> tuple[dict[str, Any], dict[tuple[str | int, ...], int], set[str]]:
    """The file as plain data, the line of every key, and the variables it references as ${VAR}."""
    try:
        raw = Path(filename).read_bytes()
    except OSError as exc:
        raise ConfigError(filename, [Problem((), None, f"cannot read the file: {exc.strerror}")]) from None
    text = _utf8(filename, raw)
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
    walk = _Plain(lines={})
    try:
        data = _to_plain(tree, (), walk)
    except _AliasBomb as exc:
        message = (
            f"its aliases (*NAME) expand to more than {MAX_ALIAS_VALUES} values; write what they "
            "repeat out, or alias less deeply"
        )
        # An item's line is its anchor's (ruamel reads an alias as the anchored node): the line of
        # the sequence holding it is where the alias is written.
        where = exc.path[:-1] if exc.path and isinstance(exc.path[-1], int) else exc.path
        raise ConfigError(filename, [Problem(exc.path, _line_for(where, walk.lines), message)]) from None
    return data, walk.lines, {m.group(1) for m in _VAR.finditer(text)}


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate a config file; raise ConfigError naming file, key and line
    (or the TASKBRIDGE_* variable a bad value came from)."""
    filename = str(path)
    env = os.environ if env is None else env
    data, lines, referenced = _read(filename)
    cfg = _load_data(Config, filename, data, lines, referenced, env)
    assert isinstance(cfg, Config)
    return cfg


def load_server(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> ServerConfig:
    """Only the file's `server` section (with its `TASKBRIDGE_SERVER__*` overrides), for the
    commands that talk to a running daemon: they need its address, not the platforms' secrets,
    which the operator's shell may not hold."""
    filename = str(path)
    env = os.environ if env is None else env
    data, lines, referenced = _read(filename)
    section = {"server": data["server"]} if "server" in data else {}
    server_env = {k: v for k, v in env.items() if k.upper().startswith(f"{ENV_PREFIX}SERVER")}
    loaded = _load_data(_ServerOnly, filename, section, lines, referenced, server_env)
    assert isinstance(loaded, _ServerOnly)
    return loaded.server


def _load_data(
    cls: type[BaseSettings],
    filename: str,
    data: dict[str, Any],
    lines: dict[tuple[str | int, ...], int],
    referenced: set[str],
    env: Mapping[str, str],
) -> BaseSettings:
    var_problems: list[tuple[tuple[str | int, ...], str]] = []
    empties: dict[tuple[str | int, ...], str] = {}
    data = _interpolate(data, (), env, var_problems, empties)
    overrides, problems = _env_overrides(env, data, referenced, cls)
    problems[:0] = [Problem(p, _line_for(p, lines), m) for p, m in var_problems]
    if problems:
        raise ConfigError(filename, problems)
    try:
        loaded = _validate(cls, data, env)
    except CrossReferenceError as exc:
        problems = [_locate(p, m, lines, overrides) for p, m in exc.problems]
    except ValidationError as exc:
        problems = list(_problems(exc, lines, overrides))
    except SettingsError as exc:
        problems = [_settings_problem(exc, overrides)]
    else:
        if isinstance(loaded, Config):
            loaded._lines = lines
            loaded._filename = filename
            loaded._overrides = overrides
        return loaded
    for i, p in enumerate(problems):
        if p.env is None and p.path in empties:
            problems[i] = dataclasses.replace(
                p, message=f"{p.message} (${{{empties[p.path]}}} is set but empty)"
            )
    raise ConfigError(filename, problems)


def _validate(cls: type[BaseSettings], data: dict[str, Any], env: Mapping[str, str]) -> BaseSettings:
    if env is os.environ:
        return cls(**data)
    # An explicit environment (tests) must not read the process's TASKBRIDGE_* variables.
    saved = {k: v for k, v in os.environ.items() if k.startswith("TASKBRIDGE_")}
    try:
        for k in saved:
            del os.environ[k]
        os.environ.update({k: v for k, v in env.items() if k.startswith("TASKBRIDGE_")})
        return cls(**data)
    finally:
        for k in [k for k in os.environ if k.startswith("TASKBRIDGE_")]:
            del os.environ[k]
        os.environ.update(saved)


class _ServerOnly(_EnvOverFile):
    """The `server` section alone (see `load_server`)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", frozen=True
    )

    server: ServerConfig = ServerConfig()


# -- TASKBRIDGE_* overrides ----------------------------------------------------------------------

# TASKBRIDGE_* variables the project reads that are not overrides of config keys: the one place
# that lists them (each is also named where it is read).
NOT_OVERRIDES: frozenset[str] = frozenset(
    {
        "TASKBRIDGE_TOKEN",  # the API token of `status`, `conflicts`, `outbox`, `inbox` (client_cli.py)
        "TASKBRIDGE_REPLICA_ID",  # a replica's name in claims and leases (daemon.py)
        "TASKBRIDGE_DB_URL",  # config.example.yaml's store.url reads it as ${TASKBRIDGE_DB_URL}
        "TASKBRIDGE_LOG_LIBRARIES",  # the libraries' log level (logs.py)
        "TASKBRIDGE_REQUIRE_PG",  # the tests: fail rather than skip without PostgreSQL
        "TASKBRIDGE_IMAGE",  # deploy/compose.yaml's own (the image, the published ports)
        "TASKBRIDGE_PORT",
        "TASKBRIDGE_PROXY_PORT",
    }
)
NOT_OVERRIDE_PREFIXES: tuple[str, ...] = ("TASKBRIDGE_TEST_", "TASKBRIDGE_BENCH_")  # tests, benchmarks


def _env_overrides(
    env: Mapping[str, str], data: dict[str, Any], referenced: set[str], root: type[BaseModel]
) -> tuple[dict[tuple[str, ...], str], list[Problem]]:
    """The TASKBRIDGE_* variables that override a key (their key paths, lower case as
    pydantic-settings reads them -> the variable), and a problem for each that names no key. A
    variable the file references as ${VAR} is the file's, not an override."""
    overrides: dict[tuple[str, ...], str] = {}
    problems: list[Problem] = []
    known: list[str] | None = None
    for name in sorted(env):
        upper = name.upper()
        if (
            not upper.startswith(ENV_PREFIX)
            or upper in NOT_OVERRIDES
            or upper.startswith(NOT_OVERRIDE_PREFIXES)
            or name in referenced
        ):
            continue
        parts = tuple(upper[len(ENV_PREFIX) :].lower().split("__"))
        if all(parts) and _is_key(root, parts, data):
            overrides[parts] = name
            continue
        if known is None:
            known = ["__".join(p).upper() for p in _key_paths(root, data)]
        # Compared without the prefix every name shares (it would make any two names look alike).
        close = difflib.get_close_matches(upper[len(ENV_PREFIX) :], known, n=1)
        hint = (
            f"; did you mean {ENV_PREFIX}{close[0]}?"
            if close
            else f" (an override is {ENV_PREFIX} and a key's path joined by __, e.g. TASKBRIDGE_SERVER__LISTEN)"
        )
        problems.append(Problem((), None, f"no config key {'.'.join(parts)}{hint}", env=name))
    return overrides, problems


def _optional_of(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_key(annotation: Any, parts: tuple[str, ...], node: Any) -> bool:
    """Whether `parts` is a key path in the schema (a dict's entries: those of the file)."""
    if not parts:
        return True
    annotation = _optional_of(annotation)
    if annotation is Any:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(parts[0])
        sub = node.get(parts[0]) if isinstance(node, dict) else None
        return field is not None and _is_key(field.annotation, parts[1:], sub)
    if get_origin(annotation) is dict:
        entries = {str(k).lower(): v for k, v in node.items()} if isinstance(node, dict) else {}
        if len(parts) > 1 and parts[0] not in entries:
            return False  # a key of an entry the file does not have (a misspelt connector's name)
        return _is_key(get_args(annotation)[1], parts[1:], entries.get(parts[0]))
    return False  # a value (or a list, set whole as JSON) has no keys under it


def _key_paths(annotation: Any, node: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key path of the schema, with the file's entries for its dicts (for suggestions)."""
    annotation = _optional_of(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, field in annotation.model_fields.items():
            yield (*prefix, name)
            sub = node.get(name) if isinstance(node, dict) else None
            yield from _key_paths(field.annotation, sub, (*prefix, name))
    elif get_origin(annotation) is dict and isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, str(key))
            yield from _key_paths(get_args(annotation)[1], value, (*prefix, str(key)))


def _override_for(
    path: tuple[str | int, ...],
    lines: Mapping[tuple[str | int, ...], int],
    overrides: Mapping[tuple[str, ...], str],
) -> str | None:
    """The variable a value at `path` came from: one whose key path covers it, or reaches deeper
    along it than the file does."""
    keys = tuple(str(p).lower() for p in path)
    in_file = max(n for n in range(len(path) + 1) if n == 0 or path[:n] in lines)
    best: tuple[int, str] | None = None
    for parts, name in overrides.items():
        common = 0
        while common < min(len(parts), len(keys)) and parts[common] == keys[common]:
            common += 1
        if common and (common == len(parts) or common > in_file) and (best is None or common > best[0]):
            best = (common, name)
    return best[1] if best else None


def _locate(
    path: tuple[str | int, ...],
    message: str,
    lines: Mapping[tuple[str | int, ...], int],
    overrides: Mapping[tuple[str, ...], str],
) -> Problem:
    env = _override_for(path, lines, overrides)
    return Problem(path, None if env else _line_for(path, lines), message, env=env)


def _settings_problem(exc: SettingsError, overrides: Mapping[tuple[str, ...], str]) -> Problem:
    """pydantic-settings could not parse a variable's value (a section or list is JSON there)."""
    match = re.search(r'field "([^"]+)"', str(exc))
    field = match.group(1) if match else ""
    names = [name for parts, name in overrides.items() if parts[0] == field]
    message = "not valid JSON (a section or a list set from the environment is written as JSON)"
    return Problem(
        (field,) if field else (), None, message if names else str(exc), env=names[0] if names else None
    )


def _problems(
    exc: ValidationError,
    lines: Mapping[tuple[str | int, ...], int],
    overrides: Mapping[tuple[str, ...], str] | None = None,
) -> Iterator[Problem]:
    seen: set[tuple[tuple[str | int, ...], str]] = set()
    for err in exc.errors(include_url=False):
        loc = _clean_loc(tuple(err["loc"]))
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, CrossReferenceError):
            for p, m in ctx_error.problems:
                yield _locate(p, m, lines, overrides or {})
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
        yield _locate(loc, message, lines, overrides or {})
