"""Running the proxy: both listeners (and the demo upstream), started and stopped in order.

Graceful shutdown, step by step (as uvicorn does it), each step logged once:

1. stop accepting: both listening sockets close;
2. drain: idle keep-alive connections close at once, requests in flight get
   up to ``shutdown_timeout_s`` to finish; a second SIGINT/SIGTERM cuts the
   wait short and closes every connection (exit code 1);
3. close the upstream connection pool;
4. stop the mode refresher, close the store and flush the state file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from proxy.app import quiet
from proxy.app.connections import Guards, Limits
from proxy.app.demo import create_demo_app
from proxy.app.settings import EmbeddedUpstream, HostPort, Settings
from proxy.app.wiring import PARTS, create_app
from proxy.ops.admin import create_admin_app
from proxy.shared.logs import log_event
from proxy.shared.secrets import mask_url
from proxy.shared.tasks import stop_task

log = logging.getLogger("stagegate.lifecycle")

# Request handler options of the main listener: long headers allowed, bodies never decompressed.
MAIN_HANDLER_ARGS: Final[dict[str, Any]] = {"max_field_size": 16384, "auto_decompress": False}
ADMIN_DRAIN_S: Final = 1.0
ADMIN_MAX_CONNECTIONS: Final = 64  # within settings.FD_RESERVE: the admin listener answers while main is flooded
UPSTREAM_CHECK_S: Final = 2.0  # the start-up check of --upstream (a slow upstream is not an unreachable one)


class StartupError(RuntimeError):
    """The proxy could not start (port in use, …): one line for the operator."""


@dataclass(frozen=True, slots=True)
class Running:
    """Where a started proxy listens."""

    settings: Settings
    main: HostPort
    admin: HostPort
    app: web.Application
    upstream_url: str  # --upstream, or where the embedded demo upstream listens

    @property
    def url(self) -> str:
        return f"http://{self.main}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin}"


@dataclass(frozen=True, slots=True)
class Listener:
    """One bound runner: the socket, its connections and how long they may drain."""

    what: str
    runner: web.BaseRunner
    sockets: asyncio.AbstractServer
    drain_s: float
    in_flight: set[asyncio.Task[Any]] = dataclasses.field(default_factory=set)  # handler tasks, for a forced exit

    @property
    def connections(self) -> int:
        server = self.runner.server
        return len(server.connections) if server is not None else 0

    async def stop_accepting(self) -> None:
        self.sockets.close()

    async def drain(self) -> None:
        server = self.runner.server
        if server is not None:
            server.pre_shutdown()  # idle keep-alive connections close now
            await server.shutdown(self.drain_s)

    def force_close(self) -> None:
        """Cancel the handlers still running and close their connections (aiohttp waits for handlers otherwise)."""
        for task in list(self.in_flight):
            task.cancel()
        server = self.runner.server
        for connection in list(server.connections if server is not None else ()):
            connection.force_close()


async def _bind(runner: web.BaseRunner, guards: Guards | None, where: HostPort, what: str,
                reuse_port: bool) -> tuple[asyncio.AbstractServer, HostPort]:
    """Set the runner up and listen with its connections guarded (or not: the demo upstream)."""
    await runner.setup()
    assert runner.server is not None
    factory = runner.server if guards is None else guards.factory(runner.server)
    try:
        sockets = await asyncio.get_running_loop().create_server(
            factory, where.host, where.port, reuse_address=True, reuse_port=reuse_port or None, backlog=1024)
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {what} {where}: {exc.strerror or exc}") from None
    host, port = sockets.sockets[0].getsockname()[:2]
    return sockets, HostPort(host, port)


async def _shutdown(listeners: Sequence[Listener], force: asyncio.Event | None) -> None:
    """Steps 1 and 2 of the module docstring; the cleanup contexts do 3 and 4."""
    for listener in listeners:
        await listener.stop_accepting()
    open_connections = {listener.what: listener.connections for listener in listeners}
    log_event(log, logging.INFO, "shutdown_stopped_accepting", connections=open_connections,
              drain_s=max(listener.drain_s for listener in listeners))
    drain: asyncio.Future[list[None]] = asyncio.ensure_future(
        asyncio.gather(*(listener.drain() for listener in listeners)))
    forced: asyncio.Future[Any] | None = asyncio.ensure_future(force.wait()) if force is not None else None
    waiting: set[asyncio.Future[Any]] = {drain} if forced is None else {drain, forced}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if forced is not None and forced.done() and not drain.done():
        drain.cancel()
        left = sum(listener.connections for listener in listeners)
        for listener in listeners:
            listener.force_close()
        await asyncio.gather(drain, return_exceptions=True)
        log_event(log, logging.WARNING, "shutdown_forced", connections_closed=left)
    else:
        log_event(log, logging.INFO, "shutdown_drained", connections=sum(open_connections.values()))
    if forced is not None:
        forced.cancel()
    for listener in listeners:
        await listener.runner.cleanup()


@asynccontextmanager
async def running(settings: Settings, *, force: asyncio.Event | None = None) -> AsyncIterator[Running]:
    """Start the proxy (and the demo upstream with --demo); stop it gracefully on exit.

    Setting ``force`` during the drain closes the remaining connections at once.
    """
    async with AsyncExitStack() as stack:
        upstream_url = settings.upstream_url
        if isinstance(upstream_url, EmbeddedUpstream):
            demo_runner = web.AppRunner(create_demo_app(), access_log=None, shutdown_timeout=1.0)
            demo_sockets, demo = await _bind(demo_runner, None, HostPort("127.0.0.1", 0), "demo upstream", False)
            stack.push_async_callback(demo_runner.cleanup)
            stack.callback(demo_sockets.close)
            upstream_url = f"http://{demo}"
        app = create_app(settings, upstream_url)
        stack.callback(quiet.uninstall, quiet.install(app[PARTS].dataplane.flood))
        # The app's cleanup (upstream pool, modes) is pushed first so it runs after the listeners drained.
        app.freeze()
        await app.startup()
        stack.push_async_callback(app.cleanup)
        shared = settings.workers > 1  # every worker binds the same ports (SO_REUSEPORT)
        listeners = await _listeners(stack, app, settings, shared, force)
        yield Running(settings, listeners[0], listeners[1], app, upstream_url)


async def _listeners(stack: AsyncExitStack, app: web.Application, settings: Settings, shared: bool,
                     force: asyncio.Event | None) -> tuple[HostPort, HostPort]:
    """The main listener (aiohttp's low-level server calling the data plane directly) and the admin one.

    No router, middlewares or ``web.Request`` per request on the main listener
    (about 10 % of the proxy's time under load). Both guarded (proxy/app/connections.py).
    """
    parts = app[PARTS]
    main_guards = Guards(Limits(settings.max_connections, settings.header_timeout_s,
                                settings.client_write_timeout_s), "main", parts.metrics)
    server = web.Server(main_guards.wrap(parts.dataplane.handle), access_log=None,
                        keepalive_timeout=settings.idle_timeout_s, **MAIN_HANDLER_ARGS)
    main_runner = web.ServerRunner(server, shutdown_timeout=settings.shutdown_timeout_s)
    main_sockets, main = await _bind(main_runner, main_guards, settings.listen, "--listen", shared)
    listeners = [Listener("main", main_runner, main_sockets, settings.shutdown_timeout_s, parts.dataplane.in_flight)]
    stack.push_async_callback(_shutdown, listeners, force)
    admin_guards = Guards(Limits(ADMIN_MAX_CONNECTIONS, settings.header_timeout_s, settings.client_write_timeout_s),
                          "admin", parts.metrics)
    admin_app = create_admin_app(parts.ops, max_body_bytes=settings.admin_max_body_bytes,
                                 middlewares=[admin_guards.middleware()])
    admin_runner = web.AppRunner(admin_app, access_log=None, shutdown_timeout=ADMIN_DRAIN_S,
                                 keepalive_timeout=settings.idle_timeout_s)
    admin_sockets, admin = await _bind(admin_runner, admin_guards, settings.admin_listen, "--admin-listen", shared)
    listeners.append(Listener("admin", admin_runner, admin_sockets, ADMIN_DRAIN_S))
    return main, admin


def started_fields(run: Running) -> dict[str, object]:
    """The ``started`` line: where this process listens and what it runs with (credentials masked)."""
    settings, parts = run.settings, run.app[PARTS]
    store = f"redis {mask_url(settings.redis_url)} prefix {settings.redis_prefix}" if settings.redis_url else "memory"
    embedded = isinstance(settings.upstream_url, EmbeddedUpstream)
    return {"listen": str(run.main), "admin_listen": str(run.admin),
            "upstream": mask_url(run.upstream_url) + (" (embedded demo service)" if embedded else ""),
            "mode_store": store, "state_file": str(settings.state_file) if settings.state_file else None,
            "catalog": str(settings.config_path) if settings.config_path else "built-in",
            "catalog_version": parts.reloader.version, "workers": settings.workers,
            "worker": os.getpid() if settings.worker else None}


async def check_upstream(run: Running, timeout_s: float = UPSTREAM_CHECK_S) -> bool:
    """One GET of --upstream-health-path at start: a WARN ``upstream_unreachable`` when it does not answer (the
    proxy serves anyway: requests answer 502 and ``/_ops/readyz`` says why until it does). True if it answered."""
    settings = run.settings
    result = await run.app[PARTS].upstream.health(settings.upstream_health_path, timeout_s)
    if not result["ok"]:
        log_event(log, logging.WARNING, "upstream_unreachable", upstream=mask_url(run.upstream_url),
                  path=settings.upstream_health_path, error=result.get("error"),
                  detail="serving anyway: requests answer 502 and /_ops/readyz is not ready until it answers")
    return bool(result["ok"])


def banner(run: Running) -> str:
    """What to curl, printed to stderr in demo mode (logs stay JSON on stdout)."""
    token = "set" if run.settings.ops_token else "none: PUT answers 403; set STAGE_OPS_TOKEN to enable it"
    bearer = run.settings.ops_token_shell or "<token>"
    url, admin = run.url.replace("0.0.0.0", "127.0.0.1"), run.admin_url
    return f"""
stagegate demo: proxy {url} -> embedded legacy service {run.upstream_url}; admin {admin}
ops token: {token}

  curl -si {url}/api/v1/deals -H 'Content-Type: application/json' -d '{{"name":"Acme","stage":"Closed Won"}}'
  curl -s {admin}/_ops/mode
  curl -s -X PUT {admin}/_ops/mode -H "Authorization: Bearer {bearer}" \\
       -d '{{"endpoint":"*","mode":"enforce","percent":100,"reason":"demo"}}'
  curl -si {url}/api/v1/deals -H 'Content-Type: application/json' -d '{{"name":"Acme","stage":"maybe"}}'
  curl -s {admin}/metrics | grep stage_validation_total
"""


async def serve(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM, then shut down gracefully; a second signal forces the exit (code 1)."""
    stop, force = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            log_event(log, logging.INFO, "shutdown_started", signal=signal.Signals(signum).name,
                      detail="a second signal forces the exit")
            stop.set()
        elif not force.is_set():
            log_event(log, logging.WARNING, "shutdown_force_requested", signal=signal.Signals(signum).name)
            force.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    reloads: set[asyncio.Task[object]] = set()
    async with running(settings, force=force) as run:
        reloader = run.app[PARTS].reloader

        def on_hangup() -> None:  # re-read --config; a bad file is refused and logged, never fatal
            task = asyncio.create_task(reloader.reload("SIGHUP"), name="stagegate-reload")
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        if threading.current_thread() is threading.main_thread():
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # one held since start-up runs now
        log_event(log, logging.INFO, "started", **started_fields(run))
        probe = asyncio.create_task(check_upstream(run), name="stagegate-upstream-check")
        if settings.demo:
            print(banner(run), file=sys.stderr, flush=True)
        await stop.wait()
        await stop_task(probe)
        if threading.current_thread() is threading.main_thread():
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})  # while draining: held, never the default kill
        loop.remove_signal_handler(signal.SIGHUP)
    log_event(log, logging.INFO, "shutdown_complete", forced=force.is_set())
    return 1 if force.is_set() else 0
