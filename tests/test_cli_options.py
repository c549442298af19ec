"""stagectl's shared options (tools/cli/options.py): declared once, the flag winning over its variable, the
environment read in one place."""

from __future__ import annotations

import argparse

import pytest

from tools.cli.options import SHARED, apply_environment
from tools.stagectl import build_parser


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
