"""Validator micro-benchmark: body → classification → decision, against bare orjson.loads.

Run:  .venv/bin/python -m bench.validator [--quick] [--out DIR]
Prints a table (and with --out writes validator.md and validator.json); figures are
per call, median and p99, with the ratio to ``orjson.loads`` of the same bytes
measured in the same run. ``./scripts/bench`` includes it in bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from proxy.catalog.stages import Endpoint, default_catalog
from proxy.dataplane import body as bodies

CATALOG = default_catalog()
CREATE, _UPDATE, IMPORT = CATALOG.endpoints


def _deal(i: int, stage: str) -> dict[str, object]:
    return {"id": 10_000 + i, "name": f"Deal {i} for Acme Corporation", "amount": 1234.5 + i, "currency": "EUR",
            "owner": "alice@example.com", "stage": stage, "tags": ["renewal", "enterprise"]}


def _padded(size: int, stage: str) -> bytes:
    base = {"name": "Acme renewal", "amount": 1200, "stage": stage, "notes": ""}
    pad = size - len(orjson.dumps(base))
    base["notes"] = "n" * max(pad, 0)
    return orjson.dumps(base)


def _import_of(deal: bytes, size: int = 1 << 20, head: bytes = b'{"deals":[') -> bytes:
    """An import body of ``size`` bytes made of one deal repeated."""
    count = (size - len(head) - 2) // (len(deal) + 1)
    return head + b",".join([deal] * count) + b"]}"


_NESTED_HEAD = b'{"x":{"stage":1},"deals":['  # a stage key off the path: the token scanner must walk the body


def _distinct_unknowns(size: int = 1 << 20) -> bytes:
    """Every deal a different unknown value (no memo helps), behind a head that sends the body to the scanner."""
    pieces, used, i = [_NESTED_HEAD], len(_NESTED_HEAD) + 2, 0
    while used + 24 < size:
        deal = b'{"stage":"u%x"},' % i
        pieces.append(deal)
        used, i = used + len(deal), i + 1
    return b"".join(pieces)[:-1] + b"]}"


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"0" + b"]" * depth


# The worst bodies of --max-body-bytes (1 MiB) found so far (docs/proxy.md, "Bounded work per request"), by hand
# and by bench/worst.py (a fuzzer maximising CPU per byte): every deal an alias, keys \u-escaped (the byte-count
# proof goes through regular expressions); nested "stage" keys in every deal, which defeat the proof and send the
# body through the token scanner; values nested as deep as the scanner reads (128: every byte a bracket, half a
# million arrays to parse); distinct unknown values; a case-variant key amid half a million escaped quotes; a stage
# key after the array (the scanner takes every leaf's span); an escaped stage key, a value 128 deep and a nested
# stage key in every element (bench/worst.py's costliest on 2026-12-06: the body was walked twice, 190 ms).
WORST: dict[str, bytes] = {
    "1 MiB worst: escaped keys, every stage an alias": _import_of(b'{"st\\u0061ge":"Closed Won"}',
                                                                  head=b'{"d\\u0065als":['),
    "1 MiB worst: the shortest aliases": _import_of(b'{"stage":"won"}'),
    "1 MiB worst: nested stage keys (token scanner)": _import_of(b'{"stage":"Closed Won","x":{"stage":1}}'),
    "1 MiB worst: shortest aliases, token scanner": _import_of(b'{"stage":"won"}', head=_NESTED_HEAD),
    "1 MiB worst: values nested 128 deep": _import_of(b'{"stage":' + _deep(127) + b"}", head=_NESTED_HEAD),
    "1 MiB worst: distinct unknown values": _distinct_unknowns(),
    "1 MiB worst: escaped quotes and a case variant": _import_of(
        '{"stage":"u","ſtage":"'.encode() + b'\\"' * 24 + b'"}'),
    "1 MiB worst: shortest aliases, a stage key after the array": _import_of(
        b'{"stage":"won"}', size=(1 << 20) - 16)[:-1] + b',"y":{"stage":1}}',
    "1 MiB worst: escaped stage key, value 128 deep, nested stage key": _import_of(
        b'{"st\\u0061ge":"won","x":' + _deep(128) + b',"x":"won","x":{"stage":1}}', head=_NESTED_HEAD),
}


def cases() -> dict[str, tuple[bytes, Endpoint]]:
    return {
        "200 B canonical": (_padded(200, "lead"), CREATE),
        "1 KB canonical": (_padded(1024, "closed_won"), CREATE),
        "1 KB alias (enforce rewrite)": (_padded(1024, "Closed Won"), CREATE),
        "64 KB canonical": (_padded(64 * 1024, "proposal"), CREATE),
        "import 500 deals": (orjson.dumps({"deals": [_deal(i, "lead") for i in range(500)]}), IMPORT),
        **{name: (raw, IMPORT) for name, raw in WORST.items()},
    }


INSPECTORS = {e.name: bodies.Inspector(CATALOG, e) for e in CATALOG.endpoints}


def validate(raw: bytes, endpoint: Endpoint) -> bytes | int:
    """What the data plane does between reading the body and forwarding it (enforce)."""
    if bodies.media_problem("application/json", None) is not None:
        return 415
    inspection = INSPECTORS[endpoint.name].inspect(raw)
    if inspection.result in ("unknown", "invalid", "unreadable"):
        return inspection.status
    if inspection.result == "alias":
        return bodies.rewrite(raw, endpoint, inspection)
    return raw


def sample(call: Callable[[], object], n: int) -> list[float]:
    for _ in range(min(n, 200)):
        call()
    timings = []
    clock = time.perf_counter_ns
    for _ in range(n):
        started = clock()
        call()
        timings.append((clock() - started) / 1000)
    return timings


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def measure(quick: bool) -> list[dict[str, object]]:
    rows = []
    for name, (raw, endpoint) in cases().items():
        n = 2000 if quick else 20000
        if len(raw) > 20_000:
            n //= 10
        if len(raw) > 500_000:
            n = 7 if quick else 31
        cpu_started = time.process_time()
        ours = sample(lambda raw=raw, endpoint=endpoint: validate(raw, endpoint), n)  # type: ignore[misc]
        cpu_ms = (time.process_time() - cpu_started) * 1000 / (n + min(n, 200))
        base = sample(lambda raw=raw: orjson.loads(raw), n)  # type: ignore[misc]
        rows.append({
            "case": name, "bytes": len(raw), "samples": n,
            "validator_median_us": round(statistics.median(ours), 2), "validator_p99_us": round(p99(ours), 2),
            "orjson_median_us": round(statistics.median(base), 2), "orjson_p99_us": round(p99(base), 2),
            "median_ratio": round(statistics.median(ours) / statistics.median(base), 2),
            "cpu_ms_per_call": round(cpu_ms, 3),
        })
    return rows


def render(rows: list[dict[str, object]]) -> str:
    lines = [
        "# Validator micro-benchmark",
        "",
        f"Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "Command: `.venv/bin/python -m bench.validator` (per call, µs; ratio = validator / orjson.loads medians).",
        "",
        "| case | bytes | validator median | validator p99 | orjson.loads median | ratio | CPU per call |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['case']} | {row['bytes']} | {row['validator_median_us']} | {row['validator_p99_us']} | "
                     f"{row['orjson_median_us']} | {row['median_ratio']}× | {row['cpu_ms_per_call']} ms |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer samples (CI)")
    parser.add_argument("--out", type=Path, default=None, help="also write validator.md and validator.json here")
    args = parser.parse_args()
    rows = measure(args.quick)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "validator.json").write_text(json.dumps(rows, indent=2) + "\n")
        (args.out / "validator.md").write_text(render(rows))
    print(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
