"""``stagectl offenders LOG…``: who sends non-canonical stages, and which values, from the proxy's JSON logs.

Reads the proxy's ``stage_validation`` lines (docs/proxy.md, "Logs") line by line
(a 1 GB log streams in constant memory per distinct consumer/value; the tables
are capped so garbage cannot grow them without bound). Lines that are not the
proxy's — other JSON, text, binary junk — are counted and skipped.

Per endpoint the values are ranked in separate tables by what ``enforce`` does with
them: aliases (normalized), unknowns (rejected with 422) and the rest (``invalid``,
``unreadable``: rejected too). The proxy's WARN flood guard writes at most
``--warn-log-per-s`` lines per second per endpoint and result and summarizes the rest
as ``log_suppressed`` lines: those are counted per endpoint and result, so a table
can say when its counts are only a lower bound. ``--suggest-aliases`` proposes
catalog alias lines for frequent unknown values one or two typos away from a stage
(docs/offenders.md).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

import orjson

from proxy.catalog.stages import Catalog, fold
from tools.shared.timeparse import iso, parse_duration, parse_instant

MAX_KEYS = 100_000  # per table; beyond it new keys fold into "(other)"
OTHER = "(other)"

# The results the proxy logs (proxy/catalog/stages.py RESULTS minus canonical and absent, which it never logs; a
# required field that is missing is logged as invalid).
LOGGED_RESULTS: Final = ("alias", "unknown", "invalid", "unreadable")

# The tables, by what enforce does with the values: (key, title, results).
TABLES: Final = (("aliases", "aliases (normalized by enforce)", ("alias",)),
                 ("unknowns", "unknowns (rejected by enforce)", ("unknown",)),
                 ("others", "invalid and unreadable (rejected by enforce)", ("invalid", "unreadable")))
_TABLE_OF: Final = {result: key for key, _, results in TABLES for result in results}

LOWER_BOUND = "counts are a lower bound"
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


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
    # (consumer, client IP, user agent): by the consumer the gateway named when the line has one (all its
    # addresses together), else by address and user agent
    consumers: dict[tuple[str, str, str], Seen] = field(default_factory=dict)
    aliases: dict[tuple[str, str], Seen] = field(default_factory=dict)  # (value, canonical)
    unknowns: dict[str, Seen] = field(default_factory=dict)  # value
    others: dict[tuple[str, str, str], Seen] = field(default_factory=dict)  # (result, value, reason)
    logged: dict[str, int] = field(default_factory=dict)  # per result
    suppressed: dict[str, int] = field(default_factory=dict)  # per result, from log_suppressed lines

    @property
    def total(self) -> int:
        return sum(self.logged.values())

    def counts(self, table: str | None = None) -> tuple[int, int]:
        """(logged, suppressed) of one table's results, or of every result."""
        def of(counts: dict[str, int]) -> int:
            return sum(n for result, n in counts.items() if table is None or _TABLE_OF.get(result, "others") == table)
        return of(self.logged), of(self.suppressed)


@dataclass(frozen=True)
class Filters:
    """What to count: None is everything."""

    endpoints: frozenset[str] | None = None
    results: frozenset[str] | None = None
    since: float | None = None  # Unix seconds

    def keeps(self, endpoint: str, result: str, ts: str) -> bool:
        if self.endpoints is not None and endpoint not in self.endpoints:
            return False
        if self.results is not None and result not in self.results:
            return False
        if self.since is None:
            return True
        try:  # the proxy writes 2026-12-01T10:00:00.123+00:00; a line without a time cannot be shown recent
            return datetime.fromisoformat(ts).timestamp() >= self.since
        except (ValueError, TypeError):
            return False


@dataclass
class Report:
    endpoints: dict[str, EndpointReport] = field(default_factory=dict)
    filters: Filters = field(default_factory=Filters)
    lines: int = 0
    matched: int = 0
    skipped: int = 0
    filtered: int = 0  # the proxy's lines left out by --endpoint, --result or --since
    suppressed: int = 0


def parse_since(text: str, now: float) -> float:
    """Unix seconds of ``--since``: RFC 3339, or a duration (``30m``, ``24h``, ``7d``) back from ``now``."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    words = "not a duration back from now (30m, 24h, 7d) nor an RFC 3339 instant (2026-12-01T00:00:00Z)"
    try:
        float(text)
    except ValueError:
        pass
    else:  # parse_instant would take it as Unix seconds: "--since 24" surely meant 24h
        raise ValueError(f"--since {text!r}: a number needs a unit (24h, 30m, 7d); {words}")
    try:
        return parse_instant(text)
    except ValueError as exc:
        reason = str(exc) if "time zone" in str(exc) else f"{text!r} is {words}"
        raise ValueError(f"--since: {reason}") from None


def make_filters(endpoints: Sequence[str] | None, results: Sequence[str] | None, since: str | None,
                 catalog: Catalog | None = None, now: float | None = None) -> Filters:
    """The filters of the command line (``--endpoint`` names checked against ``catalog`` when given); ValueError
    with the operator's message for a bad value."""
    for result in results or ():
        if result not in LOGGED_RESULTS:
            raise ValueError(f"--result {result!r}: the proxy logs {', '.join(LOGGED_RESULTS)} (a missing required "
                             f"field is logged as invalid; canonical and absent are never logged)")
    if catalog is not None:
        for name in endpoints or ():
            if name not in catalog.endpoint_names:
                raise ValueError(f"--endpoint {name!r}: unknown endpoint (the catalog has "
                                 f"{', '.join(catalog.endpoint_names)})")
    return Filters(frozenset(endpoints) if endpoints else None, frozenset(results) if results else None,
                   parse_since(since, time.time() if now is None else now) if since is not None else None)


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


def _suppressed(report: Report, one: EndpointReport, result: str, event: dict[str, Any]) -> None:
    count = event.get("suppressed")
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        report.suppressed += count
        one.suppressed[result] = one.suppressed.get(result, 0) + count


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
    endpoint = _text(event.get("endpoint")) or "(none)"
    result, ts = _text(event.get("result")), _text(event.get("ts"))
    if not report.filters.keeps(endpoint, result, ts):
        report.filtered += 1
        return
    one = report.endpoints.setdefault(endpoint, EndpointReport())
    if event["event"] == "log_suppressed":
        _suppressed(report, one, result, event)
        return
    report.matched += 1
    one.logged[result] = one.logged.get(result, 0) + 1
    consumer = _text(event.get("consumer"))
    who = (consumer, "", "") if consumer else ("", _text(event.get("client_ip")), _text(event.get("user_agent")))
    _bump(one.consumers, who, ts, ("", OTHER, ""))
    value = _text(event.get("value"))
    if result == "alias":
        _bump(one.aliases, (value, _text(event.get("normalized"))), ts, (OTHER, ""))
    elif result == "unknown":
        _bump(one.unknowns, value, ts, OTHER)
    else:
        _bump(one.others, (result, value, _text(event.get("reason"))), ts, (result, OTHER, ""))


KUBECTL_PREFIX: Final = re.compile(rb"\[[^\]\s]{1,512}\] (?=[{\[])")


def unprefixed(line: bytes) -> bytes:
    """A line without the ``[pod/NAME/CONTAINER] `` that ``kubectl logs --prefix`` puts before each line."""
    if line.startswith(b"["):
        found = KUBECTL_PREFIX.match(line)
        if found is not None:
            return line[found.end():]
    return line


def read_lines(paths: Iterable[str], stdin: IO[bytes]) -> Iterator[bytes]:
    """Lines of every LOG (``-`` is standard input), streamed; kubectl's ``--prefix`` taken off."""
    for path in paths:
        if path == "-":
            yield from map(unprefixed, stdin)
            continue
        with Path(path).open("rb") as handle:
            yield from map(unprefixed, handle)


def build(paths: Iterable[str], stdin: IO[bytes] | None = None, filters: Filters | None = None) -> Report:
    report = Report(filters=filters or Filters())
    for line in read_lines(paths, stdin if stdin is not None else sys.stdin.buffer):
        if line.strip():
            feed(report, line)
    return report


# --- alias suggestions -------------------------------------------------------------------------------------------


def edit_distance(a: str, b: str) -> int:
    """Typos between ``a`` and ``b``: insertions, deletions, substitutions and swaps of two adjacent characters, one
    each (optimal string alignment). A count of typos, not difflib's similarity ratio: an alias fixes a misspelling,
    and a ratio calls two short unrelated words "close" as readily as one long word with a typo."""
    before: list[int] = []
    previous = list(range(len(b) + 1))
    for i, char in enumerate(a, start=1):
        row = [i] + [0] * len(b)
        for j, other in enumerate(b, start=1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (char != other))
            if i > 1 and j > 1 and char == b[j - 2] and a[i - 2] == other:
                row[j] = min(row[j], before[j - 2] + 1)
        before, previous = previous, row
    return previous[-1]


def max_distance(target: str) -> int:
    """How many typos still make a value the same stage as ``target`` (a folded key): one per four characters, so
    "qualifed" → qualified and "closed_wonn" → closed_won (1 each), "lead" takes one typo, "won" none ("wan", "ton"
    are not "won")."""
    return len(target) // 4


@dataclass(frozen=True)
class Suggestion:
    """One alias line to propose: the folded value → a canonical stage."""

    key: str  # the value folded, as the alias key (aliases are matched after folding)
    canonical: str
    count: int  # logged unknowns folding to ``key``, over the endpoints and the filters
    distance: int
    near: str  # the folded canonical stage or alias key it is ``distance`` typos from
    values: tuple[str, ...]  # the values as sent, most frequent first

    @property
    def line(self) -> str:
        return self.line_until(None)

    def line_until(self, until: str | None) -> str:
        """The catalog line: ``key = "stage"``, or with ``until`` (a TOML date-time) a temporary alias
        ``key = { to = "stage", until = 2026-12-19T10:00:00Z }``."""
        key = self.key if _BARE_KEY.fullmatch(self.key) else _toml_string(self.key)
        seen = ", ".join(_toml_string(v) for v in self.values[:3])
        more = f" and {len(self.values) - 3} more" if len(self.values) > 3 else ""
        stage = json.dumps(self.canonical)
        value = stage if until is None else f"{{ to = {stage}, until = {until} }}"
        return (f"{key} = {value}  # seen {self.count} times as {seen}{more}; "
                f"edit distance {self.distance} from {self.near!r}")


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string: JSON's escapes are TOML's, but DEL must be escaped too (also in comments)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _targets(catalog: Catalog) -> dict[str, str]:
    """Folded canonical stages and alias keys → their canonical stage (what the proxy's classifier matches)."""
    targets = {fold(stage): stage for stage in catalog.canonical}
    targets.update({fold(alias): stage for alias, stage in catalog.aliases.items()})
    return targets


def _nearest(key: str, targets: dict[str, str]) -> tuple[int, str, str] | None:
    """(distance, near, canonical) of the one stage ``key`` is a few typos from (the stage's own name before an alias
    key at the same distance); None when none is, when two stages are equally near (a person decides), or when
    the value is the stage with two or more letters added in front or behind ("unqualified": a word of its own,
    often the opposite; one letter, "closed_wonn", is a typo)."""
    found: list[tuple[int, bool, str, str]] = []
    for target, canonical in targets.items():
        limit = max_distance(target)
        if abs(len(key) - len(target)) > limit:  # a lower bound of the distance: most pairs skip the loop
            continue
        if len(key) >= len(target) + 2 and (key.startswith(target) or key.endswith(target)):
            continue  # the stage plus a prefix or suffix is another word ("unqualified"), not a typo
        distance = edit_distance(key, target)
        if 0 < distance <= limit:
            found.append((distance, target != fold(canonical), target, canonical))
    found.sort()
    if not found or any(d == found[0][0] and c != found[0][3] for d, _, _, c in found[1:]):
        return None
    return found[0][0], found[0][2], found[0][3]


def suggest(report: Report, catalog: Catalog, min_count: int) -> list[Suggestion]:
    """Alias lines for unknown values seen at least ``min_count`` times (folded variants together) that are a few
    typos from exactly one stage. Values that already fold to a stage or an alias (a log from an older catalog) and
    values near no stage ("banana") get none."""
    variants: dict[str, dict[str, int]] = {}
    for one in report.endpoints.values():
        for value, seen in one.unknowns.items():
            if value != OTHER:
                by_value = variants.setdefault(fold(value), {})
                by_value[value] = by_value.get(value, 0) + seen.count
    targets = _targets(catalog)
    suggestions = []
    for key, by_value in variants.items():
        count = sum(by_value.values())
        if count < min_count or not key or catalog.classify(key)[0] != "unknown":
            continue
        nearest = _nearest(key, targets)
        if nearest is not None:
            values = tuple(sorted(by_value, key=lambda v: (-by_value[v], v)))
            suggestions.append(Suggestion(key, nearest[2], count, nearest[0], nearest[1], values))
    return sorted(suggestions, key=lambda s: (-s.count, s.key))


def next_steps(config: str) -> list[str]:
    """What to run after pasting the lines into the catalog file ``config``."""
    return [f"stagectl catalog check {shlex.quote(config)}", "stagectl catalog reload --admin-url http://127.0.0.1:9901"]


# --- output ------------------------------------------------------------------------------------------------------


def _top(table: dict[Any, Seen], n: int) -> list[tuple[Any, Seen]]:
    return sorted(table.items(), key=lambda item: (-item[1].count, item[0]))[:n]


def sample_note(logged: int, suppressed: int) -> str:
    """``N logged``, or ``N logged + M suppressed by the flood guard — counts are a lower bound``."""
    if not suppressed:
        return f"{logged} logged"
    return f"{logged} logged + {suppressed} suppressed by the flood guard — {LOWER_BOUND}"


def _seen(s: Seen) -> dict[str, Any]:
    return {"count": s.count, "first_seen": s.first, "last_seen": s.last}


def _table_json(one: EndpointReport, key: str, top: int) -> dict[str, Any]:
    logged, suppressed = one.counts(key)
    rows: list[dict[str, Any]]
    if key == "aliases":
        rows = [{"value": v, "canonical": c or None, **_seen(s)} for (v, c), s in _top(one.aliases, top)]
    elif key == "unknowns":
        rows = [{"value": v, **_seen(s)} for v, s in _top(one.unknowns, top)]
    else:
        rows = [{"result": r, "value": v or None, "reason": why or None, **_seen(s)}
                for (r, v, why), s in _top(one.others, top)]
    return {"logged": logged, "suppressed": suppressed, "lower_bound": suppressed > 0, "values": rows}


def as_json(report: Report, top: int, suggestions: list[Suggestion] | None = None,
            until: str | None = None) -> dict[str, Any]:
    endpoints = {}
    for name, one in sorted(report.endpoints.items()):
        logged, suppressed = one.counts()
        endpoints[name] = {
            "logged": logged,
            "suppressed": dict(sorted(one.suppressed.items())),
            "lower_bound": suppressed > 0,
            "consumers": [{"consumer": who, **_seen(s)} if who else {"client_ip": ip, "user_agent": ua, **_seen(s)}
                          for (who, ip, ua), s in _top(one.consumers, top)],
            **{key: _table_json(one, key, top) for key, _, _ in TABLES},
        }
    filters = report.filters
    out: dict[str, Any] = {
        "lines": report.lines, "matched": report.matched, "skipped": report.skipped, "filtered": report.filtered,
        "suppressed": report.suppressed,
        "filters": {"endpoints": sorted(filters.endpoints) if filters.endpoints else None,
                    "results": sorted(filters.results) if filters.results else None,
                    "since": iso(filters.since) if filters.since is not None else None},
        "endpoints": endpoints}
    if suggestions is not None:
        out["suggestions"] = [{"alias": s.key, "canonical": s.canonical, "count": s.count, "distance": s.distance,
                               "near": s.near, "values": list(s.values), "line": s.line_until(until),
                               **({"until": until} if until is not None else {})} for s in suggestions]
    return out


def _clip(text: str, width: int) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def _table_text(one: EndpointReport, key: str, title: str, top: int) -> list[str]:
    logged, suppressed = one.counts(key)
    out = ["", f"{title}: {sample_note(logged, suppressed)}"]
    if key == "aliases":
        out.append(f"  {'COUNT':>7}  {'VALUE':<32}  {'CANONICAL':<12}  FIRST SEEN .. LAST SEEN")
        out += [f"  {s.count:>7}  {_clip(repr(v), 32):<32}  {c or '-':<12}  {s.first} .. {s.last}"
                for (v, c), s in _top(one.aliases, top)]
    elif key == "unknowns":
        out.append(f"  {'COUNT':>7}  {'VALUE':<32}  FIRST SEEN .. LAST SEEN")
        out += [f"  {s.count:>7}  {_clip(repr(v), 32):<32}  {s.first} .. {s.last}" for v, s in _top(one.unknowns, top)]
    else:
        out.append(f"  {'COUNT':>7}  {'RESULT':<10}  {'VALUE':<24}  REASON")
        out += [f"  {s.count:>7}  {r:<10}  {_clip(repr(v) if v else '-', 24):<24}  {why or '-'}"
                for (r, v, why), s in _top(one.others, top)]
    return out


def as_text(report: Report, top: int) -> str:
    out = [f"{report.lines} lines: {report.matched} validation events, {report.skipped} other lines skipped"
           + (f", {report.filtered} left out by the filters" if report.filtered else "")
           + (f", {report.suppressed} more events suppressed by the proxy's flood guard" if report.suppressed else "")]
    for name, one in sorted(report.endpoints.items()):
        logged, suppressed = one.counts()
        out += ["", f"== {name}: {sample_note(logged, suppressed)}", "", "top consumers:",
                f"  {'COUNT':>7}  {'CONSUMER OR CLIENT IP':<39}  {'USER AGENT':<40}  FIRST SEEN .. LAST SEEN"]
        for (who, ip, ua), s in _top(one.consumers, top):
            name = f"consumer {who}" if who else ip
            out.append(f"  {s.count:>7}  {_clip(name, 39):<39}  {_clip(ua or '-', 40):<40}  {s.first} .. {s.last}")
        for key, title, _ in TABLES:
            if key != "others" or any(one.counts(key)):
                out += _table_text(one, key, title, top)
    return "\n".join(out)


def suggestions_text(suggestions: list[Suggestion], min_count: int, config: str, until: str | None = None) -> str:
    head = f"alias suggestions (unknown values seen at least {min_count} times, a few typos from one stage):"
    if not suggestions:
        return f"{head} none"
    steps = next_steps(config)
    table = "[stages.aliases]" if until is None else f"[stages.temporary_aliases] (until {until}, UTC)"
    return "\n".join([head, f"# paste under {table} in {config}; review each: a near miss may be another stage",
                      *(s.line_until(until) for s in suggestions), "",
                      f"then: {steps[0]}", f"      {steps[1]}   # the proxy's admin listener"])


def render(report: Report, top: int, *, suggestions: list[Suggestion] | None = None, min_count: int = 5,
           config: str = "", until: str | None = None) -> str:
    """The tables for a person, followed by the alias suggestions when they were asked for (temporary ones
    ending at ``until`` when given)."""
    text = as_text(report, top)
    if suggestions is None:
        return text
    return f"{text}\n\n{suggestions_text(suggestions, min_count, config, until)}"
