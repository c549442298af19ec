"""The floor of our stack: a bare aiohttp pass-through proxy (uvloop, one ClientSession, buffered bodies).

Kept in the harness so stagegate is compared with the naive version of itself.
Run: python bench/bare_proxy.py LISTEN_PORT UPSTREAM_URL
"""

from __future__ import annotations

import sys

import aiohttp
import uvloop
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length", "host"}


def create_app(upstream: str) -> web.Application:
    app = web.Application()
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[session_key] = aiohttp.ClientSession(auto_decompress=False)
        yield
        await app[session_key].close()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with app[session_key].request(request.method, upstream + request.path_qs, headers=headers,
                                            data=body) as response:
            payload = await response.read()
            out = {k: v for k, v in response.headers.items() if k.lower() not in HOP}
            return web.Response(status=response.status, body=payload, headers=out)

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


if __name__ == "__main__":
    uvloop.install()
    web.run_app(create_app(sys.argv[2].rstrip("/")), host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
                print=None)
