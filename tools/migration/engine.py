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
import contextlib
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from proxy.catalog.stages import Catalog
from tools.clients.db import Target, connect, quote_ident, read_only
from tools.migration import ranges as ranges
from tools.migration import runs as runs
from tools.migration.gate import Gate
from tools.migration.ranges import Cursor
from tools.migration.sql import CREATE_KNOWN, REMEMBER, BatchSql, batch_sql
from tools.shared.errors import EXIT_FAILED, EXIT_USAGE, CommandError
from tools.shared.progress import Progress

MIN_BATCH, MAX_BATCH = 50, 50_000
TIMEOUTS = (asyncpg.LockNotAvailableError, asyncpg.QueryCanceledError)


@dataclass(frozen=True)
class Options:
    """What the operator asked for (stagectl migrate …)."""

    apply: bool = False
    batch_size: int = 5000  # rows; a batch holds its row locks ~15-30 ms (bench/results/migrate.md)
    target_batch_ms: float | None = None
    sleep_ms: float = 0.0
    lock_timeout_ms: int = 2000
    statement_timeout_ms: int = 30_000
    retries: int = 5
    resume: bool = False
    resume_from: str | None = None
    transactional: bool = False
    progress_interval_s: float = 5.0
    parallel: int | None = None  # key ranges walked at once; None: from the server's cores (ranges.default_parallel)
    max_replica_lag_ms: float | None = 1000.0  # None or 0: do not watch the standbys


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
                 stop: asyncio.Event, catalog_version: str = "", dsn: str = "") -> None:
        self.db = connection
        self.dsn = dsn  # a parallel run opens one more connection per range
        self.target = target
        self.catalog = catalog
        self.catalog_version = catalog_version  # recorded with the run; a resume must classify with the same
        self.chosen: Any = None  # where the catalog came from (a ChosenCatalog): said when the run opens
        self.options = options
        self.stop = stop
        self.tally = Tally()
        self.run_id = 0
        self.cursors = [Cursor(None, size=options.batch_size)]  # a parallel run: one per unfinished range
        self.parallel = 1  # the run's ranges (stage_migration_ranges when more than one)
        self.done_before = 0  # rows scanned by earlier processes of a resumed run
        self.resumed: str | None = None  # what --resume picked up, for the operator
        self.sql = batch_sql(target, options.apply)
        self.gate = Gate(0, options.max_replica_lag_ms, lambda _reason: None)
        self.progress: Progress | None = None  # where the run says it waits (set by run())

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
        wanted = self.options.parallel
        if self.options.transactional:
            if wanted is not None and wanted > 1:
                raise CommandError("--parallel needs batches of their own: it cannot be --transactional", EXIT_USAGE)
            self.parallel = 1
        else:
            self.parallel = wanted if wanted is not None else await ranges.default_parallel(self.db, self.dsn)

    async def open_run(self) -> None:
        """Start a run, or pick up the one --resume names."""
        if self.options.resume:
            await self._resume_latest()
            return
        if self.options.apply:
            await runs.refuse_if_unfinished(self.db, self.target)
        after = self.options.resume_from
        if after is not None:
            await self._check_resume_from(after)
        cuts = await ranges.boundaries(self.db, self.target, self.parallel, after) if self.parallel > 1 else []
        if cuts:
            cursors = ranges.split(cuts, after, self.options.batch_size)
        else:  # one range (asked for, or too few keys to split): the control row carries the progress
            cursors = [Cursor(None, last_id=after, size=self.options.batch_size)]
        self.parallel = len(cursors)
        async with self.db.transaction():  # a run and its ranges exist together or not at all (a kill in between)
            self.run_id = await self.db.fetchval(
                "INSERT INTO stage_migration_control (table_name, column_name, pk_name, dry_run, transactional, "
                "status, last_id, catalog_version, holder_pid, holder, parallel) "
                "VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, pg_backend_pid(), $8, $9) RETURNING run_id",
                f"{self.target.schema}.{self.target.table}", self.target.column, self.target.pk,
                not self.options.apply, self.options.transactional, after, self.catalog_version, this_process(),
                self.parallel)
            if self.parallel > 1:
                await ranges.save(self.db, self.run_id, cursors)
        self.cursors = cursors
        self._open_gate()

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
        self.run_id = row["run_id"]
        self.parallel = int(row["parallel"] or 1)
        if self.parallel > 1:
            self.cursors, self.done_before = await ranges.load(self.db, self.run_id, self.options.batch_size)
            where = f"{len(self.cursors)} of its {self.parallel} key ranges left"
        else:
            self.cursors = [Cursor(None, last_id=row["last_id"], batch_no=row["batch_no"],
                                   size=self.options.batch_size)]
            self.done_before = int(row["rows_scanned"])
            where = f"after id {row['last_id']}"
        await self.db.execute("UPDATE stage_migration_control SET status = 'running', error = NULL, waiting = NULL, "
                              "pause_requested = false, "
                              "holder_pid = pg_backend_pid(), holder = $2, resumes = resumes + 1, updated_at = now(), "
                              "catalog_version = coalesce(catalog_version, $3) WHERE run_id = $1",
                              self.run_id, this_process(), self.catalog_version)
        self.resumed = (f"resuming run {self.run_id} ({row['status']}) {where}: "
                        f"{self.done_before} rows already scanned, {row['rows_changed']} changed, "
                        f"{row['batch_no']} batches")
        self._open_gate()

    def _open_gate(self) -> None:
        self.gate = Gate(self.run_id, None if self.options.transactional else self.options.max_replica_lag_ms,
                         self._say_waiting)

    def _say_waiting(self, reason: str | None) -> None:
        """The gate changed (it is only checked while the run goes, so there is a progress output to say it on)."""
        assert self.progress is not None
        text = f"run {self.run_id}: " + (f"waiting: {reason}" if reason else "going on")
        self.progress.event(text, event="waiting" if reason else "going_on", run_id=self.run_id,
                            **({"waiting": reason} if reason else {}))

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
        self.progress = progress
        progress.starting_at(self.done_before)
        await self._timeouts(self.db)
        try:
            return await self._run(progress)
        finally:
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError):  # a failed run says why
                await self.db.execute("RESET lock_timeout; RESET statement_timeout")  # the summary scans it all

    async def _timeouts(self, db: asyncpg.Connection) -> None:
        """Every batch's lock and statement limits, set once for the connection (not per batch: a round trip)."""
        await db.execute(f"SET lock_timeout = {int(self.options.lock_timeout_ms)}; "
                         f"SET statement_timeout = {int(self.options.statement_timeout_ms)}")

    async def _run(self, progress: Progress) -> str:
        await self.gate.check(self.db, force=True)
        if self.gate.unreadable_lag:
            text = ("warning: this role cannot read the standbys' replay lag (grant it pg_monitor): "
                    "--max-replica-lag-ms cannot hold the run for them")
            progress.event(text, event="warning", run_id=self.run_id, warning=text)
        if self.parallel > 1:
            return await self._run_ranges(progress)
        cursor = self.cursors[0]
        while await self.gate.passage(self.stop, self.db):
            started = time.perf_counter()
            batch = await self._batch_with_retry(self.db, self.sql, cursor)
            if batch is None:
                return "completed"
            await self._after_batch(cursor, started, progress)
        return "aborted"

    async def _after_batch(self, cursor: Cursor, started: float, progress: Progress) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.tally.batch_ms.append(elapsed_ms)
        self._tune(cursor, elapsed_ms)
        progress.update(self.done_before + self.tally.scanned, run_id=self.run_id, batch=self.tally.batches,
                        changed=self.tally.changed, **({"waiting": self.gate.waiting} if self.gate.waiting else {}))
        if self.options.sleep_ms:
            await asyncio.sleep(self.options.sleep_ms / 1000)

    async def _run_ranges(self, progress: Progress) -> str:
        """A parallel run: one connection per unfinished range, each batch its own transaction on its range's row;
        this connection (holding the run's lock) checks the gate and keeps the control row's counts."""
        sql = batch_sql(self.target, self.options.apply, ranged=True)
        connections: list[asyncpg.Connection] = []
        try:
            for _ in self.cursors:
                connection = await connect(self.dsn)
                connections.append(connection)
                await connection.execute(CREATE_KNOWN)
                await self._timeouts(connection)
            walkers = [asyncio.create_task(self._walk(connection, sql, cursor, progress))
                       for connection, cursor in zip(connections, self.cursors, strict=True)]
            watcher = asyncio.create_task(self._watch(walkers))
            try:
                await asyncio.gather(*walkers)
            except BaseException:
                self.stop.set()  # one range failed: the others finish their batch and stop
                await asyncio.gather(*walkers, return_exceptions=True)
                raise
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
                await ranges.total(self.db, self.run_id)
        finally:
            for connection in connections:
                await connection.close()
        return "completed" if all(cursor.done for cursor in self.cursors) else "aborted"

    async def _walk(self, db: asyncpg.Connection, sql: BatchSql, cursor: Cursor, progress: Progress) -> None:
        while await self.gate.passage(self.stop, None):
            started = time.perf_counter()
            if await self._batch_with_retry(db, sql, cursor) is None:
                await ranges.finish_range(db, self.run_id, cursor)
                return
            await self._after_batch(cursor, started, progress)

    async def _watch(self, walkers: list[asyncio.Task[None]]) -> None:
        """The gate and the control row's counts, while the ranges are walked."""
        counted = time.monotonic()
        while not all(walker.done() for walker in walkers):
            await self.gate.check(self.db)
            if time.monotonic() - counted >= 1.0:
                await ranges.total(self.db, self.run_id)
                counted = time.monotonic()
            await asyncio.sleep(0.05)

    def _tune(self, cursor: Cursor, elapsed_ms: float) -> None:
        target = self.options.target_batch_ms
        if target is None or elapsed_ms <= 0:
            return
        factor = min(2.0, max(0.5, target / elapsed_ms))
        cursor.size = min(MAX_BATCH, max(MIN_BATCH, int(cursor.size * factor)))

    async def _batch_with_retry(self, db: asyncpg.Connection, sql: BatchSql, cursor: Cursor) -> asyncpg.Record | None:
        for attempt in range(self.options.retries + 1):
            try:
                return await self._batch(db, sql, cursor)
            except TIMEOUTS as exc:
                if attempt == self.options.retries:
                    where = "" if cursor.range_no is None else f" of key range {cursor.range_no}"
                    raise CommandError(f"batch {cursor.batch_no + 1}{where} timed out {attempt + 1} times "
                                       f"({type(exc).__name__}); the run stops here: resume it with "
                                       f"`{self.resume_command}`") from None
                cursor.size = max(1, cursor.size // 2)  # a smaller batch holds fewer locks for less time
        return None

    @staticmethod
    def _args(cursor: Cursor) -> tuple[object, ...]:
        lower = cursor.lower
        return (*(() if lower is None else (lower,)), *(() if cursor.upto is None else (cursor.upto,)), cursor.size)

    async def _batch(self, db: asyncpg.Connection, sql: BatchSql, cursor: Cursor) -> asyncpg.Record | None:
        """Plan, write, log and advance the control (or range) row in one statement (after classifying new
        values)."""
        statement = sql.statement(cursor.lower is not None, cursor.upto is not None)
        tail = (self.run_id, cursor.batch_no + 1)
        part = () if cursor.range_no is None else (cursor.range_no,)
        async with db.transaction():
            tally = await db.fetchrow(statement, *self._args(cursor), *tail, False, *part)
            if tally is not None and tally["unseen"]:  # new values: nothing was written; classify, then settle
                await self._remember(db, list(tally["unseen"]))
                tally = await db.fetchrow(statement, *self._args(cursor), *tail, True, *part)
            if tally is not None and tally["scanned"] and tally["control_rows"] != 1:
                raise CommandError(f"the control row of run {self.run_id} is gone (deleted while the run was going?); "
                                   "this batch was rolled back", EXIT_FAILED)
        if tally is None or not tally["scanned"]:
            return None
        self._count(cursor, tally)
        return tally

    async def _remember(self, db: asyncpg.Connection, values: list[str]) -> None:
        """Classify values never seen in this run (on this connection) with the proxy's catalog."""
        classes = [self.catalog.classify(value) for value in values]
        await db.execute(REMEMBER, values, [result for result, _ in classes],
                         [normalized if result == "alias" else None for result, normalized in classes])

    def _count(self, cursor: Cursor, tally: asyncpg.Record) -> None:
        cursor.batch_no += 1
        cursor.last_id = tally["last_id"]
        t = self.tally
        t.batches += 1
        t.scanned += tally["scanned"]
        t.changed += tally["changed"]
        t.unknown += tally["unknown"]
        t.null += tally["nulls"]
        t.skipped += tally["planned"] - tally["changed"] + (tally["unseen_rows"] or 0)

    async def finish(self, status: str, error: str | None = None) -> None:
        if self.parallel > 1:
            await ranges.total(self.db, self.run_id)
        await self.db.execute(
            "UPDATE stage_migration_control SET status = $2, error = $3, updated_at = now(), waiting = NULL, "
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
