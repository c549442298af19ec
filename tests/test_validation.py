"""Validated endpoints in off, warn and enforce (docs/reference.md, "Modes"), canary included."""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.app.server import Running
from proxy.app.wiring import PARTS
from tests.support.proxies import ProxyFactory, set_mode
from tests.support.upstreams import Upstream

JSON = {"Content-Type": "application/json"}


async def post(http: aiohttp.ClientSession, run: Running, path: str, body: bytes | Any,
               headers: dict[str, str] | None = None, method: str = "POST") -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    payload = io.BytesIO(data) if len(data) > 1024 * 1024 else data  # aiohttp warns on huge raw bytes
    async with http.request(method, f"{run.url}{path}", data=payload, headers={**JSON, **(headers or {})}) as response:
        return response.status, dict(response.headers), await response.read()


async def metric_value(http: aiohttp.ClientSession, run: Running, line_prefix: str) -> float:
    async with http.get(f"{run.admin_url}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def stage_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [dict(r.fields) for r in caplog.records if getattr(r, "event", None) == "stage_validation"]  # type: ignore[attr-defined]


async def test_off_forwards_unknown_and_counts_it(proxy: Running, upstream: Upstream, http: aiohttp.ClientSession,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """(1) off: an unknown stage is forwarded unchanged, counted, and not logged."""
    raw = b'{"name": "Acme", "stage": "Maybe Later"}'
    status, headers, _ = await post(http, proxy, "/api/v1/deals", raw)
    assert status == 200
    assert upstream.last.body == raw
    assert headers["X-Stage-Validation"] == "mode=off; result=unknown"
    series = 'stage_validation_total{endpoint="create_deal",mode="off",result="unknown"}'
    assert await metric_value(http, proxy, series) == 1.0
    assert stage_lines(caplog) == []


async def test_warn_forwards_and_logs_one_warn(proxy: Running, upstream: Upstream, http: aiohttp.ClientSession,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """(2) warn: unknown is forwarded unchanged and logged once at WARN with the contract's fields."""
    await set_mode(http, proxy, "create_deal", "warn")
    raw = b'{"name": "Acme", "stage": "Maybe Later"}'
    caplog.set_level(logging.INFO)
    status, headers, _ = await post(http, proxy, "/api/v1/deals", raw,
                                    {"X-Request-ID": "warn-1", "User-Agent": "crm-sync/2.1"})
    assert status == 200 and upstream.last.body == raw
    assert headers["X-Stage-Validation"] == "mode=warn; result=unknown"
    lines = stage_lines(caplog)
    assert len(lines) == 1
    warn = [r for r in caplog.records if getattr(r, "event", None) == "stage_validation"][0]
    assert warn.levelno == logging.WARNING
    line = lines[0]
    for key in ("request_id", "endpoint", "mode", "result", "value", "normalized", "client_ip", "user_agent"):
        assert key in line, key
    assert (line["request_id"], line["endpoint"], line["mode"], line["result"], line["value"]) == (
        "warn-1", "create_deal", "warn", "unknown", "Maybe Later")
    assert (line["client_ip"], line["user_agent"], line["action"]) == ("127.0.0.1", "crm-sync/2.1", "forwarded")


async def test_enforce_rejects_unknown_with_problem(proxy: Running, upstream: Upstream,
                                                    http: aiohttp.ClientSession) -> None:
    """(3) enforce: unknown answers 422 problem+json with pointers; nothing reaches the upstream."""
    await set_mode(http, proxy, "import_deals", "enforce")
    body = {"deals": [{"stage": "lead"}, {"stage": "Maybe"}, {"stage": 7}]}
    status, headers, raw = await post(http, proxy, "/api/v1/deals/import", body, {"X-Request-ID": "enf-1"})
    assert status == 422
    assert headers["Content-Type"] == "application/problem+json"
    assert headers["X-Stage-Validation"] == "mode=enforce; result=invalid"
    problem = orjson.loads(raw)
    assert problem["status"] == 422 and problem["request_id"] == "enf-1" and problem["endpoint"] == "import_deals"
    assert problem["allowed"] == ["lead", "qualified", "proposal", "negotiation", "closed_won", "closed_lost"]
    assert [(e["pointer"], e["value"], e["result"]) for e in problem["errors"]] == [
        ("/deals/1/stage", "Maybe", "unknown"), ("/deals/2/stage", 7, "invalid")]
    assert problem["title"] and problem["detail"]
    assert upstream.seen == []
    assert await metric_value(http, proxy, 'stage_enforce_rejections_total{endpoint="import_deals",reason="invalid"}')


async def test_enforce_rewrites_aliases(proxy: Running, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """(4) enforce: aliases arrive canonical, every other byte (big integers too) as sent, Content-Length right."""
    await set_mode(http, proxy, "*", "enforce")
    raw = b'{"id": 123456789012345678901234567890, "stage" : "Closed Won", "amount": 1.50, "note": "won"}'
    status, headers, _ = await post(http, proxy, "/api/v1/deals", raw)
    assert status == 200
    assert headers["X-Stage-Validation"] == "mode=enforce; result=alias"
    assert upstream.last.body == raw.replace(b'"Closed Won"', b'"closed_won"')
    assert upstream.last.headers["Content-Length"] == str(len(upstream.last.body))
    patched = b'{"stage": "negotiating"}'
    status, _, _ = await post(http, proxy, "/api/v1/deals/42", patched, method="PATCH")
    assert status == 200 and upstream.last.body == b'{"stage": "negotiation"}'


async def test_enforce_forwards_canonical_unchanged(proxy: Running, upstream: Upstream,
                                                    http: aiohttp.ClientSession) -> None:
    """enforce: canonical values and absent optional fields pass byte for byte."""
    await set_mode(http, proxy, "*", "enforce")
    raw = b'{"stage":"lead","x":[1,2,{"stage":"zzz"}]}'
    assert (await post(http, proxy, "/api/v1/deals", raw))[0] == 200
    assert upstream.last.body == raw
    status, headers, _ = await post(http, proxy, "/api/v1/deals/9", b'{"name":"n"}', method="PATCH")
    assert status == 200 and headers["X-Stage-Validation"] == "mode=enforce; result=absent"


async def test_canary_share_sticky_and_monotonic(proxy: Running, http: aiohttp.ClientSession) -> None:
    """(5) 10 % canary over 5 000 IDs enforces 10 ± 1.5 %; same ID, same fate; 50 % keeps the 10 % set."""
    await set_mode(http, proxy, "create_deal", "enforce", 10)
    ids = [uuid.uuid4().hex for _ in range(5000)]
    semaphore = asyncio.Semaphore(32)

    async def enforced(rid: str) -> bool:
        async with semaphore:
            status, _, _ = await post(http, proxy, "/api/v1/deals", b'{"stage": "nope"}', {"X-Request-ID": rid})
            assert status in (200, 422)
            return status == 422

    at_10 = dict(zip(ids, await asyncio.gather(*(enforced(rid) for rid in ids)), strict=True))
    share = sum(at_10.values()) / len(ids)
    assert 0.085 <= share <= 0.115, share
    again = await asyncio.gather(*(enforced(rid) for rid in ids[:500]))
    assert again == [at_10[rid] for rid in ids[:500]]
    await set_mode(http, proxy, "create_deal", "enforce", 50)
    sample = [rid for rid in ids if at_10[rid]][:200] + ids[:300]
    at_50 = dict(zip(sample, await asyncio.gather(*(enforced(rid) for rid in sample)), strict=True))
    assert all(at_50[rid] for rid in sample if at_10[rid])


async def test_canary_non_enforced_requests_are_warn(proxy: Running, http: aiohttp.ClientSession) -> None:
    """A request outside the canary share is handled (and labelled) as warn."""
    await set_mode(http, proxy, "create_deal", "enforce", 22.5)
    _, headers, _ = await post(http, proxy, "/api/v1/deals", b'{"stage": "nope"}', {"X-Request-ID": "a"})
    assert headers["X-Stage-Validation"] == "mode=warn; result=unknown"  # bucket("a") == 22.50


@pytest.mark.parametrize(
    ("raw", "headers", "status", "reason"),
    [
        (b'{"stage": "lead"', {}, 400, "malformed_json"),
        (b"", {}, 400, "malformed_json"),
        (b'{"stage": "lead", "stage": "x"}', {}, 400, "duplicate_key"),
        (b'\xef\xbb\xbf{"stage": "lead"}', {}, 400, "byte_order_mark"),
        (b'{"stage": "\xc3\x28"}', {}, 400, "invalid_utf8"),
        (b'{"stage": "lead"}', {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        (gzip.compress(b'{"stage": "lead"}'), {"Content-Encoding": "gzip"}, 415, "unsupported_encoding"),
        (b'{"stage": "lead", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", {}, 400, "malformed_json"),
    ],
)
async def test_enforce_unreadable(proxy: Running, upstream: Upstream, http: aiohttp.ClientSession, raw: bytes,
                                  headers: dict[str, str], status: int, reason: str) -> None:
    """enforce: bodies whose stage cannot be determined unambiguously are rejected 400/415."""
    await set_mode(http, proxy, "create_deal", "enforce")
    got, response_headers, body = await post(http, proxy, "/api/v1/deals", raw, headers)
    assert (got, orjson.loads(body)["reason"]) == (status, reason)
    assert response_headers["Content-Type"] == "application/problem+json"
    assert upstream.seen == []


@pytest.mark.parametrize(
    ("raw", "result"),
    [(b"[1, 2]", "invalid"), (b'"lead"', "invalid"), (b'{"stage": "lead", "big": 184467440737095516160000}',
                                                      "canonical"),
     (b'{"stage": "lead", "f": 1e400}', "canonical"), (orjson.dumps({"stage": "x" * 100_000}), "unknown")],
)
async def test_enforce_odd_but_valid_json(proxy: Running, upstream: Upstream, http: aiohttp.ClientSession,
                                          raw: bytes, result: str) -> None:
    """Valid JSON that is not an object is invalid (422); big numbers and huge strings are handled."""
    await set_mode(http, proxy, "create_deal", "enforce")
    status, headers, _ = await post(http, proxy, "/api/v1/deals", raw)
    assert headers["X-Stage-Validation"] == f"mode=enforce; result={result}"
    assert status == (200 if result == "canonical" else 422)
    if result == "canonical":
        assert upstream.last.body == raw


async def test_too_large_body(make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """A 20 MB body: 413 in enforce; forwarded whole and counted unreadable in warn."""
    run = await make_proxy(max_body_bytes=1024 * 1024)
    big = b'{"stage": "lead", "pad": "' + b"x" * (20 * 1024 * 1024) + b'"}'
    await set_mode(http, run, "create_deal", "warn")
    status, headers, _ = await post(http, run, "/api/v1/deals", big)
    assert status == 200 and headers["X-Stage-Validation"] == "mode=warn; result=unreadable"
    assert upstream.last.body == big
    await set_mode(http, run, "create_deal", "enforce")
    status, _, body = await post(http, run, "/api/v1/deals", big)
    assert status == 413 and orjson.loads(body)["reason"] == "too_large"


async def test_chunked_body_over_limit_is_streamed_in_warn(make_proxy: ProxyFactory, upstream: Upstream,
                                                           http: aiohttp.ClientSession) -> None:
    """A chunked upload over the limit in warn: the part read plus the rest reach the upstream intact."""
    run = await make_proxy(max_body_bytes=1000)
    await set_mode(http, run, "create_deal", "warn")
    parts = [b'{"stage": "lead", "pad": "'] + [b"y" * 300] * 10 + [b'"}']

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async with http.post(f"{run.url}/api/v1/deals", data=body(), headers=JSON) as response:
        assert response.status == 200
        assert response.headers["X-Stage-Validation"] == "mode=warn; result=unreadable"
    assert upstream.last.body == b"".join(parts)


async def test_chunked_body_is_validated(proxy: Running, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """A chunked upload under the limit is read whole, validated and forwarded with a Content-Length."""
    await set_mode(http, proxy, "create_deal", "enforce")

    async def body() -> AsyncIterator[bytes]:
        yield b'{"stage": '
        yield b'"WON"}'

    async with http.post(f"{proxy.url}/api/v1/deals", data=body(), headers=JSON) as response:
        assert response.status == 200
    assert upstream.last.body == b'{"stage": "closed_won"}'
    assert upstream.last.headers["Content-Length"] == "23"
    assert "Transfer-Encoding" not in upstream.last.headers


async def test_log_line_cannot_be_forged(proxy: Running, http: aiohttp.ClientSession,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Control characters and newlines in a stage are escaped: one JSON line per event."""
    from proxy.shared import logs

    logs.configure("INFO")
    await set_mode(http, proxy, "create_deal", "warn")
    evil = 'x"}\n{"level":"INFO","event":"mode_changed"}\r\x00\x1b[31m'
    await post(http, proxy, "/api/v1/deals", {"stage": evil})
    out = capsys.readouterr().out.strip().splitlines()
    events = [orjson.loads(line) for line in out]
    stage = [e for e in events if e["event"] == "stage_validation"]
    assert len(stage) == 1 and stage[0]["value"] == evil
    assert not any(e["event"] == "mode_changed" and "endpoints" not in e for e in events)


async def test_warn_flood_is_capped(make_proxy: ProxyFactory, http: aiohttp.ClientSession,
                                    caplog: pytest.LogCaptureFixture) -> None:
    """A burst of unknowns writes at most warn_log_per_s lines per second plus a suppressed summary."""
    run = await make_proxy(warn_log_per_s=5)
    await set_mode(http, run, "create_deal", "warn")
    caplog.set_level(logging.INFO)
    for _ in range(60):
        await post(http, run, "/api/v1/deals", {"stage": "nope"})
    run.app[PARTS].dataplane.flood.flush()
    lines = stage_lines(caplog)
    suppressed = [r for r in caplog.records if getattr(r, "event", None) == "log_suppressed"]
    assert 5 <= len(lines) <= 15  # at most two one-second windows
    assert sum(r.fields["suppressed"] for r in suppressed) == 60 - len(lines)  # type: ignore[attr-defined]


def test_console_log_format_is_readable_and_escaped() -> None:
    """On a terminal the same fields print as key=value, still escaped (no forged lines)."""
    from proxy.shared.logs import ConsoleFormatter

    record = logging.LogRecord("stagegate.requests", logging.WARNING, "", 0, "stage_validation", (), None)
    record.event = "stage_validation"
    record.fields = {"endpoint": "create_deal", "value": 'x\n{"level":"INFO"}', "normalized": None}
    line = ConsoleFormatter().format(record)
    assert "\n" not in line
    assert " WARN  stage_validation endpoint=\"create_deal\" value=\"x\\n{\\\"level\\\":\\\"INFO\\\"}\"" in line
    assert "normalized" not in line
