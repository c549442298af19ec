"""Reading raw JSON bytes along a field path: duplicate keys and the byte span of each value.

Used where the parsed document is not enough: orjson keeps the last of two
duplicate keys silently, and a rewrite must splice new bytes into the original
so that every other byte stays as sent. Only called on bodies a JSON parser
already accepted, so tokens are well formed.

Two ways, fast first:

* :func:`spelling_count` / :func:`splice_literal` — regular expressions over the
  bytes (C speed) for the path key in every spelling JSON allows (each
  character literal or ``\\u00XX``). When the key occurs exactly as often as
  the parsed document has it on the path, every occurrence *is* a path key, so
  no path object holds it twice and the n-th occurrence's value is the n-th
  leaf (the "literal proof", see proxy/dataplane/body.py).
* :class:`Scanner` — when the proof fails (the key also appears elsewhere):
  walks only the containers on the path, member by member, and skips every
  other value in one call of the stdlib's C JSON scanner.
"""

from __future__ import annotations

import functools
import json
import json.scanner
import re
from typing import Final

from proxy.catalog.keys import fold_key, lookalikes_of
from proxy.dataplane.pointer import escape_pointer

Spans = dict[str, tuple[int, int]]  # RFC 6901 pointer -> (start, end) of the value token

_WS: Final = rb"[ \t\n\r]*"
_STRING: Final = rb'"[^"\\]*(?:\\.[^"\\]*)*"'  # "unrolled loop" (Friedl): linear, no per-character alternation
_STRING_RE: Final = re.compile(_STRING, re.DOTALL)
_MEMBER: Final = re.compile(_WS + rb"(" + _STRING + rb")" + _WS + rb":" + _WS, re.DOTALL)
_NEXT: Final = re.compile(_WS + rb"([,}\]])")
_EMPTY: Final = re.compile(_WS + rb"([}\]])")
_WHITESPACE: Final = frozenset(b" \t\n\r")
_SCALAR: Final = rb'(?:' + _STRING + rb'|-?[0-9][0-9.eE+-]*|true|false|null)'
# The stdlib's C scanner, to find where a value ends: numbers are not converted (len is a cheap C callable), so
# integers of any length pass (int() refuses more than 4300 digits).
_DECODER: Final = json.JSONDecoder(parse_int=len, parse_float=len, parse_constant=len)
_SCAN_ONCE: Final = json.scanner.make_scanner(_DECODER)  # type: ignore[arg-type]  # typeshed: the pure-Python class


def _escapes(char: str) -> list[bytes]:
    """``char`` literally (UTF-8) and as every ``\\u`` escape of it (hex digits in any case)."""
    hex_digits = f"{ord(char):04x}"
    escaped = "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in hex_digits)
    return [re.escape(char).encode(), rb"\\u" + escaped.encode()]


def _char_spelling(char: str, any_case: bool) -> bytes:
    """Every way JSON can spell one ASCII character inside a string: itself or a \\u escape (hex in any case)."""
    chars = {char, char.lower(), char.upper()} if any_case else {char}
    return b"(?:" + b"|".join(option for c in sorted(chars) for option in _escapes(c)) + b")"


def _spelling_from(key: str, position: int, any_case: bool) -> bytes:
    """The key's characters from ``position`` on; with ``any_case``, also non-ASCII lookalikes that fold onto one
    or more of them (``ſ`` for ``s``, ``ﬆ`` for ``st``: proxy.catalog.keys)."""
    if position == len(key):
        return b""
    rest = _char_spelling(key[position], any_case) + _spelling_from(key, position + 1, any_case)
    if not any_case:
        return rest
    branches = [rest]
    for char, letters in lookalikes_of(key):
        if key.lower().startswith(letters, position):
            options = b"|".join(_escapes(char))
            branches.append(b"(?:" + options + b")" + _spelling_from(key, position + len(letters), any_case))
    return rest if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"


@functools.cache
def spelling(key: str, *, any_case: bool = False) -> re.Pattern[bytes]:
    """A JSON string token spelling ``key`` (printable ASCII without ``"\\/``) in any allowed way; with
    ``any_case``, in any case and with any character a decoder folds onto its letters."""
    return re.compile(b'"' + _spelling_from(key, 0, any_case) + b'"')


def spelling_count(raw: bytes, key: str, *, any_case: bool = False) -> int:
    """How often ``key`` is spelled as a string token in ``raw`` (also inside other strings: see the proof)."""
    return sum(1 for _ in spelling(key, any_case=any_case).finditer(raw))


@functools.cache
def member_run(key: str) -> re.Pattern[bytes]:
    """A run of ``"other": scalar,`` members: keys that spell ``key`` in no case, values that hold no container.

    Skipped in one C call, so that objects of many small members cost no Python per member.
    """
    other_key = rb"(?!" + spelling(key, any_case=True).pattern + rb")" + _STRING
    return re.compile(rb"(?:" + _WS + other_key + _WS + rb":" + _WS + _SCALAR + _WS + rb",)*", re.DOTALL)


@functools.cache
def leaf_regex(key: str) -> re.Pattern[bytes]:
    """The key in any spelling, a colon, and the value when it is a string (group 1)."""
    return re.compile(spelling(key).pattern + _WS + b":" + _WS + b"(" + _STRING + b")?", re.DOTALL)


def splice_literal(raw: bytes, leaf_key: str, leaves: int, targets: dict[int, bytes]) -> bytes | None:
    """``raw`` with the string values of the leaves in ``targets`` (ordinal -> new JSON) replaced.

    Only when the literal proof holds: every spelling of ``leaf_key`` in the
    bytes is then a path key, in document order, so the n-th match is the n-th
    leaf. None when the count does not line up (the caller scans instead).
    """
    ordinal = -1

    def replace(match: re.Match[bytes]) -> bytes:
        nonlocal ordinal
        ordinal += 1
        new = targets.get(ordinal)
        if new is None or match.group(1) is None:
            return match.group(0)
        return match.group(0)[:match.start(1) - match.start(0)] + new

    spliced = leaf_regex(leaf_key).sub(replace, raw)
    return spliced if ordinal + 1 == leaves else None


def _skip_ws(raw: bytes, pos: int) -> int:
    """The first position at or after ``pos`` that is not JSON whitespace."""
    while pos < len(raw) and raw[pos] in _WHITESPACE:
        pos += 1
    return pos


def _plain(key: str) -> bool:
    """A key :func:`spelling` can express (printable ASCII without quote, backslash or slash)."""
    return key.isascii() and key.isprintable() and not any(c in key for c in '"\\/')


# JSON escapes Python's unicode_escape reads differently: \/ and surrogate pairs (joined by JSON, not by Python).
_NOT_PYTHON_ESCAPES: Final = (b"\\/", b"\\ud", b"\\uD")


def decode_key(token: bytes) -> str:
    """The text of a JSON string token (a key); escapes decoded as JSON does."""
    if b"\\" not in token:
        return token[1:-1].decode("utf-8", "surrogatepass")  # pragma: no mutate - parsed JSON: valid UTF-8
    if token.isascii() and not any(marker in token for marker in _NOT_PYTHON_ESCAPES):  # pragma: no mutate
        return token[1:-1].decode("unicode_escape")  # pragma: no mutate - JSON's escapes are Python's here
    decoded = json.loads(token.decode("utf-8", "surrogatepass"))
    return decoded if isinstance(decoded, str) else ""


class Scanner:
    """A walk of the containers on the field path in the raw bytes: duplicates, case variants, leaf spans."""

    def __init__(self, parts: tuple[str, ...]) -> None:
        self.parts = parts
        self.spans: Spans = {}
        self.duplicate = False  # a path object holds the path key twice
        self.case_variant = False  # a path object holds a key equal to the path key but for ASCII case
        self._folded = tuple(fold_key(part) for part in parts)
        self._needles = tuple(b'"' + part.encode() + b'"' for part in parts)
        # Runs only speed the walk up (pragma: a mutant without them scans the same members one by one).
        self._runs = tuple(member_run(part) if part != "*" and _plain(part) else None  # pragma: no mutate
                           for part in parts)
        self._raw = b""  # pragma: no mutate - set by scan()
        self._text = ""  # pragma: no mutate - set by scan()

    def scan(self, raw: bytes) -> Scanner:
        self._raw = raw
        self._text = raw.decode("latin-1")  # pragma: no mutate - one character per byte: indices are byte offsets
        self._value(0, "", _skip_ws(raw, 0))
        return self

    def _skip(self, pos: int) -> int:
        """The end of the value at ``pos``, not looked into (strings by regex, the rest by the C scanner)."""
        if self._raw[pos] == 0x22:  # pragma: no mutate - '"': the regex is only faster than the C scanner here
            match = _STRING_RE.match(self._raw, pos)
            assert match is not None
            return match.end()
        end: int = _SCAN_ONCE(self._text, pos)[1]
        return end

    def _value(self, level: int, pointer: str, pos: int) -> int:
        """Walk the value at ``pos`` (on the path at ``level``); its end."""
        if level == len(self.parts):
            end = self._skip(pos)
            self.spans[pointer] = (pos, end)
            return end
        opener = self._raw[pos]
        if self.parts[level] == "*":
            return self._array(level, pointer, pos) if opener == 0x5B else self._skip(pos)  # '['
        return self._object(level, pointer, pos) if opener == 0x7B else self._skip(pos)  # '{'

    def _array(self, level: int, pointer: str, pos: int) -> int:
        raw = self._raw
        empty = _EMPTY.match(raw, pos + 1)
        if empty is not None:
            return empty.end()
        index = 0
        pos += 1
        while True:
            pos = self._value(level + 1, f"{pointer}/{index}", _skip_ws(raw, pos))
            index += 1
            separator = _NEXT.match(raw, pos)
            assert separator is not None
            pos = separator.end()
            if separator.group(1) == b"]":
                return pos

    def _object(self, level: int, pointer: str, pos: int) -> int:
        raw = self._raw
        empty = _EMPTY.match(raw, pos + 1)
        if empty is not None:
            return empty.end()
        pos += 1
        seen = False
        run = self._runs[level]  # pragma: no mutate - see __init__
        while True:
            if run is not None:
                pos = run.match(raw, pos).end()  # type: ignore[union-attr]  # a run may be empty, never absent
            member = _MEMBER.match(raw, pos)
            assert member is not None
            pos = member.end()
            if self._is_path_key(member.group(1), level):
                self.duplicate = self.duplicate or seen
                seen = True
                pos = self._value(level + 1, f"{pointer}/{escape_pointer(self.parts[level])}", pos)
            else:
                pos = self._skip(pos)
            separator = _NEXT.match(raw, pos)
            assert separator is not None
            pos = separator.end()
            if separator.group(1) == b"}":
                return pos

    def _is_path_key(self, token: bytes, level: int) -> bool:
        """True for the path key at ``level``; notes a key that differs from it only in case (proxy.catalog.keys:
        ``Stage``, ``ſtage`` and ``ﬆage`` are all ``stage`` to some decoder)."""
        needle = self._needles[level]
        if token == needle:
            return True
        if len(token) > 6 * len(needle):  # too long to decode to a key of the needle's length (\uXXXX is 6 bytes)
            return False
        if b"\\" not in token and token.isascii() and needle.isascii():  # ASCII case keeps the length in bytes
            if len(token) == len(needle) and token.lower() == needle.lower():
                self.case_variant = True
            return False
        key = decode_key(token)
        if key == self.parts[level]:
            return True
        if fold_key(key) == self._folded[level]:
            self.case_variant = True
        return False
