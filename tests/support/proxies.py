"""Proxies under test: in-process (settings for ``running``) or as real ``python -m proxy`` processes."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from proxy.app.server import Running
from proxy.app.settings import HostPort, Settings
from proxy.shared.secrets import Secret
from tests.support.ports import free_port
from tests.support.raw import body_of, read_all, request
from tests.support.waiting import until

TOKEN = "test-token-0123456789"
REPO = Path(__file__).resolve().parent.parent.parent
ProxyFactory = Callable[..., Awaitable[Running]]


def make_settings(upstream_url: str, **overrides: Any) -> Settings:
    base = Settings(
        upstream_url=upstream_url,
        listen=HostPort("127.0.0.1", 0),
        admin_listen=HostPort("127.0.0.1", 0),
        ops_token=Secret(TOKEN),
        refresh_ms=200,
        shutdown_timeout_s=1.0,
    )
    return dataclasses.replace(base, **overrides)


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


# -- --workers N: which worker is which, from /proc ----------------------------------------------------------------

def _tcp_sockets() -> list[tuple[int, int, str, str]]:
    """(local port, remote port, state, inode) of every IPv4 TCP socket of this network namespace."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        rows.append((int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16), fields[3], fields[9]))
    return rows


def listeners(port: int) -> int:
    """How many sockets listen on ``port``: with --workers N (SO_REUSEPORT), one per worker that has bound it."""
    return sum(1 for local, _, state, _ in _tcp_sockets() if local == port and state == "0A")


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a supervisor's workers)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(child) for child in out.split()]


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def accepted_by(pids: Collection[int], port: int, client_port: int) -> int | None:
    """Which of ``pids`` holds the server end of the connection from ``client_port`` to ``port``."""
    inodes = {inode for local, remote, _, inode in _tcp_sockets() if local == port and remote == client_port}
    return next((pid for pid in pids if inodes & _socket_inodes(pid)), None)


async def mode_on_every_worker(admin: int, workers: Collection[int], endpoint: str, mode: str) -> None:
    """Until each of ``workers`` shows ``mode`` for ``endpoint`` in its own GET /_ops/mode: fresh connections
    (the kernel spreads them over the workers), each traced to the worker that accepted it."""
    shown: set[int] = set()

    async def probe() -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", admin)
        try:
            client_port = writer.get_extra_info("sockname")[1]
            await until(lambda: accepted_by(workers, admin, client_port) is not None,
                        what=f"a worker to accept the connection from port {client_port}")
            worker = accepted_by(workers, admin, client_port)
            writer.write(request("GET", "/_ops/mode"))
            body = orjson.loads(body_of(await read_all(reader)))
        finally:
            writer.close()
        if worker is not None and body["endpoints"][endpoint]["mode"] == mode:
            shown.add(worker)
        return shown >= set(workers)

    await until(probe, what=f"{endpoint} in {mode} on every worker {sorted(workers)}")
