"""Servers on their own uvloop in a thread, for synchronous (hypothesis) tests."""

from __future__ import annotations

import asyncio
import threading
from typing import Self

import uvloop


class ThreadedLoop:
    """Servers on their own uvloop in a thread, for synchronous (hypothesis) tests: ``with Sub() as it:``.

    A subclass's ``serve`` starts what it needs, sets ``self.ready`` and waits for ``stop``.
    """

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()  # the production loop
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)

    async def serve(self, stop: asyncio.Event) -> None:
        raise NotImplementedError

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        await self.serve(self._stop)

    def __enter__(self) -> Self:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)
        self.loop.close()
