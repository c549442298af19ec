"""Free loopback ports and waiting for a listener (tests and bench)."""

from __future__ import annotations

import socket

from tests.support.waiting import wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    """True if something on 127.0.0.1 accepts a connection on ``port`` now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    wait_until(lambda: accepts(port), timeout_s=timeout_s, interval_s=0.02, what=f"a listener on port {port}")
