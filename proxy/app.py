"""Application factories: ``create_app(settings)`` wires the proxy without doing I/O.

The Application carries the proxy's shared context and lifecycle; resources
live in cleanup contexts (aiohttp "Cleanup Context"): the upstream connection
pool, the mode store and its refresh task, the log-flood flusher. The main
listener calls ``dataplane.handle`` directly (proxy.server), not a router.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

from proxy.dataplane import DataPlane
from proxy.forwarding import Upstream
from proxy.metrics import Metrics
from proxy.modes import ModeState
from proxy.modestore import MemoryModeStore, ModeStore
from proxy.ops import OpsContext
from proxy.redisstore import RedisModeStore
from proxy.settings import Settings
from proxy.tasks import stop_task

SETTINGS: Final = web.AppKey("settings", Settings)
CONTEXT: Final = web.AppKey("context", OpsContext)
STORE: Final = web.AppKey("store", ModeStore)


def make_store(settings: Settings, metrics: Metrics) -> ModeStore:
    """The configured mode store (no connection is made here)."""
    if settings.redis_url is None:
        return MemoryModeStore()
    return RedisModeStore(settings.redis_url, settings.redis_prefix, settings.redis_timeout_ms, metrics)


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if settings.upstream_url is None:
        raise RuntimeError("upstream_url is unset: start the demo upstream first (proxy.server.running)")
    upstream = Upstream(settings.upstream_url, timeout_s=settings.upstream_timeout_s,
                        connect_timeout_s=settings.upstream_connect_timeout_s)
    app[CONTEXT].dataplane.upstream = upstream
    yield
    app[CONTEXT].dataplane.upstream = None
    await upstream.pool.close()


async def modes_ctx(app: web.Application) -> AsyncIterator[None]:
    modes = app[CONTEXT].modes
    await modes.start()
    task = asyncio.create_task(modes.run(), name="stagegate-mode-refresh")
    yield
    await stop_task(task)
    await app[STORE].close()


async def _flush_forever(dataplane: DataPlane) -> None:
    while True:
        await asyncio.sleep(1.0)
        dataplane.flood.flush()


async def flood_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_flush_forever(app[CONTEXT].dataplane), name="stagegate-log-flush")
    yield
    await stop_task(task)
    app[CONTEXT].dataplane.flood.flush()


def create_app(settings: Settings) -> web.Application:
    """The proxy's application (lifecycle and CONTEXT, shared with the admin app); no routes of its own."""
    catalog = settings.catalog
    metrics = Metrics(catalog.endpoint_names)
    store = make_store(settings, metrics)
    modes = ModeState(catalog, store, metrics, state_file=settings.state_file, refresh_ms=settings.refresh_ms)
    dataplane = DataPlane(catalog, modes, metrics, id_header=settings.request_id_header,
                          max_body_bytes=settings.max_body_bytes, warn_log_per_s=settings.warn_log_per_s)
    app = web.Application()
    app[SETTINGS] = settings
    app[STORE] = store
    app[CONTEXT] = OpsContext(catalog, modes, metrics, dataplane, settings.ops_token, settings.upstream_health_path)
    app.cleanup_ctx.extend([upstream_ctx, modes_ctx, flood_ctx])
    return app
