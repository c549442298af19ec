"""A search for the costliest bodies: CPU per byte of the validator, maximised by an evolutionary fuzzer.

Run:  .venv/bin/python -m bench.worst [--seconds 60] [--seed 1] [--out DIR]

A body is a head, then one element repeated up to ``--max-body-bytes`` (1 MiB)
inside the ``deals`` array of ``import_deals``, then a tail. The genome picks the
element's shape from pieces known to cost (aliases, unknown values distinct per
element so no memo helps, escaped and case-variant keys, stage keys nested off
the path, containers nested at and past the scanner's regular-expression depth,
long runs of escapes, wrong types) and whether the head holds a stage key off the
path (which sends the body through the token scanner). Candidates are timed at
256 KiB (CPU time, best of two); the best are then timed at 1 MiB, best of three.
``./scripts/bench`` runs it and writes ``worst.md``; the goal is ≤ 100 ms per body.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from bench.validator import IMPORT, _deep, validate
from proxy.dataplane.jsonscan import _DEPTH

MIB = 1 << 20


KEYS: dict[str, bytes] = {
    "stage": b'"stage"', "escaped stage": b'"st\\u0061ge"', "Stage": b'"Stage"', "x": b'"x"',
    "all-escaped stage": b'"\\u0073\\u0074\\u0061\\u0067\\u0065"', "long s stage": '"ſtage"'.encode(),
    "long escaped key": b'"' + b"\\u0061" * 12 + b'"',
}
VALUES: dict[str, bytes] = {
    "alias": b'"won"', "spaced alias": b'" Closed  Won "', "canonical": b'"lead"', "escaped alias": b'"\\u0077on"',
    "unknown": b'"?"', "number": b"1", "null": b"null", "empty array": b"[]", "empty object": b"{}",
    "nested stage": b'{"stage":1}', "escapes": b'"' + b"\\n" * 24 + b'"', "quotes": b'"' + b'\\"' * 24 + b'"',
    f"depth {_DEPTH}": _deep(_DEPTH), f"depth {_DEPTH + 1}": _deep(_DEPTH + 1), "depth 8": _deep(8),
    "brackets in a string": b'"[{[{]}]}"',
}
DISTINCT = "distinct unknown"  # a value different in every element: no classification memo helps
STAGE_VALUES = [*VALUES, DISTINCT]


@dataclass(frozen=True)
class Genome:
    """One element shape: members (key, value) in order, or a bare value; a head off the path or not."""

    members: tuple[tuple[str, str], ...]
    bare: str | None  # the element is this value instead of an object
    nested_head: bool  # the body's head holds "stage" off the path: the literal proof fails, the scanner runs
    spaced: bool

    def describe(self) -> str:
        head = "head with a stage key off the path; " if self.nested_head else ""
        element = f"bare {self.bare}" if self.bare else "{" + ", ".join(f"{k}: {v}" for k, v in self.members) + "}"
        return f"{head}elements {element}" + ("; spaced" if self.spaced else "")


def _value(name: str, counter: int) -> bytes:
    if name == DISTINCT:
        return b'"u' + format(counter, "x").encode() + b'"'
    return VALUES[name]


def build(genome: Genome, size: int) -> bytes:
    """The body of ``size`` bytes (at most) the genome describes."""
    gap = b" " if genome.spaced else b""
    head = b'{"x":{"stage":1},' + gap + b'"deals":[' if genome.nested_head else b'{"deals":['
    tail = b"]}"
    pieces, used = [head], len(head) + len(tail)
    for counter in itertools.count():
        if genome.bare is not None:
            element = _value(genome.bare, counter)
        else:
            element = b"{" + (b"," + gap).join(KEYS[key] + b":" + gap + _value(value, counter)
                                                for key, value in genome.members) + b"}"
        if used + len(element) + 1 > size:
            break
        pieces.append(element if counter == 0 else b"," + gap + element)
        used += len(element) + (0 if counter == 0 else 1 + len(gap))
    pieces.append(tail)
    return b"".join(pieces)


def random_genome(rng: random.Random) -> Genome:
    if rng.random() < 0.15:
        return Genome((), rng.choice(STAGE_VALUES), rng.random() < 0.5, rng.random() < 0.2)
    members = tuple((rng.choice(list(KEYS)), rng.choice(STAGE_VALUES)) for _ in range(rng.randint(0, 3)))
    return Genome(members, None, rng.random() < 0.5, rng.random() < 0.2)


def mutate(genome: Genome, rng: random.Random) -> Genome:
    members = list(genome.members)
    choice = rng.randrange(5)
    if choice == 0 and members:
        i = rng.randrange(len(members))
        members[i] = (rng.choice(list(KEYS)), members[i][1])
    elif choice == 1 and members:
        i = rng.randrange(len(members))
        members[i] = (members[i][0], rng.choice(STAGE_VALUES))
    elif choice == 2 and len(members) < 4:
        members.insert(rng.randrange(len(members) + 1), (rng.choice(list(KEYS)), rng.choice(STAGE_VALUES)))
    elif choice == 3 and members:
        members.pop(rng.randrange(len(members)))
    else:
        return replace(genome, nested_head=not genome.nested_head) if rng.random() < 0.7 else \
            replace(genome, spaced=not genome.spaced)
    return replace(genome, members=tuple(members), bare=None)


def cpu_ms(raw: bytes, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        validate(raw, IMPORT)
        best = min(best, time.process_time() - started)
    return best * 1000


@dataclass(frozen=True)
class Found:
    genome: Genome
    ms_per_mib: float  # at the search size, scaled to 1 MiB


def search(seconds: float, seed: int, size: int = MIB // 4,
           progress: Callable[[str], None] = lambda _line: None) -> list[Found]:
    """Evolve element shapes for ``seconds``: keep the eight costliest, mutate them, repeat."""
    rng = random.Random(seed)
    scale = MIB / size
    seen: dict[Genome, float] = {}

    def score(genome: Genome) -> float:
        if genome not in seen:
            seen[genome] = cpu_ms(build(genome, size), 2) * scale
        return seen[genome]

    population = [random_genome(rng) for _ in range(24)]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        population.sort(key=score, reverse=True)
        elite = population[:8]
        progress(f"{len(seen)} shapes tried, costliest {score(elite[0]):.1f} ms/MiB: {elite[0].describe()}")
        population = elite + [mutate(rng.choice(elite), rng) for _ in range(12)] + [random_genome(rng)
                                                                                   for _ in range(4)]
    ranked = sorted(seen.items(), key=lambda item: item[1], reverse=True)
    return [Found(genome, ms) for genome, ms in ranked]


def confirm(found: list[Found], top: int = 5) -> list[dict[str, object]]:
    """The costliest shapes timed at 1 MiB (best of three)."""
    rows = []
    for item in found[:top]:
        raw = build(item.genome, MIB)
        rows.append({"shape": item.genome.describe(), "bytes": len(raw), "cpu_ms": round(cpu_ms(raw, 3), 1),
                     "search_ms_per_mib": round(item.ms_per_mib, 1)})
    return sorted(rows, key=lambda row: row["cpu_ms"], reverse=True)  # type: ignore[arg-type,return-value]


def render(rows: list[dict[str, object]], tried: int, seconds: float, seed: int) -> str:
    lines = [
        "# The costliest 1 MiB bodies a fuzzer found",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Command: "
        f"`.venv/bin/python -m bench.worst --seconds {seconds:g} --seed {seed}`. {tried} element shapes tried at "
        "256 KiB (CPU time of the validator, best of two), the five costliest then timed at 1 MiB (best of three) "
        "on `import_deals` in enforce. Goal: ≤ 100 ms each.",
        "",
        "| shape | bytes | CPU ms at 1 MiB | ms/MiB in the search |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {row['shape']} | {row['bytes']} | {row['cpu_ms']} | {row['search_ms_per_mib']} |" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to search (default 60)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="also write worst.md and worst.json here")
    args = parser.parse_args()
    found = search(args.seconds, args.seed, progress=lambda line: print(line, flush=True))
    rows = confirm(found)
    text = render(rows, len(found), args.seconds, args.seed)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "worst.md").write_text(text)
        (args.out / "worst.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
