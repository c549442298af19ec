"""``stagectl seed-db``: the legacy ``deals`` table with a realistic mix of stages, filled with COPY."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from tools.clients.db import quote_ident

CANONICAL = ("lead", "qualified", "proposal", "negotiation", "closed_won", "closed_lost")
VARIANTS = ("Closed Won", "closed-won", "WON", "won", " lead ", "Lead", "Negotiating", "PROSPECT", "Closed Lost",
            "closed.lost", "LOST", "Qualified", "PROPOSAL", "closed__won", "Ｌｅａｄ", "negotiation ")
UNKNOWN = ("maybe", "tbd", "Stage 2", "", "??", "on hold", "won?", "closed", "pending review")
# share of rows: canonical, variant, unknown, NULL
MIX = (0.70, 0.20, 0.06, 0.04)
COMPANIES = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Tyrell", "Cyberdyne", "Soylent")

DDL = """CREATE TABLE IF NOT EXISTS {table} (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL,
    stage      text,
    amount     numeric(12, 2),
    updated_at timestamptz NOT NULL DEFAULT now()
)"""


def stage(rng: random.Random) -> str | None:
    roll = rng.random()
    if roll < MIX[0]:
        return rng.choice(CANONICAL)
    if roll < MIX[0] + MIX[1]:
        return rng.choice(VARIANTS)
    if roll < MIX[0] + MIX[1] + MIX[2]:
        return rng.choice(UNKNOWN)
    return None


def rows(count: int, seed: int) -> Iterator[tuple[str, str | None, Decimal, datetime]]:
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(count):
        name = f"{rng.choice(COMPANIES)} deal {i}"
        amount = Decimal(rng.randint(100, 5_000_000)) / 100
        yield name, stage(rng), amount, start + timedelta(minutes=i)


async def seed(connection: asyncpg.Connection, table: str, count: int, seed_value: int, truncate: bool) -> int:
    """Create the table if needed and COPY ``count`` rows in; returns the table's row count."""
    quoted = ".".join(quote_ident(part) for part in table.split("."))
    async with connection.transaction():
        await connection.execute(DDL.format(table=quoted))
        if truncate:
            await connection.execute(f"TRUNCATE {quoted} RESTART IDENTITY")
        schema, _, name = table.rpartition(".")
        await connection.copy_records_to_table(name, schema_name=schema or None, records=rows(count, seed_value),
                                               columns=["name", "stage", "amount", "updated_at"])
    await connection.execute(f"ANALYZE {quoted}")
    return int(await connection.fetchval(f"SELECT count(*) FROM {quoted}"))
