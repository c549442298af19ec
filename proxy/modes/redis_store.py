"""The Redis mode store (docs/redis-keys.md): one hash of modes, one of enforce blocks, a capped history stream.

Keys, under a configurable prefix (default ``stagegate:``):

* ``{prefix}modes`` — HASH, field = endpoint name, value = JSON ModeRecord
* ``{prefix}enforce_block`` — HASH, field = alert fingerprint, value = JSON Block
* ``{prefix}rollout`` — HASH, field = endpoint name, value = JSON Lease (a rollout driver's hold; kept after it
  lapses, so that the next driver continues the step's watched time)
* ``{prefix}exemptions`` — HASH, field = exemption id, value = JSON Exemption (expired ones are removed with
  the next exemption change)
* ``{prefix}history`` — STREAM, field ``entry`` = JSON HistoryEntry, trimmed to ~1000
* ``{prefix}events`` — pub/sub channel; a message means "reload now"
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.modes.records import Block, Exemption, HistoryEntry, Lease, ModeRecord, StoreState
from proxy.modes.store import HISTORY_LIMIT, StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
RoundTrip = Callable[[str, float], None]  # (op, seconds): told after every Redis round trip

# Take a rollout lease unless another live one holds the endpoint: one round trip, atomic (Lua runs alone).
# KEYS: leases hash, history stream, events channel; ARGV: endpoint, lease JSON, lease id, now, history entries...
# Returns {held JSON, replaced JSON or false}.
_TAKE_LEASE = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
local replaced = false
if held then
  local lease = cjson.decode(held)
  if lease.id ~= ARGV[3] then
    if lease.expires > ARGV[4] then return {held, false} end
    replaced = held
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if (not held) or replaced then
  for i = 5, #ARGV do
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', '1000', '*', 'entry', ARGV[i])
  end
  redis.call('PUBLISH', KEYS[3], '["rollout"]')
end
return {ARGV[2], replaced}
"""
# Release: only the holder's own id ends it, by storing it lapsed (its progress stays for the next driver).
# KEYS as above; ARGV: endpoint, lease id, lapsed lease JSON, history entries...
_RELEASE_LEASE = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if (not held) or cjson.decode(held).id ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
for i = 4, #ARGV do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '1000', '*', 'entry', ARGV[i])
end
redis.call('PUBLISH', KEYS[3], '["rollout"]')
return 1
"""


def _decode(raw: Mapping[Any, Any], parse: Callable[[object], T], what: str) -> dict[str, T]:
    out: dict[str, T] = {}
    for name, value in raw.items():
        key = name.decode() if isinstance(name, bytes) else str(name)
        try:
            out[key] = parse(orjson.loads(value))
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("ignoring bad %s in redis for %r: %s", what, key[:100], exc)
    return out


class RedisModeStore:
    """Modes, blocks and history in Redis; every write announced on a pub/sub channel."""

    source = "redis"

    def __init__(self, url: str, prefix: str, timeout_ms: int, on_round_trip: RoundTrip) -> None:
        self._timeout_s = timeout_ms / 1000
        options: dict[str, Any] = {
            "socket_connect_timeout": self._timeout_s,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": False,
        }
        self._client = aioredis.Redis.from_url(url, socket_timeout=self._timeout_s, **options)
        self._pubsub_client = aioredis.Redis.from_url(url, **options)
        self._prefix = prefix
        self.modes_key = f"{prefix}modes"
        self.blocks_key = f"{prefix}enforce_block"
        self.leases_key = f"{prefix}rollout"
        self.exemptions_key = f"{prefix}exemptions"
        self.history_key = f"{prefix}history"
        self.channel = f"{prefix}events"
        self._on_round_trip = on_round_trip

    def __repr__(self) -> str:  # the URL may carry a password
        return f"RedisModeStore(prefix={self._prefix!r})"

    async def _timed(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(call(), self._timeout_s * 2)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis {op}: {type(exc).__name__}: {exc}") from None
        finally:
            self._on_round_trip(op, time.perf_counter() - started)

    async def load(self) -> StoreState:
        async def read() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hgetall(self.modes_key)
                pipe.hgetall(self.blocks_key)
                pipe.hgetall(self.leases_key)
                pipe.hgetall(self.exemptions_key)
                return await pipe.execute()

        modes, blocks, leases, exemptions = await self._timed("load", read)
        return StoreState(_decode(modes, ModeRecord.from_obj, "mode record"), _decode(blocks, Block.from_obj, "block"),
                          _decode(leases, Lease.from_obj, "rollout lease"),
                          _decode(exemptions, Exemption.from_obj, "exemption"))

    async def take_lease(self, endpoint: str, lease: Lease, now: str,
                         history: Sequence[HistoryEntry]) -> tuple[Lease, Lease | None]:
        keys: list[str | bytes] = [self.leases_key, self.history_key, self.channel]
        args: list[str | bytes] = [endpoint, lease.to_json(), lease.id, now, *(entry.to_json() for entry in history)]
        held, replaced = await self._timed("save", lambda: self._client.eval(_TAKE_LEASE, len(keys), *keys, *args))
        return (Lease.from_obj(orjson.loads(held)),
                Lease.from_obj(orjson.loads(replaced)) if replaced else None)

    async def release_lease(self, endpoint: str, lapsed: Lease, history: Sequence[HistoryEntry]) -> bool:
        keys: list[str | bytes] = [self.leases_key, self.history_key, self.channel]
        args: list[str | bytes] = [endpoint, lapsed.id, lapsed.to_json(), *(entry.to_json() for entry in history)]
        return bool(await self._timed("save", lambda: self._client.eval(_RELEASE_LEASE, len(keys), *keys, *args)))

    def _append(self, pipe: Pipeline, history: Sequence[HistoryEntry], changed: Sequence[str]) -> None:
        for entry in history:
            pipe.xadd(self.history_key, {"entry": entry.to_json()}, maxlen=HISTORY_LIMIT, approximate=True)
        pipe.publish(self.channel, orjson.dumps(sorted(changed)))

    async def _write(self, fill: Callable[[Pipeline], None]) -> None:
        async def write() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                fill(pipe)
                await pipe.execute()

        await self._timed("save", write)

    async def save(self, changes: Mapping[str, ModeRecord], history: Sequence[HistoryEntry]) -> None:
        mapping = {name: record.to_json() for name, record in changes.items()}

        def fill(pipe: Pipeline) -> None:
            pipe.hset(self.modes_key, mapping=mapping)  # type: ignore[arg-type]
            self._append(pipe, history, list(changes))

        await self._write(fill)

    async def seed(self, records: Mapping[str, ModeRecord], history: Sequence[HistoryEntry]) -> None:
        """Write records only where the hash has none (HSETNX: a concurrent PUT wins)."""

        def fill(pipe: Pipeline) -> None:
            for name, record in records.items():
                pipe.hsetnx(self.modes_key, name, record.to_json())
            self._append(pipe, history, list(records))

        await self._write(fill)

    async def set_blocks(self, add: Sequence[Block], remove: Sequence[str], history: Sequence[HistoryEntry]) -> None:
        def fill(pipe: Pipeline) -> None:
            if add:
                pipe.hset(self.blocks_key, mapping={b.fingerprint: b.to_json() for b in add})
            if remove:
                pipe.hdel(self.blocks_key, *remove)
            self._append(pipe, history, ["enforce_block"])

        await self._write(fill)

    async def set_exemptions(self, add: Sequence[Exemption], remove: Sequence[str],
                             history: Sequence[HistoryEntry]) -> None:
        def fill(pipe: Pipeline) -> None:
            if add:
                pipe.hset(self.exemptions_key, mapping={e.id: e.to_json() for e in add})
            if remove:
                pipe.hdel(self.exemptions_key, *remove)
            self._append(pipe, history, ["exemptions"])

        await self._write(fill)

    async def note(self, history: Sequence[HistoryEntry]) -> None:
        def fill(pipe: Pipeline) -> None:
            self._append(pipe, history, ["history"])

        await self._write(fill)

    async def history(self, limit: int) -> list[HistoryEntry]:
        rows = await self._timed("load", lambda: self._client.xrevrange(self.history_key, count=limit))
        entries = []
        for _, fields in rows or ():
            try:
                entries.append(HistoryEntry.from_obj(orjson.loads((fields or {})[b"entry"])))
            except (KeyError, ValueError) as exc:
                log.warning("ignoring bad history entry in redis: %s", exc)
        return entries

    async def watch(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` on every announcement; reconnects forever, quietly."""
        while True:
            try:
                async with self._pubsub_client.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    on_change()  # we may have missed announcements while disconnected
                    while True:
                        if await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0) is not None:
                            on_change()
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("mode pub/sub disconnected: %s", exc)
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        await self._client.aclose()
        await self._pubsub_client.aclose()
