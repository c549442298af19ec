"""Credentials that never print, and URLs with their passwords masked for messages."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

MASK = "**********"


@dataclass(frozen=True, slots=True)
class Secret:
    """A credential that never prints: repr and str are masked."""

    _value: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    __str__ = __repr__

    def matches(self, candidate: str) -> bool:
        """Constant-time comparison (hmac.compare_digest)."""
        return hmac.compare_digest(candidate.encode("utf-8", "surrogateescape"), self._value.encode("utf-8"))

    def reveal(self) -> str:
        return self._value


def mask_url(value: str) -> str:
    """``value`` with any password (and query string, which may carry one) masked; safe for any text."""
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:  # a malformed netloc can still hold a password: mask everything between : and @
        head, at, tail = value.rpartition("@")
        return f"{head.split(':', 2)[0]}:{MASK}@{tail}" if at and ":" in head else value
    if password is None and not parts.query:
        return value
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{MASK}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc, query=MASK if parts.query else ""))


_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):[^@\s]*@")


def mask_text(text: str) -> str:
    """Free text (an error message) with the password of every URL in it masked."""
    return _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
