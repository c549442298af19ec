"""A hostile (or broken) upstream: its framing is trusted no further than a client's (docs/proxy.md)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from pathlib import Path

import aiohttp
import pytest

from tests.support.ports import wait_for_port
from tests.support.proxies import TOKEN, ProxyFactory, spawn_proxy
from tests.support.raw import exchange, read_all, request
from tests.support.scripted import answer_health_check, is_health_check, read_head, read_request, scripted

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


async def test_bytes_after_the_declared_end_are_an_upstream_error(make_proxy: ProxyFactory) -> None:
    """(7) A response followed in the same write by a forged one: 502, nothing of the forgery reaches the client."""
    forged = b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\nSet-Cookie: pwn=1\r\nContent-Length: 0\r\n\r\n"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await read_head(reader):
            writer.write(OK + forged if n == 0 else OK)
            await writer.drain()

    async with scripted(script) as (url, connections):
        run = await make_proxy(upstream_url=url)
        answer = await exchange(run.main.port, request("GET", "/page"))
        assert status_of(answer) == 502 and b"invalid response" in answer
        assert b"evil" not in answer and b"pwn" not in answer
        assert status_of(await exchange(run.main.port, request("GET", "/page"))) == 200
        assert len(connections) == 2  # the poisoned connection was closed, not reused


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 099 Weird", b"HTTP/1.1 600 Beyond", b"HTTP/1.1 000 Zero"])
async def test_status_outside_100_599_is_502(make_proxy: ProxyFactory, status_line: bytes) -> None:
    """(8) A status outside 100-599 is never relayed (it was, as ``HTTP/1.1 99``)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_head(reader)
        writer.write(status_line + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with scripted(script) as (url, _):
        run = await make_proxy(upstream_url=url)
        answer = await exchange(run.main.port, request("GET", "/x"))
        assert status_of(answer) == 502 and b"outside 100-599" in answer


async def test_header_bytes_are_relayed_as_received_or_refused(make_proxy: ProxyFactory) -> None:
    """(8) UTF-8 header values pass byte for byte; a value that is not UTF-8 is refused (502), never altered."""
    values = [b"caf\xc3\xa9", b"caf\xe9"]

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await read_head(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nX-Name: " + values[n] + b"\r\nContent-Length: 0\r\nConnection: close"
                         b"\r\n\r\n")
            await writer.drain()
            return

    async with scripted(script) as (url, _):
        run = await make_proxy(upstream_url=url)
        answer = await exchange(run.main.port, request("GET", "/x"))
        assert status_of(answer) == 200 and b"X-Name: caf\xc3\xa9\r\n" in answer
        answer = await exchange(run.main.port, request("GET", "/x"))
        assert status_of(answer) == 502 and b"not valid UTF-8" in answer


async def test_too_many_header_fields_is_502(make_proxy: ProxyFactory) -> None:
    """(9) More header fields than the bound: 502, like an oversized request head is a 4xx."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(300)) +
                     b"Content-Length: 0\r\n\r\n")
        await writer.drain()

    async with scripted(script) as (url, _):
        run = await make_proxy(upstream_url=url)
        answer = await exchange(run.main.port, request("GET", "/x"))
        assert status_of(answer) == 502 and b"header fields" in answer


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_an_endless_response_head_is_cut_off(tmp_path: Path) -> None:
    """(9) An upstream sending 200 MB of header: the proxy answers 502 after a bounded read, its memory flat."""
    sent = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        nonlocal sent
        if is_health_check(await read_head(reader)):  # the proxy's start-up check: not the request measured
            await answer_health_check(writer)
            return
        writer.write(b"HTTP/1.1 200 OK\r\nX-Huge: ")
        chunk = b"a" * 65536
        while sent < 200 * 1024 * 1024:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)

    async with scripted(script) as (url, _):
        proc, main, admin = spawn_proxy(url)
        try:
            await asyncio.to_thread(wait_for_port, admin)
            before = rss_kib(proc.pid)
            answer = await exchange(main, request("GET", "/x"), idle_s=5.0, total_s=30.0)
            after = rss_kib(proc.pid)
        finally:
            proc.terminate()
            proc.communicate(timeout=10)
    assert status_of(answer) == 502 and b"exceeds" in answer
    assert sent < 20 * 1024 * 1024  # stopped reading long before the 200 MB (kernel buffers allow some slack)
    assert after - before < 30 * 1024, (before, after)


async def test_an_early_413_is_relayed_every_time(http: aiohttp.ClientSession) -> None:
    """(10) An upstream answering 413 before reading an oversized body, then closing: always 413, never 502."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 5\r\nConnection: close\r\n\r\nlarge")
        await writer.drain()

    async with scripted(script) as (url, _):
        proc, main, admin = spawn_proxy(url)  # its own process and loop: the race is between it and the upstream
        try:
            await asyncio.to_thread(wait_for_port, admin)
            async with http.put(f"http://127.0.0.1:{admin}/_ops/mode", headers={"Authorization": f"Bearer {TOKEN}"},
                                json={"endpoint": "*", "mode": "warn", "reason": "t"}) as response:
                assert response.status == 200  # in warn an oversized body is streamed through
            body = b'{"stage":"' + b"x" * (2 * 1024 * 1024) + b'"}'
            statuses: collections.Counter[int] = collections.Counter()
            for i in range(150):
                path = "/api/v1/deals" if i % 2 else "/upload"
                reader, writer = await asyncio.open_connection("127.0.0.1", main)
                writer.write(request("POST", path, body))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                statuses[status_of(await read_all(reader, idle_s=2.0))] += 1
                writer.close()
        finally:
            proc.terminate()
            proc.communicate(timeout=10)
        assert statuses == {413: 150}


async def test_a_client_that_stops_reading_is_dropped_with_its_upstream(tmp_path: Path) -> None:
    """(12) A stalled download: the client is dropped after --client-write-timeout-s, the upstream connection too."""
    upstream_done = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        head, _ = await read_request(reader)
        if is_health_check(head):  # the proxy's start-up check: not the download
            await answer_health_check(writer)
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (512 * 1024 * 1024))
        try:
            while True:
                writer.write(b"z" * 65536)
                await writer.drain()
        finally:
            upstream_done.set()

    async with scripted(script) as (url, _):
        proc, main, admin = spawn_proxy(url, "--client-write-timeout-s", "1", "--upstream-timeout-s", "300")
        try:
            await asyncio.to_thread(wait_for_port, admin)
            reader, writer = await asyncio.open_connection("127.0.0.1", main, limit=1024)
            writer.write(request("GET", "/download"))
            await writer.drain()
            await asyncio.wait_for(upstream_done.wait(), 30)  # far less than --upstream-timeout-s
            writer.close()
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{admin}/metrics") as response:
                    metrics = await response.text()
        finally:
            proc.terminate()
            proc.communicate(timeout=10)
    assert 'stage_connections_dropped_total{listener="main",reason="write_timeout"} 1.0' in metrics
