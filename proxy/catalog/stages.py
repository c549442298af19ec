"""The stage catalog: canonical stages, aliases, temporary aliases, endpoints and the classifier.

Pure: no I/O. The proxy and the migration tool (``tools``) import this module, so
a value the proxy accepts is exactly a value the migration produces (docs/catalog.md).
The one clock it reads is the time a temporary alias is checked against its ``until``.
"""

from __future__ import annotations

import re
import time
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Final, Literal

Mode = Literal["off", "warn", "enforce"]
MODES: Final = ("off", "warn", "enforce")

Result = Literal["canonical", "alias", "unknown", "invalid", "absent", "unreadable"]
RESULTS: Final = ("canonical", "alias", "unknown", "invalid", "absent", "unreadable")

# Severity used to take the worst result of a request with several values.
SEVERITY: Final[Mapping[str, int]] = {
    "absent": 0,
    "canonical": 1,
    "alias": 2,
    "unknown": 3,
    "invalid": 4,
    "unreadable": 5,
}

# Unreadable reasons and the status `enforce` answers with (docs/proxy.md, "Answers").
UNREADABLE_STATUS: Final[Mapping[str, int]] = {
    "malformed_json": 400,
    "byte_order_mark": 400,
    "invalid_utf8": 400,
    "duplicate_key": 400,
    "ambiguous_key": 400,  # the field's key in another ASCII case ("Stage"): case-insensitive decoders read it
    "ambiguous_path": 400,  # an encoded / \\ NUL or % in a segment: routers split it differently
    "ambiguous_method": 400,  # method overrides that routers resolve to different endpoints, or cannot be read
    "field_in_query": 400,  # the field's name in the query string: frameworks that merge query and body read it
    "nesting_too_deep": 400,  # deeper than 128 levels where the body is walked token by token (docs/proxy.md)
    "too_large": 413,
    "unsupported_media_type": 415,
    "unsupported_encoding": 415,
}

METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})

DEFAULT_CATALOG_TOML: Final = """\
default_mode = "off"            # mode of an endpoint with no stored mode

[stages]
canonical = ["lead", "qualified", "proposal", "negotiation", "closed_won", "closed_lost"]

[stages.aliases]                # keys are matched after folding
won = "closed_won"
lost = "closed_lost"
prospect = "lead"
negotiating = "negotiation"

# [stages.temporary_aliases]    # an alias until a date (UTC), unknown after it: time for a late consumer
# "closed wonn" = { to = "closed_won", until = 2027-01-15 }

[[endpoints]]
name = "create_deal"
method = "POST"
path = "/api/v1/deals"
field = "stage"                 # dotted path into the JSON body
required = true

[[endpoints]]
name = "update_deal"
method = ["PATCH", "PUT"]      # legacy frameworks route both to an update
path = "/api/v1/deals/{id}"
field = "stage"
required = false

[[endpoints]]
name = "import_deals"
method = "POST"
path = "/api/v1/deals/import"
field = "deals[*].stage"        # every element of the array
required = true
"""

_SEPARATORS = re.compile(r"[\s\-_.]+")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_FIELD_PART = re.compile(r"^([^.\[\]]+)(\[\*\])?$")
_TEMPLATE_VAR = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_SEGMENT = r"(?:\{[A-Za-z_][A-Za-z0-9_]*\}|(?!\.\.?(?:/|$))[A-Za-z0-9._~-]+)"
_PATH = re.compile(rf"/|(?:/{_SEGMENT})+/?")


class CatalogError(ValueError):
    """The catalog file is not valid; the message names the entry (and line). ``problems`` lists every problem
    found (the message is the first), so a check can report them all at once."""

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)


_ASCII_SEPARATORS = str.maketrans("-_.", "   ")


def fold(value: str) -> str:
    """Fold a stage string: NFKC, trim, casefold, separators to one ``_`` (docs/catalog.md#folding)."""
    if value.isascii():  # NFKC and casefold are lower() for ASCII; split() drops the runs and both ends
        if value.isalnum() and value.islower():  # nothing to fold (the common unknown value): 0.1 µs, not 0.4
            return value
        return "_".join(value.lower().translate(_ASCII_SEPARATORS).split())
    folded = unicodedata.normalize("NFKC", value).strip().casefold()
    return _SEPARATORS.sub("_", folded).strip("_")  # pragma: no mutate - casefolded: no X left to strip


def parse_field(spec: str) -> tuple[str, ...]:
    """Split ``deals[*].stage`` into ``("deals", "*", "stage")``."""
    parts: list[str] = []
    for piece in spec.split("."):
        match = _FIELD_PART.match(piece)
        if match is None:
            raise CatalogError(f"field {spec!r}: bad segment {piece!r} (use name, name[*], dotted)")
        parts.append(match.group(1))
        if match.group(2):
            parts.append("*")
    if parts[-1] == "*":
        raise CatalogError(f"field {spec!r}: must end in a name, not [*]")
    return tuple(parts)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One validated endpoint: methods + path template + field path in the body."""

    name: str
    methods: tuple[str, ...]
    path: str
    field: str
    required: bool
    field_path: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TemporaryAlias:
    """An alias until a time (``[stages.temporary_aliases]``): ``to`` until ``until`` (Unix seconds), unknown
    after it."""

    to: str
    until: float

    @property
    def until_text(self) -> str:
        return datetime.fromtimestamp(self.until, UTC).isoformat().replace("+00:00", "Z")

    def live(self, now: float) -> bool:
        return now < self.until


@dataclass(frozen=True, slots=True)
class Catalog:
    """Canonical stages, aliases and endpoints, with precomputed lookup tables."""

    default_mode: Mode
    canonical: tuple[str, ...]
    aliases: Mapping[str, str]
    endpoints: tuple[Endpoint, ...]
    case_sensitive_paths: bool
    _canonical_set: frozenset[str] = field(repr=False)
    _folded: Mapping[str, str] = field(repr=False)
    temporary: Mapping[str, TemporaryAlias] = field(default_factory=dict)  # key as written -> alias until
    _temporary_folded: Mapping[str, tuple[str, TemporaryAlias]] = field(default_factory=dict, repr=False)

    def endpoint(self, name: str) -> Endpoint | None:
        for endpoint in self.endpoints:
            if endpoint.name == name:
                return endpoint
        return None

    @property
    def canonical_set(self) -> frozenset[str]:
        return self._canonical_set

    @property
    def endpoint_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.endpoints)

    def as_json(self) -> dict[str, Any]:
        """The catalog as data (``GET /_ops/catalog``, ``stagectl catalog show``)."""
        return {"default_mode": self.default_mode, "canonical": list(self.canonical), "aliases": dict(self.aliases),
                **({"temporary_aliases": {key: {"to": alias.to, "until": alias.until_text}
                                          for key, alias in self.temporary.items()}} if self.temporary else {}),
                "case_sensitive_paths": self.case_sensitive_paths,
                "endpoints": [{"name": e.name, "methods": list(e.methods), "path": e.path, "field": e.field,
                               "required": e.required} for e in self.endpoints]}

    def classify(self, value: object, now: float | None = None) -> tuple[Result, str | None]:
        """Classify one value: (result, normalized canonical stage or None). A temporary alias counts as an
        alias before its ``until`` (as of ``now``, default the clock) and as unknown after it."""
        result, normalized, _ = self.classify_lasting(value, now)
        return result, normalized

    def classify_lasting(self, value: object, now: float | None = None) -> tuple[Result, str | None, bool]:
        """:meth:`classify`, and whether the answer lasts (False for a temporary alias's: it ends, so a memo
        must not keep it)."""
        if type(value) is not str:
            return "invalid", None, True
        if value in self._canonical_set:
            return "canonical", value, True
        key = fold(value)
        target = self._folded.get(key)
        if target is not None:
            return "alias", target, True
        if self._temporary_folded:
            temporary = self._temporary_folded.get(key)
            if temporary is not None and temporary[1].live(time.time() if now is None else now):
                return "alias", temporary[1].to, False
        return "unknown", None, True

    def temporary_key(self, value: str) -> str | None:
        """The ``[stages.temporary_aliases]`` key ``value`` matches (live or not), or None: a metric label that
        comes from the catalog, never from the client."""
        found = self._temporary_folded.get(fold(value)) if self._temporary_folded else None
        return found[0] if found is not None else None

    def expired(self, now: float) -> list[str]:
        """The temporary aliases whose ``until`` has passed (``catalog check`` warns about them)."""
        return [key for key, alias in self.temporary.items() if not alias.live(now)]


MAX_CATALOG_CHARS: Final = 4 * 1024 * 1024  # a real catalog is a few KB; past this it is refused, not parsed
_KEY_LINE: Final = re.compile(r"""\s*(?:"([^"\n]*)"|'([^'\n]*)'|([A-Za-z0-9_-]+))\s*(?:=|$|#)""")
_NAME_LINE: Final = re.compile(r'\s*name\s*=\s*"([^"\n]*)"')


class _Lines:
    """Where each key (bare or quoted) and each ``name = "…"`` is first assigned: one pass over the text, so
    that naming the line of every problem stays linear in the catalog's size."""

    def __init__(self, text: str) -> None:
        self._first: dict[str, int] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            for pattern in (_NAME_LINE, _KEY_LINE):
                match = pattern.match(line)
                if match is not None:
                    key = next(group for group in match.groups() if group is not None)
                    self._first.setdefault(key, number)
                    break

    def of(self, key: str) -> str:
        """`` (line N)`` of the line assigning ``key``, or ``""``."""
        number = self._first.get(key)
        return f" (line {number})" if number is not None else ""


def _require_str_list(raw: object, what: str) -> list[str]:
    if not isinstance(raw, list) or not raw or not all(isinstance(item, str) and item for item in raw):
        raise CatalogError(f"{what} must be a non-empty list of non-empty strings")
    return list(raw)


def _fold_table(canonical: list[str], aliases: Mapping[str, object], lines: _Lines,
                problems: list[str]) -> dict[str, str]:
    table: dict[str, str] = {}
    origin: dict[str, str] = {}
    for stage in canonical:
        key = fold(stage)
        if key in table:
            problems.append(f"canonical stage {stage!r} folds to {key!r}, colliding with {origin[key]}"
                            f"{lines.of(stage)}")
            continue
        table[key], origin[key] = stage, f"canonical stage {stage!r}"
    for alias, target in aliases.items():
        where = lines.of(alias)
        key = fold(alias)
        if not isinstance(target, str) or target not in canonical:
            problems.append(f"alias {alias!r} points at {target!r}, which is not a canonical stage{where}")
        elif not key:
            problems.append(f"alias {alias!r} folds to an empty string{where}")
        elif key in table:
            problems.append(f"alias {alias!r} folds to {key!r}, colliding with {origin[key]}{where}")
        else:
            table[key], origin[key] = target, f"alias {alias!r}"
    return table


def _instant(raw: object) -> float | None:
    """A TOML date (midnight UTC at its start) or date-time (without an offset: UTC), or the same as RFC 3339
    text (the JSON form); Unix seconds, or None if it is neither."""
    if isinstance(raw, str):
        try:
            raw = datetime.fromisoformat(raw) if "T" in raw.upper() or " " in raw else date.fromisoformat(raw)
        except ValueError:
            return None
    if isinstance(raw, datetime):
        seconds = (raw if raw.tzinfo is not None else raw.replace(tzinfo=UTC)).timestamp()
    elif isinstance(raw, date):
        seconds = datetime(raw.year, raw.month, raw.day, tzinfo=UTC).timestamp()
    else:
        return None
    return seconds if _EPOCH <= seconds < _YEAR_9000 else None  # shown and compared as UTC text in that range


_EPOCH: Final = 0.0
_YEAR_9000: Final = datetime(9000, 1, 1, tzinfo=UTC).timestamp()


def _temporary_table(raw: object, canonical: list[str], folded: Mapping[str, str], lines: _Lines,
                     problems: list[str]) -> tuple[dict[str, TemporaryAlias], dict[str, tuple[str, TemporaryAlias]]]:
    """``[stages.temporary_aliases]``: ``"key" = { to = "stage", until = 2027-01-15 }``, checked like aliases
    (and against them: a key may not fold to a stage, an alias or another temporary alias)."""
    if not isinstance(raw, dict):
        problems.append("[stages.temporary_aliases] must be a table of alias = { to = stage, until = date }")
        return {}, {}
    table: dict[str, TemporaryAlias] = {}
    by_fold: dict[str, tuple[str, TemporaryAlias]] = {}
    for key, entry in raw.items():
        where = lines.of(key)
        if not isinstance(entry, dict) or set(entry) != {"to", "until"}:
            problems.append(f"temporary alias {key!r} must be {{ to = \"stage\", until = 2027-01-15 }}{where}")
            continue
        until = _instant(entry["until"])
        folded_key = fold(key)
        if entry["to"] not in canonical:
            problems.append(f"temporary alias {key!r} points at {entry['to']!r}, which is not a canonical "
                            f"stage{where}")
        elif until is None:
            problems.append(f"temporary alias {key!r}: until {entry['until']!r} is not a date or date-time "
                            f"between 1970 and 9000{where}")
        elif not folded_key:
            problems.append(f"temporary alias {key!r} folds to an empty string{where}")
        elif folded_key in folded:
            problems.append(f"temporary alias {key!r} folds to {folded_key!r}, already a stage or an alias{where}")
        elif folded_key in by_fold:
            problems.append(f"temporary alias {key!r} folds to {folded_key!r}, colliding with temporary alias "
                            f"{by_fold[folded_key][0]!r}{where}")
        else:
            table[key] = TemporaryAlias(entry["to"], until)
            by_fold[folded_key] = (key, table[key])
    return table, by_fold


def _parse_methods(raw: object) -> tuple[str, ...] | None:
    """``"PATCH"`` or ``["PATCH", "PUT"]`` as methods, upper-cased and unique; None if not that."""
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(m, str) and m.upper() in METHODS for m in items):
        return None
    methods = tuple(dict.fromkeys(m.upper() for m in items))
    return methods if len(methods) == len(items) else None


def _parse_endpoint(raw: object, index: int, lines: _Lines) -> Endpoint:
    if not isinstance(raw, dict):
        raise CatalogError(f"endpoints[{index}] must be a table")
    name = raw.get("name")
    label = f"endpoint {name!r}" if isinstance(name, str) else f"endpoints[{index}]"
    where = lines.of(str(name)) if isinstance(name, str) else ""
    unknown = set(raw) - {"name", "method", "path", "field", "required"}
    if unknown:
        raise CatalogError(f"{label}: unknown key(s) {sorted(unknown)}{where}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise CatalogError(f"{label}: name must match {_NAME.pattern}{where}")
    methods, path, spec = _parse_methods(raw.get("method")), raw.get("path"), raw.get("field")
    required = raw.get("required", False)
    if methods is None:
        raise CatalogError(f"{label}: method must be one of {sorted(METHODS)}, or a list of them without repeats"
                           f"{where}")
    if not isinstance(path, str) or not _PATH.fullmatch(path) or path.lower().startswith("/_ops"):
        raise CatalogError(f"{label}: path must be a normalized absolute path (segments of letters, digits, "
                           f"-._~ or one {{var}} each; no '//', '.', '..' or '%'), not under /_ops{where}")
    if not isinstance(spec, str) or not spec:
        raise CatalogError(f"{label}: field must be a dotted path such as 'stage' or 'deals[*].stage'{where}")
    if not isinstance(required, bool):
        raise CatalogError(f"{label}: required must be true or false{where}")
    try:
        field_path = parse_field(spec)
    except CatalogError as exc:
        raise CatalogError(f"{label}: {exc}{where}") from None
    return Endpoint(name, methods, path.rstrip("/") or "/", spec, required, field_path)


def _route_keys(endpoint: Endpoint, case_sensitive: bool) -> list[tuple[str, str]]:
    """How the router tells endpoints apart: method, and path with every {var} alike (and case folded)."""
    shape = _TEMPLATE_VAR.sub("{}", endpoint.path)
    return [(method, shape if case_sensitive else shape.lower()) for method in endpoint.methods]


def _parse_endpoints(raw: object, lines: _Lines, case_sensitive: bool, problems: list[str]) -> tuple[Endpoint, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append("[[endpoints]] must list at least one endpoint")
        return ()
    endpoints = []
    for index, item in enumerate(raw):
        try:
            endpoints.append(_parse_endpoint(item, index, lines))
        except CatalogError as exc:
            problems.append(str(exc))
    names = [e.name for e in endpoints]
    routes = [key for e in endpoints for key in _route_keys(e, case_sensitive)]
    if len(set(names)) != len(names):
        problems.append(f"endpoint names must be unique: {names}")
    if len(set(routes)) != len(routes):
        problems.append(f"two endpoints share a method and path: {routes}")
    return tuple(endpoints)


def _load_toml(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """The parsed TOML, or why it cannot be read (a size or nesting past any real catalog included)."""
    if len(text) > MAX_CATALOG_CHARS:
        return None, f"the catalog is {len(text)} characters; at most {MAX_CATALOG_CHARS} are read"
    try:
        return tomllib.loads(text), None
    except tomllib.TOMLDecodeError as exc:
        return None, f"not valid TOML: {exc}"
    except RecursionError:  # tomllib recurses per nesting level: 5 000 nested arrays exhaust the stack
        return None, "not a catalog: values nest too deeply"


def check_catalog(text: str) -> tuple[Catalog | None, list[str]]:
    """Parse and validate catalog TOML text: (the catalog, []) or (None, every problem found, each naming its
    entry and line). ``stagectl catalog check`` prints them all; the proxy refuses a reload on any."""
    data, unreadable = _load_toml(text)
    if data is None:
        return None, [unreadable or "unreadable"]
    return _check_data(data, _Lines(text))


def catalog_from_json(data: object) -> Catalog:
    """The catalog ``Catalog.as_json`` (``GET /_ops/catalog``) describes, checked by the same rules as a file;
    CatalogError naming the first problem. How the tools take the catalog a proxy serves."""
    if not isinstance(data, dict):
        raise CatalogError("a catalog must be a JSON object")
    endpoints = data.get("endpoints")
    as_toml = {
        **{key: data[key] for key in ("default_mode", "case_sensitive_paths") if key in data},
        "stages": {"canonical": data.get("canonical"), "aliases": data.get("aliases", {}),
                   **({"temporary_aliases": data["temporary_aliases"]} if "temporary_aliases" in data else {})},
        "endpoints": [{**{k: v for k, v in e.items() if k != "methods"}, "method": e.get("methods")}
                      if isinstance(e, dict) else e for e in endpoints] if isinstance(endpoints, list) else endpoints,
    }
    catalog, problems = _check_data(as_toml, _Lines(""))
    if catalog is None:
        raise CatalogError(problems[0], tuple(problems))
    return catalog


def _check_data(data: dict[str, Any], lines: _Lines) -> tuple[Catalog | None, list[str]]:
    problems: list[str] = []
    unknown = set(data) - {"default_mode", "case_sensitive_paths", "stages", "endpoints"}
    if unknown:
        problems.append(f"unknown top-level key(s) {sorted(unknown)}")
    default_mode = data.get("default_mode", "off")
    if default_mode not in MODES:
        problems.append(f"default_mode must be one of {list(MODES)}, not {default_mode!r}")
    stages = data.get("stages")
    canonical: list[str] = []
    aliases: object = {}
    temporary_raw: object = {}
    if not isinstance(stages, dict):
        problems.append("[stages] table is missing")
    else:
        try:
            canonical = _require_str_list(stages.get("canonical"), "stages.canonical")
        except CatalogError as exc:
            problems.append(str(exc))
        aliases = stages.get("aliases", {})
        if not isinstance(aliases, dict):
            problems.append("[stages.aliases] must be a table of alias = canonical stage")
            aliases = {}
        temporary_raw = stages.get("temporary_aliases", {})
        unknown_stage_keys = set(stages) - {"canonical", "aliases", "temporary_aliases"}
        if unknown_stage_keys:
            problems.append(f"unknown key(s) in [stages]: {sorted(unknown_stage_keys)}")
    case_sensitive = data.get("case_sensitive_paths", False)
    if not isinstance(case_sensitive, bool):
        problems.append("case_sensitive_paths must be true or false")
        case_sensitive = False
    assert isinstance(aliases, dict)
    folded = _fold_table(canonical, aliases, lines, problems) if canonical else {}
    temporary, temporary_folded = _temporary_table(temporary_raw, canonical, folded, lines, problems)
    endpoints = _parse_endpoints(data.get("endpoints"), lines, case_sensitive, problems)
    if problems:
        return None, _bounded(problems)
    return Catalog(
        default_mode=default_mode,
        canonical=tuple(canonical),
        aliases=dict(aliases),
        endpoints=endpoints,
        case_sensitive_paths=case_sensitive,
        _canonical_set=frozenset(canonical),
        _folded=folded,
        temporary=temporary,
        _temporary_folded=temporary_folded,
    ), []


MAX_PROBLEMS: Final = 50


def _bounded(problems: list[str]) -> list[str]:
    """At most MAX_PROBLEMS problems and a line counting the rest (a file of 100 000 bad aliases is one answer)."""
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more problem(s)"]


def parse_catalog(text: str) -> Catalog:
    """Parse and validate catalog TOML text; raise CatalogError naming the (first) bad entry."""
    catalog, problems = check_catalog(text)
    if catalog is None:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise CatalogError(problems[0] + more, tuple(problems))
    return catalog


def default_catalog() -> Catalog:
    """The built-in catalog (docs/catalog.md)."""
    return parse_catalog(DEFAULT_CATALOG_TOML)
