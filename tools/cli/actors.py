"""Who did it: the ``actor`` every mutating stagectl command records in the mode history (docs/ops-plane.md).

``stagectl <command> (<who>)``: who is ``--actor``, else ``$STAGE_ACTOR``, else the login name, else
``unknown`` — so the history names a person, not only a tool.
"""

from __future__ import annotations

import getpass
from typing import Final

MAX_WHO: Final = 60  # the admin API takes actors up to 100 characters


def who(given: str | None) -> str:
    """The person behind a command: --actor or $STAGE_ACTOR (``given``), the login name, or ``unknown``."""
    if given and given.strip():
        return given.strip()[:MAX_WHO]
    try:
        return getpass.getuser()[:MAX_WHO] or "unknown"
    except (OSError, KeyError):  # no login name (a container without /etc/passwd entry, no $USER)
        return "unknown"


def actor(command: str, given: str | None) -> str:
    """``stagectl <command> (<who>)``."""
    return f"stagectl {command} ({who(given)})"
