"""``stagectl mode``, ``blocks`` and ``catalog``: the proxy's modes, enforce blocks and catalog, through its
``_ops`` API — and a catalog file checked offline with the proxy's own code (docs/ops-plane.md)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode

import orjson

from proxy.catalog.compare import catalog_version, compare, reload_problems
from proxy.catalog.stages import Catalog, check_catalog
from proxy.shared import catalog_files
from proxy.wire import catalogs as wire_catalogs
from proxy.wire import modes as wire
from tools.cli import actors
from tools.cli.command import POSITIVE, Command, between, opt
from tools.cli.options import shared
from tools.clients import admin_api, catalogs
from tools.shared.errors import EXIT_OK, EXIT_USAGE, CommandError

MODE_EXITS = ("Exit 0 ok, 1 proxy unreachable, 2 rejected (or not confirmed), 3 token refused, 4 enforce blocked "
              "(--force overrides), 5 the proxy's mode store is unavailable.")


ADMIN: Final = (shared("admin_url", "admin listener URL (else http://127.0.0.1:9901)"),
                shared("json", "print the API's JSON instead of a table"),
                opt("--timeout-s", "HTTP timeout (default 5)", POSITIVE, type=float, default=5.0))


def _actions(name: str, help_text: str, description: str, *actions: Command) -> Command:
    """A group of admin-API actions; --admin-url, --json and --timeout-s go before or after the action."""
    return Command(name, help_text, description=description, common=ADMIN, actions=actions)


async def _get(args: argparse.Namespace, path: str) -> dict[str, Any]:
    """GET ``path`` (with its query) from the admin listener of --admin-url / $STAGE_ADMIN_URL."""
    url = f"{admin_api.admin_url(args.admin_url)}{path}"
    async with admin_api.session(args.timeout_s) as session:
        return await admin_api.call(session, "GET", url)


def _actor(args: argparse.Namespace) -> str:
    """``stagectl mode set (alice)``: the command and the person (tools/cli/actors.py)."""
    command = "mode set" if args.command == "mode" else f"{args.command} {args.action}"
    return actors.actor(command, args.actor)


def read_answer(shape: Any, data: object) -> Any:
    """An answer read into its wire shape; one line (exit 1) when it is not one."""
    try:
        return shape.from_json(data)
    except wire.WireError as exc:
        raise CommandError(f"the proxy's answer is not what this stagectl reads: {exc}") from None


def dump_json(data: object) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()


def table(rows: Sequence[Sequence[object]]) -> list[str]:
    """Aligned columns; the last one (free text) is not padded."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]) - 1)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1]
            for row in cells]


def _blocked_by(record: wire.EndpointMode) -> str:
    return ", ".join(b.alertname + (" (all)" if b.all_endpoints else "") for b in record.blocked_by) or "-"


def render_table(view: wire.ModeState) -> str:
    """The GET /_ops/mode body as a table for humans."""
    rows: list[Sequence[object]] = [("ENDPOINT", "MODE", "PERCENT", "BLOCKED BY", "UPDATED", "BY", "REASON")]
    for name, record in view.endpoints.items():
        percent = f"{record.percent:g}" if record.mode == "enforce" else "-"
        rows.append((name, record.mode, percent, _blocked_by(record), record.updated_at or "-",
                     record.updated_by or "-", record.reason or "-"))
    lines = [*table(rows), "", f"source: {view.source}   enforce blocked: {'yes' if view.enforce_blocked else 'no'}"]
    lines += [f"rollout: {name} driven by {r.rollout.holder} since {r.rollout.since}"
              for name, r in view.endpoints.items() if r.rollout is not None]
    lines += [f"pending: {p.endpoint} -> {p.mode} (applied here, not yet stored: the mode store is unreachable)"
              for p in view.pending_writes]
    return "\n".join(lines)


def _label(record: wire.EndpointMode) -> str:
    return f"enforce {record.percent:g}%" if record.mode == "enforce" else record.mode


def planned(view: wire.ModeState, endpoint: str, mode: str, percent: float | None) -> dict[str, tuple[str, str]]:
    """Every endpoint as (now, after) labels, e.g. ('warn', 'enforce 100%')."""
    endpoints = view.endpoints
    if endpoint != "*" and endpoint not in endpoints:
        raise CommandError(f"unknown endpoint {endpoint!r}: the proxy serves {', '.join(endpoints)}", EXIT_USAGE)
    after = f"enforce {100.0 if percent is None else percent:g}%" if mode == "enforce" else mode
    return {name: (_label(record), after if endpoint in ("*", name) else _label(record))
            for name, record in endpoints.items()}


def mode_diff(plan: Mapping[str, tuple[str, str]]) -> str:
    width = max(len(name) for name in plan)
    lines = ["--- modes now", "+++ modes after"]
    for name, (now, after) in plan.items():
        if now == after:
            lines.append(f"  {name.ljust(width)}  {now}")
        else:
            lines += [f"- {name.ljust(width)}  {now}", f"+ {name.ljust(width)}  {after}"]
    return "\n".join(lines)


def big_switch(view: wire.ModeState, endpoint: str, mode: str, percent: float | None) -> str | None:
    """Why this change needs a confirmation, or None: enforce on every endpoint at once, or enforce at 100 % on
    an endpoint that is in off or warn now (no canary step in between)."""
    if mode != "enforce":
        return None
    if endpoint == "*":
        return "this turns enforce on for every endpoint at once"
    record = view.endpoints[endpoint]
    enforcing_nobody = record.mode in ("off", "warn") or (record.mode == "enforce" and not record.percent)
    if (percent is None or percent >= 100) and enforcing_nobody:
        now = "enforce at 0%" if record.mode == "enforce" else record.mode
        return f"this takes {endpoint} from {now} straight to enforce at 100% (no canary step)"
    return None


def _confirm(why: str, args: argparse.Namespace) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise CommandError(f"{why}; pass --yes to confirm (stdin is not a terminal), or --dry-run to see it",
                           EXIT_USAGE)
    # On stderr, like input()'s own prompt: stdout may be a pipe (--json | jq) or a file.
    print(f"{why}.\nType yes to go ahead: ", end="", flush=True, file=sys.stderr)
    try:
        answer = input().strip().lower()
    except EOFError:
        answer = ""
    if answer != "yes":
        raise CommandError("not confirmed: nothing changed", EXIT_USAGE)


async def run_mode(args: argparse.Namespace) -> int:
    if args.action == "get":
        view = read_answer(wire.ModeState, await _get(args, "/_ops/mode"))
        print(dump_json(view.to_json()) if args.json else render_table(view))
        return EXIT_OK
    url = f"{admin_api.admin_url(args.admin_url)}/_ops/mode"
    async with admin_api.session(args.timeout_s) as session:
        token = None if args.dry_run else admin_api.ops_token(args.ops_token, "mode set")
        now = read_answer(wire.ModeState, await admin_api.call(session, "GET", url))
        plan = planned(now, args.endpoint, args.mode, args.percent)
        if args.dry_run:
            print(mode_diff(plan))
            print("(dry run: nothing changed)")
            return EXIT_OK
        why = big_switch(now, args.endpoint, args.mode, args.percent)
        if why:
            _confirm(why, args)
        body: dict[str, Any] = {"endpoint": args.endpoint, "mode": args.mode, "reason": args.reason,
                                "actor": _actor(args), "force": args.force}
        if args.percent is not None:
            body["percent"] = args.percent
        view = read_answer(wire.ModeState, await admin_api.call(session, "PUT", url, body, token))
    print(dump_json(view.to_json()) if args.json else render_table(view))
    if view.persisted is False:
        print("the mode store is unreachable: applied on this replica only, written to the store when it answers; "
              "reach every replica (docs/runbook.md)", file=sys.stderr)
    return EXIT_OK


def _change(entry: wire.HistoryItem) -> str:
    if entry.action == "mode":
        enforce = entry.to_mode == "enforce" and entry.percent is not None
        to = f"enforce {entry.percent:g}%" if enforce else entry.to_mode
        return f"{entry.from_mode or '?'} -> {to}" + (" (forced)" if entry.forced else "")
    if entry.action in ("block_enforce", "unblock_enforce"):
        verb = "blocked by" if entry.action == "block_enforce" else "unblocked:"
        return f"{verb} {entry.alertname or '?'}"
    return entry.action


def render_history(entries: Sequence[wire.HistoryItem]) -> str:
    if not entries:
        return "no history yet"
    rows: list[Sequence[object]] = [("AT", "ENDPOINT", "CHANGE", "BY", "REASON")]
    for entry in entries:
        rows.append((entry.at or "-", entry.endpoint or "(all)", _change(entry),
                     f"{entry.actor or '-'} ({entry.source or '-'})", entry.reason or "-"))
    return "\n".join(table(rows))


async def run_history(args: argparse.Namespace) -> int:
    query = {"limit": str(args.limit), **({"endpoint": args.endpoint} if args.endpoint else {})}
    history = read_answer(wire.History, await _get(args, f"/_ops/mode/history?{urlencode(query)}"))
    print(dump_json(history.to_json()) if args.json else render_history(history.entries))
    return EXIT_OK


def render_blocks(data: wire.Blocks) -> str:
    if not data.blocks:
        return "no enforce blocks"
    rows: list[Sequence[object]] = [("FINGERPRINT", "ALERT", "ENDPOINT", "SINCE")]
    rows += [(b.fingerprint, b.alertname, b.endpoint or "(all)", b.since or "-") for b in data.blocks]
    return "\n".join(table(rows))


async def run_blocks(args: argparse.Namespace) -> int:
    if args.action == "list":
        blocks = read_answer(wire.Blocks, await _get(args, "/_ops/blocks"))
        print(dump_json(blocks.to_json()) if args.json else render_blocks(blocks))
        return EXIT_OK
    base = f"{admin_api.admin_url(args.admin_url)}/_ops/blocks"
    async with admin_api.session(args.timeout_s) as session:
        token = admin_api.ops_token(args.ops_token, "blocks clear")
        answer = read_answer(wire.BlockCleared, await admin_api.call(
            session, "DELETE", f"{base}/{quote(args.fingerprint, safe='')}",
            {"reason": args.reason, "actor": _actor(args)}, token))
    if args.json:
        print(dump_json(answer.to_json()))
    else:
        cleared = answer.cleared
        still = "yes" if answer.enforce_blocked else "no"
        print(f"cleared {cleared.fingerprint}: {cleared.alertname} on {cleared.endpoint or 'all endpoints'}; "
              f"enforce still blocked somewhere: {still}")
    return EXIT_OK


def _text(path: str) -> str:
    try:
        return catalog_files.read_text(Path(path), "catalog")
    except catalog_files.CatalogFileError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None


async def run_catalog_check(args: argparse.Namespace) -> int:
    catalog, problems = check_catalog(_text(args.file))
    changes = None
    if catalog is not None and args.against:
        running = catalogs.read_file(args.against, "--against")
        problems = reload_problems(running, catalog)
        changes = wire_catalogs.Changes.of(compare(running, catalog))
    version = catalog_version(catalog) if catalog is not None else None
    expired = expired_warnings(catalog, time.time()) if catalog is not None else []
    if args.json:
        print(dump_json({"file": args.file, "ok": not problems, "version": version, "problems": problems,
                     "warnings": expired, "changes": changes.to_json() if changes else None}))
    elif problems:
        for problem in problems:
            print(f"{args.file}: {problem}")
    else:
        print(f"{args.file}: ok, version {version}: {len(catalog.canonical) if catalog else 0} canonical stages, "
              f"{len(catalog.aliases) if catalog else 0} aliases, {len(catalog.endpoints) if catalog else 0} "
              "endpoints")
        if changes is not None:
            print(describe_changes(changes))
        for warning in expired:
            print(f"{args.file}: warning: {warning}", file=sys.stderr)
    if problems:
        what = "a reload would refuse it" if args.against and catalog is not None else "the proxy would refuse it"
        raise CommandError(f"{args.file}: {len(problems)} problem(s); {what}", EXIT_USAGE)
    return EXIT_OK


def expired_warnings(catalog: Catalog, now: float) -> list[str]:
    """One line per temporary alias whose ``until`` has passed: it changes nothing any more but misleads."""
    return [f"temporary alias {key!r} ended {catalog.temporary[key].until_text}: its values are unknown now; "
            "remove it (or extend it, with a reason)" for key in catalog.expired(now)]


def describe_changes(changes: wire_catalogs.Changes) -> str:
    """What a reload would change, one line per fact (``nothing changes`` when the files mean the same)."""
    lines = [f"  alias added: {k!r} -> {v}" for k, v in changes.aliases_added.items()]
    lines += [f"  alias removed: {k!r} (was -> {v})" for k, v in changes.aliases_removed.items()]
    lines += [f"  alias retargeted: {k!r} {old} -> {new}" for k, (old, new) in changes.aliases_retargeted.items()]
    lines += [f"  canonical stage added: {s}" for s in changes.canonical_added]
    lines += [f"  canonical stage removed: {s}" for s in changes.canonical_removed]
    lines += [f"  temporary alias added: {k!r} -> {v}" for k, v in changes.temporary_added.items()]
    lines += [f"  temporary alias removed: {k!r} (was -> {v})" for k, v in changes.temporary_removed.items()]
    lines += [f"  endpoint changed: {name}" for name in changes.endpoints_changed]
    if changes.case_sensitive_paths:
        old, new = changes.case_sensitive_paths
        lines.append(f"  case_sensitive_paths: {old} -> {new}")
    return "\n".join(["against the running catalog:", *(lines or ["  nothing changes"])])


def render_catalog(served: wire_catalogs.CatalogServed) -> str:
    catalog = served.catalog
    lines = [f"version {served.version}" + (f" ({served.file})" if served.file else ""),
             f"default mode: {catalog.default_mode}   case-sensitive paths: {catalog.case_sensitive_paths}", "",
             "canonical stages: " + ", ".join(catalog.canonical), "", f"aliases ({len(catalog.aliases)}):"]
    lines += [f"  {alias!r} -> {target}" for alias, target in sorted(catalog.aliases.items())]
    if catalog.temporary:
        now = time.time()
        lines += ["", f"temporary aliases ({len(catalog.temporary)}):"]
        lines += [f"  {key!r} -> {alias.to} until {alias.until_text}" + ("" if alias.live(now) else " (ended)")
                  for key, alias in sorted(catalog.temporary.items())]
    lines += ["", *table([("ENDPOINT", "METHOD", "PATH", "FIELD", "REQUIRED")]
                         + [(e.name, ", ".join(e.methods), e.path, e.field, "yes" if e.required else "no")
                            for e in catalog.endpoints])]
    return "\n".join(lines)


async def run_catalog_show(args: argparse.Namespace) -> int:
    if args.config and args.admin_url:
        raise CommandError("--config and --admin-url exclude each other: a file, or the running proxy", EXIT_USAGE)
    if args.config and args.admin_url and "admin_url" not in args.from_environment:
        raise CommandError("--config and --admin-url exclude each other: a file, or the running proxy", EXIT_USAGE)
    if args.admin_url and not args.config:
        served = read_answer(wire_catalogs.CatalogServed, await _get(args, "/_ops/catalog"))
    else:
        catalog = catalogs.local(args.config)
        served = wire_catalogs.CatalogServed(catalog_version(catalog), args.config, catalog)
    print(dump_json(served.to_json()) if args.json else render_catalog(served))
    return EXIT_OK


async def run_catalog_reload(args: argparse.Namespace) -> int:
    url = f"{admin_api.admin_url(args.admin_url)}/_ops/reload"
    token = admin_api.ops_token(args.ops_token, "catalog reload")
    async with admin_api.session(args.timeout_s) as session:
        body = {"actor": _actor(args), **({"reason": args.reason} if args.reason else {})}
        reloaded = read_answer(wire_catalogs.Reloaded, await admin_api.call(session, "POST", url, body, token))
    if args.json:
        print(dump_json(reloaded.to_json()))
        return EXIT_OK
    if not reloaded.changed:
        print(f"reloaded: version {reloaded.version}, unchanged")
    else:
        print(f"reloaded: version {reloaded.previous_version} -> {reloaded.version}")
        if reloaded.changes is not None:
            print(describe_changes(reloaded.changes))
    for warning in reloaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


COMMANDS: Final = (
    _actions("mode", "read or change endpoint modes through the proxy's _ops API", MODE_EXITS,
             Command("get", "show every endpoint's mode, the source and the alerts blocking its enforce", run_mode),
             Command("set", "change a mode (token from $STAGE_OPS_TOKEN)", run_mode, options=(
                 opt("endpoint", "endpoint name, or '*' for all"),
                 opt("mode", choices=["off", "warn", "enforce"]),
                 opt("--percent", "canary share for enforce, 0-100 (default 100)", between(0, 100), type=float),
                 opt("--reason", "why (recorded with the change)", required=True), shared("actor"),
                 opt("--force", "enforce even while an alert blocks it", action="store_true"),
                 opt("--yes", "confirm a big switch (enforce on every endpoint, or at 100%% on one now in off/warn) "
                              "without a prompt; needed when stdin is not a terminal", action="store_true"),
                 opt("--dry-run", "print the change as a diff of modes; change nothing", action="store_true"))),
             Command("history", "the mode history, newest first: changes, blocks, who and why", run_history,
                     options=(opt("--endpoint", "only entries about this endpoint (and those about all of them)"),
                              opt("--limit", "entries to show (default 20, at most 1000)", between(1, 1000),
                                  type=int, default=20)))),
    _actions("blocks", "the alerts blocking enforce, and clearing one whose resolve was lost",
             "Exit 0 ok, 1 proxy unreachable, 2 rejected or no such block, 3 token refused, 5 the proxy's mode "
             "store is unavailable.",
             Command("list", "every enforce block: alert, endpoint (or all), since, fingerprint", run_blocks),
             Command("clear", "remove one block by fingerprint (token from $STAGE_OPS_TOKEN); recorded in the mode "
                              "history", run_blocks, options=(
                 opt("fingerprint", "the block's fingerprint (stagectl blocks list)"),
                 opt("--reason", "why (recorded in the history)", required=True), shared("actor")))),
    Command("catalog", "check a catalog file offline, show or reload the running one",
            description="Exit 0 ok, 1 proxy unreachable, 2 the catalog has problems (each on its own line) or bad "
                        "usage, 3 token refused.", actions=(
        Command("check", "validate FILE with the proxy's own rules (exit 0 ok, 2 problems)", run_catalog_check,
                description="Validate a catalog file with the code the proxy runs at start-up and on reload. Exit "
                            "0 ok, 2 problems (each on its own line).", options=(
                    opt("file", "the catalog TOML to check", metavar="FILE"),
                    opt("--against", "the catalog running now: also apply the reload rules and print what would "
                                     "change", metavar="RUNNING"),
                    shared("json"))),
        Command("show", "the effective catalog: of the proxy at --admin-url (or $STAGE_ADMIN_URL), else of --config "
                        "FILE (default: the built-in one)", run_catalog_show, options=(
                    *ADMIN, opt("--config", "a catalog file (default: the built-in catalog)", metavar="FILE"))),
        Command("reload", "make the proxy re-read its --config (token from $STAGE_OPS_TOKEN)", run_catalog_reload,
                options=(*ADMIN, opt("--reason", "why (recorded in the mode history)"), shared("actor"))))),
)
