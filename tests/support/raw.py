"""A raw-socket HTTP client: exactly the bytes a test writes, everything the proxy answers."""

from __future__ import annotations

import asyncio

import httptools


async def exchange(port: int, data: bytes, *, idle_s: float = 1.0, total_s: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection; all bytes received until the proxy closes or stays quiet ``idle_s``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_all(reader, idle_s=idle_s, total_s=total_s)
    finally:
        writer.close()


async def read_all(reader: asyncio.StreamReader, *, idle_s: float = 1.0, total_s: float = 10.0) -> bytes:
    received = bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + total_s
    while loop.time() < deadline:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), idle_s)
        except TimeoutError:
            break
        except ConnectionError:
            break
        if not chunk:
            break
        received += chunk
    return bytes(received)


async def closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """True if the peer closes (EOF or reset) within ``timeout_s``, whatever it sends first."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


def request(method: str, path: str, body: bytes = b"", *, headers: dict[str, str] | None = None,
            close: bool = True) -> bytes:
    """One HTTP/1.1 request as bytes (JSON body, Content-Length), with ``headers`` added; ``Connection: close``
    unless told otherwise, so that reading the answer ends when the proxy closes."""
    lines = [f"{method} {path} HTTP/1.1", "Host: stagegate.test"] + (["Connection: close"] if close else [])
    if body or method in ("POST", "PATCH", "PUT"):
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def body_of(answer: bytes) -> bytes:
    """The body of one raw HTTP/1.1 response, de-chunked (httptools reads the framing)."""
    pieces: list[bytes] = []

    class Sink:
        def on_body(self, body: bytes) -> None:
            pieces.append(body)

    parser = httptools.HttpResponseParser(Sink())
    try:
        parser.feed_data(answer)
    except httptools.HttpParserError:
        pass  # a close-delimited or truncated answer: what arrived is the body
    return b"".join(pieces)
