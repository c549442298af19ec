"""The exemption answers: ``PUT``, ``GET`` and ``DELETE /_ops/exemptions``, typed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.wire.fields import WireError, list_of, obj_of, text


@dataclass(frozen=True, slots=True)
class Exemption:
    """One exemption: a consumer (by name) or a client network handled as warn on an endpoint (or ``*``) until
    ``until``."""

    id: str
    endpoint: str
    consumer: str | None
    client_cidr: str | None
    until: str
    reason: str
    created_at: str
    created_by: str

    @property
    def who(self) -> str:
        return f"consumer {self.consumer}" if self.consumer is not None else f"clients {self.client_cidr}"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "endpoint": self.endpoint, "consumer": self.consumer, "client_cidr": self.client_cidr,
                "until": self.until, "reason": self.reason, "created_at": self.created_at,
                "created_by": self.created_by}

    @classmethod
    def from_json(cls, data: object) -> Exemption:
        what = "an exemption"
        obj = obj_of(data, what)
        consumer, cidr = text(obj, "consumer", what, optional=True), text(obj, "client_cidr", what, optional=True)
        if (consumer is None) == (cidr is None):
            raise WireError(f"{what}: names neither or both of 'consumer' and 'client_cidr'")
        return cls(text(obj, "id", what), text(obj, "endpoint", what), consumer, cidr, text(obj, "until", what),
                   text(obj, "reason", what), text(obj, "created_at", what), text(obj, "created_by", what))


@dataclass(frozen=True, slots=True)
class Exemptions:
    """The answer of ``GET /_ops/exemptions``: the live exemptions, soonest to end first."""

    exemptions: tuple[Exemption, ...]

    def to_json(self) -> dict[str, Any]:
        return {"exemptions": [exemption.to_json() for exemption in self.exemptions]}

    @classmethod
    def from_json(cls, data: object) -> Exemptions:
        obj = obj_of(data, "the exemptions")
        return cls(tuple(Exemption.from_json(item) for item in list_of(obj, "exemptions", "the exemptions")))


@dataclass(frozen=True, slots=True)
class ExemptionRemoved:
    """The answer of ``DELETE /_ops/exemptions/{id}``: the exemption ended."""

    removed: Exemption

    def to_json(self) -> dict[str, Any]:
        return {"removed": self.removed.to_json()}

    @classmethod
    def from_json(cls, data: object) -> ExemptionRemoved:
        return cls(Exemption.from_json(obj_of(data, "the removed exemption").get("removed")))
