"""Forwarding to the upstream: header hygiene, pooled connections, streamed bodies.

Hop-by-hop headers (RFC 9110 §7.6.1) are dropped both ways, together with any
header the ``Connection`` field names; ``X-Forwarded-For/-Proto/-Host`` are set.
Responses are streamed chunk by chunk; those declaring at most 64 KiB are
read in one piece and written with their headers in one write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable
from typing import Any, Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from proxy.dataplane.upstream_conn import UpstreamConnectError, UpstreamProtocolError
from proxy.dataplane.upstream_http import UpstreamPool, UpstreamResponse
from proxy.shared.logs import log_event

log = logging.getLogger(__name__)

HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-authenticate", "proxy-authorization",
})
# Expect is answered by our own server (100 Continue); forwarding it would make the
# client side of the proxy wait for an interim response the upstream may never send.
_STRIP_REQUEST: Final = HOP_BY_HOP | {"x-forwarded-proto", "x-forwarded-host", "expect"}
_STRIP_BUFFERED: Final = _STRIP_REQUEST | {"content-length"}
_STRIP_RESPONSE: Final = HOP_BY_HOP | {"content-length"}  # re-added below when known

Body = bytes | AsyncIterable[bytes] | None
SMALL_RESPONSE: Final = 64 * 1024  # declared-length responses up to one read buffer are relayed in one write

HEALTH_AGENT: Final = "stagegate-health-check"  # how the upstream's logs tell the proxy's own checks apart


class UpstreamError(Exception):
    """The upstream could not be reached or answered badly: 502 or 504."""

    def __init__(self, reason: str, status: int, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.status = status
        self.detail = detail


def _connection_tokens(headers: MultiMapping[str]) -> frozenset[str]:
    values = headers.getall("Connection", ())
    return frozenset(token.strip().lower() for value in values for token in value.split(","))


def _copy_headers(source: MultiMapping[str], strip: frozenset[str]) -> CIMultiDict[str]:
    named = _connection_tokens(source) if "Connection" in source else frozenset()
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in source.items():
        lowered = name.lower()
        if lowered not in strip and lowered not in named:
            out.add(name, value)
    return out


def request_headers(request: web.BaseRequest, id_header: str, request_id: str, *, buffered: bool) -> CIMultiDict[str]:
    """Headers to send upstream: end-to-end ones, the request ID and X-Forwarded-*."""
    headers = _copy_headers(request.headers, _STRIP_BUFFERED if buffered else _STRIP_REQUEST)
    headers[id_header] = request_id
    peer = request.remote or "unknown"
    previous = ", ".join(headers.getall("X-Forwarded-For", ()))
    headers["X-Forwarded-For"] = f"{previous}, {peer}" if previous else peer
    headers["X-Forwarded-Proto"] = request.scheme
    host = request.headers.get("Host")
    if host is not None:
        headers["X-Forwarded-Host"] = host
    return headers


class RelayedStreamResponse(web.StreamResponse):
    """An upstream answer, relayed. aiohttp gives every body without a Content-Type
    ``application/octet-stream``: right for an origin, wrong for a proxy, which must not
    invent a media type the upstream did not state (clients sniff an absent one)."""

    def __init__(self, *, typed: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._typed = typed

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        if not self._typed:
            self.headers.popall("Content-Type", None)


class RelayedResponse(RelayedStreamResponse, web.Response):
    """An upstream answer read whole and written with its headers in one go."""


def _upstream_error(exc: BaseException) -> UpstreamError:
    if isinstance(exc, TimeoutError):
        return UpstreamError("timeout", 504, "the upstream did not answer in time")
    if isinstance(exc, UpstreamConnectError):
        return UpstreamError("refused", 502, "the upstream refused the connection")
    if isinstance(exc, UpstreamProtocolError):
        return UpstreamError("invalid", 502, f"the upstream sent an invalid response ({exc})")
    return UpstreamError("reset", 502, f"the upstream connection failed ({type(exc).__name__})")


# OSError covers refused, reset, closed and timeouts; the others come from reading a streamed client body.
_FAILURES: Final = (OSError, UpstreamProtocolError, aiohttp.ClientError, asyncio.IncompleteReadError)


class Upstream:
    """The legacy service: one keep-alive connection pool per process (proxy.upstream_http)."""

    def __init__(self, base_url: str, *, timeout_s: float, connect_timeout_s: float) -> None:
        self.pool = UpstreamPool(base_url, connect_timeout_s=connect_timeout_s, read_timeout_s=timeout_s)

    async def health(self, path: str, timeout_s: float) -> dict[str, Any]:
        """GET ``path`` for readiness: ``{"ok": True, "status": N}`` or ``{"ok": False, "error": name}``."""
        try:
            async with asyncio.timeout(timeout_s):
                response = await self.pool.request("GET", path, CIMultiDict({"User-Agent": HEALTH_AGENT}), None)
                try:
                    await response.read()
                finally:
                    response.release()
        except (OSError, UpstreamProtocolError) as exc:  # refused, reset, timed out, not HTTP
            return {"ok": False, "error": type(exc).__name__}
        return {"ok": True, "status": response.status}

    async def close(self) -> None:
        await self.pool.close()

    async def forward(self, request: web.BaseRequest, target: str, headers: CIMultiDict[str], body: Body,
                      extra_headers: dict[str, str]) -> web.StreamResponse:
        """Send the request to ``target`` upstream and stream the answer back; UpstreamError if none came."""
        try:
            upstream = await self.pool.request(request.method, target, headers, body)
        except _FAILURES as exc:
            raise _upstream_error(exc) from exc
        try:
            return await self._relay(request, upstream, extra_headers)
        finally:
            upstream.release()

    async def _relay(self, request: web.BaseRequest, upstream: UpstreamResponse,
                     extra_headers: dict[str, str]) -> web.StreamResponse:
        headers = _copy_headers(upstream.headers, _STRIP_RESPONSE)
        headers.update(extra_headers)
        typed = "Content-Type" in headers
        length = upstream.content_length
        if length is not None and length <= SMALL_RESPONSE and request.method != "HEAD":
            # One read of what is (nearly always) already in the buffer, one write of headers + body.
            try:
                payload = await upstream.read()
            except _FAILURES as exc:
                raise _upstream_error(exc) from exc
            return RelayedResponse(typed=typed, status=upstream.status, reason=upstream.reason or None,
                                   headers=headers, body=payload)
        response = RelayedStreamResponse(typed=typed, status=upstream.status, reason=upstream.reason or None,
                                         headers=headers)
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        try:
            async for chunk in upstream.iter_chunks():
                await response.write(chunk)
        except _FAILURES as exc:
            # Headers are gone already: cut the connection so the client sees a truncated response. Either the
            # upstream failed mid-body, or the client went away (or was dropped: --client-write-timeout-s); the
            # upstream connection is discarded either way (its exchange did not end cleanly).
            client_gone = request.transport is None or request.transport.is_closing()
            log_event(log, logging.INFO if client_gone else logging.WARNING,
                      "client_disconnected" if client_gone else "upstream_body_failed", error=type(exc).__name__)
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response
