"""stagectl backup, verify-backup and test-restore against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.support.ports import free_port
from tests.support.proxies import REPO
from tests.support.servers import PostgresServer


async def stagectl(*args: str, dsn: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"DATABASE_URL": dsn} if dsn else {})}
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "tools.stagectl", *args], cwd=REPO,
                                   capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
async def backups(database: str, tmp_path: Path) -> Path:
    """A seeded database backed up twice (plain and custom)."""
    assert (await stagectl("seed-db", "--rows", "2000", dsn=database)).returncode == 0
    out = tmp_path / "backups"
    for fmt in ("plain", "custom"):
        result = await stagectl("backup", "--out", str(out), "--format", fmt, dsn=database)
        assert result.returncode == 0, result.stderr
    return out


def dump(directory: Path, ext: str) -> Path:
    return next(p for p in directory.iterdir() if p.suffix == f".{ext}" and not p.is_symlink())


async def test_round_trip(backups: Path, database: str) -> None:
    """seed -> backup -> verify -> test-restore: all OK; SHA256SUMS is what sha256sum -c reads."""
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=backups, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == 2
    verify = await stagectl("verify-backup", str(backups), "--json")
    assert verify.returncode == 0 and orjson.loads(verify.stdout)["ok"] is True
    for link in ("latest.sql", "latest.dump"):
        result = await stagectl("test-restore", str(backups / link), "--min-rows", "2000", "--json",
                                "--smoke-query", "SELECT count(*) FROM deals WHERE stage IS NULL", dsn=database)
        receipt = orjson.loads(result.stdout)
        assert result.returncode == 0, result.stderr
        assert receipt["ok"] and receipt["rows"] == 2000 and receipt["distinct_stages"] > 10
        assert receipt["smoke_queries"] == 1 and len(receipt["sha256"]) == 64


async def test_retention_keeps_the_newest(database: str, tmp_path: Path) -> None:
    """--keep N deletes older dumps and their checksum lines; latest points at the newest."""
    assert (await stagectl("seed-db", "--rows", "50", dsn=database)).returncode == 0
    out = tmp_path / "b"
    for _ in range(4):
        assert (await stagectl("backup", "--out", str(out), "--keep", "2", dsn=database)).returncode == 0
    dumps = sorted(p.name for p in out.glob("*.sql") if not p.is_symlink())
    assert len(dumps) == 2
    assert os.readlink(out / "latest.sql") == dumps[-1]
    assert sorted(line.split()[1] for line in (out / "SHA256SUMS").read_text().splitlines()) == dumps
    assert (await stagectl("verify-backup", str(out))).returncode == 0


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "truncate", "unlisted", "malformed", "missing", "custom-truncated"])
async def test_each_corruption_is_named(backups: Path, damage: str) -> None:
    """Every kind of damage is found and the bad file named; exit 1."""
    sql, custom = dump(backups, "sql"), dump(backups, "dump")
    expected = sql.name
    if damage == "flip":
        flip_byte(sql, 1000)
    elif damage == "truncate":
        sql.write_bytes(sql.read_bytes()[: sql.stat().st_size // 2])
    elif damage == "unlisted":
        (backups / "deals-20260101T000000Z.sql").write_text("-- stray\n")
        expected = "deals-20260101T000000Z.sql"
    elif damage == "malformed":
        with (backups / "SHA256SUMS").open("a") as handle:
            handle.write("not a checksum line\n")
        expected = "SHA256SUMS"
    elif damage == "missing":
        sql.unlink()
    else:
        custom.write_bytes(custom.read_bytes()[:200])
        expected = custom.name
    result = await stagectl("verify-backup", str(backups), "--json")
    report = orjson.loads(result.stdout)
    assert result.returncode == 1 and not report["ok"]
    assert expected in {p["file"] for p in report["problems"]}, report


async def test_all_problems_reported_not_just_the_first(backups: Path) -> None:
    """Two damaged files: both named."""
    flip_byte(dump(backups, "sql"), 500)
    dump(backups, "dump").write_bytes(b"garbage")
    result = await stagectl("verify-backup", str(backups))
    assert result.returncode == 1
    assert result.stdout.count("BAD ") >= 2


async def test_empty_directory(tmp_path: Path) -> None:
    """An empty directory has nothing verifiable: exit 1, SHA256SUMS named."""
    result = await stagectl("verify-backup", str(tmp_path))
    assert result.returncode == 1 and "SHA256SUMS is missing" in result.stdout


async def test_restore_failing_halfway_is_caught(backups: Path, database: str, tmp_path: Path,
                                                 postgres: PostgresServer) -> None:
    """A dump with an error in the middle fails (ON_ERROR_STOP, single transaction); no scratch database remains."""
    broken = tmp_path / "broken.sql"
    text = dump(backups, "sql").read_text()
    cut = text.index("COPY public.deals")
    broken.write_text(text[:cut] + "SELECT no_such_function();\n" + text[cut:])
    result = await stagectl("test-restore", str(broken), dsn=database)
    assert result.returncode == 1 and "FAILED at step restore" in result.stdout, result.stdout
    assert "ERROR:  function no_such_function() does not exist" in result.stdout  # psql's own error, not a tail
    assert "None" not in result.stdout
    assert postgres.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'stagegate_restore%'") == "0"


async def test_tiny_budget_stops_the_restore_and_cleans_up(backups: Path, database: str,
                                                           postgres: PostgresServer) -> None:
    """A restore over budget is killed at the budget, fails, and leaves no scratch database."""
    result = await stagectl("test-restore", str(backups / "latest.sql"), "--budget", "0.01", "--json", dsn=database)
    receipt = orjson.loads(result.stdout)
    assert result.returncode == 1 and "budget" in receipt["failures"][0]
    assert receipt["seconds"] < 5
    assert postgres.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'stagegate_restore%'") == "0"


async def test_restore_below_min_rows_fails(backups: Path, database: str) -> None:
    """--min-rows above the dump's row count fails the smoke test."""
    result = await stagectl("test-restore", str(backups / "latest.dump"), "--min-rows", "5000", dsn=database)
    assert result.returncode == 1 and "fewer than --min-rows 5000" in result.stdout


async def test_unreachable_database(tmp_path: Path) -> None:
    """backup and test-restore against nothing: one line, exit 1, no password printed, no partial file."""
    dead = f"postgresql://u:topsecret@127.0.0.1:{free_port()}/x"
    for args in (("backup", "--out", str(tmp_path / "b")), ("test-restore", str(tmp_path / "x.sql"))):
        if args[0] == "test-restore":
            (tmp_path / "x.sql").write_text("SELECT 1;\n")
        result = await stagectl(*args, dsn=dead)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("stagectl: error:"), result.stderr
        assert "topsecret" not in result.stderr
    assert not [p for p in (tmp_path / "b").iterdir() if p.is_file()]


async def test_restore_refuses_a_dump_its_checksum_disowns(backups: Path, database: str,
                                                            postgres: PostgresServer) -> None:
    """A byte flipped inside the data restores fine - so the checksum is checked first and the dump refused;
    --no-verify restores it anyway, loudly."""
    sql = dump(backups, "sql")
    text = sql.read_bytes()
    flip_byte(sql, text.index(b"COPY public.deals") + 300)  # inside the rows: still valid SQL
    verify = await stagectl("verify-backup", str(backups))
    assert verify.returncode == 1 and "checksum mismatch" in verify.stdout

    result = await stagectl("test-restore", str(backups / "latest.sql"), dsn=database)
    assert result.returncode == 1 and "FAILED at step checksum" in result.stdout, result.stdout
    assert f"checksum mismatch: {sql.name}" in result.stdout and "--no-verify" in result.stdout
    receipt = orjson.loads((await stagectl("test-restore", str(sql), "--json", dsn=database)).stdout)
    assert receipt["failed_step"] == "checksum" and receipt["rows"] is None and receipt["seconds"] == 0

    forced = await stagectl("test-restore", str(sql), "--no-verify", "--json", dsn=database)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "WARNING: --no-verify" in forced.stderr
    assert orjson.loads(forced.stdout)["checksum"] == "skipped (--no-verify)"
    assert postgres.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'stagegate_restore%'") == "0"


async def test_restore_refuses_a_dump_its_directory_does_not_list(backups: Path, database: str) -> None:
    stray = backups / "crm-20261126T100000Z.sql"
    stray.write_bytes((backups / "latest.sql").read_bytes())
    result = await stagectl("test-restore", str(stray), dsn=database)
    assert result.returncode == 1 and f"{stray.name} is not listed in" in result.stdout


async def test_backup_names_are_to_the_second_and_never_collide(database: str, tmp_path: Path) -> None:
    """Two backups within one second get distinct names; latest points at the second one."""
    assert (await stagectl("seed-db", "--rows", "10", dsn=database)).returncode == 0
    out = tmp_path / "b"
    names = []
    for _ in range(3):
        result = await stagectl("backup", "--out", str(out), "--json", dsn=database)
        assert result.returncode == 0, result.stderr
        names.append(Path(orjson.loads(result.stdout)["file"]).name)
    assert len(set(names)) == 3
    assert all(re.fullmatch(r"[a-z0-9_]+-\d{8}T\d{6}Z(_\d)?\.sql", name) for name in names), names
    assert os.readlink(out / "latest.sql") == names[-1]
    assert (await stagectl("verify-backup", str(out))).returncode == 0
