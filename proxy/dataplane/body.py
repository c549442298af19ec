"""Classify a request body against one endpoint, and rewrite alias values in place.

Pure: no I/O. The rules (docs/proxy.md): the proxy and the upstream must never
disagree about the validated value, so anything ambiguous — duplicate keys on
the field's path, a byte-order mark, invalid UTF-8, encodings we cannot read —
is ``unreadable``. Rewriting splices the new value into the original bytes, so
everything but the stage values is preserved exactly (big integers included).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

import orjson

from proxy.catalog.keys import lookalike_bytes
from proxy.catalog.stages import SEVERITY, UNREADABLE_STATUS, Catalog, Endpoint, Result
from proxy.dataplane.jsonscan import Scanner, Spans, prepare, spelling_count, splice_literal
from proxy.dataplane.pointer import escape_pointer

UTF8_BOM: Final = b"\xef\xbb\xbf"
MISSING: Final = object()
MEMO_SIZE: Final = 4096  # distinct stage values whose classification is remembered per endpoint
COLLECTOR_PAUSE_BYTES: Final = 64 * 1024  # from here a body is parsed and walked with the cyclic GC paused
MAX_FINDINGS: Final = 128  # findings kept with their pointers per body (the first, in document order); all counted


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


@dataclass(frozen=True, slots=True)
class Inspection:
    """The verdict on one body: the worst result, its findings, why unreadable.

    Work per body stays linear with a small constant whatever it holds: the
    first ``MAX_FINDINGS`` findings are kept with their pointers (a problem
    answer lists at most 100, a log line names one), every one is counted, and
    each alias is kept as a leaf ordinal for the rewrite.
    """

    result: Result
    findings: tuple[Finding, ...] = ()  # the first MAX_FINDINGS aliases and unknown/invalid values, document order
    reason: str | None = None
    leaves: int = 0  # values present at the end of the path, canonical ones included
    literal_keys: bool = False  # every occurrence of the leaf key in the bytes is a path key (fast splice)
    spans: Spans | None = None  # leaf value spans, when the Scanner had to run (the rewrite reuses them)
    region: tuple[int, int] | None = None  # the one array of leaf objects, where the literal proof holds
    counts: Mapping[Result, int] = field(default_factory=dict)  # result -> how many values had it (all of them)
    aliases: Mapping[int, str] = field(default_factory=dict)  # leaf ordinal -> canonical stage, for every alias
    alias_values: Mapping[str, int] = field(default_factory=dict)  # alias as sent -> how often (temporary ones)

    def count(self, *results: Result) -> int:
        """How many values had one of ``results``."""
        return sum(self.counts.get(result, 0) for result in results)

    @property
    def status(self) -> int:
        """HTTP status `enforce` answers with when this inspection is rejected."""
        if self.result == "unreadable":
            return UNREADABLE_STATUS.get(self.reason or "", 400)
        return 422


class _CollectorPause:
    """Python's cyclic garbage collector paused while large bodies are read, resumed when the last one is done.

    A parsed document holds no reference cycles, yet every container it allocates counts toward the collector's
    thresholds: half a million small arrays (1 MiB of ``[[],[],…]`` or of deep nesting) set off hundreds of
    collections, each walking the growing document — more than half of the parse (bench/worst.py: 73 -> 37 ms).
    Threads share the collector: a count under a lock turns it back on only after the last pause, and only when
    it was on before.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paused = 0
        self._resume = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._paused == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._paused += 1
        try:
            yield
        finally:
            with self._lock:
                self._paused -= 1
                if self._paused == 0 and self._resume:
                    gc.enable()


collector_paused: Final = _CollectorPause()


def collector_paused_for(raw: bytes) -> contextlib.AbstractContextManager[None]:
    """The collector paused while ``raw`` is read if it is large (COLLECTOR_PAUSE_BYTES), else nothing."""
    return collector_paused() if len(raw) >= COLLECTOR_PAUSE_BYTES else contextlib.nullcontext()


def unreadable(reason: str) -> Inspection:
    return Inspection("unreadable", reason=reason)


@functools.lru_cache(maxsize=256)
def media_problem(content_type: str | None, content_encoding: str | None) -> str | None:
    """Why the headers make the body unreadable, or None: JSON, UTF-8, identity only.

    Clients send a handful of distinct header pairs: verdicts are memoized, the
    least recently used dropped past 256, so junk headers cannot grow the table.
    """
    return _media_problem(content_type, content_encoding)


def _media_problem(content_type: str | None, content_encoding: str | None) -> str | None:
    if content_encoding and content_encoding.strip().lower() not in ("identity", ""):
        return "unsupported_encoding"
    if not content_type:
        return "unsupported_media_type"
    mime, _, params = content_type.partition(";")
    if not is_json_media(mime.strip().lower()):
        return "unsupported_media_type"
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return "unsupported_media_type"
    return None


def is_json_media(mime: str) -> bool:
    """``application/json`` or ``application/*+json`` (``mime`` lower-cased, without parameters)."""
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # pragma: no mutate - the message is not shown


def parse_json(raw: bytes) -> tuple[object, str | None]:
    """Parse strict RFC 8259 JSON; (document, None) or (None, unreadable reason)."""
    if raw.startswith(UTF8_BOM):
        return None, "byte_order_mark"
    try:
        return orjson.loads(raw), None  # pragma: no mutate - the stdlib reads the same, slower
    except orjson.JSONDecodeError:
        pass
    # orjson refuses some valid JSON (1e400, lone surrogate escapes): ask the stdlib.
    try:
        text = raw.decode("utf-8")  # pragma: no mutate - codec names ignore case
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int), None
    except (ValueError, RecursionError):
        return None, "malformed_json"


def _parse_int(digits: str) -> int | Decimal:
    """Integers of any length (RFC 8259 sets no limit; Python's int() refuses more than 4300 digits)."""
    return int(digits) if len(digits) <= 4000 else Decimal(digits)


def type_name(value: object) -> str:
    """The JSON type name of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object" if isinstance(value, dict) else "value"


class _Walker:
    """Collects the non-canonical findings along the field path of a parsed document.

    Canonical values only bump ``leaves`` (no object per value): a 500-deal
    import that is all canonical allocates nothing per deal. Past
    ``MAX_FINDINGS`` findings are only counted (no pointer is formatted).
    """

    __slots__ = ("catalog", "canonical", "parts", "required", "findings", "key_counts", "leaves", "memo", "counts",
                 "aliases", "alias_values", "odd_leaves", "odd_values", "seen", "kept_alias", "kept_bad")

    def __init__(self, catalog: Catalog, endpoint: Endpoint, memo: dict[str, tuple[Result, str | None]]) -> None:
        self.catalog = catalog
        self.memo = memo  # value -> classification, shared by the Inspector's walks (bounded)
        self.canonical = catalog.canonical_set
        self.parts = endpoint.field_path
        self.required = endpoint.required
        self.findings: list[Finding] = []
        self.key_counts = dict.fromkeys((part for part in self.parts if part != "*"), 0)  # absent keys count too
        self.leaves = 0
        self.counts: dict[Result, int] = {}
        self.aliases: dict[int, str] = {}
        self.alias_values: dict[str, int] = {}
        self.odd_leaves: list[int] = []  # every non-canonical string leaf: its ordinal …
        self.odd_values: list[str] = []  # … and its value (tallied once per distinct value by finish())
        self.seen: dict[str, tuple[Result, str | None]] = {}  # this body's classifications, by value
        self.kept_alias = 0  # findings kept with pointers, up to MAX_FINDINGS of each kind: an unknown value
        self.kept_bad = 0  # after hundreds of aliases is still named in the answer

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
        self.key_counts[part] += 1
        self.walk(child, index + 1, f"{pointer}/{escape_pointer(part)}")

    def _leaf_objects(self, items: list[object], pointer: str, key: str) -> None:  # noqa: C901 - one loop on purpose
        """The hot loop of ``deals[*].stage``: pointers are built only for kept findings (MAX_FINDINGS aliases and
        MAX_FINDINGS unknown or invalid values; once the latter are full, aliases no longer matter for the answer
        and nothing more is kept), non-canonical strings noted (finish() tallies them, classifying each distinct
        value once), wrong and missing items counted. One flat loop: a helper call per item
        costs ~60 ns, +30 ms on a 1 MiB body of half a million items (bench/validator.py)."""
        canonical, escaped, required, findings = self.canonical, escape_pointer(key), self.required, self.findings
        odd_leaves, odd_values, seen = self.odd_leaves, self.odd_values, self.seen
        kept_alias, kept_bad = self.kept_alias, self.kept_bad
        present = invalid = 0
        leaf = self.leaves
        for position, item in enumerate(items):
            if type(item) is not dict:
                invalid += 1
                if kept_bad < MAX_FINDINGS:
                    kept_bad += 1
                    findings.append(_wrong(item, f"{pointer}/{position}", "object"))
                continue
            value = item.get(key, MISSING)
            if value is MISSING:
                if required:
                    invalid += 1
                    if kept_bad < MAX_FINDINGS:
                        kept_bad += 1
                        findings.append(Finding(f"{pointer}/{position}/{escaped}", None, "invalid",
                                                detail="required field is missing"))
                continue
            present += 1
            leaf += 1
            if type(value) is not str:  # not a stage at all: invalid
                invalid += 1
                if kept_bad < MAX_FINDINGS:
                    kept_bad += 1
                    findings.append(Finding(f"{pointer}/{position}/{escaped}", value, "invalid", None,
                                            f"expected a string, got {type_name(value)}", leaf - 1))
            elif value not in canonical:
                odd_leaves.append(leaf - 1)
                odd_values.append(value)
                if kept_bad < MAX_FINDINGS:  # past it the answer names enough: the rest is tallied by finish()
                    verdict = seen.get(value)
                    if verdict is None:
                        verdict = seen[value] = self._classify(value)
                    if verdict[0] == "alias":
                        if kept_alias < MAX_FINDINGS:
                            kept_alias += 1
                            findings.append(Finding(f"{pointer}/{position}/{escaped}", value, "alias", verdict[1],
                                                    None, leaf - 1))
                    elif kept_bad < MAX_FINDINGS:
                        kept_bad += 1
                        findings.append(Finding(f"{pointer}/{position}/{escaped}", value, verdict[0], verdict[1],
                                                None, leaf - 1))
        self.leaves, self.kept_alias, self.kept_bad = leaf, kept_alias, kept_bad
        if invalid:
            self.counts["invalid"] = self.counts.get("invalid", 0) + invalid
        self.key_counts[key] += present

    def finish(self) -> None:
        """Tally the non-canonical strings: each distinct value classified once (Counter counts in C), every
        alias leaf mapped to its canonical stage for the rewrite."""
        if not self.odd_values:
            return
        counts, canonical_of, seen = self.counts, {}, self.seen
        values = self.odd_values
        if len(values) > 16:
            tally: dict[str, int] = Counter(values)
        else:  # most bodies hold one such value: a dict is counted in a third of Counter()'s set-up time
            tally = dict.fromkeys(values, 0)
            for value in values:
                tally[value] += 1
        for value, times in tally.items():
            result, normalized = seen.get(value) or self._classify(value)
            counts[result] = counts.get(result, 0) + times
            if normalized is not None:
                canonical_of[value] = normalized
                self.alias_values[value] = times
        if canonical_of:
            noted = zip(self.odd_leaves, self.odd_values, strict=True)
            self.aliases = {leaf: canonical_of[value] for leaf, value in noted if value in canonical_of}

    def _classify(self, value: str) -> tuple[Result, str | None]:
        """The value's classification, from the memo (callers in the hot loop look there first) or the catalog."""
        verdict = self.memo.get(value)
        if verdict is None:
            result, normalized, lasting = self.catalog.classify_lasting(value)
            verdict = (result, normalized)
            if lasting:  # a temporary alias's answer ends at its until: never kept
                memo = self.memo
                if len(memo) >= MEMO_SIZE:
                    memo.clear()  # junk values cannot grow it; the few real ones come back at once
                memo[value] = verdict
        return verdict

    def _leaf(self, node: object, pointer: str) -> None:
        position = self.leaves
        self.leaves += 1
        if type(node) is not str:
            detail = f"expected a string, got {type_name(node)}"
            self._add("invalid", lambda: Finding(pointer, node, "invalid", None, detail, leaf_index=position))
            return
        if node in self.canonical:
            return
        self.odd_leaves.append(position)
        self.odd_values.append(node)
        verdict = self.seen.get(node)
        if verdict is None:
            verdict = self.seen[node] = self._classify(node)
        alias = verdict[0] == "alias"
        if (self.kept_alias if alias else self.kept_bad) < MAX_FINDINGS:
            if alias:
                self.kept_alias += 1
            else:
                self.kept_bad += 1
            self.findings.append(Finding(pointer, node, verdict[0], verdict[1], None, leaf_index=position))

    def _add(self, result: Result, finding: Callable[[], Finding]) -> None:
        """Count an unknown or invalid finding; keep it (made only then) while fewer than MAX_FINDINGS are kept."""
        self.counts[result] = self.counts.get(result, 0) + 1
        if self.kept_bad < MAX_FINDINGS:
            self.kept_bad += 1
            self.findings.append(finding())

    def _missing(self, pointer: str) -> None:
        if self.required:
            self._add("invalid", lambda: Finding(pointer, None, "invalid", detail="required field is missing"))

    def _wrong_type(self, node: object, pointer: str, expected: str) -> None:
        self._add("invalid", lambda: _wrong(node, pointer, expected))


def _wrong(node: object, pointer: str, expected: str) -> Finding:
    return Finding(pointer, node, "invalid", detail=f"expected an {expected}, got {type_name(node)}")


def _needle(key: str) -> bytes | None:
    """How ``key`` must appear in the bytes when no ``\\u`` escape is used; None if JSON could spell it otherwise."""
    if not key.isascii() or not key.isprintable() or any(c in key for c in '"\\/'):
        return None
    return b'"' + key.encode() + b'"'


def _no_unicode_escapes(raw: bytes) -> bool:
    return b"\\" not in raw or b"\\u" not in raw  # pragma: no mutate - the memchr first is only faster


def _spellings(raw: bytes, key: str, needle: bytes) -> int:
    """How often ``key`` is spelled in the bytes, in any case (the literal proof's count).

    Case-insensitive decoders (Go's encoding/json) read ``"Stage"`` and ``"ſtage"`` as the stage field
    (proxy.catalog.keys), so every case counts. Without ``\\u`` escapes and non-ASCII lookalikes every spelling is
    the needle in some ASCII case: the lower-cased needle counted in the lower-cased bytes (one pass). Otherwise
    every spelling JSON allows is counted by regular expressions. No spelling crosses a byte that is not part of
    one (a bracket): the count of a body is the sum of the counts of its pieces cut there.
    """
    if _no_unicode_escapes(raw) and (raw.isascii() or not any(char in raw for char in lookalike_bytes(key))):
        return raw.lower().count(needle.lower())
    return spelling_count(raw, key, any_case=True)


def _spelled_exactly(raw: bytes, key: str, needle: bytes, count: int) -> bool:
    """The literal proof for one key: ``count`` is how often the parsed document has the key on the path, each
    occurrence spelled at least once (exactly, with or without escapes); the proof holds when the bytes spell
    it no more often, in any case (a spelling in another case counts as one more)."""
    return _spellings(raw, key, needle) == count


class Inspector:
    """Inspection of one endpoint's bodies, with everything computable once done once."""

    __slots__ = ("catalog", "endpoint", "_needles", "_single", "_canonical", "_memo")

    def __init__(self, catalog: Catalog, endpoint: Endpoint) -> None:
        self.catalog = catalog
        self.endpoint = endpoint
        self._memo: dict[str, tuple[Result, str | None]] = {}  # lasting answers only (no temporary alias's)
        self._needles = {key: _needle(key) for key in endpoint.field_path if key != "*"}  # pragma: no mutate - * unread
        parts = endpoint.field_path
        self._single = parts[0] if len(parts) == 1 and self._needles[parts[0]] is not None else None
        self._canonical = catalog.canonical_set
        prepare(parts)

    def inspect(self, raw: bytes) -> Inspection:
        """Classify a JSON body (headers already checked)."""
        with collector_paused_for(raw):
            return self._inspect(raw)

    def _inspect(self, raw: bytes) -> Inspection:
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            document, reason = parse_json(raw)
            if reason is not None:
                return unreadable(reason)
        single = self._single
        if single is not None and type(document) is dict:
            # The hot path: one top-level field holding a canonical stage, spelled once.
            value = document.get(single, MISSING)
            if type(value) is str and value in self._canonical and self._spelled_once(raw, single):
                return CANONICAL_ONE
        return self._inspect_document(raw, document)

    def _spelled_once(self, raw: bytes, key: str) -> bool:
        needle = self._needles[key]
        return needle is not None and _no_unicode_escapes(raw) and _spelled_exactly(raw, key, needle, 1)

    def _keys_are_literal(self, raw: bytes, key_counts: dict[str, int]) -> tuple[bool, int | None]:
        """Whether raw bytes prove no key on the path is duplicated (the fast screen), and how often the leaf
        key is spelled in them (None if not counted).

        If every spelling of ``stage`` in the bytes is counted and there are
        exactly as many as the parsed document has that key on the path, no path
        object holds it twice (orjson keeps the last duplicate silently, so this
        must be proven, not assumed) and every spelling is a path key.
        """
        leaf_key = self.endpoint.field_path[-1]
        spelled = None
        for key in sorted(key_counts, key=lambda key: key != leaf_key):  # the leaf key first: its count is kept
            needle = self._needles.get(key)
            if needle is None:
                return False, spelled
            times = _spellings(raw, key, needle)
            if key == leaf_key:
                spelled = times
            if times != key_counts[key]:
                return False, spelled
        return True, spelled

    def _inspect_document(self, raw: bytes, document: object) -> Inspection:
        walker = _Walker(self.catalog, self.endpoint, self._memo)
        walker.walk(document, 0, "")
        walker.finish()
        literal, spelled = self._keys_are_literal(raw, walker.key_counts)
        spans = region = None
        if not literal:
            prove = self._region_proof(raw, walker.leaves, spelled) if walker.aliases and spelled is not None else None
            scan = Scanner(self.endpoint.field_path, spans=bool(walker.aliases), region=prove)
            scan.scan(raw)
            if scan.duplicate:
                return unreadable("duplicate_key")
            if scan.too_deep:
                return unreadable("nesting_too_deep")
            if scan.case_variant:
                return unreadable("ambiguous_key")
            if walker.aliases:  # to rewrite: the literal proof on the leaf array alone, else every leaf's span
                region = scan.region
                if region is None:
                    spans = scan.spans if scan.complete_spans else Scanner(self.endpoint.field_path).scan(raw).spans
        if not walker.counts:
            return Inspection("canonical" if walker.leaves else "absent", leaves=walker.leaves, literal_keys=literal)
        worst = max(walker.counts, key=SEVERITY.__getitem__)
        return Inspection(worst, tuple(walker.findings), leaves=walker.leaves, literal_keys=literal, spans=spans,
                          counts=walker.counts, aliases=walker.aliases, alias_values=walker.alias_values,
                          region=region)

    def _region_proof(self, raw: bytes, leaves: int, spelled: int) -> Callable[[int], bool] | None:
        """For the scanner, when the path crosses one array (``deals[*].stage``): whether, from an array of leaf
        objects to the end of the body, the leaf key is spelled (in any case) exactly as often as the document
        has leaves. Every leaf key lies inside that array, so then its spellings inside it are exactly the leaves,
        in order, and a rewrite splices by them (a stage key off the path — the reason the body needed the
        scanner — is before the array). Counted as the body's spellings (``spelled``) less those before the
        array. None for other paths: the spans are taken."""
        parts = self.endpoint.field_path
        key, needle = parts[-1], self._needles.get(parts[-1])
        if needle is None or parts.count("*") != 1 or parts[-2] != "*":
            return None

        return lambda start: spelled - _spellings(raw[:start], key, needle) == leaves


CANONICAL_ONE: Final = Inspection("canonical", leaves=1, literal_keys=True)


def inspect(raw: bytes, catalog: Catalog, endpoint: Endpoint) -> Inspection:
    """Classify a JSON body for one endpoint (builds an Inspector: hold one where speed matters)."""
    return Inspector(catalog, endpoint).inspect(raw)


def rewrite(raw: bytes, endpoint: Endpoint, inspection: Inspection) -> bytes:
    """Splice canonical values over alias values; every other byte stays as it was."""
    aliases = inspection.aliases  # leaf ordinal -> canonical stage, ordinals ascending (document order)
    encoded = {stage: orjson.dumps(stage) for stage in set(aliases.values())}  # a handful, each encoded once
    # Both pragmas: a mutant that skips the splice falls back to scanning, with the same bytes (only slower).
    if inspection.spans is None and (inspection.literal_keys or inspection.region):  # pragma: no mutate
        targets = {ordinal: encoded[stage] for ordinal, stage in aliases.items()}  # pragma: no mutate
        start, end = inspection.region or (0, len(raw))  # pragma: no mutate - the whole body: raw itself
        spliced = splice_literal(raw[start:end], endpoint.field_path[-1], inspection.leaves,  # pragma: no mutate
                                 targets)
        if spliced is not None:
            return raw[:start] + spliced + raw[end:]
    spans = inspection.spans if inspection.spans is not None else Scanner(endpoint.field_path).scan(raw).spans
    pieces: list[bytes] = []
    add = pieces.append
    cursor = 0
    for ordinal in sorted(aliases):  # the spans are in document order too (sorted: cheap when already so)
        start, end = spans[ordinal]
        add(raw[cursor:start])
        add(encoded[aliases[ordinal]])
        cursor = end
    add(raw[cursor:])
    return b"".join(pieces)
