"""Downgrades never wait for Redis: two replicas on a real redis-server that is killed and started again.

During the outage a change towards safety (PUT /_ops/mode, the Alertmanager webhook) is applied on the replica
that takes it (202, ``persisted: false``), shown as pending, and written to Redis when it answers; the other
replica takes it from there. A change away from safety still answers 503.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from proxy.app.server import Running
from tests.support.alerts import alert, payload, post_webhook
from tests.support.proxies import TOKEN, ProxyFactory, set_mode
from tests.support.servers import RedisServer
from tests.support.waiting import until

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def put(http: aiohttp.ClientSession, run: Running, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with http.put(f"{run.admin_url}/_ops/mode", json=body, headers=AUTH) as response:
        return response.status, await response.json()


async def view(http: aiohttp.ClientSession, run: Running) -> dict[str, Any]:
    async with http.get(f"{run.admin_url}/_ops/mode") as response:
        data: dict[str, Any] = await response.json()
        return data


async def metric(http: aiohttp.ClientSession, run: Running, name: str) -> float:
    async with http.get(f"{run.admin_url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not exposed")


async def test_a_downgrade_during_a_redis_outage_reaches_every_replica(make_proxy: ProxyFactory, own_redis: RedisServer,
                                                                      prefix: str,
                                                                      http: aiohttp.ClientSession) -> None:
    """Redis killed: warn applies on A at once (202, pending, gauge 1); enforce again is 503; Redis back: A writes
    it, B takes it, nothing is pending, and the history has it."""
    a = await make_proxy(redis_url=own_redis.url, redis_prefix=prefix)
    b = await make_proxy(redis_url=own_redis.url, redis_prefix=prefix)
    await set_mode(http, a, "*", "enforce", 100)
    await until(lambda: _mode_is(http, b, "create_deal", "enforce"), timeout_s=15, what="B to take enforce")
    own_redis.kill()
    await until(lambda: _source_is(http, a, "last_known"), timeout_s=15, what="A to notice the outage")
    status, body = await put(http, a, {"endpoint": "create_deal", "mode": "warn", "reason": "rollback", "actor": "op"})
    assert status == 202 and body["persisted"] is False
    assert body["endpoints"]["create_deal"]["mode"] == "warn"
    assert [(p["endpoint"], p["mode"]) for p in body["pending_writes"]] == [("create_deal", "warn")]
    assert await metric(http, a, "stage_mode_pending_writes") == 1
    status, _ = await put(http, a, {"endpoint": "update_deal", "mode": "enforce", "percent": 60, "reason": "x"})
    assert status == 202  # a lower enforce share is towards safety too
    status, refused = await put(http, a, {"endpoint": "create_deal", "mode": "enforce", "reason": "too soon"})
    assert status == 503 and "towards safety" in refused["detail"]
    assert (await view(http, b))["endpoints"]["create_deal"]["mode"] == "enforce"  # B cannot know yet

    own_redis.start()
    await until(lambda: _mode_is(http, b, "create_deal", "warn"), timeout_s=15, what="B to take the downgrade")
    assert (await view(http, a))["pending_writes"] == [] and await metric(http, a, "stage_mode_pending_writes") == 0
    async with http.get(f"{b.admin_url}/_ops/mode/history?endpoint=create_deal") as response:
        entries = (await response.json())["entries"]
    assert any(e["to"] == "warn" and e["actor"] == "op" and e["reason"] == "rollback" for e in entries)


async def test_the_webhook_downgrades_during_an_outage(make_proxy: ProxyFactory, own_redis: RedisServer, prefix: str,
                                                      http: aiohttp.ClientSession) -> None:
    """Alertmanager's downgrade with Redis down: 202 and applied (it was 503: no rollback when it mattered)."""
    run = await make_proxy(redis_url=own_redis.url, redis_prefix=prefix)
    await set_mode(http, run, "import_deals", "enforce", 50)
    own_redis.kill()
    await until(lambda: _source_is(http, run, "last_known"), timeout_s=15, what="the outage to be noticed")
    status, answer = await post_webhook(http, run, payload(alert({"alertname": "StageEnforceErrorSpike",
                                                                  "stage_action": "downgrade",
                                                                  "endpoint": "import_deals"})))
    assert status == 202 and answer["persisted"] is False and answer["downgraded"] == ["import_deals"]
    assert (await view(http, run))["endpoints"]["import_deals"]["mode"] == "warn"
    own_redis.start()
    await until(lambda: _pending_empty(http, run), timeout_s=15, what="the pending downgrade to be written")


async def _mode_is(http: aiohttp.ClientSession, run: Running, endpoint: str, mode: str) -> bool:
    return bool((await view(http, run))["endpoints"][endpoint]["mode"] == mode)


async def _source_is(http: aiohttp.ClientSession, run: Running, source: str) -> bool:
    return bool((await view(http, run))["source"] == source)


async def _pending_empty(http: aiohttp.ClientSession, run: Running) -> bool:
    return not (await view(http, run))["pending_writes"]
