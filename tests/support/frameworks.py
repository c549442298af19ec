"""Real upstream frameworks for the differential suite (tests/test_differential.py): the deals API written the
way each stack's users write it (tests/frameworks/), built and started on free loopback ports.

Each answers ``{"app": NAME, "handler": "create"|"update"|"import"|null, "stages": [...]}``: the values it would
store. ``scripts/test`` installs what they need (Go, Tomcat and Jackson, Ruby and Rack, PHP and Symfony's
HttpFoundation from Debian; Express from npm; Flask from PyPI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port
from tests.support.waiting import wait_until

HERE = Path(__file__).resolve().parent.parent / "frameworks"
JARS = ("tomcat10-embed-core", "jackson-databind", "jackson-core", "jackson-annotations", "jakarta-annotation-api")
READY_S = 60.0


class FrameworkError(RuntimeError):
    """A framework could not be built or started; the message says what is missing."""


@dataclass(frozen=True)
class Framework:
    """One stack: how to build it (once, into ``build``) and the command that serves it on ``port``."""

    name: str
    what: str  # the stack, as the docs name it
    build: Callable[[Path], None]
    command: Callable[[Path, int], list[str]]
    cwd: Path = HERE


def _need(program: str, package: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise FrameworkError(f"{program} is not installed ({package}): run scripts/test, which installs it")
    return found


def _nothing(build: Path) -> None:
    """Interpreted: nothing to build."""


def _go(build: Path) -> None:
    env = {**os.environ, "GOCACHE": str(build / "gocache"), "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    subprocess.run([_need("go", "golang-go"), "build", "-o", str(build / "deals-go"), "."], cwd=HERE / "go",
                   env=env, check=True, capture_output=True, timeout=300)


def _classpath() -> str:
    jars = [Path("/usr/share/java") / f"{jar}.jar" for jar in JARS]
    missing = [str(jar) for jar in jars if not jar.exists()]
    if missing:
        raise FrameworkError(f"missing {missing}: run scripts/test, which installs libtomcat10-embed-java and "
                             "libjackson2-databind-java")
    return ":".join(map(str, jars))


def _servlet(build: Path) -> None:
    out = build / "servlet"
    out.mkdir(exist_ok=True)
    subprocess.run([_need("javac", "default-jdk-headless"), "-nowarn", "-d", str(out), "-cp", _classpath(),
                    "Deals.java"], cwd=HERE / "servlet", check=True, capture_output=True, timeout=300)


def _express(build: Path) -> None:
    _need("node", "nodejs")
    if not (HERE / "express" / "node_modules" / "express").is_dir():
        raise FrameworkError("tests/frameworks/express has no node_modules: run scripts/test (npm ci)")


FRAMEWORKS: tuple[Framework, ...] = (
    Framework("aiohttp", "aiohttp 3 (Python)", _nothing,
              lambda build, port: [sys.executable, str(HERE / "aiohttp_app.py"), str(port)]),
    Framework("flask", "Flask 3 on Werkzeug (Python)", _nothing,
              lambda build, port: [sys.executable, str(HERE / "flask_app.py"), str(port)]),
    Framework("express", "Express 4 with method-override (Node.js)", _express,
              lambda build, port: ["node", "app.js", str(port)], HERE / "express"),
    Framework("go", "Go net/http and encoding/json", _go, lambda build, port: [str(build / "deals-go"), str(port)]),
    Framework("servlet", "Tomcat 10 servlet, Jackson, Spring's _method rule (Java)", _servlet,
              lambda build, port: ["java", "-cp", f"{_classpath()}:{build / 'servlet'}", "Deals", str(port),
                                   str(build / "tomcat")]),
    Framework("rack", "Rack 2 on WEBrick, Rails-style parameters (Ruby)", _nothing,
              lambda build, port: [_need("ruby", "ruby"), "deals.rb", str(port)], HERE / "rack"),
    Framework("php", "Symfony HttpFoundation, Laravel-style input (PHP)", _nothing,
              lambda build, port: [_need("php", "php-cli"), "-S", f"127.0.0.1:{port}", "router.php"], HERE / "php"),
)


@dataclass
class Started:
    """A running framework."""

    framework: Framework
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start(framework: Framework, build: Path) -> Started:
    """Build (if needed) and start ``framework``; returns once it answers ``GET /``."""
    framework.build(build)
    port = free_port()
    log = build / f"{framework.name}.log"  # a file, not a pipe: PHP's server logs every connection
    with log.open("wb") as sink:
        process = subprocess.Popen(framework.command(build, port), cwd=framework.cwd, stdout=sink, stderr=sink,
                                   stdin=subprocess.DEVNULL)
    return Started(framework, port, process, log)


def wait_ready(started: Started) -> None:
    """Until ``GET /`` answers 200; FrameworkError with its stderr if it exits or takes over READY_S."""

    def answers() -> bool:
        if started.process.poll() is not None:
            output = started.log.read_text(errors="replace")[-2000:]
            raise FrameworkError(f"{started.framework.name} exited: {output}")
        try:
            with urllib.request.urlopen(started.url + "/", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    try:
        wait_until(answers, timeout_s=READY_S, interval_s=0.2, what=f"{started.framework.name} to answer GET /")
    except AssertionError:
        raise FrameworkError(f"{started.framework.name} did not answer on {started.url} within {READY_S:g} s") \
            from None


def stop(started: Started) -> None:
    started.process.terminate()
    try:
        started.process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        started.process.kill()
        started.process.communicate()
