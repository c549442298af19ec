"""Application factory: ``create_app(settings, upstream_url)`` builds every part in order, without I/O.

Order: metrics → mode store → mode view, refresher and changes → upstream pool
(connects lazily) → data plane → ops context. Nothing is set later through an
Optional. The Application carries the lifecycle: resources start and stop in
cleanup contexts (aiohttp "Cleanup Context"): the upstream pool, the mode
refresh task and the store, the log-flood flusher. The main listener calls
``Parts.dataplane.handle`` directly (proxy.app.server), not a router.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import web

from proxy.app.reload import Reloader
from proxy.app.settings import Settings
from proxy.dataplane.forwarding import Upstream
from proxy.dataplane.handler import DataPlane
from proxy.modes.changes import ModeChanges
from proxy.modes.pending import PendingWrites
from proxy.modes.redis_store import RedisModeStore
from proxy.modes.refresher import Refresher
from proxy.modes.statefile import StateFile
from proxy.modes.store import MemoryModeStore, ModeStore
from proxy.modes.view import ModeView
from proxy.ops.admin import OpsContext
from proxy.shared.clients import ClientResolver
from proxy.shared.logs import log_event
from proxy.shared.metrics import Metrics
from proxy.shared.tasks import stop_task

log = logging.getLogger("stagegate.lifecycle")


@dataclass(frozen=True, slots=True)
class Parts:
    """The proxy's parts, built once per process."""

    settings: Settings
    metrics: Metrics
    store: ModeStore
    view: ModeView
    refresher: Refresher
    changes: ModeChanges
    state_file: StateFile
    upstream: Upstream
    dataplane: DataPlane
    ops: OpsContext
    reloader: Reloader


PARTS: Final = web.AppKey("parts", Parts)


def make_store(settings: Settings, metrics: Metrics) -> ModeStore:
    """The configured mode store (no connection is made here)."""
    if settings.redis_url is None:
        return MemoryModeStore()
    return RedisModeStore(settings.redis_url, settings.redis_prefix, settings.redis_timeout_ms, metrics.observe_store)


def build_parts(settings: Settings, upstream_url: str) -> Parts:
    """Every part, in dependency order; no I/O. ``upstream_url``: --upstream, or the embedded demo's address."""
    catalog = settings.catalog
    metrics = Metrics(catalog.endpoint_names, multiprocess=settings.metrics_dir is not None)
    store = make_store(settings, metrics)
    view = ModeView(catalog, metrics)
    state_file = StateFile(settings.state_file)
    # With --workers, a downgrade stored nowhere yet is shared with the sibling workers through their directory.
    pending = PendingWrites(Path(settings.metrics_dir) if settings.metrics_dir else None)
    refresher = Refresher(view, store, state_file, refresh_ms=settings.refresh_ms, pending=pending)
    changes = ModeChanges(view, store, refresher, state_file, pending)
    upstream = Upstream(upstream_url, timeout_s=settings.upstream_timeout_s,
                        connect_timeout_s=settings.upstream_connect_timeout_s)
    dataplane = DataPlane(catalog, view, metrics, upstream, id_header=settings.request_id_header,
                          max_body_bytes=settings.max_body_bytes, warn_log_per_s=settings.warn_log_per_s,
                          body_timeout_s=settings.body_timeout_s, canary_key_header=settings.canary_key_header,
                          clients=ClientResolver(settings.trusted_proxies), consumer_header=settings.consumer_header)
    health = functools.partial(upstream.health, settings.upstream_health_path, 2.0)
    reloader = Reloader(settings.config_path, settings.catalog, dataplane, view, metrics,
                        worker=settings.worker)
    ops = OpsContext(view, changes, metrics, settings.ops_token, health, reloader, settings.consumer_header,
                     settings.trusted_proxies)
    return Parts(settings, metrics, store, view, refresher, changes, state_file, upstream, dataplane, ops, reloader)


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[PARTS].upstream.close()
    log_event(log, logging.INFO, "shutdown_upstream_closed")


async def modes_ctx(app: web.Application) -> AsyncIterator[None]:
    parts = app[PARTS]
    await parts.refresher.start()
    task = asyncio.create_task(parts.refresher.run(), name="stagegate-mode-refresh")
    yield
    await stop_task(task)
    await parts.store.close()
    parts.state_file.save(parts.view.records, parts.view.exemptions)
    log_event(log, logging.INFO, "shutdown_modes_flushed", state_file=str(parts.state_file.path or "") or None)


async def _flush_forever(dataplane: DataPlane) -> None:
    while True:
        await asyncio.sleep(1.0)
        dataplane.flood.flush()


async def flood_ctx(app: web.Application) -> AsyncIterator[None]:
    dataplane = app[PARTS].dataplane
    task = asyncio.create_task(_flush_forever(dataplane), name="stagegate-log-flush")
    yield
    await stop_task(task)
    dataplane.flood.flush()
    dataplane.inspect_pool.shutdown(wait=False, cancel_futures=True)


def create_app(settings: Settings, upstream_url: str) -> web.Application:
    """The proxy's lifecycle application (its PARTS are shared with the admin app); no routes of its own."""
    app = web.Application()
    app[PARTS] = build_parts(settings, upstream_url)
    app.cleanup_ctx.extend([modes_ctx, upstream_ctx, flood_ctx])
    return app
