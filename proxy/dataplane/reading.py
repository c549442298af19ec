"""Reading request bodies: up to a limit, never stalled forever (``--body-timeout-s`` between reads)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.streams import StreamReader

# What reading a client's body raises when the client goes away (aiohttp's payload errors, resets).
_GONE = (asyncio.IncompleteReadError, aiohttp.ClientError, ConnectionError)


class ClientGone(Exception):
    """The client went away while we were reading its body."""


class BodyTimeout(Exception):
    """The client stopped sending its body: nothing arrived for the body timeout."""


async def read_chunk(content: StreamReader, timeout_s: float) -> bytes:
    """The next piece of the body (b"" at its end); BodyTimeout after ``timeout_s`` without a byte.

    What is already buffered is taken without a timer: a body that came with its
    head (nearly all of them) costs no timeout handle.
    """
    try:
        chunk = content.read_nowait()
        if chunk or content.at_eof():
            return chunk
        async with asyncio.timeout(timeout_s):
            return await content.readany()
    except TimeoutError:
        raise BodyTimeout(f"no body bytes for {timeout_s:g} s") from None
    except _GONE as exc:
        raise ClientGone(type(exc).__name__) from exc


async def read_limited(request: web.BaseRequest, limit: int, timeout_s: float) -> tuple[bytes, bool]:
    """Read the body up to ``limit`` bytes: (bytes read, True if the body is larger)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        return b"", True
    content = request.content
    if content.is_eof():  # the whole body came with its head (nearly always): taken without awaiting
        try:
            whole = content.read_nowait()
        except _GONE as exc:
            raise ClientGone(type(exc).__name__) from exc
        return whole, len(whole) > limit
    chunks: list[bytes] = []
    size = 0
    while chunk := await read_chunk(content, timeout_s):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks), True
    return b"".join(chunks), False


async def stream_body(request: web.BaseRequest, timeout_s: float, prefix: bytes = b"") -> AsyncIterator[bytes]:
    """The request body as it arrives, after ``prefix`` (bytes already read)."""
    if prefix:
        yield prefix
    while chunk := await read_chunk(request.content, timeout_s):
        yield chunk
