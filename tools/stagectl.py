"""``stagectl``: the rollout tools (DESIGN §4). Entry point is :func:`main`.

Exit codes (tools/errors.py): 0 ok; 1 service unreachable, run failed or
verification failed; 2 bad usage or rejected input; 3 credentials refused;
4 enforce blocked (409); 5 mode store unavailable (503); 6 another migration
holds the lock; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import aiohttp
import orjson

from tools import migrate_cli, offenders, week0_cli, week4_cli
from tools.errors import EXIT_AUTH, EXIT_BLOCKED, EXIT_FAILED, EXIT_OK, EXIT_STORE, EXIT_USAGE, CommandError

_STATUS_EXIT = {400: EXIT_USAGE, 401: EXIT_AUTH, 403: EXIT_AUTH, 409: EXIT_BLOCKED, 503: EXIT_STORE}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CommandError(message, EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stagectl", description="stagegate rollout tools.",
                     epilog="exit codes: 0 ok, 1 unreachable/failed, 2 usage or rejected input, 3 auth refused, "
                            "4 enforce blocked, 5 mode store unavailable, 6 migration lock held, 130 interrupted")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    mode = commands.add_parser("mode", help="read or change endpoint modes through the proxy's _ops API")
    mode.add_argument("--admin-url", default=None,
                      help="admin listener URL (default $STAGE_ADMIN_URL or http://127.0.0.1:9901)")
    mode.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    mode.add_argument("--timeout-s", type=float, default=5.0, help="HTTP timeout (default 5)")
    actions = mode.add_subparsers(dest="action", required=True, parser_class=_Parser)
    actions.add_parser("get", help="show every endpoint's mode, the source and the enforce block")
    mode.set_defaults(handler=run_mode)
    change = actions.add_parser("set", help="change a mode (token from $STAGE_OPS_TOKEN)")
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


async def _call(method: str, url: str, timeout_s: float, body: dict[str, Any] | None = None,
                token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.request(method, url, json=body, headers=headers) as response:
                raw = await response.read()
                status = response.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise CommandError(f"cannot reach {url}: {type(exc).__name__} {exc}".strip()) from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise CommandError(f"{url} answered {status} with a body that is not JSON") from None
    if status >= 400:
        detail = data.get("detail") if isinstance(data, dict) else None
        raise CommandError(f"{method} {url}: {status} {detail or ''}".strip(), _STATUS_EXIT.get(status, EXIT_FAILED))
    if not isinstance(data, dict):
        raise CommandError(f"{url} answered with unexpected JSON")
    return data


async def run_mode(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    admin = (args.admin_url or environ.get("STAGE_ADMIN_URL") or "http://127.0.0.1:9901").rstrip("/")
    url = f"{admin}/_ops/mode"
    if args.action == "get":
        view = await _call("GET", url, args.timeout_s)
    else:
        token = environ.get("STAGE_OPS_TOKEN", "").strip()
        if not token:
            raise CommandError("STAGE_OPS_TOKEN is not set: mode set needs the ops bearer token", EXIT_AUTH)
        body: dict[str, Any] = {"endpoint": args.endpoint, "mode": args.mode, "reason": args.reason,
                                "actor": args.actor or environ.get("USER") or "stagectl", "force": args.force}
        if args.percent is not None:
            body["percent"] = args.percent
        view = await _call("PUT", url, args.timeout_s, body, token)
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


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one stagectl command; errors are one line on stderr and a meaningful exit code."""
    env = os.environ if environ is None else environ
    try:
        args = build_parser().parse_args(argv)
        code: int = asyncio.run(args.handler(args, env))
        return code
    except CommandError as exc:
        print(f"stagectl: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
