"""``stagectl offenders``: the offenders report from the proxy's WARN lines (docs/offenders.md)."""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from tools.cli import options
from tools.cli.migrate import ADMIN_FOR_CATALOG, CATALOG_HELP, load_catalog
from tools.clients import catalogs
from tools.consumers import offenders
from tools.shared.errors import EXIT_OK, EXIT_USAGE, CommandError


def register(commands: Any) -> None:
    """Add ``offenders`` to stagectl's subcommands."""
    parser = commands.add_parser("offenders", help="top consumers and values per endpoint from the proxy's logs",
                                    description="Aliases, unknowns and invalid/unreadable values ranked apart, "
                                                "counts marked as a lower bound when the flood guard suppressed "
                                                "lines (docs/offenders.md). Exit 0 ok, 2 a bad flag, an unreadable "
                                                "LOG or catalog.")
    parser.add_argument("logs", nargs="+", metavar="LOG", help="proxy JSON log files; '-' reads standard input")
    parser.add_argument("--top", type=int, default=10, help="rows per table (default 10)")
    options.add(parser, "json")
    parser.add_argument("--endpoint", action="append", metavar="NAME", help="only this endpoint (repeatable)")
    parser.add_argument("--result", action="append", metavar="R",
                           help="only this result: alias, unknown, invalid or unreadable (repeatable)")
    parser.add_argument("--since", metavar="WHEN",
                           help="only lines from WHEN on: RFC 3339 (2026-12-01T00:00:00Z) or a duration back from "
                                "now (30m, 24h, 7d)")
    parser.add_argument("--suggest-aliases", action="store_true",
                           help="propose catalog alias lines for frequent unknown values a typo or two from one "
                                "stage (needs --config)")
    options.add(parser, "config", "admin_url", config=CATALOG_HELP + "; --endpoint names are checked against it, "
                "aliases suggested for it", admin_url=ADMIN_FOR_CATALOG)
    parser.add_argument("--min-count", type=int, default=5, metavar="N",
                           help="suggest aliases only for values logged at least N times (default 5)")
    parser.set_defaults(handler=run_offenders)


async def run_offenders(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise CommandError("--top must be at least 1", EXIT_USAGE)
    if args.min_count < 1:
        raise CommandError("--min-count must be at least 1", EXIT_USAGE)
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
    catalogs.say(chosen)
    if args.json:
        print(orjson.dumps(offenders.as_json(report, args.top, suggestions), option=orjson.OPT_INDENT_2).decode())
    else:
        print(offenders.render(report, args.top, suggestions=suggestions, min_count=args.min_count,
                               config=config or ""))
    return EXIT_OK
