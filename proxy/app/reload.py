"""Catalog changes without a restart: re-read ``--config`` on SIGHUP and ``POST /_ops/reload`` (docs/catalog.md).

The new file is checked whole before anything changes — it must parse, pass
every catalog rule, and keep the running endpoints and ``default_mode``
(compare.reload_problems). Then the swap is one assignment per reader: the
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
from pathlib import Path

from proxy.catalog.compare import ReloadOutcome, catalog_version, compare, reload_problems, tightening
from proxy.catalog.stages import DEFAULT_CATALOG_TOML, check_catalog
from proxy.dataplane.handler import DataPlane
from proxy.modes.view import ModeView
from proxy.shared.logs import log_event
from proxy.shared.metrics import Metrics

log = logging.getLogger("stagegate.catalog")


class Reloader:
    """Owns the running catalog's version; one reload at a time."""

    def __init__(self, path: Path | None, initial_text: str | None, dataplane: DataPlane, view: ModeView,
                 metrics: Metrics, *, worker: bool = False) -> None:
        self.path = path
        self.version = catalog_version(initial_text if initial_text is not None else DEFAULT_CATALOG_TOML)
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
            changes = outcome.changes.as_json() if outcome.changes else {}
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
        try:
            text = await asyncio.to_thread(self.path.read_text, encoding="utf-8")  # as at start-up: same version
        except OSError as exc:
            return self._refused(f"cannot read {self.path}: {exc.strerror or exc}")
        except UnicodeDecodeError:
            return self._refused(f"{self.path} is not UTF-8 text")
        catalog, problems = check_catalog(text)
        if catalog is None:
            return self._refused(*problems)
        running = self._view.catalog
        refused = reload_problems(running, catalog)
        if refused:
            return self._refused(*refused)
        version = catalog_version(text)
        changes = compare(running, catalog)
        enforcing = [name for name, record in self._view.records.items() if record.mode == "enforce"]
        warnings = tuple(tightening(changes, enforcing))
        if version != current:
            self._dataplane.use_catalog(catalog)
            self._view.catalog = catalog
            self.version = version
            self._metrics.set_catalog(version, current)
        return ReloadOutcome(True, version, current, changes, warnings=warnings)

    def _refused(self, *problems: str) -> ReloadOutcome:
        return ReloadOutcome(False, self.version, self.version, None, tuple(problems))
