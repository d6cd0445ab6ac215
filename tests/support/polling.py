"""Test helpers: polling with a generous deadline, and a schema with the plumbing and an effects table."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from services.common.migrate import discover, migrate

T = TypeVar("T")


async def until(predicate: Callable[[], Awaitable[T]], timeout: float = 30.0, interval: float = 0.05) -> T:
    """Poll an async predicate until it returns something truthy; generous deadlines, no timing claims."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(interval)


async def plumbing_schema(database_url: str, schema: str) -> asyncpg.Connection:
    """Migrate the plumbing tables into `schema`, add probe_effects, return a connection that sees them."""
    await migrate(database_url, schema, discover(None))
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    await conn.execute(
        "create table probe_effects (event_id uuid not null, consumer text not null default '',"
        " at timestamptz default now())"
    )
    return conn
