"""Mode resolution: modes served from memory, refreshed in the background.

The request path calls :meth:`ModeState.effective` — a dict lookup and, for a
canary, one hash; it never waits on the store (DESIGN §2 "Mode resolution").
When the store is unreachable the last-known modes stay in force (else those of
``--state-file``, else ``default_mode``), with one WARN on degrading and one
INFO on recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import orjson

from proxy.canary import is_enforced
from proxy.catalog import Catalog, Mode
from proxy.logs import log_event
from proxy.metrics import Metrics
from proxy.modestore import ModeRecord, ModeStore, StoreUnavailable

log = logging.getLogger(__name__)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def read_state_file(path: Path) -> dict[str, ModeRecord] | None:
    """Modes saved by an earlier run, or None (missing or unreadable file: logged)."""
    try:
        data = orjson.loads(path.read_bytes())
        return {str(name): ModeRecord.from_obj(record) for name, record in data["endpoints"].items()}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log_event(log, logging.WARNING, "state_file_unreadable", path=str(path), error=str(exc)[:200])
        return None


def write_state_file(path: Path, records: Mapping[str, ModeRecord]) -> None:
    """Atomically replace the state file (temporary name, fsync, rename)."""
    payload = orjson.dumps({"saved_at": utc_now(), "endpoints": {k: asdict(v) for k, v in records.items()}})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class ModeState:
    """The in-memory view of every endpoint's mode, and the task keeping it fresh."""

    def __init__(self, catalog: Catalog, store: ModeStore, metrics: Metrics, *,
                 state_file: Path | None = None, refresh_ms: int = 500) -> None:
        self._catalog = catalog
        self._store = store
        self._metrics = metrics
        self._state_file = state_file
        self._refresh_s = refresh_ms / 1000
        self._nudge = asyncio.Event()
        self.records: dict[str, ModeRecord] = {}
        self._fast: dict[str, tuple[Mode, float]] = {}
        self.source = "default"
        self.enforce_blocked = False
        self.degraded = False
        self.resolved = False
        self._from_store = False
        self._known = False  # modes came from the store, the state file or a change: worth keeping
        self._generation = 0  # bumped by every local change, so a slower concurrent load cannot undo it
        self._apply({})

    # -- the request path -------------------------------------------------

    def effective(self, endpoint: str, request_id: str) -> Mode:
        """The mode this request is handled in (canary applied)."""
        mode, percent = self._fast[endpoint]
        if mode != "enforce" or percent >= 100:
            return mode
        return "enforce" if is_enforced(request_id, percent) else "warn"

    # -- keeping it fresh -------------------------------------------------

    def _apply(self, records: Mapping[str, ModeRecord]) -> bool:
        """Make ``records`` (defaults filling gaps) current; True if anything changed."""
        default = ModeRecord(self._catalog.default_mode, 100.0 if self._catalog.default_mode == "enforce" else 0.0)
        complete = {name: records.get(name, default) for name in self._catalog.endpoint_names}
        if complete == self.records:
            return False
        self.records = complete
        self._fast = {name: (r.mode, r.percent) for name, r in self.records.items()}
        for name, record in self.records.items():
            self._metrics.set_mode(name, record.mode, record.percent)
        return True

    def _set_source(self, source: str) -> None:
        self.source = source
        self._metrics.set_source(source)

    async def start(self) -> None:
        """Resolve modes once: from the store, else the state file, else defaults."""
        if self._state_file is not None and (saved := read_state_file(self._state_file)) is not None:
            self._apply(saved)
            self._set_source("state_file")
            self._known = True
        await self.refresh()
        self.resolved = True

    async def refresh(self) -> None:
        """Reload from the store; on failure keep what we have and say so once."""
        generation = self._generation
        try:
            records = await self._store.load()
            if not records and self._known:
                records = await self._reseed()
        except StoreUnavailable as exc:
            self._degrade(str(exc))
            return
        if generation != self._generation:
            self.nudge()  # a change landed while we were loading: this result may predate it
            return
        if self.degraded:
            log_event(log, logging.INFO, "mode_store_recovered", source=self._store.source)
        self.degraded = False
        self._from_store = True
        self._known = self._known or bool(records)
        self._set_source(self._store.source)
        if self._apply(records) or not self.resolved:
            self._save_state()

    async def _reseed(self) -> dict[str, ModeRecord]:
        """The store came back empty (restarted without persistence): write our modes back.

        Silently falling back to ``default_mode`` would turn enforcement off on
        every replica at once; HSETNX keeps any mode an operator set meanwhile.
        """
        log_event(log, logging.WARNING, "mode_store_reseeded", modes={n: r.mode for n, r in self.records.items()})
        await self._store.seed(self.records)
        return await self._store.load()

    def _degrade(self, error: str) -> None:
        if self._from_store:
            source = "last_known"
        else:
            source = "state_file" if self.source == "state_file" else "default"
        self._set_source(source)
        if not self.degraded:
            self.degraded = True
            log_event(log, logging.WARNING, "mode_store_degraded", source=source, error=error[:300],
                      modes={name: r.mode for name, r in self.records.items()})

    def _save_state(self) -> None:
        if self._state_file is None:
            return
        try:
            write_state_file(self._state_file, self.records)
        except OSError as exc:
            log_event(log, logging.WARNING, "state_file_write_failed", path=str(self._state_file), error=str(exc))

    def nudge(self) -> None:
        """Ask for a refresh now (a pub/sub announcement arrived)."""
        self._nudge.set()

    async def run(self) -> None:
        """Refresh every ``refresh_ms`` or on announcement, forever."""
        watcher = asyncio.create_task(self._store.watch(self.nudge))
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._nudge.wait(), self._refresh_s)
                self._nudge.clear()
                await self.refresh()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    # -- changes ------------------------------------------------------------

    async def change(self, endpoints: list[str], mode: Mode, percent: float, actor: str, reason: str) -> None:
        """Store a new mode for ``endpoints`` and apply it here at once."""
        record = ModeRecord(mode, percent, utc_now(), actor, reason)
        changes = dict.fromkeys(endpoints, record)
        await self._store.save(changes)
        self._generation += 1
        self._known = True
        self._apply({**self.records, **changes})
        self._save_state()
        log_event(log, logging.INFO, "mode_changed", endpoints=endpoints, mode=mode, percent=percent,
                  actor=actor, reason=reason)
