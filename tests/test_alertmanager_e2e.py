"""End to end with a real Alertmanager running the repository's config, pointed at a live proxy.

The config is used as written except for the deployment-specific webhook URL and
token file, and its timers are shortened (group_wait/group_interval 1 s,
repeat_interval 2 s) so a re-sent notification arrives within the test.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.app.server import Running
from tests.support.ports import free_port, wait_for_port
from tests.support.proxies import REPO, TOKEN, set_mode
from tests.support.waiting import until

CONFIG = REPO / "observability" / "alertmanager" / "alertmanager.yml"


def am_config(tmp: Path, admin_url: str) -> Path:
    token = tmp / "ops-token"
    token.write_text(TOKEN + "\n")
    text = CONFIG.read_text()
    for old, new in (("http://127.0.0.1:9901", admin_url), ("/etc/stagegate/ops-token", str(token)),
                     ("group_wait: 10s", "group_wait: 1s"), ("group_interval: 30s", "group_interval: 1s"),
                     ("group_interval: 1m", "group_interval: 1s"), ("repeat_interval: 15m", "repeat_interval: 2s")):
        assert old in text, old
        text = text.replace(old, new)
    path = tmp / "alertmanager.yml"
    path.write_text(text)
    return path


@pytest.fixture
async def alertmanager(proxy: Running, tmp_path: Path) -> AsyncIterator[str]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        raise RuntimeError("prometheus-alertmanager is not installed: scripts/test installs it")
    port = free_port()
    with open(tmp_path / "alertmanager.log", "wb") as log:
        proc = subprocess.Popen([binary, f"--config.file={am_config(tmp_path, proxy.admin_url)}",
                                 f"--storage.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                 "--cluster.listen-address=", "--log.level=warn"], stdout=log, stderr=log)
    try:
        await asyncio.to_thread(wait_for_port, port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def post_alert(http: aiohttp.ClientSession, am: str, labels: dict[str, str], *, resolved: bool = False) -> None:
    now = datetime.now(UTC)
    ends = now - timedelta(seconds=1) if resolved else now + timedelta(hours=1)
    alert = {"labels": labels, "annotations": {"summary": "test"}, "startsAt": (now - timedelta(minutes=5)).isoformat(),
             "endsAt": ends.isoformat()}
    async with http.post(f"{am}/api/v2/alerts", json=[alert]) as response:
        assert response.status == 200, await response.text()


async def mode_view(http: aiohttp.ClientSession, run: Running) -> dict[str, Any]:
    async with http.get(f"{run.admin_url}/_ops/mode") as response:
        data: dict[str, Any] = await response.json()
        return data


async def history(http: aiohttp.ClientSession, run: Running) -> list[dict[str, Any]]:
    async with http.get(f"{run.admin_url}/_ops/mode/history") as response:
        assert response.status == 200
        entries: list[dict[str, Any]] = (await response.json())["entries"]
        return entries


def notifications(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if getattr(r, "event", None) == "alertmanager_notification")


async def test_error_spike_downgrades_to_warn(proxy: Running, alertmanager: str, http: aiohttp.ClientSession,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """A firing StageEnforceErrorSpike puts the endpoint back to warn, once, recorded in history."""
    caplog.set_level(logging.INFO)
    await set_mode(http, proxy, "create_deal", "enforce")
    await set_mode(http, proxy, "update_deal", "enforce")
    labels = {"alertname": "StageEnforceErrorSpike", "stage_action": "downgrade", "endpoint": "create_deal",
              "severity": "page"}
    await post_alert(http, alertmanager, labels)

    async def downgraded() -> bool:
        return bool((await mode_view(http, proxy))["endpoints"]["create_deal"]["mode"] == "warn")

    await until(downgraded, timeout_s=15, what="the alert to downgrade create_deal")
    view = await mode_view(http, proxy)
    assert view["endpoints"]["update_deal"]["mode"] == "enforce"  # only the endpoint the alert names
    async with http.post(f"{proxy.url}/api/v1/deals", json={"stage": "nope"}) as response:
        assert response.status == 200  # an unknown value now passes
        assert response.headers["X-Stage-Validation"] == "mode=warn; result=unknown"
    entries = [e for e in await history(http, proxy) if e["source"] == "alertmanager"]
    assert len(entries) == 1
    entry = entries[0]
    assert (entry["endpoint"], entry["from"], entry["to"], entry["alertname"]) == (
        "create_deal", "enforce", "warn", "StageEnforceErrorSpike")
    assert entry["group_key"]
    first = notifications(caplog)

    async def resent() -> bool:
        return notifications(caplog) > first

    await until(resent, timeout_s=15, what="repeat_interval to re-send the same notification")
    assert [e for e in await history(http, proxy) if e["source"] == "alertmanager"] == entries  # nothing new


async def test_block_enforce_fires_then_resolves(proxy: Running, alertmanager: str,
                                                 http: aiohttp.ClientSession) -> None:
    """block_enforce firing blocks PUT enforce (409); resolved lifts the block; nothing is re-upgraded."""
    labels = {"alertname": "StageUnknownHighInWarn", "stage_action": "block_enforce", "endpoint": "import_deals",
              "severity": "ticket"}
    await set_mode(http, proxy, "import_deals", "warn")
    await post_alert(http, alertmanager, labels)

    async def blocked() -> bool:
        return bool((await mode_view(http, proxy))["enforce_blocked"])

    await until(blocked, timeout_s=15, what="the alert to block enforce")
    put = {"endpoint": "import_deals", "mode": "enforce", "reason": "try"}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with http.put(f"{proxy.admin_url}/_ops/mode", json=put, headers=auth) as response:
        assert response.status == 409
        assert "StageUnknownHighInWarn" in (await response.json())["detail"]
    await post_alert(http, alertmanager, labels, resolved=True)

    async def unblocked() -> bool:
        return not (await mode_view(http, proxy))["enforce_blocked"]

    await until(unblocked, timeout_s=15, what="the resolved alert to lift the block")
    assert (await mode_view(http, proxy))["endpoints"]["import_deals"]["mode"] == "warn"  # not re-upgraded
    actions = [e["action"] for e in await history(http, proxy) if e["source"] == "alertmanager"]
    assert actions == ["unblock_enforce", "block_enforce"]  # newest first
    async with http.put(f"{proxy.admin_url}/_ops/mode", json=put, headers=auth) as response:
        assert response.status == 200
