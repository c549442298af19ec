"""Command-line wiring for ``stagectl seed-db`` and ``stagectl migrate [status|verify|revert]``."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

import orjson

from tools.cli.command import AT_LEAST_1, NOT_NEGATIVE, POSITIVE, Command, opt
from tools.cli.options import shared
from tools.cli.types import column_name, table_name
from tools.clients import catalogs
from tools.clients.db import introspect, resolve_dsn
from tools.migration import admin as migrate_admin
from tools.migration.engine import Options
from tools.migration.run import Where, database, perform
from tools.migration.seed import seed
from tools.shared.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandError

CATALOG_HELP = "stage catalog TOML; else the catalog the proxy at --admin-url serves; else the built-in one"
ADMIN_FOR_CATALOG = "a proxy's admin listener: classify with the catalog it serves, or check --config against it"


TARGET: Final = (shared("dsn"),
                 opt("--table", "[schema.]table (default deals)", type=table_name, default="deals"),
                 opt("--column", "default stage", type=column_name, default="stage"),
                 opt("--pk", "key column (default: the primary key)", type=column_name),
                 shared("config", CATALOG_HELP), shared("admin_url", ADMIN_FOR_CATALOG), shared("json"))
RUN: Final = (  # how a migration runs (stagectl migrate and stagectl normalize take the same)
    opt("--apply", "write the changes (default: dry run, plan logged for review)", action="store_true"),
    opt("--batch-size", "rows per batch (default 5000)", POSITIVE, type=int, default=5000),
    opt("--target-batch-ms", "auto-tune the batch size towards this batch time", POSITIVE, type=float),
    opt("--sleep-ms", "pause between batches", NOT_NEGATIVE, type=float, default=0.0),
    opt("--lock-timeout-ms", "per batch (default 2000; 0 none); on timeout the batch halves", NOT_NEGATIVE,
        type=int, default=2000),
    opt("--statement-timeout-ms", "per batch (default 30000; 0 none)", NOT_NEGATIVE, type=int, default=30_000),
    opt("--retries", "timeouts tolerated per batch (default 5)", NOT_NEGATIVE, type=int, default=5),
    opt("--transactional", "the whole run in one transaction (all or nothing)", action="store_true"),
    opt("--progress-interval-s", "JSON progress line interval when not on a terminal (0: every batch)",
        NOT_NEGATIVE, type=float, default=5.0),
    opt("--parallel", "key ranges walked at once, each on its own connection (default: the server's cores, at "
        "most 8; 1: one after another)", AT_LEAST_1, type=int, metavar="N"),
    opt("--max-replica-lag-ms", "wait between batches while a standby's replay lag is over this; go on under half "
        "(default 1000; 0: do not watch)", NOT_NEGATIVE, type=float, default=1000.0))


async def load_catalog(args: argparse.Namespace) -> catalogs.ChosenCatalog:
    """The catalog this command classifies with (tools/clients/catalogs.py); the command says it (catalogs.say) once its
    input is known to be good, before the first thing it reports."""
    return await catalogs.choose(getattr(args, "config", None), getattr(args, "admin_url", None))


def emit(args: argparse.Namespace, data: object, text: str) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode() if args.json else text)


async def run_seed(args: argparse.Namespace) -> int:
    async with database(where(args).dsn) as connection:
        total = await seed(connection, args.table, args.rows, args.seed, args.truncate)
    print(f"seeded {args.rows} rows into {args.table}; it now holds {total}")
    return EXIT_OK


def run_options(args: argparse.Namespace) -> Options:
    if args.resume and args.resume_from is not None:
        raise CommandError("--resume and --resume-from exclude each other", EXIT_USAGE)
    return Options(apply=args.apply, batch_size=args.batch_size, target_batch_ms=args.target_batch_ms,
                   sleep_ms=args.sleep_ms, lock_timeout_ms=args.lock_timeout_ms,
                   statement_timeout_ms=args.statement_timeout_ms, retries=args.retries, resume=args.resume,
                   resume_from=args.resume_from, transactional=args.transactional,
                   progress_interval_s=args.progress_interval_s, parallel=args.parallel,
                   max_replica_lag_ms=args.max_replica_lag_ms)


def where(args: argparse.Namespace) -> Where:
    """--dsn (else $DATABASE_URL), --table, --column, --pk."""
    return Where(resolve_dsn(args.dsn), args.table, getattr(args, "column", "stage"),
                 getattr(args, "pk", None))


async def run_migrate(args: argparse.Namespace) -> int:
    options = run_options(args)
    code, report = await perform(where(args), options, await load_catalog(args))
    if report is None:
        print("interrupted: the --transactional run was rolled back; nothing changed")
        return code
    emit(args, report, render(report, args.apply))
    if report["status"] == "aborted":
        print(f"run {report['run_id']} stopped after id {report['last_id']}; resume it with "
              f"`{report['resume_command']}`", file=sys.stderr)
    return code


def render(report: dict[str, Any], applied: bool) -> str:
    verb = "changed" if applied else "would change (dry run; plan in stage_normalization_log)"
    lines = [f"run {report['run_id']}: {report['status']} — {report['rows_scanned']} rows scanned in "
             f"{report['batches']} batches; {report['rows_changed']} {verb}; {report['rows_skipped']} skipped "
             f"(changed meanwhile); {report['rows_unknown']} unknown; {report['rows_null']} NULL"]
    if not report["variants"]:
        lines.append("nothing to change: every stored stage is canonical, unknown or NULL")
    else:
        lines += ["", f"  {'ROWS':>9}  VARIANT -> CANONICAL"]
        lines += [f"  {v['rows']:>9}  {v['from']!r} -> {v['to']}" for v in report["variants"][:50]]
    if report["unknown_values"]:
        lines += ["", f"unknown values left ({report['unknown_distinct']} distinct; add aliases or fix by hand):"]
        lines += [f"  {u['rows']:>9}  {u['value']!r}" for u in report["unknown_values"][:20]]
    return "\n".join(lines)


def _when(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else "-"


def render_status(runs: list[dict[str, Any]]) -> str:
    """Runs as a table (times UTC), then what to do about live and unfinished ones."""
    if not runs:
        return "no migration runs yet"
    header = ("RUN", "TARGET", "KIND", "STATUS", "STARTED (UTC)", "ENDED (UTC)", "SCANNED", "CHANGED", "LAST ID",
              "CATALOG")
    rows = [header]
    notes: list[str] = []
    for r in runs:
        ended = r["finished_at"] or r["abandoned_at"] or r["interrupted_at"] or (
            r["updated_at"] if r["status"] in ("aborted", "failed") else None)
        rows.append((str(r["run_id"]), f"{r['table_name']}.{r['column_name']}", "dry" if r["dry_run"] else "apply",
                     r["status"], _when(r["started_at"]), _when(ended), str(r["rows_scanned"]),
                     str(r["rows_changed"]), str(r["last_id"] or "-"), r.get("catalog_version") or "-"))
        run = f"run {r['run_id']}"
        if r["holder_pid"]:
            ranges = f", {r['parallel']} key ranges at once" if (r.get("parallel") or 1) > 1 else ""
            notes.append(f"{run}: running in {r['holder'] or 'a stagectl process'}{ranges}")
            if r.get("waiting"):
                notes.append(f"{run}: waiting: {r['waiting']}")
            elif r.get("pause_requested"):
                notes.append(f"{run}: pause requested: it holds after the batch in flight")
        if r["reverted_at"]:
            notes.append(f"{run}: reverted at {_when(r['reverted_at'])}")
        if r["error"] and r["status"] != "completed":
            notes.append(f"{run}: {r['error']}")
        if r["resume_command"]:
            notes.append(f"{run}: resume with `{r['resume_command']}` or close with "
                         f"`stagectl migrate abandon --run {r['run_id']}`")
    numeric = {0, 6, 7}
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i in numeric else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]
    return "\n".join(lines + ([""] + notes if notes else []))


async def run_status(args: argparse.Namespace) -> int:
    async with database(where(args).dsn) as connection:
        runs = await migrate_admin.status(connection, args.run, args.limit)
    emit(args, runs, render_status(runs))
    return EXIT_OK


async def run_pause(args: argparse.Namespace) -> int:
    return await _hold(args, True)


async def run_unpause(args: argparse.Namespace) -> int:
    return await _hold(args, False)


async def _hold(args: argparse.Namespace, pause: bool) -> int:
    async with database(where(args).dsn) as connection:
        row, changed = await migrate_admin.hold(connection, args.run, pause)
    if pause:
        text = (f"run {args.run}: pause requested; it holds after the batch in flight (go on with `stagectl migrate "
                f"resume --run {args.run}`)" if changed else f"run {args.run} is already paused")
    else:
        text = f"run {args.run}: going on after its pause" if changed else f"run {args.run} is not paused"
    emit(args, {"run_id": args.run, "paused": pause, "changed": changed, "status": row["status"]}, text)
    return EXIT_OK


async def run_abandon(args: argparse.Namespace) -> int:
    async with database(where(args).dsn) as connection:
        row = await migrate_admin.abandon(connection, args.run)
    kind = "planned" if row["dry_run"] else "changed"
    text = (f"run {row['run_id']} abandoned (it stopped after id {row['last_id']}); the {row['rows_changed']} rows "
            f"it {kind} stay as they are" + ("" if row["dry_run"] else
                                             f" (undo with `stagectl migrate revert --run {row['run_id']} --apply`)"))
    emit(args, {"run_id": row["run_id"], "status": "abandoned", "last_id": row["last_id"],
                "rows_changed": row["rows_changed"]}, text)
    return EXIT_OK


async def run_verify(args: argparse.Namespace) -> int:
    chosen = await load_catalog(args)
    async with database(where(args).dsn) as connection:
        target = await introspect(connection, args.table, args.column, getattr(args, "pk", None))
        verdict = await migrate_admin.verify(connection, target, chosen.catalog)
    catalogs.say(chosen)
    lines = [f"{target.label}: " + ("all canonical" if verdict.clean else "NOT all canonical")]
    for label, table in (("canonical", verdict.canonical), ("alias (migrate can fix)", verdict.alias),
                         ("unknown (needs a decision)", verdict.unknown)):
        if table:  # no empty headings
            lines += [f"  {label}:"] + [f"    {n:>9}  {v!r}" for v, n in table.items()]
    lines.append(f"  NULL: {verdict.null}")
    emit(args, verdict.as_json(), "\n".join(lines))
    return EXIT_OK if verdict.clean else EXIT_FAILED


async def run_revert(args: argparse.Namespace) -> int:
    async with database(where(args).dsn) as connection:
        result = await migrate_admin.revert(connection, args.run, getattr(args, "apply", False),
                                            getattr(args, "batch_size", 1000))
    if result.get("already_reverted_at"):
        text = f"run {args.run} was already reverted at {_when(result['already_reverted_at'])}: nothing to do"
    elif getattr(args, "apply", False):
        text = (f"run {args.run}: restored {result['restored']} of {result['logged']} rows; "
                f"{result['changed_since']} were changed since and were left alone")
    else:
        text = (f"run {args.run}: {result['restorable']} of {result['logged']} rows can be restored; "
                f"{result['changed_since']} were changed since. Add --apply to restore.")
    emit(args, result, text)
    return EXIT_OK



COMMANDS: Final = (
    Command("seed-db", "create and fill the legacy deals table (COPY)", run_seed, options=(
        shared("dsn"),
        opt("--rows", "rows to add (default 1000)", NOT_NEGATIVE, type=int, default=1000),
        opt("--table", "[schema.]table (default deals)", type=table_name, default="deals"),
        opt("--seed", "random seed (default 42): same seed, same rows", type=int, default=42),
        opt("--truncate", "empty the table first", action="store_true"))),
    Command("migrate", "normalize stored stages: dry run by default, --apply to write", run_migrate,
            description="Batched, resumable normalization of stored stages (docs/migrate.md).", common=TARGET,
            options=(*RUN, opt("--resume", "continue the latest unfinished run", action="store_true"),
                     opt("--resume-from", "start a new run after this key", metavar="LAST_GOOD_ID")),
            actions=(
        Command("status", "runs, their state and progress", run_status, options=(
            opt("--run", "one run", type=int),
            opt("--limit", "runs to show (default 20)", AT_LEAST_1, type=int, default=20))),
        Command("verify", "distinct stages with counts; exit 1 if any is not canonical", run_verify),
        Command("abandon", "close an unfinished run so new runs may start (its changes stay)", run_abandon,
                options=(opt("--run", "the unfinished run", type=int, required=True),)),
        Command("pause", "hold a running run after its batch in flight, from any terminal", run_pause,
                options=(opt("--run", "the running run", type=int, required=True),)),
        Command("resume", "let a paused run go on", run_unpause,
                options=(opt("--run", "the paused run", type=int, required=True),)),
        Command("revert", "restore a run's old values (dry by default)", run_revert, options=(
            opt("--run", "the run to revert", type=int, required=True),
            opt("--apply", "write (default: report)", action="store_true", default=argparse.SUPPRESS),
            opt("--batch-size", "rows per batch (default 1000)", POSITIVE, type=int,
                default=argparse.SUPPRESS))))),
)
