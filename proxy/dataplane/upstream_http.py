"""A lean HTTP/1.1 client for the one upstream: pooled keep-alive connections on asyncio protocols.

Why not ``aiohttp.ClientSession``: it builds a request object, a URL, cookie
and tracing machinery and a timer per request, which made it the largest cost
of the proxy (about 1.6x the req/s with this client: docs/adr/0003). A sidecar talks
to exactly one origin with requests it has already validated, so the client can
be small: write the request head and body, parse the answer with ``httptools``
(the llhttp parser uvicorn uses), hand the body over with back-pressure.

Semantics kept from the aiohttp version (docs/proxy.md, "The upstream connection pool"):

* connect timeout and a read timeout measured between reads (no total limit,
  so a long stream is fine while it moves; a paused reader does not count);
* keep-alive: a connection goes back to the pool only when its response was
  read to the end and both sides allow it; idle connections expire after
  ``idle_s`` (shorter than common server keep-alive timeouts);
* a request that fails on a *reused* connection before any response byte
  arrived (the server closed it while idle) is retried once on a new one when
  it is replayable, as Go's net/http decides: an idempotent method or an
  ``Idempotency-Key`` header, and a body held in memory;
* bodies: bytes (``Content-Length``), or an async iterable streamed with the
  caller's ``Content-Length`` or chunked; an upstream that answers before
  reading the whole body (e.g. 413) is answered through, its connection closed;
* HEAD, 204 and 304 have no body; 1xx interim answers are skipped; a response
  without length is read until the upstream closes.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Final

from multidict import CIMultiDict
from yarl import URL

from proxy.dataplane.upstream_conn import (
    Connection,
    StreamBody,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamConnectTimeout,
)

IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
_NO_BODY_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE", "CONNECT"})


class UpstreamResponse:
    """The head of an upstream answer; its body is read with :meth:`read` or :meth:`iter_chunks`."""

    __slots__ = ("_conn", "_pool", "_released", "headers", "reason", "status")

    def __init__(self, conn: Connection, pool: UpstreamPool) -> None:
        self._conn = conn
        self._pool = pool
        self._released = False
        exchange = conn.exchange
        self.status = exchange.status
        self.reason = exchange.reason
        self.headers = exchange.headers

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        if value is None or "Transfer-Encoding" in self.headers:
            return None
        try:
            return int(value)
        except ValueError:
            return None

    async def read(self) -> bytes:
        """The whole body."""
        parts = []
        while chunk := await self._conn.read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self._conn.read_chunk():
            yield chunk

    def release(self) -> None:
        """Give the connection back (if its exchange ended cleanly) or close it."""
        if self._released:
            return
        self._released = True
        self._pool.put_back(self._conn)


def _encode_head(method: str, target: str, headers: CIMultiDict[str], extra: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n")
    lines.append(extra)
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


class UpstreamPool:
    """Keep-alive connections to one origin (``http://`` or ``https://``)."""

    def __init__(self, url: str, *, connect_timeout_s: float, read_timeout_s: float, max_idle: int = 256,
                 idle_s: float = 1.5) -> None:
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parsed.host
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.base_path = parsed.raw_path.rstrip("/")
        default_port = self.port == (443 if parsed.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self._ssl = ssl.create_default_context() if parsed.scheme == "https" else None
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_idle = max_idle
        self.idle_s = idle_s
        self._idle: list[Connection] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"UpstreamPool({self.host_header!r}, idle={len(self._idle)})"

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: Connection(loop), self.host, self.port, ssl=self._ssl,
                                       server_hostname=self.host if self._ssl else None),
                self.connect_timeout_s)
        except TimeoutError:
            raise UpstreamConnectTimeout(f"connecting to {self.host_header} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamConnectError(f"cannot connect to {self.host_header}: {exc}") from exc
        return conn

    def _take_idle(self) -> Connection | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_s:
                return conn
            conn.abort()
        return None

    def put_back(self, conn: Connection) -> None:
        if conn.reusable and not self._closed and len(self._idle) < self.max_idle:
            conn.park()
            self._idle.append(conn)
        else:
            conn.abort()

    async def request(self, method: str, target: str, headers: CIMultiDict[str],
                      body: bytes | StreamBody | None) -> UpstreamResponse:
        """Send one request (``target`` is the raw path and query); the response head when it arrives."""
        replayable = ((method in IDEMPOTENT or "Idempotency-Key" in headers)
                      and (body is None or isinstance(body, bytes)))
        head, chunked = self._head(method, target, headers, body)
        conn = self._take_idle()
        reused = conn is not None
        if conn is None:
            conn = await self._connect()
        try:
            await conn.exchange_with(head, body, chunked, head_only=method == "HEAD", timeout_s=self.read_timeout_s)
            return UpstreamResponse(conn, self)
        except UpstreamClosed:
            if not (reused and replayable and not conn.exchange.received_any):
                raise
        conn = await self._connect()  # the idle connection had been closed by the upstream: once more
        await conn.exchange_with(head, body, chunked, head_only=method == "HEAD", timeout_s=self.read_timeout_s)
        return UpstreamResponse(conn, self)

    def _head(self, method: str, target: str, headers: CIMultiDict[str],
              body: bytes | StreamBody | None) -> tuple[bytes, bool]:
        """The request head as sent, and whether the body goes chunked: ``Host`` and the framing headers the
        body needs (its length when in memory; the caller's ``Content-Length``, or chunked, when streamed)."""
        extra = "" if "Host" in headers else f"Host: {self.host_header}\r\n"
        chunked = False
        if isinstance(body, bytes):
            extra += f"Content-Length: {len(body)}\r\n"
        elif "Content-Length" in headers:
            pass  # a streamed body of declared length, or a bodiless request that declared 0
        elif body is not None:
            extra += "Transfer-Encoding: chunked\r\n"
            chunked = True
        elif method not in _NO_BODY_METHODS:
            extra += "Content-Length: 0\r\n"
        return _encode_head(method, self.base_path + target, headers, extra), chunked

    async def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.abort()
        self._idle.clear()
