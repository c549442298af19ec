"""Shared fixtures: real redis-server processes, a recording upstream, proxies on free ports."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import aiohttp
import pytest
import uvloop
from aiohttp import web
from multidict import CIMultiDictProxy

from proxy.server import Running, running
from proxy.settings import HostPort, Secret, Settings

TOKEN = "test-token-0123456789"
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {port} after {timeout_s}s")


class RedisServer:
    """A real redis-server on a free port; kill() and start() for fault tests."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/test (it installs it)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--protected-mode", "no", "--enable-debug-command", "local"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class ThreadedLoop:
    """Servers on their own uvloop in a thread, for synchronous (hypothesis) tests: ``with Sub() as it:``.

    A subclass's ``serve`` starts what it needs, sets ``self.ready`` and waits for ``stop``.
    """

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()  # the production loop
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)

    async def serve(self, stop: asyncio.Event) -> None:
        raise NotImplementedError

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        await self.serve(self._stop)

    def __enter__(self) -> Self:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)
        self.loop.close()


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """In-process tests run on uvloop, the loop the proxy runs on in production (proxy/cli.py)."""
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


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    path_qs: str
    headers: CIMultiDictProxy[str]
    body: bytes
    peer: tuple[str, int] | None = None  # the proxy's side of the TCP connection: one per upstream connection


@dataclass
class Upstream:
    """A recording upstream (real aiohttp server); ``delay_s`` slows every answer."""

    url: str
    seen: list[Seen] = field(default_factory=list)
    delay_s: float = 0.0

    @property
    def last(self) -> Seen:
        return self.seen[-1]


def _upstream_app(state: Upstream) -> web.Application:
    async def record(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        state.seen.append(Seen(request.method, request.raw_path, request.headers, body,
                               tuple(peer[:2]) if peer else None))
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        if request.path == "/stream":
            response = web.StreamResponse(headers={"X-Upstream": "yes"})
            await response.prepare(request)
            for i in range(5):
                await response.write(f"chunk-{i};".encode())
            await response.write_eof()
            return response
        headers = {"X-Upstream": "yes", "Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1"}
        response = web.Response(body=body or b"{}", headers=headers, content_type="application/json")
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", record)
    return app


@asynccontextmanager
async def recording_upstream() -> AsyncIterator[Upstream]:
    """A recording upstream on a free loopback port, stopped on exit."""
    state = Upstream(url="")
    runner = web.AppRunner(_upstream_app(state), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        state.url = f"http://{host}:{port}"
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with recording_upstream() as state:
        yield state


def make_settings(upstream_url: str | None, **overrides: Any) -> Settings:
    base = Settings(
        upstream_url=upstream_url,
        listen=HostPort("127.0.0.1", 0),
        admin_listen=HostPort("127.0.0.1", 0),
        ops_token=Secret(TOKEN),
        refresh_ms=200,
        shutdown_timeout_s=1.0,
    )
    return dataclasses.replace(base, **overrides)


ProxyFactory = Callable[..., Awaitable[Running]]


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


async def set_mode(http: aiohttp.ClientSession, run: Running, endpoint: str, mode: str,
                   percent: float | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"endpoint": endpoint, "mode": mode, "reason": "test"}
    if percent is not None:
        body["percent"] = percent
    async with http.put(f"{run.admin_url}/_ops/mode", json=body,
                        headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 200, await response.text()
        data: dict[str, Any] = await response.json()
        return data


def spawn_proxy(upstream_url: str, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes],
                                                                                             int, int]:
    """A real ``python -m proxy`` process; returns (process, main port, admin port)."""
    main, admin = free_port(), free_port()
    command = [sys.executable, "-m", "proxy", "--upstream", upstream_url, "--listen", f"127.0.0.1:{main}",
               "--admin-listen", f"127.0.0.1:{admin}", *args]
    full_env = {**os.environ, "STAGE_OPS_TOKEN": TOKEN, **(env or {})}
    proc = subprocess.Popen(command, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, main, admin


class PostgresServer:
    """A real PostgreSQL cluster in a temp dir, run as an unprivileged user (initdb refuses root)."""

    PASSWORD_ROLE = "stage_pw"
    PASSWORD = "s3cret-db-pw"

    def __init__(self, base: Path) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            raise RuntimeError("PostgreSQL server binaries are missing: scripts/test installs 'postgresql'")
        self.bin = found[-1].parent
        self.base = base
        self.data = base / "data"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run([*prefix, *command], capture_output=True, text=True, check=check, timeout=120)

    def dsn(self, database: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"postgresql://{auth}127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        if self.user:
            shutil.chown(self.base, self.user)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8")
        (self.data / "pg_hba.conf").write_text(
            f"host all {self.PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n"
            "local all all trust\n")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "pg.log"), "-w", "-o",
                  f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
                  "-c synchronous_commit=off -c full_page_writes=off", "start")
        self.psql(f"CREATE ROLE {self.PASSWORD_ROLE} LOGIN SUPERUSER PASSWORD '{self.PASSWORD}'")

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", self.dsn(database), "-c", sql],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr}")
        return result.stdout.strip()

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop", check=False)


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
