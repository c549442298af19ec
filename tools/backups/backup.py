"""``stagectl backup`` and ``verify-backup``: pg_dump to a timestamped file, checksummed, verifiable.

A backup directory holds the dumps, ``latest.sql`` / ``latest.dump`` (a symlink
to the newest) and ``SHA256SUMS`` in ``sha256sum -c`` format. Every file is
written under a temporary name, fsynced and renamed, so a crash never leaves a
half dump under a real name; an interrupted or failed dump removes its
temporary file. Dumps hold customer data: they are created mode 0600, readable
by their owner only, whatever the umask.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from proxy.shared.secrets import mask_url
from tools.shared.errors import EXIT_USAGE, CommandError

SUMS = "SHA256SUMS"
PLAIN_TRAILER = b"-- PostgreSQL database dump complete"
# <database>-<UTC time to the second>[_<n> for a further backup within the same second].<ext> ('_' sorts after
# '.', so `ls` lists them in order); names with microseconds (stagegate 0.1) are still read.
DUMP_NAME = re.compile(r"^(?P<db>.+)-(?P<ts>\d{8}T\d{6}(?:\d{6})?Z)(?:_(?P<n>\d{1,4}))?\.(?P<ext>sql|dump)$")
SUM_LINE = re.compile(r"^(?P<hex>[0-9a-f]{64}) [ *](?P<name>[^/\x00]+)$")


def pg_binary(name: str) -> str:
    """The newest installed PostgreSQL client binary ``name`` (Debian keeps them off PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if found:
        return str(found[-1])
    path = shutil.which(name)
    if path is None:
        raise CommandError(f"{name} is not installed (Debian package postgresql-client)")
    return path


def split_password(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without its password, and PGPASSWORD for the environment (so it never shows in ps)."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn, {}
    netloc = parts.netloc.replace(f":{parts.password}@", "@")
    return urlunsplit(parts._replace(netloc=netloc)), {"PGPASSWORD": unquote(parts.password)}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_sums(directory: Path) -> tuple[dict[str, str], list[str]]:
    """Entries of SHA256SUMS (name -> hex) and the problems found reading it."""
    path = directory / SUMS
    if not path.exists():
        return {}, [f"{SUMS} is missing"]
    entries, problems = {}, []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        match = SUM_LINE.match(line)
        if match is None:
            problems.append(f"{SUMS} line {number} is malformed: {line[:80]!r}")
            continue
        entries[match["name"]] = match["hex"]
    return entries, problems


def _write_sums(directory: Path, entries: dict[str, str]) -> None:
    text = "".join(f"{digest}  {name}\n" for name, digest in sorted(entries.items()))
    _atomic_write(directory / SUMS, text.encode())


def _age(name: str) -> tuple[str, int]:
    match = DUMP_NAME.match(name)
    assert match is not None
    return match["ts"].rstrip("Z").ljust(21, "0"), int(match["n"] or 0)


def dumps_in(directory: Path) -> list[Path]:
    """Dump files (not links, not temporaries), oldest first by their timestamp."""
    found = [p for p in directory.iterdir() if p.is_file() and not p.is_symlink() and DUMP_NAME.match(p.name)]
    return sorted(found, key=lambda p: _age(p.name))


def _new_name(out: Path, database: str, ext: str) -> Path:
    """``<database>-<UTC second>.<ext>``; further backups in the same second get ``_1``, ``_2``…"""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(10_000):
        path = out / f"{database}-{stamp}{f'_{n}' if n else ''}.{ext}"
        if not path.exists() and not path.with_name(f".{path.name}.partial").exists():
            return path
    raise CommandError(f"{out} already has 10000 backups named for {stamp}")


@dataclass
class BackupResult:
    file: Path
    sha256: str
    bytes: int
    seconds: float
    removed: list[str] = field(default_factory=list)


async def backup(dsn: str, out: Path, fmt: str, keep: int | None) -> BackupResult:
    """pg_dump into ``out``: temp name, fsync, rename; latest link and SHA256SUMS updated; retention applied."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"--out {out}: cannot create the directory: {exc.strerror}", EXIT_USAGE) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise CommandError(f"--out {out}: not writable", EXIT_USAGE)
    database = urlsplit(dsn).path.lstrip("/") or "postgres"
    ext = "sql" if fmt == "plain" else "dump"
    final = _new_name(out, database, ext)
    tmp = out / f".{final.name}.partial"
    started = asyncio.get_running_loop().time()
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # pg_dump writes into it: mode kept
    try:
        await _run_pg_dump(dsn, tmp, fmt)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, final)
    except BaseException:  # failed, interrupted (Ctrl-C cancels us), anything: no half dump is left behind
        tmp.unlink(missing_ok=True)
        raise
    digest = sha256(final)
    entries, _ = read_sums(out)
    entries[final.name] = digest
    removed = _retain(out, keep, entries) if keep else []
    _write_sums(out, entries)
    link = out / f"latest.{ext}"
    tmp_link = out / f".latest.{ext}.tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(final.name)
    os.replace(tmp_link, link)
    _fsync_dir(out)
    return BackupResult(final, digest, final.stat().st_size, asyncio.get_running_loop().time() - started, removed)


async def _run_pg_dump(dsn: str, target: Path, fmt: str) -> None:
    url, secret = split_password(dsn)
    proc = await asyncio.create_subprocess_exec(
        pg_binary("pg_dump"), "--no-password", f"--format={'p' if fmt == 'plain' else 'c'}", f"--file={target}",
        f"--dbname={url}", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **secret})
    try:
        _, err = await proc.communicate()
    except BaseException:  # cancelled (Ctrl-C): stop pg_dump before its file is removed
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        first = err.decode(errors="replace").strip().splitlines()
        raise CommandError(f"pg_dump of {mask_url(dsn)} failed: {first[0] if first else proc.returncode}")


def _retain(out: Path, keep: int, entries: dict[str, str]) -> list[str]:
    removed = []
    for old in dumps_in(out)[:-keep]:
        old.unlink()
        entries.pop(old.name, None)
        removed.append(old.name)
    return removed


@dataclass
class Verification:
    checked: list[str] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)

    def problem(self, file: str, reason: str) -> None:
        self.problems.append({"file": file, "problem": reason})

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.checked)


def _tail(path: Path, size: int = 4096) -> bytes:
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - size))
        return handle.read()


def _plain_complete(path: Path) -> str | None:
    """None if the plain dump is whole: UTF-8 throughout and ending with pg_dump's completion trailer."""
    if PLAIN_TRAILER not in _tail(path):
        return "truncated: no 'PostgreSQL database dump complete' trailer"
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return f"not valid UTF-8 text ({exc.reason})"
    return None


def _custom_complete(path: Path) -> str | None:
    result = subprocess.run([pg_binary("pg_restore"), "--list", str(path)], capture_output=True, text=True,
                            timeout=600)
    return None if result.returncode == 0 else f"pg_restore --list failed: {result.stderr.strip()[:200]}"


def complete(path: Path) -> str | None:
    return _plain_complete(path) if path.suffix == ".sql" else _custom_complete(path)


def verify(directory: Path) -> Verification:
    """Check every listed file, the latest link and unlisted dumps; every problem, not just the first."""
    if not directory.is_dir():
        raise CommandError(f"{directory} is not a directory", EXIT_USAGE)
    report = Verification()
    entries, problems = read_sums(directory)
    for problem in problems:
        report.problem(SUMS, problem)
    for name, digest in sorted(entries.items()):
        report.checked.append(name)
        for reason in _check_file(directory / name, digest):
            report.problem(name, reason)
    for path in dumps_in(directory):
        if path.name not in entries:
            report.problem(path.name, f"present but not listed in {SUMS}")
    for link in _latest_links(directory):
        target = os.readlink(link)
        if target not in entries:
            report.problem(link.name, f"points at {target!r}, which is not listed in {SUMS}")
    if not entries and not problems:
        report.problem(SUMS, "lists no backup")
    return report


def _check_file(path: Path, digest: str) -> Iterator[str]:
    if not path.is_file():
        yield "listed but missing"
        return
    if sha256(path) != digest:
        yield "checksum mismatch"
    reason = complete(path)
    if reason is not None:
        yield reason


def _latest_links(directory: Path) -> list[Path]:
    return [p for p in (directory / "latest.sql", directory / "latest.dump") if p.is_symlink()]


def latest(directory: Path) -> Path:
    """The newest backup ``latest.*`` points at."""
    links = [p for p in _latest_links(directory) if p.resolve().is_file()]
    if not links:
        raise CommandError(f"{directory} has no latest.sql or latest.dump", EXIT_USAGE)
    return max(links, key=lambda p: p.resolve().stat().st_mtime).resolve()
