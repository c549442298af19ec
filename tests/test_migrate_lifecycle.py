"""The life of a migration run on a real PostgreSQL: killed runs are interrupted (never running), unfinished runs
block new ones with the way out spelled, resumes continue only what is safe to continue and say so."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from tests.support.proxies import REPO
from tests.support.waiting import until
from tests.test_migrate import command, one_line_error, reference, seeded, stagectl, table

ROWS = 20_000


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database)
    yield connection
    await connection.close()


async def status(dsn: str, *extra: str) -> list[dict[str, object]]:
    result = await stagectl(dsn, "migrate", "status", "--json", *extra)
    assert result.returncode == 0, result.stderr
    runs: list[dict[str, object]] = orjson.loads(result.stdout)
    return runs


async def start_slow_run(dsn: str, db: asyncpg.Connection, *extra: str,
                         output: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """A run with small batches and pauses (one key range unless ``extra`` says otherwise: its control row counts
    every batch as it commits), returned once it has committed a few batches."""
    ranges = () if "--parallel" in extra else ("--parallel", "1")
    proc = subprocess.Popen(command(dsn, "migrate", "--apply", "--batch-size", "200", "--sleep-ms", "40", *ranges,
                                    *extra),
                            cwd=REPO, stdout=output, stderr=output)

    async def going() -> bool:
        if await db.fetchval("SELECT to_regclass('stage_migration_control') IS NOT NULL"):
            batches = await db.fetchval("SELECT max(batch_no) FROM stage_migration_control WHERE status = 'running'")
            if (batches or 0) >= 3:
                return True
        assert proc.poll() is None, "the run ended before it could be observed"
        return False

    try:
        await until(going, timeout_s=60, what="the run to commit three batches")
    except AssertionError:
        proc.kill()
        raise
    return proc


async def kill_9(proc: subprocess.Popen[bytes], dsn: str) -> dict[str, object]:
    """SIGKILL, then the run as status reports it once PostgreSQL has noticed the session is gone."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)

    async def not_running() -> bool:
        return (await status(dsn))[0]["status"] != "running"

    await until(not_running, timeout_s=20, interval_s=0.1, what="the killed run to stop showing as running")
    return (await status(dsn))[0]


async def test_a_live_run_shows_its_lock_holder_and_a_killed_one_is_interrupted(database: str,
                                                                                  db: asyncpg.Connection) -> None:
    await seeded(database, ROWS)
    proc = await start_slow_run(database, db)
    live = (await status(database))[0]
    assert live["status"] == "running" and isinstance(live["holder_pid"], int) and live["resume_command"] is None
    text = (await stagectl(database, "migrate", "status")).stdout
    # the stagectl process an operator would stop, never the database backend holding the lock
    assert str(live["holder"]).startswith(f"stagectl pid {proc.pid} on ")
    assert f"running in stagectl pid {proc.pid} on " in text and "STARTED (UTC)" in text

    run = await kill_9(proc, database)
    assert run["status"] == "interrupted" and run["interrupted_at"] and run["holder_pid"] is None
    assert run["resume_command"] == "stagectl migrate --apply --resume"
    stored = await db.fetchrow("SELECT status, interrupted_at FROM stage_migration_control WHERE run_id = $1",
                               run["run_id"])
    assert stored is not None and stored["status"] == "interrupted" and stored["interrupted_at"] is not None
    text = (await stagectl(database, "migrate", "status")).stdout
    assert "interrupted" in text and "resume with `stagectl migrate --apply --resume`" in text
    assert f"stagectl migrate abandon --run {run['run_id']}" in text


async def test_apply_is_refused_while_a_run_is_unfinished_and_resume_continues_it(database: str,
                                                                                     db: asyncpg.Connection) -> None:
    await seeded(database, ROWS)
    expected = await reference(db)
    run = await kill_9(await start_slow_run(database, db), database)
    done = int(str(run["rows_scanned"]))
    assert 0 < done < ROWS

    refused = await stagectl(database, "migrate", "--apply")
    one_line_error(refused, 2, f"run {run['run_id']} on public.deals.stage is unfinished (interrupted")
    assert "stagectl migrate --apply --resume" in refused.stderr
    assert f"stagectl migrate abandon --run {run['run_id']}" in refused.stderr
    assert await db.fetchval("SELECT count(*) FROM stage_migration_control") == 1  # no second run
    one_line_error(await stagectl(database, "migrate", "--apply", "--resume-from", "10"), 2, "is unfinished")

    resumed = await stagectl(database, "migrate", "--apply", "--resume", "--json", "--progress-interval-s", "0")
    assert resumed.returncode == 0, resumed.stderr
    catalog, *lines = resumed.stderr.splitlines()
    assert orjson.loads(catalog)["event"] == "catalog"
    assert lines[0].startswith(f"resuming run {run['run_id']} (interrupted) after id {run['last_id']}: "
                               f"{done} rows already scanned")
    progress = [orjson.loads(line) for line in lines[1:]]
    assert progress[0]["rows"] > done and progress[-1]["rows"] == ROWS  # the bar starts where the run was
    summary = orjson.loads(resumed.stdout)
    assert summary["run_id"] == run["run_id"] and summary["rows_scanned"] == ROWS  # counts true across processes
    assert summary["rows_changed"] == await db.fetchval(
        "SELECT count(*) FROM stage_normalization_log WHERE run_id = $1", run["run_id"])
    assert await table(db) == expected
    final = (await status(database))[0]
    assert final["status"] == "completed" and final["resumes"] == 1 and final["finished_at"]


async def test_abandon_closes_a_run_and_lets_a_new_one_start(database: str, db: asyncpg.Connection) -> None:
    await seeded(database, ROWS)
    proc = await start_slow_run(database, db)
    busy = await stagectl(database, "migrate", "abandon", "--run", "1")
    one_line_error(busy, 6, "run 1 of stagectl pid ")  # live: nobody may close it under the process
    run = await kill_9(proc, database)

    abandoned = await stagectl(database, "migrate", "abandon", "--run", str(run["run_id"]))
    assert abandoned.returncode == 0, abandoned.stderr
    assert f"run {run['run_id']} abandoned" in abandoned.stdout and "migrate revert --run" in abandoned.stdout
    one_line_error(await stagectl(database, "migrate", "abandon", "--run", str(run["run_id"])), 2,
                   "is abandoned: only an unfinished run")
    one_line_error(await stagectl(database, "migrate", "--apply", "--resume"), 2, "nothing to resume")
    fresh = await stagectl(database, "migrate", "--apply", "--json")
    assert fresh.returncode == 0, fresh.stderr
    assert orjson.loads(fresh.stdout)["run_id"] == int(str(run["run_id"])) + 1
    assert [r["status"] for r in await status(database)] == ["completed", "abandoned"]


async def test_resume_is_refused_after_a_revert_or_a_newer_run(database: str, db: asyncpg.Connection) -> None:
    await seeded(database, ROWS)
    first = await stagectl(database, "migrate", "--apply", "--json")
    assert first.returncode == 0, first.stderr
    await db.execute("UPDATE deals SET stage = 'Closed Won' WHERE id % 7 = 0")  # work for a second run
    interrupted = await kill_9(await start_slow_run(database, db), database)

    # a revert of an earlier run after this one stopped: the table is not what the run left
    reverted = await stagectl(database, "migrate", "revert", "--run", "1", "--apply")
    assert reverted.returncode == 0, reverted.stderr
    one_line_error(await stagectl(database, "migrate", "--apply", "--resume"), 2,
                   f"run 1 was reverted after run {interrupted['run_id']} stopped")

    # reverting the unfinished run itself closes it: nothing left to resume, new runs may start
    undone = await stagectl(database, "migrate", "revert", "--run", str(interrupted["run_id"]), "--apply")
    assert undone.returncode == 0, undone.stderr
    assert (await status(database, "--run", str(interrupted["run_id"])))[0]["status"] == "reverted"
    one_line_error(await stagectl(database, "migrate", "--apply", "--resume"), 2, "nothing to resume")


async def test_resume_is_refused_when_a_newer_run_wrote_since(database: str, db: asyncpg.Connection) -> None:
    """Runs recorded by an earlier stagegate (no refusal then) can leave a newer run above an unfinished one."""
    await seeded(database, 2000)
    assert (await stagectl(database, "migrate", "--apply")).returncode == 0
    await db.execute("UPDATE stage_migration_control SET status = 'aborted', finished_at = NULL")
    await db.execute("INSERT INTO stage_migration_control (table_name, column_name, pk_name, dry_run, status) "
                     "VALUES ('public.deals', 'stage', 'id', false, 'completed')")
    one_line_error(await stagectl(database, "migrate", "--apply", "--resume"), 2,
                   "run 2 (completed) wrote to public.deals.stage after run 1")


async def test_sigint_prints_the_resume_command(database: str, db: asyncpg.Connection) -> None:
    await seeded(database, ROWS)
    proc = await start_slow_run(database, db, "--table", "public.deals", output=subprocess.PIPE)
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 130
    assert "resume it with `stagectl migrate --apply --resume`" in err.decode()  # public.deals is the default table


async def test_an_old_control_table_is_upgraded(database: str, db: asyncpg.Connection) -> None:
    """A control table of a version without run lifecycle gains its columns; its stale running run shows
    as interrupted."""
    await seeded(database, 500)
    await db.execute("""CREATE TABLE stage_migration_control (
        run_id bigserial PRIMARY KEY, table_name text NOT NULL, column_name text NOT NULL, pk_name text NOT NULL,
        dry_run boolean NOT NULL, transactional boolean NOT NULL DEFAULT false,
        status text NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'aborted')), last_id text,
        batch_no integer NOT NULL DEFAULT 0, rows_scanned bigint NOT NULL DEFAULT 0,
        rows_changed bigint NOT NULL DEFAULT 0, rows_unknown bigint NOT NULL DEFAULT 0,
        rows_null bigint NOT NULL DEFAULT 0, rows_skipped bigint NOT NULL DEFAULT 0, catalog_sha256 text,
        started_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz, reverted_at timestamptz, error text)""")
    await db.execute("INSERT INTO stage_migration_control (table_name, column_name, pk_name, dry_run, status, "
                     "last_id) VALUES ('public.deals', 'stage', 'id', false, 'running', '100')")
    run = (await status(database))[0]
    assert run["status"] == "interrupted" and run["resume_command"] == "stagectl migrate --apply --resume"
    resumed = await stagectl(database, "migrate", "--apply", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.splitlines()[1].startswith("resuming run 1 (interrupted) after id 100")


async def test_reverting_a_reverted_run_says_so_and_changes_nothing(database: str, db: asyncpg.Connection) -> None:
    """The second revert of a run: exit 0, "already reverted", no row touched; status shows it as reverted."""
    await seeded(database, 500)
    assert (await stagectl(database, "migrate", "--apply")).returncode == 0
    assert (await stagectl(database, "migrate", "revert", "--run", "1", "--apply")).returncode == 0
    await db.execute("UPDATE deals SET stage = 'lead' WHERE id % 5 = 0")  # the application moved on meanwhile
    before = await db.fetchval("SELECT md5(string_agg(stage, ',' ORDER BY id)) FROM deals")
    again = await stagectl(database, "migrate", "revert", "--run", "1", "--apply")
    assert again.returncode == 0 and "run 1 was already reverted at" in again.stdout and "nothing to do" in again.stdout
    assert await db.fetchval("SELECT md5(string_agg(stage, ',' ORDER BY id)) FROM deals") == before
    assert (await status(database, "--run", "1"))[0]["status"] == "reverted"
