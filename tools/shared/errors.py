"""Exit codes and the one exception every stagectl command raises for an operator-facing failure."""

from __future__ import annotations

import os

import aiohttp

from proxy.shared.secrets import mask_text

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


def network_reason(exc: BaseException) -> str:
    """A network failure in a few words: 'connection refused', 'timed out', not a repr."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        return (os.strerror(error.errno) if error.errno else error.strerror or str(error)).lower()
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return mask_text(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
