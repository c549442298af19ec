"""Command-line wiring for Week 4: ``stagectl gate``, ``rollout`` and ``normalize`` (docs/rollout.md)."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tools.backups.backup import split_password
from tools.cli import actors, options
from tools.cli.migrate import ADMIN_FOR_CATALOG, CATALOG_HELP, add_run_options, load_catalog, run_options, where
from tools.cli.types import column_name, table_name
from tools.clients import admin_api, catalogs
from tools.clients.prom import Prometheus
from tools.migration import runs
from tools.rollout import driver as rollout
from tools.rollout import gate, normalize
from tools.shared.errors import EXIT_FAILED, EXIT_STORE, EXIT_USAGE, CommandError
from tools.shared.timeparse import parse_duration, parse_instant


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _instant(text: str) -> float:
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _gate_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    options.add(parser, "prometheus", "config", config="stage catalog TOML, for the endpoint names (the built-in "
                "one if none)")
    add("--timeout-s", type=float, default=30.0, help="per Prometheus/admin request (default 30)")
    add("--lookback", type=_duration, default=45 * 86400.0, metavar="DURATION", help="history read (default 45d)")
    add("--min-baseline", type=int, default=10_000, help="requests seen in off before warn (default 10000)")
    add("--good-ratio", type=float, default=0.005, help="a good day would reject less than this (default 0.005)")
    add("--good-days", type=int, default=7, help="consecutive good days before enforce (default 7)")
    add("--cap-days", type=int, default=30, help="days in warn before a person decides (default 30)")
    add("--min-daily-requests", type=int, default=100, help="fewer warn requests make a thin day (default 100)")


def register(commands: Any) -> None:
    """Add gate, rollout and normalize to stagectl's subcommands."""
    p = commands.add_parser("gate", help="each endpoint's rollout verdict from Prometheus evidence",
                            description="Where each endpoint stands: baseline in off, good days in warn, blocks. "
                                        "Exit 0 all may take their next step, 3 some must keep collecting, 4 one is "
                                        "blocked or at the warn cap, 1 Prometheus unreachable.")
    p.add_argument("--endpoint", action="append", metavar="NAME", help="only this endpoint (repeatable)")
    p.add_argument("--at", type=_instant, metavar="TIME", help="as of this instant (RFC 3339 or Unix seconds)")
    options.add(p, "json", json="one JSON object")
    _gate_options(p)
    p.set_defaults(handler=run_gate)

    p = commands.add_parser("rollout", help="drive the enforce canary 10%% -> 50%% -> 100%% on evidence",
                            description="The canary driver. Exit 0 done, 1 Prometheus or the proxy unreachable "
                                        "before any change (nothing changed), 2 usage or another rollout holds the "
                                        "endpoint, 3 gave up waiting for traffic or the ops token was refused, 4 "
                                        "aborted (a check failed, evidence was missing --max-check-errors times in "
                                        "a row, the gate refused, the replicas serve two catalogs, or someone else "
                                        "changed the mode), 130 interrupted (the mode is left as it is).")
    p.add_argument("--endpoint", required=True, metavar="NAME")
    p.add_argument("--steps", default="10:2h,50:4h,100", help="PERCENT:DURATION,..., ending in 100 "
                                                              "(default 10:2h,50:4h,100)")
    p.add_argument("--interval", type=_duration, default=60.0, metavar="DURATION", help="check every (default 1m)")
    p.add_argument("--min-requests", type=int, default=100, help="enforced requests a step needs (default 100)")
    p.add_argument("--max-enforce-error", type=float, default=0.001, help="rejected / enforced (default 0.001)")
    p.add_argument("--max-validator-p99", type=float, default=0.001, metavar="SECONDS",
                   help="validator p99 in seconds (default 0.001)")
    p.add_argument("--max-wait", type=_duration, default=24 * 3600.0, metavar="DURATION",
                   help="past a step's duration, wait this long for enough traffic, then exit 3 (default 24h)")
    p.add_argument("--max-check-errors", type=int, default=5, metavar="N",
                   help="checks in a row that may fail (Prometheus or the proxy silent) before the endpoint goes "
                        "back to warn (default 5); the step's clock stops meanwhile")
    p.add_argument("--skip-gate", action="store_true", help="start without the gate's ready_for_enforce")
    p.add_argument("--reason", help="why: on every history entry the driver writes (required with --skip-gate)")
    options.add(p, "actor")
    p.add_argument("--dry-run", action="store_true", help="say what would happen, change nothing")
    options.add(p, "json", "admin_url", json="one JSON object per line (the default off a terminal)",
                admin_url="admin listener (else http://127.0.0.1:9901)")
    _gate_options(p)
    p.set_defaults(handler=run_rollout)

    p = commands.add_parser("normalize", help="Day 5: backup, verify, restore test, migrate, verify; stops at a "
                                              "failure", description=normalize.__doc__)
    options.add(p, "dsn")
    p.add_argument("--backup-dir", required=True, type=Path, help="where the backup and the receipt go")
    p.add_argument("--restore-budget", type=float, default=300.0, help="seconds for the restore test (default 300)")
    p.add_argument("--min-rows", type=int, default=1, help="rows the restored table must hold (default 1)")
    p.add_argument("--table", type=table_name, default="deals", help="[schema.]table (default deals)")
    p.add_argument("--column", type=column_name, default="stage", help="the stage column (default stage)")
    p.add_argument("--pk", type=column_name, help="key column (default: the primary key)")
    options.add(p, "config", "admin_url", config=CATALOG_HELP, admin_url=ADMIN_FOR_CATALOG)
    p.add_argument("--resume", action="store_true",
                   help="with --apply: continue the unfinished migration of the last receipt in --backup-dir, on "
                        "that receipt's verified backup")
    p.add_argument("--keep", type=int, metavar="N", help="keep only the newest N dumps (as backup --keep)")
    add_run_options(p)
    p.set_defaults(handler=run_normalize, resume_from=None)


def _prometheus_url(args: argparse.Namespace) -> str:
    url: str | None = args.prometheus
    if not url:
        raise CommandError("no Prometheus: pass --prometheus URL or set PROMETHEUS_URL", EXIT_USAGE)
    if not url.startswith(("http://", "https://")):
        raise CommandError(f"--prometheus must be an http(s) URL, got {url[:80]!r}", EXIT_USAGE)
    return url


def _options(args: argparse.Namespace) -> gate.GateOptions:
    checks = {"--min-baseline": args.min_baseline, "--good-days": args.good_days, "--cap-days": args.cap_days,
              "--min-daily-requests": args.min_daily_requests}
    for flag, value in checks.items():
        if value < 0:
            raise CommandError(f"{flag} must be 0 or more, got {value}", EXIT_USAGE)
    if not 0 < args.good_ratio < 1:
        raise CommandError(f"--good-ratio must be between 0 and 1, got {args.good_ratio}", EXIT_USAGE)
    if args.timeout_s <= 0:
        raise CommandError("--timeout-s must be positive", EXIT_USAGE)
    return gate.GateOptions(args.lookback, args.min_baseline, args.good_ratio, args.good_days, args.cap_days,
                            args.min_daily_requests)


def _endpoints(args: argparse.Namespace, chosen: list[str] | None) -> list[str]:
    names = list(catalogs.local(args.config).endpoint_names)
    unknown = [name for name in chosen or [] if name not in names]
    if unknown:
        raise CommandError(f"unknown endpoint(s) {unknown}: the catalog has {names}", EXIT_USAGE)
    return chosen or names


async def run_gate(args: argparse.Namespace) -> int:
    options = _options(args)
    names = _endpoints(args, args.endpoint)
    at = args.at if args.at is not None else time.time()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout_s)) as session:
        result = await gate.evaluate(Prometheus(_prometheus_url(args), session), names, at, options)
    print(orjson.dumps(result.as_json(), option=orjson.OPT_INDENT_2).decode() if args.json
          else gate.render(result, options))
    return gate.exit_code(result)


def _rollout_options(args: argparse.Namespace) -> rollout.RolloutOptions:
    try:
        steps = rollout.parse_steps(args.steps)
    except ValueError as exc:
        raise CommandError(f"--steps: {exc}", EXIT_USAGE) from None
    if args.skip_gate and not (args.reason or "").strip():
        raise CommandError("--skip-gate needs --reason TEXT (it is recorded in the mode history)", EXIT_USAGE)
    if args.min_requests < 1 or args.max_enforce_error < 0 or args.max_validator_p99 <= 0 \
            or args.max_check_errors < 1:
        raise CommandError("--min-requests and --max-check-errors must be at least 1, --max-enforce-error 0 or "
                           "more, --max-validator-p99 positive", EXIT_USAGE)
    _endpoints(args, [args.endpoint])
    reason = (args.reason or "").strip() or None
    return rollout.RolloutOptions(args.endpoint, steps, args.interval, args.min_requests, args.max_enforce_error,
                                  args.max_validator_p99, args.max_wait, reason if args.skip_gate else None,
                                  args.dry_run, _options(args), args.max_check_errors,
                                  actors.actor("rollout", args.actor), reason)


async def run_rollout(args: argparse.Namespace) -> int:
    options = _rollout_options(args)
    prometheus_url = _prometheus_url(args)
    token = "" if args.dry_run else admin_api.ops_token(args.ops_token, "rollout", EXIT_USAGE)
    as_json = args.json or not sys.stdout.isatty()

    def report(event: str, fields: dict[str, Any]) -> None:
        line = orjson.dumps({"event": event, "endpoint": options.endpoint, **fields}).decode() if as_json else \
            rollout.human_line(event, fields)
        print(line, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout_s)) as session:
        driver = rollout.Driver(session, admin_api.admin_url(args.admin_url), token,
                                Prometheus(prometheus_url, session), options, report)
        try:
            return await driver.run(stop)
        except CommandError as exc:
            # a refused token is 3, as for stagectl mode; an unavailable mode store (5) is a failure to drive (1)
            if exc.code == EXIT_STORE:
                raise CommandError(str(exc), EXIT_FAILED) from None
            raise


async def run_normalize(args: argparse.Namespace) -> int:
    if args.restore_budget <= 0 or args.min_rows < 0:
        raise CommandError("--restore-budget must be positive and --min-rows 0 or more", EXIT_USAGE)
    if args.keep is not None and args.keep < 1:
        raise CommandError("--keep must be at least 1", EXIT_USAGE)
    request = normalize.NormalizeRequest(where(args), run_options(args), args.backup_dir,
                                         args.restore_budget, args.min_rows, args.keep, _resume_hint(args))
    chosen = await load_catalog(args)  # a bad catalog, or one the proxy does not serve, stops here
    return await normalize.run(request, chosen, lambda line: print(line, flush=True))


def _resume_hint(args: argparse.Namespace) -> str:
    """The command that continues a normalize, as it must be typed (a password in --dsn is left out: set
    PGPASSWORD or use ~/.pgpass, as psql does)."""
    words = ["stagectl", "normalize", "--apply", "--resume"]
    if args.dsn:
        words += ["--dsn", split_password(args.dsn)[0]]
    words += ["--backup-dir", str(args.backup_dir)]
    for flag, value in (("--config", args.config), ("--admin-url", args.admin_url)):
        if value:
            words += [flag, value]
    return shlex.join(words) + runs.target_flags(args.table, args.column)
