"""Matching requests to the catalog's validated endpoints (method + path template)."""

from __future__ import annotations

import re
from typing import Final

from proxy.catalog.stages import Endpoint

_SLASHES: Final = re.compile(r"/{2,}")


def normalize_path(path: str) -> str:
    """Collapse repeated slashes and drop a trailing one, as most routers do.

    The upstream would likely route ``/api/v1/deals/`` like ``/api/v1/deals``;
    matching it the same way keeps a trailing slash from bypassing validation.
    """
    if "//" in path:
        path = _SLASHES.sub("/", path)
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/") or "/"
    return path


def is_ops_path(path: str) -> bool:
    """True for ``/_ops`` and anything under it (never forwarded, DESIGN §2)."""
    path = normalize_path(path)
    return path == "/_ops" or path.startswith("/_ops/")


class RouteTable:
    """Exact paths in a dict, templates as precompiled regexes, built once."""

    def __init__(self, endpoints: tuple[Endpoint, ...]) -> None:
        self._exact: dict[tuple[str, str], Endpoint] = {}
        self._templates: list[tuple[str, re.Pattern[str], Endpoint]] = []
        for endpoint in endpoints:
            if endpoint.is_template:
                self._templates.append((endpoint.method, endpoint.path_regex(), endpoint))
            else:
                self._exact[(endpoint.method, endpoint.path)] = endpoint

    def match(self, method: str, path: str) -> Endpoint | None:
        """The validated endpoint for this request, or None (pass through)."""
        path = normalize_path(path)
        endpoint = self._exact.get((method, path))
        if endpoint is not None:
            return endpoint
        for template_method, regex, candidate in self._templates:
            if template_method == method and regex.match(path):
                return candidate
        return None
