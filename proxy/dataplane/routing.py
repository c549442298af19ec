"""Which endpoint a request reaches, and the request target sent upstream.

The request target is read as sent (``raw_path``), never aiohttp's decoded
``path``: matching must see exactly what an upstream router would see
(proxy.catalog.paths). A ``#`` fragment is cut off first (routers drop it).
Method overrides — the headers, ``_method`` in the query, and for a POST
``_method`` in a JSON or form body — make a request be validated as the
method they name, since many frameworks route by them (proxy.catalog.params).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from proxy.catalog.keys import fold_key
from proxy.catalog.params import METHOD_PARAM, method_overrides, names_key
from proxy.catalog.paths import PathMatch, RouteTable, is_ops_path
from proxy.catalog.stages import Catalog, Endpoint
from proxy.dataplane.body import collector_paused_for, is_json_media, parse_json
from proxy.dataplane.jsonscan import spelling_count

# Honoured by Rails, Laravel, Spring's HiddenHttpMethodFilter variants, ASP.NET, Express method-override.
OVERRIDE_HEADERS: Final = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")
FORM: Final = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes: a validated endpoint (or None: pass-through) and the target to forward."""

    endpoint: Endpoint | None
    target: str  # path and query, as sent upstream
    unreadable: str | None = None  # "ambiguous_path" / "ambiguous_method" / "field_in_query": never validated as-is
    body_may_override: bool = False  # a POST that ``_method`` in its body could route to another endpoint


def split_target(raw: str) -> tuple[str, str]:
    """(path, query with its ``?``) of a request target in origin, absolute or asterisk form (RFC 9112 §3.2).

    A ``#`` and what follows are dropped: a fragment is not part of a request target, and the routers of
    aiohttp, Express and Werkzeug drop it, so ``/api/v1/deals#x`` is ``/api/v1/deals`` to them.
    """
    if raw.startswith("/"):
        if "#" in raw:
            raw = raw.partition("#")[0]
        path, sep, query = raw.partition("?")
        return path, sep + query
    if raw == "*":
        return raw, ""
    parts = urlsplit(raw)
    return parts.path or "/", f"?{parts.query}" if parts.query else ""


def is_ops(raw_path: str) -> bool:
    """``/_ops`` in any spelling (the cheap test first: it needs a ``_``, or an escape spelling one)."""
    return ("_" in raw_path or "%" in raw_path) and is_ops_path(raw_path)


def body_overrides(content_type: str | None, raw: bytes, too_large: bool) -> tuple[str, ...] | None:
    """The methods ``_method`` names in a POST body (empty: none), or None when the body cannot be read for it.

    A form (or a body without a type: Rack reads that as a form) is read as Spring, Rack and Symfony read it; a
    JSON object's top-level ``_method`` member as Laravel reads it. Multipart bodies, and JSON or forms over the
    size limit or not parseable, cannot be read here: None (the caller refuses them in ``enforce``).
    """
    if not raw and not too_large:
        return ()
    mime = (content_type or "").partition(";")[0].strip().lower()
    if mime in ("", FORM):
        return None if too_large else method_overrides(raw.decode("utf-8", "replace"))
    if is_json_media(mime):
        if too_large:
            return None
        if not spelling_count(raw, METHOD_PARAM, any_case=True):  # no key can read _method: nothing to parse
            return ()
        with collector_paused_for(raw):
            document, reason = parse_json(raw)
        if reason is not None:
            return None
        if type(document) is not dict:
            return ()
        return tuple(sorted({value.strip().upper() for key, value in document.items()
                             if type(value) is str and fold_key(key) == METHOD_PARAM}))
    return None if mime.startswith("multipart/") else ()


class Router:
    """The catalog's endpoints, matched on the raw request target and method overrides."""

    def __init__(self, catalog: Catalog) -> None:
        self.table = RouteTable(catalog.endpoints, case_sensitive=catalog.case_sensitive_paths)

    def route(self, request: web.BaseRequest, path: str, query: str, also: tuple[str, ...] = ()) -> Route:
        """The route of a request whose target splits into ``path`` and ``query``; ``also``: methods its body
        names in ``_method`` (see :func:`body_overrides`)."""
        method = request.method
        overrides = _overrides(request, query, also)
        match = self.table.match(method, path)
        if overrides:
            route = self._overridden(method, path, query, overrides, match)
        elif match is None:
            route = Route(None, path + query)
        else:
            route = Route(match.endpoint, match.path + query, "ambiguous_path" if match.ambiguous else None)
        endpoint = route.endpoint
        if endpoint is not None and len(query) > 1 and route.unreadable is None \
                and names_key(query[1:], endpoint.field_path[0]):
            route = Route(endpoint, route.target, "field_in_query")
        if method == "POST" and not also and self.table.elsewhere(method, path):
            route = Route(route.endpoint, route.target, route.unreadable, body_may_override=True)
        return route

    def unreadable_override(self, request: web.BaseRequest, path: str, query: str) -> Route:
        """A POST whose body may name another method but cannot be read for it: refused as ``ambiguous_method``
        (its own endpoint if it has one, else the first another method reaches)."""
        own = self.table.match(request.method, path)
        others = (self.table.match(m, path) for m in sorted(self.table.methods) if m != request.method)
        first = own or next(m for m in others if m is not None)
        return Route(first.endpoint, first.path + query, "ambiguous_method")

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


def _overrides(request: web.BaseRequest, query: str, also: tuple[str, ...]) -> tuple[str, ...]:
    """Every method an override names: the headers, ``_method`` in the query, ``also`` (the body's)."""
    headers = request.headers
    found = set(also)
    if any(h in headers for h in OVERRIDE_HEADERS):
        found.update(value.strip().upper() for name in OVERRIDE_HEADERS for value in headers.getall(name, ()))
    if len(query) > 1:
        found.update(method_overrides(query[1:]))
    return tuple(sorted(found))
