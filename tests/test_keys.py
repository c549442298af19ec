"""Keys under case folding (proxy.catalog.keys): what some decoder reads as the same member name."""

from __future__ import annotations

import sys

import pytest

from proxy.catalog.keys import LOOKALIKES, fold_key, lookalike_bytes, lookalikes_of
from proxy.dataplane.jsonscan import spelling, spelling_count


def test_lookalikes_are_every_non_ascii_character_folding_to_ascii_letters() -> None:
    """All of Unicode checked: the table holds exactly the characters whose folding is made of ASCII letters."""
    found = {}
    for point in range(0x80, sys.maxunicode + 1):
        char = chr(point)
        folded = fold_key(char)
        if folded.isascii() and folded.isalpha():
            found[char] = folded
    assert found == LOOKALIKES


@pytest.mark.parametrize(("a", "b"), [
    ("stage", "Stage"), ("stage", "STAGE"), ("stage", "ſtage"), ("stage", "ﬆage"), ("stage", "ſTAGE"),
    ("kind", "\u212aind"), ("id", "İd"), ("id", "ıd"), ("class", "claß"), ("straße", "STRASSE"),
    ("σ", "ς"), ("étape", "ÉTAPE"),
])
def test_keys_that_fold_alike(a: str, b: str) -> None:
    """Go's simple folding, JavaScript's toUpperCase, Java's and .NET's dotted/dotless i: one key to someone."""
    assert fold_key(a) == fold_key(b)


@pytest.mark.parametrize(("a", "b"), [("stage", "stages"), ("stage", "stage "), ("stage", "stąge"),
                                      ("deals", "dea1s"), ("stage", "st\u200bage")])
def test_keys_that_stay_apart(a: str, b: str) -> None:
    """Other characters are other keys: no normalization beyond case folding."""
    assert fold_key(a) != fold_key(b)


def test_lookalikes_of_a_key() -> None:
    """Only lookalikes of the key's own letters (and letter pairs) count: ``stage`` has s and st, not k or i."""
    assert {char for char, _ in lookalikes_of("stage")} == {"ſ", "ﬅ", "ﬆ"}
    assert set(lookalike_bytes("stage")) == {"ſ".encode(), "ﬅ".encode(), "ﬆ".encode()}
    assert lookalikes_of("deal") == ()


@pytest.mark.parametrize("token", ['"ſtage"', '"\\u017ftage"', '"\\u017Ftage"', '"ﬆage"', '"\\ufb06age"',
                                   '"STAGE"', '"St\\u0041ge"', '"ſ\\u0054age"'])
def test_any_case_spelling_counts_every_folded_spelling(token: str) -> None:
    """The byte-level screen counts each way JSON can spell a key that folds to ``stage``."""
    assert spelling_count(token.encode(), "stage", any_case=True) == 1
    assert spelling_count(token.encode(), "stage") == 0


def test_exact_spelling_has_no_lookalikes() -> None:
    """The exact spelling (what the rewrite splices) still matches only ``stage`` and its \\u escapes."""
    pattern = spelling("stage")
    assert pattern.fullmatch(b'"st\\u0061ge"') and not pattern.fullmatch('"ſtage"'.encode())
