"""Mappings: every platform's default loads, round-trips are stable (property-tested), and every
kind of incomplete mapping is refused with a message naming the value."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import connectors
from bridge import mapping
from bridge.model import Priority, Status

PLATFORM_MAPS = [(p, s) for p in connectors.PLATFORMS for s in mapping.load(p).sections]


@pytest.mark.parametrize(("platform", "section"), PLATFORM_MAPS)
@given(data=st.data())
def test_roundtrip_is_stable(platform: str, section: str, data: st.DataObject) -> None:
    fmap = mapping.load(platform).sections[section]
    value = data.draw(st.sampled_from(list(mapping.VOCABULARY[section])))
    back = fmap.roundtrip(value)
    # A value either survives the trip or is declared lossy; and what comes back survives a second
    # trip unchanged, which is what keeps lossy mappings from flapping.
    assert back == value or value in fmap.lossy
    assert fmap.roundtrip(back) == back


@pytest.mark.parametrize(("platform", "section"), PLATFORM_MAPS)
@given(data=st.data())
def test_every_platform_value_reads_and_rewrites_to_itself_or_an_equal(
    platform: str, section: str, data: st.DataObject
) -> None:
    fmap = mapping.load(platform).sections[section]
    remote = data.draw(st.sampled_from(list(fmap.read)))
    canonical = fmap.to_canonical(remote)
    # Writing what we read gives a platform value that means the same thing.
    assert fmap.to_canonical(fmap.to_remote(canonical)) == canonical


def test_lossy_declarations_match_the_design() -> None:
    vortask = mapping.load("vortask")
    assert vortask.priority is not None and vortask.status is not None
    assert vortask.priority.to_remote(Priority.URGENT) == "High"
    assert vortask.priority.roundtrip(Priority.URGENT) == Priority.HIGH
    assert vortask.status.roundtrip(Status.CANCELLED) == Status.DONE
    kanban = mapping.load("agentkanban")
    assert kanban.priority is not None and kanban.priority.to_remote("urgent") == 4


def test_unknown_remote_value_is_a_clear_error() -> None:
    kanban = mapping.load("agentkanban")
    assert kanban.status is not None
    with pytest.raises(mapping.UnmappedValue, match=r"agentkanban: status value 'QA' has no mapping"):
        kanban.status.to_canonical("QA")


def test_override_merges_and_is_checked() -> None:
    m = mapping.load("agentkanban", {"status": {"read": {"QA": "in_progress"}}})
    assert m.status is not None and m.status.to_canonical("QA") == Status.IN_PROGRESS
    assert m.status.to_canonical("Done") == Status.DONE  # the defaults are still there


def test_options_merge() -> None:
    assert mapping.load("runs", {"options": {"start_run_on": []}}).options["start_run_on"] == []
    assert mapping.load("runs").options["start_run_on"] == ["in_progress"]


@pytest.mark.parametrize(
    ("override", "vocabulary", "message"),
    [
        (
            {"status": {"read": {"New": "nope"}}},
            None,
            "mappings/vortask.yaml with the connector's mapping override: status.read['New']: 'nope' is not a canonical status",
        ),
        (
            {"priority": {"write": {"urgent": "Critical"}}},
            None,
            "priority.write['urgent']: writes 'Critical', which has no entry in priority.read",
        ),
        (
            {"priority": {"lossy": []}},
            None,
            "priority: canonical 'none' is written as 'Medium', which reads back as 'medium'; declare it in priority.lossy",
        ),
        (
            {"status": {"lossy": ["cancelled", "todo"]}},
            None,
            "status.lossy: 'todo' round-trips unchanged; it is not lossy",
        ),
        (
            None,
            {"status": ["New", "Active", "Blocked", "Closed", "Archived"]},
            "status.read: platform value 'Archived' is unmapped",
        ),
    ],
)
def test_bad_mappings_are_refused_naming_the_value(
    override: dict[str, object] | None, vocabulary: dict[str, list[str]] | None, message: str
) -> None:
    with pytest.raises(mapping.MappingError) as info:
        mapping.load("vortask", override, vocabulary)
    assert message in str(info.value)


def test_missing_canonical_value_is_refused(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (
        "platform: vortask\nstatus:\n  read: {New: todo, Closed: done}\n  write: {todo: New, done: Closed}\n"
    )
    monkeypatch.setattr(mapping, "_yaml_text", lambda platform: text)
    with pytest.raises(
        mapping.MappingError, match=r"status.write: canonical value 'in_progress' is unmapped"
    ):
        mapping.load("vortask")


def test_chained_loss_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (
        "platform: vortask\npriority:\n  read: {A: low, B: medium}\n"
        "  write: {none: A, low: B, medium: B, high: B, urgent: B}\n  lossy: [none, low, high, urgent]\n"
    )
    monkeypatch.setattr(mapping, "_yaml_text", lambda platform: text)
    with pytest.raises(
        mapping.MappingError, match=r"canonical 'none' reads back as 'low', which is itself lossy"
    ):
        mapping.load("vortask")
