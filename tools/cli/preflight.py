"""Command-line wiring for the Week-0 pre-flight tools: backup, verify-backup, test-restore, audit-consumers,
redis-latency and preflight."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

import orjson

from tools.backups import backup
from tools.backups.restore import run_restore_test
from tools.cli.command import AT_LEAST_1, NOT_NEGATIVE, POSITIVE, Command, opt
from tools.cli.migrate import ADMIN_FOR_CATALOG, CATALOG_HELP, load_catalog
from tools.cli.options import shared
from tools.cli.types import column_name, table_name
from tools.clients import admin_api, catalogs
from tools.clients.db import resolve_dsn
from tools.consumers import audit
from tools.consumers.offenders import read_lines
from tools.preflight import checks as preflight
from tools.preflight import drill, redis_latency
from tools.shared.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandError

AUDIT_VERDICTS = {0: "clear: every consumer is internal, mitigated or ignored",
                  3: "external consumers present: mitigate them or record a decision (--classifications)",
                  4: "unclassified consumers left (ambiguous addresses, or forwarded addresses ignored): decide "
                     "them in --classifications, or pass --trusted-proxy"}


def _json(data: object) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode()


DRILL: Final = (
    opt("--break-redis", "shell command that stops Redis (default: you do, when told)", metavar="CMD"),
    opt("--restore-redis", "shell command that starts Redis again", metavar="CMD"),
    opt("--proxy-log", "the proxy's log: its WARN must appear there", type=Path, metavar="FILE"),
    opt("--drill-timeout", "wait this long for each switch (default 120)", POSITIVE, type=float, default=120.0,
        metavar="SECONDS"))


def _drill(args: argparse.Namespace) -> drill.Drill:
    url = args.admin_url
    if not url:
        raise CommandError("the drill needs the proxy: pass --admin-url or set STAGE_ADMIN_URL", EXIT_USAGE)
    return drill.Drill(admin_api.check_url(url.rstrip("/")), args.break_redis, args.restore_redis, args.proxy_log,
                       args.drill_timeout)


async def run_drill(args: argparse.Namespace) -> int:
    report = await _drill(args).run()
    print(_json(report.as_json()) if args.json else drill.render(report))
    return EXIT_OK if report.ok else EXIT_FAILED


async def run_backup(args: argparse.Namespace) -> int:
    result = await backup.backup(resolve_dsn(args.dsn), args.out, args.format, args.keep)
    data = {"file": str(result.file), "sha256": result.sha256, "bytes": result.bytes,
            "seconds": round(result.seconds, 3), "removed": result.removed}
    print(_json(data) if args.json else f"backup {result.file} ({result.bytes:,} bytes, {result.seconds:.1f} s), "
          f"sha256 {result.sha256}" + (f"; removed {', '.join(result.removed)}" if result.removed else ""))
    return EXIT_OK


async def run_verify_backup(args: argparse.Namespace) -> int:
    report = backup.verify(args.dir)
    if args.json:
        print(_json({"ok": report.ok, "checked": report.checked, "problems": report.problems}))
    else:
        print(f"{args.dir}: {len(report.checked)} file(s) checked, {len(report.problems)} problem(s)")
        for problem in report.problems:
            print(f"  BAD {problem['file']}: {problem['problem']}")
    return EXIT_OK if report.ok else EXIT_FAILED


async def run_test_restore(args: argparse.Namespace) -> int:
    dsn = resolve_dsn(args.dsn)
    if args.no_verify:
        print(f"stagectl: WARNING: --no-verify: {args.file} is restored without checking its checksum",
              file=sys.stderr)
    receipt = await run_restore_test(dsn, args.file, budget_s=args.budget, min_rows=args.min_rows, table=args.table,
                                     column=args.column, queries=args.smoke_query, verify=not args.no_verify)
    if args.json:
        print(_json(receipt.as_json()))
    elif receipt.ok:
        print(f"restore test OK: {args.file} (checksum: {receipt.checksum}) in {receipt.seconds:.2f} s; "
              f"{args.table}: {receipt.rows} rows, {receipt.distinct_stages} distinct stages; "
              "scratch database dropped")
    else:
        print(f"restore test FAILED at step {receipt.step}: {args.file} (checksum: {receipt.checksum}, "
              f"{receipt.seconds:.2f} s)")
        for failure in receipt.failures:
            print(f"  {failure}")
    return EXIT_OK if receipt.ok else EXIT_FAILED


async def run_audit(args: argparse.Namespace) -> int:
    internal = audit.networks(args.internal_cidr or list(audit.DEFAULT_INTERNAL), "--internal-cidr",
                              allow_everyone=True)
    trusted = audit.networks(args.trusted_proxy, "--trusted-proxy")
    decisions = audit.load_classifications(args.classifications)
    try:
        chosen = await load_catalog(args)
        result = audit.audit(read_lines(args.logs, sys.stdin.buffer), chosen.catalog,
                                         internal=internal, trusted=trusted, decisions=decisions)
    except OSError as exc:
        raise CommandError(f"cannot read {exc.filename!r}: {exc.strerror}", EXIT_USAGE) from None
    if args.record:
        if args.classifications is None:
            raise CommandError("--record needs --classifications FILE", EXIT_USAGE)
        audit.record(args.classifications, result)
    catalogs.say(chosen)
    code = audit.verdict(result)
    # what needs a decision first: new (undecided) consumers, then by traffic
    rows = sorted(result.consumers.values(), key=lambda c: (c.known, -c.requests, c.ip))
    if args.json:
        print(_json({"exit": code, "verdict": AUDIT_VERDICTS[code], "skipped_lines": result.skipped, "consumers": [
            {"ip": c.ip, "user_agent": c.user_agent, "class": c.cls, "known": c.known, "note": c.note,
             "consumers": sorted(c.names), "requests": c.requests, "unknown_stages": c.unknown_stages,
             "endpoints": sorted(c.endpoints), "first_seen": c.first, "last_seen": c.last} for c in rows],
            "forwarded_for_ignored": [{"peer": seen.peer, "requests": seen.requests, "example": seen.example}
                                      for seen in result.ignored.values()]}))
    else:
        print(f"{len(rows)} consumer(s) of the validated endpoints; {result.skipped} other line(s) skipped")
        if rows:
            print(f"  {'CLASS':<10} {'SEEN':<5} {'IP':<39} {'REQUESTS':>8} {'UNKNOWN':>7}  {'ENDPOINTS':<30} "
                  "FIRST .. LAST  USER AGENT")
        for c in rows:
            mark = "known" if c.known else "NEW"
            names = f"  consumer {', '.join(sorted(c.names))}" if c.names else ""
            print(f"  {c.cls:<10} {mark:<5} {c.ip:<39} {c.requests:>8} {c.unknown_stages:>7}  "
                  f"{','.join(sorted(c.endpoints)):<30} {c.first} .. {c.last}  {c.user_agent!r}{names}")
        if result.undecided_ignored:
            print(f"\n{audit.ignored_hint(result)}")
        print(f"\nverdict: {AUDIT_VERDICTS[code]} (exit {code})")
    return code


async def run_redis_latency(args: argparse.Namespace) -> int:
    url = args.redis_url
    if not url:
        raise CommandError("no Redis: pass --redis-url or set STAGE_REDIS_URL", EXIT_USAGE)
    result = await redis_latency.measure(url, args.samples, args.rate, threshold_ms=args.max_p99_ms,
                                         warmup=args.warmup)
    print(_json(result) if args.json else redis_latency.render(result))
    return EXIT_OK if result["ok"] else EXIT_FAILED


async def run_preflight(args: argparse.Namespace) -> int:
    request = preflight.PreflightArgs(
        dsn=args.dsn, redis_url=args.redis_url, admin_url=args.admin_url, backup_dir=args.backup_dir, logs=args.logs,
        internal=audit.networks(args.internal_cidr or list(audit.DEFAULT_INTERNAL), "--internal-cidr",
                                allow_everyone=True),
        trusted=audit.networks(args.trusted_proxy, "--trusted-proxy"), classifications=args.classifications,
        min_rows=args.min_rows, samples=args.samples, budget_s=args.budget, table=args.table,
        redis_max_p99_ms=args.redis_max_p99_ms, fallback_drill=_drill(args) if args.fallback_drill else None)
    criteria = await preflight.run(request, catalogs.local(args.config))
    print(_json(preflight.as_json(criteria)) if args.json else preflight.render(criteria))
    return EXIT_OK if all(c.ok for c in criteria) else EXIT_FAILED



COMMANDS: Final = (
    Command("backup", "pg_dump to a timestamped file; latest link and SHA256SUMS updated", run_backup, options=(
        shared("dsn"),
        opt("--out", "backup directory", required=True, type=Path),
        opt("--format", choices=["plain", "custom"], default="plain"),
        opt("--keep", "keep only the newest N dumps", AT_LEAST_1, type=int),
        shared("json"))),
    Command("verify-backup", "check SHA256SUMS, completeness and the latest link", run_verify_backup,
            options=(opt("dir", type=Path), shared("json"))),
    Command("test-restore", "restore into a scratch database, smoke-test it, drop it", run_test_restore, options=(
        opt("file", type=Path),
        shared("dsn", "the server to restore on"),
        opt("--budget", "seconds; the restore is stopped at the budget", POSITIVE, type=float, default=300.0),
        opt("--min-rows", "rows the stage table must hold (default 1)", NOT_NEGATIVE, type=int, default=1),
        opt("--table", "[schema.]table (default deals)", type=table_name, default="deals"),
        opt("--column", "the stage column (default stage)", type=column_name, default="stage"),
        opt("--smoke-query", "extra SQL that must succeed (repeatable)", action="append", default=[]),
        opt("--no-verify", "restore even if the SHA256SUMS beside the file does not list it or disagrees",
            action="store_true"),
        shared("json", "a JSON receipt"))),
    Command("audit-consumers", "who calls the three endpoints; exit 3 external, 4 unclassified", run_audit, options=(
        opt("logs", "proxy JSON logs or combined access logs; '-' is stdin", nargs="+", metavar="LOG"),
        opt("--internal-cidr", "internal networks (default RFC 1918, loopback, ULA)", action="append"),
        opt("--trusted-proxy", "CIDRs whose X-Forwarded-For is believed", action="append", default=[]),
        opt("--classifications", "TOML of manual decisions ([[consumer]] ip, class, note)", type=Path),
        opt("--record", "write the consumers seen into --classifications", action="store_true"),
        shared("config", CATALOG_HELP), shared("admin_url", ADMIN_FOR_CATALOG), shared("json"))),
    Command("redis-latency", "GET p50/p95/p99/p99.9/max at a fixed rate; exit 1 if p99 >= 10 ms", run_redis_latency,
            description="GET round trips on one dedicated connection, paced, warm-up discarded; beside them Redis's "
                        "own timing of the same window (LATENCY HISTOGRAM).", options=(
        shared("redis_url"),
        opt("--samples", "measured GETs (default 2000)", POSITIVE, type=int, default=2000),
        opt("--rate", "GETs per second (default 500)", POSITIVE, type=float, default=500.0),
        opt("--warmup", "GETs sent first and not counted (default 100)", NOT_NEGATIVE, type=int, default=100),
        opt("--max-p99-ms", "the bar: exit 1 when p99 is at or above it (default 10, the runbook's)", POSITIVE,
            type=float, default=redis_latency.THRESHOLD_MS),
        shared("json"))),
    Command("preflight", "the Week-0 exit criteria table; exit 0 only when all pass", run_preflight, options=(
        shared("dsn"), shared("redis_url"), shared("admin_url", "a running proxy's admin listener"),
        opt("--backup-dir", type=Path),
        opt("--logs", "logs for the consumer audit", nargs="*", default=[]),
        opt("--internal-cidr", action="append"),
        opt("--trusted-proxy", action="append", default=[]),
        opt("--classifications", type=Path),
        opt("--min-rows", check=NOT_NEGATIVE, type=int, default=1000),
        opt("--samples", "Redis GETs measured (default 2000)", POSITIVE, type=int, default=2000),
        opt("--redis-max-p99-ms", "the Redis criterion's bar (default 10 ms, the runbook's)", POSITIVE, type=float,
            default=redis_latency.THRESHOLD_MS),
        opt("--budget", check=POSITIVE, type=float, default=300.0),
        opt("--table", "[schema.]table (default deals)", type=table_name, default="deals"),
        shared("config", "stage catalog TOML (the built-in one if none)"),
        opt("--fallback-drill", "run the Redis fallback drill (stagectl drill redis-fallback) as the fallback "
                                "criterion", action="store_true"),
        *DRILL,
        shared("json", "one object: ok, verdict and every criterion"))),
    Command("drill", "operational drills against a staging proxy", action_dest="drill", actions=(
        Command("redis-fallback", "Redis goes away: the proxy must switch to last_known and back", run_drill,
                description="Watches a proxy's /_ops/mode while Redis is stopped and started again - by "
                            "--break-redis/--restore-redis, or by you when told. Never touches Redis itself "
                            "otherwise. Exit 0 the fallback worked, 1 it did not (or the proxy is unreachable), 2 "
                            "usage.", options=(shared("admin_url"), *DRILL,
                                               shared("json", "one object: ok and every step"))),)),
)
