"""The pure core against reference models: every finding, pointer, detail and reason, not only the verdict.

A slow, obviously correct reference — the stdlib parser keeping every key
(``object_pairs_hook``), a plain recursive walk — classifies random bodies
along several field paths, and the fast inspector must agree with it exactly.
These tests carry the mutation score of the core (docs/testing.md).
"""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.catalog.canary import bucket, bucket_hundredths, is_enforced
from proxy.catalog.stages import DEFAULT_CATALOG_TOML, SEVERITY, Catalog, fold, parse_catalog
from proxy.dataplane.body import Inspection, inspect, media_problem, parse_json, rewrite, type_name
from proxy.dataplane.jsonscan import Scanner, decode_key, spelling_count, splice_literal
from proxy.dataplane.pointer import escape_pointer

NESTED = DEFAULT_CATALOG_TOML + """
[[endpoints]]
name = "nested"
method = "PUT"
path = "/n/{id}"
field = "deal.info.stage"
required = true

[[endpoints]]
name = "groups"
method = "PUT"
path = "/g"
field = "groups[*].deals[*].stage"
required = false
"""
CATALOG = parse_catalog(NESTED)
ENDPOINTS = {e.name: e for e in CATALOG.endpoints}


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    """Compiled patterns and memos are per process: start each test without them, so code behind a cache runs."""
    from proxy.dataplane import jsonscan

    for cached in (jsonscan.spelling, jsonscan.member_run, jsonscan.leaf_regex, jsonscan.leaf_object,
                   jsonscan.element_run, jsonscan.leaf_element, jsonscan.leaf_run, jsonscan._fast,
                   jsonscan.value_pattern, jsonscan.spellings_by_head, media_problem):
        cached.cache_clear()


# -- the reference ------------------------------------------------------------------------------------------


class Pairs(list[tuple[str, Any]]):
    """A JSON object as the stdlib read it, every member kept in order (duplicates too)."""


def plain(node: Any) -> Any:
    """What orjson returns for the same value: objects as dicts (the last duplicate wins)."""
    if isinstance(node, Pairs):
        return {key: plain(value) for key, value in node}
    if isinstance(node, list):
        return [plain(item) for item in node]
    return node


def reference_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, Pairs) else "array"


@dataclasses.dataclass
class Reference:
    catalog: Catalog
    parts: tuple[str, ...]
    required: bool
    findings: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    leaves: int = 0
    duplicate: bool = False
    variant: bool = False

    def walk(self, node: Any, index: int, pointer: str) -> None:
        if index == len(self.parts):
            result, normalized = self.catalog.classify(plain(node))
            if result != "canonical":
                detail = f"expected a string, got {reference_type(node)}" if result == "invalid" else None
                self.findings.append((pointer, plain(node), result, normalized, detail, self.leaves))
            self.leaves += 1
            return
        part = self.parts[index]
        if part == "*":
            if isinstance(node, Pairs) or not isinstance(node, list):
                self.findings.append((pointer, plain(node), "invalid", None,
                                      f"expected an array, got {reference_type(node)}", None))
                return
            for position, item in enumerate(node):
                self.walk(item, index + 1, f"{pointer}/{position}")
            return
        if not isinstance(node, Pairs):
            self.findings.append((pointer, plain(node), "invalid", None,
                                  f"expected an object, got {reference_type(node)}", None))
            return
        matches = [value for key, value in node if key == part]
        self.duplicate = self.duplicate or len(matches) > 1
        self.variant = self.variant or any(key != part and folded(key) == folded(part) for key, _ in node)
        child = f"{pointer}/{part.replace('~', '~0').replace('/', '~1')}"
        if not matches:
            if self.required:
                self.findings.append((child, None, "invalid", None, "required field is missing", None))
            return
        self.walk(matches[-1], index + 1, child)


def folded(key: str) -> str:
    """Keys as the most lenient decoders compare them: full Unicode case folding, Turkish dotted and dotless i
    as i (Java's and .NET's ignore-case comparisons)."""
    return key.replace("\u0130", "i").replace("\u0131", "i").casefold()


def reference_inspect(raw: bytes, endpoint_name: str) -> tuple[Any, ...]:
    """(result, reason, findings, leaves) as the specification reads (docs/reference.md)."""
    endpoint = ENDPOINTS[endpoint_name]
    if raw.startswith(b"\xef\xbb\xbf"):
        return "unreadable", "byte_order_mark", (), 0
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "unreadable", "invalid_utf8", (), 0

    def reject(name: str) -> Any:
        raise ValueError(name)

    try:
        document = json.loads(text, object_pairs_hook=Pairs, parse_constant=reject,
                              parse_int=lambda s: int(s) if len(s) <= 4000 else Decimal(s))
    except (ValueError, RecursionError):
        return "unreadable", "malformed_json", (), 0
    walk = Reference(CATALOG, endpoint.field_path, endpoint.required)
    walk.walk(document, 0, "")
    if walk.duplicate:
        return "unreadable", "duplicate_key", (), 0
    if walk.variant:
        return "unreadable", "ambiguous_key", (), 0
    if not walk.findings:
        return ("canonical" if walk.leaves else "absent"), None, (), walk.leaves
    worst = max((f[2] for f in walk.findings), key=SEVERITY.__getitem__)
    return worst, None, tuple(walk.findings), walk.leaves


def as_parsed(raw: bytes, expected: tuple[Any, ...]) -> tuple[Any, ...]:
    """The reference's finding values as the proxy's parser holds them: orjson turns integers beyond 64 bits
    into floats, the stdlib (its fallback, for 1e400 or lone surrogates) keeps them exact."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return expected
    findings = tuple((f[0], _at(document, f[0]) if f[1] is not None else None, *f[2:]) for f in expected[2])
    return (*expected[:2], findings, expected[3])


def actual(inspection: Inspection) -> tuple[Any, ...]:
    if inspection.result == "unreadable":
        return inspection.result, inspection.reason, (), 0
    findings = tuple((f.pointer, f.value, f.result, f.normalized, f.detail, f.leaf_index) for f in inspection.findings)
    return inspection.result, inspection.reason, findings, inspection.leaves


# -- random bodies, serialized every way JSON allows ---------------------------------------------------------

KEYS = ["stage", "Stage", "STAGE", "deals", "Deals", "deal", "info", "groups", "x", "name", "sta/ge", "st~age",
        "\u017ftage", "\ufb06age"]
STAGES = ["lead", "qualified", "closed_won", "Closed Won", "WON", " won ", "closed__won", "négociation", "Lost",
          "banana", "", "lead\n", "ⅼead", "\ud800"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([0.5, -0.0, 1e300]),
                    st.sampled_from(STAGES), st.text(max_size=4))


def objects(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Pairs]:
    return st.lists(st.tuples(st.sampled_from(KEYS), values), max_size=4).map(Pairs)


VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4), objects(inner)), max_leaves=16)


def escape_key(key: str, mode: int) -> str:
    """A key's JSON text: plain, or with some characters as \\u escapes (hex case varies)."""
    body = json.dumps(key)[1:-1]
    if mode == 0 or not key.isascii():
        return f'"{body}"'
    escaped = "".join(f"\\u{ord(c):04{'x' if mode == 1 else 'X'}}" if i % 2 == 0 else c for i, c in enumerate(key))
    return f'"{escaped}"' if key.isalnum() else f'"{body}"'


def dump(node: Any, keys: int, spaced: bool) -> str:
    gap = " " if spaced else ""
    if isinstance(node, Pairs):
        return "{" + f",{gap}".join(f"{escape_key(k, keys)}:{gap}{dump(v, keys, spaced)}" for k, v in node) + "}"
    if isinstance(node, list):
        return "[" + f",{gap}".join(dump(item, keys, spaced) for item in node) + "]"
    return json.dumps(node)


def shaped(name: str) -> st.SearchStrategy[Pairs]:
    """Documents shaped like the endpoint's path, with noise around it and a wrong type at any level."""
    stage = st.one_of(st.sampled_from(STAGES), SCALARS)
    wrong = st.one_of(SCALARS, st.lists(SCALARS, max_size=2), objects(SCALARS))

    def or_wrong(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(right, right, right, wrong)

    if name in ("create_deal", "update_deal"):
        return objects(VALUES).flatmap(lambda extra: st.lists(st.tuples(st.just("stage"), stage), max_size=2).map(
            lambda own: Pairs(extra + own)))
    if name == "import_deals":
        deal = objects(VALUES).flatmap(lambda extra: stage.map(lambda s: Pairs([*extra, ("stage", s)])))
        return or_wrong(st.lists(or_wrong(deal), max_size=5)).map(lambda deals: Pairs([("deals", deals)]))
    if name == "nested":
        info = or_wrong(stage.map(lambda s: Pairs([("stage", s)])))
        return or_wrong(info.map(lambda i: Pairs([("info", i)]))).map(lambda d: Pairs([("deal", d)]))
    deal = or_wrong(stage.map(lambda s: Pairs([("stage", s)])))
    group = or_wrong(st.lists(deal, max_size=3)).map(lambda deals: Pairs([("deals", deals)]))
    return or_wrong(st.lists(or_wrong(group), max_size=3)).map(lambda groups: Pairs([("groups", groups)]))


@settings(max_examples=600, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(ENDPOINTS)), keys=st.integers(0, 2), spaced=st.booleans(),
       noise=st.booleans())
def test_inspection_agrees_with_the_reference(data: st.DataObject, name: str, keys: int, spaced: bool,
                                              noise: bool) -> None:
    """Every finding (pointer, value, result, canonical, detail, leaf ordinal), the worst result and the reason."""
    document = data.draw(shaped(name) if not noise else st.one_of(shaped(name), VALUES))
    raw = dump(document, keys, spaced).encode("utf-8", "surrogatepass")
    expected = reference_inspect(raw, name)
    inspection = inspect(raw, CATALOG, ENDPOINTS[name])
    assert actual(inspection) == as_parsed(raw, expected)
    if any(f.result == "alias" for f in inspection.findings) and inspection.result != "unreadable":
        out = rewrite(raw, ENDPOINTS[name], inspection)
        scanned = rewrite(raw, ENDPOINTS[name], dataclasses.replace(inspection, literal_keys=False, spans=None,
                                                                    region=None))
        assert out == scanned
        rewritten = reference_inspect(out, name)
        assert not any(f[2] == "alias" for f in rewritten[2])
        assert [f[:3] for f in rewritten[2]] == [f[:3] for f in expected[2] if f[2] != "alias"]


@pytest.mark.parametrize(("raw", "expected"), [
    (b"\xef\xbb\xbf{}", ("unreadable", "byte_order_mark")), (b'{"stage":"\xff"}', ("unreadable", "invalid_utf8")),
    (b'{"stage":1e400}', ("invalid", None)), (b'{"stage":NaN}', ("unreadable", "malformed_json")),
    (b"", ("unreadable", "malformed_json")), (b'{"stage":"lead"}garbage', ("unreadable", "malformed_json")),
])
def test_unreadable_reasons(raw: bytes, expected: tuple[str, str | None]) -> None:
    """Each way a body cannot be read has its own reason."""
    inspection = inspect(raw, CATALOG, ENDPOINTS["create_deal"])
    assert (inspection.result, inspection.reason) == expected == reference_inspect(raw, "create_deal")[:2]


def test_parse_json_reports_why() -> None:
    """parse_json: the document, or None and the unreadable reason."""
    assert parse_json(b'{"a":1}') == ({"a": 1}, None)
    assert parse_json(b'{"a":1e400}') == ({"a": float("inf")}, None)
    assert parse_json(b'{"a":' + b"7" * 5000 + b"}") == ({"a": Decimal("7" * 5000)}, None)
    assert parse_json(b'{"a":' + b"7" * 4000 + b"}")[0] == {"a": int("7" * 4000)}
    assert parse_json(b'\xef\xbb\xbf{}') == (None, "byte_order_mark")
    assert parse_json(b'{"a":"\xc3"}') == (None, "invalid_utf8")
    assert parse_json(b'{"a":Infinity}') == (None, "malformed_json")
    assert parse_json(b"[" * 100_000) == (None, "malformed_json")


@pytest.mark.parametrize(("value", "name"), [
    (None, "null"), (True, "boolean"), (False, "boolean"), (0, "number"), (1.5, "number"), (Decimal(1), "number"),
    ("x", "string"), ([], "array"), ({}, "object"), (object(), "value"),
])
def test_type_names(value: object, name: str) -> None:
    """JSON type names as problem details print them."""
    assert type_name(value) == name


@pytest.mark.parametrize(("content_type", "encoding", "problem"), [
    ("application/json", None, None), ("application/json", "", None), ("application/json", " Identity ", None),
    ("APPLICATION/JSON; Charset=\"UTF-8\"", None, None), ("application/json;charset=utf8", None, None),
    ("application/merge-patch+json", None, None), ("application/json; foo=bar", None, None),
    ("text/json", None, "unsupported_media_type"), ("application/jsonx", None, "unsupported_media_type"),
    ("json", None, "unsupported_media_type"), ("", None, "unsupported_media_type"),
    (None, None, "unsupported_media_type"), ("application/json; charset=utf-16", None, "unsupported_media_type"),
    ("application/json", "gzip", "unsupported_encoding"), (None, "br", "unsupported_encoding"),
    ("+json", None, "unsupported_media_type"), ("application/+json", None, None), ("application/json", " ", None),
    ("application/json;foo=1;charset=utf-16", None, "unsupported_media_type"),
    ("application/json; charset=utf-8=x", None, "unsupported_media_type"),
    ('application/json; charset=X"utf-8"X', None, "unsupported_media_type"),
])
def test_media_verdicts(content_type: str | None, encoding: str | None, problem: str | None) -> None:
    """Only JSON or +json, UTF-8, without content coding; verdicts the same from the cache as computed."""
    media_problem.cache_clear()
    assert media_problem(content_type, encoding) == problem
    assert media_problem(content_type, encoding) == problem


def test_media_cache_is_bounded() -> None:
    """Junk header pairs cannot grow the memo beyond 256 entries, and the verdicts stay right."""
    media_problem.cache_clear()
    for i in range(1000):
        assert media_problem(f"application/x{i}", None) == "unsupported_media_type"
    assert media_problem.cache_info().currsize == 256
    assert media_problem("application/json", None) is None


# -- the token scanner and the literal proof ------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(ENDPOINTS)), keys=st.integers(0, 2), spaced=st.booleans())
def test_scanner_spans_hold_each_leaf_value(data: st.DataObject, name: str, keys: int, spaced: bool) -> None:
    """The n-th span the scanner reports parses to the n-th leaf value in document order; duplicates and
    variants flagged."""
    document = data.draw(shaped(name))
    raw = dump(document, keys, spaced).encode("utf-8", "surrogatepass")
    reference = reference_inspect(raw, name)
    scan = Scanner(ENDPOINTS[name].field_path).scan(raw)
    assert scan.duplicate == (reference[1] == "duplicate_key")
    if not scan.duplicate:
        assert scan.case_variant == (reference[1] == "ambiguous_key")
    if reference[0] != "unreadable":
        leaves = reference[3]
        assert len(scan.spans) == leaves
        assert [json.loads(raw[start:end]) for start, end in scan.spans] == _leaves(json.loads(raw),
                                                                                    ENDPOINTS[name].field_path)


def _at(document: Any, pointer: str) -> Any:
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        document = document[int(token)] if isinstance(document, list) else document[token]
    return document


def _leaves(node: Any, parts: tuple[str, ...]) -> list[Any]:
    """The values at the end of the field path, in document order."""
    if not parts:
        return [node]
    if parts[0] == "*":
        return [leaf for item in node for leaf in _leaves(item, parts[1:])] if isinstance(node, list) else []
    return _leaves(node[parts[0]], parts[1:]) if isinstance(node, dict) and parts[0] in node else []


def _member_by_member(parts: tuple[str, ...]) -> Scanner:
    """A scanner without its regular expressions: every member and element walked in Python."""
    from proxy.dataplane import jsonscan

    slow = Scanner(parts)
    nothing = (None,) * len(parts)
    slow._fast = jsonscan._Fast(nothing, nothing, nothing, nothing, nothing)
    return slow


@settings(max_examples=400, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(ENDPOINTS)), keys=st.integers(0, 2), spaced=st.booleans())
def test_the_fast_walk_reads_as_the_member_by_member_walk(data: st.DataObject, name: str, keys: int,
                                                          spaced: bool) -> None:
    """The regular expressions that skip runs and read leaf objects whole only make the walk faster: the same
    duplicate, case variant and spans as walking every member in Python."""
    document = data.draw(st.one_of(shaped(name), VALUES))
    raw = dump(document, keys, spaced).encode("utf-8", "surrogatepass")
    parts = ENDPOINTS[name].field_path
    fast, slow = Scanner(parts).scan(raw), _member_by_member(parts).scan(raw)
    assert (fast.duplicate, fast.case_variant) == (slow.duplicate, slow.case_variant)
    spanless = Scanner(parts, spans=False).scan(raw)  # runs of leaf objects read whole
    assert (spanless.duplicate, spanless.case_variant) == (slow.duplicate, slow.case_variant)
    if not fast.duplicate:
        assert fast.spans == slow.spans


def test_values_nested_to_the_bound_are_read_and_deeper_ones_are_unreadable() -> None:
    """Values nested _DEPTH deep are skipped by the expressions; one level deeper stops the walk: too deep (and a
    duplicate before it is still a duplicate)."""
    from proxy.dataplane.jsonscan import _DEPTH

    def nested(depth: int) -> bytes:
        return b"[" * (depth - 1) + b'{"stage":1}' + b"]" * (depth - 1)

    def body(depth: int) -> bytes:
        return b'{"deals":[' + b",".join([b'{"x":' + nested(depth) + b',"stage":"won"}', b"0",
                                          b"[" + nested(depth - 1) + b"]", b'{"stage":"lost","y":' + nested(depth)
                                          + b"}"]) + b"]}"

    parts = ENDPOINTS["import_deals"].field_path
    scan = Scanner(parts).scan(body(_DEPTH))
    assert not scan.duplicate and not scan.case_variant and not scan.too_deep
    assert [body(_DEPTH)[start:end] for start, end in scan.spans] == [b'"won"', b'"lost"']
    assert _member_by_member(parts).scan(body(_DEPTH)).spans == scan.spans
    deep = Scanner(parts).scan(body(_DEPTH + 1))
    assert deep.too_deep and not deep.duplicate
    inspection = inspect(body(_DEPTH + 1), CATALOG, ENDPOINTS["import_deals"])
    assert (inspection.result, inspection.reason, inspection.status) == ("unreadable", "nesting_too_deep", 400)
    duplicated = body(_DEPTH + 1).replace(b'{"x"', b'{"stage":1,"stage":2,"x"', 1)
    assert Scanner(parts).scan(duplicated).duplicate
    variant = body(_DEPTH).replace(b'"stage":"won"', b'"Stage":"won","stage":"won"')
    scan = Scanner(parts).scan(variant)
    assert scan.case_variant and not scan.duplicate and len(scan.spans) == 2


@pytest.mark.parametrize(("raw", "key", "exact", "any_case"), [
    (b'{"stage":1}', "stage", 1, 1), (b'{"st\\u0061ge":1}', "stage", 1, 1), (b'{"ST\\u0041GE":1}', "stage", 0, 1),
    (b'{"\\u0073\\u0074\\u0061\\u0067\\u0065":1,"Stage":2}', "stage", 1, 2), (b'{"stages":1}', "stage", 0, 0),
    (b'{"x":"\\"stage\\""}', "stage", 0, 0), (b'{"st\\u0041ge":1}', "stage", 0, 1), (b'"stage"', "stage", 1, 1),
])
def test_spelling_counts(raw: bytes, key: str, exact: int, any_case: int) -> None:
    """Every spelling JSON allows (literal or \\u00XX, hex in either case) is counted, in one or any case."""
    assert spelling_count(raw, key) == exact
    assert spelling_count(raw, key, any_case=True) == any_case


def test_splice_literal_replaces_by_ordinal_and_refuses_a_mismatch() -> None:
    """The n-th spelling is the n-th leaf; non-string leaves are skipped; a count that does not line up is None."""
    raw = b'{"deals":[{"stage":"won"},{"stage":7},{"st\\u0061ge" : "Lost"}]}'
    assert splice_literal(raw, "stage", 3, {0: b'"closed_won"', 2: b'"closed_lost"'}) == (
        b'{"deals":[{"stage":"closed_won"},{"stage":7},{"st\\u0061ge" : "closed_lost"}]}')
    assert splice_literal(raw, "stage", 3, {1: b'"x"'}) == raw
    assert splice_literal(raw, "stage", 2, {0: b'"closed_won"'}) is None


@pytest.mark.parametrize(("token", "text"), [
    (b'"stage"', "stage"), (b'"st\\u0061ge"', "stage"), (b'"a\\/b"', "a/b"), (b'"\\"q\\\\"', '"q\\'),
    (b'"caf\xc3\xa9"', "café"), (b'"\\ud83d\\ude00"', "😀"), (b'"tab\\t"', "tab\t"), (b'"\\u00e9\\/"', "é/"),
])
def test_decode_key(token: bytes, text: str) -> None:
    """Keys decode exactly as JSON says, whichever decoder path is taken."""
    assert decode_key(token) == text == json.loads(token)


# -- small pure functions -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "escaped"), [("a", "a"), ("a/b", "a~1b"), ("a~b", "a~0b"), ("~/", "~0~1"),
                                              ("~1", "~01"), ("", "")])
def test_pointer_escaping(key: str, escaped: str) -> None:
    """RFC 6901: ~ before /, so that ~1 in a key does not read back as /."""
    assert escape_pointer(key) == escaped


SEPARATORS = re.compile(r"[\s\-_.]+")


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("aBcÉéﬁⅨ -_.\t\n\x1c\u00a0\u3000Zz0")), max_size=12))
def test_fold_matches_its_definition(value: str) -> None:
    """NFKC, trim, casefold, separator runs to one _, ends trimmed — the ASCII fast path included."""
    expected = SEPARATORS.sub("_", unicodedata.normalize("NFKC", value).strip().casefold()).strip("_")
    assert fold(value) == expected


def test_canary_bucket_details() -> None:
    """Hundredths from the first 8 digest bytes; a request ID with an unpaired surrogate hashes its raw bytes."""
    assert bucket_hundredths("req-1") == 277 and bucket("req-1") == 2.77
    assert bucket_hundredths("\udcff") == bucket_hundredths("\udcff") and 0 <= bucket_hundredths("\udcff") < 10000
    assert is_enforced("req-1", 2.78) and not is_enforced("req-1", 2.77) and not is_enforced("req-1", 0)
    assert is_enforced("a", 22.51) and not is_enforced("a", 22.5)


# -- the catalog file: every refusal, word for word -----------------------------------------------------------

MINIMAL = """[stages]
canonical = ["lead", "won"]

[[endpoints]]
name = "create"
method = "post"
path = "/deals/"
field = "stage"
"""


def test_catalog_defaults() -> None:
    """Absent settings take their documented defaults; methods are upper-cased, trailing slashes dropped."""
    catalog = parse_catalog(MINIMAL)
    assert catalog.default_mode == "off" and catalog.aliases == {} and not catalog.case_sensitive_paths
    [endpoint] = catalog.endpoints
    assert (endpoint.methods, endpoint.path, endpoint.required) == (("POST",), "/deals", False)
    assert catalog.endpoint("create") is endpoint and catalog.endpoint("nope") is None
    assert parse_catalog(MINIMAL.replace('path = "/deals/"', 'path = "/"')).endpoints[0].path == "/"


@pytest.mark.parametrize(("text", "message"), [
    ("[stages\n", "not valid TOML: "),
    (MINIMAL + "extra = 1\n", "endpoint 'create': unknown key(s) ['extra'] (line 5)"),
    ("x = 1\n" + MINIMAL, "unknown top-level key(s) ['x']"),
    ('default_mode = "loud"\n' + MINIMAL, "default_mode must be one of ['off', 'warn', 'enforce'], not 'loud'"),
    ("case_sensitive_paths = 1\n" + MINIMAL, "case_sensitive_paths must be true or false"),
    (MINIMAL.replace("[stages]\ncanonical", "[stagex]\ncanonical"), "unknown top-level key(s) ['stagex']"),
    ('stages = 1\n[[endpoints]]\nname="a"', "[stages] table is missing"),
    (MINIMAL.replace('canonical = ["lead", "won"]', "canonical = []"),
     "stages.canonical must be a non-empty list of non-empty strings"),
    (MINIMAL.replace('canonical = ["lead", "won"]', 'canonical = "lead"'),
     "stages.canonical must be a non-empty list of non-empty strings"),
    (MINIMAL.replace('canonical = ["lead", "won"]', 'canonical = ["lead", ""]'),
     "stages.canonical must be a non-empty list of non-empty strings"),
    (MINIMAL.replace('canonical = ["lead", "won"]', 'canonical = ["lead", "won"]\naliases = 3'),
     "[stages.aliases] must be a table of alias = canonical stage"),
    (MINIMAL.replace('canonical = ["lead", "won"]', 'canonical = ["lead", "Lead"]'),
     "canonical stage 'Lead' folds to 'lead', colliding with canonical stage 'lead'"),
    (MINIMAL.replace('canonical = ["lead", "won"]', 'canonical = ["lead", "won"]\n[stages.aliases]\n"--" = "lead"'),
     "alias '--' folds to an empty string (line 4)"),
    (MINIMAL.replace('canonical = ["lead", "won"]', 'canonical = ["lead", "won"]\n[stages.aliases]\nx = 5'),
     "alias 'x' points at 5, which is not a canonical stage (line 4)"),
    (MINIMAL.replace('name = "create"', 'name = "Create"'), "endpoint 'Create': name must match "),
    (MINIMAL.replace('name = "create"', "name = 7"), "endpoints[0]: name must match "),
    (MINIMAL.replace('method = "post"', 'method = "FETCH"'),
     "endpoint 'create': method must be one of ['DELETE', 'GET', 'PATCH', 'POST', 'PUT'], or a list of them "
         "without repeats (line 5)"),
    (MINIMAL.replace('path = "/deals/"', 'path = "deals"'), "endpoint 'create': path must be a normalized"),
    (MINIMAL.replace('path = "/deals/"', 'path = "/_OPS/x"'), "not under /_ops (line 5)"),
    (MINIMAL.replace('path = "/deals/"', 'path = "/a/../b"'), "path must be a normalized"),
    (MINIMAL.replace('path = "/deals/"', 'path = "/a//b"'), "path must be a normalized"),
    (MINIMAL.replace('path = "/deals/"', 'path = "/a/%41"'), "path must be a normalized"),
    (MINIMAL.replace('field = "stage"', 'field = ""'), "endpoint 'create': field must be a dotted path"),
    (MINIMAL.replace('field = "stage"', 'field = "a..b"'), "endpoint 'create': field 'a..b': bad segment ''"),
    (MINIMAL.replace('field = "stage"', 'field = "stage"\nrequired = 1'), "required must be true or false"),
    (MINIMAL.replace("[[endpoints]]", "endpoints = 5\n[x]"), "unknown top-level key(s) ['x']"),
    ('endpoints = []\n[stages]\ncanonical = ["a"]', "[[endpoints]] must list at least one endpoint"),
    ('endpoints = [1]\n[stages]\ncanonical = ["a"]', "endpoints[0] must be a table"),
    (MINIMAL + MINIMAL[MINIMAL.index("[[endpoints]]"):], "endpoint names must be unique: ['create', 'create']"),
    (MINIMAL + MINIMAL[MINIMAL.index("[[endpoints]]"):].replace('"create"', '"other"').replace("/deals/", "/DEALS"),
     "two endpoints share a method and path: [('POST', '/deals'), ('POST', '/deals')]"),
    (MINIMAL.replace("/deals/", "/deals/{id}") + MINIMAL[MINIMAL.index("[[endpoints]]"):].replace(
        '"create"', '"other"').replace("/deals/", "/deals/{key}"),
     "two endpoints share a method and path: [('POST', '/deals/{}'), ('POST', '/deals/{}')]"),
])
def test_catalog_refusals(text: str, message: str) -> None:
    """Each rule a catalog breaks is refused with a message naming the entry (and its line where it has one)."""
    from proxy.catalog.stages import CatalogError

    with pytest.raises(CatalogError) as refused:
        parse_catalog(text)
    assert message in str(refused.value)


def test_case_sensitive_catalog_tells_paths_apart_by_case() -> None:
    """With case_sensitive_paths, /deals and /DEALS are two endpoints; without, one path twice (refused)."""
    second = MINIMAL[MINIMAL.index("[[endpoints]]"):].replace('"create"', '"other"').replace("/deals/", "/DEALS")
    catalog = parse_catalog("case_sensitive_paths = true\n" + MINIMAL + second)
    assert catalog.case_sensitive_paths and [e.path for e in catalog.endpoints] == ["/deals", "/DEALS"]


# -- white-box: the fast paths are taken (results are covered above; these are about speed) --------------------


def test_hot_path_returns_the_shared_canonical_verdict() -> None:
    """A body with one top-level canonical stage, spelled once, costs no walk: the shared verdict object."""
    from proxy.dataplane.body import CANONICAL_ONE, Inspector

    inspector = Inspector(CATALOG, ENDPOINTS["create_deal"])
    assert inspector.inspect(b'{"name":"x","stage":"lead"}') is CANONICAL_ONE
    assert inspector.inspect(b'{"stage":"lead","x":{"stage":1}}') is not CANONICAL_ONE
    assert inspector.inspect(b'{"st\\u0061ge":"lead"}') is not CANONICAL_ONE
    assert inspect(b'{"stage":"lead","x":{"stage":1}}', CATALOG, ENDPOINTS["create_deal"]).result == "canonical"


def test_classifications_are_remembered_within_bounds() -> None:
    """Each distinct value is classified once per inspector; junk values cannot grow the memo past its bound."""
    from proxy.dataplane.body import MEMO_SIZE, Inspector

    inspector = Inspector(CATALOG, ENDPOINTS["import_deals"])
    inspector.inspect(b'{"deals":[{"stage":"Closed Won"},{"stage":"Closed Won"},{"stage":"zzz"}]}')
    assert inspector._memo == {"Closed Won": ("alias", "closed_won"), "zzz": ("unknown", None)}
    junk = b",".join(b'{"stage":"v%d"}' % i for i in range(MEMO_SIZE + 10))
    inspector.inspect(b'{"deals":[' + junk + b"]}")
    assert 1 <= len(inspector._memo) <= MEMO_SIZE and inspector._memo.get(f"v{MEMO_SIZE + 9}") == ("unknown", None)


@pytest.mark.parametrize(("raw", "literal"), [
    (b'{"deals":[{"stage":"won"}]}', True), (b'{"d\\u0065als":[{"st\\u0061ge":"won"}]}', True),
    (b'{"deals":[{"stage":"won","x":{"stage":1}}]}', False), (b'{"deals":[{"stage":"won"}],"note":"Stage"}', False),
    (b'{"deals":[{"stage":"won"}],"n":{"STAGE":1}}', False), (b'{"deals":[],"x":{"deals":1}}', False),
    (b'{"deals":[{"stage":"lead"},{"stage":"won"}]}', True),
])
def test_literal_proof(raw: bytes, literal: bool) -> None:
    """The byte-count proof holds exactly when every spelling of a path key (in any case) is a path key."""
    assert inspect(raw, CATALOG, ENDPOINTS["import_deals"]).literal_keys is literal


def test_member_runs_skip_other_members_but_never_the_key() -> None:
    """The scanner's run regex swallows members with any value nested up to its depth (a nested "stage" is off
    the path) and stops at the path key in any spelling or case, and at a value nested deeper."""
    from proxy.dataplane.jsonscan import _DEPTH, member_run

    run = member_run("stage")
    members = b'"a":1, "b" : "x\\"y",\n"c":null,"x":{"stage":[1,{"y":"]"}]},"stage":"won"}'
    assert run.fullmatch(members[:members.index(b'"stage":"won"')]) is not None
    for stop in (b'"STAGE":1,', b'"st\\u0061ge":1,', b'"sT\\u0041GE":1,', b'"\xc5\xbftage":1,'):
        assert run.fullmatch(stop) is None
    assert run.fullmatch(b'"x":' + b"[" * _DEPTH + b"]" * _DEPTH + b",") is not None
    assert run.fullmatch(b'"x":' + b"[" * (_DEPTH + 1) + b"]" * (_DEPTH + 1) + b",") is None
    lenient = member_run("stage", strict=False)  # after a case variant: only the exact spellings stop it
    assert lenient.fullmatch(b'"STAGE":1,"\xc5\xbftage":2,') is not None
    assert lenient.fullmatch(b'"st\\u0061ge":1,') is None


@pytest.mark.parametrize("raw", [b'  \n{"stage" : "won"}', b'{"stage":"[{\\"won"}'])
def test_scanner_spans_from_any_start(raw: bytes) -> None:
    """Leading whitespace and brackets inside strings do not shift the spans."""
    scan = Scanner(ENDPOINTS["create_deal"].field_path).scan(raw)
    [(start, end)] = scan.spans
    assert json.loads(raw[start:end]) == json.loads(raw)["stage"]


def test_loosest_reading_bounds() -> None:
    """The loosest reading decodes three times (double-encoding routers exist; four layers is not a path)."""
    from proxy.catalog.paths import RouteTable, loosest_reading

    assert loosest_reading("/a%25252Fb") == "/a/b" and loosest_reading("/a%2525252Fb") == "/a%2Fb"
    assert loosest_reading("/a%ffb") == "/a\udcffb"
    table = RouteTable(CATALOG.endpoints)
    assert table.match("POST", "/api/v1%25252Fdeals") is not None
    assert table.match("POST", "/api/v1%2525252Fdeals") is None


def test_parse_int_boundary() -> None:
    """Integers up to 4000 digits are ints, longer ones exact Decimals (Python's int() stops at 4300)."""
    from proxy.dataplane.body import _parse_int

    assert type(_parse_int("9" * 4000)) is int and type(_parse_int("9" * 4001)) is Decimal


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.sampled_from(['"', "\\", "stage", "Stage", "ST", "s", "\\u0073", "\\u0053", "\\u017f",
                                        "\u017f", "\ufb06", "age", "tage", "\\u0061", "x", ":", ","]), max_size=30),
       key=st.sampled_from(["stage", "sTage", "deals"]), any_case=st.booleans())
def test_spellings_split_by_head_count_as_the_whole_pattern(pieces: list[str], key: str, any_case: bool) -> None:
    """Counting with one pattern per first token finds what the whole alternation finds."""
    from proxy.dataplane.jsonscan import spelling

    raw = "".join(pieces).encode()
    assert spelling_count(raw, key, any_case=any_case) == len(spelling(key, any_case=any_case).findall(raw))


def test_spelling_of_a_mixed_case_key() -> None:
    """A key written in mixed case is matched in exactly its case, or in any case when asked."""
    assert spelling_count(b'{"sTage":1,"stage":2,"STAGE":3}', "sTage") == 1
    assert spelling_count(b'{"sTage":1,"stage":2,"ST\\u0041GE":3}', "sTage", any_case=True) == 3


def test_a_long_escaped_key_is_not_the_path_key() -> None:
    """A key with escapes, too long to decode to the path key, is skipped without decoding (and is not it)."""
    long_key = b'"' + b"\\u0061" * 20 + b'"'  # its value is an object, so no run of simple members swallows it
    scan = Scanner(("stage",)).scan(b'{' + long_key + b':{"a":1},"stage":"won","x":{"stage":2}}')
    assert not scan.duplicate and not scan.case_variant and len(scan.spans) == 1


def test_a_key_with_a_slash_is_found_in_both_spellings() -> None:
    """A path key holding '/' may be written \\/ too: both spellings are the key (a duplicate here), found."""
    catalog = parse_catalog(MINIMAL.replace('field = "stage"', 'field = "st/age"'))
    [endpoint] = catalog.endpoints
    assert inspect(b'{"st/age":"lead"}', catalog, endpoint).result == "canonical"
    duplicated = inspect(b'{"st/age":"lead","st\\/age":"banana"}', catalog, endpoint)
    assert (duplicated.result, duplicated.reason) == ("unreadable", "duplicate_key")
    scan = Scanner(("st/age",)).scan(b'{"a":1,"st\\/age":"x"}')
    assert scan.spans == [(17, 20)]


def test_a_rewrite_through_the_scanner_keeps_document_order() -> None:
    """Twelve aliases rewritten from the scanner's spans (pointers /10, /11 sort before /2 as text)."""
    deals = b",".join(b'{"stage":"won","x":{"stage":1}}' for _ in range(12))
    raw = b'{"deals":[' + deals + b"]}"
    inspection = inspect(raw, CATALOG, ENDPOINTS["import_deals"])
    assert inspection.spans is not None and not inspection.literal_keys
    assert rewrite(raw, ENDPOINTS["import_deals"], inspection) == raw.replace(b'"won"', b'"closed_won"')


def test_nesting_the_scanner_cannot_follow_is_unreadable() -> None:
    """Deep nesting orjson accepts, in a body that must be walked token by token: unreadable, not a crash."""
    raw = b'{"stage":"won","x":{"stage":1},"deep":' + b"[" * 1000 + b"]" * 1000 + b"}"
    inspection = inspect(raw, CATALOG, ENDPOINTS["create_deal"])
    assert (inspection.result, inspection.reason) == ("unreadable", "nesting_too_deep")
