"""Where modes live: the store protocol and the embedded in-memory store (Redis: proxy/redisstore.py).

A store keeps three things (docs/redis-keys.md): each endpoint's mode record,
the firing ``block_enforce`` alerts, and a bounded history of changes. Every
write that changes state also appends its history entries, atomically.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Protocol

from proxy.modes.records import Block, HistoryEntry, ModeRecord, StoreState

HISTORY_LIMIT: Final = 1000  # entries kept; older ones are trimmed


class StoreUnavailable(Exception):
    """The mode store could not be reached (or answered garbage)."""


class ModeStore(Protocol):
    """What the mode resolver needs from a store."""

    source: str

    async def load(self) -> StoreState: ...

    async def save(self, changes: Mapping[str, ModeRecord], history: Sequence[HistoryEntry]) -> None: ...

    async def seed(self, records: Mapping[str, ModeRecord], history: Sequence[HistoryEntry]) -> None: ...

    async def set_blocks(self, add: Sequence[Block], remove: Sequence[str], history: Sequence[HistoryEntry]) -> None:
        ...

    async def history(self, limit: int) -> list[HistoryEntry]: ...

    async def watch(self, on_change: Callable[[], None]) -> None: ...

    async def close(self) -> None: ...


class MemoryModeStore:
    """The embedded store: one process, nothing survives a restart (unless --state-file)."""

    source = "memory"

    def __init__(self) -> None:
        self._records: dict[str, ModeRecord] = {}
        self._blocks: dict[str, Block] = {}
        self._history: deque[HistoryEntry] = deque(maxlen=HISTORY_LIMIT)

    async def load(self) -> StoreState:
        return StoreState(dict(self._records), dict(self._blocks))

    async def save(self, changes: Mapping[str, ModeRecord], history: Sequence[HistoryEntry]) -> None:
        self._records.update(changes)
        self._history.extend(history)

    async def seed(self, records: Mapping[str, ModeRecord], history: Sequence[HistoryEntry]) -> None:
        for name, record in records.items():
            self._records.setdefault(name, record)
        self._history.extend(history)

    async def set_blocks(self, add: Sequence[Block], remove: Sequence[str], history: Sequence[HistoryEntry]) -> None:
        self._blocks.update((block.fingerprint, block) for block in add)
        for fingerprint in remove:
            self._blocks.pop(fingerprint, None)
        self._history.extend(history)

    async def history(self, limit: int) -> list[HistoryEntry]:
        return list(self._history)[-limit:][::-1]

    async def watch(self, on_change: Callable[[], None]) -> None:
        return None

    async def close(self) -> None:
        return None
