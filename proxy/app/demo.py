"""An embedded stand-in for the legacy deal service, for ``--demo`` and tests.

It accepts anything (free-text stages included, as the legacy service does) and
echoes what it received, so the proxy's effect is visible with curl.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
from aiohttp import web


def _echo(request: web.Request, received: bytes, status: int = 200) -> web.Response:
    try:
        parsed: Any = orjson.loads(received) if received else None
    except orjson.JSONDecodeError:
        parsed = {"unparsed": received[:1000].decode("utf-8", "replace")}
    payload = {
        "service": "legacy-demo",
        "method": request.method,
        "path": request.path_qs,
        "request_id": request.headers.get("X-Request-ID"),
        "received": parsed,
        "raw": received[:4000].decode("utf-8", "replace"),
    }
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


def create_demo_app() -> web.Application:
    """The legacy service: three deal endpoints plus a couple of ordinary routes."""
    ids = itertools.count(1)

    async def create(request: web.Request) -> web.Response:
        response = _echo(request, await request.read(), 201)
        response.headers["Location"] = f"/api/v1/deals/{next(ids)}"
        return response

    async def echo(request: web.Request) -> web.Response:
        return _echo(request, await request.read())

    async def list_deals(request: web.Request) -> web.Response:
        deals = [{"id": 1, "name": "Acme renewal", "stage": "Closed Won"}, {"id": 2, "name": "Globex", "stage": "lead"}]
        return web.json_response({"deals": deals})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/api/v1/deals", create)
    app.router.add_post("/api/v1/deals/import", echo)
    app.router.add_patch("/api/v1/deals/{id}", echo)
    app.router.add_get("/api/v1/deals", list_deals)
    app.router.add_get("/", health)
    app.router.add_get("/health", health)
    return app
