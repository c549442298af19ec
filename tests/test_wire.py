"""The admin API's wire model (proxy/wire): what the proxy sends is what the OpenAPI document describes, and what
stagectl reads back is what was sent; answers that are not one are refused with one line."""

from __future__ import annotations

from typing import Any

import aiohttp
import jsonschema
import pytest
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from proxy.app.server import Running
from proxy.wire import modes as wire
from tests.support.proxies import set_mode
from tests.test_openapi import document

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
