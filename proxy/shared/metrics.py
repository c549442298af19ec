"""Prometheus metrics (names are the contract: docs/reference.md#metrics).

One registry per process; label children are created up front for every
endpoint × mode × result, so the request path does a dict lookup, never a label
parse, and client-supplied strings can never become label values.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from proxy.catalog.stages import MODES, RESULTS, UNREADABLE_STATUS

VALIDATOR_BUCKETS: Final = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 0.1)
REQUEST_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STORE_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
SOURCES: Final = ("redis", "last_known", "state_file", "default", "memory")
UPSTREAM_ERRORS: Final = ("refused", "reset", "timeout", "invalid")  # invalid: broke HTTP or the proxy's bounds
REJECTION_REASONS: Final = ("unknown", "invalid", *UNREADABLE_STATUS)
STORE_OPS: Final = ("load", "save", "publish")
RELOAD_RESULTS: Final = ("ok", "refused")
LISTENERS: Final = ("main", "admin")
DROP_REASONS: Final = ("max_connections", "header_timeout", "head_too_large", "body_timeout", "write_timeout")
PASSTHROUGH: Final = "passthrough"

# `*_created` series double the exposition and no rule or dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client


class Metrics:
    """Every stagegate metric, bound to its own registry."""

    def __init__(self, endpoints: Iterable[str], *, multiprocess: bool = False) -> None:
        self.multiprocess = multiprocess  # --workers: render every worker's values (prometheus multiprocess mode)
        self.registry = CollectorRegistry(auto_describe=True)
        self.endpoints = tuple(endpoints)
        reg = self.registry
        self.validation = Counter("stage_validation_total", "Validated requests by effective mode and result",
                                  ["endpoint", "mode", "result"], registry=reg)
        self.rejections = Counter("stage_enforce_rejections_total", "Requests rejected in enforce",
                                  ["endpoint", "reason"], registry=reg)
        self.validator = Histogram("stage_validator_seconds", "Body read to decision, network excluded",
                                   ["endpoint"], buckets=VALIDATOR_BUCKETS, registry=reg)
        self.request = Histogram("stage_proxy_request_seconds", "Whole request through the proxy",
                                 ["endpoint"], buckets=REQUEST_BUCKETS, registry=reg)
        self.upstream_errors = Counter("stage_upstream_errors_total", "Upstream failures", ["reason"], registry=reg)
        live: Literal["livemostrecent"] = "livemostrecent"  # with --workers: the latest value a live worker wrote
        self.mode = Gauge("stage_mode", "1 for the current mode of each endpoint", ["endpoint", "mode"], registry=reg,
                          multiprocess_mode=live)
        self.percent = Gauge("stage_enforce_percent", "Canary share enforced", ["endpoint"], registry=reg,
                             multiprocess_mode=live)
        self.source = Gauge("stage_mode_source", "1 for where modes come from now", ["source"], registry=reg,
                            multiprocess_mode=live)
        self.blocked = Gauge("stage_enforce_blocked", "1 while enforce is blocked for the endpoint", ["endpoint"],
                             registry=reg, multiprocess_mode=live)
        self.reloads = Counter("stage_config_reload_total", "Catalog reloads (SIGHUP, POST /_ops/reload)", ["result"],
                               registry=reg)
        # livemax: with --workers, a version any live worker still serves shows 1 (a reload that left one
        # worker behind is visible as two versions at 1)
        self.catalog_info = Gauge("stage_catalog_info", "1 for the catalog version served (short hash of the file)",
                                  ["version"], registry=reg, multiprocess_mode="livemax")
        # livemin: with --workers, 0 while any live worker's last reload was refused
        self.reload_ok = Gauge("stage_config_last_reload_successful",
                               "1 unless the last catalog reload was refused (the file on disk is not what is served)",
                               registry=reg, multiprocess_mode="livemin")
        self.reload_ok.set(1)
        self.pending = Gauge("stage_mode_pending_writes",
                             "Mode changes towards safety applied here while the store was unreachable, not yet stored",
                             registry=reg, multiprocess_mode="livesum")
        self.store = Histogram("stage_mode_store_seconds", "Mode store round trips", ["op"],
                               buckets=STORE_BUCKETS, registry=reg)
        # result: so that the block-enforce rule can leave exempted unknowns out (they have their own deadline)
        self.exempted = Counter("stage_exempted_total",
                                "Requests an exemption handled as warn on an enforcing endpoint, by result",
                                ["endpoint", "result"], registry=reg)
        self.exemptions = Gauge("stage_exemptions", "Live exemptions that apply to the endpoint", ["endpoint"],
                                registry=reg, multiprocess_mode=live)
        self.exemption_expiry = Gauge("stage_exemption_next_expiry_timestamp_seconds",
                                      "When the endpoint's first live exemption ends (Unix seconds; 0: none)",
                                      ["endpoint"], registry=reg, multiprocess_mode=live)
        # alias: a [stages.temporary_aliases] key of the catalog, never client input (children made on first use:
        # the keys change with a reload)
        self.temporary_alias = Counter("stage_temporary_alias_total",
                                       "Values normalized by a temporary alias, by its catalog key", ["alias"],
                                       registry=reg)
        self.connections = Gauge("stage_client_connections", "Open client connections", ["listener"], registry=reg,
                                 multiprocess_mode="livesum")
        self.dropped = Counter("stage_connections_dropped_total", "Client connections closed by a bound",
                               ["listener", "reason"], registry=reg)
        self._prebind()

    def _prebind(self) -> None:
        self.validation_children = {
            (e, m, r): self.validation.labels(e, m, r) for e in self.endpoints for m in MODES for r in RESULTS
        }
        self.rejection_children = {(e, r): self.rejections.labels(e, r) for e in self.endpoints
                                   for r in REJECTION_REASONS}
        self.validator_children = {e: self.validator.labels(e) for e in self.endpoints}
        self.request_children = {e: self.request.labels(e) for e in (*self.endpoints, PASSTHROUGH)}
        self.upstream_children = {r: self.upstream_errors.labels(r) for r in UPSTREAM_ERRORS}
        self.store_children = {op: self.store.labels(op) for op in STORE_OPS}
        self.connection_children = {name: self.connections.labels(name) for name in LISTENERS}
        self.dropped_children = {(name, r): self.dropped.labels(name, r) for name in LISTENERS for r in DROP_REASONS}
        self.reload_children = {r: self.reloads.labels(r) for r in RELOAD_RESULTS}
        self.exempted_children = {(e, r): self.exempted.labels(e, r) for e in self.endpoints for r in RESULTS}
        self.set_source("default")
        for endpoint in self.endpoints:
            self.set_blocked(endpoint, False)
            self.set_exemptions(endpoint, 0, 0.0)

    def set_mode(self, endpoint: str, mode: str, percent: float) -> None:
        for candidate in MODES:
            self.mode.labels(endpoint, candidate).set(1 if candidate == mode else 0)
        self.percent.labels(endpoint).set(percent if mode == "enforce" else 0)

    def set_source(self, source: str) -> None:
        for candidate in SOURCES:
            self.source.labels(candidate).set(1 if candidate == source else 0)

    def set_blocked(self, endpoint: str, blocked: bool) -> None:
        self.blocked.labels(endpoint).set(1 if blocked else 0)

    def set_pending(self, count: int) -> None:
        self.pending.set(count)

    def temporary_alias_used(self, key: str, times: int = 1) -> None:
        self.temporary_alias.labels(key).inc(times)

    def set_exemptions(self, endpoint: str, live: int, next_expiry_s: float) -> None:
        self.exemptions.labels(endpoint).set(live)
        self.exemption_expiry.labels(endpoint).set(next_expiry_s)

    def set_catalog(self, version: str, previous: str | None = None) -> None:
        """Serve ``version``: its info series is 1, the previous one's 0 (kept, not removed: removal does not
        reach the other workers' files in multiprocess mode)."""
        if previous is not None and previous != version:
            self.catalog_info.labels(previous).set(0)
        self.catalog_info.labels(version).set(1)

    def observe_store(self, op: str, seconds: float) -> None:
        self.store_children[op].observe(seconds)

    def render(self) -> bytes:
        """The exposition; with --workers, every worker's values aggregated (prometheus multiprocess mode)."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped in prometheus-client
        return generate_latest(registry)
