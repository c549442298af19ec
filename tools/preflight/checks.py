"""``stagectl preflight``: the runbook's Week-0 exit criteria, each measured by its command, in one table
(100 columns wide at most) or one JSON object; a FAIL row names what failed."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from proxy.catalog.stages import Catalog
from proxy.shared.clients import Network
from tools.backups import backup
from tools.backups.restore import run_restore_test
from tools.clients.db import connect, quote_ident
from tools.consumers import audit
from tools.consumers.offenders import read_lines
from tools.preflight import drill, redis_latency
from tools.shared.errors import CommandError


@dataclass
class Criterion:
    name: str
    measured: str
    threshold: str
    ok: bool

    def as_json(self) -> dict[str, Any]:
        return {"criterion": self.name, "measured": self.measured, "threshold": self.threshold,
                "result": "PASS" if self.ok else "FAIL"}


@dataclass(frozen=True)
class PreflightArgs:
    dsn: str | None
    redis_url: str | None
    admin_url: str | None
    backup_dir: Path | None
    logs: list[str]
    internal: tuple[Network, ...]
    trusted: tuple[Network, ...]
    classifications: Path | None
    min_rows: int
    samples: int
    budget_s: float
    table: str
    redis_max_p99_ms: float = redis_latency.THRESHOLD_MS
    fallback_drill: drill.Drill | None = None  # run the drill instead of only checking the source


async def _guard(name: str, threshold: str, check: Callable[[], Awaitable[Criterion]]) -> Criterion:
    try:
        return await check()
    except CommandError as exc:
        return Criterion(name, f"error: {exc}", threshold, False)


async def consumers(args: PreflightArgs, catalog: Catalog) -> Criterion:
    name, threshold = "consumer audit clear or mitigated", "no external or unclassified consumer"
    if not args.logs:
        return Criterion(name, "no logs given (--logs)", threshold, False)
    try:
        result = audit.audit(read_lines(args.logs, sys.stdin.buffer), catalog, internal=args.internal,
                               trusted=args.trusted, decisions=audit.load_classifications(args.classifications))
    except OSError as exc:
        return Criterion(name, f"cannot read {exc.filename}: {exc.strerror}", threshold, False)
    found = result.consumers
    classes = [c.cls for c in found.values()]
    counts = ", ".join(f"{classes.count(cls)} {cls}" for cls in sorted(set(classes))) or "no consumers"
    ok = audit.verdict(result) == 0
    if result.undecided_ignored:
        return Criterion(name, f"{counts}; {audit.ignored_hint(result)}", threshold, False)
    blocking = sorted((c for c in found.values() if c.cls in ("external", "ambiguous")), key=lambda c: -c.requests)
    named = ", ".join(f"{c.ip} ({c.user_agent or 'no user agent'}, {c.cls})" for c in blocking[:3])
    more = f" and {len(blocking) - 3} more" if len(blocking) > 3 else ""
    return Criterion(name, counts if ok else f"{counts}: {named}{more}", threshold, ok)


async def redis(args: PreflightArgs) -> Criterion:
    name, threshold = "Redis GET p99", f"< {args.redis_max_p99_ms:g} ms"
    if not args.redis_url:
        return Criterion(name, "no --redis-url", threshold, False)
    result = await redis_latency.measure(args.redis_url, args.samples, 500.0, threshold_ms=args.redis_max_p99_ms)
    server = (result["server"] or {}).get("p99_ms")
    inside = f" (Redis's own <= {server:g} ms)" if server is not None else ""
    return Criterion(name, f"{result['p99_ms']:g} ms over {args.samples} GETs{inside}", threshold, bool(result["ok"]))


async def fallback(args: PreflightArgs) -> Criterion:
    if args.fallback_drill is not None:
        report = await args.fallback_drill.run()
        return Criterion("Redis fallback drill", report.summary(), "last_known on loss, redis on return", report.ok)
    name, threshold = "proxy on Redis with fallback armed", "_ops/mode answers, source = redis"
    if not args.admin_url:
        return Criterion(name, "no --admin-url", threshold, False)
    url = f"{args.admin_url.rstrip('/')}/_ops/mode"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with session.get(url) as response:
                body = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Criterion(name, f"{url} unreachable: {type(exc).__name__}", threshold, False)
    source = body.get("source") if isinstance(body, dict) else None
    return Criterion(name, f"source {source}", threshold, source == "redis")


async def restore(args: PreflightArgs) -> Criterion:
    name, threshold = "backup verified and restore test OK", f"checksums + complete; restore < {args.budget_s:g} s"
    if args.backup_dir is None or not args.dsn:
        return Criterion(name, "no --backup-dir or --dsn", threshold, False)
    verification = backup.verify(args.backup_dir)
    if not verification.ok:
        first = verification.problems[0]
        more = f" (+{len(verification.problems) - 1} more)" if len(verification.problems) > 1 else ""
        return Criterion(name, f"verify-backup: {first['file']}: {first['problem']}{more}", threshold, False)
    latest = backup.latest(args.backup_dir)
    receipt = await run_restore_test(args.dsn, latest, budget_s=args.budget_s, min_rows=1, table=args.table,
                                     column="stage", queries=[])
    measured = (f"{latest.name}: restore {receipt.seconds:.1f} s, {receipt.rows} rows" if receipt.ok
                else f"{latest.name}: {receipt.step}: {receipt.failures[0]}")
    return Criterion(name, measured, threshold, receipt.ok)


async def seeded(args: PreflightArgs) -> Criterion:
    name, threshold = "test DB seeded", f">= {args.min_rows} rows in {args.table}"
    if not args.dsn:
        return Criterion(name, "no --dsn", threshold, False)
    db = await connect(args.dsn)
    try:
        table = ".".join(quote_ident(p) for p in args.table.split("."))
        exists = await db.fetchval("SELECT to_regclass($1) IS NOT NULL", args.table)
        rows = int(await db.fetchval(f"SELECT count(*) FROM {table}")) if exists else 0
    finally:
        await db.close()
    return Criterion(name, f"{rows} rows" if exists else f"{args.table} does not exist", threshold,
                     rows >= args.min_rows)


async def run(args: PreflightArgs, catalog: Catalog) -> list[Criterion]:
    fallback_name = "Redis fallback drill" if args.fallback_drill else "proxy on Redis with fallback armed"
    checks: list[tuple[str, str, Callable[[], Awaitable[Criterion]]]] = [
        ("consumer audit clear or mitigated", "", lambda: consumers(args, catalog)),
        ("Redis GET p99", "< 10 ms", lambda: redis(args)),
        (fallback_name, "source = redis", lambda: fallback(args)),
        ("backup verified and restore test OK", "", lambda: restore(args)),
        ("test DB seeded", f">= {args.min_rows} rows", lambda: seeded(args)),
    ]
    return [await _guard(name, threshold, check) for name, threshold, check in checks]


WIDTH = 100
COLUMNS = (("CRITERION", 24), ("RESULT", 6), ("MEASURED", 40), ("THRESHOLD", 22))  # 92 + 3 gaps of 2 = 98


def render(criteria: list[Criterion]) -> str:
    """The table, each cell wrapped to its column so no line passes 100 columns, then the verdict."""
    lines = ["  ".join(f"{title:<{width}}" for title, width in COLUMNS).rstrip()]
    for c in criteria:
        cells = [textwrap.wrap(text, width, break_long_words=True) or [""] for text, (_, width) in
                 zip((c.name, "PASS" if c.ok else "FAIL", c.measured, c.threshold), COLUMNS, strict=True)]
        for row in range(max(len(cell) for cell in cells)):
            lines.append("  ".join(f"{cell[row] if row < len(cell) else '':<{width}}"
                                   for cell, (_, width) in zip(cells, COLUMNS, strict=True)).rstrip())
    failed = [c.name for c in criteria if not c.ok]
    lines += ["", "Week 0 exit criteria: all PASS" if not failed else
              f"Week 0 exit criteria: NOT met ({len(failed)} of {len(criteria)} FAIL)"]
    return "\n".join(lines)


def as_json(criteria: list[Criterion]) -> dict[str, Any]:
    ok = all(c.ok for c in criteria)
    return {"ok": ok, "verdict": "PASS" if ok else "FAIL", "criteria": [c.as_json() for c in criteria]}
