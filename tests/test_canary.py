"""Canary bucketing: documented vectors, uniformity, stickiness and monotonicity."""

from __future__ import annotations

import re
import uuid

import pytest

from proxy.catalog.canary import bucket, is_enforced
from proxy.dataplane.requestid import accept_request_id
from tests.support.proxies import REPO


def doc_vectors() -> list[tuple[str, float]]:
    text = (REPO / "docs" / "canary.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([^`]*)`(?: \(empty string\))? \| ([0-9.]+) \|$", text, flags=re.M)
    return [(rid, float(value)) for rid, value in rows]


def test_docs_have_vectors() -> None:
    """docs/canary.md lists the test vectors this suite checks."""
    assert len(doc_vectors()) >= 8


@pytest.mark.parametrize(("request_id", "expected"), doc_vectors())
def test_documented_vectors(request_id: str, expected: float) -> None:
    """The implementation reproduces every vector published in docs/canary.md."""
    assert bucket(request_id) == expected


def test_uniform_over_the_range() -> None:
    """Over 20 000 random IDs each decile holds 10 % ± 1 %."""
    ids = [uuid.uuid4().hex for _ in range(20_000)]
    deciles = [0] * 10
    for rid in ids:
        deciles[int(bucket(rid) // 10)] += 1
    assert all(1800 <= count <= 2200 for count in deciles), deciles


def test_monotonic_when_raising_percent() -> None:
    """Every ID enforced at 10 % is still enforced at 50 % and at 100 %."""
    ids = [uuid.uuid4().hex for _ in range(5000)]
    at_10 = {rid for rid in ids if is_enforced(rid, 10)}
    at_50 = {rid for rid in ids if is_enforced(rid, 50)}
    assert at_10 <= at_50
    assert all(is_enforced(rid, 100) for rid in ids)
    assert not any(is_enforced(rid, 0) for rid in ids)


def test_two_decimal_boundaries() -> None:
    """percent=22.5 enforces bucket 22.49 but not 22.50 (strictly below)."""
    assert bucket("a") == 22.5
    assert not is_enforced("a", 22.5)
    assert is_enforced("a", 22.51)


@pytest.mark.parametrize(("raw", "accepted"), [("abc-123", True), ("", False), ("x" * 128, True),
                                               ("x" * 129, False), ("é", False), ("a b", False), (None, False)])
def test_request_id_acceptance(raw: str | None, accepted: bool) -> None:
    """Only 1-128 visible ASCII characters are used as a request ID."""
    assert (accept_request_id(raw) is not None) == accepted
