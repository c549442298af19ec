"""Token-level reading of raw JSON bytes along a field path.

Used where the parsed document is not enough: to find duplicate keys on the
path (orjson keeps the last silently) and the byte span of each value, so a
rewrite can splice new bytes in and leave every other byte as sent. Only called
on bodies a JSON parser already accepted, so tokens are well formed.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Final

from proxy.dataplane.pointer import escape_pointer

Spans = dict[str, tuple[int, int]]  # RFC 6901 pointer -> (start, end) of the value token

# Strings as "unrolled loops" (Friedl): linear, no per-character alternation.
_TOKEN: Final = re.compile(rb'[ \t\n\r]*(?:("[^"\\]*(?:\\.[^"\\]*)*")|([{}\[\]:,])|([^ \t\n\r{}\[\]:,"]+))', re.DOTALL)


@dataclass(slots=True)
class _Frame:
    is_object: bool
    level: int | None  # index into the field path its children sit at; None: off the path
    pointer: str
    index: int = 0
    expect_key: bool = True
    child_level: int | None = None
    child_pointer: str = ""
    seen: set[str] | None = None


def _decode_key(token: bytes) -> str:
    if b"\\" not in token:
        return token[1:-1].decode("utf-8", "surrogatepass")
    decoded = json.loads(token.decode("utf-8", "surrogatepass"))
    return decoded if isinstance(decoded, str) else ""


class Scanner:
    """Token-level walk of raw JSON bytes along the field path (the exact path).

    Finds duplicate keys on the path and the byte span of every leaf value.
    Only called on bodies orjson/json already accepted, so tokens are well formed.
    """

    def __init__(self, parts: tuple[str, ...]) -> None:
        self.parts = parts
        self.stack: list[_Frame] = []
        self.spans: Spans = {}
        self.duplicate = False

    def _value_context(self) -> tuple[int | None, str]:
        if not self.stack:
            return 0, ""
        top = self.stack[-1]
        if top.is_object:
            return top.child_level, top.child_pointer
        level = top.level
        if level is not None and level < len(self.parts) and self.parts[level] == "*":
            return level + 1, f"{top.pointer}/{top.index}"
        return None, ""

    def _key(self, top: _Frame, token: bytes) -> None:
        top.expect_key = False
        level = top.level
        if level is None or level >= len(self.parts) or self.parts[level] == "*":
            top.child_level = None
            return
        key = _decode_key(token)
        if key != self.parts[level]:
            top.child_level = None
            return
        if top.seen is None:
            top.seen = set()
        if key in top.seen:
            self.duplicate = True
        top.seen.add(key)
        top.child_level, top.child_pointer = level + 1, f"{top.pointer}/{escape_pointer(key)}"

    def _punct(self, char: int) -> None:
        if char in b"{[":
            level, pointer = self._value_context()
            if level is not None and level >= len(self.parts):
                level = None  # a container where a leaf belongs: invalid, nothing to splice
            self.stack.append(_Frame(char == ord("{"), level, pointer))
        elif char in b"}]":
            self.stack.pop()
        elif char == ord(",") and self.stack:
            top = self.stack[-1]
            top.index += 1
            top.expect_key = top.is_object

    def scan(self, raw: bytes) -> Scanner:
        pos, match_token = 0, _TOKEN.match
        while (match := match_token(raw, pos)) is not None and match.end() > pos:
            pos = match.end()
            string, punct, literal = match.groups()
            if punct is not None:
                self._punct(punct[0])
                continue
            top = self.stack[-1] if self.stack else None
            if string is not None and top is not None and top.is_object and top.expect_key:
                self._key(top, string)
                continue
            level, pointer = self._value_context()
            if level == len(self.parts):
                self.spans[pointer] = (match.start(1 if string is not None else 3), pos)
        return self


def literal_spans(raw: bytes, leaf_key: str, leaves: int, wanted: list[tuple[str, int]]) -> Spans | None:
    """Spans of string leaf values found by their literal key, when the fast screen proved that exact.

    Every ``"stage"`` in the bytes is then a path key, in document order, so the
    n-th match is the n-th leaf value (``wanted``: pointer, leaf ordinal). None
    when anything does not line up.
    """
    matches = list(leaf_regex(leaf_key).finditer(raw))
    if len(matches) != leaves:
        return None
    return {pointer: matches[index].span(1) for pointer, index in wanted if matches[index].group(1) is not None}


@functools.cache
def leaf_regex(key: str) -> re.Pattern[bytes]:
    return re.compile(b'"' + re.escape(key.encode()) + rb'"[ \t\n\r]*:[ \t\n\r]*("[^"\\]*(?:\\.[^"\\]*)*")?',
                      re.DOTALL)
