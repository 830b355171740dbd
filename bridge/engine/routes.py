"""Routes at run time: members, directions, field sets, policies, the filter and the create marker."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.config import Config, MatchKeyConfig, PreferPolicy, RouteConfig
from bridge.model import Values


@dataclass(frozen=True)
class Member:
    connector: str
    scope: str
    direction: str = "both"
    field_directions: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.connector, self.scope)

    def reads(self, name: str) -> bool:
        return self.field_directions.get(name, self.direction) in ("both", "pull")

    def writes(self, name: str) -> bool:
        return self.field_directions.get(name, self.direction) in ("both", "push")

    @property
    def reads_any(self) -> bool:
        return self.direction in ("both", "pull") or any(
            d in ("both", "pull") for d in self.field_directions.values()
        )

    @property
    def writes_any(self) -> bool:
        return self.direction in ("both", "push") or any(
            d in ("both", "push") for d in self.field_directions.values()
        )


class Marker:
    """The footer line a mirror carries in its description, e.g. "synced by taskbridge · <id>".

    It lets a retried create find the task an earlier attempt made, and lets an observation of a
    brand-new remote task recognise one of our own mirrors before its create has committed.
    """

    ID = r"[0-9A-HJKMNP-TV-Z]{26}"  # a ULID

    def __init__(self, template: str) -> None:
        self.template = template
        before, _, after = template.partition("{id}")
        self._line = re.compile(
            r"(?:^|\n)[ \t]*" + re.escape(before) + f"({self.ID})" + re.escape(after) + r"[ \t]*$"
        )

    def line(self, task_id: str) -> str:
        return self.template.replace("{id}", task_id)

    def add(self, description: str, task_id: str) -> str:
        text, _ = self.extract(description)
        text = text.rstrip()
        return f"{text}\n\n{self.line(task_id)}" if text else self.line(task_id)

    def extract(self, description: str) -> tuple[str, str | None]:
        """The description without a trailing marker line, and the task id it named (if any)."""
        match = self._line.search(description.rstrip())
        if not match:
            return description, None
        return description.rstrip()[: match.start()].rstrip(), match.group(1)


@dataclass(frozen=True)
class Route:
    name: str
    members: tuple[Member, ...]
    fields: tuple[str, ...]
    conflict: str  # newest | manual | prefer
    prefer: str | None
    on_delete: str
    initial: str
    filter: Mapping[str, Any] | None
    comments: bool
    max_delete_share: float
    marker: Marker
    match_key: MatchKeyConfig | None = None  # what matching links by before titles (matching.py)

    def member(self, connector: str, scope: str) -> Member | None:
        for m in self.members:
            if m.connector == connector and m.scope == scope:
                return m
        return None

    def others(self, member: Member) -> Iterable[Member]:
        return (m for m in self.members if m.key != member.key)

    def matches(self, values: Values) -> bool:
        """Whether a task with these canonical values belongs in the route (its filter)."""
        f = self.filter
        if not f:
            return True
        if f.get("status") and "status" in values and str(values["status"]) not in f["status"]:
            return False
        if f.get("tags_any") and "tags" in values and not set(values["tags"]) & set(f["tags_any"]):
            return False
        pattern = f.get("title_matches")
        return not (pattern and "title" in values and not re.search(pattern, values["title"]))


def build_routes(cfg: Config) -> list[Route]:
    return [_route(r) for r in cfg.routes]


def _route(r: RouteConfig) -> Route:
    prefer = r.conflict.prefer if isinstance(r.conflict, PreferPolicy) else None
    return Route(
        name=r.name,
        members=tuple(Member(m.connector, m.scope, m.direction, dict(m.fields)) for m in r.members),
        fields=tuple(r.fields),
        conflict="prefer" if prefer else str(r.conflict),
        prefer=prefer,
        on_delete=r.on_delete,
        initial=r.initial,
        filter=r.filter.model_dump(exclude_none=True) if r.filter else None,
        comments=r.comments,
        max_delete_share=r.max_delete_share,
        marker=Marker(r.marker),
        match_key=r.match_key,
    )
