"""When two JSON member names are the same key to some upstream decoder: Unicode case folding.

Case-insensitive decoders compare keys under Unicode case folding, not only
ASCII: Go's ``encoding/json`` folds ``ſ`` (U+017F LATIN SMALL LETTER LONG S)
to ``s`` and ``K`` (U+212A KELVIN SIGN) to ``k``; JavaScript's
``toUpperCase`` turns ``ﬆ`` (U+FB06) into ``ST``; Java's
``equalsIgnoreCase`` and .NET's ordinal-ignore-case equate ``İ`` (U+0130) and
``ı`` (U+0131) with ``i``. So keys are compared under the loosest of these: full
case folding (``str.casefold``), with ``İ`` and ``ı`` as ``i``. Two keys of one
object on the field's path that fold alike are ambiguous (docs/proxy.md,
"Bodies that read one way").

Pure: no I/O.
"""

from __future__ import annotations

import functools
from typing import Final

_EXTRA: Final = {"\u0130": "i", "\u0131": "i"}
# Every non-ASCII character whose folding is made of ASCII letters (all of Unicode checked by
# tests/test_keys.py): the only ways to spell an ASCII key's letters in other characters.
LOOKALIKES: Final = {"\u00df": "ss", "\u0130": "i", "\u0131": "i", "\u017f": "s", "\u1e9e": "ss", "\u212a": "k",
                     "\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
                     "\ufb05": "st", "\ufb06": "st"}


def fold_key(key: str) -> str:
    """``key`` under full Unicode case folding (``İ`` and ``ı`` as ``i``): equal results, one key to someone."""
    if key.isascii():
        return key.lower()
    return "".join(_EXTRA.get(char) or char.casefold() for char in key)


@functools.cache
def lookalikes_of(key: str) -> tuple[tuple[str, str], ...]:
    """The (character, ASCII letters it folds to) pairs that can spell part of ``key`` (an ASCII key)."""
    folded = key.lower()
    return tuple((char, letters) for char, letters in LOOKALIKES.items() if letters in folded)


@functools.cache
def lookalike_bytes(key: str) -> tuple[bytes, ...]:
    """The UTF-8 bytes of every character that can spell part of ``key`` without being ASCII."""
    return tuple(char.encode() for char, _ in lookalikes_of(key))
