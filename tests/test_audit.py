"""stagectl audit-consumers: mixed log formats, XFF trust, IPv6, classifications, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.proxies import REPO

PROXY = orjson.dumps({"ts": "2026-11-20T10:00:00.000+00:00", "level": "WARN", "event": "stage_validation",
                      "endpoint": "create_deal", "mode": "warn", "result": "unknown", "value": "maybe",
                      "client_ip": "10.1.2.3", "user_agent": "crm-sync/2.1", "request_id": "r1"}).decode()
NGINX = [
    '10.1.2.3 - - [21/Nov/2026:10:00:00 +0000] "POST /api/v1/deals HTTP/1.1" 201 12 "-" "crm-sync/2.1"',
    '203.0.113.9 - - [21/Nov/2026:11:00:00 +0000] "PATCH /api/v1/deals/42 HTTP/1.1" 200 12 "-" "partner-bot/1.0"',
    '2001:db8::7 - - [22/Nov/2026:09:00:00 +0000] "POST /api/v1/deals/import HTTP/1.1" 200 9 "-" "v6-client"',
    'fd00::5 - - [22/Nov/2026:09:30:00 +0000] "POST /api/v1/deals HTTP/1.1" 200 9 "-" "ula-client"',
    '100.64.1.1 - - [22/Nov/2026:10:00:00 +0000] "POST /api/v1/deals HTTP/1.1" 200 9 "-" "cgnat-client"',
    # a spoofed X-Forwarded-For from a peer we do not trust: the peer is the client
    '198.51.100.4 - - [22/Nov/2026:11:00:00 +0000] "POST /api/v1/deals HTTP/1.1" 200 9 "-" "spoofer" "10.9.9.9"',
    # through our trusted load balancer: the rightmost untrusted hop is the client
    '10.0.0.2 - - [22/Nov/2026:12:00:00 +0000] "POST /api/v1/deals HTTP/1.1" 200 9 "-" "via-lb" '
    '"1.2.3.4, 192.0.2.50, 10.0.0.3"',
    '10.1.2.3 - - [22/Nov/2026:12:30:00 +0000] "GET /api/v1/deals HTTP/1.1" 200 9 "-" "reader"',  # not validated
    "garbage line !!",
    "",
]


def audit(log: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = subprocess.run([sys.executable, "-m", "tools.stagectl", "audit-consumers", str(log), "--json", *args],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout, result.stderr
    return result.returncode, orjson.loads(result.stdout)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "access.log"
    path.write_bytes(("\n".join([PROXY, *NGINX]) + "\n").encode() + b"\xff\xfe binary \x00\n")
    return path


def by_agent(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["user_agent"]: c for c in report["consumers"]}


def test_classification_and_exit_code(log: Path) -> None:
    """Internal, external, ambiguous per client; the ambiguous one (unclassified) makes the exit 4."""
    code, report = audit(log, "--trusted-proxy", "10.0.0.0/24")
    consumers = by_agent(report)
    assert code == 4
    assert consumers["crm-sync/2.1"]["class"] == "internal" and consumers["crm-sync/2.1"]["requests"] == 2
    assert consumers["crm-sync/2.1"]["unknown_stages"] == 1
    assert consumers["crm-sync/2.1"]["first_seen"].startswith("2026-11-20")
    assert consumers["partner-bot/1.0"]["class"] == "external"
    assert consumers["v6-client"]["class"] == "external" and consumers["v6-client"]["ip"] == "2001:db8::7"
    assert consumers["ula-client"]["class"] == "internal"
    assert consumers["cgnat-client"]["class"] == "ambiguous"
    assert consumers["spoofer"]["ip"] == "198.51.100.4"  # untrusted peer: its X-Forwarded-For is ignored...
    assert report["forwarded_for_ignored"] == [{"peer": "198.51.100.4", "requests": 1, "example": "10.9.9.9"}]
    assert consumers["via-lb"]["ip"] == "192.0.2.50"  # rightmost hop outside the trusted range
    assert "reader" not in consumers
    assert report["skipped_lines"] == 4  # GET, garbage, empty... and binary


def test_classifications_file_decides_and_reruns_show_known(log: Path, tmp_path: Path) -> None:
    """Manual decisions win: mitigating the external and classifying the ambiguous client clears the audit."""
    decisions = tmp_path / "consumers.toml"
    decisions.write_text('[[consumer]]\nip = "100.64.1.1"\nuser_agent = "cgnat-client"\nclass = "internal"\n'
                         'note = "office NAT"\n')
    code, _ = audit(log, "--classifications", str(decisions), "--record", "--trusted-proxy", "10.0.0.0/24")
    assert code == 4  # a peer whose X-Forwarded-For was ignored: not recorded, someone decides it
    text = decisions.read_text()
    assert 'note = "office NAT"' in text and "partner-bot/1.0" in text and "198.51.100.4" not in text
    text += '[[consumer]]\nip = "198.51.100.4"\nclass = "external"\nnote = "not a balancer: a client"\n'
    decisions.write_text(text)
    code, _ = audit(log, "--classifications", str(decisions), "--trusted-proxy", "10.0.0.0/24")
    assert code == 3  # decided: external consumers remain
    decisions.write_text(text.replace('class = "external"', 'class = "mitigated"'))
    code, report = audit(log, "--classifications", str(decisions), "--trusted-proxy", "10.0.0.0/24")
    assert code == 0
    assert all(c["known"] for c in report["consumers"])


def test_bad_classifications_file(log: Path, tmp_path: Path) -> None:
    """A classifications file that does not parse: one line, exit 2."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[[consumer]\nip =")
    result = subprocess.run([sys.executable, "-m", "tools.stagectl", "audit-consumers", str(log),
                             "--classifications", str(bad)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("stagectl: error: --classifications") and len(result.stderr.splitlines()) == 1


def test_internal_only_is_clear(tmp_path: Path) -> None:
    """Only internal consumers: exit 0."""
    log = tmp_path / "internal.log"
    log.write_text(NGINX[0] + "\n" + PROXY + "\n")
    code, report = audit(log)
    assert code == 0 and len(report["consumers"]) == 1


def test_bad_cidr(log: Path) -> None:
    """A malformed --internal-cidr is refused with one line."""
    result = subprocess.run([sys.executable, "-m", "tools.stagectl", "audit-consumers", str(log),
                             "--internal-cidr", "10.0.0.0/33"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--internal-cidr" in result.stderr


def test_human_output_has_a_header_new_consumers_first_and_a_verdict(log: Path, tmp_path: Path) -> None:
    """The table a person reads: a header row, undecided (NEW) consumers before known ones, a verdict line."""
    decisions = tmp_path / "consumers.toml"
    decisions.write_text('[[consumer]]\nip = "10.1.2.3"\nuser_agent = "crm-sync/2.1"\nclass = "internal"\n')
    result = subprocess.run([sys.executable, "-m", "tools.stagectl", "audit-consumers", str(log), "--classifications",
                             str(decisions)], cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = result.stdout.splitlines()
    assert lines[1].split()[:5] == ["CLASS", "SEEN", "IP", "REQUESTS", "UNKNOWN"]
    seen = [line.split()[1] for line in lines[2:] if line.startswith("  ")]
    assert "known" in seen and seen == sorted(seen, key=lambda mark: mark == "known")  # NEW ones first
    assert lines[-1] == "verdict: unclassified consumers left (ambiguous addresses, or forwarded addresses " \
                        "ignored): decide them in --classifications, or pass --trusted-proxy (exit 4)"
    hint = next(line for line in lines if line.startswith("X-Forwarded-For from peers"))
    assert "198.51.100.4 (1 request(s), e.g. X-Forwarded-For '10.9.9.9')" in hint and "--trusted-proxy" in hint
    assert result.returncode == 4
