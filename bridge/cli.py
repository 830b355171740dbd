"""`taskbridge` (and `python -m bridge`): the operator's commands.

Every command that reads a config exits 2 with a one-screen message, no traceback, when the
config is wrong; 1 when the work itself failed; 0 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import connectors as registry
from bridge import __version__
from bridge import config as config_mod
from bridge import mapping as mapping_mod
from bridge.defaults import MAX_DEADLETTER_PAGE

if TYPE_CHECKING:
    from rich.console import Console

    from bridge.client_cli import ApiClient

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def _load_config(path: str, *, syncing: bool = False, store: bool = False) -> config_mod.Config:
    """The validated config, with each connector's mapping loaded too (mapping errors are config
    errors: they name the connector's `mapping` key). `syncing` (check, sync) also refuses a
    config with nothing to sync, `store` (run, sync, store) a SQLite store in a missing directory."""
    cfg = config_mod.load(path)
    problems = cfg.preflight(syncing=syncing, store=store)
    for name, conn in cfg.connectors.items():
        override = conn.mapping.model_dump(exclude_none=True) if conn.mapping else None
        try:
            mapping_mod.load(conn.platform, override)
        except mapping_mod.MappingError as exc:
            problems.append(cfg.problem(("connectors", name, "mapping"), str(exc)))
    # A scope the platform cannot mean (Vortask's are integers): said with its line now, not
    # by the first request (`check --connect`, or the daemon's first poll).
    for i, route in enumerate(cfg.routes):
        for j, member in enumerate(route.members):
            known = cfg.connectors.get(member.connector)
            wrong = known and registry.connector_class(known.platform).scope_problem(member.scope)
            if wrong:
                problems.append(cfg.problem(("routes", i, "members", j, "scope"), wrong))
    if problems:
        raise cfg.error(problems)
    return cfg


def cmd_version(_: argparse.Namespace) -> int:
    print(f"taskbridge {__version__}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config, syncing=True)
    # A store's directory may exist only where the daemon runs (systemd's StateDirectory=, a
    # container's volume): said here, refused by `run` and `sync`.
    for problem in cfg.preflight(syncing=False, store=True):
        _err(f"warning: {problem.render(args.config)} (`run` and `sync` refuse to start without it)")
    for problem in cfg.warnings():
        _err(f"warning: {problem.render(args.config)}")
    members = sum(len(r.members) for r in cfg.routes)
    print(
        f"{args.config}: OK ({len(cfg.connectors)} connectors, {len(cfg.routes)} routes, "
        f"{members} route members, store {_store_kind(cfg.store.url)})"
    )
    if args.connect:
        import asyncio

        return asyncio.run(_check_connections(cfg))
    return EXIT_OK


async def _check_connections(cfg: config_mod.Config) -> int:
    """Authenticate to each connector and read one page of each scope it syncs; for a scope not
    found, list the scopes the connector does reach."""
    from bridge import discover
    from bridge.wiring import build_connectors
    from connectors.base import ConnectorError

    failed = 0
    conns = build_connectors(cfg)
    try:
        for name, conn in conns.items():
            scopes = sorted({m.scope for r in cfg.routes for m in r.members if m.connector == name})
            for scope in scopes or [""]:
                try:
                    summary = await conn.check(scope) if scope else "not in any route"
                    print(f"  {name} ({cfg.connectors[name].platform}) {scope}: OK, {summary}")
                except ConnectorError as exc:
                    failed += 1
                    print(f"  {name} ({cfg.connectors[name].platform}) {scope}: FAILED, {exc}")
                    for line in await discover.scope_hint(conn, scope, exc):
                        print(f"    {line}")
    finally:
        for conn in conns.values():
            await conn.aclose()
    return EXIT_FAILED if failed else EXIT_OK


def cmd_scopes(args: argparse.Namespace) -> int:
    """`taskbridge scopes`: the scopes each connector's credential reaches (bridge/discover.py)."""
    from bridge import discover

    cfg = _load_config(args.config)
    if args.connector is not None and args.connector not in cfg.connectors:
        _err(f"no connector {args.connector!r} in {args.config}; connectors: {', '.join(cfg.connectors)}")
        return EXIT_USAGE
    return discover.run_scopes(cfg, args.connector, as_json=args.json, out=sys.stdout, err=sys.stderr)


def cmd_people(args: argparse.Namespace) -> int:
    """`taskbridge people`: a `people:` block proposed from each platform's people (bridge/discover.py)."""
    from bridge import discover

    cfg = _load_config(args.config)
    return discover.run_people(cfg, as_json=args.json, out=sys.stdout, err=sys.stderr)


def _store_kind(url: str) -> str:
    return (
        "PostgreSQL"
        if url.startswith("postgresql")
        else "SQLite"
        if url.startswith("sqlite")
        else url.split(":")[0]
    )


def _setup_logging(cfg: config_mod.Config, *, quiet: bool = False) -> None:
    from bridge.logs import setup

    setup(cfg.log.level if not quiet else "warning", cfg.log.format, secrets=cfg.connector_secrets())


def _start_failure(exc: BaseException, cfg: config_mod.Config) -> str:
    """One line for what stopped the daemon (or a sync) from starting."""
    from sqlalchemy.exc import SQLAlchemyError

    from bridge.store import redact_url

    if isinstance(exc, SQLAlchemyError):
        why = getattr(exc, "orig", None) or str(exc).split("\n")[0]
        return f"the store {redact_url(cfg.store.url)}: {' '.join(str(why).split())}"
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"  # the SQLite store's file, made before connecting
    why = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and cfg.store.url.startswith("postgresql"):
        # The port was checked and a platform's failures are ConnectorErrors: this is the store's
        # connection (refused, an unknown host, a timeout).
        return f"the store {redact_url(cfg.store.url)}: {why}"
    return why


class CommandFailed(Exception):
    """Work that failed, said in one line (its message): `main` prints it and exits 1."""


def _run_on_store(command: str, cfg: config_mod.Config, work: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(work)` for a command that opens the store: a store that cannot be opened (a
    PostgreSQL server not answering, a file that is not a database) or is lost on the way is
    one line naming it, its password masked, rather than a traceback."""
    import asyncio

    from sqlalchemy.exc import SQLAlchemyError

    from bridge.store import StoreLost

    try:
        return asyncio.run(work)
    except (OSError, SQLAlchemyError, StoreLost) as exc:
        raise CommandFailed(f"{command} could not run: {_start_failure(exc, cfg)}") from None


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from sqlalchemy.exc import SQLAlchemyError

    from bridge.store import StoreLost

    cfg = _load_config(args.config, store=True)
    busy = config_mod.listen_problem(cfg.server.host, cfg.server.port)
    if busy:
        _err(f"taskbridge could not start: {busy}")
        return EXIT_FAILED
    # Imported once the config is known good: the daemon's modules (its HTTP app, the MCP
    # server and client) take about 2 s of CPU to import, which a mistyped key need not wait.
    from bridge.daemon import Daemon
    from bridge.engine.recovery import RecoveryFailed

    _setup_logging(cfg)
    try:
        asyncio.run(Daemon(cfg, config_path=args.config).run())
    except (OSError, RecoveryFailed, SQLAlchemyError, StoreLost, RuntimeError) as exc:
        _err(f"taskbridge could not start: {_start_failure(exc, cfg)}")
        return EXIT_FAILED
    except SystemExit as exc:  # uvicorn's, when the port was taken after the check above
        if not exc.code:
            raise
        _err(f"taskbridge could not start: cannot listen on {cfg.server.listen}")
        return EXIT_FAILED
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bridge.engine.recovery import RecoveryFailed
    from bridge.planning import ApplyRefused, Reviewed, apply_plan, make_plan, render, render_applied

    if args.reviewed and not args.apply:
        _err("--reviewed goes with --apply: it names the plan the apply may not go beyond")
        return EXIT_USAGE
    reviewed: Reviewed | None = None
    if args.reviewed:
        try:
            data = json.loads(Path(args.reviewed).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            _err(f"cannot read the reviewed plan {args.reviewed}: {getattr(exc, 'strerror', None) or exc}")
            return EXIT_USAGE
        try:
            reviewed = Reviewed.parse(data)
        except ValueError as exc:
            _err(f"{args.reviewed} {exc}")
            return EXIT_USAGE
    cfg = _load_config(args.config, syncing=True, store=True)
    _setup_logging(cfg, quiet=True)
    try:
        if args.apply:
            applied = _run_on_store("plan", cfg, apply_plan(cfg, routes=args.route, reviewed=reviewed))
        else:
            plan = _run_on_store("plan", cfg, make_plan(cfg, routes=args.route))
    except ValueError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except (RecoveryFailed, ApplyRefused) as exc:
        _err(str(exc))
        return EXIT_FAILED
    if not args.apply:
        print(json.dumps(plan.as_json(), indent=2) if args.json else render(plan))
        return EXIT_FAILED if plan.errors else EXIT_OK
    print(json.dumps(applied.as_json(), indent=2) if args.json else render_applied(applied))
    failed = applied.plan.errors or applied.failed or applied.unreviewed
    return EXIT_FAILED if failed else EXIT_OK


def cmd_link(args: argparse.Namespace) -> int:
    from bridge.engine.recovery import RecoveryFailed
    from bridge.planning import link_route, render_links

    cfg = _load_config(args.config, syncing=True, store=True)
    _setup_logging(cfg, quiet=True)
    try:
        result = _run_on_store("link", cfg, link_route(cfg, args.route, dry_run=args.dry_run))
    except ValueError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except RecoveryFailed as exc:
        _err(str(exc))
        return EXIT_FAILED
    print(render_links(result, dry_run=args.dry_run))
    if result.ambiguous and not args.dry_run:
        print("(a running daemon learns the ambiguous ones at its next start or reload)")
    return EXIT_OK


def cmd_sync(args: argparse.Namespace) -> int:
    from bridge.oneshot import sync_once

    if not args.once:
        _err("sync runs one pass: use --once (the daemon is `taskbridge run`)")
        return EXIT_USAGE
    cfg = _load_config(args.config, syncing=True, store=True)
    _setup_logging(cfg, quiet=True)
    return _run_on_store("sync", cfg, sync_once(cfg, progress=not args.no_progress))


def cmd_demo(args: argparse.Namespace) -> int:
    from bridge.demo import run_demo

    return run_demo(port=args.port, seconds=args.seconds, workdir=args.dir, check=args.check)


def _api(args: argparse.Namespace) -> tuple[ApiClient, Console]:
    from rich.console import Console

    from bridge.client_cli import ApiClient, daemon_urls

    urls = [args.url] if args.url else []
    if not urls and args.config:
        # The address only (server.listen, then server.public_url): tokens are in the config as
        # hashes, so the token is --token or $TASKBRIDGE_TOKEN.
        urls = daemon_urls(config_mod.load_server(args.config))
    return ApiClient(urls or ["http://127.0.0.1:8080"], args.token), Console()


def cmd_status(args: argparse.Namespace) -> int:
    from bridge import client_cli

    api, console = _api(args)
    try:
        return client_cli.status(api, console)
    except client_cli.UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except client_cli.CliError as exc:
        _err(str(exc))
        return EXIT_FAILED


def cmd_conflicts(args: argparse.Namespace) -> int:
    from bridge import client_cli

    api, console = _api(args)
    try:
        if args.action == "list":
            return client_cli.conflicts_list(api, console, args.state)
        return client_cli.conflicts_resolve(api, console, args.id, args.choose, args.value)
    except client_cli.UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except client_cli.CliError as exc:
        _err(str(exc))
        return EXIT_FAILED


def cmd_deadletters(args: argparse.Namespace) -> int:
    """`taskbridge outbox ...` and `taskbridge inbox ...`: parked writes and failed deliveries."""
    from bridge import client_cli

    api, console = _api(args)
    try:
        if args.action == "list":
            return client_cli.deadletters_list(
                api,
                console,
                args.command,
                state=args.state,
                connector=args.connector,
                limit=args.limit,
                cursor=args.cursor,
                as_json=args.json,
            )
        if args.action == "retry":
            return client_cli.deadletters_retry(
                api, console, args.command, args.ids, every=args.all, connector=args.connector
            )
        return client_cli.deadletters_drop(api, console, args.command, args.ids)
    except client_cli.UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except client_cli.CliError as exc:
        _err(str(exc))
        return EXIT_FAILED


def cmd_store(args: argparse.Namespace) -> int:
    """`taskbridge store export|import`: the store's state as JSON Lines (bridge/store/portable.py)."""
    import asyncio

    from sqlalchemy.exc import SQLAlchemyError

    from bridge.store import portable, redact_url

    cfg = _load_config(args.config, store=True)
    url = cfg.store.url
    try:
        if args.action == "export":
            counts = asyncio.run(portable.export_store(url, sys.stdout, _err))
            _err(f"exported {portable.describe(counts)} from {redact_url(url)}")
        else:
            with portable.open_source(args.file) as source:
                counts = asyncio.run(portable.import_store(url, source))
            _err(f"imported {portable.describe(counts)} into {redact_url(url)}")
    except portable.PortableError as exc:
        _err(f"store {args.action}: {exc}")
        return EXIT_USAGE
    except (SQLAlchemyError, OSError) as exc:
        _err(f"store {args.action} failed: {' '.join(str(exc).split())}")
        return EXIT_FAILED
    return EXIT_OK


def _yaml_string(text: str) -> str:
    """`text` as a YAML scalar that reads back as exactly this string, whatever it holds (a
    colon, a #, a leading dash, `yes`, digits): JSON's double-quoted string is YAML's too. Escaped
    to ASCII only when it holds characters that are not printable (YAML reads some as breaks)."""
    return json.dumps(text, ensure_ascii=not text.isprintable())


def cmd_token_new(args: argparse.Namespace) -> int:
    if not args.name.strip():
        _err("the token's name is empty: give who or what uses it (shown in the config and the logs)")
        return EXIT_USAGE
    scopes = list(dict.fromkeys(s.strip() for s in args.scopes.split(",") if s.strip()))
    bad = [s for s in scopes if s not in ("read", "write", "admin")]
    if bad or not scopes:
        _err(f"--scopes: unknown scope {', '.join(bad) or '(none)'}; use read, write, admin")
        return EXIT_USAGE
    token = "tb_" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).hexdigest()
    print(f"token (shown once, keep it secret): {token}")
    print("add to server.tokens in the config:")
    fields = f"name: {_yaml_string(args.name)}, sha256: {_yaml_string(digest)}, scopes: [{', '.join(scopes)}]"
    print(f"  - {{{fields}}}")
    return EXIT_OK


def cmd_fake(args: argparse.Namespace) -> int:
    import connectors

    try:
        cls = connectors.fake_class(args.platform)
    except KeyError as exc:
        _err(str(exc.args[0]))
        return EXIT_USAGE
    options: dict[str, Any] = {}
    # An option for another platform's fake is refused rather than dropped: the operator meant it.
    for option, value, key, platform, why in (
        ("--role", args.role, "role", "squads", "Nucleus's roles"),
        ("--user", args.user, "users", "runs", "PostHog's per-user visibility"),
    ):
        if value and args.platform != platform:
            _err(f"{option} is for the {platform} fake ({why})")
            return EXIT_USAGE
        if value:
            options[key] = value
    try:
        fake = cls(token=args.token, seed=args.seed, **options)
    except ValueError as exc:  # a squads token without its colon, an unknown role, a bad --user
        _err(str(exc))
        return EXIT_USAGE
    # Checked before the banner, as `run` does: uvicorn would exit 3 with its own lines.
    busy = config_mod.listen_problem(args.host, args.port)
    if busy:
        _err(f"fake could not start: {busy}")
        return EXIT_FAILED
    print(f"{args.platform} fake on http://{args.host}:{args.port} (token {'set' if args.token else 'none'})")
    try:
        fake.serve_forever(args.port, args.host)
    except SystemExit as exc:  # uvicorn's, when the port was taken after the check above
        if not exc.code:
            raise
        _err(f"fake could not start: cannot listen on {args.host}:{args.port}")
        return EXIT_FAILED
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from pathlib import Path

    example = Path(__file__).resolve().parent / "config.example.yaml"
    parser = argparse.ArgumentParser(
        prog="taskbridge",
        description="Two-way sync of tasks across platforms (Impactly, Vortask, AgentKanban, PostHog "
        "Tasks, Nucleus), with a unified API. `taskbridge COMMAND --help` describes a command. The "
        "operator's guide (commands, configuration, running in production) is the README of the "
        "project's source, also the long description in this package's metadata; every config key is "
        f"documented in the example config installed with it: {example}. Exit codes: 0 success, 1 "
        "the work failed (a platform, the store, a port in use), 2 bad configuration or usage.",
    )
    parser.add_argument("--version", action="version", version=f"taskbridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=fn)
        return p

    add("version", cmd_version, "print the version")

    p = add("check", cmd_check, "validate a config file: every error names the key and line")
    p.add_argument("--config", "-c", required=True, metavar="FILE")
    p.add_argument(
        "--connect", action="store_true", help="also authenticate to each connector and read a page"
    )

    p = add("scopes", cmd_scopes, "list the scopes (projects, boards, squads) each credential reaches")
    p.add_argument("--config", "-c", required=True, metavar="FILE", help="the config file")
    p.add_argument("connector", nargs="?", metavar="CONNECTOR", help="only this connector")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")

    p = add("people", cmd_people, "propose a `people:` block: the platforms' people matched by email, name")
    p.add_argument("--config", "-c", required=True, metavar="FILE", help="the config file")
    p.add_argument("--json", action="store_true", help="JSON (block, unmatched, ambiguous) instead of YAML")

    p = add("run", cmd_run, "run the daemon (polls, webhooks, outbox, API) until SIGTERM")
    p.epilog = (
        "A config error exits 2 (as `check` would report it); a store that cannot be opened or "
        "written, or a listen address already in use, exits 1 with one line."
    )
    p.add_argument("--config", "-c", required=True, metavar="FILE")

    p = add(
        "plan",
        cmd_plan,
        "what the next sync would do (links, creates, updates, archives, comments), per member; "
        "it only reads the platforms and the store, unless --apply makes what it shows",
    )
    p.add_argument("--config", "-c", required=True, metavar="FILE", help="the daemon's config file")
    p.add_argument(
        "--route", action="append", default=[], metavar="NAME", help="only this route (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="the plan as JSON")
    p.add_argument(
        "--apply",
        action="store_true",
        help="make the writes the plan shows, and only those (the daemon must be stopped)",
    )
    p.add_argument(
        "--reviewed",
        metavar="FILE",
        help="with --apply: a plan printed before by `plan --json`; a write it does not hold is parked, not made",
    )

    p = add(
        "link",
        cmd_link,
        "link the tasks of a running route that are already on several members (as initial: match "
        "does on day one), among those no link holds yet",
    )
    p.add_argument("--config", "-c", required=True, metavar="FILE", help="the daemon's config file")
    p.add_argument("--route", required=True, metavar="NAME", help="the route whose tasks to link")
    p.add_argument("--dry-run", action="store_true", help="only say what would be linked")

    p = add("sync", cmd_sync, "one full sync pass with a progress bar, then exit")
    p.add_argument("--config", "-c", required=True, metavar="FILE")
    p.add_argument("--once", action="store_true", help="one pass (required)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")

    def port(text: str) -> int:
        # Not 0: the banner prints the address to open, so the port must be known before binding.
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise argparse.ArgumentTypeError(f"not a port (1-65535): {text!r}")
        return int(text)

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds above 0: {text!r}") from None
        if not value > 0:  # written so as to refuse nan too, which compares false with everything
            raise argparse.ArgumentTypeError(f"not a number of seconds above 0: {text!r}")
        return value

    p = add("demo", cmd_demo, "five platform fakes, a demo config and the daemon, on loopback")
    p.add_argument("--port", type=port, default=8080, help="the daemon's API port (default 8080)")
    p.add_argument(
        "--seconds", type=seconds, default=None, help="stop after this long (default: until Ctrl-C)"
    )
    p.add_argument(
        "--dir",
        default=None,
        help="where to write the demo config and store: a directory holding neither "
        "(taskbridge.yaml, taskbridge.db) yet (default: a temp dir)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="run the tour by itself and exit: wait for the first sync, rename a task on one fake, "
        "time it reaching the others (exit 0 when it did; for CI)",
    )

    def daemon_url(text: str) -> str:
        # Refused here, as a usage error: an HTTP client would only say UnsupportedProtocol.
        try:
            return config_mod.http_url(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    def api_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            "-c",
            metavar="FILE",
            help="the daemon's config: its address is read from server.listen (then server.public_url); "
            "not the token, which the config holds only as a hash",
        )
        p.add_argument(
            "--url",
            type=daemon_url,
            help="the daemon's address (default: from --config, else http://127.0.0.1:8080)",
        )
        p.add_argument(
            "--token", help="an API token (default: $TASKBRIDGE_TOKEN; `taskbridge token new` mints one)"
        )

    p = add("status", cmd_status, "connectors' health, lag, outbox and open conflicts (through the API)")
    api_options(p)

    p = add("conflicts", cmd_conflicts, "list or resolve conflicts held for a person (through the API)")
    conflict_sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    cl = conflict_sub.add_parser("list", help="list conflicts")
    cl.add_argument(
        "--state", choices=("open", "resolved", "all"), default="open", help="which ones (default: open)"
    )
    api_options(cl)
    cr = conflict_sub.add_parser("resolve", help="settle one: --choose a side or give a --value")
    cr.add_argument("id", type=int, help="the conflict's id (from `conflicts list`)")
    cr.add_argument("--choose", help='"bridge" or a connector name among the candidates')
    cr.add_argument("--value", help="a JSON value for the field (a bare word is a string)")
    api_options(cr)

    def at_least_one(text: str) -> int | None:
        try:
            value = int(text)
        except ValueError:
            return None
        return value if value >= 1 else None

    def positive(text: str) -> int:
        value = at_least_one(text)
        if value is None:
            raise argparse.ArgumentTypeError(f"not an id: {text!r}")
        return value

    def count(text: str) -> int:
        value = at_least_one(text)
        if value is None:  # said as what it is: a count, not an id
            raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
        if value > MAX_DEADLETTER_PAGE:  # the API's bound, said here rather than as its 422
            raise argparse.ArgumentTypeError(f"at most {MAX_DEADLETTER_PAGE} a page, not {value}")
        return value

    for kind, nouns, failed, states in (
        ("outbox", "operations", "parked", ("parked", "pending", "claimed", "done", "all")),
        ("inbox", "deliveries", "failed", ("failed", "pending", "claimed", "done", "all")),
    ):
        what = "writes to platforms" if kind == "outbox" else "webhook deliveries"
        p = add(kind, cmd_deadletters, f"list, retry or drop {failed} {what} (through the API; admin scope)")
        dl_sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
        dl = dl_sub.add_parser("list", help=f"list {what}, newest first (default: the {failed} ones)")
        dl.add_argument("--state", choices=states, default=failed, help=f"which ones (default: {failed})")
        dl.add_argument("--connector", metavar="C", help="only this connector's")
        dl.add_argument("--limit", type=count, default=100, help="at most this many (default 100)")
        dl.add_argument("--cursor", type=positive, default=None, help="the next page after a listing's last")
        dl.add_argument("--json", action="store_true", help="the API's JSON instead of a table")
        api_options(dl)
        dr = dl_sub.add_parser("retry", help=f"{failed} {nouns} by id (or --all) back to pending, due now")
        dr.add_argument("ids", nargs="*", type=positive, metavar="ID", help=f"the {nouns}' ids")
        dr.add_argument("--all", action="store_true", help=f"every {failed} one")
        dr.add_argument("--connector", metavar="C", help="with --all: only this connector's")
        api_options(dr)
        dd = dl_sub.add_parser("drop", help=f"{failed} {nouns} by id deleted: never to run")
        dd.add_argument("ids", nargs="+", type=positive, metavar="ID", help=f"the {nouns}' ids")
        api_options(dd)

    p = add("store", cmd_store, "copy the store's state to a file and into a new store (to move hosts)")
    store_sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    se = store_sub.add_parser(
        "export",
        help="the state to stdout as JSON Lines (no secrets; pending writes are not carried)",
        description="Write the store's tasks, links, comments, comment links, watermarks and open "
        "conflicts to stdout as JSON Lines; a summary and warnings go to stderr. No secrets, no "
        "history. Pending writes (the outbox) are NOT carried: stop the daemon once its outbox "
        "drained (`taskbridge status`), then export; export warns, with the count, when some are "
        "still waiting.",
    )
    se.add_argument("--config", "-c", required=True, metavar="FILE")
    si = store_sub.add_parser(
        "import",
        help="load an export into a new, empty store",
        description="Load a `taskbridge store export` file into the config's store, which must hold "
        "no tasks, links or watermarks yet (it is created and migrated first). All of it or "
        "nothing: a bad line is named and nothing is imported. Then start the daemon on the new "
        "store: nothing is created again on the platforms.",
    )
    si.add_argument("--config", "-c", required=True, metavar="FILE")
    si.add_argument("file", metavar="EXPORT", help="the export file (- for stdin)")

    p = add("token", lambda a: (p.print_help(), EXIT_USAGE)[1], "manage API tokens")
    token_sub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    tn = token_sub.add_parser("new", help="mint a token; prints it once and the config line to paste")
    tn.add_argument("name", help="who or what uses it (shown in the config and the logs)")
    tn.add_argument("--scopes", default="read", help="comma-separated: read,write,admin (default: read)")
    tn.set_defaults(func=cmd_token_new)

    import connectors

    p = add("fake", cmd_fake, "run one platform's fake server in the foreground")
    p.add_argument("platform", choices=connectors.PLATFORMS, help="which platform's fake")
    p.add_argument("--port", type=int, required=True, help="the port it listens on")
    p.add_argument("--host", default="127.0.0.1", help="the address it listens on (default 127.0.0.1)")
    p.add_argument("--token", default="test-token", help="the credential it accepts (squads: ID:SECRET)")
    p.add_argument("--seed", type=int, default=None, help="seed demo data with this random seed")
    p.add_argument("--role", default=None, help="squads only: the caller's role (default executive)")
    p.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:KEY",
        help="runs only: another user and the personal API key it calls with (repeatable); "
        "a task created with a key is that user's, and each key sees what PostHog would show it",
    )
    _default_help(parser, "config", "the config file (YAML; `taskbridge check` validates it)")
    return parser


def _default_help(parser: argparse.ArgumentParser, dest: str, text: str) -> None:
    """`text` as the help of every `dest` option, in every subcommand, that has none of its own."""
    for action in parser._actions:
        if action.dest == dest and action.help is None:
            action.help = text
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _default_help(sub, dest, text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except config_mod.ConfigError as exc:
        _err(f"configuration error:\n{exc}")
        return EXIT_USAGE
    except CommandFailed as exc:
        _err(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        # Any command that opens the store (plan, link, store export and import, sync) may find
        # it migrated by a newer taskbridge; `run` says so itself, as it says every start failure.
        from bridge.store import StoreTooNew

        if not isinstance(exc, StoreTooNew):
            raise
        _err(f"taskbridge could not open its store: {exc}")
        return EXIT_FAILED
