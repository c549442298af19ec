"""``stagectl offenders``: the offenders report from the proxy's WARN lines (docs/offenders.md)."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Final

import orjson

from tools.cli.command import AT_LEAST_1, Command, opt
from tools.cli.migrate import ADMIN_FOR_CATALOG, CATALOG_HELP, load_catalog
from tools.cli.options import shared
from tools.clients import catalogs
from tools.consumers import offenders
from tools.shared.errors import EXIT_OK, EXIT_USAGE, CommandError
from tools.shared.timeparse import parse_duration

MAX_TEMPORARY_DAYS: Final = 366


def _until(duration: str, now: float) -> str:
    """``--temporary 14d`` as the TOML date-time a temporary alias ends at (UTC, to the minute)."""
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise CommandError(f"--temporary: {exc}", EXIT_USAGE) from None
    if seconds > MAX_TEMPORARY_DAYS * 86400:
        raise CommandError(f"--temporary: at most {MAX_TEMPORARY_DAYS}d: a temporary alias is time for a fix; a "
                           "value you keep accepting is an alias", EXIT_USAGE)
    return datetime.fromtimestamp(now + seconds, UTC).strftime("%Y-%m-%dT%H:%M:00Z")


async def run_offenders(args: argparse.Namespace) -> int:
    if args.temporary is not None and not args.suggest_aliases:
        raise CommandError("--temporary goes with --suggest-aliases: it makes the suggested aliases temporary",
                           EXIT_USAGE)
    config = args.config
    chosen = await load_catalog(args)
    catalog = chosen.catalog
    try:
        filters = offenders.make_filters(args.endpoint, args.result, args.since, catalog)
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    try:
        report = offenders.build(args.logs, filters=filters)
    except OSError as exc:
        raise CommandError(f"cannot read {exc.filename!r}: {exc.strerror}", EXIT_USAGE) from None
    suggestions = offenders.suggest(report, catalog, args.min_count) if args.suggest_aliases and catalog else None
    until = _until(args.temporary, time.time()) if args.temporary is not None else None
    catalogs.say(chosen)
    if args.json:
        print(orjson.dumps(offenders.as_json(report, args.top, suggestions, until),
                           option=orjson.OPT_INDENT_2).decode())
    else:
        print(offenders.render(report, args.top, suggestions=suggestions, min_count=args.min_count,
                               config=config or "", until=until))
    return EXIT_OK


COMMANDS: Final = (
    Command("offenders", "top consumers and values per endpoint from the proxy's logs", run_offenders,
            description="Aliases, unknowns and invalid/unreadable values ranked apart, counts marked as a lower "
                        "bound when the flood guard suppressed lines (docs/offenders.md). Exit 0 ok, 2 a bad flag, "
                        "an unreadable LOG or catalog.", options=(
        opt("logs", "proxy JSON log files; '-' reads standard input", nargs="+", metavar="LOG"),
        opt("--top", "rows per table (default 10)", AT_LEAST_1, type=int, default=10),
        shared("json"),
        opt("--endpoint", "only this endpoint (repeatable)", action="append", metavar="NAME"),
        opt("--result", "only this result: alias, unknown, invalid or unreadable (repeatable)", action="append",
            metavar="R"),
        opt("--since", "only lines from WHEN on: RFC 3339 (2026-12-01T00:00:00Z) or a duration back from now (30m, "
                       "24h, 7d)", metavar="WHEN"),
        opt("--suggest-aliases", "propose catalog alias lines for frequent unknown values a typo or two from one "
                                 "stage (needs --config)", action="store_true"),
        shared("config", CATALOG_HELP + "; --endpoint names are checked against it, aliases suggested for it"),
        shared("admin_url", ADMIN_FOR_CATALOG),
        opt("--min-count", "suggest aliases only for values logged at least N times (default 5)", AT_LEAST_1,
            type=int, default=5, metavar="N"),
        opt("--temporary", "suggest temporary aliases ([stages.temporary_aliases]) ending this long from now (e.g. "
                           "14d): time for the consumers to fix their values", metavar="DURATION"))),
)
