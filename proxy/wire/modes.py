"""``GET /_ops/mode`` (and ``PUT`` answers), ``GET /_ops/mode/history``, ``GET /_ops/blocks`` and a cleared
block, typed.

``to_json`` is what the proxy sends; ``from_json`` is how a client reads it, refusing (``WireError``) an answer
that is not one — a proxy of another version, or something else listening there — with one line saying what.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.catalog.stages import MODES
from proxy.wire.fields import WireError, integer, list_of, number, obj_of, text


@dataclass(frozen=True, slots=True)
class BlockRef:
    """An alert blocking enforce on an endpoint."""

    alertname: str
    fingerprint: str
    since: str
    all_endpoints: bool

    @classmethod
    def from_json(cls, data: object) -> BlockRef:
        obj = obj_of(data, "a blocked_by entry")
        return cls(text(obj, "alertname", "blocked_by"), text(obj, "fingerprint", "blocked_by"),
                   text(obj, "since", "blocked_by"), obj.get("all_endpoints") is True)


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
        obj = obj_of(data, "a rollout")
        return cls(text(obj, "holder", "rollout"), text(obj, "since", "rollout"), text(obj, "expires", "rollout"),
                   integer(obj, "step"), number(obj, "percent", "rollout", optional=True))

    def to_json(self) -> dict[str, Any]:
        return {"holder": self.holder, "since": self.since, "expires": self.expires, "step": self.step,
                "percent": self.percent}


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
                "rollout": None if self.rollout is None else self.rollout.to_json()}

    @classmethod
    def from_json(cls, data: object, name: str = "an endpoint") -> EndpointMode:
        obj = obj_of(data, name)
        mode = obj.get("mode")
        if mode not in MODES:
            raise WireError(f"{name}: mode {mode!r} is not one of {list(MODES)}")
        rollout = obj.get("rollout")
        return cls(mode, number(obj, "percent", name), text(obj, "updated_at", name, optional=True),
                   text(obj, "updated_by", name, optional=True), text(obj, "reason", name, optional=True),
                   tuple(BlockRef.from_json(b) for b in list_of(obj, "blocked_by", name)),
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
        obj = obj_of(data, "a pending write")
        return cls(text(obj, "endpoint", "pending_writes"), text(obj, "mode", "pending_writes"),
                   number(obj, "percent", "pending_writes"), text(obj, "since", "pending_writes", optional=True),
                   text(obj, "by", "pending_writes", optional=True))


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
        obj = obj_of(data, "the modes")
        endpoints = obj.get("endpoints")
        if not isinstance(endpoints, dict) or not isinstance(obj.get("source"), str):
            raise WireError("the answer has no 'source' and 'endpoints': not a stagegate proxy's /_ops/mode")
        persisted = obj.get("persisted")
        return cls(obj["source"], obj.get("enforce_blocked") is True,
                   {str(name): EndpointMode.from_json(e, f"endpoint {name!r}") for name, e in endpoints.items()},
                   tuple(PendingWrite.from_json(p) for p in list_of(obj, "pending_writes", "the modes")),
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
        obj = obj_of(data, "a history entry")
        what = "a history entry"
        return cls(text(obj, "at", what), text(obj, "action", what), text(obj, "actor", what),
                   text(obj, "source", what), text(obj, "reason", what), text(obj, "endpoint", what, optional=True),
                   text(obj, "from", what, optional=True), text(obj, "to", what, optional=True),
                   number(obj, "percent", what, optional=True), obj.get("forced") is True,
                   text(obj, "alertname", what, optional=True), text(obj, "group_key", what, optional=True))


@dataclass(frozen=True, slots=True)
class History:
    """The body of ``GET /_ops/mode/history``: newest first."""

    entries: tuple[HistoryItem, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"entries": [e.to_json() for e in self.entries]}

    @classmethod
    def from_json(cls, data: object) -> History:
        return cls(tuple(HistoryItem.from_json(e) for e in list_of(obj_of(data, "the history"), "entries",
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
        obj, what = obj_of(data, "a block"), "a block"
        return cls(text(obj, "fingerprint", what), text(obj, "alertname", what),
                   text(obj, "endpoint", what, optional=True), text(obj, "since", what),
                   text(obj, "group_key", what))


@dataclass(frozen=True, slots=True)
class Blocks:
    """The body of ``GET /_ops/blocks``."""

    enforce_blocked: bool
    blocks: tuple[BlockItem, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"enforce_blocked": self.enforce_blocked, "blocks": [b.to_json() for b in self.blocks]}

    @classmethod
    def from_json(cls, data: object) -> Blocks:
        obj = obj_of(data, "the blocks")
        return cls(obj.get("enforce_blocked") is True,
                   tuple(BlockItem.from_json(b) for b in list_of(obj, "blocks", "the blocks")))


@dataclass(frozen=True, slots=True)
class BlockCleared:
    """The answer of ``DELETE /_ops/blocks/{fingerprint}``: the block cleared, and whether any is left."""

    cleared: BlockItem
    enforce_blocked: bool

    def to_json(self) -> dict[str, Any]:
        return {"cleared": self.cleared.to_json(), "enforce_blocked": self.enforce_blocked}

    @classmethod
    def from_json(cls, data: object) -> BlockCleared:
        obj = obj_of(data, "the cleared block")
        return cls(BlockItem.from_json(obj.get("cleared")), obj.get("enforce_blocked") is True)


__all__ = ["BlockCleared", "BlockItem", "BlockRef", "Blocks", "EndpointMode", "History", "HistoryItem",
           "ModeState", "PendingWrite", "RolloutHold", "WireError"]
