"""The proxy's ``_ops`` API as the tools use it: one call, its errors as one line and a meaningful exit code."""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import orjson

from proxy.shared.secrets import mask_url
from tools.shared.errors import (
    EXIT_AUTH,
    EXIT_BLOCKED,
    EXIT_FAILED,
    EXIT_STORE,
    EXIT_USAGE,
    CommandError,
    network_reason,
)

STATUS_EXIT: Final = {400: EXIT_USAGE, 401: EXIT_AUTH, 403: EXIT_AUTH, 404: EXIT_USAGE, 409: EXIT_BLOCKED,
                      503: EXIT_STORE}
DEFAULT_ADMIN_URL: Final = "http://127.0.0.1:9901"


def admin_url(given: str | None) -> str:
    """The admin URL given (--admin-url or $STAGE_ADMIN_URL), else the default listener; checked."""
    return check_url((given or DEFAULT_ADMIN_URL).rstrip("/"))


def ops_token(token: str | None, what: str, code: int = EXIT_AUTH) -> str:
    """The ops token ($STAGE_OPS_TOKEN), or a CommandError (exit ``code``) saying which command needs it."""
    if not token:
        raise CommandError(f"STAGE_OPS_TOKEN is not set: {what} needs the ops bearer token", code)
    return token


def session(timeout_s: float) -> aiohttp.ClientSession:
    """A client session for the admin listener; an invalid URL later surfaces from call() as one line."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))


def check_url(url: str) -> str:
    """The admin URL if it is http(s) with a host, else a usage error (never with its credentials)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CommandError(f"--admin-url must be an http:// or https:// URL, got {mask_url(url)!r}", EXIT_USAGE)
    return url


async def call(session: aiohttp.ClientSession, method: str, url: str, body: dict[str, Any] | None = None,
               token: str | None = None) -> dict[str, Any]:
    """One request to the admin listener; the JSON object it answered, or a CommandError."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with session.request(method, url, json=body, headers=headers) as response:
            raw = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        raise CommandError(f"cannot reach {mask_url(url)}: {network_reason(exc)}") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise CommandError(f"{url} answered {status} with a body that is not JSON") from None
    if status >= 400:
        detail = data.get("detail") if isinstance(data, dict) else None
        problems = data.get("problems") if isinstance(data, dict) else None
        if isinstance(problems, list) and len(problems) > 1:  # a refused catalog: every problem, still one line
            detail = f"{detail}; also: {'; '.join(str(p) for p in problems[1:])}"
        raise CommandError(f"{method} {url}: {status} {detail or ''}".strip(), STATUS_EXIT.get(status, EXIT_FAILED))
    if not isinstance(data, dict):
        raise CommandError(f"{url} answered with unexpected JSON")
    return data
