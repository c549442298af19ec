"""``stagectl drill redis-fallback``: the runbook's "kill Redis, confirm the fallback", observed.

Against a (staging) proxy's admin listener: the proxy must be on Redis to
begin with; then Redis goes away — by the ``--break-redis`` command, or by the
operator when told to — and the drill watches ``/_ops/mode`` until the source
is ``last_known`` with the same modes, checks ``stage_mode_source`` on
``/metrics`` agrees and, given ``--proxy-log``, that the proxy logged its
``mode_store_degraded`` WARN; then Redis comes back (``--restore-redis`` or the
operator) and the drill waits for the source to be ``redis`` again. It never
touches Redis itself unless given the commands to do so.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from proxy.wire import modes as wire
from tools.clients import admin_api
from tools.shared.errors import CommandError

POLL_S = 0.25


@dataclass
class Step:
    name: str
    ok: bool
    detail: str
    seconds: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {"step": self.name, "result": "PASS" if self.ok else "FAIL", "detail": self.detail,
                "seconds": None if self.seconds is None else round(self.seconds, 2)}


@dataclass
class Drill:
    admin_url: str
    break_command: str | None = None
    restore_command: str | None = None
    proxy_log: Path | None = None
    timeout_s: float = 120.0
    say: Callable[[str], None] = field(default=lambda text: print(text, file=sys.stderr, flush=True))
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "steps": [step.as_json() for step in self.steps]}

    def summary(self) -> str:
        """One line for preflight's table."""
        if self.ok:
            times = [f"{s.name} in {s.seconds:.1f} s" for s in self.steps if s.seconds is not None]
            return "; ".join(times)
        failed = next(s for s in self.steps if not s.ok)
        return f"{failed.name}: {failed.detail}"

    async def run(self) -> Drill:
        async with admin_api.session(10.0) as http:
            start = await self._view(http)
            if start.source != "redis":
                self.steps.append(Step("on Redis before the drill", False,
                                       f"source is {start.source}, not redis: nothing to drill"))
                return self
            self.steps.append(Step("on Redis before the drill", True, "source redis"))
            modes = _modes(start)
            log_offset = self.proxy_log.stat().st_size if self.proxy_log and self.proxy_log.exists() else 0
            if not await self._act(self.break_command, "stop Redis now (the proxy must keep serving)", "break Redis"):
                return self
            if not await self._await_source(http, "last_known", "fallback to last_known", modes):
                await self._act(self.restore_command, "start Redis again", "restore Redis")
                return self
            await self._check_metric(http)
            self._check_log(log_offset)
            if not await self._act(self.restore_command, "start Redis again", "restore Redis"):
                return self
            await self._await_source(http, "redis", "back on Redis", modes)
        return self

    async def _view(self, http: aiohttp.ClientSession) -> wire.ModeState:
        view = await admin_api.call(http, "GET", f"{self.admin_url}/_ops/mode")
        try:
            return wire.ModeState.from_json(view)
        except wire.WireError as exc:
            raise CommandError(f"{self.admin_url}/_ops/mode did not answer like a stagegate proxy: {exc}") from None

    async def _act(self, command: str | None, instruction: str, name: str) -> bool:
        if command is None:
            self.say(f"drill: {instruction}; watching for up to {self.timeout_s:g} s…")
            return True
        started = time.monotonic()
        proc = await asyncio.create_subprocess_shell(command, stdout=asyncio.subprocess.DEVNULL,
                                                     stderr=asyncio.subprocess.PIPE)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            self.steps.append(Step(name, False, f"the command did not finish within {self.timeout_s:g} s"))
            return False
        lines = err.decode(errors="replace").strip().splitlines()
        ok = proc.returncode == 0
        detail = "command exited 0" if ok else f"command exited {proc.returncode}: {lines[-1] if lines else ''}"
        self.steps.append(Step(name, ok, detail.strip(), time.monotonic() - started))
        return ok

    async def _await_source(self, http: aiohttp.ClientSession, wanted: str, name: str,
                            modes: dict[str, tuple[str, float]]) -> bool:
        started = time.monotonic()
        seen = ""
        while time.monotonic() - started < self.timeout_s:
            try:
                view = await self._view(http)
            except CommandError as exc:  # the proxy itself must stay up through the drill
                self.steps.append(Step(name, False, f"the proxy stopped answering: {exc}"))
                return False
            seen = view.source
            if seen == wanted:
                same = _modes(view) == modes
                detail = f"source {wanted}" + ("" if same else f"; modes changed: {_modes(view)} (were {modes})")
                self.steps.append(Step(name, same, detail, time.monotonic() - started))
                return same
            await asyncio.sleep(POLL_S)
        self.steps.append(Step(name, False, f"source still {seen} after {self.timeout_s:g} s"))
        return False

    async def _check_metric(self, http: aiohttp.ClientSession) -> None:
        try:
            async with http.get(f"{self.admin_url}/metrics") as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.steps.append(Step("metric stage_mode_source", False, f"/metrics unreachable: {exc}"))
            return
        line = 'stage_mode_source{source="last_known"} 1.0'
        self.steps.append(Step("metric stage_mode_source", line in text,
                               "last_known = 1" if line in text else "stage_mode_source does not say last_known"))

    def _check_log(self, offset: int) -> None:
        if self.proxy_log is None:
            self.steps.append(Step("WARN logged", True, "not checked (no --proxy-log)"))
            return
        try:
            with self.proxy_log.open("rb") as handle:
                handle.seek(offset)
                fresh = handle.read()
        except OSError as exc:
            self.steps.append(Step("WARN logged", False, f"cannot read {self.proxy_log}: {exc.strerror}"))
            return
        for raw in fresh.splitlines():
            level = _degraded_level(raw)
            if level is not None:
                self.steps.append(Step("WARN logged", level == "WARN", f"mode_store_degraded at level {level}"))
                return
        self.steps.append(Step("WARN logged", False, f"no mode_store_degraded line in {self.proxy_log} since the "
                                                     "drill started"))


def _degraded_level(raw: bytes) -> str | None:
    """The level of a ``mode_store_degraded`` line (JSON, or the console format), None for any other line."""
    if b"mode_store_degraded" not in raw:
        return None
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:  # console format: "<ts> WARN  mode_store_degraded key=value …"
        parts = raw.decode(errors="replace").split()
        return parts[1] if len(parts) > 2 and parts[2] == "mode_store_degraded" else None
    if isinstance(event, dict) and event.get("event") == "mode_store_degraded":
        return str(event.get("level"))
    return None


def _modes(view: wire.ModeState) -> dict[str, tuple[str, float]]:
    return {name: (record.mode, record.percent) for name, record in view.endpoints.items()}


def render(drill: Drill) -> str:
    width = max(len(step.name) for step in drill.steps)
    lines = [f"{step.name:<{width}}  {'PASS' if step.ok else 'FAIL'}  "
             + (f"{step.seconds:6.1f} s  " if step.seconds is not None else " " * 10) + step.detail
             for step in drill.steps]
    verdict = "Redis fallback drill: PASS" if drill.ok else "Redis fallback drill: FAIL"
    return "\n".join([*lines, "", verdict])
