"""JSON-lines logging on stdout, with client text made safe and WARN floods capped.

One helper, :func:`log_event`, builds the line only when the level is enabled,
so a disabled DEBUG line costs one method call.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, Final

import orjson

MAX_TEXT: Final = 200
_BASE_ATTRS: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))


def safe_text(value: object, limit: int = MAX_TEXT) -> str:
    """Client-supplied text, truncated and made encodable; JSON escapes the rest."""
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode() if _small(value) else "<...>"
    if len(text) > limit:
        text = text[:limit] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _small(value: object) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) < 2**63
    return not isinstance(value, dict | list)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, event, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": "WARN" if record.levelno == logging.WARNING else record.levelname,
            "event": getattr(record, "event", None) or "log",
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            payload.update(fields)
        if getattr(record, "event", None) is None:
            payload["message"] = safe_text(record.getMessage(), 2000)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


class ConsoleFormatter(JsonFormatter):
    """The same fields for a person at a terminal: ``ts LEVEL event key=value …`` (values JSON-escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        payload = orjson.loads(super().format(record))
        head = f"{payload.pop('ts')} {payload.pop('level'):<5} {payload.pop('event')}"
        payload.pop("logger", None)
        fields = " ".join(f"{key}={orjson.dumps(value).decode()}" for key, value in payload.items()
                          if value is not None)
        return f"{head} {fields}".rstrip()


def configure(level: str = "INFO", *, console: bool | None = None) -> None:
    """Send every log record to stdout: JSON lines, or readable lines when stdout is a terminal."""
    handler = logging.StreamHandler(sys.stdout)
    readable = sys.stdout.isatty() if console is None else console
    handler.setFormatter(ConsoleFormatter() if readable else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def log_event(logger: logging.Logger, level: int, event: str, /, **fields: object) -> None:
    """Emit one structured line if ``level`` is enabled (lazy: nothing built otherwise)."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"event": event, "fields": fields})


class FloodGuard:
    """At most ``per_s`` lines per second per key; the rest counted and summarized.

    A 30 % unknown rate at full load would otherwise write thousands of WARN
    lines a second (docs/proxy.md, "Logs").
    """

    def __init__(self, logger: logging.Logger, per_s: int) -> None:
        self._logger = logger
        self._per_s = per_s
        self._window = 0
        self._counts: dict[tuple[str, str], int] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def allow(self, key: tuple[str, str]) -> bool:
        """True if a line for ``key`` may be written now."""
        window = int(time.monotonic())
        if window != self._window:
            self.flush()
            self._window = window
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        if count <= self._per_s:
            return True
        self._suppressed[key] = self._suppressed.get(key, 0) + 1
        return False

    def flush(self) -> None:
        """Write one summary line per key whose lines were suppressed."""
        for (endpoint, result), count in self._suppressed.items():
            log_event(self._logger, logging.WARNING, "log_suppressed", endpoint=endpoint, result=result,
                      suppressed=count, per_s_limit=self._per_s)
        self._suppressed.clear()
        self._counts.clear()
