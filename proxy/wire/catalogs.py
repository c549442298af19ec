"""The catalog answers: ``GET /_ops/catalog`` and ``POST /_ops/reload``, typed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.catalog.compare import LISTED, CatalogChanges, ReloadOutcome
from proxy.catalog.stages import Catalog, CatalogError, catalog_from_json
from proxy.wire.fields import WireError, flag, obj_of, string_map, strings, text


@dataclass(frozen=True, slots=True)
class CatalogServed:
    """The body of ``GET /_ops/catalog``: the catalog a proxy serves, its version and file (None: built-in)."""

    version: str
    file: str | None
    catalog: Catalog

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "file": self.file, **self.catalog.as_json()}

    @classmethod
    def from_json(cls, data: object) -> CatalogServed:
        """Read with the rules a catalog file is checked by; WireError naming the first problem."""
        obj = obj_of(data, "the catalog")
        version, file = text(obj, "version", "the catalog"), text(obj, "file", "the catalog", optional=True)
        try:
            catalog = catalog_from_json({k: v for k, v in obj.items() if k not in ("version", "file")})
        except CatalogError as exc:
            raise WireError(str(exc)) from None
        return cls(version, file, catalog)


@dataclass(frozen=True, slots=True)
class Changes:
    """What a reload changed (or ``catalog check --against`` would): each list at most :data:`LISTED` long,
    ``truncated`` counting what was left out."""

    aliases_added: dict[str, str] = field(default_factory=dict)
    aliases_removed: dict[str, str] = field(default_factory=dict)
    aliases_retargeted: dict[str, tuple[str, str]] = field(default_factory=dict)  # alias -> (from, to)
    canonical_added: tuple[str, ...] = ()
    canonical_removed: tuple[str, ...] = ()
    endpoints_changed: tuple[str, ...] = ()
    case_sensitive_paths: tuple[bool, bool] | None = None
    truncated: dict[str, int] = field(default_factory=dict)
    temporary_added: dict[str, str] = field(default_factory=dict)  # key -> "stage until …" (added or changed)
    temporary_removed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, changes: CatalogChanges) -> Changes:
        return cls.from_json(changes.as_json(LISTED))

    def to_json(self) -> dict[str, Any]:
        return {"aliases_added": self.aliases_added, "aliases_removed": self.aliases_removed,
                "aliases_retargeted": {k: {"from": a, "to": b} for k, (a, b) in self.aliases_retargeted.items()},
                "canonical_added": list(self.canonical_added), "canonical_removed": list(self.canonical_removed),
                "endpoints_changed": list(self.endpoints_changed),
                "case_sensitive_paths": None if self.case_sensitive_paths is None else list(self.case_sensitive_paths),
                **({"temporary_added": self.temporary_added} if self.temporary_added else {}),
                **({"temporary_removed": self.temporary_removed} if self.temporary_removed else {}),
                **({"truncated": self.truncated} if self.truncated else {})}

    @classmethod
    def from_json(cls, data: object) -> Changes:
        obj, what = obj_of(data, "the changes"), "the changes"
        retargeted = obj_of(obj.get("aliases_retargeted", {}), "aliases_retargeted")
        moves = {}
        for alias, move in retargeted.items():
            move = obj_of(move, f"aliases_retargeted[{alias!r}]")
            moves[str(alias)] = (text(move, "from", "aliases_retargeted"), text(move, "to", "aliases_retargeted"))
        case = obj.get("case_sensitive_paths")
        if case is not None and not (isinstance(case, list) and len(case) == 2
                                     and all(isinstance(v, bool) for v in case)):
            raise WireError(f"{what}: 'case_sensitive_paths' is not [before, after]")
        truncated = obj.get("truncated") or {}
        if not isinstance(truncated, dict) or not all(isinstance(n, int) for n in truncated.values()):
            raise WireError(f"{what}: 'truncated' is not an object of counts")
        return cls(string_map(obj, "aliases_added", what), string_map(obj, "aliases_removed", what), moves,
                   strings(obj, "canonical_added", what), strings(obj, "canonical_removed", what),
                   strings(obj, "endpoints_changed", what), None if case is None else (case[0], case[1]),
                   dict(truncated), string_map(obj, "temporary_added", what),
                   string_map(obj, "temporary_removed", what))


@dataclass(frozen=True, slots=True)
class Reloaded:
    """The answer of a ``POST /_ops/reload`` that swapped the catalog in (a refused one is a problem)."""

    version: str
    previous_version: str
    changes: Changes | None = None
    warnings: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.version != self.previous_version

    @classmethod
    def of(cls, outcome: ReloadOutcome) -> Reloaded:
        return cls(outcome.version, outcome.previous, None if outcome.changes is None else Changes.of(outcome.changes),
                   outcome.warnings)

    def to_json(self) -> dict[str, Any]:
        return {"result": "ok", "version": self.version, "previous_version": self.previous_version,
                "changed": self.changed, "changes": None if self.changes is None else self.changes.to_json(),
                "warnings": list(self.warnings)}

    @classmethod
    def from_json(cls, data: object) -> Reloaded:
        obj, what = obj_of(data, "the reload answer"), "the reload answer"
        if obj.get("result") != "ok":
            raise WireError(f"{what}: 'result' is not 'ok'")
        flag(obj, "changed", what)
        changes = obj.get("changes")
        return cls(text(obj, "version", what), text(obj, "previous_version", what),
                   None if changes is None else Changes.from_json(changes), strings(obj, "warnings", what))
