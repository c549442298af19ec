"""Request IDs: the client's, when usable, or a new one (forwarded upstream and returned)."""

from __future__ import annotations

import os
import random
import re
from typing import Final

_VALID_ID: Final = re.compile(r"[\x21-\x7e]{1,128}")


def accept_request_id(value: str | None) -> str | None:
    """The client's request ID if usable (1-128 visible ASCII characters), else None."""
    if value is not None and _VALID_ID.fullmatch(value):
        return value
    return None


_ids = random.Random(os.urandom(32))  # seeded per process; no syscall per request (uuid4 reads os.urandom)


def new_request_id() -> str:
    """32 random hex digits (128 bits, like a uuid4's hex): unique in practice, uniform under bucket()."""
    return f"{_ids.getrandbits(128):032x}"
