"""The docs stand alone and say what the code does: every `stagectl` / `stage-proxy` command line in the README
and docs/ parses with the real argument parsers, every inline mention names a real command, and no tracked file
points outside the repository for the contract."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import subprocess
from collections.abc import Iterator

import pytest

from proxy.app.settings import build_parser as proxy_parser
from tests.support.proxies import REPO
from tools.shared.errors import CommandError
from tools.stagectl import build_parser

DOCS = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"(?<!`)`(stagectl [^`]+)`(?!`)")
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "2>&1", "&"}


def command_lines(program: str) -> Iterator[tuple[str, list[str]]]:
    """(where, argv) of each ``program …`` line in a fenced block, continuations joined, environment assignments
    and anything after a shell operator dropped."""
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for block in FENCE.finditer(text):
            first_line = text.count("\n", 0, block.start(1)) + 1
            lines = block.group(1).replace("\\\n", " ").splitlines()
            for offset, line in enumerate(lines):
                try:
                    words = shlex.split(line, comments=True)
                except ValueError:
                    continue
                while words and ASSIGNMENT.match(words[0]):
                    words.pop(0)
                if not words or words[0] != program:
                    continue
                argv = []
                for word in words[1:]:
                    if word in SHELL_OPERATORS:
                        break
                    argv.append(word)
                yield f"{path.relative_to(REPO)}:{first_line + offset}", argv


STAGECTL_LINES = list(command_lines("stagectl"))
PROXY_LINES = list(command_lines("stage-proxy"))


def test_the_docs_show_command_lines() -> None:
    """The extraction itself works: the runbook pages hold dozens of stagectl lines."""
    assert len(STAGECTL_LINES) >= 40 and len(PROXY_LINES) >= 1
    covered = {argv[0] for _, argv in STAGECTL_LINES if argv}
    assert {"gate", "rollout", "normalize", "migrate", "backup", "preflight", "drill"} <= covered


@pytest.mark.parametrize(("where", "argv"), STAGECTL_LINES, ids=[where for where, _ in STAGECTL_LINES])
def test_documented_stagectl_lines_parse(where: str, argv: list[str]) -> None:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exc:  # --help
        assert exc.code == 0, f"{where}: stagectl {shlex.join(argv)}"
    except CommandError as exc:
        pytest.fail(f"{where}: stagectl {shlex.join(argv)}: {exc}")


@pytest.mark.parametrize(("where", "argv"), PROXY_LINES, ids=[where for where, _ in PROXY_LINES])
def test_documented_proxy_lines_parse(where: str, argv: list[str]) -> None:
    try:
        proxy_parser().parse_args(argv)
    except Exception as exc:  # the parser's error, whatever its type, is the finding
        pytest.fail(f"{where}: stage-proxy {shlex.join(argv)}: {exc}")


def _resolves(words: list[str]) -> bool:
    """Each leading word that is not an option or a placeholder names a (sub)command."""
    parser = build_parser()
    for word in words:
        if word.startswith("-") or not word.islower():
            return True
        commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not commands:
            return True
        choices: dict[str, argparse.ArgumentParser] = commands[0].choices
        if word not in choices:
            return False
        parser = choices[word]
    return True


def test_inline_mentions_name_real_commands() -> None:
    wrong = []
    for path in DOCS:
        for match in INLINE.finditer(path.read_text(encoding="utf-8")):
            words = match.group(1).split()[1:]
            head = [w for w in words if re.fullmatch(r"[a-z][a-z-]*", w)][:2] if words else []
            if not _resolves(head):
                wrong.append(f"{path.relative_to(REPO)}: `{match.group(1)}`")
    assert not wrong, "\n".join(wrong)


def test_no_tracked_file_points_at_the_brief() -> None:
    """The repository stands alone: nothing tracked cites the design brief that lived outside it."""
    needles = ["../" + "shared", "DESIGN" + " §", "DESIGN" + ".md"]
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    hits = []
    for name in tracked.decode().split("\0"):
        path = REPO / name
        if not name or not path.is_file() or path.suffix in {".png", ".gz"}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        hits += [f"{name}: {needle}" for needle in needles if needle in text]
    assert not hits, "\n".join(hits)


def test_every_doc_page_is_linked_from_the_readme() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    pages = list((REPO / "docs").glob("*.md"))
    assert pages and all(f"docs/{p.name}" in readme for p in pages), [p.name for p in pages
                                                                        if f"docs/{p.name}" not in readme]


def test_relative_links_in_docs_resolve() -> None:
    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(REPO)} -> {target}")
    assert not broken, "\n".join(broken)
