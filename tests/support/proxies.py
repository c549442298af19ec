"""Proxies under test: in-process (settings for ``running``) or as real ``python -m proxy`` processes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from proxy.app.server import Running
from proxy.app.settings import HostPort, Settings
from proxy.shared.secrets import Secret
from tests.support.ports import free_port

TOKEN = "test-token-0123456789"
REPO = Path(__file__).resolve().parent.parent.parent
ProxyFactory = Callable[..., Awaitable[Running]]


def make_settings(upstream_url: str, **overrides: Any) -> Settings:
    base = Settings(
        upstream_url=upstream_url,
        listen=HostPort("127.0.0.1", 0),
        admin_listen=HostPort("127.0.0.1", 0),
        ops_token=Secret(TOKEN),
        refresh_ms=200,
        shutdown_timeout_s=1.0,
    )
    return dataclasses.replace(base, **overrides)


async def set_mode(http: aiohttp.ClientSession, run: Running, endpoint: str, mode: str,
                   percent: float | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"endpoint": endpoint, "mode": mode, "reason": "test"}
    if percent is not None:
        body["percent"] = percent
    async with http.put(f"{run.admin_url}/_ops/mode", json=body,
                        headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 200, await response.text()
        data: dict[str, Any] = await response.json()
        return data


def spawn_proxy(upstream_url: str, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes],
                                                                                             int, int]:
    """A real ``python -m proxy`` process; returns (process, main port, admin port)."""
    main, admin = free_port(), free_port()
    command = [sys.executable, "-m", "proxy", "--upstream", upstream_url, "--listen", f"127.0.0.1:{main}",
               "--admin-listen", f"127.0.0.1:{admin}", *args]
    full_env = {**os.environ, "STAGE_OPS_TOKEN": TOKEN, **(env or {})}
    proc = subprocess.Popen(command, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, main, admin
