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
from collections.abc import Mapping, Sequence
from pathlib import Path

from proxy.canary import is_enforced
from proxy.catalog import Catalog, Mode
from proxy.logs import log_event
from proxy.metrics import Metrics
from proxy.modestore import ModeStore, StoreUnavailable
from proxy.records import Block, HistoryEntry, ModeRecord, StoreState, utc_now
from proxy.statefile import read_state_file, write_state_file
from proxy.tasks import stop_task

log = logging.getLogger(__name__)


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
        self.blocks: dict[str, Block] = {}
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

    @property
    def enforce_blocked(self) -> bool:
        """True while any block_enforce alert is firing."""
        return bool(self.blocks)

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
            state = await self._store.load()
            if not state.records and self._known:
                state = await self._reseed()
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
        self._known = self._known or bool(state.records)
        self._set_source(self._store.source)
        self._set_blocks(state.blocks)
        if self._apply(state.records) or not self.resolved:
            self._save_state()

    def _set_blocks(self, blocks: dict[str, Block]) -> None:
        self.blocks = blocks
        self._metrics.blocked.set(1 if blocks else 0)

    async def _reseed(self) -> StoreState:
        """The store came back empty (restarted without persistence): write our modes back.

        Silently falling back to ``default_mode`` would turn enforcement off on
        every replica at once; HSETNX keeps any mode an operator set meanwhile.
        """
        log_event(log, logging.WARNING, "mode_store_reseeded", modes={n: r.mode for n, r in self.records.items()})
        history = [HistoryEntry("mode", "stagegate", "startup", "mode store was empty: last-known mode restored",
                                endpoint=name, to_mode=r.mode, percent=r.percent) for name, r in self.records.items()]
        await self._store.seed(self.records, history)
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
            await stop_task(watcher, grace_s=2.0)

    # -- changes ------------------------------------------------------------

    async def change(self, endpoints: Sequence[str], mode: Mode, percent: float, actor: str, reason: str, *,
                     source: str = "api", forced: bool = False, alertname: str | None = None,
                     group_key: str | None = None) -> None:
        """Store a new mode for ``endpoints`` (with its history) and apply it here at once."""
        record = ModeRecord(mode, percent, utc_now(), actor, reason)
        changes = dict.fromkeys(endpoints, record)
        history = [HistoryEntry("mode", actor, source, reason, endpoint=name, from_mode=self.records[name].mode,
                                to_mode=mode, percent=percent, forced=forced, alertname=alertname,
                                group_key=group_key) for name in endpoints]
        await self._store.save(changes, history)
        self._generation += 1
        self._known = True
        self._apply({**self.records, **changes})
        self._save_state()
        log_event(log, logging.INFO, "mode_changed", endpoints=list(endpoints), mode=mode, percent=percent,
                  actor=actor, reason=reason, source=source, forced=forced, alertname=alertname)

    async def downgrade(self, endpoints: Sequence[str] | None, alertname: str, group_key: str) -> list[str]:
        """Put enforcing endpoints (all, if None) back to warn; returns those changed (re-sends change none)."""
        await self._fresh()
        names = self._catalog.endpoint_names if endpoints is None else endpoints
        enforcing = [name for name in names if self.records[name].mode == "enforce"]
        if enforcing:
            await self.change(enforcing, "warn", 0.0, alertname, f"auto-downgrade: alert {alertname} firing",
                              source="alertmanager", alertname=alertname, group_key=group_key)
        return enforcing

    async def update_blocks(self, firing: Sequence[Block], resolved: Sequence[str]) -> tuple[list[str], list[str]]:
        """Record firing block_enforce alerts and drop resolved ones; returns (added, removed) fingerprints."""
        await self._fresh()
        add = [block for block in firing if block.fingerprint not in self.blocks]
        remove = [fp for fp in dict.fromkeys(resolved) if fp in self.blocks and fp not in {b.fingerprint for b in add}]
        if not add and not remove:
            return [], []
        history = [HistoryEntry("block_enforce", b.alertname, "alertmanager", f"alert {b.alertname} firing",
                                endpoint=b.endpoint, alertname=b.alertname, group_key=b.group_key) for b in add]
        history += [HistoryEntry("unblock_enforce", self.blocks[fp].alertname, "alertmanager",
                                 f"alert {self.blocks[fp].alertname} resolved", endpoint=self.blocks[fp].endpoint,
                                 alertname=self.blocks[fp].alertname, group_key=self.blocks[fp].group_key)
                    for fp in remove]
        await self._store.set_blocks(add, remove, history)
        blocks = {**self.blocks, **{b.fingerprint: b for b in add}}
        for fingerprint in remove:
            blocks.pop(fingerprint, None)
        self._generation += 1
        self._set_blocks(blocks)
        log_event(log, logging.WARNING if add else logging.INFO, "enforce_block_changed", blocked=bool(blocks),
                  added=[b.alertname for b in add], removed=len(remove))
        return [b.fingerprint for b in add], remove

    async def _fresh(self) -> None:
        """Read the store now (decisions must not rest on a stale view); StoreUnavailable if it cannot."""
        await self.refresh()
        if self.degraded:
            raise StoreUnavailable("the mode store is unreachable")

    async def history(self, limit: int) -> list[HistoryEntry]:
        return await self._store.history(limit)
