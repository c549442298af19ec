"""stagectl drill redis-fallback (and preflight --fallback-drill) against a real proxy process and a real Redis that
is killed and started again — by the drill's commands, or by the operator when the drill says so."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.support.ports import free_port, wait_for_port
from tests.support.proxies import REPO, TOKEN
from tests.support.servers import RedisServer


@dataclass
class Staging:
    redis: RedisServer
    admin_url: str
    log: Path
    pidfile: Path

    @property
    def redis_command(self) -> str:
        """Starts Redis again on the same port, daemonized (the test stops it through the pid file)."""
        return (f"{shutil.which('redis-server')} --port {self.redis.port} --bind 127.0.0.1 --save '' "
                f"--appendonly no --daemonize yes --pidfile {self.pidfile} --dir {self.redis.dir}")


@pytest.fixture
async def staging(own_redis: RedisServer, tmp_path: Path) -> AsyncIterator[Staging]:
    """A proxy process on Redis, its log in a file, create_deal in warn."""
    admin = free_port()
    log = tmp_path / "proxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "--upstream", "http://127.0.0.1:9", "--listen",
                                 f"127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{admin}", "--redis-url",
                                 own_redis.url, "--refresh-ms", "100", "--redis-timeout-ms", "100"],
                                cwd=REPO, env={**os.environ, "STAGE_OPS_TOKEN": TOKEN}, stdout=out,
                                stderr=subprocess.STDOUT)
    wait_for_port(admin)
    async with aiohttp.ClientSession() as http:
        async with http.put(f"http://127.0.0.1:{admin}/_ops/mode", headers={"Authorization": f"Bearer {TOKEN}"},
                            json={"endpoint": "create_deal", "mode": "warn", "reason": "drill"}) as response:
            assert response.status == 200
    pidfile = tmp_path / "redis-again.pid"
    yield Staging(own_redis, f"http://127.0.0.1:{admin}", log, pidfile)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    if pidfile.exists():
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


async def stagectl(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "tools.stagectl", *args], cwd=REPO,
                                   capture_output=True, text=True, timeout=timeout_s)


async def test_the_drill_with_commands(staging: Staging) -> None:
    """kill -9 Redis, start it again: last_known with the same modes, the metric and the WARN seen, back on redis."""
    assert staging.redis.proc is not None
    result = await stagectl("drill", "redis-fallback", "--admin-url", staging.admin_url, "--json",
                            "--break-redis", f"kill -9 {staging.redis.proc.pid}",
                            "--restore-redis", staging.redis_command, "--proxy-log", str(staging.log),
                            "--drill-timeout", "30")
    report = orjson.loads(result.stdout)
    assert result.returncode == 0, report
    assert [(s["step"], s["result"]) for s in report["steps"]] == [
        ("on Redis before the drill", "PASS"), ("break Redis", "PASS"), ("fallback to last_known", "PASS"),
        ("metric stage_mode_source", "PASS"), ("WARN logged", "PASS"), ("restore Redis", "PASS"),
        ("back on Redis", "PASS")]
    assert report["steps"][4]["detail"] == "mode_store_degraded at level WARN"
    assert report["steps"][2]["seconds"] < 10


async def test_the_operator_breaks_and_restores_when_told(staging: Staging) -> None:
    """No commands: the drill tells the operator what to do and watches; nothing is touched by the tool."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.stagectl", "drill", "redis-fallback", "--admin-url", staging.admin_url,
        "--drill-timeout", "30", cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None and proc.stdout is not None
    told = await asyncio.wait_for(proc.stderr.readline(), 30)
    assert told.startswith(b"drill: stop Redis now")
    staging.redis.kill()
    told = await asyncio.wait_for(proc.stderr.readline(), 30)
    assert told.startswith(b"drill: start Redis again")
    staging.redis.start()
    out = (await asyncio.wait_for(proc.stdout.read(), 60)).decode()
    assert await proc.wait() == 0, out
    assert "WARN logged" in out and "not checked (no --proxy-log)" in out
    assert out.rstrip().endswith("Redis fallback drill: PASS")


async def test_a_failing_break_command_stops_the_drill(staging: Staging) -> None:
    result = await stagectl("drill", "redis-fallback", "--admin-url", staging.admin_url, "--json",
                            "--break-redis", "echo 'no such service' >&2; exit 3", "--restore-redis", "true")
    report = orjson.loads(result.stdout)
    assert result.returncode == 1
    assert report["steps"][-1] == {"step": "break Redis", "result": "FAIL", "seconds": report["steps"][-1]["seconds"],
                                   "detail": "command exited 3: no such service"}


async def test_a_proxy_without_redis_has_nothing_to_drill(tmp_path: Path) -> None:
    admin = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--demo", "--listen", f"127.0.0.1:{free_port()}",
                             "--admin-listen", f"127.0.0.1:{admin}"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port(admin)
        result = await stagectl("drill", "redis-fallback", "--admin-url", f"http://127.0.0.1:{admin}")
    finally:
        proc.terminate()
        proc.wait(30)
    assert result.returncode == 1
    assert "source is memory, not redis: nothing to drill" in result.stdout


async def test_preflight_runs_the_drill_as_its_fallback_criterion(staging: Staging) -> None:
    assert staging.redis.proc is not None
    result = await stagectl("preflight", "--json", "--admin-url", staging.admin_url, "--fallback-drill",
                            "--break-redis", f"kill -9 {staging.redis.proc.pid}",
                            "--restore-redis", staging.redis_command, "--drill-timeout", "30")
    rows = {row["criterion"]: row for row in orjson.loads(result.stdout)["criteria"]}
    drill = rows["Redis fallback drill"]
    assert drill["result"] == "PASS", drill
    assert "fallback to last_known in" in drill["measured"] and "back on Redis in" in drill["measured"]
