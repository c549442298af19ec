"""``stagectl rollout``: the canary driver — 10 % (2 h) → 50 % (4 h) → 100 %, promoted only on evidence.

It talks to the proxy only through ``_ops`` (actor ``stagectl rollout``) and to
Prometheus only through its HTTP API. A step is promoted when its time has
passed **and** it saw at least ``min_requests`` enforced requests **and** every
check is within its limit. A check over its limit puts the endpoint back to
``warn`` (the figure in the reason) and exits 4; a mode changed by anyone else
stops the driver without touching it (exit 4). Stateless: started again while
the endpoint sits at one of its steps, set by ``stagectl rollout``, it continues
that step, counting the time already spent (the mode record's ``updated_at``).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import aiohttp

from tools import admin_api, gate, prom
from tools.errors import EXIT_BLOCKED, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CommandError
from tools.prom import Prometheus
from tools.timeparse import format_duration, parse_duration

ACTOR: Final = "stagectl rollout"
EXIT_ABORTED: Final = EXIT_BLOCKED  # 4
EXIT_GAVE_UP: Final = 3
_STEP: Final = re.compile(r"^(\d+(?:\.\d{1,2})?)(?::(.+))?$")


@dataclass(frozen=True, slots=True)
class Step:
    percent: float
    duration_s: float | None  # None: the last step (100 %), which ends the rollout

    def label(self) -> str:
        return f"{self.percent:g}%" + (f" for {format_duration(self.duration_s)}" if self.duration_s else "")


def parse_steps(text: str) -> list[Step]:
    """``10:2h,50:4h,100``; ValueError saying what is wrong (percents rise, 0 < p <= 100, the last is 100)."""
    steps: list[Step] = []
    for piece in text.split(","):
        match = _STEP.match(piece.strip())
        if match is None:
            raise ValueError(f"bad step {piece.strip()!r}: use PERCENT:DURATION (10:2h), the last just 100")
        percent = float(match.group(1))
        duration = parse_duration(match.group(2)) if match.group(2) else None
        if not 0 < percent <= 100:
            raise ValueError(f"step {piece.strip()!r}: the percent must be above 0 and at most 100")
        if steps and percent <= steps[-1].percent:
            raise ValueError(f"step {piece.strip()!r}: percents must rise ({steps[-1].percent:g} then {percent:g})")
        steps.append(Step(percent, duration))
    if steps[-1].percent != 100 or steps[-1].duration_s is not None:
        raise ValueError("the last step must be 100, without a duration (reaching it ends the rollout)")
    if any(step.duration_s is None for step in steps[:-1]):
        raise ValueError("every step before 100 needs a duration (10:2h)")
    return steps


@dataclass(frozen=True, slots=True)
class RolloutOptions:
    endpoint: str
    steps: list[Step]
    interval_s: float = 60.0
    min_requests: int = 100
    max_enforce_error: float = 0.001
    max_validator_p99_s: float = 0.001
    max_wait_s: float = 24 * 3600.0
    skip_gate_reason: str | None = None
    dry_run: bool = False
    gate_options: gate.GateOptions = gate.GateOptions()


@dataclass(frozen=True, slots=True)
class Evidence:
    """A step's figures so far."""

    enforced: int
    rejected: int
    p99_s: float | None

    @property
    def error_ratio(self) -> float | None:
        return self.rejected / self.enforced if self.enforced else None


Report = Callable[[str, dict[str, Any]], None]  # (event, fields): the command prints a line or a JSON object


class Driver:
    """One rollout of one endpoint."""

    def __init__(self, session: aiohttp.ClientSession, admin: str, token: str, prometheus: Prometheus,
                 options: RolloutOptions, report: Report, clock: Callable[[], float] = time.time) -> None:
        self._session = session
        self._mode_url = f"{admin}/_ops/mode"
        self._token = token
        self._prometheus = prometheus
        self._options = options
        self._report = report
        self._clock = clock

    async def record(self) -> dict[str, Any]:
        view = await admin_api.call(self._session, "GET", self._mode_url)
        try:
            record: dict[str, Any] = view["endpoints"][self._options.endpoint]
        except (KeyError, TypeError):
            raise CommandError(f"the proxy has no endpoint {self._options.endpoint!r} "
                               f"(it has {sorted(view.get('endpoints', {}))})", EXIT_USAGE) from None
        return record

    def _resumable(self, record: dict[str, Any]) -> int | None:
        """The index of the step the endpoint sits at, if ``stagectl rollout`` put it there."""
        if record.get("mode") != "enforce" or record.get("updated_by") != ACTOR:
            return None
        for index, step in enumerate(self._options.steps):
            if math.isclose(step.percent, float(record.get("percent") or 0)):
                return index
        return None

    async def run(self, stop: asyncio.Event) -> int:
        record = await self.record()
        index = self._resumable(record)
        if index is not None:
            started = _parse_time(record.get("updated_at"))
            if self._options.steps[index].duration_s is None:
                self._report("done", {"detail": "already at 100 % (set by stagectl rollout)", "percent": 100})
                return EXIT_OK
            self._report("resume", {"step": index + 1, "percent": self._options.steps[index].percent,
                                    "since": record.get("updated_at")})
            return EXIT_OK if self._options.dry_run else await self._steps(index, started, stop)
        refused = await self._gate_refuses()
        if refused is not None:
            return refused
        if self._options.dry_run:
            self._report("plan", {"steps": [s.label() for s in self._options.steps], "from": record.get("mode")})
            return EXIT_OK
        started = await self._set_step(0)
        return await self._steps(0, started, stop)

    async def _gate_refuses(self) -> int | None:
        if self._options.skip_gate_reason is not None:
            self._report("gate", {"verdict": "skipped", "reason": self._options.skip_gate_reason})
            return None
        result = await gate.evaluate(self._prometheus, [self._options.endpoint], self._clock(),
                                     self._options.gate_options)
        standing = result.endpoints[self._options.endpoint]
        self._report("gate", {"verdict": standing.verdict, "good_days_streak": standing.good_days_streak})
        if standing.verdict == "ready_for_enforce":
            return None
        self._report("refused", {"detail": f"the gate says {standing.verdict}, not ready_for_enforce "
                                           "(stagectl gate explains; --skip-gate --reason TEXT overrides)"})
        return EXIT_GAVE_UP if standing.verdict in gate.WAIT else EXIT_ABORTED

    async def _set(self, mode: str, percent: float | None, reason: str) -> None:
        body: dict[str, Any] = {"endpoint": self._options.endpoint, "mode": mode, "reason": reason, "actor": ACTOR}
        if percent is not None:
            body["percent"] = percent
        await admin_api.call(self._session, "PUT", self._mode_url, body, self._token)

    async def _set_step(self, index: int) -> float:
        steps = self._options.steps
        reason = f"rollout step {index + 1}/{len(steps)}: enforce {steps[index].label()}"
        if index == 0 and self._options.skip_gate_reason is not None:
            reason += f" (gate skipped: {self._options.skip_gate_reason})"
        await self._set("enforce", steps[index].percent, reason)
        self._report("step", {"step": index + 1, "steps": len(steps), "percent": steps[index].percent,
                              "reason": reason})
        return self._clock()

    async def _steps(self, index: int, started: float, stop: asyncio.Event) -> int:
        steps = self._options.steps
        while True:
            if await _wait(stop, self._options.interval_s):
                self._report("interrupted", {"detail": "stopped by a signal; the mode is left as it is",
                                             "step": index + 1, "percent": steps[index].percent})
                return EXIT_INTERRUPTED
            outcome = await self._check(index, started)
            if outcome == "promote":
                index += 1
                started = await self._set_step(index)
                if steps[index].duration_s is None:
                    self._report("done", {"detail": "rollout complete: enforce 100 %", "percent": 100})
                    return EXIT_OK
            elif outcome is not None:
                return EXIT_ABORTED if outcome == "abort" else EXIT_GAVE_UP

    async def _check(self, index: int, started: float) -> str | None:
        """One interval: None to keep going, "promote", "abort" (exit 4) or "gave_up" (exit 3)."""
        step, options = self._options.steps[index], self._options
        record = await self.record()
        if record.get("updated_by") != ACTOR or record.get("mode") != "enforce" or not math.isclose(
                float(record.get("percent") or 0), step.percent):
            who = record.get("updated_by")
            self._report("stopped", {"detail": f"mode changed by {who!r} to {record.get('mode')} "
                                               f"({record.get('reason')}): left as it is", "by": who})
            return "abort"
        elapsed = self._clock() - started
        evidence = await self._measure(elapsed)
        failed = self._failed_check(evidence) if evidence.enforced >= options.min_requests else None
        assert step.duration_s is not None
        self._progress(index, elapsed, evidence, failed)
        if failed is not None:
            await self._set("warn", None, f"rollout aborted at step {index + 1} ({step.percent:g}%): {failed}")
            self._report("aborted", {"detail": failed, "mode": "warn"})
            return "abort"
        if elapsed < step.duration_s:
            return None
        if evidence.enforced >= options.min_requests:
            return "promote"
        if elapsed - step.duration_s >= options.max_wait_s:
            self._report("gave_up", {"detail": f"{evidence.enforced} enforced requests after "
                                               f"{format_duration(elapsed)} (need {options.min_requests}); "
                                               f"mode left at {step.percent:g}%"})
            return "gave_up"
        return None

    def _failed_check(self, evidence: Evidence) -> str | None:
        options = self._options
        ratio = evidence.error_ratio
        if ratio is not None and ratio > options.max_enforce_error:
            return (f"enforce-error ratio {ratio:.4f} > {options.max_enforce_error:g} "
                    f"({evidence.rejected} of {evidence.enforced} enforced requests rejected)")
        if evidence.p99_s is not None and evidence.p99_s > options.max_validator_p99_s:
            return f"validator p99 {evidence.p99_s * 1000:.3f} ms > {options.max_validator_p99_s * 1000:g} ms"
        return None

    async def _measure(self, elapsed: float) -> Evidence:
        window = prom.seconds_window(elapsed)
        name = self._options.endpoint
        enforced, rejected, p99 = await asyncio.gather(
            self._prometheus.scalar(prom.enforced(name, window)), self._prometheus.scalar(prom.rejected(name, window)),
            self._prometheus.scalar(prom.validator_p99(name, window)))
        return Evidence(round(enforced or 0), round(rejected or 0), p99)

    def _progress(self, index: int, elapsed: float, evidence: Evidence, failed: str | None) -> None:
        step, options = self._options.steps[index], self._options
        assert step.duration_s is not None
        state = "failed" if failed else "running" if elapsed < step.duration_s else (
            "promoting" if evidence.enforced >= options.min_requests else "waiting for traffic")
        self._report("progress", {
            "step": index + 1, "steps": len(options.steps), "percent": step.percent,
            "elapsed_s": round(elapsed, 1), "left_s": round(max(0.0, step.duration_s - elapsed), 1),
            "enforced": evidence.enforced, "min_requests": options.min_requests, "rejected": evidence.rejected,
            "error_ratio": evidence.error_ratio, "max_error_ratio": options.max_enforce_error,
            "validator_p99_s": evidence.p99_s, "max_validator_p99_s": options.max_validator_p99_s, "state": state})


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``; True if ``stop`` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


def _parse_time(text: object) -> float:
    if not isinstance(text, str):
        raise CommandError("the proxy's mode record has no updated_at: cannot resume", EXIT_FAILED)
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def human_line(event: str, fields: dict[str, Any]) -> str:
    """One readable line per event (the terminal's view of the JSON events)."""
    if event != "progress":
        detail = fields.get("detail") or fields.get("reason") or ", ".join(f"{k}={v}" for k, v in fields.items())
        return f"{event}: {detail}"
    ratio = fields["error_ratio"]
    p99 = fields["validator_p99_s"]
    return (f"step {fields['step']}/{fields['steps']} {fields['percent']:g}% | {format_duration(fields['left_s'])} "
            f"left | {fields['enforced']} enforced (min {fields['min_requests']}) | errors "
            f"{'-' if ratio is None else f'{ratio:.3%}'} (max {fields['max_error_ratio']:.3%}) | p99 "
            f"{'-' if p99 is None else f'{p99 * 1000:.3f} ms'} (max {fields['max_validator_p99_s'] * 1000:g} ms) "
            f"| {fields['state']}")
