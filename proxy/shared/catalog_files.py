"""Reading a catalog file: the one loader the proxy (start-up, reload) and stagectl share.

At most ``MAX_CATALOG_CHARS`` + 1 characters are read (a longer file is refused by the checker, never read whole:
a catalog of a gigabyte costs nothing); the text is checked by proxy.catalog's rules.
"""

from __future__ import annotations

from pathlib import Path

from proxy.catalog.stages import DEFAULT_CATALOG_TOML, MAX_CATALOG_CHARS, Catalog, CatalogError, parse_catalog


class CatalogFileError(ValueError):
    """A catalog file that cannot be read or is not a valid catalog: one line naming the file and the problem;
    ``problems`` every problem found when the text was read."""

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)


def read_text(path: Path, what: str = "--config") -> str:
    """The file's text, bounded; CatalogFileError when it cannot be read or is not UTF-8."""
    try:
        with path.open(encoding="utf-8") as file:
            return file.read(MAX_CATALOG_CHARS + 1)
    except UnicodeDecodeError:
        raise CatalogFileError(f"{what}: cannot read {str(path)!r}: not UTF-8 text") from None
    except OSError as exc:
        raise CatalogFileError(f"{what}: cannot read {str(path)!r}: {exc.strerror or exc}") from None


def load(path: Path | None, what: str = "--config") -> tuple[Catalog, str]:
    """The catalog of ``path`` (None: the built-in one) and its text; CatalogFileError naming the file and the
    first problem (and how many more)."""
    text = DEFAULT_CATALOG_TOML if path is None else read_text(path, what)
    try:
        return parse_catalog(text), text
    except CatalogError as exc:
        raise CatalogFileError(f"{what} {str(path) if path else '(built-in)'}: {exc}", exc.problems) from None
