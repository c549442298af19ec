"""Command-line wiring for the Week-0 pre-flight tools: backup, verify-backup, test-restore, audit-consumers,
redis-latency and preflight."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from tools.backups import backup
from tools.backups.restore import run_restore_test
from tools.cli import options
from tools.cli.migrate import ADMIN_FOR_CATALOG, CATALOG_HELP, load_catalog
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
                  4: "unclassified consumers left (ambiguous addresses): decide them in --classifications"}


def _json(data: object) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode()


def register(commands: Any) -> None:
    """Add the Week-0 commands to stagectl's subcommands."""
    p = commands.add_parser("backup", help="pg_dump to a timestamped file; latest link and SHA256SUMS updated")
    options.add(p, "dsn")
    p.add_argument("--out", required=True, type=Path, help="backup directory")
    p.add_argument("--format", choices=["plain", "custom"], default="plain")
    p.add_argument("--keep", type=int, help="keep only the newest N dumps")
    options.add(p, "json")
    p.set_defaults(handler=run_backup)

    p = commands.add_parser("verify-backup", help="check SHA256SUMS, completeness and the latest link")
    p.add_argument("dir", type=Path)
    options.add(p, "json")
    p.set_defaults(handler=run_verify_backup)

    p = commands.add_parser("test-restore", help="restore into a scratch database, smoke-test it, drop it")
    p.add_argument("file", type=Path)
    options.add(p, "dsn", dsn="the server to restore on")
    p.add_argument("--budget", type=float, default=300.0, help="seconds; the restore is stopped at the budget")
    p.add_argument("--min-rows", type=int, default=1, help="rows the stage table must hold (default 1)")
    p.add_argument("--table", type=table_name, default="deals", help="[schema.]table (default deals)")
    p.add_argument("--column", type=column_name, default="stage", help="the stage column (default stage)")
    p.add_argument("--smoke-query", action="append", default=[], help="extra SQL that must succeed (repeatable)")
    p.add_argument("--no-verify", action="store_true",
                   help="restore even if the SHA256SUMS beside the file does not list it or disagrees")
    options.add(p, "json", json="a JSON receipt")
    p.set_defaults(handler=run_test_restore)

    p = commands.add_parser("audit-consumers", help="who calls the three endpoints; exit 3 external, 4 unclassified")
    p.add_argument("logs", nargs="+", metavar="LOG", help="proxy JSON logs or combined access logs; '-' is stdin")
    p.add_argument("--internal-cidr", action="append", help="internal networks (default RFC 1918, loopback, ULA)")
    p.add_argument("--trusted-proxy", action="append", default=[], help="CIDRs whose X-Forwarded-For is believed")
    p.add_argument("--classifications", type=Path, help="TOML of manual decisions ([[consumer]] ip, class, note)")
    p.add_argument("--record", action="store_true", help="write the consumers seen into --classifications")
    options.add(p, "config", "admin_url", config=CATALOG_HELP, admin_url=ADMIN_FOR_CATALOG)
    options.add(p, "json")
    p.set_defaults(handler=run_audit)

    p = commands.add_parser("redis-latency", help="GET p50/p95/p99/p99.9/max at a fixed rate; exit 1 if p99 >= 10 ms",
                            description="GET round trips on one dedicated connection, paced, warm-up discarded; "
                                        "beside them Redis's own timing of the same window (LATENCY HISTOGRAM).")
    options.add(p, "redis_url")
    p.add_argument("--samples", type=int, default=2000, help="measured GETs (default 2000)")
    p.add_argument("--rate", type=float, default=500.0, help="GETs per second (default 500)")
    p.add_argument("--warmup", type=int, default=100, help="GETs sent first and not counted (default 100)")
    p.add_argument("--max-p99-ms", type=float, default=redis_latency.THRESHOLD_MS,
                   help="the bar: exit 1 when p99 is at or above it (default 10, the runbook's)")
    options.add(p, "json")
    p.set_defaults(handler=run_redis_latency)

    p = commands.add_parser("preflight", help="the Week-0 exit criteria table; exit 0 only when all pass")
    options.add(p, "dsn")
    options.add(p, "redis_url")
    options.add(p, "admin_url", admin_url="a running proxy's admin listener")
    p.add_argument("--backup-dir", type=Path)
    p.add_argument("--logs", nargs="*", default=[], help="logs for the consumer audit")
    p.add_argument("--internal-cidr", action="append")
    p.add_argument("--trusted-proxy", action="append", default=[])
    p.add_argument("--classifications", type=Path)
    p.add_argument("--min-rows", type=int, default=1000)
    p.add_argument("--samples", type=int, default=2000, help="Redis GETs measured (default 2000)")
    p.add_argument("--redis-max-p99-ms", type=float, default=redis_latency.THRESHOLD_MS,
                   help="the Redis criterion's bar (default 10 ms, the runbook's)")
    p.add_argument("--budget", type=float, default=300.0)
    p.add_argument("--table", type=table_name, default="deals", help="[schema.]table (default deals)")
    options.add(p, "config", config="stage catalog TOML (the built-in one if none)")
    p.add_argument("--fallback-drill", action="store_true",
                   help="run the Redis fallback drill (stagectl drill redis-fallback) as the fallback criterion")
    _drill_options(p)
    options.add(p, "json", json="one object: ok, verdict and every criterion")
    p.set_defaults(handler=run_preflight)

    p = commands.add_parser("drill", help="operational drills against a staging proxy")
    drills = p.add_subparsers(dest="drill", required=True, parser_class=type(p))
    p = drills.add_parser("redis-fallback", help="Redis goes away: the proxy must switch to last_known and back",
                          description="Watches a proxy's /_ops/mode while Redis is stopped and started again - by "
                                      "--break-redis/--restore-redis, or by you when told. Never touches Redis "
                                      "itself otherwise. Exit 0 the fallback worked, 1 it did not (or the proxy "
                                      "is unreachable), 2 usage.")
    options.add(p, "admin_url")
    _drill_options(p)
    options.add(p, "json", json="one object: ok and every step")
    p.set_defaults(handler=run_drill)


def _drill_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--break-redis", metavar="CMD", help="shell command that stops Redis (default: you do, when told)")
    p.add_argument("--restore-redis", metavar="CMD", help="shell command that starts Redis again")
    p.add_argument("--proxy-log", type=Path, metavar="FILE", help="the proxy's log: its WARN must appear there")
    p.add_argument("--drill-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="wait this long for each switch (default 120)")


def _drill(args: argparse.Namespace) -> drill.Drill:
    if args.drill_timeout <= 0:
        raise CommandError("--drill-timeout must be positive", EXIT_USAGE)
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
    if args.keep is not None and args.keep < 1:
        raise CommandError("--keep must be at least 1", EXIT_USAGE)
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
    if args.budget <= 0:
        raise CommandError("--budget must be positive", EXIT_USAGE)
    if args.min_rows < 0:
        raise CommandError("--min-rows must be 0 or more", EXIT_USAGE)
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
    internal = audit.networks(args.internal_cidr or list(audit.DEFAULT_INTERNAL), "--internal-cidr")
    trusted = audit.networks(args.trusted_proxy, "--trusted-proxy")
    decisions = audit.load_classifications(args.classifications)
    try:
        chosen = await load_catalog(args)
        consumers, skipped = audit.audit(read_lines(args.logs, sys.stdin.buffer), chosen.catalog,
                                         internal=internal, trusted=trusted, decisions=decisions)
    except OSError as exc:
        raise CommandError(f"cannot read {exc.filename!r}: {exc.strerror}", EXIT_USAGE) from None
    if args.record:
        if args.classifications is None:
            raise CommandError("--record needs --classifications FILE", EXIT_USAGE)
        audit.record(args.classifications, consumers.values())
    catalogs.say(chosen)
    code = audit.verdict(consumers.values())
    # what needs a decision first: new (undecided) consumers, then by traffic
    rows = sorted(consumers.values(), key=lambda c: (c.known, -c.requests, c.ip))
    if args.json:
        print(_json({"exit": code, "verdict": AUDIT_VERDICTS[code], "skipped_lines": skipped, "consumers": [
            {"ip": c.ip, "user_agent": c.user_agent, "class": c.cls, "known": c.known, "note": c.note,
             "requests": c.requests, "unknown_stages": c.unknown_stages, "endpoints": sorted(c.endpoints),
             "first_seen": c.first, "last_seen": c.last} for c in rows]}))
    else:
        print(f"{len(rows)} consumer(s) of the validated endpoints; {skipped} other line(s) skipped")
        if rows:
            print(f"  {'CLASS':<10} {'SEEN':<5} {'IP':<39} {'REQUESTS':>8} {'UNKNOWN':>7}  {'ENDPOINTS':<30} "
                  "FIRST .. LAST  USER AGENT")
        for c in rows:
            mark = "known" if c.known else "NEW"
            print(f"  {c.cls:<10} {mark:<5} {c.ip:<39} {c.requests:>8} {c.unknown_stages:>7}  "
                  f"{','.join(sorted(c.endpoints)):<30} {c.first} .. {c.last}  {c.user_agent!r}")
        print(f"\nverdict: {AUDIT_VERDICTS[code]} (exit {code})")
    return code


async def run_redis_latency(args: argparse.Namespace) -> int:
    url = args.redis_url
    if not url:
        raise CommandError("no Redis: pass --redis-url or set STAGE_REDIS_URL", EXIT_USAGE)
    if args.samples < 1 or args.rate <= 0 or args.max_p99_ms <= 0 or args.warmup < 0:
        raise CommandError("--samples, --rate and --max-p99-ms must be positive, --warmup 0 or more", EXIT_USAGE)
    result = await redis_latency.measure(url, args.samples, args.rate, threshold_ms=args.max_p99_ms,
                                         warmup=args.warmup)
    print(_json(result) if args.json else redis_latency.render(result))
    return EXIT_OK if result["ok"] else EXIT_FAILED


async def run_preflight(args: argparse.Namespace) -> int:
    if args.redis_max_p99_ms <= 0 or args.samples < 1 or args.budget <= 0 or args.min_rows < 0:
        raise CommandError("--redis-max-p99-ms, --samples and --budget must be positive, --min-rows 0 or more",
                           EXIT_USAGE)
    request = preflight.PreflightArgs(
        dsn=args.dsn, redis_url=args.redis_url, admin_url=args.admin_url, backup_dir=args.backup_dir, logs=args.logs,
        internal=audit.networks(args.internal_cidr or list(audit.DEFAULT_INTERNAL), "--internal-cidr"),
        trusted=audit.networks(args.trusted_proxy, "--trusted-proxy"), classifications=args.classifications,
        min_rows=args.min_rows, samples=args.samples, budget_s=args.budget, table=args.table,
        redis_max_p99_ms=args.redis_max_p99_ms, fallback_drill=_drill(args) if args.fallback_drill else None)
    criteria = await preflight.run(request, catalogs.local(args.config))
    print(_json(preflight.as_json(criteria)) if args.json else preflight.render(criteria))
    return EXIT_OK if all(c.ok for c in criteria) else EXIT_FAILED

