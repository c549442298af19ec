"""``stagectl normalize``: Day 5 in one command — backup, verify it, restore-test it, migrate, verify the data.

The steps run in order and the first that fails stops everything after it
("do not proceed"): a backup that cannot be written or verified, or a restore
test that fails, leaves the data untouched. Each step's result and duration is
printed, and the whole is written as a receipt, ``normalize-<UTC time>.json``,
in the backup directory.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from tools import backup, migrate_admin
from tools.db import connect, introspect, resolve_dsn
from tools.errors import EXIT_OK, CommandError
from tools.migrate_cli import load_catalog, perform
from tools.restore import run_restore_test

EXIT_STOPPED = 4
STEPS = ("backup", "verify-backup", "test-restore", "migrate", "verify")


@dataclass
class StepResult:
    step: str
    ok: bool
    seconds: float
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"step": self.step, "ok": self.ok, "seconds": round(self.seconds, 3), "detail": self.detail,
                **self.data}


class StepFailed(Exception):
    """A step ran and did not pass (its detail says why)."""

    def __init__(self, detail: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.data = data or {}


Step = Callable[[], Awaitable[tuple[str, dict[str, Any]]]]


class Normalize:
    """The pipeline for one database and one backup directory."""

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        self.args = args
        self.environ = environ
        self.dsn = resolve_dsn(args.dsn, environ)
        self.catalog = load_catalog(args.config, environ)  # a bad catalog stops before anything runs
        self.dump: Path | None = None

    async def _backup(self) -> tuple[str, dict[str, Any]]:
        result = await backup.backup(self.dsn, self.args.backup_dir, "plain", None)
        self.dump = result.file
        return (f"{result.file.name} ({result.bytes:,} bytes), sha256 {result.sha256[:12]}…",
                {"file": str(result.file), "sha256": result.sha256, "bytes": result.bytes})

    async def _verify_backup(self) -> tuple[str, dict[str, Any]]:
        report = backup.verify(self.args.backup_dir)
        if not report.ok:
            raise StepFailed("; ".join(f"{p['file']}: {p['problem']}" for p in report.problems),
                             {"problems": report.problems})
        return f"{len(report.checked)} file(s) match SHA256SUMS and are complete", {"checked": report.checked}

    async def _test_restore(self) -> tuple[str, dict[str, Any]]:
        assert self.dump is not None
        receipt = await run_restore_test(self.dsn, self.dump, budget_s=self.args.restore_budget,
                                         min_rows=self.args.min_rows, table=self.args.table,
                                         column=self.args.column, queries=[])
        if not receipt.ok:
            raise StepFailed("; ".join(receipt.failures), receipt.as_json())
        return f"restored and checked in {receipt.seconds:.1f} s ({receipt.rows} rows)", receipt.as_json()

    async def _migrate(self) -> tuple[str, dict[str, Any]]:
        code, report = await perform(self.args, self.environ)
        if code != EXIT_OK or report is None:
            raise StepFailed("interrupted: the run was stopped (resume it with stagectl migrate --resume)",
                             report or {})
        verb = "changed" if self.args.apply else "would change (dry run)"
        return (f"run {report['run_id']}: {report['rows_scanned']} rows scanned, {report['rows_changed']} {verb}, "
                f"{report['rows_unknown']} unknown", {"report": report})

    async def _verify(self) -> tuple[str, dict[str, Any]]:
        connection = await connect(self.dsn)
        try:
            target = await introspect(connection, self.args.table, self.args.column, self.args.pk)
            verdict = await migrate_admin.verify(connection, target, self.catalog)
        finally:
            await connection.close()
        aliases = sum(verdict.alias.values())
        unknown = sum(verdict.unknown.values())
        data = {"verify": verdict.as_json()}
        if aliases and self.args.apply:
            raise StepFailed(f"{aliases} rows still hold alias values after the migration", data)
        note = f"{unknown} rows hold unknown values (need a decision), {verdict.null} NULL"
        if not self.args.apply:
            return f"dry run: {aliases} rows hold alias values --apply would normalize; {note}", data
        return f"no alias value left; {note}", data

    def steps(self) -> list[tuple[str, Step]]:
        return list(zip(STEPS, (self._backup, self._verify_backup, self._test_restore, self._migrate, self._verify),
                        strict=True))


async def run(args: argparse.Namespace, environ: Mapping[str, str], say: Callable[[str], None]) -> int:
    """Run the steps, stop at the first failure, write the receipt; 0 all passed, 4 a step failed."""
    pipeline = Normalize(args, environ)
    started = datetime.now(UTC)
    results: list[StepResult] = []
    for name, step in pipeline.steps():
        results.append(await _one(name, step))
        say(_line(results[-1]))
        if not results[-1].ok:
            for skipped in STEPS[len(results):]:
                say(f"  -  {skipped:<14} not run: {name} failed (do not proceed)")
            break
    failed = next((r.step for r in results if not r.ok), None)
    receipt = {"started_at": started.isoformat(timespec="seconds"), "apply": bool(args.apply),
               "finished_at": datetime.now(UTC).isoformat(timespec="seconds"), "ok": failed is None,
               "failed_step": failed, "steps": [r.as_json() for r in results],
               "not_run": list(STEPS[len(results):])}
    _write_receipt(args.backup_dir, started, receipt, say)
    if failed is not None:
        say(f"normalize stopped at {failed}: nothing after it ran")
        return EXIT_STOPPED
    say("normalize: every step passed" + ("" if args.apply else " (dry run: add --apply to write)"))
    return EXIT_OK


async def _one(name: str, step: Step) -> StepResult:
    started = time.monotonic()
    try:
        detail, data = await step()
    except StepFailed as exc:
        return StepResult(name, False, time.monotonic() - started, exc.detail, exc.data)
    except CommandError as exc:
        return StepResult(name, False, time.monotonic() - started, str(exc))
    except OSError as exc:  # a directory that cannot be created or written, a dump that cannot be read
        where = f" {exc.filename}" if exc.filename else ""
        return StepResult(name, False, time.monotonic() - started, f"{exc.strerror or exc}{where}")
    return StepResult(name, True, time.monotonic() - started, detail, data)


def _line(result: StepResult) -> str:
    mark = "ok" if result.ok else "FAILED"
    return f"  {mark:<6} {result.step:<14} {result.seconds:6.1f} s  {result.detail}"


def _write_receipt(directory: Path, started: datetime, receipt: dict[str, Any], say: Callable[[str], None]) -> None:
    path = directory / f"normalize-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    try:
        path.write_bytes(orjson.dumps(receipt, option=orjson.OPT_INDENT_2) + b"\n")
    except OSError as exc:
        say(f"receipt not written to {path}: {exc.strerror or exc}")
        return
    say(f"receipt: {path}")
