"""The options every stagectl command shares, declared once: flag, environment variable, default and help.

A command names the shared options it takes (``add(parser, "dsn", "admin_url", "json")``); the help says which
variable each falls back to, so ``--help``, the docs and the lookup cannot drift. After parsing,
:func:`apply_environment` fills every shared option the command line left unset from its variable — the one
place the tools read the environment — so workflows and clients get plain values and never see ``environ``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class Shared:
    """One shared option. ``env``: the variable it falls back to; ``flag`` None: read from the environment only
    (a secret, never a flag: it would show in ``ps``)."""

    dest: str
    flag: str | None
    help: str
    env: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def help_text(self) -> str:
        return self.help + (f" (default ${self.env})" if self.env else "")


SHARED: Final = {option.dest: option for option in (
    Shared("dsn", "--dsn", "PostgreSQL URL", "DATABASE_URL", {"metavar": "DSN"}),
    Shared("admin_url", "--admin-url", "the proxy's admin listener URL", "STAGE_ADMIN_URL", {"metavar": "URL"}),
    Shared("config", "--config", "stage catalog TOML", "STAGE_CONFIG", {"metavar": "FILE"}),
    Shared("prometheus", "--prometheus", "Prometheus base URL", "PROMETHEUS_URL", {"metavar": "URL"}),
    Shared("redis_url", "--redis-url", "Redis URL", "STAGE_REDIS_URL", {"metavar": "URL"}),
    Shared("actor", "--actor", "who, recorded as 'stagectl COMMAND (WHO)' in the history; else the login name",
           "STAGE_ACTOR", {"metavar": "WHO"}),
    Shared("json", "--json", "machine-readable output", None, {"action": "store_true"}),
    Shared("ops_token", None, "the ops bearer token", "STAGE_OPS_TOKEN"),
)}


def add(parser: argparse.ArgumentParser, *names: str, inherited: bool = False, **helps: str) -> None:
    """Add the shared options ``names`` to ``parser``; ``helps`` replaces a help text (``config="…"``). On an
    action's parser (``inherited``) an option left out does not reset what the group's parser set."""
    for name in names:
        option = SHARED[name]
        assert option.flag is not None, f"{name} is read from the environment only"
        kwargs = dict(option.kwargs)
        if inherited:
            kwargs["default"] = argparse.SUPPRESS
        elif "action" not in kwargs:
            kwargs.setdefault("default", None)
        text = helps.get(name, option.help)
        parser.add_argument(option.flag, dest=option.dest, help=text + (f" (default ${option.env})" if option.env
                                                                         else ""), **kwargs)


def apply_environment(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Every shared option of this command that the command line left unset takes its variable's value (an
    empty variable counts as unset); the environment-only ones are always read. The only place stagectl reads
    its environment."""
    from_environment = set()
    for option in SHARED.values():
        if option.env is None:
            continue
        if option.flag is None or (hasattr(args, option.dest) and getattr(args, option.dest) is None):
            value = environ.get(option.env, "").strip() or None
            setattr(args, option.dest, value)
            if value is not None and option.flag is not None:
                from_environment.add(option.dest)
    args.from_environment = frozenset(from_environment)  # options set by a variable, not on the command line
