"""What the proxy says when it starts: one `started` line (where it listens, what it runs with, no credentials)
and a loud `upstream_unreachable` when --upstream does not answer — serving anyway, readyz saying why."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from typing import Any

import aiohttp
import orjson

from tests.support.ports import free_port, wait_for_port
from tests.support.proxies import REPO, spawn_proxy
from tests.support.upstreams import Upstream
from tests.support.waiting import output_line


def _event(line: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _is(name: str) -> Any:
    return lambda line: (_event(line) or {}).get("event") == name


def _stop(proc: subprocess.Popen[bytes]) -> bytes:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return out


async def test_the_started_line_names_everything_and_no_credential(upstream: Upstream,
                                                                   http: aiohttp.ClientSession) -> None:
    dead_redis = free_port()
    proc, main, admin = spawn_proxy(upstream.url, "--redis-url", f"redis://:s3cret-pw@127.0.0.1:{dead_redis}/0",
                                    "--redis-prefix", "x:")
    try:
        assert proc.stdout is not None
        seen = await output_line(proc.stdout, _is("started"), what="the started line")
        started = orjson.loads(seen[-1])
        await asyncio.to_thread(wait_for_port, admin)
        async with http.get(f"http://127.0.0.1:{admin}/_ops/readyz") as response:
            ready = await response.json()
    finally:
        out = b"".join(seen) + _stop(proc)
    assert started["level"] == "INFO"
    assert (started["listen"], started["admin_listen"]) == (f"127.0.0.1:{main}", f"127.0.0.1:{admin}")
    assert started["upstream"] == upstream.url and started["catalog"] == "built-in"
    assert re.fullmatch(r"[0-9a-f]{12}", started["catalog_version"]) and started["workers"] == 1
    assert started["mode_store"] == f"redis redis://:**********@127.0.0.1:{dead_redis}/0 prefix x:"
    assert b"s3cret-pw" not in out
    assert ready["upstream"]["ok"] is True
    assert not any(_is("upstream_unreachable")(line) for line in out.splitlines())


async def test_a_dead_upstream_is_loud_at_start_and_the_proxy_serves_anyway(http: aiohttp.ClientSession) -> None:
    dead = free_port()
    proc, main, admin = spawn_proxy(f"http://127.0.0.1:{dead}")
    try:
        assert proc.stdout is not None
        seen = await output_line(proc.stdout, _is("upstream_unreachable"), what="the upstream_unreachable WARN")
        warning = orjson.loads(seen[-1])
        assert any(_is("started")(line) for line in seen)  # started first, then the check
        assert warning["level"] == "WARN" and warning["upstream"] == f"http://127.0.0.1:{dead}"
        assert warning["error"] and warning["path"] == "/"
        async with http.get(f"http://127.0.0.1:{admin}/_ops/readyz") as response:
            assert response.status == 503
            assert (await response.json())["upstream"]["ok"] is False
        async with http.post(f"http://127.0.0.1:{main}/api/v1/deals", json={"stage": "lead"}) as response:
            assert response.status == 502
        assert proc.poll() is None
    finally:
        _stop(proc)


async def test_the_demo_says_its_upstream_is_embedded() -> None:
    main, admin = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--demo", "--listen", f"127.0.0.1:{main}",
                             "--admin-listen", f"127.0.0.1:{admin}"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        assert proc.stdout is not None
        seen = await output_line(proc.stdout, _is("started"), what="the started line")
        started = orjson.loads(seen[-1])
        assert started["upstream"].endswith("(embedded demo service)") and started["mode_store"] == "memory"
    finally:
        _stop(proc)


async def test_the_demo_hints_work_pasted_into_another_terminal(tmp_path: Any) -> None:
    """scripts/demo's banner: each curl line, run by a shell without the demo's environment (no STAGE_OPS_TOKEN),
    does what it says — the mode change answers 200, not 401."""
    main, admin = free_port(), free_port()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "STAGE_LISTEN": f"127.0.0.1:{main}"}
    proc = subprocess.Popen(["bash", "scripts/demo", "--admin-listen", f"127.0.0.1:{admin}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        banner = b"".join(await output_line(proc.stderr, lambda line: b"stage_validation_total" in line,
                                            what="the demo's banner", timeout_s=180)).decode()
        commands = [line.strip().rstrip("\\").strip() for line in banner.splitlines()]
        put = next(i for i, line in enumerate(commands) if line.startswith("curl -s -X PUT"))
        change = commands[put] + " " + commands[put + 1]  # the line and its continuation
        assert "$(cat " in change and "demo-token" not in change  # the token is read, never printed
        result = await asyncio.to_thread(subprocess.run, ["bash", "-c", f"{change} -w '\\n%{{http_code}}'"],
                                         env={"PATH": os.environ["PATH"]}, cwd=tmp_path, capture_output=True,
                                         text=True, timeout=30)
        assert result.stdout.rstrip().endswith("200"), result.stdout + result.stderr
        assert '"mode":"enforce"' in result.stdout.replace(" ", "")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
