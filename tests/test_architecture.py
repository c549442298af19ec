"""The architecture as tests: import contracts that catch a bad import, the wheel's contents, a pinned private hook."""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from aiohttp import web

from proxy.dataplane.forwarding import RelayedStreamResponse
from tests.support.proxies import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=root, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_import_contracts_hold() -> None:
    """Every contract in .importlinter is kept by the code as it is."""
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "expected"), [
    ("proxy/dataplane/body.py", "import proxy.ops.admin", "proxy.dataplane.body -> proxy.ops.admin"),
    ("proxy/modes/view.py", "import aiohttp", "proxy.modes.view -> aiohttp"),
    ("proxy/catalog/paths.py", "import proxy.shared.logs", "proxy.catalog.paths -> proxy.shared.logs"),
    ("tools/consumers/audit.py", "import proxy.dataplane.handler", "tools.consumers.audit -> proxy.dataplane.handler"),
    # the pure catalog: no standard-library I/O either
    ("proxy/catalog/paths.py", "import socket", "proxy.catalog.paths -> socket"),
    ("proxy/catalog/stages.py", "import asyncio", "proxy.catalog.stages -> asyncio"),
    ("proxy/catalog/keys.py", "import subprocess", "proxy.catalog.keys -> subprocess"),
    # tools/ layers, and argparse only in the command layer
    ("tools/shared/errors.py", "import tools.clients.db", "tools.shared.errors -> tools.clients.db"),
    ("tools/clients/prom.py", "import tools.rollout.gate", "tools.clients.prom -> tools.rollout.gate"),
    ("tools/migration/engine.py", "import tools.cli.migrate", "tools.migration.engine -> tools.cli.migrate"),
    ("tools/migration/engine.py", "import argparse", "tools.migration.engine -> argparse"),
    ("tools/rollout/normalize.py", "import argparse", "tools.rollout.normalize -> argparse"),
    # what ships imports no test; bench/ and the test support package import no test module
    ("tools/cli/ops.py", "import tests.support.ports", "tools.cli.ops -> tests.support.ports"),
    ("bench/guard.py", "import tests.test_migrate", "bench.guard -> tests.test_migrate"),
    ("tests/support/ports.py", "import tests.test_rollout", "tests.support.ports -> tests.test_rollout"),
])
def test_a_forbidden_import_fails_and_is_named(tmp_path: Path, module: str, line: str, expected: str) -> None:
    """A copy of the code with one forbidden import added fails the check, which names that import."""
    for part in ("proxy", "tools", "bench", "tests"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # noqa: E402\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout
    assert "BROKEN" in result.stdout and expected in result.stdout, result.stdout


def test_every_test_module_is_in_the_support_contract() -> None:
    """The support-not-tests contract lists test modules one by one (import-linter has no wildcard for
    "test_*"): a new tests/test_*.py must be added there, and this test says which."""
    listed = set(re.findall(r"^\s+tests\.(test_\w+)$", (REPO / ".importlinter").read_text(), flags=re.M))
    present = {path.stem for path in (REPO / "tests").glob("test_*.py")}
    assert present - listed == set(), f"add to .importlinter's support-not-tests: {sorted(present - listed)}"
    assert listed - present == set(), f"no longer exist: {sorted(listed - present)}"


def test_the_wheel_ships_only_the_proxy_and_the_tools(tmp_path: Path) -> None:
    """The built wheel holds the packages proxy/ and tools/ (and their data), nothing of tests/ or bench/."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    for part in ("proxy", "tools", "tests", "bench"):  # tests/ and bench/ present, to show they are left out
        shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                             str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [wheel] = tmp_path.glob("stagegate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"proxy", "tools"}
    assert "proxy/py.typed" in names and "tools/migration/migrate.sql" in names
    assert {f"proxy/{part}/__init__.py" for part in ("app", "catalog", "dataplane", "modes", "ops", "shared")} <= set(
        names)


def test_aiohttp_private_hook_is_still_there() -> None:
    """RelayedStreamResponse overrides aiohttp's private _prepare_headers (no public hook on the low-level server).

    If this fails after an aiohttp upgrade, re-check proxy/dataplane/forwarding.py (an untyped upstream body
    must stay untyped: tests/test_upstream_http.py::test_no_content_type_is_invented) and the pin in
    pyproject.toml.
    """
    start = inspect.getsource(web.StreamResponse._start)
    prepare = inspect.getsource(web.StreamResponse._prepare_headers)
    assert "await self._prepare_headers()" in start
    assert start.index("_prepare_headers") < start.index("_write_headers")
    assert "application/octet-stream" in prepare  # still invented there: the override is still needed
    assert RelayedStreamResponse._prepare_headers is not web.StreamResponse._prepare_headers
