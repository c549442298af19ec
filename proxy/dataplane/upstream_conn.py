"""One upstream connection: an asyncio protocol carrying one exchange at a time, parsed by ``httptools``.

The upstream's framing is trusted no further than a client's: a response that
breaks HTTP or the proxy's bounds — bytes past its declared end, a status
outside 100–599, a head over 64 KiB or 256 fields, a header that is not UTF-8 —
fails the exchange (502) and drops the connection, whose bytes are never parsed
as part of this response or the next (docs/proxy.md, "Hostile clients and
upstreams"). A chunked body's trailer section is dropped: httptools reports its
fields through the same callback as the head's, and relaying them as header
fields would let an upstream add ``Set-Cookie`` or ``Location`` after the head
was checked. Interim (1xx) answers do not reset the read timeout: an upstream
that only ever sends ``100 Continue`` gets a 504, not an endless wait.

One exchange is driven from here, start to end: :meth:`Connection.exchange_with`
sends the request and waits for the answer's head, :meth:`Connection.read_chunk`
hands over its body. The pool (proxy/dataplane/upstream_http.py) only chooses the
connection, frames the request head and retries a replayable request once.
"""

from __future__ import annotations

import asyncio
import collections
import select
import socket
from collections.abc import AsyncIterable, AsyncIterator
from typing import Final, cast

import httptools
from multidict import CIMultiDict

StreamBody = AsyncIterable[bytes]

_SMALL_WRITE: Final = 64 * 1024  # head + body joined into one write below this size
_HIGH_WATER: Final = 256 * 1024  # body bytes buffered before we stop reading from the upstream
_LOW_WATER: Final = 64 * 1024
# Response heads are bounded like request heads (nginx answers 502 "upstream sent too big header" likewise).
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEAD_FIELDS: Final = 256


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


class Exchange:
    """The state of one request/response on a connection; a fresh one per request."""

    __slots__ = ("parser", "head", "head_only", "received_any", "reason", "headers", "status", "keep_alive",
                 "complete", "until_eof", "reusable", "error", "chunks", "buffered", "timeout_s", "last_read",
                 "head_bytes", "fields", "violation", "interims")

    def __init__(self, connection: Connection, head: asyncio.Future[None], head_only: bool, timeout_s: float,
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
        self.head_bytes = 0  # bytes received while no final response head was complete
        self.fields = 0
        self.violation: str | None = None  # why a callback stopped the parser
        self.interims = 0  # interim (1xx) answers so far: after one, bytes before the final head are not progress


    def keeps_connection(self) -> bool:
        """The answer (head arrived) lets the connection live on (httptools forgets it once the message ends)."""
        return self.keep_alive if self.complete else bool(self.parser.should_keep_alive())


def _frame(chunk: bytes, chunked: bool) -> bytes:
    """A body piece as sent: itself, or a chunk of the chunked coding (empty pieces send nothing)."""
    if not chunked or not chunk:
        return chunk
    return b"%x\r\n%b\r\n" % (len(chunk), chunk)


class Connection(asyncio.Protocol):
    """One upstream connection; carries one exchange at a time (``self.x``), idle in the pool between them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.x: Exchange | None = None  # the exchange in progress (kept after it ends, until the next one)
        self._body_waiter: asyncio.Future[None] | None = None
        self._write_ready: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._paused_writing = False
        self._timer: asyncio.TimerHandle | None = None

    @property
    def exchange(self) -> Exchange:
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
        if x.status or not x.interims:
            x.last_read = self.loop.time()
        try:
            x.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._protocol_error("the upstream switched protocols, which the proxy never asked for")
            return
        except httptools.HttpParserError as exc:
            self._protocol_error(x.violation or f"invalid HTTP response from the upstream: {exc}")
            return
        if not x.status:
            x.head_bytes += len(data)
            if x.head_bytes > MAX_HEAD_BYTES:
                self._protocol_error(f"the upstream's response head exceeds {MAX_HEAD_BYTES} bytes")

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    # -- httptools callbacks (only ever called while an exchange is in progress) ----------------
    # A callback that finds the answer unacceptable records why and raises: the parser stops there.

    def _violate(self, why: str) -> None:
        self.exchange.violation = why
        raise UpstreamProtocolError(why)

    def on_message_begin(self) -> None:
        if self.exchange.status:  # a second response on one exchange: bytes past the declared end
            self._violate("the upstream sent bytes after the response's declared end")

    def on_status(self, reason: bytes) -> None:
        self.exchange.reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        x = self.exchange
        x.fields += 1
        if x.fields > MAX_HEAD_FIELDS:
            self._violate(f"the upstream's response has more than {MAX_HEAD_FIELDS} header fields")
        if x.status:  # a trailer field (after a chunked body): dropped, never relayed as a header
            return
        try:  # relayed as received or refused, never changed: aiohttp writes header values as UTF-8
            x.headers.add(name.decode("ascii"), value.decode("utf-8"))
        except UnicodeDecodeError:
            self._violate("the upstream sent a header that is not valid UTF-8")

    def on_headers_complete(self) -> None:
        x = self.exchange
        status = x.parser.get_status_code()
        if not 100 <= status <= 599:
            self._violate(f"the upstream answered with status {status}, outside 100-599")
        if 100 <= status < 200:  # interim answer (101 is refused by the parser as an upgrade)
            x.headers = CIMultiDict()
            x.reason = ""
            x.interims += 1
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

    async def exchange_with(self, head: bytes, body: bytes | StreamBody | None, chunked: bool, *, head_only: bool,
                            timeout_s: float) -> Exchange:
        """One whole request on this connection, until the response head arrived: the head and body sent (with
        back-pressure), an early answer (a 413 before the body was read) relayed, the connection dropped on any
        failure. The body is then read with :meth:`read_chunk`."""
        now = self.loop.time()
        x = self.x = Exchange(self, self.loop.create_future(), head_only, timeout_s, now)
        if self._timer is None or self._timer.when() > now + timeout_s:  # else the last exchange's timer serves
            self._arm(now + timeout_s)  # this one too: when it fires early, it waits on (_check_timeout)
        try:
            try:
                await self._send(head, body, chunked)
            except (UpstreamClosed, UpstreamReadTimeout):
                if not x.status:
                    raise
                x.reusable = False  # answered before it read everything (e.g. 413): relay that answer
            await x.head
        except BaseException:
            self.abort()
            raise
        return x

    async def _send(self, head: bytes, body: bytes | StreamBody | None, chunked: bool) -> None:
        if isinstance(body, bytes) and len(body) + len(head) <= _SMALL_WRITE:
            await self._write(head + body)
        elif isinstance(body, bytes):
            await self._write(head)
            await self._write(body)
        elif body is not None:
            await self._send_stream(head, aiter(body), chunked)
        else:
            await self._write(head)

    async def _send_stream(self, head: bytes, body: AsyncIterator[bytes], chunked: bool) -> None:
        """The head with the body's first piece (one write: the common small body already came with its head),
        then the rest as it arrives."""
        first = _frame(await anext(body, b""), chunked)
        if len(head) + len(first) <= _SMALL_WRITE:
            await self._write(head + first)
        else:
            await self._write(head)
            await self._write(first)
        x = self.exchange
        async for chunk in body:
            await self._read_pending()
            # Answered early and closing (a 413, say): stop sending, never reuse (RFC 9112 §9.5). An early answer
            # that keeps the connection (nginx's `return 200` does not wait for the body) gets the rest of the
            # body, so that both sides still agree where the next request starts.
            if x.status and not x.keeps_connection():
                x.reusable = False
                return
            await self._write(_frame(chunk, chunked))
        if chunked:
            await self._write(b"0\r\n\r\n")

    async def _write(self, data: bytes) -> None:
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

    async def _read_pending(self) -> None:
        """Let bytes the upstream already sent be read before writing more.

        An upstream that answers early (413) and closes makes the next write
        fail at once — uvloop writes synchronously — and the transport then
        closes without reading the answer waiting in the socket. So before each
        piece of a streamed body: if the socket is readable, let the loop read.
        """
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return
        for _ in range(8):
            if self.closed or self.exchange.status or not select.select([sock.fileno()], [], [], 0)[0]:
                return
            await asyncio.sleep(0)

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
        self._wake_body()  # the read timer is left to fire (or to serve the next exchange): one per connection,
        # not one armed and cancelled per request (~1 µs each); the pool aborts a connection it drops, which ends it

    def _protocol_error(self, why: str) -> None:
        """The answer breaks HTTP (or our bounds): fail the exchange, even if it looked complete, and drop the
        connection; its bytes are never parsed as part of this response or the next."""
        x = self.exchange
        x.complete = False
        self._fail(UpstreamProtocolError(why))
        self.abort()

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
            self._arm(max(due, self.loop.time() + 0.01))
            return
        self._fail(UpstreamReadTimeout("the upstream sent nothing for the read timeout"))
        self.abort()

    def _arm(self, due: float) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_at(due, self._check_timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
