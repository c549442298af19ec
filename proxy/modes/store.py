"""Where modes live: the store protocol and the embedded in-memory store (Redis: proxy/redisstore.py).

A store keeps five things (docs/redis-keys.md): each endpoint's mode record,
the firing ``block_enforce`` alerts, the rollout drivers' leases, the
exemptions, and a bounded history of changes. Every write that changes state also appends its history
entries, atomically.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Protocol

from proxy.modes.records import Block, Exemption, HistoryEntry, Lease, ModeRecord, StoreState

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

    async def set_exemptions(self, add: Sequence[Exemption], remove: Sequence[str],
                             history: Sequence[HistoryEntry]) -> None:
        """Store ``add`` and drop the ids in ``remove`` (with the history), in one write."""
        ...

    async def history(self, limit: int) -> list[HistoryEntry]: ...

    async def note(self, history: Sequence[HistoryEntry]) -> None:
        """Append history entries that change no mode (a catalog reload)."""
        ...

    async def take_lease(self, endpoint: str, lease: Lease, now: str,
                         history: Sequence[HistoryEntry]) -> tuple[Lease, Lease | None]:
        """Take ``lease`` (or renew it: same id) unless another live one holds the endpoint, atomically; (the
        lease holding the endpoint now, the lapsed one it replaced). ``history`` is written only when taken."""
        ...

    async def release_lease(self, endpoint: str, lapsed: Lease, history: Sequence[HistoryEntry]) -> bool:
        """End the lease with ``lapsed.id`` by storing ``lapsed`` (it expires now: its progress stays readable by the
        next driver); False if another lease holds the endpoint."""
        ...

    async def watch(self, on_change: Callable[[], None]) -> None: ...

    async def close(self) -> None: ...


class MemoryModeStore:
    """The embedded store: one process, nothing survives a restart (unless --state-file)."""

    source = "memory"

    def __init__(self) -> None:
        self._records: dict[str, ModeRecord] = {}
        self._blocks: dict[str, Block] = {}
        self._leases: dict[str, Lease] = {}
        self._exemptions: dict[str, Exemption] = {}
        self._history: deque[HistoryEntry] = deque(maxlen=HISTORY_LIMIT)

    async def load(self) -> StoreState:
        return StoreState(dict(self._records), dict(self._blocks), dict(self._leases), dict(self._exemptions))

    async def take_lease(self, endpoint: str, lease: Lease, now: str,
                         history: Sequence[HistoryEntry]) -> tuple[Lease, Lease | None]:
        held = self._leases.get(endpoint)
        if held is not None and held.id != lease.id and held.live(now):
            return held, None
        self._leases[endpoint] = lease
        if held is None or held.id != lease.id:
            self._history.extend(history)
            return lease, held
        return lease, None

    async def release_lease(self, endpoint: str, lapsed: Lease, history: Sequence[HistoryEntry]) -> bool:
        held = self._leases.get(endpoint)
        if held is None or held.id != lapsed.id:
            return False
        self._leases[endpoint] = lapsed
        self._history.extend(history)
        return True

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

    async def set_exemptions(self, add: Sequence[Exemption], remove: Sequence[str],
                             history: Sequence[HistoryEntry]) -> None:
        self._exemptions.update((exemption.id, exemption) for exemption in add)
        for exemption_id in remove:
            self._exemptions.pop(exemption_id, None)
        self._history.extend(history)

    async def history(self, limit: int) -> list[HistoryEntry]:
        return list(self._history)[-limit:][::-1]

    async def note(self, history: Sequence[HistoryEntry]) -> None:
        self._history.extend(history)

    async def watch(self, on_change: Callable[[], None]) -> None:
        return None

    async def close(self) -> None:
        return None
