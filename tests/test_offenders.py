"""stagectl offenders: top consumers and values per endpoint from the proxy's JSON logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.support.proxies import REPO


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
    """Counts, first/last seen per consumer and value; foreign lines counted and skipped."""
    result = stagectl("offenders", "--json", str(log))
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert (report["matched"], report["skipped"], report["suppressed"]) == (4, 3, 40)
    create = report["endpoints"]["create_deal"]
    assert create["logged"] == 3
    assert create["consumers"][0] == {"client_ip": "10.0.0.5", "user_agent": "crm-sync/2.1", "count": 2,
                                      "first_seen": "2026-11-20T10:00:00Z", "last_seen": "2026-11-21T10:00:00Z"}
    assert [(v["value"], v["result"], v["count"]) for v in create["values"]] == [("Closed Won", "alias", 2),
                                                                                  ("maybe", "unknown", 1)]
    assert report["endpoints"]["import_deals"]["values"][0]["normalized"] == "closed_won"


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
