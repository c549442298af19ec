"""A lean HTTP/1.1 client for the one upstream: pooled keep-alive connections on asyncio protocols.

Why not ``aiohttp.ClientSession``: it builds a request object, a URL, cookie
and tracing machinery and a timer per request, which made it the largest cost
of the proxy (bench/results: ~2.5x the req/s with this client). A sidecar talks
to exactly one origin with requests it has already validated, so the client can
be small: write the request head and body, parse the answer with ``httptools``
(the llhttp parser uvicorn uses), hand the body over with back-pressure.

Semantics kept from the aiohttp version and the DESIGN:

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
import collections
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator
from typing import Final, cast

import httptools
from multidict import CIMultiDict
from yarl import URL

IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
_NO_BODY_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE", "CONNECT"})
_HIGH_WATER: Final = 256 * 1024  # body bytes buffered before we stop reading from the upstream
_LOW_WATER: Final = 64 * 1024
_SMALL_WRITE: Final = 64 * 1024  # head + body joined into one write below this size

StreamBody = AsyncIterable[bytes]


class UpstreamConnectError(OSError):
    """The TCP (or TLS) connection to the upstream could not be opened."""


class UpstreamClosed(ConnectionError):
    """The upstream closed or reset the connection before the response was complete."""


class UpstreamConnectTimeout(TimeoutError):
    """Connecting to the upstream took longer than the connect timeout."""


class UpstreamProtocolError(Exception):
    """The upstream's answer is not valid HTTP/1.1."""


class UpstreamReadTimeout(TimeoutError):
    """Nothing arrived from the upstream for the read timeout."""


class _Exchange:
    """The state of one request/response on a connection; a fresh one per request."""

    __slots__ = ("parser", "head", "head_only", "received_any", "reason", "headers", "status", "keep_alive",
                 "complete", "until_eof", "reusable", "error", "chunks", "buffered", "timeout_s", "last_read")

    def __init__(self, connection: _Connection, head: asyncio.Future[None], head_only: bool, timeout_s: float,
                 now: float) -> None:
        self.parser = httptools.HttpResponseParser(connection)
        self.head = head  # completes when the response head arrived
        self.head_only = head_only  # HEAD: the answer has no body whatever it declares
        self.received_any = False
        self.reason = ""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.status = 0
        self.keep_alive = False
        self.complete = False
        self.until_eof = False  # no length declared: the body ends when the upstream closes
        self.reusable = True  # False once the request could not be sent whole
        self.error: BaseException | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.timeout_s = timeout_s
        self.last_read = now


class _Connection(asyncio.Protocol):
    """One upstream connection; carries one exchange at a time (``self.x``), idle in the pool between them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.x: _Exchange | None = None  # the exchange in progress (kept after it ends, until the next one)
        self._body_waiter: asyncio.Future[None] | None = None
        self._write_ready: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._paused_writing = False
        self._timer: asyncio.TimerHandle | None = None

    @property
    def exchange(self) -> _Exchange:
        assert self.x is not None, "no exchange was begun on this connection"
        return self.x

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        x = self.x
        if x is not None and not x.complete:
            if x.status and x.until_eof and exc is None:
                self._on_complete(keep_alive=False)  # a body delimited by the connection's end
            else:
                self._fail(UpstreamClosed("the upstream closed the connection" + (f" ({exc})" if exc else "")))
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        x = self.x
        if x is None or x.complete:  # nothing asked for: a misbehaving upstream; do not reuse this connection
            self.abort()
            return
        x.received_any = True
        x.last_read = self.loop.time()
        try:
            x.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("the upstream switched protocols, which the proxy never asked for"))
            self.abort()
        except httptools.HttpParserError as exc:
            if not x.complete:
                self._fail(UpstreamProtocolError(f"invalid HTTP response from the upstream: {exc}"))
            self.abort()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    # -- httptools callbacks (only ever called while an exchange is in progress) ----------------

    def on_status(self, reason: bytes) -> None:
        self.exchange.reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.exchange.headers.add(name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        x = self.exchange
        status = x.parser.get_status_code()
        if 100 <= status < 200:  # interim answer (101 is refused by the parser as an upgrade)
            x.headers = CIMultiDict()
            x.reason = ""
            return
        x.status = status
        x.until_eof = "Content-Length" not in x.headers and "Transfer-Encoding" not in x.headers
        if not x.head.done():
            x.head.set_result(None)
        if x.head_only:  # HEAD: the parser cannot be told there is no body; the message ends here
            self._on_complete(keep_alive=x.parser.should_keep_alive() and not x.until_eof)

    def on_body(self, body: bytes) -> None:
        x = self.exchange
        if x.complete:
            return
        x.chunks.append(body)
        x.buffered += len(body)
        if x.buffered > _HIGH_WATER and not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()
        self._wake_body()

    def on_message_complete(self) -> None:
        x = self.exchange
        if x.status == 0 or x.complete:
            return  # the end of a 1xx interim answer, or a HEAD answer already complete
        self._on_complete(keep_alive=x.parser.should_keep_alive())

    # -- request side -----------------------------------------------------------

    def begin(self, head_only: bool, timeout_s: float) -> _Exchange:
        """Start a new exchange; its ``head`` future completes when the response head arrived."""
        now = self.loop.time()
        self.x = _Exchange(self, self.loop.create_future(), head_only, timeout_s, now)
        self._timer = self.loop.call_at(now + timeout_s, self._check_timeout)
        return self.x

    async def write(self, data: bytes) -> None:
        """Write with back-pressure; raises the connection's error (or UpstreamClosed) if it is gone.

        Sending counts as activity for the read timeout: a slow upload is not upstream silence.
        """
        x = self.exchange
        if self.closed or self.transport is None or self.transport.is_closing():
            raise x.error or UpstreamClosed("the upstream closed the connection while the request was sent")
        self.transport.write(data)
        x.last_read = self.loop.time()
        if self._paused_writing:
            self._write_ready = self.loop.create_future()
            await self._write_ready
            self._write_ready = None
            if self.closed:
                raise x.error or UpstreamClosed("the upstream closed the connection while the request was sent")
            x.last_read = self.loop.time()

    async def read_chunk(self) -> bytes:
        """The next piece of the body; b"" at its end."""
        x = self.exchange
        while True:
            if x.chunks:
                chunk = x.chunks.popleft()
                x.buffered -= len(chunk)
                if self._paused_reading and x.buffered < _LOW_WATER and self.transport is not None:
                    self._paused_reading = False
                    x.last_read = self.loop.time()  # the pause was ours, not the upstream's silence
                    self.transport.resume_reading()
                return chunk
            if x.error is not None:
                raise x.error
            if x.complete:
                return b""
            self._body_waiter = self.loop.create_future()
            await self._body_waiter
            self._body_waiter = None

    @property
    def reusable(self) -> bool:
        """The exchange ended cleanly and both sides allow another one on this connection."""
        x = self.x
        return (x is not None and x.complete and x.keep_alive and x.reusable and x.error is None
                and not self.closed)

    def park(self) -> None:
        """Idle in the pool: no exchange, so any byte that arrives now is a fault."""
        self.x = None
        self.idle_since = self.loop.time()

    def abort(self) -> None:
        self.closed = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    # -- internals ------------------------------------------------------------------

    def _on_complete(self, *, keep_alive: bool) -> None:
        x = self.exchange
        x.complete = True
        x.keep_alive = keep_alive
        self._cancel_timer()
        self._wake_body()

    def _fail(self, exc: BaseException) -> None:
        x = self.exchange
        if x.error is None:
            x.error = exc
        self._cancel_timer()
        if not x.head.done():
            x.head.set_exception(exc)
            x.head.exception()  # the caller may be gone (client disconnected): never "never retrieved"
        self._wake_body()

    def _wake_body(self) -> None:
        if self._body_waiter is not None and not self._body_waiter.done():
            self._body_waiter.set_result(None)

    def _check_timeout(self) -> None:
        self._timer = None
        x = self.x
        if x is None or x.complete or x.error is not None:
            return
        due = x.last_read + x.timeout_s
        if self._paused_reading or due > self.loop.time():
            self._timer = self.loop.call_at(max(due, self.loop.time() + 0.01), self._check_timeout)
            return
        self._fail(UpstreamReadTimeout("the upstream sent nothing for the read timeout"))
        self.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class UpstreamResponse:
    """The head of an upstream answer; its body is read with :meth:`read` or :meth:`iter_chunks`."""

    __slots__ = ("_conn", "_pool", "_released", "headers", "reason", "status")

    def __init__(self, conn: _Connection, pool: UpstreamPool) -> None:
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
        self._idle: list[_Connection] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"UpstreamPool({self.host_header!r}, idle={len(self._idle)})"

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(loop), self.host, self.port, ssl=self._ssl,
                                       server_hostname=self.host if self._ssl else None),
                self.connect_timeout_s)
        except TimeoutError:
            raise UpstreamConnectTimeout(f"connecting to {self.host_header} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamConnectError(f"cannot connect to {self.host_header}: {exc}") from exc
        return conn

    def _take_idle(self) -> _Connection | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_s:
                return conn
            conn.abort()
        return None

    def put_back(self, conn: _Connection) -> None:
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
        conn = self._take_idle()
        reused = conn is not None
        if conn is None:
            conn = await self._connect()
        try:
            return await self._exchange(conn, method, target, headers, body)
        except UpstreamClosed:
            if not (reused and replayable and not conn.exchange.received_any):
                raise
        conn = await self._connect()  # the idle connection had been closed by the upstream: once more
        return await self._exchange(conn, method, target, headers, body)

    async def _exchange(self, conn: _Connection, method: str, target: str, headers: CIMultiDict[str],
                        body: bytes | StreamBody | None) -> UpstreamResponse:
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
        exchange = conn.begin(method == "HEAD", self.read_timeout_s)
        try:
            try:
                await self._send(conn, _encode_head(method, self.base_path + target, headers, extra), body, chunked)
            except (UpstreamClosed, UpstreamReadTimeout):
                if not exchange.status:
                    raise
                exchange.reusable = False  # answered before it read everything (e.g. 413): relay that answer
            await exchange.head
        except BaseException:
            conn.abort()
            raise
        return UpstreamResponse(conn, self)

    async def _send(self, conn: _Connection, head: bytes, body: bytes | StreamBody | None, chunked: bool) -> None:
        if isinstance(body, bytes) and len(body) + len(head) <= _SMALL_WRITE:
            await conn.write(head + body)
            return
        await conn.write(head)
        if isinstance(body, bytes):
            await conn.write(body)
        elif body is not None:
            await self._send_stream(conn, body, chunked)

    async def _send_stream(self, conn: _Connection, body: StreamBody, chunked: bool) -> None:
        exchange = conn.exchange
        async for chunk in body:
            if exchange.status:  # answered early (e.g. 413): stop sending, never reuse
                exchange.reusable = False
                return
            if not chunk:
                continue
            await conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
        if chunked:
            await conn.write(b"0\r\n\r\n")

    async def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.abort()
        self._idle.clear()
