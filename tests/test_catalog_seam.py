"""One catalog for the proxy and the tools: the tools take the proxy's when no file is given, refuse a file the
proxy does not serve, and a migration run refuses to resume under another catalog (docs/catalog.md, "Versions").

Real parts: a proxy process with a catalog file reloaded live, PostgreSQL, stagectl as a subprocess.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest

from proxy.catalog.compare import catalog_version
from proxy.catalog.stages import DEFAULT_CATALOG_TOML, parse_catalog
from tests.support.upstreams import Upstream
from tests.test_migrate import command, seeded, stagectl
from tests.test_reload import proxy_process, reload

WITH_SIGNED = DEFAULT_CATALOG_TOML.replace('won = "closed_won"', 'won = "closed_won"\nsigned = "closed_won"')
SIGNED_VERSION = catalog_version(parse_catalog(WITH_SIGNED))
DEFAULT_VERSION = catalog_version(parse_catalog(DEFAULT_CATALOG_TOML))


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database)
    yield connection
    await connection.close()


def catalog_line(stderr: str) -> dict[str, object]:
    first: dict[str, object] = orjson.loads(stderr.splitlines()[0])
    assert first["event"] == "catalog", stderr
    return first


async def test_the_tools_use_the_catalog_the_proxy_serves(database: str, db: asyncpg.Connection, upstream: Upstream,
                                                          tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """An alias added to the proxy by a live reload: migrate with only --admin-url normalizes those rows, saying
    which catalog it used; with the old file as well it refuses before touching anything (exit 2)."""
    await seeded(database, 200)
    await db.execute("UPDATE deals SET stage = 'Signed' WHERE id % 10 = 0")
    config, old = tmp_path / "catalog.toml", tmp_path / "old.toml"
    config.write_text(DEFAULT_CATALOG_TOML)
    old.write_text(DEFAULT_CATALOG_TOML)
    async with proxy_process(upstream, config) as run:
        config.write_text(WITH_SIGNED)
        assert (await reload(http, run.admin_url))[0] == 200
        refused = await stagectl(database, "migrate", "--apply", "--config", str(old), "--admin-url", run.admin_url)
        assert refused.returncode == 2, refused.stderr
        assert DEFAULT_VERSION in refused.stderr and SIGNED_VERSION in refused.stderr
        assert "nothing was touched" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
        assert await db.fetchval("SELECT to_regclass('stage_migration_control')") is None  # not even the tables
        result = await stagectl(database, "migrate", "--apply", "--admin-url", run.admin_url, "--json")
    assert result.returncode == 0, result.stderr
    assert catalog_line(result.stderr) == {"event": "catalog", "source": f"proxy {run.admin_url}",
                                           "version": SIGNED_VERSION}
    report = orjson.loads(result.stdout)
    assert report["catalog"]["version"] == SIGNED_VERSION
    assert await db.fetchval("SELECT count(*) FROM deals WHERE stage = 'Signed'") == 0
    assert await db.fetchval("SELECT catalog_version FROM stage_migration_control") == SIGNED_VERSION


async def test_no_file_and_no_proxy_is_the_built_in_catalog_with_a_warning(database: str) -> None:
    """Nothing said: the built-in catalog, and a warning that it may not be the proxy's."""
    await seeded(database, 50)
    result = await stagectl(database, "migrate")
    line = catalog_line(result.stderr)
    assert result.returncode == 0 and line["source"] == "built-in" and line["version"] == DEFAULT_VERSION
    assert "may not be the proxy's" in str(line["warning"])


async def test_a_run_does_not_resume_under_another_catalog(database: str, db: asyncpg.Connection,
                                                           tmp_path: Path) -> None:
    """Started with one catalog, interrupted, resumed with another: exit 2 naming both, no row touched; with the
    same catalog it completes. ``migrate status`` shows each run's version."""
    await seeded(database, 3000)
    signed = tmp_path / "signed.toml"
    signed.write_text(WITH_SIGNED)
    proc = subprocess.Popen(command(database, "migrate", "--apply", "--config", str(signed), "--batch-size", "200",
                                    "--sleep-ms", "100", "--parallel", "1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not await db.fetchval("SELECT max(batch_no) >= 2 FROM stage_migration_control"
                                if await db.fetchval("SELECT to_regclass('stage_migration_control') IS NOT NULL")
                                else "SELECT false"):
        assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    before = await db.fetchval("SELECT md5(string_agg(stage, ',' ORDER BY id)) FROM deals")
    other = await stagectl(database, "migrate", "--apply", "--resume")  # the built-in catalog
    assert other.returncode == 2
    assert SIGNED_VERSION in other.stderr and DEFAULT_VERSION in other.stderr and "resum" in other.stderr
    assert await db.fetchval("SELECT md5(string_agg(stage, ',' ORDER BY id)) FROM deals") == before
    same = await stagectl(database, "migrate", "--apply", "--resume", "--config", str(signed))
    assert same.returncode == 0, same.stderr
    listed = await stagectl(database, "migrate", "status")
    assert SIGNED_VERSION in listed.stdout and "CATALOG" in listed.stdout
