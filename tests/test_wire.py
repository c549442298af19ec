"""The admin API's wire model (proxy/wire): what the proxy sends is what the OpenAPI document describes, and what
stagectl reads back is what was sent; answers that are not one are refused with one line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import jsonschema
import pytest
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from proxy.app.server import Running
from proxy.catalog.compare import ReloadOutcome, compare
from proxy.catalog.stages import DEFAULT_CATALOG_TOML, parse_catalog
from proxy.wire import catalogs as wire_catalogs
from proxy.wire import exemptions as wire_exemptions
from proxy.wire import leases as wire_leases
from proxy.wire import modes as wire
from tests.support.alerts import block_enforce
from tests.support.proxies import TOKEN, ProxyFactory, set_mode
from tests.test_openapi import document

CATALOG = parse_catalog(DEFAULT_CATALOG_TOML)
NEWER = parse_catalog(DEFAULT_CATALOG_TOML.replace('won = "closed_won"', 'won = "closed_won"\nclosing = "closed_won"')
                      .replace('lost = "closed_lost"', 'lost = "lead"'))
EXEMPTION = wire_exemptions.Exemption("ex-0123456789ab", "*", None, "203.0.113.0/24", "2026-12-19T00:00:00.000+00:00",
                                     "partner fix due", "2026-12-05T10:00:00.000+00:00", "ana")
HOLD = wire.RolloutHold("stagectl rollout (ci), pid 1 on h", "2026-12-05T10:00:00Z", "2026-12-05T10:03:00Z", 2, 50.0)

STATE = wire.ModeState(
    "redis", True,
    {"create_deal": wire.EndpointMode("enforce", 10.0, "2026-12-05T10:00:00.000+00:00", "stagectl rollout (ci)",
                                      "canary", (wire.BlockRef("Spike", "f1", "2026-12-05T10:01:00Z", False),),
                                      wire.RolloutHold("stagectl rollout (ci), pid 1 on h", "2026-12-05T10:00:00Z",
                                                       "2026-12-05T10:03:00Z", 1, 10.0))},
    (wire.PendingWrite("create_deal", "warn", 0.0, "2026-12-05T10:02:00Z", "op"),), persisted=False)


def validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator for ``components.schemas[name]`` of docs/openapi.yaml (its $refs resolved in the document)."""
    doc: dict[str, Any] = dict(document())
    registry: Registry[Any] = Registry().with_resource("urn:openapi", DRAFT202012.create_resource(doc))
    schema = {"$ref": f"urn:openapi#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


@pytest.mark.parametrize(("shape", "value", "schema"), [
    (wire.ModeState, STATE, "ModesAfterChange"),
    (wire.ModeState, wire.ModeState("memory", False, {"update_deal": wire.EndpointMode("off", 0.0)}), "Modes"),
    (wire.History, wire.History((wire.HistoryItem("2026-12-05T10:00:00Z", "mode", "alice", "api", "go",
                                                  "create_deal", "warn", "enforce", 10.0),)), "History"),
    (wire.Blocks, wire.Blocks(True, (wire.BlockItem("f1", "Spike", None, "2026-12-05T10:00:00Z", "g"),)), "Blocks"),
    (wire.BlockCleared, wire.BlockCleared(wire.BlockItem("f1", "Spike", "create_deal", "2026-12-05T10:00:00Z", "g"),
                                          False), "BlockCleared"),
    (wire_leases.LeaseTaken, wire_leases.LeaseTaken("create_deal", wire_leases.Lease(HOLD, 0.0),
                                                    wire_leases.Lease(HOLD, 1234.5)), "LeaseTaken"),
    (wire_leases.LeaseTaken, wire_leases.LeaseTaken("create_deal", wire_leases.Lease(HOLD)), "LeaseTaken"),
    (wire_leases.LeaseReleased, wire_leases.LeaseReleased("create_deal", True), "LeaseReleased"),
    (wire_exemptions.Exemption, EXEMPTION, "Exemption"),
    (wire_exemptions.Exemptions, wire_exemptions.Exemptions((EXEMPTION, wire_exemptions.Exemption(
        "ex-2", "create_deal", "partner-a", None, "2026-12-06T00:00:00.000+00:00", "r", "t", "api"))), "Exemptions"),
    (wire_exemptions.ExemptionRemoved, wire_exemptions.ExemptionRemoved(EXEMPTION), "ExemptionRemoved"),
    (wire_catalogs.CatalogServed, wire_catalogs.CatalogServed("0123456789ab", "/etc/stagegate/catalog.toml", CATALOG),
     "Catalog"),
    (wire_catalogs.CatalogServed, wire_catalogs.CatalogServed("0123456789ab", None, CATALOG), "Catalog"),
    (wire_catalogs.Reloaded, wire_catalogs.Reloaded.of(ReloadOutcome(True, "bbbbbbbbbbbb", "aaaaaaaaaaaa",
                                                                     compare(CATALOG, NEWER), (), ("stricter",))),
     "ReloadOutcome"),
    (wire_catalogs.Reloaded, wire_catalogs.Reloaded("aaaaaaaaaaaa", "aaaaaaaaaaaa"), "ReloadOutcome"),
    (wire_catalogs.Changes, wire_catalogs.Changes({"a": "b"}, {}, {"c": ("x", "y")}, ("new",), (), ("e",),
                                                  (False, True), {"aliases_added": 3}), "CatalogChanges"),
])
def test_the_wire_model_is_the_documented_shape(shape: Any, value: Any, schema: str) -> None:
    """to_json validates against the OpenAPI schema of the same answer; from_json reads it back unchanged."""
    sent = value.to_json()
    validator(schema).validate(sent)
    assert shape.from_json(sent) == value


@pytest.mark.parametrize(("data", "fragment"), [
    ([], "not a JSON object"),
    ({"endpoints": {}}, "no 'source' and 'endpoints'"),
    ({"source": "redis", "endpoints": {"x": {"mode": "loud", "percent": 0}}}, "mode 'loud'"),
    ({"source": "redis", "endpoints": {"x": {"mode": "warn", "percent": "ten"}}}, "'percent' is not a number"),
    ({"source": "redis", "endpoints": {"x": {"mode": "warn", "percent": 0, "blocked_by": 3}}}, "'blocked_by'"),
])
def test_what_is_not_an_answer_is_refused_with_one_line(data: object, fragment: str) -> None:
    with pytest.raises(wire.WireError, match=fragment.replace("(", r"\(")):
        wire.ModeState.from_json(data)


async def test_the_proxy_answers_in_the_wire_model(proxy: Running, http: aiohttp.ClientSession) -> None:
    """A live proxy's GET /_ops/mode, history and blocks read into the model and serialize back identically."""
    await set_mode(http, proxy, "create_deal", "enforce", 25)
    for path, shape in (("/_ops/mode", wire.ModeState), ("/_ops/mode/history", wire.History),
                        ("/_ops/blocks", wire.Blocks)):
        async with http.get(proxy.admin_url + path) as response:
            body = await response.json()
        assert shape.from_json(body).to_json() == body, path



@pytest.mark.parametrize(("shape", "data", "fragment"), [
    (wire_leases.LeaseTaken, {"endpoint": "e", "rollout": None}, "a lease is not a JSON object"),
    (wire_leases.LeaseReleased, {"endpoint": "e", "released": "yes"}, "'released' is not true or false"),
    (wire_catalogs.CatalogServed, {"version": "v", "canonical": "x"}, "canonical"),
    (wire_catalogs.Reloaded, {"result": "refused", "version": "v"}, "'result' is not 'ok'"),
    (wire_catalogs.Changes, {"aliases_added": {"a": 1}}, "'aliases_added' is not an object of strings"),
    (wire_catalogs.Changes, {"case_sensitive_paths": [True]}, "not [before, after]"),
    (wire.BlockCleared, {"cleared": {"fingerprint": "f"}}, "'alertname' is not a string"),
    (wire_exemptions.Exemption, {**EXEMPTION.to_json(), "consumer": "p"}, "neither or both"),
    (wire_exemptions.Exemptions, {"exemptions": [{"id": 1, "consumer": "p"}]}, "'id' is not a string"),
])
def test_the_other_answers_refuse_what_is_not_one(shape: Any, data: object, fragment: str) -> None:
    with pytest.raises(wire.WireError, match=fragment.replace("[", r"\[").replace("(", r"\(")):
        shape.from_json(data)


async def test_the_lease_catalog_reload_and_clear_answers_are_the_model(
        make_proxy: ProxyFactory, http: aiohttp.ClientSession, tmp_path: Any) -> None:
    """A live proxy's lease, release, catalog, reload and block-clear answers read into the model and serialize
    back identically."""
    config = tmp_path / "catalog.toml"
    config.write_text(DEFAULT_CATALOG_TOML)
    run: Running = await make_proxy(config_path=config, catalog=CATALOG)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    lease = {"lease": "l1", "holder": "stagectl rollout (ci)", "ttl_s": 60, "step": 1, "percent": 10.0,
             "credited_s": 5.0}
    answers: list[tuple[Any, Any]] = []
    async with http.put(f"{run.admin_url}/_ops/rollout/create_deal", json=lease, headers=auth) as response:
        answers.append((wire_leases.LeaseTaken, await response.json()))
    async with http.delete(f"{run.admin_url}/_ops/rollout/create_deal", json={"lease": "l1"},
                           headers=auth) as response:
        answers.append((wire_leases.LeaseReleased, await response.json()))
    async with http.get(f"{run.admin_url}/_ops/catalog") as response:
        answers.append((wire_catalogs.CatalogServed, await response.json()))
    async with http.post(f"{run.admin_url}/_ops/reload", json={}, headers=auth) as response:
        answers.append((wire_catalogs.Reloaded, await response.json()))
    await block_enforce(http, run, "create_deal")
    async with http.delete(f"{run.admin_url}/_ops/blocks/fp-StageUnknownHighInWarn", json={"reason": "lost"},
                           headers=auth) as response:
        answers.append((wire.BlockCleared, await response.json()))
    until = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    exemption = {"client_cidr": "192.0.2.0/24", "endpoint": "*", "until": until, "reason": "r"}
    async with http.put(f"{run.admin_url}/_ops/exemptions", headers=auth, json=exemption) as response:
        answers.append((wire_exemptions.Exemption, await response.json()))
    async with http.get(f"{run.admin_url}/_ops/exemptions") as response:
        answers.append((wire_exemptions.Exemptions, await response.json()))
    async with http.delete(f"{run.admin_url}/_ops/exemptions/{answers[-2][1]['id']}", json={"reason": "done"},
                           headers=auth) as response:
        answers.append((wire_exemptions.ExemptionRemoved, await response.json()))
    for shape, body in answers:
        assert shape.from_json(body).to_json() == body, shape
    assert wire_leases.LeaseReleased.from_json(answers[1][1]).released is True
    assert wire_catalogs.CatalogServed.from_json(answers[2][1]).catalog == CATALOG
