"""Endpoint matching on the path as permissive routers read it (proxy/catalog/paths.py)."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.catalog.paths import (
    PathMatch,
    RouteTable,
    ascii_lower,
    is_ambiguous,
    is_ops_path,
    loosest_reading,
    normalize_segments,
)
from proxy.catalog.stages import DEFAULT_CATALOG_TOML, default_catalog, parse_catalog

CATALOG = default_catalog()


class _Table:
    """A fresh route table per use: built inside the test, not at import (mutation testing must see it built)."""

    def match(self, method: str, raw: str) -> PathMatch | None:
        return RouteTable(CATALOG.endpoints).match(method, raw)


TABLE = _Table()


@pytest.mark.parametrize(("method", "raw", "endpoint", "forwarded", "ambiguous"), [
    ("POST", "/api/v1/deals", "create_deal", "/api/v1/deals", False),
    ("POST", "/api/v1/./deals", "create_deal", "/api/v1/deals", False),
    ("POST", "/api/v1/x/../deals", "create_deal", "/api/v1/deals", False),
    ("POST", "/api/v1/%2e/deals", "create_deal", "/api/v1/deals", False),
    ("POST", "/api/v1/%2E%2e/v1/deals", "create_deal", "/api/v1/deals", False),
    ("POST", "/API/v1/Deals", "create_deal", "/api/v1/deals", False),
    ("POST", "//api//v1//deals//", "create_deal", "/api/v1/deals", False),
    ("POST", "/api/v1/%64eals", "create_deal", "/api/v1/deals", False),
    ("POST", "/../../api/v1/deals", "create_deal", "/api/v1/deals", False),
    ("POST", "/api/v1/deals/x/..", "create_deal", "/api/v1/deals", False),
    ("POST", "/api/v1/deals/imp%6Frt", "import_deals", "/api/v1/deals/import", False),
    ("PATCH", "/api/v1/deals/5", "update_deal", "/api/v1/deals/5", False),
    ("PATCH", "/API/V1/DEALS/AbC/", "update_deal", "/api/v1/deals/AbC", False),
    ("PATCH", "/api/v1/deals/a%20b", "update_deal", "/api/v1/deals/a%20b", False),
    ("PATCH", "/api/v1/deals/a%7eb", "update_deal", "/api/v1/deals/a~b", False),
    ("PATCH", "/api/v1/deals/a%c3%a9", "update_deal", "/api/v1/deals/a%C3%A9", False),
    ("PATCH", "/api/v1/deals/5%2Fx", "update_deal", "/api/v1/deals/5%2Fx", True),
    ("PATCH", "/api/v1/deals/5%2fx", "update_deal", "/api/v1/deals/5%2Fx", True),
    ("PATCH", "/api/v1/deals/a%5Cb", "update_deal", "/api/v1/deals/a%5Cb", True),
    ("PATCH", "/api/v1/deals/a\\b", "update_deal", "/api/v1/deals/a\\b", True),
    ("PATCH", "/api/v1/deals/%00", "update_deal", "/api/v1/deals/%00", True),
    ("PATCH", "/api/v1/deals/%25", "update_deal", "/api/v1/deals/%25", True),
    ("POST", "/api/v1%2Fdeals", "create_deal", "/api/v1/deals", True),
    ("POST", "/api%5Cv1%5Cdeals", "create_deal", "/api/v1/deals", True),
    ("POST", "/api/v1%252Fdeals", "create_deal", "/api/v1/deals", True),
    ("POST", "/api\\v1\\deals", "create_deal", "/api/v1/deals", True),
])
def test_spellings_that_reach_an_endpoint(method: str, raw: str, endpoint: str, forwarded: str,
                                          ambiguous: bool) -> None:
    """Every spelling a permissive router maps to an endpoint is matched, forwarded normalized, flagged if ambiguous."""
    match = TABLE.match(method, raw)
    assert match is not None
    assert (match.endpoint.name, match.path, match.ambiguous) == (endpoint, forwarded, ambiguous)


@pytest.mark.parametrize(("method", "raw"), [
    ("GET", "/api/v1/deals"), ("POST", "/api/v1/deals/5"), ("PATCH", "/api/v1/deals"),
    ("PATCH", "/api/v1/deals/5/notes"), ("POST", "/api/v1/dealsx"), ("POST", "/api/v2/deals"),
    ("PATCH", "/api/v1/deals/%2e%2e"), ("POST", "/"), ("POST", ""),
    ("POST", "/api/v1/d%65als%2Fx"), ("POST", "/api/v1/de%2Fals"),
])
def test_paths_that_reach_no_endpoint(method: str, raw: str) -> None:
    """Other methods, other shapes, and dot segments that climb out: pass-through."""
    assert TABLE.match(method, raw) is None


def test_case_sensitive_catalog_matches_only_the_exact_case() -> None:
    """case_sensitive_paths = true: /API/v1/Deals is another resource; variable segments keep their case."""
    catalog = parse_catalog("case_sensitive_paths = true\n" + DEFAULT_CATALOG_TOML)
    table = RouteTable(catalog.endpoints, case_sensitive=True)
    assert table.match("POST", "/API/v1/Deals") is None
    found = table.match("PATCH", "/api/v1/./deals/AbC")
    assert found is not None and found.path == "/api/v1/deals/AbC"


@pytest.mark.parametrize(("raw", "ops"), [
    ("/_ops", True), ("/_ops/mode", True), ("/./_ops/mode", True), ("/%5Fops/mode", True), ("/%5fOPS", True),
    ("//_ops", True), ("/x/../_ops/", True), ("/_ops%2Fmode", True), ("/%255Fops", True), ("\\_ops", True),
    ("/api", False), ("/_opsx", False), ("/x/_ops", False), ("/", False), ("", False),
])
def test_ops_in_any_spelling(raw: str, ops: bool) -> None:
    """/_ops is recognized however it is spelt, so the main listener never forwards it."""
    assert is_ops_path(raw) is ops


def test_normalization_helpers() -> None:
    """Unreserved escapes decoded, others upper-cased; dot segments and empty segments removed."""
    assert normalize_segments("/a/%7e%41%2f%3a/./b/../c//") == ["a", "~A%2F%3A", "c"]
    assert normalize_segments("/..") == []
    assert is_ambiguous(["a%2Fb"]) and is_ambiguous(["a\\b"]) and not is_ambiguous(["a%20b", "c"])
    assert loosest_reading("/a%252Fb%5Cc") == "/a/b/c"
    assert ascii_lower("ÀbC-İ") == "Àbc-İ"


# -- the safety property ----------------------------------------------------------------------------------

TOKENS = ["api", "API", "Api", "v1", "V1", "deals", "Deals", "import", "5", "x", "", ".", "..", "%2e", "%2E%2e",
          "%2F", "%2f", "%5C", "\\", "%25", "%252F", "%64eals", "de%61ls", "%00", "a%20b", "_ops", "deals;x", ";",
          "..;", "v1;jsessionid=1", "%3B", "deals%3Bx", "%23x"]


def loose_router(method: str, raw: str) -> str | None:
    """A reference router as loose as any: ``;`` parameters dropped (a servlet container), decodes everything (three
    times), \\ as /, a decoded # as a fragment, dot segments, any case."""
    text = "/".join(segment.partition(";")[0] for segment in raw.split("/"))
    for _ in range(3):
        text = unquote(text)
    text = "/".join(segment.partition(";")[0] for segment in text.partition("#")[0].split("/"))
    text = posixpath.normpath("/" + text.replace("\\", "/"))
    segments = [ascii_lower(s) for s in text.split("/") if s]
    for endpoint in CATALOG.endpoints:
        template = [s for s in endpoint.path.split("/") if s]
        if method in endpoint.methods and len(template) == len(segments) and all(
                t.startswith("{") or t == s for t, s in zip(template, segments, strict=True)):
            return endpoint.name
    return None


@settings(max_examples=2000, deadline=None)
@given(method=st.sampled_from(["POST", "PATCH", "PUT"]),
       pieces=st.lists(st.sampled_from(TOKENS), min_size=1, max_size=7), trailing=st.booleans())
def test_no_spelling_a_loose_router_routes_to_an_endpoint_escapes_validation(method: str, pieces: list[str],
                                                                              trailing: bool) -> None:
    """Whatever a maximally loose router would route to a validated endpoint, the proxy matches to that endpoint."""
    raw = "/" + "/".join(pieces) + ("/" if trailing else "")
    expected = loose_router(method, raw)
    match = TABLE.match(method, raw)
    if expected is not None:
        assert match is not None and match.endpoint.name == expected, raw
    if match is not None and not match.ambiguous:
        assert loose_router(method, match.path) == match.endpoint.name  # the forwarded path routes there too
