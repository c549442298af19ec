"""The full benchmark: validator, end-to-end against nginx and a bare aiohttp proxy, propagation, memory, profile.

Run:  ./scripts/bench            (or .venv/bin/python bench/e2e.py [--quick])
Writes bench/results/README.md (tables) and bench/results/results.json.
Every figure is a median over repetitions that alternate targets in one run;
ratios compare targets measured side by side, so a noisy machine moves both.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import platform
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import validator, worst
from bench.harness import (
    PY,
    REPO,
    TOKEN,
    cpu_seconds,
    free_port,
    nginx_proxy,
    nginx_upstream,
    open_loop,
    process,
    rss_kib,
    set_mode,
    stagegate,
    wait_port,
    wrk,
)

RESULTS = REPO / "bench" / "results"
BODY_PAD = 1024


def body(stage: str) -> bytes:
    doc = {"name": "Acme renewal", "amount": 1200, "owner": "alice@example.com", "stage": stage, "notes": ""}
    doc["notes"] = "n" * (BODY_PAD - len(orjson.dumps(doc)))
    return orjson.dumps(doc)


class Bench:
    """Owns the servers of one run and measures targets against them."""

    def __init__(self, work: Path, stack: ExitStack, workers: int) -> None:
        self.work = work
        self.ports = {name: free_port() for name in ("upstream", "nginx", "bare", "sg", "sg_admin", "sg2",
                                                     "sg2_admin", "redis")}
        p = self.ports
        self.canonical = work / "canonical.json"
        self.canonical.write_bytes(body("closed_won"))
        self.alias = work / "alias.json"
        self.alias.write_bytes(body("Closed Won"))
        env = {"STAGE_OPS_TOKEN": TOKEN}
        upstream = stack.enter_context(process(nginx_upstream(work, p["upstream"]), p["upstream"],
                                               work / "upstream.log"))
        nginx = stack.enter_context(process(nginx_proxy(work, p["nginx"], p["upstream"]), p["nginx"],
                                            work / "nginx.log"))
        bare = stack.enter_context(process([PY, str(REPO / "bench" / "bare_proxy.py"), str(p["bare"]),
                                            f"http://127.0.0.1:{p['upstream']}"], p["bare"], work / "bare.log"))
        command = stagegate(p["sg"], p["sg_admin"], p["upstream"], "--log-level", "WARNING")
        self.sg = stack.enter_context(process(command, p["sg"], work / "stagegate.log", env))
        wait_port(p["sg_admin"])
        self.workers = workers
        # whose CPU a target's requests cost (the process and its children: nginx's and stagegate's workers)
        self.pids = {p["upstream"]: upstream.pid, p["nginx"]: nginx.pid, p["bare"]: bare.pid,
                     p["sg"]: self.sg.pid}
        if workers > 1:
            stack.enter_context(process(["redis-server", "--port", str(p["redis"]), "--save", "", "--appendonly", "no"],
                                        p["redis"], work / "redis.log"))
            extra = ("--workers", str(workers), "--redis-url", f"redis://127.0.0.1:{p['redis']}/0", "--log-level",
                     "WARNING")
            sg2 = stack.enter_context(process(stagegate(p["sg2"], p["sg2_admin"], p["upstream"], *extra), p["sg2"],
                                              work / "stagegate2.log", env, cpus="0,1"))
            self.pids[p["sg2"]] = sg2.pid
            wait_port(p["sg2_admin"])

    def targets(self) -> dict[str, tuple[int, str, Path, Callable[[], None]]]:
        """name -> (port, path, body, setup)."""
        p, nothing = self.ports, (lambda: None)

        def mode(name: str, admin: str = "sg_admin") -> Callable[[], None]:
            return lambda: set_mode(p[admin], "create_deal", name)

        targets = {
            "upstream direct (nginx return 200)": (p["upstream"], "/api/v1/deals", self.canonical, nothing),
            "nginx proxy_pass": (p["nginx"], "/api/v1/deals", self.canonical, nothing),
            "bare aiohttp proxy": (p["bare"], "/api/v1/deals", self.canonical, nothing),
            "stagegate pass-through": (p["sg"], "/other", self.canonical, nothing),
            "stagegate off": (p["sg"], "/api/v1/deals", self.canonical, mode("off")),
            "stagegate warn": (p["sg"], "/api/v1/deals", self.canonical, mode("warn")),
            "stagegate enforce": (p["sg"], "/api/v1/deals", self.canonical, mode("enforce")),
            "stagegate enforce + alias rewrite": (p["sg"], "/api/v1/deals", self.alias, mode("enforce")),
        }
        if self.workers > 1:
            targets[f"stagegate enforce --workers {self.workers}"] = (p["sg2"], "/api/v1/deals", self.canonical,
                                                                      mode("enforce", "sg2_admin"))
        return targets

    def measure(self, reps: int, seconds: float, rate: int) -> dict[str, dict[str, Any]]:
        samples: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
        for rep in range(reps):
            for name, (port, path, payload, setup) in self.targets().items():
                setup()
                before = cpu_seconds(self.pids[port])
                served = wrk(f"http://127.0.0.1:{port}{path}", payload, seconds)
                samples[name]["rps"].append(served)
                # CPU per request at saturation: what req/s measures when the server has its core to itself, and
                # steadier on a shared host (time another guest takes is not this process's CPU time)
                samples[name]["cpu_us"].append((cpu_seconds(self.pids[port]) - before) * 1e6
                                               / (served * max(1, round(seconds))))
                fixed = open_loop(port, path, payload, rate, seconds)
                for key in ("p50_ms", "p99_ms", "errors", "send_late_p99_ms"):
                    samples[name][key].append(fixed[key])
                print(f"  rep {rep + 1}/{reps} {name}: {samples[name]['rps'][-1]:.0f} req/s, "
                      f"p50 {fixed['p50_ms']} ms, p99 {fixed['p99_ms']} ms", flush=True)
        return {name: {key: statistics.median(values) for key, values in metrics.items()}
                for name, metrics in samples.items()}


async def _propagation(admin_a: int, admin_b: int, changes: int) -> list[float]:
    timings = []
    modes = ("warn", "enforce", "off")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session:
        for i in range(changes):
            target = modes[i % 3]
            started = time.perf_counter()
            async with session.put(f"http://127.0.0.1:{admin_a}/_ops/mode", headers=auth,
                                   json={"endpoint": "update_deal", "mode": target, "reason": "propagation"}) as r:
                assert r.status == 200
            while True:
                async with session.get(f"http://127.0.0.1:{admin_b}/_ops/mode") as r:
                    if (await r.json())["endpoints"]["update_deal"]["mode"] == target:
                        break
            timings.append((time.perf_counter() - started) * 1000)
    return timings


def propagation(work: Path, changes: int) -> dict[str, float]:
    """PUT on one replica until the other applies it, over Redis pub/sub (poll backstop set to 5 s)."""
    redis_port, a, a_admin, b, b_admin, up = (free_port() for _ in range(6))
    env = {"STAGE_OPS_TOKEN": TOKEN}
    extra = ("--redis-url", f"redis://127.0.0.1:{redis_port}/0", "--refresh-ms", "5000", "--log-level", "WARNING")
    with ExitStack() as stack:
        stack.enter_context(process(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
                                    redis_port, work / "redis-prop.log"))
        stack.enter_context(process(nginx_upstream(work, up), up, work / "up-prop.log"))
        stack.enter_context(process(stagegate(a, a_admin, up, *extra), a, work / "prop-a.log", env))
        stack.enter_context(process(stagegate(b, b_admin, up, *extra), b, work / "prop-b.log", env))
        wait_port(a_admin)
        wait_port(b_admin)
        time.sleep(0.5)
        timings = asyncio.run(_propagation(a_admin, b_admin, changes))
    ordered = sorted(timings)
    return {"changes": changes, "p50_ms": round(statistics.median(timings), 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "max_ms": round(ordered[-1], 2)}


async def _small_while_large(port: int, large: bytes, rounds: int) -> dict[str, float]:
    delays: list[float] = []
    large_s: list[float] = []
    async with aiohttp.ClientSession() as session:
        async def big() -> None:
            started = time.perf_counter()
            async with session.post(f"http://127.0.0.1:{port}/api/v1/deals/import", data=large,
                                    headers={"Content-Type": "application/json"}) as response:
                await response.read()
            large_s.append(time.perf_counter() - started)

        async def small(stop: asyncio.Event) -> None:
            while not stop.is_set():
                started = time.perf_counter()
                async with session.get(f"http://127.0.0.1:{port}/ping") as response:
                    await response.read()
                delays.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.01)

        for _ in range(rounds):
            stop = asyncio.Event()
            prober = asyncio.create_task(small(stop))
            await asyncio.gather(*(big() for _ in range(4)))
            stop.set()
            await prober
    ordered = sorted(delays)
    return {"rounds": rounds, "small_requests": len(delays), "small_p50_ms": round(statistics.median(ordered), 2),
            "small_p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "small_max_ms": round(ordered[-1], 2), "large_median_s": round(statistics.median(large_s), 3)}


def hostile(bench: Bench, rounds: int) -> dict[str, float]:
    """Small requests while four of the worst 1 MiB bodies (the token-scanner case) are inspected in enforce."""
    large = validator.WORST["1 MiB worst: nested stage keys (token scanner)"]
    with enforcing(bench):
        return asyncio.run(_small_while_large(bench.ports["sg"], large, rounds))


@contextmanager
def enforcing(bench: Bench) -> Iterator[None]:
    """Every endpoint of the main stagegate in enforce for the block, off again after it."""
    set_mode(bench.ports["sg_admin"], "*", "enforce")
    try:
        yield
    finally:
        set_mode(bench.ports["sg_admin"], "*", "off")


# Istio's published figures for its Envoy sidecar (istio.io, "Performance and Scalability", 1.2x): per 1000
# requests per second through the proxy, 0.35 vCPU and 40 MB; 2.65 ms added at p90 (1 KB payloads, 16 client
# connections, the client's and the server's sidecars together, mTLS and telemetry on).
ENVOY = {"vcpu_per_1k": 0.35, "rss_mib": 40.0, "p90_added_ms": 2.65}


def sidecar(bench: Bench, rate: int, seconds: float, reps: int) -> dict[str, dict[str, float]]:
    """What a sidecar costs as users compare it: CPU per 1000 req/s (CPU seconds per 1000 requests), RSS, and
    p90/p99 added over the upstream at ``rate`` req/s (open loop), stagegate in enforce on every endpoint."""
    p = bench.ports
    targets = {"nginx proxy_pass": p["nginx"], "bare aiohttp proxy": p["bare"], "stagegate enforce": p["sg"]}
    samples: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    with enforcing(bench):
        for _ in range(reps):
            base = open_loop(p["upstream"], "/api/v1/deals", bench.canonical, rate, seconds)
            for name, port in targets.items():
                pid = bench.pids[port]
                before = cpu_seconds(pid)
                fixed = open_loop(port, "/api/v1/deals", bench.canonical, rate, seconds)
                used = cpu_seconds(pid) - before
                one = samples[name]
                one["vcpu_per_1k"].append(used / fixed["requests"] * 1000)
                one["rss_mib"].append(rss_kib(pid) / 1024)
                one["p90_added_ms"].append(fixed["p90_ms"] - base["p90_ms"])
                one["p99_added_ms"].append(fixed["p99_ms"] - base["p99_ms"])
                one["errors"].append(fixed["errors"])
                print(f"  sidecar {name}: {one['vcpu_per_1k'][-1]:.3f} vCPU per 1k req/s, "
                      f"+{one['p90_added_ms'][-1]:.2f} ms p90", flush=True)
    return {name: {key: round(statistics.median(values), 3) for key, values in metrics.items()}
            for name, metrics in samples.items()}


def worst_end_to_end(bench: Bench, repeats: int) -> list[dict[str, Any]]:
    """Each of the validator's worst 1 MiB bodies sent ``repeats`` times to import_deals in enforce: the proxy
    process's CPU per request (read, inspect in the worker thread, answer or forward), mean over the repeats (the
    kernel counts CPU in 10 ms ticks)."""
    p = bench.ports
    rows = []
    with enforcing(bench):
        for name, raw in validator.WORST.items():
            statuses = set()
            before = cpu_seconds(bench.sg.pid)
            for _ in range(repeats):
                request = urllib.request.Request(f"http://127.0.0.1:{p['sg']}/api/v1/deals/import", data=raw,
                                                 method="POST", headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=30) as answer:
                        statuses.add(answer.status)
                except urllib.error.HTTPError as refused:
                    statuses.add(refused.code)
            cpu_ms = (cpu_seconds(bench.sg.pid) - before) * 1000 / repeats
            rows.append({"case": name, "bytes": len(raw), "status": sorted(statuses), "cpu_ms": round(cpu_ms, 1)})
            print(f"  {name}: {cpu_ms:.1f} ms of proxy CPU per request", flush=True)
    return rows


def memory(bench: Bench, total: int) -> list[dict[str, int]]:
    """stagegate RSS at idle, then after every quarter of ``total`` enforce requests."""
    port, pid = bench.ports["sg"], bench.sg.pid
    set_mode(bench.ports["sg_admin"], "create_deal", "enforce")
    points = [{"requests": 0, "rss_kib": rss_kib(pid)}]
    done = 0
    while done < total:
        started = time.monotonic()
        rate = wrk(f"http://127.0.0.1:{port}/api/v1/deals", bench.canonical, 10)
        done += int(rate * (time.monotonic() - started))
        if done >= (len(points)) * total / 4 or done >= total:
            points.append({"requests": done, "rss_kib": rss_kib(pid)})
            print(f"  memory: {done} requests, RSS {points[-1]['rss_kib']} KiB", flush=True)
    return points


def profile(bench: Bench, seconds: int) -> list[tuple[str, float, float]]:
    """py-spy samples of stagegate under enforce load: (function, % inclusive, % self), busiest first.

    Shares are of the samples that caught Python code running. Under uvloop a
    task's coroutine frames hang off the C event loop, so the interpreter's
    entry chain shows only above synchronous callbacks: it is left out.
    """
    out = bench.work / "profile.txt"
    set_mode(bench.ports["sg_admin"], "create_deal", "enforce")
    spy = subprocess.Popen([str(Path(PY).parent / "py-spy"), "record", "--pid", str(bench.sg.pid), "--duration",
                            str(seconds), "--rate", "200", "--format", "raw", "--nonblocking", "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    wrk(f"http://127.0.0.1:{bench.ports['sg']}/api/v1/deals", bench.canonical, seconds)
    spy.wait(seconds + 30)
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [frame.split(" (")[0] for frame in stack.split(";") if frame]
        if not frames:
            continue
        count = int(count_text)
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    entry = {"_run_module_as_main", "_run_code", "<module>", "main", "run", "Runner.run"}
    busy = [(name, count) for name, count in inclusive.most_common() if name not in entry][:25]
    return [(name, round(100 * count / total, 1), round(100 * own[name] / total, 1)) for name, count in busy]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return f"{cpu}, {Path('/proc/cpuinfo').read_text().count('processor')} CPUs, {platform.python_implementation()} " \
           f"{platform.python_version()}, {platform.system()} {platform.release()}"


def render(results: dict[str, Any]) -> str:
    e2e = results["e2e"]
    up, bare, ngx = (e2e[k] for k in ("upstream direct (nginx return 200)", "bare aiohttp proxy", "nginx proxy_pass"))
    lines = [
        "# stagegate benchmark results", "",
        f"Machine: {results['machine']}. Run {results['when']} with `{results['command']}`; "
        f"{results['reps']} repetitions alternating targets, medians. Servers pinned to CPU 0, load to CPU 1.", "",
        "## Validator (body → classification → decision, per call, µs)", "",
        "| case | bytes | median | p99 | orjson.loads median | ratio | CPU per call |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[f"| {r['case']} | {r['bytes']} | {r['validator_median_us']} | {r['validator_p99_us']} | "
          f"{r['orjson_median_us']} | {r['median_ratio']}× | {r.get('cpu_ms_per_call', '-')} ms |"
          for r in results["validator"]], "",
        "The `1 MiB worst` rows are the costliest bodies of `--max-body-bytes` found (docs/proxy.md, hostile "
        "inputs, and the fuzzer below); the goal is 100 ms of CPU. From 64 KiB a body is inspected in a worker "
        "thread, with Python's cyclic collector paused.", "",
        "**Why this harness and a plain measurement used to differ** (91/141/202 ms here on 2026-11-26 against "
        "60–160 ms timed one call at a time): the CPU column is the mean over a loop of calls, and while the "
        "collector ran during the parse a body of half a million containers set off hundreds of collections, "
        "each walking everything alive — more in a loop whose previous bodies' garbage and growing heap were "
        "there too, less in a best-of-three of single calls. With the collector paused while a large body is "
        "read, the median and the CPU per call above agree. And absolute figures move with the host between runs "
        "(1 KB canonical: 2.41 µs on 2026-11-26, an AMD host; 2.82 and 5.37 µs in two runs on 2026-12-05 on the "
        "same Xeon host): compare the ratios measured in one run (to orjson, to the bare aiohttp proxy), which is "
        "what the CI guard does; an absolute figure is right only for its run.", "",
        f"## End to end (1 KB JSON POST; saturation: wrk -t1 -c32; latency: open loop at {results['rate']} req/s)", "",
        "`CPU µs/request` is the server's CPU time (all its threads and workers) over the requests wrk counted at "
        "saturation, and `× bare (CPU)` the bare aiohttp proxy's figure over it: on a dedicated core the two "
        "ratios agree; on a shared host, where another guest's time lowers a run's req/s but is not the "
        "server's CPU time, the CPU ratio is the steadier one.", "",
        "| target | req/s | × bare aiohttp | × nginx proxy_pass | CPU µs/request | × bare (CPU) | p50 ms | p99 ms | "
        "p50 added over upstream ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in e2e.items():
        cpu = m.get("cpu_us")
        cpu_cells = f"{cpu:.1f} | {bare['cpu_us'] / cpu:.2f}" if cpu and bare.get("cpu_us") else "– | –"
        lines.append(f"| {name} | {m['rps']:.0f} | {m['rps'] / bare['rps']:.2f} | {m['rps'] / ngx['rps']:.2f} | "
                     f"{cpu_cells} | {m['p50_ms']:.3f} | {m['p99_ms']:.3f} | {m['p50_ms'] - up['p50_ms']:+.3f} |")
    if "sidecar" in results:
        lines += ["", f"## Sidecar cost at {results['rate']} req/s (as users compare sidecars)", "",
                  f"Open loop at {results['rate']} req/s, 1 KB JSON POSTs to `create_deal`, every endpoint in "
                  "`enforce`; CPU is the proxy's (all threads and workers) per 1000 requests, i.e. vCPU at 1000 "
                  "req/s; latency added over the upstream measured alone in the same repetition; medians of the "
                  "repetitions.", "",
                  "| proxy | vCPU per 1000 req/s | RSS MiB | p90 added ms | p99 added ms |",
                  "|---|---:|---:|---:|---:|"]
        for name, m in results["sidecar"].items():
            lines.append(f"| {name} | {m['vcpu_per_1k']:.3f} | {m['rss_mib']:.0f} | {m['p90_added_ms']:+.2f} | "
                         f"{m['p99_added_ms']:+.2f} |")
        lines.append(f"| Envoy in Istio (published) | {ENVOY['vcpu_per_1k']:.2f} | {ENVOY['rss_mib']:.0f} | "
                     f"{ENVOY['p90_added_ms']:+.2f} | – |")
        lines += ["", "Envoy's figures (istio.io, Performance and Scalability) are for a sidecar pair on a service "
                  "mesh call — mutual TLS, routing, retries and telemetry, client and server sidecars together in "
                  "the latency — measured on their cluster; stagegate is one plain-HTTP hop on loopback that parses, "
                  "classifies and (in `enforce`) rewrites or refuses JSON bodies on three endpoints and streams the "
                  "rest. The memory column is the process's whole RSS at this rate, not a per-1000-req/s slope (it "
                  "stays flat: see Memory). The Kubernetes requests are derived from the stagegate row "
                  "(deploy/kubernetes/README.md, Sizing)."]
    if "worst_e2e" in results:
        lines += ["", "## Worst 1 MiB bodies end to end (enforce, `import_deals`)", "",
                  "Each body of the validator's worst set sent several times; the proxy process's CPU per request "
                  "(reading it, inspecting it in the worker thread, answering or forwarding it), mean. Goal: "
                  "≤ 120 ms.", "", "| case | bytes | status | proxy CPU per request |", "|---|---:|---|---:|",
                  *[f"| {r['case']} | {r['bytes']} | {', '.join(map(str, r['status']))} | {r['cpu_ms']} ms |"
                    for r in results["worst_e2e"]]]
    if "worst_search" in results:
        found = results["worst_search"]
        lines += ["", "## Searching for costlier bodies (bench/worst.py)", "",
                  f"An evolutionary fuzzer maximising validator CPU per byte tried {found['tried']} element shapes "
                  f"in {found['seconds']:g} s (`.venv/bin/python -m bench.worst --seconds {found['seconds']:g}`); "
                  "the costliest, timed at 1 MiB (best of three):", "",
                  "| shape | bytes | validator CPU |", "|---|---:|---:|",
                  *[f"| {r['shape']} | {r['bytes']} | {r['cpu_ms']} ms |" for r in found["rows"]]]
    if "propagation" in results:
        prop = results["propagation"]
        lines += ["", "## Mode propagation (PUT on replica A → applied on replica B, Redis pub/sub)", "",
                  f"{prop['changes']} changes: p50 {prop['p50_ms']} ms, p99 {prop['p99_ms']} ms, "
                  f"max {prop['max_ms']} ms (includes the PUT round trip and the polling of B)."]
    if "hostile" in results:
        h = results["hostile"]
        lines += ["", "## Small requests while four worst-case 1 MiB bodies are inspected (enforce)", "",
                  f"{h['rounds']} rounds of 4 concurrent bodies (each {h['large_median_s']} s end to end, median); "
                  f"{h['small_requests']} small GETs meanwhile: p50 {h['small_p50_ms']} ms, p99 {h['small_p99_ms']} "
                  f"ms, max {h['small_max_ms']} ms (goal: no small request delayed more than 250 ms). RSS "
                  f"{h.get('rss_kib_before', '-')} KiB before, {h.get('rss_kib_after', '-')} KiB after (the heap "
                  "grows once to hold the bodies; the inspection thread runs one body at a time)."]
    if "memory" in results:
        lines += ["", "## Memory (stagegate RSS under enforce load)", "", "| requests | RSS KiB |", "|---:|---:|",
                  *[f"| {p['requests']} | {p['rss_kib']} |" for p in results["memory"]]]
    if "profile" in results:
        lines += ["", "## Where the time goes (py-spy under enforce load; % of samples with Python running)", "",
                  "`itself` is time in the function's own code; `Connection._write` (upstream) and "
                  "`StreamWriter._writelines` (client) are the socket sends.", "",
                  "| function | with callees | itself |", "|---|---:|---:|",
                  *[f"| `{name}` | {share} | {own} |" for name, share, own in results["profile"]],
                  "", "**What stands between enforce and 1.6× the bare aiohttp proxy.** Validation is not most of "
                  "a request: stagegate's own pass-through path — no body read, no validation — measures 1.5–1.6× "
                  "the bare proxy (table above: CPU µs/request), and enforce costs 8–10 µs of CPU per request "
                  "more (0.9× of pass-through). The profile is flat: the two socket sends, aiohttp's request and "
                  "response handling (its protocol, `BaseRequest`, `Response.prepare`/`write_eof`) and the event "
                  "loop take most of the samples, and stagegate's Python — routing, the verdict, the upstream "
                  "client, the metrics — is a spread of 1–4 % items. Timed alone in a loop the same code is 2–3× "
                  "faster than under load (a 1 KB alias body: 12 µs inspected and rewritten in a loop, ~30 µs more "
                  "CPU per request than a canonical one under load): between two requests the interpreter's "
                  "caches are cold. Per-request timers, coroutines and counters have been cut where the "
                  "measurement showed them (each 1–2 %); what is left to win is in aiohttp's server path, which the "
                  "proxy keeps."]
    return "\n".join(lines) + "\n"


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="stagegate-bench-") as name:
        yield Path(name)


def main() -> int:
    parser = argparse.ArgumentParser(description="stagegate benchmark harness")
    parser.add_argument("--quick", action="store_true", help="short runs, no memory soak (a minute or two)")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None, help="per wrk and open-loop run")
    parser.add_argument("--rate", type=int, default=1000, help="fixed rate for latency (req/s)")
    parser.add_argument("--workers", type=int, default=2, help="also measure stagegate --workers N (needs redis)")
    parser.add_argument("--memory-requests", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    seconds = args.seconds or (2 if args.quick else 5)
    results: dict[str, Any] = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "command": "./scripts/bench" + (" --quick" if args.quick else ""), "reps": reps,
                               "rate": args.rate}
    print("validator micro-benchmark …", flush=True)
    results["validator"] = validator.measure(args.quick)
    print("searching for costlier bodies (bench/worst.py) …", flush=True)
    search_s = 10.0 if args.quick else 45.0
    found = worst.search(search_s, 1)
    results["worst_search"] = {"seconds": search_s, "tried": len(found), "rows": worst.confirm(found)}
    with workdir() as work, ExitStack() as stack:
        bench = Bench(work, stack, args.workers)
        print("end to end …", flush=True)
        results["e2e"] = bench.measure(reps, seconds, args.rate)
        print(f"sidecar cost at {args.rate} req/s …", flush=True)
        results["sidecar"] = sidecar(bench, args.rate, 5 if args.quick else 10, 1 if args.quick else 3)
        print("worst bodies end to end …", flush=True)
        results["worst_e2e"] = worst_end_to_end(bench, 3 if args.quick else 8)
        print("propagation …", flush=True)
        results["propagation"] = propagation(work, 20 if args.quick else 100)
        if not args.quick:
            print("profile …", flush=True)
            results["profile"] = profile(bench, 8)
            print("memory …", flush=True)
            results["memory"] = memory(bench, args.memory_requests)
        print("small requests under worst-case bodies …", flush=True)  # last: its 1 MiB bodies grow the heap once
        rss_before = rss_kib(bench.sg.pid)
        results["hostile"] = hostile(bench, 3 if args.quick else 10)
        results["hostile"]["rss_kib_before"], results["hostile"]["rss_kib_after"] = rss_before, rss_kib(bench.sg.pid)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "README.md").write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
