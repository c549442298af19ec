"""stop_task: background tasks stop even when a cancellation is swallowed (CPython 3.11 wait_for/timeout races)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from proxy.shared.tasks import stop_task


async def test_stops_a_task_that_swallows_the_first_cancellation() -> None:
    """A loop that eats one CancelledError (as a lost cancel does) is cancelled again and stops."""
    swallowed = 0

    async def loop_forever() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed == 1:
                    continue  # what a lost cancellation looks like from outside
                raise

    task = asyncio.create_task(loop_forever())
    await asyncio.sleep(0)  # one turn of the loop: the task starts and waits in its (long, cancelled) sleep
    assert await stop_task(task, grace_s=30.0, retry_s=0.05) is True
    assert task.cancelled() and swallowed == 2  # cancelled a second time: the first cancel alone never stops it


async def test_keeps_cancelling_until_the_task_gives_in() -> None:
    """Each lost cancellation is followed by another, every retry_s, until the task ends (here: the fifth)."""
    cancels: list[float] = []

    async def swallow_four() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancels.append(asyncio.get_running_loop().time())
                if len(cancels) < 5:
                    continue
                raise

    task = asyncio.create_task(swallow_four())
    await asyncio.sleep(0)
    assert await stop_task(task, grace_s=30.0, retry_s=0.05) is True
    assert len(cancels) == 5 and task.cancelled()
    gaps = [later - earlier for earlier, later in zip(cancels, cancels[1:], strict=False)]
    assert all(gap >= 0.04 for gap in gaps), gaps  # paced by retry_s, not a busy loop


async def test_gives_up_after_the_grace_period_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """A task that never stops: stop_task returns False after grace_s with a WARN, instead of hanging."""
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with caplog.at_level(logging.WARNING):
            assert await stop_task(task, grace_s=0.3) is False
        assert 0.299 <= loop.time() - started < 2.0  # 0.3 give or take float rounding of the loop clock
        assert [getattr(r, "fields", {}).get("task") for r in caplog.records
                if r.getMessage() == "task_stop_timeout"] == ["stubborn"]
    finally:
        release.set()
        assert await stop_task(task) is True


async def test_a_finished_task_with_an_error_is_consumed() -> None:
    """The exception of a task that already failed is retrieved, not logged as never retrieved."""

    async def boom() -> None:
        raise RuntimeError("x")

    task = asyncio.create_task(boom())
    await asyncio.sleep(0)
    assert await stop_task(task) is True
