"""stagectl mode get|set against a running proxy's admin API."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import orjson
import pytest

from proxy.app.server import Running
from tests.support.alerts import block_enforce
from tests.support.ports import free_port
from tests.support.proxies import REPO, TOKEN, ProxyFactory


async def stagectl(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", **({"STAGE_OPS_TOKEN": token} if token else {})}
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "tools.stagectl", *args], cwd=REPO,
                                   capture_output=True, text=True, timeout=30, env=env)


async def test_get_prints_a_table(proxy: Running) -> None:
    """mode get shows every endpoint, the source and the block state."""
    result = await stagectl("mode", "--admin-url", proxy.admin_url, "get")
    assert result.returncode == 0, result.stderr
    assert "create_deal" in result.stdout and "import_deals" in result.stdout
    assert "source: memory" in result.stdout


async def test_set_then_get_json(proxy: Running) -> None:
    """mode set changes the mode; --json output is the API's body."""
    result = await stagectl("mode", "--admin-url", proxy.admin_url, "--json", "set", "create_deal", "enforce",
                            "--percent", "10", "--reason", "canary 1", "--actor", "ci")
    assert result.returncode == 0, result.stderr
    body = orjson.loads(result.stdout)
    assert body["endpoints"]["create_deal"] == {**body["endpoints"]["create_deal"], "mode": "enforce",
                                                "percent": 10.0, "updated_by": "ci", "reason": "canary 1"}


@pytest.mark.parametrize(
    ("args", "token", "code", "fragment"),
    [(("set", "create_deal", "warn", "--reason", "x"), "wrong", 3, "401"),
     (("set", "create_deal", "warn", "--reason", "x"), None, 3, "STAGE_OPS_TOKEN is not set"),
     (("set", "nope", "warn", "--reason", "x"), TOKEN, 2, "'endpoint' must be"),
     (("set", "create_deal", "enforce", "--percent", "101", "--reason", "x"), TOKEN, 2, "--percent must be between"),
     (("set", "create_deal", "loud", "--reason", "x"), TOKEN, 2, "invalid choice"),
     (("set", "create_deal", "warn"), TOKEN, 2, "--reason")],
)
async def test_errors_are_one_line(proxy: Running, args: tuple[str, ...], token: str | None, code: int,
                                   fragment: str) -> None:
    """Wrong token, unknown endpoint, bad percent: one clear line and a meaningful exit code."""
    result = await stagectl("mode", "--admin-url", proxy.admin_url, *args, token=token)
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stagectl: error:") and fragment in lines[0], lines


async def test_unreachable_admin_url() -> None:
    """An admin URL nobody listens on exits 1 with one line."""
    result = await stagectl("mode", "--admin-url", f"http://127.0.0.1:{free_port()}", "get")
    assert result.returncode == 1
    assert result.stderr.startswith("stagectl: error: cannot reach") and "Traceback" not in result.stderr


async def test_blocked_enforce_has_its_own_exit_code(make_proxy: ProxyFactory) -> None:
    """409 (enforce blocked) exits 4; --force goes through."""
    run = await make_proxy()
    async with aiohttp.ClientSession() as http:
        await block_enforce(http, run)
    result = await stagectl("mode", "--admin-url", run.admin_url, "set", "*", "enforce", "--reason", "go")
    assert result.returncode == 4, result.stderr
    result = await stagectl("mode", "--admin-url", run.admin_url, "set", "*", "enforce", "--reason", "go", "--force")
    assert result.returncode == 0, result.stderr
