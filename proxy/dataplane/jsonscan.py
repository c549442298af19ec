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
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from proxy.catalog.keys import fold_key, lookalikes_of

Spans = list[tuple[int, int]]  # (start, end) of each leaf value token, in document order

_WS: Final = rb"[ \t\n\r]*"
_STRING: Final = rb'"[^"\\]*(?:\\.[^"\\]*)*"'  # "unrolled loop" (Friedl): linear, no per-character alternation
_MEMBER: Final = re.compile(_WS + rb"(" + _STRING + rb")" + _WS + rb":" + _WS, re.DOTALL)
_NEXT: Final = re.compile(_WS + rb"([,}\]])")
_EMPTY: Final = re.compile(_WS + rb"([}\]])")
_WHITESPACE: Final = frozenset(b" \t\n\r")


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


@functools.cache
def spellings_by_head(key: str, *, any_case: bool = False) -> tuple[re.Pattern[bytes], ...]:
    """:func:`spelling` split by the first token after the quote (``s``, ``S``, ``\\u0073``, ``ſ``…): each
    pattern starts with a literal of two to seven bytes, which the regular-expression engine finds with a fast
    substring search instead of trying the whole alternation at every quote (a 1 MiB body of ``\\"`` held half a
    million quotes: 60 ms, now ~2 ms)."""
    rest = _spelling_from(key, 1, any_case)
    chars = {key[0], key[0].lower(), key[0].upper()} if any_case else {key[0]}
    heads = [option + rest for char in sorted(chars) for option in _escapes(char)]
    if any_case:
        for char, letters in lookalikes_of(key):
            if key.lower().startswith(letters):
                heads += [option + _spelling_from(key, len(letters), any_case) for option in _escapes(char)]
    return tuple(re.compile(b'"' + head + b'"') for head in heads)


def spelling_count(raw: bytes, key: str, *, any_case: bool = False) -> int:
    """How often ``key`` is spelled as a string token in ``raw`` (also inside other strings: see the proof).
    Patterns of different heads never match at the same place."""
    return sum(len(pattern.findall(raw)) for pattern in spellings_by_head(key, any_case=any_case))


# Values skipped in one C call: scalars, and containers nested at most _DEPTH deep. The bytes are valid JSON (a
# parser accepted them), so a container is a bracket, then anything but brackets and quotes, strings and smaller
# containers, then any closing bracket: one copy of the smaller pattern per level, linear in size and in time. The
# loop is unrolled (a run of plain bytes, then (string or container, plain bytes)*): 20-25 % faster than an
# alternation per step. A value nested deeper fails the patterns after _DEPTH levels: the member-by-member walk
# then finds it (each pattern is written so that a failing match scans such a value once) and stops there: the
# body is unreadable (nesting_too_deep). No deal nests 128 deep, and without the bound a body of such values costs
# twice the CPU (bench/worst.py found one at 290 ms per MiB).
_DEPTH: Final = 128
_DECODED_KEYS: Final = 1024  # escaped or non-ASCII keys whose reading one walk remembers
_STRING_P: Final = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'  # the string token, possessive: no backtracking into it
_SCALAR_P: Final = rb"(?:" + _STRING_P + rb"|[-+.0-9a-zA-Z]++)"
_PLAIN_P: Final = rb"[^\"\[\]{}]*+"


def _container(depth: int, opener: bytes = rb"[\[{]", closer: bytes = rb"[\]}]") -> bytes:
    smaller = rb"(?!)"  # no container at depth 0
    for _ in range(depth - 1):
        smaller = rb"[\[{]" + _PLAIN_P + rb"(?:(?:" + _STRING_P + rb"|" + smaller + rb")" + _PLAIN_P + rb")*+[\]}]"
    return opener + _PLAIN_P + rb"(?:(?:" + _STRING_P + rb"|" + smaller + rb")" + _PLAIN_P + rb")*+" + closer


_WS_P: Final = rb"[ \t\n\r]*+"
_VALUE_P: Final = rb"(?:" + _SCALAR_P + rb"|" + _container(_DEPTH) + rb")"
_ARRAY_P: Final = _container(_DEPTH, rb"\[", rb"\]")
_OBJECT_P: Final = _container(_DEPTH, rb"\{", rb"\}")


@functools.cache
def value_pattern() -> re.Pattern[bytes]:
    """One value of bounded depth (the walk's skip)."""
    return re.compile(_VALUE_P, re.DOTALL)


def _others(key: str, strict: bool) -> bytes:
    """A run of members whose keys are not ``key`` in any spelling (``strict``: nor in any case), values of bounded
    depth, each with its comma if it has one (the bytes are valid JSON: commas need no checking)."""
    return (rb"(?:(?!" + spelling(key, any_case=strict).pattern + rb")" + _STRING_P + _WS_P + rb":" + _WS_P
            + _VALUE_P + _WS_P + rb",?" + _WS_P + rb")*+")


@functools.cache
def member_run(key: str, strict: bool = True) -> re.Pattern[bytes]:
    """A run of ``"other": value,`` members: keys that spell ``key`` in no case (not ``strict``: that do not spell
    it exactly), values nested at most ``_DEPTH`` deep (whatever they hold: they are off the path). Skipped in one
    C call. It may take the object's last member too (no comma): the walk then finds the closing brace."""
    return re.compile(_WS_P + _others(key, strict), re.DOTALL)


@functools.cache
def _leaf_object(key: str, strict: bool) -> bytes:
    """An object holding ``key`` at most once, spelled exactly (the value is group ``v``), no other spelling of it
    (``strict``: in any case), and values of bounded depth. Anything else is left to the member-by-member walk."""
    others = _others(key, strict)
    return (rb"\{" + _WS_P + others + rb"(?:" + spelling(key).pattern + _WS_P + rb":" + _WS_P + rb"(?P<v>"
            + _VALUE_P + rb")" + _WS_P + rb",?" + _WS_P + others + rb")?\}")


@functools.cache
def _skippable(part: str, strict: bool) -> bytes:
    """An array element that is no path container at the level of ``part``: a scalar, a container of the wrong
    kind, or (for an object level) an object without ``part`` in any spelling at its top."""
    if part == "*":
        return rb"(?:" + _SCALAR_P + rb"|" + _OBJECT_P + rb")"
    return rb"(?:" + _SCALAR_P + rb"|" + _ARRAY_P + rb"|\{" + _WS_P + _others(part, strict) + rb"\})"


@functools.cache
def element_run(part: str, strict: bool = True) -> re.Pattern[bytes]:
    """A run of array elements that hold no path container at the level of ``part`` (each with its comma)."""
    return re.compile(rb"(?:" + _WS_P + _skippable(part, strict) + _WS_P + rb",)*+", re.DOTALL)


@functools.cache
def leaf_element(key: str, strict: bool = True) -> re.Pattern[bytes]:
    """One array element when the elements are the leaf objects of ``key``: an object (holding it: value span in
    group ``v``), a scalar or an array; then the separator (group ``sep``)."""
    return re.compile(_WS_P + rb"(?:" + _leaf_object(key, strict) + rb"|" + _SCALAR_P + rb"|" + _ARRAY_P + rb")"
                      + _WS_P + rb"(?P<sep>[,\]])", re.DOTALL)


@functools.cache
def leaf_run(key: str, strict: bool = True) -> re.Pattern[bytes]:
    """A run of array elements (each with its comma) when the elements are the leaf objects of ``key``: objects
    holding it at most once and in no other spelling, scalars, arrays. When no span is wanted (no alias to
    rewrite), a whole array of them is read in one C call."""
    return re.compile(rb"(?:" + _WS_P + rb"(?:" + _leaf_object(key, strict) + rb"|" + _SCALAR_P + rb"|" + _ARRAY_P
                      + rb")" + _WS_P + rb",)*+", re.DOTALL)


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


class _TooDeep(Exception):
    """A value nested deeper than _DEPTH: the verdict is made, the walk stops."""


@dataclass(frozen=True, slots=True)
class _Fast:
    """The regular expressions a walk uses per level (None where the level cannot use one)."""

    runs: tuple[re.Pattern[bytes] | None, ...]  # member runs of path objects
    leaf_objects: tuple[re.Pattern[bytes] | None, ...]  # a whole leaf-level object
    elements: tuple[re.Pattern[bytes] | None, ...]  # element runs of path arrays
    leaf_elements: tuple[re.Pattern[bytes] | None, ...]  # the next leaf object of a path array
    leaf_runs: tuple[re.Pattern[bytes] | None, ...]  # a run of them


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
        leaf_runs=tuple(leaf_run(parts[i + 1], strict) if part == "*" and i + 1 == last and plain[i + 1]
                        else None for i, part in above) + (None,),
    )


def prepare(parts: tuple[str, ...]) -> None:
    """Compile the expressions a walk of ``parts`` starts with (~0.1 s for deals[*].stage): done when a catalog
    is loaded (at start, or in the reload's worker thread), not by the first request that needs them."""
    _fast(parts, True)
    value_pattern()


class Scanner:
    """A walk of the containers on the field path in the raw bytes: duplicates, case variants, leaf spans.

    Runs of members and elements that cannot hold a path key are skipped by regular expressions (C), and a
    leaf-level object is read in one match: Python runs once per path object, not per member or element. The
    first duplicate ends the walk; after a case variant the walk goes on looking only for duplicates (the reason
    a body is unreadable for is the duplicate then).
    """

    def __init__(self, parts: tuple[str, ...], *, spans: bool = True,
                 region: Callable[[int], bool] | None = None) -> None:
        self.parts = parts
        self.spans: Spans = []  # complete only if ``complete_spans`` (runs of leaf objects read whole give none)
        self._want_spans = spans
        self.complete_spans = spans
        # ``region``: asked once, as the walk enters the first array of leaf objects (at its first byte), whether
        # the literal proof holds from there to the end of the body; if so, that array's elements are read without
        # spans (a rewrite splices by the key's spellings inside it: ``region``), else with them. One walk either
        # way: a body whose proof fails inside the array is not walked a second time for its spans.
        self._region_proof = region
        self.region: tuple[int, int] | None = None
        self.duplicate = False  # a path object holds the path key twice
        self.case_variant = False  # a path object holds a key equal to the path key but for ASCII case
        self.too_deep = False  # a value nests deeper than _DEPTH levels (the walk stopped there)
        self._leaf_arrays = 0  # arrays of leaf objects entered so far
        self._folded = tuple(fold_key(part) for part in parts)
        self._needles = tuple(b'"' + part.encode() + b'"' for part in parts)
        self._fast = _fast(parts, True)  # pragma: no mutate - only faster: the walk reads the same without it
        self._raw = b""  # pragma: no mutate - set by scan()
        self._skip_value = value_pattern()
        self._decoded: dict[tuple[bytes, int], int] = {}  # escaped or non-ASCII key -> 1 path key, 2 variant, 0 not

    def scan(self, raw: bytes) -> Scanner:
        self._raw = raw
        try:
            self._value(0, _skip_ws(raw, 0))
        except _Duplicate:
            self.duplicate = True
        except _TooDeep:
            self.too_deep = True
        return self

    def _skip(self, pos: int) -> int:
        """The end of the value at ``pos``, not looked into."""
        match = self._skip_value.match(self._raw, pos)
        if match is None:
            raise _TooDeep
        return match.end()

    def _value(self, level: int, pos: int, fast: bool = True) -> int:
        """Walk the value at ``pos`` (on the path at ``level``); its end. Not ``fast``: no regular expression is
        tried on it (one failed already: the value holds something nested too deep for them)."""
        if level == len(self.parts):
            end = self._skip(pos)
            self.spans.append((pos, end))
            return end
        opener = self._raw[pos]
        if self.parts[level] == "*":
            if opener != 0x5B:  # '['
                return self._skip(pos)
            if level + 2 != len(self.parts):
                return self._array(level, pos)
            proven = self._prove_region(pos)
            end = self._array(level, pos)
            if proven:
                self.region = (pos, end)
            return end
        if opener != 0x7B:  # '{'
            return self._skip(pos)
        whole = self._fast.leaf_objects[level] if fast else None
        if whole is not None:
            match = whole.match(self._raw, pos)
            if match is not None:
                if match.start("v") >= 0:
                    self.spans.append(match.span("v"))
                return match.end()
        return self._object(level, pos, fast=False)

    def _prove_region(self, pos: int) -> bool:
        """Before an array of leaf objects: whether it will be the proven ``region`` (and is read without spans)."""
        self._leaf_arrays += 1
        if self._region_proof is None:
            return False
        if self._leaf_arrays > 1:  # a second array of leaf objects: no single region
            self.region, self._want_spans = None, True
            return False
        proven = self._region_proof(pos)
        self._want_spans = self.complete_spans = not proven
        return proven

    def _array(self, level: int, pos: int) -> int:
        raw = self._raw
        empty = _EMPTY.match(raw, pos + 1)
        if empty is not None:
            return empty.end()
        pos += 1
        while True:
            fast = self._fast  # pragma: no mutate - changes when a case variant is found
            if fast.leaf_elements[level] is not None:  # the hot loop of deals[*].stage: one match per path object
                pos, ended = self._leaf_elements(level, pos)
                if ended:
                    return pos
                pos = self._value(level + 1, _skip_ws(raw, pos), fast=False)  # one the expressions cannot read
            else:
                run = fast.elements[level]
                if run is not None:
                    pos = run.match(raw, pos).end()  # type: ignore[union-attr]  # may be empty, never absent
                pos = self._value(level + 1, _skip_ws(raw, pos))
            separator = _NEXT.match(raw, pos)
            assert separator is not None
            pos = separator.end()
            if separator.group(1) == b"]":
                return pos

    def _leaf_elements(self, level: int, pos: int) -> tuple[int, bool]:
        """Read leaf objects one match each (and runs of other elements in one) until the array ends (its end,
        True) or an element no expression can read (its start, False). Without spans wanted, runs of leaf objects
        are read in one match too."""
        raw, spans, fast = self._raw, self.spans, self._fast
        leaf, leaves = fast.leaf_elements[level], fast.leaf_runs[level]
        assert leaf is not None
        if not self._want_spans and leaves is not None:
            pos = leaves.match(raw, pos).end()  # type: ignore[union-attr]  # may be empty, never absent
        # One C-level loop: the pattern's scanner matches element after element where the last one ended, until
        # one does not match (after the closing bracket, or at an element no expression reads).
        elements = list(iter(leaf.scanner(raw, pos).match, None))  # type: ignore[attr-defined]  # CPython's
        if not elements:
            return pos, False
        spans += [span for element in elements if (span := element.span(1))[0] >= 0]  # group 1: the value
        pos = elements[-1].end()
        return pos, raw[pos - 1] == 0x5D  # the separator, the match's last byte, is ']': the array ended

    def _object(self, level: int, pos: int, fast: bool = True) -> int:
        raw = self._raw
        empty = _EMPTY.match(raw, pos + 1)
        if empty is not None:
            return empty.end()
        pos += 1
        seen = False
        while True:
            run = self._fast.runs[level] if fast else None  # pragma: no mutate - see __init__
            if run is not None:
                pos = run.match(raw, pos).end()  # type: ignore[union-attr]  # a run may be empty, never absent
                closing = _EMPTY.match(raw, pos)  # the run took the last member
                if closing is not None:
                    return closing.end()
            member = _MEMBER.match(raw, pos)
            assert member is not None
            pos = member.end()
            if self._is_path_key(member.group(1), level):
                if seen:
                    raise _Duplicate
                seen = True
                pos = self._value(level + 1, pos, fast)
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
        verdict = self._decoded.get((token, level))
        if verdict is None:
            key = decode_key(token)
            verdict = 1 if key == self.parts[level] else 2 if fold_key(key) == self._folded[level] else 0
            if len(self._decoded) < _DECODED_KEYS:  # one body repeats a handful of keys: decode each once
                self._decoded[(token, level)] = verdict
        if verdict == 2:
            self._variant()
        return verdict == 1

    def _variant(self) -> None:
        """Note a case variant; from here on the walk looks for duplicates only (variants no longer stop the
        regular expressions)."""
        self.case_variant = True
        self._fast = _fast(self.parts, False)
