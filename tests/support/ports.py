"""Free loopback ports and waiting for a listener (tests and bench).

A port is handed out from *below* the kernel's ephemeral range, never from it: a port found free by binding to 0
comes from that range, and while a test starts its server on it any outgoing connection on the machine (a proxy to
its upstream, Tomcat to itself) may take it as its source port — the server then fails to bind, seen in CI as "a
listener never came up". Ports handed out are remembered so two calls in one process never return the same one.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

from tests.support.waiting import wait_until

_FLOOR = 10_000
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A loopback port nothing uses now, outside the ephemeral range, not handed out before by this process."""
    ceiling = _ephemeral_low()
    if ceiling - _FLOOR >= 1_000:
        for _ in range(200):
            port = random.randrange(_FLOOR, ceiling)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket() as sock:  # an unusual range: fall back to the kernel's choice
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
    _handed_out.add(chosen)
    return chosen


def accepts(port: int) -> bool:
    """True if something on 127.0.0.1 accepts a connection on ``port`` now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    wait_until(lambda: accepts(port), timeout_s=timeout_s, interval_s=0.02, what=f"a listener on port {port}")
