"""Command-line wiring for ``stagectl seed-db`` and ``stagectl migrate [status|verify|revert]``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from tools.cli import options
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


def _common(parser: argparse.ArgumentParser, *, inherited: bool) -> None:
    """Options every migrate action takes; on action parsers they must not reset what came before."""
    default: Any = argparse.SUPPRESS if inherited else None
    options.add(parser, "dsn", inherited=inherited)
    parser.add_argument("--table", type=table_name, default=argparse.SUPPRESS if inherited else "deals",
                        help="[schema.]table (default deals)")
    parser.add_argument("--column", type=column_name, default=argparse.SUPPRESS if inherited else "stage",
                        help="default stage")
    parser.add_argument("--pk", type=column_name, default=default, help="key column (default: the primary key)")
    options.add(parser, "config", "admin_url", "json", inherited=inherited, config=CATALOG_HELP,
                admin_url=ADMIN_FOR_CATALOG)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """How a migration runs (stagectl migrate and stagectl normalize take the same)."""
    add = parser.add_argument
    add("--apply", action="store_true", help="write the changes (default: dry run, plan logged for review)")
    add("--batch-size", type=int, default=1000, help="rows per batch (default 1000)")
    add("--target-batch-ms", type=float, help="auto-tune the batch size towards this batch time")
    add("--sleep-ms", type=float, default=0.0, help="pause between batches")
    add("--lock-timeout-ms", type=int, default=2000, help="per batch (default 2000); on timeout the batch halves")
    add("--statement-timeout-ms", type=int, default=30_000, help="per batch (default 30000)")
    add("--retries", type=int, default=5, help="timeouts tolerated per batch (default 5)")
    add("--transactional", action="store_true", help="the whole run in one transaction (all or nothing)")
    add("--progress-interval-s", type=float, default=5.0, help="JSON progress line interval when not on a terminal")


def register(commands: Any) -> None:
    """Add seed-db and migrate to stagectl's subcommands."""
    seeder = commands.add_parser("seed-db", help="create and fill the legacy deals table (COPY)")
    options.add(seeder, "dsn")
    seeder.add_argument("--rows", type=int, default=1000, help="rows to add (default 1000)")
    seeder.add_argument("--table", type=table_name, default="deals", help="[schema.]table (default deals)")
    seeder.add_argument("--seed", type=int, default=42, help="random seed (default 42): same seed, same rows")
    seeder.add_argument("--truncate", action="store_true", help="empty the table first")
    seeder.set_defaults(handler=run_seed)

    migrate = commands.add_parser("migrate", help="normalize stored stages: dry run by default, --apply to write",
                                  description="Batched, resumable normalization of stored stages (docs/migrate.md).")
    _common(migrate, inherited=False)
    add_run_options(migrate)
    migrate.add_argument("--resume", action="store_true", help="continue the latest unfinished run")
    migrate.add_argument("--resume-from", metavar="LAST_GOOD_ID", help="start a new run after this key")
    migrate.set_defaults(handler=run_migrate)
    actions = migrate.add_subparsers(dest="action", parser_class=type(migrate))
    status = actions.add_parser("status", help="runs, their state and progress")
    _common(status, inherited=True)
    status.add_argument("--run", type=int, help="one run")
    status.add_argument("--limit", type=int, default=20)
    status.set_defaults(handler=run_status)
    verify = actions.add_parser("verify", help="distinct stages with counts; exit 1 if any is not canonical")
    _common(verify, inherited=True)
    verify.set_defaults(handler=run_verify)
    abandon = actions.add_parser("abandon", help="close an unfinished run so new runs may start (its changes stay)")
    _common(abandon, inherited=True)
    abandon.add_argument("--run", type=int, required=True, help="the unfinished run")
    abandon.set_defaults(handler=run_abandon)
    revert = actions.add_parser("revert", help="restore a run's old values (dry by default)")
    _common(revert, inherited=True)
    revert.add_argument("--run", type=int, required=True, help="the run to revert")
    revert.add_argument("--apply", action="store_true", default=argparse.SUPPRESS, help="write (default: report)")
    revert.add_argument("--batch-size", type=int, default=argparse.SUPPRESS)
    revert.set_defaults(handler=run_revert)


async def load_catalog(args: argparse.Namespace) -> catalogs.ChosenCatalog:
    """The catalog this command classifies with (tools/clients/catalogs.py); the command says it (catalogs.say) once its
    input is known to be good, before the first thing it reports."""
    return await catalogs.choose(getattr(args, "config", None), getattr(args, "admin_url", None))


def emit(args: argparse.Namespace, data: object, text: str) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode() if args.json else text)


async def run_seed(args: argparse.Namespace) -> int:
    if args.rows < 0:
        raise CommandError("--rows must be 0 or more", EXIT_USAGE)
    async with database(where(args).dsn) as connection:
        total = await seed(connection, args.table, args.rows, args.seed, args.truncate)
    print(f"seeded {args.rows} rows into {args.table}; it now holds {total}")
    return EXIT_OK


def run_options(args: argparse.Namespace) -> Options:
    if args.batch_size < 1 or (args.target_batch_ms is not None and args.target_batch_ms <= 0):
        raise CommandError("--batch-size and --target-batch-ms must be positive", EXIT_USAGE)
    if args.resume and args.resume_from is not None:
        raise CommandError("--resume and --resume-from exclude each other", EXIT_USAGE)
    return Options(apply=args.apply, batch_size=args.batch_size, target_batch_ms=args.target_batch_ms,
                   sleep_ms=args.sleep_ms, lock_timeout_ms=args.lock_timeout_ms,
                   statement_timeout_ms=args.statement_timeout_ms, retries=args.retries, resume=args.resume,
                   resume_from=args.resume_from, transactional=args.transactional,
                   progress_interval_s=args.progress_interval_s)


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
            notes.append(f"{run}: running in {r['holder'] or 'a stagectl process'}")
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
    if args.limit < 1:
        raise CommandError("--limit must be at least 1", EXIT_USAGE)
    async with database(where(args).dsn) as connection:
        runs = await migrate_admin.status(connection, args.run, args.limit)
    emit(args, runs, render_status(runs))
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

