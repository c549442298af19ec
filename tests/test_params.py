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
