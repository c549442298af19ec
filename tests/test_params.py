"""Query and form parameter names read as loosely as frameworks read them (proxy.catalog.params)."""

from __future__ import annotations

import pytest

from proxy.catalog.params import method_overrides, names_key


@pytest.mark.parametrize(("text", "methods"), [
    ("_method=PATCH", ("PATCH",)), ("_method=patch", ("PATCH",)), ("a=1&_method=PUT", ("PUT",)),
    ("a=1;_method=PUT", ("PUT",)), ("%5Fmethod=PATCH", ("PATCH",)), ("%5fmethod=PATCH", ("PATCH",)),
    (".method=PATCH", ("PATCH",)), ("+_method=PATCH", ("PATCH",)), ("[method=PATCH", ("PATCH",)),
    ("_method[]=PATCH", ("PATCH",)), ("_METHOD=+patch+", ("PATCH",)), ("_method=PATCH&_method=PUT", ("PATCH", "PUT")),
    ("method=PATCH", ()), ("x_method=PATCH", ()), ("a=_method", ()), ("", ()), ("&&==", ()),
])
def test_method_overrides(text: str, methods: tuple[str, ...]) -> None:
    """``_method`` as Express, Spring, Symfony (PHP's mangling: ``.method``) and Rack read it."""
    assert method_overrides(text) == methods


@pytest.mark.parametrize(("text", "key", "found"), [
    ("stage=x", "stage", True), ("Stage=x", "stage", True), ("%73tage=x", "stage", True),
    ("stage[]=x", "stage", True), ("stage.x=1", "stage", True), ("a=1&ſtage=x", "stage", True),
    ("deals[0][stage]=x", "deals", True), ("deals[][stage]=x", "deals", True), ("deals.0.stage=x", "deals", True),
    (" stage=x", "stage", True), ("stages=x", "stage", False), ("mystage=x", "stage", False),
    ("x=stage", "stage", False), ("", "stage", False), ("%zz=1", "stage", False),
])
def test_names_key(text: str, key: str, found: bool) -> None:
    """The field's top-level name in a query, however a framework nests or mangles it."""
    assert names_key(text, key) is found


@pytest.mark.parametrize(("raw", "found"), [
    (b'{"_method":"patch"}', ("PATCH",)), (b'{"\\u005fmethod":"PUT"}', ("PUT",)), (b'{"_METHOD":"put"}', ("PUT",)),
    (b'{"_m\\u0065thod":"patch","x":1}', ("PATCH",)), (b'{"stage":"lead"}', ()), (b'{"x":"_method"}', ()),
    (b'[{"_method":"PATCH"}]', ()), (b'{"_method":', None),
])
def test_a_json_body_names_its_method_override_in_any_spelling(raw: bytes, found: tuple[str, ...] | None) -> None:
    """A JSON body is parsed for ``_method`` only when some spelling of the key is in its bytes (escaped or in
    another case still is); one without it is not parsed at all, and a broken one that has it cannot be read."""
    from proxy.dataplane.routing import body_overrides

    assert body_overrides("application/json", raw, False) == found
    assert body_overrides("application/json", b"not json", False) == ()  # no key can be in it: not parsed
