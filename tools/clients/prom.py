"""Prometheus, read over its HTTP API — and every PromQL query the Week-4 commands use, each with its meaning.

The would-reject ratio is the rules' definition (observability/prometheus/rules/
stage-validation.yml, ``stage:warn_unknown_ratio:rate5m``): requests whose result
is ``unknown``, ``invalid`` or ``unreadable`` over all validated requests of that
mode. Counts use ``increase()`` summed over every replica (``sum by``), so proxy
restarts (counter resets) and several replicas do not distort them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import orjson

from tools.shared.errors import EXIT_FAILED, CommandError, network_reason

WOULD_REJECT: Final = 'result=~"unknown|invalid|unreadable"'


CATALOG_VERSIONS = "count by (version) (stage_catalog_info == 1)"  # one series per version some replica serves


def _endpoint(name: str) -> str:
    """A label matcher for one endpoint (catalog names are [a-z0-9_]: nothing to escape)."""
    return f'endpoint="{name}"'


# -- the gate: as of an instant, per endpoint (sum by endpoint) ------------------------------------------------

# How many replicas report each endpoint in each mode (they agree within a second; the majority wins).
MODE: Final = "count by (endpoint, mode) (stage_mode == 1)"
# 1 while an endpoint is in warn on any replica (its history tells when the current warn period began).
IN_WARN: Final = 'max by (endpoint) (stage_mode{mode="warn"})'
# The canary share of endpoints in enforce.
PERCENT: Final = "max by (endpoint) (stage_enforce_percent)"
# 1 while enforce is blocked; a series without an endpoint label means every endpoint.
BLOCKED: Final = "max by (endpoint) (stage_enforce_blocked)"


def requests_in(mode: str, window: str) -> str:
    """Validated requests handled in ``mode`` during the ``window`` before the evaluation instant."""
    return f'sum by (endpoint) (increase(stage_validation_total{{mode="{mode}"}}[{window}]))'


def all_requests_in(window: str) -> str:
    """Validated requests in any mode during the ``window``."""
    return f"sum by (endpoint) (increase(stage_validation_total[{window}]))"


def exempted_in(window: str) -> str:
    """Requests an exemption handled as warn on an enforcing endpoint during the ``window``."""
    return f"sum by (endpoint) (increase(stage_exempted_total[{window}]))"


def would_reject_in(mode: str, window: str) -> str:
    """Of those, the requests enforce would reject (unknown, invalid, unreadable)."""
    return f'sum by (endpoint) (increase(stage_validation_total{{mode="{mode}", {WOULD_REJECT}}}[{window}]))'


# -- the canary driver: one endpoint, over the step so far ------------------------------------------------------


def enforced(endpoint: str, window: str) -> str:
    """Requests handled in enforce (the canary's share) during ``window``."""
    return f'sum(increase(stage_validation_total{{{_endpoint(endpoint)}, mode="enforce"}}[{window}]))'


def rejected(endpoint: str, window: str) -> str:
    """Requests enforce rejected during ``window`` (the numerator of the enforce-error ratio, as the rule)."""
    return f"sum(increase(stage_enforce_rejections_total{{{_endpoint(endpoint)}}}[{window}]))"


def validator_p99(endpoint: str, window: str) -> str:
    """The validator's 99th percentile (seconds) over ``window``, every replica's buckets summed."""
    return (f"histogram_quantile(0.99, sum by (le) "
            f"(increase(stage_validator_seconds_bucket{{{_endpoint(endpoint)}}}[{window}])))")


def seconds_window(seconds: float) -> str:
    """A PromQL range for ``seconds`` (at least 1 s)."""
    return f"{max(1, math.ceil(seconds))}s"


# -- the HTTP API -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    labels: dict[str, str]
    value: float


class Prometheus:
    """A small client for ``/api/v1/query`` and ``/api/v1/query_range``; errors are one-line CommandErrors."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self._session = session

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        where = f"{self.url}{path}"
        try:
            async with self._session.get(where, params=params) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CommandError(f"cannot reach Prometheus at {self.url}: {network_reason(exc)}", EXIT_FAILED) from None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise CommandError(f"Prometheus at {self.url} answered {status} with a body that is not JSON",
                               EXIT_FAILED) from None
        if status != 200 or not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            raise CommandError(f"Prometheus at {self.url} answered {status}: {error or 'error'}", EXIT_FAILED)
        return body.get("data", {})

    async def instant(self, query: str, at: float | None = None) -> list[Sample]:
        """The vector ``query`` evaluates to at ``at`` (Unix seconds; now by default)."""
        params = {"query": query} if at is None else {"query": query, "time": f"{at:.3f}"}
        data = await self._get("/api/v1/query", params)
        return [Sample(dict(item.get("metric", {})), _number(item["value"][1])) for item in data.get("result", [])]

    async def scalar(self, query: str, at: float | None = None) -> float | None:
        """The single value of a query that sums to one series (None when it has no data)."""
        samples = await self.instant(query, at)
        values = [s.value for s in samples if not math.isnan(s.value)]
        return values[0] if values else None

    async def series(self, query: str, start: float, end: float, step_s: float) -> dict[str, dict[float, float]]:
        """``query`` evaluated from ``start`` to ``end`` every ``step_s``: endpoint -> {instant: value}."""
        data = await self._get("/api/v1/query_range", {
            "query": query, "start": f"{start:.0f}", "end": f"{end:.0f}", "step": f"{step_s:.0f}"})
        out: dict[str, dict[float, float]] = {}
        for item in data.get("result", []):
            endpoint = item.get("metric", {}).get("endpoint", "")
            out[endpoint] = {float(t): _number(v) for t, v in item.get("values", [])}
        return out

    async def by_day(self, query: str, day_ends: list[float]) -> dict[str, dict[float, float]]:
        """``query`` evaluated at each day end (one range query, step one day): endpoint -> {day end: value}."""
        return await self.series(query, day_ends[0], day_ends[-1], 86400) if day_ends else {}


def _number(text: str) -> float:
    return float(text)
