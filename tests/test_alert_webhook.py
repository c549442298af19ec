"""POST /_ops/alertmanager: actions by label, idempotence, and every malformed payload a clear 4xx."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from proxy.app.server import Running
from tests.support.alerts import AUTH, alert, payload, post_webhook
from tests.support.proxies import ProxyFactory, set_mode
from tests.support.servers import RedisServer
from tests.support.waiting import until

post = post_webhook


async def modes(http: aiohttp.ClientSession, run: Running) -> dict[str, Any]:
    async with http.get(f"{run.admin_url}/_ops/mode") as response:
        data: dict[str, Any] = await response.json()
        return data


async def test_downgrade_named_endpoint_once(proxy: Running, http: aiohttp.ClientSession) -> None:
    """downgrade with endpoint: that endpoint to warn; the same notification again changes nothing."""
    await set_mode(http, proxy, "*", "enforce")
    body = payload(alert({"alertname": "StageEnforceErrorSpike", "stage_action": "downgrade",
                          "endpoint": "update_deal"}))
    status, answer = await post(http, proxy, body)
    assert status == 200 and answer["downgraded"] == ["update_deal"]
    view = await modes(http, proxy)
    assert view["endpoints"]["update_deal"]["mode"] == "warn"
    assert view["endpoints"]["create_deal"]["mode"] == "enforce"
    status, answer = await post(http, proxy, body)
    assert status == 200 and answer["downgraded"] == []


async def test_downgrade_without_endpoint_hits_every_enforcing_one(proxy: Running,
                                                                    http: aiohttp.ClientSession) -> None:
    """downgrade without endpoint: all enforcing endpoints to warn; off stays off."""
    await set_mode(http, proxy, "create_deal", "enforce", 10)
    await set_mode(http, proxy, "import_deals", "enforce")
    status, answer = await post(http, proxy, payload(alert({"alertname": "Spike", "stage_action": "downgrade"})))
    assert status == 200 and sorted(answer["downgraded"]) == ["create_deal", "import_deals"]
    view = await modes(http, proxy)
    assert {name: r["mode"] for name, r in view["endpoints"].items()} == {
        "create_deal": "warn", "update_deal": "off", "import_deals": "warn"}


async def test_resolved_downgrade_reenables_nothing(proxy: Running, http: aiohttp.ClientSession) -> None:
    """A downgrade latches: its resolution leaves the endpoint in warn."""
    await set_mode(http, proxy, "create_deal", "enforce")
    labels = {"alertname": "Spike", "stage_action": "downgrade", "endpoint": "create_deal"}
    await post(http, proxy, payload(alert(labels)))
    status, answer = await post(http, proxy, payload(alert(labels, "resolved"), status="resolved"))
    assert status == 200 and answer["downgraded"] == []
    assert (await modes(http, proxy))["endpoints"]["create_deal"]["mode"] == "warn"


async def test_block_held_until_every_alert_resolves(proxy: Running, http: aiohttp.ClientSession) -> None:
    """Two block_enforce alerts hold the block; it lifts only when both resolved."""
    one = alert({"alertname": "Unknown", "stage_action": "block_enforce", "endpoint": "create_deal"}, fingerprint="a1")
    two = alert({"alertname": "Unknown", "stage_action": "block_enforce", "endpoint": "import_deals"},
                fingerprint="b2")
    status, answer = await post(http, proxy, payload(one, two))
    assert status == 200 and answer["enforce_blocked"] is True and answer["blocks_added"] == 2
    _, answer = await post(http, proxy, payload({**one, "status": "resolved"}))
    assert answer["enforce_blocked"] is True
    _, answer = await post(http, proxy, payload({**two, "status": "resolved"}, status="resolved"))
    assert answer["enforce_blocked"] is False
    async with http.get(f"{proxy.admin_url}/metrics") as response:
        text = await response.text()
    assert 'stage_enforce_blocked{endpoint="create_deal"} 0.0' in text
    assert 'stage_enforce_blocked{endpoint="import_deals"} 0.0' in text


async def test_forced_enforce_while_blocked_is_recorded(proxy: Running, http: aiohttp.ClientSession) -> None:
    """force=true goes through a block and history says it was forced."""
    await post(http, proxy, payload(alert({"alertname": "U", "stage_action": "block_enforce"}, fingerprint="f")))
    async with http.put(f"{proxy.admin_url}/_ops/mode", headers=AUTH,
                        json={"endpoint": "create_deal", "mode": "enforce", "reason": "hotfix", "force": True,
                              "actor": "bob"}) as response:
        assert response.status == 200
    async with http.get(f"{proxy.admin_url}/_ops/mode/history?limit=1") as response:
        entry = (await response.json())["entries"][0]
    assert (entry["action"], entry["actor"], entry["forced"], entry["source"]) == ("mode", "bob", True, "api")


async def test_unknown_and_unlabelled_alerts_are_ignored(proxy: Running, http: aiohttp.ClientSession) -> None:
    """Alerts without stage_action, with no labels at all, or naming an unknown endpoint change nothing (200)."""
    await set_mode(http, proxy, "*", "enforce")
    body = payload(alert({"alertname": "DiskFull"}), {"status": "firing"},
                   alert({"alertname": "Spike", "stage_action": "downgrade", "endpoint": "no_such_endpoint"}),
                   alert({"alertname": "X", "stage_action": "launch_missiles"}))
    status, answer = await post(http, proxy, body)
    assert status == 200
    assert answer["downgraded"] == [] and answer["ignored"] == 3
    assert answer["unknown_endpoints"] == ["no_such_endpoint"]
    assert {r["mode"] for r in (await modes(http, proxy))["endpoints"].values()} == {"enforce"}


async def test_ten_thousand_alerts(proxy: Running, http: aiohttp.ClientSession) -> None:
    """10 000 alerts in one payload are handled in one pass (deduplicated to one action per endpoint)."""
    await set_mode(http, proxy, "*", "enforce")
    alerts = [alert({"alertname": f"A{i}", "stage_action": "downgrade", "endpoint": "create_deal", "i": str(i)})
              for i in range(10_000)]
    status, answer = await post(http, proxy, payload(*alerts))
    assert status == 200 and answer["downgraded"] == ["create_deal"]
    async with http.get(f"{proxy.admin_url}/_ops/mode/history") as response:
        assert len([e for e in (await response.json())["entries"] if e["source"] == "alertmanager"]) == 1


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b"not json", "not JSON"), (b"[]", "JSON object"), (orjson.dumps(payload(version="3")), "version"),
     (orjson.dumps({"version": "4", "alerts": {}}), "'alerts' must be a list"),
     (orjson.dumps({**payload(), "alerts": ["nope"]}), "alerts[0] must be an object"),
     (orjson.dumps(payload({"status": "firing", "labels": {"a": 1}})), "labels"),
     (orjson.dumps(payload({"status": "pending", "labels": {}})), "status"),
     (orjson.dumps({**payload(), "groupKey": 5}), "groupKey")],
)
async def test_malformed_payloads_are_400(proxy: Running, http: aiohttp.ClientSession, body: bytes,
                                          fragment: str) -> None:
    """Each malformed notification is a 400 problem naming what is wrong."""
    status, problem = await post(http, proxy, body)
    assert status == 400 and fragment in problem["detail"]


@pytest.mark.parametrize(("headers", "status"), [({}, 401), ({"Authorization": "Bearer nope"}, 401)])
async def test_webhook_needs_the_token(proxy: Running, http: aiohttp.ClientSession, headers: dict[str, str],
                                       status: int) -> None:
    """No token or a wrong one: 401, nothing changes."""
    await set_mode(http, proxy, "*", "enforce")
    got, _ = await post(http, proxy, payload(alert({"alertname": "S", "stage_action": "downgrade"})), headers)
    assert got == status
    assert {r["mode"] for r in (await modes(http, proxy))["endpoints"].values()} == {"enforce"}


async def test_history_bad_limit(proxy: Running, http: aiohttp.ClientSession) -> None:
    """?limit must be 1-1000."""
    for limit in ("0", "abc", "5000"):
        async with http.get(f"{proxy.admin_url}/_ops/mode/history?limit={limit}") as response:
            assert response.status == 400


async def test_history_and_blocks_shared_through_redis(make_proxy: ProxyFactory, redis_server: RedisServer,
                                                       prefix: str, http: aiohttp.ClientSession) -> None:
    """With Redis, a block taken on one replica blocks the other, and both show the same history."""
    one = await make_proxy(redis_url=redis_server.url, redis_prefix=prefix)
    two = await make_proxy(redis_url=redis_server.url, redis_prefix=prefix)
    await set_mode(http, one, "create_deal", "warn")
    await post(http, one, payload(alert({"alertname": "U", "stage_action": "block_enforce"}, fingerprint="z")))

    async def blocked_on_two() -> bool:
        return bool((await modes(http, two))["enforce_blocked"])

    await until(blocked_on_two, what="the block to reach the second replica")
    async with http.put(f"{two.admin_url}/_ops/mode", headers=AUTH,
                        json={"endpoint": "create_deal", "mode": "enforce", "reason": "x"}) as response:
        assert response.status == 409
    async with http.get(f"{one.admin_url}/_ops/mode/history") as a, http.get(f"{two.admin_url}/_ops/mode/history") as b:
        assert (await a.json()) == (await b.json())
        assert [e["action"] for e in (await a.json())["entries"]][:2] == ["block_enforce", "mode"]
