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
from tools import admin_api, migrate_cli, offenders, week0_cli, week4_cli
from tools.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CommandError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CommandError(message, EXIT_USAGE)


def _mode_options(parser: argparse.ArgumentParser, *, inherited: bool) -> None:
    """Accepted before or after get/set; after, they must not reset what came before."""
    def default(value: object) -> object:
        return argparse.SUPPRESS if inherited else value
    parser.add_argument("--admin-url", default=default(None),
                        help="admin listener URL (default $STAGE_ADMIN_URL or http://127.0.0.1:9901)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print the API's JSON instead of a table")
    parser.add_argument("--timeout-s", type=float, default=default(5.0), help="HTTP timeout (default 5)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stagectl", description="stagegate rollout tools: the runbook as commands.",
                     epilog="exit codes: 0 ok, 1 a service unreachable or a check failed, 2 usage or rejected "
                            "input, 130 interrupted; 3-6 mean something per command (COMMAND --help, and "
                            "docs/reference.md)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    mode = commands.add_parser("mode", help="read or change endpoint modes through the proxy's _ops API",
                               description="Exit 0 ok, 1 proxy unreachable, 2 rejected, 3 token refused, 4 enforce "
                                           "blocked (--force overrides), 5 the proxy's mode store is unavailable.")
    _mode_options(mode, inherited=False)
    actions = mode.add_subparsers(dest="action", required=True, parser_class=_Parser)
    _mode_options(actions.add_parser("get", help="show every endpoint's mode, the source and the enforce block"),
                  inherited=True)
    mode.set_defaults(handler=run_mode)
    change = actions.add_parser("set", help="change a mode (token from $STAGE_OPS_TOKEN)")
    _mode_options(change, inherited=True)
    change.add_argument("endpoint", help="endpoint name, or '*' for all")
    change.add_argument("mode", choices=["off", "warn", "enforce"])
    change.add_argument("--percent", type=float, help="canary share for enforce, 0-100 (default 100)")
    change.add_argument("--reason", required=True, help="why (recorded with the change)")
    change.add_argument("--actor", default=None, help="who (default $USER)")
    change.add_argument("--force", action="store_true", help="enforce even while enforce is blocked")
    offenders = commands.add_parser("offenders", help="top consumers and values per endpoint from the proxy's logs")
    offenders.add_argument("logs", nargs="+", metavar="LOG", help="proxy JSON log files; '-' reads standard input")
    offenders.add_argument("--top", type=int, default=10, help="rows per table (default 10)")
    offenders.add_argument("--json", action="store_true", help="machine-readable output")
    offenders.set_defaults(handler=run_offenders)
    migrate_cli.register(commands)
    week0_cli.register(commands)
    week4_cli.register(commands)
    return parser


def render_table(view: Mapping[str, Any]) -> str:
    """The GET /_ops/mode body as a table for humans."""
    rows = [("ENDPOINT", "MODE", "PERCENT", "UPDATED", "BY", "REASON")]
    for name, record in view["endpoints"].items():
        percent = f"{record['percent']:g}" if record["mode"] == "enforce" else "-"
        rows.append((name, record["mode"], percent, record.get("updated_at") or "-", record.get("updated_by") or "-",
                     record.get("reason") or "-"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + str(row[-1])
             for row in rows]
    blocked = "yes" if view.get("enforce_blocked") else "no"
    return "\n".join([*lines, "", f"source: {view['source']}   enforce blocked: {blocked}"])


async def run_mode(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.timeout_s <= 0:
        raise CommandError("--timeout-s must be positive", EXIT_USAGE)
    url = f"{admin_api.admin_url(args.admin_url, environ)}/_ops/mode"
    async with admin_api.session(args.timeout_s) as session:
        if args.action == "get":
            view = await admin_api.call(session, "GET", url)
        else:
            if args.percent is not None and not 0 <= args.percent <= 100:
                raise CommandError("--percent must be between 0 and 100", EXIT_USAGE)
            token = admin_api.ops_token(environ, "mode set")
            body: dict[str, Any] = {"endpoint": args.endpoint, "mode": args.mode, "reason": args.reason,
                                    "actor": args.actor or environ.get("USER") or "stagectl", "force": args.force}
            if args.percent is not None:
                body["percent"] = args.percent
            view = await admin_api.call(session, "PUT", url, body, token)
    print(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode() if args.json else render_table(view))
    return EXIT_OK


async def run_offenders(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.top < 1:
        raise CommandError("--top must be at least 1", EXIT_USAGE)
    try:
        report = offenders.build(args.logs)
    except OSError as exc:
        raise CommandError(f"cannot read {exc.filename!r}: {exc.strerror}", EXIT_USAGE) from None
    if args.json:
        print(orjson.dumps(offenders.as_json(report, args.top), option=orjson.OPT_INDENT_2).decode())
    else:
        print(offenders.as_text(report, args.top))
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
