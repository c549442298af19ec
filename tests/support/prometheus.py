"""A real Prometheus for the tests: loaded with history (promtool tsdb create-blocks-from openmetrics), or
scraping live targets every second."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port
from tests.support.waiting import wait_until


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: scripts/test installs Debian's prometheus package")
    return found


@dataclass
class History:
    """OpenMetrics text built series by series (promtool wants each family's samples together, in time order)."""

    families: dict[str, tuple[str, list[str]]] = field(default_factory=dict)

    def add(self, family: str, kind: str, name: str, labels: dict[str, str], points: Iterable[tuple[float, float]]
            ) -> None:
        """Samples of one series: ``name`` is the sample name (``stage_validation_total`` for a counter)."""
        rendered = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        lines = self.families.setdefault(family, (kind, []))[1]
        lines.extend(f"{name}{{{rendered}}} {value:g} {at:.0f}" for at, value in points)

    def text(self) -> str:
        out = []
        for family, (kind, lines) in self.families.items():
            out.append(f"# TYPE {family} {kind}")
            out.extend(lines)
        out.append("# EOF")
        return "\n".join(out) + "\n"


class PrometheusServer:
    """``prometheus`` on a free port over a TSDB directory; stop() kills it."""

    def __init__(self, workdir: Path, scrape: list[str] | None = None) -> None:
        self.workdir = workdir
        self.data = workdir / "tsdb"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        targets = ", ".join(f'"{target}"' for target in scrape or [])
        config = "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        if scrape:
            config += f"scrape_configs:\n  - job_name: stagegate\n    static_configs:\n      - targets: [{targets}]\n"
        self.config = workdir / "prometheus.yml"
        self.config.write_text(config)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def load(self, history: History) -> None:
        """Write ``history`` as TSDB blocks (before start)."""
        source = self.workdir / "history.om"
        source.write_text(history.text())
        # --max-block-duration (hidden in promtool 2.x): a few long blocks instead of one per 2 h, 80x faster.
        result = subprocess.run([binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", "--quiet",
                                 "--max-block-duration=2000h",
                                 str(source), str(self.data)], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"promtool could not import the history: {result.stderr[-2000:]}")

    def start(self) -> None:
        with (self.workdir / "prometheus.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [binary("prometheus"), f"--config.file={self.config}", f"--storage.tsdb.path={self.data}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=3650d",
                 "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=log)
        wait_until(self._ready, timeout_s=60, interval_s=0.1, what="prometheus to be ready")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {(self.workdir / 'prometheus.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
