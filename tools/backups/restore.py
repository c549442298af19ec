"""``stagectl test-restore FILE``: check the dump's checksum, restore it into a scratch database, run smoke
queries, drop the scratch database, time it all. The receipt names the step that failed and the real error."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tools.backups.backup import SUMS, pg_binary, read_sums, sha256, split_password
from tools.clients.db import connect, quote_ident
from tools.shared.errors import EXIT_USAGE, CommandError


@dataclass
class Receipt:
    """What a restore test found; ``ok`` only when every step passed within the budget."""

    file: str
    sha256: str
    checksum: str = "not checked"  # ok | no SHA256SUMS | skipped (--no-verify) | a problem
    seconds: float = 0.0
    rows: int | None = None
    distinct_stages: int | None = None
    smoke_queries: int = 0
    step: str | None = None  # the first step that failed: checksum, restore, smoke, budget
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, step: str, reason: str) -> None:
        self.step = self.step or step
        self.failures.append(reason)

    def as_json(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "checksum": self.checksum, "ok": self.ok,
                "failed_step": self.step, "seconds": round(self.seconds, 3), "rows": self.rows,
                "distinct_stages": self.distinct_stages, "smoke_queries": self.smoke_queries,
                "failures": self.failures}


def check_sum(file: Path, digest: str) -> str | None:
    """Against the SHA256SUMS beside the file (``latest.*`` links resolved): None when it matches or there is
    no SHA256SUMS, else the problem."""
    real = file.resolve()
    entries, problems = read_sums(real.parent)
    if not (real.parent / SUMS).exists():
        return None
    listed = entries.get(real.name)
    if listed is None:
        reason = f"; {problems[0]}" if problems else ""
        return f"{real.name} is not listed in {real.parent / SUMS}{reason}"
    if listed != digest:
        return (f"checksum mismatch: {real.name} has SHA-256 {digest[:16]}…, {SUMS} says {listed[:16]}… — "
                "the dump is damaged or was changed")
    return None


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _restore(dsn: str, file: Path, deadline: float) -> None:
    url, secret = split_password(dsn)
    if file.suffix == ".dump":
        command = [pg_binary("pg_restore"), "--exit-on-error", "--no-owner", "--no-password", f"--dbname={url}",
                   str(file)]
    else:  # plain SQL: one transaction, stop at the first error so a half restore cannot pass
        command = [pg_binary("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "--no-password",
                   f"--dbname={url}", "-f", str(file)]
    proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE, env={**os.environ, **secret})
    try:
        _, err = await asyncio.wait_for(proc.communicate(), max(0.01, deadline - time.monotonic()))
    except BaseException:  # the budget (TimeoutError), or Ctrl-C: stop psql now, the scratch database is dropped
        if proc.returncode is None:
            proc.kill()  # at the budget, not after: a slow restore is a failed restore
            await proc.wait()
        raise
    if proc.returncode != 0:
        raise CommandError(f"restore failed: {_first_error(err.decode(errors='replace'), proc.returncode)}")


def _first_error(stderr: str, code: int | None) -> str:
    """The error psql/pg_restore stopped at (the first ERROR line, with its detail), not the last line."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "ERROR:" in line or "FATAL:" in line or "error:" in line:
            detail = [more for more in lines[index + 1:index + 3] if more.startswith(("DETAIL:", "LINE ", "HINT:"))]
            return " ".join([line, *detail])[:500]
    return (lines[-1] if lines else f"exit {code}")[:500]


async def _smoke(dsn: str, receipt: Receipt, table: str, column: str, min_rows: int, queries: list[str]) -> None:
    db = await connect(dsn)
    try:
        t = ".".join(quote_ident(part) for part in table.split("."))
        receipt.rows = int(await db.fetchval(f"SELECT count(*) FROM {t}"))
        receipt.distinct_stages = int(await db.fetchval(f"SELECT count(DISTINCT {quote_ident(column)}) FROM {t}"))
        if receipt.rows < min_rows:
            receipt.fail("smoke", f"{table} has {receipt.rows} rows, fewer than --min-rows {min_rows}")
        for query in queries:
            await db.fetch(query)
            receipt.smoke_queries += 1
    except asyncpg.PostgresError as exc:
        receipt.fail("smoke", f"smoke query failed: {type(exc).__name__}: {exc}")
    finally:
        await db.close()


async def run_restore_test(dsn: str, file: Path, *, budget_s: float, min_rows: int, table: str, column: str,
                           queries: list[str], verify: bool = True) -> Receipt:
    """Restore ``file`` into a fresh scratch database on ``dsn``'s server; the scratch database is always dropped.

    With a ``SHA256SUMS`` beside the file and ``verify``, a file it does not list or whose checksum differs is
    not restored at all (step ``checksum``)."""
    if not file.is_file():
        raise CommandError(f"{file} is not a file" if file.exists() else f"{file} does not exist", EXIT_USAGE)
    try:
        receipt = Receipt(str(file), sha256(file))
    except OSError as exc:
        raise CommandError(f"cannot read {file}: {exc.strerror}", EXIT_USAGE) from None
    if not verify:
        receipt.checksum = "skipped (--no-verify)"
    else:
        problem = check_sum(file, receipt.sha256)
        receipt.checksum = problem or ("ok" if (file.resolve().parent / SUMS).exists() else f"no {SUMS}")
        if problem:
            receipt.fail("checksum", f"{problem}; not restored (--no-verify restores it anyway)")
            return receipt
    scratch = f"stagegate_restore_{uuid.uuid4().hex[:12]}"
    admin = await connect(dsn)
    started = time.monotonic()
    try:
        await admin.execute(f"CREATE DATABASE {quote_ident(scratch)}")
        try:
            await _restore(_with_database(dsn, scratch), file, started + budget_s)
            await _smoke(_with_database(dsn, scratch), receipt, table, column, min_rows, queries)
        except TimeoutError:
            receipt.fail("budget", f"restore exceeded the budget of {budget_s:g} s and was stopped")
        except CommandError as exc:
            receipt.fail("restore", str(exc))
        finally:
            await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(scratch)} WITH (FORCE)")
    finally:
        await admin.close()
    receipt.seconds = time.monotonic() - started
    if receipt.ok and receipt.seconds > budget_s:
        receipt.fail("budget", f"took {receipt.seconds:.1f} s, over the budget of {budget_s:g} s")
    return receipt
