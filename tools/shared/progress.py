"""Progress for long runs: a bar with rate and ETA on a terminal, JSON lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import IO

import orjson


class Progress:
    """Reports ``done`` of ``total`` rows; cheap to call after every batch."""

    def __init__(self, total: int, *, stream: IO[str] | None = None, interval_s: float = 5.0) -> None:
        self.total = max(total, 1)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.interval_s = 0.1 if self.tty else interval_s
        self.started = time.monotonic()
        self.start = 0  # rows done before this process (a resumed run): not part of the rate
        self._last = 0.0

    def starting_at(self, done: int) -> None:
        """A resumed run: the bar starts at the rows already done, the rate counts only this process's."""
        self.start = done
        self.started = time.monotonic()

    def update(self, done: int, **extra: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-6)
        rate = max(done - self.start, 0) / elapsed
        eta = (self.total - done) / rate if rate > 0 and done < self.total else 0.0
        if self.tty:
            share = min(done / self.total, 1.0)
            bar = "#" * int(share * 30)
            self.stream.write(f"\r[{bar:<30}] {share:6.1%} {done:>12,}/{self.total:,} rows  {rate:>10,.0f} rows/s  "
                              f"ETA {eta:5.0f}s")
        else:
            line = {"progress": round(done / self.total, 4), "rows": done, "total_estimate": self.total,
                    "rows_per_s": round(rate), "eta_s": round(eta, 1), **extra}
            self.stream.write(orjson.dumps(line).decode() + "\n")
        self.stream.flush()

    def event(self, text: str, **fields: object) -> None:
        """Something the operator should know now (a run waits, goes on): ``text`` on a terminal, a JSON line of
        ``fields`` otherwise."""
        if self.tty:
            self.stream.write(f"\r\033[K{text}\n")
        else:
            self.stream.write(orjson.dumps(fields).decode() + "\n")
        self.stream.flush()

    def finish(self, done: int) -> None:
        self._last = 0.0
        self.update(done)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
