"""Graceful shutdown: SIGTERM lets in-flight requests finish (exit 0); a second signal forces the exit (1)."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import orjson
import pytest

from tests.support.ports import wait_for_port
from tests.support.proxies import spawn_proxy
from tests.support.upstreams import Upstream
from tests.support.waiting import output_line, until


async def test_sigterm_drains_in_flight_requests(upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """A request in flight when SIGTERM arrives still gets its answer; exit code is 0."""
    proc, main, admin = spawn_proxy(upstream.url)
    try:
        await asyncio.to_thread(wait_for_port, admin)
        upstream.delay_s = 1.0
        pending = asyncio.create_task(http.post(f"http://127.0.0.1:{main}/api/v1/deals", json={"stage": "lead"}))
        await until(lambda: len(upstream.seen) == 1, what="the request to reach the (slow) upstream")
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


def _events(out: bytes) -> list[str]:
    return [orjson.loads(line)["event"] for line in out.splitlines() if line.startswith(b"{")]


async def test_each_shutdown_phase_is_logged_once_in_order(upstream: Upstream) -> None:
    """SIGTERM: stop accepting, drain, close the upstream pool, flush modes, done: one line each, in that order."""
    proc, _, admin = spawn_proxy(upstream.url)
    await asyncio.to_thread(wait_for_port, admin)
    proc.send_signal(signal.SIGTERM)
    out, _ = await asyncio.to_thread(proc.communicate, timeout=20)
    assert proc.returncode == 0
    phases = [e for e in _events(out) if e.startswith("shutdown_")]
    assert phases == ["shutdown_started", "shutdown_stopped_accepting", "shutdown_drained",
                      "shutdown_upstream_closed", "shutdown_modes_flushed", "shutdown_complete"]


async def test_a_second_signal_forces_the_exit(upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """A request still in flight keeps a graceful drain waiting; a second SIGTERM cuts it short: exit 1."""
    proc, main, admin = spawn_proxy(upstream.url, "--shutdown-timeout-s", "60", "--upstream-timeout-s", "120")
    try:
        await asyncio.to_thread(wait_for_port, admin)
        upstream.delay_s = 60.0
        pending = asyncio.create_task(http.post(f"http://127.0.0.1:{main}/api/v1/deals", json={"stage": "lead"}))
        await until(lambda: len(upstream.seen) == 1, what="the request to reach the (slow) upstream")
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout is not None
        early = await output_line(proc.stdout, lambda line: b'"shutdown_stopped_accepting"' in line,
                                  what="the drain to begin")
        draining = orjson.loads(early[-1])
        assert draining["connections"]["main"] == 1 and draining["drain_s"] == 60  # the request has 60 s to finish
        assert proc.poll() is None and not pending.done()  # still draining
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 15)
        with pytest.raises(aiohttp.ClientError):
            await pending
    finally:
        if proc.poll() is None:
            proc.kill()
        out, _ = proc.communicate()
    out = b"".join(early) + out
    assert code == 1
    events = _events(out)
    assert events.count("shutdown_force_requested") == 1 and events.count("shutdown_forced") == 1
    assert "shutdown_drained" not in events
