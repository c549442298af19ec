"""Client protocol errors answered and logged quietly: no echo, one WARN line without a traceback.

aiohttp answers a malformed request with a 400 whose text repeats what it
could not parse — the request line or a header line, an ``Authorization``
token included. :class:`QuietHandler` answers with a problem+json naming the
kind of mistake instead, never the client's bytes (docs/proxy.md).

aiohttp's server logs every malformed request (bad framing, invalid headers)
at ERROR with a traceback (~640 bytes): a client sending a thousand bad
requests a second would write 0.6 MB/s of log. These are client mistakes,
not our faults. This filter on the ``aiohttp.server`` logger turns such a
record into a ``client_bad_request`` WARN line (status and aiohttp's reason,
truncated) and lets the flood guard drop the excess (counted in its summary
line). Anything else aiohttp logs keeps its level and traceback: that is a bug.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import orjson
from aiohttp import http_exceptions, web
from aiohttp.http_exceptions import HttpProcessingError

from proxy.shared.logs import FloodGuard, safe_text
from proxy.shared.problems import problem

LOGGER: Final = "aiohttp.server"
# What went wrong, by aiohttp's exception class: said without repeating the request's bytes.
_KINDS: Final = ((http_exceptions.LineTooLong, "a request line or header field is too long"),
                 (http_exceptions.BadHttpMethod, "the request method is not a valid token"),
                 (http_exceptions.BadStatusLine, "the request line is not HTTP/1.x"),
                 (http_exceptions.InvalidURLError, "the request target is not valid"),
                 (http_exceptions.InvalidHeader, "a header field is not valid"),
                 (http_exceptions.TransferEncodingError, "the chunked framing is not valid"),
                 (http_exceptions.ContentLengthError, "the body does not match its Content-Length"))


def _kind(exc: BaseException | None) -> str:
    for cls, text in _KINDS:
        if isinstance(exc, cls):
            return text
    return "the request is not valid HTTP/1.1"


class QuietHandler(web.RequestHandler):
    """aiohttp's connection handler, answering a malformed request without echoing any of it."""

    __slots__ = ()

    @classmethod
    def of(cls, server: web.Server) -> QuietHandler:
        """What ``server()`` makes, as a QuietHandler (its settings are aiohttp's private ``_kwargs``: <3.15)."""
        kwargs: dict[str, Any] = server._kwargs
        return cls(server, loop=asyncio.get_running_loop(), **kwargs)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        answer = super().handle_error(request, status, exc, "")  # logs, and refuses once a response began
        if status >= 500:
            return answer
        title = answer.reason or "Bad Request"
        quiet = problem(status, "bad-request", title, _kind(exc))
        quiet.force_close()
        return quiet


def head_too_large(limit: int) -> bytes:
    """The 431 a Guard writes itself (aiohttp never saw the head), connection closing."""
    body = orjson.dumps({"type": "urn:stagegate:problem:head-too-large", "title": "Request Header Fields Too Large",
                         "status": 431, "detail": f"the request head is over {limit} bytes"}) + b"\n"
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/problem+json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class ClientErrorFilter(logging.Filter):
    """Rewrites (or drops, past the flood guard's rate) aiohttp's log records of malformed client requests."""

    def __init__(self, flood: FloodGuard) -> None:
        super().__init__()
        self._flood = flood

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        if not self._flood.allow(("-", "bad_request")):
            return False
        reason = str(exc.message).strip().splitlines()[0] if exc.message else type(exc).__name__
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        record.event = "client_bad_request"  # read by proxy.shared.logs.JsonFormatter
        record.fields = {"status": exc.code, "reason": safe_text(reason, 120)}
        return True


def install(flood: FloodGuard) -> ClientErrorFilter:
    """Attach the filter (remove it with :func:`uninstall`)."""
    quiet = ClientErrorFilter(flood)
    logging.getLogger(LOGGER).addFilter(quiet)
    return quiet


def uninstall(quiet: ClientErrorFilter) -> None:
    logging.getLogger(LOGGER).removeFilter(quiet)
