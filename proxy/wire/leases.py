"""The rollout driver's lease answers: ``PUT`` and ``DELETE /_ops/rollout/{endpoint}``, typed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.wire.fields import flag, number, obj_of, text
from proxy.wire.modes import RolloutHold


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease as its driver sees it: who holds the endpoint until when, and the step's watched seconds."""

    hold: RolloutHold
    credited_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {**self.hold.to_json(), "credited_s": self.credited_s}

    @classmethod
    def from_json(cls, data: object) -> Lease:
        obj = obj_of(data, "a lease")
        return cls(RolloutHold.from_json(obj), number(obj, "credited_s", "a lease", optional=True) or 0.0)


@dataclass(frozen=True, slots=True)
class LeaseTaken:
    """The answer of ``PUT /_ops/rollout/{endpoint}``: the lease held now, and the lapsed one it replaced."""

    endpoint: str
    rollout: Lease
    previous: Lease | None = None

    def to_json(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "rollout": self.rollout.to_json(),
                "previous": None if self.previous is None else self.previous.to_json()}

    @classmethod
    def from_json(cls, data: object) -> LeaseTaken:
        obj = obj_of(data, "the lease answer")
        previous = obj.get("previous")
        return cls(text(obj, "endpoint", "the lease answer"), Lease.from_json(obj.get("rollout")),
                   None if previous is None else Lease.from_json(previous))


@dataclass(frozen=True, slots=True)
class LeaseReleased:
    """The answer of ``DELETE /_ops/rollout/{endpoint}``: whether this lease held the endpoint."""

    endpoint: str
    released: bool

    def to_json(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "released": self.released}

    @classmethod
    def from_json(cls, data: object) -> LeaseReleased:
        obj = obj_of(data, "the release answer")
        return cls(text(obj, "endpoint", "the release answer"), flag(obj, "released", "the release answer"))
