"""``stagectl migrate status | verify | revert``: inspect runs, check the table, undo a run from its log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from proxy.catalog.stages import Catalog
from tools.clients.db import Target, introspect, quote_ident
from tools.migration import runs as runs
from tools.shared.errors import EXIT_USAGE, CommandError

STATUS_COLUMNS = ("run_id", "table_name", "column_name", "dry_run", "transactional", "batch_no",
                  "rows_scanned", "rows_changed", "rows_unknown", "rows_null", "rows_skipped", "last_id",
                  "started_at", "updated_at", "finished_at", "interrupted_at", "abandoned_at", "reverted_at",
                  "resumes", "error", "catalog_version", "parallel", "pause_requested", "waiting")


async def status(connection: asyncpg.Connection, run_id: int | None, limit: int) -> list[dict[str, Any]]:
    """The latest runs (or one), newest first: each with its state as of now (a run whose process died is
    ``interrupted``, never ``running``), the pid holding a live run's lock, and how to resume the latest
    unfinished run of each table/column."""
    if not await runs.has_control(connection):
        return []
    await runs.reconcile(connection)
    columns = ", ".join(f"c.{name}" for name in STATUS_COLUMNS)
    select = (f"SELECT {columns}, {runs.LIVE} AS live, c.holder_pid, c.holder, "
              f"CASE WHEN c.status = 'running' AND NOT {runs.LIVE} THEN 'interrupted' "
              "WHEN c.reverted_at IS NOT NULL THEN 'reverted' ELSE c.status END AS status, "
              "c.run_id = (SELECT max(u.run_id) FROM stage_migration_control u WHERE u.table_name = c.table_name "
              "AND u.column_name = c.column_name AND u.dry_run = c.dry_run "
              "AND u.status = ANY($1::text[])) AS latest_unfinished FROM stage_migration_control c")
    unfinished = list(runs.UNFINISHED)
    if run_id is not None:
        rows = await connection.fetch(f"{select} WHERE c.run_id = $2", unfinished, run_id)
        if not rows:
            raise CommandError(f"run {run_id} does not exist", EXIT_USAGE)
    else:
        rows = await connection.fetch(f"{select} ORDER BY c.run_id DESC LIMIT $2", unfinished, limit)
    return [_described(row) for row in rows]


async def hold(connection: asyncpg.Connection, run_id: int, pause: bool) -> tuple[asyncpg.Record, bool]:
    """Ask a running run to pause between batches (or to go on): (its row, whether anything changed). Only a
    running run can be paused; ``--resume`` clears a pause left on a run that was stopped while paused."""
    row = await _run_row(connection, run_id, "run_id, status, pause_requested", reconcile=True)
    if pause and row["status"] != "running":
        raise CommandError(f"run {run_id} is not running ({row['status']}): there is nothing to pause", EXIT_USAGE)
    if row["pause_requested"] == pause:
        return row, False
    await connection.execute("UPDATE stage_migration_control SET pause_requested = $2 WHERE run_id = $1",
                             run_id, pause)
    return row, True


def _described(row: asyncpg.Record) -> dict[str, Any]:
    run = {key: (value.isoformat() if hasattr(value, "isoformat") else value) for key, value in row.items()
           if key not in ("live", "latest_unfinished")}
    run["holder_pid"] = row["holder_pid"] if row["live"] else None  # the database session holding the lock
    run["holder"] = row["holder"] if row["live"] else None  # the stagectl process: what an operator stops
    run["resume_command"] = (runs.resume_command(row["table_name"], row["column_name"], row["dry_run"])
                             if row["latest_unfinished"] and not row["live"] and row["reverted_at"] is None else None)
    return run


@dataclass
class Verdict:
    """Distinct stored values by class."""

    canonical: dict[str, int]
    alias: dict[str, int]
    unknown: dict[str, int]
    null: int

    @property
    def clean(self) -> bool:
        return not self.alias and not self.unknown

    def as_json(self) -> dict[str, Any]:
        return {"clean": self.clean, "canonical": self.canonical, "alias": self.alias, "unknown": self.unknown,
                "null": self.null}


async def verify(connection: asyncpg.Connection, target: Target, catalog: Catalog) -> Verdict:
    """Every distinct stage with its count, classified by the proxy's catalog."""
    col = quote_ident(target.column)
    rows = await connection.fetch(f"SELECT {col} AS value, count(*) AS n FROM {target.qualified} GROUP BY 1 "
                                  "ORDER BY n DESC, value")
    verdict = Verdict({}, {}, {}, 0)
    for row in rows:
        value, count = row["value"], int(row["n"])
        if value is None:
            verdict.null = count
            continue
        result, _ = catalog.classify(value)
        {"canonical": verdict.canonical, "alias": verdict.alias}.get(result, verdict.unknown)[value] = count
    return verdict


async def _run_row(connection: asyncpg.Connection, run_id: int, columns: str, *,
                   reconcile: bool = False) -> asyncpg.Record:
    """``columns`` of the run's control row (runs that died reconciled first, if asked); a clear error when no
    migration has run here or this one does not exist."""
    if not await runs.has_control(connection):
        raise CommandError("no migration has run on this database", EXIT_USAGE)
    if reconcile:
        await runs.reconcile(connection)
    row = await connection.fetchrow(f"SELECT {columns} FROM stage_migration_control WHERE run_id = $1", run_id)
    if row is None:
        raise CommandError(f"run {run_id} does not exist", EXIT_USAGE)
    return row


async def _run_target(connection: asyncpg.Connection, run_id: int) -> tuple[Target, bool]:
    row = await _run_row(connection, run_id, "table_name, column_name, pk_name, dry_run")
    target = await introspect(connection, row["table_name"], row["column_name"], row["pk_name"])
    return target, bool(row["dry_run"])


async def abandon(connection: asyncpg.Connection, run_id: int) -> asyncpg.Record:
    """Close an unfinished run so new runs may start; its changes stay (``revert`` undoes them)."""
    target, _ = await _run_target(connection, run_id)
    return await runs.abandon(connection, target, run_id)


async def revert(connection: asyncpg.Connection, run_id: int, apply: bool, batch_size: int) -> dict[str, Any]:
    """Restore a run's old values where the row still holds the value the run wrote; report the rest."""
    target, dry_run = await _run_target(connection, run_id)
    if dry_run:
        raise CommandError(f"run {run_id} was a dry run: it changed nothing, there is nothing to revert", EXIT_USAGE)
    t, col, pk = target.qualified, quote_ident(target.column), quote_ident(target.pk)
    matching = (f"FROM stage_normalization_log l JOIN {t} AS t ON t.{pk} = l.row_id::{target.pk_type} "
                f"WHERE l.run_id = $1 AND NOT l.dry_run")
    logged = int(await connection.fetchval("SELECT count(*) FROM stage_normalization_log WHERE run_id = $1", run_id))
    restorable = int(await connection.fetchval(f"SELECT count(*) {matching} AND t.{col} IS NOT DISTINCT FROM "
                                               "l.new_value", run_id))
    reverted_at = await connection.fetchval("SELECT reverted_at FROM stage_migration_control WHERE run_id = $1",
                                            run_id)
    if reverted_at is not None:  # the log's old values are back already: nothing to restore, nothing to say wrong
        return {"logged": logged, "restorable": 0, "changed_since": 0, "restored": 0,
                "already_reverted_at": reverted_at.isoformat()}
    if not apply:
        return {"logged": logged, "restorable": restorable, "changed_since": logged - restorable, "restored": 0}
    async with runs.holding_lock(connection, target):  # never under a live run of the same table/column
        restored = await _revert_batches(connection, run_id, target, batch_size)
        await connection.execute("UPDATE stage_migration_control SET reverted_at = now(), updated_at = now() "
                                 "WHERE run_id = $1", run_id)
        await runs.close(connection, run_id)  # a reverted run cannot be resumed: if it was unfinished, it is closed
    return {"logged": logged, "restorable": restorable, "changed_since": logged - restored, "restored": restored}


async def _revert_batches(connection: asyncpg.Connection, run_id: int, target: Target, batch_size: int) -> int:
    t, col, pk = target.qualified, quote_ident(target.column), quote_ident(target.pk)
    # Pages through the log on its (run_id, row_id) index; row_id is text, so the page order is text order.
    sql = (f"WITH l AS (SELECT row_id, old_value, new_value FROM stage_normalization_log "
           f"WHERE run_id = $1 AND NOT dry_run AND row_id > $2 ORDER BY row_id LIMIT $3), "
           f"r AS (UPDATE {t} AS t SET {col} = l.old_value FROM l WHERE t.{pk} = l.row_id::{target.pk_type} "
           f"AND t.{col} IS NOT DISTINCT FROM l.new_value RETURNING 1) "
           "SELECT (SELECT l.row_id FROM l ORDER BY l.row_id DESC LIMIT 1) AS last, "
           "(SELECT count(*) FROM r) AS restored")
    last, restored = "", 0
    while True:
        async with connection.transaction():
            row = await connection.fetchrow(sql, run_id, last, batch_size)
        if row is None or row["last"] is None:
            return restored
        last, restored = str(row["last"]), restored + int(row["restored"])
