"""Which endpoint a request reaches, and the request target sent upstream.

The request target is read as sent (``raw_path``), never aiohttp's decoded
``path``: matching must see exactly what an upstream router would see
(proxy.catalog.paths). Method-override headers make a request be validated as
the method they name, since many frameworks route by them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from proxy.catalog.paths import PathMatch, RouteTable, is_ops_path
from proxy.catalog.stages import Catalog, Endpoint

# Honoured by Rails, Laravel, Spring's HiddenHttpMethodFilter variants, ASP.NET, Express method-override.
OVERRIDE_HEADERS: Final = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes: a validated endpoint (or None: pass-through) and the target to forward."""

    endpoint: Endpoint | None
    target: str  # path and query, as sent upstream
    unreadable: str | None = None  # "ambiguous_path" / "ambiguous_method": never validated as-is


def split_target(raw: str) -> tuple[str, str]:
    """(path, query with its ``?``) of a request target in origin, absolute or asterisk form (RFC 9112 §3.2)."""
    if raw.startswith("/"):
        path, sep, query = raw.partition("?")
        return path, sep + query
    if raw == "*":
        return raw, ""
    parts = urlsplit(raw)
    return parts.path or "/", f"?{parts.query}" if parts.query else ""


def is_ops(raw_path: str) -> bool:
    """``/_ops`` in any spelling (the cheap test first: it needs a ``_``, or an escape spelling one)."""
    return ("_" in raw_path or "%" in raw_path) and is_ops_path(raw_path)


class Router:
    """The catalog's endpoints, matched on the raw request target and method overrides."""

    def __init__(self, catalog: Catalog) -> None:
        self.table = RouteTable(catalog.endpoints, case_sensitive=catalog.case_sensitive_paths)

    def route(self, request: web.BaseRequest, path: str, query: str) -> Route:
        """The route of a request whose target splits into ``path`` and ``query``."""
        method = request.method
        overrides = _overrides(request) if any(h in request.headers for h in OVERRIDE_HEADERS) else ()
        match = self.table.match(method, path)
        if overrides:
            return self._overridden(method, path, query, overrides, match)
        if match is None:
            return Route(None, path + query)
        return Route(match.endpoint, match.path + query, "ambiguous_path" if match.ambiguous else None)

    def _overridden(self, method: str, path: str, query: str, overrides: tuple[str, ...],
                    own: PathMatch | None) -> Route:
        """Validate as every method the request may be routed by: its own and the override(s)."""
        matches = [m for m in (own, *(self.table.match(o, path) for o in overrides)) if m is not None]
        if not matches:
            return Route(None, path + query)
        first = matches[0]
        endpoints = {m.endpoint.name for m in matches}
        if len(endpoints) > 1 or len(overrides) > 1:  # routers disagree on which handler runs
            return Route(first.endpoint, first.path + query, "ambiguous_method")
        return Route(first.endpoint, first.path + query, "ambiguous_path" if first.ambiguous else None)


def _overrides(request: web.BaseRequest) -> tuple[str, ...]:
    found = {value.strip().upper() for name in OVERRIDE_HEADERS for value in request.headers.getall(name, ())}
    return tuple(sorted(found))
