"""Every stagectl command, fed broken input: one line naming the problem and exit 1 (a service) or 2 (usage) —
never a traceback, never an 'internal error'. The list of commands comes from the parser, so a new command
without cases here fails the test. And a reader that goes away (`stagectl mode get | head`) is not an error."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest

from proxy.app.server import Running
from tests.support.ports import free_port
from tests.support.proxies import REPO, TOKEN, ProxyFactory
from tools.stagectl import build_parser

REPORT = -1  # the command answers with its report (a table naming what failed), not one error line

# (arguments, exit code, a fragment of the error). Placeholders: {dsn} a live, empty database; {dead} a closed
# port; {tmp} a scratch directory holding bad.toml (not TOML), bad.log (not a log) and an empty dir/.
CASES: dict[str, list[tuple[str, int, str]]] = {
    "mode get": [("mode get --admin-url http://127.0.0.1:{dead}", 1, "connection refused"),
                 ("mode get --admin-url ftp://x", 2, "must be an http"),
                 ("mode get --json --admin-url http://u:pw-1@127.0.0.1:{dead}", 1, "cannot reach"),
                 ("mode --timeout-s -1 get", 2, "--timeout-s must be positive")],
    "mode set": [("mode set create_deal enforce --percent 500 --reason x", 2, "--percent must be between"),
                 ("mode set create_deal sideways --reason x", 2, "invalid choice"),
                 ("mode set create_deal warn", 2, "--reason"),
                 ("mode set create_deal warn --reason x --admin-url http://127.0.0.1:{dead}", 3, "STAGE_OPS_TOKEN")],
    "mode history": [("mode history --limit 0", 2, "--limit must be between 1 and 1000"),
                     ("mode history --admin-url http://127.0.0.1:{dead}", 1, "connection refused")],
    "blocks list": [("blocks list --admin-url http://127.0.0.1:{dead}", 1, "connection refused"),
                    ("blocks --timeout-s 0 list", 2, "--timeout-s must be positive")],
    "blocks clear": [("blocks clear fp-1", 2, "--reason"),
                     ("blocks clear fp-1 --reason x --admin-url http://127.0.0.1:{dead}", 3, "STAGE_OPS_TOKEN")],
    "exempt add": [("exempt add --consumer p --endpoint '*' --for 31d --reason x", 2, "at most 30 days ahead"),
                   ("exempt add --consumer p --endpoint '*' --reason x", 2, "--for DURATION (e.g. 14d) or --until"),
                   ("exempt add --endpoint '*' --for 1d --reason x", 2, "exactly one of --consumer NAME and"),
                   ("exempt add --consumer p --endpoint '*' --for 1d", 2, "--reason"),
                   ("exempt add --consumer p --for 1d --reason x", 2, "--endpoint"),
                   ("exempt add --consumer p --endpoint '*' --for 1d --reason x --admin-url http://127.0.0.1:{dead}",
                    3, "STAGE_OPS_TOKEN")],
    "exempt list": [("exempt list --admin-url http://127.0.0.1:{dead}", 1, "connection refused"),
                    ("exempt --timeout-s 0 list", 2, "--timeout-s must be positive")],
    "exempt remove": [("exempt remove ex-1", 2, "--reason"),
                      ("exempt remove ex-1 --reason x --admin-url http://127.0.0.1:{dead}", 3, "STAGE_OPS_TOKEN")],
    "catalog check": [("catalog check {tmp}/missing.toml", 2, "No such file"),
                      ("catalog check {tmp}/dir", 2, "Is a directory"),
                      ("catalog check {tmp}/bad.toml", 2, "1 problem(s); the proxy would refuse it"),
                      ("catalog check {tmp}/bad.toml --against {tmp}/missing.toml", 2, "1 problem(s)")],
    "catalog show": [("catalog show --config {tmp}/bad.toml", 2, "not valid TOML"),
                     ("catalog show --config {tmp}/bad.toml --admin-url http://x", 2, "exclude each other"),
                     ("catalog show --admin-url http://127.0.0.1:{dead}", 1, "connection refused")],
    "catalog reload": [("catalog reload --admin-url ftp://x", 2, "must be an http"),
                       ("catalog reload", 3, "STAGE_OPS_TOKEN is not set")],
    "offenders": [("offenders {tmp}/missing.log", 2, "No such file"), ("offenders {tmp}/dir", 2, "Is a directory"),
                  ("offenders {tmp}/bad.log --top -1", 2, "--top must be at least 1"),
                  ("offenders {tmp}/bad.log --since yesterday", 2, "--since: 'yesterday' is not a duration"),
                  ("offenders {tmp}/bad.log --since 24", 2, "a number needs a unit"),
                  ("offenders {tmp}/bad.log --result missing", 2, "--result 'missing': the proxy logs"),
                  ("offenders {tmp}/bad.log --min-count 0", 2, "--min-count must be at least 1"),
                  ("offenders {tmp}/bad.log --suggest-aliases --admin-url http://127.0.0.1:9", 1, "cannot reach"),
                  ("offenders {tmp}/bad.log --suggest-aliases --config {tmp}/bad.toml", 2, "not valid TOML")],
    "seed-db": [("seed-db --dsn mysql://x", 2, "must be a postgresql:// URL"),
                ("seed-db --dsn postgresql://u:pw-1@127.0.0.1:{dead}/x", 1, "cannot connect"),
                ("seed-db --dsn postgresql://u:pw-1@127.0.0.1:notaport/x", 2, "Port"),
                ("seed-db --table x;drop --dsn {dsn}", 2, "is not a table name"),
                ("seed-db --rows -1 --dsn {dsn}", 2, "--rows must be 0 or more")],
    "migrate": [("migrate --dsn {dsn} --table nope", 2, "does not exist"),
                ("migrate --dsn {dsn} --batch-size -1", 2, "must be positive"),
                ("migrate --dsn {dsn} --config {tmp}/missing.toml", 2, "cannot read"),
                ("migrate --dsn {dsn} --config {tmp}/bad.toml", 2, "not valid TOML"),
                ("migrate --dsn {dsn} --column 'a b'", 2, "is not a column name"),
                ("migrate --dsn {dsn} --resume --resume-from 3", 2, "exclude each other"),
                ("migrate --dsn {dsn} --parallel 0", 2, "--parallel must be at least 1"),
                ("migrate --dsn {dsn} --max-replica-lag-ms -5", 2, "--max-replica-lag-ms must be 0 or more")],
    "migrate status": [("migrate status --dsn {dsn} --limit 0", 2, "--limit must be at least 1"),
                       ("migrate status --dsn postgresql://127.0.0.1:{dead}/x", 1, "cannot connect")],
    "migrate verify": [("migrate verify --dsn {dsn}", 2, "table 'deals' does not exist")],
    "migrate abandon": [("migrate abandon --dsn {dsn} --run 4", 2, "no migration has run"),
                        ("migrate abandon --run x", 2, "invalid int value")],
    "migrate pause": [("migrate pause --dsn {dsn} --run 4", 2, "no migration has run"),
                      ("migrate pause --run x", 2, "invalid int value"), ("migrate pause --dsn {dsn}", 2, "--run")],
    "migrate resume": [("migrate resume --dsn {dsn} --run 4", 2, "no migration has run"),
                       ("migrate resume --dsn postgresql://127.0.0.1:{dead}/x --run 1", 1, "cannot connect")],
    "migrate revert": [("migrate revert --dsn {dsn} --run -3", 2, "no migration has run"),
                       ("migrate revert --dsn {dsn}", 2, "--run")],
    "backup": [("backup --out /proc/nope --dsn {dsn}", 2, "cannot create the directory"),
               ("backup --out {tmp}/b --keep 0 --dsn {dsn}", 2, "--keep must be at least 1"),
               ("backup --out {tmp}/b --dsn postgresql://u:pw-1@127.0.0.1:{dead}/x", 1, "pg_dump"),
               ("backup --out {tmp}/b --format zip --dsn {dsn}", 2, "invalid choice")],
    "verify-backup": [("verify-backup {tmp}/missing", 2, "is not a directory"),
                      ("verify-backup {tmp}/bad.log", 2, "is not a directory")],
    "test-restore": [("test-restore {tmp}/missing.sql --dsn {dsn}", 2, "does not exist"),
                     ("test-restore {tmp}/dir --dsn {dsn}", 2, "is not a file"),
                     ("test-restore {tmp}/bad.log --budget -1 --dsn {dsn}", 2, "--budget must be positive"),
                     ("test-restore {tmp}/bad.log --dsn postgresql://127.0.0.1:{dead}/x", 1, "cannot connect")],
    "audit-consumers": [("audit-consumers {tmp}/missing.log", 2, "No such file"),
                        ("audit-consumers {tmp}/bad.log --internal-cidr 10.0.0.0/99", 2, "--internal-cidr"),
                        ("audit-consumers {tmp}/bad.log --classifications {tmp}/bad.toml", 2, "not valid TOML"),
                        ("audit-consumers {tmp}/bad.log --record", 2, "--record needs --classifications")],
    "redis-latency": [("redis-latency --redis-url http://x", 2, "must be a redis://"),
                      ("redis-latency --redis-url redis://127.0.0.1:{dead}/0", 1, "unreachable"),
                      ("redis-latency --redis-url redis://:pw-1@h:notaport/0", 2, "Port"),
                      ("redis-latency --samples -1 --redis-url redis://127.0.0.1:{dead}/0", 2, "must be positive"),
                      ("redis-latency", 2, "no Redis")],
    "preflight": [("preflight --logs {tmp}/missing.log", REPORT, "cannot read"),
                  ("preflight --samples -1", 2, "must be positive"),
                  ("preflight --dsn mysql://x --redis-url http://x --admin-url ftp://x --backup-dir {tmp}/missing",
                   REPORT, "FAIL"),
                  ("preflight --fallback-drill", 2, "the drill needs the proxy"),
                  ("preflight --fallback-drill --admin-url ftp://x", 2, "must be an http")],
    "drill redis-fallback": [("drill redis-fallback", 2, "pass --admin-url"),
                             ("drill redis-fallback --admin-url http://127.0.0.1:{dead}", 1, "connection refused"),
                             ("drill redis-fallback --admin-url http://x --drill-timeout 0", 2, "must be positive")],
    "gate": [("gate --prometheus http://127.0.0.1:{dead}", 1, "connection refused"),
             ("gate --prometheus ftp://x", 2, "must be an http"),
             ("gate --at garbage", 2, "is not an instant"),
             ("gate --lookback=-1d --prometheus http://x", 2, "--lookback"),
             ("gate --good-days -1 --prometheus http://x", 2, "--good-days"),
             ("gate --endpoint nope --prometheus http://x", 2, "unknown endpoint")],
    "rollout": [("rollout --endpoint create_deal --steps 50,10", 2, "percents must rise"),
                ("rollout --endpoint create_deal --steps 0,100", 2, "--steps"),
                ("rollout --endpoint create_deal --steps 10:forever,100", 2, "--steps"),
                ("rollout --endpoint nope --prometheus http://x", 2, "unknown endpoint"),
                ("rollout --endpoint create_deal --interval=-1s", 2, "--interval"),
                ("rollout --endpoint create_deal --skip-gate", 2, "--reason"),
                ("rollout --endpoint create_deal --prometheus http://x", 2, "STAGE_OPS_TOKEN is not set")],
    "normalize": [("normalize --dsn mysql://x --backup-dir {tmp}/n", 2, "must be a postgresql:// URL"),
                  ("normalize --dsn {dsn} --backup-dir {tmp}/n --restore-budget -1", 2, "--restore-budget"),
                  ("normalize --dsn {dsn} --backup-dir /proc/nope", REPORT, "cannot create the directory")],
}


def leaf_commands(parser: argparse.ArgumentParser, prefix: str = "", inherited: bool = False) -> list[str]:
    """Every runnable command path: one with a handler (its own or its parent's) that needs no subcommand."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = f"{prefix} {name}".strip()
                handled = inherited or sub.get_default("handler") is not None
                if handled and not _requires_subcommand(sub):
                    found.append(path)
                found += leaf_commands(sub, path, handled)
    return found


def _requires_subcommand(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) and a.required for a in parser._actions)


def test_every_command_has_broken_input_cases() -> None:
    assert sorted(leaf_commands(build_parser())) == sorted(CASES)


def _run(line: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.stagectl", *shlex.split(line)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


async def test_broken_input_is_one_line_never_a_traceback(database: str, tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("garbage [\n")
    (tmp_path / "bad.log").write_text('{"x":\n')
    (tmp_path / "dir").mkdir()
    values = {"dsn": database, "dead": str(free_port()), "tmp": str(tmp_path)}
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no DATABASE_URL, STAGE_* or token from the caller
    cases = [(command, line.format(**values), code, fragment) for command, entries in CASES.items()
             for line, code, fragment in entries]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = await asyncio.gather(*(asyncio.get_running_loop().run_in_executor(pool, _run, line, env)
                                         for _, line, _, _ in cases))
    problems = []
    for (_, line, code, fragment), result in zip(cases, results, strict=True):
        everything = result.stdout + result.stderr
        if "Traceback" in everything or "internal error" in everything or "pw-1" in everything:
            problems.append(f"{line}: {everything.strip()[-300:]}")
            continue
        if code == REPORT:
            if result.returncode not in (1, 4) or fragment not in everything:
                problems.append(f"{line}: exit {result.returncode}, {everything.strip()[-300:]}")
            continue
        lines = result.stderr.strip().splitlines()
        if (result.returncode != code or len(lines) != 1 or not lines[0].startswith("stagectl: error: ")
                or fragment not in lines[0]):
            problems.append(f"{line}: exit {result.returncode} (wanted {code}, {fragment!r}): {result.stderr.strip()}")
    assert not problems, "\n".join(problems)


async def _closed_stdout(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """Run stagectl with its stdout a pipe nobody reads (closed at once, like `| head -0`)."""
    def run() -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "tools.stagectl", *args], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        with proc.stderr:
            err = proc.stderr.read()
        return subprocess.CompletedProcess(args, proc.wait(60), b"", err)
    return await asyncio.to_thread(run)


@pytest.mark.parametrize("action", ["get", "set"])
async def test_a_closed_stdout_is_not_an_error(make_proxy: ProxyFactory, action: str) -> None:
    """`stagectl mode get | head`: no BrokenPipeError, and `mode set` still exits 0 after setting the mode."""
    proxy: Running = await make_proxy()
    env = {"PATH": "/usr/bin:/bin", "STAGE_OPS_TOKEN": TOKEN, "STAGE_ADMIN_URL": proxy.admin_url}
    args = ["mode", "get"] if action == "get" else ["mode", "set", "create_deal", "warn", "--reason", "piped"]
    result = await _closed_stdout(*args, env=env)
    assert result.returncode == 0 and result.stderr == b"", result.stderr.decode()
    if action == "set":
        async with aiohttp.ClientSession() as http, http.get(f"{proxy.admin_url}/_ops/mode") as response:
            assert (await response.json())["endpoints"]["create_deal"]["mode"] == "warn"
