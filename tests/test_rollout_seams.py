"""stagectl rollout where the parts meet: Prometheus dead, killed or frozen mid-step, Redis killed, two drivers
racing, a refused token, replicas on two catalogs (docs/rollout.md, "When something fails").

Each fault test asserts what did not happen (no mode changed, no unwatched time counted) as well as what did.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from proxy.catalog.stages import DEFAULT_CATALOG_TOML, parse_catalog
from tests.support.prometheus import PrometheusServer
from tests.support.proxies import REPO, TOKEN, ProxyFactory, set_mode
from tests.support.servers import RedisServer
from tests.support.waiting import until
from tests.test_rollout import ACTOR, Live, finish, live, next_event, rollout, traffic

__all__ = ["live"]  # the fixture, shared with tests/test_rollout.py
FAST = ("--interval", "1s", "--min-requests", "5", "--json", "--timeout-s", "2")


async def mode_history(live: Live) -> list[dict[str, Any]]:
    return await live.history()


async def test_a_dead_prometheus_changes_nothing(live: Live) -> None:
    """Prometheus unreachable before the first change: exit 1, the mode and the history untouched (it used to set
    enforce 10 % first)."""
    before = await live.mode()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.stagectl", "rollout", "--endpoint", "create_deal", "--admin-url",
        live.run.admin_url, "--prometheus", "http://127.0.0.1:9", "--skip-gate", "--reason", "x", *FAST, cwd=REPO,
        env={**os.environ, "STAGE_OPS_TOKEN": TOKEN}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    code, events, err = await finish(proc)
    assert code == 1 and "cannot reach Prometheus" in err and "nothing was changed" in err, err
    assert events == [] and await live.mode() == before
    assert not [e for e in await mode_history(live) if str(e["actor"]).startswith("stagectl rollout")]


async def test_a_wrong_token_is_exit_3_and_changes_nothing(live: Live) -> None:
    """A refused token: 3, as for stagectl mode; nothing changed, no lease taken."""
    await live.scraped()
    before = await live.mode()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.stagectl", "rollout", "--endpoint", "create_deal", "--admin-url",
        live.run.admin_url, "--prometheus", live.prometheus.url, "--skip-gate", "--reason", "x", *FAST, cwd=REPO,
        env={**os.environ, "STAGE_OPS_TOKEN": "wrong"}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    code, _, err = await finish(proc)
    assert code == 3 and "401" in err
    assert await live.mode() == before


async def test_prometheus_killed_mid_step_stops_the_clock_then_goes_back_to_warn(live: Live) -> None:
    """Prometheus dies during a step: each failed check says so, the step's watched time stops; after
    --max-check-errors in a row the endpoint is back in warn, the reason naming the missing evidence; the last
    line names where it is left; exit 4."""
    async with traffic(live):
        proc = await rollout(live, "--steps", "10:60s,100", "--skip-gate", "--reason", "test", "--max-check-errors",
                             "3", *FAST)
        first = await next_event(proc, "progress")
        live.prometheus.stop()
        code, events, _ = await finish(proc, 90)
    assert code == 4
    failed = [e for e in events if e["event"] == "check_failed"]
    assert [e["consecutive"] for e in failed] == [1, 2, 3]
    assert all("cannot reach Prometheus" in e["detail"] and "clock is stopped" in e["detail"] for e in failed)
    # no unwatched time: any progress after the kill (a check that raced it) is within one interval of before
    assert all(e["elapsed_s"] <= first["elapsed_s"] + 2 for e in events if e["event"] == "progress")
    record = await live.mode()
    assert record["mode"] == "warn" and "no evidence for 3 checks in a row" in record["reason"]
    assert events[-2]["event"] == "aborted" and events[-1]["detail"] == "create_deal left at warn"


async def test_a_frozen_prometheus_is_missing_evidence_and_the_clock_resumes(live: Live) -> None:
    """SIGSTOP: queries time out (failed checks, the clock stops); SIGCONT: checks answer again and the step
    goes on from the watched time it had, not from the wall clock."""
    assert live.prometheus.proc is not None
    async with traffic(live):
        proc = await rollout(live, "--steps", "10:60s,100", "--skip-gate", "--reason", "test", *FAST)
        before = await next_event(proc, "progress")
        live.prometheus.proc.send_signal(signal.SIGSTOP)
        try:
            failed = await next_event(proc, "check_failed")
            await next_event(proc, "check_failed")
        finally:
            live.prometheus.proc.send_signal(signal.SIGCONT)
        after = await next_event(proc, "progress")
        proc.send_signal(signal.SIGTERM)
        code, _, _ = await finish(proc)
    assert "Prometheus" in failed["detail"] and code == 130
    # two failed checks (each at least the 2 s timeout) did not count: the watched time moved by about an interval
    assert after["elapsed_s"] - before["elapsed_s"] < 3.5, (before, after)


async def test_a_second_driver_refuses_at_once_and_the_first_goes_on(live: Live) -> None:
    """Two drivers on one endpoint: the second exits 2 naming the holder and since when; the first is undisturbed
    and its lease shows in GET /_ops/mode."""
    async with traffic(live):
        first = await rollout(live, "--steps", "10:60s,100", "--skip-gate", "--reason", "first", *FAST)
        await next_event(first, "progress")
        lease = (await live.mode())["rollout"]
        assert lease is not None and lease["holder"].startswith(f"{ACTOR}, pid ") and lease["percent"] == 10
        second = await rollout(live, "--steps", "10:60s,100", "--skip-gate", "--reason", "second", *FAST)
        code, events, err = await finish(second)
        assert code == 2 and "being driven by another rollout" in err and lease["since"] in err, err
        assert events == []
        await next_event(first, "progress")  # still driving
        first.send_signal(signal.SIGTERM)
        code, _, _ = await finish(first)
    assert code == 130
    assert (await live.mode())["rollout"] is None  # released on exit
    reasons = [e["reason"] for e in await mode_history(live) if e["actor"] == ACTOR and e["action"] == "mode"]
    assert reasons and all(r.endswith("— first") for r in reasons)  # the second changed nothing


async def test_a_killed_driver_lapses_and_the_next_continues_its_watched_time(live: Live) -> None:
    """SIGKILL: no release; the lease lapses three intervals later; the next driver resumes the step with the
    watched time the lease carried (never the wall time since the step began)."""
    async with traffic(live):
        first = await rollout(live, "--steps", "10:60s,100", "--skip-gate", "--reason", "test", *FAST)
        await next_event(first, "progress")
        await next_event(first, "progress")
        first.kill()
        await first.wait()
        refused = await rollout(live, "--steps", "10:60s,100", *FAST)
        code, _, err = await finish(refused)
        assert code == 2, err  # within three intervals: still held

        async def lapsed() -> bool:
            return (await live.mode())["rollout"] is None

        await until(lapsed, what="the killed driver's lease to lapse")
        second = await rollout(live, "--steps", "10:60s,100", *FAST)
        resumed = await next_event(second, "resume")
        second.send_signal(signal.SIGTERM)
        await finish(second)
    assert resumed["step"] == 1 and 0 < resumed["watched_s"] < 4


async def test_redis_killed_mid_step_downgrades_through_the_outage(make_proxy: ProxyFactory, own_redis: RedisServer,
                                                                  prefix: str, http: aiohttp.ClientSession,
                                                                  tmp_path: Path) -> None:
    """The mode store dies under a running canary: renewals fail (missing evidence), and the downgrade to warn
    still lands (a change towards safety needs no store)."""
    run = await make_proxy(redis_url=own_redis.url, redis_prefix=prefix)
    await set_mode(http, run, "create_deal", "warn")
    prometheus = PrometheusServer(tmp_path, scrape=[f"127.0.0.1:{run.admin.port}"])
    await asyncio.to_thread(prometheus.start)
    try:
        here = Live(run, prometheus, http)
        async with traffic(here):
            proc = await rollout(here, "--steps", "10:60s,100", "--skip-gate", "--reason", "test",
                                 "--max-check-errors", "2", *FAST)
            await next_event(proc, "progress")
            own_redis.kill()
            code, events, _ = await finish(proc, 90)
    finally:
        prometheus.stop()
    assert code == 4
    assert any(e["event"] == "check_failed" and "admin API" in e["detail"] for e in events)
    record = await here.mode()
    assert record["mode"] == "warn"
    async with http.get(f"{run.admin_url}/_ops/mode") as response:
        assert [p["mode"] for p in (await response.json())["pending_writes"]] == ["warn"]


async def test_replicas_on_two_catalogs_stop_gate_and_rollout(make_proxy: ProxyFactory, http: aiohttp.ClientSession,
                                                              tmp_path: Path) -> None:
    """One replica reloaded, one not: gate lists both versions and exits 4; rollout refuses to start, changing
    nothing."""
    signed = parse_catalog(DEFAULT_CATALOG_TOML.replace('won = "closed_won"',
                                                        'won = "closed_won"\nsigned = "closed_won"'))
    a = await make_proxy()
    b = await make_proxy(catalog=signed)
    for run in (a, b):
        await set_mode(http, run, "create_deal", "warn")
    prometheus = PrometheusServer(tmp_path, scrape=[f"127.0.0.1:{a.admin.port}", f"127.0.0.1:{b.admin.port}"])
    await asyncio.to_thread(prometheus.start)
    try:
        here = Live(a, prometheus, http)
        await here.scraped()

        async def both_scraped() -> bool:
            result = await here.query("count(stage_catalog_info == 1)")
            return bool(result and result[0]["value"][1] == "2")

        await until(both_scraped, interval_s=0.1, what="Prometheus to scrape both replicas")
        gate = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tools.stagectl", "gate", "--prometheus", prometheus.url, "--json", cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, _ = await gate.communicate()
        proc = await rollout(here, "--steps", "10:60s,100", "--skip-gate", "--reason", "x", *FAST)
        code, events, _ = await finish(proc)
    finally:
        prometheus.stop()
    body = orjson.loads(out)
    assert gate.returncode == 4 and len(body["catalog_versions"]) == 2
    assert code == 4 and events[-1]["event"] == "refused" and "2 catalog versions" in events[-1]["detail"]
    assert (await here.mode())["mode"] == "warn"
