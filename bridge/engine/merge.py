"""The three-way merge of one observation, as pure functions (no I/O), so it can be tested alone.

For a side S that reports values V (already mapped to canonical), with `base` the values S last
agreed with us (as they round-trip through S's mapping) and `canonical` the bridge's values:

- a field where V == base did not change on S: nothing to do (this is how echoes die);
- a field where V equals what S would show for the canonical value: S caught up, no change;
- a field where canonical still is what S last agreed (through S's round trip): take V;
- otherwise both sides moved: sets merge by additions and removals, other fields are settled by
  the route's policy (`newest`, `prefer`, or `manual`, which keeps the canonical value and holds
  the field for a person).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bridge.model import SET_FIELDS, Values


@dataclass(frozen=True)
class Conflict:
    field: str
    canonical: Any
    remote: Any


@dataclass
class MergeResult:
    changes: Values = field(default_factory=dict)  # canonical field -> new value
    conflicts: list[Conflict] = field(default_factory=list)  # held for a person (manual)
    overruled: set[str] = field(default_factory=set)  # S's change lost to policy: S gets rewritten


def merge(
    observed: Mapping[str, Any],
    base: Mapping[str, Any],
    canonical: Mapping[str, Any],
    *,
    roundtrip: Callable[[str, Any], Any],
    policy: str,
    side_is_preferred: bool,
    side_updated_at: datetime | None,
    canonical_updated_at: Callable[[str], datetime | None],
    side_field_times: Mapping[str, datetime] | None = None,
) -> MergeResult:
    """Decide what an observation of side S changes. `roundtrip(field, value)` is S's;
    `canonical_updated_at(field)` is when the canonical value of that field last changed;
    `side_field_times`, where S dates its fields, when each last changed there (a field it
    leaves out is dated by `side_updated_at`, the time of S's latest change of any field)."""
    result = MergeResult()
    for name, value in observed.items():
        if name in base and base[name] == value:
            continue
        current = canonical.get(name)
        as_side_sees_it = roundtrip(name, current) if name in canonical else None
        if name in canonical and as_side_sees_it == value:
            continue  # S now shows what we hold: our write landed, or both made the same edit
        if name not in base or name not in canonical or as_side_sees_it == base[name]:
            result.changes[name] = value
            continue
        # Both moved since they last agreed.
        if name in SET_FIELDS:
            added = set(value) - set(base[name])
            removed = set(base[name]) - set(value)
            merged = frozenset((set(current) | added) - removed)
            if merged != current:
                result.changes[name] = merged
            if roundtrip(name, merged) != value:
                result.overruled.add(name)
            continue
        if policy == "manual":
            result.conflicts.append(Conflict(name, current, value))
        elif _side_wins(
            policy,
            side_is_preferred,
            (side_field_times or {}).get(name, side_updated_at),
            canonical_updated_at(name),
        ):
            result.changes[name] = value
        else:
            result.overruled.add(name)
    return result


def _side_wins(
    policy: str,
    side_is_preferred: bool,
    side_updated_at: datetime | None,
    canonical_updated_at: datetime | None,
) -> bool:
    if policy == "prefer":
        return side_is_preferred
    # newest: the later edit wins; an observation without a time can't prove it is newer.
    if side_updated_at is None:
        return False
    return canonical_updated_at is None or side_updated_at >= canonical_updated_at


def contested(
    observed: Mapping[str, Any],
    base: Mapping[str, Any],
    canonical: Mapping[str, Any],
    *,
    roundtrip: Callable[[str, Any], Any],
) -> set[str]:
    """The fields side S and the bridge both changed since they last agreed (sets aside, which
    merge by additions and removals): those `newest` decides by when each side made its change,
    and `manual` holds for a person. `merge`'s own judgement, so the two never disagree."""
    held = merge(
        observed,
        base,
        canonical,
        roundtrip=roundtrip,
        policy="manual",
        side_is_preferred=False,
        side_updated_at=None,
        canonical_updated_at=lambda _name: None,
    )
    return {c.field for c in held.conflicts}
