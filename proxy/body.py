"""Classify a request body against one endpoint, and rewrite alias values in place.

Pure: no I/O. The rules (DESIGN §2): the proxy and the upstream must never
disagree about the validated value, so anything ambiguous — duplicate keys on
the field's path, a byte-order mark, invalid UTF-8, encodings we cannot read —
is ``unreadable``. Rewriting splices the new value into the original bytes, so
everything but the stage values is preserved exactly (big integers included).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Final

import orjson

from proxy.catalog import SEVERITY, Catalog, Endpoint, Result

UTF8_BOM: Final = b"\xef\xbb\xbf"
MISSING: Final = object()
JSON_WS: Final = b" \t\n\r"

# Unreadable reasons and the status `enforce` answers with (DESIGN §2 behaviour table).
UNREADABLE_STATUS: Final = {
    "malformed_json": 400,
    "byte_order_mark": 400,
    "invalid_utf8": 400,
    "duplicate_key": 400,
    "too_large": 413,
    "unsupported_media_type": 415,
    "unsupported_encoding": 415,
}

# Strings as "unrolled loops" (Friedl): linear, no per-character alternation.
_TOKEN = re.compile(rb'[ \t\n\r]*(?:("[^"\\]*(?:\\.[^"\\]*)*")|([{}\[\]:,])|([^ \t\n\r{}\[\]:,"]+))', re.DOTALL)


@dataclass(slots=True)
class Finding:
    """One value on the field path (or the place where one is missing)."""

    pointer: str
    value: object
    result: Result
    normalized: str | None = None
    detail: str | None = None
    leaf_index: int | None = None  # ordinal among the values present at the end of the path

    @property
    def leaf(self) -> bool:
        """The value sits at the end of the field path (so it has a span in the bytes)."""
        return self.leaf_index is not None


@dataclass(slots=True)
class Inspection:
    """The verdict on one body: the worst result, each finding, why unreadable."""

    result: Result
    findings: list[Finding] = field(default_factory=list)  # every non-canonical value, in document order
    reason: str | None = None
    leaves: int = 0  # values present at the end of the path, canonical ones included
    literal_keys: bool = False  # every occurrence of the leaf key in the bytes is a path key (fast splice)

    @property
    def status(self) -> int:
        """HTTP status `enforce` answers with when this inspection is rejected."""
        if self.result == "unreadable":
            return UNREADABLE_STATUS.get(self.reason or "", 400)
        return 422


def unreadable(reason: str) -> Inspection:
    return Inspection("unreadable", reason=reason)


def media_problem(content_type: str | None, content_encoding: str | None) -> str | None:
    """Why the headers make the body unreadable, or None: JSON, UTF-8, identity only."""
    if content_encoding and content_encoding.strip().lower() not in ("identity", ""):
        return "unsupported_encoding"
    if not content_type:
        return "unsupported_media_type"
    mime, _, params = content_type.partition(";")
    mime = mime.strip().lower()
    if mime != "application/json" and not (mime.startswith("application/") and mime.endswith("+json")):
        return "unsupported_media_type"
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return "unsupported_media_type"
    return None


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes) -> tuple[object, str | None]:
    """Parse strict RFC 8259 JSON; (document, None) or (None, unreadable reason)."""
    if raw.startswith(UTF8_BOM):
        return None, "byte_order_mark"
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError:
        pass
    # orjson refuses some valid JSON (1e400, lone surrogate escapes): ask the stdlib.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    try:
        return json.loads(text, parse_constant=_reject_constant), None
    except (ValueError, RecursionError):
        return None, "malformed_json"


def escape_pointer(key: str) -> str:
    """RFC 6901 reference token escaping."""
    return key.replace("~", "~0").replace("/", "~1")


def type_name(value: object) -> str:
    """The JSON type name of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object" if isinstance(value, dict) else "value"


class _Walker:
    """Collects the non-canonical findings along the field path of a parsed document.

    Canonical values only bump ``leaves`` (no object per value): a 500-deal
    import that is all canonical allocates nothing per deal.
    """

    __slots__ = ("catalog", "canonical", "parts", "required", "findings", "key_counts", "leaves")

    def __init__(self, catalog: Catalog, endpoint: Endpoint) -> None:
        self.catalog = catalog
        self.canonical = catalog.canonical_set
        self.parts = endpoint.field_path
        self.required = endpoint.required
        self.findings: list[Finding] = []
        self.key_counts: dict[str, int] = {}
        self.leaves = 0

    def walk(self, node: object, index: int, pointer: str) -> None:
        if index == len(self.parts):
            self._leaf(node, pointer)
            return
        part = self.parts[index]
        if part == "*":
            if type(node) is not list:
                self._wrong_type(node, pointer, "array")
            elif index + 2 == len(self.parts) and self.parts[-1] != "*":
                self._leaf_objects(node, pointer, self.parts[-1])
            else:
                for position, item in enumerate(node):
                    self.walk(item, index + 1, f"{pointer}/{position}")
            return
        if type(node) is not dict:
            self._wrong_type(node, pointer, "object")
            return
        child = node.get(part, MISSING)
        if child is MISSING:
            self._missing(f"{pointer}/{escape_pointer(part)}")
            return
        self.key_counts[part] = self.key_counts.get(part, 0) + 1
        self.walk(child, index + 1, f"{pointer}/{escape_pointer(part)}")

    def _leaf_objects(self, items: list[object], pointer: str, key: str) -> None:
        """The hot loop of ``deals[*].stage``: pointers are built only for findings."""
        canonical, present = self.canonical, 0
        for position, item in enumerate(items):
            if type(item) is not dict:
                self._wrong_type(item, f"{pointer}/{position}", "object")
                continue
            value = item.get(key, MISSING)
            if value is MISSING:
                self._missing(f"{pointer}/{position}/{escape_pointer(key)}")
                continue
            present += 1
            if type(value) is str and value in canonical:
                self.leaves += 1
            else:
                self._leaf(value, f"{pointer}/{position}/{escape_pointer(key)}")
        self.key_counts[key] = self.key_counts.get(key, 0) + present

    def _leaf(self, node: object, pointer: str) -> None:
        position = self.leaves
        self.leaves += 1
        result, normalized = self.catalog.classify(node)
        if result == "canonical":
            return
        detail = f"expected a string, got {type_name(node)}" if result == "invalid" else None
        self.findings.append(Finding(pointer, node, result, normalized, detail, leaf_index=position))

    def _missing(self, pointer: str) -> None:
        if self.required:
            self.findings.append(Finding(pointer, None, "invalid", detail="required field is missing"))

    def _wrong_type(self, node: object, pointer: str, expected: str) -> None:
        detail = f"expected an {expected}, got {type_name(node)}"
        self.findings.append(Finding(pointer, node, "invalid", detail=detail))


def _keys_are_literal(raw: bytes, key_counts: dict[str, int]) -> bool:
    """True when raw bytes prove no key on the path is duplicated (the fast screen).

    Without ``\\u`` escapes a key that decodes to ``stage`` is spelled ``"stage"``
    in the bytes, so if the literal occurs exactly as often as the parsed document
    has that key on the path, no path object holds it twice (orjson keeps the
    last duplicate silently, so this must be proven, not assumed).
    """
    if b"\\" in raw and b"\\u" in raw:  # the one-byte test is a memchr: most bodies stop there
        return False
    for key, count in key_counts.items():
        if not key.isascii() or any(c in key for c in '"\\/') or not key.isprintable():
            return False
        if raw.count(b'"' + key.encode() + b'"') != count:
            return False
    return True


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


class _Scanner:
    """Token-level walk of raw JSON bytes along the field path (the exact path).

    Finds duplicate keys on the path and the byte span of every leaf value.
    Only called on bodies orjson/json already accepted, so tokens are well formed.
    """

    def __init__(self, parts: tuple[str, ...]) -> None:
        self.parts = parts
        self.stack: list[_Frame] = []
        self.spans: dict[str, tuple[int, int]] = {}
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

    def scan(self, raw: bytes) -> _Scanner:
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


def inspect(raw: bytes, catalog: Catalog, endpoint: Endpoint) -> Inspection:
    """Classify a JSON body for one endpoint (headers already checked)."""
    document, reason = parse_json(raw)
    if reason is not None:
        return unreadable(reason)
    walker = _Walker(catalog, endpoint)
    walker.walk(document, 0, "")
    literal = _keys_are_literal(raw, walker.key_counts)
    if not literal and _Scanner(endpoint.field_path).scan(raw).duplicate:
        return unreadable("duplicate_key")
    findings = walker.findings
    if not findings:
        return Inspection("canonical" if walker.leaves else "absent", leaves=walker.leaves, literal_keys=literal)
    worst = max({f.result for f in findings}, key=SEVERITY.__getitem__)
    return Inspection(worst, findings, leaves=walker.leaves, literal_keys=literal)


def _literal_spans(raw: bytes, endpoint: Endpoint, inspection: Inspection) -> dict[str, tuple[int, int]] | None:
    """Spans of string leaf values found by their literal key, when the fast screen proved that exact.

    Every ``"stage"`` in the bytes is then a path key, in document order, the
    same order as the leaf findings. None when anything does not line up.
    """
    matches = list(_leaf_regex(endpoint.field_path[-1]).finditer(raw))
    if len(matches) != inspection.leaves:
        return None
    return {f.pointer: matches[f.leaf_index].span(1) for f in inspection.findings
            if f.leaf_index is not None and matches[f.leaf_index].group(1) is not None}


@functools.cache
def _leaf_regex(key: str) -> re.Pattern[bytes]:
    return re.compile(b'"' + re.escape(key.encode()) + rb'"[ \t\n\r]*:[ \t\n\r]*("[^"\\]*(?:\\.[^"\\]*)*")?',
                      re.DOTALL)


def rewrite(raw: bytes, endpoint: Endpoint, inspection: Inspection) -> bytes:
    """Splice canonical values over alias values; every other byte stays as it was."""
    spans = _literal_spans(raw, endpoint, inspection) if inspection.literal_keys else None
    if spans is None:
        spans = _Scanner(endpoint.field_path).scan(raw).spans
    pieces: list[bytes] = []
    cursor = 0
    for finding in inspection.findings:
        if finding.result != "alias" or finding.normalized is None:
            continue
        start, end = spans[finding.pointer]
        pieces.append(raw[cursor:start])
        pieces.append(orjson.dumps(finding.normalized))
        cursor = end
    pieces.append(raw[cursor:])
    return b"".join(pieces)
