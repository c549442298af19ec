"""RFC 9457 problem details: the one way the proxy says no."""

from __future__ import annotations

from typing import Final

import orjson
from aiohttp import web

PROBLEM_JSON: Final = "application/problem+json"


def problem(status: int, slug: str, title: str, detail: str, *, request_id: str | None = None,
            headers: dict[str, str] | None = None, **extra: object) -> web.Response:
    """A problem+json response; ``extra`` members are added as-is (RFC 9457 §3.2)."""
    body: dict[str, object] = {"type": f"urn:stagegate:problem:{slug}", "title": title, "status": status,
                               "detail": detail}
    if request_id is not None:
        body["request_id"] = request_id
    body.update(extra)
    response = web.Response(status=status, body=orjson.dumps(body) + b"\n", headers=headers)
    response.content_type = PROBLEM_JSON
    return response
