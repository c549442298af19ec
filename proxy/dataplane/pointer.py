"""RFC 6901 JSON Pointer helpers."""

from __future__ import annotations


def escape_pointer(key: str) -> str:
    """RFC 6901 reference token escaping: ``~`` -> ``~0``, ``/`` -> ``~1``."""
    return key.replace("~", "~0").replace("/", "~1")
