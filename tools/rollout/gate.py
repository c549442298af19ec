"""``stagectl gate``: where each endpoint stands in the rollout, decided from Prometheus evidence.

As of an instant (``--at``, default now), per endpoint: the mode, the ``off``
baseline (requests seen and their would-reject ratio over the lookback), and,
for ``warn``, each complete UTC day of the current warn period — warn requests,
would-reject ratio, and whether the day was good, bad or thin. A good day has at
least ``min_daily_requests`` requests in warn and a ratio below ``good_ratio``; a
bad day resets the streak; a thin day neither counts nor resets. The verdicts
and exit codes are in docs/rollout.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tools.clients import prom
from tools.clients.prom import Prometheus
from tools.shared.timeparse import day_of, iso

DAY: Final = 86400.0
GO: Final = frozenset({"ready_for_warn", "ready_for_enforce", "canary", "enforcing"})
WAIT: Final = frozenset({"collect_baseline", "in_warn"})
STOP: Final = frozenset({"blocked", "warn_cap_reached"})


@dataclass(frozen=True, slots=True)
class GateOptions:
    """The thresholds, as the command line sets them (defaults: the runbook's)."""

    lookback_s: float = 45 * DAY
    min_baseline: int = 10_000
    good_ratio: float = 0.005
    good_days: int = 7
    cap_days: int = 30
    min_daily_requests: int = 100


@dataclass(frozen=True, slots=True)
class Day:
    date: str
    requests: int
    rejects: int
    kind: str  # good, bad, thin

    @property
    def ratio(self) -> float | None:
        return round(self.rejects / self.requests, 6) if self.requests else None

    def as_json(self) -> dict[str, Any]:
        return {"date": self.date, "mode": "warn", "requests": self.requests, "ratio": self.ratio, "day": self.kind}


@dataclass(slots=True)
class Standing:
    """One endpoint's evidence and verdict."""

    mode: str
    percent: float = 0.0
    blocked: bool = False
    baseline_requests: int = 0
    baseline_rejects: int = 0
    days: list[Day] = field(default_factory=list)
    good_days_streak: int = 0
    verdict: str = "collect_baseline"
    requests_1d: int = 0  # validated requests over the last 24 hours, any mode
    exempted_1d: int = 0  # of those, handled as warn by an exemption (docs/rollout.md, "A late consumer")

    @property
    def exempted_share(self) -> float | None:
        return round(self.exempted_1d / self.requests_1d, 6) if self.requests_1d else None

    @property
    def baseline_ratio(self) -> float | None:
        return round(self.baseline_rejects / self.baseline_requests, 6) if self.baseline_requests else None

    @property
    def days_in_warn(self) -> int:
        return len(self.days)

    def as_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "verdict": self.verdict, "baseline_requests": self.baseline_requests,
                "baseline_ratio": self.baseline_ratio, "days_in_warn": self.days_in_warn,
                "good_days_streak": self.good_days_streak, "days": [day.as_json() for day in self.days],
                "exempted_24h": {"requests": self.exempted_1d, "share": self.exempted_share}}


@dataclass(frozen=True, slots=True)
class GateResult:
    at: float
    endpoints: dict[str, Standing]
    catalog_versions: list[str] = field(default_factory=list)  # served by the replicas now (stage_catalog_info)

    @property
    def enforce_blocked(self) -> bool:
        return any(standing.blocked for standing in self.endpoints.values())

    def as_json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "enforce_blocked": self.enforce_blocked,
                "catalog_versions": self.catalog_versions,
                "endpoints": {name: standing.as_json() for name, standing in self.endpoints.items()}}


def classify_day(requests: int, rejects: int, options: GateOptions) -> str:
    """good, bad or thin (too few requests to tell)."""
    if requests < options.min_daily_requests:
        return "thin"
    return "good" if rejects / requests < options.good_ratio else "bad"


def streak(days: Sequence[Day]) -> int:
    """Consecutive good days, newest first; thin days are skipped, a bad day ends it."""
    count = 0
    for day in reversed(days):
        if day.kind == "bad":
            break
        count += day.kind == "good"
    return count


def verdict(standing: Standing, options: GateOptions) -> str:
    if standing.mode == "enforce":
        return "enforcing" if standing.percent >= 100 else "canary"
    if standing.mode == "warn":
        if standing.good_days_streak >= options.good_days:
            return "blocked" if standing.blocked else "ready_for_enforce"
        return "warn_cap_reached" if standing.days_in_warn >= options.cap_days else "in_warn"
    return "ready_for_warn" if standing.baseline_requests >= options.min_baseline else "collect_baseline"


def majority_modes(samples: Sequence[prom.Sample]) -> dict[str, str]:
    """endpoint -> the mode most replicas report (ties: the less advanced, off < warn < enforce)."""
    votes: dict[str, dict[str, float]] = {}
    for sample in samples:
        votes.setdefault(sample.labels.get("endpoint", ""), {})[sample.labels.get("mode", "")] = sample.value
    order = {"off": 0, "warn": 1, "enforce": 2}
    return {name: max(counts, key=lambda mode: (counts[mode], -order.get(mode, 3))) for name, counts in votes.items()}


def blocked_endpoints(samples: Sequence[prom.Sample], names: Sequence[str]) -> set[str]:
    """Endpoints with enforce blocked; a block series without an endpoint label blocks all."""
    blocked: set[str] = set()
    for sample in samples:
        if sample.value >= 1:
            endpoint = sample.labels.get("endpoint", "")
            blocked.update(names if not endpoint else [endpoint])
    return blocked


def warn_period_start(history: dict[float, float], at: float, lookback_start: float) -> float:
    """When the current warn period began: just after the last instant the endpoint was not in warn."""
    start = lookback_start
    for instant in sorted(history):
        if instant > at:
            break
        if history[instant] < 1:
            start = instant
    return start


async def evaluate(prometheus: Prometheus, names: Sequence[str], at: float, options: GateOptions) -> GateResult:
    """Every selected endpoint's standing as of ``at``."""
    midnight = (at // DAY) * DAY  # the end of the last complete UTC day
    lookback = prom.seconds_window(options.lookback_s)
    day_count = max(1, int(options.lookback_s // DAY))
    day_ends = [midnight - DAY * k for k in range(day_count - 1, -1, -1)]
    modes, percents, blocks, base, base_bad, catalogs = await asyncio.gather(
        prometheus.instant(prom.MODE, at), prometheus.instant(prom.PERCENT, at),
        prometheus.instant(prom.BLOCKED, at), prometheus.instant(prom.requests_in("off", lookback), at),
        prometheus.instant(prom.would_reject_in("off", lookback), at), prometheus.instant(prom.CATALOG_VERSIONS, at))
    everything, exempted = await asyncio.gather(prometheus.instant(prom.all_requests_in("1d"), at),
                                                prometheus.instant(prom.exempted_in("1d"), at))
    warn, warn_bad, in_warn = await asyncio.gather(
        prometheus.by_day(prom.requests_in("warn", "1d"), day_ends),
        prometheus.by_day(prom.would_reject_in("warn", "1d"), day_ends),
        prometheus.series(prom.IN_WARN, at - options.lookback_s, at, max(60.0, options.lookback_s / 2000)))
    mode_of = majority_modes(modes)
    percent_of = {s.labels.get("endpoint", ""): s.value for s in percents}
    blocked = blocked_endpoints(blocks, names)
    base_of = {s.labels.get("endpoint", ""): s.value for s in base}
    base_bad_of = {s.labels.get("endpoint", ""): s.value for s in base_bad}
    everything_of = {s.labels.get("endpoint", ""): s.value for s in everything}
    exempted_of = {s.labels.get("endpoint", ""): s.value for s in exempted}
    result: dict[str, Standing] = {}
    for name in names:
        standing = Standing(mode=mode_of.get(name, "off"), percent=percent_of.get(name, 0.0), blocked=name in blocked,
                            baseline_requests=round(base_of.get(name, 0.0)),
                            baseline_rejects=round(base_bad_of.get(name, 0.0)),
                            requests_1d=round(everything_of.get(name, 0.0)),
                            exempted_1d=round(exempted_of.get(name, 0.0)))
        if standing.mode == "warn":
            start = warn_period_start(in_warn.get(name, {}), at, at - options.lookback_s)
            standing.days = _warn_days(warn.get(name, {}), warn_bad.get(name, {}), day_ends, start, options)
            standing.good_days_streak = streak(standing.days)
        standing.verdict = verdict(standing, options)
        result[name] = standing
    return GateResult(at, result, sorted({s.labels.get("version", "") for s in catalogs}))


def _warn_days(requests: dict[float, float], rejects: dict[float, float], day_ends: Sequence[float], start: float,
               options: GateOptions) -> list[Day]:
    """The complete days of the current warn period, from the first with warn traffic."""
    days: list[Day] = []
    for end in day_ends:
        if end <= start:
            continue
        count = round(requests.get(end, 0.0))
        if not days and count == 0:
            continue  # the period counts from its first day with warn traffic
        bad = round(rejects.get(end, 0.0))
        days.append(Day(day_of(end - DAY), count, bad, classify_day(count, bad, options)))
    return days


def exit_code(result: GateResult) -> int:
    """0 every endpoint may take its next step, 3 some must keep collecting, 4 one is blocked or at the cap, or
    the replicas serve more than one catalog version (whatever the verdicts)."""
    verdicts = {standing.verdict for standing in result.endpoints.values()}
    if verdicts & STOP or len(result.catalog_versions) > 1:
        return 4
    return 3 if verdicts & WAIT else 0


def render(result: GateResult, options: GateOptions) -> str:
    """The human table."""
    rows = [("ENDPOINT", "MODE", "VERDICT", "BASELINE (off)", "WARN DAYS", "STREAK", "EXEMPTED 24h",
             "LAST DAYS (oldest→newest)")]
    for name, s in result.endpoints.items():
        mode = f"enforce {s.percent:g}%" if s.mode == "enforce" else s.mode
        baseline = f"{s.baseline_requests}" + (f" ({s.baseline_ratio:.2%})" if s.baseline_ratio is not None else "")
        recent = " ".join({"good": "+", "bad": "x", "thin": "."}[d.kind] for d in s.days[-14:]) or "-"
        rows.append((name, mode, s.verdict + (" (blocked)" if s.blocked and s.verdict != "blocked" else ""),
                     baseline, str(s.days_in_warn) if s.mode == "warn" else "-",
                     f"{s.good_days_streak}/{options.good_days}" if s.mode == "warn" else "-",
                     f"{s.exempted_share:.2%}" if s.exempted_1d and s.exempted_share is not None else "-", recent))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1]
             for row in rows]
    versions = result.catalog_versions
    catalog = (f"catalog: {len(versions)} versions live ({', '.join(versions)}): the replicas disagree; wait "
               "until one is served everywhere (exit 4)" if len(versions) > 1 else
               f"catalog: version {versions[0]} on every replica" if versions else "catalog: no stage_catalog_info")
    return "\n".join([f"gate as of {iso(result.at)}", *lines, "", catalog,
                      f"days: + good (< {options.good_ratio:.2%} would reject, >= {options.min_daily_requests} "
                      f"requests), x bad, . thin; need {options.good_days} good in a row "
                      f"(cap {options.cap_days} days); baseline needs {options.min_baseline} requests in off"])
