"""Downgrades that do not wait for the store: changes towards safety made while it is unreachable.

The runbook's first rollback step — enforce back to warn — is needed exactly
when things go wrong, Redis included. So a change *towards safety* (enforce →
warn or off, warn → off, a lower enforce percent) that cannot be stored is
applied here at once and kept as a pending write; the next refresh that
reaches the store writes it there (with its history entries), unless a newer
change is stored by then, which wins. The other replicas take it from the
store. A change away from safety still needs the store (503).

With ``--workers``, the worker that took the change also writes it to a file
in the workers' shared directory; its siblings apply it from there at their
next refresh, so the whole pod downgrades, not one process of it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import orjson

from proxy.modes.records import HistoryEntry, ModeRecord, StoreState
from proxy.modes.store import ModeStore

_RANK = {"off": 0.0, "warn": 1.0, "enforce": 2.0}


def risk(record: ModeRecord) -> float:
    """How much a mode can refuse: off < warn < enforce, and a larger enforce share more."""
    return _RANK[record.mode] + (record.percent / 100 if record.mode == "enforce" else 0.0)


def towards_safety(old: Mapping[str, ModeRecord], new: Mapping[str, ModeRecord]) -> bool:
    """True when no endpoint's change makes it refuse more (a change that is no change counts as safe)."""
    return all(risk(record) <= risk(old[name]) for name, record in new.items())


def newer(a: ModeRecord, b: ModeRecord | None) -> bool:
    """True if ``a`` was changed after ``b``, in the same millisecond, or ``b`` is unknown: a pending change is
    only ever compared with what it may replace, and a tie goes to the change made for safety."""
    if b is None or b.updated_at is None:
        return True
    if a.updated_at is None:
        return False
    return datetime.fromisoformat(a.updated_at) >= datetime.fromisoformat(b.updated_at)


class PendingWrites:
    """This process's unstored changes, and (with ``--workers``) its siblings' from the shared directory."""

    def __init__(self, shared_dir: Path | None = None) -> None:
        self.records: dict[str, ModeRecord] = {}
        self.history: list[HistoryEntry] = []
        self._file = shared_dir / f"pending-modes-{os.getpid()}.json" if shared_dir else None
        self._shared_dir = shared_dir

    def __len__(self) -> int:
        return len(self.records)

    def add(self, changes: Mapping[str, ModeRecord], history: Sequence[HistoryEntry]) -> None:
        self.records.update(changes)
        self.history.extend(history)
        self._publish()

    def overlay(self, records: Mapping[str, ModeRecord]) -> dict[str, ModeRecord]:
        """``records`` with every pending change (ours and the siblings') that is newer laid over it."""
        merged = dict(records)
        for name, record in {**self._siblings(), **self.records}.items():
            if newer(record, merged.get(name)):
                merged[name] = record
        return merged

    async def flush(self, store: ModeStore, state: StoreState) -> StoreState:
        """Write what is pending to the store, unless the store holds a newer change; the state as it is then.
        Raises StoreUnavailable (and keeps everything pending) if the write fails."""
        if not self.records:
            return state
        winners = {name: r for name, r in self.records.items() if newer(r, state.records.get(name))}
        history = [entry for entry in self.history if entry.endpoint in winners or entry.endpoint is None]
        if winners:
            await store.save(winners, history)
        self.records.clear()
        self.history.clear()
        self._publish()
        return StoreState({**state.records, **winners}, state.blocks, state.leases)

    def as_json(self) -> list[dict[str, object]]:
        return [{"endpoint": name, "mode": r.mode, "percent": r.percent, "since": r.updated_at,
                 "by": r.updated_by} for name, r in sorted(self.records.items())]

    def _publish(self) -> None:
        if self._file is None:
            return
        if not self.records:
            with contextlib.suppress(OSError):
                self._file.unlink()
            return
        tmp = self._file.with_suffix(".tmp")
        with contextlib.suppress(OSError):  # best effort: this worker has applied it whatever happens here
            tmp.write_bytes(orjson.dumps({name: orjson.loads(r.to_json()) for name, r in self.records.items()}))
            os.replace(tmp, self._file)

    def _siblings(self) -> dict[str, ModeRecord]:
        if self._shared_dir is None:
            return {}
        found: dict[str, ModeRecord] = {}
        for path in self._shared_dir.glob("pending-modes-*.json"):
            if path == self._file:
                continue
            with contextlib.suppress(OSError, ValueError):
                for name, data in orjson.loads(path.read_bytes()).items():
                    record = ModeRecord.from_obj(data)
                    if newer(record, found.get(name)):
                        found[name] = record
        return found
