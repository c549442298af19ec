"""CI's performance baseline: fails only on a clear regression of a *ratio* (well under a minute).

Ratios compare things measured side by side in this run, so a slow or noisy
machine moves both sides; the limits sit far from today's values (see
bench/results/README.md) so only a real regression trips them.
Run: .venv/bin/python -m bench.guard
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench import validator
from bench.e2e import body
from bench.harness import PY, REPO, TOKEN, free_port, nginx_upstream, process, set_mode, stagegate, wait_port, wrk

# (what, limit, today's value on the reference machine)
# validator median / orjson.loads median. The 1 MiB worst cases were 200x (1.9 s) before the literal proof learnt
# escaped spellings and the scanner learnt to skip off-path values in C; today 10-25x.
VALIDATOR_LIMITS = {"1 KB canonical": 8.0, "import 500 deals": 4.0,
                    "1 MiB worst: escaped keys, every stage an alias": 45.0,
                    "1 MiB worst: nested stage keys (token scanner)": 60.0}
ENFORCE_VS_PASS_THROUGH_MIN = 0.75  # stagegate enforce req/s / stagegate pass-through req/s (today ~1.0)
# stagegate pass-through req/s / bare aiohttp proxy req/s (today ~1.3-1.5; it was 0.8 on aiohttp's ClientSession,
# so falling back to the naive client path trips this)
PASS_THROUGH_VS_BARE_MIN = 0.9


def check_validator() -> list[str]:
    rows = {str(row["case"]): row for row in validator.measure(quick=True)}
    failures = []
    for case, limit in VALIDATOR_LIMITS.items():
        ratio = float(rows[case]["median_ratio"])  # type: ignore[arg-type]
        print(f"validator {case}: {ratio:.2f}x orjson.loads (limit {limit}x)")
        if ratio > limit:
            failures.append(f"validator {case} is {ratio:.2f}x orjson.loads (limit {limit}x)")
    return failures


def check_e2e(reps: int = 5, seconds: float = 2) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="stagegate-guard-") as name, ExitStack() as stack:
        work = Path(name)
        up, sg, admin, bare = (free_port() for _ in range(4))
        payload = work / "canonical.json"
        payload.write_bytes(body("closed_won"))
        stack.enter_context(process(nginx_upstream(work, up), up, work / "up.log"))
        stack.enter_context(process(stagegate(sg, admin, up, "--log-level", "WARNING"), sg, work / "sg.log",
                                    {"STAGE_OPS_TOKEN": TOKEN}))
        stack.enter_context(process([PY, str(REPO / "bench" / "bare_proxy.py"), str(bare), f"http://127.0.0.1:{up}"],
                                    bare, work / "bare.log"))
        wait_port(admin)
        set_mode(admin, "create_deal", "enforce")
        runs: dict[str, list[float]] = {"enforce": [], "pass-through": [], "bare": []}
        for _ in range(reps):
            runs["enforce"].append(wrk(f"http://127.0.0.1:{sg}/api/v1/deals", payload, seconds))
            runs["pass-through"].append(wrk(f"http://127.0.0.1:{sg}/other", payload, seconds))
            runs["bare"].append(wrk(f"http://127.0.0.1:{bare}/api/v1/deals", payload, seconds))
    median = {name: statistics.median(values) for name, values in runs.items()}
    enforce_ratio = median["enforce"] / median["pass-through"]
    bare_ratio = median["pass-through"] / median["bare"]
    print(f"e2e req/s medians: {', '.join(f'{k} {v:.0f}' for k, v in median.items())}")
    print(f"enforce / pass-through = {enforce_ratio:.2f} (min {ENFORCE_VS_PASS_THROUGH_MIN}); "
          f"pass-through / bare aiohttp = {bare_ratio:.2f} (min {PASS_THROUGH_VS_BARE_MIN})")
    failures = []
    if enforce_ratio < ENFORCE_VS_PASS_THROUGH_MIN:
        failures.append(f"enforce is {enforce_ratio:.2f}x pass-through (min {ENFORCE_VS_PASS_THROUGH_MIN})")
    if bare_ratio < PASS_THROUGH_VS_BARE_MIN:
        failures.append(f"pass-through is {bare_ratio:.2f}x the bare aiohttp proxy (min {PASS_THROUGH_VS_BARE_MIN})")
    return failures


def main() -> int:
    failures = check_validator() + check_e2e()
    for failure in failures:
        print(f"perf guard: FAIL: {failure}", file=sys.stderr)
    print("perf guard: " + ("FAIL" if failures else "ok"))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
