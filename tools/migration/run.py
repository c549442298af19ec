"""One migration run as one call, for ``stagectl migrate`` and ``stagectl normalize`` alike: typed arguments,
no argparse (docs/migrate.md)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import statistics
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from tools.clients import catalogs
from tools.clients.catalogs import ChosenCatalog
from tools.clients.db import connect, introspect
from tools.migration.engine import Migration, Options, summary
from tools.shared.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CommandError
from tools.shared.progress import Progress


@dataclass(frozen=True, slots=True)
class Where:
    """The database and the column a run normalizes."""

    dsn: str
    table: str = "deals"
    column: str = "stage"
    pk: str | None = None  # default: the table's primary key


class _Rollback(Exception):
    """Raised inside a --transactional run to undo everything."""


@contextlib.asynccontextmanager
async def database(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection whose database errors become one-line CommandErrors."""
    connection = await connect(dsn)
    try:
        yield connection
    except asyncpg.ReadOnlySQLTransactionError:
        raise CommandError("the database is read-only: nothing can be written", EXIT_USAGE) from None
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise CommandError(f"database error: {type(exc).__name__}: {exc}") from None
    finally:
        await connection.close()


async def perform(where: Where, options: Options, chosen: ChosenCatalog, stop: asyncio.Event | None = None, *,
                  say_catalog: bool = True) -> tuple[int, dict[str, Any] | None]:
    """One migration run: (exit code, summary; None when a transactional run was rolled back). ``stop`` (set by
    the caller's SIGINT/SIGTERM handlers; installed here when not given) finishes the batch in flight and marks
    the run aborted. ``say_catalog``: say which catalog classifies, once the run is open (normalize says it
    itself, once for every step)."""
    catalog = chosen.catalog
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    async with database(where.dsn) as connection:
        target = await introspect(connection, where.table, where.column, where.pk)
        migration = Migration(connection, target, catalog, options, stop, chosen.version, where.dsn)
        migration.chosen = chosen if say_catalog else None
        await migration.prepare()
        progress = Progress(await migration.total_rows(), interval_s=options.progress_interval_s)
        status = await (_transactional(migration, progress) if options.transactional else _batched(migration, progress))
        progress.finish(migration.done_before + migration.tally.scanned)
        if status == "rolled back":
            return EXIT_INTERRUPTED, None
        report = await summary(connection, migration.run_id, target, catalog)
    report["batch_ms_p50"], report["batch_ms_p99"] = _percentiles(migration.tally.batch_ms)
    report["resume_command"] = migration.resume_command if status == "aborted" else None
    report["batches_s"] = round(sum(migration.tally.batch_ms) / 1000, 3)
    report["catalog"] = chosen.as_json()
    return (EXIT_INTERRUPTED if status == "aborted" else EXIT_OK), report


def _say_resumed(migration: Migration) -> None:
    if migration.resumed:
        print(migration.resumed, file=sys.stderr, flush=True)


async def _batched(migration: Migration, progress: Progress) -> str:
    await migration.open_run()
    if migration.chosen is not None:
        catalogs.say(migration.chosen)
    _say_resumed(migration)
    try:
        status = await migration.run(progress)
    except CommandError as exc:
        await migration.finish("failed", str(exc))
        raise
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError):
            await migration.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    await migration.finish(status)
    return status


async def _transactional(migration: Migration, progress: Progress) -> str:
    try:
        async with migration.db.transaction():
            await migration.open_run()
            if migration.chosen is not None:
                catalogs.say(migration.chosen)
            _say_resumed(migration)
            if await migration.run(progress) == "aborted":
                raise _Rollback
            await migration.finish("completed")
    except _Rollback:
        return "rolled back"
    return "completed"


def _percentiles(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    ordered = sorted(values)
    return round(statistics.median(ordered), 2), round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2)


