"""stagectl migrate and seed-db against a real PostgreSQL: correctness, crash safety, concurrency, bad input."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from proxy.catalog.stages import default_catalog
from tests.support.ports import free_port
from tests.support.proxies import REPO
from tests.support.servers import PostgresServer
from tests.support.waiting import output_line, until

CATALOG = default_catalog()
CHECKSUM = "SELECT md5(string_agg(d::text, '|' ORDER BY d.id)) FROM deals d"


def command(dsn: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "tools.stagectl", *args, "--dsn", dsn] if args[0] == "seed-db" else [
        sys.executable, "-m", "tools.stagectl", args[0], "--dsn", dsn, *args[1:]]


async def stagectl(dsn: str, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, command(dsn, *args), cwd=REPO, capture_output=True, text=True,
                                   timeout=timeout_s)


def one_line_error(result: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("stagectl: error:") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database)
    yield connection
    await connection.close()


async def seeded(dsn: str, rows: int) -> None:
    result = await stagectl(dsn, "seed-db", "--rows", str(rows))
    assert result.returncode == 0, result.stderr


async def reference(db: asyncpg.Connection) -> dict[int, str | None]:
    """The expected table, computed without the tool: one set-based mapping over the distinct values."""
    distinct = [r["stage"] for r in await db.fetch("SELECT DISTINCT stage FROM deals WHERE stage IS NOT NULL")]
    mapping = {value: CATALOG.classify(value)[1] for value in distinct if CATALOG.classify(value)[0] == "alias"}
    await db.execute("DROP TABLE IF EXISTS reference; CREATE TABLE reference AS SELECT id, stage FROM deals")
    await db.execute("UPDATE reference r SET stage = m.new FROM unnest($1::text[], $2::text[]) AS m(old, new) "
                     "WHERE r.stage = m.old", list(mapping), list(mapping.values()))
    return {r["id"]: r["stage"] for r in await db.fetch("SELECT id, stage FROM reference")}


async def table(db: asyncpg.Connection) -> dict[int, str | None]:
    return {r["id"]: r["stage"] for r in await db.fetch("SELECT id, stage FROM deals")}


async def test_seed_mix(database: str, db: asyncpg.Connection) -> None:
    """seed-db makes the legacy table with canonical, variant, unknown and NULL stages."""
    await seeded(database, 2000)
    kinds = {"canonical": 0, "alias": 0, "unknown": 0, "null": 0}
    for row in await db.fetch("SELECT stage FROM deals"):
        kinds["null" if row["stage"] is None else CATALOG.classify(row["stage"])[0]] += 1
    assert kinds["canonical"] > 1200 and kinds["alias"] > 250 and kinds["unknown"] > 50 and kinds["null"] > 30, kinds
    columns = [r["column_name"] for r in await db.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'deals' ORDER BY ordinal_position")]
    assert columns == ["id", "name", "stage", "amount", "updated_at"]


async def test_dry_run_leaves_data_untouched(database: str, db: asyncpg.Connection) -> None:
    """The default dry run changes no byte of the data table and logs its plan with dry_run = true."""
    await seeded(database, 5000)
    before = await db.fetchval(CHECKSUM)
    expected = await reference(db)
    result = await stagectl(database, "migrate", "--json", "--batch-size", "700")
    assert result.returncode == 0, result.stderr
    assert await db.fetchval(CHECKSUM) == before
    report = orjson.loads(result.stdout)
    planned = {int(r["row_id"]): r["new_value"] for r in await db.fetch(
        "SELECT row_id, new_value FROM stage_normalization_log WHERE run_id = $1 AND dry_run", report["run_id"])}
    current = await table(db)
    assert planned == {k: v for k, v in expected.items() if v != current[k]}
    assert report["dry_run"] is True and report["rows_changed"] == len(planned)
    assert {v["to"] for v in report["variants"]} <= set(CATALOG.canonical)
    assert report["unknown_values"] and report["rows_null"] > 0


async def test_apply_matches_reference_and_is_idempotent(database: str, db: asyncpg.Connection) -> None:
    """--apply equals a set-based reference; log rows are the changed rows; a second --apply changes nothing."""
    await seeded(database, 20_000)
    before = await table(db)
    expected = await reference(db)
    result = await stagectl(database, "migrate", "--apply", "--batch-size", "900")
    assert result.returncode == 0, result.stderr
    after = await table(db)
    assert after == expected
    log = {int(r["row_id"]): (r["old_value"], r["new_value"]) for r in await db.fetch(
        "SELECT row_id, old_value, new_value FROM stage_normalization_log WHERE NOT dry_run")}
    assert log == {k: (before[k], after[k]) for k in after if before[k] != after[k]}
    again = await stagectl(database, "migrate", "--apply")
    assert again.returncode == 0 and "nothing to change" in again.stdout
    verify = await stagectl(database, "migrate", "verify", "--json")
    report = orjson.loads(verify.stdout)
    assert verify.returncode == 1 and report["alias"] == {} and report["unknown"]  # unknowns remain, by design


async def batch_reached(db: asyncpg.Connection, batch: int) -> bool:
    """True once a run has committed batch number ``batch`` (its control row says so)."""
    if not await db.fetchval("SELECT to_regclass('stage_migration_control') IS NOT NULL"):
        return False
    return bool(await db.fetchval("SELECT count(*) FROM stage_migration_control WHERE batch_no >= $1", batch))


async def _unfinished_apply(db: asyncpg.Connection) -> bool:
    if not await db.fetchval("SELECT to_regclass('stage_migration_control') IS NOT NULL"):
        return False
    return bool(await db.fetchval("SELECT count(*) FROM stage_migration_control WHERE NOT dry_run "
                                  "AND status <> 'completed'"))


@pytest.mark.parametrize(("parallel", "batch"), [("1", "100"), ("2", "50")])
async def test_sigkill_at_random_points_then_resume(database: str, db: asyncpg.Connection, parallel: str,
                                                    batch: str) -> None:
    """Killed with SIGKILL ten times mid-run and resumed, walking the keys in one range or two at once: the result
    equals the reference, each change logged once."""
    await seeded(database, 100_000)
    before = await table(db)
    expected = await reference(db)
    rng = random.Random(7)
    kills = 0
    for _ in range(40):
        # >= 15 s of batches in all (1000 pauses of 15 ms in each of `parallel` ranges), while ten kills can use at
        # most 11 s of it: the kills always land mid-run
        args = ["migrate", "--apply", "--batch-size", batch, "--sleep-ms", "15", "--parallel", parallel]
        if await _unfinished_apply(db):
            args.append("--resume")
        proc = subprocess.Popen(command(database, *args), cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if kills < 10:
            # a random moment on purpose, from before connecting to deep into the batches: where it lands is the test
            await asyncio.sleep(rng.uniform(0.3, 1.1))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        code = await asyncio.to_thread(proc.wait, 120)
        if code == 0:
            break
    assert kills == 10
    assert await table(db) == expected
    runs = await db.fetch("SELECT run_id, status FROM stage_migration_control WHERE NOT dry_run")
    assert [r["status"] for r in runs].count("completed") == 1
    logged = await db.fetchval("SELECT count(*) FROM stage_normalization_log WHERE NOT dry_run")
    distinct = await db.fetchval("SELECT count(DISTINCT row_id) FROM stage_normalization_log WHERE NOT dry_run")
    needed = sum(1 for key, value in before.items() if value != expected[key])
    assert logged == distinct == needed > 0  # every changed row logged exactly once


async def test_concurrent_application_write_wins(database: str, db: asyncpg.Connection) -> None:
    """A row the application changes while the migration holds a plan for it keeps the application's value."""
    await seeded(database, 3000)
    victim = await db.fetchval("SELECT max(id) FROM deals WHERE stage = ANY($1::text[])", ["WON", "Closed Won", "won"])
    app = await asyncpg.connect(database)
    transaction = app.transaction()
    await transaction.start()
    await app.execute("UPDATE deals SET stage = 'app-wrote-this' WHERE id = $1", victim)
    proc = subprocess.Popen(command(database, "migrate", "--apply", "--json", "--batch-size", "5000",
                                    "--lock-timeout-ms", "20000"), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        async def blocked() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                          "AND query LIKE '%stage_normalization_log%'"))

        await until(blocked, what="the migration to block on the application's row lock")
        await transaction.commit()
        out, _ = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        await app.close()
    assert proc.returncode == 0
    assert await db.fetchval("SELECT stage FROM deals WHERE id = $1", victim) == "app-wrote-this"
    assert orjson.loads(out)["rows_skipped"] == 1
    assert not await db.fetchval("SELECT count(*) FROM stage_normalization_log WHERE row_id = $1", str(victim))


async def test_random_concurrent_writers_are_never_overwritten(database: str, db: asyncpg.Connection) -> None:
    """While --apply runs, a task keeps writing marker values to random rows: every marker survives."""
    await seeded(database, 30_000)
    proc = subprocess.Popen(command(database, "migrate", "--apply", "--batch-size", "300", "--sleep-ms", "3"),
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    written: dict[int, str] = {}
    rng = random.Random(3)
    writer = await asyncpg.connect(database)
    try:
        n = 0
        while proc.poll() is None:
            row = rng.randint(1, 30_000)
            value = f"app-{n}"
            await writer.execute("UPDATE deals SET stage = $2 WHERE id = $1", row, value)
            written[row] = value
            n += 1
    finally:
        await writer.close()
    assert proc.wait() == 0 and len(written) > 50
    final = await table(db)
    assert all(final[row] == value for row, value in written.items())


async def test_revert_restores_the_pre_run_table(database: str, db: asyncpg.Connection) -> None:
    """revert --apply puts every value back where nothing else changed it; a dry revert only reports."""
    await seeded(database, 8000)
    before = await db.fetchval(CHECKSUM)
    result = await stagectl(database, "migrate", "--apply", "--json")
    run_id = orjson.loads(result.stdout)["run_id"]
    report = await stagectl(database, "migrate", "revert", "--run", str(run_id), "--json")
    assert report.returncode == 0 and orjson.loads(report.stdout)["restored"] == 0
    assert await db.fetchval(CHECKSUM) != before
    done = await stagectl(database, "migrate", "revert", "--run", str(run_id), "--apply", "--json")
    assert done.returncode == 0, done.stderr
    assert await db.fetchval(CHECKSUM) == before
    assert orjson.loads(done.stdout)["changed_since"] == 0


async def test_revert_leaves_rows_changed_since(database: str, db: asyncpg.Connection) -> None:
    """A row the application changed after the run is not reverted, and is reported."""
    await seeded(database, 2000)
    run_id = orjson.loads((await stagectl(database, "migrate", "--apply", "--json")).stdout)["run_id"]
    touched = await db.fetchval("SELECT min(row_id::bigint) FROM stage_normalization_log WHERE run_id = $1", run_id)
    await db.execute("UPDATE deals SET stage = 'proposal' WHERE id = $1", touched)
    done = orjson.loads((await stagectl(database, "migrate", "revert", "--run", str(run_id), "--apply",
                                        "--json")).stdout)
    assert done["changed_since"] == 1
    assert await db.fetchval("SELECT stage FROM deals WHERE id = $1", touched) == "proposal"


async def test_transactional_killed_leaves_nothing(database: str, db: asyncpg.Connection) -> None:
    """--transactional killed mid-run: the table is unchanged and no run or log row remains."""
    await seeded(database, 60_000)
    before = await db.fetchval(CHECKSUM)
    proc = subprocess.Popen(command(database, "migrate", "--apply", "--transactional", "--batch-size", "300",
                                    "--sleep-ms", "20", "--progress-interval-s", "0"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        await output_line(proc.stderr, lambda line: line.startswith(b'{"progress"') and
                          orjson.loads(line)["batch"] >= 5, what="the run's fifth batch (a progress line per batch)")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()

    async def session_gone() -> bool:  # PostgreSQL has noticed the dead client and rolled its transaction back
        return not await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND backend_type = 'client backend' AND pid <> pg_backend_pid()")

    await until(session_gone, what="the killed run's session to end")
    assert await db.fetchval(CHECKSUM) == before
    assert await db.fetchval("SELECT count(*) FROM stage_migration_control") == 0
    assert await db.fetchval("SELECT count(*) FROM stage_normalization_log") == 0


async def test_transactional_completes(database: str, db: asyncpg.Connection) -> None:
    """--transactional run to the end gives the reference result."""
    await seeded(database, 5000)
    expected = await reference(db)
    result = await stagectl(database, "migrate", "--apply", "--transactional")
    assert result.returncode == 0, result.stderr
    assert await table(db) == expected


async def test_sigint_finishes_the_batch_and_marks_aborted(database: str, db: asyncpg.Connection) -> None:
    """SIGINT: the batch in flight commits, the run is aborted, exit 130; --resume finishes the job."""
    await seeded(database, 60_000)
    expected = await reference(db)
    proc = subprocess.Popen(command(database, "migrate", "--apply", "--batch-size", "300", "--sleep-ms", "20",
                                    "--parallel", "1"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    await until(lambda: batch_reached(db, 5), timeout_s=60, what="the run's fifth committed batch")
    proc.send_signal(signal.SIGINT)
    await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 130
    row = await db.fetchrow("SELECT status, rows_scanned, batch_no FROM stage_migration_control")
    assert row is not None and row["status"] == "aborted"
    assert 0 < row["rows_scanned"] == min(60_000, row["batch_no"] * 300)  # whole batches only
    resumed = await stagectl(database, "migrate", "--apply", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert await table(db) == expected


@pytest.mark.parametrize(
    ("setup", "args", "code", "fragment"),
    [("", ("migrate", "--table", "nope"), 2, "table 'nope' does not exist"),
     ("", ("migrate", "--column", "colour"), 2, "column 'colour' does not exist"),
     ("", ("migrate", "--column", "amount"), 2, "not text"),
     ("ALTER TABLE deals DROP CONSTRAINT deals_pkey", ("migrate",), 2, "has no primary key"),
     ("", ("migrate", "--apply", "--resume"), 2, "nothing to resume"),
     ("", ("migrate", "--apply", "--resume-from", "999999"), 2, "beyond the last id"),
     ("", ("migrate", "--apply", "--resume-from", "abc"), 2, "not a valid bigint"),
     ("", ("migrate", "revert", "--run", "77"), 2, "no migration has run"),
     ("", ("migrate", "--batch-size", "0"), 2, "must be positive")],
)
async def test_bad_input(database: str, db: asyncpg.Connection, setup: str, args: tuple[str, ...], code: int,
                         fragment: str) -> None:
    """Each mistake is one clear line and a non-zero exit, the data untouched."""
    await seeded(database, 300)
    if setup:
        await db.execute(setup)
    before = await db.fetchval(CHECKSUM)
    one_line_error(await stagectl(database, *args), code, fragment)
    assert await db.fetchval(CHECKSUM) == before


async def test_bad_catalog_file(database: str, tmp_path: Path) -> None:
    """A catalog that does not parse is refused before anything is read."""
    config = tmp_path / "bad.toml"
    config.write_text("[stages\n")
    one_line_error(await stagectl(database, "migrate", "--config", str(config)), 2, "not valid TOML")


async def test_concurrent_run_is_refused(database: str, db: asyncpg.Connection) -> None:
    """While another run holds the advisory lock, a second --apply exits 6 with a clear message."""
    await seeded(database, 300)
    await db.execute("SELECT pg_advisory_lock(hashtextextended('stagegate-migrate:public.deals.stage', 0))")
    one_line_error(await stagectl(database, "migrate", "--apply"), 6, "another stagectl migrate is running")


async def test_read_only_database(database: str, db: asyncpg.Connection, postgres: PostgresServer) -> None:
    """A database in read-only mode is refused up front."""
    await seeded(database, 300)
    name = database.rsplit("/", 1)[1]
    postgres.psql(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    one_line_error(await stagectl(database, "migrate", "--apply"), 2, "read-only")


async def test_unreachable_and_wrong_password(postgres: PostgresServer) -> None:
    """No server: exit 1; wrong password: exit 3; neither prints the password."""
    dead = f"postgresql://u:pw-secret@127.0.0.1:{free_port()}/x"
    result = await stagectl(dead, "migrate")
    one_line_error(result, 1, "cannot connect")
    assert "pw-secret" not in result.stderr
    wrong = postgres.dsn(user=PostgresServer.PASSWORD_ROLE, password="not-the-password")
    result = await stagectl(wrong, "migrate")
    one_line_error(result, 3, "refused the credentials")
    assert "not-the-password" not in result.stderr


async def test_progress_lines_when_not_a_terminal(database: str) -> None:
    """Off a terminal, progress is JSON lines on stderr; the summary is on stdout."""
    await seeded(database, 3000)
    result = await stagectl(database, "migrate", "--batch-size", "500", "--progress-interval-s", "0")
    lines = [orjson.loads(line) for line in result.stderr.splitlines()]
    catalog, *lines = lines  # first, which catalog classified the values
    assert catalog["event"] == "catalog" and catalog["source"] == "built-in" and len(catalog["version"]) == 12
    assert lines and all("rows_per_s" in line and "eta_s" in line for line in lines)
    assert lines[-1]["rows"] == 3000
    assert result.stdout.startswith("run ")


async def test_status_lists_runs(database: str) -> None:
    """status shows each run with its state and progress."""
    await seeded(database, 500)
    await stagectl(database, "migrate")
    await stagectl(database, "migrate", "--apply")
    result = await stagectl(database, "migrate", "status", "--json")
    runs = orjson.loads(result.stdout)
    assert [(r["dry_run"], r["status"], r["rows_scanned"]) for r in runs] == [(False, "completed", 500),
                                                                               (True, "completed", 500)]
    started = time.monotonic()
    assert (await stagectl(database, "migrate", "status")).returncode == 0
    assert time.monotonic() - started < 30


async def test_uuid_and_text_keys(database: str, db: asyncpg.Connection) -> None:
    """Any orderable single-column key works: uuid and text keys, through --pk on a unique column."""
    await db.execute("CREATE TABLE things (ref uuid PRIMARY KEY DEFAULT gen_random_uuid(), code text UNIQUE NOT NULL, "
                     "stage text)")
    await db.execute("INSERT INTO things (code, stage) SELECT 'c' || g, (ARRAY['won','lead','x',NULL])[g % 4 + 1] "
                     "FROM generate_series(1, 3000) g")
    for args in (("--table", "things"), ("--table", "things", "--pk", "code")):
        await db.execute("UPDATE things SET stage = 'won' WHERE stage = 'closed_won'")
        result = await stagectl(database, "migrate", "--apply", "--batch-size", "128", *args)
        assert result.returncode == 0, result.stderr
        counts = {r["stage"]: r["n"] for r in await db.fetch("SELECT stage, count(*) AS n FROM things GROUP BY 1")}
        assert counts == {"closed_won": 750, "lead": 750, "x": 750, None: 750}


async def test_lock_timeout_halves_then_fails_resumably(database: str, db: asyncpg.Connection) -> None:
    """A row locked by the application: the batch retries at half size, then the run fails (resumable) and
    --resume completes once the lock is gone."""
    await seeded(database, 4000)
    expected = await reference(db)
    victim = await db.fetchval("SELECT min(id) FROM deals WHERE stage = 'WON'")
    app = await asyncpg.connect(database)
    transaction = app.transaction()
    await transaction.start()
    await app.execute("SELECT 1 FROM deals WHERE id = $1 FOR UPDATE", victim)
    result = await stagectl(database, "migrate", "--apply", "--batch-size", "4000", "--lock-timeout-ms", "100",
                            "--retries", "3")
    await transaction.rollback()
    await app.close()
    one_line_error(result, 1, "timed out 4 times")
    row = await db.fetchrow("SELECT status, error FROM stage_migration_control")
    assert row is not None and row["status"] == "failed" and "timed out" in row["error"]
    resumed = await stagectl(database, "migrate", "--apply", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert await table(db) == expected


async def test_resume_from_starts_after_the_given_key(database: str, db: asyncpg.Connection) -> None:
    """--resume-from N leaves rows up to N alone and migrates the rest."""
    await seeded(database, 3000)
    before = await table(db)
    expected = await reference(db)
    result = await stagectl(database, "migrate", "--apply", "--resume-from", "1500")
    assert result.returncode == 0, result.stderr
    after = await table(db)
    assert all(after[k] == before[k] for k in after if k <= 1500)
    assert all(after[k] == expected[k] for k in after if k > 1500)


async def test_target_batch_ms_tunes_the_batch_size(database: str, db: asyncpg.Connection) -> None:
    """--target-batch-ms grows small batches towards the target (fewer batches than the starting size implies)."""
    await seeded(database, 20_000)
    result = await stagectl(database, "migrate", "--apply", "--json", "--batch-size", "50", "--target-batch-ms", "200")
    report = orjson.loads(result.stdout)
    assert result.returncode == 0 and report["rows_scanned"] == 20_000
    assert report["batches"] < 20_000 // 50 // 2


async def test_custom_catalog_drives_the_mapping(database: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    """--config: the proxy's catalog file decides; an alias added there is normalized."""
    from proxy.catalog.stages import DEFAULT_CATALOG_TOML

    await seeded(database, 2000)
    config = tmp_path / "stages.toml"
    config.write_text(DEFAULT_CATALOG_TOML.replace('won = "closed_won"', 'won = "closed_won"\n"on hold" = "lead"'))
    held = await db.fetchval("SELECT count(*) FROM deals WHERE stage = 'on hold'")
    result = await stagectl(database, "migrate", "--apply", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert held > 0 and await db.fetchval("SELECT count(*) FROM deals WHERE stage = 'on hold'") == 0
    assert {"from": "on hold", "to": "lead", "rows": held} in orjson.loads(result.stdout)["variants"]


OLD_LOG_DDL = """
CREATE TABLE stage_migration_control (run_id bigserial PRIMARY KEY, table_name text NOT NULL,
    column_name text NOT NULL, pk_name text NOT NULL, dry_run boolean NOT NULL,
    transactional boolean NOT NULL DEFAULT false, status text NOT NULL, last_id text,
    batch_no integer NOT NULL DEFAULT 0, rows_scanned bigint NOT NULL DEFAULT 0,
    rows_changed bigint NOT NULL DEFAULT 0, rows_unknown bigint NOT NULL DEFAULT 0,
    rows_null bigint NOT NULL DEFAULT 0, rows_skipped bigint NOT NULL DEFAULT 0, catalog_sha256 text,
    started_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz, reverted_at timestamptz, error text);
CREATE TABLE stage_normalization_log (id bigserial PRIMARY KEY,
    run_id bigint NOT NULL REFERENCES stage_migration_control (run_id), row_id text COLLATE "C" NOT NULL,
    old_value text, new_value text, batch_no integer NOT NULL, dry_run boolean NOT NULL,
    logged_at timestamptz NOT NULL DEFAULT now());
CREATE UNIQUE INDEX stage_normalization_log_run_row ON stage_normalization_log (run_id, row_id);
INSERT INTO stage_migration_control (table_name, column_name, pk_name, dry_run, status)
    VALUES ('public.deals', 'stage', 'id', true, 'completed');
INSERT INTO stage_normalization_log (run_id, row_id, old_value, new_value, batch_no, dry_run)
    VALUES (1, '7', 'WON', 'closed_won', 1, true);
"""


async def test_log_table_of_version_0_1_is_upgraded(database: str, db: asyncpg.Connection) -> None:
    """A log with the old surrogate id and foreign key loses both, keeps its rows, gains the (run_id, row_id) key."""
    await seeded(database, 1000)
    await db.execute(OLD_LOG_DDL)
    result = await stagectl(database, "migrate", "--apply")
    assert result.returncode == 0, result.stderr
    columns = [r["attname"] for r in await db.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'stage_normalization_log'::regclass AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum")]
    assert "id" not in columns
    constraints = {r["contype"] for r in await db.fetch(
        "SELECT contype::text FROM pg_constraint WHERE conrelid = 'stage_normalization_log'::regclass")}
    assert constraints == {"p"}
    assert await db.fetchval("SELECT count(*) FROM stage_normalization_log WHERE run_id = 1") == 1
    assert await db.fetchval("SELECT count(*) FROM stage_normalization_log WHERE run_id = 2") > 0
    again = await stagectl(database, "migrate")  # and a second run leaves the upgraded table alone
    assert again.returncode == 0, again.stderr


async def test_control_row_deleted_mid_run_rolls_the_batch_back(database: str, db: asyncpg.Connection) -> None:
    """Without a foreign key the tool itself refuses to log for a vanished run: exit 1, no batch logged after."""
    await seeded(database, 60_000)
    proc = subprocess.Popen(command(database, "migrate", "--apply", "--batch-size", "300", "--sleep-ms", "20"),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        await until(lambda: batch_reached(db, 3), timeout_s=60, what="the run's third committed batch")
        # Waits for the batch in flight to commit, then removes the row as that batch left it.
        last_batch = await db.fetchval("DELETE FROM stage_migration_control RETURNING batch_no")
        _, err = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    assert "control row of run 1 is gone" in err and "Traceback" not in err
    logged_up_to = await db.fetchval("SELECT max(batch_no) FROM stage_normalization_log")
    assert 0 < logged_up_to <= last_batch  # batches before the deletion committed; none after it logged
