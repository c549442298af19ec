"""The Redis mode store against a real redis-server: fallback, recovery, propagation."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from proxy.app.server import Running
from proxy.modes.records import ModeRecord
from proxy.modes.statefile import write_state_file
from tests.support.ports import free_port
from tests.support.proxies import TOKEN, ProxyFactory, set_mode, spawn_proxy
from tests.support.servers import RedisServer
from tests.support.upstreams import Upstream
from tests.support.waiting import until, wait_until


async def get_mode(http: aiohttp.ClientSession, admin_url: str) -> dict[str, Any]:
    async with http.get(f"{admin_url}/_ops/mode") as response:
        data: dict[str, Any] = await response.json()
        return data


async def store_loads(http: aiohttp.ClientSession, run: Running) -> float:
    """How many times the proxy has tried to load the modes from the store, failed attempts included."""
    async with http.get(f"{run.admin_url}/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('stage_mode_store_seconds_count{op="load"} '))


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


async def test_modes_live_in_redis(make_proxy: ProxyFactory, redis_server: RedisServer, prefix: str,
                                   http: aiohttp.ClientSession) -> None:
    """A PUT lands in the documented hash and the source is redis."""
    run = await make_proxy(redis_url=redis_server.url, redis_prefix=prefix)
    await set_mode(http, run, "create_deal", "enforce", 25)
    client = aioredis.Redis.from_url(redis_server.url)
    stored = orjson.loads(await client.hget(f"{prefix}modes", "create_deal") or b"null")
    await client.aclose()
    assert (stored["mode"], stored["percent"], stored["reason"]) == ("enforce", 25.0, "test")
    assert (await get_mode(http, run.admin_url))["source"] == "redis"


async def test_redis_killed_under_traffic(make_proxy: ProxyFactory, own_redis: RedisServer, prefix: str,
                                          http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    """(6) Redis dies under load: no failed request, modes kept, source last_known, one WARN; back after restart."""
    caplog.set_level(logging.INFO)
    run = await make_proxy(redis_url=own_redis.url, redis_prefix=prefix, refresh_ms=100)
    await set_mode(http, run, "create_deal", "enforce")
    client = aioredis.Redis.from_url(own_redis.url)
    await client.save()  # the restarted server loads this snapshot
    await client.aclose()
    statuses: list[int] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            async with http.post(f"{run.url}/api/v1/deals", json={"stage": "won"}) as response:
                statuses.append(response.status)
                assert response.headers["X-Stage-Validation"] == "mode=enforce; result=alias"

    workers = [asyncio.create_task(traffic()) for _ in range(4)]
    await until(lambda: len(statuses) >= 40, what="traffic flowing before Redis dies")
    own_redis.kill()
    await until(lambda: _source_is(http, run, "last_known"), timeout_s=3, what="the source to become last_known")
    failed_from = await store_loads(http, run)
    await until(lambda: _loads_since(http, run, failed_from, 8), what="eight more failed refreshes (still one WARN)")
    assert (await get_mode(http, run.admin_url))["endpoints"]["create_deal"]["mode"] == "enforce"
    own_redis.start()
    # refresh_ms=100: generous for a loaded machine
    await until(lambda: _source_is(http, run, "redis"), timeout_s=10, what="the source to be redis again")
    recovered_at = len(statuses)
    await until(lambda: len(statuses) >= recovered_at + 40, what="traffic answered after the recovery")
    stop.set()
    await asyncio.gather(*workers)
    assert statuses and set(statuses) == {200}, set(statuses)
    assert len(events(caplog, "mode_store_degraded")) == 1
    assert len(events(caplog, "mode_store_recovered")) == 1
    assert (await get_mode(http, run.admin_url))["endpoints"]["create_deal"]["mode"] == "enforce"


async def _source_is(http: aiohttp.ClientSession, run: Running, source: str) -> bool:
    return bool((await get_mode(http, run.admin_url))["source"] == source)


async def _loads_since(http: aiohttp.ClientSession, run: Running, before: float, count: int) -> bool:
    return await store_loads(http, run) >= before + count


async def test_empty_redis_after_restart_is_reseeded(make_proxy: ProxyFactory, own_redis: RedisServer, prefix: str,
                                                     http: aiohttp.ClientSession) -> None:
    """A Redis restarted without its data gets the last-known modes back instead of silently reverting to off."""
    run = await make_proxy(redis_url=own_redis.url, redis_prefix=prefix, refresh_ms=100)
    await set_mode(http, run, "import_deals", "enforce", 50)
    own_redis.kill()
    await until(lambda: _source_is(http, run, "last_known"), timeout_s=3, what="the source to become last_known")
    own_redis.start()
    await until(lambda: _source_is(http, run, "redis"), timeout_s=3, what="the source to be redis again")
    assert (await get_mode(http, run.admin_url))["endpoints"]["import_deals"]["percent"] == 50.0
    client = aioredis.Redis.from_url(own_redis.url)
    assert orjson.loads(await client.hget(f"{prefix}modes", "import_deals") or b"null")["mode"] == "enforce"
    await client.aclose()


async def test_put_while_redis_down_is_503(make_proxy: ProxyFactory, own_redis: RedisServer, prefix: str,
                                           http: aiohttp.ClientSession) -> None:
    """A mode change with the store unreachable answers 503 and changes nothing."""
    run = await make_proxy(redis_url=own_redis.url, redis_prefix=prefix)
    own_redis.kill()
    async with http.put(f"{run.admin_url}/_ops/mode", json={"endpoint": "*", "mode": "warn", "reason": "x"},
                        headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 503
    assert (await get_mode(http, run.admin_url))["endpoints"]["create_deal"]["mode"] == "off"


def _wait_healthy(admin_port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10) -> float:
    import urllib.request

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"proxy exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/_ops/healthz", timeout=0.5):
                return True
        except OSError:
            return False

    return wait_until(healthy, timeout_s=timeout_s, interval_s=0.02, what="the proxy to answer /_ops/healthz")


def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out.decode()


async def test_redis_down_at_startup_uses_state_file(upstream: Upstream, tmp_path: Path,
                                                     http: aiohttp.ClientSession) -> None:
    """(7) Redis down at startup: the --state-file modes are served, source state_file; start not held by Redis."""
    state = tmp_path / "modes.json"
    write_state_file(state, {"create_deal": ModeRecord("enforce", 40.0, "2026-01-01T00:00:00Z", "bob", "step")})
    dead = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    proc, main, admin = spawn_proxy(upstream.url, "--redis-url", dead, "--state-file", str(state))
    try:
        _wait_healthy(admin, proc)
        elapsed = time.monotonic() - started
        body = await get_mode(http, f"http://127.0.0.1:{admin}")
    finally:
        out = _stop(proc)
    assert elapsed < 8.0, elapsed  # a start waiting on Redis retries would take far longer; generous when loaded
    assert body["source"] == "state_file"
    assert (body["endpoints"]["create_deal"]["mode"], body["endpoints"]["create_deal"]["percent"]) == ("enforce", 40.0)
    assert body["endpoints"]["update_deal"]["mode"] == "off"
    lines = [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert sum(1 for line in lines if line["event"] == "mode_store_degraded") == 1
    assert "s3cret-pw" not in out  # the URL's password never reaches the logs


async def test_redis_down_at_startup_without_state_file(upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """(7) No Redis and no state file: default_mode, source default."""
    proc, _, admin = spawn_proxy(upstream.url, "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    try:
        assert _wait_healthy(admin, proc) < 8.0
        body = await get_mode(http, f"http://127.0.0.1:{admin}")
    finally:
        _stop(proc)
    assert body["source"] == "default"
    assert {r["mode"] for r in body["endpoints"].values()} == {"off"}


async def test_two_processes_converge(upstream: Upstream, redis_server: RedisServer, prefix: str,
                                      http: aiohttp.ClientSession) -> None:
    """(8) Two proxy processes on one Redis: a PUT on one is pushed to the other (pub/sub, not the poll)."""
    args = ("--redis-url", redis_server.url, "--redis-prefix", prefix, "--refresh-ms", "600000")
    first, _, admin_a = spawn_proxy(upstream.url, *args)
    second, main_b, admin_b = spawn_proxy(upstream.url, *args)
    try:
        _wait_healthy(admin_a, first)
        _wait_healthy(admin_b, second)
        client = aioredis.Redis.from_url(redis_server.url)

        async def both_subscribed() -> bool:
            [(_, subscribers)] = await client.pubsub_numsub(f"{prefix}events")
            return bool(subscribers == 2)

        try:
            await until(both_subscribed, what="both proxies to subscribe to the events channel")
        finally:
            await client.aclose()
        for mode in ("warn", "enforce", "off"):
            async with http.put(f"http://127.0.0.1:{admin_a}/_ops/mode",
                                json={"endpoint": "create_deal", "mode": mode, "reason": "converge"},
                                headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                assert response.status == 200

            async def applied(expected: str = mode) -> bool:
                body = await get_mode(http, f"http://127.0.0.1:{admin_b}")
                return bool(body["endpoints"]["create_deal"]["mode"] == expected)

            # with a 10 min poll, only pub/sub can explain this
            await until(applied, timeout_s=10.0, what=f"the second proxy to apply {mode}")
        async with http.post(f"http://127.0.0.1:{main_b}/api/v1/deals", json={"stage": "zz"}) as response:
            assert response.headers["X-Stage-Validation"] == "mode=off; result=unknown"
    finally:
        _stop(first)
        _stop(second)
