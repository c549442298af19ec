"""``stagectl``: the rollout tools (docs/reference.md lists every command). Entry point is :func:`main`.

Exit codes common to every command: 0 ok; 1 a service unreachable or a check
failed; 2 bad usage or rejected input; 130 interrupted. 3-6 mean something
per command (tools/shared/errors.py, each command's --help). The commands live in tools/cli/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, TextIO

from proxy.shared.secrets import mask_text
from tools.cli import exempt as exempt_cli
from tools.cli import migrate as migrate_cli
from tools.cli import offenders as offenders_cli
from tools.cli import ops as ops_cli
from tools.cli import options
from tools.cli import preflight as preflight_cli
from tools.cli import rollout as rollout_cli
from tools.cli.command import Command, check, register
from tools.shared.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CommandError

# every command, in the order `stagectl --help` lists them
COMMANDS: tuple[Command, ...] = (*ops_cli.COMMANDS, *exempt_cli.COMMANDS, *offenders_cli.COMMANDS,
                                 *migrate_cli.COMMANDS, *preflight_cli.COMMANDS, *rollout_cli.COMMANDS)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CommandError(message, EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stagectl", description="stagegate rollout tools: the runbook as commands.",
                     epilog="exit codes: 0 ok, 1 a service unreachable or a check failed, 2 usage or rejected "
                            "input, 130 interrupted; 3-6 mean something per command (COMMAND --help, and "
                            "docs/reference.md)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        register(commands, command)
    return parser


class _Stdout:
    """sys.stdout for which a reader going away (``stagectl mode get | head``) ends the output, not the command:
    the rest is written to /dev/null and the command's exit code stands."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())  # what is still buffered goes nowhere, quietly
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _fail(message: str) -> None:
    print(f"stagectl: error: {mask_text(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one stagectl command; errors are one line on stderr (credentials masked) and a meaningful exit code.

    Set STAGECTL_DEBUG=1 to get the traceback of an unexpected error instead of its one line."""
    env = os.environ if environ is None else environ
    stdout = sys.stdout
    sys.stdout = _Stdout(stdout)
    try:
        args = build_parser().parse_args(argv)
        options.apply_environment(args, env)  # the one place the environment is read
        check(args)  # every declared value check, before the handler runs
        code: int = asyncio.run(args.handler(args))
        return code
    except CommandError as exc:
        _fail(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:  # a file or socket problem no command worded itself: still one line
        where = f" ({exc.filename})" if exc.filename else ""
        _fail(f"{exc.strerror or type(exc).__name__}{where}")
        return EXIT_FAILED
    except Exception as exc:
        if env.get("STAGECTL_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (a bug; STAGECTL_DEBUG=1 shows the traceback)")
        return EXIT_FAILED
    finally:
        sys.stdout.flush()
        sys.stdout = stdout


if __name__ == "__main__":
    sys.exit(main())
