"""``PUT``/``DELETE /_ops/rollout/{endpoint}``: a rollout driver's lease on an endpoint, as the API reads it.

One driver at a time per endpoint (docs/ops-plane.md, "Rollout leases"): ``stagectl rollout`` takes the lease
before its first mode change and renews it every interval with ``ttl_s`` of three intervals, so a killed driver
stops holding the endpoint by itself. A second driver is answered 409 naming the holder. The lease carries the
driver's progress (step, percent, watched seconds) so the next driver continues a step without counting the
unwatched time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

MAX_TTL_S: Final = 86400.0
FIELDS: Final = frozenset({"lease", "holder", "ttl_s", "step", "percent", "credited_s", "reason"})


class LeaseBodyError(ValueError):
    """The body is not a lease request; the message says which field."""


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    lease: str
    holder: str
    ttl_s: float
    step: int | None
    percent: float | None
    credited_s: float
    reason: str


def _number(body: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise LeaseBodyError(f"{key!r} must be a number from {low:g} to {high:g}")
    return float(value)


def _string(body: dict[str, Any], key: str, limit: int, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise LeaseBodyError(f"{key!r} must be a non-empty string of at most {limit} characters")
    return value.strip()


def parse_take(raw: bytes) -> LeaseRequest:
    """Validate a PUT body."""
    body = _object(raw)
    ttl = _number(body, "ttl_s", 1, MAX_TTL_S)
    if ttl is None:
        raise LeaseBodyError("'ttl_s' is required: how long the lease lives without a renewal")
    step = body.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= 100):
        raise LeaseBodyError("'step' must be an integer from 1 to 100")
    return LeaseRequest(_string(body, "lease", 100), _string(body, "holder", 200), ttl, step,
                        _number(body, "percent", 0, 100), _number(body, "credited_s", 0, 366 * 86400) or 0.0,
                        _string(body, "reason", 500, "rollout"))


def parse_release(raw: bytes) -> tuple[str, str, float | None]:
    """Validate a DELETE body: (lease id, reason, the step's final watched seconds if given)."""
    body = _object(raw)
    return (_string(body, "lease", 100), _string(body, "reason", 500, "rollout ended"),
            _number(body, "credited_s", 0, 366 * 86400))


def _object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise LeaseBodyError("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise LeaseBodyError("body must be a JSON object")
    unknown = set(body) - FIELDS
    if unknown:
        raise LeaseBodyError(f"unknown field(s): {sorted(str(k)[:40] for k in unknown)}")
    return body
