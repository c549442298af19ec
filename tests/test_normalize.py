"""stagectl normalize on a real PostgreSQL: every step in order, and a failed step stops everything after it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from proxy.catalog.stages import default_catalog
from tests.support.proxies import REPO

CATALOG = default_catalog()
CHECKSUM = "SELECT md5(string_agg(d::text, '|' ORDER BY d.id)) FROM deals d"


async def stagectl(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "tools.stagectl", *args], cwd=REPO,
                                   capture_output=True, text=True, timeout=300)


@pytest.fixture
async def seeded(database: str) -> AsyncIterator[asyncpg.Connection]:
    result = await stagectl("seed-db", "--rows", "3000", "--dsn", database)
    assert result.returncode == 0, result.stderr
    connection = await asyncpg.connect(database)
    yield connection
    await connection.close()


async def aliases_left(db: asyncpg.Connection) -> int:
    rows = await db.fetch("SELECT stage, count(*) AS n FROM deals WHERE stage IS NOT NULL GROUP BY 1")
    return sum(r["n"] for r in rows if CATALOG.classify(r["stage"])[0] == "alias")


def receipt_in(directory: Path) -> dict[str, object]:
    [path] = directory.glob("normalize-*.json")
    data: dict[str, object] = json.loads(path.read_text())
    return data


async def test_every_step_passes_and_leaves_no_alias(database: str, seeded: asyncpg.Connection,
                                                     tmp_path: Path) -> None:
    """--apply: backup (with SHA256SUMS), verified, restored and checked, migrated, verified; a receipt of it all."""
    assert await aliases_left(seeded) > 0
    backups = tmp_path / "backups"
    result = await stagectl("normalize", "--dsn", database, "--backup-dir", str(backups), "--apply",
                            "--batch-size", "500")
    assert result.returncode == 0, result.stdout + result.stderr
    assert await aliases_left(seeded) == 0
    assert (backups / "SHA256SUMS").is_file() and (backups / "latest.sql").is_symlink()
    receipt = receipt_in(backups)
    assert receipt["ok"] is True and receipt["failed_step"] is None and receipt["apply"] is True
    steps = receipt["steps"]
    assert isinstance(steps, list) and [s["step"] for s in steps] == ["backup", "verify-backup", "test-restore",
                                                                        "migrate", "verify"]
    assert all(s["ok"] and s["seconds"] >= 0 for s in steps)
    for step in ("backup", "verify-backup", "test-restore", "migrate", "verify"):
        assert any(line.split()[:2] == ["ok", step] for line in result.stdout.splitlines()), result.stdout


async def test_a_dry_run_changes_nothing(database: str, seeded: asyncpg.Connection, tmp_path: Path) -> None:
    """Without --apply: the same steps, the migration planned only; the data as it was."""
    before = await seeded.fetchval(CHECKSUM)
    result = await stagectl("normalize", "--dsn", database, "--backup-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert await seeded.fetchval(CHECKSUM) == before
    assert "--apply would normalize" in result.stdout and receipt_in(tmp_path)["apply"] is False


async def test_a_backup_that_cannot_be_written_stops_everything(database: str, seeded: asyncpg.Connection,
                                                                tmp_path: Path) -> None:
    """The backup directory is not writable: exit 4 at backup, nothing else runs, every row as it was."""
    before = await seeded.fetchval(CHECKSUM)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = await stagectl("normalize", "--dsn", database, "--backup-dir", str(blocker / "backups"), "--apply")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "FAILED backup" in result.stdout and "normalize stopped at backup" in result.stdout
    for later in ("verify-backup", "test-restore", "migrate", "verify"):
        assert f"-  {later}" in result.stdout
    assert await seeded.fetchval(CHECKSUM) == before
    assert await seeded.fetchval("SELECT to_regclass('stage_migration_control')") is None


async def test_a_failed_restore_test_stops_before_the_migration(database: str, seeded: asyncpg.Connection,
                                                               tmp_path: Path) -> None:
    """The restore test fails (the restored table is smaller than required): the migration never runs."""
    before = await seeded.fetchval(CHECKSUM)
    result = await stagectl("normalize", "--dsn", database, "--backup-dir", str(tmp_path), "--apply",
                            "--min-rows", "1000000")
    assert result.returncode == 4, result.stdout + result.stderr
    receipt = receipt_in(tmp_path)
    assert receipt["failed_step"] == "test-restore" and receipt["not_run"] == ["migrate", "verify"]
    assert await seeded.fetchval(CHECKSUM) == before
    assert await seeded.fetchval("SELECT to_regclass('stage_migration_control')") is None


async def test_bad_input_is_one_line(tmp_path: Path) -> None:
    """A DSN that is no PostgreSQL URL, or a negative budget: exit 2, one line, nothing run."""
    for args in (("--dsn", "mysql://x/y"), ("--dsn", "postgresql://127.0.0.1:9/x", "--restore-budget", "-1")):
        result = await stagectl("normalize", "--backup-dir", str(tmp_path), *args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not list(tmp_path.iterdir())
