"""Client protocol errors logged quietly: one WARN line without a traceback, under the flood guard.

aiohttp's server logs every malformed request (bad framing, invalid headers)
at ERROR with a traceback (~640 bytes): a client sending a thousand bad
requests a second would write 0.6 MB/s of log. These are client mistakes,
not our faults. This filter on the ``aiohttp.server`` logger turns such a
record into a ``client_bad_request`` WARN line (status and aiohttp's reason,
truncated) and lets the flood guard drop the excess (counted in its summary
line). Anything else aiohttp logs keeps its level and traceback: that is a bug.
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp.http_exceptions import HttpProcessingError

from proxy.shared.logs import FloodGuard, safe_text

LOGGER: Final = "aiohttp.server"


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
