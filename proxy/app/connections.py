"""Client connections with bounds: a connection cap, a header timeout, a write timeout (docs/proxy.md).

aiohttp bounds idle keep-alive connections (``keepalive_timeout``, the idle
timeout) but not a request head that trickles in, nor a client that stops
reading a response, nor the number of connections: a slowloris exhausts the
process's file descriptors and then even ``/_ops/healthz`` fails. Every
connection aiohttp's server makes is wrapped in a :class:`Guard`, a plain
asyncio protocol in front of aiohttp's own that adds:

* a cap: past ``max_connections`` open ones, a new connection is closed at once
  (the fds left over serve the upstream side and the admin listener);
* a header timeout: from the connection's first byte (or the first byte after
  a response) until the request head is complete;
* a client write timeout: while the transport's write buffer is full (the
  client stopped reading), for at most ``write_timeout_s``; past it the
  connection is dropped, which also ends the request's upstream exchange.

Only public asyncio protocol methods are used, forwarded to aiohttp's handler.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web

from proxy.shared.logs import log_event
from proxy.shared.metrics import Metrics

log = logging.getLogger("stagegate.connections")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of one listener."""

    max_connections: int
    header_timeout_s: float
    write_timeout_s: float


class Guard(asyncio.Protocol):
    """One client connection: aiohttp's protocol inside, the bounds around it."""

    def __init__(self, factory: Guards, inner: asyncio.Protocol) -> None:
        self._factory = factory
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self.in_request = False

    # -- asyncio.Protocol, forwarded to aiohttp's ---------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        factory = self._factory
        factory.opened()
        if factory.open > factory.limits.max_connections:
            factory.count("max_connections")
            _reset(self._transport)
            return  # aiohttp never sees it
        factory.guards[self._inner] = self
        self._start_header_timer()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._factory.closed()
        self._cancel_timers()
        if self._factory.guards.pop(self._inner, None) is not None:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.in_request and self._header_timer is None:
            self._start_header_timer()  # the first byte of a new request head
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._write_timer is None:
            loop = asyncio.get_running_loop()
            self._write_timer = loop.call_later(self._factory.limits.write_timeout_s, self._expire, "write_timeout")
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._inner.resume_writing()

    # -- the request's life ---------------------------------------------------------

    def request_started(self) -> None:
        self.in_request = True
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def request_finished(self) -> None:
        self.in_request = False

    def _start_header_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self._factory.limits.header_timeout_s, self._expire, "header_timeout")

    def _expire(self, reason: str) -> None:
        self._header_timer = self._write_timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._factory.count(reason)
            log_event(log, logging.DEBUG, "client_connection_dropped", reason=reason)
            _reset(self._transport)

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._write_timer = None


def _reset(transport: asyncio.Transport) -> None:
    """Close with a TCP reset: nothing more is read or written, and no TIME_WAIT lingers on our side."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
    transport.abort()


class Guards:
    """The bounds of one listener and the Guard of each of its connections."""

    def __init__(self, limits: Limits, listener: str, metrics: Metrics) -> None:
        self.limits = limits
        self.open = 0
        self.guards: dict[Any, Guard] = {}  # aiohttp's protocol -> its Guard
        self._gauge = metrics.connection_children[listener]
        self._dropped = {reason: child for (name, reason), child in metrics.dropped_children.items()
                         if name == listener}

    def opened(self) -> None:
        self.open += 1
        self._gauge.inc()

    def closed(self) -> None:
        self.open -= 1
        self._gauge.dec()

    def count(self, reason: str) -> None:
        """A connection closed by a bound: ``max_connections``, ``header_timeout``, ``write_timeout``."""
        self._dropped[reason].inc()

    def factory(self, server: web.Server) -> Callable[[], Guard]:
        """The protocol factory to listen with: each of ``server``'s connections wrapped in a Guard."""
        return lambda: Guard(self, server())

    def wrap(self, handler: Handler) -> Handler:
        """``handler``, telling the request's Guard when its head was complete and when it was answered."""

        async def guarded(request: web.BaseRequest) -> web.StreamResponse:
            guard = self.guards.get(request.protocol)
            if guard is None:
                return await handler(request)
            guard.request_started()
            try:
                return await handler(request)
            finally:
                guard.request_finished()

        return guarded

    def middleware(self) -> Any:
        """The same, as an aiohttp middleware (for the admin app, which has a router)."""

        @web.middleware
        async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self.wrap(handler)(request)  # a closure per admin request: not the hot path

        return guarded
