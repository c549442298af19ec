"""A recording upstream: a real aiohttp server that keeps every request it received."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDictProxy

from proxy.dataplane.forwarding import HEALTH_AGENT


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    path_qs: str
    headers: CIMultiDictProxy[str]
    body: bytes
    peer: tuple[str, int] | None = None  # the proxy's side of the TCP connection: one per upstream connection


@dataclass
class Upstream:
    """A recording upstream (real aiohttp server); ``delay_s`` slows every answer."""

    url: str
    seen: list[Seen] = field(default_factory=list)
    delay_s: float = 0.0

    @property
    def last(self) -> Seen:
        return self.seen[-1]


def _upstream_app(state: Upstream) -> web.Application:
    async def record(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if request.headers.get("User-Agent") == HEALTH_AGENT:  # the proxy's own check (readyz, start-up)
            return web.Response(text="ok")
        state.seen.append(Seen(request.method, request.raw_path, request.headers, body,
                               tuple(peer[:2]) if peer else None))
        if state.delay_s:
            await asyncio.sleep(state.delay_s)  # a slow upstream, when a test asks for one
        if request.path == "/stream":
            response = web.StreamResponse(headers={"X-Upstream": "yes"})
            await response.prepare(request)
            for i in range(5):
                await response.write(f"chunk-{i};".encode())
            await response.write_eof()
            return response
        headers = {"X-Upstream": "yes", "Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1"}
        response = web.Response(body=body or b"{}", headers=headers, content_type="application/json")
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", record)
    return app


@asynccontextmanager
async def recording_upstream() -> AsyncIterator[Upstream]:
    """A recording upstream on a free loopback port, stopped on exit."""
    state = Upstream(url="")
    runner = web.AppRunner(_upstream_app(state), access_log=None, shutdown_timeout=2.0)  # slow handlers cut short
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        state.url = f"http://{host}:{port}"
        yield state
    finally:
        await runner.cleanup()
