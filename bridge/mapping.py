"""Status and priority maps between a platform's values and the canonical vocabulary.

Each platform has `mappings/<platform>.yaml`; a connector's `mapping:` key in the config
overrides parts of it (deep-merged per section). A section looks like:

    status:
      read:            # every platform value -> the canonical value it means
        New: todo
        Closed: done
      write:           # every canonical value -> the platform value written for it
        todo: New
        cancelled: Closed
      lossy: [cancelled]

A canonical value whose written form reads back as something else is *lossy* (`cancelled` ->
`Closed` -> `done`). Lossy values must be declared in `lossy`, so a silent loss of meaning is a
load error rather than a surprise; the engine stores the read-back value as that side's base,
which is what keeps lossy mappings from flapping.

Loading fails, naming the file, section and value, when a canonical value has no `write`, a
written value has no `read`, a known platform value has no `read`, or a lossy value is
undeclared. Dynamic vocabularies (board lanes, config items) are checked by the connector when
it sees them, through `FieldMap.to_canonical`, which raises `UnmappedValue`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Any

from ruamel.yaml import YAML

from bridge.model import Priority, Status

VOCABULARY: dict[str, type[StrEnum]] = {"status": Status, "priority": Priority}


class MappingError(Exception):
    """A mapping file or override that cannot be used."""


class UnmappedValue(MappingError):
    """A platform value seen at run time that the mapping does not cover."""

    def __init__(self, platform: str, section: str, value: Any) -> None:
        super().__init__(
            f"{platform}: {section} value {value!r} has no mapping; add it under mapping.{section}.read"
        )
        self.platform = platform
        self.section = section
        self.value = value


@dataclass(frozen=True)
class FieldMap:
    """One field's map, both ways. Values on the platform side keep their native type."""

    platform: str
    section: str
    read: Mapping[Any, StrEnum]
    write: Mapping[StrEnum, Any]
    lossy: frozenset[StrEnum] = frozenset()

    def to_canonical(self, remote: Any) -> StrEnum:
        try:
            return self.read[remote]
        except (KeyError, TypeError):
            raise UnmappedValue(self.platform, self.section, remote) from None

    def to_remote(self, canonical: StrEnum | str) -> Any:
        return self.write[VOCABULARY[self.section](canonical)]

    def roundtrip(self, canonical: StrEnum | str) -> StrEnum:
        """What this platform reads back after we write `canonical` (== canonical unless lossy)."""
        return self.read[self.to_remote(canonical)]


@dataclass(frozen=True)
class PlatformMapping:
    platform: str
    sections: Mapping[str, FieldMap] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> FieldMap | None:
        return self.sections.get("status")

    @property
    def priority(self) -> FieldMap | None:
        return self.sections.get("priority")


def _yaml_text(platform: str) -> str:
    try:
        return resources.files("mappings").joinpath(f"{platform}.yaml").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MappingError(f"no mapping file mappings/{platform}.yaml") from None


def _merge(base: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for section, value in (override or {}).items():
        if value is None:
            continue
        if section == "options":
            out["options"] = {**out.get("options", {}), **value}
            continue
        merged = dict(out.get(section) or {})
        for part in ("read", "write"):
            if value.get(part):
                merged[part] = {**(merged.get(part) or {}), **value[part]}
        if value.get("lossy") is not None:
            merged["lossy"] = list(value["lossy"])
        out[section] = merged
    return out


def load(
    platform: str,
    override: Mapping[str, Any] | None = None,
    vocabulary: Mapping[str, Iterable[Any]] | None = None,
) -> PlatformMapping:
    """The platform's default mapping with `override` merged in, checked both ways.

    `vocabulary` names the platform values known to exist per section (from the connector);
    each must be readable.
    """
    source = f"mappings/{platform}.yaml"
    raw = YAML(typ="safe").load(_yaml_text(platform)) or {}
    if raw.get("platform") != platform:
        raise MappingError(f"{source}: 'platform' must be {platform!r}")
    data = _merge({k: v for k, v in raw.items() if k != "platform"}, override)
    if override:
        source += " with the connector's mapping override"
    sections: dict[str, FieldMap] = {}
    for name, spec in data.items():
        if name == "options":
            continue
        if name not in VOCABULARY:
            raise MappingError(f"{source}: unknown section {name!r}; known: status, priority, options")
        known = list((vocabulary or {}).get(name, ()))
        sections[name] = _field_map(platform, source, name, spec or {}, known)
    return PlatformMapping(platform, sections, dict(data.get("options") or {}))


def _field_map(
    platform: str, source: str, section: str, spec: Mapping[str, Any], known: list[Any]
) -> FieldMap:
    enum = VOCABULARY[section]
    where = f"{source}: {section}"

    def canonical(value: Any, at: str) -> StrEnum:
        try:
            return enum(value)
        except ValueError:
            allowed = ", ".join(e.value for e in enum)
            raise MappingError(f"{where}.{at}: {value!r} is not a canonical {section} ({allowed})") from None

    read = {
        remote: canonical(value, f"read[{remote!r}]") for remote, value in (spec.get("read") or {}).items()
    }
    write = {canonical(c, "write"): remote for c, remote in (spec.get("write") or {}).items()}
    lossy = frozenset(canonical(c, "lossy") for c in (spec.get("lossy") or []))
    for value in enum:
        if value not in write:
            raise MappingError(f"{where}.write: canonical value {value.value!r} is unmapped")
    for value in known:
        if value not in read:
            raise MappingError(f"{where}.read: platform value {value!r} is unmapped")
    for c, remote in write.items():
        if remote not in read:
            raise MappingError(
                f"{where}.write[{c.value!r}]: writes {remote!r}, which has no entry in {section}.read"
            )
        back = read[remote]
        if back != c and c not in lossy:
            raise MappingError(
                f"{where}: canonical {c.value!r} is written as {remote!r}, which reads back as "
                f"{back.value!r}; declare it in {section}.lossy if that loss is intended"
            )
        if back != c and read[write[back]] != back:
            raise MappingError(
                f"{where}: canonical {c.value!r} reads back as {back.value!r}, which is itself lossy; "
                f"a lossy value must read back as one that round-trips"
            )
        if back == c and c in lossy:
            raise MappingError(f"{where}.lossy: {c.value!r} round-trips unchanged; it is not lossy")
    return FieldMap(platform, section, read, write, lossy)
