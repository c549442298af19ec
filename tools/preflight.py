"""``stagectl preflight``: the runbook's Week-0 exit criteria, each measured by its command, in one table."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from proxy.catalog.stages import Catalog
from tools import audit, backup, redis_latency
from tools.db import connect, quote_ident
from tools.errors import CommandError
from tools.offenders import read_lines
from tools.restore import run_restore_test


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
    internal: list[audit.Network]
    trusted: list[audit.Network]
    classifications: Path | None
    min_rows: int
    samples: int
    budget_s: float
    table: str
    redis_max_p99_ms: float = redis_latency.THRESHOLD_MS


async def _guard(name: str, threshold: str, check: Callable[[], Awaitable[Criterion]]) -> Criterion:
    try:
        return await check()
    except CommandError as exc:
        return Criterion(name, f"error: {exc}", threshold, False)


async def consumers(args: PreflightArgs, catalog: Catalog) -> Criterion:
    name, threshold = "consumer audit clear or mitigated", "no external (unmitigated) or unclassified consumer"
    if not args.logs:
        return Criterion(name, "no logs given (--logs)", threshold, False)
    found, _ = audit.audit(read_lines(args.logs, sys.stdin.buffer), catalog, internal=args.internal,
                           trusted=args.trusted, decisions=audit.load_classifications(args.classifications))
    classes = [c.cls for c in found.values()]
    counts = ", ".join(f"{classes.count(cls)} {cls}" for cls in sorted(set(classes))) or "no consumers"
    return Criterion(name, counts, threshold, audit.verdict(found.values()) == 0)


async def redis(args: PreflightArgs) -> Criterion:
    name, threshold = "Redis GET p99", f"< {args.redis_max_p99_ms:g} ms"
    if not args.redis_url:
        return Criterion(name, "no --redis-url", threshold, False)
    result = await redis_latency.measure(args.redis_url, args.samples, 500.0, threshold_ms=args.redis_max_p99_ms)
    server = (result["server"] or {}).get("p99_ms")
    inside = f" (Redis's own <= {server:g} ms)" if server is not None else ""
    return Criterion(name, f"{result['p99_ms']:g} ms over {args.samples} GETs{inside}", threshold, bool(result["ok"]))


async def fallback(args: PreflightArgs) -> Criterion:
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
        return Criterion(name, f"verify-backup: {len(verification.problems)} problem(s)", threshold, False)
    receipt = await run_restore_test(args.dsn, backup.latest(args.backup_dir), budget_s=args.budget_s, min_rows=1,
                                     table=args.table, column="stage", queries=[])
    measured = f"restore {receipt.seconds:.1f} s, {receipt.rows} rows" if receipt.ok else receipt.failures[0]
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
    checks: list[tuple[str, str, Callable[[], Awaitable[Criterion]]]] = [
        ("consumer audit clear or mitigated", "", lambda: consumers(args, catalog)),
        ("Redis GET p99", "< 10 ms", lambda: redis(args)),
        ("proxy on Redis with fallback armed", "source = redis", lambda: fallback(args)),
        ("backup verified and restore test OK", "", lambda: restore(args)),
        ("test DB seeded", f">= {args.min_rows} rows", lambda: seeded(args)),
    ]
    return [await _guard(name, threshold, check) for name, threshold, check in checks]


def render(criteria: list[Criterion]) -> str:
    widths = [max(len(c.name) for c in criteria), max(len(c.measured) for c in criteria),
              max(len(c.threshold) for c in criteria)]
    head = f"{'CRITERION':<{widths[0]}}  {'MEASURED':<{widths[1]}}  {'THRESHOLD':<{widths[2]}}  RESULT"
    rows = [f"{c.name:<{widths[0]}}  {c.measured:<{widths[1]}}  {c.threshold:<{widths[2]}}  "
            f"{'PASS' if c.ok else 'FAIL'}" for c in criteria]
    verdict = "Week 0 exit criteria: all PASS" if all(c.ok for c in criteria) else "Week 0 exit criteria: NOT met"
    return "\n".join([head, *rows, "", verdict])
