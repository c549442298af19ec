"""The modes as every request and the ops plane see them: one in-memory view, swapped whole.

Readers (the data plane, ``GET /_ops/mode``) never wait on the store: they read
this view. Writers are the refresher (what the store says) and the changes
(what this process just stored); both bump ``generation`` so that a slower load
can tell it predates a local change.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from proxy.catalog.stages import Catalog, Mode
from proxy.modes.records import Block, Exemption, Lease, ModeRecord
from proxy.shared.clients import Network


class ModeObserver(Protocol):
    """Told about every change of the view (the metrics gauges implement it)."""

    def set_mode(self, endpoint: str, mode: str, percent: float) -> None: ...

    def set_source(self, source: str) -> None: ...

    def set_blocked(self, endpoint: str, blocked: bool) -> None: ...

    def set_pending(self, count: int) -> None: ...

    def set_exemptions(self, endpoint: str, live: int, next_expiry_s: float) -> None: ...


@dataclass(frozen=True, slots=True)
class ExemptionRule:
    """An exemption as the request path checks it: parsed once, compared with plain values."""

    id: str
    consumer: str | None
    network: Network | None
    until_s: float  # Unix seconds


def _rule(exemption: Exemption) -> ExemptionRule | None:
    try:
        until = datetime.fromisoformat(exemption.until).timestamp()
        network = ipaddress.ip_network(exemption.client_cidr) if exemption.client_cidr else None
    except ValueError:
        return None  # written by something else: never matches
    return ExemptionRule(exemption.id, exemption.consumer, network, until)


class ModeView:
    """The current mode of every endpoint, the enforce blocks and where the modes came from.

    ``catalog`` is the running catalog: a reload swaps it (same endpoints, so modes and blocks stay valid)."""

    def __init__(self, catalog: Catalog, observer: ModeObserver) -> None:
        self.catalog = catalog
        self._observer = observer
        self.records: dict[str, ModeRecord] = {}
        self._fast: dict[str, tuple[Mode, float]] = {}
        self.blocks: dict[str, Block] = {}
        self.leases: dict[str, Lease] = {}  # rollout drivers' holds, live or lapsed (proxy.modes.records.Lease)
        self.exemptions: dict[str, Exemption] = {}  # by id, live or expired (proxy.modes.records.Exemption)
        self.exempt: dict[str, tuple[ExemptionRule, ...]] = {}  # endpoint -> the rules that may apply to it
        self.source = "default"
        self.degraded = False  # the store is unreachable: these are last-known (or state file, or default) modes
        self.resolved = False  # modes were resolved once since start (readiness)
        self.generation = 0  # bumped by every local change
        self.known = False  # the modes came from the store, the state file or a change: worth re-seeding
        self.apply({})
        observer.set_source(self.source)
        for name in catalog.endpoint_names:
            observer.set_blocked(name, False)

    def lookup(self, endpoint: str) -> tuple[Mode, float]:
        """The stored mode and canary percent of ``endpoint`` (the request path's one dict lookup)."""
        return self._fast[endpoint]

    @property
    def enforce_blocked(self) -> bool:
        """True while any block_enforce alert is firing (for any endpoint)."""
        return bool(self.blocks)

    def blocked_by(self, endpoint: str) -> list[Block]:
        """The blocks holding enforce for ``endpoint``: its own, and those of alerts without an endpoint label."""
        return [b for b in self.blocks.values() if b.endpoint is None or b.endpoint == endpoint]

    def apply(self, records: Mapping[str, ModeRecord]) -> bool:
        """Make ``records`` (the default mode filling gaps) current; True if anything changed."""
        default_mode = self.catalog.default_mode
        default = ModeRecord(default_mode, 100.0 if default_mode == "enforce" else 0.0)
        complete = {name: records.get(name, default) for name in self.catalog.endpoint_names}
        if complete == self.records:
            return False
        self.records = complete
        self._fast = {name: (r.mode, r.percent) for name, r in complete.items()}
        for name, record in complete.items():
            self._observer.set_mode(name, record.mode, record.percent)
        return True

    def set_blocks(self, blocks: dict[str, Block]) -> None:
        self.blocks = blocks
        for name in self.catalog.endpoint_names:
            self._observer.set_blocked(name, bool(self.blocked_by(name)))

    def set_exemptions(self, exemptions: dict[str, Exemption], now_s: float) -> None:
        """Make ``exemptions`` current (a ``*`` one applies to every endpoint); expired ones are kept for the
        record but left out of the rules. The gauges count the live ones per endpoint."""
        self.exemptions = exemptions
        rules: dict[str, list[ExemptionRule]] = {name: [] for name in self.catalog.endpoint_names}
        for exemption in exemptions.values():
            rule = _rule(exemption)
            if rule is None or rule.until_s <= now_s:
                continue
            for name in (self.catalog.endpoint_names if exemption.endpoint == "*" else (exemption.endpoint,)):
                if name in rules:
                    rules[name].append(rule)
        self.exempt = {name: tuple(found) for name, found in rules.items() if found}
        for name, found in rules.items():
            self._observer.set_exemptions(name, len(found), min((r.until_s for r in found), default=0.0))

    def set_source(self, source: str) -> None:
        self.source = source
        self._observer.set_source(source)

    def set_pending(self, count: int) -> None:
        """How many local changes await the store (proxy.modes.pending)."""
        self._observer.set_pending(count)
