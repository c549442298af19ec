"""What the mode store holds: mode records, enforce blocks and history entries (docs/redis-keys.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from proxy.catalog.stages import MODES, Mode


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


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
        return cls(data["mode"], float(percent), _text(data, "updated_at"), _text(data, "updated_by"),
                   _text(data, "reason"))


@dataclass(frozen=True, slots=True)
class Block:
    """One firing ``block_enforce`` alert; enforce is blocked while any exists."""

    fingerprint: str
    alertname: str
    endpoint: str | None
    group_key: str
    since: str

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_obj(cls, data: object) -> Block:
        if not isinstance(data, dict) or not isinstance(data.get("fingerprint"), str):
            raise ValueError(f"not a block record: {data!r:.200}")
        return cls(data["fingerprint"], _text(data, "alertname") or "", _text(data, "endpoint"),
                   _text(data, "group_key") or "", _text(data, "since") or "")


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One change, as GET /_ops/mode/history shows it."""

    action: str  # "mode", "block_enforce", "unblock_enforce", "exemption_added", "exemption_removed", ...
    actor: str
    source: str  # "api", "alertmanager", "startup"
    reason: str
    endpoint: str | None = None
    from_mode: str | None = None
    to_mode: str | None = None
    percent: float | None = None
    forced: bool = False
    alertname: str | None = None
    group_key: str | None = None
    at: str = field(default_factory=utc_now)

    def to_obj(self) -> dict[str, Any]:
        data = asdict(self)
        data["from"], data["to"] = data.pop("from_mode"), data.pop("to_mode")
        return data

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_obj())

    @classmethod
    def from_obj(cls, data: object) -> HistoryEntry:
        if not isinstance(data, dict) or not isinstance(data.get("action"), str):
            raise ValueError(f"not a history entry: {data!r:.200}")
        percent = data.get("percent")
        return cls(action=data["action"], actor=_text(data, "actor") or "", source=_text(data, "source") or "",
                   reason=_text(data, "reason") or "", endpoint=_text(data, "endpoint"),
                   from_mode=_text(data, "from"), to_mode=_text(data, "to"),
                   percent=float(percent) if isinstance(percent, int | float) and not isinstance(percent, bool)
                   else None, forced=data.get("forced") is True, alertname=_text(data, "alertname"),
                   group_key=_text(data, "group_key"), at=_text(data, "at") or "")


@dataclass(frozen=True, slots=True)
class Lease:
    """A rollout driver's hold on one endpoint (``stagectl rollout``): one driver at a time, never for ever.

    ``id`` is the driver's secret-free handle (renewals and the release must present it); the lease lapses at
    ``expires`` unless renewed. ``step``, ``percent`` and ``credited_s`` are the driver's progress: the time of
    the step that was watched with evidence, which a driver taking over a lapsed lease continues from."""

    id: str
    holder: str
    since: str
    expires: str
    step: int | None = None
    percent: float | None = None
    credited_s: float = 0.0

    def live(self, now: str) -> bool:
        return self.expires > now  # ISO 8601 UTC, one format: text order is time order

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    def public(self) -> dict[str, Any]:
        """What GET /_ops/mode shows: who, since when, until when (never the id)."""
        return {"holder": self.holder, "since": self.since, "expires": self.expires, "step": self.step,
                "percent": self.percent}

    @classmethod
    def from_obj(cls, data: object) -> Lease:
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("id", "holder", "since",
                                                                                           "expires")):
            raise ValueError(f"not a lease: {data!r:.200}")
        step, percent, credited = data.get("step"), data.get("percent"), data.get("credited_s", 0.0)
        return cls(data["id"], data["holder"], data["since"], data["expires"],
                   step if isinstance(step, int) and not isinstance(step, bool) else None,
                   float(percent) if isinstance(percent, int | float) and not isinstance(percent, bool) else None,
                   float(credited) if isinstance(credited, int | float) and not isinstance(credited, bool) else 0.0)


@dataclass(frozen=True, slots=True)
class Exemption:
    """One consumer (by the gateway's name) or client network handled as ``warn`` on one endpoint (or ``*``)
    while that endpoint enforces, until ``until`` (UTC, at most 30 days after it was made)."""

    id: str
    endpoint: str  # a catalog endpoint name, or "*"
    consumer: str | None
    client_cidr: str | None
    until: str
    reason: str
    created_at: str
    created_by: str

    def live(self, now: str) -> bool:
        return self.until > now  # ISO 8601 UTC, one format: text order is time order

    def to_obj(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_obj(cls, data: object) -> Exemption:
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("id", "endpoint", "until")):
            raise ValueError(f"not an exemption: {data!r:.200}")
        consumer, cidr = _text(data, "consumer"), _text(data, "client_cidr")
        if (consumer is None) == (cidr is None):
            raise ValueError(f"an exemption names a consumer or a client network: {data!r:.200}")
        return cls(data["id"], data["endpoint"], consumer, cidr, data["until"], _text(data, "reason") or "",
                   _text(data, "created_at") or "", _text(data, "created_by") or "")


@dataclass(frozen=True, slots=True)
class StoreState:
    """Everything one load returns: the mode of each stored endpoint, the firing enforce blocks, the rollout
    leases (live or lapsed), the exemptions (live or expired: the view ignores expired ones)."""

    records: dict[str, ModeRecord] = field(default_factory=dict)
    blocks: dict[str, Block] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)
    exemptions: dict[str, Exemption] = field(default_factory=dict)
