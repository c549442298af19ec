"""The differential suite: hostile requests through the proxy (enforce, 100 %) to real upstream frameworks.

Seven stacks (tests/frameworks/, started by tests/support/frameworks.py) each answer with the stage values they
would store. For every request of the corpus and every stack: sent directly, some reach a handler with
``banana`` (the readings are real: ``test_the_readings_are_real``); sent through the proxy, none ever does.
"""

from __future__ import annotations

import asyncio
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from proxy.catalog.stages import default_catalog
from tests.support.frameworks import FRAMEWORKS, Started, start, stop, wait_ready
from tests.support.ports import wait_for_port
from tests.support.proxies import TOKEN, spawn_proxy
from tests.support.raw import body_of, exchange

CANONICAL = frozenset(default_catalog().canonical)
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
BANANA = b'{"stage":"banana"}'
IMPORT_BANANA = b'{"deals":[{"stage":"banana"}]}'


@dataclass(frozen=True)
class Attack:
    """One hostile request: the reading it tries, as it goes on the wire."""

    name: str
    method: str
    target: str
    body: bytes
    content_type: str | None = JSON
    headers: tuple[tuple[str, str], ...] = ()

    def wire(self) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
                 f"Content-Length: {len(self.body)}"]
        lines += [f"Content-Type: {self.content_type}"] if self.content_type else []
        lines += [f"{name}: {value}" for name, value in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


ATTACKS: tuple[Attack, ...] = (
    # 1. fragments
    Attack("fragment create", "POST", "/api/v1/deals#x", BANANA),
    Attack("fragment import", "POST", "/api/v1/deals/import#x", IMPORT_BANANA),
    Attack("fragment update", "PATCH", "/api/v1/deals/5#/x", BANANA),
    # 2. path parameters
    Attack("param last segment", "POST", "/api/v1/deals;x", BANANA),
    Attack("param middle segment", "POST", "/api/v1;x/deals", BANANA),
    Attack("param empty", "POST", "/api;/v1/deals", BANANA),
    Attack("param jsessionid", "POST", "/api/v1/deals;jsessionid=1", BANANA),
    Attack("param dot-dot", "POST", "/api/v1/x/..;/deals", BANANA),
    Attack("param import", "POST", "/api/v1/deals/import;x", IMPORT_BANANA),
    Attack("param update", "PATCH", "/api/v1/deals/5;x", BANANA),
    # 3. keys under case folding
    Attack("long s key", "POST", "/api/v1/deals", '{"stage":"lead","ſtage":"banana"}'.encode()),
    Attack("long s escaped", "POST", "/api/v1/deals", b'{"stage":"lead","\\u017ftage":"banana"}'),
    Attack("long s in deals", "POST", "/api/v1/deals/import",
           '{"deals":[{"stage":"lead","ſtage":"banana"}]}'.encode()),
    Attack("long s array key", "POST", "/api/v1/deals/import", '{"deals":[],"dealſ":[{"stage":"banana"}]}'.encode()),
    Attack("long s alone", "PATCH", "/api/v1/deals/5", '{"ſtage":"banana"}'.encode()),
    Attack("upper key alone", "PATCH", "/api/v1/deals/5", b'{"STAGE":"banana"}'),
    Attack("upper key after", "POST", "/api/v1/deals", b'{"stage":"lead","Stage":"banana"}'),
    Attack("st ligature key", "POST", "/api/v1/deals", '{"stage":"lead","ﬆage":"banana"}'.encode()),
    # 4. method overrides and PUT
    Attack("put", "PUT", "/api/v1/deals/5", BANANA),
    Attack("query _method", "POST", "/api/v1/deals/5?_method=PATCH", BANANA),
    Attack("query _method put", "POST", "/api/v1/deals/5?_method=put", BANANA),
    Attack("query php-mangled _method", "POST", "/api/v1/deals/5?.method=PATCH", BANANA),
    Attack("header override", "POST", "/api/v1/deals/5", BANANA, headers=(("X-HTTP-Method-Override", "PATCH"),)),
    Attack("form _method", "POST", "/api/v1/deals/5", b"_method=PATCH&stage=banana", FORM),
    Attack("untyped form _method", "POST", "/api/v1/deals/5", b"_method=PATCH&stage=banana", None),
    Attack("json _method", "POST", "/api/v1/deals/5", b'{"_method":"PATCH","stage":"banana"}'),
    # the field in the query
    Attack("query stage", "POST", "/api/v1/deals?stage=banana", b'{"stage":"lead"}'),
    Attack("query nested deals", "POST", "/api/v1/deals/import?deals[][stage]=banana",
           b'{"deals":[{"stage":"lead"}]}'),
    Attack("query indexed deals", "POST", "/api/v1/deals/import?deals[0][stage]=banana",
           b'{"deals":[{"stage":"lead"}]}'),
    # round one, kept: they held, keep them holding
    Attack("duplicate key", "POST", "/api/v1/deals", b'{"stage":"lead","stage":"banana"}'),
    Attack("escaped duplicate", "POST", "/api/v1/deals", b'{"stage":"lead","st\\u0061ge":"banana"}'),
    Attack("byte order mark", "POST", "/api/v1/deals", b"\xef\xbb\xbf" + BANANA),
    Attack("encoded letter", "POST", "/api/v1/%64eals", BANANA),
    Attack("upper case path", "POST", "/API/V1/DEALS", BANANA),
    Attack("doubled slashes", "POST", "//api/v1//deals/", BANANA),
    Attack("dot segment", "POST", "/api/v1/./deals", BANANA),
    Attack("encoded slash", "PATCH", "/api/v1/deals/5%2Fx", BANANA),
    Attack("text/plain body", "POST", "/api/v1/deals", BANANA, "text/plain"),
    Attack("untyped body", "POST", "/api/v1/deals", BANANA, None),
    Attack("absolute form", "POST", "http://127.0.0.1/api/v1/deals", BANANA),
)

# What reached a handler with "banana" when sent to each stack directly (checked by test_the_readings_are_real:
# each of these is a real bypass of that stack, which the proxy must close).
READINGS: dict[str, set[str]] = {
    "aiohttp": {"absolute form", "duplicate key", "encoded letter", "encoded slash", "escaped duplicate",
        "fragment create", "fragment import", "fragment update", "param update", "put", "text/plain body",
        "untyped body"},
    "flask": {"absolute form", "byte order mark", "duplicate key", "encoded letter", "escaped duplicate",
        "fragment create", "fragment import", "fragment update", "param update", "put"},
    "express": {"absolute form", "byte order mark", "duplicate key", "encoded slash", "escaped duplicate",
        "fragment create", "fragment import", "fragment update", "header override", "param update", "put",
        "query _method", "query _method put", "upper case path"},
    "go": {"absolute form", "duplicate key", "encoded letter", "escaped duplicate", "long s alone", "long s array key",
        "long s escaped", "long s in deals", "long s key", "param update", "put", "text/plain body", "untyped body",
        "upper key after", "upper key alone"},
    "servlet": {"absolute form", "byte order mark", "dot segment", "doubled slashes", "duplicate key",
        "encoded letter", "escaped duplicate", "form _method", "param dot-dot", "param empty", "param import",
        "param jsessionid", "param last segment", "param middle segment", "param update", "put", "query _method",
        "query _method put", "text/plain body", "untyped body", "upper key after", "upper key alone"},
    "rack": {"absolute form", "duplicate key", "encoded slash", "escaped duplicate", "form _method", "fragment create",
        "fragment import", "fragment update", "header override", "param update", "put", "query nested deals",
        "query stage", "untyped form _method"},
    "php": {"absolute form", "duplicate key", "encoded slash", "escaped duplicate", "form _method", "fragment create",
        "fragment import", "fragment update", "header override", "json _method", "param update", "put",
        "query _method", "query _method put", "query indexed deals", "query nested deals", "query php-mangled _method",
        "query stage"},
}


@pytest.fixture(scope="module")
def stacks() -> Iterator[dict[str, Started]]:
    """Every framework, built and started once for the module (in parallel: Tomcat takes seconds)."""
    build = Path(tempfile.mkdtemp(prefix="stagegate-frameworks-"))
    started: dict[str, Started] = {}
    try:
        for framework in FRAMEWORKS:
            started[framework.name] = start(framework, build)
        for running in started.values():
            wait_ready(running)
        yield started
    finally:
        for running in started.values():
            stop(running)


@pytest.fixture(scope="module")
def proxies(stacks: dict[str, Started]) -> Iterator[dict[str, int]]:
    """A proxy process in front of each stack, every endpoint in enforce at 100 %: name -> main port."""
    procs = {name: spawn_proxy(running.url) for name, running in stacks.items()}
    try:
        for _, main, admin in procs.values():
            wait_for_port(admin)
            wait_for_port(main)
            request = urllib.request.Request(
                f"http://127.0.0.1:{admin}/_ops/mode", method="PUT",
                data=orjson.dumps({"endpoint": "*", "mode": "enforce", "percent": 100, "reason": "differential"}),
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": JSON})
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200
        yield {name: main for name, (_, main, _) in procs.items()}
    finally:
        for proc, _, _ in procs.values():
            proc.terminate()
            proc.communicate(timeout=15)


def stored(answer: bytes, app: str) -> list[object] | None:
    """The values the stack says it stored, or None when the answer is not one of its handlers' (a 404, a proxy
    refusal)."""
    try:
        decoded = orjson.loads(body_of(answer))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(decoded, dict) or decoded.get("app") != app or decoded.get("handler") is None:
        return None
    stages = decoded.get("stages")
    assert isinstance(stages, list)
    return stages


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


@pytest.mark.parametrize("stack", [f.name for f in FRAMEWORKS])
async def test_the_readings_are_real(stacks: dict[str, Started], stack: str) -> None:
    """Sent directly, each stack stores ``banana`` for the readings the table names (at least): the suite
    exercises real bypasses of real parsers, not only the RFC."""
    port = stacks[stack].port
    answers = await asyncio.gather(*(exchange(port, attack.wire(), idle_s=5) for attack in ATTACKS))
    reached = {attack.name for attack, answer in zip(ATTACKS, answers, strict=True)
               if "banana" in (stored(answer, stack) or [])}
    missing = READINGS[stack] - reached
    assert not missing, f"{stack} no longer stores banana for {sorted(missing)}; it does for {sorted(reached)}"


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda attack: attack.name)
@pytest.mark.parametrize("stack", [f.name for f in FRAMEWORKS])
async def test_no_reading_gets_a_non_canonical_value_through(proxies: dict[str, int], stack: str,
                                                            attack: Attack) -> None:
    """Through the proxy in enforce, every hostile request is refused (4xx) or stores only canonical stages."""
    answer = await exchange(proxies[stack], attack.wire(), idle_s=5)
    values = stored(answer, stack)
    if values is None:
        assert 400 <= status_of(answer) < 500, answer[:300]
    else:
        assert set(values) <= CANONICAL, (values, answer[:300])


@pytest.mark.parametrize("stack", [f.name for f in FRAMEWORKS])
async def test_valid_requests_reach_each_stack_normalized(proxies: dict[str, int], stack: str) -> None:
    """The control: canonical values pass and aliases arrive rewritten, on every stack and every endpoint."""
    cases = [
        (Attack("create", "POST", "/api/v1/deals", b'{"name":"Acme","stage":"Closed Won"}'), ["closed_won"]),
        (Attack("update", "PATCH", "/api/v1/deals/5", b'{"stage":"lead"}'), ["lead"]),
        (Attack("replace", "PUT", "/api/v1/deals/5", b'{"stage":"won"}'), ["closed_won"]),
        (Attack("import", "POST", "/api/v1/deals/import", b'{"deals":[{"stage":"lost"},{"stage":"proposal"}]}'),
         ["closed_lost", "proposal"]),
    ]
    for attack, expected in cases:
        answer = await exchange(proxies[stack], attack.wire(), idle_s=5)
        assert stored(answer, stack) == expected, (attack.name, answer[:400])
