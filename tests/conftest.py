"""Fixtures: real redis-server and PostgreSQL processes, a recording upstream, proxies on free ports.

The classes and helpers behind them live in tests/support/ (bench/ uses them too).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop

from proxy.app.server import Running, running
from tests.support.proxies import ProxyFactory, make_settings
from tests.support.servers import PostgresServer, RedisServer
from tests.support.upstreams import Upstream, recording_upstream


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """In-process tests run on uvloop, the loop the proxy runs on in production (proxy/app/cli.py)."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests isolate themselves with a key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may kill and restart."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with recording_upstream() as state:
        yield state


@pytest.fixture
async def make_proxy(upstream: Upstream) -> AsyncIterator[ProxyFactory]:
    """Start in-process proxies in front of ``upstream``; all stopped at teardown."""
    async with AsyncExitStack() as stack:

        async def factory(**overrides: Any) -> Running:
            settings = make_settings(overrides.pop("upstream_url", upstream.url), **overrides)
            return await stack.enter_async_context(running(settings))

        yield factory


@pytest.fixture
async def proxy(make_proxy: ProxyFactory) -> Running:
    return await make_proxy()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding")) as session:
        yield session


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session; tests take their own databases (see ``database``).

    Its directory is made outside pytest's root-only temp tree: the server runs as ``postgres``.
    """
    base = Path(tempfile.mkdtemp(prefix="stagegate-pg-"))
    base.chmod(0o755)
    server = PostgresServer(base)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def database(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for this test; its DSN."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    postgres.psql(f"CREATE DATABASE {name}")
    yield postgres.dsn(name)
    postgres.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
