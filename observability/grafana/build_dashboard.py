"""Builds stagegate.json (the Grafana dashboard). Run: python3 observability/grafana/build_dashboard.py"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}


def target(expr: str, legend: str, ref: str = "A") -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}


def thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for color, value in steps]}


def timeseries(pid: int, title: str, grid: tuple[int, int, int, int], targets: list[dict[str, Any]], unit: str,
               steps: tuple[tuple[str, float | None], ...] = (), description: str = "") -> dict[str, Any]:
    x, y, w, h = grid
    defaults: dict[str, Any] = {"unit": unit, "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0}}
    if steps:
        defaults["thresholds"] = thresholds(*steps)
        defaults["custom"]["thresholdsStyle"] = {"mode": "line+area"}
    return {"id": pid, "type": "timeseries", "title": title, "description": description, "datasource": DS,
            "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}}}


def table(pid: int, title: str, grid: tuple[int, int, int, int], targets: list[dict[str, Any]]) -> dict[str, Any]:
    x, y, w, h = grid
    return {"id": pid, "type": "table", "title": title, "datasource": DS, "gridPos": {"x": x, "y": y, "w": w, "h": h},
            "targets": [{**t, "format": "table", "instant": True} for t in targets],
            "transformations": [{"id": "merge", "options": {}}],
            "fieldConfig": {"defaults": {}, "overrides": []}}


def dashboard() -> dict[str, Any]:
    panels = [
        table(1, "Mode per endpoint (mode, canary %, source, enforce blocked)", (0, 0, 24, 6), [
            target('max by (endpoint, mode) (stage_mode == 1)', "{{endpoint}} {{mode}}", "A"),
            target("max by (endpoint) (stage_enforce_percent)", "{{endpoint}} %", "B"),
            target("max by (instance, source) (stage_mode_source == 1)", "{{instance}} {{source}}", "C"),
            target("max by (endpoint) (stage_enforce_blocked)", "{{endpoint}} enforce blocked", "D"),
        ]),
        timeseries(2, "Validation results per endpoint (req/s)", (0, 6, 12, 8), [
            target("sum by (endpoint, result) (rate(stage_validation_total[5m]))", "{{endpoint}} {{result}}")],
            "reqps"),
        timeseries(3, "Would-reject ratio in warn (runbook: exit warn < 0.5 %, block enforce >= 1 %)",
                   (12, 6, 12, 8), [target("stage:warn_unknown_ratio:rate5m", "{{endpoint}}")], "percentunit",
                   (("green", None), ("yellow", 0.005), ("red", 0.01))),
        timeseries(4, "Enforce error ratio (SLI < 0.1 %; above it for 5 m auto-downgrades to warn)", (0, 14, 12, 8),
                   [target("stage:enforce_error_ratio:rate5m", "{{endpoint}}")], "percentunit",
                   (("green", None), ("red", 0.001))),
        timeseries(5, "Validator p99 (SLI < 1 ms)", (12, 14, 12, 8),
                   [target("stage:validator_seconds:p99_5m", "{{endpoint}}")], "s", (("green", None), ("red", 0.001))),
        timeseries(6, "Requests by effective mode (req/s)", (0, 22, 12, 8),
                   [target("stage:validation_requests:rate5m", "{{endpoint}} {{mode}}")], "reqps"),
        timeseries(7, "Proxy latency p99 and mode store p99", (12, 22, 12, 8), [
            target("histogram_quantile(0.99, sum by (endpoint, le) (rate(stage_proxy_request_seconds_bucket[5m])))",
                   "request {{endpoint}}", "A"),
            target("stage:mode_store_seconds:p99_5m", "store {{op}}", "B")], "s", (("green", None), ("red", 0.01))),
        timeseries(9, "Would-reject ratio in off (baseline before warn)", (0, 37, 24, 7),
                   [target("stage:off_would_reject_ratio:rate5m", "{{endpoint}}")], "percentunit",
                   description="What enforce would reject while nothing is enforced (stagectl gate: baseline)"),
        table(10, "Catalog served (version per replica) and reloads", (0, 44, 24, 6), [
            target("max by (instance, version) (stage_catalog_info == 1)", "{{instance}} {{version}}", "A"),
            target("sum by (instance, result) (increase(stage_config_reload_total[1h]))",
                   "{{instance}} reloads {{result}} (1 h)", "B"),
        ]),
        timeseries(11, "Exempted requests (req/s; handled as warn while the endpoint enforces)", (0, 50, 12, 8), [
            target("sum by (endpoint, result) (rate(stage_exempted_total[5m]))", "{{endpoint}} {{result}}")],
            "reqps", description="stagectl exempt list: who, until when; stagectl gate: the exempted share"),
        table(12, "Exemptions: live per endpoint, next one ending", (12, 50, 12, 8), [
            target("max by (endpoint) (stage_exemptions)", "{{endpoint}} live", "A"),
            target("min by (endpoint) (stage_exemption_next_expiry_timestamp_seconds > 0) - time()",
                   "{{endpoint}} seconds until the next one ends", "B"),
        ]),
        timeseries(8, "Rejections and upstream errors (req/s)", (0, 30, 24, 7), [
            target("sum by (endpoint, reason) (rate(stage_enforce_rejections_total[5m]))", "reject {{endpoint}} "
                   "{{reason}}", "A"),
            target("sum by (reason) (rate(stage_upstream_errors_total[5m]))", "upstream {{reason}}", "B")], "reqps"),
    ]
    annotations = {"list": [
        {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
         "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"},
        {"datasource": DS, "enable": True, "iconColor": "orange", "name": "Mode changes",
         "expr": "changes(max by (endpoint, mode) (stage_mode)[2m:30s]) > 0 and max by (endpoint, mode) "
                 "(stage_mode) == 1",
         "step": "30s", "titleFormat": "{{endpoint}} -> {{mode}}", "tagKeys": "endpoint,mode"},
        {"datasource": DS, "enable": True, "iconColor": "red", "name": "Enforce blocked",
         "expr": "changes(max by (endpoint) (stage_enforce_blocked)[2m:30s]) > 0", "step": "30s",
         "titleFormat": "{{endpoint}} enforce block", "tagKeys": "endpoint"},
        {"datasource": DS, "enable": True, "iconColor": "blue", "name": "Catalog reloads",
         "expr": "changes(sum by (instance) (stage_config_reload_total)[2m:30s]) > 0", "step": "30s",
         "titleFormat": "{{instance}} catalog reload"},
    ]}
    return {
        "title": "stagegate — stage contract rollout", "uid": "stagegate-rollout", "schemaVersion": 38,
        "version": 1, "editable": True, "timezone": "utc", "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "tags": ["stagegate"], "annotations": annotations, "panels": panels,
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus", "current": {}}]},
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("stagegate.json")
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {out}")
