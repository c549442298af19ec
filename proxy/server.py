"""Running the proxy: both listeners (and the demo upstream), started and stopped in order.

Graceful shutdown, step by step: stop accepting on the admin and main
listeners, let in-flight requests finish (up to ``shutdown_timeout_s``), then
close the upstream pool and the mode store (cleanup contexts), then the demo.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from proxy.app import CONTEXT, create_app
from proxy.demo import create_demo_app
from proxy.ops import create_admin_app
from proxy.settings import HostPort, Settings

# Request handler options of the main listener: long headers allowed, bodies never decompressed.
MAIN_HANDLER_ARGS: Final[dict[str, Any]] = {"max_field_size": 16384, "auto_decompress": False}


class StartupError(RuntimeError):
    """The proxy could not start (port in use, …): one line for the operator."""


@dataclass(frozen=True, slots=True)
class Running:
    """Where a started proxy listens."""

    settings: Settings
    main: HostPort
    admin: HostPort
    app: web.Application

    @property
    def url(self) -> str:
        return f"http://{self.main}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin}"


async def _listen(stack: AsyncExitStack, runner: web.BaseRunner, where: HostPort, what: str,
                  reuse_port: bool) -> HostPort:
    """Set the runner up (cleaned on exit) and bind it; the address it got."""
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, where.host, where.port, reuse_address=True, reuse_port=reuse_port or None,
                       backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        raise StartupError(f"cannot listen on {what} {where}: {exc.strerror or exc}") from None
    host, port = runner.addresses[0][:2]
    return HostPort(host, port)


async def _start(stack: AsyncExitStack, app: web.Application, where: HostPort, what: str,
                 shutdown_timeout_s: float, *, reuse_port: bool = False) -> HostPort:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout_s)
    return await _listen(stack, runner, where, what, reuse_port)


async def _start_main(stack: AsyncExitStack, app: web.Application, where: HostPort, shutdown_timeout_s: float,
                      *, reuse_port: bool) -> HostPort:
    """The main listener: aiohttp's low-level server calling the data plane directly.

    No router, middlewares or ``web.Request`` per request (about 10 % of the
    proxy's time under load); the Application only carries the lifecycle
    (cleanup contexts: upstream pool, mode store, log flusher). Its cleanup is
    pushed first so it runs after the runner has drained in-flight requests.
    """
    app.freeze()
    await app.startup()
    stack.push_async_callback(app.cleanup)
    server = web.Server(app[CONTEXT].dataplane.handle, access_log=None, **MAIN_HANDLER_ARGS)
    runner = web.ServerRunner(server, shutdown_timeout=shutdown_timeout_s)
    return await _listen(stack, runner, where, "--listen", reuse_port)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Running]:
    """Start the proxy (and the demo upstream with --demo); stop it on exit."""
    async with AsyncExitStack() as stack:
        if settings.demo and settings.upstream_url is None:
            demo = await _start(stack, create_demo_app(), HostPort("127.0.0.1", 0), "demo upstream", 1.0)
            settings = dataclasses.replace(settings, upstream_url=f"http://{demo}")
        app = create_app(settings)
        shared = settings.workers > 1  # every worker binds the same ports (SO_REUSEPORT)
        main = await _start_main(stack, app, settings.listen, settings.shutdown_timeout_s, reuse_port=shared)
        admin = await _start(stack, create_admin_app(app[CONTEXT]), settings.admin_listen, "--admin-listen", 1.0,
                             reuse_port=shared)
        yield Running(settings, main, admin, app)


def banner(run: Running) -> str:
    """What to curl, printed to stderr in demo mode (logs stay JSON on stdout)."""
    token = "set (scripts/demo uses 'demo-token' unless STAGE_OPS_TOKEN is set)" if run.settings.ops_token else (
        "none: PUT answers 403; set STAGE_OPS_TOKEN to enable it")
    url, admin = run.url.replace("0.0.0.0", "127.0.0.1"), run.admin_url
    return f"""
stagegate demo: proxy {url} -> embedded legacy service {run.settings.upstream_url}; admin {admin}
ops token: {token}

  curl -si {url}/api/v1/deals -H 'Content-Type: application/json' -d '{{"name":"Acme","stage":"Closed Won"}}'
  curl -s {admin}/_ops/mode
  curl -s -X PUT {admin}/_ops/mode -H "Authorization: Bearer ${{STAGE_OPS_TOKEN:-demo-token}}" \\
       -d '{{"endpoint":"*","mode":"enforce","percent":100,"reason":"demo"}}'
  curl -si {url}/api/v1/deals -H 'Content-Type: application/json' -d '{{"name":"Acme","stage":"maybe"}}'
  curl -s {admin}/metrics | grep stage_validation_total
"""


async def serve(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with running(settings) as run:
        if settings.demo:
            print(banner(run), file=sys.stderr, flush=True)
        await stop.wait()
    return 0
