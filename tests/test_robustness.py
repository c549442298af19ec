"""The proxy never answers 500 and never crashes, whatever clients send."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.app.server import Running, running
from proxy.app.wiring import PARTS
from tests.support.loops import ThreadedLoop
from tests.support.proxies import TOKEN, make_settings, set_mode
from tests.support.upstreams import Upstream, recording_upstream
from tests.support.waiting import until

JSON = "application/json"


async def test_client_disconnects_mid_body(proxy: Running, upstream: Upstream, http: aiohttp.ClientSession,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """A client vanishing halfway through its body is dropped quietly; the proxy keeps serving."""
    await set_mode(http, proxy, "*", "enforce")
    in_flight = proxy.app[PARTS].dataplane.in_flight  # the requests the data plane is handling
    for path in (b"/api/v1/deals", b"/elsewhere"):
        reader, writer = await asyncio.open_connection(proxy.main.host, proxy.main.port)
        writer.write(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b'{"stage": "lead", "pad": "' + b"x" * 100)
        await writer.drain()
        await until(lambda: len(in_flight) == 1, what=f"the proxy to be reading the body of {path!r}")
        writer.close()
        await until(lambda: not in_flight, what=f"the proxy to be done with the cut request to {path!r}")
    async with http.post(f"{proxy.url}/api/v1/deals", json={"stage": "lead"}) as response:
        assert response.status == 200
    # The test upstream (same process) sees the cut connection; the proxy itself must log no error.
    formatter = logging.Formatter()
    proxy_errors = [r for r in caplog.records if r.levelno >= logging.ERROR
                    and not (r.exc_info and "support/upstreams.py" in formatter.formatException(r.exc_info))]
    assert proxy_errors == []


class ThreadedProxy(ThreadedLoop):
    """A proxy + recording upstream on their own loop in a thread, modes set for the fuzz."""

    def __init__(self) -> None:
        super().__init__()
        self.run: Running | None = None

    async def serve(self, stop: asyncio.Event) -> None:
        async with recording_upstream() as state, running(make_settings(state.url, max_body_bytes=4096)) as run:
            self.run = run
            async with aiohttp.ClientSession() as session:
                await set_mode(session, run, "create_deal", "enforce")
                await set_mode(session, run, "update_deal", "warn")
                await set_mode(session, run, "import_deals", "enforce", 50)
            self.ready.set()
            await stop.wait()


@pytest.fixture(scope="module")
def threaded_proxy() -> Iterator[Running]:
    with ThreadedProxy() as threaded:
        assert threaded.run is not None
        yield threaded.run


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=300)
STAGE = st.one_of(st.sampled_from(["lead", "won", "Closed Won", "x"]), st.text(max_size=50), st.integers(),
                  st.none(), st.floats(allow_nan=False, allow_infinity=False))
JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
                       lambda inner: st.one_of(st.lists(inner, max_size=3),
                                               st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=8)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.binary(max_size=6000))
    if kind == 1:
        return json.dumps({"stage": draw(STAGE), "x": draw(JSONISH)}).encode()
    if kind == 2:
        deals = draw(st.lists(st.dictionaries(st.sampled_from(["stage", "n"]), STAGE), max_size=5))
        return json.dumps({"deals": deals}).encode()
    raw = json.dumps(draw(JSONISH)).encode()
    cut = draw(st.integers(0, len(raw)))
    return raw[:cut] + draw(st.binary(max_size=20)) if kind == 3 else raw


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["POST", "PATCH", "PUT", "GET", "DELETE"]),
       path=st.sampled_from(["/api/v1/deals", "/api/v1/deals/7", "/api/v1/deals/import", "/api/v1/deals/", "/x",
                             "/_ops/mode"]),
       body=bodies(),
       content_type=st.sampled_from([JSON, "application/json; charset=latin-1", "text/plain", "",
                                     "application/x+json"]),
       extra=st.dictionaries(st.sampled_from(["X-Request-ID", "Content-Encoding", "User-Agent", "X-Forwarded-For",
                                              "Connection", "Transfer-Encoding-Ish"]), HEADER_TEXT, max_size=4))
def test_random_requests_never_500(threaded_proxy: Running, method: str, path: str, body: bytes, content_type: str,
                                   extra: dict[str, str]) -> None:
    """Random bodies and headers: every answer is a normal status, never 500, and the proxy lives on."""
    conn = http.client.HTTPConnection(threaded_proxy.main.host, threaded_proxy.main.port, timeout=10)
    headers: dict[str, Any] = {"Content-Type": content_type, **{k: v.strip() for k, v in extra.items()}}
    headers.pop("Connection", None)
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    assert response.status < 500, (response.status, payload[:300])
    if response.status >= 400 and response.getheader("Content-Type") == "application/problem+json":
        problem = orjson.loads(payload)
        assert problem["status"] == response.status


def test_still_healthy_after_fuzzing(threaded_proxy: Running) -> None:
    """After the random traffic the proxy still serves and its admin plane answers."""
    conn = http.client.HTTPConnection(threaded_proxy.admin.host, threaded_proxy.admin.port, timeout=5)
    conn.request("GET", "/_ops/mode", headers={"Authorization": f"Bearer {TOKEN}"})
    assert conn.getresponse().status == 200
    conn.close()
