"""Whatever the upstream answers - valid, odd, truncated or garbage - the proxy answers sanely and lives on.

A scripted upstream (a real asyncio TCP server) replies to each request with bytes hypothesis chose, then
closes. The proxy must relay a well-formed answer, say 502/504 in problem+json, or (when the upstream's
body broke off after its head went out) cut the connection - never a 500, never a hang.
"""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.app.server import Running, running
from tests.support.loops import ThreadedLoop
from tests.support.proxies import make_settings

STATUSES = [200, 201, 204, 301, 304, 404, 418, 503]
TOKEN_CHARS = st.sampled_from("abcdefghijklmnopqrstuvwxyz-ABCXYZ0123456789")


class ScriptedUpstream(ThreadedLoop):
    """The proxy and a scripted upstream that answers every request with ``reply``, then closes."""

    def __init__(self) -> None:
        super().__init__()
        self.reply = b""
        self.run: Running | None = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":", 1)[1]))
            writer.write(self.reply)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def serve(self, stop: asyncio.Event) -> None:
        server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with running(make_settings(f"http://127.0.0.1:{port}", upstream_timeout_s=1.0)) as run:
            self.run = run
            self.ready.set()
            await stop.wait()
        server.close()


@pytest.fixture(scope="module")
def scripted_upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as upstream:
        yield upstream


@st.composite
def replies(draw: st.DrawFn) -> bytes:
    """An upstream answer: mostly HTTP-shaped with wrong or odd framing, sometimes noise."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=300))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"HTTX/1.1", b""]))
    status = draw(st.sampled_from(STATUSES))
    reason = draw(st.sampled_from([b"OK", b"", b"Some Reason", b"\xe9t\xe9"]))
    lines = [version + b" " + str(status).encode() + (b" " + reason if reason else b"")]
    if draw(st.booleans()):
        lines.insert(0, b"HTTP/1.1 100 Continue\r\n")
    body = draw(st.binary(max_size=2000))
    framing = draw(st.sampled_from(["length", "short", "long", "chunked", "bad-chunked", "none", "both", "junk"]))
    if framing in ("length", "short", "long"):
        declared = len(body) + {"length": 0, "short": -1, "long": 7}[framing]
        lines.append(b"Content-Length: " + str(max(declared, 0)).encode())
    elif framing in ("chunked", "bad-chunked", "both"):
        lines.append(b"Transfer-Encoding: chunked")
        if framing == "both":
            lines.append(b"Content-Length: 3")
        body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        if framing == "bad-chunked":
            body = body.replace(b"\r\n", b"\n", 1)
    elif framing == "junk":
        lines.append(b"Content-Length: " + draw(st.sampled_from([b"-1", b"abc", b"1,2", b"99999999999999999999"])))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.text(TOKEN_CHARS, min_size=1, max_size=12)).encode()
        lines.append(name + b": " + draw(st.binary(max_size=40)).replace(b"\r", b"").replace(b"\n", b""))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reply=replies(), validated=st.booleans())
def test_any_upstream_answer_is_handled(scripted_upstream: ScriptedUpstream, reply: bytes, validated: bool) -> None:
    """Relayed, or 502/504 problem+json, or a cut connection after the head: never 500, never a hang."""
    scripted_upstream.reply = reply
    run = scripted_upstream.run
    assert run is not None
    conn = http.client.HTTPConnection(run.main.host, run.main.port, timeout=15)
    try:
        if validated:
            conn.request("POST", "/api/v1/deals", body=b'{"stage": "lead"}',
                         headers={"Content-Type": "application/json"})
        else:
            conn.request("GET", "/anything")
        response = conn.getresponse()
        try:
            payload = response.read()
        except (http.client.IncompleteRead, ConnectionError):
            return  # the upstream's body broke off after the head was relayed: the client sees the cut
    except http.client.RemoteDisconnected:
        return
    finally:
        conn.close()
    assert response.status in STATUSES or response.status in (502, 504), (response.status, reply[:200])
    if response.status in (502, 504):
        assert response.getheader("Content-Type") == "application/problem+json", reply[:200]
        assert orjson.loads(payload)["status"] == response.status


def test_still_serving_after_the_fuzz(scripted_upstream: ScriptedUpstream) -> None:
    """After every kind of broken upstream answer, a good one is relayed as usual."""
    scripted_upstream.reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    run = scripted_upstream.run
    assert run is not None
    conn = http.client.HTTPConnection(run.main.host, run.main.port, timeout=10)
    conn.request("GET", "/after")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"ok")
    conn.close()
