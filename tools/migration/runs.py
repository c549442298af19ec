"""The life of a migration run: who holds it, when it counts as interrupted, what may resume it.

A run is ``running`` only while a database session holds its table/column's
advisory lock (the session's pid is stored in ``holder_pid``). A row that says
``running`` with no such session — the process was killed, the host lost — is
rewritten to ``interrupted`` (with the time it was found so) by whichever
``stagectl migrate`` command next looks. An unfinished run (``interrupted``,
``aborted``, ``failed``) blocks new ``--apply`` runs on the same table/column
until it is resumed or abandoned; only the latest unfinished run can be
resumed, and only if no newer applied run and no revert touched the table since.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from importlib import resources

import asyncpg

from tools.clients.db import Target
from tools.shared.errors import EXIT_BUSY, EXIT_USAGE, CommandError

LOCK_PREFIX = "stagegate-migrate:"
UNFINISHED = ("running", "interrupted", "aborted", "failed")
DEFAULT_TABLE, DEFAULT_COLUMN = "deals", "stage"

# The run's advisory lock key, from its stored target (the same text lock_key() hashes).
_KEY = f"hashtextextended('{LOCK_PREFIX}' || c.table_name || '.' || c.column_name, 0)"
# A bigint advisory lock shows in pg_locks as classid = high 32 bits, objid = low 32 bits, objsubid = 1.
LIVE = ("EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
        f"AND l.pid = c.holder_pid AND l.classid = (({_KEY} >> 32) & 4294967295)::oid "
        f"AND l.objid = ({_KEY} & 4294967295)::oid)")
RECONCILE = ("UPDATE stage_migration_control c SET status = 'interrupted', interrupted_at = now(), "
             "error = coalesce(error, 'found running with no process holding its lock (killed?)') "
             f"WHERE c.status = 'running' AND NOT {LIVE} RETURNING run_id")


def lock_key(target: Target) -> str:
    return f"{LOCK_PREFIX}{target.label}"


async def take_lock(connection: asyncpg.Connection, target: Target) -> None:
    """The table/column's session advisory lock, or exit 6 naming who holds it."""
    if await connection.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", lock_key(target)):
        return
    holder = await connection.fetchrow(
        f"SELECT c.run_id, c.holder FROM stage_migration_control c WHERE c.status = 'running' AND {LIVE} "
        "AND c.table_name = $1 AND c.column_name = $2 ORDER BY c.run_id DESC LIMIT 1",
        f"{target.schema}.{target.table}", target.column) if await has_control(connection) else None
    if holder is None:
        who = "another stagectl session (a revert or an abandon)"
    else:
        who = f"run {holder['run_id']} of {holder['holder'] or 'a stagectl process'}"
    raise CommandError(f"another stagectl migrate is running on {target.label}: {who} holds its lock; wait for it, "
                       "or stop that process (Ctrl-C finishes its batch and marks the run aborted)", EXIT_BUSY)


async def has_control(connection: asyncpg.Connection) -> bool:
    return bool(await connection.fetchval("SELECT to_regclass('stage_migration_control') IS NOT NULL"))


async def create_tables(connection: asyncpg.Connection) -> None:
    """The control and log tables (tools/migration/migrate.sql, idempotent; upgrades tables of earlier versions)."""
    await connection.execute(resources.files("tools.migration").joinpath("migrate.sql").read_text(encoding="utf-8"))


async def reconcile(connection: asyncpg.Connection) -> list[int]:
    """Mark every run that says running but has no live lock holder as interrupted; the runs marked.

    Brings a control table of an earlier version up to date first. On a read-only database (a standby)
    nothing is stored; ``migrate status`` still shows such runs as interrupted, computed."""
    if not await has_control(connection):
        return []
    if await connection.fetchval("SELECT current_setting('transaction_read_only') = 'on'"):
        return []
    await create_tables(connection)
    return [int(r["run_id"]) for r in await connection.fetch(RECONCILE)]


def target_flags(table: str, column: str) -> str:
    """--table/--column as the operator has to repeat them (nothing for the defaults)."""
    schema, _, name = table.rpartition(".")
    flags = "" if name == DEFAULT_TABLE and schema in ("", "public") else f" --table {table}"
    return flags + ("" if column == DEFAULT_COLUMN else f" --column {column}")


def resume_command(table: str, column: str, dry_run: bool) -> str:
    return f"stagectl migrate{'' if dry_run else ' --apply'} --resume{target_flags(table, column)}"


def abandon_command(run_id: int) -> str:
    return f"stagectl migrate abandon --run {run_id}"


async def unfinished(connection: asyncpg.Connection, target: Target, dry_run: bool) -> asyncpg.Record | None:
    """The latest unfinished run of this kind on the target (after reconcile, none of them is live)."""
    return await connection.fetchrow(
        "SELECT run_id, status, last_id, batch_no, rows_scanned, rows_changed, updated_at, reverted_at, "
        "catalog_version, parallel "
        "FROM stage_migration_control WHERE table_name = $1 AND column_name = $2 AND dry_run = $3 "
        "AND status = ANY($4::text[]) ORDER BY run_id DESC LIMIT 1",
        f"{target.schema}.{target.table}", target.column, dry_run, list(UNFINISHED))


async def refuse_if_unfinished(connection: asyncpg.Connection, target: Target) -> None:
    """A new --apply run must not start on top of an unfinished one: say exactly what to do instead."""
    row = await unfinished(connection, target, dry_run=False)
    if row is None:
        return
    table = f"{target.schema}.{target.table}"
    raise CommandError(
        f"run {row['run_id']} on {target.label} is unfinished ({row['status']}, stopped after id {row['last_id']}); "
        f"continue it with `{resume_command(table, target.column, False)}` or close it with "
        f"`{abandon_command(row['run_id'])}`, then start a new run", EXIT_USAGE)


async def check_resumable(connection: asyncpg.Connection, target: Target, row: asyncpg.Record) -> None:
    """Refuse to resume a run the table has moved on from (a newer applied run, a revert)."""
    run_id = row["run_id"]
    again = f"`{abandon_command(run_id)}`, then start a new run"
    if row["reverted_at"] is not None:
        raise CommandError(f"run {run_id} was reverted at {row['reverted_at']:%Y-%m-%d %H:%M:%S}Z: resuming it would "
                           f"count reverted rows as changed; {again}", EXIT_USAGE)
    table = f"{target.schema}.{target.table}"
    newer = await connection.fetchrow(
        "SELECT run_id, status FROM stage_migration_control WHERE table_name = $1 AND column_name = $2 "
        "AND run_id > $3 AND NOT dry_run ORDER BY run_id LIMIT 1", table, target.column, run_id)
    if newer is not None:
        raise CommandError(f"run {newer['run_id']} ({newer['status']}) wrote to {target.label} after run {run_id}: "
                           f"run {run_id} can no longer be resumed; {again}", EXIT_USAGE)
    reverted = await connection.fetchrow(
        "SELECT run_id, reverted_at FROM stage_migration_control WHERE table_name = $1 AND column_name = $2 "
        "AND reverted_at > $3 ORDER BY reverted_at DESC LIMIT 1", table, target.column, row["updated_at"])
    if reverted is not None:
        raise CommandError(f"run {reverted['run_id']} was reverted after run {run_id} stopped: run {run_id} can no "
                           f"longer be resumed; {again}", EXIT_USAGE)


@contextlib.asynccontextmanager
async def holding_lock(connection: asyncpg.Connection, target: Target) -> AsyncIterator[None]:
    """The target's lock for an administrative change (abandon, revert): no run can be live meanwhile."""
    await take_lock(connection, target)
    try:
        await reconcile(connection)
        yield
    finally:
        await connection.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", lock_key(target))


async def close(connection: asyncpg.Connection, run_id: int) -> asyncpg.Record | None:
    """Mark an unfinished run abandoned (call under holding_lock); None when it was not unfinished."""
    return await connection.fetchrow(
        "UPDATE stage_migration_control SET status = 'abandoned', abandoned_at = now(), updated_at = now() "
        "WHERE run_id = $1 AND status = ANY($2::text[]) RETURNING run_id, last_id, rows_changed, dry_run",
        run_id, list(UNFINISHED))


async def abandon(connection: asyncpg.Connection, target: Target, run_id: int) -> asyncpg.Record:
    """Close an unfinished run for good, so new runs may start on its table/column."""
    async with holding_lock(connection, target):
        row = await close(connection, run_id)
        if row is None:
            status = await connection.fetchval("SELECT status FROM stage_migration_control WHERE run_id = $1", run_id)
            raise CommandError(f"run {run_id} is {status}: only an unfinished run "
                               f"({', '.join(UNFINISHED[1:])}) can be abandoned", EXIT_USAGE)
        return row
