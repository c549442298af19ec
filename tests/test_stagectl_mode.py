"""stagectl mode get|set against a running proxy's admin API."""

from __future__ import annotations

import asyncio
import os
import pty
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
                                                "percent": 10.0, "updated_by": "stagectl mode set (ci)",
                                                "reason": "canary 1"}


@pytest.mark.parametrize(
    ("args", "token", "code", "fragment"),
    [(("set", "create_deal", "warn", "--reason", "x"), "wrong", 3, "401"),
     (("set", "create_deal", "warn", "--reason", "x"), None, 3, "STAGE_OPS_TOKEN is not set"),
     (("set", "nope", "warn", "--reason", "x"), TOKEN, 2, "unknown endpoint 'nope'"),
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
    """An alert with an endpoint label blocks that endpoint only: 409 exits 4 and names the alert and --force;
    another endpoint goes to enforce; --force goes through."""
    run = await make_proxy()
    async with aiohttp.ClientSession() as http:
        await block_enforce(http, run, endpoint="create_deal")
    result = await stagectl("mode", "--admin-url", run.admin_url, "set", "create_deal", "enforce", "--percent", "10",
                            "--reason", "go")
    assert result.returncode == 4, result.stderr
    assert "StageUnknownHighInWarn (create_deal)" in result.stderr and "--force" in result.stderr
    result = await stagectl("mode", "--admin-url", run.admin_url, "set", "update_deal", "enforce", "--percent", "10",
                            "--reason", "go")
    assert result.returncode == 0, result.stderr
    result = await stagectl("mode", "--admin-url", run.admin_url, "set", "create_deal", "enforce", "--percent", "10",
                            "--reason", "go", "--force")
    assert result.returncode == 0, result.stderr
    result = await stagectl("mode", "--admin-url", run.admin_url, "get")
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "StageUnknownHighInWarn" in rows["create_deal"] and "StageUnknownHighInWarn" not in rows["update_deal"]


async def _modes(run: Running) -> dict[str, tuple[str, float]]:
    async with aiohttp.ClientSession() as http, http.get(f"{run.admin_url}/_ops/mode") as response:
        body = await response.json()
    return {name: (r["mode"], r["percent"]) for name, r in body["endpoints"].items()}


@pytest.mark.parametrize("args", [("*", "enforce", "--percent", "10"), ("create_deal", "enforce"),
                                  ("create_deal", "enforce", "--percent", "100")])
async def test_the_big_switch_needs_yes_off_a_terminal(proxy: Running, args: tuple[str, ...]) -> None:
    """Every endpoint at once, or one straight to 100 %: exit 2 and nothing changed without --yes; with it, done."""
    before = await _modes(proxy)
    result = await stagectl("mode", "--admin-url", proxy.admin_url, "set", *args, "--reason", "go")
    assert result.returncode == 2 and "pass --yes to confirm" in result.stderr, result.stderr
    assert await _modes(proxy) == before
    result = await stagectl("mode", "--admin-url", proxy.admin_url, "set", *args, "--reason", "go", "--yes")
    assert result.returncode == 0, result.stderr
    assert (await _modes(proxy))["create_deal"][0] == "enforce"


async def test_a_canary_step_needs_no_confirmation(proxy: Running) -> None:
    """One endpoint at 10 %, or 100 % on an endpoint already enforcing: no --yes needed."""
    for percent in ("10", "100"):
        result = await stagectl("mode", "--admin-url", proxy.admin_url, "set", "create_deal", "enforce", "--percent",
                                percent, "--reason", "step")
        assert result.returncode == 0, result.stderr
    assert (await _modes(proxy))["create_deal"] == ("enforce", 100.0)


def _on_a_terminal(args: list[str], answer: bytes) -> tuple[int, str]:
    """Run stagectl with a pseudo-terminal as stdin, stdout and stderr; type ``answer`` at the prompt."""
    primary, secondary = pty.openpty()
    env = {"PATH": "/usr/bin:/bin", "STAGE_OPS_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "tools.stagectl", *args], cwd=REPO, env=env, stdin=secondary,
                            stdout=secondary, stderr=secondary)
    os.close(secondary)
    output = b""
    while b"Type yes" not in output:
        chunk = os.read(primary, 4096)
        assert chunk, output
        output += chunk
    os.write(primary, answer)
    code = proc.wait(30)
    while True:  # the rest, until the terminal reports the other side closed
        try:
            chunk = os.read(primary, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(primary)
    return code, output.decode()


@pytest.mark.parametrize(("answer", "code", "mode"), [(b"no\n", 2, "off"), (b"\x04", 2, "off"),
                                                     (b"yes\n", 0, "enforce")])
async def test_the_big_switch_asks_on_a_terminal(proxy: Running, answer: bytes, code: int, mode: str) -> None:
    """On a terminal the command says what it is about to do and waits for 'yes'."""
    args = ["mode", "--admin-url", proxy.admin_url, "set", "*", "enforce", "--reason", "all at once"]
    got, output = await asyncio.to_thread(_on_a_terminal, args, answer)
    assert got == code, output
    assert "every endpoint at once" in output
    assert {m for m, _ in (await _modes(proxy)).values()} == {mode}


async def test_dry_run_prints_the_diff_and_changes_nothing(proxy: Running) -> None:
    """--dry-run: the modes now and after as a diff; no token needed, nothing changed."""
    before = await _modes(proxy)
    result = await stagectl("mode", "--admin-url", proxy.admin_url, "set", "*", "enforce", "--percent", "10",
                            "--reason", "x", "--dry-run", token=None)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["--- modes now", "+++ modes after"]
    assert "- create_deal   off" in lines and "+ create_deal   enforce 10%" in lines
    assert lines[-1] == "(dry run: nothing changed)"
    assert await _modes(proxy) == before
    result = await stagectl("mode", "--admin-url", proxy.admin_url, "set", "update_deal", "warn", "--reason", "x",
                            "--dry-run", token=None)
    assert "  create_deal   off" in result.stdout.splitlines() and "+ update_deal   warn" in result.stdout


async def test_history_filters_by_endpoint(proxy: Running) -> None:
    """mode history --endpoint shows that endpoint's entries (and those about all of them), newest first."""
    for endpoint, mode in [("create_deal", "warn"), ("update_deal", "warn"), ("create_deal", "off")]:
        result = await stagectl("mode", "--admin-url", proxy.admin_url, "set", endpoint, mode, "--reason",
                                f"{endpoint} {mode}")
        assert result.returncode == 0, result.stderr
    result = await stagectl("mode", "history", "--admin-url", proxy.admin_url, "--endpoint", "create_deal")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["AT", "ENDPOINT", "CHANGE", "BY", "REASON"]
    assert "warn -> off" in lines[1] and "create_deal off" in lines[1]
    assert "off -> warn" in lines[2] and all("update_deal" not in line for line in lines)
    result = await stagectl("mode", "history", "--admin-url", proxy.admin_url, "--limit", "1", "--json")
    entries = orjson.loads(result.stdout)["entries"]
    assert len(entries) == 1 and entries[0]["endpoint"] == "create_deal" and entries[0]["to"] == "off"
    result = await stagectl("mode", "history", "--admin-url", proxy.admin_url, "--endpoint", "nope")
    assert result.returncode == 2 and "'endpoint' must be one of" in result.stderr


async def test_blocks_list_and_clear_a_lost_resolve(proxy: Running) -> None:
    """A block whose resolve never came: listed with its fingerprint, cleared with a reason (in the history);
    clearing it twice is a clear 'no such block'."""
    async with aiohttp.ClientSession() as http:
        await block_enforce(http, proxy, endpoint="create_deal")
    result = await stagectl("blocks", "list", "--admin-url", proxy.admin_url)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["FINGERPRINT", "ALERT", "ENDPOINT", "SINCE"]
    assert row.split()[:3] == ["fp-StageUnknownHighInWarn", "StageUnknownHighInWarn", "create_deal"]
    result = await stagectl("blocks", "clear", "fp-StageUnknownHighInWarn", "--admin-url", proxy.admin_url,
                            "--reason", "resolve lost in AM restart", "--actor", "oncall")
    assert result.returncode == 0, result.stderr
    assert "cleared fp-StageUnknownHighInWarn" in result.stdout and "blocked somewhere: no" in result.stdout
    result = await stagectl("blocks", "list", "--admin-url", proxy.admin_url, "--json")
    assert orjson.loads(result.stdout) == {"enforce_blocked": False, "blocks": []}
    result = await stagectl("mode", "history", "--admin-url", proxy.admin_url, "--limit", "1")
    assert "unblocked: StageUnknownHighInWarn" in result.stdout and "resolve lost in AM restart" in result.stdout
    assert "stagectl blocks clear (oncall) (api)" in result.stdout
    result = await stagectl("blocks", "clear", "fp-StageUnknownHighInWarn", "--admin-url", proxy.admin_url,
                            "--reason", "again")
    assert result.returncode == 2 and "no enforce block has fingerprint" in result.stderr
    result = await stagectl("blocks", "clear", "fp-x", "--admin-url", proxy.admin_url, "--reason", "x",
                            token="wrong")
    assert result.returncode == 3
