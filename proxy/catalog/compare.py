"""Comparing two catalogs: what a reload would change, and what it may not change without a restart.

Pure, like the rest of proxy.catalog. The proxy (``POST /_ops/reload``, SIGHUP)
and ``stagectl catalog check --against`` use the same rules (docs/catalog.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.catalog.stages import Catalog

LISTED = 100  # entries of each kind of change a reload's answer lists (the rest are counted in "truncated")
LOGGED = 20  # ... and its log line


def catalog_version(catalog: Catalog) -> str:
    """A short, stable name for a catalog's content: the first 12 hex digits of the SHA-256 of its canonical JSON
    form (``Catalog.as_json``: stages, aliases, endpoints and settings; keys sorted, no whitespace). The same
    content has the same version whatever the file's comments, spacing or key order, in the proxy and every tool
    (docs/catalog.md, "Versions")."""
    canonical = orjson.dumps(catalog.as_json(), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:12]


@dataclass(frozen=True)
class CatalogChanges:
    """What differs between the running catalog and a new one."""

    aliases_added: dict[str, str] = field(default_factory=dict)
    aliases_removed: dict[str, str] = field(default_factory=dict)
    aliases_retargeted: dict[str, tuple[str, str]] = field(default_factory=dict)  # alias -> (old, new) target
    canonical_added: list[str] = field(default_factory=list)
    canonical_removed: list[str] = field(default_factory=list)
    endpoints_changed: list[str] = field(default_factory=list)  # same name, new method/path/field/required
    case_sensitive_paths: tuple[bool, bool] | None = None
    # temporary aliases added or changed / removed: key -> "stage until 2027-01-15T00:00:00Z"
    temporary_added: dict[str, str] = field(default_factory=dict)
    temporary_removed: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.aliases_added or self.aliases_removed or self.aliases_retargeted or self.canonical_added
                    or self.canonical_removed or self.endpoints_changed or self.case_sensitive_paths
                    or self.temporary_added or self.temporary_removed)

    def as_json(self, limit: int | None = None) -> dict[str, Any]:
        """The changes as data; with ``limit``, each list holds at most that many entries and ``truncated`` counts
        the rest (a reload of 100 000 new aliases is one readable log line)."""
        lists: dict[str, Any] = {
            "aliases_added": self.aliases_added, "aliases_removed": self.aliases_removed,
            "aliases_retargeted": {k: {"from": a, "to": b} for k, (a, b) in self.aliases_retargeted.items()},
            "canonical_added": self.canonical_added, "canonical_removed": self.canonical_removed,
            "endpoints_changed": self.endpoints_changed,
            **{name: items for name, items in (("temporary_added", self.temporary_added),
                                               ("temporary_removed", self.temporary_removed)) if items}}
        truncated = {}
        if limit is not None:
            for name, items in lists.items():
                if len(items) > limit:
                    truncated[name] = len(items) - limit
                    lists[name] = (dict(list(items.items())[:limit]) if isinstance(items, dict)
                                   else list(items)[:limit])
        return {**lists, "case_sensitive_paths": list(self.case_sensitive_paths) if self.case_sensitive_paths else None,
                **({"truncated": truncated} if truncated else {})}


def _head(items: list[str], limit: int = 20) -> str:
    """``items`` for one warning: at most ``limit``, then how many more."""
    return str(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _temporary(catalog: Catalog) -> dict[str, str]:
    return {key: f"{alias.to} until {alias.until_text}" for key, alias in catalog.temporary.items()}


def compare(old: Catalog, new: Catalog) -> CatalogChanges:
    old_aliases, new_aliases = dict(old.aliases), dict(new.aliases)
    old_endpoints = {e.name: e for e in old.endpoints}
    old_temporary, new_temporary = _temporary(old), _temporary(new)
    return CatalogChanges(
        aliases_added={k: v for k, v in new_aliases.items() if k not in old_aliases},
        aliases_removed={k: v for k, v in old_aliases.items() if k not in new_aliases},
        aliases_retargeted={k: (old_aliases[k], v) for k, v in new_aliases.items()
                            if k in old_aliases and old_aliases[k] != v},
        canonical_added=[s for s in new.canonical if s not in old.canonical_set],
        canonical_removed=[s for s in old.canonical if s not in new.canonical_set],
        endpoints_changed=[e.name for e in new.endpoints if e.name in old_endpoints and old_endpoints[e.name] != e],
        case_sensitive_paths=((old.case_sensitive_paths, new.case_sensitive_paths)
                              if old.case_sensitive_paths != new.case_sensitive_paths else None),
        temporary_added={k: v for k, v in new_temporary.items() if old_temporary.get(k) != v},
        temporary_removed={k: v for k, v in old_temporary.items() if k not in new_temporary and k not in new_aliases},
    )


def reload_problems(old: Catalog, new: Catalog) -> list[str]:
    """Why ``new`` cannot replace ``old`` in a running proxy (empty: it can).

    Endpoints are the unit of modes, metrics and history: one that disappears,
    is renamed or appears needs a restart, like a change of ``default_mode``
    (it decides the mode of every endpoint without a stored one).
    """
    problems = []
    old_names, new_names = set(old.endpoint_names), set(new.endpoint_names)
    if old_names - new_names:
        problems.append(f"endpoint(s) {sorted(old_names - new_names)} removed or renamed: that takes a restart "
                        "(modes, metrics and history are per endpoint)")
    if new_names - old_names:
        problems.append(f"endpoint(s) {sorted(new_names - old_names)} added: that takes a restart "
                        "(modes, metrics and history are per endpoint)")
    if old.default_mode != new.default_mode:
        problems.append(f"default_mode changed from {old.default_mode!r} to {new.default_mode!r}: that takes a "
                        "restart (it decides the mode of every endpoint without a stored one)")
    return problems


@dataclass(frozen=True)
class ReloadOutcome:
    """What one reload did: swapped in ``version`` (``ok``), or refused it for ``problems``."""

    ok: bool
    version: str  # the version served afterwards
    previous: str
    changes: CatalogChanges | None = None
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # applied, but stricter for endpoints that enforce now (tightening())

    def as_json(self) -> dict[str, Any]:
        if not self.ok:
            return {"result": "refused", "version": self.version, "problems": list(self.problems)}
        return {"result": "ok", "version": self.version, "previous_version": self.previous,
                "changed": self.version != self.previous,
                "changes": self.changes.as_json(LISTED) if self.changes else None, "warnings": list(self.warnings)}


def tightening(changes: CatalogChanges, enforcing: list[str]) -> list[str]:
    """What in ``changes`` rejects, at once, requests that ``enforcing`` endpoints accepted before: values an
    alias removed or retargeted used to normalize, a canonical stage removed, an endpoint in enforce that now
    matches other requests or reads another field. Allowed (a reload is how a mistake is undone), but said."""
    if not enforcing:
        return []
    where = f"in enforce now: {', '.join(enforcing)}"
    warnings = []
    if changes.aliases_removed:
        warnings.append(f"aliases removed {_head(sorted(changes.aliases_removed))}: the values they normalized are "
                        f"rejected from now on ({where})")
    if changes.aliases_retargeted:
        warnings.append(f"aliases retargeted {_head(sorted(changes.aliases_retargeted))}: their values are now "
                        f"rewritten to another stage ({where})")
    if changes.canonical_removed:
        warnings.append(f"canonical stages removed {_head(changes.canonical_removed)}: rejected from now on "
                        f"({where})")
    if changes.temporary_removed:
        warnings.append(f"temporary aliases removed {_head(sorted(changes.temporary_removed))}: the values they "
                        f"normalized are rejected from now on ({where})")
    changed = [name for name in changes.endpoints_changed if name in enforcing]
    if changed:
        warnings.append(f"endpoints in enforce changed {changed}: they now validate requests or fields that "
                        "were never measured in warn")
    return warnings
