"""--workers N: processes sharing the ports, modes through Redis, metrics aggregated."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.support.ports import wait_for_port
from tests.support.proxies import TOKEN, children, listeners, mode_on_every_worker, spawn_proxy
from tests.support.servers import RedisServer
from tests.support.upstreams import Upstream
from tests.support.waiting import until, wait_until
from tests.test_cli import assert_one_line_error, run_cli


def test_workers_refused_with_memory_store() -> None:
    """The embedded store cannot share modes between processes: --workers 2 without Redis exits 2."""
    assert_one_line_error(run_cli("--upstream", "http://x", "--workers", "2"), 2, "--workers > 1 needs --redis-url")


def test_workers_bounds() -> None:
    """A worker count outside 1-64 is refused."""
    assert_one_line_error(run_cli("--upstream", "http://x", "--workers", "0", "--redis-url", "redis://h:1"), 2,
                          "--workers: must be from 1 to 64")


def upstream_connections(pid: int, port: int) -> int:
    """How many TCP sockets of ``pid`` are connected to ``port`` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port and fields[9] in inodes:
            count += 1
    return count


async def _metric_sum(http: aiohttp.ClientSession, admin: int, series: str) -> float:
    async with http.get(f"http://127.0.0.1:{admin}/metrics") as response:
        text = await response.text()
    return sum(float(m) for m in re.findall(rf"^{re.escape(series)} ([0-9.e+]+)$", text, flags=re.M))


async def both_workers_bound(supervisor: int, *ports: int) -> list[int]:
    """The two workers' pids, once both run and each of ``ports`` has two listening sockets (one per worker)."""
    await until(lambda: len(children(supervisor)) == 2 and all(listeners(port) == 2 for port in ports),
                what=f"two workers listening on {ports}")
    return children(supervisor)


async def test_two_workers_share_ports_modes_and_metrics(upstream: Upstream, redis_server: RedisServer, prefix: str,
                                                         http: aiohttp.ClientSession) -> None:
    """Two workers: requests spread over both pids, one PUT reaches both, /metrics counts every request once."""
    proc, main, admin = spawn_proxy(upstream.url, "--workers", "2", "--redis-url", redis_server.url,
                                    "--redis-prefix", prefix)
    try:
        await asyncio.to_thread(wait_for_port, main)
        await asyncio.to_thread(wait_for_port, admin)
        workers = await both_workers_bound(proc.pid, main, admin)
        async with http.put(f"http://127.0.0.1:{admin}/_ops/mode", headers={"Authorization": f"Bearer {TOKEN}"},
                            json={"endpoint": "create_deal", "mode": "enforce", "reason": "workers"}) as response:
            assert response.status == 200
        await mode_on_every_worker(admin, workers, "create_deal", "enforce")
        for _ in range(60):  # a new connection each time: the kernel spreads them over the workers
            async with aiohttp.ClientSession() as fresh:
                async with fresh.post(f"http://127.0.0.1:{main}/api/v1/deals", json={"stage": "nope"}) as response:
                    assert response.status == 422  # every worker got the PUT through Redis
                async with fresh.post(f"http://127.0.0.1:{main}/other", data=b"x") as response:
                    assert response.status == 200
        series = 'stage_validation_total{endpoint="create_deal",mode="enforce",result="unknown"}'
        assert await _metric_sum(http, admin, series) == 60.0  # summed over workers, each request once
        serving = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        upstream_port = int(upstream.url.rsplit(":", 1)[1])
        assert len(serving) == 2
        assert all(upstream_connections(int(pid), upstream_port) for pid in serving)  # both served traffic
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = await asyncio.to_thread(proc.wait, 25)  # the supervisor's own backstop is 15 s
        except subprocess.TimeoutExpired:
            for pid in children(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            code = None
        out, err = proc.communicate()
    assert code == 0, err.decode()
    pids = {line for line in out.decode().splitlines() if '"workers_started"' in line}
    assert len(pids) == 1


async def test_worker_crash_takes_the_supervisor_down(upstream: Upstream, redis_server: RedisServer,
                                                      prefix: str) -> None:
    """A worker killed from outside: the supervisor stops the others and exits 1."""
    proc, main, _ = spawn_proxy(upstream.url, "--workers", "2", "--redis-url", redis_server.url,
                                "--redis-prefix", prefix)
    try:
        await asyncio.to_thread(wait_for_port, main)
        workers = await both_workers_bound(proc.pid, main)
        subprocess.run(["kill", "-9", str(workers[0])], check=True)
        code = await asyncio.to_thread(proc.wait, 15)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert code == 1


STUBBORN_WORKER = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
SUPERVISE = """
import os
import sys
from proxy.shared import logs
from proxy.app.workers import Supervisor
logs.configure("INFO")
sys.exit(Supervisor([], 2, environ=os.environ, stop_grace_s=1.0, command=[sys.executable, "-c", sys.argv[1]]).run())
"""


def test_supervisor_kills_a_worker_that_ignores_sigterm() -> None:
    """A worker that does not stop after the signal is SIGKILLed after the grace period; exit 1, one ERROR line."""
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISE, STUBBORN_WORKER], cwd=Path(__file__).parent.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(children(proc.pid)) == 2, what="the supervisor to start two workers")
        workers = children(proc.pid)
        wait_until(lambda: all(_ignores_sigterm(pid) for pid in workers), what="both workers to ignore SIGTERM")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
        elapsed = time.monotonic() - started
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert code == 1, err
    assert 0.9 <= elapsed < 8.0, elapsed  # grace 1 s; generous upper bound for a loaded machine
    assert '"workers_killed"' in out
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def _ignores_sigterm(pid: int) -> bool:
    """True once ``pid`` has set SIGTERM to SIG_IGN (its SigIgn mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False
