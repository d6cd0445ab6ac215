"""The durable scheduler against real PostgreSQL: due by the injected clock, once across replicas,
survives crashes and restarts, one failing job never blocks the others."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from support.harness import REPO, settings_env, spawn
from support.polling import until

from services.common import db as dbmod
from services.common import scheduler
from services.common.clock import ManualClock
from services.common.migrate import discover, migrate
from services.common.scheduler import Job, Recurring, Scheduler
from services.common.settings import Settings

SCHEMA = "sched"
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
SCHEDULER_PROCESS = str(REPO / "tests" / "support" / "scheduler_process.py")


@pytest.fixture
async def sched_db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    await migrate(settings.database_url, SCHEMA, discover(None))
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": SCHEMA})
    # No unique key on purpose: an effect applied twice shows as two rows.
    await conn.execute("create table effects (kind text not null, key text not null, at timestamptz)")
    yield conn
    await conn.close()


@pytest.fixture
async def pools(settings: Settings, sched_db: asyncpg.Connection) -> AsyncIterator[list[dbmod.Pool]]:
    """Two pools = two replicas of one service."""
    made = [await dbmod.create_pool(settings.database_url, SCHEMA, max_size=3) for _ in range(2)]
    yield made
    for pool in made:
        await pool.close()


async def record_effect(conn: dbmod.Connection, job: Job) -> None:
    await conn.execute("insert into effects (kind, key, at) values ($1, $2, $3)", job.kind, job.key, job.now)


def make_runner(pool: dbmod.Pool, settings: Settings, clock: ManualClock, **kwargs: object) -> Scheduler:
    runner = Scheduler(pool, SCHEMA, settings.database_url, clock=clock, poll_interval_s=0.05, **kwargs)  # type: ignore[arg-type]
    runner.register("probe", record_effect)
    return runner


async def schedule(pool: dbmod.Pool, kind: str, key: str, due_at: dt.datetime) -> None:
    async with dbmod.transaction(pool) as conn:
        await scheduler.schedule(conn, kind, key, due_at, {"n": key})


async def effects(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    return [(r["kind"], r["key"]) for r in await conn.fetch("select kind, key from effects order by key")]


async def test_due_by_the_injected_clock_and_rescheduling_moves_it(
    settings: Settings, pools: list[dbmod.Pool], sched_db: asyncpg.Connection
) -> None:
    clock = ManualClock(T0)
    runner = make_runner(pools[0], settings, clock)
    await schedule(pools[0], "probe", "a", T0 + dt.timedelta(minutes=10))

    assert await runner.run_once() == 0
    clock.advance(dt.timedelta(minutes=9, seconds=59))
    assert await runner.run_once() == 0
    # Scheduling the same (kind, key) again moves the one timer rather than adding a second.
    await schedule(pools[0], "probe", "a", T0 + dt.timedelta(minutes=20))
    clock.set(T0 + dt.timedelta(minutes=10))
    assert await runner.run_once() == 0
    assert await effects(sched_db) == []

    clock.set(T0 + dt.timedelta(minutes=20))
    assert await runner.run_once() == 1
    assert await effects(sched_db) == [("probe", "a")]
    async with pools[0].acquire() as conn:
        job = await scheduler.get_job(conn, "probe", "a")
    assert job is not None
    assert job.state == "done"
    assert job.finished_at == clock.now()
    assert await runner.run_once() == 0  # done means done

    # A cancelled timer never fires.
    await schedule(pools[0], "probe", "b", clock.now())
    async with dbmod.transaction(pools[0]) as conn:
        assert await scheduler.cancel(conn, "probe", "b") is True
    assert await runner.run_once() == 0
    assert await effects(sched_db) == [("probe", "a")]


async def test_timer_commits_with_the_callers_transaction(
    settings: Settings, pools: list[dbmod.Pool], sched_db: asyncpg.Connection
) -> None:
    clock = ManualClock(T0)
    runner = make_runner(pools[0], settings, clock)

    async def failing_state_change() -> None:
        async with dbmod.transaction(pools[0]) as conn:
            await scheduler.schedule(conn, "probe", "rolled-back", T0)
            raise RuntimeError("the state change failed")

    with pytest.raises(RuntimeError):
        await failing_state_change()
    assert await runner.run_once() == 0
    assert await sched_db.fetchval("select count(*) from scheduled_jobs") == 0


async def test_two_replicas_run_each_of_200_jobs_exactly_once(
    settings: Settings, pools: list[dbmod.Pool], sched_db: asyncpg.Connection
) -> None:
    clock = ManualClock(T0)
    async with dbmod.transaction(pools[0]) as conn:
        for i in range(200):
            await scheduler.schedule(conn, "probe", f"{i:03}", T0 - dt.timedelta(seconds=i % 7))
    runners = [make_runner(pool, settings, clock, batch=5) for pool in pools]
    for runner in runners:
        await runner.start()
    try:

        async def all_done() -> bool:
            pending = await sched_db.fetchval("select count(*) from scheduled_jobs where state <> 'done'")
            return pending == 0

        await until(all_done)
    finally:
        for runner in runners:
            await runner.stop()
    rows = await sched_db.fetch("select key, count(*) as n from effects group by key")
    assert len(rows) == 200
    assert {r["n"] for r in rows} == {1}


async def test_a_failing_job_retries_with_backoff_then_fails_and_never_blocks_others(
    settings: Settings, pools: list[dbmod.Pool], sched_db: asyncpg.Connection
) -> None:
    clock = ManualClock(T0)
    runner = make_runner(pools[0], settings, clock, max_attempts=3)

    async def explode(conn: dbmod.Connection, job: Job) -> None:
        # Its effect must roll back with the failure.
        await record_effect(conn, job)
        raise ValueError(f"bad row {job.key} for +7 912 345-67-89")

    runner.register("bad", explode)
    await schedule(pools[0], "bad", "x", T0 - dt.timedelta(seconds=1))  # due first
    for key in ("a", "b"):
        await schedule(pools[0], "probe", key, T0)

    assert await runner.run_once() == 3
    assert await effects(sched_db) == [("probe", "a"), ("probe", "b")]
    async with pools[0].acquire() as conn:
        bad = await scheduler.get_job(conn, "bad", "x")
    assert bad is not None
    assert (bad.state, bad.attempts) == ("pending", 1)
    # The error is recorded, with the phone masked: the row is read by people.
    assert bad.last_error is not None
    assert bad.last_error.startswith("ValueError: bad row x for ")
    assert "345-67" not in bad.last_error
    assert bad.due_at == T0 + runner.backoff(1)

    assert runner.backoff(2) == 2 * runner.backoff(1)
    assert runner.backoff(40) == runner.backoff_cap
    clock.set(T0 + runner.backoff(1) - dt.timedelta(seconds=1))
    assert await runner.run_once() == 0  # not before its backoff
    clock.set(T0 + runner.backoff(1))
    assert await runner.run_once() == 1
    clock.advance(runner.backoff(2))
    assert await runner.run_once() == 1
    async with pools[0].acquire() as conn:
        bad = await scheduler.get_job(conn, "bad", "x")
    assert bad is not None
    assert (bad.state, bad.attempts, bad.finished_at) == ("failed", 3, clock.now())
    clock.advance(dt.timedelta(days=1))
    assert await runner.run_once() == 0
    assert await effects(sched_db) == [("probe", "a"), ("probe", "b")]


async def test_state_survives_a_restart_and_recurring_jobs_keep_their_cadence(
    settings: Settings, pools: list[dbmod.Pool], sched_db: asyncpg.Connection
) -> None:
    clock = ManualClock(T0)
    hourly = Recurring("probe", dt.timedelta(hours=1), key="hourly")
    first = make_runner(pools[0], settings, clock)
    first.every(hourly)
    await schedule(pools[0], "probe", "later", T0 + dt.timedelta(hours=3))
    await first.start()
    await until(lambda: sched_db.fetchval("select count(*) from effects where key = 'hourly'"))
    await first.stop()

    # A new runner object on another pool (the process restarted): nothing is lost or re-run early.
    clock.advance(dt.timedelta(minutes=30))
    second = make_runner(pools[1], settings, clock)
    second.every(hourly)
    assert await second.run_once() == 0
    clock.advance(dt.timedelta(minutes=30))
    assert await second.run_once() == 1
    clock.set(T0 + dt.timedelta(hours=3))
    assert await second.run_once() == 2  # the one-off and the hourly one
    assert await effects(sched_db) == [("probe", "hourly")] * 3 + [("probe", "later")]


async def test_job_of_a_runner_killed_mid_job_is_rerun_after_the_lease_and_applied_once(
    settings: Settings, pools: list[dbmod.Pool], sched_db: asyncpg.Connection, tmp_path: Path
) -> None:
    await schedule(pools[0], "probe", "crash", dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    # A real replica in its own process claims the job, applies the effect and dies before committing.
    crashing = spawn(
        [SCHEDULER_PROCESS, SCHEMA],
        # PYTHONPATH: a script path does not put the repo first, and the shared venv may point elsewhere.
        settings_env(settings, ABONENT_FAILPOINTS="scheduler.probe.before_commit", PYTHONPATH=str(REPO)),
        tmp_path / "replica.log",
    )
    code = await asyncio.to_thread(crashing.wait, 60)
    assert code == -signal.SIGKILL, (tmp_path / "replica.log").read_text()
    claimed = await sched_db.fetchrow("select state, claimed_until from scheduled_jobs")
    assert claimed["state"] == "pending"
    assert claimed["claimed_until"] is not None
    assert await effects(sched_db) == []  # the effect died with the transaction

    # Another replica leaves the job alone while the lease holds, and runs it once it has expired.
    clock = ManualClock(claimed["claimed_until"] - dt.timedelta(seconds=1))
    survivor = make_runner(pools[1], settings, clock)
    assert await survivor.run_once() == 0
    clock.set(claimed["claimed_until"])
    assert await survivor.run_once() == 1
    assert await effects(sched_db) == [("probe", "crash")]
    assert await sched_db.fetchval("select state from scheduled_jobs") == "done"


async def test_a_claim_moved_or_taken_over_does_not_run_twice(
    settings: Settings, pools: list[dbmod.Pool], sched_db: asyncpg.Connection
) -> None:
    """A runner whose handler is still going when its lease runs out keeps the row locked: no overlap."""
    clock = ManualClock(T0)
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(conn: dbmod.Connection, job: Job) -> None:
        await record_effect(conn, job)
        started.set()
        await release.wait()

    slow_runner = Scheduler(pools[0], SCHEMA, settings.database_url, clock=clock)
    slow_runner.register("probe", slow)
    await schedule(pools[0], "probe", "long", T0)
    first_pass = asyncio.create_task(slow_runner.run_once())
    await started.wait()
    clock.advance(slow_runner.lease * 2)
    other = make_runner(pools[1], settings, clock)
    # Lease over, but the job's row is still held. (Bounded: were it run again, it would wait forever.)
    assert await asyncio.wait_for(other.run_once(), 60) == 0
    release.set()
    assert await first_pass == 1
    assert await other.run_once() == 0
    assert await effects(sched_db) == [("probe", "long")]


async def test_a_handler_can_move_its_own_timer_or_ask_to_run_again(
    settings: Settings, pools: list[dbmod.Pool], sched_db: asyncpg.Connection
) -> None:
    """A reminder series: each run schedules the next one in the same transaction as its effect."""
    clock = ManualClock(T0)
    runner = make_runner(pools[0], settings, clock)

    async def remind(conn: dbmod.Connection, job: Job) -> dt.datetime | None:
        await record_effect(conn, job)
        sent = int(job.payload["sent"]) + 1
        if job.key == "series" and sent < 3:
            await scheduler.schedule(conn, job.kind, job.key, job.now + dt.timedelta(days=1), {"sent": sent})
        # "again" asks for one more run an hour after its first, without scheduling anything new.
        return job.now + dt.timedelta(hours=1) if job.key == "again" and job.due_at == T0 else None

    runner.register("remind", remind)
    async with dbmod.transaction(pools[0]) as conn:
        await scheduler.schedule(conn, "remind", "series", T0, {"sent": 0})
        await scheduler.schedule(conn, "remind", "again", T0, {"sent": 0})
    assert await runner.run_once() == 2
    async with pools[0].acquire() as conn:
        series = await scheduler.get_job(conn, "remind", "series")
        again = await scheduler.get_job(conn, "remind", "again")
    assert series is not None
    assert again is not None
    assert (series.state, series.due_at, series.payload) == (
        "pending",
        T0 + dt.timedelta(days=1),
        {"sent": 1},
    )
    assert (again.state, again.due_at) == ("pending", T0 + dt.timedelta(hours=1))
    for _ in range(3):
        clock.advance(dt.timedelta(days=1))
        await runner.run_once()
    async with pools[0].acquire() as conn:
        series = await scheduler.get_job(conn, "remind", "series")
    assert series is not None
    assert series.state == "done"
    rows = await sched_db.fetch("select key, count(*) as n from effects group by key order by key")
    # "again" ran twice: its returned time re-armed it once, then it was done.
    assert [(r["key"], r["n"]) for r in rows] == [("again", 2), ("series", 3)]
