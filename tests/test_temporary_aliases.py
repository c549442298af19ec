"""Temporary aliases ([stages.temporary_aliases]): an alias until a time and unknown after it, without a reload —
in the catalog, the proxy, the migration (one classifier), catalog check, reload answers and offenders."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest

from proxy.catalog.compare import catalog_version, compare, tightening
from proxy.catalog.stages import DEFAULT_CATALOG_TOML, CatalogError, catalog_from_json, check_catalog, parse_catalog
from tests.support.proxies import REPO, ProxyFactory, set_mode
from tests.support.waiting import until
from tests.test_migrate import stagectl as stagectl_db

BASE = DEFAULT_CATALOG_TOML.split("[[endpoints]]", 1)
JAN_15 = datetime(2027, 1, 15, tzinfo=UTC).timestamp()


def with_temporary(*lines: str) -> str:
    """The built-in catalog with these lines under [stages.temporary_aliases]."""
    return BASE[0] + "[stages.temporary_aliases]\n" + "\n".join(lines) + "\n\n[[endpoints]]" + BASE[1]


def instant(seconds_from_now: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds_from_now)).isoformat().replace("+00:00", "Z")


def test_an_alias_until_its_time_and_unknown_after() -> None:
    catalog = parse_catalog(with_temporary('"closed wonn" = { to = "closed_won", until = 2027-01-15 }',
                                           'qualifed = { to = "qualified", until = 2027-01-10T12:00:00+01:00 }',
                                           'propsal = { to = "proposal", until = 2027-01-20T08:00:00 }'))
    assert catalog.classify("Closed Wonn", now=JAN_15 - 1) == ("alias", "closed_won")  # folded like any alias
    assert catalog.classify("closed_wonn", now=JAN_15) == ("unknown", None)  # a date: midnight UTC at its start
    assert catalog.classify("qualifed", now=datetime(2027, 1, 10, 10, 59, tzinfo=UTC).timestamp())[0] == "alias"
    assert catalog.classify("qualifed", now=datetime(2027, 1, 10, 11, 0, tzinfo=UTC).timestamp())[0] == "unknown"
    assert catalog.temporary["propsal"].until == datetime(2027, 1, 20, 8, tzinfo=UTC).timestamp()  # local = UTC
    assert catalog.classify("won", now=JAN_15 + 1e9) == ("alias", "closed_won")  # permanent aliases stay
    assert catalog.temporary_key("CLOSED-WONN") == "closed wonn" and catalog.temporary_key("won") is None
    assert catalog.expired(JAN_15) == ["closed wonn", "qualifed"]
    served = catalog.as_json()
    assert served["temporary_aliases"]["closed wonn"] == {"to": "closed_won", "until": "2027-01-15T00:00:00Z"}
    again = catalog_from_json(served)  # how the tools take the catalog a proxy serves
    assert again.temporary == catalog.temporary and catalog_version(again) == catalog_version(catalog)
    assert catalog_version(catalog) != catalog_version(parse_catalog(DEFAULT_CATALOG_TOML))
    assert "temporary_aliases" not in parse_catalog(DEFAULT_CATALOG_TOML).as_json()  # the version of old files


@pytest.mark.parametrize(("line", "problem"), [
    ('x = { to = "nope", until = 2027-01-15 }', "points at 'nope', which is not a canonical stage"),
    ('x = { to = "lead", until = "soon" }', "until 'soon' is not a date or date-time"),
    ('x = { to = "lead", until = 12:00:00 }', "is not a date or date-time"),
    ('x = { to = "lead", until = 9999-12-31T23:59:59.999999Z }', "between 1970 and 9000"),
    ('x = { to = "lead", until = 0001-01-01T00:00:00+01:00 }', "between 1970 and 9000"),
    ('x = { to = "lead" }', 'must be { to = "stage", until = 2027-01-15 }'),
    ('x = { to = "lead", until = 2027-01-15, why = "y" }', "must be"),
    ('x = "lead"', "must be"),
    ('WON = { to = "lead", until = 2027-01-15 }', "folds to 'won', already a stage or an alias"),
    ('"Closed Won" = { to = "lead", until = 2027-01-15 }', "already a stage or an alias"),
    ('"- -" = { to = "lead", until = 2027-01-15 }', "folds to an empty string"),
])
def test_what_is_not_a_temporary_alias(line: str, problem: str) -> None:
    catalog, problems = check_catalog(with_temporary(line))
    assert catalog is None and problem in problems[0], problems
    assert "(line " in problems[0]


def test_two_temporary_aliases_that_fold_alike_and_unknown_stage_tables() -> None:
    _, problems = check_catalog(with_temporary('"a b" = { to = "lead", until = 2027-01-15 }',
                                               'a_b = { to = "lead", until = 2027-01-16 }'))
    assert "colliding with temporary alias 'a b'" in problems[0]
    with pytest.raises(CatalogError, match=r"unknown key\(s\) in \[stages\]: \['temporary_alias'\]"):
        parse_catalog(DEFAULT_CATALOG_TOML.replace("[stages.aliases]", "[stages.temporary_alias]\n[stages.aliases]"))


def test_a_reload_lists_them_and_warns_when_one_is_removed_under_enforce() -> None:
    old = parse_catalog(with_temporary('"closed wonn" = { to = "closed_won", until = 2027-01-15 }'))
    new = parse_catalog(with_temporary('qualifed = { to = "qualified", until = 2027-01-15 }'))
    changes = compare(old, new)
    assert changes.temporary_added == {"qualifed": "qualified until 2027-01-15T00:00:00Z"}
    assert changes.temporary_removed == {"closed wonn": "closed_won until 2027-01-15T00:00:00Z"}
    assert changes.as_json()["temporary_removed"] == changes.temporary_removed and not changes.empty
    assert any("temporary aliases removed ['closed wonn']" in w for w in tightening(changes, ["create_deal"]))
    extended = parse_catalog(with_temporary('"closed wonn" = { to = "closed_won", until = 2027-02-15 }'))
    assert compare(old, extended).temporary_added == {"closed wonn": "closed_won until 2027-02-15T00:00:00Z"}
    assert "temporary_added" not in compare(old, old).as_json()
    made_permanent = parse_catalog(DEFAULT_CATALOG_TOML.replace('won = "closed_won"',
                                                                'won = "closed_won"\n"closed wonn" = "closed_won"'))
    assert compare(old, made_permanent).temporary_removed == {}  # nothing is rejected: no warning


async def test_the_proxy_normalizes_until_the_time_then_rejects_without_a_reload(
        make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    catalog = parse_catalog(with_temporary(f'"closed wonn" = {{ to = "closed_won", until = {instant(2.0)} }}'))
    run = await make_proxy(catalog=catalog)
    await set_mode(http, run, "*", "enforce", 100)

    async def send(stage: str) -> tuple[int, str]:
        async with http.post(f"{run.url}/api/v1/deals", json={"stage": stage}) as response:
            await response.read()
            return response.status, response.headers["X-Stage-Validation"]

    assert await send("Closed Wonn") == (200, "mode=enforce; result=alias")
    async with http.post(f"{run.url}/api/v1/deals/import", json={"deals": [{"stage": "closed wonn"}] * 3}) as r:
        assert r.status == 200
    async with http.get(f"{run.admin_url}/metrics") as response:
        metrics = await response.text()
    assert 'stage_temporary_alias_total{alias="closed wonn"} 4.0' in metrics  # the catalog's key, not the value

    async def rejected() -> bool:
        return (await send("Closed Wonn"))[0] == 422

    await until(rejected, what="the temporary alias to end by itself")
    assert await send("won") == (200, "mode=enforce; result=alias")


def stagectl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.stagectl", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def test_catalog_check_warns_about_ended_ones_and_show_lists_them(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(with_temporary('old = { to = "lead", until = 2020-01-01 }',
                                   'fresh = { to = "lead", until = 2099-01-01T00:00:00Z }'))
    result = stagectl("catalog", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == (f"{path}: warning: temporary alias 'old' ended 2020-01-01T00:00:00Z: its values "
                                     "are unknown now; remove it (or extend it, with a reason)")
    report = orjson.loads(stagectl("catalog", "check", str(path), "--json").stdout)
    assert report["ok"] is True and len(report["warnings"]) == 1
    shown = stagectl("catalog", "show", "--config", str(path)).stdout
    assert "temporary aliases (2):" in shown and "'old' -> lead until 2020-01-01T00:00:00Z (ended)" in shown


def test_offenders_suggests_temporary_aliases(tmp_path: Path) -> None:
    line = orjson.dumps({"ts": "2026-12-01T10:00:00Z", "event": "stage_validation", "endpoint": "create_deal",
                         "mode": "warn", "result": "unknown", "value": "Closed Wonn", "client_ip": "10.0.0.1"})
    log = tmp_path / "proxy.log"
    log.write_bytes((line + b"\n") * 6)
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(DEFAULT_CATALOG_TOML)
    before = time.time()
    result = stagectl("offenders", str(log), "--suggest-aliases", "--temporary", "14d", "--config", str(catalog))
    assert result.returncode == 0, result.stderr
    [suggested] = [row for row in result.stdout.splitlines() if row.startswith("closed_wonn = ")]
    assert "# paste under [stages.temporary_aliases]" in result.stdout
    until_text = suggested.split("until = ", 1)[1].split(" }", 1)[0]
    ends = datetime.fromisoformat(until_text).timestamp()
    assert before + 14 * 86400 - 60 <= ends <= time.time() + 14 * 86400
    catalog.write_text(with_temporary(suggested))  # pasted as printed: a valid catalog that normalizes it
    assert parse_catalog(catalog.read_text()).classify("Closed Wonn") == ("alias", "closed_won")
    refused = stagectl("offenders", str(log), "--temporary", "14d")
    assert refused.returncode == 2 and "--temporary goes with --suggest-aliases" in refused.stderr
    refused = stagectl("offenders", str(log), "--suggest-aliases", "--temporary", "2w", "--config", str(catalog))
    assert refused.returncode == 2 and "--temporary: '2w' is not a duration" in refused.stderr
    refused = stagectl("offenders", str(log), "--suggest-aliases", "--temporary", "99999999999d", "--config",
                       str(catalog))
    assert refused.returncode == 2 and "--temporary: at most 366d" in refused.stderr


async def test_the_migration_classifies_as_the_proxy_does_when_it_runs(database: str, tmp_path: Path) -> None:
    """One classifier: a live temporary alias is normalized by migrate, an ended one is left (unknown)."""
    db = await asyncpg.connect(database)
    try:
        await db.execute("CREATE TABLE deals (id bigint PRIMARY KEY, name text, stage text, amount numeric, "
                         "updated_at timestamptz DEFAULT now())")
        await db.execute("INSERT INTO deals (id, stage) VALUES (1, 'Closed Wonn'), (2, 'qualifed'), (3, 'won')")
        config = tmp_path / "catalog.toml"
        config.write_text(with_temporary('"closed wonn" = { to = "closed_won", until = 2099-01-01 }',
                                         'qualifed = { to = "qualified", until = 2020-01-01 }'))
        result = await stagectl_db(database, "migrate", "--apply", "--config", str(config), "--json")
        assert result.returncode == 0, result.stderr
        rows = {r["id"]: r["stage"] for r in await db.fetch("SELECT id, stage FROM deals")}
        assert rows == {1: "closed_won", 2: "qualifed", 3: "closed_won"}
        assert orjson.loads(result.stdout)["unknown_values"][0]["value"] == "qualifed"
    finally:
        await db.close()
