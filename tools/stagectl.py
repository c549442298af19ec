"""``stagectl``: the rollout tools (docs/reference.md lists every command). Entry point is :func:`main`.

Exit codes common to every command: 0 ok; 1 a service unreachable or a check
failed; 2 bad usage or rejected input; 130 interrupted. 3-6 mean something
per command (tools/errors.py, each command's --help).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, TextIO

import orjson

from proxy.shared.secrets import mask_text
from tools import catalogs, migrate_cli, offenders, ops_cli, week0_cli, week4_cli
from tools.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CommandError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CommandError(message, EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stagectl", description="stagegate rollout tools: the runbook as commands.",
                     epilog="exit codes: 0 ok, 1 a service unreachable or a check failed, 2 usage or rejected "
                            "input, 130 interrupted; 3-6 mean something per command (COMMAND --help, and "
                            "docs/reference.md)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ops_cli.register(commands)
    offenders = commands.add_parser("offenders", help="top consumers and values per endpoint from the proxy's logs",
                                    description="Aliases, unknowns and invalid/unreadable values ranked apart, "
                                                "counts marked as a lower bound when the flood guard suppressed "
                                                "lines (docs/offenders.md). Exit 0 ok, 2 a bad flag, an unreadable "
                                                "LOG or catalog.")
    offenders.add_argument("logs", nargs="+", metavar="LOG", help="proxy JSON log files; '-' reads standard input")
    offenders.add_argument("--top", type=int, default=10, help="rows per table (default 10)")
    offenders.add_argument("--json", action="store_true", help="machine-readable output")
    offenders.add_argument("--endpoint", action="append", metavar="NAME", help="only this endpoint (repeatable)")
    offenders.add_argument("--result", action="append", metavar="R",
                           help="only this result: alias, unknown, invalid or unreadable (repeatable)")
    offenders.add_argument("--since", metavar="WHEN",
                           help="only lines from WHEN on: RFC 3339 (2026-12-01T00:00:00Z) or a duration back from "
                                "now (30m, 24h, 7d)")
    offenders.add_argument("--suggest-aliases", action="store_true",
                           help="propose catalog alias lines for frequent unknown values a typo or two from one "
                                "stage (needs --config)")
    offenders.add_argument("--config", metavar="PATH",
                           help="the catalog TOML the proxy runs with (default $STAGE_CONFIG; else the catalog the "
                                "proxy at --admin-url serves; else the built-in one); --endpoint names are checked "
                                "against it, aliases suggested for it")
    offenders.add_argument("--admin-url", help="a proxy's admin listener (default $STAGE_ADMIN_URL): use its catalog")
    offenders.add_argument("--min-count", type=int, default=5, metavar="N",
                           help="suggest aliases only for values logged at least N times (default 5)")
    offenders.set_defaults(handler=run_offenders)
    migrate_cli.register(commands)
    week0_cli.register(commands)
    week4_cli.register(commands)
    return parser


async def run_offenders(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.top < 1:
        raise CommandError("--top must be at least 1", EXIT_USAGE)
    if args.min_count < 1:
        raise CommandError("--min-count must be at least 1", EXIT_USAGE)
    config = args.config or environ.get("STAGE_CONFIG")
    chosen = await migrate_cli.load_catalog(args, environ)
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


class _Stdout:
    """sys.stdout for which a reader going away (``stagectl mode get | head``) ends the output, not the command:
    the rest is written to /dev/null and the command's exit code stands."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())  # what is still buffered goes nowhere, quietly
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _fail(message: str) -> None:
    print(f"stagectl: error: {mask_text(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one stagectl command; errors are one line on stderr (credentials masked) and a meaningful exit code.

    Set STAGECTL_DEBUG=1 to get the traceback of an unexpected error instead of its one line."""
    env = os.environ if environ is None else environ
    stdout = sys.stdout
    sys.stdout = _Stdout(stdout)
    try:
        args = build_parser().parse_args(argv)
        code: int = asyncio.run(args.handler(args, env))
        return code
    except CommandError as exc:
        _fail(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:  # a file or socket problem no command worded itself: still one line
        where = f" ({exc.filename})" if exc.filename else ""
        _fail(f"{exc.strerror or type(exc).__name__}{where}")
        return EXIT_FAILED
    except Exception as exc:
        if env.get("STAGECTL_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (a bug; STAGECTL_DEBUG=1 shows the traceback)")
        return EXIT_FAILED
    finally:
        sys.stdout.flush()
        sys.stdout = stdout


if __name__ == "__main__":
    sys.exit(main())
