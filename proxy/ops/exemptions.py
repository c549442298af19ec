"""``PUT /_ops/exemptions``: one consumer or client network handled as warn while its endpoint enforces.

The body names a consumer (the ``--consumer-header`` value a trusted gateway sets) or a client network, an
endpoint (or ``*``), an ``until`` (RFC 3339 with a zone, in the future, at most :data:`MAX_DAYS` ahead: an
exemption is time for a late consumer, never a permanent hole) and a reason (docs/ops-plane.md, "Exemptions").
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from proxy.shared.clients import Network, unmapped

MAX_DAYS: Final = 30
MAX_LIVE: Final = 100  # live exemptions per store: each is checked on every enforced request it may apply to
MAX_CONSUMER: Final = 128
FIELDS: Final = frozenset({"consumer", "client_cidr", "endpoint", "until", "reason", "actor"})


class ExemptionBodyError(ValueError):
    """The body is not an exemption; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class ExemptionRequest:
    endpoint: str
    consumer: str | None
    client_cidr: str | None
    until: str  # normalized: UTC, milliseconds
    reason: str
    actor: str


def new_id() -> str:
    return f"ex-{secrets.token_hex(6)}"


def _string(body: dict[str, Any], key: str, limit: int) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ExemptionBodyError(f"{key!r} must be a non-empty string")
    if len(value) > limit:
        raise ExemptionBodyError(f"{key!r} is longer than {limit} characters")
    if not value.isprintable():
        raise ExemptionBodyError(f"{key!r} holds control characters")
    return value.strip()


def _until(value: object, now: datetime) -> str:
    if not isinstance(value, str):
        raise ExemptionBodyError("'until' is required: an RFC 3339 time with a zone, e.g. 2026-12-19T00:00:00Z")
    try:
        until = datetime.fromisoformat(value[:40])
    except ValueError:
        raise ExemptionBodyError(f"'until' {value[:40]!r} is not an RFC 3339 time (2026-12-19T00:00:00Z)") from None
    if until.tzinfo is None:
        raise ExemptionBodyError("'until' needs a zone (Z or +01:00): a bare time means different things to "
                                 "different replicas")
    if until <= now:
        raise ExemptionBodyError(f"'until' {value[:40]!r} is not in the future")
    if until > now + timedelta(days=MAX_DAYS):
        raise ExemptionBodyError(f"'until' is more than {MAX_DAYS} days ahead: an exemption is time for a late "
                                 "consumer; renew it if they need more")
    return until.astimezone(UTC).isoformat(timespec="milliseconds")


def _network(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        network = unmapped(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ExemptionBodyError(f"'client_cidr' {value[:60]!r} is not an address or CIDR network") from None
    if network.prefixlen == 0:
        raise ExemptionBodyError("'client_cidr' is every address: to hold the whole endpoint in warn, set its "
                                 "mode to warn")
    return str(network)


def overlaps(cidr: str, trusted: tuple[Network, ...]) -> bool:
    """True if the client network ``cidr`` shares an address with a trusted proxy network."""
    network = ipaddress.ip_network(cidr)
    return any(network.version == other.version and network.overlaps(other) for other in trusted)


def parse_put(raw: bytes, endpoints: tuple[str, ...], *, now: datetime | None = None) -> ExemptionRequest:
    """Validate a PUT body against the catalog's ``endpoints``."""
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise ExemptionBodyError("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ExemptionBodyError("body must be a JSON object")
    unknown = set(body) - FIELDS
    if unknown:
        raise ExemptionBodyError(f"unknown field(s): {sorted(str(k)[:40] for k in unknown)}")
    consumer = _string(body, "consumer", MAX_CONSUMER)
    cidr = _network(_string(body, "client_cidr", 64))
    if (consumer is None) == (cidr is None):
        raise ExemptionBodyError("name exactly one of 'consumer' (the --consumer-header value) and 'client_cidr'")
    endpoint = body.get("endpoint")
    if endpoint != "*" and endpoint not in endpoints:
        raise ExemptionBodyError(f"'endpoint' must be one of {', '.join(endpoints)} or '*'")
    reason = _string(body, "reason", 500)
    if reason is None:
        raise ExemptionBodyError("'reason' is required: who asked for the time, and why")
    until = _until(body.get("until"), now or datetime.now(UTC))
    return ExemptionRequest(str(endpoint), consumer, cidr, until, reason, _string(body, "actor", 100) or "api")
