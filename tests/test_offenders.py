"""stagectl offenders: top consumers and values per endpoint from the proxy's JSON logs — filters, the flood guard's
lower bound, and alias suggestions checked end to end against a real proxy process on a real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from proxy.catalog.stages import DEFAULT_CATALOG_TOML, parse_catalog
from tests.support.ports import wait_for_port
from tests.support.proxies import REPO, TOKEN, spawn_proxy
from tests.support.servers import RedisServer
from tests.support.upstreams import Upstream
from tools.consumers import offenders
from tools.shared.timeparse import iso


def event(endpoint: str, value: str, result: str, ip: str, ua: str, ts: str, normalized: str | None = None) -> bytes:
    return orjson.dumps({"ts": ts, "level": "WARN", "event": "stage_validation", "endpoint": endpoint, "mode": "warn",
                         "result": result, "value": value, "normalized": normalized, "client_ip": ip,
                         "user_agent": ua, "request_id": "r"})


def stagectl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "tools.stagectl", *args], cwd=REPO, input=stdin, capture_output=True,
                          timeout=60)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    lines = [
        event("create_deal", "Closed Won", "alias", "10.0.0.5", "crm-sync/2.1", "2026-11-20T10:00:00Z", "closed_won"),
        event("create_deal", "Closed Won", "alias", "10.0.0.5", "crm-sync/2.1", "2026-11-21T10:00:00Z", "closed_won"),
        event("create_deal", "maybe", "unknown", "203.0.113.7", "curl/8", "2026-11-22T09:00:00Z"),
        event("import_deals", "WON", "alias", "10.0.0.9", "importer", "2026-11-23T08:00:00Z", "closed_won"),
        b'{"ts":"x","level":"INFO","event":"mode_changed","endpoints":["create_deal"]}',
        b"plain text from another process",
        b"\x00\xff\xfe binary junk \x80",
        b"",
        b'{"event":"log_suppressed","endpoint":"create_deal","result":"unknown","suppressed":40}',
    ]
    path = tmp_path / "proxy.log"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_json_report(log: Path) -> None:
    """Counts, first/last seen per consumer and value, aliases and unknowns apart; foreign lines counted, skipped."""
    result = stagectl("offenders", "--json", str(log))
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert (report["matched"], report["skipped"], report["filtered"], report["suppressed"]) == (4, 3, 0, 40)
    assert report["filters"] == {"endpoints": None, "results": None, "since": None}
    create = report["endpoints"]["create_deal"]
    assert (create["logged"], create["suppressed"], create["lower_bound"]) == (3, {"unknown": 40}, True)
    assert create["consumers"][0] == {"client_ip": "10.0.0.5", "user_agent": "crm-sync/2.1", "count": 2,
                                      "first_seen": "2026-11-20T10:00:00Z", "last_seen": "2026-11-21T10:00:00Z"}
    assert create["aliases"] == {"logged": 2, "suppressed": 0, "lower_bound": False, "values": [
        {"value": "Closed Won", "canonical": "closed_won", "count": 2, "first_seen": "2026-11-20T10:00:00Z",
         "last_seen": "2026-11-21T10:00:00Z"}]}
    assert create["unknowns"] == {"logged": 1, "suppressed": 40, "lower_bound": True, "values": [
        {"value": "maybe", "count": 1, "first_seen": "2026-11-22T09:00:00Z", "last_seen": "2026-11-22T09:00:00Z"}]}
    assert create["others"] == {"logged": 0, "suppressed": 0, "lower_bound": False, "values": []}
    imports = report["endpoints"]["import_deals"]
    assert imports["aliases"]["values"][0]["canonical"] == "closed_won"
    assert (imports["suppressed"], imports["lower_bound"]) == ({}, False)
    assert "suggestions" not in report  # only with --suggest-aliases


def test_text_report_and_stdin(log: Path) -> None:
    """The human table, reading the log from standard input with '-'."""
    result = stagectl("offenders", "-", "--top", "1", stdin=log.read_bytes())
    assert result.returncode == 0
    text = result.stdout.decode()
    assert "== create_deal: 3 logged" in text and "crm-sync/2.1" in text
    assert "curl/8" not in text  # --top 1


def test_empty_and_garbage_files(tmp_path: Path) -> None:
    """An empty file and pure binary garbage give an empty report, exit 0."""
    empty, junk = tmp_path / "empty.log", tmp_path / "junk.log"
    empty.write_bytes(b"")
    junk.write_bytes(os.urandom(100_000))
    result = stagectl("offenders", "--json", str(empty), str(junk))
    assert result.returncode == 0
    report = orjson.loads(result.stdout)
    assert report["matched"] == 0 and report["endpoints"] == {}


def test_missing_file_is_one_line() -> None:
    """A LOG that does not exist: one clear line, exit 2."""
    result = stagectl("offenders", "/nonexistent/proxy.log")
    assert result.returncode == 2
    assert result.stderr.decode().strip().splitlines() == [
        "stagectl: error: cannot read '/nonexistent/proxy.log': No such file or directory"]


def _peak_rss_kib(lines: int) -> int:
    """Stream ``lines`` generated events through stdin; return the reader's peak RSS."""
    generator = (f"import sys\nline = {event('create_deal', 'nope', 'unknown', '10.1.1.1', 'ua', 'T')!r} + b'\\n'\n"
                 f"out = sys.stdout.buffer\nfor _ in range({lines}): out.write(line)\n")
    producer = subprocess.Popen([sys.executable, "-c", generator], stdout=subprocess.PIPE)
    reader = subprocess.Popen([sys.executable, "-c", "import resource, sys\nfrom tools.stagectl import main\n"
                               "code = main(['offenders', '--json', '-'])\n"
                               "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
                               "sys.exit(code)"], cwd=REPO, stdin=producer.stdout, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    assert producer.stdout is not None
    producer.stdout.close()
    out, err = reader.communicate(timeout=300)
    producer.wait()
    assert reader.returncode == 0, err
    assert orjson.loads(out)["matched"] == lines
    return int(err.decode().strip().splitlines()[-1])


def test_large_log_streams_in_constant_memory() -> None:
    """10x more input (≈25 MB → 250 MB of log) does not grow the reader's memory."""
    small, large = _peak_rss_kib(100_000), _peak_rss_kib(1_000_000)
    assert large < small * 1.2 + 5_000, (small, large)


# --- filters ---------------------------------------------------------------------------------------------------


def test_endpoint_and_result_filters_repeatable(log: Path) -> None:
    """--endpoint and --result narrow the report (each repeatable); what they leave out is counted as filtered,
    log_suppressed lines included."""
    report = orjson.loads(stagectl("offenders", "--json", "--endpoint", "create_deal", str(log)).stdout)
    assert list(report["endpoints"]) == ["create_deal"]
    assert (report["matched"], report["filtered"], report["suppressed"]) == (3, 1, 40)
    report = orjson.loads(stagectl("offenders", "--json", "--result", "alias", str(log)).stdout)
    assert (report["matched"], report["filtered"], report["suppressed"]) == (3, 2, 0)  # the unknown and its summary
    assert report["endpoints"]["create_deal"]["unknowns"]["values"] == []
    assert report["filters"]["results"] == ["alias"]
    report = orjson.loads(stagectl("offenders", "--json", "--endpoint", "create_deal", "--endpoint", "import_deals",
                                   "--result", "alias", "--result", "unknown", str(log)).stdout)
    assert (report["matched"], report["filtered"], report["suppressed"]) == (4, 0, 40)
    assert report["filters"]["endpoints"] == ["create_deal", "import_deals"]


def test_since_keeps_recent_lines(tmp_path: Path) -> None:
    """--since as a duration back from now and as RFC 3339; lines without a time are left out."""
    now = time.time()
    stamp = iso  # seconds precision, Z; the proxy writes milliseconds and +00:00: both are read
    lines = [event("create_deal", "old", "unknown", "1.1.1.1", "ua", stamp(now - 3 * 86400)),
             event("create_deal", "recent", "unknown", "1.1.1.1", "ua", stamp(now - 3600).replace("Z", ".250+00:00")),
             event("create_deal", "undated", "unknown", "1.1.1.1", "ua", ""),
             orjson.dumps({"ts": stamp(now - 3 * 86400), "event": "log_suppressed", "endpoint": "create_deal",
                           "result": "unknown", "suppressed": 7}),
             orjson.dumps({"ts": stamp(now - 60), "event": "log_suppressed", "endpoint": "create_deal",
                           "result": "unknown", "suppressed": 3})]
    path = tmp_path / "proxy.log"
    path.write_bytes(b"\n".join(lines) + b"\n")
    for since in ("24h", "1d", "90m", stamp(now - 7200)):
        report = orjson.loads(stagectl("offenders", "--json", "--since", since, str(path)).stdout)
        values = [v["value"] for v in report["endpoints"]["create_deal"]["unknowns"]["values"]]
        assert (values, report["suppressed"], report["filtered"]) == (["recent"], 3, 3), since
    everything = orjson.loads(stagectl("offenders", "--json", "--since", "7d", str(path)).stdout)
    assert (everything["matched"], everything["suppressed"]) == (2, 10)  # the undated line still left out


def test_parse_since() -> None:
    now = 1_800_000_000.0
    assert offenders.parse_since("24h", now) == now - 86400
    assert offenders.parse_since("30m", now) == now - 1800
    assert offenders.parse_since("7d", now) == now - 7 * 86400
    assert offenders.parse_since("2026-12-01T00:00:00Z", now) == 1_796_083_200.0
    assert offenders.parse_since("2026-12-01T01:00:00+01:00", now) == 1_796_083_200.0
    for bad, fragment in [("yesterday", "not a duration"), ("24", "a number needs a unit"), ("-3h", "not a duration"),
                          ("2026-12-01T00:00:00", "no time zone"), ("", "not a duration"), ("0h", "not a duration")]:
        with pytest.raises(ValueError, match=fragment):
            offenders.parse_since(bad, now)


@pytest.mark.parametrize(("args", "fragment"), [
    (["--since", "yesterday"], "--since: 'yesterday' is not a duration back from now"),
    (["--since", "2026-12-01"], "--since: '2026-12-01' has no time zone"),
    (["--result", "missing"], "--result 'missing': the proxy logs alias, unknown, invalid, unreadable"),
    (["--result", "canonical"], "canonical and absent are never logged"),
    (["--top", "-1"], "--top must be at least 1"),
    (["--min-count", "0"], "--min-count must be at least 1"),
    (["--suggest-aliases", "--admin-url", "ftp://x"], "--admin-url must be an http:// or https:// URL"),
    (["--suggest-aliases", "--config", "/nonexistent/catalog.toml"], "--config: cannot read"),
    (["--endpoint", "nope", "--config", "{catalog}"], "--endpoint 'nope': unknown endpoint (the catalog has "
                                                      "create_deal, update_deal, import_deals)"),
])
def test_bad_flags_are_one_line(log: Path, tmp_path: Path, args: list[str], fragment: str) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(DEFAULT_CATALOG_TOML)
    result = subprocess.run([sys.executable, "-m", "tools.stagectl", "offenders", str(log),
                             *(a.format(catalog=catalog) for a in args)], cwd=REPO, capture_output=True, text=True,
                            timeout=60, env={"PATH": os.environ["PATH"]})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith("stagectl: error: ")
    assert fragment in result.stderr


# --- the flood guard's lower bound ---------------------------------------------------------------------------------


def test_suppressed_counts_make_a_lower_bound(log: Path) -> None:
    """A table whose result had lines suppressed says so; the others give plain counts."""
    text = stagectl("offenders", str(log)).stdout.decode()
    assert "== create_deal: 3 logged + 40 suppressed by the flood guard — counts are a lower bound" in text
    assert "unknowns (rejected by enforce): 1 logged + 40 suppressed by the flood guard — counts are a lower bound" \
        in text
    assert "aliases (normalized by enforce): 2 logged\n" in text
    assert "== import_deals: 1 logged\n" in text
    assert "invalid and unreadable" not in text  # no such values: no third table


def test_others_table_and_bad_suppressed_values(tmp_path: Path) -> None:
    """invalid and unreadable get their own table, with the reason; a summary with a nonsense count adds nothing."""
    lines = [orjson.dumps({"ts": "T", "event": "stage_validation", "endpoint": "create_deal", "result": "invalid",
                           "value": "5", "client_ip": "1.1.1.1", "user_agent": "ua"}),
             orjson.dumps({"ts": "T", "event": "stage_validation", "endpoint": "create_deal", "result": "unreadable",
                           "value": None, "reason": "malformed_json", "client_ip": "1.1.1.1", "user_agent": "ua"}),
             *(orjson.dumps({"event": "log_suppressed", "endpoint": "create_deal", "result": "invalid",
                             "suppressed": bad}) for bad in (True, -4, "9", None, 2.5)),
             orjson.dumps({"event": "log_suppressed", "endpoint": "create_deal", "result": "unreadable",
                           "suppressed": 6})]
    path = tmp_path / "proxy.log"
    path.write_bytes(b"\n".join(lines))
    report = orjson.loads(stagectl("offenders", "--json", str(path)).stdout)
    others = report["endpoints"]["create_deal"]["others"]
    assert (others["logged"], others["suppressed"], others["lower_bound"]) == (2, 6, True)
    assert [(v["result"], v["value"], v["reason"]) for v in others["values"]] == [
        ("invalid", "5", None), ("unreadable", None, "malformed_json")]
    assert report["endpoints"]["create_deal"]["suppressed"] == {"unreadable": 6}
    text = stagectl("offenders", str(path)).stdout.decode()
    assert ("invalid and unreadable (rejected by enforce): 2 logged + 6 suppressed by the flood guard — counts are a "
            "lower bound") in text and "malformed_json" in text


# --- alias suggestions -----------------------------------------------------------------------------------------


def test_edit_distance() -> None:
    cases = [("qualifed", "qualified", 1), ("closed_wonn", "closed_won", 1), ("closed_wno", "closed_won", 1),
             ("", "lead", 4), ("lead", "", 4), ("banana", "lead", 5), ("kitten", "sitting", 3), ("ab", "ba", 1),
             ("lead", "lead", 0)]
    for a, b, expected in cases:
        assert offenders.edit_distance(a, b) == expected == offenders.edit_distance(b, a), (a, b)


def _report(values: dict[str, int], endpoint: str = "create_deal") -> offenders.Report:
    report = offenders.Report()
    for value, count in values.items():
        for _ in range(count):
            offenders.feed(report, event(endpoint, value, "unknown", "1.1.1.1", "ua", "2026-11-20T10:00:00Z"))
    return report


def test_suggest_typos_not_noise() -> None:
    """Typos of a stage or of an alias key are proposed (variants folded together, over endpoints); noise, rare
    values, values already classified and values equally near two stages are not."""
    catalog = parse_catalog(DEFAULT_CATALOG_TOML)
    report = _report({"qualifed": 6, "Closed Wonn": 4, "closed-wonn": 1, "banana": 50, "xyz123": 50, "negotiatng": 5,
                      "prospekt": 5, "proposl": 4, "Closed Won": 9, "WON": 9, "": 9})
    for _ in range(3):
        offenders.feed(report, event("import_deals", "CLOSED WONN", "unknown", "2.2.2.2", "ua", "T"))
    found = {s.key: s for s in offenders.suggest(report, catalog, min_count=5)}
    assert {key: (s.canonical, s.count, s.distance, s.near) for key, s in found.items()} == {
        "closed_wonn": ("closed_won", 8, 1, "closed_won"), "qualifed": ("qualified", 6, 1, "qualified"),
        "negotiatng": ("negotiation", 5, 1, "negotiating"), "prospekt": ("lead", 5, 1, "prospect")}
    assert found["closed_wonn"].values == ("Closed Wonn", "CLOSED WONN", "closed-wonn")
    assert found["closed_wonn"].line == ('closed_wonn = "closed_won"  # seen 8 times as "Closed Wonn", "CLOSED WONN", '
                                         '"closed-wonn"; edit distance 1 from \'closed_won\'')
    assert [s.key for s in offenders.suggest(report, catalog, min_count=1)][-1] == "proposl"  # 4 < 5 before
    tie = offenders.suggest(_report({"negotiatin": 5}), catalog, 5)  # one typo from the stage and from its alias
    assert [(s.canonical, s.near) for s in tie] == [("negotiation", "negotiation")]
    twins = parse_catalog(DEFAULT_CATALOG_TOML.replace('"closed_lost"]', '"closed_lost", "lean"]'))
    assert "leaf" not in {s.key for s in offenders.suggest(_report({"leaf": 9}), twins, 1)}  # lead or lean?
    assert "leaf" in {s.key for s in offenders.suggest(_report({"leaf": 9}), catalog, 1)}


def test_suggested_lines_paste_into_the_catalog() -> None:
    """The lines are valid TOML in [stages.aliases]; the catalog then classifies the typos as aliases. Odd keys are
    quoted."""
    catalog = parse_catalog(DEFAULT_CATALOG_TOML)
    sent = {"Qualifed": 5, "Négotiation!": 5, 'prospec"t': 5, "propo\x7fsal": 5, "Lead\n": 2, "lead\t": 3}
    suggestions = offenders.suggest(_report(sent), catalog, 5)
    assert {s.key for s in suggestions} == {"qualifed", "négotiation!", 'prospec"t', "propo\x7fsal"}
    pasted = DEFAULT_CATALOG_TOML.replace("[stages.aliases]", "[stages.aliases]\n" + "\n".join(s.line for s in
                                                                                                 suggestions), 1)
    extended = parse_catalog(pasted)
    assert extended.classify("qualifed") == ("alias", "qualified")
    assert extended.classify("NÉGOTIATION!") == ("alias", "negotiation")
    assert extended.classify('Prospec"t') == ("alias", "lead")
    assert extended.classify("PROPO\x7fSAL") == ("alias", "proposal")


def test_suggest_cli_text_and_none(log: Path, tmp_path: Path) -> None:
    """Without a value worth an alias, the text says so and gives no next steps."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(DEFAULT_CATALOG_TOML)
    result = stagectl("offenders", "--suggest-aliases", "--config", str(catalog), str(log))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().rstrip().endswith(
        "alias suggestions (unknown values seen at least 5 times, a few typos from one stage): none")
    report = orjson.loads(stagectl("offenders", "--json", "--suggest-aliases", "--config", str(catalog),
                                   str(log)).stdout)
    assert report["suggestions"] == []


# --- end to end: a real proxy process, real Redis, warn mode -------------------------------------------------------


async def _send(http: aiohttp.ClientSession, method: str, url: str, body: object, times: int) -> None:
    for _ in range(times):
        async with http.request(method, url, json=body, headers={"User-Agent": "crm-sync/2.1"}) as response:
            assert response.status == 200, await response.text()


async def test_real_proxy_log_suggests_the_typos(upstream: Upstream, redis_server: RedisServer, prefix: str,
                                                 http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """A proxy process in warn mode (through Redis) logs "qualifed", "Closed Wonn" and "banana"; the flood guard
    suppresses most of a burst of invalid values. offenders on that log: the typos proposed with the right stage,
    banana not; the burst marked as a lower bound; the proposed lines make a catalog the proxy accepts."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(DEFAULT_CATALOG_TOML)
    proc, main, admin = spawn_proxy(upstream.url, "--config", str(catalog), "--redis-url", redis_server.url,
                                    "--redis-prefix", prefix, "--warn-log-per-s", "12")
    try:
        await asyncio.to_thread(wait_for_port, main)
        await asyncio.to_thread(wait_for_port, admin)
        async with http.put(f"http://127.0.0.1:{admin}/_ops/mode", headers={"Authorization": f"Bearer {TOKEN}"},
                            json={"endpoint": "*", "mode": "warn", "reason": "offenders test"}) as response:
            assert response.status == 200, await response.text()
            assert {r["mode"] for r in (await response.json())["endpoints"].values()} == {"warn"}
        deals = f"http://127.0.0.1:{main}/api/v1/deals"
        # 12 unknowns on create_deal: within --warn-log-per-s, so every one is logged, whatever the second
        for value, times in (("qualifed", 4), ("Closed Wonn", 4), ("banana", 4)):
            await _send(http, "POST", deals, {"name": "Acme", "stage": value}, times)
        await _send(http, "POST", deals, {"name": "Acme", "stage": "Won"}, 2)
        await _send(http, "PATCH", f"{deals}/7", {"stage": 5}, 40)  # invalid: past the flood guard
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = await asyncio.to_thread(proc.communicate, None, 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, err.decode()
    log = tmp_path / "proxy.log"
    log.write_bytes(out)

    result = stagectl("offenders", "--json", "--suggest-aliases", "--config", str(catalog), "--min-count", "3",
                      str(log))
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    create = report["endpoints"]["create_deal"]
    assert sorted((v["value"], v["count"]) for v in create["unknowns"]["values"]) == [
        ("Closed Wonn", 4), ("banana", 4), ("qualifed", 4)]
    assert create["aliases"]["values"][0] | {"first_seen": "", "last_seen": ""} == {
        "value": "Won", "canonical": "closed_won", "count": 2, "first_seen": "", "last_seen": ""}
    assert create["lower_bound"] is False
    update = report["endpoints"]["update_deal"]["others"]
    assert update["logged"] + update["suppressed"] == 40 and update["suppressed"] > 0 and update["lower_bound"]
    assert report["endpoints"]["update_deal"]["suppressed"] == {"invalid": update["suppressed"]}
    assert [(s["alias"], s["canonical"], s["count"], s["distance"]) for s in report["suggestions"]] == [
        ("closed_wonn", "closed_won", 4, 1), ("qualifed", "qualified", 4, 1)]

    text = stagectl("offenders", "--suggest-aliases", "--config", str(catalog), "--min-count", "3",
                    str(log)).stdout.decode()
    suggested = text[text.index("alias suggestions"):]
    assert "banana" not in suggested
    assert f"then: stagectl catalog check {catalog}" in suggested
    assert "stagectl catalog reload --admin-url http://127.0.0.1:9901" in suggested
    assert "invalid and unreadable (rejected by enforce): " in text and "counts are a lower bound" in text
    lines = [line for line in suggested.splitlines() if " = " in line and not line.startswith("#")]
    pasted = parse_catalog(DEFAULT_CATALOG_TOML.replace("[stages.aliases]", "[stages.aliases]\n" + "\n".join(lines)))
    assert pasted.classify("Closed Wonn") == ("alias", "closed_won")
    assert pasted.classify("qualifed") == ("alias", "qualified")
    assert pasted.classify("banana") == ("unknown", None)


def test_a_stage_with_a_prefix_or_suffix_is_not_a_typo() -> None:
    """'unqualified' is 'qualified' plus a prefix: another word (the opposite), never proposed; one extra letter
    is a typo and still is."""
    from proxy.catalog.stages import default_catalog
    from tools.consumers.offenders import _nearest, _targets

    targets = _targets(default_catalog())
    assert _nearest("unqualified", targets) is None
    assert _nearest("qualified_x2", targets) is None
    assert _nearest("qualifieds", targets) == (1, "qualified", "qualified")
    assert _nearest("closed_wonn", targets) == (1, "closed_won", "closed_won")
    assert _nearest("qualifed", targets) == (1, "qualified", "qualified")


def test_ranks_by_consumer_across_pods_from_kubectl_prefix_lines() -> None:
    """``kubectl logs -l app=… --prefix | stagectl offenders -``: each line behind ``[pod/NAME/CONTAINER]``; a
    consumer the gateway named is one row over all its addresses, lines without one rank by address."""
    def named(consumer: str | None, ip: str, pod: str) -> bytes:
        line = orjson.loads(event("create_deal", "maybe", "unknown", ip, "sdk/1", "2026-12-01T10:00:00Z"))
        return f"[pod/{pod}/proxy] ".encode() + orjson.dumps({**line, "consumer": consumer} if consumer else line)

    lines = [named("partner-a", "203.0.113.7", "stagegate-5f7-abcde"),
             named("partner-a", "203.0.113.8", "stagegate-5f7-fghij"),  # the same consumer, another pod and address
             named("partner-a", "198.51.100.2", "stagegate-5f7-fghij"),
             named(None, "10.0.0.5", "stagegate-5f7-abcde"), named(None, "10.0.0.5", "stagegate-5f7-abcde"),
             b"[pod/stagegate-5f7-abcde/proxy] not json", b"[not a prefix] " + event("create_deal", "x", "unknown",
                                                                                   "1.1.1.1", "u", "t")]
    result = stagectl("offenders", "-", "--json", stdin=b"\n".join(lines) + b"\n")
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert (report["matched"], report["skipped"]) == (5, 2)
    consumers = report["endpoints"]["create_deal"]["consumers"]
    assert [(row.get("consumer"), row.get("client_ip"), row["count"]) for row in consumers] == [
        ("partner-a", None, 3), (None, "10.0.0.5", 2)]
    text = stagectl("offenders", "-", stdin=b"\n".join(lines) + b"\n").stdout.decode()
    assert "CONSUMER OR CLIENT IP" in text and "consumer partner-a" in text


@pytest.mark.parametrize(("line", "stripped"), [
    (b'[pod/a-1/proxy] {"x":1}', b'{"x":1}'),
    (b'[pod/a-1/proxy] [1]', b"[1]"),
    (b'[pod/a b/proxy] {"x":1}', b'[pod/a b/proxy] {"x":1}'),  # a space inside: not kubectl's
    (b'[' + b"p" * 600 + b'] {"x":1}', b'[' + b"p" * 600 + b'] {"x":1}'),  # too long to be a pod name
    (b'{"x":"[pod/a/b] "}', b'{"x":"[pod/a/b] "}'),
])
def test_kubectl_prefix(line: bytes, stripped: bytes) -> None:
    assert offenders.unprefixed(line) == stripped
