"""Portable state: the store as JSON Lines, to move the bridge to a new host or a new kind of store
(SQLite to PostgreSQL) without duplicating anything on the platforms.

`taskbridge store export` writes, to stdout, a header line and then one line per record:

    {"format": "taskbridge-state", "version": 1, "revision": "0007", "exported_at": "...",
     "counts": {"task": 2, "link": 6, "comment": 1, "comment_link": 3, "watermark": 5, "conflict": 0}}
    {"kind": "task", "id": "01J...", "route": "main", "data": {...}, "field_times": {...}, ...}
    {"kind": "link", "id": 7, "task_id": "01J...", "connector": "vortask", "remote_id": "42", ...}

A record is its table's row, column by column (times as ISO 8601 in UTC, JSON columns as JSON),
with records in the order a new store can take them (a task before its links, a comment before
its comment links). `taskbridge store import` loads such a file into an empty store.

What travels is what the daemon needs to resume against platforms already in sync, and no more:
- tasks (canonical values, field times, deletions): what the links' bases are compared to;
- links with their bases, remote ids, update times and content hashes: a task seen again is
  known (no second canonical task, no second mirror), and an unchanged one is sorted out;
- comments and comment links: a comment seen again is known, and ours are never taken for new;
- watermarks: polling resumes where it got to instead of listing everything again;
- open conflicts, which hold fields for a person to settle.
Every row keeps its id (the API and the CLI name conflicts by theirs).
`tasks.priority` and the task_tags/task_assignees index are rebuilt from each task's data on
import (bridge/store/search.py), so the API's filters answer as before.

What does not travel:
- the outbox, the inbox and history. Pending writes are NOT carried: export from a stopped
  daemon whose outbox had drained (`taskbridge status` shows it). Export warns, with the count,
  when operations are still pending or claimed, and counts the parked ones too. Unprocessed
  webhook deliveries are not needed: the next poll reads the same changes.
- the meta rows: webhook secrets that platforms issued to this install (never written to a
  file: the daemon registers its webhooks again at start, and a platform that issues its own
  secret is registered anew when the store holds none), and the store's identity (a new store
  is a new store: it gets its own when it is created).
- leases (held by the old host's processes) and resolved conflicts (the past, like history).

Import refuses a store that already holds rows of any kind it loads, checks the header and every line
(a bad line names its number and what is wrong), and writes everything in one transaction with
bulk inserts: a bad line, or a row the store refuses, imports nothing. The file must come from the
same schema revision as this taskbridge's (the columns are the schema's): to upgrade and move,
import with the version that exported, then upgrade as usual.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, cast

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ColumnElement,
    Insert,
    Integer,
    String,
    Table,
    bindparam,
    func,
    insert,
    select,
    tuple_,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from bridge.store import Store, alembic_config, redact_url, search
from bridge.store.states import ConflictState, LinkState, OpState
from bridge.store.tables import (
    Base,
    CommentLinkRow,
    CommentRow,
    ConflictRow,
    LeaseRow,
    LinkRow,
    OutboxRow,
    TaskAssigneeRow,
    TaskRow,
    TaskTagRow,
    UTCDateTime,
    WatermarkRow,
)

FORMAT = "taskbridge-state"
VERSION = 1
CHUNK = 2000  # rows per SELECT on export and per INSERT on import

Counts = dict[str, int]


class PortableError(Exception):
    """A problem the operator must fix (a bad file, a store that is not empty): one line, no
    traceback."""


class BadLine(PortableError):
    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line


def _table(row_class: type[Base]) -> Table:
    return cast(Table, row_class.__table__)


@dataclass(frozen=True)
class Kind:
    """One kind of record: the table it is a row of, which rows travel, and which columns are
    rebuilt on import instead (derived from others, so a file cannot make them disagree)."""

    name: str
    table: Table
    only: ColumnElement[bool] | None = None
    derived: frozenset[str] = frozenset()
    states: Mapping[str, type[StrEnum]] = field(default_factory=dict)

    @property
    def columns(self) -> list[Column[Any]]:
        return [c for c in self.table.columns if c.name not in self.derived]


# In the order a new store can take them (foreign keys point back up this list).
KINDS: tuple[Kind, ...] = (
    Kind("task", _table(TaskRow), derived=frozenset({"priority"})),
    Kind("link", _table(LinkRow), states={"state": LinkState}),
    Kind("comment", _table(CommentRow)),
    Kind("comment_link", _table(CommentLinkRow), states={"state": LinkState}),
    Kind("watermark", _table(WatermarkRow)),
    Kind(
        "conflict",
        _table(ConflictRow),
        only=ConflictRow.state == ConflictState.OPEN,
        states={"state": ConflictState},
    ),
)
BY_NAME: dict[str, Kind] = {k.name: k for k in KINDS}
# Every table an import writes: it must find them all empty.
TARGETS: tuple[Table, ...] = (
    *(k.table for k in KINDS),
    _table(TaskTagRow),
    _table(TaskAssigneeRow),
)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def describe(counts: Mapping[str, int]) -> str:
    """`3 tasks, 1 link, ...` for a summary line."""
    return ", ".join(plural(n, name.replace("_", " ")) for name, n in counts.items())


def schema_head() -> str | None:
    """The schema revision this taskbridge's migrations end at."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def store_revision(session: AsyncSession) -> str | None:
    def read(sync: Session) -> str | None:
        return MigrationContext.configure(sync.connection()).get_current_revision()

    return await session.run_sync(read)


# -- export -----------------------------------------------------------------------------------


@asynccontextmanager
async def snapshot(store: Store) -> AsyncIterator[AsyncSession]:
    """A read session whose statements all see one state of the store. On SQLite (WAL) a read
    transaction is a snapshot already; PostgreSQL's default (READ COMMITTED) gives every statement
    a new one, so ask for REPEATABLE READ before the first."""
    async with store.read() as session:
        if store.dialect == "postgresql":
            await session.connection(
                execution_options={"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
            )
        yield session


async def unfinished_writes(session: AsyncSession) -> Counts:
    """Outbox operations by state (pending, claimed, parked): writes an export would lose."""
    rows = await session.execute(
        select(OutboxRow.state, func.count())
        .where(OutboxRow.state.in_([OpState.PENDING, OpState.CLAIMED, OpState.PARKED]))
        .group_by(OutboxRow.state)
    )
    found = {str(state): int(n) for state, n in rows.all()}
    return {s.value: found.get(s.value, 0) for s in (OpState.PENDING, OpState.CLAIMED, OpState.PARKED)}


async def live_holders(session: AsyncSession) -> list[str]:
    """Replicas holding a lease that has not expired: a daemon that seems to run on this store."""
    held = await session.scalars(
        select(LeaseRow.holder).where(LeaseRow.expires_at > datetime.now(UTC)).distinct()
    )
    return sorted(held)


async def export_records(
    session: AsyncSession, *, exported_at: datetime | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The header, then every record, read `CHUNK` rows at a time in primary-key order (keyset
    pages: neither side holds the whole store). All reads go through `session`: give it one
    transaction (`snapshot`) and the counts in the header are those of the records."""
    revision = await store_revision(session)
    head = schema_head()
    if revision is None:
        raise PortableError("the store holds no taskbridge schema (nothing to export)")
    if revision != head:
        raise PortableError(
            f"the store's schema is at revision {revision}, this taskbridge's is {head}: export with "
            "the taskbridge that runs on it (or start this version's daemon once: it migrates)"
        )
    counts: Counts = {}
    for kind in KINDS:
        query = select(func.count()).select_from(kind.table)
        if kind.only is not None:
            query = query.where(kind.only)
        counts[kind.name] = int(await session.scalar(query) or 0)
    yield {
        "format": FORMAT,
        "version": VERSION,
        "revision": revision,
        "exported_at": (exported_at or datetime.now(UTC)).isoformat(),
        "counts": counts,
    }
    for kind in KINDS:
        async for row in _rows(session, kind):
            yield {"kind": kind.name, **row}


async def _rows(session: AsyncSession, kind: Kind) -> AsyncIterator[dict[str, Any]]:
    key = list(kind.table.primary_key.columns)
    after: tuple[Any, ...] | None = None
    while True:
        query = select(*kind.columns).order_by(*key).limit(CHUNK)
        if kind.only is not None:
            query = query.where(kind.only)
        if after is not None:
            query = query.where(key[0] > after[0] if len(key) == 1 else tuple_(*key) > tuple_(*after))
        rows = (await session.execute(query)).mappings().all()
        for row in rows:
            yield dict(row)
        if len(rows) < CHUNK:
            return
        after = tuple(rows[-1][c.name] for c in key)


def encode_line(record: Mapping[str, Any]) -> str:
    """One JSON line (ASCII, so any terminal or pipe carries it), without its newline."""
    return json.dumps(record, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


# -- import -----------------------------------------------------------------------------------

Parse = Callable[[Any], Any]


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"not a time: {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"a time without a UTC offset: {value!r}")
    return parsed.astimezone(UTC)


def _parse_object(value: Any) -> Any:
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object: {value!r:.60}")
    return value


def _parse_claims(value: Any) -> Any:
    """A link's claims (`inflight`): a list of objects, or one object as stores before lists."""
    if isinstance(value, list):
        for item in value:
            _parse_object(item)
        return value
    return _parse_object(value)


# JSON columns that hold something other than one object.
_JSON_PARSERS: dict[tuple[str, str], Parse] = {("links", "inflight"): _parse_claims}


def _parse_int(value: Any) -> int:
    if type(value) is not int:  # bool is an int to Python, not to the file
        raise ValueError(f"not an integer: {value!r:.60}")
    return value


def _parse_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"not true or false: {value!r:.60}")
    return value


def _text(length: int | None) -> Parse:
    def parse(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"not a string: {value!r:.60}")
        if length is not None and len(value) > length:
            raise ValueError(f"longer than {length} characters")
        return value

    return parse


def _member(states: type[StrEnum], then: Parse) -> Parse:
    values = frozenset(s.value for s in states)

    def parse(value: Any) -> Any:
        value = then(value)
        if value not in values:
            raise ValueError(f"{value!r} is not one of {', '.join(sorted(values))}")
        return value

    return parse


def _parser(kind: Kind, column: Column[Any]) -> Parse:
    """How a column's value is read from a record (and checked), from the column's type."""
    kind_of = column.type
    parse: Parse
    if isinstance(kind_of, UTCDateTime):
        parse = _parse_time
    elif isinstance(kind_of, JSON):
        parse = _JSON_PARSERS.get((kind.table.name, column.name), _parse_object)
    elif isinstance(kind_of, Boolean):
        parse = _parse_bool
    elif isinstance(kind_of, Integer):
        parse = _parse_int
    elif isinstance(kind_of, String):  # Text too
        parse = _text(kind_of.length)
    else:
        raise TypeError(f"{kind.table.name}.{column.name}: no rule for {kind_of!r}")
    if column.name in kind.states:
        parse = _member(kind.states[column.name], parse)
    return _or_null(parse) if column.nullable else parse


def _or_null(parse: Parse) -> Parse:
    def parse_or_null(value: Any) -> Any:
        return None if value is None else parse(value)

    return parse_or_null


PARSERS: dict[str, dict[str, Parse]] = {
    kind.name: {c.name: _parser(kind, c) for c in kind.columns} for kind in KINDS
}


def parse_record(line: int, raw: str | bytes) -> tuple[Kind, dict[str, Any]]:
    """A record line's kind and row (values as the table takes them); BadLine for anything else."""
    record = _json_object(line, raw)
    name = record.pop("kind", None)
    kind = BY_NAME.get(name) if isinstance(name, str) else None
    if kind is None:
        raise BadLine(line, f"kind {name!r} is none of {', '.join(BY_NAME)}")
    parsers = PARSERS[kind.name]
    if record.keys() != parsers.keys():
        missing = [c for c in parsers if c not in record]
        if missing:
            raise BadLine(line, f"{kind.name}: missing {', '.join(missing)}")
        unknown = [c for c in record if c not in parsers]
        raise BadLine(line, f"{kind.name}: unknown field {', '.join(map(repr, unknown))}")
    row: dict[str, Any] = {}
    for name, parse in parsers.items():
        try:
            row[name] = parse(record[name])
        except ValueError as exc:
            raise BadLine(line, f"{kind.name}: {name}: {exc}") from None
    return kind, row


def _json_object(line: int, raw: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise BadLine(line, f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BadLine(line, "not a JSON object")
    return value


def check_header(line: int, raw: str | bytes, head: str | None) -> Counts:
    """The header's per-kind counts, once its format, version and revision are what this
    taskbridge reads."""
    header = _json_object(line, raw)
    if header.get("format") != FORMAT:
        raise BadLine(line, f"not a taskbridge export (format {header.get('format')!r}, expected {FORMAT!r})")
    if type(header.get("version")) is not int or header.get("version") != VERSION:
        raise BadLine(line, f"format version {header.get('version')!r}; this taskbridge reads {VERSION}")
    if header.get("revision") != head:
        raise BadLine(
            line,
            f"exported at schema revision {header.get('revision')!r}, this taskbridge's is {head!r}: "
            "import with the taskbridge version that exported it, then upgrade",
        )
    try:
        _parse_time(header.get("exported_at"))
    except ValueError as exc:
        raise BadLine(line, f"exported_at: {exc}") from None
    counts = header.get("counts")
    if (
        not isinstance(counts, dict)
        or set(counts) != set(BY_NAME)
        or not all(type(n) is int and n >= 0 for n in counts.values())
    ):
        raise BadLine(line, f"counts: expected a count for each of {', '.join(BY_NAME)}")
    return {name: counts[name] for name in BY_NAME}


def _statement(kind: Kind) -> Insert:
    # A None in a JSON column goes in as SQL NULL, not as the JSON text 'null' (what a plain
    # executemany of the column's type would write): a NULL column reads as NULL in SQL too.
    nulls = {
        c.name: bindparam(c.name, type_=JSON(none_as_null=True))
        for c in kind.columns
        if isinstance(c.type, JSON) and c.nullable
    }
    return insert(kind.table).values(nulls) if nulls else insert(kind.table)


STATEMENTS: dict[str, Insert] = {kind.name: _statement(kind) for kind in KINDS}


class _Loader:
    """Buffers rows of one kind and inserts them `CHUNK` at a time (Core executemany), each chunk
    in a savepoint: when the store refuses one (a duplicate, a task id that names no task), its
    rows are tried one by one to name the line at fault."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.kind: Kind | None = None
        self.rows: list[dict[str, Any]] = []
        self.lines: list[int] = []
        self.counts: Counter[str] = Counter()

    async def add(self, line: int, kind: Kind, row: dict[str, Any]) -> None:
        if kind is not self.kind or len(self.rows) >= CHUNK:
            await self.flush()
            self.kind = kind
        self.rows.append(row)
        self.lines.append(line)

    async def flush(self) -> None:
        if self.kind is None or not self.rows:
            return
        kind, rows, lines = self.kind, self.rows, self.lines
        self.rows, self.lines = [], []
        try:
            async with self.session.begin_nested():
                await self._insert(kind, rows)
        except DBAPIError as exc:
            for line, row in zip(lines, rows, strict=True):
                try:
                    async with self.session.begin_nested():
                        await self._insert(kind, [row])
                except DBAPIError as refused:
                    raise BadLine(
                        line, f"{kind.name}: the store refused it: {_reason(kind, refused)}"
                    ) from None
            raise PortableError(
                f"lines {lines[0]}-{lines[-1]}: the store refused them: {_reason(kind, exc)}"
            ) from None
        self.counts[kind.name] += len(rows)

    async def _insert(self, kind: Kind, rows: list[dict[str, Any]]) -> None:
        if kind.name == "task":
            for row in rows:
                row["priority"] = search.priority_of(row["data"])
        await self.session.execute(STATEMENTS[kind.name], rows)
        if kind.name == "task":
            # Core inserts pass by the flush hooks that index tasks: index them here.
            conn = await self.session.connection()
            await conn.run_sync(
                search.write_index, [(r["id"], r["data"], r["updated_at"]) for r in rows], replace=False
            )


def _reason(kind: Kind, exc: DBAPIError) -> str:
    text = re.sub(r"^<class '[\w.]+'>: ", "", " ".join(str(exc.orig).split()))  # asyncpg's name it
    if "foreign key" in text.lower():  # SQLite's message names no column
        refs = ", ".join(f"{fk.parent.name} -> {fk.column.table.name}" for fk in kind.table.foreign_keys)
        text += f" ({refs}: a row earlier in the file)"
    return text


async def _refuse_non_empty(session: AsyncSession, url: str) -> None:
    held: Counts = {}
    for table in TARGETS:
        n = int(await session.scalar(select(func.count()).select_from(table)) or 0)
        if n:
            held[table.name] = n
    if held:
        found = ", ".join(f"{n} rows in {name}" for name, n in held.items())
        raise PortableError(
            f"the store at {redact_url(url)} is not empty ({found}): import needs a new, empty store"
        )


async def _advance_sequences(session: AsyncSession) -> None:
    """PostgreSQL: the ids imported came with their values, which moves no sequence; the next
    row the daemon adds would take id 1 again. (SQLite takes max(id) + 1 by itself.)"""
    for kind in KINDS:
        column = kind.table.autoincrement_column
        if column is None:
            continue
        top = await session.scalar(select(func.max(column)))
        if top is not None:
            sequence = func.pg_get_serial_sequence(kind.table.name, column.name)
            await session.execute(select(func.setval(sequence, top)))


async def import_records(store: Store, lines: Iterable[str | bytes]) -> Counts:
    """Load an export into `store` (migrated first) in one transaction: all of it, or nothing
    (PortableError saying why). Returns the records imported per kind."""
    await store.migrate()
    head = schema_head()
    async with store.transaction() as session:
        await _refuse_non_empty(session, store.url)
        numbered = ((n, raw) for n, raw in enumerate(lines, 1) if raw.strip())
        first = next(numbered, None)
        if first is None:
            raise PortableError("the file is empty (no header line)")
        header_line = first[0]
        expected = check_header(*first, head)
        loader = _Loader(session)
        for line, raw in numbered:
            await loader.add(line, *parse_record(line, raw))
        await loader.flush()
        found = {name: loader.counts[name] for name in BY_NAME}
        if found != expected:
            raise BadLine(
                header_line,
                f"the header counts {describe(expected)}; the file holds {describe(found)} (cut short?)",
            )
        if store.dialect == "postgresql":
            await _advance_sequences(session)
    return found


# -- what the CLI runs --------------------------------------------------------------------------


def _existing(url: str) -> Store:
    """The store at `url`, refusing a SQLite file that is not there (opening would create it)."""
    parsed = make_url(url)
    database = parsed.database
    if (
        parsed.get_backend_name() == "sqlite"
        and database
        and database != ":memory:"
        and not database.startswith("file:")
        and not Path(database).exists()
    ):
        raise PortableError(f"no store at {database}")
    return Store.open(url)


async def export_store(url: str, out: IO[str], warn: Callable[[str], None]) -> Counts:
    """Write the store at `url` to `out` as JSON Lines; `warn` hears what will not be carried."""
    store = _existing(url)
    try:
        async with snapshot(store) as session:
            pending = await unfinished_writes(session)
            waiting = pending[OpState.PENDING] + pending[OpState.CLAIMED]
            if waiting:
                warn(
                    f"warning: {plural(waiting, 'write')} to platforms still pending or claimed in the "
                    "outbox, not exported (they would be lost): run the daemon until `taskbridge status` "
                    "shows its outbox empty, stop it, and export again"
                )
            if pending[OpState.PARKED]:
                warn(
                    f"warning: {plural(pending[OpState.PARKED], 'parked write')} (dead letters) not "
                    "exported: retry or drop them first (taskbridge outbox list)"
                )
            running = await live_holders(session)
            if running:
                warn(
                    f"warning: a daemon seems to run on this store (leases held by {', '.join(running)}): "
                    "what it does after this snapshot is not exported; stop it first"
                )
            counts: Counts = {}
            async for record in export_records(session):
                if "kind" not in record:
                    counts = dict(record["counts"])
                out.write(encode_line(record) + "\n")
            out.flush()
        return counts
    finally:
        await store.close()


def open_source(path: str) -> AbstractContextManager[IO[bytes]]:
    """The export file at `path` ("-": standard input, left open), for `import_store`."""
    if path == "-":
        return nullcontext(sys.stdin.buffer)
    try:
        return open(path, "rb")
    except OSError as exc:
        raise PortableError(f"cannot read {path}: {exc.strerror}") from None


async def import_store(url: str, source: Iterable[bytes]) -> Counts:
    """Import an export (lines of `source`) into the store at `url`."""
    store = Store.open(url)
    try:
        return await import_records(store, source)
    finally:
        await store.close()
