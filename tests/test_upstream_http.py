"""The upstream client (proxy.upstream_http) against real, deliberately awkward servers.

Each scripted upstream is a real asyncio TCP server on a loopback port that
answers with exactly the bytes a test needs: idle connections closed under the
proxy, interim 100 answers, bodies delimited by the connection's end, garbage,
stalls, early answers, TLS.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import uvloop
from aiohttp import web

from tests.support.proxies import ProxyFactory
from tests.support.scripted import read_head, read_request, scripted
from tests.support.waiting import until

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


async def test_idle_connection_closed_by_upstream_is_retried_when_replayable(
        make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    """A reused connection dropped unanswered: retried once if replayable (Go's rule), else 502 and never resent."""
    heads: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        head, _ = await read_request(reader)
        heads.append(head)
        writer.write(OK)  # keep-alive by HTTP/1.1 default...
        await writer.drain()
        heads.append(await read_head(reader))  # ...but the next request on this connection is dropped unanswered
        writer.transport.abort()

    cases = [("GET", None, {}, 200), ("POST", b'{"stage":"lead"}', {}, 502),
             ("POST", b'{"stage":"lead"}', {"Idempotency-Key": "k1"}, 200), ("DELETE", None, {}, 200)]
    async with scripted(script) as (url, _):
        run = await make_proxy(upstream_url=url)
        for number, (method, body, headers, expected) in enumerate(cases):
            async with http.get(f"{run.url}/warm") as response:
                assert response.status == 200  # a connection that answered once is now idle in the pool
            request_id = f"case-{number}-{method}"
            async with http.request(method, f"{run.url}/api/v1/deals", data=body,
                                    headers={**headers, "X-Request-ID": request_id,
                                             "Content-Type": "application/json"}) as response:
                assert response.status == expected, (method, headers)
                if expected == 502:
                    assert (await response.json())["type"].endswith("upstream-reset")
            sent = sum(1 for head in heads if request_id.encode() in head)
            assert sent == (1 if expected == 502 else 2), (method, headers, sent)


async def test_interim_100_answers_are_skipped(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    """An upstream that sends 100 Continue (and a 103) before its answer: the client sees only the 200."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await read_request(reader) != (b"", b""):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK)
            await writer.drain()

    async with scripted(script) as (url, _):
        run = await make_proxy(upstream_url=url)
        for _ in range(2):
            async with http.post(f"{run.url}/x", data=b"hello") as response:
                assert (response.status, await response.read()) == (200, b"ok")
                assert "Link" not in response.headers


async def test_body_delimited_by_close_is_relayed_whole(make_proxy: ProxyFactory,
                                                        http: aiohttp.ClientSession) -> None:
    """No Content-Length, no chunking: the body runs to the upstream's close and arrives complete."""
    payload = os.urandom(300_000)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        for i in range(0, len(payload), 50_000):
            writer.write(payload[i:i + 50_000])
            await writer.drain()
        writer.close()

    async with scripted(script) as (url, connections):
        run = await make_proxy(upstream_url=url)
        for _ in range(2):
            async with http.get(f"{run.url}/eof") as response:
                assert response.status == 200
                assert hashlib.sha256(await response.read()).digest() == hashlib.sha256(payload).digest()
        assert len(connections) == 2  # such a connection is never reused


async def test_invalid_response_is_502(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    """Garbage instead of HTTP: 502 problem+json naming an invalid response; the next request works."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n" if n == 0 else OK)
        await writer.drain()

    async with scripted(script) as (url, _):
        run = await make_proxy(upstream_url=url)
        async with http.get(f"{run.url}/x") as response:
            assert response.status == 502
            assert response.content_type == "application/problem+json"
            assert "invalid response" in (await response.json())["detail"]
        async with http.get(f"{run.url}/x") as response:
            assert response.status == 200


async def test_stall_after_headers_truncates_and_stall_before_is_504(make_proxy: ProxyFactory,
                                                                     http: aiohttp.ClientSession) -> None:
    """Read timeout: silence before the head is a 504; silence mid-body cuts the client's connection."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        head, _ = await read_request(reader)
        if b"/mid" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 70_000)
            await writer.drain()
        await asyncio.sleep(5)  # a stalled upstream, on purpose: silent far past the proxy's 0.5 s timeout

    async with scripted(script) as (url, _):
        run = await make_proxy(upstream_url=url, upstream_timeout_s=0.5)
        async with http.get(f"{run.url}/before") as response:
            assert response.status == 504
            assert (await response.json())["type"].endswith("upstream-timeout")
        async with http.get(f"{run.url}/mid") as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()


async def test_a_reused_connection_times_out_on_its_own_clock(make_proxy: ProxyFactory,
                                                               http: aiohttp.ClientSession) -> None:
    """The read timer outlives an exchange to serve the connection's next one: a request answered at once, then,
    on the same connection 1.2 s later, one the upstream never answers is a 504 after its own 2 s — not when the
    first exchange's timer fires (0.8 s in) — and a quick answer after it is relayed whole."""
    connections: list[int] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        connections.append(n)
        while True:
            head, _ = await read_request(reader)
            if b"/stall" in head:
                await asyncio.sleep(10)  # silent, on purpose, far past the proxy's 2 s
                return
            writer.write(OK)
            await writer.drain()

    async with scripted(script) as (url, _):
        run = await make_proxy(upstream_url=url, upstream_timeout_s=2.0)
        async with http.get(f"{run.url}/quick") as response:
            assert response.status == 200
        await asyncio.sleep(1.2)
        started = asyncio.get_running_loop().time()
        async with http.get(f"{run.url}/stall") as response:
            waited = asyncio.get_running_loop().time() - started
            assert response.status == 504
        assert 1.9 <= waited < 10, waited
        assert connections == [0]  # the stalled request went on the connection the first one left idle
        async with http.get(f"{run.url}/quick") as response:
            assert response.status == 200 and await response.read() == b"ok"


async def test_early_answer_to_a_streamed_upload_is_relayed(make_proxy: ProxyFactory,
                                                            http: aiohttp.ClientSession) -> None:
    """The upstream answers 413 after the head, without reading a large streamed body: the client gets the 413."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig")
        await writer.drain()
        await asyncio.sleep(0.5)  # on purpose: lingers without reading the body (as such servers do), then closes

    async def body() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"y" * 65536
            await asyncio.sleep(0.005)  # a deliberately slow upload: still streaming when the answer comes

    async with scripted(script) as (url, _):
        run = await make_proxy(upstream_url=url)
        async with http.post(f"{run.url}/upload", data=body()) as response:
            assert (response.status, await response.read()) == (413, b"big")


async def test_large_response_is_streamed_with_back_pressure(make_proxy: ProxyFactory,
                                                             http: aiohttp.ClientSession) -> None:
    """20 MB chunked to a client that stops reading: the upstream is stopped too (its writes block once the
    proxy's and the sockets' buffers are full), then everything arrives intact when the client reads again."""
    block = os.urandom(1 << 20)
    written = 0
    handling: list[web.Request] = []

    async def big(request: web.Request) -> web.StreamResponse:
        nonlocal written
        handling.append(request)
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(20):
            await response.write(block)  # waits while the proxy does not read
            written += len(block)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/big", big)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        run = await make_proxy(upstream_url=f"http://127.0.0.1:{runner.addresses[0][1]}")
        digest = hashlib.sha256()
        size = 0

        async def blocked_throughout(round_trips: int) -> bool:
            """The upstream's write waits (its transport paused) and ``written`` stays put while the proxy answers
            ``round_trips`` admin requests: turns of the loop this upstream and the proxy share."""
            before = written
            for _ in range(round_trips):
                async with http.get(f"{run.admin_url}/_ops/healthz") as answer:
                    await answer.read()
                if written != before or not handling[0].protocol.writing_paused:
                    return False
            return True

        async with http.get(f"{run.url}/big") as response:
            first = await response.content.readexactly(1 << 20)
            digest.update(first)
            size += len(first)
            # the client stops reading: once the buffers on the way are full the upstream's writes block
            await until(lambda: blocked_throughout(5), what="the upstream's writes to block")
            paused_at = written
            assert await blocked_throughout(50), "the upstream kept writing while nobody read"
            assert written == paused_at
            assert written < 16 << 20, written  # held back, far from all 20 MB (loopback buffers are a few MB)
            async for chunk in response.content.iter_chunked(256 * 1024):
                digest.update(chunk)
                size += len(chunk)
        assert size == 20 << 20 and written == 20 << 20
        assert digest.digest() == hashlib.sha256(block * 20).digest()
    finally:
        await runner.cleanup()


async def test_head_then_get_on_the_same_pool(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    """HEAD answers carry a Content-Length but no body; the following requests are not confused by it."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            head, _ = await read_request(reader)
            if not head:
                return
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
            else:
                writer.write(OK)
            await writer.drain()

    async with scripted(script) as (url, _):
        run = await make_proxy(upstream_url=url)
        for _ in range(3):
            async with http.head(f"{run.url}/h") as response:
                assert (response.status, response.headers["Content-Length"]) == (200, "1234")
            async with http.get(f"{run.url}/g") as response:
                assert (response.status, await response.read()) == (200, b"ok")


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (openssl CLI)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


async def test_https_upstream_is_verified(make_proxy: ProxyFactory, http: aiohttp.ClientSession,
                                          tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """An https upstream works when its certificate is trusted, and is a 502 when it is not."""
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while (await read_request(reader))[0]:
            writer.write(OK)
            await writer.drain()

    async with scripted(script, context) as (url, _):
        untrusted = await make_proxy(upstream_url=url)
        async with http.get(f"{untrusted.url}/x") as response:
            assert response.status == 502
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # read when the proxy builds its TLS context
        trusted = await make_proxy(upstream_url=url)
        async with http.get(f"{trusted.url}/x") as response:
            assert (response.status, await response.read()) == (200, b"ok")


async def test_suite_runs_on_the_production_loop() -> None:
    """The in-process tests exercise uvloop, as the proxy runs (its transports differ from asyncio's)."""
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


async def test_no_content_type_is_invented(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    """An upstream answer without Content-Type is relayed without one (small and streamed); a stated one is kept."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while head := (await read_request(reader))[0]:
            if b"/typed" in head:
                writer.write(OK)
            elif b"/small" in head:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            await writer.drain()

    async with scripted(script) as (url, _):
        run = await make_proxy(upstream_url=url)
        for path in ("/small", "/streamed"):
            async with http.get(f"{run.url}{path}") as response:
                assert (response.status, await response.read()) == (200, b"hello")
                assert "Content-Type" not in response.headers, path
                assert "Date" in response.headers  # RFC 9110 §6.6.1: a forwarding recipient adds a missing Date
        async with http.get(f"{run.url}/typed") as response:
            assert response.headers["Content-Type"] == "text/plain"
