"""Durations (``90s``, ``30m``, ``2h``, ``45d``) and instants (RFC 3339 or Unix seconds) on the command line."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (``90s``, ``30m``, ``2h``, ``1h30m``, ``45d``); ValueError when it is not one."""
    text = text.strip()
    if not text or _DURATION.sub("", text):
        raise ValueError(f"{text!r} is not a duration (use 90s, 30m, 2h, 45d)")
    seconds = sum(float(number) * _UNIT_S[unit] for number, unit in _DURATION.findall(text))
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


def format_duration(seconds: float) -> str:
    """``seconds`` as ``2h05m``, ``4m10s`` or ``12s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def parse_instant(text: str) -> float:
    """Unix seconds of ``text``: RFC 3339 (``2026-12-01T01:00:00Z``, an offset) or Unix seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an instant (RFC 3339 like 2026-12-01T01:00:00Z, or Unix seconds)") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z for UTC)")
    return moment.timestamp()


def iso(seconds: float) -> str:
    """RFC 3339 in UTC, seconds precision: ``2026-12-01T01:00:00Z``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def day_of(seconds: float) -> str:
    """The UTC calendar day holding ``seconds``: ``2026-12-01``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d")
