"""The catalog: loading, validation errors that name the entry, folding, classification."""

from __future__ import annotations

import pytest

from proxy.catalog.stages import DEFAULT_CATALOG_TOML, CatalogError, default_catalog, fold, parse_catalog, parse_field


@pytest.mark.parametrize(
    ("raw", "folded"),
    [("Closed Won", "closed_won"), ("CLOSED-WON", "closed_won"), (" closed__won ", "closed_won"),
     ("closed.won", "closed_won"), ("\tLead\n", "lead"), ("ＬＥＡＤ", "lead"), ("--won--", "won"), ("", "")],
)
def test_fold(raw: str, folded: str) -> None:
    """Folding is NFKC + trim + casefold + separator runs to one underscore, edges dropped."""
    assert fold(raw) == folded


@pytest.mark.parametrize(
    ("value", "result", "normalized"),
    [("lead", "canonical", "lead"), ("closed_won", "canonical", "closed_won"),
     ("Closed Won", "alias", "closed_won"), ("WON", "alias", "closed_won"), (" prospect ", "alias", "lead"),
     ("Negotiating", "alias", "negotiation"), ("LEAD", "alias", "lead"), ("maybe", "unknown", None),
     ("", "unknown", None), (5, "invalid", None), (None, "invalid", None), (True, "invalid", None),
     ({"a": 1}, "invalid", None), (["lead"], "invalid", None)],
)
def test_classify(value: object, result: str, normalized: str | None) -> None:
    """Each value gets the result docs/catalog.md defines and, for aliases, its canonical stage."""
    assert default_catalog().classify(value) == (result, normalized)


def test_default_catalog_matches_design() -> None:
    """The built-in catalog has the six stages, four aliases and three endpoints of docs/catalog.md."""
    catalog = default_catalog()
    assert catalog.canonical == ("lead", "qualified", "proposal", "negotiation", "closed_won", "closed_lost")
    assert dict(catalog.aliases) == {"won": "closed_won", "lost": "closed_lost", "prospect": "lead",
                                     "negotiating": "negotiation"}
    assert [(e.name, e.method, e.path, e.field_path, e.required) for e in catalog.endpoints] == [
        ("create_deal", "POST", "/api/v1/deals", ("stage",), True),
        ("update_deal", "PATCH", "/api/v1/deals/{id}", ("stage",), False),
        ("import_deals", "POST", "/api/v1/deals/import", ("deals", "*", "stage"), True),
    ]
    assert catalog.default_mode == "off"


def test_alias_to_unknown_stage_names_the_line() -> None:
    """An alias pointing at a non-canonical stage is an error naming the alias and its line."""
    text = DEFAULT_CATALOG_TOML.replace('prospect = "lead"', 'prospect = "leed"')
    with pytest.raises(CatalogError, match=r"alias 'prospect' points at 'leed'.*\(line 9\)"):
        parse_catalog(text)


def test_colliding_folded_keys_are_rejected() -> None:
    """Two aliases folding to the same key are an error naming both sides."""
    text = DEFAULT_CATALOG_TOML.replace('won = "closed_won"', 'won = "closed_won"\n"W-O-N" = "closed_lost"')
    parse_catalog(text)  # w_o_n is a different key: fine
    with pytest.raises(CatalogError, match=r"alias 'WON' folds to 'won', colliding with alias 'won' \(line 8\)"):
        parse_catalog(text.replace('"W-O-N"', '"WON"'))


def test_alias_colliding_with_canonical_is_rejected() -> None:
    """An alias that folds onto a canonical stage is ambiguous, hence an error."""
    text = DEFAULT_CATALOG_TOML.replace('won = "closed_won"', '"Lead" = "closed_won"')
    with pytest.raises(CatalogError, match="colliding with canonical stage 'lead'"):
        parse_catalog(text)


@pytest.mark.parametrize(
    ("change", "message"),
    [(("default_mode = \"off\"", "default_mode = \"loud\""), "default_mode must be one of"),
     (('method = "PATCH"', 'method = "FETCH"'), "endpoint 'update_deal': method"),
     (('path = "/api/v1/deals/import"', 'path = "/_ops/import"'), "endpoint 'import_deals': path"),
     (('field = "deals[*].stage"', 'field = "deals[*]"'), "must end in a name"),
     (('field = "deals[*].stage"', 'field = "deals..stage"'), "bad segment"),
     (("required = false", 'required = "no"'), "required must be true or false"),
     (('name = "update_deal"', 'name = "create_deal"'), "endpoint names must be unique"),
     (("[stages]", "[stagez]"), "unknown top-level key"),
     (('canonical = ["lead"', 'canonical = [1, "lead"'), "stages.canonical must be"),
     (("default_mode", "default_mode = = "), "not valid TOML")],
)
def test_bad_catalogs(change: tuple[str, str], message: str) -> None:
    """Every malformed catalog is refused with a message naming the entry."""
    with pytest.raises(CatalogError, match=message.replace("[", r"\[").replace("*", r"\*")):
        parse_catalog(DEFAULT_CATALOG_TOML.replace(*change, 1))


def test_parse_field() -> None:
    """Dotted paths with [*] split into components."""
    assert parse_field("a.b[*].c") == ("a", "b", "*", "c")
    assert parse_field("stage") == ("stage",)
