"""Graceful shutdown: SIGTERM lets in-flight requests finish, then the process exits 0."""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from tests.conftest import Upstream, spawn_proxy, wait_for_port


async def test_sigterm_drains_in_flight_requests(upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """A request in flight when SIGTERM arrives still gets its answer; exit code is 0."""
    proc, main, admin = spawn_proxy(upstream.url)
    try:
        await asyncio.to_thread(wait_for_port, admin)
        upstream.delay_s = 1.0
        pending = asyncio.create_task(http.post(f"http://127.0.0.1:{main}/api/v1/deals", json={"stage": "lead"}))
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        response = await pending
        assert response.status == 200
        assert await response.json() == {"stage": "lead"}
        code = await asyncio.to_thread(proc.wait, 10)
        assert code == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


async def test_exit_releases_the_ports(upstream: Upstream) -> None:
    """After SIGTERM both listeners are closed."""
    proc, main, admin = spawn_proxy(upstream.url)
    await asyncio.to_thread(wait_for_port, admin)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 10) == 0
    proc.communicate()
    for port in (main, admin):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            continue
        writer.close()
        raise AssertionError(f"port {port} still accepts connections")
