"""Waiting for an event instead of a fixed time (tests and bench).

A test that sleeps a fixed time and hopes something happened is slow when the machine is idle and flaky when it
is loaded. These helpers wait for the observable condition itself, up to a generous deadline, and fail naming
what never happened. Their short polling pause is the only sleep they need.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import IO, AnyStr

POLL_S = 0.01


async def until(predicate: Callable[[], bool | Awaitable[bool]], *, what: str, timeout_s: float = 10.0,
                interval_s: float = POLL_S) -> float:
    """Poll ``predicate`` (sync or async) until it is true; the seconds it took. AssertionError after
    ``timeout_s``; an exception the predicate raises (a process that died, say) ends the wait at once."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        outcome = predicate()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return loop.time() - started
        if loop.time() - started >= timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


def wait_until(predicate: Callable[[], bool], *, what: str, timeout_s: float = 10.0,
               interval_s: float = POLL_S) -> float:
    """:func:`until` for synchronous code."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started >= timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)
    return time.monotonic() - started


async def event(flag: asyncio.Event, *, what: str, timeout_s: float = 10.0) -> None:
    """Until ``flag`` is set (by a test double, say)."""
    try:
        await asyncio.wait_for(flag.wait(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}") from None


async def output_line(stream: IO[AnyStr], matches: Callable[[AnyStr], bool], *, what: str,
                      timeout_s: float = 30.0) -> list[AnyStr]:
    """Read a subprocess's pipe line by line (in a thread) until a line ``matches``; every line read, that one
    last (the caller keeps them: they are no longer in the pipe). AssertionError if the output ends first."""

    def read() -> list[AnyStr]:
        lines: list[AnyStr] = []
        while line := stream.readline():
            lines.append(line)
            if matches(line):
                return lines
        raise AssertionError(f"the output ended before {what}: {lines[-5:]!r}")

    try:
        return await asyncio.wait_for(asyncio.to_thread(read), timeout_s)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}") from None
