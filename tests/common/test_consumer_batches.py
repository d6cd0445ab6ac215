"""A consumer with `batch_transaction`: one transaction per fetched lane, yet each message keeps its own
outcome - applied once, dead-lettered, retried - and a failing message's writes never stay."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest
from support.polling import plumbing_schema, until
from support.probe_process import SCHEMA

from services.common import bus as busmod
from services.common import consumers, outbox
from services.common import db as dbmod
from services.common.events import AnyEvent, SystemProbe
from services.common.settings import Settings


@pytest.fixture
async def probe_db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await plumbing_schema(settings.database_url, SCHEMA)
    yield conn
    await conn.close()


async def publish(bus: busmod.Bus, event: SystemProbe, msg_id: str | None = None) -> None:
    await bus.publish(event.SUBJECT, outbox.encode_event(event), msg_id or str(event.event_id))


async def test_one_transaction_per_lane_keeps_each_message_s_own_outcome(
    settings: Settings, probe_db: asyncpg.Connection, bus: busmod.Bus
) -> None:
    pool = await dbmod.create_pool(settings.database_url, SCHEMA)
    calls: dict[str, int] = {}

    async def judge(conn: dbmod.Connection, event: AnyEvent) -> None:
        assert isinstance(event, SystemProbe)
        calls[event.note] = calls.get(event.note, 0) + 1
        # Every message writes first: a failing one's write must roll back with it, and only with it.
        await conn.execute("insert into probe_effects (event_id) values ($1)", event.event_id)
        if event.note == "reject":
            raise consumers.PoisonMessage("note says reject")
        if event.note == "bug":
            raise RuntimeError("handler bug")
        if event.note == "outage":
            raise consumers.TransientError("dependency down")

    spec = consumers.ConsumerSpec(
        name="batched",
        stream="SYSTEM",
        subjects=["system.probe"],
        handler=judge,
        ack_wait_s=2.0,
        max_deliver=2,
        retry_delays_s=(0.1,),
        batch=16,
        concurrency=2,
        partition_key=lambda event: str(event.event_id),
        batch_transaction=True,
    )
    good = [SystemProbe(note=f"ok-{i}") for i in range(6)]
    bad = {note: SystemProbe(note=note) for note in ("reject", "bug", "outage")}
    # Published before the consumer starts, so they arrive together, mixed into the same lanes.
    for event in [*good[:3], *bad.values(), *good[3:]]:
        await publish(bus, event)
    # The same event again under another message id (a replay): the inbox makes it a bare ack.
    await publish(bus, good[0], uuid.uuid4().hex)

    runner = consumers.ConsumerRunner(pool, bus, spec)
    await runner.start()
    try:

        async def settled() -> bool:
            dead = await probe_db.fetchval("select count(*) from dead_letters where consumer = 'batched'")
            return dead == 2 and calls.get("outage", 0) >= 4

        await until(settled)
        effects = await probe_db.fetch("select event_id from probe_effects order by event_id")
        assert sorted(r["event_id"] for r in effects) == sorted(e.event_id for e in good)
        inbox = await probe_db.fetch("select event_id from inbox where consumer = 'batched'")
        assert sorted(r["event_id"] for r in inbox) == sorted(e.event_id for e in good)
        dead = await probe_db.fetch("select event_id, reason from dead_letters order by id")
        reasons = {r["event_id"]: r["reason"] for r in dead}
        assert reasons[str(bad["reject"].event_id)] == "rejected: note says reject"
        assert reasons[str(bad["bug"].event_id)] == "failed 2 times: RuntimeError('handler bug')"
        # A lane with a failure is rolled back whole and applied again one by one: a good neighbour's
        # handler may run twice, its effect (above) commits once.
        assert all(calls[e.note] in (1, 2) for e in good)

        async def all_acked() -> bool:
            info = await bus.js.consumer_info(bus.ns.stream("SYSTEM"), "batched")
            # Only the outage keeps coming back (retried for as long as it lasts).
            return info.num_pending == 0 and info.num_ack_pending <= 1

        await until(all_acked)
    finally:
        await runner.stop()
        await pool.close()


async def test_a_lane_without_failures_takes_one_inbox_statement_and_no_savepoints(
    settings: Settings, probe_db: asyncpg.Connection, bus: busmod.Bus
) -> None:
    """Before: per message an inbox insert inside a SAVEPOINT/RELEASE pair (3 statements + the handler's);
    now one inbox insert for the lane, and the batch handler once with the lane's new events."""
    pool = await dbmod.create_pool(settings.database_url, SCHEMA, min_size=1, max_size=1)
    sent: list[str] = []
    batches: list[list[str]] = []

    def record(query: Any) -> None:
        sent.append(" ".join(query.query.split()))

    async def one(conn: dbmod.Connection, event: AnyEvent) -> None:
        raise AssertionError("the batch handler applies a lane without failures")

    async def many(conn: dbmod.Connection, events: Sequence[AnyEvent]) -> None:
        batches.append([e.note for e in events if isinstance(e, SystemProbe)])
        await conn.execute(
            "insert into probe_effects (event_id) select unnest($1::uuid[])", [e.event_id for e in events]
        )

    spec = consumers.ConsumerSpec(
        name="lane",
        stream="SYSTEM",
        subjects=["system.probe"],
        handler=one,
        batch=16,
        batch_transaction=True,
        batch_handler=many,
    )
    events = [SystemProbe(note=f"n-{i}") for i in range(10)]
    for event in events:
        await publish(bus, event)
    await publish(bus, events[0], uuid.uuid4().hex)  # a replay: the inbox has it by the time it is applied
    async with pool.acquire() as conn:
        conn.add_query_logger(record)
    runner = consumers.ConsumerRunner(pool, bus, spec)
    await runner.start()
    try:

        async def applied() -> bool:
            done: int = await probe_db.fetchval("select count(*) from probe_effects")
            return done == len(events)

        await until(applied)

        async def all_acked() -> bool:
            info = await bus.js.consumer_info(bus.ns.stream("SYSTEM"), "lane")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await until(all_acked)
    finally:
        await runner.stop()
        async with pool.acquire() as conn:
            conn.remove_query_logger(record)
        await pool.close()
    assert sorted(note for batch in batches for note in batch) == sorted(e.note for e in events)
    assert not [q for q in sent if q.upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK"))]
    inbox_inserts = [q for q in sent if q.startswith("insert into inbox")]
    # One per fetched lane (the fetches may split the 11 messages; a lane of only the replay has no new
    # event for the batch handler), never one per message.
    assert len(batches) <= len(inbox_inserts) < len(events)
