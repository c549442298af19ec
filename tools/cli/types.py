"""Option types of the command layer: values argparse checks as it parses (a bad one is a usage error, exit 2)."""

from __future__ import annotations

import argparse
import re

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


def table_name(text: str) -> str:
    """An argparse type: ``table`` or ``schema.table``, each a plain SQL identifier (letters, digits, _ and $;
    not starting with a digit; at most 63 characters). Anything else — ``x;drop``, spaces, quotes — is refused
    rather than quoted into an object nobody meant to create."""
    parts = text.split(".")
    if len(parts) > 2 or not all(_IDENT.fullmatch(part) for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a table name (schema.table of letters, digits, _)")
    return text


def column_name(text: str) -> str:
    """An argparse type: one plain SQL identifier (see table_name)."""
    if not _IDENT.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a column name (letters, digits, _; not a digit first)")
    return text
