"""``stagectl normalize``: Day 5 in one command — backup, verify it, restore-test it, migrate, verify the data.

The steps run in order and the first that fails stops everything after it
("do not proceed"): a backup that cannot be written or verified, or a restore
test that fails, leaves the data untouched. Each step's result and duration is
printed, and the whole is written as a receipt, ``normalize-<UTC time>.json``,
in the backup directory.

Interrupted (SIGINT/SIGTERM) in any step, it stops that step cleanly — a dump
in progress is removed, a restore test's scratch database dropped, a migration
finishes its batch and is marked aborted — and exits 130 naming the step.
``--apply --resume`` continues the unfinished migration run of the last
receipt, on that receipt's verified backup (the restore point from before the
run: a new dump of half-normalized data is not one), then verifies the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from tools.backups import backup
from tools.backups.restore import run_restore_test
from tools.clients.catalogs import ChosenCatalog
from tools.clients.db import connect, introspect
from tools.migration import admin as migrate_admin
from tools.migration import runs as runs
from tools.migration.engine import Options
from tools.migration.run import Where, perform
from tools.shared.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CommandError

EXIT_STOPPED: Final = 4
STEPS: Final = ("backup", "verify-backup", "test-restore", "migrate", "verify")
RECEIPT_GLOB: Final = "normalize-*.json"


@dataclass
class StepResult:
    step: str
    ok: bool
    seconds: float
    detail: str
    data: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"step": self.step, "ok": self.ok, "seconds": round(self.seconds, 3), "detail": self.detail,
                **({"interrupted": True} if self.interrupted else {}), **self.data}


class StepFailed(Exception):
    """A step ran and did not pass (its detail says why)."""

    def __init__(self, detail: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.data = data or {}


class Interrupted(Exception):
    """The step was stopped by SIGINT/SIGTERM (cleanly: its detail says what was left)."""

    def __init__(self, detail: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.data = data or {}


Step = Callable[[], Awaitable[tuple[str, dict[str, Any]]]]


@dataclass(frozen=True)
class Resumption:
    """What ``--resume`` continues: the receipt, its verified backup and its migration run."""

    receipt: Path
    dump: Path
    run_id: int
    steps: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class NormalizeRequest:
    """What ``stagectl normalize`` was asked for, typed (the command layer builds it)."""

    where: Where
    options: Options  # the migration's: apply, batch size, … and resume
    backup_dir: Path
    restore_budget_s: float = 300.0
    min_rows: int = 1
    keep: int | None = None
    resume_hint: str = "stagectl normalize --apply --resume"  # the command that continues it, as it must be typed

    @property
    def apply(self) -> bool:
        return self.options.apply

    @property
    def resume(self) -> bool:
        return self.options.resume


class Normalize:
    """The pipeline for one database and one backup directory."""

    def __init__(self, request: NormalizeRequest, chosen: ChosenCatalog, stop: asyncio.Event) -> None:
        self.request = request
        self.dsn = request.where.dsn
        self.chosen = chosen
        self.stop = stop
        self.dump: Path | None = None
        self.run_id: int | None = None  # the migration run this pipeline started or resumed
        self.resumption: Resumption | None = None

    async def _backup(self) -> tuple[str, dict[str, Any]]:
        result = await backup.backup(self.dsn, self.request.backup_dir, "plain", self.request.keep)
        self.dump = result.file
        pruned = f"; pruned {len(result.removed)} older" if result.removed else ""
        return (f"{result.file.name} ({result.bytes:,} bytes), sha256 {result.sha256[:12]}…{pruned}",
                {"file": str(result.file), "sha256": result.sha256, "bytes": result.bytes, "removed": result.removed})

    async def _reused(self, step: str) -> tuple[str, dict[str, Any]]:
        assert self.resumption is not None
        previous = self.resumption.steps[step]
        detail = f"reused from {self.resumption.receipt.name}: {previous.get('detail', '')}"
        return detail, {k: v for k, v in previous.items() if k not in ("step", "ok", "seconds", "detail")}

    async def _verify_backup(self) -> tuple[str, dict[str, Any]]:
        report = await asyncio.to_thread(backup.verify, self.request.backup_dir)
        if not report.ok:
            raise StepFailed("; ".join(f"{p['file']}: {p['problem']}" for p in report.problems),
                             {"problems": report.problems})
        if self.dump is not None and self.dump.name not in report.checked:
            raise StepFailed(f"{self.dump.name} is not listed in {backup.SUMS}")
        return f"{len(report.checked)} file(s) match SHA256SUMS and are complete", {"checked": report.checked}

    async def _test_restore(self) -> tuple[str, dict[str, Any]]:
        assert self.dump is not None
        where = self.request.where
        receipt = await run_restore_test(self.dsn, self.dump, budget_s=self.request.restore_budget_s,
                                         min_rows=self.request.min_rows, table=where.table, column=where.column,
                                         queries=[])
        if not receipt.ok:
            raise StepFailed("; ".join(receipt.failures), receipt.as_json())
        return f"restored and checked in {receipt.seconds:.1f} s ({receipt.rows} rows)", receipt.as_json()

    async def _migrate(self) -> tuple[str, dict[str, Any]]:
        code, report = await perform(self.request.where, self.request.options, self.chosen, self.stop,
                                     say_catalog=False)
        if report is not None:
            self.run_id = int(report["run_id"])
        if code == EXIT_INTERRUPTED or report is None:
            what = (f"run {self.run_id} stopped after id {report['last_id']} (its batch finished, marked aborted)"
                    if report is not None else "the --transactional run was rolled back: nothing changed")
            raise Interrupted(what, {"report": report} if report else {})
        verb = "changed" if self.request.apply else "would change (dry run)"
        return (f"run {report['run_id']}: {report['rows_scanned']} rows scanned, {report['rows_changed']} {verb}, "
                f"{report['rows_unknown']} unknown", {"report": report})

    async def _verify(self) -> tuple[str, dict[str, Any]]:
        connection = await connect(self.dsn)
        try:
            where = self.request.where
            target = await introspect(connection, where.table, where.column, where.pk)
            verdict = await migrate_admin.verify(connection, target, self.chosen.catalog)
        finally:
            await connection.close()
        aliases = sum(verdict.alias.values())
        unknown = sum(verdict.unknown.values())
        data = {"verify": verdict.as_json()}
        if aliases and self.request.apply:
            raise StepFailed(f"{aliases} rows still hold alias values after the migration", data)
        note = f"{unknown} rows hold unknown values (need a decision), {verdict.null} NULL"
        if not self.request.apply:
            return f"dry run: {aliases} rows hold alias values --apply would normalize; {note}", data
        return f"no alias value left; {note}", data

    def steps(self) -> list[tuple[str, Step]]:
        if self.resumption is not None:
            self.dump = self.resumption.dump
            return [("backup", lambda: self._reused("backup")), ("verify-backup", self._verify_backup),
                    ("test-restore", lambda: self._reused("test-restore")), ("migrate", self._migrate),
                    ("verify", self._verify)]
        return list(zip(STEPS, (self._backup, self._verify_backup, self._test_restore, self._migrate, self._verify),
                        strict=True))


async def run(request: NormalizeRequest, chosen: ChosenCatalog, say: Callable[[str], None]) -> int:
    """Run the steps, stop at the first failure or signal, write the receipt; 0 all passed, 4 a step failed,
    130 interrupted."""
    if request.resume and not request.apply:
        raise CommandError("--resume continues an applied migration: add --apply", EXIT_USAGE)
    stop = asyncio.Event()
    pipeline = Normalize(request, chosen, stop)
    if request.resume:
        pipeline.resumption = await _resumption(pipeline)
    say(chosen.line())
    if pipeline.resumption is not None:
        say(f"resuming run {pipeline.resumption.run_id} of {pipeline.resumption.receipt.name} on its backup "
            f"{pipeline.resumption.dump.name}")
    started = datetime.now(UTC)
    results: list[StepResult] = []
    with _signals(stop):
        for name, step in pipeline.steps():
            results.append(await _one(name, step, stop))
            say(_line(results[-1]))
            if not results[-1].ok:
                break
    receipt = _receipt(request, chosen, started, results, pipeline)
    _write_receipt(request.backup_dir, started, receipt, say)
    return _conclude(request, results, pipeline, say)


def _conclude(request: NormalizeRequest, results: list[StepResult], pipeline: Normalize,
              say: Callable[[str], None]) -> int:
    stopped = next((r for r in results if not r.ok), None)
    for skipped in STEPS[len(results):]:
        why = "interrupted" if stopped is not None and stopped.interrupted else "failed"
        say(f"  -  {skipped:<14} not run: {stopped.step if stopped else '?'} {why} (do not proceed)")
    if stopped is None:
        say("normalize: every step passed" + ("" if request.apply else " (dry run: add --apply to write)"))
        return EXIT_OK
    hint = ""
    if stopped.step in ("migrate", "verify") and request.apply and pipeline.run_id is not None:
        hint = f"; continue it with `{request.resume_hint}`"
    elif stopped.step in ("backup", "verify-backup", "test-restore"):
        hint = "; the data was not touched: run it again when ready"
    if stopped.interrupted:
        say(f"normalize interrupted in {stopped.step}: {stopped.detail}{hint}")
        return EXIT_INTERRUPTED
    say(f"normalize stopped at {stopped.step}: nothing after it ran{hint}")
    return EXIT_STOPPED


async def _one(name: str, step: Step, stop: asyncio.Event) -> StepResult:
    """One step, as a task a signal cancels (the migration instead finishes its batch: it watches ``stop``)."""
    started = time.monotonic()
    task = asyncio.ensure_future(step())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and name != "migrate":
            task.cancel()
        detail, data = await task
    except asyncio.CancelledError:
        if not stop.is_set():
            raise
        return StepResult(name, False, time.monotonic() - started, _cleaned(name), interrupted=True)
    except Interrupted as exc:
        return StepResult(name, False, time.monotonic() - started, exc.detail, exc.data, interrupted=True)
    except StepFailed as exc:
        return StepResult(name, False, time.monotonic() - started, exc.detail, exc.data)
    except CommandError as exc:
        return StepResult(name, False, time.monotonic() - started, str(exc))
    except OSError as exc:  # a directory that cannot be created or written, a dump that cannot be read
        where = f" {exc.filename}" if exc.filename else ""
        return StepResult(name, False, time.monotonic() - started, f"{exc.strerror or exc}{where}")
    finally:
        stopper.cancel()
    if stop.is_set():  # the step finished as the signal came: it counts, nothing after it runs
        return StepResult(name, False, time.monotonic() - started, f"{detail} — then interrupted", data,
                          interrupted=True)
    return StepResult(name, True, time.monotonic() - started, detail, data)


def _cleaned(step: str) -> str:
    return {"backup": "stopped; the partial dump was removed",
            "verify-backup": "stopped while checking checksums (read only)",
            "test-restore": "stopped; the scratch database was dropped",
            "verify": "stopped while counting stages (read only)"}.get(step, "stopped")


@contextlib.contextmanager
def _signals(stop: asyncio.Event) -> Any:
    """SIGINT/SIGTERM set ``stop`` for the whole pipeline (the migration's own handlers would do the same)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _resumption(pipeline: Normalize) -> Resumption:
    """The last receipt's unfinished migration, its backup verified then; CommandError (exit 2) saying why not."""
    directory = pipeline.request.backup_dir
    receipts = sorted(directory.glob(RECEIPT_GLOB)) if directory.is_dir() else []
    if not receipts:
        raise CommandError(f"nothing to resume: {directory} holds no normalize receipt", EXIT_USAGE)
    path = receipts[-1]
    try:
        receipt = orjson.loads(path.read_bytes())
        steps = {step["step"]: step for step in receipt["steps"]}
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise CommandError(f"cannot read the receipt {path}: {exc}", EXIT_USAGE) from None
    before = [name for name in ("backup", "verify-backup", "test-restore") if not steps.get(name, {}).get("ok")]
    if before:
        raise CommandError(f"nothing to resume: {path.name} stopped at {before[0]}, before the migration (the data "
                           "was not touched): run stagectl normalize --apply again", EXIT_USAGE)
    migrate = steps.get("migrate", {})
    report = migrate.get("report") or {}
    if migrate.get("ok") or not receipt.get("apply") or "run_id" not in report:
        state = "finished its migration" if migrate.get("ok") else "has no applied migration run to continue"
        raise CommandError(f"nothing to resume: {path.name} {state}", EXIT_USAGE)
    dump = Path(steps["backup"].get("file", ""))
    run_id = int(report["run_id"])
    await _check_latest_unfinished(pipeline, run_id, path)
    return Resumption(path, dump, run_id, steps)


async def _check_latest_unfinished(pipeline: Normalize, run_id: int, receipt: Path) -> None:
    connection = await connect(pipeline.dsn)
    try:
        where = pipeline.request.where
        target = await introspect(connection, where.table, where.column, where.pk)
        await runs.reconcile(connection)
        row = await runs.unfinished(connection, target, dry_run=False)
    finally:
        await connection.close()
    if row is None or int(row["run_id"]) != run_id:
        latest = f"the latest unfinished run is {row['run_id']}" if row is not None else "no run is unfinished"
        raise CommandError(f"cannot resume run {run_id} of {receipt.name}: {latest} on {target.label} "
                           "(stagectl migrate status shows the runs)", EXIT_USAGE)


def _receipt(request: NormalizeRequest, chosen: ChosenCatalog, started: datetime, results: list[StepResult],
             pipeline: Normalize) -> dict[str, Any]:
    stopped = next((r for r in results if not r.ok), None)
    return {"started_at": started.isoformat(timespec="seconds"), "apply": request.apply,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"), "ok": stopped is None,
            "failed_step": stopped.step if stopped is not None and not stopped.interrupted else None,
            "interrupted_step": stopped.step if stopped is not None and stopped.interrupted else None,
            "catalog": chosen.as_json(), "run_id": pipeline.run_id,
            "resumed_from": pipeline.resumption.receipt.name if pipeline.resumption else None,
            "steps": [r.as_json() for r in results], "not_run": list(STEPS[len(results):])}


def _line(result: StepResult) -> str:
    mark = "ok" if result.ok else "STOPPED" if result.interrupted else "FAILED"
    return f"  {mark:<6} {result.step:<14} {result.seconds:6.1f} s  {result.detail}"


def _write_receipt(directory: Path, started: datetime, receipt: dict[str, Any], say: Callable[[str], None]) -> None:
    stamp = started.strftime('%Y%m%dT%H%M%SZ')
    path = directory / f"normalize-{stamp}.json"
    for n in range(1, 1000):  # a resume in the same second as the run it continues: a new name, sorting after
        if not path.exists():
            break
        path = directory / f"normalize-{stamp}_{n}.json"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(receipt, option=orjson.OPT_INDENT_2) + b"\n")
    except OSError as exc:
        say(f"receipt not written to {path}: {exc.strerror or exc}")
        return
    say(f"receipt: {path}")
