"""Retention against real PostgreSQL and NATS: old rows go in bounded batches by the scheduler's clock,
settings are validated at start-up naming the variables, and every service runs it from its lifespan."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from support.harness import make_settings, migrate_service

from services.common import bus as busmod
from services.common import db as dbmod
from services.common import retention, scheduler
from services.common.clock import ManualClock
from services.common.migrate import discover, migrate
from services.common.scheduler import Job, Recurring, Scheduler
from services.common.settings import Settings, SettingsError, load_settings
from services.common.web import Runtime, build_app

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[dbmod.Pool]:
    await migrate(settings.database_url, "ret", discover(None))
    made = await dbmod.create_pool(settings.database_url, "ret", max_size=2)
    yield made
    await made.close()


async def run_until_idle(runner: Scheduler) -> int:
    """Passes until nothing is due; returns the number of jobs run."""
    total = 0
    while ran := await runner.run_once():
        total += ran
    return total


async def count(conn: dbmod.Connection, table: str) -> int:
    return int(await conn.fetchval(f"select count(*) from {table}"))


async def test_plumbing_tables_are_pruned_by_age_in_bounded_batches(
    settings: Settings, pool: dbmod.Pool
) -> None:
    settings = msgspec.structs.replace(settings, retention_batch_size=2)
    keep_outbox = HOUR * settings.retention_outbox_hours
    keep_inbox = DAY * settings.retention_inbox_days
    keep_dead = DAY * settings.retention_dead_letters_days
    keep_jobs = DAY * settings.retention_jobs_days
    keep_hooks = DAY * settings.retention_webhooks_days
    old, recent = dt.timedelta(minutes=1), -dt.timedelta(minutes=1)  # just past / just inside the age
    async with dbmod.transaction(pool) as conn:
        # Five old published outbox rows (more than one batch), one recent, one old but never published.
        outbox_rows = [(T0 - keep_outbox - old, T0 - keep_outbox - old)] * 5
        outbox_rows += [(T0 - keep_outbox - old, T0 - keep_outbox - recent), (T0 - 30 * DAY, None)]
        await conn.executemany(
            "insert into outbox (id, subject, payload, created_at, published_at)"
            " values ($1, 's', '', $2, $3)",
            [(uuid.uuid4(), created, published) for created, published in outbox_rows],
        )
        await conn.executemany(
            "insert into inbox (consumer, event_id, processed_at) values ('c', $1, $2)",
            [(uuid.uuid4(), T0 - keep_inbox - old), (uuid.uuid4(), T0 - keep_inbox - recent)],
        )
        await conn.executemany(
            "insert into dead_letters (consumer, subject, stream_seq, reason, created_at)"
            " values ('c', 's', $1, 'r', $2)",
            [(1, T0 - keep_dead - old), (2, T0 - keep_dead - recent)],
        )
        # Outbound webhooks: a delivery finished long ago (with its attempt log), one finished recently,
        # and an old one still being retried (never pruned).
        hooks = [
            (uuid.uuid4(), "delivered", T0 - keep_hooks - old),
            (uuid.uuid4(), "failed", T0 - keep_hooks - recent),
        ]
        hooks.append((uuid.uuid4(), "pending", None))
        await conn.executemany(
            "insert into outbound_webhooks (id, channel, subscriber, event_id, event_type, payload, status,"
            " created_at, finished_at) values ($1, 'c', 's', gen_random_uuid(), 't', '', $2, $4, $3)",
            [(hook_id, status, finished, T0 - 60 * DAY) for hook_id, status, finished in hooks],
        )
        await conn.execute(
            "insert into outbound_webhook_attempts (delivery_id, attempted_at, duration_ms)"
            " values ($1, $2, 1)",
            hooks[0][0],
            T0 - keep_hooks - old,
        )
        await scheduler.schedule(conn, "other", "old", T0 - keep_jobs - HOUR)
        await scheduler.schedule(conn, "other", "recent", T0 - HOUR)
        await scheduler.schedule(conn, "other", "waiting", T0 + 400 * DAY)

    clock = ManualClock(T0 - keep_jobs - HOUR)
    runner = Scheduler(pool, "ret", settings.database_url, clock=clock)

    async def nothing(_conn: dbmod.Connection, _job: Job) -> None:
        return None

    runner.register("other", nothing)
    await runner.run_once()  # finishes "other/old" at its time
    clock.set(T0 - HOUR)
    await runner.run_once()  # finishes "other/recent"

    clock.set(T0)
    retention.install(runner, settings)
    # Outbox: three passes of at most two rows each, then the job waits for the next hour.
    assert await run_until_idle(runner) == 5 + 2
    async with pool.acquire() as conn:
        statuses = await conn.fetch("select status from outbound_webhooks order by status")
        assert [r["status"] for r in statuses] == ["failed", "pending"]
        assert await count(conn, "outbound_webhook_attempts") == 0  # went with its delivery
        assert await count(conn, "outbox") == 2
        assert await conn.fetchval("select count(*) from outbox where published_at is null") == 1
        assert await count(conn, "inbox") == 1
        assert await count(conn, "dead_letters") == 1
        left = await conn.fetch("select key from scheduled_jobs where kind = 'other' order by key")
        assert [r["key"] for r in left] == ["recent", "waiting"]
        hourly = await scheduler.get_job(conn, retention.RETENTION_KIND, "outbox")
    assert hourly is not None
    assert (hourly.state, hourly.due_at) == ("pending", T0 + retention.RETENTION_EVERY)

    # An hour later the rows that have aged past the limit go too.
    clock.advance(HOUR)
    assert await run_until_idle(runner) == 5
    async with pool.acquire() as conn:
        assert await count(conn, "outbox") == 1
        assert await count(conn, "inbox") == 0
        assert await count(conn, "dead_letters") == 0


async def test_callbacks_spent_keys_and_form_tokens_are_pruned(settings: Settings) -> None:
    from services.callback.app import SPEC

    await migrate_service(settings, "callback")
    pool = await dbmod.create_pool(settings.database_url, "callback", max_size=2)
    try:
        keep_keys = HOUR * settings.retention_idempotency_keys_hours
        keep_tokens = HOUR * settings.retention_form_tokens_hours
        async with dbmod.transaction(pool) as conn:
            await conn.executemany(
                "insert into idempotency_keys"
                " (site_key, key, request_hash, status_code, response, created_at)"
                " values ('s', $1, '', 201, '{}', $2)",
                [("old", T0 - keep_keys - HOUR), ("recent", T0 - keep_keys + HOUR)],
            )
            await conn.executemany(
                "insert into spent_form_tokens (token_hash, spent_at) values ($1, $2)",
                [(b"old", T0 - keep_tokens - HOUR), (b"recent", T0 - keep_tokens + HOUR)],
            )
        runner = Scheduler(pool, "callback", settings.database_url, clock=ManualClock(T0))
        retention.install(runner, settings, [*retention.PLUMBING_RULES, *SPEC.retention])
        await run_until_idle(runner)
        async with pool.acquire() as conn:
            keys = await conn.fetch("select key from idempotency_keys")
            tokens = await conn.fetch("select token_hash from spent_form_tokens")
        assert [r["key"] for r in keys] == ["recent"]
        assert [bytes(r["token_hash"]) for r in tokens] == [b"recent"]
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"ABONENT_RETENTION_INBOX_DAYS": "7", "ABONENT_STREAM_MAX_AGE_DAYS": "7"},
            ["ABONENT_RETENTION_INBOX_DAYS", "ABONENT_STREAM_MAX_AGE_DAYS"],
        ),
        (
            {"ABONENT_RETENTION_DEAD_LETTERS_DAYS": "30", "ABONENT_RETENTION_INBOX_DAYS": "14"},
            ["ABONENT_RETENTION_DEAD_LETTERS_DAYS", "ABONENT_RETENTION_INBOX_DAYS"],
        ),
        ({"ABONENT_RETENTION_OUTBOX_HOURS": "0"}, ["ABONENT_RETENTION_OUTBOX_HOURS"]),
        ({"ABONENT_RETENTION_JOBS_DAYS": "soon"}, ["ABONENT_RETENTION_JOBS_DAYS"]),
    ],
)
def test_retention_settings_are_validated_naming_the_variables(env: dict[str, str], named: list[str]) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(environ=env)
    for variable in named:
        assert variable in str(error.value)


def test_a_service_rule_below_its_floor_stops_start_up(settings: Settings) -> None:
    from services.callback.app import SPEC

    too_short = msgspec.structs.replace(settings, retention_form_tokens_hours=1)
    with pytest.raises(SettingsError, match="ABONENT_RETENTION_FORM_TOKENS_HOURS"):
        build_app(SPEC, too_short)


async def test_every_service_runs_its_scheduler_with_declared_jobs_retention_and_stream_max_age(
    database_url: str, nats_url: str, nats_namespace: str
) -> None:
    from services.notifier.app import SPEC

    settings = make_settings(
        database_url, nats_url, nats_namespace, stream_max_age_days=3, scheduler_poll_interval_s=0.05
    )
    await migrate_service(settings, "notifier")
    # The test client runs the app on its own event loop: this test talks to the database on its own.
    conn = await dbmod.connect(settings.database_url, "notifier")
    await conn.execute("create table seen (key text, service text)")
    clock = ManualClock()

    def jobs(runtime: Runtime) -> dict[str, scheduler.JobHandler]:
        async def remember(conn: dbmod.Connection, job: Job) -> None:
            await conn.execute("insert into seen values ($1, $2)", job.key, runtime.service)

        return {"remember": remember}

    spec = dataclasses.replace(
        SPEC, jobs=jobs, recurring=[Recurring("remember", dt.timedelta(minutes=5), key="tick")]
    )
    try:
        async with AsyncTestClient(app=build_app(spec, settings, clock=clock)):
            async with conn.transaction():
                await scheduler.schedule(conn, "remember", "once", clock.now() + HOUR)
            clock.advance(HOUR)
            for _ in range(1200):
                done = await conn.fetchval(
                    "select count(*) from scheduled_jobs where kind = 'remember' and key = 'once'"
                    " and state = 'done'"
                )
                if done:
                    break
                await asyncio.sleep(0.05)
            seen = await conn.fetch("select distinct key, service from seen order by key")
            assert [tuple(r) for r in seen] == [("once", "notifier"), ("tick", "notifier")]
            tables = await conn.fetch(
                "select key from scheduled_jobs where kind = $1 order by key", retention.RETENTION_KIND
            )
            # The plumbing tables and the notifier's own (services/notifier/settings.py retention_rules).
            assert [r["key"] for r in tables] == [
                "binding_log",
                "callback_contacts",
                "dead_letters",
                "early_receipts",
                "inbox",
                "messages",
                "outbound_webhooks",
                "outbox",
                "pending_binds",
                "sandbox_messages",
                "scheduled_jobs",
            ]
    finally:
        await conn.close()
    bus = await busmod.connect(nats_url, "check", nats_namespace)
    try:
        info = await bus.js.stream_info(bus.ns.stream("CALLBACK"))
        assert info.config.max_age == 3 * 86400
    finally:
        await bus.nc.close()
