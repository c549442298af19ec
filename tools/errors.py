"""Exit codes and the one exception every stagectl command raises for an operator-facing failure."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # a service unreachable, a run failed, verification found non-canonical values
EXIT_USAGE = 2  # bad usage or input the tool rejects
EXIT_AUTH = 3  # credentials refused
EXIT_BLOCKED = 4  # enforce blocked (409)
EXIT_STORE = 5  # mode store unavailable (503)
EXIT_BUSY = 6  # another migration holds the lock
EXIT_INTERRUPTED = 130  # SIGINT/SIGTERM: the batch in flight finished, the run is marked aborted


class CommandError(Exception):
    """A failure worded for the operator, with the exit code it maps to."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code
