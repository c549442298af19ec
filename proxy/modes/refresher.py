"""Keeping the mode view in step with the store: a background reload, pushed by pub/sub.

When the store is unreachable the last-known modes stay in force (else those
of ``--state-file``, else ``default_mode``), with one WARN on degrading and one
INFO on recovery; downgrades made meanwhile are kept pending and written first
thing once it answers (proxy.modes.pending). An emptied store (Redis restarted without persistence) is
re-seeded with the modes this process knows instead of falling back to defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from proxy.modes.pending import PendingWrites
from proxy.modes.records import HistoryEntry, StoreState, utc_now
from proxy.modes.statefile import StateFile
from proxy.modes.store import ModeStore, StoreUnavailable
from proxy.modes.view import ModeView
from proxy.shared.logs import log_event
from proxy.shared.tasks import stop_task

log = logging.getLogger(__name__)


class Refresher:
    """Loads the store into the view: once at start, then every ``refresh_ms`` or when nudged."""

    def __init__(self, view: ModeView, store: ModeStore, state_file: StateFile, *, refresh_ms: int = 500,
                 pending: PendingWrites | None = None) -> None:
        self._view = view
        self._store = store
        self._state_file = state_file
        self._pending = pending if pending is not None else PendingWrites()
        self._refresh_s = refresh_ms / 1000
        self._nudge = asyncio.Event()
        self._from_store = False  # the view has held the store's modes at least once

    async def start(self) -> None:
        """Resolve modes once: from the store, else the state file, else defaults."""
        if (saved := self._state_file.load()) is not None:
            self._view.apply(saved.records)
            self._view.set_exemptions(saved.exemptions, time.time())
            self._view.set_source("state_file")
            self._view.known = True
        await self.refresh()
        self._view.resolved = True

    async def refresh(self) -> None:
        """Reload from the store; on failure keep what we have and say so once."""
        view = self._view
        generation = view.generation
        try:
            state = await self._store.load()
            if not state.records and (view.known or view.exemptions):
                state = await self._reseed(state)
            if len(self._pending):
                state = await self._pending.flush(self._store, state)
                view.set_pending(len(self._pending))
                log_event(log, logging.INFO, "mode_pending_written", source=self._store.source)
        except StoreUnavailable as exc:
            self._degrade(str(exc))
            view.set_exemptions(view.exemptions, time.time())  # last-known; the gauges drop the ended ones
            if view.apply(self._pending.overlay(view.records)):  # a sibling worker's downgrade
                self._state_file.save(view.records, view.exemptions)
            return
        if generation != view.generation:
            self.nudge()  # a change landed while we were loading: this result may predate it
            return
        if view.degraded:
            log_event(log, logging.INFO, "mode_store_recovered", source=self._store.source)
        view.degraded = False
        self._from_store = True
        view.known = view.known or bool(state.records)
        view.set_source(self._store.source)
        view.set_blocks(state.blocks)
        view.leases = state.leases
        exemptions_changed = state.exemptions != view.exemptions
        view.set_exemptions(state.exemptions, time.time())
        if view.apply(self._pending.overlay(state.records)) or exemptions_changed or not view.resolved:
            self._state_file.save(view.records, view.exemptions)

    async def fresh(self) -> None:
        """Read the store now (decisions must not rest on a stale view); StoreUnavailable if it cannot."""
        await self.refresh()
        if self._view.degraded:
            raise StoreUnavailable("the mode store is unreachable")

    async def _reseed(self, loaded: StoreState) -> StoreState:
        """The store came back empty (restarted without persistence): write our modes back.

        Silently falling back to ``default_mode`` would turn enforcement off on
        every replica at once; HSETNX keeps any mode an operator set meanwhile.
        The live exemptions are written back too.
        """
        records = self._view.records
        log_event(log, logging.WARNING, "mode_store_reseeded", modes={n: r.mode for n, r in records.items()})
        history = [HistoryEntry("mode", "stagegate", "startup", "mode store was empty: last-known mode restored",
                                endpoint=name, to_mode=r.mode, percent=r.percent) for name, r in records.items()]
        await self._store.seed(records, history)
        now = utc_now()
        live = [exemption for exemption in self._view.exemptions.values() if exemption.live(now)]
        if live and not loaded.exemptions:  # every replica would otherwise enforce a consumer that was given time
            await self._store.set_exemptions(live, [], [HistoryEntry(
                "exemption_added", "stagegate", "startup", f"mode store was empty: {len(live)} exemption(s) restored")])
        return await self._store.load()

    def _degrade(self, error: str) -> None:
        view = self._view
        if self._from_store:
            source = "last_known"
        else:
            source = "state_file" if view.source == "state_file" else "default"
        view.set_source(source)
        if not view.degraded:
            view.degraded = True
            log_event(log, logging.WARNING, "mode_store_degraded", source=source, error=error[:300],
                      modes={name: r.mode for name, r in view.records.items()})

    def nudge(self) -> None:
        """Ask for a refresh now (a pub/sub announcement arrived, or a load raced a change)."""
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
