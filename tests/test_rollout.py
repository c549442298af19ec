"""stagectl rollout against a real proxy, scraped every second by a real Prometheus, under live traffic."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.app.server import Running
from tests.support.prometheus import PrometheusServer
from tests.support.proxies import REPO, TOKEN, ProxyFactory, set_mode
from tests.support.waiting import until

FAST = ("--interval", "1s", "--min-requests", "20", "--json")


@dataclass
class Live:
    run: Running
    prometheus: PrometheusServer
    http: aiohttp.ClientSession

    async def mode(self) -> dict[str, Any]:
        async with self.http.get(f"{self.run.admin_url}/_ops/mode") as response:
            record: dict[str, Any] = (await response.json())["endpoints"]["create_deal"]
            return record

    async def query(self, promql: str) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.prometheus.url}/api/v1/query", params={"query": promql}) as response:
            result: list[dict[str, Any]] = (await response.json())["data"]["result"]
            return result

    async def scraped(self) -> None:
        """Wait until Prometheus holds the proxy's mode (its first scrapes)."""

        async def holds_mode() -> bool:
            return bool(await self.query('stage_mode{endpoint="create_deal",mode="warn"} == 1'))

        await until(holds_mode, interval_s=0.1, what="Prometheus to scrape the proxy")

    async def history(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.run.admin_url}/_ops/mode/history?limit=100") as response:
            return [e for e in (await response.json())["entries"] if e.get("endpoint") == "create_deal"]


@pytest.fixture
async def live(make_proxy: ProxyFactory, http: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[Live]:
    """A proxy with create_deal in warn, and a Prometheus scraping its /metrics every second."""
    run = await make_proxy()
    await set_mode(http, run, "create_deal", "warn")
    prometheus = PrometheusServer(tmp_path, scrape=[f"127.0.0.1:{run.admin.port}"])
    await asyncio.to_thread(prometheus.start)
    try:
        yield Live(run, prometheus, http)
    finally:
        prometheus.stop()


@asynccontextmanager
async def traffic(live: Live, unknown_every: int = 0) -> AsyncIterator[None]:
    """Requests to create_deal as fast as the loop allows; every Nth with an unknown stage."""
    stop = asyncio.Event()

    async def send() -> None:
        for n in itertools.count(1):
            if stop.is_set():
                return
            stage = "zzz-unknown" if unknown_every and n % unknown_every == 0 else "lead"
            async with live.http.post(f"{live.run.url}/api/v1/deals", json={"stage": stage}) as response:
                await response.read()
            await asyncio.sleep(0.002)  # the traffic's pace (leaves the loop to the proxy), not a wait for anything

    senders = [asyncio.create_task(send()) for _ in range(2)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*senders)


async def rollout(live: Live, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.stagectl", "rollout", "--endpoint", "create_deal", "--admin-url",
        live.run.admin_url, "--prometheus", live.prometheus.url, *args, cwd=REPO,
        env={**os.environ, "STAGE_OPS_TOKEN": TOKEN, "STAGE_ACTOR": "ci"}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)


ACTOR = "stagectl rollout (ci)"


def last_before_left(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The event that ended the run: every exit after a change adds one ``left`` line naming the mode left."""
    assert events[-1]["event"] == "left", events[-3:]
    return events[-2]


async def finish(proc: asyncio.subprocess.Process, timeout_s: float = 60) -> tuple[int, list[dict[str, Any]], str]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert "Traceback" not in err.decode(), err.decode()
    assert proc.returncode is not None
    return proc.returncode, events, err.decode()


async def next_event(proc: asyncio.subprocess.Process, kind: str) -> dict[str, Any]:
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, f"rollout ended before a {kind!r} event"
        event: dict[str, Any] = json.loads(line)
        if event["event"] == kind:
            return event


async def test_healthy_traffic_reaches_100(live: Live) -> None:
    """Every step sees enough enforced requests within limits: 10 % -> 50 % -> 100 %, exit 0."""
    async with traffic(live):
        proc = await rollout(live, "--steps", "10:3s,50:3s,100", "--skip-gate", "--reason", "test", *FAST)
        code, events, err = await finish(proc)
    assert code == 0, (events, err)
    assert (await live.mode())["mode"] == "enforce" and (await live.mode())["percent"] == 100
    steps = [e["percent"] for e in events if e["event"] == "step"]
    assert steps == [10, 50, 100]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all(e["enforced"] >= 0 and e["max_error_ratio"] == 0.001 for e in progress)
    assert any(e["state"] == "promoting" for e in progress)
    sets = [e for e in await live.history() if e["actor"] == ACTOR and e["action"] == "mode"]
    assert [e["percent"] for e in reversed(sets)] == [10, 50, 100]
    assert "gate skipped: test" in sets[-1]["reason"] and all(e["reason"].endswith("— test") for e in sets)
    assert events[-1] == {"event": "left", "endpoint": "create_deal", "detail": "create_deal left at enforce 100%",
                          "mode": "enforce", "percent": 100}


async def test_errors_at_the_first_step_go_back_to_warn(live: Live) -> None:
    """5 % unknown values: the enforce-error ratio passes its limit at 10 %, warn again with the figure, exit 4."""
    async with traffic(live, unknown_every=20):
        proc = await rollout(live, "--steps", "10:30s,50:3s,100", "--skip-gate", "--reason", "test", *FAST)
        code, events, _ = await finish(proc)
    assert code == 4
    record = await live.mode()
    assert record["mode"] == "warn" and "enforce-error ratio" in record["reason"] and "> 0.001" in record["reason"]
    assert last_before_left(events)["event"] == "aborted" and events[-1]["mode"] == "warn"


async def test_no_traffic_never_promotes(live: Live) -> None:
    """Without enforced requests a step waits past its time; past --max-wait: exit 3, the mode left at the step."""
    proc = await rollout(live, "--steps", "10:2s,100", "--max-wait", "3s", "--skip-gate", "--reason", "test", *FAST)
    code, events, _ = await finish(proc)
    assert code == 3
    assert any(e["event"] == "progress" and e["state"] == "waiting for traffic" for e in events)
    record = await live.mode()
    assert (record["mode"], record["percent"], record["updated_by"]) == ("enforce", 10, ACTOR)
    assert events[-1]["detail"] == "create_deal left at enforce 10%"


async def test_someone_elses_change_stops_the_driver(live: Live) -> None:
    """An operator changes the mode during a step: the driver stops, touches nothing, says who; exit 4."""
    async with traffic(live):
        proc = await rollout(live, "--steps", "10:60s,100", "--skip-gate", "--reason", "test", *FAST)
        await next_event(proc, "step")
        async with live.http.put(f"{live.run.admin_url}/_ops/mode", headers={"Authorization": f"Bearer {TOKEN}"},
                                 json={"endpoint": "create_deal", "mode": "enforce", "percent": 25, "reason": "mine",
                                       "actor": "alice"}) as response:
            assert response.status == 200
        code, events, _ = await finish(proc)
    stopped = last_before_left(events)
    assert code == 4 and stopped["event"] == "stopped" and stopped["by"] == "alice"
    assert events[-1]["detail"] == "create_deal left at enforce 25%"
    record = await live.mode()
    assert (record["percent"], record["updated_by"]) == (25, "alice")


async def test_interrupted_then_resumed_continues_the_same_step(live: Live) -> None:
    """SIGTERM mid-step leaves the mode (exit 130); a second run continues that step, not from scratch."""
    async with traffic(live):
        first = await rollout(live, "--steps", "10:6s,100", "--skip-gate", "--reason", "test", *FAST)
        await next_event(first, "progress")
        first.send_signal(signal.SIGTERM)
        code, _, _ = await finish(first)
        assert code == 130
        set_at = (await live.mode())["updated_at"]
        second = await rollout(live, "--steps", "10:6s,100", *FAST)  # no --skip-gate: resuming needs no gate
        code, events, err = await finish(second)
    assert code == 0, (events, err)
    assert events[0]["event"] == "resume" and events[0]["step"] == 1 and events[0]["since"] == set_at
    tens = [e for e in await live.history() if e["actor"] == ACTOR and e["action"] == "mode" and e["percent"] == 10]
    assert len(tens) == 1  # the 10 % step was set once, not again
    assert events[0]["watched_s"] > 0  # the watched time of the first driver counts, carried by its lease


async def test_the_gate_must_agree(live: Live) -> None:
    """Without --skip-gate: no week of good warn days in Prometheus, so the gate says in_warn; exit 3, unchanged."""
    await live.scraped()
    proc = await rollout(live, *FAST)
    code, events, _ = await finish(proc)
    assert code == 3 and events[-1]["event"] == "refused" and "in_warn" in events[-1]["detail"]
    assert (await live.mode())["mode"] == "warn"


@pytest.mark.parametrize(("steps", "fragment"), [
    ("50:1h,10:1h,100", "percents must rise"), ("0:1h,100", "above 0"), ("10:1h,150", "at most 100"),
    ("10:1x,100", "not a duration"), ("10:1h,50:2h", "last step must be 100"), ("10,100", "needs a duration"),
    ("ten:1h,100", "bad step"),
])
async def test_bad_steps_are_usage_errors(steps: str, fragment: str) -> None:
    """Bad --steps: exit 2 with one line, nothing contacted."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.stagectl", "rollout", "--endpoint", "create_deal", "--steps", steps,
        "--prometheus", "http://127.0.0.1:9", cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    code, _, err = await finish(proc)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err


async def test_unreachable_admin_is_exit_1(tmp_path: Path) -> None:
    """No proxy at --admin-url: one line, exit 1."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.stagectl", "rollout", "--endpoint", "create_deal", "--admin-url",
        "http://127.0.0.1:9", "--prometheus", "http://127.0.0.1:9", "--skip-gate", "--reason", "x", cwd=REPO,
        env={**os.environ, "STAGE_OPS_TOKEN": TOKEN}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    code, _, err = await finish(proc)
    assert code == 1 and "cannot reach" in err and len(err.strip().splitlines()) == 1
    with suppress(ProcessLookupError):
        proc.kill()
