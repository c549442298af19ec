"""--state-file: the last-known modes and exemptions, kept on disk so a restart without Redis keeps them."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from proxy.modes.records import Exemption, ModeRecord, utc_now
from proxy.shared.logs import log_event

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Saved:
    records: dict[str, ModeRecord]
    exemptions: dict[str, Exemption] = field(default_factory=dict)


def read_state_file(path: Path) -> Saved | None:
    """Modes (and exemptions) saved by an earlier run, or None (missing or unreadable file: logged)."""
    try:
        data = orjson.loads(path.read_bytes())
        records = {str(name): ModeRecord.from_obj(record) for name, record in data["endpoints"].items()}
        return Saved(records, _exemptions(path, data.get("exemptions", [])))  # absent before 2026-12
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log_event(log, logging.WARNING, "state_file_unreadable", path=str(path), error=str(exc)[:200])
        return None


def _exemptions(path: Path, items: object) -> dict[str, Exemption]:
    """The saved exemptions; one that does not parse is logged and left out (the modes still count)."""
    found: dict[str, Exemption] = {}
    for item in items if isinstance(items, list) else []:
        try:
            exemption = Exemption.from_obj(item)
        except ValueError as exc:
            log_event(log, logging.WARNING, "state_file_exemption_ignored", path=str(path), error=str(exc)[:200])
            continue
        found[exemption.id] = exemption
    return found


def write_state_file(path: Path, records: Mapping[str, ModeRecord],
                     exemptions: Mapping[str, Exemption] | None = None) -> None:
    """Atomically replace the state file (temporary name, fsync, rename)."""
    payload = orjson.dumps({"saved_at": utc_now(), "endpoints": {k: asdict(v) for k, v in records.items()},
                            "exemptions": [e.to_obj() for e in (exemptions or {}).values()]})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class StateFile:
    """The configured state file, or nothing: reads and writes that never raise (failures are logged)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def load(self) -> Saved | None:
        return None if self.path is None else read_state_file(self.path)

    def save(self, records: Mapping[str, ModeRecord], exemptions: Mapping[str, Exemption]) -> None:
        if self.path is None:
            return
        try:
            write_state_file(self.path, records, exemptions)
        except OSError as exc:
            log_event(log, logging.WARNING, "state_file_write_failed", path=str(self.path), error=str(exc))
