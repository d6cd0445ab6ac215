"""asyncpg pool per service, bound to the service's own schema."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

# The stubs make these generic; the runtime classes are not subscriptable (and Litestar evaluates hints).
# Handlers get pooled connections; tests and the migrator use plain ones. Both speak the same API.
if TYPE_CHECKING:
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    Pool = asyncpg.Pool
    Connection = asyncpg.Connection | PoolConnectionProxy

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()


def _encode_json(value: Any) -> str:
    return _json_encoder.encode(value).decode()


async def _init_connection(conn: Connection) -> None:
    # jsonb in and out through msgspec: one fast, strict JSON implementation everywhere.
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=_encode_json, decoder=_json_decoder.decode, schema="pg_catalog"
        )


async def create_pool(database_url: str, schema: str, *, max_size: int = 10, min_size: int = 1) -> Pool:
    """A pool whose connections see the service's schema first; no service reads another's tables."""
    pool = await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        server_settings={"search_path": f"{schema},public", "application_name": f"abonent-{schema}"},
        # Fail fast while PostgreSQL is down: readiness reports it instead of hanging.
        timeout=5,
        command_timeout=30,
    )
    assert pool is not None
    return pool


async def connect(database_url: str, schema: str) -> asyncpg.Connection[asyncpg.Record]:
    """One connection outside a pool (scripts, seeding), configured like pooled ones."""
    conn = await asyncpg.connect(database_url, server_settings={"search_path": f"{schema},public"})
    await _init_connection(conn)
    return conn


@contextlib.asynccontextmanager
async def transaction(pool: Pool) -> AsyncIterator[Connection]:
    """A connection inside a transaction: state change and outbox rows commit together or not at all."""
    async with pool.acquire() as conn, conn.transaction():
        yield conn


async def ping(pool: Pool, timeout: float = 2.0) -> None:
    async with pool.acquire(timeout=timeout) as conn:
        await conn.fetchval("select 1", timeout=timeout)
