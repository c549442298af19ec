"""``--workers N``: a supervisor running N proxy processes on the same ports (SO_REUSEPORT).

Each worker is a fresh ``python -m proxy`` with the same arguments, so it reads
the same settings; modes are shared through Redis (the in-memory store is
refused for N > 1). Metrics use prometheus-client's multiprocess mode: every
worker writes to a shared directory and ``/metrics`` on any worker shows the
sum (counters, histograms) or the latest live value (mode gauges).

SIGHUP is forwarded to every worker: each re-reads ``--config`` (a worker
answering ``POST /_ops/reload`` sends SIGHUP here, so all of them do).

Shutdown, step by step: SIGTERM/SIGINT is forwarded to every worker, each
drains its requests, the supervisor reaps them and removes the metrics
directory. A worker still running ``stop_grace_s`` after the signal (its own
drain timeout plus a margin) is killed with SIGKILL and the exit code is 1.
A worker dying on its own takes the others down with it (exit 1): a
half-capacity sidecar should be restarted by its orchestrator, not limp on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Final

from prometheus_client.multiprocess import mark_process_dead

from proxy.shared.logs import log_event

# Read back by each worker's settings (proxy/app/settings.py: the internal options).
WORKER_ENV: Final = "STAGE_WORKER"
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's multiprocess mode reads it too
log = logging.getLogger(__name__)


class Supervisor:
    """Starts, watches and stops the worker processes."""

    def __init__(self, argv: Sequence[str], count: int, *, environ: Mapping[str, str], stop_grace_s: float = 15.0,
                 command: Sequence[str] = (sys.executable, "-m", "proxy")) -> None:
        self.environ = dict(environ)
        self.command = list(command)
        self.argv = list(argv)
        self.count = count
        self.stop_grace_s = stop_grace_s
        self.stopping = False
        self.killed = False
        self.workers: dict[int, subprocess.Popen[bytes]] = {}

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            signal.setitimer(signal.ITIMER_REAL, self.stop_grace_s)  # SIGALRM -> _kill_stragglers
        self.stopping = True
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    def _hangup(self, signum: int, frame: FrameType | None) -> None:
        """SIGHUP (from outside, or from a worker that got POST /_ops/reload): every worker re-reads --config."""
        if self.stopping:
            return
        for proc in self.workers.values():
            if proc.returncode is None:  # not poll(): reaping here would hide a death from _reap
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGHUP)

    def _kill_stragglers(self, signum: int, frame: FrameType | None) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                self.killed = True
                proc.kill()

    def run(self) -> int:
        metrics_dir = tempfile.mkdtemp(prefix="stagegate-metrics-")
        env = {**self.environ, WORKER_ENV: "1", MULTIPROC_ENV: metrics_dir}
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._forward)
        signal.signal(signal.SIGALRM, self._kill_stragglers)
        signal.signal(signal.SIGHUP, self._hangup)
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})  # workers are born with it held (cli.main)
            for _ in range(self.count):
                proc = subprocess.Popen([*self.command, *self.argv], env=env)
                self.workers[proc.pid] = proc
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
            log_event(log, logging.INFO, "workers_started", workers=sorted(self.workers))
            return self._reap(metrics_dir)
        finally:
            self._forward(signal.SIGTERM, None)
            for proc in self.workers.values():
                proc.wait()
            signal.setitimer(signal.ITIMER_REAL, 0)
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _reap(self, metrics_dir: str) -> int:
        code = 0
        while any(proc.poll() is None for proc in self.workers.values()):
            pid, status = os.wait()
            proc = self.workers.get(pid)
            if proc is None:
                continue
            proc.returncode = os.waitstatus_to_exitcode(status)
            mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]  # untyped in prometheus-client
            if not self.stopping:
                log_event(log, logging.ERROR, "worker_died", pid=pid, code=proc.returncode)
                self._forward(signal.SIGTERM, None)
                code = 1
            elif proc.returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
                code = 1
        if self.killed:
            log_event(log, logging.ERROR, "workers_killed", grace_s=self.stop_grace_s,
                      detail="a worker did not stop in time after the signal and was killed")
            code = 1
        return code
