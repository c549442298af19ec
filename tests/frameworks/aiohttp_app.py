"""The deals API as an aiohttp service would write it: ``await request.json()``, ``{id}`` routes for PATCH and PUT.
Answers {"app":"aiohttp","handler":...,"stages":[...]}: what it would store. Used by tests/test_differential.py;
run: python aiohttp_app.py PORT"""

from __future__ import annotations

import sys
from typing import Any

from aiohttp import web


def answer(handler: str, deals: list[Any]) -> web.Response:
    stages = [deal["stage"] for deal in deals if isinstance(deal, dict) and "stage" in deal]
    return web.json_response({"app": "aiohttp", "handler": handler, "stages": stages})


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def create(request: web.Request) -> web.Response:
    return answer("create", [await request.json()])


async def import_deals(request: web.Request) -> web.Response:
    body = await request.json()
    return answer("import", body.get("deals", []) if isinstance(body, dict) else [])


async def update(request: web.Request) -> web.Response:
    return answer("update", [await request.json()])


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", health)
    app.router.add_post("/api/v1/deals", create)
    app.router.add_post("/api/v1/deals/import", import_deals)
    app.router.add_patch("/api/v1/deals/{id}", update)
    app.router.add_put("/api/v1/deals/{id}", update)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=int(sys.argv[1]), print=None)
