"""stagectl's option table: the shared options (tools/cli/options.py) declared once, the flag winning over its
variable, the environment read in one place; every command declared as data (tools/cli/command.py), each
declared check swept."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pytest

from tools.cli.command import AT_LEAST_1, NOT_NEGATIVE, POSITIVE, Check, Command, Opt
from tools.cli.options import SHARED, apply_environment
from tools.stagectl import COMMANDS, build_parser, main


def parse(*argv: str, **environ: str) -> argparse.Namespace:
    args = build_parser().parse_args(list(argv))
    apply_environment(args, environ)
    return args


def test_the_flag_wins_over_its_variable() -> None:
    """--dsn beats $DATABASE_URL; without the flag the variable is taken; an empty variable is unset."""
    args = parse("migrate", "--dsn", "postgresql://flag/db", DATABASE_URL="postgresql://env/db")
    assert args.dsn == "postgresql://flag/db" and args.from_environment == frozenset()
    args = parse("migrate", DATABASE_URL="postgresql://env/db", STAGE_CONFIG="")
    assert args.dsn == "postgresql://env/db" and args.config is None
    assert args.from_environment == frozenset({"dsn"})


def test_only_the_commands_options_are_filled() -> None:
    """A variable fills an option only for commands that take it; the ops token (never a flag) always."""
    args = parse("mode", "get", DATABASE_URL="postgresql://env/db", STAGE_OPS_TOKEN=" tok ")
    assert not hasattr(args, "dsn") and args.ops_token == "tok"


@pytest.mark.parametrize("name", sorted(name for name, option in SHARED.items() if option.flag and option.env))
def test_help_names_the_variable(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every shared option's help says which variable it falls back to, wherever it is declared."""
    option = SHARED[name]
    commands = {"dsn": ["migrate"], "admin_url": ["mode", "get"], "config": ["migrate"],
                "prometheus": ["gate"], "redis_url": ["redis-latency"], "actor": ["mode", "set"]}[name]
    with pytest.raises(SystemExit):
        build_parser().parse_args([*commands, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"{option.flag}" in out and f"(default ${option.env})" in out


def _leaves(commands: Sequence[Command], path: tuple[str, ...] = (),
            inherited: tuple[Opt, ...] = ()) -> list[tuple[tuple[str, ...], tuple[Opt, ...]]]:
    """Every command a handler runs: its words and every option it takes (a group's common ones included)."""
    found = []
    for command in commands:
        here, scope = (*path, command.name), (*inherited, *command.common)
        if command.handler is not None:
            found.append((here, (*scope, *command.options)))
        found += _leaves(command.actions, here, scope)
    return found


def _sample(option: Opt) -> list[str]:
    """A value argparse accepts for ``option`` (what its check thinks of it aside)."""
    kwargs = option.kwargs
    if kwargs.get("action") in ("store_true", "store_false"):
        return []
    if "choices" in kwargs:
        return [kwargs["choices"][0]]
    return ["1"] if kwargs.get("type") in (int, float) else ["1m" if "DURATION" == kwargs.get("metavar") else "x"]


def _bad(check: Check) -> str:
    """A value ``check`` refuses (each declared check is one of these)."""
    for value in ("-1", "0", "1", "1001", "101"):
        if not check.test(float(value)):
            return value
    raise AssertionError(f"no sample refused by {check.says}")


CHECKED = [(path, scope, option) for path, scope in _leaves(COMMANDS) for option in scope if option.check]


def test_every_check_is_swept() -> None:
    """The sweep below covers the declared checks (a new command's checks join it without a new test)."""
    assert len(CHECKED) >= 30
    assert {option.check for _, _, option in CHECKED} >= {POSITIVE, NOT_NEGATIVE, AT_LEAST_1}
    assert (("mode", "get"), "--timeout-s") in {(path, option.flag) for path, _, option in CHECKED}


@pytest.mark.parametrize(("path", "scope", "option"), CHECKED,
                         ids=[f"{' '.join(path)} {option.flag}" for path, _, option in CHECKED])
def test_a_declared_check_refuses_before_the_handler(path: tuple[str, ...], scope: tuple[Opt, ...], option: Opt,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Each checked option's bad value is one line and exit 2 from stagectl, the handler never reached: the
    database, proxy and Prometheus named are dead addresses, so a handler would fail differently (exit 1)."""
    assert option.check is not None
    argv = list(path)
    for other in scope:
        if other is option:
            continue
        if not other.flag.startswith("-"):
            argv += _sample(other)
        elif other.kwargs.get("required"):
            argv += [other.flag, *_sample(other)]
    bad = _bad(option.check)
    argv += [option.flag, bad] if option.flag.startswith("-") else [bad]
    environ = {"DATABASE_URL": "postgresql://127.0.0.1:9/db", "STAGE_ADMIN_URL": "http://127.0.0.1:9",
               "PROMETHEUS_URL": "http://127.0.0.1:9", "STAGE_REDIS_URL": "redis://127.0.0.1:9/0"}
    code = main(argv, environ)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (argv, err)
    assert err == [f"stagectl: error: {option.flag} {option.check.says}, got {option.kwargs['type'](bad)}"]


def test_no_command_declares_an_option_twice() -> None:
    """Within one command (its group's common options included) every flag is declared once."""
    for path, scope in _leaves(COMMANDS):
        flags = [option.flag for option in scope]
        assert len(flags) == len(set(flags)), (path, sorted(f for f in flags if flags.count(f) > 1))


def test_argparse_is_driven_only_by_the_declarations() -> None:
    """No module adds options by hand: add_argument and add_parser appear in tools/cli/command.py only."""
    root = Path(__file__).resolve().parents[1] / "tools"
    offenders = [str(path.relative_to(root)) for path in root.rglob("*.py") if path.name != "command.py"
                 and ("add_argument(" in path.read_text() or "add_parser(" in path.read_text())]
    assert offenders == []
