"""``stagectl migrate``: batched, resumable normalization of stored stages (docs/migrate.md).

Each batch is one transaction holding the data update, its log rows and the
control row, so a crash at any instant loses nothing and repeats nothing. The
data update is a compare-and-set (``WHERE stage = old``): a row the application
changed meanwhile keeps the application's value and is counted as skipped.
Keyset pagination on the key, never OFFSET. Every distinct value is classified
by the proxy's own catalog (proxy.catalog.stages), so what the migration writes is
exactly what the proxy accepts; the SQL is in tools/migration/sql.py.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from proxy.catalog.stages import Catalog
from tools.clients.db import Target, quote_ident, read_only
from tools.migration import runs as runs
from tools.migration.sql import CREATE_KNOWN, REMEMBER, batch_sql
from tools.shared.errors import EXIT_FAILED, EXIT_USAGE, CommandError
from tools.shared.progress import Progress

MIN_BATCH, MAX_BATCH = 50, 50_000
TIMEOUTS = (asyncpg.LockNotAvailableError, asyncpg.QueryCanceledError)


@dataclass(frozen=True)
class Options:
    """What the operator asked for (stagectl migrate …)."""

    apply: bool = False
    batch_size: int = 1000
    target_batch_ms: float | None = None
    sleep_ms: float = 0.0
    lock_timeout_ms: int = 2000
    statement_timeout_ms: int = 30_000
    retries: int = 5
    resume: bool = False
    resume_from: str | None = None
    transactional: bool = False
    progress_interval_s: float = 5.0


@dataclass
class Tally:
    """What this process saw, batch by batch."""

    scanned: int = 0
    changed: int = 0
    unknown: int = 0
    null: int = 0
    skipped: int = 0
    batches: int = 0
    batch_ms: list[float] = field(default_factory=list)


def this_process() -> str:
    """How the control table names the stagectl process holding a run (never a database backend)."""
    return f"stagectl pid {os.getpid()} on {socket.gethostname()}"


class Migration:
    """One run of ``stagectl migrate`` on one connection."""

    def __init__(self, connection: asyncpg.Connection, target: Target, catalog: Catalog, options: Options,
                 stop: asyncio.Event, catalog_version: str = "") -> None:
        self.db = connection
        self.target = target
        self.catalog = catalog
        self.catalog_version = catalog_version  # recorded with the run; a resume must classify with the same
        self.chosen: Any = None  # where the catalog came from (a ChosenCatalog): said when the run opens
        self.options = options
        self.stop = stop
        self.tally = Tally()
        self.run_id = 0
        self.last_id: str | None = None
        self.batch_no = 0
        self.done_before = 0  # rows scanned by earlier processes of a resumed run
        self.resumed: str | None = None  # what --resume picked up, for the operator
        self.size = options.batch_size
        self.sql = batch_sql(target, options.apply)

    # -- setting up ----------------------------------------------------------

    async def prepare(self) -> None:
        """Refuse read-only databases, create the control/log tables, take the advisory lock."""
        if await read_only(self.db):
            raise CommandError("the database is read-only (default_transaction_read_only or a standby): "
                               "nothing can be migrated", EXIT_USAGE)
        await runs.create_tables(self.db)
        await self.db.execute(CREATE_KNOWN)
        await runs.take_lock(self.db, self.target)
        await runs.reconcile(self.db)  # runs that say running with nobody holding their lock: interrupted

    async def open_run(self) -> None:
        """Start a run, or pick up the one --resume names."""
        if self.options.resume:
            await self._resume_latest()
            return
        if self.options.apply:
            await runs.refuse_if_unfinished(self.db, self.target)
        if self.options.resume_from is not None:
            await self._check_resume_from(self.options.resume_from)
            self.last_id = self.options.resume_from
        self.run_id = await self.db.fetchval(
            "INSERT INTO stage_migration_control (table_name, column_name, pk_name, dry_run, transactional, status, "
            "last_id, catalog_version, holder_pid, holder) "
            "VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, pg_backend_pid(), $8) RETURNING run_id",
            f"{self.target.schema}.{self.target.table}", self.target.column, self.target.pk, not self.options.apply,
            self.options.transactional, self.last_id, self.catalog_version, this_process())

    async def _resume_latest(self) -> None:
        row = await runs.unfinished(self.db, self.target, dry_run=not self.options.apply)
        if row is None:
            kind = "--apply" if self.options.apply else "dry"
            raise CommandError(f"nothing to resume: no unfinished {kind} run on {self.target.label}", EXIT_USAGE)
        await runs.check_resumable(self.db, self.target, row)
        recorded = row["catalog_version"]
        if recorded is not None and recorded != self.catalog_version:
            raise CommandError(f"run {row['run_id']} was started with catalog version {recorded}; this command "
                               f"uses version {self.catalog_version}: resuming would classify half the table by "
                               "one catalog and half by another. Resume it with the catalog it started with "
                               f"(--config, or the proxy serving version {recorded}), or close it with "
                               f"`{runs.abandon_command(row['run_id'])}`", EXIT_USAGE)
        self.run_id, self.last_id, self.batch_no = row["run_id"], row["last_id"], row["batch_no"]
        self.done_before = int(row["rows_scanned"])
        await self.db.execute("UPDATE stage_migration_control SET status = 'running', error = NULL, "
                              "holder_pid = pg_backend_pid(), holder = $2, resumes = resumes + 1, updated_at = now(), "
                              "catalog_version = coalesce(catalog_version, $3) WHERE run_id = $1",
                              self.run_id, this_process(), self.catalog_version)
        self.resumed = (f"resuming run {self.run_id} ({row['status']}) after id {self.last_id}: "
                        f"{self.done_before} rows already scanned, {row['rows_changed']} changed, "
                        f"{row['batch_no']} batches")

    async def _check_resume_from(self, value: str) -> None:
        t, pk = self.target.qualified, quote_ident(self.target.pk)
        try:
            beyond = await self.db.fetchval(
                f"SELECT $1::text::{self.target.pk_type} >= coalesce(max({pk}), $1::text::{self.target.pk_type}) "
                f"FROM {t}", value)
        except (asyncpg.DataError, asyncpg.InvalidTextRepresentationError) as exc:
            raise CommandError(f"--resume-from {value!r} is not a valid {self.target.pk_type}: {exc}",
                               EXIT_USAGE) from None
        if beyond:
            raise CommandError(f"--resume-from {value!r} is at or beyond the last {self.target.pk} of "
                               f"{self.target.label}: nothing would be migrated", EXIT_USAGE)

    @property
    def resume_command(self) -> str:
        return runs.resume_command(f"{self.target.schema}.{self.target.table}", self.target.column,
                                   not self.options.apply)

    async def total_rows(self) -> int:
        estimate = await self.db.fetchval("SELECT reltuples::bigint FROM pg_class WHERE oid = $1::regclass",
                                          self.target.qualified)
        if estimate is None or estimate < 0:
            estimate = await self.db.fetchval(f"SELECT count(*) FROM {self.target.qualified}")
        return int(estimate or 0)

    # -- the batches -----------------------------------------------------------

    async def run(self, progress: Progress) -> str:
        """Batches until the table is done or a stop is asked for; returns the final status."""
        progress.starting_at(self.done_before)
        while not self.stop.is_set():
            started = time.perf_counter()
            batch = await self._batch_with_retry()
            if batch is None:
                return "completed"
            elapsed_ms = (time.perf_counter() - started) * 1000
            self.tally.batch_ms.append(elapsed_ms)
            self._tune(elapsed_ms)
            progress.update(self.done_before + self.tally.scanned, run_id=self.run_id, batch=self.batch_no,
                            changed=self.tally.changed)
            if self.options.sleep_ms:
                await asyncio.sleep(self.options.sleep_ms / 1000)
        return "aborted"

    def _tune(self, elapsed_ms: float) -> None:
        target = self.options.target_batch_ms
        if target is None or elapsed_ms <= 0:
            return
        factor = min(2.0, max(0.5, target / elapsed_ms))
        self.size = min(MAX_BATCH, max(MIN_BATCH, int(self.size * factor)))

    async def _batch_with_retry(self) -> asyncpg.Record | None:
        for attempt in range(self.options.retries + 1):
            try:
                return await self._batch()
            except TIMEOUTS as exc:
                if attempt == self.options.retries:
                    raise CommandError(f"batch {self.batch_no + 1} timed out {attempt + 1} times "
                                       f"({type(exc).__name__}); the run stops here: resume it with "
                                       f"`{self.resume_command}`") from None
                self.size = max(1, self.size // 2)  # a smaller batch holds fewer locks for less time
        return None

    def _page_args(self) -> tuple[object, ...]:
        return (self.size,) if self.last_id is None else (self.last_id, self.size)

    async def _batch(self) -> asyncpg.Record | None:
        """Plan, write, log and advance the control row in one statement (after classifying new values)."""
        first = self.last_id is None
        async with self.db.transaction():
            await self.db.execute(f"SET LOCAL lock_timeout = {int(self.options.lock_timeout_ms)}; "
                                  f"SET LOCAL statement_timeout = {int(self.options.statement_timeout_ms)}")
            statement = self.sql.write_first if first else self.sql.write_next
            tally = await self.db.fetchrow(statement, *self._page_args(), self.run_id, self.batch_no + 1, False)
            if tally is not None and tally["unseen"]:  # new values: nothing was written; classify, then settle
                await self._remember(list(tally["unseen"]))
                tally = await self.db.fetchrow(statement, *self._page_args(), self.run_id, self.batch_no + 1, True)
            if tally is not None and tally["scanned"] and tally["control_rows"] != 1:
                raise CommandError(f"the control row of run {self.run_id} is gone (deleted while the run was going?); "
                                   "this batch was rolled back", EXIT_FAILED)
        if tally is None or not tally["scanned"]:
            return None
        self._count(tally)
        return tally

    async def _remember(self, values: list[str]) -> None:
        """Classify values never seen in this run with the proxy's catalog."""
        classes = [self.catalog.classify(value) for value in values]
        await self.db.execute(REMEMBER, values, [result for result, _ in classes],
                              [normalized if result == "alias" else None for result, normalized in classes])

    def _count(self, tally: asyncpg.Record) -> None:
        self.batch_no += 1
        self.last_id = tally["last_id"]
        t = self.tally
        t.batches += 1
        t.scanned += tally["scanned"]
        t.changed += tally["changed"]
        t.unknown += tally["unknown"]
        t.null += tally["nulls"]
        t.skipped += tally["planned"] - tally["changed"] + (tally["unseen_rows"] or 0)

    async def finish(self, status: str, error: str | None = None) -> None:
        await self.db.execute(
            "UPDATE stage_migration_control SET status = $2, error = $3, updated_at = now(), "
            "finished_at = CASE WHEN $2 = 'completed' THEN now() ELSE finished_at END WHERE run_id = $1",
            self.run_id, status, error)


async def summary(connection: asyncpg.Connection, run_id: int, target: Target, catalog: Catalog) -> dict[str, object]:
    """What the run changed (from its log) and what it could not (distinct unknown values in the table)."""
    control = await connection.fetchrow("SELECT * FROM stage_migration_control WHERE run_id = $1", run_id)
    if control is None:
        raise CommandError(f"run {run_id} does not exist", EXIT_USAGE)
    variants = await connection.fetch(
        "SELECT old_value, new_value, count(*) AS n FROM stage_normalization_log WHERE run_id = $1 "
        "GROUP BY 1, 2 ORDER BY n DESC, old_value", run_id)
    col = quote_ident(target.column)
    distinct = await connection.fetch(f"SELECT {col} AS value, count(*) AS n FROM {target.qualified} "
                                      f"WHERE {col} IS NOT NULL GROUP BY 1")
    unknown = collections.Counter({r["value"]: r["n"] for r in distinct
                                   if catalog.classify(r["value"])[0] == "unknown"})
    return {
        "run_id": run_id, "status": control["status"], "dry_run": control["dry_run"],
        "rows_scanned": control["rows_scanned"], "rows_changed": control["rows_changed"],
        "rows_skipped": control["rows_skipped"], "rows_unknown": control["rows_unknown"],
        "rows_null": control["rows_null"], "batches": control["batch_no"], "last_id": control["last_id"],
        "variants": [{"from": r["old_value"], "to": r["new_value"], "rows": r["n"]} for r in variants],
        "unknown_values": [{"value": v, "rows": n} for v, n in unknown.most_common(50)],
        "unknown_distinct": len(unknown),
    }
