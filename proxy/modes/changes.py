"""Every write to the modes: changes from the API and Alertmanager, and enforce blocks.

Each write goes to the store together with its history entries, then into
this process's view at once (other replicas follow through pub/sub). A change
towards safety that the store cannot take is applied here anyway and kept
pending (proxy.modes.pending); any other change needs the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from proxy.catalog.stages import Mode
from proxy.modes.pending import PendingWrites, towards_safety
from proxy.modes.records import Block, Exemption, HistoryEntry, Lease, ModeRecord, utc_now
from proxy.modes.refresher import Refresher
from proxy.modes.statefile import StateFile
from proxy.modes.store import ModeStore, StoreUnavailable
from proxy.modes.view import ModeView
from proxy.shared.logs import log_event

log = logging.getLogger(__name__)
LeaseProgress = tuple[int | None, float | None, float]  # (step, percent, credited_s): the driver's, kept with it
HISTORY_PER_CHANGE = 20  # block entries written one by one per notification; the rest are summarized


class TooManyExemptions(Exception):
    """The store holds as many live exemptions as allowed."""


class ModeChanges:
    """Stores changes and applies them to the view."""

    def __init__(self, view: ModeView, store: ModeStore, refresher: Refresher, state_file: StateFile,
                 pending: PendingWrites) -> None:
        self._view = view
        self._store = store
        self._refresher = refresher
        self._state_file = state_file
        self.pending = pending
        self._exemption_lock = asyncio.Lock()

    async def change(self, endpoints: Sequence[str], mode: Mode, percent: float, actor: str, reason: str, *,
                     source: str = "api", forced: bool = False, alertname: str | None = None,
                     group_key: str | None = None) -> bool:
        """Store a new mode for ``endpoints`` (with its history) and apply it here at once; True when stored,
        False when it was a change towards safety the store could not take (applied here, written later)."""
        view = self._view
        record = ModeRecord(mode, percent, utc_now(), actor, reason)
        changes = dict.fromkeys(endpoints, record)
        history = [HistoryEntry("mode", actor, source, reason, endpoint=name, from_mode=view.records[name].mode,
                                to_mode=mode, percent=percent, forced=forced, alertname=alertname,
                                group_key=group_key) for name in endpoints]
        persisted = True
        try:
            await self._store.save(changes, history)
        except StoreUnavailable:
            if not towards_safety(view.records, changes):
                raise
            persisted = False
            self.pending.add(changes, history)
            view.set_pending(len(self.pending))
        view.generation += 1
        view.known = True
        view.apply({**view.records, **changes})
        self._state_file.save(view.records, view.exemptions)
        log_event(log, logging.INFO if persisted else logging.WARNING,
                  "mode_changed" if persisted else "mode_change_pending", endpoints=list(endpoints), mode=mode,
                  percent=percent, actor=actor, reason=reason, source=source, forced=forced, alertname=alertname,
                  **({} if persisted else {"detail": "the mode store is unreachable: applied on this replica, "
                                                     "written to the store when it answers"}))
        return persisted

    async def downgrade(self, endpoints: Sequence[str] | None, alertname: str,
                        group_key: str) -> tuple[list[str], bool]:
        """Put enforcing endpoints (all, if None) back to warn; (those changed, stored?). Re-sends change none.
        With the store unreachable it decides on the last-known modes: a downgrade never waits for Redis."""
        try:
            await self._refresher.fresh()
        except StoreUnavailable:
            pass  # the last-known modes are what requests are enforced by: downgrade those
        view = self._view
        names = view.catalog.endpoint_names if endpoints is None else endpoints
        enforcing = [name for name in names if view.records[name].mode == "enforce"]
        persisted = True
        if enforcing:
            persisted = await self.change(enforcing, "warn", 0.0, alertname,
                                          f"auto-downgrade: alert {alertname} firing", source="alertmanager",
                                          alertname=alertname, group_key=group_key)
        return enforcing, persisted

    async def update_blocks(self, firing: Sequence[Block], resolved: Sequence[str]) -> tuple[list[str], list[str]]:
        """Record firing block_enforce alerts and drop resolved ones; returns (added, removed) fingerprints."""
        await self._refresher.fresh()
        current = self._view.blocks
        add = [block for block in firing if block.fingerprint not in current]
        added = {b.fingerprint for b in add}
        remove = [fp for fp in dict.fromkeys(resolved) if fp in current and fp not in added]
        if not add and not remove:
            return [], []
        history = _capped_history("block_enforce", [(b, f"alert {b.alertname} firing") for b in add])
        history += _capped_history("unblock_enforce", [(current[fp], f"alert {current[fp].alertname} resolved")
                                                       for fp in remove])
        await self._store.set_blocks(add, remove, history)
        # From the view as it is now, not ``current``: a block cleared by hand meanwhile must not come back.
        blocks = {**self._view.blocks, **{b.fingerprint: b for b in add}}
        for fingerprint in remove:
            blocks.pop(fingerprint, None)
        self._view.generation += 1
        self._view.set_blocks(blocks)
        log_event(log, logging.WARNING if add else logging.INFO, "enforce_block_changed", blocked=bool(blocks),
                  added=len(add), alerts=sorted({b.alertname for b in add})[:HISTORY_PER_CHANGE], removed=len(remove))
        return [b.fingerprint for b in add], remove

    async def clear_block(self, fingerprint: str, actor: str, reason: str) -> Block | None:
        """Remove one block by hand (its resolve was lost); the removed block, or None if there was none."""
        await self._refresher.fresh()
        block = self._view.blocks.get(fingerprint)
        if block is None:
            return None
        entry = HistoryEntry("unblock_enforce", actor, "api", reason, endpoint=block.endpoint,
                             alertname=block.alertname, group_key=block.group_key)
        await self._store.set_blocks([], [fingerprint], [entry])
        self._view.generation += 1
        self._view.set_blocks({fp: b for fp, b in self._view.blocks.items() if fp != fingerprint})
        log_event(log, logging.WARNING, "enforce_block_cleared", fingerprint=fingerprint, alertname=block.alertname,
                  endpoint=block.endpoint, actor=actor, reason=reason, blocked=self._view.enforce_blocked)
        return block

    async def take_lease(self, endpoint: str, lease_id: str, holder: str, ttl_s: float, progress: LeaseProgress,
                         reason: str) -> tuple[Lease, Lease | None, bool]:
        """Hold ``endpoint`` for a rollout driver, or renew its hold: (the lease holding it now, the lapsed one
        replaced, taken?). Needs the store (StoreUnavailable): a lease nobody else can see is no lease."""
        await self._refresher.fresh()
        now = datetime.now(UTC)
        held = self._view.leases.get(endpoint)
        since = held.since if held is not None and held.id == lease_id else now.isoformat(timespec="milliseconds")
        lease = Lease(lease_id, holder, since, (now + timedelta(seconds=ttl_s)).isoformat(timespec="milliseconds"),
                      *progress)
        entry = HistoryEntry("rollout_lease", holder, "api", reason, endpoint=endpoint)
        current, replaced = await self._store.take_lease(endpoint, lease, now.isoformat(timespec="milliseconds"),
                                                         [entry])
        taken = current.id == lease_id
        if taken:
            self._view.leases = {**self._view.leases, endpoint: current}
        return current, replaced, taken

    async def release_lease(self, endpoint: str, lease_id: str, reason: str, credited_s: float | None = None) -> bool:
        """End a driver's hold (its own id only): it lapses now, its progress kept; True if it held the endpoint."""
        await self._refresher.fresh()
        held = self._view.leases.get(endpoint)
        if held is None or held.id != lease_id:
            return False
        lapsed = dataclasses.replace(held, expires=utc_now(),
                                     credited_s=held.credited_s if credited_s is None else credited_s)
        entry = HistoryEntry("rollout_release", held.holder, "api", reason, endpoint=endpoint)
        released = await self._store.release_lease(endpoint, lapsed, [entry])
        if released:
            self._view.leases = {**self._view.leases, endpoint: lapsed}
        return released

    async def add_exemption(self, exemption: Exemption, limit: int) -> None:
        """Store a new exemption (expired ones are removed in the same write) and apply it here at once. Needs
        the store (StoreUnavailable): the other replicas must apply it too. TooManyExemptions when ``limit`` are
        live (checked on the store's state, one add at a time per process; across replicas a soft limit)."""
        async with self._exemption_lock:
            await self._add_exemption(exemption, limit)

    async def _add_exemption(self, exemption: Exemption, limit: int) -> None:
        await self._refresher.fresh()
        now = utc_now()
        expired = [e.id for e in self._view.exemptions.values() if not e.live(now)]
        if len(self._view.exemptions) - len(expired) >= limit:
            raise TooManyExemptions(limit)
        entry = HistoryEntry("exemption_added", exemption.created_by, "api",
                             f"{exemption.reason} ({_who(exemption)} until {exemption.until}, id {exemption.id})",
                             endpoint=exemption.endpoint)
        await self._store.set_exemptions([exemption], expired, [entry])
        current = {k: e for k, e in self._view.exemptions.items() if k not in expired}
        self._apply_exemptions({**current, exemption.id: exemption})
        log_event(log, logging.WARNING, "exemption_added", id=exemption.id, endpoint=exemption.endpoint,
                  consumer=exemption.consumer, client_cidr=exemption.client_cidr, until=exemption.until,
                  actor=exemption.created_by, reason=exemption.reason)

    async def remove_exemption(self, exemption_id: str, actor: str, reason: str) -> Exemption | None:
        """End an exemption before its time; the removed one, or None if there is none by that id."""
        await self._refresher.fresh()
        exemption = self._view.exemptions.get(exemption_id)
        if exemption is None:
            return None
        entry = HistoryEntry("exemption_removed", actor, "api", f"{reason} ({_who(exemption)}, id {exemption.id})",
                             endpoint=exemption.endpoint)
        await self._store.set_exemptions([], [exemption_id], [entry])
        self._apply_exemptions({k: e for k, e in self._view.exemptions.items() if k != exemption_id})
        log_event(log, logging.WARNING, "exemption_removed", id=exemption.id, endpoint=exemption.endpoint,
                  actor=actor, reason=reason)
        return exemption

    def _apply_exemptions(self, exemptions: dict[str, Exemption]) -> None:
        self._view.generation += 1
        self._view.known = True  # worth re-seeding into a store restarted empty
        self._view.set_exemptions(exemptions, time.time())
        self._state_file.save(self._view.records, self._view.exemptions)

    async def history(self, limit: int) -> list[HistoryEntry]:
        return await self._store.history(limit)

    async def note_reload(self, actor: str, reason: str, version: str, previous: str) -> None:
        """A catalog reload in the history (who, why, which versions); StoreUnavailable if it cannot be written."""
        text = f"{reason} (catalog {previous} -> {version})" if version != previous else f"{reason} (unchanged)"
        await self._store.note([HistoryEntry("catalog_reload", actor, "api", text[:500])])


def _who(exemption: Exemption) -> str:
    return f"consumer {exemption.consumer}" if exemption.consumer is not None else f"clients {exemption.client_cidr}"


def _capped_history(action: str, items: list[tuple[Block, str]]) -> list[HistoryEntry]:
    """One entry per block, up to HISTORY_PER_CHANGE; past it one entry saying how many more (a notification can
    carry thousands of alerts: the history must stay readable and the write small)."""
    entries = [_block_entry(action, block, reason) for block, reason in items[:HISTORY_PER_CHANGE]]
    if len(items) > HISTORY_PER_CHANGE:
        entries.append(HistoryEntry(action, "alertmanager", "alertmanager",
                                    f"and {len(items) - HISTORY_PER_CHANGE} more alerts in the same notification"))
    return entries


def _block_entry(action: str, block: Block, reason: str) -> HistoryEntry:
    return HistoryEntry(action, block.alertname, "alertmanager", reason, endpoint=block.endpoint,
                        alertname=block.alertname, group_key=block.group_key)
