"""``stagectl offenders LOG…``: who sends non-canonical stages, and which values, from the proxy's JSON logs.

Reads the proxy's ``stage_validation`` lines (docs/proxy.md, "Logs") line by line
(a 1 GB log streams in constant memory per distinct consumer/value; the tables
are capped so garbage cannot grow them without bound). Lines that are not the
proxy's — other JSON, text, binary junk — are counted and skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

MAX_KEYS = 100_000  # per table; beyond it new keys fold into "(other)"
OTHER = "(other)"


@dataclass
class Seen:
    """A count with the first and last timestamps it was seen at."""

    count: int = 0
    first: str = ""
    last: str = ""

    def add(self, ts: str) -> None:
        self.count += 1
        if ts and (not self.first or ts < self.first):
            self.first = ts
        if ts > self.last:
            self.last = ts


@dataclass
class EndpointReport:
    consumers: dict[tuple[str, str], Seen] = field(default_factory=dict)
    values: dict[tuple[str, str, str], Seen] = field(default_factory=dict)  # (value, result, normalized)
    total: int = 0


@dataclass
class Report:
    endpoints: dict[str, EndpointReport] = field(default_factory=dict)
    lines: int = 0
    matched: int = 0
    skipped: int = 0
    suppressed: int = 0


def _bump(table: dict[Any, Seen], key: Any, ts: str, other: Any) -> None:
    seen = table.get(key)
    if seen is None:
        if len(table) >= MAX_KEYS:
            seen = table.setdefault(other, Seen())
        else:
            seen = table[key] = Seen()
    seen.add(ts)


def _text(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def feed(report: Report, line: bytes) -> None:
    """Account one log line."""
    report.lines += 1
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        report.skipped += 1
        return
    if not isinstance(event, dict) or event.get("event") not in ("stage_validation", "log_suppressed"):
        report.skipped += 1
        return
    if event["event"] == "log_suppressed":
        suppressed = event.get("suppressed")
        report.suppressed += suppressed if isinstance(suppressed, int) else 0
        return
    endpoint = _text(event.get("endpoint")) or "(none)"
    ts = _text(event.get("ts"))
    one = report.endpoints.setdefault(endpoint, EndpointReport())
    one.total += 1
    report.matched += 1
    consumer = (_text(event.get("client_ip")), _text(event.get("user_agent")))
    _bump(one.consumers, consumer, ts, (OTHER, ""))
    value = (_text(event.get("value")), _text(event.get("result")), _text(event.get("normalized")))
    _bump(one.values, value, ts, (OTHER, "", ""))


def read_lines(paths: Iterable[str], stdin: IO[bytes]) -> Iterator[bytes]:
    """Lines of every LOG (``-`` is standard input), streamed."""
    for path in paths:
        if path == "-":
            yield from stdin
            continue
        with Path(path).open("rb") as handle:
            yield from handle


def build(paths: Iterable[str], stdin: IO[bytes] | None = None) -> Report:
    report = Report()
    for line in read_lines(paths, stdin if stdin is not None else sys.stdin.buffer):
        if line.strip():
            feed(report, line)
    return report


def _top(table: dict[Any, Seen], n: int) -> list[tuple[Any, Seen]]:
    return sorted(table.items(), key=lambda item: (-item[1].count, item[0]))[:n]


def as_json(report: Report, top: int) -> dict[str, Any]:
    endpoints = {}
    for name, one in sorted(report.endpoints.items()):
        endpoints[name] = {
            "logged": one.total,
            "consumers": [{"client_ip": ip, "user_agent": ua, "count": s.count, "first_seen": s.first,
                           "last_seen": s.last} for (ip, ua), s in _top(one.consumers, top)],
            "values": [{"value": v, "result": r, "normalized": n or None, "count": s.count, "first_seen": s.first,
                        "last_seen": s.last} for (v, r, n), s in _top(one.values, top)],
        }
    return {"lines": report.lines, "matched": report.matched, "skipped": report.skipped,
            "suppressed": report.suppressed, "endpoints": endpoints}


def _clip(text: str, width: int) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def as_text(report: Report, top: int) -> str:
    out = [f"{report.lines} lines: {report.matched} validation events, {report.skipped} other lines skipped"
           + (f", {report.suppressed} more events suppressed by the proxy's flood guard" if report.suppressed else "")]
    for name, one in sorted(report.endpoints.items()):
        out += ["", f"== {name}: {one.total} logged", "", "top consumers:",
                f"  {'COUNT':>7}  {'CLIENT IP':<39}  {'USER AGENT':<40}  FIRST SEEN .. LAST SEEN"]
        for (ip, ua), s in _top(one.consumers, top):
            out.append(f"  {s.count:>7}  {_clip(ip, 39):<39}  {_clip(ua, 40):<40}  {s.first} .. {s.last}")
        out += ["", "top values:", f"  {'COUNT':>7}  {'VALUE':<32}  {'RESULT':<10}  NORMALIZED"]
        for (value, result, normalized), s in _top(one.values, top):
            out.append(f"  {s.count:>7}  {_clip(repr(value), 32):<32}  {result:<10}  {normalized or '-'}")
    return "\n".join(out)
