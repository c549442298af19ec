"""Processes for the end-to-end benchmark: nginx, stagegate, the bare proxy, redis, wrk, the open-loop generator.

Servers are pinned to CPU 0 and load generators to CPU 1 (``taskset``) so the
proxy, not the client, is the bottleneck and runs do not steal each other's core.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import orjson

from tests.support.ports import free_port as free_port
from tests.support.ports import wait_for_port
from tests.support.proxies import children

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
SERVER_CPUS = "0"
CLIENT_CPUS = "1"
TOKEN = "bench-token"


def wait_port(port: int, timeout_s: float = 15) -> None:
    wait_for_port(port, timeout_s)


def pinned(cpus: str, command: Sequence[str]) -> list[str]:
    return ["taskset", "-c", cpus, *command] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else [
        *command]


@contextmanager
def process(command: Sequence[str], port: int, log: Path, env: dict[str, str] | None = None,
            cpus: str = SERVER_CPUS) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(pinned(cpus, command), stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, cwd=REPO)
    try:
        wait_port(port)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def nginx_conf(workdir: Path, port: int, body: str, workers: int = 1) -> Path:
    """An nginx config: ``return 200`` (the upstream) or ``proxy_pass`` (the peer we compare with)."""
    conf = workdir / f"nginx-{port}.conf"
    conf.write_text(f"""
worker_processes {workers};
daemon off;
master_process {"on" if workers > 1 else "off"};
pid {workdir}/nginx-{port}.pid;
error_log {workdir}/nginx-{port}.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/body-{port};
  proxy_temp_path {workdir}/proxy-{port};
  keepalive_requests 1000000;
  {body}
}}
""")
    return conf


def nginx_upstream(workdir: Path, port: int) -> list[str]:
    body = f"""server {{ listen 127.0.0.1:{port}; location / {{
      client_body_buffer_size 128k; client_max_body_size 8m; default_type application/json;
      return 200 '{{"ok":true}}'; }} }}"""
    return ["nginx", "-c", str(nginx_conf(workdir, port, body)), "-p", str(workdir)]


def nginx_proxy(workdir: Path, port: int, upstream_port: int, workers: int = 1) -> list[str]:
    body = f"""upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port}; location / {{
      proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}"""
    return ["nginx", "-c", str(nginx_conf(workdir, port, body, workers)), "-p", str(workdir)]


def stagegate(port: int, admin: int, upstream_port: int, *extra: str) -> list[str]:
    return [PY, "-m", "proxy", "--upstream", f"http://127.0.0.1:{upstream_port}", "--listen", f"127.0.0.1:{port}",
            "--admin-listen", f"127.0.0.1:{admin}", *extra]


def set_mode(admin: int, endpoint: str, mode: str, percent: float | None = None) -> None:
    body: dict[str, object] = {"endpoint": endpoint, "mode": mode, "reason": "bench"}
    if percent is not None:
        body["percent"] = percent
    request = urllib.request.Request(f"http://127.0.0.1:{admin}/_ops/mode", data=orjson.dumps(body), method="PUT",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def wrk(url: str, body_file: Path, seconds: float, connections: int = 32) -> float:
    """Requests/s at saturation (wrk, one thread, pinned to the client CPU)."""
    script = body_file.with_suffix(".lua")
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*a")\nf:close()\n')
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script), url]
    out = subprocess.run(pinned(CLIENT_CPUS, command), capture_output=True, text=True, timeout=seconds + 30).stdout
    match = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if match is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} error responses from {url}")
    return float(match.group(1))


def open_loop(port: int, path: str, body_file: Path, rate: int, seconds: float) -> dict[str, float]:
    """p50/p99 at a fixed rate from bench/openloop.py (pinned to the client CPU)."""
    out = subprocess.run(pinned(CLIENT_CPUS, [PY, str(REPO / "bench" / "openloop.py"), "127.0.0.1", str(port), path,
                                              str(body_file), str(rate), str(seconds)]),
                         capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    result: dict[str, float] = orjson.loads(out)
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (all its threads) and its children (nginx or stagegate workers) have
    used so far."""
    ticks = 0
    for one in [pid, *children(pid)]:
        fields = Path(f"/proc/{one}/stat").read_text().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident set size of a process and its children (workers), in KiB."""
    total = 0
    for one in [pid, *children(pid)]:
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total
