"""``stage-proxy`` entry point: thin — settings, logging, event loop, exit code."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence

from proxy.app.server import StartupError, serve
from proxy.app.settings import SettingsError, load_settings
from proxy.app.workers import Supervisor
from proxy.shared import logs


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # optional: the stdlib loop works, only slower
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the proxy; 0 on clean shutdown, 2 on bad configuration, 1 on startup failure or a forced exit."""
    env = os.environ if environ is None else environ
    if threading.current_thread() is threading.main_thread():
        # Held, not lost, until serve() can reload: a blocked signal stays pending (and the mask is inherited by
        # workers from birth), so a SIGHUP that arrives while starting is never fatal and reloads once ready.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        settings = load_settings(argv, env)
    except SettingsError as exc:
        print(f"stage-proxy: error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    if settings.workers > 1 and not settings.worker:
        return Supervisor(sys.argv[1:] if argv is None else argv, settings.workers, environ=env,
                          stop_grace_s=settings.shutdown_timeout_s + 5.0).run()
    _install_uvloop()
    try:
        return asyncio.run(serve(settings))
    except StartupError as exc:
        print(f"stage-proxy: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
