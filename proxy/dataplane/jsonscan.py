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
from dataclasses import dataclass
from typing import Final

from proxy.catalog.keys import fold_key, lookalikes_of

Spans = list[tuple[int, int]]  # (start, end) of each leaf value token, in document order

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


# Values skipped in one C call: scalars, and containers nested at most _DEPTH deep. The bytes are valid JSON (a
# parser accepted them), so a container is a bracket, then anything but brackets and quotes, strings and smaller
# containers, then any closing bracket: one copy of the smaller pattern per level, linear in size and in time.
_DEPTH: Final = 128
_STRING_P: Final = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'  # the string token, possessive: no backtracking into it
_SCALAR_P: Final = rb"(?:" + _STRING_P + rb"|[-+.0-9a-zA-Z]++)"


def _container(depth: int, opener: bytes = rb"[\[{]", closer: bytes = rb"[\]}]") -> bytes:
    smaller = rb"(?!)"  # no container at depth 0
    for _ in range(depth - 1):
        smaller = rb"[\[{](?:[^\"\[\]{}]++|" + _STRING_P + rb"|" + smaller + rb")*+[\]}]"
    return opener + rb"(?:[^\"\[\]{}]++|" + _STRING_P + rb"|" + smaller + rb")*+" + closer


_WS_P: Final = rb"[ \t\n\r]*+"
_VALUE_P: Final = rb"(?:" + _SCALAR_P + rb"|" + _container(_DEPTH) + rb")"
_ARRAY_P: Final = _container(_DEPTH, rb"\[", rb"\]")
_OBJECT_P: Final = _container(_DEPTH, rb"\{", rb"\}")


def _other(key: str, strict: bool) -> bytes:
    """A member whose key is not ``key`` in any spelling (``strict``: nor in any case), with a value of bounded
    depth."""
    return rb"(?!" + spelling(key, any_case=strict).pattern + rb")" + _STRING_P + _WS_P + rb":" + _WS_P + _VALUE_P


@functools.cache
def member_run(key: str, strict: bool = True) -> re.Pattern[bytes]:
    """A run of ``"other": value,`` members: keys that spell ``key`` in no case (not ``strict``: that do not spell
    it exactly), values nested at most ``_DEPTH`` deep (whatever they hold: they are off the path). Skipped in one
    C call."""
    return re.compile(rb"(?:" + _WS_P + _other(key, strict) + _WS_P + rb",)*+", re.DOTALL)


@functools.cache
def _leaf_object(key: str, strict: bool) -> bytes:
    """An object holding ``key`` at most once, spelled exactly (the value is group ``v``), no other spelling of it
    (``strict``: in any case), and values of bounded depth. Anything else is left to the member-by-member walk."""
    other = _other(key, strict)
    return (rb"\{" + _WS_P + rb"(?:" + other + _WS_P + rb"," + _WS_P + rb")*+"
            rb"(?:" + spelling(key).pattern + _WS_P + rb":" + _WS_P + rb"(?P<v>" + _VALUE_P + rb")" + _WS_P
            + rb"(?:," + _WS_P + other + _WS_P + rb")*+|" + other + _WS_P + rb")?\}")


@functools.cache
def _skippable(part: str, strict: bool) -> bytes:
    """An array element that is no path container at the level of ``part``: a scalar, a container of the wrong
    kind, or (for an object level) an object without ``part`` in any spelling at its top."""
    if part == "*":
        return rb"(?:" + _SCALAR_P + rb"|" + _OBJECT_P + rb")"
    return (rb"(?:" + _SCALAR_P + rb"|" + _ARRAY_P + rb"|\{" + _WS_P + rb"(?:" + _other(part, strict) + _WS_P + rb",?"
            + _WS_P + rb")*+\})")


@functools.cache
def element_run(part: str, strict: bool = True) -> re.Pattern[bytes]:
    """A run of array elements that hold no path container at the level of ``part`` (each with its comma)."""
    return re.compile(rb"(?:" + _WS_P + _skippable(part, strict) + _WS_P + rb",)*+", re.DOTALL)


@functools.cache
def leaf_element(key: str, strict: bool = True) -> re.Pattern[bytes]:
    """The next array element that matters when the elements are the leaf objects of ``key``, after any run of
    elements that do not: an object holding it (value span: group ``v``) or the last skippable element; then the
    separator (group ``sep``)."""
    skippable = _skippable(key, strict)
    return re.compile(rb"(?:" + _WS_P + skippable + _WS_P + rb",)*+" + _WS_P
                      + rb"(?:" + _leaf_object(key, strict) + rb"|" + skippable + rb")" + _WS_P + rb"(?P<sep>[,\]])",
                      re.DOTALL)


@functools.cache
def leaf_object(key: str, strict: bool = True) -> re.Pattern[bytes]:
    """:func:`_leaf_object` compiled: a whole leaf-level object in one C call."""
    return re.compile(_leaf_object(key, strict), re.DOTALL)


@functools.cache
def leaf_regex(key: str) -> re.Pattern[bytes]:
    """The key in any spelling and a colon (group 1), and the value when it is a string (group 2, else empty)."""
    return re.compile(b"(" + spelling(key).pattern + _WS + b":" + _WS + b")(" + _STRING + b"|)", re.DOTALL)


def splice_literal(raw: bytes, leaf_key: str, leaves: int, targets: dict[int, bytes]) -> bytes | None:
    """``raw`` with the string values of the leaves in ``targets`` (ordinal -> new JSON) replaced.

    Only when the literal proof holds: every spelling of ``leaf_key`` in the
    bytes is then a path key, in document order, so the n-th match is the n-th
    leaf. None when the count does not line up (the caller scans instead).
    Split in C into [text, key, value, text, key, value, …, text]: the n-th
    leaf's value is piece 3n + 2, replaced in place; no Python runs per match.
    """
    pieces = leaf_regex(leaf_key).split(raw)
    if len(pieces) != 3 * leaves + 1:
        return None
    for ordinal, new in targets.items():
        if pieces[3 * ordinal + 2]:  # a string value (an empty piece: the value is not a string)
            pieces[3 * ordinal + 2] = new
    return b"".join(pieces)


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


class _Duplicate(Exception):
    """A path object holds its key twice: the verdict is made, the walk stops."""


@dataclass(frozen=True, slots=True)
class _Fast:
    """The regular expressions a walk uses per level (None where the level cannot use one)."""

    runs: tuple[re.Pattern[bytes] | None, ...]  # member runs of path objects
    leaf_objects: tuple[re.Pattern[bytes] | None, ...]  # a whole leaf-level object
    elements: tuple[re.Pattern[bytes] | None, ...]  # element runs of path arrays
    leaf_elements: tuple[re.Pattern[bytes] | None, ...]  # the next leaf object of a path array


@functools.cache
def _fast(parts: tuple[str, ...], strict: bool) -> _Fast:
    last = len(parts) - 1
    plain = tuple(part != "*" and _plain(part) for part in parts)
    above = tuple(enumerate(parts[:-1]))
    return _Fast(
        runs=tuple(member_run(part, strict) if plain[i] else None for i, part in enumerate(parts)),
        leaf_objects=tuple(leaf_object(part, strict) if plain[i] and i == last else None
                           for i, part in enumerate(parts)),
        elements=tuple(element_run(parts[i + 1], strict) if part == "*" and (parts[i + 1] == "*" or plain[i + 1])
                       else None for i, part in above) + (None,),
        leaf_elements=tuple(leaf_element(parts[i + 1], strict) if part == "*" and i + 1 == last and plain[i + 1]
                            else None for i, part in above) + (None,),
    )


class Scanner:
    """A walk of the containers on the field path in the raw bytes: duplicates, case variants, leaf spans.

    Runs of members and elements that cannot hold a path key are skipped by regular expressions (C), and a
    leaf-level object is read in one match: Python runs once per path object, not per member or element. The
    first duplicate ends the walk; after a case variant the walk goes on looking only for duplicates (the reason
    a body is unreadable for is the duplicate then).
    """

    def __init__(self, parts: tuple[str, ...]) -> None:
        self.parts = parts
        self.spans: Spans = []
        self.duplicate = False  # a path object holds the path key twice
        self.case_variant = False  # a path object holds a key equal to the path key but for ASCII case
        self._folded = tuple(fold_key(part) for part in parts)
        self._needles = tuple(b'"' + part.encode() + b'"' for part in parts)
        self._fast = _fast(parts, True)  # pragma: no mutate - only faster: the walk reads the same without it
        self._raw = b""  # pragma: no mutate - set by scan()
        self._text = ""  # pragma: no mutate - set by scan()

    def scan(self, raw: bytes) -> Scanner:
        self._raw = raw
        self._text = raw.decode("latin-1")  # pragma: no mutate - one character per byte: indices are byte offsets
        try:
            self._value(0, _skip_ws(raw, 0))
        except _Duplicate:
            self.duplicate = True
        return self

    def _skip(self, pos: int) -> int:
        """The end of the value at ``pos``, not looked into (strings by regex, the rest by the C scanner)."""
        if self._raw[pos] == 0x22:  # pragma: no mutate - '"': the regex is only faster than the C scanner here
            match = _STRING_RE.match(self._raw, pos)
            assert match is not None
            return match.end()
        end: int = _SCAN_ONCE(self._text, pos)[1]
        return end

    def _value(self, level: int, pos: int) -> int:
        """Walk the value at ``pos`` (on the path at ``level``); its end."""
        if level == len(self.parts):
            end = self._skip(pos)
            self.spans.append((pos, end))
            return end
        opener = self._raw[pos]
        if self.parts[level] == "*":
            return self._array(level, pos) if opener == 0x5B else self._skip(pos)  # '['
        if opener != 0x7B:  # '{'
            return self._skip(pos)
        whole = self._fast.leaf_objects[level]
        if whole is not None:
            match = whole.match(self._raw, pos)
            if match is not None:
                if match.start("v") >= 0:
                    self.spans.append(match.span("v"))
                return match.end()
        return self._object(level, pos)

    def _array(self, level: int, pos: int) -> int:
        raw = self._raw
        empty = _EMPTY.match(raw, pos + 1)
        if empty is not None:
            return empty.end()
        pos += 1
        spans = self.spans
        while True:
            fast = self._fast  # pragma: no mutate - changes when a case variant is found
            run, leaf = fast.elements[level], fast.leaf_elements[level]
            if leaf is not None:  # the hot loop of deals[*].stage: one match per path object
                element = leaf.match(raw, pos)
                if element is not None:
                    if element.start("v") >= 0:
                        spans.append(element.span("v"))
                    pos = element.end()
                    if element.group("sep") == b"]":
                        return pos
                    continue
            if run is not None:
                pos = run.match(raw, pos).end()  # type: ignore[union-attr]  # a run may be empty, never absent
            pos = self._value(level + 1, _skip_ws(raw, pos))
            separator = _NEXT.match(raw, pos)
            assert separator is not None
            pos = separator.end()
            if separator.group(1) == b"]":
                return pos

    def _object(self, level: int, pos: int) -> int:
        raw = self._raw
        empty = _EMPTY.match(raw, pos + 1)
        if empty is not None:
            return empty.end()
        pos += 1
        seen = False
        while True:
            run = self._fast.runs[level]  # pragma: no mutate - see __init__
            if run is not None:
                pos = run.match(raw, pos).end()  # type: ignore[union-attr]  # a run may be empty, never absent
            member = _MEMBER.match(raw, pos)
            assert member is not None
            pos = member.end()
            if self._is_path_key(member.group(1), level):
                if seen:
                    raise _Duplicate
                seen = True
                pos = self._value(level + 1, pos)
            else:
                pos = self._skip(pos)
            separator = _NEXT.match(raw, pos)
            assert separator is not None
            pos = separator.end()
            if separator.group(1) == b"}":
                return pos

    def _is_path_key(self, token: bytes, level: int) -> bool:
        """True for the path key at ``level``; a key that differs from it only in case (proxy.catalog.keys:
        ``Stage``, ``ſtage`` and ``ﬆage`` are all ``stage`` to some decoder) is noted as a case variant."""
        needle = self._needles[level]
        if token == needle:
            return True
        if len(token) > 6 * len(needle):  # too long to decode to a key of the needle's length (\uXXXX is 6 bytes)
            return False
        if b"\\" not in token and token.isascii() and needle.isascii():  # ASCII case keeps the length in bytes
            if len(token) == len(needle) and token.lower() == needle.lower():
                self._variant()
            return False
        key = decode_key(token)
        if key == self.parts[level]:
            return True
        if fold_key(key) == self._folded[level]:
            self._variant()
        return False

    def _variant(self) -> None:
        """Note a case variant; from here on the walk looks for duplicates only (variants no longer stop the
        regular expressions)."""
        self.case_variant = True
        self._fast = _fast(self.parts, False)
