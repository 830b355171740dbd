"""Portable state (bridge/store/portable.py): a store exported to JSON Lines and imported into a
new one holds the same rows, table by table (on SQLite, and on PostgreSQL when a server is set);
bad files, bad lines and non-empty stores are refused with nothing imported; no secret is written."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select, text

from bridge.cli import main
from bridge.store import Store, portable
from bridge.store.tables import (
    CommentLinkRow,
    CommentRow,
    ConflictRow,
    HistoryRow,
    InboxRow,
    LeaseRow,
    LinkRow,
    MetaRow,
    OutboxRow,
    TaskAssigneeRow,
    TaskRow,
    TaskTagRow,
    WatermarkRow,
    metadata,
)

T0 = datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=UTC)
SECRET = "whsec_generated_by_agentkanban_0123456789"
IDS = [f"01JTASK{i:019d}" for i in range(5)]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def fill(store: Store) -> None:
    """Every kind of row the store holds, through the ORM (so search.py indexes the tasks), with
    the corners an export must carry: NULLs, deleted tasks, links in every state, non-ASCII."""
    async with store.transaction() as s:
        for i, task_id in enumerate(IDS):
            data = {
                "title": f"Überprüfung ✓ {i}",
                "status": "todo" if i % 2 else "done",
                "priority": ["none", "low", "high", "urgent", "medium"][i],
                "tags": ["ops", f"q{i}"] if i != 3 else [],
                "assignees": ["alice", "bob"][: i % 3],
                "due_date": "2026-12-01" if i == 2 else None,
            }
            s.add(
                TaskRow(
                    id=task_id,
                    route="main" if i < 4 else "side",
                    data=data,
                    title=data["title"],
                    status=data["status"],
                    created_at=at(i),
                    updated_at=at(100 + i),
                    deleted_at=at(200) if i == 4 else None,
                    version=1 + i,
                    field_times={"*": at(i).isoformat(), "title": at(50 + i).isoformat()} if i % 2 else None,
                )
            )
        await s.flush()
        for i, (connector, state, remote) in enumerate(
            [
                ("vortask", "active", "41"),
                ("agentkanban", "active", "ak-1"),
                ("impactly", "creating", None),
                ("squads", "gone", "sq-9"),
                ("runs", "unlinked", "7"),
            ]
        ):
            s.add(
                LinkRow(
                    task_id=IDS[0],
                    route="main",
                    connector=connector,
                    scope=f"scope-{connector}",
                    remote_id=remote,
                    state=state,
                    base={"title": "Überprüfung ✓ 0", "tags": ["ops"]} if remote else {},
                    remote_updated_at=at(300 + i) if remote else None,
                    content_hash=f"{i:064x}" if remote else None,
                    remote_url=f"https://{connector}.example/t/{remote}" if remote else None,
                    is_mirror=i > 0,
                    # Claims as a list, and one link with a store's older single mapping.
                    inflight=(
                        [{"title": "landed?"}, {"title": "in flight"}]
                        if i == 1
                        else {"title": "older store"}
                        if i == 2
                        else None
                    ),
                    created_at=at(10),
                    updated_at=at(20 + i),
                )
            )
        for i in range(1, 4):
            s.add(
                LinkRow(
                    task_id=IDS[i],
                    route="main",
                    connector="vortask",
                    scope="scope-vortask",
                    remote_id=str(100 + i),
                    base={"title": f"Überprüfung ✓ {i}"},
                    created_at=at(10),
                    updated_at=at(10),
                )
            )
        comments = [
            ("01JCOMMENT0000000000000001", 0, "Alice", "vortask"),
            ("01JCOMMENT0000000000000002", 1, "bridge", None),
        ]
        for n, (comment_id, task, author, origin) in enumerate(comments):
            s.add(
                CommentRow(
                    id=comment_id,
                    task_id=IDS[task],
                    body=f"said ✓ {n}",
                    author=author,
                    origin=origin,
                    created_at=at(5 + n),
                )
            )
        await s.flush()
        for n, (comment, connector, remote_id, state) in enumerate(
            [
                (0, "vortask", "c-1", "active"),
                (0, "agentkanban", None, "creating"),
                (1, "impactly", "c-2", "active"),
            ]
        ):
            s.add(
                CommentLinkRow(
                    comment_id=comments[comment][0],
                    connector=connector,
                    remote_id=remote_id,
                    state=state,
                    created_at=at(7 + n),
                )
            )
        for connector, scope, value in [
            ("vortask", "scope-vortask", {"since": at(400).isoformat()}),
            ("vortask", "scope-other", {"cursor": "abc"}),
            ("runs", "scope-runs", {"hash": "f00", "all_ids": ["7", "8"]}),
        ]:
            s.add(WatermarkRow(connector=connector, scope=scope, value=value, updated_at=at(401)))
        for n, (task, name, state) in enumerate(
            [(1, "title", "open"), (2, "status", "resolved"), (3, "tags", "open")]
        ):
            s.add(
                ConflictRow(
                    task_id=IDS[task],
                    route="main",
                    field=name,
                    candidates={"bridge": "a", "vortask": ["b"]},
                    state=state,
                    resolution={"choose": "vortask"} if state == "resolved" else None,
                    created_at=at(30 + n),
                    resolved_at=at(40) if state == "resolved" else None,
                )
            )
        # What must not travel: queues, history, leases, secrets.
        for state in ("pending", "claimed", "parked", "done"):
            s.add(
                OutboxRow(
                    task_id=IDS[0],
                    link_id=1,
                    route="main",
                    connector="vortask",
                    op="update",
                    state=state,
                    next_attempt_at=at(0),
                    observed_at=at(0),
                    created_at=at(0),
                )
            )
        s.add(
            InboxRow(connector="vortask", delivery_key="d-1", body="{}", state="pending", received_at=at(0))
        )
        s.add(
            HistoryRow(
                task_id=IDS[0],
                field="*",
                old=None,
                new={"v": "created"},
                source="vortask",
                via="poll",
                at=at(0),
            )
        )
        s.add(LeaseRow(name="poll:vortask", holder="old-host", expires_at=at(60), acquired_at=at(0)))
        s.add(MetaRow(key="webhook_secrets:agentkanban", value={"secrets": [SECRET]}))


# Table by table, the rows an import must reproduce (open conflicts only), and those it leaves.
CARRIED: list[tuple[str, Any]] = [
    ("tasks", None),
    ("task_tags", None),
    ("task_assignees", None),
    ("links", None),
    ("comments", None),
    ("comment_links", None),
    ("watermarks", None),
    ("conflicts", ConflictRow.state == "open"),
]
LEFT_BEHIND = ["outbox", "inbox", "history", "leases"]


async def rows(store: Store, name: str, where: Any = None) -> list[dict[str, Any]]:
    table = metadata.tables[name]
    query = select(table).order_by(*table.primary_key.columns)
    if where is not None:
        query = query.where(where)
    async with store.read() as s:
        return [dict(r) for r in (await s.execute(query)).mappings()]


async def export_lines(store: Store) -> list[str]:
    async with portable.snapshot(store) as s:
        return [portable.encode_line(r) async for r in portable.export_records(s, exported_at=T0)]


@pytest.fixture
async def source(tmp_path: Path) -> Any:
    s = Store.open(f"sqlite+aiosqlite:///{tmp_path}/source.db")
    await s.migrate()
    await fill(s)
    yield s
    await s.close()


@pytest.fixture
async def target(tmp_path: Path) -> Any:
    s = Store.open(f"sqlite+aiosqlite:///{tmp_path}/target.db")
    yield s
    await s.close()


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages and insert batches of two rows: every keyset page boundary and batch flush is
    crossed with a handful of rows."""
    monkeypatch.setattr(portable, "CHUNK", 2)


# -- the round trip ---------------------------------------------------------------------------


@pytest.mark.usefixtures("small_chunks")
async def test_round_trip_keeps_every_row_of_every_carried_table(source: Store, store: Store) -> None:
    # `store` is a new, migrated store: SQLite, and PostgreSQL when TASKBRIDGE_TEST_PG_URL is set.
    lines = await export_lines(source)
    header = json.loads(lines[0])
    assert header == {
        "format": "taskbridge-state",
        "version": 1,
        "revision": portable.schema_head(),
        "exported_at": T0.isoformat(),
        "counts": {"task": 5, "link": 8, "comment": 2, "comment_link": 3, "watermark": 3, "conflict": 2},
    }
    assert len(lines) == 1 + sum(header["counts"].values())
    counts = await portable.import_records(store, lines)
    assert counts == header["counts"]

    for name, where in CARRIED:
        before, after = await rows(source, name, where), await rows(store, name, where)
        assert after == before, name
        assert before, name  # the fill really put rows there
    priorities = [r["priority"] for r in await rows(store, "tasks")]
    assert priorities == ["none", "low", "high", "urgent", "medium"]  # rebuilt from data
    for name in LEFT_BEHIND:
        assert await rows(store, name) == [], name
    async with store.read() as s:
        keys = list(await s.scalars(select(MetaRow.key)))
        resolved = await s.scalar(select(func.count()).where(ConflictRow.state == "resolved"))
    assert not [k for k in keys if k.startswith("webhook_secrets")]
    assert resolved == 0


async def test_new_rows_after_an_import_take_new_ids(source: Store, store: Store) -> None:
    # PostgreSQL's sequences do not move for ids inserted with their values: import moves them.
    await portable.import_records(store, await export_lines(source))
    async with store.transaction() as s:
        conflict = ConflictRow(task_id=IDS[0], route="main", field="due_date", candidates={}, created_at=T0)
        link = LinkRow(
            task_id=IDS[4],
            route="side",
            connector="runs",
            scope="x",
            remote_id="new",
            created_at=T0,
            updated_at=T0,
        )
        comment_link = CommentLinkRow(
            comment_id="01JCOMMENT0000000000000002", connector="vortask", remote_id="c-9", created_at=T0
        )
        s.add_all([conflict, link, comment_link])
    assert conflict.id > 3 and link.id > 8 and comment_link.id > 3


async def test_the_imported_index_answers_filters(source: Store, target: Store) -> None:
    await portable.import_records(target, await export_lines(source))
    async with target.read() as s:
        tagged = set(await s.scalars(select(TaskTagRow.task_id).where(TaskTagRow.tag == "ops")))
        bobs = set(await s.scalars(select(TaskAssigneeRow.task_id).where(TaskAssigneeRow.assignee == "bob")))
        urgent = set(await s.scalars(select(TaskRow.id).where(TaskRow.priority == "urgent")))
    assert tagged == {IDS[0], IDS[1], IDS[2], IDS[4]}
    assert bobs == {IDS[2]}
    assert urgent == {IDS[3]}


async def test_no_secret_and_no_queue_is_written(source: Store) -> None:
    text = "\n".join(await export_lines(source))
    assert SECRET not in text and "webhook_secrets" not in text
    assert "old-host" not in text  # the lease
    kinds = {json.loads(line).get("kind") for line in text.splitlines()[1:]}
    assert kinds == {"task", "link", "comment", "comment_link", "watermark", "conflict"}


async def test_export_warns_about_writes_it_cannot_carry(source: Store, tmp_path: Path) -> None:
    async with source.transaction() as s:
        s.add(
            LeaseRow(
                name="poll:runs",
                holder="host-a:8080",
                expires_at=datetime.now(UTC) + timedelta(minutes=1),
                acquired_at=T0,
            )
        )
    await source.close()  # export_store opens the store itself
    out = tmp_path / "state.jsonl"
    warnings: list[str] = []
    with out.open("w") as f:
        counts = await portable.export_store(str(source.url), f, warnings.append)
    assert counts["task"] == 5
    assert len(out.read_text().splitlines()) == 1 + sum(counts.values())
    assert len(warnings) == 3
    assert "2 writes to platforms still pending or claimed" in warnings[0]
    assert "1 parked write (dead letters)" in warnings[1]
    assert "a daemon seems to run on this store (leases held by host-a:8080)" in warnings[2]


@pytest.mark.usefixtures("small_chunks")
async def test_the_export_is_one_snapshot(store: Store) -> None:
    # A write committed while the export is half-way through is not in it, nor in its counts.
    await fill(store)
    async with portable.snapshot(store) as session:
        records = portable.export_records(session)
        first = [await anext(records) for _ in range(3)]  # the header and two tasks: one page read
        async with store.transaction() as s:
            s.add(
                TaskRow(
                    id="01JTASKLATE000000000000000",
                    route="main",
                    data={"title": "late"},
                    title="late",
                    created_at=T0,
                    updated_at=T0,
                )
            )
        rest = [r async for r in records]
    ids = [r["id"] for r in first[1:] + rest if r["kind"] == "task"]
    assert ids == IDS and first[0]["counts"]["task"] == 5


# -- refusals: nothing imported ----------------------------------------------------------------


async def refused(target: Store, lines: Sequence[str | bytes]) -> portable.PortableError:
    with pytest.raises(portable.PortableError) as caught:
        await portable.import_records(target, lines)
    async with target.read() as s:
        for table in portable.TARGETS:
            assert await s.scalar(select(func.count()).select_from(table)) == 0, table.name
    return caught.value


def edited(lines: list[str], index: int, **changes: Any) -> list[str]:
    record = json.loads(lines[index])
    record.update(changes)
    return [*lines[:index], json.dumps(record), *lines[index + 1 :]]


@pytest.mark.usefixtures("small_chunks")
async def test_a_bad_header_is_refused(source: Store, target: Store) -> None:
    lines = await export_lines(source)
    assert "line 1: not JSON" in str(await refused(target, ["{oops", *lines[1:]]))
    assert "not a taskbridge export" in str(await refused(target, edited(lines, 0, format="other")))
    assert "format version 2" in str(await refused(target, edited(lines, 0, version=2)))
    error = str(await refused(target, edited(lines, 0, revision="0001")))
    assert "schema revision '0001'" in error and "import with the taskbridge version" in error
    assert "counts" in str(await refused(target, edited(lines, 0, counts={"task": 5})))
    assert "empty" in str(await refused(target, []))
    assert "empty" in str(await refused(target, ["", "  \n"]))


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize(
    ("index", "changes", "expected"),
    [
        (3, {"kind": "gadget"}, "kind 'gadget' is none of task, link"),
        (3, {"created_at": "2026-11-22T12:00:00"}, "task: created_at: a time without a UTC offset"),
        (3, {"created_at": "yesterday"}, "task: created_at: not an ISO 8601 time"),
        (3, {"version": "1"}, "task: version: not an integer"),
        (3, {"version": True}, "task: version: not an integer"),
        (3, {"data": ["a"]}, "task: data: not a JSON object"),
        (3, {"id": "x" * 27}, "task: id: longer than 26 characters"),
        (3, {"extra": 1}, "task: unknown field 'extra'"),
        (7, {"state": "lost"}, "link: state: 'lost' is not one of active, creating, gone, unlinked"),
        (7, {"is_mirror": "yes"}, "link: is_mirror: not true or false"),
        (7, {"inflight": ["a"]}, "link: inflight: not a JSON object"),
        (7, {"inflight": "a"}, "link: inflight: not a JSON object"),
        # What only the store can tell: the line is still named.
        (7, {"task_id": "01JNOSUCHTASK0000000000000"}, "(task_id -> tasks: a row earlier in the file)"),
        (4, {"id": IDS[0]}, "task: the store refused it"),
        (11, {"remote_id": "41"}, "link: the store refused it"),  # a second (vortask, 41)
    ],
)
async def test_a_bad_line_is_named_and_nothing_is_imported(
    source: Store, target: Store, index: int, changes: dict[str, Any], expected: str
) -> None:
    lines = await export_lines(source)
    error = await refused(target, edited(lines, index, **changes))
    assert isinstance(error, portable.BadLine) and error.line == index + 1
    assert str(error).startswith(f"line {index + 1}: ") and expected in str(error), str(error)


async def test_a_missing_field_and_a_line_that_is_not_json(source: Store, target: Store) -> None:
    lines = await export_lines(source)
    record = json.loads(lines[2])
    del record["field_times"]
    error = await refused(target, [*lines[:2], json.dumps(record), *lines[3:]])
    assert str(error) == "line 3: task: missing field_times"
    error = await refused(target, [*lines[:5], '{"kind": "task", ', *lines[6:]])
    assert str(error).startswith("line 6: not JSON")
    error = await refused(target, [*lines[:5], b"\xff\xfe", *lines[6:]])  # not text
    assert str(error).startswith("line 6: not JSON")
    error = await refused(target, [*lines[:5], "[1, 2]", *lines[6:]])
    assert str(error) == "line 6: not a JSON object"


async def test_a_file_cut_short_is_refused(source: Store, target: Store) -> None:
    lines = await export_lines(source)
    error = await refused(target, lines[:-1])
    assert "line 1: the header counts" in str(error) and "cut short" in str(error)


async def test_a_store_that_is_not_empty_is_refused(source: Store, target: Store) -> None:
    lines = await export_lines(source)
    await portable.import_records(target, lines)
    with pytest.raises(portable.PortableError, match=r"is not empty \(5 rows in tasks, .*new, empty store"):
        await portable.import_records(target, lines)
    async with target.read() as s:
        assert await s.scalar(select(func.count()).select_from(TaskRow)) == 5  # untouched


async def test_an_export_of_another_schema_revision_is_refused(source: Store) -> None:
    async with source.transaction() as s:
        await s.execute(text("UPDATE alembic_version SET version_num = '0005'"))
    with pytest.raises(portable.PortableError, match="revision 0005"):
        await export_lines(source)


# -- the command line --------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in [n for n in os.environ if n.startswith("TASKBRIDGE_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "old.yaml"
    path.write_text(f"store:\n  url: sqlite+aiosqlite:///{tmp_path}/old.db\n")
    yield path


def new_config(tmp_path: Path) -> Path:
    path = tmp_path / "new.yaml"
    path.write_text(f"store:\n  url: sqlite+aiosqlite:///{tmp_path}/new.db\n")
    return path


def filled(url: str) -> None:
    async def run() -> None:
        store = Store.open(url)
        await store.migrate()
        await fill(store)
        async with store.transaction() as s:  # a drained outbox: no warning
            await s.execute(delete(OutboxRow))
        await store.close()

    asyncio.run(run())


def test_cli_export_then_import(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    filled(f"sqlite+aiosqlite:///{tmp_path}/old.db")
    assert main(["store", "export", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert err == (
        f"exported 5 tasks, 8 links, 2 comments, 3 comment links, 3 watermarks, 2 conflicts from "
        f"sqlite+aiosqlite:///{tmp_path}/old.db\n"
    )
    state = tmp_path / "state.jsonl"
    state.write_text(out)
    assert main(["store", "import", "--config", str(new_config(tmp_path)), str(state)]) == 0
    assert capsys.readouterr().err.startswith("imported 5 tasks, 8 links, 2 comments")

    # Again into the same store: refused, exit 2, one line, no traceback.
    assert main(["store", "import", "--config", str(new_config(tmp_path)), str(state)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("store import: the store at sqlite") and "not empty" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_user_errors_exit_2(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["store", "export", "--config", str(config)]) == 2
    assert capsys.readouterr().err == f"store export: no store at {tmp_path}/old.db\n"
    assert not (tmp_path / "old.db").exists()  # export creates nothing

    target = new_config(tmp_path)
    assert main(["store", "import", "--config", str(target), str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "taskbridge-state", "version": 1}\n')
    assert main(["store", "import", "--config", str(target), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("store import: line 1: exported at schema revision None") and err.count("\n") == 1
