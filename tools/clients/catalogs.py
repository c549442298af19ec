"""Which catalog a tool classifies with: the one source every classifying command shares (docs/catalog.md).

The proxy and the tools must classify with the same catalog, or a migration
leaves rows the proxy would accept unnormalized. So, for ``migrate``,
``normalize``, ``offenders``, ``audit-consumers`` and ``catalog check``:

* ``--config`` / ``$STAGE_CONFIG``: that file;
* else, with an admin URL (``--admin-url`` / ``$STAGE_ADMIN_URL``): the catalog
  the proxy serves (``GET /_ops/catalog``), checked by the same rules;
* else the built-in catalog, with a warning that it may not be the proxy's.

A file *and* an admin URL: the proxy's version must be the file's, or the
command stops before touching anything (exit 2, both versions named). Every
command prints the source and version it uses (on stderr, :func:`say`) before
the first thing it reports, once its input is known to be good — a mistake in
the input stays one line.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from proxy.catalog.compare import catalog_version
from proxy.catalog.stages import DEFAULT_CATALOG_TOML, Catalog, parse_catalog
from proxy.shared import catalog_files
from proxy.shared.secrets import mask_url
from proxy.wire import catalogs as wire
from proxy.wire.fields import WireError
from tools.clients import admin_api
from tools.shared.errors import EXIT_USAGE, CommandError


@dataclass(frozen=True, slots=True)
class ChosenCatalog:
    """A catalog, where it came from and its version."""

    catalog: Catalog
    source: str  # "file PATH", "proxy URL" or "built-in"
    version: str
    warning: str | None = None

    def line(self) -> str:
        """The first line a classifying command prints."""
        return f"catalog: {self.source}, version {self.version}" + (f" ({self.warning})" if self.warning else "")

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "version": self.version}


def read_file(path: str, what: str = "--config") -> Catalog:
    """A catalog file, checked (the proxy's own loader); CommandError (exit 2) naming the file and its first
    problem."""
    try:
        return catalog_files.load(Path(path), what)[0]
    except catalog_files.CatalogFileError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None


def local(config: str | None) -> Catalog:
    """--config / $STAGE_CONFIG (``config``), else the built-in catalog: for commands needing only endpoint
    names."""
    return read_file(config) if config else parse_catalog(DEFAULT_CATALOG_TOML)


async def served_by(url: str, timeout_s: float = 5.0) -> tuple[Catalog, str]:
    """The catalog a proxy serves and the version it reports; CommandError if unreachable or inconsistent."""
    async with admin_api.session(timeout_s) as http:
        data = await admin_api.call(http, "GET", f"{url}/_ops/catalog")
    try:
        served = wire.CatalogServed.from_json(data)
    except WireError as exc:
        raise CommandError(f"the catalog {mask_url(url)} serves is not one this stagectl reads: {exc}") from None
    catalog, reported = served.catalog, served.version
    if catalog_version(catalog) != reported:
        raise CommandError(f"{mask_url(url)} reports catalog version {reported}, but what it serves is version "
                           f"{catalog_version(catalog)} to this stagectl: upgrade one of them so both agree")
    return catalog, reported


async def choose(config: str | None, admin_url: str | None, timeout_s: float = 5.0) -> ChosenCatalog:
    """The catalog to classify with, by the rule of the module docstring (``config`` and ``admin_url`` as given
    on the command line or by their variables)."""
    path, url = config, admin_url
    if url is not None:
        url = admin_api.check_url(url.rstrip("/"))
    if path is not None:
        catalog = read_file(path)
        version = catalog_version(catalog)
        if url is not None:
            _, served = await served_by(url, timeout_s)
            if served != version:
                raise CommandError(f"{path} is catalog version {version} but the proxy at {mask_url(url)} serves "
                                   f"version {served}: reload the proxy (stagectl catalog reload) or use its "
                                   "catalog (drop --config); nothing was touched", EXIT_USAGE)
        return ChosenCatalog(catalog, f"file {path}", version)
    if url is not None:
        catalog, version = await served_by(url, timeout_s)
        return ChosenCatalog(catalog, f"proxy {mask_url(url)}", version)
    catalog = parse_catalog(DEFAULT_CATALOG_TOML)
    return ChosenCatalog(catalog, "built-in", catalog_version(catalog),
                         "it may not be the proxy's: pass --config FILE or --admin-url URL")


def say(chosen: ChosenCatalog) -> None:
    """The catalog line, on stderr: before the first thing a classifying command reports. Off a terminal it is a
    JSON object, like the progress lines that may follow it there."""
    if sys.stderr.isatty():
        print(chosen.line(), file=sys.stderr, flush=True)
    else:
        data = {"event": "catalog", **chosen.as_json(), **({"warning": chosen.warning} if chosen.warning else {})}
        print(orjson.dumps(data).decode(), file=sys.stderr, flush=True)
