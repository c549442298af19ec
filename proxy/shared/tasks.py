"""Stopping background tasks for certain.

On CPython 3.11 a cancellation can be lost: ``asyncio.wait_for`` and
``asyncio.timeout`` swallow a ``CancelledError`` that arrives in the same loop
iteration as their own timeout, and client libraries sometimes turn one into
a ``TimeoutError``. A task with a ``while True`` loop then never stops and
shutdown hangs. :func:`stop_task` cancels again until the task is done.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from proxy.shared.logs import log_event

log = logging.getLogger(__name__)


async def stop_task(task: asyncio.Task[Any], *, grace_s: float = 5.0, retry_s: float = 0.1) -> bool:
    """Cancel ``task`` (again every ``retry_s``) until it finishes; give up after ``grace_s``.

    Returns whether the task finished. Its result or exception is consumed.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=max(0.0, min(retry_s, deadline - loop.time())))
        if loop.time() >= deadline and not task.done():
            log_event(log, logging.WARNING, "task_stop_timeout", task=task.get_name(), grace_s=grace_s)
            return False
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log "exception was never retrieved"
    return True
