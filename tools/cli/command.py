"""The one way to declare a stagectl command: a :class:`Command` names its help, options, handler and actions;
an :class:`Opt` is one option — flag, argparse keywords, help and the :class:`Check` its value must pass.

Declarations are data, so the parser, the value checks and the help come from one place: :func:`register`
builds the argparse parsers; :func:`check` refuses a bad value (``--top must be at least 1, got 0``, exit 2)
before a handler runs, so no handler repeats a "must be" test. Options a group shares with its actions
(``mode --admin-url X get`` and ``mode get --admin-url X``) are its ``common`` ones: on an action's parser they
do not reset what the group's parser set. The shared options (``--dsn``, ``--json``, …) come from
tools/cli/options.py with the variable each falls back to.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tools.shared.errors import EXIT_USAGE, CommandError

Handler = Callable[[argparse.Namespace], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class Check:
    """A value's precondition, worded as what it must be (``must be positive``)."""

    test: Callable[[Any], bool]
    says: str


POSITIVE = Check(lambda value: value > 0, "must be positive")
NOT_NEGATIVE = Check(lambda value: value >= 0, "must be 0 or more")
AT_LEAST_1 = Check(lambda value: value >= 1, "must be at least 1")


def between(low: float, high: float) -> Check:
    """low <= value <= high."""
    return Check(lambda value: low <= value <= high, f"must be between {low:g} and {high:g}")


def inside(low: float, high: float) -> Check:
    """low < value < high."""
    return Check(lambda value: low < value < high, f"must be between {low:g} and {high:g}, exclusive")


@dataclass(frozen=True, slots=True)
class Opt:
    """One option: ``flag`` (``--batch-size``, or ``endpoint`` for a positional), argparse's keywords,
    ``check`` on its parsed value, and ``env``, the variable a shared option falls back to."""

    flag: str
    help: str | None = None
    check: Check | None = None
    env: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return str(self.kwargs.get("dest") or self.flag.lstrip("-").replace("-", "_"))

    def add(self, parser: argparse.ArgumentParser, *, inherited: bool = False) -> None:
        kwargs = dict(self.kwargs)
        if inherited:  # on an action's parser: left out, it keeps what the group's parser set
            kwargs["default"] = argparse.SUPPRESS
        text = None if self.help is None else self.help + (f" (default ${self.env})" if self.env else "")
        parser.add_argument(self.flag, help=text, **kwargs)

    def refused(self, value: Any) -> str | None:
        """Why ``value`` is refused, or None (an unset value passes: defaults are the declaration's own)."""
        if self.check is None or value is None:
            return None
        for one in value if isinstance(value, list) else [value]:
            if not self.check.test(one):
                return f"{self.flag} {self.check.says}, got {one}"
        return None


def opt(flag: str, help: str | None = None, check: Check | None = None, **kwargs: Any) -> Opt:
    """``opt("--top", "rows per table (default 10)", AT_LEAST_1, type=int, default=10)``."""
    return Opt(flag, help, check, None, kwargs)


@dataclass(frozen=True, slots=True)
class Command:
    """A command, or a group whose ``actions`` are commands. A group with a handler runs it when no action is
    named (``stagectl migrate``); ``common`` options are accepted before or after the action."""

    name: str
    help: str
    handler: Handler | None = None
    options: Sequence[Opt] = ()
    description: str | None = None
    common: Sequence[Opt] = ()
    actions: Sequence[Command] = ()
    action_dest: str = "action"
    defaults: Mapping[str, Any] = field(default_factory=dict)


def register(commands: Any, command: Command, inherited: Sequence[Opt] = ()) -> argparse.ArgumentParser:
    """Add ``command`` (and its actions) to the subcommands ``commands``; ``inherited``: a group's common options,
    which an action's parser accepts too."""
    parser: argparse.ArgumentParser = commands.add_parser(command.name, help=command.help,
                                                          description=command.description or command.help)
    for option in inherited:
        option.add(parser, inherited=True)
    for option in (*command.common, *command.options):
        option.add(parser)
    scope = (*inherited, *command.common, *command.options)
    parser.set_defaults(handler=command.handler, checked_options=scope, **command.defaults)
    if command.actions:
        actions = parser.add_subparsers(dest=command.action_dest, required=command.handler is None,
                                        parser_class=type(parser))
        for action in command.actions:
            register(actions, action, (*inherited, *command.common))
    return parser


def check(args: argparse.Namespace) -> None:
    """Refuse the first option value its declaration's check rejects (exit 2), before the handler runs."""
    for option in getattr(args, "checked_options", ()):
        problem = option.refused(getattr(args, option.dest, None))
        if problem:
            raise CommandError(problem, EXIT_USAGE)
