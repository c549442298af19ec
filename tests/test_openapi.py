"""docs/openapi.yaml: a valid OpenAPI 3.1 document, served by the admin listener, in step with the routes and the
catalog, and true of a live proxy: schemathesis fuzzes the admin API, and the deal endpoints in enforce, against it.

schemathesis runs as its CLI in a subprocess (its requests are blocking), against an in-process proxy that keeps
serving on this test's event loop while the subprocess runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from openapi_spec_validator.readers import read_from_filename

from proxy.app.server import Running
from proxy.app.wiring import PARTS
from proxy.catalog.stages import DEFAULT_CATALOG_TOML, UNREADABLE_STATUS, parse_catalog
from proxy.ops.admin import create_admin_app, openapi_document
from tests.support.proxies import REPO, TOKEN, ProxyFactory, set_mode
from tests.support.upstreams import Upstream

SPEC = REPO / "docs" / "openapi.yaml"
PACKAGED = REPO / "proxy" / "ops" / "openapi.yaml"
CATALOG = parse_catalog(DEFAULT_CATALOG_TOML)
CHECKS = ("not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance,"
          "response_headers_conformance")
MAX_EXAMPLES = "50"  # per operation and phase: both runs together take about 15 s
METHODS = ("get", "put", "post", "delete", "patch")


def document() -> Mapping[str, Any]:
    spec, _ = read_from_filename(str(SPEC))
    return spec


def operations(doc: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(METHOD, path) -> operation object."""
    return {(method.upper(), path): item[method] for path, item in doc["paths"].items()
            for method in METHODS if method in item}


def test_the_document_is_valid_openapi_3_1() -> None:
    """openapi-spec-validator accepts it as OpenAPI 3.1."""
    spec, uri = read_from_filename(str(SPEC))
    assert spec["openapi"] == "3.1.0"
    validate(spec, base_uri=uri, cls=OpenAPIV31SpecValidator)


def test_docs_copy_is_the_packaged_file() -> None:
    """docs/openapi.yaml links to the file the package ships (proxy/ops/openapi.yaml): one document, not two."""
    assert SPEC.is_symlink() and SPEC.resolve() == PACKAGED.resolve()
    assert openapi_document() == PACKAGED.read_bytes()


async def test_served_on_the_admin_listener(proxy: Running, http: aiohttp.ClientSession) -> None:
    """GET /_ops/openapi.yaml answers the committed file as YAML, without a token; the main listener 404s it."""
    async with http.get(f"{proxy.admin_url}/_ops/openapi.yaml") as response:
        body = await response.read()
        assert response.status == 200
        assert response.content_type == "application/yaml" and response.charset == "utf-8"
    assert body == SPEC.read_bytes()
    async with http.get(f"{proxy.url}/_ops/openapi.yaml") as response:
        assert response.status == 404


async def test_every_admin_route_and_deal_endpoint_is_documented(proxy: Running) -> None:
    """The spec's operations are exactly the admin routes and the catalog's endpoints, named as the catalog names
    them, with its canonical stages and the statuses of its unreadable reasons."""
    doc = document()
    documented = operations(doc)
    admin = create_admin_app(proxy.app[PARTS].ops)
    routes = {(r.method, r.resource.canonical) for r in admin.router.routes()
              if r.method != "HEAD" and r.resource is not None}
    deals = {(method, e.path): e.name if index == 0 else f"{e.name}_{method.lower()}"
             for e in CATALOG.endpoints for index, method in enumerate(e.methods)}
    assert set(documented) == routes | set(deals)
    assert {key: documented[key]["operationId"] for key in deals} == deals
    schemas = doc["components"]["schemas"]
    assert schemas["Stage"]["enum"] == list(CATALOG.canonical)
    assert schemas["EndpointName"]["enum"] == list(CATALOG.endpoint_names)
    responses = doc["components"]["responses"]
    for name, status in (("Unreadable", 400), ("TooLarge", 413), ("UnsupportedMediaType", 415)):
        extra = responses[name]["content"]["application/problem+json"]["schema"]["allOf"][1]["properties"]
        reasons = extra["reason"].get("enum") or [extra["reason"]["const"]]
        assert sorted(reasons) == sorted(r for r, s in UNREADABLE_STATUS.items() if s == status), name
    for (method, path), operation in documented.items():
        mutation = method != "GET" and path.startswith("/_ops/")
        assert (operation.get("security") == [{"bearer": []}]) == mutation, (method, path)
        if mutation:
            assert {"401", "403"} <= set(operation["responses"]), (method, path)


@pytest.mark.parametrize(("percent", "status"), [(False, 400), (0, 200), (None, 200)])
async def test_percent_outside_enforce_is_absent_null_or_zero(proxy: Running, http: aiohttp.ClientSession,
                                                              percent: object, status: int) -> None:
    """What the spec says of percent for off/warn, held: schemathesis found `false` accepted (False == 0)."""
    async with http.put(f"{proxy.admin_url}/_ops/mode", headers={"Authorization": f"Bearer {TOKEN}"},
                        json={"endpoint": "*", "mode": "warn", "percent": percent, "reason": "x"}) as response:
        assert response.status == status, await response.text()


def schemathesis_command() -> list[str]:
    beside = Path(sys.executable).parent / "schemathesis"
    found = str(beside) if beside.exists() else shutil.which("schemathesis")
    assert found, "schemathesis is not installed: pip install -e '.[test]'"
    return [found]


async def schemathesis(url: str, tmp_path: Path, *args: str) -> None:
    """``schemathesis run`` of docs/openapi.yaml against ``url``; fails the test with its report on any failure.

    Its working directory is ``tmp_path``: its cache of failures and the example database stay out of the repo.
    """
    command = [*schemathesis_command(), "run", str(SPEC), "--url", url, "--checks", CHECKS,
               "--max-examples", MAX_EXAMPLES, "--phases", "examples,coverage,fuzzing", "--workers", "1",
               "--generation-database", "none", "--request-timeout", "10", "--no-color", *args]
    env = {**os.environ, "COLUMNS": "120"}
    proc = await asyncio.create_subprocess_exec(*command, cwd=tmp_path, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await proc.communicate()
    report = output.decode("utf-8", "replace")
    assert proc.returncode == 0, report
    generated = re.search(r"(\d+) generated", report)
    assert generated and int(generated[1]) > 0, report


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_schemathesis_admin_api(make_proxy: ProxyFactory, tmp_path: Path) -> None:
    """Every admin operation, with the token: no 5xx, documented statuses, bodies, content types and headers.

    The proxy runs a --config file (the built-in catalog's text) so that POST /_ops/reload can answer 200 too;
    the webhook's fuzzed alerts block and downgrade endpoints, which PUT /_ops/mode then meets as 409s.
    """
    config = tmp_path / "catalog.toml"
    config.write_text(DEFAULT_CATALOG_TOML, encoding="utf-8")
    run = await make_proxy(config_path=config)
    await schemathesis(run.admin_url, tmp_path, "--exclude-tag", "deals", "--header", f"Authorization: Bearer {TOKEN}")


def forwarded_stages(seen: Upstream) -> list[object]:
    """Every stage value the upstream received on the three deal endpoints."""
    stages: list[object] = []
    for request in seen.seen:
        path = request.path_qs.partition("?")[0]
        if request.method not in ("POST", "PATCH") or not path.startswith("/api/v1/deals"):
            continue
        body = json.loads(request.body)
        if path == "/api/v1/deals/import":
            stages += [deal["stage"] for deal in body["deals"]]
        elif "stage" in body:
            stages.append(body["stage"])
    return stages


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_schemathesis_deal_endpoints_in_enforce(make_proxy: ProxyFactory, upstream: Upstream,
                                                      http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """The three deal endpoints in enforce, in front of the recording upstream: every answer is a documented
    status with a conforming body (the 400/413/415/422 problems with their pointers, the relayed 2xx), and the
    upstream received canonical stages only (aliases rewritten, everything else refused).

    --max-body-bytes is 512 so that the larger generated bodies meet the 413 too.
    """
    run = await make_proxy(max_body_bytes=512)
    await set_mode(http, run, "*", "enforce")
    await schemathesis(run.url, tmp_path, "--include-tag", "deals")
    stages = forwarded_stages(upstream)
    assert stages, "nothing reached the upstream"
    assert set(stages) <= set(CATALOG.canonical), sorted(set(map(str, stages)) - set(CATALOG.canonical))
