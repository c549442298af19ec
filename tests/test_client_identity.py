"""Who sent a value, behind a load balancer: --trusted-proxies and --consumer-header on the proxy's log lines,
and stagectl audit-consumers never "clear" while forwarded addresses were ignored."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.app.server import Running
from proxy.app.settings import SettingsError, load_settings
from proxy.shared.clients import parse_networks
from tests.support.proxies import REPO, ProxyFactory, set_mode
from tests.support.upstreams import Upstream


def stage_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [{name: value for name, value in r.fields.items() if value is not None}  # type: ignore[attr-defined]
            for r in caplog.records if getattr(r, "event", None) == "stage_validation"]


async def send(http: aiohttp.ClientSession, run: Running, headers: dict[str, str] | list[tuple[str, str]]) -> None:
    async with http.post(f"{run.url}/api/v1/deals", json={"stage": "Maybe"}, headers=headers) as response:
        assert response.status == 200  # warn: forwarded


async def behind_lb(make_proxy: ProxyFactory, http: aiohttp.ClientSession, trusted: str | None,
                    consumer_header: str | None = None) -> Running:
    run = await make_proxy(trusted_proxies=parse_networks([trusted]) if trusted else (),
                           consumer_header=consumer_header)
    await set_mode(http, run, "create_deal", "warn")
    return run


async def test_a_trusted_balancer_names_the_client_and_the_consumer(make_proxy: ProxyFactory,
                                                                    http: aiohttp.ClientSession,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """From a trusted peer: the rightmost untrusted hop is the client, the gateway's header is the consumer;
    a forged hop left of it and a 10 KB consumer name change nothing but what they should."""
    run = await behind_lb(make_proxy, http, "127.0.0.0/8", "X-Consumer-ID")
    caplog.set_level(logging.INFO)
    await send(http, run, {"X-Forwarded-For": "10.0.0.1, 203.0.113.7, 127.0.0.5", "X-Consumer-ID": "partner-a"})
    await send(http, run, [("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "192.0.2.9")])  # two lines
    # 10 KB: forwarded as it came (this test upstream answers 400 to a field that long); the log line is bounded
    async with http.post(f"{run.url}/api/v1/deals", json={"stage": "Maybe"},
                         headers={"X-Consumer-ID": "x" * 10_000 + "\u00e9"}) as response:
        assert response.headers["X-Stage-Validation"] == "mode=warn; result=unknown"
    first, second, third = stage_lines(caplog)
    assert (first["client_ip"], first["consumer"]) == ("203.0.113.7", "partner-a") and "forwarded_for" not in first
    assert second["client_ip"] == "192.0.2.9" and "consumer" not in second  # no header: no consumer
    assert third["client_ip"] == "127.0.0.1" and third["consumer"] == "x" * 128 + "…"


async def test_an_untrusted_peer_is_the_client_and_its_headers_are_logged_as_ignored(
        make_proxy: ProxyFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    """Any client can send X-Forwarded-For and a consumer header: from a peer outside --trusted-proxies neither
    is believed; the forwarded-for is logged (bounded) so the consumer audit can say it was ignored."""
    run = await behind_lb(make_proxy, http, "10.0.0.0/8", "X-Consumer-ID")
    caplog.set_level(logging.INFO)
    await send(http, run, {"X-Forwarded-For": "203.0.113.7", "X-Consumer-ID": "exempt-partner"})
    await send(http, run, {"X-Forwarded-For": "1.1.1.1, " * 600 + "2.2.2.2"})
    first, second = stage_lines(caplog)
    assert first["client_ip"] == "127.0.0.1" and first["forwarded_for"] == "203.0.113.7"
    assert "consumer" not in first
    assert len(second["forwarded_for"]) == 257 and second["forwarded_for"].endswith("1.1.1.1, 2.2.2.2")
    assert second["forwarded_for"].startswith("…")  # the right end kept: the hops a resolver walks first


async def test_without_trusted_proxies_forwarded_for_is_never_believed(make_proxy: ProxyFactory,
                                                                       upstream: Upstream,
                                                                       http: aiohttp.ClientSession,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    run = await behind_lb(make_proxy, http, None)
    caplog.set_level(logging.INFO)
    await send(http, run, {"X-Forwarded-For": "203.0.113.7"})
    [line] = stage_lines(caplog)
    assert line["client_ip"] == "127.0.0.1" and line["forwarded_for"] == "203.0.113.7"
    assert upstream.last.headers["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"  # the chain, and our peer


@pytest.mark.parametrize(("argv", "message"), [
    (["--consumer-header", "X-Consumer-ID"], "--consumer-header needs --trusted-proxies"),
    (["--trusted-proxies", "0.0.0.0/0"], "--trusted-proxies: '0.0.0.0/0' is every address"),
    (["--trusted-proxies", "10.0.0.0/8,::/0"], "'::/0' is every address"),
    (["--trusted-proxies", "10.0.0.0/33"], "--trusted-proxies: '10.0.0.0/33' is not an address or CIDR network"),
    (["--trusted-proxies", "10.0.0.0/8", "--consumer-header", "X Consumer"], "expected an HTTP header name"),
])
def test_settings_refuse(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        load_settings(["--upstream", "http://127.0.0.1:1", *argv])


def test_settings_from_the_environment() -> None:
    settings = load_settings(["--upstream", "http://127.0.0.1:1"], {"STAGE_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1",
                                                                     "STAGE_CONSUMER_HEADER": "X-Consumer-ID"})
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "127.0.0.1/32"]
    assert settings.consumer_header == "X-Consumer-ID"


# -- the consumer audit behind a load balancer -------------------------------------------------------------------

NGINX_BEHIND_LB = [  # nginx on the same host as the proxy: every peer is 127.0.0.1, the clients are in the column
    '127.0.0.1 - - [01/Dec/2026:10:00:00 +0000] "POST /api/v1/deals HTTP/1.1" 201 9 "-" "partner/1" "203.0.113.7"',
    '127.0.0.1 - - [01/Dec/2026:10:01:00 +0000] "POST /api/v1/deals HTTP/1.1" 201 9 "-" "cgnat/1" "100.64.3.4"',
    '127.0.0.1 - - [01/Dec/2026:10:02:00 +0000] "POST /api/v1/deals HTTP/1.1" 201 9 "-" "crm/2" "-"',
]


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.stagectl", "audit-consumers", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_ignored_forwarded_addresses_are_never_clear(tmp_path: Path) -> None:
    """The issue's case: the forwarded column held an external and a CGNAT address; the audit said "clear" and
    --record wrote 127.0.0.1 as an internal consumer. Now: exit 4 naming the peer and the flag, nothing recorded
    for it; with the flag the real clients are classified."""
    log = tmp_path / "access.log"
    log.write_text("\n".join(NGINX_BEHIND_LB) + "\n")
    decisions = tmp_path / "consumers.toml"
    result = audit(str(log), "--classifications", str(decisions), "--record")
    assert result.returncode == 4, result.stdout
    assert "X-Forwarded-For from peers that are not trusted was ignored: 127.0.0.1 (2 request(s)" in result.stdout
    assert "--trusted-proxy 127.0.0.1" in result.stdout
    assert "127.0.0.1" not in decisions.read_text()  # a balancer is not a consumer
    result = audit(str(log), "--trusted-proxy", "127.0.0.1", "--json")
    report = orjson.loads(result.stdout)
    assert result.returncode == 4 and report["forwarded_for_ignored"] == []  # 4 now for the CGNAT client
    assert {c["ip"]: c["class"] for c in report["consumers"]} == {
        "203.0.113.7": "external", "100.64.3.4": "ambiguous", "127.0.0.1": "internal"}


async def test_the_proxys_own_lines_feed_the_audit(make_proxy: ProxyFactory, http: aiohttp.ClientSession,
                                                   caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """The proxy's log lines, as it writes them, read by the audit: consumer names shown; a forwarded-for the
    proxy ignored is resolved by the audit's own --trusted-proxy (the same rule)."""
    trusting = await behind_lb(make_proxy, http, "127.0.0.0/8", "X-Consumer-ID")
    caplog.set_level(logging.INFO)
    await send(http, trusting, {"X-Forwarded-For": "203.0.113.7", "X-Consumer-ID": "partner-a",
                                "User-Agent": "partner/1"})
    naive = await behind_lb(make_proxy, http, None)
    await send(http, naive, {"X-Forwarded-For": "198.51.100.8", "User-Agent": "other/1"})
    log = tmp_path / "proxy.log"
    log.write_bytes(b"".join(orjson.dumps({"event": "stage_validation", **line}) + b"\n"
                             for line in stage_lines(caplog)))
    report = orjson.loads(audit(str(log), "--json").stdout)
    assert [(c["ip"], c["consumers"]) for c in report["consumers"]] == [("127.0.0.1", []),
                                                                       ("203.0.113.7", ["partner-a"])]
    assert report["forwarded_for_ignored"] == [{"peer": "127.0.0.1", "requests": 1, "example": "198.51.100.8"}]
    report = orjson.loads(audit(str(log), "--json", "--trusted-proxy", "127.0.0.1").stdout)
    assert sorted(c["ip"] for c in report["consumers"]) == ["198.51.100.8", "203.0.113.7"]
