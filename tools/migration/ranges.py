"""A parallel run's key ranges: the key space split once at the start, each range walked by its own connection.

Ranges are ``(after, upto]`` in the key's own order: the first has no lower
bound (or ``--resume-from``'s key), the last no upper one, so rows inserted
beyond the last key while the run goes are still met. Integer keys are split by
value between their minimum and maximum (two index probes); other keys (text,
uuid, …) by ``ntile`` over the key index, so each range holds as many rows.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import asyncpg

from tools.clients.db import Target, quote_ident

MAX_PARALLEL: Final = 8  # ranges at once by default at most: more connections than a server has cores queue
INTEGER_KEYS: Final = frozenset({"smallint", "integer", "bigint"})


@dataclass
class Cursor:
    """One walker of the key space: its range's bounds and its keyset position."""

    range_no: int | None  # None: the run's only cursor (its progress lives in the control row)
    after: str | None = None  # exclusive lower bound where the range starts (None: the first key)
    upto: str | None = None  # inclusive upper bound (None: the last key)
    last_id: str | None = None
    batch_no: int = 0
    size: int = 5000  # rows per batch (--batch-size)
    done: bool = False

    @property
    def lower(self) -> str | None:
        """The key the next page starts after."""
        return self.last_id if self.last_id is not None else self.after


async def boundaries(db: asyncpg.Connection, target: Target, parts: int, after: str | None) -> list[str]:
    """Up to ``parts - 1`` keys splitting the keys after ``after`` into ``parts`` ranges (fewer for few rows)."""
    t, pk, kind = target.qualified, quote_ident(target.pk), target.pk_type
    where = f"WHERE {pk} > $1::text::{kind}" if after is not None else ""
    args = (after,) if after is not None else ()
    if kind in INTEGER_KEYS:
        row = await db.fetchrow(f"SELECT min({pk})::bigint AS lo, max({pk})::bigint AS hi FROM {t} {where}", *args)
        if row is None or row["lo"] is None:
            return []
        lo, hi = int(row["lo"]), int(row["hi"])
        steps = {lo - 1 + -(-(hi - lo + 1) * k // parts) for k in range(1, parts)}
        return [str(step) for step in sorted(steps) if lo <= step < hi]
    limit = len(args) + 1
    rows = await db.fetch(
        f"SELECT (array_agg({pk} ORDER BY {pk} DESC))[1]::text AS upto FROM (SELECT {pk}, ntile(${limit}) OVER "
        f"(ORDER BY {pk}) AS tile FROM {t} {where}) s GROUP BY tile ORDER BY tile", *args, parts)
    ends: list[str] = [row["upto"] for row in rows][:-1]  # the last tile ends at the last key: its range is open
    return list(dict.fromkeys(ends))


def split(cuts: list[str], after: str | None, size: int) -> list[Cursor]:
    """The ranges the cuts make, numbered from 0."""
    bounds = [after, *cuts]
    return [Cursor(number, bounds[number], cuts[number] if number < len(cuts) else None, size=size)
            for number in range(len(cuts) + 1)]


async def save(db: asyncpg.Connection, run_id: int, cursors: list[Cursor]) -> None:
    await db.executemany("INSERT INTO stage_migration_ranges (run_id, range_no, after_id, upto_id) "
                         "VALUES ($1, $2, $3, $4)", [(run_id, c.range_no, c.after, c.upto) for c in cursors])


async def load(db: asyncpg.Connection, run_id: int, size: int) -> tuple[list[Cursor], int]:
    """A run's unfinished ranges as cursors, and the rows its ranges scanned so far."""
    rows = await db.fetch("SELECT * FROM stage_migration_ranges WHERE run_id = $1 ORDER BY range_no", run_id)
    cursors = [Cursor(r["range_no"], r["after_id"], r["upto_id"], r["last_id"], r["batch_no"], size)
               for r in rows if not r["done"]]
    return cursors, sum(int(r["rows_scanned"]) for r in rows)


async def finish_range(db: asyncpg.Connection, run_id: int, cursor: Cursor) -> None:
    cursor.done = True
    await db.execute("UPDATE stage_migration_ranges SET done = true WHERE run_id = $1 AND range_no = $2",
                     run_id, cursor.range_no)


# The control row's counts as its ranges' sums (a parallel run's batches advance only their range's row).
TOTALS: Final = (
    "UPDATE stage_migration_control c SET rows_scanned = s.scanned, rows_changed = s.changed, "
    "rows_unknown = s.unknown, rows_null = s.nulls, rows_skipped = s.skipped, batch_no = s.batches, "
    "last_id = s.last_id, updated_at = now() FROM (SELECT sum(rows_scanned) AS scanned, sum(rows_changed) AS changed, "
    "sum(rows_unknown) AS unknown, sum(rows_null) AS nulls, sum(rows_skipped) AS skipped, sum(batch_no) AS batches, "
    "CASE WHEN bool_and(done) THEN (array_agg(last_id ORDER BY range_no DESC) "
    "FILTER (WHERE last_id IS NOT NULL))[1] END AS last_id "
    "FROM stage_migration_ranges WHERE run_id = $1) s WHERE c.run_id = $1")


async def total(db: asyncpg.Connection, run_id: int) -> None:
    await db.execute(TOTALS, run_id)


_LOCAL = re.compile(r"^(localhost|127\.\d+\.\d+\.\d+|::1|/.*)?$")


async def default_parallel(db: asyncpg.Connection, dsn: str) -> int:
    """Ranges to walk at once when --parallel is not given: the server's cores (read from /proc/cpuinfo where
    the role may read server files; else this machine's when the server is on it), two otherwise; at most 8.
    One statement is one backend on one core: more connections than cores only queue."""
    try:
        text = await db.fetchval("SELECT pg_read_file('/proc/cpuinfo')")
        cores = sum(1 for line in str(text).splitlines() if line.startswith("processor"))
    except (asyncpg.PostgresError, OSError):
        host = urlsplit(dsn).hostname or ""
        cores = (os.cpu_count() or 2) if _LOCAL.match(host) else 2
    return max(1, min(MAX_PARALLEL, cores or 2))
