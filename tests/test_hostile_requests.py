"""Hostile clients against a proxy in enforce, the way they were found: raw sockets, a recording upstream.

Every test asserts what the upstream did *not* receive, not only what the client was told.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
import pytest
from aiohttp import web

from proxy.app.demo import create_demo_app
from proxy.app.server import Running
from tests.support.proxies import ProxyFactory, set_mode
from tests.support.raw import exchange, request
from tests.support.scripted import RawRecord, recording_raw_upstream

BANANA = b'{"stage":"banana"}'
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawRecord]:
    async with recording_raw_upstream() as record:
        yield record


@pytest.fixture
async def guarded(make_proxy: ProxyFactory, raw_upstream: RawRecord, http: aiohttp.ClientSession) -> Running:
    """A proxy in enforce on every endpoint, in front of the byte-recording upstream."""
    run = await make_proxy(upstream_url=raw_upstream.url)
    await set_mode(http, run, "*", "enforce")
    return run


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/api/v1/./deals"), ("POST", "/api/v1/x/../deals"), ("POST", "/api/v1/%2e/deals"),
    ("POST", "/API/v1/Deals"), ("POST", "//api/v1//deals/"), ("POST", "/api/v1/%64eals"),
    ("POST", "/api/v1/deals/../deals"), ("PATCH", "/api/v1/deals/5/."), ("PATCH", "/API/V1/DEALS/5"),
])
async def test_spellings_of_a_validated_path_are_validated(guarded: Running, raw_upstream: RawRecord, method: str,
                                                          path: str) -> None:
    """(1) Dot segments, escapes, slashes and case reach validation: banana is refused and never forwarded."""
    answer = await exchange(guarded.main.port, request(method, path, BANANA))
    assert status_of(answer) == 422, answer[:200]
    assert b"banana" not in raw_upstream.everything


async def test_a_validated_path_is_forwarded_normalized(guarded: Running, raw_upstream: RawRecord) -> None:
    """What was validated is what the upstream routes: the normalized path, the rewritten alias."""
    answer = await exchange(guarded.main.port, request("POST", "/API/v1/./Deals/?x=%2F1", b'{"stage":"won"}'))
    assert status_of(answer) == 200
    assert raw_upstream.heads[-1].startswith(b"POST /api/v1/deals?x=%2F1 HTTP/1.1\r\n")
    assert raw_upstream.everything.endswith(b'{"stage":"closed_won"}')


@pytest.mark.parametrize("path", ["/api/v1/deals/5%2Fx", "/api/v1/deals/5%2fx", "/api/v1/deals/a%5Cb",
                                  "/api/v1/deals/%00", "/api/v1/deals/a%25b", "/api/v1%2Fdeals/5"])
async def test_ambiguous_encodings_in_a_validated_path_are_refused(guarded: Running, raw_upstream: RawRecord,
                                                                  path: str) -> None:
    """(2) An encoded / \\ NUL or % in a validated path: 400 unreadable in enforce, nothing forwarded."""
    answer = await exchange(guarded.main.port, request("PATCH", path, b'{"stage":"lead"}'))
    assert status_of(answer) == 400, answer[:300]
    problem = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert problem["reason"] == "ambiguous_path" and problem["endpoint"] == "update_deal"
    assert raw_upstream.heads == []


async def test_ambiguous_path_in_warn_is_forwarded_and_counted_unreadable(make_proxy: ProxyFactory,
                                                                         raw_upstream: RawRecord,
                                                                         http: aiohttp.ClientSession) -> None:
    """In warn the same request is forwarded, counted ``unreadable``, and says so in its header."""
    run = await make_proxy(upstream_url=raw_upstream.url)
    await set_mode(http, run, "*", "warn")
    answer = await exchange(run.main.port, request("PATCH", "/api/v1/deals/5%2Fx", b'{"stage":"lead"}'))
    assert status_of(answer) == 200 and b"X-Stage-Validation: mode=warn; result=unreadable" in answer
    async with http.get(f"{run.admin_url}/metrics") as response:
        metrics = await response.text()
    assert 'stage_validation_total{endpoint="update_deal",mode="warn",result="unreadable"} 1.0' in metrics


async def test_the_demo_upstream_never_stores_an_encoded_slash_update(make_proxy: ProxyFactory,
                                                                     http: aiohttp.ClientSession) -> None:
    """(2) As reproduced: the project's own demo upstream routes 5%2Fx to its update handler; it never gets it."""
    seen: list[str] = []
    demo = create_demo_app()

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen.append(request.raw_path)
        return await handler(request)

    demo.middlewares.append(record)
    runner = web.AppRunner(demo, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        run = await make_proxy(upstream_url=f"http://127.0.0.1:{port}")
        await set_mode(http, run, "*", "enforce")
        answer = await exchange(run.main.port, request("PATCH", "/api/v1/deals/5%2Fx", BANANA))
        assert status_of(answer) == 400 and seen == []
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"])
async def test_method_override_is_validated_as_the_method_it_names(guarded: Running, raw_upstream: RawRecord,
                                                                  header: str) -> None:
    """(3) POST /api/v1/deals/5 with an override to PATCH is validated as update_deal."""
    answer = await exchange(guarded.main.port, request("POST", "/api/v1/deals/5", BANANA, headers={header: "patch"}))
    assert status_of(answer) == 422 and b"update_deal" in answer
    assert b"banana" not in raw_upstream.everything
    answer = await exchange(guarded.main.port, request("POST", "/api/v1/deals/5", b'{"stage":"WON"}',
                                                       headers={header: "PATCH"}))
    assert status_of(answer) == 200
    assert f"{header}: PATCH".encode() in raw_upstream.heads[-1]  # forwarded as sent: the upstream honours it
    assert raw_upstream.everything.endswith(b'{"stage":"closed_won"}')


async def test_conflicting_method_overrides_are_ambiguous(guarded: Running, raw_upstream: RawRecord) -> None:
    """Two overrides naming different methods: routers disagree, so it is never validated as one of them."""
    headers = {"X-HTTP-Method-Override": "PATCH", "X-HTTP-Method": "DELETE"}
    answer = await exchange(guarded.main.port, request("POST", "/api/v1/deals/5", b'{"stage":"lead"}',
                                                       headers=headers))
    assert status_of(answer) == 400 and b"ambiguous_method" in answer
    assert raw_upstream.heads == []


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/deals", b'{"stage":"lead","Stage":"banana"}'),
    ("/api/v1/deals", b'{"Stage":"banana","stage":"lead"}'),
    ("/api/v1/deals", b'{"stage":"lead","STAGE":"banana"}'),
    ("/api/v1/deals", b'{"stage":"lead","St\\u0061ge":"banana"}'),
    ("/api/v1/deals/5", b'{"Stage":"banana"}'),
    ("/api/v1/deals/import", b'{"deals":[{"stage":"lead","sTage":"banana"}]}'),
])
async def test_case_variant_keys_are_ambiguous(guarded: Running, raw_upstream: RawRecord, path: str,
                                              body: bytes) -> None:
    """(4) A key equal to the stage field but for ASCII case (Go's encoding/json reads it): 400, not forwarded."""
    method = "PATCH" if path.endswith("/5") else "POST"
    answer = await exchange(guarded.main.port, request(method, path, body))
    assert status_of(answer) == 400 and b"ambiguous_key" in answer
    assert b"banana" not in raw_upstream.everything


@pytest.mark.parametrize("path", ["/_ops/mode", "/./_ops/mode", "/%5Fops/mode", "/_OPS/mode", "//_ops/mode",
                                  "/x/../_ops/mode", "/_ops%2Fmode", "/%5fops", "/_ops/"])
async def test_ops_is_never_forwarded_in_any_spelling(guarded: Running, raw_upstream: RawRecord, path: str) -> None:
    """(5) /_ops on the main listener is a 404 however it is spelt; the upstream sees nothing."""
    for method in ("GET", "PUT"):
        answer = await exchange(guarded.main.port, request(method, path, b'{"endpoint":"*","mode":"off"}'))
        assert status_of(answer) == 404
    assert raw_upstream.heads == []


async def test_connect_is_refused_and_nothing_is_smuggled(guarded: Running, raw_upstream: RawRecord) -> None:
    """(6) CONNECT with a Content-Length and a request hidden behind it: 405, connection closed, nothing forwarded."""
    smuggled = request("POST", "/api/v1/deals", BANANA)
    connect = (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nContent-Length: %d\r\n\r\n"
               % len(smuggled)) + smuggled
    answer = await exchange(guarded.main.port, connect, idle_s=2.0)
    assert status_of(answer) == 405 and b"Connection: close" in answer
    assert answer.count(b"HTTP/1.1 ") == 1  # the smuggled bytes were not read as a second request
    await exchange(guarded.main.port, request("GET", "/health"))  # the pool's connection, if any, is clean
    assert b"CONNECT" not in raw_upstream.everything and b"banana" not in raw_upstream.everything


async def test_big_integers_are_valid_json(guarded: Running, raw_upstream: RawRecord) -> None:
    """(14) Integers of any length are accepted, and kept byte for byte through an alias rewrite."""
    digits = b"9" * 5000
    answer = await exchange(guarded.main.port, request("POST", "/api/v1/deals",
                                                       b'{"stage":"won","amount":' + digits + b"}"))
    assert status_of(answer) == 200
    assert raw_upstream.everything.endswith(b'{"stage":"closed_won","amount":' + digits + b"}")
    answer = await exchange(guarded.main.port, request("POST", "/api/v1/deals", b'{"stage":' + digits + b"}"))
    assert status_of(answer) == 422 and b'"value":"<number>"' in answer


async def test_malformed_requests_are_logged_quietly(guarded: Running, caplog: pytest.LogCaptureFixture) -> None:
    """(16) Bad framing is a 400 with no traceback in the log, and a burst is capped by the flood guard."""
    caplog.set_level(logging.INFO)
    bad = [b"POST /api/v1/deals HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
           b"POST /api/v1/deals HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
           b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"]
    answers = await asyncio.gather(*(exchange(guarded.main.port, bad[i % 3], idle_s=0.5) for i in range(150)))
    assert all(status_of(answer) == 400 for answer in answers)
    assert not any(record.exc_info for record in caplog.records)
    quiet = [r for r in caplog.records if getattr(r, "event", None) == "client_bad_request"]
    assert 1 <= len(quiet) <= 60 and all(r.levelno == logging.WARNING for r in quiet)
