"""Scripted upstreams: real asyncio TCP servers answering with exactly the bytes a test needs.

``recording_raw_upstream`` keeps every byte it receives, per connection, so a
test can assert what did *not* reach the upstream.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from proxy.dataplane.forwarding import HEALTH_AGENT

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Reader(Protocol):
    """What reading a request needs (asyncio.StreamReader, or a tee around one)."""

    async def readuntil(self, separator: bytes) -> bytes: ...

    async def readexactly(self, n: int) -> bytes: ...


async def read_head(reader: Reader) -> bytes:
    """One request head (through the blank line); b"" if the connection ended first."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return b""


async def read_request(reader: Reader) -> tuple[bytes, bytes]:
    head = await read_head(reader)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, (await reader.readexactly(length) if length else b"")


def is_health_check(head: bytes) -> bool:
    """True for a proxy's own GET of --upstream-health-path (a spawned proxy sends one at start)."""
    return b"User-Agent: " + HEALTH_AGENT.encode() in head


async def answer_health_check(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    await writer.drain()


@asynccontextmanager
async def scripted(script: Script, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server running ``script(reader, writer, connection_number)``; yields (url, connections seen)."""
    connections: list[int] = []
    tasks: set[asyncio.Task[object]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        connections.append(len(connections))
        try:
            await script(reader, writer, len(connections) - 1)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass  # stopped at teardown: end quietly (asyncio logs a cancelled client_connected_cb task as an error)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    origin = f"https://localhost:{port}" if ssl_context else f"http://127.0.0.1:{port}"
    try:
        yield origin, connections
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


@dataclass
class RawRecord:
    """Every byte each upstream connection received, and the request heads it answered (the proxy's own health
    checks left out of ``heads``)."""

    url: str = ""
    received: list[bytearray] = field(default_factory=list)
    heads: list[bytes] = field(default_factory=list)

    @property
    def everything(self) -> bytes:
        return b"".join(bytes(chunk) for chunk in self.received)


@asynccontextmanager
async def recording_raw_upstream() -> AsyncIterator[RawRecord]:
    """A naive HTTP/1.1 upstream framing requests by Content-Length (as many legacy servers do), answering each
    with 200 and the body it read; it records every byte received."""
    record = RawRecord()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        buffer = bytearray()
        record.received.append(buffer)
        tee = _Tee(reader, buffer)
        while True:
            head, body = await read_request(tee)
            if not head:
                return
            if not is_health_check(head):  # a spawned proxy's start-up check is not a request
                record.heads.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                         % (len(body), body))
            await writer.drain()

    async with scripted(script) as (url, _):
        record.url = url
        yield record


class _Tee:
    """A StreamReader that copies what it hands out into ``buffer``."""

    def __init__(self, reader: asyncio.StreamReader, buffer: bytearray) -> None:
        self._reader = reader
        self._buffer = buffer

    async def readuntil(self, separator: bytes) -> bytes:
        data = await self._reader.readuntil(separator)
        self._buffer += data
        return data

    async def readexactly(self, n: int) -> bytes:
        data = await self._reader.readexactly(n)
        self._buffer += data
        return data
