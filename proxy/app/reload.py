"""Catalog changes without a restart: re-read ``--config`` on SIGHUP and ``POST /_ops/reload`` (docs/catalog.md).

The new file is checked whole before anything changes — it must parse, pass
every catalog rule, and keep the running endpoints and ``default_mode``
(compare.reload_problems). Reading, checking and building the new request-path
state run in a thread, in time linear in the file's size: requests in flight
are never stalled by a reload, however large or hostile the file (the
checker refuses one past ``MAX_CATALOG_CHARS`` or nested too deeply with one
line). Then the swap is one assignment per reader: the
data plane's catalog state (a request reads it once, so one in flight
finishes on the catalog it started with) and the mode view's catalog. A
refused reload changes nothing, is logged and counted, and never stops the
process. With ``--workers``, the worker that receives ``POST /_ops/reload``
asks the supervisor to send SIGHUP to every worker, itself included.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from proxy.catalog.compare import (
    LOGGED,
    CatalogChanges,
    ReloadOutcome,
    catalog_version,
    compare,
    reload_problems,
    tightening,
)
from proxy.catalog.stages import Catalog, check_catalog
from proxy.dataplane.handler import CatalogState, DataPlane
from proxy.modes.view import ModeView
from proxy.shared import catalog_files
from proxy.shared.logs import log_event
from proxy.shared.metrics import Metrics

log = logging.getLogger("stagegate.catalog")


class Reloader:
    """Owns the running catalog's version; one reload at a time."""

    def __init__(self, path: Path | None, initial: Catalog, dataplane: DataPlane, view: ModeView,
                 metrics: Metrics, *, worker: bool = False) -> None:
        self.path = path
        self.version = catalog_version(initial)
        self._dataplane = dataplane
        self._view = view
        self._metrics = metrics
        self._worker = worker
        self._lock = asyncio.Lock()
        metrics.set_catalog(self.version)

    async def reload(self, trigger: str) -> ReloadOutcome:
        """Check the file, then swap it in or refuse it; never raises for a bad file."""
        async with self._lock:
            outcome = await self._reload()
        self._metrics.reload_children["ok" if outcome.ok else "refused"].inc()
        self._metrics.reload_ok.set(1 if outcome.ok else 0)
        if outcome.ok:
            changes = outcome.changes.as_json(LOGGED) if outcome.changes else {}
            log_event(log, logging.WARNING if outcome.warnings else logging.INFO, "catalog_reloaded",
                      trigger=trigger, version=outcome.version, previous_version=outcome.previous,
                      changed=outcome.version != outcome.previous, **{k: v for k, v in changes.items() if v},
                      **({"warnings": list(outcome.warnings)} if outcome.warnings else {}))
        else:
            log_event(log, logging.WARNING, "catalog_reload_refused", trigger=trigger, version=outcome.version,
                      problems=list(outcome.problems[:20]))
        return outcome

    def reload_all_workers(self) -> None:
        """With --workers: the supervisor forwards SIGHUP to every worker (this one too: a no-op reload)."""
        if self._worker:
            try:
                os.kill(os.getppid(), signal.SIGHUP)
            except OSError as exc:  # this worker reloaded; say the others may not have, never fail the call
                log_event(log, logging.WARNING, "catalog_reload_not_forwarded", error=str(exc)[:200])

    async def _reload(self) -> ReloadOutcome:
        current = self.version
        if self.path is None:
            return self._refused("the proxy runs the built-in catalog (no --config): there is no file to re-read")
        running = self._view.catalog
        checked = await asyncio.to_thread(_check_file, self.path, running)
        if isinstance(checked, tuple):
            return self._refused(*checked)
        enforcing = [name for name, record in self._view.records.items() if record.mode == "enforce"]
        now = time.time()
        warnings = tuple(tightening(checked.changes, enforcing)) + tuple(
            f"temporary alias {key!r} ended {checked.catalog.temporary[key].until_text}: its values are unknown "
            "now; remove it" for key in checked.catalog.expired(now))
        if checked.version != current:
            self._dataplane.use_state(checked.state)
            self._view.catalog = checked.catalog
            self.version = checked.version
            self._metrics.set_catalog(checked.version, current)
        return ReloadOutcome(True, checked.version, current, checked.changes, warnings=warnings)

    def _refused(self, *problems: str) -> ReloadOutcome:
        return ReloadOutcome(False, self.version, self.version, None, tuple(problems))


@dataclass(frozen=True, slots=True)
class _Checked:
    """A new catalog that may replace the running one, with everything the swap needs built."""

    catalog: Catalog
    version: str
    changes: CatalogChanges
    state: CatalogState


def _check_file(path: Path, running: Catalog) -> _Checked | tuple[str, ...]:
    """Read and check ``path`` against the running catalog (in a worker thread): the swap's parts, or problems."""
    try:
        text = catalog_files.read_text(path)  # as at start-up: the same bound, the same version
    except catalog_files.CatalogFileError as exc:
        return (str(exc),)
    catalog, problems = check_catalog(text)
    if catalog is None:
        return tuple(problems)
    refused = reload_problems(running, catalog)
    if refused:
        return tuple(refused)
    return _Checked(catalog, catalog_version(catalog), compare(running, catalog), CatalogState.of(catalog))
