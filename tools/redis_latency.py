"""``stagectl redis-latency``: GET round trips at a fixed rate, measured from the intended send time.

A GET (what the proxy's mode refresh does), not a PING. Requests leave on a
fixed schedule whatever the answers do, and each latency counts from when the
request *should* have left, so a stalled server shows as the stall it is
(no coordinated omission). Beside it, the server's own view (INFO latencystats).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tools.db import masked
from tools.errors import CommandError

KEY = "stagegate:latency-probe"
THRESHOLD_MS = 10.0  # the runbook's Week-0 bar


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def server_view(info: dict[str, Any]) -> dict[str, Any] | None:
    """GET percentiles Redis measured itself (Redis 7+), in ms."""
    raw = info.get("latency_percentiles_usec_get")
    if raw is None:
        return None
    pairs = raw.items() if isinstance(raw, dict) else (part.split("=", 1) for part in str(raw).split(","))
    return {str(name): round(float(value) / 1000, 3) for name, value in pairs}


async def measure(url: str, samples: int, rate: float, timeout_s: float = 2.0,
                  threshold_ms: float = THRESHOLD_MS) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        await client.set(KEY, b"x" * 64)
        latencies: list[float] = []

        async def one(intended: float) -> None:
            await client.get(KEY)
            latencies.append((time.perf_counter() - intended) * 1000)

        start = time.perf_counter() + 0.01
        tasks = []
        for i in range(samples):
            intended = start + i / rate
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(intended)))
        await asyncio.gather(*tasks)
        info = await client.info("latencystats")
    except (RedisError, OSError) as exc:
        raise CommandError(f"redis at {_safe(url)} unreachable or failing: {type(exc).__name__}: {exc}") from None
    finally:
        await client.aclose()
    ordered = sorted(latencies)
    figures = {"p50_ms": percentile(ordered, 0.5), "p95_ms": percentile(ordered, 0.95),
               "p99_ms": percentile(ordered, 0.99), "p99_9_ms": percentile(ordered, 0.999), "max_ms": ordered[-1]}
    result: dict[str, Any] = {"samples": samples, "rate_per_s": rate, **{k: round(v, 3) for k, v in figures.items()},
                              "threshold_ms": threshold_ms, "server": server_view(info)}
    result["ok"] = result["p99_ms"] < threshold_ms
    return result


def _safe(url: str) -> str:
    return masked(url)
