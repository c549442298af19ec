"""Forwarding: everything but validated endpoints passes through untouched (docs/proxy.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from proxy.app.server import Running
from tests.support.ports import free_port
from tests.support.proxies import ProxyFactory
from tests.support.upstreams import Upstream


async def raw_http(run: Running, request: bytes) -> bytes:
    """Send raw bytes on a fresh connection and read the whole answer."""
    reader, writer = await asyncio.open_connection(run.main.host, run.main.port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


async def test_pass_through_is_untouched(proxy: Running, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """Method, raw path, query string, headers and body arrive as sent; the answer comes back whole."""
    async with http.post(URL(f"{proxy.url}/other/a%2Fb%20c?x=%2F&y=1&y=2", encoded=True), data=b"\x00binary\xff",
                         headers={"X-Custom": "1", "Content-Type": "application/octet-stream",
                                  "X-Request-ID": "rid-1"}) as response:
        assert response.status == 200
        assert await response.read() == b"\x00binary\xff"
        assert response.headers["X-Request-ID"] == "rid-1"
        assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        assert "X-Stage-Validation" not in response.headers
    seen = upstream.last
    assert (seen.method, seen.path_qs, seen.body) == ("POST", "/other/a%2Fb%20c?x=%2F&y=1&y=2", b"\x00binary\xff")
    assert seen.headers["X-Custom"] == "1"
    assert seen.headers["X-Request-ID"] == "rid-1"
    assert seen.headers["Content-Type"] == "application/octet-stream"
    assert not {"User-Agent", "Accept", "Accept-Encoding"} & set(seen.headers)  # the proxy adds none of its own


async def test_hop_by_hop_headers_are_dropped(proxy: Running, upstream: Upstream,
                                             http: aiohttp.ClientSession) -> None:
    """Connection, Keep-Alive, TE, Upgrade and headers named by Connection never cross (RFC 9110 §7.6.1)."""
    headers = {"Connection": "keep-alive, X-Hop", "X-Hop": "secret", "Keep-Alive": "timeout=5", "TE": "trailers",
               "Proxy-Authorization": "Basic eA==", "Upgrade": "websocket", "X-End": "kept"}
    async with http.get(f"{proxy.url}/h", headers=headers) as response:
        assert response.status == 200
        assert "X-Secret-Hop" not in response.headers  # named by the upstream's Connection header
        assert response.headers["X-Upstream"] == "yes"
    seen = upstream.last.headers
    for name in ("X-Hop", "Keep-Alive", "TE", "Proxy-Authorization", "Upgrade"):
        assert name not in seen, name
    assert seen["X-End"] == "kept"


async def test_x_forwarded_headers(proxy: Running, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """X-Forwarded-For appends the peer; -Proto and -Host describe the client's request."""
    async with http.get(f"{proxy.url}/x", headers={"X-Forwarded-For": "203.0.113.9", "Host": "deals.example",
                                                   "X-Forwarded-Host": "spoofed"}):
        pass
    seen = upstream.last.headers
    assert seen["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen.getall("X-Forwarded-Host") == ["deals.example"]
    assert seen["Host"] == "deals.example"


async def test_request_id_generated_and_returned(proxy: Running, upstream: Upstream,
                                                 http: aiohttp.ClientSession) -> None:
    """Without X-Request-ID the proxy makes one, sends it upstream and returns it."""
    async with http.get(f"{proxy.url}/x") as response:
        rid = response.headers["X-Request-ID"]
    assert len(rid) == 32
    assert upstream.last.headers["X-Request-ID"] == rid


async def test_bad_request_ids_are_replaced(proxy: Running, upstream: Upstream) -> None:
    """Empty, 10 KB and non-ASCII request IDs are replaced by a generated one, never a crash."""
    for value in (b"", b"x" * 10_000, "é-ü".encode()):
        answer = await raw_http(proxy, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-Request-ID: " + value
                                + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        rid = upstream.last.headers["X-Request-ID"]
        assert len(rid) == 32 and rid.encode() != value


async def test_chunked_upload_is_streamed(proxy: Running, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """A chunked upload on a pass-through path reaches the upstream complete."""

    async def body() -> AsyncIterator[bytes]:
        for i in range(50):
            yield f"part-{i};".encode()

    async with http.post(f"{proxy.url}/upload", data=body()) as response:
        assert response.status == 200
    assert upstream.last.body == b"".join(f"part-{i};".encode() for i in range(50))


async def test_streamed_response(proxy: Running, http: aiohttp.ClientSession) -> None:
    """A chunked upstream response is relayed complete."""
    async with http.get(f"{proxy.url}/stream") as response:
        assert await response.read() == b"".join(f"chunk-{i};".encode() for i in range(5))


async def test_a_response_is_relayed_before_the_upstream_finishes(make_proxy: ProxyFactory,
                                                                   http: aiohttp.ClientSession) -> None:
    """Streamed, not buffered: the client holds the first chunk while the upstream still waits to send the
    rest (a buffering proxy would deadlock here, and the upstream would give up and finish first)."""
    release = asyncio.Event()
    finished_early = False

    async def slow(request: web.Request) -> web.StreamResponse:
        nonlocal finished_early
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first;")
        try:
            await asyncio.wait_for(release.wait(), 10)
        except TimeoutError:
            finished_early = True  # nobody saw the first chunk in time: the proxy held it back
        await response.write(b"rest")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        run = await make_proxy(upstream_url=f"http://127.0.0.1:{runner.addresses[0][1]}")
        async with http.get(f"{run.url}/slow") as response:
            first = await response.content.readexactly(6)
            release.set()
            rest = await response.read()
    finally:
        await runner.cleanup()
    assert (first, rest, finished_early) == (b"first;", b"rest", False)


async def test_ops_paths_are_not_forwarded(proxy: Running, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """/_ops/* on the main listener answers 404 problem+json and never reaches the upstream."""
    for path in ("/_ops/mode", "/_ops", "//_ops/mode", "/%5Fops/mode", "/_ops/healthz/"):
        async with http.put(URL(f"{proxy.url}{path}", encoded=True), json={"mode": "off"}) as response:
            assert response.status == 404, path
            assert response.content_type == "application/problem+json"
    assert upstream.seen == []


async def test_upstream_refused_is_502(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    """A refused upstream connection answers 502 problem+json with the request ID."""
    run = await make_proxy(upstream_url=f"http://127.0.0.1:{free_port()}")
    async with http.post(f"{run.url}/api/v1/deals", json={"stage": "lead"},
                         headers={"X-Request-ID": "r-502"}) as response:
        assert response.status == 502
        body = orjson.loads(await response.read())
        assert response.content_type == "application/problem+json"
    assert body["request_id"] == "r-502" and body["status"] == 502
    async with http.get(f"{run.admin_url}/metrics") as response:
        assert 'stage_upstream_errors_total{reason="refused"} 1.0' in await response.text()


async def test_upstream_timeout_is_504(make_proxy: ProxyFactory, upstream: Upstream,
                                       http: aiohttp.ClientSession) -> None:
    """An upstream slower than --upstream-timeout-s answers 504 problem+json."""
    run = await make_proxy(upstream_timeout_s=0.2)
    upstream.delay_s = 1.0
    async with http.get(f"{run.url}/slow", headers={"X-Request-ID": "r-504"}) as response:
        assert response.status == 504
        body = orjson.loads(await response.read())
    assert body["request_id"] == "r-504" and body["title"] == "Gateway Timeout"


async def test_keep_alive_pool_reuses_connections(proxy: Running, upstream: Upstream,
                                                  http: aiohttp.ClientSession) -> None:
    """Sequential requests, validated or not, reuse one pooled upstream connection."""
    for i in range(20):
        if i % 2:
            async with http.get(f"{proxy.url}/x") as response:
                await response.read()
        else:
            async with http.post(f"{proxy.url}/api/v1/deals", json={"stage": "lead"}) as response:
                await response.read()
    assert len(upstream.seen) == 20
    assert len({seen.peer for seen in upstream.seen}) == 1


async def test_expect_100_continue(proxy: Running, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """A client asking for 100-continue gets it from the proxy; the upstream gets the body without Expect."""
    for path in ("/api/v1/deals", "/other"):
        async with http.post(f"{proxy.url}{path}", data=b'{"stage": "lead"}', expect100=True,
                             headers={"Content-Type": "application/json"}) as response:
            assert response.status == 200
        assert upstream.last.body == b'{"stage": "lead"}'
        assert "Expect" not in upstream.last.headers


async def test_unsupported_expectation_is_417(proxy: Running, upstream: Upstream) -> None:
    """An Expect other than 100-continue is refused (RFC 9110 §10.1.1) and never reaches the upstream."""
    reader, writer = await asyncio.open_connection(proxy.main.host, proxy.main.port)
    writer.write(b"POST /other HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Length: 2\r\n\r\nhi")
    status_line = await reader.readline()
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 417")
    assert upstream.seen == []


async def test_head_and_empty_bodies(proxy: Running, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """HEAD and body-less DELETE pass through with the upstream's status."""
    async with http.head(f"{proxy.url}/x") as response:
        assert response.status == 200
    async with http.delete(f"{proxy.url}/api/v1/deals/3") as response:
        assert response.status == 200
    assert [s.method for s in upstream.seen] == ["HEAD", "DELETE"]
