"""Day 5 recoverable as printed: Ctrl-C in each normalize step, ``--apply --resume`` on the receipt's own backup,
dumps readable by their owner only, ``--keep`` (real PostgreSQL, stagectl as a subprocess)."""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from proxy.catalog.stages import default_catalog
from tests.support.proxies import REPO
from tests.support.waiting import until

CATALOG = default_catalog()


async def stagectl(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "tools.stagectl", *args], cwd=REPO,
                                   capture_output=True, text=True, timeout=300)


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection]:
    result = await stagectl("seed-db", "--rows", "20000", "--dsn", database)
    assert result.returncode == 0, result.stderr
    connection = await asyncpg.connect(database)
    yield connection
    await connection.close()


async def aliases_left(db: asyncpg.Connection) -> int:
    rows = await db.fetch("SELECT stage, count(*) AS n FROM deals WHERE stage IS NOT NULL GROUP BY 1")
    return sum(r["n"] for r in rows if CATALOG.classify(r["stage"])[0] == "alias")


async def interrupt_when(proc: subprocess.Popen[str], ready: Callable[[], Awaitable[bool]]) -> tuple[int, str]:
    """SIGINT once ``ready()`` holds; (exit code, stdout)."""

    async def started() -> bool:
        if await ready():
            return True
        assert proc.poll() is None, proc.communicate()
        return False

    await until(started, timeout_s=120, what="the step to start")
    proc.send_signal(signal.SIGINT)
    out, _ = await asyncio.to_thread(proc.communicate, timeout=120)
    return proc.returncode, out


def normalize(database: str, backups: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tools.stagectl", "normalize", "--dsn", database, "--backup-dir",
                             str(backups), "--apply", *extra], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def receipts(directory: Path) -> list[dict[str, object]]:
    return [json.loads(path.read_text()) for path in sorted(directory.glob("normalize-*.json"))]


async def test_ctrl_c_in_migrate_then_resume_as_printed(database: str, db: asyncpg.Connection,
                                                        tmp_path: Path) -> None:
    """Ctrl-C while migrating: 130 naming the step, the batch finished, the hint printed; that hint, run as
    printed, continues the same run on the first backup (no second dump, no second restore test) and verifies."""
    backups = tmp_path / "backups"
    proc = normalize(database, backups, "--batch-size", "200", "--sleep-ms", "50", "--parallel", "1")

    async def migrating() -> bool:
        if not await db.fetchval("SELECT to_regclass('stage_migration_control') IS NOT NULL"):
            return False
        return bool(await db.fetchval("SELECT max(batch_no) >= 3 FROM stage_migration_control"))

    code, out = await interrupt_when(proc, migrating)
    assert code == 130, out
    assert "normalize interrupted in migrate" in out and "Traceback" not in out
    hint = out.split("continue it with `", 1)[1].split("`", 1)[0]
    assert hint.startswith("stagectl normalize --apply --resume") and "--backup-dir" in hint
    [first] = receipts(backups)
    assert first["interrupted_step"] == "migrate" and first["failed_step"] is None and first["run_id"] == 1
    assert await db.fetchval("SELECT status FROM stage_migration_control WHERE run_id = 1") == "aborted"
    dumps = sorted(path for path in backups.glob("*.sql") if not path.is_symlink())

    words = shlex.split(hint)
    resumed = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "tools.stagectl", *words[1:]],
                                      cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "reused from normalize-" in resumed.stdout and await aliases_left(db) == 0
    # the restore point from before the run, not a new dump
    assert sorted(p for p in backups.glob("*.sql") if not p.is_symlink()) == dumps
    last = receipts(backups)[-1]
    assert last["ok"] is True and last["resumed_from"] and last["run_id"] == 1
    assert await db.fetchval("SELECT count(*) FROM stage_migration_control") == 1  # the same run, completed
    again = await stagectl("normalize", "--dsn", database, "--backup-dir", str(backups), "--apply", "--resume")
    assert again.returncode == 2 and "nothing to resume" in again.stderr


async def test_ctrl_c_in_backup_leaves_no_partial_dump(database: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    """Ctrl-C while pg_dump writes: 130 naming backup, the partial dump removed, nothing else run."""
    await db.execute("INSERT INTO deals (name, stage, amount) SELECT repeat('x', 500), 'lead', 1 "
                     "FROM generate_series(1, 200000)")  # a dump that takes a moment
    backups = tmp_path / "backups"
    proc = normalize(database, backups)

    async def dumping() -> bool:
        return any(backups.glob(".*.partial")) if backups.is_dir() else False

    code, out = await interrupt_when(proc, dumping)
    assert code == 130 and "normalize interrupted in backup" in out and "partial dump was removed" in out, out
    assert not list(backups.glob(".*.partial")) and not list(backups.glob("*.sql"))
    assert "the data was not touched" in out
    assert await db.fetchval("SELECT to_regclass('stage_migration_control')") is None


async def test_ctrl_c_in_the_restore_test_drops_the_scratch_database(database: str, db: asyncpg.Connection,
                                                                     tmp_path: Path) -> None:
    """Ctrl-C while the dump is restored: 130 naming test-restore, the scratch database dropped."""
    await db.execute("INSERT INTO deals (name, stage, amount) SELECT repeat('x', 500), 'lead', 1 "
                     "FROM generate_series(1, 200000)")
    backups = tmp_path / "backups"
    proc = normalize(database, backups)

    async def restoring() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM pg_database WHERE datname LIKE 'stagegate_restore_%'"))

    code, out = await interrupt_when(proc, restoring)
    assert code == 130 and "normalize interrupted in test-restore" in out, out

    async def dropped() -> bool:
        return not await db.fetchval("SELECT count(*) FROM pg_database WHERE datname LIKE 'stagegate_restore_%'")

    await until(dropped, interval_s=0.1, what="the scratch database to be dropped (not left behind)")
    assert await db.fetchval("SELECT to_regclass('stage_migration_control')") is None


async def test_dumps_are_private_and_keep_prunes(database: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    """Dumps hold customer data: mode 0600 whatever the umask; --keep 1 leaves the newest dump and its sum."""
    backups = tmp_path / "backups"
    for _ in range(2):
        result = await stagectl("normalize", "--dsn", database, "--backup-dir", str(backups), "--keep", "1")
        assert result.returncode == 0, result.stdout + result.stderr
    dumps = [path for path in backups.glob("*.sql") if not path.is_symlink()]
    assert len(dumps) == 1 and stat.S_IMODE(dumps[0].stat().st_mode) == 0o600
    assert (backups / "SHA256SUMS").read_text().count("\n") == 1


async def test_resume_refuses_when_its_run_is_not_the_latest_unfinished(database: str, db: asyncpg.Connection,
                                                                         tmp_path: Path) -> None:
    """The receipt's run was abandoned meanwhile: --resume says so and changes nothing (exit 2)."""
    backups = tmp_path / "backups"
    proc = normalize(database, backups, "--batch-size", "200", "--sleep-ms", "50", "--parallel", "1")

    async def migrating() -> bool:
        if not await db.fetchval("SELECT to_regclass('stage_migration_control') IS NOT NULL"):
            return False
        return bool(await db.fetchval("SELECT max(batch_no) >= 2 FROM stage_migration_control"))

    assert (await interrupt_when(proc, migrating))[0] == 130
    assert (await stagectl("migrate", "abandon", "--run", "1", "--dsn", database)).returncode == 0
    before = await aliases_left(db)
    result = await stagectl("normalize", "--dsn", database, "--backup-dir", str(backups), "--apply", "--resume")
    assert result.returncode == 2 and "cannot resume run 1" in result.stderr, result.stdout + result.stderr
    assert await aliases_left(db) == before
