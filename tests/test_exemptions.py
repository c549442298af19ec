"""Exemptions: one late consumer (or client network) stays in warn while everyone else is enforced — on every
replica, last-known when Redis is down, in the history, ending by itself; and what is not an exemption."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.app.server import Running
from proxy.catalog.stages import DEFAULT_CATALOG_TOML, default_catalog, parse_catalog
from proxy.modes.changes import ModeChanges
from proxy.modes.pending import PendingWrites
from proxy.modes.records import Exemption
from proxy.modes.refresher import Refresher
from proxy.modes.statefile import StateFile, read_state_file
from proxy.modes.store import MemoryModeStore
from proxy.modes.view import ModeView
from proxy.shared.clients import parse_networks
from proxy.shared.metrics import Metrics
from proxy.wire import exemptions as wire
from tests.support.proxies import REPO, TOKEN, ProxyFactory, set_mode
from tests.support.servers import RedisServer
from tests.support.upstreams import Upstream
from tests.support.waiting import until

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def later(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat().replace("+00:00", "Z")


async def exempt(http: aiohttp.ClientSession, run: Running, body: dict[str, Any],
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    body = {"endpoint": "create_deal", "until": later(days=14), "reason": "partner needs two weeks", **body}
    async with http.put(f"{run.admin_url}/_ops/exemptions", json=body, headers=AUTH if headers is None
                        else headers) as response:
        return response.status, await response.json(content_type=None)


async def create(http: aiohttp.ClientSession, run: Running, headers: dict[str, str],
                 stage: str = "banana") -> tuple[int, str]:
    async with http.post(f"{run.url}/api/v1/deals", json={"stage": stage}, headers=headers) as response:
        await response.read()
        return response.status, response.headers.get("X-Stage-Validation", "")


async def metric(http: aiohttp.ClientSession, run: Running, series: str) -> float:
    async with http.get(f"{run.admin_url}/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " "))


async def gateway(make_proxy: ProxyFactory, http: aiohttp.ClientSession, trusted: str = "127.0.0.0/8",
                  **settings: Any) -> Running:
    """A proxy behind a trusted gateway (loopback) that names consumers, create_deal enforced at 100 %."""
    run = await make_proxy(trusted_proxies=parse_networks([trusted]), consumer_header="X-Consumer-ID", **settings)
    await set_mode(http, run, "create_deal", "enforce", 100)
    return run


async def test_a_late_consumer_stays_in_warn_while_everyone_else_is_enforced(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    run = await gateway(make_proxy, http)
    status, body = await exempt(http, run, {"consumer": "partner-a"})
    assert status == 201, body
    made = wire.Exemption.from_json(body)
    assert (made.endpoint, made.consumer, made.client_cidr, made.created_by) == ("create_deal", "partner-a", None,
                                                                                 "api")
    caplog.set_level(logging.INFO)
    assert await create(http, run, {"X-Consumer-ID": "partner-a"}) == (200, "mode=warn; result=unknown; exempt")
    assert orjson.loads(upstream.last.body) == {"stage": "banana"}  # forwarded unchanged
    assert await create(http, run, {"X-Consumer-ID": "partner-a"}, "Closed Won") == (
        200, "mode=warn; result=alias; exempt")
    assert orjson.loads(upstream.last.body) == {"stage": "Closed Won"}  # warn: not normalized either
    assert await create(http, run, {"X-Consumer-ID": "partner-b"}) == (422, "mode=enforce; result=unknown")
    assert await create(http, run, {}) == (422, "mode=enforce; result=unknown")
    assert await create(http, run, {"X-Consumer-ID": "PARTNER-A"}) == (422, "mode=enforce; result=unknown")
    assert await metric(http, run, 'stage_exempted_total{endpoint="create_deal",result="unknown"}') == 1
    assert await metric(http, run, 'stage_exempted_total{endpoint="create_deal",result="alias"}') == 1
    assert await metric(http, run, 'stage_validation_total{endpoint="create_deal",mode="warn",result="unknown"}') == 1
    assert await metric(http, run, 'stage_exemptions{endpoint="create_deal"}') == 1
    assert await metric(http, run, 'stage_exemptions{endpoint="import_deals"}') == 0
    lines = [dict(r.fields) for r in caplog.records if getattr(r, "event", None) == "stage_validation"]  # type: ignore[attr-defined]
    assert [(line["mode"], line["exemption"], line["consumer"]) for line in lines[:2]] == [
        ("warn", made.id, "partner-a")] * 2
    async with http.get(f"{run.admin_url}/_ops/exemptions") as response:
        assert wire.Exemptions.from_json(await response.json()).exemptions == (made,)
    async with http.get(f"{run.admin_url}/_ops/mode/history?limit=5") as response:
        entry = (await response.json())["entries"][0]
    assert (entry["action"], entry["endpoint"], entry["actor"]) == ("exemption_added", "create_deal", "api")
    assert made.id in entry["reason"] and "partner needs two weeks" in entry["reason"]

    async with http.delete(f"{run.admin_url}/_ops/exemptions/{made.id}", json={"reason": "they shipped the fix",
                                                                                 "actor": "ana"},
                           headers=AUTH) as response:
        assert response.status == 200
        assert wire.ExemptionRemoved.from_json(await response.json()).removed == made
    assert await create(http, run, {"X-Consumer-ID": "partner-a"}) == (422, "mode=enforce; result=unknown")
    async with http.delete(f"{run.admin_url}/_ops/exemptions/{made.id}", json={"reason": "again"},
                           headers=AUTH) as response:
        assert response.status == 404


async def test_a_client_network_behind_the_balancer_and_every_endpoint(make_proxy: ProxyFactory,
                                                                       http: aiohttp.ClientSession) -> None:
    """By client network: the forwarded client behind a trusted balancer; ``*`` covers every endpoint."""
    run = await gateway(make_proxy, http)
    await set_mode(http, run, "import_deals", "enforce", 100)
    status, _ = await exempt(http, run, {"client_cidr": "203.0.113.0/24", "endpoint": "*"})
    assert status == 201
    assert await create(http, run, {"X-Forwarded-For": "203.0.113.7"}) == (200, "mode=warn; result=unknown; exempt")
    assert await create(http, run, {"X-Forwarded-For": "198.51.100.7"}) == (422, "mode=enforce; result=unknown")
    # a forged hop left of what the balancer appended is not the client
    assert await create(http, run, {"X-Forwarded-For": "203.0.113.7, 198.51.100.7"}) == (
        422, "mode=enforce; result=unknown")
    async with http.post(f"{run.url}/api/v1/deals/import", json={"deals": [{"stage": "banana"}]},
                         headers={"X-Forwarded-For": "203.0.113.9"}) as response:
        assert response.status == 200 and response.headers["X-Stage-Validation"].endswith("; exempt")


async def test_what_an_untrusted_client_sends_exempts_nothing(make_proxy: ProxyFactory,
                                                              http: aiohttp.ClientSession) -> None:
    """A client that is not a trusted peer cannot claim a consumer's or a network's exemption."""
    run = await gateway(make_proxy, http, trusted="10.0.0.0/8")  # the test client (127.0.0.1) is not trusted
    assert (await exempt(http, run, {"consumer": "partner-a"}))[0] == 201
    assert (await exempt(http, run, {"client_cidr": "203.0.113.0/24"}))[0] == 201
    assert await create(http, run, {"X-Consumer-ID": "partner-a"}) == (422, "mode=enforce; result=unknown")
    assert await create(http, run, {"X-Forwarded-For": "203.0.113.7"}) == (422, "mode=enforce; result=unknown")


async def test_it_ends_by_itself(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    run = await gateway(make_proxy, http)
    status, body = await exempt(http, run, {"consumer": "partner-a", "until": later(seconds=1.5)})
    assert status == 201, body
    assert (await create(http, run, {"X-Consumer-ID": "partner-a"}))[0] == 200
    await until(lambda: _rejected(http, run), what="the exemption to end at its time")
    async with http.get(f"{run.admin_url}/_ops/exemptions") as response:
        assert (await response.json())["exemptions"] == []


async def _rejected(http: aiohttp.ClientSession, run: Running) -> bool:
    return (await create(http, run, {"X-Consumer-ID": "partner-a"}))[0] == 422


async def test_every_replica_applies_it_and_keeps_it_through_a_redis_outage(
        make_proxy: ProxyFactory, own_redis: RedisServer, prefix: str, http: aiohttp.ClientSession) -> None:
    a = await gateway(make_proxy, http, redis_url=own_redis.url, redis_prefix=prefix, refresh_ms=100)
    b = await make_proxy(trusted_proxies=parse_networks(["127.0.0.0/8"]), consumer_header="X-Consumer-ID",
                         redis_url=own_redis.url, redis_prefix=prefix, refresh_ms=100)
    status, body = await exempt(http, a, {"consumer": "partner-a"})
    assert status == 201
    await until(lambda: _exempt_on(http, b), what="the second replica to apply the exemption")
    own_redis.kill()
    async with http.get(f"{b.admin_url}/_ops/mode") as response:
        assert (await response.json())["source"] in ("redis", "last_known")
    for _ in range(3):  # last-known: still applied
        assert await create(http, b, {"X-Consumer-ID": "partner-a"}) == (200, "mode=warn; result=unknown; exempt")
    status, problem = await exempt(http, a, {"consumer": "partner-b"})
    assert status == 503 and problem["type"].endswith("store-unavailable")  # every replica or none
    own_redis.start()
    async with http.delete(f"{a.admin_url}/_ops/exemptions/{body['id']}", json={"reason": "done"},
                           headers=AUTH) as response:
        if response.status == 503:  # the first write after the restart may race the reconnect
            await until(lambda: _source_redis(http, a), what="A to reach Redis again")
        else:
            assert response.status == 200
    if response.status == 503:
        async with http.delete(f"{a.admin_url}/_ops/exemptions/{body['id']}", json={"reason": "done"},
                               headers=AUTH) as response:
            assert response.status == 200
    await until(lambda: _rejected(http, b), what="the second replica to drop the exemption")


async def _exempt_on(http: aiohttp.ClientSession, run: Running) -> bool:
    return (await create(http, run, {"X-Consumer-ID": "partner-a"}))[1].endswith("; exempt")


async def _source_redis(http: aiohttp.ClientSession, run: Running) -> bool:
    async with http.get(f"{run.admin_url}/_ops/mode") as response:
        return bool((await response.json())["source"] == "redis")


async def test_a_restart_without_redis_keeps_the_exemptions_of_the_state_file(tmp_path: Path) -> None:
    catalog = default_catalog()
    path = tmp_path / "state.json"

    def parts(store: MemoryModeStore) -> tuple[ModeView, Refresher, ModeChanges]:
        view = ModeView(catalog, Metrics(catalog.endpoint_names))
        state = StateFile(path)
        refresher = Refresher(view, store, state, pending=PendingWrites())
        return view, refresher, ModeChanges(view, store, refresher, state, PendingWrites())

    view, refresher, changes = parts(MemoryModeStore())
    await refresher.start()
    exemption = Exemption("ex-1", "*", None, "192.0.2.0/24", later(days=3).replace("Z", "+00:00"), "r",
                          "2026-12-05T00:00:00+00:00", "ana")
    await changes.add_exemption(exemption, 100)

    class Down(MemoryModeStore):
        async def load(self) -> Any:
            from proxy.modes.store import StoreUnavailable
            raise StoreUnavailable("down")

    reborn, refresher, _ = parts(Down())
    await refresher.start()
    assert reborn.exemptions == {"ex-1": exemption} and set(reborn.exempt) == set(catalog.endpoint_names)


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"consumer": "p", "until": later(days=31)}, 400, "more than 30 days ahead"),
    ({"consumer": "p", "until": later(days=-1)}, 400, "is not in the future"),
    ({"consumer": "p", "until": "2026-12-20T00:00:00"}, 400, "needs a zone"),
    ({"consumer": "p", "until": "next week"}, 400, "is not an RFC 3339 time"),
    ({"consumer": "p", "until": 1767225600}, 400, "'until' is required"),
    ({"client_cidr": "0.0.0.0/0"}, 400, "every address"),
    ({"client_cidr": "::/0"}, 400, "every address"),
    ({"client_cidr": "10.0.0.0/33"}, 400, "is not an address or CIDR network"),
    ({"consumer": "p", "client_cidr": "10.0.0.0/8"}, 400, "exactly one of"),
    ({}, 400, "exactly one of"),
    ({"consumer": "x" * 10_000}, 400, "longer than 128 characters"),
    ({"consumer": "p\nq"}, 400, "control characters"),
    ({"consumer": "p", "endpoint": "delete_deal"}, 400, "'endpoint' must be one of"),
    ({"consumer": "p", "reason": None}, 400, "'reason' is required"),  # null: no reason given
    ({"consumer": "p", "percent": 5}, 400, "unknown field"),
])
async def test_what_is_not_an_exemption(make_proxy: ProxyFactory, http: aiohttp.ClientSession,
                                        body: dict[str, Any], status: int, fragment: str) -> None:
    run = await gateway(make_proxy, http)
    answer_status, answer = await exempt(http, run, body)
    assert answer_status == status and fragment in answer["detail"], answer
    async with http.get(f"{run.admin_url}/_ops/exemptions") as response:
        assert (await response.json())["exemptions"] == []


async def test_auth_limits_and_a_proxy_without_consumer_names(make_proxy: ProxyFactory,
                                                              http: aiohttp.ClientSession) -> None:
    plain = await make_proxy()
    assert (await exempt(http, plain, {"consumer": "p"}, headers={}))[0] == 401
    status, answer = await exempt(http, plain, {"consumer": "p"})
    assert status == 400 and "--consumer-header" in answer["detail"]
    assert (await exempt(http, plain, {"client_cidr": "192.0.2.1"}))[0] == 201
    async with http.delete(f"{plain.admin_url}/_ops/exemptions/ex-1", json={"reason": "x"}) as response:
        assert response.status == 401
    for n in range(99):
        assert (await exempt(http, plain, {"client_cidr": f"10.0.{n}.0/24"}))[0] == 201
    status, answer = await exempt(http, plain, {"client_cidr": "10.1.0.0/24"})
    assert status == 409 and "100 exemptions are live" in answer["detail"]


def stagectl(*args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.stagectl", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "STAGE_OPS_TOKEN": token, "STAGE_ACTOR": "ana"})


async def test_stagectl_exempt_add_list_remove(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    run = await gateway(make_proxy, http)
    admin = ("--admin-url", run.admin_url)
    added = await asyncio.to_thread(stagectl, "exempt", "add", "--consumer", "partner-a", "--endpoint",
                                    "create_deal", "--for", "14d", "--reason", "OPS-1234", *admin, "--json")
    assert "--endpoint" in (await asyncio.to_thread(stagectl, "exempt", "add", "--consumer", "p", "--for", "1d",
                                                    "--reason", "r", *admin)).stderr  # required: no silent "*"
    assert added.returncode == 0, added.stderr
    made = wire.Exemption.from_json(orjson.loads(added.stdout))
    assert made.created_by == "stagectl exempt add (ana)" and made.consumer == "partner-a"
    left = datetime.fromisoformat(made.until) - datetime.now(UTC)
    assert timedelta(days=13, hours=23) < left <= timedelta(days=14)
    assert await create(http, run, {"X-Consumer-ID": "partner-a"}) == (200, "mode=warn; result=unknown; exempt")
    listed = await asyncio.to_thread(stagectl, "exempt", "list", *admin)
    assert listed.returncode == 0 and listed.stdout.splitlines()[0].split()[:5] == ["ID", "ENDPOINT", "WHO",
                                                                                    "UNTIL", "LEFT"]
    assert made.id in listed.stdout and "consumer partner-a" in listed.stdout and " 13d23h " in listed.stdout
    removed = await asyncio.to_thread(stagectl, "exempt", "remove", made.id, "--reason", "fixed", *admin)
    assert removed.returncode == 0 and "is enforced again" in removed.stdout, removed.stderr
    assert await create(http, run, {"X-Consumer-ID": "partner-a"}) == (422, "mode=enforce; result=unknown")
    assert "no exemptions" in (await asyncio.to_thread(stagectl, "exempt", "list", *admin)).stdout


@pytest.mark.parametrize(("args", "code", "fragment"), [
    ("add --endpoint '*' --consumer p --for 31d --reason r", 2, "at most 30 days ahead"),
    ("add --endpoint '*' --consumer p --until=-infinity --reason r", 2, "would end before it starts"),
    ("add --endpoint '*' --consumer p --until 1999-01-01T00:00:00Z --reason r", 2, "end before it starts"),
    ("add --endpoint '*' --consumer p --reason r", 2, "--for DURATION (e.g. 14d) or --until"),
    ("add --endpoint '*' --consumer p --for 2w --reason r", 2, "--for: '2w' is not a duration"),
    ("add --endpoint '*' --consumer p --until 2026-12-19 --reason r", 2, "not an RFC 3339 instant"),
    ("add --endpoint '*' --consumer p --client-cidr 10.0.0.0/8 --for 1d --reason r", 2, "exactly one"),
    ("add --endpoint '*' --client-cidr 0.0.0.0/0 --for 1d --reason r", 2, "every address"),
    ("add --consumer p --endpoint nope --for 1d --reason r", 2, "'endpoint' must be"),
    ("remove ex-nope --reason r", 2, "no exemption has id 'ex-nope'"),
])
async def test_stagectl_exempt_refuses_with_one_line(make_proxy: ProxyFactory, http: aiohttp.ClientSession,
                                                     args: str, code: int, fragment: str) -> None:
    run = await gateway(make_proxy, http)
    result = await asyncio.to_thread(stagectl, "exempt", *shlex.split(args), "--admin-url", run.admin_url)
    assert result.returncode == code and fragment in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


async def test_stagectl_exempt_with_a_wrong_token_is_exit_3(make_proxy: ProxyFactory,
                                                            http: aiohttp.ClientSession) -> None:
    run = await gateway(make_proxy, http)
    result = await asyncio.to_thread(stagectl, "exempt", "add", "--consumer", "p", "--endpoint", "*", "--for", "1d",
                                     "--reason", "r", "--admin-url", run.admin_url, token="wrong")
    assert result.returncode == 3 and "401" in result.stderr


async def test_a_redis_restarted_empty_gets_them_back_even_with_no_mode_ever_set(
        make_proxy: ProxyFactory, own_redis: RedisServer, prefix: str, http: aiohttp.ClientSession) -> None:
    """default_mode enforce, no mode stored, no state file: the exemption alone is worth re-seeding."""
    enforcing = parse_catalog(DEFAULT_CATALOG_TOML.replace('default_mode = "off"', 'default_mode = "enforce"'))
    run = await make_proxy(trusted_proxies=parse_networks(["127.0.0.0/8"]), consumer_header="X-Consumer-ID",
                           redis_url=own_redis.url, redis_prefix=prefix, refresh_ms=100, catalog=enforcing)
    assert (await exempt(http, run, {"consumer": "partner-a"}))[0] == 201
    own_redis.kill()
    own_redis.start()  # without persistence: empty
    await until(lambda: _source_redis(http, run), what="the proxy to reach Redis again")
    assert await create(http, run, {"X-Consumer-ID": "partner-a"}) == (200, "mode=warn; result=unknown; exempt")
    async with http.get(f"{run.admin_url}/_ops/exemptions") as response:
        assert [e["consumer"] for e in (await response.json())["exemptions"]] == ["partner-a"]


async def test_what_a_gateway_may_have_passed_on_exempts_nothing(make_proxy: ProxyFactory,
                                                                 http: aiohttp.ClientSession) -> None:
    """Two consumer header lines (a gateway that appends instead of overwriting) name no consumer; a client
    network inside --trusted-proxies is refused (a trusted hop writes the address it forwards)."""
    run = await gateway(make_proxy, http)
    assert (await exempt(http, run, {"consumer": "partner-a"}))[0] == 201
    async with http.post(f"{run.url}/api/v1/deals", json={"stage": "banana"},
                         headers=[("X-Consumer-ID", "partner-a"), ("X-Consumer-ID", "someone")]) as response:
        assert response.status == 422
    status, answer = await exempt(http, run, {"client_cidr": "127.0.0.0/24"})
    assert status == 400 and "overlaps --trusted-proxies" in answer["detail"]
    status, answer = await exempt(http, run, {"client_cidr": "::ffff:203.0.113.0/120"})  # mapped: as IPv4
    assert status == 201 and answer["client_cidr"] == "203.0.113.0/24"
    assert await create(http, run, {"X-Forwarded-For": "203.0.113.7"}) == (200, "mode=warn; result=unknown; exempt")


def test_a_state_file_with_a_bad_exemption_keeps_its_modes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(orjson.dumps({"endpoints": {"create_deal": {"mode": "enforce", "percent": 100.0}},
                                   "exemptions": [{"id": "x"}, {"id": "ex-1", "endpoint": "*", "consumer": "p",
                                                                "until": "2099-01-01T00:00:00.000+00:00"}]}))
    saved = read_state_file(path)
    assert saved is not None and saved.records["create_deal"].mode == "enforce" and list(saved.exemptions) == ["ex-1"]
    assert any(getattr(r, "event", None) == "state_file_exemption_ignored" for r in caplog.records)
