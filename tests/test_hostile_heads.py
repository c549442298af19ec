"""Hostile input, round two: heads, trailers, interim answers, echoed bytes and alert labels (docs/proxy.md).

Findings 5-7 and 9 of the adversarial pass, replayed against real proxy processes and scripted upstreams.
Timing assertions are generous bounds: the machine is shared and may be loaded.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.support.alerts import alert, payload
from tests.support.ports import wait_for_port
from tests.support.proxies import TOKEN, ProxyFactory, spawn_proxy
from tests.support.raw import closed_within, exchange, request
from tests.support.scripted import RawRecord, read_head, read_request, recording_raw_upstream, scripted
from tests.test_hostile_limits import metric, proxy_process

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawRecord]:
    async with recording_raw_upstream() as record:
        yield record


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- 5. upstream trailers ------------------------------------------------------------------------------------

FORGED_TRAILERS = b"Set-Cookie: session=attacker\r\nLocation: https://evil.example/\r\nContent-Type: text/html\r\n"


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/page", b""), ("POST", "/api/v1/deals", b'{"stage":"won"}'),
])
async def test_upstream_trailers_are_never_relayed_as_headers(make_proxy: ProxyFactory, http: aiohttp.ClientSession,
                                                             method: str, path: str, body: bytes) -> None:
    """(5) A chunked answer's trailer section (Set-Cookie, Location, Content-Type) never reaches the client."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while (await read_request(reader))[0]:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                         b"Trailer: Set-Cookie\r\n\r\n2\r\n{}\r\n0\r\n" + FORGED_TRAILERS + b"\r\n")
            await writer.drain()

    async with scripted(script) as (url, _):
        run = await make_proxy(upstream_url=url)
        for _ in range(2):  # the whole answer in one read, and on a reused connection
            answer = await exchange(run.main.port, request(method, path, body))
            head, _, rest = answer.partition(b"\r\n\r\n")
            assert status_of(answer) == 200 and b"{}" in rest, answer
            assert b"evil" not in answer and b"attacker" not in answer and b"text/html" not in answer


# -- 6. total head size ---------------------------------------------------------------------------------------

async def test_a_head_over_64_kib_is_431_and_not_forwarded(raw_upstream: RawRecord) -> None:
    """(6) 120 fields of 16 000 bytes (1.9 MB, each under the per-field limit): 431, nothing forwarded."""
    fields = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 16000) for i in range(120))
    with proxy_process(raw_upstream.url) as (main, admin):
        answer = await exchange(main, b"POST /api/v1/deals HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n", idle_s=5)
        assert status_of(answer) == 431, answer[:200]
        assert b"application/problem+json" in answer and b"aaaa" not in answer
        assert await metric(admin, 'stage_connections_dropped_total{listener="main",reason="head_too_large"}') == 1
        ok = await exchange(main, request("GET", "/x", headers={"X-Pad": "a" * 16000}))
        assert status_of(ok) == 200  # a large but bounded head still passes
    assert len(raw_upstream.heads) == 1 and raw_upstream.heads[0].startswith(b"GET /x ")


async def test_unfinished_huge_heads_keep_memory_flat(raw_upstream: RawRecord) -> None:
    """(6) 300 connections each sending 1 MB of never-finished head: refused one by one, RSS stays flat."""
    proc, main, admin = spawn_proxy(raw_upstream.url)
    try:
        await asyncio.to_thread(wait_for_port, admin)
        before = rss_kib(proc.pid)
        line = b"X-Pad: " + b"a" * 16000 + b"\r\n"

        async def flood() -> bool:
            reader, writer = await asyncio.open_connection("127.0.0.1", main)
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
                for _ in range(64):
                    writer.write(line)
                    await writer.drain()
            except ConnectionError:
                pass
            closed = await closed_within(reader, 20)
            writer.close()
            return closed

        results = []
        for start in range(0, 300, 50):
            results += await asyncio.gather(*(flood() for _ in range(start, start + 50)))
        after = rss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
    assert all(results)
    assert after - before < 100 * 1024, (before, after)  # was +1.1 GiB: each head stops at 64 KiB
    assert raw_upstream.heads == []


async def test_a_partial_head_behind_a_request_gets_the_header_timeout(raw_upstream: RawRecord) -> None:
    """(9) A complete request and half a second head in one write: closed after --header-timeout-s (1 s), not
    after the 60 s idle timeout."""
    with proxy_process(raw_upstream.url, "--header-timeout-s", "1") as (main, admin):
        reader, writer = await asyncio.open_connection("127.0.0.1", main)
        started = time.monotonic()
        writer.write(request("GET", "/x", close=False) + b"GET /y HTTP/1.1\r\nHost: x\r\n")
        assert await closed_within(reader, 20)
        assert time.monotonic() - started < 15
        writer.close()
        assert await metric(admin, 'stage_connections_dropped_total{listener="main",reason="header_timeout"}') == 1
        # A keep-alive connection that is merely idle is not the header timeout's: it outlives it.
        reader, writer = await asyncio.open_connection("127.0.0.1", main)
        writer.write(request("GET", "/x", close=False))
        await reader.readuntil(b"\r\n\r\n")
        assert not await closed_within(reader, 2.5)
        writer.close()
    assert [h.split(b" ")[1] for h in raw_upstream.heads] == [b"/x", b"/x"]


async def test_pipelined_requests_still_work(raw_upstream: RawRecord) -> None:
    """The heads parser follows pipelined requests with bodies: every one is answered, in order."""
    with proxy_process(raw_upstream.url, "--header-timeout-s", "1") as (main, admin):
        batch = b"".join(request("POST", f"/p{i}", b'{"n":%d}' % i, close=False) for i in range(20))
        answer = await exchange(main, batch + request("GET", "/last"), idle_s=3)
    assert answer.count(b"HTTP/1.1 200") == 21
    assert [h.split(b" ")[1] for h in raw_upstream.heads] == [b"/p%d" % i for i in range(20)] + [b"/last"]


# -- 7. interim answers ---------------------------------------------------------------------------------------

async def test_an_upstream_sending_only_interim_answers_gets_504(make_proxy: ProxyFactory) -> None:
    """(7) ``100 Continue`` every 0.2 s never resets the upstream timeout: 504 after it, not an endless wait."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_head(reader)
        for _ in range(200):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.2)  # a deliberately slow upstream: an interim answer every 0.2 s, never a final one

    async with scripted(script) as (url, _):
        run = await make_proxy(upstream_url=url, upstream_timeout_s=1.0)
        started = time.monotonic()
        answer = await exchange(run.main.port, request("GET", "/slow"), idle_s=15, total_s=30)
        assert status_of(answer) == 504, answer[:200]
        assert time.monotonic() - started < 10


async def test_one_interim_answer_then_the_final_one_is_relayed(make_proxy: ProxyFactory) -> None:
    """An interim answer followed by the final one within the timeout is the normal case: 200 relayed."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await asyncio.sleep(0.3)  # a deliberately slow upstream: the final answer comes 0.3 s after the interim one
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with scripted(script) as (url, _):
        run = await make_proxy(upstream_url=url, upstream_timeout_s=2.0)
        answer = await exchange(run.main.port, request("GET", "/x"))
        assert status_of(answer) == 200 and answer.endswith(b"ok")


# -- 9. answers never echo request bytes ------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    b"GET /x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cr3t-t0ken\x01\r\n\r\n",
    b"GET /x s3cr3t-t0ken HTTP/1.1\r\nHost: x\r\n\r\n",
    b"G\x00T /s3cr3t-t0ken HTTP/1.1\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: x\r\nX-Token: s3cr3t-t0ken" + b"a" * 20000 + b"\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: s3cr3t-t0ken\r\n\r\n",
])
async def test_a_malformed_request_is_answered_without_echoing_it(raw_upstream: RawRecord, bad: bytes) -> None:
    """(9) aiohttp's 400 repeated the bad line (a token included): now a problem+json naming only the kind."""
    with proxy_process(raw_upstream.url) as (main, admin):
        for port in (main, admin):
            answer = await exchange(port, bad)
            assert 400 <= status_of(answer) < 500, answer[:300]
            assert b"s3cr3t" not in answer and b"application/problem+json" in answer, answer[:400]
    assert raw_upstream.heads == []


# -- 9. alert label values are bounded ----------------------------------------------------------------------------

async def test_a_huge_alert_label_is_cut_everywhere(tmp_path: Path) -> None:
    """(9) A 2 MB alertname and fingerprint: the block, GET /_ops/mode, the history, the 409 and the log line
    each hold at most a few hundred characters of it."""
    async with recording_raw_upstream() as record:
        proc, main, admin = spawn_proxy(record.url)
        try:
            await asyncio.to_thread(wait_for_port, admin)
            huge = "A" * 2_000_000
            body = payload(alert({"alertname": huge, "stage_action": "block_enforce", "endpoint": "create_deal"},
                                 fingerprint="f" * 2_000_000))
            async with aiohttp.ClientSession() as http:
                base = f"http://127.0.0.1:{admin}"
                data = io.BytesIO(orjson.dumps(body))
                async with http.post(f"{base}/_ops/alertmanager", data=data, headers=AUTH) as r:
                    assert r.status == 200, await r.text()
                async with http.put(f"{base}/_ops/mode", headers=AUTH,
                                    json={"endpoint": "create_deal", "mode": "enforce", "reason": "x"}) as r:
                    refused = await r.read()
                    assert r.status == 409
                sizes = [len(refused)]
                for route in ("/_ops/mode", "/_ops/mode/history", "/_ops/blocks"):
                    async with http.get(base + route) as r:
                        sizes.append(len(await r.read()))
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=15)
    assert max(sizes) < 5000, sizes
    assert max(len(line) for line in out.splitlines()) < 5000
    assert b"A" * 300 not in out
