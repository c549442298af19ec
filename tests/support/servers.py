"""Real servers started by the tests: redis-server and a PostgreSQL cluster (run as an unprivileged user)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support.ports import free_port, wait_for_port


class RedisServer:
    """A real redis-server on a free port; kill() and start() for fault tests."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/test (it installs it)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--protected-mode", "no", "--enable-debug-command", "local"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class PostgresServer:
    """A real PostgreSQL cluster in a temp dir, run as an unprivileged user (initdb refuses root)."""

    PASSWORD_ROLE = "stage_pw"
    PASSWORD = "s3cret-db-pw"

    def __init__(self, base: Path) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            raise RuntimeError("PostgreSQL server binaries are missing: scripts/test installs 'postgresql'")
        self.bin = found[-1].parent
        self.base = base
        self.data = base / "data"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run([*prefix, *command], capture_output=True, text=True, check=check, timeout=120)

    def dsn(self, database: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"postgresql://{auth}127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        if self.user:
            shutil.chown(self.base, self.user)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8")
        (self.data / "pg_hba.conf").write_text(
            f"host all {self.PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n"
            "local all all trust\n")
        self._pg_ctl_start("-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self.psql(f"CREATE ROLE {self.PASSWORD_ROLE} LOGIN SUPERUSER PASSWORD '{self.PASSWORD}'")

    def _pg_ctl_start(self, settings: str) -> None:
        """Start the server on its port and socket directory, loopback only, with ``settings`` (``-c k=v`` …)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "pg.log"), "-w", "-o",
                  f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 {settings}", "start")

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", self.dsn(database), "-c", sql],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr}")
        return result.stdout.strip()

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop", check=False)

    def allow_replication(self) -> None:
        """Let a standby connect for streaming replication (pg_basebackup, walreceiver) over loopback."""
        hba = self.data / "pg_hba.conf"
        hba.write_text("host replication all 127.0.0.1/32 trust\n" + hba.read_text())
        self.psql("SELECT pg_reload_conf()")


class StandbyServer(PostgresServer):
    """A real streaming standby of ``primary``: ``pg_basebackup -R`` (standby.signal and primary_conninfo
    written by it), started on its own port. Replies to the primary every second, so its lag shows there."""

    def __init__(self, base: Path, primary: PostgresServer) -> None:
        super().__init__(base)
        self.primary = primary

    def start(self) -> None:
        if self.user:
            shutil.chown(self.base, self.user)
        self.primary.allow_replication()
        self._run(str(self.bin / "pg_basebackup"), "-D", str(self.data), "-R", "-X", "stream", "-c", "fast",
                  "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres")
        self._pg_ctl_start("-c hot_standby=on -c wal_receiver_status_interval=1 -c hot_standby_feedback=off")

