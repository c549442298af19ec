"""Canary bucketing: a stable hash of the request ID (docs/canary.md has test vectors).

bucket(id) = (first 8 bytes of SHA-256(UTF-8 id), big-endian) mod 10000, in
hundredths of a percent, so uniform over [0, 100) with 0.01 % resolution and
identical in every process, replica, language and restart. A request is
enforced iff bucket < percent: raising the percent only ever adds requests.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from typing import Final

_VALID_ID: Final = re.compile(r"[\x21-\x7e]{1,128}")


def bucket_hundredths(request_id: str) -> int:
    """The request's bucket in hundredths of a percent: 0..9999."""
    digest = hashlib.sha256(request_id.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % 10000


def bucket(request_id: str) -> float:
    """The request's bucket in percent, uniform over [0, 100)."""
    return bucket_hundredths(request_id) / 100


def is_enforced(request_id: str, percent: float) -> bool:
    """True iff this request falls inside the canary share ``percent``."""
    return bucket_hundredths(request_id) < round(percent * 100)


def accept_request_id(value: str | None) -> str | None:
    """The client's request ID if usable (1-128 visible ASCII characters), else None."""
    if value is not None and _VALID_ID.fullmatch(value):
        return value
    return None


_ids = random.Random(os.urandom(32))  # seeded per process; no syscall per request (uuid4 reads os.urandom)


def new_request_id() -> str:
    """32 random hex digits (128 bits, like a uuid4's hex): unique in practice, uniform under bucket()."""
    return f"{_ids.getrandbits(128):032x}"
