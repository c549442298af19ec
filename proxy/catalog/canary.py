"""Canary bucketing: a stable hash of the request ID (docs/canary.md has test vectors).

bucket(id) = (first 8 bytes of SHA-256(UTF-8 id), big-endian) mod 10000, in
hundredths of a percent, so uniform over [0, 100) with 0.01 % resolution and
identical in every process, replica, language and restart. A request is
enforced iff bucket < percent: raising the percent only ever adds requests.
"""

from __future__ import annotations

import hashlib


def bucket_hundredths(request_id: str) -> int:
    """The request's bucket in hundredths of a percent: 0..9999."""
    digest = hashlib.sha256(request_id.encode("utf-8", "surrogateescape")).digest()  # pragma: no mutate - codec case
    return int.from_bytes(digest[:8], "big") % 10000  # pragma: no mutate - "big" is the default, written for readers


def bucket(request_id: str) -> float:
    """The request's bucket in percent, uniform over [0, 100)."""
    return bucket_hundredths(request_id) / 100


def is_enforced(request_id: str, percent: float) -> bool:
    """True iff this request falls inside the canary share ``percent``."""
    return bucket_hundredths(request_id) < round(percent * 100)
