"""``python -m proxy`` and the ``stage-proxy`` script: hold SIGHUP first, then import the proxy.

SIGHUP means "re-read --config"; its default action kills. Importing the proxy
takes a few hundred milliseconds, so the signal is blocked before anything
else: one that arrives while starting stays pending and becomes a reload once
the proxy serves (proxy/app/server.py), and workers inherit the mask.
"""

import signal
import sys
import threading


def main() -> int:
    if threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    from proxy.app.cli import main as run

    return run()


if __name__ == "__main__":
    sys.exit(main())
