"""Command-line wiring for Week 4: ``stagectl gate``, ``rollout`` and ``normalize`` (docs/rollout.md)."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

from tools.backups.backup import split_password
from tools.cli import actors
from tools.cli.command import AT_LEAST_1, NOT_NEGATIVE, POSITIVE, Command, inside, opt
from tools.cli.migrate import ADMIN_FOR_CATALOG, CATALOG_HELP, RUN, load_catalog, run_options, where
from tools.cli.options import shared
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


GATE: Final = (  # the gate's evidence and thresholds (stagectl gate, and stagectl rollout's start)
    shared("prometheus"),
    shared("config", "stage catalog TOML, for the endpoint names (the built-in one if none)"),
    opt("--timeout-s", "per Prometheus/admin request (default 30)", POSITIVE, type=float, default=30.0),
    opt("--lookback", "history read (default 45d)", type=_duration, default=45 * 86400.0, metavar="DURATION"),
    opt("--min-baseline", "requests seen in off before warn (default 10000)", NOT_NEGATIVE, type=int,
        default=10_000),
    opt("--good-ratio", "a good day would reject less than this (default 0.005)", inside(0, 1), type=float,
        default=0.005),
    opt("--good-days", "consecutive good days before enforce (default 7)", NOT_NEGATIVE, type=int, default=7),
    opt("--cap-days", "days in warn before a person decides (default 30)", NOT_NEGATIVE, type=int, default=30),
    opt("--min-daily-requests", "fewer warn requests make a thin day (default 100)", NOT_NEGATIVE, type=int,
        default=100))


def _prometheus_url(args: argparse.Namespace) -> str:
    url: str | None = args.prometheus
    if not url:
        raise CommandError("no Prometheus: pass --prometheus URL or set PROMETHEUS_URL", EXIT_USAGE)
    if not url.startswith(("http://", "https://")):
        raise CommandError(f"--prometheus must be an http(s) URL, got {url[:80]!r}", EXIT_USAGE)
    return url


def _options(args: argparse.Namespace) -> gate.GateOptions:
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


COMMANDS: Final = (
    Command("gate", "each endpoint's rollout verdict from Prometheus evidence", run_gate,
            description="Where each endpoint stands: baseline in off, good days in warn, blocks. Exit 0 all may take "
                        "their next step, 3 some must keep collecting, 4 one is blocked or at the warn cap, 1 "
                        "Prometheus unreachable.", options=(
        opt("--endpoint", "only this endpoint (repeatable)", action="append", metavar="NAME"),
        opt("--at", "as of this instant (RFC 3339 or Unix seconds)", type=_instant, metavar="TIME"),
        shared("json", "one JSON object"), *GATE)),
    Command("rollout", "drive the enforce canary 10%% -> 50%% -> 100%% on evidence", run_rollout,
            description="The canary driver. Exit 0 done, 1 Prometheus or the proxy unreachable before any change "
                        "(nothing changed), 2 usage or another rollout holds the endpoint, 3 gave up waiting for "
                        "traffic or the ops token was refused, 4 aborted (a check failed, evidence was missing "
                        "--max-check-errors times in a row, the gate refused, the replicas serve two catalogs, or "
                        "someone else changed the mode), 130 interrupted (the mode is left as it is).", options=(
        opt("--endpoint", required=True, metavar="NAME"),
        opt("--steps", "PERCENT:DURATION,..., ending in 100 (default 10:2h,50:4h,100)", default="10:2h,50:4h,100"),
        opt("--interval", "check every (default 1m)", type=_duration, default=60.0, metavar="DURATION"),
        opt("--min-requests", "enforced requests a step needs (default 100)", AT_LEAST_1, type=int, default=100),
        opt("--max-enforce-error", "rejected / enforced (default 0.001)", NOT_NEGATIVE, type=float, default=0.001),
        opt("--max-validator-p99", "validator p99 in seconds (default 0.001)", POSITIVE, type=float,
            default=0.001, metavar="SECONDS"),
        opt("--max-wait", "past a step's duration, wait this long for enough traffic, then exit 3 (default 24h)",
            type=_duration, default=24 * 3600.0, metavar="DURATION"),
        opt("--max-check-errors", "checks in a row that may fail (Prometheus or the proxy silent) before the "
                                  "endpoint goes back to warn (default 5); the step's clock stops meanwhile",
            AT_LEAST_1, type=int, default=5, metavar="N"),
        opt("--skip-gate", "start without the gate's ready_for_enforce", action="store_true"),
        opt("--reason", "why: on every history entry the driver writes (required with --skip-gate)"),
        shared("actor"),
        opt("--dry-run", "say what would happen, change nothing", action="store_true"),
        shared("json", "one JSON object per line (the default off a terminal)"),
        shared("admin_url", "admin listener (else http://127.0.0.1:9901)"), *GATE)),
    Command("normalize", "Day 5: backup, verify, restore test, migrate, verify; stops at a failure", run_normalize,
            description=normalize.__doc__, defaults={"resume_from": None}, options=(
        shared("dsn"),
        opt("--backup-dir", "where the backup and the receipt go", required=True, type=Path),
        opt("--restore-budget", "seconds for the restore test (default 300)", POSITIVE, type=float, default=300.0),
        opt("--min-rows", "rows the restored table must hold (default 1)", NOT_NEGATIVE, type=int, default=1),
        opt("--table", "[schema.]table (default deals)", type=table_name, default="deals"),
        opt("--column", "the stage column (default stage)", type=column_name, default="stage"),
        opt("--pk", "key column (default: the primary key)", type=column_name),
        shared("config", CATALOG_HELP), shared("admin_url", ADMIN_FOR_CATALOG),
        opt("--resume", "with --apply: continue the unfinished migration of the last receipt in --backup-dir, on "
                        "that receipt's verified backup", action="store_true"),
        opt("--keep", "keep only the newest N dumps (as backup --keep)", AT_LEAST_1, type=int, metavar="N"),
        *RUN)),
)
