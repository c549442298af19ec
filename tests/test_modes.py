"""The mode store's parts, unit by unit: the view, the refresher (fallback, reseed, races) and changes (blocks)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from proxy.catalog.stages import DEFAULT_CATALOG_TOML, default_catalog, parse_catalog
from proxy.modes.changes import ModeChanges
from proxy.modes.pending import PendingWrites
from proxy.modes.records import Block, HistoryEntry, ModeRecord, StoreState, utc_now
from proxy.modes.refresher import Refresher
from proxy.modes.statefile import Saved, StateFile, read_state_file, write_state_file
from proxy.modes.store import MemoryModeStore, StoreUnavailable
from proxy.modes.view import ModeView
from proxy.shared.metrics import Metrics
from tests.support.waiting import event, until

CATALOG = default_catalog()


class GatedStore(MemoryModeStore):
    """The embedded store, but a load can be held after taking its snapshot (to replay a race); ``held`` is set
    once a load has its snapshot and waits at the closed gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = asyncio.Event()

    async def load(self) -> StoreState:
        snapshot = await super().load()
        if not self.gate.is_set():
            self.held.set()
        await self.gate.wait()
        return snapshot


class SwitchableStore(MemoryModeStore):
    """The embedded store with an off switch: while ``down`` every call fails as an unreachable Redis does."""

    down = False

    async def load(self) -> StoreState:
        if self.down:
            raise StoreUnavailable("redis load: ConnectionError: refused")
        return await super().load()

    async def save(self, changes: Mapping[str, ModeRecord], history: Sequence[HistoryEntry]) -> None:
        if self.down:
            raise StoreUnavailable("redis save: ConnectionError: refused")
        await super().save(changes, history)


class Modes:
    """The parts as the app wires them, over any store."""

    def __init__(self, store: MemoryModeStore, state_file: Path | None = None, catalog_toml: str | None = None) -> None:
        catalog = CATALOG if catalog_toml is None else parse_catalog(catalog_toml)
        self.store = store
        self.metrics = Metrics(catalog.endpoint_names)
        self.view = ModeView(catalog, self.metrics)
        self.state_file = StateFile(state_file)
        self.pending = PendingWrites()
        self.refresher = Refresher(self.view, store, self.state_file, refresh_ms=50, pending=self.pending)
        self.changes = ModeChanges(self.view, store, self.refresher, self.state_file, self.pending)

    def gauge(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


def test_view_fills_every_endpoint_with_the_default_mode() -> None:
    """Before anything is stored every endpoint has the catalog's default_mode, and the gauges say so."""
    modes = Modes(MemoryModeStore(), catalog_toml=DEFAULT_CATALOG_TOML.replace('default_mode = "off"',
                                                                               'default_mode = "warn"'))
    assert {name: r.mode for name, r in modes.view.records.items()} == dict.fromkeys(CATALOG.endpoint_names, "warn")
    assert modes.view.lookup("import_deals") == ("warn", 0.0)
    assert modes.gauge("stage_mode", endpoint="create_deal", mode="warn") == 1.0
    assert modes.gauge("stage_mode", endpoint="create_deal", mode="off") == 0.0
    assert modes.view.source == "default" and modes.gauge("stage_mode_source", source="default") == 1.0


async def test_slow_load_cannot_undo_a_change() -> None:
    """A load that started before a PUT and finishes after it is discarded, not applied."""
    store = GatedStore()
    modes = Modes(store)
    await modes.refresher.start()
    await modes.changes.change(["create_deal"], "warn", 0.0, "t", "before")
    store.gate.clear()
    slow = asyncio.create_task(modes.refresher.refresh())
    await event(store.held, what="the load to have its (old) snapshot and wait at the gate")
    await modes.changes.change(["create_deal"], "enforce", 10.0, "t", "race")
    assert not slow.done()  # the change landed while the load was held: the race is replayed
    store.gate.set()
    await slow
    assert modes.view.lookup("create_deal") == ("enforce", 10.0)
    assert modes.gauge("stage_enforce_percent", endpoint="create_deal") == 10.0


async def test_state_file_round_trip(tmp_path: Path) -> None:
    """Changes are written to the state file and read back by the next process, source state_file while degraded."""
    path = tmp_path / "modes.json"
    first = Modes(MemoryModeStore(), path)
    await first.refresher.start()
    await first.changes.change(["import_deals"], "warn", 0.0, "t", "persist")
    saved = read_state_file(path)
    assert saved is not None and saved.records["import_deals"].mode == "warn"
    store = SwitchableStore()
    store.down = True
    reborn = Modes(store, path)
    await reborn.refresher.start()
    assert reborn.view.records["import_deals"].mode == "warn"
    assert reborn.view.source == "state_file" and reborn.view.degraded


async def test_corrupt_state_file_is_reported_and_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A state file that does not parse is reported once (path and error) and the defaults apply."""
    caplog.set_level(logging.WARNING)
    path = tmp_path / "modes.json"
    path.write_text("{not json")
    store = SwitchableStore()
    store.down = True
    modes = Modes(store, path)
    await modes.refresher.start()
    reported = events(caplog, "state_file_unreadable")
    assert len(reported) == 1
    fields = reported[0].fields  # type: ignore[attr-defined]
    assert fields["path"] == str(path) and "unexpected character" in fields["error"]
    assert modes.view.source == "default" and modes.view.records["create_deal"].mode == "off"
    write_state_file(path, {"create_deal": ModeRecord("warn")})
    assert read_state_file(path) == Saved({"create_deal": ModeRecord("warn")})


async def test_store_down_degrades_once_and_recovers_once(caplog: pytest.LogCaptureFixture) -> None:
    """Redis down: last-known modes stay, one WARN for many failed loads; back up: one INFO, source again."""
    caplog.set_level(logging.INFO)
    store = SwitchableStore()
    modes = Modes(store)
    await modes.refresher.start()
    await modes.changes.change(["create_deal"], "enforce", 100.0, "t", "go")
    store.down = True
    for _ in range(3):
        await modes.refresher.refresh()
    assert modes.view.source == "last_known" and modes.view.degraded
    assert modes.view.lookup("create_deal") == ("enforce", 100.0)
    assert modes.gauge("stage_mode_source", source="last_known") == 1.0
    assert len(events(caplog, "mode_store_degraded")) == 1
    store.down = False
    await modes.refresher.refresh()
    await modes.refresher.refresh()
    assert modes.view.source == "memory" and not modes.view.degraded
    assert len(events(caplog, "mode_store_recovered")) == 1


async def test_a_downgrade_does_not_wait_for_the_store() -> None:
    """Store down: a downgrade applies here at once (pending, counted), is written first thing when the store
    answers, and what it replaced is in the history; raising enforce still needs the store."""
    store = SwitchableStore()
    modes = Modes(store)
    await modes.refresher.start()
    await modes.changes.change(["create_deal", "update_deal"], "enforce", 50.0, "t", "canary")
    store.down = True
    await modes.refresher.refresh()
    assert await modes.changes.downgrade(None, "Spike", "g") == (["create_deal", "update_deal"], False)
    assert modes.view.lookup("create_deal") == ("warn", 0.0) and len(modes.pending) == 2
    assert modes.gauge("stage_mode_pending_writes") == 2.0
    assert await modes.changes.change(["import_deals"], "off", 0.0, "ops", "quiet") is False  # warn -> off: safe
    with pytest.raises(StoreUnavailable):
        await modes.changes.change(["create_deal"], "enforce", 10.0, "ops", "again")  # away from safety: 503
    await modes.refresher.refresh()  # still down: the local changes hold
    assert modes.view.lookup("create_deal") == ("warn", 0.0)
    assert (await MemoryModeStore.load(store)).records["create_deal"].mode == "enforce"  # nothing stored yet
    store.down = False
    await modes.refresher.refresh()
    stored = (await store.load()).records
    assert {name: r.mode for name, r in stored.items()} == {"create_deal": "warn", "update_deal": "warn",
                                                            "import_deals": "off"}
    assert len(modes.pending) == 0 and modes.gauge("stage_mode_pending_writes") == 0.0
    assert [(e.endpoint, e.to_mode) for e in await store.history(10)][:3] == [
        ("import_deals", "off"), ("update_deal", "warn"), ("create_deal", "warn")]


async def test_a_newer_stored_change_wins_over_a_pending_one() -> None:
    """A replica that downgraded during the outage does not overwrite a change stored after its own."""
    store = SwitchableStore()
    modes = Modes(store)
    await modes.refresher.start()
    await modes.changes.change(["create_deal"], "enforce", 100.0, "t", "go")
    store.down = True
    assert await modes.changes.change(["create_deal"], "warn", 0.0, "ops", "rollback") is False
    ours = modes.pending.records["create_deal"].updated_at
    assert ours is not None
    await until(lambda: utc_now() > ours, what="the clock to pass our downgrade's time (ms resolution)")
    later = ModeRecord("off", 0.0, utc_now(), "other replica", "later")
    await MemoryModeStore.save(store, {"create_deal": later}, [])  # written elsewhere after our downgrade
    store.down = False
    await modes.refresher.refresh()
    assert (await store.load()).records["create_deal"] == later and modes.view.lookup("create_deal") == ("off", 0.0)


async def test_emptied_store_is_reseeded_with_known_modes(caplog: pytest.LogCaptureFixture) -> None:
    """A store that comes back empty gets this process's modes back (not defaults), with a history entry."""
    caplog.set_level(logging.WARNING)
    store = MemoryModeStore()
    modes = Modes(store)
    await modes.refresher.start()
    await modes.changes.change(["update_deal"], "enforce", 50.0, "t", "canary")
    store._records.clear()  # what a Redis restart without persistence looks like from here
    await modes.refresher.refresh()
    assert (await store.load()).records["update_deal"] == modes.view.records["update_deal"]
    assert modes.view.lookup("update_deal") == ("enforce", 50.0)
    assert len(events(caplog, "mode_store_reseeded")) == 1
    reseeded = {e.endpoint: (e.source, e.to_mode) for e in await store.history(3)}
    assert reseeded == {"create_deal": ("startup", "off"), "update_deal": ("startup", "enforce"),
                        "import_deals": ("startup", "off")}


async def test_fresh_empty_store_is_not_seeded_with_defaults() -> None:
    """With nothing known yet, an empty store stays empty: defaults are never written as if chosen."""
    store = MemoryModeStore()
    modes = Modes(store)
    await modes.refresher.start()
    await modes.refresher.refresh()
    assert (await store.load()).records == {} and await store.history(10) == []


async def test_blocks_hold_until_every_alert_resolves() -> None:
    """Two firing alerts hold the block; a re-send changes nothing; resolving one keeps it, both lifts it."""
    modes = Modes(MemoryModeStore())
    await modes.refresher.start()
    first, second = (Block(f"fp{i}", f"Alert{i}", None, "g", "t") for i in (1, 2))
    assert await modes.changes.update_blocks([first, second], []) == (["fp1", "fp2"], [])
    assert modes.view.enforce_blocked and modes.gauge("stage_enforce_blocked", endpoint="create_deal") == 1.0
    assert await modes.changes.update_blocks([first], []) == ([], [])
    assert await modes.changes.update_blocks([], ["fp1", "fp1"]) == ([], ["fp1"])
    assert modes.view.enforce_blocked and set(modes.view.blocks) == {"fp2"}
    assert await modes.changes.update_blocks([], ["fp2", "fp-unknown"]) == ([], ["fp2"])
    assert not modes.view.enforce_blocked and modes.gauge("stage_enforce_blocked", endpoint="create_deal") == 0.0
    actions = [(e.action, e.alertname) for e in reversed(await modes.store.history(10))]
    assert actions == [("block_enforce", "Alert1"), ("block_enforce", "Alert2"), ("unblock_enforce", "Alert1"),
                       ("unblock_enforce", "Alert2")]


async def test_a_block_holds_its_endpoint_only_and_a_labelless_one_all() -> None:
    """An alert with an endpoint label blocks enforce for that endpoint; one without blocks every endpoint."""
    modes = Modes(MemoryModeStore())
    await modes.refresher.start()
    await modes.changes.update_blocks([Block("fp1", "Unknown", "create_deal", "g", "t")], [])
    assert [b.fingerprint for b in modes.view.blocked_by("create_deal")] == ["fp1"]
    assert modes.view.blocked_by("update_deal") == []
    assert [modes.gauge("stage_enforce_blocked", endpoint=e) for e in ("create_deal", "update_deal")] == [1.0, 0.0]
    await modes.changes.update_blocks([Block("fp2", "Everything", None, "g", "t")], [])
    assert [b.fingerprint for b in modes.view.blocked_by("update_deal")] == ["fp2"]
    assert {b.fingerprint for b in modes.view.blocked_by("create_deal")} == {"fp1", "fp2"}
    assert modes.gauge("stage_enforce_blocked", endpoint="import_deals") == 1.0
    cleared = await modes.changes.clear_block("fp2", "alice", "resolve lost")
    assert cleared is not None and cleared.alertname == "Everything"
    assert await modes.changes.clear_block("fp2", "alice", "again") is None
    assert modes.gauge("stage_enforce_blocked", endpoint="import_deals") == 0.0
    entry = (await modes.store.history(1))[0]
    assert (entry.action, entry.actor, entry.source, entry.reason) == ("unblock_enforce", "alice", "api",
                                                                       "resolve lost")


async def test_block_firing_and_resolving_in_one_notification_stays_blocked() -> None:
    """An alert listed firing and resolved in the same notification is kept (firing wins)."""
    modes = Modes(MemoryModeStore())
    await modes.refresher.start()
    block = Block("fp", "Alert", "create_deal", "g", "t")
    assert await modes.changes.update_blocks([block], ["fp"]) == (["fp"], [])
    assert set(modes.view.blocks) == {"fp"}


async def test_downgrade_touches_only_enforcing_endpoints_once() -> None:
    """downgrade(None) moves enforcing endpoints to warn with the alert as actor; a re-send changes nothing."""
    modes = Modes(MemoryModeStore())
    await modes.refresher.start()
    await modes.changes.change(["create_deal", "update_deal"], "enforce", 100.0, "t", "go")
    await modes.changes.change(["import_deals"], "off", 0.0, "t", "stay")
    assert await modes.changes.downgrade(None, "StageEnforceErrorSpike", "g") == (["create_deal", "update_deal"], True)
    assert modes.view.records["create_deal"].updated_by == "StageEnforceErrorSpike"
    assert modes.view.records["import_deals"].mode == "off"
    assert await modes.changes.downgrade(None, "StageEnforceErrorSpike", "g") == ([], True)
    entry = (await modes.store.history(1))[0]
    assert (entry.source, entry.from_mode, entry.to_mode) == ("alertmanager", "enforce", "warn")
