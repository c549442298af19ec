"""Where modes are stored: the embedded in-memory store or Redis (docs/redis-keys.md).

Redis layout, under a configurable prefix (default ``stagegate:``):

* ``{prefix}modes`` — HASH, field = endpoint name, value = JSON ModeRecord
* ``{prefix}events`` — pub/sub channel; a message means "modes changed, reload"
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.catalog import MODES, Mode
from proxy.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreUnavailable(Exception):
    """The mode store could not be reached (or answered garbage)."""


@dataclass(frozen=True, slots=True)
class ModeRecord:
    """The stored mode of one endpoint."""

    mode: Mode
    percent: float = 0.0
    updated_at: str | None = None
    updated_by: str | None = None
    reason: str | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_obj(cls, data: object) -> ModeRecord:
        """Validate a decoded record; ValueError when it is not one."""
        if not isinstance(data, dict) or data.get("mode") not in MODES:
            raise ValueError(f"not a mode record: {data!r:.200}")
        percent = data.get("percent", 0.0)
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
            raise ValueError(f"bad percent in mode record: {percent!r:.50}")
        text = {k: v if isinstance(v := data.get(k), str) else None for k in ("updated_at", "updated_by", "reason")}
        return cls(data["mode"], float(percent), **text)


class ModeStore(Protocol):
    """What the mode resolver needs from a store."""

    source: str

    async def load(self) -> dict[str, ModeRecord]: ...

    async def save(self, changes: Mapping[str, ModeRecord]) -> None: ...

    async def seed(self, records: Mapping[str, ModeRecord]) -> None: ...

    async def watch(self, on_change: Callable[[], None]) -> None: ...

    async def close(self) -> None: ...


class MemoryModeStore:
    """The embedded store: one process, nothing survives a restart (unless --state-file)."""

    source = "memory"

    def __init__(self) -> None:
        self._records: dict[str, ModeRecord] = {}

    async def load(self) -> dict[str, ModeRecord]:
        return dict(self._records)

    async def save(self, changes: Mapping[str, ModeRecord]) -> None:
        self._records.update(changes)

    async def seed(self, records: Mapping[str, ModeRecord]) -> None:
        for name, record in records.items():
            self._records.setdefault(name, record)

    async def watch(self, on_change: Callable[[], None]) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisModeStore:
    """Modes in a Redis hash, changes announced on a pub/sub channel."""

    source = "redis"

    def __init__(self, url: str, prefix: str, timeout_ms: int, metrics: Metrics) -> None:
        self._timeout_s = timeout_ms / 1000
        options: dict[str, Any] = {
            "socket_connect_timeout": self._timeout_s,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": False,
        }
        self._client = aioredis.Redis.from_url(url, socket_timeout=self._timeout_s, **options)
        self._pubsub_client = aioredis.Redis.from_url(url, **options)
        self.modes_key = f"{prefix}modes"
        self.channel = f"{prefix}events"
        self._metrics = metrics

    def __repr__(self) -> str:  # the URL may carry a password
        return f"RedisModeStore(prefix={self.modes_key[:-5]!r})"

    async def _timed(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(call(), self._timeout_s * 2)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis {op}: {type(exc).__name__}: {exc}") from None
        finally:
            self._metrics.store_children[op].observe(time.perf_counter() - started)

    async def load(self) -> dict[str, ModeRecord]:
        raw = await self._timed("load", lambda: self._client.hgetall(self.modes_key))
        records: dict[str, ModeRecord] = {}
        for name, value in raw.items():
            try:
                key = name.decode() if isinstance(name, bytes) else name
                records[key] = ModeRecord.from_obj(orjson.loads(value))
            except (ValueError, UnicodeDecodeError) as exc:
                log.warning("ignoring bad mode record in redis for %r: %s", name[:100], exc)
        return records

    async def save(self, changes: Mapping[str, ModeRecord]) -> None:
        mapping = {name: record.to_json() for name, record in changes.items()}

        async def write() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(self.modes_key, mapping=mapping)  # type: ignore[arg-type]
                pipe.publish(self.channel, orjson.dumps(sorted(changes)))
                await pipe.execute()

        await self._timed("save", write)

    async def seed(self, records: Mapping[str, ModeRecord]) -> None:
        """Write records only where the hash has none (HSETNX: a concurrent PUT wins)."""

        async def write() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                for name, record in records.items():
                    pipe.hsetnx(self.modes_key, name, record.to_json())
                pipe.publish(self.channel, orjson.dumps(sorted(records)))
                await pipe.execute()

        await self._timed("save", write)

    async def watch(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` on every announcement; reconnects forever, quietly."""
        while True:
            try:
                async with self._pubsub_client.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    on_change()  # we may have missed announcements while disconnected
                    await self._pump(pubsub, on_change)
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("mode pub/sub disconnected: %s", exc)
            await asyncio.sleep(0.2)

    async def _pump(self, pubsub: aioredis.client.PubSub, on_change: Callable[[], None]) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                on_change()

    async def close(self) -> None:
        await self._client.aclose()
        await self._pubsub_client.aclose()
