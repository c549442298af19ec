"""``stagectl exempt add|list|remove``: give one late consumer more time in warn while everyone else is enforced
(``/_ops/exemptions``; docs/rollout.md, "A late consumer")."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote

from proxy.wire import exemptions as wire
from tools.cli import actors
from tools.cli.command import Command, opt
from tools.cli.ops import ADMIN, dump_json, read_answer, table
from tools.cli.options import shared
from tools.clients import admin_api
from tools.shared.errors import EXIT_OK, EXIT_USAGE, CommandError
from tools.shared.timeparse import format_duration, parse_duration, parse_instant

MAX_DAYS: Final = 30
EXITS: Final = ("Exit 0 ok, 1 proxy unreachable, 2 rejected (a bad value, no such exemption), 3 token refused, "
                "4 too many exemptions, 5 the proxy's mode store is unavailable.")


def until_of(args: argparse.Namespace, now: float) -> str:
    """``--for 14d`` or ``--until 2026-12-19T00:00:00Z`` as the RFC 3339 instant the API takes."""
    if (args.for_ is None) == (args.until is None):
        raise CommandError("say how long: --for DURATION (e.g. 14d) or --until RFC3339", EXIT_USAGE)
    try:
        if args.for_ is not None:
            seconds = now + parse_duration(args.for_)
        elif "T" not in args.until.upper():
            raise ValueError(f"{args.until!r} is not an RFC 3339 instant (2026-12-19T00:00:00Z)")
        else:
            seconds = parse_instant(args.until)
    except ValueError as exc:
        flag = "--for" if args.for_ is not None else "--until"
        raise CommandError(f"{flag}: {exc}", EXIT_USAGE) from None
    if not seconds > now:  # also NaN and -inf
        raise CommandError(f"the exemption would end before it starts ({args.until or args.for_})", EXIT_USAGE)
    if seconds - now > MAX_DAYS * 86400:
        raise CommandError(f"at most {MAX_DAYS} days ahead (the proxy refuses more): an exemption is time for a "
                           "late consumer; renew it if they need more", EXIT_USAGE)
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def left(seconds: float) -> str:
    """Time left as people count it for exemptions: ``13d23h``, else ``4h05m``."""
    if seconds >= 86400:
        days, rest = divmod(int(seconds), 86400)
        return f"{days}d{rest // 3600:02d}h"
    return format_duration(seconds)


def render(exemptions: Sequence[wire.Exemption], now: float) -> str:
    if not exemptions:
        return "no exemptions"
    rows: list[Sequence[object]] = [("ID", "ENDPOINT", "WHO", "UNTIL", "LEFT", "BY", "REASON")]
    for e in exemptions:
        rows.append((e.id, e.endpoint, e.who, e.until, left(datetime.fromisoformat(e.until).timestamp() - now),
                      e.created_by, e.reason))
    return "\n".join(table(rows))


async def run_exempt(args: argparse.Namespace) -> int:
    base = f"{admin_api.admin_url(args.admin_url)}/_ops/exemptions"
    if args.action == "list":
        async with admin_api.session(args.timeout_s) as session:
            listed = read_answer(wire.Exemptions, await admin_api.call(session, "GET", base))
        print(dump_json(listed.to_json()) if args.json else render(listed.exemptions, time.time()))
        return EXIT_OK
    actor = actors.actor(f"exempt {args.action}", args.actor)
    if args.action == "add":
        if (args.consumer is None) == (args.client_cidr is None):
            raise CommandError("name exactly one of --consumer NAME and --client-cidr CIDR", EXIT_USAGE)
        body = {"endpoint": args.endpoint, "until": until_of(args, time.time()), "reason": args.reason,
                "actor": actor, **({"consumer": args.consumer} if args.consumer is not None
                                   else {"client_cidr": args.client_cidr})}
        async with admin_api.session(args.timeout_s) as session:
            token = admin_api.ops_token(args.ops_token, "exempt add")
            made = read_answer(wire.Exemption, await admin_api.call(session, "PUT", base, body, token))
        print(dump_json(made.to_json()) if args.json else
              f"exempted {made.who} on {made.endpoint} until {made.until} (id {made.id}); end it early with: "
              f"stagectl exempt remove {made.id} --reason '…'")
        return EXIT_OK
    async with admin_api.session(args.timeout_s) as session:
        token = admin_api.ops_token(args.ops_token, "exempt remove")
        removed = read_answer(wire.ExemptionRemoved, await admin_api.call(
            session, "DELETE", f"{base}/{quote(args.id, safe='')}", {"reason": args.reason, "actor": actor}, token))
    print(dump_json(removed.to_json()) if args.json else
          f"removed {removed.removed.id}: {removed.removed.who} on {removed.removed.endpoint} is enforced again")
    return EXIT_OK


COMMANDS: Final = (
    Command("exempt", "give one consumer or client network more time in warn while its endpoint enforces",
            description="An exempted request on an enforcing endpoint is forwarded unchanged and logged, as in "
                        "warn; the exemption is stored with the modes (every replica applies it) and ends by "
                        "itself. " + EXITS, common=ADMIN, actions=(
        Command("add", "exempt a consumer (--consumer-header value) or a client network (token from "
                       "$STAGE_OPS_TOKEN)", run_exempt, options=(
            opt("--consumer", "the consumer, as the gateway names it in the proxy's --consumer-header",
                metavar="NAME"),
            opt("--client-cidr", "a client network or address, as --trusted-proxies resolves clients",
                metavar="CIDR"),
            opt("--endpoint", "an endpoint name, or '*' for all of them", required=True),
            opt("--for", "how long, at most 30d (e.g. 14d, 36h)", dest="for_", metavar="DURATION"),
            opt("--until", "when it ends instead: RFC 3339 (2026-12-19T00:00:00Z)", metavar="WHEN"),
            opt("--reason", "why, and who asked (recorded in the mode history)", required=True),
            shared("actor"))),
        Command("list", "the live exemptions, soonest to end first", run_exempt),
        Command("remove", "end an exemption before its time (token from $STAGE_OPS_TOKEN)", run_exempt, options=(
            opt("id", "the exemption's id (stagectl exempt list)"),
            opt("--reason", "why (recorded in the mode history)", required=True), shared("actor"))))),
)
