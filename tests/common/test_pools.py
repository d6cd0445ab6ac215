"""Pool discipline against real PostgreSQL: nested acquisition is refused, waiting has a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.common import db as dbmod
from services.common.settings import Settings, SettingsError, load_settings


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[dbmod.Pool]:
    created = await dbmod.create_pool(
        settings.database_url, "public", max_size=2, name="http", acquire_timeout_s=0.3
    )
    yield created
    await created.close()


async def test_a_task_holding_a_connection_cannot_take_a_second(pool: dbmod.Pool) -> None:
    async with pool.acquire() as conn:
        assert dbmod.holds_connection()
        with pytest.raises(dbmod.NestedAcquire):
            async with pool.acquire():
                pass
        # asyncpg's shortcuts acquire too, and a transaction is an acquire.
        with pytest.raises(dbmod.NestedAcquire):
            await pool.fetchval("select 1")
        with pytest.raises(dbmod.NestedAcquire):
            async with dbmod.transaction(pool):
                pass
        # The held connection still works after the refusals.
        assert await conn.fetchval("select 1") == 1
    assert not dbmod.holds_connection()
    async with dbmod.transaction(pool) as conn:
        with pytest.raises(dbmod.NestedAcquire):
            await pool.execute("select 1")
    # Released: this task may acquire again, one at a time.
    assert await pool.fetchval("select 2") == 2


async def test_a_second_pool_is_no_way_around_it(pool: dbmod.Pool, settings: Settings) -> None:
    other = await dbmod.create_pool(settings.database_url, "public", max_size=1, name="workers")
    try:
        async with pool.acquire():
            with pytest.raises(dbmod.NestedAcquire, match="workers"):
                async with other.acquire():
                    pass
    finally:
        await other.close()


async def test_a_task_started_while_holding_may_acquire(pool: dbmod.Pool) -> None:
    """create_task copies the context, holder included; the child is another task and is not refused."""

    async def child() -> int:
        assert not dbmod.holds_connection()
        async with pool.acquire() as conn:
            assert dbmod.holds_connection()
            value: int = await conn.fetchval("select 3")
            return value

    async with pool.acquire():
        spawned = asyncio.create_task(child())
        assert await spawned == 3
        assert dbmod.holds_connection(), "the child's acquire and release leave the parent's mark alone"


async def test_waiting_for_a_full_pool_times_out(pool: dbmod.Pool) -> None:
    release = asyncio.Event()
    holding = 0

    async def hold() -> None:
        nonlocal holding
        async with pool.acquire():
            holding += 1
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    try:
        while holding < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(dbmod.PoolTimeout) as raised:
            async with pool.acquire():
                pass
        assert raised.value.pool_name == "http"
        assert raised.value.retry_after_s == 1
        assert not dbmod.holds_connection(), "a failed acquire leaves nothing held"
    finally:
        release.set()
        await asyncio.gather(*holders)
    # The pool recovers once the holders let go.
    assert await pool.fetchval("select 1") == 1


async def test_a_bare_await_of_acquire_is_refused(pool: dbmod.Pool) -> None:
    """`await pool.acquire()` would hold a connection nothing tracks or releases."""
    with pytest.raises(TypeError, match="async with"):
        await pool.acquire()


def test_pool_settings_are_validated() -> None:
    settings = load_settings(
        environ={"ABONENT_DB_WORKER_POOL_MAX": "3", "ABONENT_DB_ACQUIRE_TIMEOUT_S": "2.5"}
    )
    assert (settings.db_worker_pool_max, settings.db_acquire_timeout_s) == (3, 2.5)
    with pytest.raises(SettingsError, match="ABONENT_DB_WORKER_POOL_MAX"):
        load_settings(environ={"ABONENT_DB_WORKER_POOL_MAX": "0"})
    with pytest.raises(SettingsError, match="ABONENT_DB_ACQUIRE_TIMEOUT_S"):
        load_settings(environ={"ABONENT_DB_ACQUIRE_TIMEOUT_S": "0"})
