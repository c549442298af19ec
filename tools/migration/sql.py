"""The SQL of one migration batch, built once per run for its table, column and key.

A batch is a keyset page (``key > last ORDER BY key LIMIT n``, never OFFSET).
Values are classified in Python by the proxy's catalog and remembered in a
session temp table ``stage_known``. One statement per batch reads the page and,
if every value on it is known, plans (values whose class is alias), writes
(compare-and-set: only rows still holding the value that was read), logs what
changed and advances the control row — so the data change, its log rows and
the control row commit together. If the page holds values not seen before, the
statement writes nothing and returns them; the tool classifies them and runs
it again in the same transaction with ``settle`` set (after the first pages
that is rare, so a batch is one round trip and one read of its page). Values
still unseen then were written by the application between the two statements:
like any row it changed under the tool, they are left alone and counted as
skipped, so concurrent writers cannot starve a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from tools.clients.db import Target, quote_ident

CREATE_KNOWN = ("CREATE TEMP TABLE IF NOT EXISTS stage_known (v text PRIMARY KEY, result text NOT NULL, new text) "
                "ON COMMIT PRESERVE ROWS")
REMEMBER = ("INSERT INTO stage_known (v, result, new) SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) "
            "ON CONFLICT (v) DO NOTHING")


@dataclass(frozen=True, slots=True)
class BatchSql:
    """The batch statement in its four shapes: with or without a lower key (``$1``: after it) and an upper key
    (then the next parameter: up to and including it), then the page size, run id, batch number, settle and,
    for a parallel run's range, the range number."""

    shapes: dict[tuple[bool, bool], str]

    def statement(self, lower: bool, upper: bool) -> str:
        return self.shapes[(lower, upper)]


def _page(target: Target, lower: bool, upper: bool) -> tuple[str, int]:
    """The page CTE and how many parameters it takes."""
    t, col, pk = target.qualified, quote_ident(target.column), quote_ident(target.pk)
    bounds, n = [], 0
    if lower:
        n += 1
        bounds.append(f"t.{pk} > ${n}::text::{target.pk_type}")
    if upper:
        n += 1
        bounds.append(f"t.{pk} <= ${n}::text::{target.pk_type}")
    where = f"WHERE {' AND '.join(bounds)} " if bounds else ""
    n += 1
    return f"page AS (SELECT t.{pk} AS k, t.{col} AS v FROM {t} AS t {where}ORDER BY t.{pk} LIMIT ${n})", n


def _write(target: Target, apply: bool, lower: bool, upper: bool, ranged: bool) -> str:
    t, col, pk = target.qualified, quote_ident(target.column), quote_ident(target.pk)
    page, n = _page(target, lower, upper)  # parameters after the page's: run id, batch number, settle, range
    run, batch, settle, part = f"${n + 1}", f"${n + 2}", f"${n + 3}::boolean", f"${n + 4}"
    if apply:
        changed = (f"changed AS (UPDATE {t} AS t SET {col} = plan.new FROM plan WHERE t.{pk} = plan.k "
                   f"AND t.{col} = plan.old RETURNING plan.k, plan.old, plan.new), ")
        source, dry = "changed", "false"
    else:
        changed, source, dry = "", "plan", "true"
    # A range's progress goes to its own row, never the control row: ranges do not wait on each other's row locks.
    table = "stage_migration_ranges" if ranged else "stage_migration_control"
    progress = (f"control AS (UPDATE {table} c SET last_id = coalesce(tally.last_id, c.last_id), "
                f"batch_no = {batch}, rows_scanned = rows_scanned + tally.scanned, ")
    if ranged:
        which = (f"c.run_id = {run} AND c.range_no = {part} "  # and the run itself still there (deleted: roll back)
                 f"AND EXISTS (SELECT 1 FROM stage_migration_control r WHERE r.run_id = {run})")
    else:
        which = f"c.run_id = {run}"
    return (
        f"WITH {page}, "
        # The page's values with their class (one join), then one pass over it for every count and the values
        # not classified yet (distinct), and the plan from the same rows.
        "joined AS (SELECT page.k, page.v, known.v AS seen, known.result, known.new FROM page "
        "LEFT JOIN stage_known known ON known.v = page.v), "
        "counts AS (SELECT count(*) AS scanned, count(*) FILTER (WHERE joined.v IS NULL) AS nulls, "
        "count(*) FILTER (WHERE joined.result = 'unknown') AS unknown, "
        "count(*) FILTER (WHERE joined.v IS NOT NULL AND joined.seen IS NULL) AS unseen_rows, "
        "array_agg(DISTINCT joined.v) FILTER (WHERE joined.v IS NOT NULL AND joined.seen IS NULL) AS unseen "
        "FROM joined), "
        "go AS (SELECT " + settle + " OR counts.unseen IS NULL AS ok FROM counts), "
        "plan AS (SELECT joined.k, joined.v AS old, joined.new FROM joined "
        "WHERE joined.result = 'alias' AND (SELECT go.ok FROM go)), "
        f"{changed}"
        "logged AS (INSERT INTO stage_normalization_log (run_id, row_id, old_value, new_value, batch_no, dry_run) "
        f"SELECT {run}, k::text, old, new, {batch}, {dry} FROM {source} RETURNING 1), "
        # Sort the key itself, not its text (an unqualified ORDER BY k would pick a text output column), and
        # no max(): uuid keys have none.
        "tally AS (SELECT (SELECT page.k FROM page ORDER BY page.k DESC LIMIT 1)::text AS last_id, "
        "counts.scanned, (SELECT count(*) FROM plan) AS planned, (SELECT count(*) FROM logged) AS changed, "
        "counts.nulls, counts.unknown, counts.unseen, counts.unseen_rows, (SELECT go.ok FROM go) AS written "
        "FROM counts), "
        f"{progress}"
        "rows_changed = rows_changed + tally.changed, rows_unknown = rows_unknown + tally.unknown, "
        "rows_null = rows_null + tally.nulls, "
        "rows_skipped = rows_skipped + tally.planned - tally.changed + coalesce(tally.unseen_rows, 0)"
        + ("" if ranged else ", updated_at = now()")
        + f" FROM tally WHERE {which} AND tally.scanned > 0 AND tally.written RETURNING 1) "
        "SELECT tally.*, (SELECT count(*) FROM control) AS control_rows FROM tally")


def batch_sql(target: Target, apply: bool, ranged: bool = False) -> BatchSql:
    return BatchSql({(lower, upper): _write(target, apply, lower, upper, ranged)
                     for lower in (False, True) for upper in (False, True)})
