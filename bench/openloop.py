"""A small open-loop load generator: requests leave at a fixed rate whatever the answers do.

Latency is measured from each request's *intended* send time, so a slow server
cannot hide behind a generator that waits for it (no coordinated omission).
Run: python bench/openloop.py HOST PORT PATH BODY_FILE RATE SECONDS  -> JSON on stdout
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import orjson
import uvloop

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


class OpenLoop:
    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.idle: list[Conn] = []
        self.latencies: list[float] = []
        self.lateness: list[float] = []
        self.errors = 0

    async def one(self, intended: float) -> None:
        conn = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        self.lateness.append(time.perf_counter() - intended)
        try:
            writer.write(self.request)
            status = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            self.errors += 1
            writer.close()
            return
        self.latencies.append(time.perf_counter() - intended)
        if status >= 500:
            self.errors += 1
        self.idle.append(conn)

    async def run(self, rate: float, seconds: float) -> None:
        total = int(rate * seconds)
        tasks = set()
        start = time.perf_counter() + 0.05
        for i in range(total):
            intended = start + i / rate
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.one(intended))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        for _, writer in self.idle:
            writer.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


async def main(argv: list[str]) -> dict[str, float]:
    host, port, path, body_file, rate, seconds = argv
    body = Path(body_file).read_bytes()
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    load = OpenLoop(host, int(port), request)
    await load.run(float(rate), float(seconds))
    ms = [v * 1000 for v in load.latencies]
    return {"requests": len(ms), "errors": load.errors, "p50_ms": round(statistics.median(ms), 3),
            "p90_ms": round(percentile(ms, 0.90), 3), "p99_ms": round(percentile(ms, 0.99), 3),
            "max_ms": round(max(ms), 3),
            "send_late_p99_ms": round(percentile(load.lateness, 0.99) * 1000, 3)}


if __name__ == "__main__":
    uvloop.install()
    print(orjson.dumps(asyncio.run(main(sys.argv[1:]))).decode())
