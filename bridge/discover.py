"""Finding scope ids and people: `taskbridge scopes`, `taskbridge people`, and the scopes
`check --connect` shows when a route's scope is not found.

Everything goes through the Connector protocol (`list_scopes`, `list_people`, `check`); no
platform is named here. What each platform can list, and what it cannot, is in its connector's
module docstring.

Scopes: each connector's `list_scopes()`, plus every scope the config's routes name for it that
the listing lacks, probed with `check(scope)` (a platform that lists nothing, or lists only part
of what a credential reaches, still shows whether the configured scope is readable).

People (`propose`, pure): the people each connector that syncs assignees can see (`list_people`,
in each scope the routes name for it, else wherever it reaches) are matched across connectors:
1. by email, case-insensitively: one email is one person;
2. a person shown without an email joins the email group whose names include theirs
   (normalised: accents, case, punctuation and spacing ignored), or the other email-less people
   of that name. Never by a first name or a surname alone: "Bob Okafor" and "Ben Okafor" differ.
Not matched, and reported instead:
- ambiguous: a name that fits several email groups; one connector showing several people of one
  email or one name (which of them is it?); and people of one name with different emails (maybe
  one person with two addresses: decide by hand);
- matched nowhere: people seen on one connector only (they need no `people:` entry until they
  appear elsewhere), and people shown with neither a name nor an email.
A proposed person's key is the config's own key when an existing entry already holds one of its
ids, else a slug of the name (made unique). The block is YAML to paste under the config's root.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from connectors.base import AuthFailed, Connector, ConnectorError, PersonInfo, Retryable, ScopeInfo

if TYPE_CHECKING:
    from bridge.config import Config

HINT_MAX_SCOPES = 20  # `check --connect`: at most this many scopes, one line each

# -- scopes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScopeRow:
    """One scope of a connector: listed by the platform and/or named by routes of the config.
    `probe` is what `check(scope)` said of a configured scope the listing lacks; `problem` is set
    when that check failed."""

    scope: ScopeInfo
    listed: bool
    routes: tuple[str, ...] = ()
    probe: str | None = None
    problem: str | None = None


@dataclass
class ConnectorScopes:
    connector: str
    platform: str
    rows: list[ScopeRow] = field(default_factory=list)
    error: str | None = None  # the listing itself failed (auth, platform down)

    @property
    def failed(self) -> bool:
        return self.error is not None or any(r.problem for r in self.rows)


def describe_error(exc: BaseException) -> str:
    """One line for a failure: a ConnectorError's status and message, else the exception's type
    and text (never a traceback)."""
    if isinstance(exc, ConnectorError):
        code = f"HTTP {exc.status}: " if exc.status else ""
        return " ".join(f"{code}{exc.message}".split())
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def configured_scopes(cfg: Config, connector: str) -> dict[str, tuple[str, ...]]:
    """The scopes the config's routes name for `connector`, each with the routes naming it."""
    out: dict[str, list[str]] = {}
    for route in cfg.routes:
        for member in route.members:
            if member.connector == connector:
                out.setdefault(member.scope, []).append(route.name)
    return {scope: tuple(dict.fromkeys(names)) for scope, names in out.items()}


def _same_scope(a: str, b: str) -> bool:
    return a == b or a.casefold() == b.casefold()


async def connector_scopes(
    name: str, platform: str, conn: Connector, configured: Mapping[str, tuple[str, ...]]
) -> ConnectorScopes:
    out = ConnectorScopes(name, platform)
    try:
        listed = await conn.list_scopes()
    except Exception as exc:  # one line per connector, whatever went wrong
        out.error = describe_error(exc)
        return out
    for info in listed:
        routes = next((r for s, r in configured.items() if _same_scope(s, info.id)), ())
        out.rows.append(ScopeRow(info, listed=True, routes=routes))
    for scope, routes in configured.items():
        if any(_same_scope(scope, info.id) for info in listed):
            continue
        try:
            summary = await conn.check(scope)
        except Exception as exc:
            out.rows.append(ScopeRow(ScopeInfo(scope, ""), False, routes, problem=describe_error(exc)))
        else:
            out.rows.append(ScopeRow(ScopeInfo(scope, ""), False, routes, probe=" ".join(summary.split())))
    return out


async def scopes(
    cfg: Config, only: str | None = None, *, conns: Mapping[str, Connector] | None = None
) -> list[ConnectorScopes]:
    """Per connector (or only `only`), the scopes its credential reaches. Connectors are asked
    concurrently; one failing is reported in its `error`, the others still answer."""
    names = [n for n in cfg.connectors if only is None or n == only]
    async with _connectors(cfg, conns) as built:
        return list(
            await asyncio.gather(
                *(
                    connector_scopes(n, cfg.connectors[n].platform, built[n], configured_scopes(cfg, n))
                    for n in names
                )
            )
        )


def _note(row: ScopeRow) -> str:
    parts = [f"{k}={v}" for k, v in row.scope.extra.items()]
    if row.scope.url:
        parts.append(row.scope.url)
    if row.routes:
        parts.append(f"route {', '.join(row.routes)}")
    if not row.listed:
        parts.append("not listed by the platform")
        parts.append(f"check FAILED: {row.problem}" if row.problem else f"check ok: {row.probe}")
    return "; ".join(parts)


def render_scopes(results: Sequence[ConnectorScopes]) -> str:
    """A plain table (connector, scope id, name, note), one row per scope; a connector that
    failed is one row with its error."""
    rows = [("CONNECTOR", "SCOPE", "NAME", "NOTE")]
    for r in results:
        if r.error is not None:
            rows.append((r.connector, "-", "-", f"FAILED: {r.error}"))
        elif not r.rows:
            rows.append((r.connector, "-", "-", "no scope listed, none configured"))
        for row in r.rows:
            rows.append((r.connector, row.scope.id, row.scope.name or "?", _note(row)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)), row[3]]).rstrip()
        for row in rows
    )


def scopes_json(results: Sequence[ConnectorScopes]) -> list[dict[str, Any]]:
    return [
        {
            "connector": r.connector,
            "platform": r.platform,
            "error": r.error,
            "scopes": [
                {
                    "id": row.scope.id,
                    "name": row.scope.name or None,
                    "url": row.scope.url,
                    "extra": dict(row.scope.extra),
                    "listed": row.listed,
                    "routes": list(row.routes),
                    "check": None
                    if row.listed
                    else {"ok": row.problem is None, "detail": row.problem or row.probe},
                }
                for row in r.rows
            ],
        }
        for r in results
    ]


async def scope_hint(conn: Connector, scope: str, exc: BaseException) -> list[str]:
    """For `check --connect`: when checking `scope` failed and the scope is not among those the
    credential reaches, those scopes, one line each (at most HINT_MAX_SCOPES). Nothing when the
    failure is the credential's or the platform's (auth, 5xx, timeout), when the scope is listed
    (the failure is about something else), or when the platform lists none."""
    if isinstance(exc, (AuthFailed, Retryable)):
        return []
    try:
        listed = await conn.list_scopes()
    except Exception:
        return []
    if not listed or any(_same_scope(scope, s.id) for s in listed):
        return []
    lines = [f"{scope!r} is not among the {len(listed)} scope(s) this credential reaches:"]
    for info in listed[:HINT_MAX_SCOPES]:
        lines.append(f"  {info.id}  {info.name}" if info.name and info.name != info.id else f"  {info.id}")
    if len(listed) > HINT_MAX_SCOPES:
        lines.append(f"  ... and {len(listed) - HINT_MAX_SCOPES} more (taskbridge scopes)")
    return lines


# -- people -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """A person as one connector shows them."""

    connector: str
    person: PersonInfo

    def label(self) -> str:
        who = self.person.name or "(no name)"
        email = f" <{self.person.email}>" if self.person.email else ""
        return f"{self.connector}: {who}{email} [{self.person.remote_id}]"

    def as_json(self) -> dict[str, Any]:
        return {
            "connector": self.connector,
            "id": self.person.remote_id,
            "name": self.person.name,
            "email": self.person.email,
        }


@dataclass(frozen=True)
class Ambiguous:
    reason: str
    candidates: tuple[Seen, ...]


@dataclass
class Proposal:
    """What `people` found: `people` is the proposed block (key -> name, email, ids)."""

    people: dict[str, dict[str, Any]] = field(default_factory=dict)
    unmatched: list[Seen] = field(default_factory=list)
    ambiguous: list[Ambiguous] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # connector -> why it was not asked
    errors: dict[str, str] = field(default_factory=dict)  # connector -> its failure, one line
    kept_keys: list[str] = field(default_factory=list)  # the config's keys reused for who they hold


def normalise_name(name: str | None) -> str:
    """Accents, case, punctuation and spacing ignored: "  José  O'Neil" -> "jose oneil"."""
    if not name:
        return ""
    text = unicodedata.normalize("NFKD", name)
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    text = re.sub(r"[^\w\s]", "", text)
    return " ".join(text.split())


def _email(person: PersonInfo) -> str:
    return (person.email or "").strip().casefold()


def slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.casefold()).strip("-") or "person"


def _best_name(group: Sequence[Seen]) -> str | None:
    """The fullest name shown for a person: most words, then longest, then first seen."""
    names = [s.person.name.strip() for s in group if s.person.name and s.person.name.strip()]
    return max(names, key=lambda n: (len(n.split()), len(n)), default=None)


def propose(
    seen: Mapping[str, Sequence[PersonInfo]],
    existing: Mapping[str, Mapping[str, str]] | None = None,
    *,
    order: Sequence[str] | None = None,
) -> Proposal:
    """Match the people each connector shows (`seen`: connector -> its people) into a proposed
    `people:` block. `existing` is the config's block (key -> {connector: remote id}), whose keys
    are kept for the people it already holds; `order` the connectors' order in the ids."""
    result = Proposal()
    rank = {name: i for i, name in enumerate(order or list(seen))}
    entries = [Seen(c, p) for c, found in seen.items() for p in found]

    # 1. email groups
    by_email: dict[str, list[Seen]] = {}
    rest: list[Seen] = []
    for s in entries:
        (by_email.setdefault(_email(s.person), []) if _email(s.person) else rest).append(s)
    email_names = {e: {normalise_name(s.person.name) for s in g} - {""} for e, g in by_email.items()}

    # 2. the email-less join by name
    by_name: dict[str, list[Seen]] = {}
    for s in rest:
        key = normalise_name(s.person.name)
        if not key:
            result.unmatched.append(s)
            continue
        fits = [e for e, names in email_names.items() if key in names]
        if len(fits) > 1:
            candidates = (s, *(x for e in fits for x in by_email[e]))
            result.ambiguous.append(
                Ambiguous(f"{s.person.name!r} fits {len(fits)} people with different emails", candidates)
            )
        elif fits:
            by_email[fits[0]].append(s)
        else:
            by_name.setdefault(key, []).append(s)

    # 3. people of one name with different emails: kept apart (an email is one person), but said
    emails_of_name: dict[str, list[str]] = {}
    for e, names in email_names.items():
        for n in sorted(names):
            emails_of_name.setdefault(n, []).append(e)
    for n, emails in emails_of_name.items():
        if len(emails) > 1:
            candidates = tuple(x for e in emails for x in by_email[e])
            result.ambiguous.append(
                Ambiguous(f"one name, {len(emails)} emails ({n!r}): kept apart", candidates)
            )

    # 4. groups: a connector showing several people of one group leaves them out of it
    proposed: list[list[Seen]] = []
    for group in [*by_email.values(), *by_name.values()]:
        per_connector: dict[str, list[Seen]] = {}
        for s in group:
            per_connector.setdefault(s.connector, []).append(s)
        clear: list[Seen] = []
        for c, ss in per_connector.items():
            if len({x.person.remote_id for x in ss}) == 1:
                clear.append(ss[0])
                continue
            first = ss[0].person
            what = f"the email {first.email}" if _email(first) else f"the name {first.name!r}"
            result.ambiguous.append(Ambiguous(f"{c} shows {len(ss)} people with {what}", tuple(ss)))
        if len(clear) < 2:
            result.unmatched.extend(clear)
        else:
            proposed.append(sorted(clear, key=lambda s: rank.get(s.connector, len(rank))))

    # 5. keys: the config's own where it holds one of the ids (once), else a unique slug
    existing = existing or {}
    keys: list[str | None] = []
    for group in proposed:
        key = _existing_key(group, existing)
        keys.append(key if key not in keys else None)
    taken = set(existing) | {k for k in keys if k}
    for key, group in zip(keys, proposed, strict=True):
        name = _best_name(group)
        email = next((s.person.email.strip() for s in group if s.person.email), None)
        if key is None:
            base = slug(name or (email or "").split("@")[0])
            key, n = base, 1
            while key in taken:
                n += 1
                key = f"{base}-{n}"
            taken.add(key)
        else:
            result.kept_keys.append(key)
        entry: dict[str, Any] = {"name": name or key}
        if email:
            entry["email"] = email
        entry["ids"] = {s.connector: s.person.remote_id for s in group}
        result.people[key] = entry
    result.people = dict(sorted(result.people.items()))
    result.unmatched.sort(key=lambda s: (rank.get(s.connector, len(rank)), (s.person.name or "").casefold()))
    return result


def _existing_key(group: Iterable[Seen], existing: Mapping[str, Mapping[str, str]]) -> str | None:
    """The config's key for this person: the one entry holding one of the group's ids (none when
    no entry does, or several do)."""
    keys = {
        key
        for key, ids in existing.items()
        for s in group
        if str(ids.get(s.connector, "")).casefold() == s.person.remote_id.casefold()
    }
    return next(iter(keys)) if len(keys) == 1 else None


def assigns_people(conn: Connector) -> bool:
    """Whether `people:` matters for this connector: it syncs assignees."""
    return "assignees" in conn.capabilities.fields


async def _connector_people(conn: Connector, scopes: Sequence[str]) -> list[PersonInfo]:
    found: dict[str, PersonInfo] = {}
    for scope in scopes or [None]:
        for p in await conn.list_people(scope):
            found.setdefault(p.remote_id, p)
    return list(found.values())


async def people(cfg: Config, *, conns: Mapping[str, Connector] | None = None) -> Proposal:
    """Ask every connector that syncs assignees for the people it sees (in the scopes the routes
    name for it, else everywhere), concurrently, and match them (`propose`)."""
    async with _connectors(cfg, conns) as built:
        asked = {n: c for n, c in built.items() if assigns_people(c)}
        outcomes = await asyncio.gather(
            *(_connector_people(c, list(configured_scopes(cfg, n))) for n, c in asked.items()),
            return_exceptions=True,
        )
    seen: dict[str, list[PersonInfo]] = {}
    errors: dict[str, str] = {}
    for name, outcome in zip(asked, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Exception):
                raise outcome  # KeyboardInterrupt and the like
            errors[name] = describe_error(outcome)
        else:
            seen[name] = outcome
    existing = {key: dict(p.ids) for key, p in cfg.people.items()}
    result = propose(seen, existing, order=list(cfg.connectors))
    result.errors = errors
    result.skipped = {
        n: "syncs no assignees, so `people:` does not apply to it" for n in built if n not in asked
    }
    return result


def render_people_yaml(result: Proposal) -> str:
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096
    out = io.StringIO()
    count = len(result.people)
    out.write(f"# proposed by `taskbridge people`: {count} {'person' if count == 1 else 'people'} ")
    out.write("seen on two or more connectors; check before pasting\n")
    yaml.dump({"people": result.people}, out)
    return out.getvalue()


def render_people_report(result: Proposal) -> list[str]:
    """What goes to stderr: who matched nowhere, the ambiguous, the connectors not asked."""
    lines: list[str] = []
    if result.unmatched:
        lines.append(
            f"matched nowhere ({len(result.unmatched)}; seen on one connector only, not in the block):"
        )
        lines += [f"  {s.label()}" for s in result.unmatched]
    if result.ambiguous:
        lines.append(f"ambiguous ({len(result.ambiguous)}; not matched, decide by hand):")
        for a in result.ambiguous:
            lines.append(f"  {a.reason}: " + "; ".join(s.label() for s in a.candidates))
    if result.kept_keys:
        lines.append(f"kept the config's keys (they hold these people's ids): {', '.join(result.kept_keys)}")
    for name, why in result.skipped.items():
        lines.append(f"not asked: {name}: {why}")
    return lines


def people_json(result: Proposal) -> dict[str, Any]:
    return {
        "people": result.people,
        "unmatched": [s.as_json() for s in result.unmatched],
        "ambiguous": [
            {"reason": a.reason, "candidates": [s.as_json() for s in a.candidates]} for a in result.ambiguous
        ],
        "skipped": result.skipped,
        "errors": result.errors,
    }


# -- the commands -------------------------------------------------------------------------------


def run_scopes(cfg: Config, connector: str | None, *, as_json: bool, out: TextIO, err: TextIO) -> int:
    """`taskbridge scopes`: 0, or 1 when a connector (or a configured scope) failed."""
    try:
        results = asyncio.run(scopes(cfg, connector))
    except SetupFailed as exc:
        err.write(f"{exc}\n")
        return 1
    if as_json:
        out.write(json.dumps(scopes_json(results), indent=2) + "\n")
    else:
        out.write(render_scopes(results) + "\n")
    for r in results:
        if r.error is not None:
            err.write(f"{r.connector} ({r.platform}): FAILED, {r.error}\n")
        for row in r.rows:
            if row.problem:
                err.write(f"{r.connector} ({r.platform}) {row.scope.id}: FAILED, {row.problem}\n")
    return 1 if any(r.failed for r in results) else 0


def run_people(cfg: Config, *, as_json: bool, out: TextIO, err: TextIO) -> int:
    """`taskbridge people`: the block on `out`, the rest on `err`; 1 when a connector failed."""
    try:
        result = asyncio.run(people(cfg))
    except SetupFailed as exc:
        err.write(f"{exc}\n")
        return 1
    if as_json:
        out.write(json.dumps(people_json(result), indent=2) + "\n")
    else:
        out.write(render_people_yaml(result))
        for line in render_people_report(result):
            err.write(line + "\n")
    for name, message in result.errors.items():
        err.write(f"{name} ({cfg.connectors[name].platform}): FAILED, {message}\n")
    return 1 if result.errors else 0


# -- connectors ---------------------------------------------------------------------------------


class SetupFailed(Exception):
    """The connectors could not be built from the config (one line, for the commands)."""


class _connectors:
    """The config's connectors (built once, closed after), or those given (left open)."""

    def __init__(self, cfg: Config, given: Mapping[str, Connector] | None) -> None:
        self.cfg = cfg
        self.given = given
        self.built: dict[str, Connector] = {}

    async def __aenter__(self) -> Mapping[str, Connector]:
        if self.given is not None:
            return self.given
        from bridge.wiring import build_connectors

        try:
            self.built = build_connectors(self.cfg)
        except Exception as exc:  # a connector that cannot be made from the config
            raise SetupFailed(f"cannot set up the connectors: {describe_error(exc)}") from exc
        return self.built

    async def __aexit__(self, *exc: object) -> None:
        for conn in self.built.values():
            try:
                await conn.aclose()
            except Exception:  # closing must not hide what happened
                pass
