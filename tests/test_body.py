"""Body inspection and rewriting: the ambiguity rules of docs/proxy.md, exact-byte rewrites."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from proxy.catalog.stages import Endpoint, default_catalog
from proxy.dataplane.body import Inspection, Inspector, inspect, media_problem, parse_json, rewrite

CATALOG = default_catalog()
CREATE, UPDATE, IMPORT = CATALOG.endpoints


def result_of(raw: bytes, endpoint: Endpoint = CREATE) -> tuple[str, str | None]:
    inspection = inspect(raw, CATALOG, endpoint)
    return inspection.result, inspection.reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"stage": "lead"}', ("canonical", None)),
        (b'{"stage": "Closed Won"}', ("alias", None)),
        (b'{"stage": "maybe"}', ("unknown", None)),
        (b'{"stage": 3}', ("invalid", None)),
        (b'{"stage": null}', ("invalid", None)),
        (b"{}", ("invalid", None)),
        (b'["stage"]', ("invalid", None)),
        (b'"lead"', ("invalid", None)),
        (b"", ("unreadable", "malformed_json")),
        (b'{"stage": "lead"', ("unreadable", "malformed_json")),
        (b'{"stage": "lead"} x', ("unreadable", "malformed_json")),
        (b'{"stage": NaN}', ("unreadable", "malformed_json")),
        (b'\xef\xbb\xbf{"stage": "lead"}', ("unreadable", "byte_order_mark")),
        (b'{"stage": "l\xffad"}', ("unreadable", "invalid_utf8")),
        (b'{"stage": "lead", "stage": "maybe"}', ("unreadable", "duplicate_key")),
        (b'{"stage": "maybe", "st\\u0061ge": "lead"}', ("unreadable", "duplicate_key")),
        (b'{"a": {"stage": 1, "stage": 2}, "stage": "lead"}', ("canonical", None)),
        (b'{"stage": "lead", "n": 123456789012345678901234567890123}', ("canonical", None)),
        (b'{"stage": "lead", "f": 1e400, "g": -1e400}', ("canonical", None)),
        (b'{"stage": "\\u006cead"}', ("canonical", None)),
        (b'{"stage": "\\ud800"}', ("unknown", None)),
        (b'{"stage": "lead\\n{\\"level\\":\\"INFO\\"}"}', ("unknown", None)),
    ],
)
def test_create_deal_results(raw: bytes, expected: tuple[str, str | None]) -> None:
    """Each body gets the result and reason docs/catalog.md and docs/proxy.md prescribe."""
    assert result_of(raw) == expected


def test_update_deal_stage_is_optional() -> None:
    """A missing stage is `absent` where the field is not required."""
    assert result_of(b'{"name": "x"}', UPDATE) == ("absent", None)
    assert result_of(b'{"stage": "won"}', UPDATE) == ("alias", None)


def test_deep_nesting_is_unreadable_not_a_crash() -> None:
    """10 000 levels of nesting are beyond the limit: unreadable, no RecursionError escapes."""
    raw = b'{"stage": "lead", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    assert result_of(raw) == ("unreadable", "malformed_json")


def test_nesting_within_the_limit_is_fine() -> None:
    """Moderate nesting (500 levels) is valid JSON and is classified."""
    raw = b'{"stage": "lead", "x": ' + b"[" * 500 + b"]" * 500 + b"}"
    assert result_of(raw) == ("canonical", None)


def test_huge_stage_value_is_unknown() -> None:
    """A 100 KB stage string is simply unknown."""
    assert result_of(orjson.dumps({"stage": "x" * 100_000})) == ("unknown", None)


def test_import_worst_result_and_pointers() -> None:
    """Arrays take the worst result; each non-canonical value is a finding with its RFC 6901 pointer."""
    raw = b'{"deals": [{"stage": "lead"}, {"stage": "won"}, {"stage": "nope"}, 7, {}]}'
    inspection = inspect(raw, CATALOG, IMPORT)
    assert inspection.result == "invalid"
    assert [(f.pointer, f.result) for f in inspection.findings] == [
        ("/deals/1/stage", "alias"), ("/deals/2/stage", "unknown"), ("/deals/3", "invalid"),
        ("/deals/4/stage", "invalid")]
    assert inspection.leaves == 3  # lead, won, nope: the values present


@pytest.mark.parametrize(
    ("raw", "result"),
    [(b'{"deals": []}', "absent"), (b"{}", "invalid"), (b'{"deals": {}}', "invalid"),
     (b'{"deals": [{"stage": "won"}, {"stage": "Lost"}]}', "alias"),
     (b'{"deals": [{"stage": "lead"}], "deals": [{"stage": "x"}]}', "unreadable"),
     (b'{"deals": [{"stage": "lead"}, {"stage": "a", "stage": "lead"}]}', "unreadable")],
)
def test_import_edge_cases(raw: bytes, result: str) -> None:
    """Empty, missing, mistyped and duplicated arrays on the import endpoint."""
    assert result_of(raw, IMPORT)[0] == result


def test_rewrite_preserves_every_other_byte() -> None:
    """Only the alias values change: big integers, floats, spacing and key order stay as sent."""
    raw = b'{ "n" : 123456789012345678901234567890, "stage" :\t"Closed Won" ,"f":1.50e+2, "u":"\\u00e9"}'
    inspection = inspect(raw, CATALOG, CREATE)
    out = rewrite(raw, CREATE, inspection)
    assert out == raw.replace(b'"Closed Won"', b'"closed_won"')


def test_rewrite_import_only_touches_aliases() -> None:
    """In an import, aliases become canonical; canonical values and nested stages stay."""
    raw = b'{"deals":[{"stage":"WON","meta":{"stage":"won"}},{"stage":"lead"},{"stage":"Negotiating"}]}'
    out = rewrite(raw, IMPORT, inspect(raw, CATALOG, IMPORT))
    assert out == b'{"deals":[{"stage":"closed_won","meta":{"stage":"won"}},{"stage":"lead"},{"stage":"negotiation"}]}'


def test_rewrite_with_escaped_alias() -> None:
    """An alias spelled with escapes is replaced as a whole token."""
    raw = b'{"stage": "Closed\\u0020\\"Won\\"", "x": 1}'
    inspection = inspect(raw, CATALOG, CREATE)
    assert inspection.result == "unknown"
    raw = b'{"st\\u0061ge": "W\\u004fN", "x": "\\\\"}'
    out = rewrite(raw, CREATE, inspect(raw, CATALOG, CREATE))
    assert out == b'{"st\\u0061ge": "closed_won", "x": "\\\\"}'


@pytest.mark.parametrize(
    ("content_type", "encoding", "problem"),
    [("application/json", None, None), ("application/json; charset=utf-8", None, None),
     ("application/vnd.deals+json", None, None), ("Application/JSON", "identity", None),
     (None, None, "unsupported_media_type"), ("text/plain", None, "unsupported_media_type"),
     ("application/json; charset=latin-1", None, "unsupported_media_type"),
     ("application/json", "gzip", "unsupported_encoding"), ("application/json", "br", "unsupported_encoding")],
)
def test_media_problem(content_type: str | None, encoding: str | None, problem: str | None) -> None:
    """Only JSON (or +json) in UTF-8 without content coding can be validated."""
    assert media_problem(content_type, encoding) == problem


def test_parse_json_accepts_what_orjson_refuses() -> None:
    """Valid JSON that orjson refuses (1e400, lone surrogate escapes) still parses."""
    assert parse_json(b'{"a": 1e400}')[1] is None
    assert parse_json(b'{"a": "\\udc00"}')[1] is None


# -- properties ---------------------------------------------------------------

STAGES = st.sampled_from(["lead", "won", "Closed Won", "LOST", "zzz", " prospect ", "proposal", "négociation"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
KEYS = st.sampled_from(["stage", "deals", "name", "amount", "x", "Stage", "st/age"])
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(KEYS, inner, max_size=4)), max_leaves=12)


def _dump(value: Any, style: int) -> bytes:
    if style == 0:
        return json.dumps(value).encode()
    if style == 1:
        return json.dumps(value, indent=2, ensure_ascii=False).encode()
    return json.dumps(value, separators=(",", ":")).encode()


@settings(max_examples=300, deadline=None)
@given(extra=st.dictionaries(KEYS.filter(lambda k: k not in ("stage", "deals")), JSON_VALUES, max_size=4),
       deals=st.lists(st.tuples(STAGES, st.dictionaries(KEYS.filter(lambda k: k != "stage"), JSON_VALUES, max_size=3)),
                      max_size=6),
       style=st.integers(0, 2))
def test_rewrite_equals_semantic_normalization(extra: dict[str, Any], deals: list[tuple[str, dict[str, Any]]],
                                               style: int) -> None:
    """For any import body, the rewrite parses to the input with only alias stages replaced."""
    document = {**extra, "deals": [{**fields, "stage": stage} for stage, fields in deals]}
    raw = _dump(document, style)
    inspection = inspect(raw, CATALOG, IMPORT)
    if inspection.result != "alias":
        return
    expected = json.loads(raw)
    for deal in expected["deals"]:
        result, normalized = CATALOG.classify(deal["stage"])
        if result == "alias":
            deal["stage"] = normalized
    out = rewrite(raw, IMPORT, inspection)
    assert json.loads(out) == expected
    assert inspect(out, CATALOG, IMPORT).result == "canonical"


@settings(max_examples=300, deadline=None)
@given(document=st.dictionaries(KEYS, JSON_VALUES, max_size=5), style=st.integers(0, 2),
       duplicate=st.sampled_from(["stage", "name"]))
def test_duplicates_found_only_on_the_path(document: dict[str, Any], style: int, duplicate: str) -> None:
    """A duplicated ``stage`` key, or one in another case (``Stage``), is unreadable; other keys do not matter."""
    raw = _dump(document, style)
    assert raw.startswith(b"{")
    injected = b'{"' + duplicate.encode() + b'": "lead", ' + raw[1:] if raw != b"{}" else raw
    case_variant = any(key != "stage" and key.lower() == "stage" for key in document)
    expected_dup = (duplicate == "stage" and "stage" in document) or case_variant
    result = inspect(injected, CATALOG, CREATE).result
    assert (result == "unreadable") == expected_dup


OTHER_KEYS = st.sampled_from(["name", "amount", "x", "st/age", "stages", "deal"])  # no path key in any case
FLAT_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(OTHER_KEYS, inner, max_size=3)),
                           max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(deals=st.lists(st.tuples(STAGES, st.dictionaries(OTHER_KEYS, FLAT_VALUES, max_size=3)), max_size=6),
       style=st.integers(0, 2), escape=st.booleans())
def test_fast_splice_agrees_with_the_scanner(deals: list[tuple[str, dict[str, Any]]], style: int,
                                             escape: bool) -> None:
    """Where the literal proof holds, the regex splice writes exactly the bytes the token scanner's spans give."""
    deals = [*deals, ("Closed Won", {})]  # at least one alias
    raw = _dump({"deals": [{**fields, "stage": stage} for stage, fields in deals]}, style)
    if escape:
        raw = raw.replace(b'"stage"', b'"st\\u0061ge"')
    inspection = inspect(raw, CATALOG, IMPORT)
    assert any(f.result == "alias" for f in inspection.findings)
    # The proof is conservative: a value spelling a path key in any case ("DEALS") counts as a spelling, and the
    # splice then takes the scanner's spans (test_core_model.py::test_literal_proof says when it must hold).
    assume(inspection.literal_keys)
    fast = rewrite(raw, IMPORT, inspection)
    slow = rewrite(raw, IMPORT, dataclasses.replace(inspection, literal_keys=False))  # spans from the Scanner
    assert fast == slow


def test_the_collector_is_paused_only_while_a_large_body_is_read() -> None:
    """Large bodies are parsed with the cyclic GC off; it is back on afterwards (and stays off if it was off),
    also when two threads read large bodies at once."""
    import gc
    import threading

    from proxy.dataplane.body import COLLECTOR_PAUSE_BYTES, collector_paused

    large = b'{"deals":[' + b",".join([b'{"stage":"won"}'] * (COLLECTOR_PAUSE_BYTES // 15)) + b"]}"
    seen: list[bool] = []

    class Spy(Inspector):
        def _inspect(self, raw: bytes) -> Inspection:
            seen.append(gc.isenabled())
            return super()._inspect(raw)

    inspector = Spy(CATALOG, IMPORT)
    assert gc.isenabled()
    assert inspector.inspect(large).result == "alias" and seen == [False] and gc.isenabled()
    assert inspector.inspect(b'{"deals":[]}').result == "absent" and seen[-1] is True  # small: not paused
    gc.disable()
    try:
        inspector.inspect(large)
        assert not gc.isenabled()  # it was off: it stays off
    finally:
        gc.enable()
    inside = threading.Event()
    leave = threading.Event()

    def hold() -> None:
        with collector_paused():
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    inspector.inspect(large)
    assert not gc.isenabled()  # the other thread still reads: not turned back on under it
    leave.set()
    holder.join(10)
    assert gc.isenabled()


def test_findings_are_kept_per_kind_and_all_are_counted() -> None:
    """Past MAX_FINDINGS of a kind, findings are only counted; an unknown value after hundreds of aliases is still
    kept with its pointer (the problem answer names it), and every alias is still rewritten."""
    from proxy.dataplane.body import MAX_FINDINGS

    deals = [{"stage": "won"}] * 300 + [{"stage": "banana"}] + [{"stage": 7}] * 300
    inspection = inspect(orjson.dumps({"deals": deals}), CATALOG, IMPORT)
    assert inspection.result == "invalid"
    assert (inspection.count("alias"), inspection.count("unknown"), inspection.count("invalid")) == (300, 1, 300)
    kinds = [f.result for f in inspection.findings]
    assert kinds.count("alias") == MAX_FINDINGS and kinds.count("unknown") == 1
    assert kinds.count("invalid") == MAX_FINDINGS - 1  # the unknown took one of the unknown-or-invalid places
    unknown = next(f for f in inspection.findings if f.result == "unknown")
    assert (unknown.pointer, unknown.leaf_index) == ("/deals/300/stage", 300)
    assert len(inspection.aliases) == 300 and inspection.alias_values == {"won": 300}
    rewritten = orjson.loads(rewrite(orjson.dumps({"deals": deals[:300]}), IMPORT,
                                     inspect(orjson.dumps({"deals": deals[:300]}), CATALOG, IMPORT)))
    assert {d["stage"] for d in rewritten["deals"]} == {"closed_won"}


def test_a_stage_key_outside_the_array_still_lets_the_array_be_spliced_by_its_spellings() -> None:
    """A stage key off the path but outside the deals array: the scanner proves the body, and the rewrite splices
    by the key's spellings inside the array alone (no span per leaf); one inside an element needs the spans."""
    deals = b",".join([b'{"stage":"won"}', b'{"stage":"lead"}', b'{"st\\u0061ge":"WON"}'])
    outside = b'{"x":{"stage":"won"},"deals":[' + deals + b'],"y":"\\"stage\\":\\"won\\""}'
    inspection = inspect(outside, CATALOG, IMPORT)
    assert not inspection.literal_keys and inspection.spans is None and inspection.region is not None
    assert outside[inspection.region[0]:inspection.region[1]].startswith(b"[") and inspection.region[1] < len(outside)
    assert rewrite(outside, IMPORT, inspection) == outside.replace(
        b'[{"stage":"won"}', b'[{"stage":"closed_won"}').replace(b'"WON"', b'"closed_won"')
    inside = b'{"deals":[{"stage":"won","x":{"stage":"won"}},{"stage":"lead"}]}'
    nested = inspect(inside, CATALOG, IMPORT)
    assert nested.region is None and nested.spans is not None
    assert rewrite(inside, IMPORT, nested) == b'{"deals":[{"stage":"closed_won","x":{"stage":"won"}},{"stage":"lead"}]}'


@pytest.mark.parametrize(("raw", "region"), [
    (b'{"x":{"stage":1},"deals":[{"stage":"won"},{"st\\u0061ge":"lead"}]}', True),  # off the path before the array
    (b'{"deals":[{"stage":"won"},{"stage":"lead"}],"y":{"stage":1}}', False),  # after it
    (b'{"deals":[{"stage":"won","x":[[{"stage":1}]],"x":"won"},{"stage":"lead"}]}', False),  # inside an element
    (b'{"x":{"Stage":1},"deals":[{"stage":"won"}],"y":"\\"stage\\":1"}', True),  # another case, an escaped quote
])
def test_a_body_the_literal_proof_misses_is_walked_once(monkeypatch: pytest.MonkeyPatch, raw: bytes,
                                                        region: bool) -> None:
    """A stage key off the path sends the body to the token scanner, which walks it once, rewrite included: it
    splices by the key's spellings in the array when none is inside or after it, else takes every leaf's span
    on the same walk (a fuzzer-found body of such elements was walked twice: 190 ms)."""
    from proxy.dataplane import jsonscan

    walks: list[bytes] = []
    original = jsonscan.Scanner.scan

    def scan(self: jsonscan.Scanner, body: bytes) -> jsonscan.Scanner:
        walks.append(body)
        return original(self, body)

    monkeypatch.setattr(jsonscan.Scanner, "scan", scan)
    inspection = inspect(raw, CATALOG, IMPORT)
    assert inspection.result == "alias" and not inspection.literal_keys
    assert (inspection.region is not None, inspection.spans is not None) == (region, not region)
    expected = json.loads(raw)
    for deal in expected["deals"]:
        deal["stage"] = CATALOG.classify(deal["stage"])[1] or deal["stage"]
    out = rewrite(raw, IMPORT, inspection)
    assert json.loads(out) == expected and len(out) - len(raw) == len(b"closed_won") - len(b"won")
    assert len(walks) == 1
