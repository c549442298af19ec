"""``stagectl redis-latency``: how long a GET takes, seen from a client and from Redis itself.

A GET (what the proxy's mode refresh does), not a PING, on one dedicated
connection, in a tight loop on its own thread: each sample is the round trip
from the moment the request is written to the moment its reply is read
(``perf_counter_ns``), so a late wake-up of this process *before* a send (a busy
host's scheduling, timer slack) is not counted as Redis latency. Requests are
paced at ``--rate`` and the first ``--warmup`` samples (connection set-up, cold
caches) are discarded.

Beside it, Redis's own view over the same window: the difference of
``LATENCY HISTOGRAM GET`` (Redis 7; cumulative power-of-two microsecond
buckets) before and after, or the mean from ``INFO commandstats`` on older
servers. When the client's p99 misses the bar while Redis's own p99 is far
under it, the output says so: the time went to the network or to this host.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import RedisError, ResponseError

from proxy.shared.secrets import mask_url
from tools.shared.errors import EXIT_USAGE, CommandError

KEY = "stagegate:latency-probe"
THRESHOLD_MS = 10.0  # the runbook's Week-0 bar
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("p99_9", 0.999))


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


@dataclass(frozen=True)
class Plan:
    samples: int
    rate: float
    warmup: int = 100
    timeout_s: float = 2.0


def _histogram(client: redis.Redis) -> dict[int, int] | None:
    """GET's cumulative latency histogram (bucket upper bound in µs -> calls at or below), None before Redis 7."""
    try:
        reply = client.execute_command("LATENCY", "HISTOGRAM", "get")  # type: ignore[no-untyped-call]
    except ResponseError:
        return None
    entry = reply.get(b"get") or reply.get("get") or {}
    raw = entry.get(b"histogram_usec") or entry.get("histogram_usec") or {}
    return {int(bound): int(count) for bound, count in raw.items()}


def _commandstats(client: redis.Redis) -> tuple[int, int]:
    stats = client.info("commandstats").get("cmdstat_get") or {}
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def server_view(before: dict[int, int] | None, after: dict[int, int] | None,
                stats_before: tuple[int, int], stats_after: tuple[int, int]) -> dict[str, Any] | None:
    """Redis's own GET timings over the run (every client's GETs, not only ours), in ms."""
    calls = stats_after[0] - stats_before[0]
    if calls <= 0:
        return None
    view: dict[str, Any] = {"calls": calls, "mean_ms": round((stats_after[1] - stats_before[1]) / calls / 1000, 4)}
    if before is None or after is None:
        view["source"] = "INFO commandstats (mean only; LATENCY HISTOGRAM needs Redis 7)"
        return view
    bounds = sorted(after)
    window = [(bound, after[bound] - before.get(bound, _below(before, bound))) for bound in bounds]
    total = window[-1][1] if window else 0
    view["source"] = "LATENCY HISTOGRAM GET (bucket upper bounds)"
    for name, q in (*QUANTILES, ("max", 1.0)):
        view[f"{name}_ms"] = next((round(bound / 1000, 4) for bound, count in window if count >= q * total), None)
    return view


def _below(histogram: dict[int, int], bound: int) -> int:
    """The cumulative count at ``bound`` for a bucket the earlier histogram did not list yet."""
    smaller = [count for b, count in histogram.items() if b < bound]
    return max(smaller, default=0)


def _paced(client: redis.Redis, count: int, gap: float) -> list[float]:
    """``count`` GETs at most one per ``gap`` seconds; each one's round trip in ms."""
    latencies: list[float] = []
    next_send = time.perf_counter()
    for _ in range(count):
        pause = next_send - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        next_send = max(next_send + gap, time.perf_counter() - gap)  # no catch-up burst after a stall
        started = time.perf_counter_ns()
        client.get(KEY)
        latencies.append((time.perf_counter_ns() - started) / 1e6)
    return latencies


def _slowlog_id(client: redis.Redis) -> int | None:
    try:
        entries = client.slowlog_get(1)
    except ResponseError:  # SLOWLOG denied by an ACL: we just cannot tell
        return None
    return int(entries[0]["id"]) if entries else -1


def _slow_since(client: redis.Redis, last_id: int | None) -> list[dict[str, Any]] | None:
    """Commands Redis logged as slow during the run (any client): the GETs queued behind them."""
    if last_id is None:
        return None
    entries = [e for e in client.slowlog_get(128) if int(e["id"]) > last_id]
    return [{"command": _command_name(e.get("command")), "ms": round(int(e["duration"]) / 1000, 3)}
            for e in sorted(entries, key=lambda e: -int(e["duration"]))]


def _command_name(raw: object) -> str:
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    return text.split(" ", 1)[0].upper()[:32]  # the command, never its arguments (keys, values)


def _measure_sync(url: str, plan: Plan) -> tuple[list[float], dict[str, Any] | None]:
    client = redis.Redis.from_url(url, single_connection_client=True, socket_connect_timeout=plan.timeout_s,
                                  socket_timeout=plan.timeout_s)
    try:
        client.set(KEY, b"x" * 64)
        gap = 1.0 / plan.rate
        _paced(client, plan.warmup, gap)  # connection set-up, cold caches: not counted, not in Redis's window
        hist_before, stats_before, slow_before = _histogram(client), _commandstats(client), _slowlog_id(client)
        latencies = _paced(client, plan.samples, gap)
        view = server_view(hist_before, _histogram(client), stats_before, _commandstats(client))
        if view is not None:
            view["slow_commands"] = _slow_since(client, slow_before)
    finally:
        client.close()
    return latencies, view


async def measure(url: str, samples: int, rate: float, timeout_s: float = 2.0, threshold_ms: float = THRESHOLD_MS,
                  warmup: int = 100) -> dict[str, Any]:
    """Measure on a worker thread; a CommandError naming the problem when Redis cannot be reached."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise CommandError(f"--redis-url must be a redis://, rediss:// or unix:// URL, got {mask_url(url)!r}",
                           EXIT_USAGE)
    try:
        latencies, view = await asyncio.to_thread(_measure_sync, url, Plan(samples, rate, warmup, timeout_s))
    except ValueError as exc:  # a URL redis-py cannot parse (bad port, bad db)
        raise CommandError(f"--redis-url {mask_url(url)!r}: {exc}", EXIT_USAGE) from None
    except (RedisError, OSError) as exc:
        raise CommandError(f"redis at {mask_url(url)} unreachable or failing: {type(exc).__name__}: {exc}") from None
    ordered = sorted(latencies)
    result: dict[str, Any] = {"target": mask_url(url), "samples": samples, "warmup_discarded": warmup,
                              "rate_per_s": rate}
    result.update({f"{name}_ms": round(percentile(ordered, q), 3) for name, q in QUANTILES})
    result["max_ms"] = round(ordered[-1], 3)
    result.update({"threshold_ms": threshold_ms, "server": view})
    result["ok"] = result["p99_ms"] < threshold_ms
    result["note"] = _disagreement(result)
    return result


def _disagreement(result: dict[str, Any]) -> str | None:
    """Why the client saw more than Redis did, when it failed the bar."""
    server = result["server"] or {}
    inside = server.get("p99_ms", server.get("mean_ms"))
    if result["ok"] or inside is None or inside >= result["threshold_ms"] / 10:
        return None
    slow = server.get("slow_commands") or []
    if slow:
        return (f"Redis executed GETs in <= {inside:g} ms at p99, but ran {len(slow)} slow command(s) meanwhile "
                f"(slowest: {slow[0]['command']} {slow[0]['ms']:g} ms, from SLOWLOG): the GETs queued behind them")
    return (f"client and server disagree: Redis itself executed GETs in <= {inside:g} ms at p99, so the "
            f"{result['p99_ms']:g} ms went to the network or to this host's scheduling; rerun, or measure from the "
            "proxy's host")


def render(result: dict[str, Any]) -> str:
    """A table with units, the verdict line, and the disagreement note if any."""
    columns = ("p50", "p95", "p99", "p99_9", "max")
    head = f"{'':<8}" + "".join(f"{name.replace('_', '.'):>9}" for name in columns)
    client = f"{'client':<8}" + "".join(f"{result[f'{name}_ms']:>9.3f}" for name in columns)
    lines = [f"Redis GET latency at {result['target']}: {result['samples']} samples at {result['rate_per_s']:g}/s "
             f"on one connection ({result['warmup_discarded']} warm-up samples discarded)", "",
             head + "  (ms)", client + "  round trip from this host"]
    server = result["server"]
    if server and "p50_ms" in server:
        cells = "".join(f"{_ms(server.get(f'{name}_ms')):>9}" for name in columns)
        lines.append(f"{'server':<8}{cells}  Redis's own timing, <= bucket bound ({server['calls']} GETs)")
    elif server:
        lines.append(f"server: mean {server['mean_ms']:g} ms over {server['calls']} GETs ({server['source']})")
    verdict = "PASS" if result["ok"] else "FAIL"
    relation = "<" if result["ok"] else ">="
    lines += ["", f"{verdict}: client p99 {result['p99_ms']:g} ms {relation} {result['threshold_ms']:g} ms"]
    if result["note"]:
        lines.append(f"note: {result['note']}")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
