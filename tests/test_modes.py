"""ModeState unit behaviour: canary resolution, state file, and the load/change race."""

from __future__ import annotations

import asyncio
from pathlib import Path

from proxy.catalog import default_catalog
from proxy.metrics import Metrics
from proxy.modes import ModeState
from proxy.modestore import MemoryModeStore
from proxy.records import ModeRecord, StoreState
from proxy.statefile import read_state_file, write_state_file

CATALOG = default_catalog()


class GatedStore(MemoryModeStore):
    """The embedded store, but a load can be held after taking its snapshot (to replay a race)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def load(self) -> StoreState:
        snapshot = await super().load()
        await self.gate.wait()
        return snapshot


async def test_slow_load_cannot_undo_a_change() -> None:
    """A load that started before a PUT and finishes after it is discarded, not applied."""
    store = GatedStore()
    state = ModeState(CATALOG, store, Metrics(CATALOG.endpoint_names))
    await state.start()
    await state.change(["create_deal"], "warn", 0.0, "t", "before")
    store.gate.clear()
    slow = asyncio.create_task(state.refresh())
    await asyncio.sleep(0.01)  # the load has its (old) snapshot and waits
    await state.change(["create_deal"], "enforce", 10.0, "t", "race")
    store.gate.set()
    await slow
    assert state.records["create_deal"].mode == "enforce"
    assert state.effective("create_deal", "req-1") == "enforce"  # bucket 2.77 < 10


async def test_state_file_round_trip(tmp_path: Path) -> None:
    """Changes are written to the state file and read back by the next process."""
    path = tmp_path / "modes.json"
    state = ModeState(CATALOG, MemoryModeStore(), Metrics(CATALOG.endpoint_names), state_file=path)
    await state.start()
    await state.change(["import_deals"], "warn", 0.0, "t", "persist")
    saved = read_state_file(path)
    assert saved is not None and saved["import_deals"].mode == "warn"
    reborn = ModeState(CATALOG, MemoryModeStore(), Metrics(CATALOG.endpoint_names), state_file=path)
    await reborn.start()
    assert reborn.records["import_deals"].mode == "warn"


def test_corrupt_state_file_is_ignored(tmp_path: Path) -> None:
    """A state file that does not parse is reported and ignored (defaults apply)."""
    path = tmp_path / "modes.json"
    path.write_text("{not json")
    assert read_state_file(path) is None
    write_state_file(path, {"create_deal": ModeRecord("off")})
    assert read_state_file(path) == {"create_deal": ModeRecord("off")}
