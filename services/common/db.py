"""asyncpg pools bound to a service's own schema, guarded against nested acquisition and endless waits."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
import msgspec
from asyncpg.pool import PoolAcquireContext, PoolConnectionProxy
from prometheus_client import Counter

# The stubs make these generic; the runtime classes are not subscriptable (and Litestar evaluates hints).
# Handlers get pooled connections; tests and the migrator use plain ones. Both speak the same API.
if TYPE_CHECKING:
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
    _PoolBase: TypeAlias = asyncpg.Pool[asyncpg.Record]
    _AcquireBase: TypeAlias = PoolAcquireContext[asyncpg.Record]
    _Proxy: TypeAlias = PoolConnectionProxy[asyncpg.Record]
else:
    Pool = asyncpg.Pool
    Connection = asyncpg.Connection | PoolConnectionProxy
    _PoolBase = asyncpg.Pool
    _AcquireBase = PoolAcquireContext
    _Proxy = PoolConnectionProxy

POOL_TIMEOUTS = Counter(
    "abonent_db_pool_acquire_timeouts_total", "Pool connections not obtained in time", ["schema", "pool"]
)

# How long a connection may be waited for when the pool was built without a say (tests, scripts).
DEFAULT_ACQUIRE_TIMEOUT_S = 5.0


class PoolTimeout(Exception):
    """No pool connection came within the acquire timeout: the process is saturated (or PostgreSQL is
    unreachable). HTTP answers 503 with Retry-After; background loops log and try again."""

    def __init__(self, pool_name: str, timeout_s: float) -> None:
        super().__init__(f"no {pool_name} pool connection within {timeout_s:g} s")
        self.pool_name = pool_name
        self.timeout_s = timeout_s
        # Long enough that a retry meets a pool that had time to drain, short enough for a widget.
        self.retry_after_s = max(1, math.ceil(timeout_s))


class NestedAcquire(RuntimeError):
    """This task asked for a pool connection while holding one. With every task doing that, a full pool
    waits on itself forever, so it is refused at once: pass the held connection down instead."""


# The task holding a pool connection in this context. Tasks inherit a *copy* of their creator's context,
# so a task started while its creator held a connection sees the creator here, not itself, and may
# acquire; only the holder asking again is refused.
_holder: contextvars.ContextVar[asyncio.Task[Any] | None] = contextvars.ContextVar(
    "abonent_db_connection_holder", default=None
)


def holds_connection() -> bool:
    """Whether the current task holds a pool connection (of any guarded pool)."""
    task = asyncio.current_task()
    return task is not None and _holder.get() is task


class _GuardedAcquire(_AcquireBase):
    """`pool.acquire()` that refuses nesting and turns a timed-out wait into PoolTimeout."""

    __slots__ = ("_previous",)

    pool: GuardedPool

    async def __aenter__(self) -> _Proxy:
        if holds_connection():
            raise NestedAcquire(
                f"this task already holds a pool connection and asked the {self.pool.name} pool for"
                " another; pass the held connection to the function instead"
            )
        try:
            conn = await super().__aenter__()
        except TimeoutError:
            POOL_TIMEOUTS.labels(self.pool.schema, self.pool.name).inc()
            # The wait ran out before a connection was handed over, so nothing is left to release.
            self.done = True
            raise PoolTimeout(self.pool.name, self.timeout or 0.0) from None
        self._previous = _holder.get()
        _holder.set(asyncio.current_task())
        return conn

    async def __aexit__(self, *exc: object) -> None:
        try:
            await super().__aexit__(*exc)
        finally:
            _holder.set(self._previous)

    def __await__(self) -> Any:
        # A bare `await pool.acquire()` would hold a connection nothing tracks; only `async with` is allowed.
        raise TypeError("use `async with pool.acquire() as conn:` so the connection is released and tracked")


class GuardedPool(_PoolBase):
    """An asyncpg pool whose acquire always has a deadline and refuses a second connection per task.

    asyncpg's own shortcuts (pool.fetch, pool.execute, ...) go through `acquire` and are guarded too.
    """

    def __init__(self, *args: Any, name: str, schema: str, acquire_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = name
        self.schema = schema
        self.acquire_timeout_s = acquire_timeout_s

    def acquire(self, *, timeout: float | None = None) -> _GuardedAcquire:
        return _GuardedAcquire(self, self.acquire_timeout_s if timeout is None else timeout)


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


async def create_pool(
    database_url: str,
    schema: str,
    *,
    max_size: int = 10,
    min_size: int = 1,
    name: str = "main",
    acquire_timeout_s: float = DEFAULT_ACQUIRE_TIMEOUT_S,
) -> Pool:
    """A guarded pool whose connections see the service's schema first; no service reads another's tables.

    `name` tells pools of one process apart in errors, metrics and pg_stat_activity ("http", "workers").
    """
    pool = GuardedPool(
        database_url,
        name=name,
        schema=schema,
        acquire_timeout_s=acquire_timeout_s,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        init=_init_connection,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        server_settings={"search_path": f"{schema},public", "application_name": f"abonent-{schema}-{name}"},
        # Fail fast while PostgreSQL is down: readiness reports it instead of hanging.
        timeout=5,
        command_timeout=30,
    )
    await pool
    return pool


async def connect(database_url: str, schema: str) -> asyncpg.Connection[asyncpg.Record]:
    """One connection outside a pool (scripts, seeding), configured like pooled ones."""
    conn = await asyncpg.connect(database_url, server_settings={"search_path": f"{schema},public"})
    await _init_connection(conn)
    return conn


@contextlib.asynccontextmanager
async def transaction(pool: Pool) -> AsyncIterator[Connection]:
    """A connection inside a transaction: state change and outbox rows commit together or not at all.

    Everything called inside gets this connection passed down; asking the pool again raises NestedAcquire.
    """
    async with pool.acquire() as conn, conn.transaction():
        yield conn


async def ping(pool: Pool, timeout: float = 2.0) -> None:
    """One round trip through the pool; raises (PoolTimeout among others) when it cannot be made."""
    async with pool.acquire(timeout=timeout) as conn:
        await conn.fetchval("select 1", timeout=timeout)
