"""Database plumbing shared by the tools: connecting with clear errors, identifiers, table introspection."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import asyncpg

from proxy.shared.secrets import mask_url
from tools.shared.errors import EXIT_AUTH, EXIT_USAGE, CommandError

TEXT_TYPES: Final = frozenset({"text", "character varying", "character", "citext"})


def resolve_dsn(dsn: str | None) -> str:
    """The DSN given (--dsn or $DATABASE_URL), checked."""
    value = dsn or ""
    if not value:
        raise CommandError("no database: pass --dsn or set DATABASE_URL", EXIT_USAGE)
    if not value.startswith(("postgresql://", "postgres://")):
        raise CommandError(f"--dsn must be a postgresql:// URL, got {mask_url(value)!r}", EXIT_USAGE)
    try:
        urlsplit(value).port  # noqa: B018 - parsing is the check
    except ValueError as exc:
        raise CommandError(f"--dsn {mask_url(value)!r}: {exc}", EXIT_USAGE) from None
    return value


async def connect(dsn: str, timeout_s: float = 10.0) -> asyncpg.Connection:
    """A connection, or a CommandError that says why not (never the password)."""
    try:
        connection: asyncpg.Connection = await asyncpg.connect(dsn, timeout=timeout_s)
        return connection
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise CommandError(f"database refused the credentials for {mask_url(dsn)}: {exc}", EXIT_AUTH) from None
    except asyncpg.InvalidCatalogNameError as exc:
        raise CommandError(f"database does not exist ({mask_url(dsn)}): {exc}", EXIT_USAGE) from None
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise CommandError(f"cannot connect to {mask_url(dsn)}: {reason}") from None
    except (ValueError, asyncpg.ClientConfigurationError) as exc:  # a DSN asyncpg cannot use (bad port, option)
        raise CommandError(f"--dsn {mask_url(dsn)}: {exc}", EXIT_USAGE) from None


def quote_ident(name: str) -> str:
    """SQL identifier quoting (PostgreSQL rules)."""
    return '"' + name.replace('"', '""') + '"'


_NAME = re.compile(r"^[^\x00]{1,63}$")


@dataclass(frozen=True, slots=True)
class Target:
    """The table, stage column and key a migration works on, introspected and quoted."""

    schema: str
    table: str
    column: str
    pk: str
    pk_type: str

    @property
    def qualified(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.table)}"

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.table}.{self.column}"


def _split(table: str) -> tuple[str | None, str]:
    schema, _, name = table.rpartition(".")
    if not _NAME.match(name) or (schema and not _NAME.match(schema)):
        raise CommandError(f"bad table name {table!r}", EXIT_USAGE)
    return schema or None, name


async def introspect(connection: asyncpg.Connection, table: str, column: str, pk: str | None) -> Target:
    """Check the table, the text column and an orderable unique key exist; CommandError naming what is wrong."""
    schema, name = _split(table)
    row = await connection.fetchrow(
        """SELECT c.oid, n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relname = $1 AND c.relkind IN ('r', 'p')
             AND (($2::text IS NULL AND n.nspname = ANY (current_schemas(false))) OR n.nspname = $2)
           ORDER BY array_position(current_schemas(false), n.nspname) LIMIT 1""", name, schema)
    if row is None:
        raise CommandError(f"table {table!r} does not exist", EXIT_USAGE)
    oid, schema_name = row["oid"], row["nspname"]
    columns = {r["attname"]: r["type"] for r in await connection.fetch(
        "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute "
        "WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped", oid)}
    if column not in columns:
        raise CommandError(f"column {column!r} does not exist in {table!r}", EXIT_USAGE)
    base_type = columns[column].split("(")[0]
    if base_type not in TEXT_TYPES:
        raise CommandError(f"column {column!r} is {columns[column]}, not text: stages are strings", EXIT_USAGE)
    key = pk or await _primary_key(connection, oid, table)
    if key not in columns:
        raise CommandError(f"key column {key!r} does not exist in {table!r}", EXIT_USAGE)
    if not await _is_unique(connection, oid, key):
        raise CommandError(f"--pk {key!r} is not unique (no primary key or unique index on it alone)", EXIT_USAGE)
    return Target(schema_name, name, column, key, columns[key])


async def _primary_key(connection: asyncpg.Connection, oid: int, table: str) -> str:
    keys = await connection.fetch(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = $1 AND i.indisprimary", oid)
    if len(keys) != 1:
        what = "no primary key" if not keys else "a composite primary key"
        raise CommandError(f"table {table!r} has {what}: pass --pk COLUMN (a unique, orderable key)", EXIT_USAGE)
    return str(keys[0]["attname"])


async def _is_unique(connection: asyncpg.Connection, oid: int, key: str) -> bool:
    value = await connection.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = i.indkey[0] WHERE i.indrelid = $1 AND i.indisunique AND i.indnkeyatts = 1 "
        "AND i.indpred IS NULL AND a.attname = $2)", oid, key)
    return bool(value)


async def read_only(connection: asyncpg.Connection) -> bool:
    return bool(await connection.fetchval("SELECT current_setting('transaction_read_only') = 'on'"))
