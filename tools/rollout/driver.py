"""``stagectl rollout``: the canary driver — 10 % (2 h) → 50 % (4 h) → 100 %, promoted only on evidence.

It talks to the proxy only through ``_ops`` (actor ``stagectl rollout (who)``)
and to Prometheus only through its HTTP API. Before its first change it checks
that both answer and that the replicas serve one catalog version; then it holds
a lease on the endpoint in the mode store (``/_ops/rollout/{endpoint}``),
renewed every interval and lapsing three intervals after the last renewal, so
a second driver refuses at once (exit 2) and a killed one holds nothing for
long. A step is promoted when its *watched* time has passed — intervals that
began and ended with a check that answered: time without evidence never
counts — **and** it saw at least ``min_requests`` enforced requests **and**
every check is within its limit. A check that cannot be made (Prometheus or
the admin API silent, replicas on two catalogs) is retried next interval; after
``max_check_errors`` in a row the endpoint goes back to ``warn`` (exit 4). A
check over its limit does the same, the figure in the reason; a mode changed by
anyone else stops the driver without touching it (exit 4). Started again while
the endpoint sits at one of its steps, set by ``stagectl rollout``, it continues
that step with the watched time the lapsed lease carried. Every exit after a
change ends with one line naming the mode and percent the endpoint is left at.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import aiohttp

from proxy.wire import leases as wire_leases
from proxy.wire import modes as wire
from tools.clients import admin_api, prom
from tools.clients.prom import Prometheus
from tools.rollout import gate
from tools.shared.errors import EXIT_BLOCKED, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CommandError
from tools.shared.timeparse import format_duration, parse_duration

ACTOR: Final = "stagectl rollout"  # every actor this driver records starts so: "stagectl rollout (alice)"
EXIT_ABORTED: Final = EXIT_BLOCKED  # 4
EXIT_GAVE_UP: Final = 3
EXIT_HELD: Final = EXIT_USAGE  # 2: another driver holds the endpoint
LEASE_INTERVALS: Final = 3  # a lease lapses three intervals after its last renewal
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
    max_check_errors: int = 5
    actor: str = ACTOR
    reason: str | None = None  # --reason: on every history entry the driver writes


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


class MissingEvidence(Exception):
    """A check could not be made: Prometheus or the admin API did not answer, or the replicas disagree."""


@dataclass
class _Clock:
    """A step's watched time: intervals that began and ended with a check that answered (never unwatched time)."""

    started: float  # wall clock: the evidence window opens here
    credited_s: float = 0.0
    last_ok: float | None = None  # when the last check answered (None: the last one failed)


class Driver:
    """One rollout of one endpoint."""

    def __init__(self, session: aiohttp.ClientSession, admin: str, token: str, prometheus: Prometheus,
                 options: RolloutOptions, report: Report, clock: Callable[[], float] = time.time) -> None:
        self._session = session
        self._admin = admin
        self._mode_url = f"{admin}/_ops/mode"
        self._lease_url = f"{admin}/_ops/rollout/{options.endpoint}"
        self._token = token
        self._prometheus = prometheus
        self._options = options
        self._report = report
        self._clock = clock
        self._lease_id = secrets.token_hex(12)
        self._holder = f"{options.actor}, pid {os.getpid()} on {socket.gethostname()}"
        self._expected: str | None = None  # updated_at of the mode record as this driver last saw or set it
        self._changed = False  # a mode change was made: the exit line says where the endpoint is left
        self._failures = 0  # consecutive failed checks
        self._watched = 0.0  # the current step's watched seconds, for the lease's release

    async def record(self) -> wire.EndpointMode:
        view = await admin_api.call(self._session, "GET", self._mode_url)
        try:
            return wire.ModeState.from_json(view).endpoint(self._options.endpoint)
        except wire.WireError as exc:
            raise CommandError(str(exc), EXIT_USAGE) from None

    def _resumable(self, record: wire.EndpointMode) -> int | None:
        """The index of the step the endpoint sits at, if ``stagectl rollout`` put it there."""
        if record.mode != "enforce" or not (record.updated_by or "").startswith(ACTOR):
            return None
        for index, step in enumerate(self._options.steps):
            if math.isclose(step.percent, record.percent):
                return index
        return None

    async def run(self, stop: asyncio.Event) -> int:
        """Check, hold the lease, drive; whatever happens after a change, say where the endpoint is left."""
        record = await self.record()  # the admin API answers (exit 1 otherwise), before anything changes
        await self._prometheus_answers()
        versions = await self.catalog_versions()
        if len(versions) > 1:
            self._report("refused", {"detail": f"the replicas serve {len(versions)} catalog versions "
                                               f"({', '.join(versions)}): wait until one is live everywhere "
                                               "(stagectl gate lists them)", "catalog_versions": versions})
            return EXIT_ABORTED
        index = self._resumable(record)
        if self._options.dry_run:
            return await self._plan(record, index)
        credited = await self._take_lease(index)
        try:
            return await self._drive(record, index, credited, stop)
        finally:
            await self._release()
            if self._changed:
                await self._say_left()

    async def _plan(self, record: wire.EndpointMode, index: int | None) -> int:
        if index is not None:
            self._report("resume", {"step": index + 1, "percent": self._options.steps[index].percent,
                                    "since": record.updated_at, "dry_run": True})
            return EXIT_OK
        refused = await self._gate_refuses()
        if refused is not None:
            return refused
        self._report("plan", {"steps": [s.label() for s in self._options.steps], "from": record.mode})
        return EXIT_OK

    async def _drive(self, record: wire.EndpointMode, index: int | None, credited: float,
                     stop: asyncio.Event) -> int:
        if index is not None:
            self._expected = record.updated_at
            if self._options.steps[index].duration_s is None:
                self._report("done", {"detail": "already at 100 % (set by stagectl rollout)", "percent": 100})
                return EXIT_OK
            self._report("resume", {"step": index + 1, "percent": self._options.steps[index].percent,
                                    "since": record.updated_at, "watched_s": round(credited, 1)})
            clock = _Clock(_parse_time(record.updated_at), credited, self._clock())
            self._watched = credited
            return await self._steps(index, clock, stop)
        refused = await self._gate_refuses()
        if refused is not None:
            return refused
        return await self._steps(0, _Clock(await self._set_step(0), 0.0, self._clock()), stop)

    async def _prometheus_answers(self) -> None:
        """A query that must answer: no canary starts without the evidence it will be judged by."""
        try:
            await self._prometheus.instant("vector(1)")
        except CommandError as exc:
            raise CommandError(f"{exc}; nothing was changed", EXIT_FAILED) from None

    async def catalog_versions(self) -> list[str]:
        """The catalog versions the replicas serve now (``stage_catalog_info``)."""
        return sorted({s.labels.get("version", "") for s in await self._prometheus.instant(prom.CATALOG_VERSIONS)})

    async def _take_lease(self, index: int | None) -> float:
        """Hold the endpoint (exit 2 naming the holder if another driver does); the watched seconds a lapsed
        lease of the same step carried over."""
        step = self._options.steps[index] if index is not None else None
        body = self._lease_body(index if index is not None else 0, step.percent if step else None, 0.0)
        try:
            answer = await admin_api.call(self._session, "PUT", self._lease_url, body, self._token)
        except CommandError as exc:
            if exc.code == EXIT_BLOCKED:  # 409: held
                raise CommandError(f"{self._options.endpoint} is being driven by another rollout: {exc}; nothing "
                                   "was changed", EXIT_HELD) from None
            raise
        try:
            previous = wire_leases.LeaseTaken.from_json(answer).previous
        except wire.WireError as exc:
            raise CommandError(f"the proxy's lease answer is not what this stagectl reads: {exc}") from None
        if index is not None and step is not None and previous is not None and previous.hold.step == index + 1 \
                and math.isclose(previous.hold.percent if previous.hold.percent is not None else -1, step.percent):
            return previous.credited_s
        return 0.0

    def _lease_body(self, index: int, percent: float | None, credited: float) -> dict[str, Any]:
        return {"lease": self._lease_id, "holder": self._holder,
                "ttl_s": max(1.0, min(86400.0, LEASE_INTERVALS * self._options.interval_s)), "step": index + 1,
                "percent": percent, "credited_s": round(credited, 3),
                "reason": self._options.reason or f"rollout of {self._options.endpoint}"}

    async def _renew(self, index: int, clock: _Clock) -> None:
        body = self._lease_body(index, self._options.steps[index].percent, clock.credited_s)
        await admin_api.call(self._session, "PUT", self._lease_url, body, self._token)

    async def _release(self) -> None:
        with contextlib.suppress(CommandError):
            await admin_api.call(self._session, "DELETE", self._lease_url,
                                 {"lease": self._lease_id, "reason": "rollout driver exited",
                                  "credited_s": round(self._watched, 3)}, self._token)

    async def _say_left(self) -> None:
        """The one line every exit after a change ends with: the endpoint's mode and percent as left."""
        try:
            record = await self.record()
        except CommandError as exc:
            self._report("left", {"detail": f"{self._options.endpoint}: the proxy could not be asked where it is "
                                             f"left ({exc}); stagectl mode get shows it"})
            return
        where = f"enforce {record.percent:g}%" if record.mode == "enforce" else record.mode
        self._report("left", {"detail": f"{self._options.endpoint} left at {where}", "mode": record.mode,
                              "percent": record.percent})

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

    def _reason(self, text: str) -> str:
        return f"{text} — {self._options.reason}" if self._options.reason else text

    async def _set(self, mode: str, percent: float | None, reason: str) -> None:
        body: dict[str, Any] = {"endpoint": self._options.endpoint, "mode": mode, "reason": self._reason(reason)[:500],
                                "actor": self._options.actor}
        if percent is not None:
            body["percent"] = percent
        answer = await admin_api.call(self._session, "PUT", self._mode_url, body, self._token)
        self._changed = True
        try:
            self._expected = wire.ModeState.from_json(answer).endpoint(self._options.endpoint).updated_at
        except wire.WireError as exc:
            raise CommandError(f"the proxy's answer is not what this stagectl reads: {exc}") from None

    async def _set_step(self, index: int) -> float:
        steps = self._options.steps
        reason = f"rollout step {index + 1}/{len(steps)}: enforce {steps[index].label()}"
        if index == 0 and self._options.skip_gate_reason is not None:
            reason += f" (gate skipped: {self._options.skip_gate_reason})"
        await self._set("enforce", steps[index].percent, reason)
        self._report("step", {"step": index + 1, "steps": len(steps), "percent": steps[index].percent,
                              "reason": self._reason(reason)})
        return self._clock()

    async def _steps(self, index: int, clock: _Clock, stop: asyncio.Event) -> int:
        steps = self._options.steps
        while True:
            if await _wait(stop, self._options.interval_s):
                self._report("interrupted", {"detail": "stopped by a signal; the mode is left as it is",
                                             "step": index + 1, "percent": steps[index].percent})
                return EXIT_INTERRUPTED
            outcome = await self._check(index, clock)
            if outcome == "promote":
                index += 1
                started = await self._set_step(index)
                if steps[index].duration_s is None:
                    self._report("done", {"detail": "rollout complete: enforce 100 %", "percent": 100})
                    return EXIT_OK
                clock = _Clock(started, 0.0, started)
                self._watched = 0.0
                with contextlib.suppress(CommandError):
                    await self._renew(index, clock)
            elif outcome is not None:
                return EXIT_ABORTED if outcome == "abort" else EXIT_GAVE_UP

    async def _check(self, index: int, clock: _Clock) -> str | None:
        """One interval: None to keep going, "promote", "abort" (exit 4) or "gave_up" (exit 3)."""
        try:
            record, evidence = await self._gather(index, clock)
        except MissingEvidence as exc:
            return await self._missing(index, clock, str(exc))
        if record.updated_at != self._expected:
            who = record.updated_by
            self._report("stopped", {"detail": f"mode changed by {who!r} to {record.mode} "
                                               f"({record.reason}): left as it is", "by": who})
            return "abort"
        self._failures = 0
        now = self._clock()
        if clock.last_ok is not None:
            clock.credited_s += now - clock.last_ok  # watched from one answered check to the next
        clock.last_ok = now
        self._watched = clock.credited_s
        return await self._judge(index, clock, evidence)

    async def _gather(self, index: int, clock: _Clock) -> tuple[wire.EndpointMode, Evidence]:
        try:
            await self._renew(index, clock)
            record = await self.record()
        except CommandError as exc:
            if exc.code == 3:  # the token was refused: no point retrying
                raise
            raise MissingEvidence(f"the admin API: {exc}") from None
        try:
            evidence = await self._measure(self._clock() - clock.started)
            versions = await self.catalog_versions()
        except CommandError as exc:
            raise MissingEvidence(str(exc)) from None
        if len(versions) > 1:
            raise MissingEvidence(f"the replicas serve {len(versions)} catalog versions ({', '.join(versions)})")
        return record, evidence

    async def _missing(self, index: int, clock: _Clock, detail: str) -> str | None:
        """A check that could not be made: the step's clock stops; after --max-check-errors in a row, warn."""
        self._failures += 1
        clock.last_ok = None
        limit = self._options.max_check_errors
        self._report("check_failed", {"detail": f"{detail} (check {self._failures} of {limit} in a row; the step's "
                                                f"clock is stopped)", "consecutive": self._failures})
        if self._failures < limit:
            return None
        reason = f"rollout aborted at step {index + 1}: no evidence for {limit} checks in a row ({detail})"
        try:
            await self._set("warn", None, reason[:400])
        except CommandError as exc:
            self._report("aborted", {"detail": f"{reason}; and the downgrade to warn failed: {exc}"})
            return "abort"
        self._report("aborted", {"detail": reason, "mode": "warn"})
        return "abort"

    async def _judge(self, index: int, clock: _Clock, evidence: Evidence) -> str | None:
        step, options = self._options.steps[index], self._options
        watched = clock.credited_s
        failed = self._failed_check(evidence) if evidence.enforced >= options.min_requests else None
        assert step.duration_s is not None
        self._progress(index, watched, evidence, failed)
        if failed is not None:
            await self._set("warn", None, f"rollout aborted at step {index + 1} ({step.percent:g}%): {failed}")
            self._report("aborted", {"detail": failed, "mode": "warn"})
            return "abort"
        if watched < step.duration_s:
            return None
        if evidence.enforced >= options.min_requests:
            return "promote"
        if watched - step.duration_s >= options.max_wait_s:
            self._report("gave_up", {"detail": f"{evidence.enforced} enforced requests after "
                                               f"{format_duration(watched)} watched (need {options.min_requests}); "
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

    def _progress(self, index: int, watched: float, evidence: Evidence, failed: str | None) -> None:
        step, options = self._options.steps[index], self._options
        assert step.duration_s is not None
        state = "failed" if failed else "running" if watched < step.duration_s else (
            "promoting" if evidence.enforced >= options.min_requests else "waiting for traffic")
        self._report("progress", {
            "step": index + 1, "steps": len(options.steps), "percent": step.percent,
            "elapsed_s": round(watched, 1), "left_s": round(max(0.0, step.duration_s - watched), 1),
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
