"""observability/: rules pass promtool (syntax and unit tests), Alertmanager config passes amtool,
the live /metrics passes `promtool check metrics`, and the dashboard only queries what exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.app.server import Running
from tests.support.proxies import REPO, set_mode

OBS = REPO / "observability"
RULES = OBS / "prometheus" / "rules" / "stage-validation.yml"
CONTRACT_METRICS = {"stage_validation_total", "stage_enforce_rejections_total", "stage_validator_seconds",
                    "stage_proxy_request_seconds", "stage_upstream_errors_total", "stage_mode", "stage_enforce_percent",
                    "stage_mode_source", "stage_enforce_blocked", "stage_mode_store_seconds",
                    "stage_client_connections", "stage_connections_dropped_total", "stage_config_reload_total",
                    "stage_catalog_info", "stage_config_last_reload_successful", "stage_mode_pending_writes",
                    "stage_exempted_total", "stage_exemptions", "stage_exemption_next_expiry_timestamp_seconds",
                    "stage_temporary_alias_total"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: scripts/test installs it (Debian prometheus / "
                           "prometheus-alertmanager)")
    return path


def run(*command: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, input=stdin.decode() if stdin else None, capture_output=True, text=True,
                          timeout=60)


def test_rules_are_valid() -> None:
    """promtool check rules accepts the rule file."""
    result = run(tool("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 15 rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    """promtool test rules: every alert fires at its threshold, not below it, not on low traffic."""
    result = subprocess.run([tool("promtool"), "test", "rules", "stage-validation.test.yml"], cwd=RULES.parent,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_tests_cover_every_alert() -> None:
    """Each alert in the rules has a firing test and a silent test."""
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), flags=re.M))
    tests = (RULES.parent / "stage-validation.test.yml").read_text()
    assert len(alerts) == 8
    for alert in alerts:
        names = re.findall(rf"alertname: {alert}\n\s+exp_alerts:(.*)", tests)
        assert any(n.strip() == "[]" for n in names), f"{alert} has no silent case"
        assert any(n.strip() == "" for n in names), f"{alert} has no firing case"


def test_alertmanager_config_is_valid() -> None:
    """amtool check-config accepts the Alertmanager config."""
    result = run(tool("amtool"), "check-config", str(OBS / "alertmanager" / "alertmanager.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_routes_stage_actions_to_the_webhook() -> None:
    """amtool config routes test: stage_action alerts reach the _ops webhook, others only the default."""
    config = str(OBS / "alertmanager" / "alertmanager.yml")
    for labels, expected in ((["stage_action=downgrade", "endpoint=create_deal"], "stagegate-ops"),
                             (["stage_action=block_enforce"], "stagegate-ops"),
                             (["alertname=Other"], "default")):
        result = run(tool("amtool"), "config", "routes", "test", f"--config.file={config}", *labels)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().split(",")[0] == expected, (labels, result.stdout)


async def test_live_metrics_pass_promtool(proxy: Running, http: aiohttp.ClientSession) -> None:
    """After traffic of every result kind, `promtool check metrics` reports nothing on /metrics."""
    await set_mode(http, proxy, "create_deal", "enforce")
    await set_mode(http, proxy, "update_deal", "warn")
    bodies = [b'{"stage": "lead"}', b'{"stage": "won"}', b'{"stage": "nope"}', b'{"stage": 1}', b"{", b"{}"]
    for path, method in (("/api/v1/deals", "POST"), ("/api/v1/deals/1", "PATCH"), ("/api/v1/deals/import", "POST")):
        for body in bodies:
            async with http.request(method, f"{proxy.url}{path}", data=body,
                                    headers={"Content-Type": "application/json"}) as response:
                await response.read()
    async with http.get(f"{proxy.url}/other") as response:
        await response.read()
    async with http.get(f"{proxy.admin_url}/metrics") as response:
        exposition = await response.read()
    result = run(tool("promtool"), "check", "metrics", stdin=exposition)
    assert result.returncode == 0 and result.stdout.strip() == "" and result.stderr.strip() == "", (
        result.stdout + result.stderr)
    names = set(re.findall(rb"^# TYPE (\w+) ", exposition, flags=re.M))
    assert {n.decode() for n in names} == CONTRACT_METRICS


def _dashboard_exprs() -> list[str]:
    board = json.loads((OBS / "grafana" / "stagegate.json").read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    return exprs + [a["expr"] for a in board["annotations"]["list"] if "expr" in a]


def test_dashboard_queries_only_known_series() -> None:
    """Every series a dashboard query names is a contract metric or one of our recording rules."""
    recorded = set(re.findall(r"record: ([\w:]+)", RULES.read_text()))
    known = recorded | CONTRACT_METRICS | {f"{m}_bucket" for m in CONTRACT_METRICS}
    functions = {"sum", "by", "rate", "max", "min", "histogram_quantile", "changes", "and", "le", "endpoint", "mode",
                 "result", "reason", "instance", "source", "op", "version", "time"}
    for expr in _dashboard_exprs():
        for name in re.findall(r"\b([a-z_:]+[a-z_])\b(?=[{\[\s)]|$)", expr):
            if name not in functions:
                assert name in known, (name, expr)


def _thresholds(panel: dict[str, Any]) -> list[float]:
    steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
    return [step["value"] for step in steps if step["value"] is not None]


@pytest.mark.parametrize(("panel", "queries", "unit", "limits"), [
    ("Would-reject ratio in warn", ["stage:warn_unknown_ratio:rate5m"], "percentunit", [0.005, 0.01]),
    ("Enforce error ratio", ["stage:enforce_error_ratio:rate5m"], "percentunit", [0.001]),
    ("Validator p99", ["stage:validator_seconds:p99_5m"], "s", [0.001]),
    ("Mode per endpoint", ["stage_mode == 1", "stage_enforce_percent", "stage_mode_source == 1",
                           "stage_enforce_blocked"], None, []),
    ("Exempted requests", ["stage_exempted_total"], "reqps", []),
    ("Exemptions", ["stage_exemptions", "stage_exemption_next_expiry_timestamp_seconds"], None, []),
])
def test_dashboard_has_the_runbook_panels(panel: str, queries: list[str], unit: str | None,
                                          limits: list[float]) -> None:
    """Each runbook view queries the series that compute it, in its unit, with the runbook's thresholds."""
    board = json.loads((OBS / "grafana" / "stagegate.json").read_text())
    [found] = [p for p in board["panels"] if p["title"].startswith(panel)]
    exprs = [t["expr"] for t in found["targets"]]
    for query in queries:
        assert any(query in expr for expr in exprs), (query, exprs)
    if unit is not None:
        assert found["fieldConfig"]["defaults"]["unit"] == unit
    assert _thresholds(found) == limits
    recorded = set(re.findall(r"record: ([\w:]+)", RULES.read_text()))
    assert {q for q in queries if ":" in q} <= recorded


def test_dashboard_thresholds_match_the_alerts() -> None:
    """The dashboard's red lines are the alert rules' thresholds, so a panel turns red when the alert would fire."""
    board = json.loads((OBS / "grafana" / "stagegate.json").read_text())
    rules = RULES.read_text()
    by_title = {p["title"].split(" (")[0]: p for p in board["panels"]}
    assert re.search(r"stage:enforce_error_ratio:rate5m > ([\d.]+)", rules).group(1) == str(  # type: ignore[union-attr]
        _thresholds(by_title["Enforce error ratio"])[-1])
    assert re.search(r"stage:warn_unknown_ratio:rate5m >= ([\d.]+)", rules).group(1) == str(  # type: ignore[union-attr]
        _thresholds(by_title["Would-reject ratio in warn"])[-1])
    assert re.search(r"stage:validator_seconds:p99_5m > ([\d.]+)", rules).group(1) == str(  # type: ignore[union-attr]
        _thresholds(by_title["Validator p99"])[-1])


def test_dashboard_json_is_what_the_builder_writes(tmp_path: Path) -> None:
    """stagegate.json is generated: editing it by hand would be lost."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_dashboard", OBS / "grafana" / "build_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert json.loads((OBS / "grafana" / "stagegate.json").read_text()) == module.dashboard()


async def test_client_input_never_becomes_a_label(proxy: Running, http: aiohttp.ClientSession) -> None:
    """Random paths, methods, headers and stages add no series to /metrics: cardinality is fixed."""
    async with http.get(f"{proxy.admin_url}/metrics") as response:
        before = {line.rsplit(" ", 1)[0] for line in (await response.text()).splitlines() if not line.startswith("#")}
    await set_mode(http, proxy, "create_deal", "warn")
    for i in range(50):
        async with http.request("POST" if i % 2 else "PURGE", f"{proxy.url}/random/{i}?q={i}",
                                headers={"X-Request-ID": f"id-{i}", "User-Agent": f"ua-{i}"}) as response:
            await response.read()
        async with http.post(f"{proxy.url}/api/v1/deals", json={"stage": f"stage-{i}"},
                             headers={"User-Agent": f"agent-{i}"}) as response:
            await response.read()
    async with http.get(f"{proxy.admin_url}/metrics") as response:
        text = await response.text()
    after = {line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")}
    assert after == before
    assert "stage-1" not in text and "agent-1" not in text and "/random" not in text
