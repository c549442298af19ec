"""stagectl gate against a real Prometheus holding weeks of history (promtool tsdb create-blocks-from openmetrics).

The history, sampled every 10 minutes by two replicas (a and b), per endpoint:

* create_deal: off on days 0-4 (baseline ~14 400 requests, 10 % would reject); warn from day 5: days 5-9 bad
  (2 %), days 10-24 good (0.2 %) but day 14 thin (40 requests); replica a restarts at day 12 12:00 (its
  counters start again from 0); enforce is blocked from day 22 00:00 to day 23 12:00; enforce 10 % from
  day 25, 100 % from day 28, where one late consumer's 5 requests per 10 minutes (an unknown stage) are
  exempted: handled as warn and counted in stage_exempted_total.
* import_deals: warn from day 0, every sixth day bad: the streak never reaches 7, the 30-day cap does.
* update_deal: off, ~288 requests a day: the 10 000-request baseline is reached on day 35.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.prometheus import History, PrometheusServer
from tests.support.proxies import REPO
from tools.shared.timeparse import iso, parse_instant

T0 = parse_instant("2026-09-01T00:00:00Z")
STEP = 600.0
DAYS = 40
REPLICAS = ("a", "b")


def day(number: float, hours: float = 0.0) -> float:
    return T0 + number * 86400 + hours * 3600


def create_mode(t: float) -> tuple[str, float]:
    if t < day(5):
        return "off", 0.0
    if t < day(25):
        return "warn", 0.0
    return ("enforce", 10.0) if t < day(28) else ("enforce", 100.0)


def create_traffic(t: float) -> dict[tuple[str, str], float]:
    """Requests per replica in the 10 minutes starting at ``t``, by (mode, result)."""
    mode, _ = create_mode(t)
    index = int((t - T0) // STEP)
    if mode == "off":
        return {("off", "canonical"): 9, ("off", "unknown"): 1}
    if mode == "enforce":
        return {("enforce", "canonical"): 50, **({("warn", "unknown"): 5} if t >= day(28) else {})}
    if day(14) <= t < day(15):
        return {("warn", "canonical"): 20} if t == day(14, 1) else {}
    bad = t < day(10)
    unknown = 1 if bad or index % 10 == 0 else 0
    return {("warn", "canonical"): 50 - unknown, ("warn", "unknown"): unknown}


def import_traffic(t: float) -> dict[tuple[str, str], float]:
    index = int((t - T0) // STEP)
    bad = int((t - T0) // 86400) % 6 == 5
    unknown = 1 if bad or index % 10 == 0 else 0
    return {("warn", "canonical"): 50 - unknown, ("warn", "unknown"): unknown}


def update_traffic(t: float) -> dict[tuple[str, str], float]:
    return {("off", "canonical"): 1}


def build_history() -> History:
    history = History()
    instants = [T0 + STEP * k for k in range(int(DAYS * 86400 / STEP) + 1)]
    modes: dict[str, Callable[[float], tuple[str, float]]] = {
        "create_deal": create_mode, "import_deals": lambda t: ("warn", 0.0), "update_deal": lambda t: ("off", 0.0)}
    traffic = {"create_deal": create_traffic, "import_deals": import_traffic, "update_deal": update_traffic}
    for endpoint, traffic_at in traffic.items():
        kinds = sorted({key for t in instants for key in traffic_at(t)})
        for replica in REPLICAS:
            for mode, result in kinds:
                total, points = 0.0, []
                for t in instants:
                    if endpoint == "create_deal" and replica == "a" and t == day(12, 12):
                        total = 0.0  # the replica restarted: its counter begins again
                    total += traffic_at(t - STEP).get((mode, result), 0)  # a sample counts the 10 minutes before it
                    points.append((t, total))
                history.add("stage_validation", "counter", "stage_validation_total",
                            {"endpoint": endpoint, "mode": mode, "result": result, "instance": replica}, points)
    add_exempted(history, instants)
    for endpoint, mode_at in modes.items():
        for replica in REPLICAS:
            for mode in ("off", "warn", "enforce"):
                history.add("stage_mode", "gauge", "stage_mode", {"endpoint": endpoint, "mode": mode,
                            "instance": replica}, [(t, float(mode_at(t)[0] == mode)) for t in instants])
            history.add("stage_enforce_percent", "gauge", "stage_enforce_percent",
                        {"endpoint": endpoint, "instance": replica}, [(t, mode_at(t)[1]) for t in instants])
            blocked = [(t, float(endpoint == "create_deal" and day(22) <= t < day(23, 12))) for t in instants]
            history.add("stage_enforce_blocked", "gauge", "stage_enforce_blocked",
                        {"endpoint": endpoint, "instance": replica}, blocked)
    return history


def add_exempted(history: History, instants: list[float]) -> None:
    """create_deal's late consumer: 5 exempted requests per 10 minutes and replica from day 28."""
    for replica in REPLICAS:
        exempted = 0.0
        points = []
        for t in instants:
            exempted += 5 if t - STEP >= day(28) else 0
            points.append((t, exempted))
        history.add("stage_exempted", "counter", "stage_exempted_total", {"endpoint": "create_deal",
                                                                          "result": "unknown", "instance": replica},
                    points)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"))
    server.load(build_history())
    server.start()
    yield server
    server.stop()


def gate(prometheus: PrometheusServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.stagectl", "gate", "--prometheus", prometheus.url, *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def gate_json(prometheus: PrometheusServer, at: float, *args: str) -> tuple[int, dict[str, Any]]:
    result = gate(prometheus, "--json", "--at", iso(at), *args)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_warn_days_streak_and_thin_day(prometheus: PrometheusServer) -> None:
    """Day 15: create_deal has 10 days in warn, 4 good in a row (the thin day 14 neither counts nor resets)."""
    code, body = gate_json(prometheus, day(15, 1))
    create = body["endpoints"]["create_deal"]
    assert (create["mode"], create["verdict"]) == ("warn", "in_warn")
    assert create["days_in_warn"] == 10 and create["good_days_streak"] == 4
    assert [d["day"] for d in create["days"]] == ["bad"] * 5 + ["good"] * 4 + ["thin"]
    assert create["days"][0]["date"] == "2026-09-06" and create["days"][-1]["date"] == "2026-09-15"
    assert 0.019 < create["days"][0]["ratio"] < 0.021 and 0.0015 < create["days"][6]["ratio"] < 0.0025
    assert create["days"][-1]["requests"] == pytest.approx(40, abs=1)
    assert code == 3  # some must keep collecting


def test_ready_for_enforce_with_a_restart_and_two_replicas(prometheus: PrometheusServer) -> None:
    """Day 21: ten good days in a row; the day a replica restarted counts like any other (increase, summed)."""
    code, body = gate_json(prometheus, day(21, 1), "--endpoint", "create_deal")
    create = body["endpoints"]["create_deal"]
    assert (create["verdict"], create["good_days_streak"], create["days_in_warn"]) == ("ready_for_enforce", 10, 16)
    by_date = {d["date"]: d for d in create["days"]}
    assert by_date["2026-09-13"]["requests"] == pytest.approx(by_date["2026-09-12"]["requests"], rel=0.02)
    assert by_date["2026-09-12"]["requests"] == pytest.approx(50 * 144 * 2, rel=0.02)
    assert create["baseline_requests"] == pytest.approx(5 * 144 * 20, rel=0.02)
    assert create["baseline_ratio"] == pytest.approx(0.1, abs=0.005)
    assert list(body["endpoints"]) == ["create_deal"] and body["enforce_blocked"] is False
    assert code == 0


def test_blocked_while_the_block_holds(prometheus: PrometheusServer) -> None:
    """Day 22 noon: the streak is reached but enforce is blocked for create_deal: verdict blocked, exit 4."""
    code, body = gate_json(prometheus, day(22, 12), "--endpoint", "create_deal")
    assert body["endpoints"]["create_deal"]["verdict"] == "blocked" and body["enforce_blocked"] is True
    assert code == 4
    code, body = gate_json(prometheus, day(24, 1), "--endpoint", "create_deal")
    assert body["endpoints"]["create_deal"]["verdict"] == "ready_for_enforce" and code == 0


@pytest.mark.parametrize(("at", "verdicts", "code"), [
    (day(20, 6), {"create_deal": "ready_for_enforce", "import_deals": "in_warn", "update_deal": "collect_baseline"},
     3),
    (day(26), {"create_deal": "canary", "import_deals": "in_warn", "update_deal": "collect_baseline"}, 3),
    (day(36, 1), {"create_deal": "enforcing", "import_deals": "warn_cap_reached", "update_deal": "ready_for_warn"},
     4),
])
def test_verdicts_at_different_instants(prometheus: PrometheusServer, at: float, verdicts: dict[str, str],
                                        code: int) -> None:
    """--at audits any past instant: canary, enforcing, the warn cap, the baseline reached."""
    result_code, body = gate_json(prometheus, at)
    assert {name: e["verdict"] for name, e in body["endpoints"].items()} == verdicts
    assert result_code == code
    assert body["at"] == iso(at)


def test_the_exempted_share(prometheus: PrometheusServer) -> None:
    """Enforcing at 100 %, one exempted consumer: its share of the last 24 hours, per endpoint, JSON and table."""
    _, body = gate_json(prometheus, day(30, 1))
    create = body["endpoints"]["create_deal"]
    assert create["verdict"] == "enforcing"
    assert create["exempted_24h"]["requests"] == pytest.approx(5 * 144 * 2, rel=0.02)
    assert create["exempted_24h"]["share"] == pytest.approx(10 / 110, rel=0.02)
    assert body["endpoints"]["import_deals"]["exempted_24h"] == {"requests": 0, "share": 0.0}
    _, before = gate_json(prometheus, day(27, 1))
    assert before["endpoints"]["create_deal"]["exempted_24h"]["requests"] == 0
    table = gate(prometheus, "--at", iso(day(30, 1))).stdout.splitlines()
    header = next(line for line in table if line.startswith("ENDPOINT"))
    create_row = next(line for line in table if line.startswith("create_deal"))
    import_row = next(line for line in table if line.startswith("import_deals"))
    column = header.index("EXEMPTED 24h")
    assert create_row[column:].startswith("9.09%") and import_row[column:].startswith("-")


def test_the_warn_cap(prometheus: PrometheusServer) -> None:
    """import_deals has been in warn 36 days without 7 good days in a row: a person decides (exit 4)."""
    _, body = gate_json(prometheus, day(36, 1), "--endpoint", "import_deals", "--cap-days", "30")
    imports = body["endpoints"]["import_deals"]
    assert imports["days_in_warn"] == 36 and imports["good_days_streak"] < 7
    _, body = gate_json(prometheus, day(36, 1), "--endpoint", "import_deals", "--cap-days", "40")
    assert body["endpoints"]["import_deals"]["verdict"] == "in_warn"


def test_human_table_and_unix_time(prometheus: PrometheusServer) -> None:
    """The default output is a table; --at also takes Unix seconds."""
    result = gate(prometheus, "--at", f"{day(21, 1):.0f}")
    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"gate as of {iso(day(21, 1))}"
    assert any(line.startswith("create_deal") and "ready_for_enforce" in line and "10/7" in line for line in lines)
    assert any(line.startswith("update_deal") and "collect_baseline" in line for line in lines)


@pytest.mark.parametrize(("args", "fragment"), [
    (("--at", "yesterday"), "is not an instant"), (("--lookback", "45"), "is not a duration"),
    (("--endpoint", "nope"), "unknown endpoint(s) ['nope']"), (("--good-ratio", "2"), "--good-ratio must be"),
])
def test_bad_usage_is_one_line(prometheus: PrometheusServer, args: tuple[str, ...], fragment: str) -> None:
    """Bad input: exit 2, one line naming it, no traceback."""
    result = gate(prometheus, *args)
    assert result.returncode == 2 and fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unreachable_prometheus_is_exit_1(tmp_path: Path) -> None:
    """No Prometheus at the URL: one line, exit 1."""
    result = subprocess.run([sys.executable, "-m", "tools.stagectl", "gate", "--prometheus", "http://127.0.0.1:9"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "cannot reach Prometheus" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
