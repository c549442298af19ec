"""Hostile input on the admin listener: every input validated, bodies capped, a huge webhook no stall."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.app.server import Running
from tests.support.alerts import AUTH, alert, payload, post_webhook
from tests.support.loops import ThreadedLoop
from tests.support.proxies import TOKEN, ProxyFactory, make_settings, set_mode
from tests.support.upstreams import Upstream, recording_upstream


@pytest.mark.parametrize("limit", ["%C2%B2", "0", "-1", "1001", "1e3", "", "%00", "١"])
async def test_history_limit_is_validated(proxy: Running, http: aiohttp.ClientSession, limit: str) -> None:
    """(15) A limit that is not an ASCII integer from 1 to 1000 is a 400 problem, never a 500."""
    async with http.get(f"{proxy.admin_url}/_ops/mode/history?limit={limit}") as response:
        assert response.status == 400
        assert response.content_type == "application/problem+json"


class AdminUnderTest(ThreadedLoop):
    """A proxy on its own loop for the synchronous hypothesis test."""

    async def serve(self, stop: asyncio.Event) -> None:
        from proxy.app.server import running

        async with recording_upstream() as upstream, running(make_settings(upstream.url)) as run:
            self.run = run
            self.upstream: Upstream = upstream
            self.ready.set()
            await stop.wait()


PATHS = st.sampled_from(["/_ops/mode", "/_ops/mode/history", "/_ops/alertmanager", "/_ops/healthz", "/_ops/readyz",
                         "/metrics", "/_ops/reload", "/_ops/blocks", "/_ops/blocks/x", "/_ops/nope", "/_ops/mode/%ff"])
QUERIES = st.one_of(st.just(""), st.builds(lambda k, v: f"?{k}={v}", st.sampled_from(["limit", "endpoint", "x"]),
                                            st.text(max_size=6).map(lambda t: t.encode().hex())),
                    st.sampled_from(["?limit=%C2%B2", "?limit=99999999999999999999", "?limit=5&limit=6"]))
JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text()),
                       lambda inner: st.one_of(st.lists(inner, max_size=3),
                                               st.dictionaries(st.sampled_from(
                                                   ["endpoint", "mode", "percent", "reason", "actor", "force",
                                                    "version", "alerts", "status", "labels", "x"]), inner,
                                                   max_size=5)), max_leaves=10)
BODIES = st.one_of(st.binary(max_size=64), JSONISH.map(lambda v: json.dumps(v).encode()))


@pytest.fixture(scope="module")
def admin_server() -> Iterator[AdminUnderTest]:
    with AdminUnderTest() as server:
        yield server


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD"]), path=PATHS, query=QUERIES,
       body=BODIES, auth=st.booleans(), content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_admin_api_never_answers_5xx(admin_server: AdminUnderTest, method: str, path: str, query: str, body: bytes,
                                     auth: bool, content_type: str) -> None:
    """(15) Random methods, paths, queries and bodies, with and without the token: never a 5xx."""

    async def call() -> int:
        headers = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
        if content_type:
            headers["Content-Type"] = content_type
        async with aiohttp.ClientSession() as http:
            async with http.request(method, f"{admin_server.run.admin_url}{path}{query}", data=body,
                                    headers=headers) as response:
                await response.read()
                return response.status

    status = asyncio.run_coroutine_threadsafe(call(), admin_server.loop).result(10)
    assert status < 500, (method, path, query, body)


async def test_admin_bodies_are_capped(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    """(17) An admin body over --admin-max-body-bytes is a 413 problem (the webhook included)."""
    run = await make_proxy(admin_max_body_bytes=4096)
    big = json.dumps(payload(*[alert({"alertname": f"A{i}"}) for i in range(100)])).encode()
    assert len(big) > 4096
    for path in ("/_ops/alertmanager", "/_ops/mode"):
        async with http.request("POST" if "alert" in path else "PUT", f"{run.admin_url}{path}", data=big,
                                headers=AUTH) as response:
            assert response.status == 413 and response.content_type == "application/problem+json"


async def test_a_huge_webhook_does_not_stall_the_data_plane(make_proxy: ProxyFactory, http: aiohttp.ClientSession,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """(17) 25 000 block_enforce alerts (7 MB) in one notification: the data plane keeps answering, the log line,
    the history and the 409 body stay small."""
    caplog.set_level(logging.INFO)
    run = await make_proxy()
    alerts = [alert({"alertname": f"StageUnknownHighInWarn{i}", "stage_action": "block_enforce",
                     "endpoint": "create_deal"}, fingerprint=f"fp{i}") for i in range(25_000)]
    body = json.dumps(payload(*alerts)).encode()
    assert len(body) < 8 * 1024 * 1024
    delays: list[float] = []

    async def probe() -> None:
        for _ in range(60):
            started = time.monotonic()
            async with http.get(f"{run.url}/ping") as response:
                await response.read()
            delays.append(time.monotonic() - started)
            await asyncio.sleep(0.02)  # the probes' pace while the webhook is handled, not a wait for it

    prober = asyncio.create_task(probe())
    status, answer = await post_webhook(http, run, body)
    await prober
    assert status == 200 and answer["blocks_added"] == 25_000
    assert max(delays) < 1.0, max(delays)  # generous; measured far lower
    assert max(len(r.getMessage()) + len(str(getattr(r, "fields", ""))) for r in caplog.records) < 8192
    async with http.get(f"{run.admin_url}/_ops/mode/history?limit=1000") as response:
        history = (await response.json())["entries"]
    assert len(history) == 21 and history[0]["reason"] == "and 24980 more alerts in the same notification"
    async with http.put(f"{run.admin_url}/_ops/mode", json={"endpoint": "*", "mode": "enforce", "reason": "x"},
                        headers=AUTH) as response:
        refused = await response.read()
        assert response.status == 409 and len(refused) < 8192


async def test_canary_key_header_gives_one_consumer_one_behaviour(make_proxy: ProxyFactory,
                                                                 http: aiohttp.ClientSession) -> None:
    """(18) With --canary-key-header, a consumer is enforced or not by its key, whatever request IDs it picks."""
    run = await make_proxy(canary_key_header="X-Consumer")
    await set_mode(http, run, "create_deal", "enforce", 50)
    results: dict[str, set[str]] = {}
    for consumer in ("billing", "crm", "mobile", "partner-a", "partner-b", "web"):
        for i in range(20):
            async with http.post(f"{run.url}/api/v1/deals", json={"stage": "nope"},
                                 headers={"X-Consumer": consumer, "X-Request-ID": f"chosen-{i}"}) as response:
                results.setdefault(consumer, set()).add(response.headers["X-Stage-Validation"].split(";")[0])
    assert all(len(modes) == 1 for modes in results.values()), results
    assert {next(iter(m)) for m in results.values()} == {"mode=enforce", "mode=warn"}  # both buckets occur
