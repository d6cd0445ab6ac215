"""Ordered SQL migrations per service schema, applied once even when replicas start together."""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

PLUMBING_MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True, slots=True)
class Migration:
    version: str  # "plumbing/0001_outbox" or "service/0001_init": sorted plumbing first
    sql: str


def discover(service_dir: Path | None) -> list[Migration]:
    """Plumbing tables (outbox, inbox, dead letters) first, then the service's own files, by name."""
    found: list[Migration] = []
    for label, folder in (("plumbing", PLUMBING_MIGRATIONS), ("service", service_dir)):
        if folder is None or not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.sql")):
            found.append(Migration(f"{label}/{path.stem}", path.read_text(encoding="utf-8")))
    return found


def _lock_key(schema: str) -> int:
    # Advisory locks take a bigint; a stable hash of the schema keeps services from blocking each other.
    return zlib.crc32(f"abonent.migrate.{schema}".encode())


async def migrate(database_url: str, schema: str, migrations: list[Migration]) -> list[str]:
    """Apply what is missing, each file in its own transaction; return the versions applied now."""
    conn = await asyncpg.connect(database_url)
    applied_now: list[str] = []
    try:
        # Session-level lock: a second replica waits here and then finds everything applied.
        await conn.execute("select pg_advisory_lock($1)", _lock_key(schema))
        try:
            await conn.execute(f'create schema if not exists "{schema}"')
            await conn.execute(f'set search_path to "{schema}", public')
            await conn.execute(
                "create table if not exists schema_migrations ("
                " version text primary key, applied_at timestamptz not null default now())"
            )
            done = {r["version"] for r in await conn.fetch("select version from schema_migrations")}
            for migration in migrations:
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "insert into schema_migrations (version) values ($1)", migration.version
                    )
                applied_now.append(migration.version)
                log.info("migration applied", extra={"schema": schema, "version": migration.version})
        finally:
            await conn.execute("select pg_advisory_unlock($1)", _lock_key(schema))
    finally:
        await conn.close()
    return applied_now
