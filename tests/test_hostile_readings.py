"""Hostile input, round two: requests read the way real upstream frameworks read them (docs/proxy.md).

Each finding of the adversarial pass, replayed as it was found, against a proxy in enforce in front of the
byte-recording upstream: the answer is a 4xx from the proxy, or the request was validated — and the upstream never
received ``banana``. (tests/test_differential.py replays them against the real frameworks.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from proxy.app.server import Running
from tests.support.proxies import ProxyFactory, set_mode
from tests.support.raw import exchange, request
from tests.support.scripted import RawRecord, recording_raw_upstream

BANANA = b'{"stage":"banana"}'
IMPORT_BANANA = b'{"deals":[{"stage":"banana"}]}'


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawRecord]:
    async with recording_raw_upstream() as record:
        yield record


@pytest.fixture
async def guarded(make_proxy: ProxyFactory, raw_upstream: RawRecord, http: aiohttp.ClientSession) -> Running:
    """A proxy in enforce on every endpoint, in front of the byte-recording upstream."""
    run = await make_proxy(upstream_url=raw_upstream.url)
    await set_mode(http, run, "*", "enforce")
    return run


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


def problem_of(answer: bytes) -> dict[str, object]:
    body: dict[str, object] = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
    return body


def raw_request(method: str, target: str, body: bytes, content_type: str | None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: stagegate.test", "Connection: close",
             f"Content-Length: {len(body)}"] + ([f"Content-Type: {content_type}"] if content_type else [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- 1. fragments ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "target", "body"), [
    ("POST", "/api/v1/deals#x", BANANA), ("POST", "/api/v1/deals/import#x", IMPORT_BANANA),
    ("PATCH", "/api/v1/deals/5#/x", BANANA), ("POST", "/api/v1/deals#?x=1", BANANA),
    ("POST", "/api/v1/deals?x=1#frag", BANANA), ("PUT", "/api/v1/deals/5#", BANANA),
])
async def test_a_fragment_does_not_hide_a_validated_endpoint(guarded: Running, raw_upstream: RawRecord,
                                                            method: str, target: str, body: bytes) -> None:
    """(1) ``#…`` is cut before matching: the request is validated (422), never forwarded as pass-through."""
    answer = await exchange(guarded.main.port, request(method, target, body))
    assert status_of(answer) == 422, answer[:200]
    assert b"banana" not in raw_upstream.everything


async def test_a_fragment_is_not_forwarded(guarded: Running, raw_upstream: RawRecord) -> None:
    """What was validated is what is forwarded: the path without its fragment, on pass-through paths too."""
    assert status_of(await exchange(guarded.main.port, request("POST", "/api/v1/deals#x", b'{"stage":"won"}'))) == 200
    assert status_of(await exchange(guarded.main.port, request("GET", "/other?a=1#x?b"))) == 200
    assert raw_upstream.heads[0].startswith(b"POST /api/v1/deals HTTP/1.1\r\n")
    assert raw_upstream.heads[1].startswith(b"GET /other?a=1 HTTP/1.1\r\n")
    assert b"#" not in raw_upstream.everything and b'"closed_won"' in raw_upstream.everything


# -- 2. path parameters --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "target", "body"), [
    ("POST", "/api/v1/deals;x", BANANA), ("POST", "/api/v1;x/deals", BANANA), ("POST", "/api;/v1/deals", BANANA),
    ("POST", "/api/v1/deals;jsessionid=1", BANANA), ("POST", "/api/v1/x/..;/deals", BANANA),
    ("POST", "/api/v1/deals/import;x", IMPORT_BANANA), ("PATCH", "/api/v1/deals/5;v=2", BANANA),
    ("POST", "/;a/api/v1/deals/;", BANANA), ("POST", "/api/v1/deals%3Bx", BANANA),
])
async def test_path_parameters_do_not_hide_a_validated_endpoint(guarded: Running, raw_upstream: RawRecord,
                                                               method: str, target: str, body: bytes) -> None:
    """(2) ``;`` parameters are dropped from each segment before matching, as servlet containers do (``%3B``,
    which a double-decoding router reads as ``;``, is refused as ambiguous)."""
    answer = await exchange(guarded.main.port, request(method, target, body))
    assert status_of(answer) in (400, 422), answer[:200]
    assert b"banana" not in raw_upstream.everything


async def test_path_parameters_are_dropped_on_validated_paths_only(guarded: Running, raw_upstream: RawRecord) -> None:
    """A validated request is forwarded without its parameters; a pass-through one keeps them (jsessionid)."""
    answer = await exchange(guarded.main.port, request("PATCH", "/api/v1/x/..;/deals/7;jsessionid=a", b"{}"))
    assert status_of(answer) == 200
    assert status_of(await exchange(guarded.main.port, request("GET", "/cart;jsessionid=a"))) == 200
    assert raw_upstream.heads[0].startswith(b"PATCH /api/v1/deals/7 HTTP/1.1\r\n")
    assert raw_upstream.heads[1].startswith(b"GET /cart;jsessionid=a HTTP/1.1\r\n")


# -- 3. keys under Unicode case folding ---------------------------------------------------------------------

@pytest.mark.parametrize(("target", "body"), [
    ("/api/v1/deals", '{"stage":"lead","ſtage":"banana"}'.encode()),
    ("/api/v1/deals", b'{"stage":"lead","\\u017ftage":"banana"}'),
    ("/api/v1/deals", b'{"stage":"lead","\\u017Ftage":"banana"}'),
    ("/api/v1/deals", '{"stage":"lead","ﬆage":"banana"}'.encode()),
    ("/api/v1/deals/import", '{"deals":[{"stage":"lead","ſtage":"banana"}]}'.encode()),
    ("/api/v1/deals/import", '{"deals":[],"dealſ":[{"stage":"banana"}]}'.encode()),
    ("/api/v1/deals/import", b'{"deals":[],"deal\\u017f":[{"stage":"banana"}]}'),
])
async def test_keys_that_fold_to_the_field_are_ambiguous(guarded: Running, raw_upstream: RawRecord, target: str,
                                                        body: bytes) -> None:
    """(3) Go's decoder folds ``ſ`` to ``s``: two keys equal under Unicode case folding are refused (400)."""
    answer = await exchange(guarded.main.port, request("POST", target, body))
    assert status_of(answer) == 400, answer[:300]
    assert problem_of(answer)["reason"] == "ambiguous_key"
    assert raw_upstream.heads == []


async def test_a_lone_folded_key_on_an_optional_field_is_ambiguous(guarded: Running, raw_upstream: RawRecord) -> None:
    """``{"ſtage": …}`` alone is not an absent stage: Go reads it as the stage field."""
    answer = await exchange(guarded.main.port, request("PATCH", "/api/v1/deals/5", '{"ſtage":"banana"}'.encode()))
    assert status_of(answer) == 400 and problem_of(answer)["reason"] == "ambiguous_key"
    assert raw_upstream.heads == []


async def test_lookalike_letters_elsewhere_are_fine(guarded: Running, raw_upstream: RawRecord) -> None:
    """``ſ`` in a value or an unrelated key changes nothing: the stage is validated and rewritten as usual."""
    body = '{"name":"Straße ſ K","notes":{"ſtage":"x"},"stage":"won"}'.encode()
    answer = await exchange(guarded.main.port, request("POST", "/api/v1/deals", body))
    assert status_of(answer) == 200
    assert raw_upstream.everything.endswith('{"name":"Straße ſ K","notes":{"ſtage":"x"},"stage":"closed_won"}'
                                            .encode())


# -- 4. method overrides: query, body; PUT --------------------------------------------------------------------

@pytest.mark.parametrize("target", [
    "/api/v1/deals/5?_method=PATCH", "/api/v1/deals/5?_method=patch", "/api/v1/deals/5?%5Fmethod=PATCH",
    "/api/v1/deals/5?x=1;_method=PUT", "/api/v1/deals/5?.method=PATCH", "/api/v1/deals/5?_method[]=PATCH",
    "/api/v1/deals/5?_METHOD=+PATCH+", "/api/v1/deals/5?%20_method=PATCH",
])
async def test_a_query_method_override_is_validated(guarded: Running, raw_upstream: RawRecord, target: str) -> None:
    """(4) ``?_method=PATCH`` (as Express, Spring, Symfony and PHP read it) routes to the update: validated, 422."""
    answer = await exchange(guarded.main.port, request("POST", target, BANANA))
    assert status_of(answer) == 422, answer[:300]
    assert problem_of(answer)["endpoint"] == "update_deal"
    assert raw_upstream.heads == []


async def test_put_is_an_update(guarded: Running, raw_upstream: RawRecord) -> None:
    """(4) PUT reaches the same update handlers as PATCH in legacy frameworks: validated, rewritten."""
    assert status_of(await exchange(guarded.main.port, request("PUT", "/api/v1/deals/5", BANANA))) == 422
    answer = await exchange(guarded.main.port, request("PUT", "/api/v1/deals/5", b'{"stage":"won"}'))
    assert status_of(answer) == 200 and b"mode=enforce; result=alias" in answer
    assert raw_upstream.everything.endswith(b'{"stage":"closed_won"}') and b"banana" not in raw_upstream.everything


@pytest.mark.parametrize(("body", "content_type", "status", "reason"), [
    (b"_method=PATCH&stage=banana", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    (b"_method=PATCH&stage=banana", None, 415, "unsupported_media_type"),
    (b"%5Fmethod=put&stage=banana", "application/x-www-form-urlencoded; charset=utf-8", 415,
     "unsupported_media_type"),
    (b'{"_method":"PATCH","stage":"banana"}', "application/json", 422, None),
    (b'{"_method":"PUT","stage":"banana"}', "application/vnd.deal+json", 422, None),
    (b'--b\r\nContent-Disposition: form-data; name="_method"\r\n\r\nPATCH\r\n--b--\r\n',
     "multipart/form-data; boundary=b", 400, "ambiguous_method"),
    (b'{"_method":"PATCH","stage":"banana"', "application/json", 400, "ambiguous_method"),
])
async def test_a_body_method_override_is_validated(guarded: Running, raw_upstream: RawRecord, body: bytes,
                                                  content_type: str | None, status: int, reason: str | None) -> None:
    """``_method`` in a POST body (Rack and Spring read forms, Laravel reads JSON) routes to the update: validated
    as the update; a body that cannot be read for it (multipart, broken JSON) is refused as ambiguous."""
    answer = await exchange(guarded.main.port, raw_request("POST", "/api/v1/deals/5", body, content_type))
    assert status_of(answer) == status, answer[:300]
    assert problem_of(answer).get("reason") == reason and problem_of(answer)["endpoint"] == "update_deal"
    assert raw_upstream.heads == []


@pytest.mark.parametrize(("body", "content_type"), [
    (b'{"note":"no override here"}', "application/json"), (b"a=1&b=2", "application/x-www-form-urlencoded"),
    (b"plain words", "text/plain"), (b'{"_method":"DELETE"}', "application/json"),
])
async def test_a_post_without_an_override_stays_pass_through(guarded: Running, raw_upstream: RawRecord,
                                                            body: bytes, content_type: str) -> None:
    """A POST to the update's path whose body names no validated method is forwarded unchanged, whole."""
    answer = await exchange(guarded.main.port, raw_request("POST", "/api/v1/deals/5", body, content_type))
    assert status_of(answer) == 200 and b"X-Stage-Validation" not in answer
    assert raw_upstream.heads[0].startswith(b"POST /api/v1/deals/5 HTTP/1.1\r\n")
    assert raw_upstream.everything.endswith(body)


@pytest.mark.parametrize(("target", "body"), [
    ("/api/v1/deals?stage=banana", b'{"stage":"lead"}'), ("/api/v1/deals?Stage=banana", b'{"stage":"lead"}'),
    ("/api/v1/deals?stage[]=banana", b'{"stage":"lead"}'), ("/api/v1/deals?%73tage=banana", b'{"stage":"lead"}'),
    ("/api/v1/deals/import?deals[0][stage]=banana", b'{"deals":[{"stage":"lead"}]}'),
    ("/api/v1/deals/import?deals.0.stage=banana", b'{"deals":[{"stage":"lead"}]}'),
])
async def test_the_field_in_the_query_is_refused(guarded: Running, raw_upstream: RawRecord, target: str,
                                                body: bytes) -> None:
    """Rails (query over body), Symfony's ``get`` and PHP's ``$_REQUEST`` read ``?stage=``: refused (400)."""
    method = "POST"
    answer = await exchange(guarded.main.port, request(method, target, body))
    assert status_of(answer) == 400, answer[:300]
    assert problem_of(answer)["reason"] == "field_in_query"
    assert raw_upstream.heads == []


async def test_other_query_parameters_pass(guarded: Running, raw_upstream: RawRecord) -> None:
    """Queries without the field's name are untouched: ``stages=``, ``mystage=`` are other parameters."""
    answer = await exchange(guarded.main.port, request("POST", "/api/v1/deals?mystage=x&stages=y&s=1",
                                                       b'{"stage":"lead"}'))
    assert status_of(answer) == 200
    assert raw_upstream.heads[0].startswith(b"POST /api/v1/deals?mystage=x&stages=y&s=1 HTTP/1.1\r\n")


async def test_in_warn_readings_are_forwarded_and_counted(make_proxy: ProxyFactory, raw_upstream: RawRecord,
                                                         http: aiohttp.ClientSession) -> None:
    """In warn the same requests are forwarded unchanged, each counted unreadable under its endpoint."""
    run = await make_proxy(upstream_url=raw_upstream.url)
    await set_mode(http, run, "*", "warn")
    answer = await exchange(run.main.port, raw_request("POST", "/api/v1/deals/5", b"_method=PATCH&stage=x", None))
    assert status_of(answer) == 200 and b"mode=warn; result=unreadable" in answer
    assert status_of(await exchange(run.main.port, request("POST", "/api/v1/deals?stage=x", b'{"stage":"lead"}'))) \
        == 200
    async with http.get(f"{run.admin_url}/metrics") as response:
        metrics = await response.text()
    assert 'stage_validation_total{endpoint="update_deal",mode="warn",result="unreadable"} 1.0' in metrics
    assert 'stage_validation_total{endpoint="create_deal",mode="warn",result="unreadable"} 1.0' in metrics
    assert raw_upstream.everything.count(b"stage=x") == 2
