"""The options every stagectl command shares, declared once: flag, environment variable, default and help.

A command lists the shared options it takes (``shared("dsn")``, tools/cli/command.py); the help says which
variable each falls back to, so ``--help``, the docs and the lookup cannot drift. After parsing,
:func:`apply_environment` fills every shared option the command line left unset from its variable — the one
place the tools read the environment — so workflows and clients get plain values and never see ``environ``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import replace
from typing import Final

from tools.cli.command import Opt

SHARED: Final = {option.dest: option for option in (
    Opt("--dsn", "PostgreSQL URL", env="DATABASE_URL", kwargs={"metavar": "DSN"}),
    Opt("--admin-url", "the proxy's admin listener URL", env="STAGE_ADMIN_URL", kwargs={"metavar": "URL"}),
    Opt("--config", "stage catalog TOML", env="STAGE_CONFIG", kwargs={"metavar": "FILE"}),
    Opt("--prometheus", "Prometheus base URL", env="PROMETHEUS_URL", kwargs={"metavar": "URL"}),
    Opt("--redis-url", "Redis URL", env="STAGE_REDIS_URL", kwargs={"metavar": "URL"}),
    Opt("--actor", "who, recorded as 'stagectl COMMAND (WHO)' in the history; else the login name",
        env="STAGE_ACTOR", kwargs={"metavar": "WHO"}),
    Opt("--json", "machine-readable output", kwargs={"action": "store_true"}),
)}
ENVIRONMENT_ONLY: Final = {"ops_token": "STAGE_OPS_TOKEN"}  # a secret: never a flag, it would show in ``ps``


def shared(name: str, help: str | None = None) -> Opt:
    """The shared option ``name``, its help replaced by ``help`` where this command means something more."""
    option = SHARED[name]
    kwargs = dict(option.kwargs)
    if "action" not in kwargs:
        kwargs["default"] = None  # unset: the variable may fill it
    return replace(option, help=option.help if help is None else help, kwargs=kwargs)


def apply_environment(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Every shared option of this command that the command line left unset takes its variable's value (an
    empty variable counts as unset); the environment-only ones are always read. The only place stagectl reads
    its environment."""
    from_environment = set()
    for option in SHARED.values():
        if option.env is not None and hasattr(args, option.dest) and getattr(args, option.dest) is None:
            value = environ.get(option.env, "").strip() or None
            setattr(args, option.dest, value)
            if value is not None:
                from_environment.add(option.dest)
    for dest, variable in ENVIRONMENT_ONLY.items():
        setattr(args, dest, environ.get(variable, "").strip() or None)
    args.from_environment = frozenset(from_environment)  # options set by a variable, not on the command line
