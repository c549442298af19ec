"""stagectl preflight: all PASS on a healthy setup, and each broken criterion turns FAIL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from proxy.app.server import Running
from tests.support.ports import free_port
from tests.support.proxies import REPO, ProxyFactory
from tests.support.servers import RedisServer

INTERNAL = '10.1.2.3 - - [21/Nov/2026:10:00:00 +0000] "POST /api/v1/deals HTTP/1.1" 201 12 "-" "crm-sync/2.1"\n'
EXTERNAL = '203.0.113.9 - - [21/Nov/2026:11:00:00 +0000] "POST /api/v1/deals HTTP/1.1" 201 12 "-" "partner/1"\n'


async def stagectl(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "tools.stagectl", *args], cwd=REPO,
                                   capture_output=True, text=True, timeout=300, env={**os.environ, "DATABASE_URL": dsn})


@pytest.fixture
async def setup(database: str, tmp_path: Path, make_proxy: ProxyFactory, redis_server: RedisServer,
                prefix: str) -> tuple[str, Path, Path, Running]:
    assert (await stagectl("seed-db", "--rows", "1500", dsn=database)).returncode == 0
    out = tmp_path / "backups"
    assert (await stagectl("backup", "--out", str(out), dsn=database)).returncode == 0
    log = tmp_path / "access.log"
    log.write_text(INTERNAL)
    proxy = await make_proxy(redis_url=redis_server.url, redis_prefix=prefix)
    return database, out, log, proxy


def args_for(redis_url: str, backups: Path, log: Path, proxy: Running) -> list[str]:
    return ["preflight", "--json", "--redis-url", redis_url, "--admin-url", proxy.admin_url, "--backup-dir",
            str(backups), "--logs", str(log), "--samples", "300"]


async def test_healthy_setup_passes(setup: tuple[str, Path, Path, Running], redis_server: RedisServer) -> None:
    """Every Week-0 criterion met: all PASS, exit 0; the human table says so too."""
    dsn, backups, log, proxy = setup
    result = await stagectl(*args_for(redis_server.url, backups, log, proxy), dsn=dsn)
    report = orjson.loads(result.stdout)
    assert result.returncode == 0, result.stdout
    assert report["ok"] is True and report["verdict"] == "PASS"
    assert [r["result"] for r in report["criteria"]] == ["PASS"] * 5
    text = await stagectl(*[a for a in args_for(redis_server.url, backups, log, proxy) if a != "--json"], dsn=dsn)
    assert "all PASS" in text.stdout and "MEASURED" in text.stdout and "< 10 ms" in text.stdout
    assert max(len(line) for line in text.stdout.splitlines()) <= 100


@pytest.mark.parametrize("broken", ["consumers", "redis", "fallback", "backup", "seeded"])
async def test_each_broken_criterion_fails(setup: tuple[str, Path, Path, Running], redis_server: RedisServer,
                                           make_proxy: ProxyFactory, broken: str) -> None:
    """Break one criterion at a time: that row (and only that one) turns FAIL, exit 1."""
    dsn, backups, log, proxy = setup
    redis_url = redis_server.url
    extra: list[str] = []
    if broken == "consumers":
        log.write_text(INTERNAL + EXTERNAL)
    elif broken == "redis":
        redis_url = f"redis://127.0.0.1:{free_port()}/0"
    elif broken == "fallback":
        proxy = await make_proxy()  # embedded memory store: no Redis behind it
    elif broken == "backup":
        victim = next(p for p in backups.iterdir() if p.suffix == ".sql" and not p.is_symlink())
        victim.write_bytes(victim.read_bytes()[:1000])
    else:
        extra = ["--min-rows", "100000"]
    result = await stagectl(*args_for(redis_url, backups, log, proxy), *extra, dsn=dsn)
    report = orjson.loads(result.stdout)
    rows = report["criteria"]
    assert result.returncode == 1 and report["ok"] is False and report["verdict"] == "FAIL"
    failed = [r for r in rows if r["result"] == "FAIL"]
    index = ["consumers", "redis", "fallback", "backup", "seeded"].index(broken)
    assert [r["criterion"] for r in failed] == [rows[index]["criterion"]], rows
    named = {"consumers": "203.0.113.9 (partner/1, external)", "redis": "unreachable", "fallback": "source memory",
             "backup": "checksum mismatch", "seeded": "1500 rows"}[broken]
    assert named in failed[0]["measured"], failed  # a FAIL row says what failed: the consumer, the file…
    if broken == "backup":
        assert failed[0]["measured"].startswith("verify-backup: ") and ".sql" in failed[0]["measured"]
    text = await stagectl(*[a for a in args_for(redis_url, backups, log, proxy) if a != "--json"], *extra, dsn=dsn)
    assert max(len(line) for line in text.stdout.splitlines()) <= 100, text.stdout
    assert text.stdout.rstrip().endswith("NOT met (1 of 5 FAIL)")


async def test_missing_logs_are_a_fail_row_not_a_crash(setup: tuple[str, Path, Path, Running],
                                                       redis_server: RedisServer, tmp_path: Path) -> None:
    dsn, backups, log, proxy = setup
    args = args_for(redis_server.url, backups, log, proxy)
    args[args.index(str(log))] = str(tmp_path / "missing.log")
    result = await stagectl(*args, dsn=dsn)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    row = orjson.loads(result.stdout)["criteria"][0]
    assert row["result"] == "FAIL" and row["measured"] == f"cannot read {tmp_path / 'missing.log'}: No such file or " \
                                                          "directory"
