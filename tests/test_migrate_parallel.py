"""stagectl migrate at scale on a real PostgreSQL: key ranges walked at once, pauses from another terminal, and a
run that waits for a real streaming standby (pg_basebackup -R) whose replay is paused."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from tests.support.proxies import REPO
from tests.support.servers import PostgresServer, StandbyServer
from tests.support.waiting import until
from tests.test_migrate import command, one_line_error, reference, seeded, stagectl, table
from tools.clients.db import introspect
from tools.migration import ranges


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database)
    yield connection
    await connection.close()


def events(err: bytes) -> list[dict[str, Any]]:
    """The JSON events a run wrote on stderr (the catalog it uses, waiting, going on, warnings)."""
    return [orjson.loads(line) for line in err.splitlines() if line.startswith(b'{"event":"')]


def stop_if_running(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


async def control(db: asyncpg.Connection, run_id: int = 1) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM stage_migration_control WHERE run_id = $1", run_id)
    assert row is not None
    return row


async def test_ranges_at_once_normalize_as_one_walk(database: str, db: asyncpg.Connection) -> None:
    """Four ranges, each on its own connection: the table ends as the set-based reference, every change logged
    once, every range done, the control row's counts the ranges' sums."""
    await seeded(database, 40_000)
    before, expected = await table(db), await reference(db)
    result = await stagectl(database, "migrate", "--apply", "--parallel", "4", "--batch-size", "500", "--json")
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert await table(db) == expected
    changed = sum(1 for key, value in before.items() if value != expected[key])
    logged = await db.fetch("SELECT row_id FROM stage_normalization_log WHERE run_id = 1")
    assert len(logged) == len({r["row_id"] for r in logged}) == changed == report["rows_changed"] > 0
    parts = await db.fetch("SELECT * FROM stage_migration_ranges WHERE run_id = 1 ORDER BY range_no")
    assert len(parts) == 4 and all(p["done"] for p in parts)
    assert parts[0]["after_id"] is None and parts[-1]["upto_id"] is None
    assert [p["after_id"] for p in parts[1:]] == [p["upto_id"] for p in parts[:-1]]  # adjacent, no gap
    row = await control(db)
    assert (row["status"], row["parallel"], row["rows_scanned"]) == ("completed", 4, 40_000)
    assert row["rows_changed"] == sum(p["rows_changed"] for p in parts) == changed
    status = orjson.loads((await stagectl(database, "migrate", "status", "--json")).stdout)[0]
    assert status["parallel"] == 4 and status["rows_scanned"] == 40_000 and status["waiting"] is None


async def test_ranges_of_a_text_key_hold_as_many_rows(database: str, db: asyncpg.Connection) -> None:
    """A text key is split by ntile over its index (not by value): three ranges of a thousand rows each."""
    await db.execute("CREATE TABLE tickets (code text PRIMARY KEY, stage text)")
    await db.execute("INSERT INTO tickets SELECT 'T-' || md5(i::text), CASE WHEN i % 3 = 0 THEN 'won' ELSE 'lead' "
                     "END FROM generate_series(1, 3000) i")
    result = await stagectl(database, "migrate", "--apply", "--table", "tickets", "--parallel", "3", "--json")
    assert result.returncode == 0, result.stderr
    assert await db.fetchval("SELECT count(*) FROM tickets WHERE stage = 'won'") == 0
    assert await db.fetchval("SELECT count(*) FROM tickets WHERE stage = 'closed_won'") == 1000
    assert [r["rows_scanned"] for r in await db.fetch(
        "SELECT rows_scanned FROM stage_migration_ranges ORDER BY range_no")] == [1000, 1000, 1000]


async def test_integer_keys_split_by_value(database: str, db: asyncpg.Connection) -> None:
    """Integer keys: cuts between the smallest and largest key after the start; fewer ranges than asked for when
    there are fewer keys; none for an empty table."""
    await db.execute("CREATE TABLE deals (id bigint PRIMARY KEY, stage text)")
    target = await introspect(db, "deals", "stage", None)
    assert await ranges.boundaries(db, target, 4, None) == []
    await db.execute("INSERT INTO deals SELECT i, 'lead' FROM generate_series(1, 100) i")
    assert await ranges.boundaries(db, target, 4, None) == ["25", "50", "75"]
    assert await ranges.boundaries(db, target, 4, "60") == ["70", "80", "90"]
    assert await ranges.boundaries(db, target, 8, "97") == ["97", "98", "99"][1:]
    split = ranges.split(["25", "50"], None, 100)
    assert [(c.after, c.upto) for c in split] == [(None, "25"), ("25", "50"), ("50", None)]


@pytest.mark.parametrize("rows", [0, 1])
async def test_too_few_keys_to_split_make_one_range(database: str, db: asyncpg.Connection, rows: int) -> None:
    """An empty table or a single row: one range whatever --parallel says (the control row carries it)."""
    await db.execute("CREATE TABLE deals (id bigint PRIMARY KEY, stage text)")
    await db.execute("INSERT INTO deals SELECT i, 'won' FROM generate_series(1, $1) i", rows)
    result = await stagectl(database, "migrate", "--apply", "--parallel", "4", "--json")
    assert result.returncode == 0, result.stderr
    row = await control(db)
    assert (row["status"], row["parallel"], row["rows_scanned"], row["rows_changed"]) == ("completed", 1, rows, rows)
    assert await db.fetchval("SELECT count(*) FROM stage_migration_ranges") == 0


async def test_parallel_excludes_transactional(database: str, db: asyncpg.Connection) -> None:
    await seeded(database, 100)
    one_line_error(await stagectl(database, "migrate", "--apply", "--parallel", "2", "--transactional"), 2,
                   "--parallel needs batches of their own")
    one_line_error(await stagectl(database, "migrate", "--parallel", "0"), 2, "--parallel")
    assert (await stagectl(database, "migrate", "--apply", "--transactional")).returncode == 0  # one range: fine


async def test_pause_and_resume_from_another_terminal(database: str, db: asyncpg.Connection) -> None:
    """`migrate pause --run N` holds a running run after its batch in flight (status says why it waits, nothing
    moves); `migrate resume --run N` lets it finish. Pausing a finished run is refused in one line."""
    await seeded(database, 30_000)
    proc = subprocess.Popen(command(database, "migrate", "--apply", "--batch-size", "200", "--sleep-ms", "30",
                                    "--parallel", "2"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        async def going() -> bool:
            exists = await db.fetchval("SELECT to_regclass('stage_migration_ranges') IS NOT NULL")
            return bool(exists and await db.fetchval("SELECT sum(batch_no) >= 4 FROM stage_migration_ranges"))

        await until(going, timeout_s=60, what="the run's first batches")
        paused = await stagectl(database, "migrate", "pause", "--run", "1")
        assert paused.returncode == 0 and "pause requested" in paused.stdout, paused.stderr
        assert "already paused" in (await stagectl(database, "migrate", "pause", "--run", "1")).stdout

        async def waiting() -> bool:
            return bool((await control(db))["waiting"])

        await until(waiting, timeout_s=10, what="the run to say it waits")
        held = await db.fetchval("SELECT sum(rows_scanned) FROM stage_migration_ranges")
        await asyncio.sleep(1.5)
        assert await db.fetchval("SELECT sum(rows_scanned) FROM stage_migration_ranges") == held < 30_000
        shown = (await stagectl(database, "migrate", "status")).stdout
        assert "run 1: waiting: paused by `stagectl migrate pause --run 1`" in shown
        assert proc.poll() is None
        going_on = await stagectl(database, "migrate", "resume", "--run", "1")
        assert going_on.returncode == 0 and "going on" in going_on.stdout
        _, err = await asyncio.to_thread(proc.communicate, timeout=120)
    finally:
        stop_if_running(proc)
    assert proc.returncode == 0, err
    said = events(err)
    assert [e["event"] for e in said if e["event"] != "catalog"] == ["waiting", "going_on"]
    assert said[-2]["waiting"].startswith("paused by `stagectl migrate pause --run 1`")
    row = await control(db)
    assert (row["status"], row["rows_scanned"], row["waiting"], row["pause_requested"]) == ("completed", 30_000,
                                                                                             None, False)
    one_line_error(await stagectl(database, "migrate", "pause", "--run", "1"), 2, "run 1 is not running (completed)")
    one_line_error(await stagectl(database, "migrate", "pause", "--run", "9"), 2, "run 9 does not exist")


# -- a real streaming standby ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicated() -> Iterator[tuple[PostgresServer, StandbyServer]]:
    """A primary of its own (replication allowed) and a streaming standby made by pg_basebackup -R."""
    made = []
    for prefix in ("stagegate-primary-", "stagegate-standby-"):
        base = Path(tempfile.mkdtemp(prefix=prefix))
        base.chmod(0o755)
        made.append(base)
    primary = PostgresServer(made[0])
    primary.start()
    standby = StandbyServer(made[1], primary)
    try:
        standby.start()
        yield primary, standby
    finally:
        standby.stop()
        primary.stop()
        for base in made:
            shutil.rmtree(base, ignore_errors=True)


def _lag_ms(primary: PostgresServer) -> float:
    value = primary.psql("SELECT coalesce(max(extract(epoch FROM replay_lag) * 1000), 0) FROM pg_stat_replication")
    return float(value)


async def test_a_run_waits_while_a_standby_lags_and_goes_on_under_half(
        replicated: tuple[PostgresServer, StandbyServer]) -> None:
    """Replay paused on the standby: the lag read on the primary passes --max-replica-lag-ms, the run waits (its
    progress and status say so, nothing is written meanwhile); replay resumed: the lag falls under half the limit
    and the run finishes, every change logged once."""
    primary, standby = replicated
    primary.psql("CREATE DATABASE lagged")
    dsn = primary.dsn("lagged")
    await seeded(dsn, 20_000)
    db = await asyncpg.connect(dsn)
    try:
        def replayed() -> bool:
            try:
                return standby.psql("SELECT count(*) FROM deals", "lagged") == "20000"
            except RuntimeError:  # not there yet (the database or the table)
                return False

        await until(replayed, timeout_s=30, what="the standby to hold the seeded table")
        standby.psql("SELECT pg_wal_replay_pause()")
        proc = subprocess.Popen(command(dsn, "migrate", "--apply", "--batch-size", "100", "--sleep-ms", "20",
                                        "--parallel", "1", "--max-replica-lag-ms", "400",
                                        "--progress-interval-s", "0"),
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            async def waiting() -> bool:
                exists = await db.fetchval("SELECT to_regclass('stage_migration_control') IS NOT NULL")
                return bool(exists and await db.fetchval("SELECT waiting FROM stage_migration_control"))

            await until(waiting, timeout_s=30, what="the run to wait for the standby")
            assert _lag_ms(primary) > 400
            shown = (await stagectl(dsn, "migrate", "status")).stdout
            assert "run 1: waiting: replica lag" in shown and "over --max-replica-lag-ms 400" in shown
            held = await db.fetchval("SELECT rows_scanned FROM stage_migration_control")
            await asyncio.sleep(1.5)
            assert await db.fetchval("SELECT rows_scanned FROM stage_migration_control") == held < 20_000
            resumed_at = time.monotonic()
            standby.psql("SELECT pg_wal_replay_resume()")
            _, err = await asyncio.to_thread(proc.communicate, timeout=120)
        finally:
            stop_if_running(proc)
        assert proc.returncode == 0, err
        said = events(err)
        waits = [e for e in said if e["event"] == "waiting"]
        assert waits and waits[0]["run_id"] == 1 and waits[0]["waiting"].startswith("replica lag")
        assert said[-1] == {"event": "going_on", "run_id": 1}
        assert time.monotonic() - resumed_at < 60
        row = await db.fetchrow("SELECT status, rows_scanned, rows_changed, waiting FROM stage_migration_control")
        assert row is not None and (row["status"], row["rows_scanned"], row["waiting"]) == ("completed", 20_000, None)
        logged = await db.fetchval("SELECT count(DISTINCT row_id) FROM stage_normalization_log WHERE run_id = 1")
        assert logged == row["rows_changed"] > 0
        # without a limit the run never waits, even for a paused standby
        standby.psql("SELECT pg_wal_replay_pause()")
        again = await stagectl(dsn, "migrate", "--apply", "--max-replica-lag-ms", "0")
        assert again.returncode == 0 and "waiting" not in again.stderr
        standby.psql("SELECT pg_wal_replay_resume()")
    finally:
        await db.close()


async def test_a_role_that_cannot_read_the_lag_is_told_so(replicated: tuple[PostgresServer, StandbyServer]) -> None:
    """A standby is streaming but the role may not read its replay lag (no pg_monitor): the run says once that
    --max-replica-lag-ms cannot hold it, and runs."""
    primary, _ = replicated
    primary.psql("CREATE ROLE plain LOGIN")
    primary.psql("CREATE DATABASE plainly OWNER plain")
    dsn = primary.dsn("plainly", user="plain")
    await seeded(dsn, 2000)
    result = await stagectl(dsn, "migrate", "--apply", "--parallel", "1")
    assert result.returncode == 0, result.stderr
    warnings = [e for e in events(result.stderr.encode()) if e["event"] == "warning"]
    assert len(warnings) == 1 and "grant it pg_monitor" in warnings[0]["warning"]
    primary.psql("GRANT pg_monitor TO plain")
    again = await stagectl(dsn, "migrate", "--apply", "--parallel", "1")
    assert again.returncode == 0 and '"event":"warning"' not in again.stderr
