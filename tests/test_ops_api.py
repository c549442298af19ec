"""The admin listener: health, readiness, mode reads and authenticated, validated mode changes."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.app.server import Running
from tests.support.alerts import block_enforce
from tests.support.ports import free_port
from tests.support.proxies import TOKEN, ProxyFactory

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def put(http: aiohttp.ClientSession, run: Running, body: bytes | dict[str, Any],
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = headers if headers is not None else AUTH
    async with http.put(f"{run.admin_url}/_ops/mode", data=io.BytesIO(data), headers=headers) as r:
        return r.status, orjson.loads(await r.read())


async def test_healthz_and_readyz(proxy: Running, http: aiohttp.ClientSession) -> None:
    """healthz is 200; readyz is 200 with details once modes are resolved and the upstream answers."""
    async with http.get(f"{proxy.admin_url}/_ops/healthz") as response:
        assert response.status == 200
    async with http.get(f"{proxy.admin_url}/_ops/readyz") as response:
        body = await response.json()
        assert response.status == 200
    assert body["ready"] is True and body["modes"]["source"] == "memory" and body["upstream"]["ok"] is True


async def test_readyz_fails_when_upstream_is_down(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    """readyz is 503 and says why when the upstream does not answer."""
    run = await make_proxy(upstream_url=f"http://127.0.0.1:{free_port()}")
    async with http.get(f"{run.admin_url}/_ops/readyz") as response:
        body = await response.json()
        assert response.status == 503
    assert body["upstream"]["ok"] is False and body["upstream"]["error"]


async def test_get_mode_shape(proxy: Running, http: aiohttp.ClientSession) -> None:
    """GET /_ops/mode has source, enforce_blocked and every endpoint with the contract's fields."""
    async with http.get(f"{proxy.admin_url}/_ops/mode") as response:
        body = await response.json()
    assert set(body) == {"source", "enforce_blocked", "endpoints", "pending_writes"}
    assert set(body["endpoints"]) == {"create_deal", "update_deal", "import_deals"} and body["pending_writes"] == []
    for record in body["endpoints"].values():
        assert set(record) == {"mode", "percent", "updated_at", "updated_by", "reason", "blocked_by", "rollout"}
        assert record["mode"] == "off" and record["blocked_by"] == [] and record["rollout"] is None


async def test_put_mode_records_who_and_why(proxy: Running, http: aiohttp.ClientSession) -> None:
    """A valid PUT applies at once and records actor, reason and time."""
    status, body = await put(http, proxy, {"endpoint": "update_deal", "mode": "enforce", "percent": 12.5,
                                           "reason": "canary step 1", "actor": "alice"})
    assert status == 200
    record = body["endpoints"]["update_deal"]
    assert (record["mode"], record["percent"], record["updated_by"], record["reason"]) == (
        "enforce", 12.5, "alice", "canary step 1")
    assert record["updated_at"].startswith("20")
    assert body["endpoints"]["create_deal"]["mode"] == "off"


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": TOKEN}, 401),
     ({"Authorization": f"Basic {TOKEN}"}, 401), ({"Authorization": f"Bearer {TOKEN}x"}, 401)],
)
async def test_put_needs_the_token(proxy: Running, http: aiohttp.ClientSession, headers: dict[str, str],
                                   status: int) -> None:
    """No token or a wrong one: 401 problem, nothing changes."""
    got, body = await put(http, proxy, {"endpoint": "*", "mode": "warn", "reason": "x"}, headers)
    assert got == status and body["status"] == status
    async with http.get(f"{proxy.admin_url}/_ops/mode") as response:
        assert all(r["mode"] == "off" for r in (await response.json())["endpoints"].values())


async def test_put_without_configured_token_is_403(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    """With no ops token configured every mutation answers 403."""
    run = await make_proxy(ops_token=None)
    got, body = await put(http, run, {"endpoint": "*", "mode": "warn", "reason": "x"})
    assert got == 403
    assert body == {"type": "urn:stagegate:problem:ops-disabled", "title": "Forbidden", "status": 403,
                    "detail": "no ops token is configured: mutations are disabled"}


async def test_the_refusals_answer_in_full(proxy: Running, http: aiohttp.ClientSession) -> None:
    """The whole 401 answer (type, title, detail, the challenge header) on every mutation, and a token after a
    second space is no token ("Bearer <token> x")."""
    mutations = [("PUT", "/_ops/mode"), ("PUT", "/_ops/rollout/create_deal"), ("DELETE", "/_ops/rollout/create_deal"),
                 ("DELETE", "/_ops/blocks/fp"), ("POST", "/_ops/reload"), ("POST", "/_ops/alertmanager"),
                 ("PUT", "/_ops/exemptions"), ("DELETE", "/_ops/exemptions/ex-1")]
    for method, path in mutations:
        for authorization in (None, f"Bearer x {TOKEN}", f"bearer  {TOKEN}x"):
            headers = {} if authorization is None else {"Authorization": authorization}
            async with http.request(method, f"{proxy.admin_url}{path}", json={}, headers=headers) as response:
                assert response.status == 401, (method, path, authorization)
                assert response.headers["WWW-Authenticate"] == 'Bearer realm="stagegate-ops"'
                assert await response.json(content_type=None) == {
                    "type": "urn:stagegate:problem:unauthorized", "title": "Unauthorized", "status": 401,
                    "detail": "a valid bearer token is required"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b"not json", "JSON object"), (b"[]", "JSON object"), ({"mode": "warn", "reason": "x"}, "'endpoint'"),
     ({"endpoint": "nope", "mode": "warn", "reason": "x"}, "'endpoint'"),
     ({"endpoint": "*", "mode": "strict", "reason": "x"}, "'mode'"),
     ({"endpoint": "*", "mode": "enforce", "percent": 101, "reason": "x"}, "'percent'"),
     ({"endpoint": "*", "mode": "enforce", "percent": "ten", "reason": "x"}, "'percent'"),
     ({"endpoint": "*", "mode": "enforce", "percent": -1, "reason": "x"}, "'percent'"),
     ({"endpoint": "*", "mode": "enforce", "percent": 10.001, "reason": "x"}, "two decimals"),
     ({"endpoint": "*", "mode": "enforce", "percent": True, "reason": "x"}, "'percent'"),
     ({"endpoint": "*", "mode": "warn", "percent": 50, "reason": "x"}, "only to mode 'enforce'"),
     ({"endpoint": "*", "mode": "warn"}, "'reason'"), ({"endpoint": "*", "mode": "warn", "reason": " "}, "'reason'"),
     ({"endpoint": "*", "mode": "warn", "reason": "x" * 501}, "longer than"),
     ({"endpoint": "*", "mode": "warn", "reason": "x", "force": "yes"}, "'force'"),
     ({"endpoint": "*", "mode": "warn", "reason": "x", "colour": "red"}, "unknown field")],
)
async def test_put_bad_bodies(proxy: Running, http: aiohttp.ClientSession, body: bytes | dict[str, Any],
                              fragment: str) -> None:
    """Each malformed PUT body is a 400 problem naming the field."""
    status, problem = await put(http, proxy, body)
    assert status == 400
    assert fragment in problem["detail"]


async def test_enforce_defaults_to_100_percent(proxy: Running, http: aiohttp.ClientSession) -> None:
    """enforce without percent means the whole endpoint."""
    status, body = await put(http, proxy, {"endpoint": "create_deal", "mode": "enforce", "reason": "full"})
    assert status == 200 and body["endpoints"]["create_deal"]["percent"] == 100.0


async def test_enforce_blocked_is_409_unless_forced(proxy: Running, http: aiohttp.ClientSession) -> None:
    """While a block_enforce alert fires, PUT enforce answers 409 naming it; force=true goes through."""
    await block_enforce(http, proxy)
    status, body = await put(http, proxy, {"endpoint": "*", "mode": "enforce", "reason": "go"})
    assert status == 409 and body["status"] == 409
    assert body["blocked_by"] == ["StageUnknownHighInWarn (all endpoints)"] and "force" in body["detail"]
    assert body["fingerprints"] == ["fp-StageUnknownHighInWarn"]
    assert '"force": true' in body["detail"] and "stagectl mode set --force" in body["detail"]
    status, _ = await put(http, proxy, {"endpoint": "*", "mode": "warn", "reason": "warn is fine"})
    assert status == 200
    status, body = await put(http, proxy, {"endpoint": "*", "mode": "enforce", "reason": "go", "force": True})
    assert status == 200 and body["endpoints"]["create_deal"]["mode"] == "enforce"


async def test_metrics_exposition(proxy: Running, http: aiohttp.ClientSession) -> None:
    """/metrics serves every contract metric in Prometheus text format."""
    async with http.get(f"{proxy.admin_url}/metrics") as response:
        text = await response.text()
        assert response.headers["Content-Type"].startswith("text/plain")
    for name in ("stage_validation_total", "stage_enforce_rejections_total", "stage_validator_seconds",
                 "stage_proxy_request_seconds", "stage_upstream_errors_total", "stage_mode", "stage_enforce_percent",
                 "stage_mode_source", "stage_enforce_blocked", "stage_mode_store_seconds", "stage_config_reload_total",
                 "stage_catalog_info"):
        assert f"# TYPE {name} " in text, name
    assert 'stage_mode{endpoint="create_deal",mode="off"} 1.0' in text
    assert 'stage_mode_source{source="memory"} 1.0' in text


async def test_admin_is_not_the_main_listener(proxy: Running, http: aiohttp.ClientSession) -> None:
    """The admin listener serves only its routes (no forwarding)."""
    async with http.get(f"{proxy.admin_url}/api/v1/deals") as response:
        assert response.status == 404


async def test_put_oversized_body_is_413_problem(proxy: Running, http: aiohttp.ClientSession) -> None:
    """A PUT body over the admin limit is a 413 problem, not a crash."""
    status, body = await put(http, proxy, b"{" + b" " * (9 * 1024 * 1024) + b"}")
    assert status == 413 and body["status"] == 413
