"""``GET /_ops/mode`` (and ``PUT`` answers), ``GET /_ops/mode/history`` and ``GET /_ops/blocks``, typed.

``to_json`` is what the proxy sends; ``from_json`` is how a client reads it, refusing (``WireError``) an answer
that is not one — a proxy of another version, or something else listening there — with one line saying what.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from proxy.catalog.stages import MODES

T = TypeVar("T")


class WireError(ValueError):
    """An answer that is not the shape this version knows."""


def _object(data: object, what: str) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise WireError(f"{what} is not a JSON object")
    return data


def _text(data: Mapping[str, Any], key: str, what: str, *, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise WireError(f"{what}: {key!r} is not a string")
    return value


def _number(data: Mapping[str, Any], key: str, what: str, *, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(f"{what}: {key!r} is not a number")
    return float(value)


def _list(data: Mapping[str, Any], key: str, what: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise WireError(f"{what}: {key!r} is not a list")
    return value


@dataclass(frozen=True, slots=True)
class BlockRef:
    """An alert blocking enforce on an endpoint."""

    alertname: str
    fingerprint: str
    since: str
    all_endpoints: bool

    @classmethod
    def from_json(cls, data: object) -> BlockRef:
        obj = _object(data, "a blocked_by entry")
        return cls(_text(obj, "alertname", "blocked_by"), _text(obj, "fingerprint", "blocked_by"),
                   _text(obj, "since", "blocked_by"), obj.get("all_endpoints") is True)


@dataclass(frozen=True, slots=True)
class RolloutHold:
    """A rollout driver's live lease on an endpoint, as GET /_ops/mode shows it."""

    holder: str
    since: str
    expires: str
    step: int | None = None
    percent: float | None = None

    @classmethod
    def from_json(cls, data: object) -> RolloutHold:
        obj = _object(data, "a rollout")
        step = obj.get("step")
        return cls(_text(obj, "holder", "rollout"), _text(obj, "since", "rollout"), _text(obj, "expires", "rollout"),
                   step if isinstance(step, int) and not isinstance(step, bool) else None,
                   _number(obj, "percent", "rollout", optional=True))


@dataclass(frozen=True, slots=True)
class EndpointMode:
    """One endpoint's mode, who set it, what blocks its enforce and who drives it."""

    mode: str
    percent: float
    updated_at: str | None = None
    updated_by: str | None = None
    reason: str | None = None
    blocked_by: tuple[BlockRef, ...] = ()
    rollout: RolloutHold | None = None

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "percent": self.percent, "updated_at": self.updated_at,
                "updated_by": self.updated_by, "reason": self.reason,
                "blocked_by": [{"alertname": b.alertname, "fingerprint": b.fingerprint, "since": b.since,
                                "all_endpoints": b.all_endpoints} for b in self.blocked_by],
                "rollout": None if self.rollout is None else {
                    "holder": self.rollout.holder, "since": self.rollout.since, "expires": self.rollout.expires,
                    "step": self.rollout.step, "percent": self.rollout.percent}}

    @classmethod
    def from_json(cls, data: object, name: str = "an endpoint") -> EndpointMode:
        obj = _object(data, name)
        mode = obj.get("mode")
        if mode not in MODES:
            raise WireError(f"{name}: mode {mode!r} is not one of {list(MODES)}")
        rollout = obj.get("rollout")
        return cls(mode, _number(obj, "percent", name), _text(obj, "updated_at", name, optional=True),
                   _text(obj, "updated_by", name, optional=True), _text(obj, "reason", name, optional=True),
                   tuple(BlockRef.from_json(b) for b in _list(obj, "blocked_by", name)),
                   None if rollout is None else RolloutHold.from_json(rollout))


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """A downgrade applied on a replica while the mode store was unreachable, not stored yet."""

    endpoint: str
    mode: str
    percent: float
    since: str | None
    by: str | None

    def to_json(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "mode": self.mode, "percent": self.percent, "since": self.since,
                "by": self.by}

    @classmethod
    def from_json(cls, data: object) -> PendingWrite:
        obj = _object(data, "a pending write")
        return cls(_text(obj, "endpoint", "pending_writes"), _text(obj, "mode", "pending_writes"),
                   _number(obj, "percent", "pending_writes"), _text(obj, "since", "pending_writes", optional=True),
                   _text(obj, "by", "pending_writes", optional=True))


@dataclass(frozen=True, slots=True)
class ModeState:
    """The body of ``GET /_ops/mode``; a ``PUT`` answers it with ``persisted``."""

    source: str
    enforce_blocked: bool
    endpoints: dict[str, EndpointMode]
    pending_writes: tuple[PendingWrite, ...] = ()
    persisted: bool | None = None  # PUT answers only: False when the change waits for the store

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"source": self.source, "enforce_blocked": self.enforce_blocked,
                                "endpoints": {name: e.to_json() for name, e in self.endpoints.items()},
                                "pending_writes": [p.to_json() for p in self.pending_writes]}
        if self.persisted is not None:
            body["persisted"] = self.persisted
        return body

    @classmethod
    def from_json(cls, data: object) -> ModeState:
        obj = _object(data, "the modes")
        endpoints = obj.get("endpoints")
        if not isinstance(endpoints, dict) or not isinstance(obj.get("source"), str):
            raise WireError("the answer has no 'source' and 'endpoints': not a stagegate proxy's /_ops/mode")
        persisted = obj.get("persisted")
        return cls(obj["source"], obj.get("enforce_blocked") is True,
                   {str(name): EndpointMode.from_json(e, f"endpoint {name!r}") for name, e in endpoints.items()},
                   tuple(PendingWrite.from_json(p) for p in _list(obj, "pending_writes", "the modes")),
                   persisted if isinstance(persisted, bool) else None)

    def endpoint(self, name: str) -> EndpointMode:
        """One endpoint's mode; WireError naming the endpoints there are when it has none."""
        try:
            return self.endpoints[name]
        except KeyError:
            raise WireError(f"the proxy has no endpoint {name!r} (it has {sorted(self.endpoints)})") from None


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One entry of ``GET /_ops/mode/history``."""

    at: str
    action: str
    actor: str
    source: str
    reason: str
    endpoint: str | None = None
    from_mode: str | None = None
    to_mode: str | None = None
    percent: float | None = None
    forced: bool = False
    alertname: str | None = None
    group_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "action": self.action, "actor": self.actor, "source": self.source,
                "reason": self.reason, "endpoint": self.endpoint, "from": self.from_mode, "to": self.to_mode,
                "percent": self.percent, "forced": self.forced, "alertname": self.alertname,
                "group_key": self.group_key}

    @classmethod
    def from_json(cls, data: object) -> HistoryItem:
        obj = _object(data, "a history entry")
        what = "a history entry"
        return cls(_text(obj, "at", what), _text(obj, "action", what), _text(obj, "actor", what),
                   _text(obj, "source", what), _text(obj, "reason", what), _text(obj, "endpoint", what, optional=True),
                   _text(obj, "from", what, optional=True), _text(obj, "to", what, optional=True),
                   _number(obj, "percent", what, optional=True), obj.get("forced") is True,
                   _text(obj, "alertname", what, optional=True), _text(obj, "group_key", what, optional=True))


@dataclass(frozen=True, slots=True)
class History:
    """The body of ``GET /_ops/mode/history``: newest first."""

    entries: tuple[HistoryItem, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"entries": [e.to_json() for e in self.entries]}

    @classmethod
    def from_json(cls, data: object) -> History:
        return cls(tuple(HistoryItem.from_json(e) for e in _list(_object(data, "the history"), "entries",
                                                                  "the history")))


@dataclass(frozen=True, slots=True)
class BlockItem:
    """One enforce block of ``GET /_ops/blocks``."""

    fingerprint: str
    alertname: str
    endpoint: str | None
    since: str
    group_key: str

    def to_json(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "alertname": self.alertname, "endpoint": self.endpoint,
                "since": self.since, "group_key": self.group_key}

    @classmethod
    def from_json(cls, data: object) -> BlockItem:
        obj, what = _object(data, "a block"), "a block"
        return cls(_text(obj, "fingerprint", what), _text(obj, "alertname", what),
                   _text(obj, "endpoint", what, optional=True), _text(obj, "since", what),
                   _text(obj, "group_key", what))


@dataclass(frozen=True, slots=True)
class Blocks:
    """The body of ``GET /_ops/blocks``."""

    enforce_blocked: bool
    blocks: tuple[BlockItem, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"enforce_blocked": self.enforce_blocked, "blocks": [b.to_json() for b in self.blocks]}

    @classmethod
    def from_json(cls, data: object) -> Blocks:
        obj = _object(data, "the blocks")
        return cls(obj.get("enforce_blocked") is True,
                   tuple(BlockItem.from_json(b) for b in _list(obj, "blocks", "the blocks")))
