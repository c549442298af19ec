"""Time, connection and CPU bounds against real proxy processes (docs/proxy.md "Hostile clients").

Timing assertions are generous bounds: the machine is shared and may be loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.support.ports import free_port, wait_for_port
from tests.support.proxies import REPO, TOKEN, spawn_proxy
from tests.support.raw import closed_within, read_all, request
from tests.support.scripted import RawRecord, recording_raw_upstream
from tests.support.waiting import until


@contextlib.contextmanager
def proxy_process(upstream_url: str, *args: str, nofile: int | None = None) -> Iterator[tuple[int, int]]:
    """A real ``python -m proxy`` (optionally with a low RLIMIT_NOFILE); (main port, admin port)."""
    if nofile is None:
        proc, main, admin = spawn_proxy(upstream_url, *args)
    else:
        main, admin = free_port(), free_port()

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        proc = subprocess.Popen([sys.executable, "-m", "proxy", "--upstream", upstream_url, "--listen",
                                 f"127.0.0.1:{main}", "--admin-listen", f"127.0.0.1:{admin}", *args], cwd=REPO,
                                env={"PATH": "/usr/bin:/bin", "STAGE_OPS_TOKEN": TOKEN}, preexec_fn=limit,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port(admin)
        yield main, admin
    finally:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert b"Traceback" not in out + err and b'"level":"ERROR"' not in out, (out + err)[-3000:]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawRecord]:
    async with recording_raw_upstream() as record:
        yield record


async def set_enforce(admin: int) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.put(f"http://127.0.0.1:{admin}/_ops/mode", headers={"Authorization": f"Bearer {TOKEN}"},
                            json={"endpoint": "*", "mode": "enforce", "reason": "test"}) as response:
            assert response.status == 200


async def metric(admin: int, line_prefix: str) -> float:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{admin}/metrics") as response:
            for line in (await response.text()).splitlines():
                if line.startswith(line_prefix + " "):
                    return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _metric_is(admin: int, series: str, value: float) -> bool:
    return await metric(admin, series) == value


async def test_slow_and_silent_heads_are_cut_off(raw_upstream: RawRecord) -> None:
    """(11) A connection that sends nothing, or half a head, is closed after --header-timeout-s."""
    with proxy_process(raw_upstream.url, "--header-timeout-s", "1") as (main, admin):
        silent = await asyncio.open_connection("127.0.0.1", main)
        partial = await asyncio.open_connection("127.0.0.1", main)
        partial[1].write(b"POST /api/v1/deals HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert await closed_within(silent[0], 15) and await closed_within(partial[0], 15)
        assert time.monotonic() - started < 15
        assert await metric(admin, 'stage_connections_dropped_total{listener="main",reason="header_timeout"}') == 2
    assert raw_upstream.heads == []


async def test_each_head_on_a_kept_alive_connection_gets_the_whole_header_timeout(raw_upstream: RawRecord) -> None:
    """(11) The head clock starts again with every head: a half head sent 1.5 s after a first request on the same
    connection is not cut off when the first head's 2 s would have run out, but 2 s after its own first byte
    (one timer per connection follows the deadline; a timer per request cost ~1 µs each)."""
    with proxy_process(raw_upstream.url, "--header-timeout-s", "2", "--idle-timeout-s", "60") as (main, admin):
        reader, writer = await asyncio.open_connection("127.0.0.1", main)
        writer.write(request("GET", "/x", close=False))
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(1.5)
        writer.write(b"POST /api/v1/deals HTTP/1.1\r\nHost: x\r\n")
        sent = time.monotonic()
        assert not await closed_within(reader, 1.2)  # the first head's clock ran out 0.5 s after this one began
        assert await closed_within(reader, 15)
        assert time.monotonic() - sent >= 1.9
        writer.close()
        assert await metric(admin, 'stage_connections_dropped_total{listener="main",reason="header_timeout"}') == 1


async def test_a_stalled_body_gets_408_and_nothing_is_forwarded(raw_upstream: RawRecord) -> None:
    """(11) A body that stops flowing: 408 after --body-timeout-s, connection closed, the upstream got nothing."""
    with proxy_process(raw_upstream.url, "--body-timeout-s", "1") as (main, admin):
        await set_enforce(admin)
        for path in ("/api/v1/deals", "/upload"):  # validated (buffered) and pass-through (streamed)
            reader, writer = await asyncio.open_connection("127.0.0.1", main)
            writer.write(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100"
                         b"\r\n\r\n{\"stage\":" % path.encode())
            answer = await read_all(reader, idle_s=10, total_s=20)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert await closed_within(reader, 5)
        assert await metric(admin, 'stage_connections_dropped_total{listener="main",reason="body_timeout"}') == 2
    assert b'{"stage":' not in raw_upstream.everything


async def test_idle_keep_alive_connections_close(raw_upstream: RawRecord) -> None:
    """(11) After a response, a keep-alive connection left idle is closed after --idle-timeout-s."""
    with proxy_process(raw_upstream.url, "--idle-timeout-s", "1") as (main, admin):
        reader, writer = await asyncio.open_connection("127.0.0.1", main)
        writer.write(request("GET", "/x", close=False))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert await closed_within(reader, 15)
        writer.close()


async def test_a_connection_flood_leaves_the_admin_listener_answering(raw_upstream: RawRecord) -> None:
    """(11) 1 100 idle connections against a 256-fd process: past --max-connections new ones are closed at once,
    /_ops/healthz and /metrics keep answering, and once the flood is cut off the proxy serves again."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    count = min(1100, soft - 200)
    assert count > 300, "the test process needs a higher RLIMIT_NOFILE"
    with proxy_process(raw_upstream.url, "--header-timeout-s", "3", nofile=256) as (main, admin):
        flood = []
        for _ in range(count):
            with contextlib.suppress(OSError):
                flood.append(await asyncio.open_connection("127.0.0.1", main))
        async with aiohttp.ClientSession() as http:
            for path in ("/_ops/healthz", "/_ops/readyz", "/metrics"):
                async with http.get(f"http://127.0.0.1:{admin}{path}",
                                    timeout=aiohttp.ClientTimeout(total=5)) as response:
                    assert response.status == 200, path
        refused = await metric(admin, 'stage_connections_dropped_total{listener="main",reason="max_connections"}')
        assert refused >= count - 64  # (256 - 128) / 2 = 64 may stay open
        for reader, _ in flood:
            assert await closed_within(reader, 15)  # the header timeout ends the rest
        for _, writer in flood:
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", main)
        writer.write(request("GET", "/after"))
        assert (await read_all(reader, idle_s=5)).startswith(b"HTTP/1.1 200")
        writer.close()


async def test_large_bodies_do_not_stall_small_requests(raw_upstream: RawRecord) -> None:
    """(13) Four worst-case 1 MiB bodies in flight: an unrelated small request is still answered promptly."""
    deal = b'{"st\\u0061ge":"Closed Won","x":{"stage":1}}'
    body = b'{"deals":[' + b",".join([deal] * ((1 << 20) // (len(deal) + 1) - 1)) + b"]}"
    connections = 'stage_client_connections{listener="main"}'
    with proxy_process(raw_upstream.url) as (main, admin):
        await set_enforce(admin)
        for _ in range(3):
            await until(lambda: _metric_is(admin, connections, 0), what="no client connection left open")
            async with aiohttp.ClientSession() as http:  # new connections each round: the gauge counts the uploads
                async def big() -> int:
                    async with http.post(f"http://127.0.0.1:{main}/api/v1/deals/import", data=body,
                                         headers={"Content-Type": "application/json"}) as response:
                        await response.read()
                        return response.status

                bigs = [asyncio.create_task(big()) for _ in range(4)]
                await until(lambda: _metric_is(admin, connections, 4), what="the proxy to take the four uploads")
                started = time.monotonic()
                async with http.get(f"http://127.0.0.1:{main}/ping") as response:
                    await response.read()
                delay = time.monotonic() - started
                in_flight = sum(not upload.done() for upload in bigs)
                assert await asyncio.gather(*bigs) == [200] * 4
            assert in_flight, "the uploads were over before the small request: it measured nothing"
            assert delay < 1.5, delay  # the goal is 250 ms (bench/results); generous on a loaded machine
