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
    assert [(e.name, e.methods, e.path, e.field_path, e.required) for e in catalog.endpoints] == [
        ("create_deal", ("POST",), "/api/v1/deals", ("stage",), True),
        ("update_deal", ("PATCH", "PUT"), "/api/v1/deals/{id}", ("stage",), False),
        ("import_deals", ("POST",), "/api/v1/deals/import", ("deals", "*", "stage"), True),
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
     (('method = ["PATCH", "PUT"]', 'method = ["PATCH", "FETCH"]'), "endpoint 'update_deal': method"),
         (('method = ["PATCH", "PUT"]', 'method = ["PATCH", "patch"]'), "without repeats"),
         (('method = ["PATCH", "PUT"]', 'method = []'), "endpoint 'update_deal': method"),
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


# --- comparing catalogs: what a reload changes, and what it may not change (proxy/catalog/compare.py) ----------

def test_catalog_version_is_a_short_stable_hash() -> None:
    from proxy.catalog.compare import catalog_version

    version = catalog_version(parse_catalog(DEFAULT_CATALOG_TOML))
    assert len(version) == 12 and int(version, 16) >= 0
    # The content, not the file: comments, spacing, key order and quoting do not change it.
    respelled = ("# a comment\n" + DEFAULT_CATALOG_TOML.replace('won = "closed_won"', "'won'   =   'closed_won'")
                 .replace('lost = "closed_lost"\n', "")
                 .replace("[stages.aliases]", '[stages.aliases]\nlost = "closed_lost"'))
    assert catalog_version(parse_catalog(respelled)) == version
    assert catalog_version(parse_catalog(DEFAULT_CATALOG_TOML.replace('won = "closed_won"', 'won = "closed_lost"'))) \
        != version
    import hashlib

    import orjson
    expected = hashlib.sha256(orjson.dumps(default_catalog().as_json(), option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert version == expected[:12]


def test_catalog_from_json_round_trips() -> None:
    """What GET /_ops/catalog serves is a catalog again, checked by the same rules, with the same version."""
    from proxy.catalog.compare import catalog_version
    from proxy.catalog.stages import catalog_from_json

    catalog = parse_catalog(DEFAULT_CATALOG_TOML)
    again = catalog_from_json(catalog.as_json())
    assert again == catalog and catalog_version(again) == catalog_version(catalog)
    broken = {**catalog.as_json(), "aliases": {"won": "victory"}}
    with pytest.raises(CatalogError, match="'won' points at 'victory'"):
        catalog_from_json(broken)
    with pytest.raises(CatalogError):
        catalog_from_json([1, 2])


def test_compare_names_every_kind_of_change() -> None:
    from proxy.catalog.compare import compare

    old = default_catalog()
    assert compare(old, old).empty and compare(old, old).as_json()["case_sensitive_paths"] is None
    new = parse_catalog(DEFAULT_CATALOG_TOML
                        .replace('won = "closed_won"', 'signed = "closed_won"')
                        .replace('lost = "closed_lost"', 'lost = "lead"')
                        .replace('"closed_lost"]', '"closed_lost", "on_hold"]')
                        .replace('path = "/api/v1/deals/import"', 'path = "/api/v2/deals/import"')
                        .replace('default_mode = "off"', 'default_mode = "off"\ncase_sensitive_paths = true'))
    changes = compare(old, new)
    assert not changes.empty
    assert changes.as_json() == {
        "aliases_added": {"signed": "closed_won"}, "aliases_removed": {"won": "closed_won"},
        "aliases_retargeted": {"lost": {"from": "closed_lost", "to": "lead"}},
        "canonical_added": ["on_hold"], "canonical_removed": [], "endpoints_changed": ["import_deals"],
        "case_sensitive_paths": [False, True]}
    back = compare(new, old)
    assert back.canonical_removed == ["on_hold"] and back.canonical_added == []
    assert back.case_sensitive_paths == (True, False)
    for only in (compare(old, parse_catalog(DEFAULT_CATALOG_TOML.replace('won = "closed_won"', ''))),
                 compare(old, parse_catalog(DEFAULT_CATALOG_TOML.replace('"closed_lost"]', '"closed_lost", "x"]'))),
                 compare(old, parse_catalog(DEFAULT_CATALOG_TOML.replace('required = false', 'required = true')))):
        assert not only.empty  # each kind alone is a change


def test_reload_refuses_endpoint_set_and_default_mode_changes() -> None:
    from proxy.catalog.compare import reload_problems

    old = default_catalog()
    assert reload_problems(old, old) == []
    assert reload_problems(old, parse_catalog(DEFAULT_CATALOG_TOML.replace('won = "closed_won"', ''))) == []
    renamed = parse_catalog(DEFAULT_CATALOG_TOML.replace('name = "create_deal"', 'name = "new_deal"'))
    assert reload_problems(old, renamed) == [
        "endpoint(s) ['create_deal'] removed or renamed: that takes a restart (modes, metrics and history are "
        "per endpoint)",
        "endpoint(s) ['new_deal'] added: that takes a restart (modes, metrics and history are per endpoint)"]
    warn = parse_catalog(DEFAULT_CATALOG_TOML.replace('default_mode = "off"', 'default_mode = "warn"'))
    assert reload_problems(old, warn) == [
        "default_mode changed from 'off' to 'warn': that takes a restart (it decides the mode of every endpoint "
        "without a stored one)"]


def test_reload_outcome_as_json() -> None:
    from proxy.catalog.compare import ReloadOutcome, compare

    old = default_catalog()
    refused = ReloadOutcome(False, "aaa", "aaa", None, ("bad", "worse"))
    assert refused.as_json() == {"result": "refused", "version": "aaa", "problems": ["bad", "worse"]}
    same = ReloadOutcome(True, "aaa", "aaa", compare(old, old))
    assert same.as_json()["changed"] is False and same.as_json()["previous_version"] == "aaa"
    moved = ReloadOutcome(True, "bbb", "aaa", None)
    assert moved.as_json() == {"result": "ok", "version": "bbb", "previous_version": "aaa", "changed": True,
                               "changes": None, "warnings": []}
    warned = ReloadOutcome(True, "bbb", "aaa", None, warnings=("careful",))
    assert warned.as_json()["warnings"] == ["careful"]


def test_check_catalog_collects_every_problem() -> None:
    from proxy.catalog.stages import check_catalog

    catalog, problems = check_catalog(DEFAULT_CATALOG_TOML)
    assert catalog is not None and problems == []
    bad = (DEFAULT_CATALOG_TOML.replace('won = "closed_won"', 'won = "victory"')
           .replace('default_mode = "off"', 'default_mode = "loud"\nextra = 1')
           .replace('method = ["PATCH", "PUT"]', 'method = "TRACE"'))
    catalog, problems = check_catalog(bad)
    assert catalog is None and len(problems) == 4, problems
    with pytest.raises(CatalogError) as error:
        parse_catalog(bad)
    assert str(error.value).endswith("(and 3 more problem(s))") and error.value.problems == tuple(problems)


def test_tightening_names_what_enforcing_endpoints_will_reject() -> None:
    from proxy.catalog.compare import compare, tightening

    old = default_catalog()
    new = parse_catalog(DEFAULT_CATALOG_TOML.replace('won = "closed_won"', '')
                        .replace('lost = "closed_lost"', 'lost = "lead"')
                        .replace('path = "/api/v1/deals/import"', 'path = "/api/v2/deals/import"'))
    changes = compare(old, new)
    assert tightening(changes, []) == []  # nobody enforces: nothing gets stricter for a client
    warnings = tightening(changes, ["create_deal"])
    assert warnings == ["aliases removed ['won']: the values they normalized are rejected from now on "
                        "(in enforce now: create_deal)",
                        "aliases retargeted ['lost']: their values are now rewritten to another stage "
                        "(in enforce now: create_deal)"]
    assert tightening(changes, ["import_deals"])[-1] == (
        "endpoints in enforce changed ['import_deals']: they now validate requests or fields that were never "
        "measured in warn")
    fewer = parse_catalog(DEFAULT_CATALOG_TOML.replace('"closed_lost"]', '"closed_lost", "x"]'))
    assert tightening(compare(fewer, old), ["create_deal"]) == [
        "canonical stages removed ['x']: rejected from now on (in enforce now: create_deal)"]
    assert tightening(compare(old, fewer), ["create_deal"]) == []  # more stages accepted: not stricter


@pytest.mark.parametrize(("change", "message"), [
    (('default_mode = "off"', 'default_mode = "off"\ncase_sensitive_paths = "yes"'),
     "case_sensitive_paths must be true or false"),
    (('canonical = ["lead", "qualified", "proposal", "negotiation", "closed_won", "closed_lost"]', 'canonical = []'),
     "stages.canonical must be a non-empty list of non-empty strings"),
])
def test_one_problem_is_named_alone(change: tuple[str, str], message: str) -> None:
    """A single problem is the whole message: no '(and N more)'."""
    from proxy.catalog.stages import check_catalog

    text = DEFAULT_CATALOG_TOML.replace(*change)
    assert check_catalog(text) == (None, [message])
    with pytest.raises(CatalogError) as error:
        parse_catalog(text)
    assert str(error.value) == message


def test_tightening_lists_every_enforcing_endpoint() -> None:
    from proxy.catalog.compare import compare, tightening

    changes = compare(default_catalog(), parse_catalog(DEFAULT_CATALOG_TOML.replace('won = "closed_won"', '')))
    assert tightening(changes, ["create_deal", "update_deal"]) == [
        "aliases removed ['won']: the values they normalized are rejected from now on "
        "(in enforce now: create_deal, update_deal)"]


def test_catalog_as_json() -> None:
    """The shape GET /_ops/catalog and stagectl catalog show print."""
    assert default_catalog().as_json() == {
        "default_mode": "off",
        "canonical": ["lead", "qualified", "proposal", "negotiation", "closed_won", "closed_lost"],
        "aliases": {"won": "closed_won", "lost": "closed_lost", "prospect": "lead", "negotiating": "negotiation"},
        "case_sensitive_paths": False,
        "endpoints": [
            {"name": "create_deal", "methods": ["POST"], "path": "/api/v1/deals", "field": "stage", "required": True},
            {"name": "update_deal", "methods": ["PATCH", "PUT"], "path": "/api/v1/deals/{id}", "field": "stage",
             "required": False},
            {"name": "import_deals", "methods": ["POST"], "path": "/api/v1/deals/import", "field": "deals[*].stage",
             "required": True}]}


def test_the_catalog_compose_mounts_is_the_built_in_one() -> None:
    """deploy/catalog/catalog.toml (compose's STAGE_CONFIG) starts as the built-in catalog: the same version."""
    from pathlib import Path

    from proxy.catalog.compare import catalog_version

    mounted = Path(__file__).resolve().parent.parent / "deploy" / "catalog" / "catalog.toml"
    assert catalog_version(parse_catalog(mounted.read_text())) == catalog_version(default_catalog())
