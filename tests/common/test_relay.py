"""Several outbox relays on one outbox: nothing lost, nothing twice on the stream, dead relays covered."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import asyncpg
import pytest
from support.harness import REPO, settings_env, spawn
from support.polling import plumbing_schema, until
from support.probe_process import SCHEMA

from services.common import bus as busmod
from services.common import db as dbmod
from services.common import outbox
from services.common.events import SystemProbe, decode_event, encode_event
from services.common.settings import Settings

PROBE = str(REPO / "tests" / "support" / "probe_process.py")


async def append_events(conn: asyncpg.Connection, transactions: int, per_transaction: int) -> list[uuid.UUID]:
    ids: list[uuid.UUID] = []
    for t in range(transactions):
        events = [SystemProbe(note=f"{t}.{i}") for i in range(per_transaction)]
        async with conn.transaction():
            await outbox.append(conn, *events)
        ids += [e.event_id for e in events]
    return ids


async def stream_event_ids(bus: busmod.Bus) -> list[uuid.UUID]:
    """Every message on the SYSTEM stream, in stream order, as the event id inside it."""
    stream = bus.ns.stream("SYSTEM")
    count = int((await bus.js.stream_info(stream)).state.messages)
    return [decode_event((await bus.js.get_msg(stream, seq)).data).event_id for seq in range(1, count + 1)]


@pytest.mark.slow
async def test_three_relays_and_a_killed_one_publish_every_event_exactly_once(
    settings: Settings, bus: busmod.Bus, tmp_path: Path
) -> None:
    conn = await plumbing_schema(settings.database_url, SCHEMA)
    pool = await dbmod.create_pool(settings.database_url, SCHEMA)
    relays: list[outbox.OutboxRelay] = []
    try:
        expected = await append_events(conn, transactions=24, per_transaction=10)

        # This relay leases a batch of 100 for 2 s, publishes one row of it and is SIGKILLed.
        doomed = spawn(
            [PROBE, "relay"],
            settings_env(settings, ABONENT_FAILPOINTS="relay.after_publish", ABONENT_OUTBOX_LEASE_S="2"),
            tmp_path / "doomed-relay.log",
        )
        assert await asyncio.to_thread(doomed.wait, 60) == -signal.SIGKILL
        orphaned = await conn.fetch(
            "select id, claimed_until, claimed_by from outbox"
            " where published_at is null and claimed_until is not null"
        )
        assert len(orphaned) == 100
        doomed_id = orphaned[0]["claimed_by"]

        # Three relays share the outbox (small batches, so they interleave) while more events arrive.
        relays = [
            outbox.OutboxRelay(pool, bus, SCHEMA, settings.database_url, poll_interval_s=0.05, batch=20)
            for _ in range(3)
        ]
        for relay in relays:
            await relay.start()
        expected += await append_events(conn, transactions=6, per_transaction=10)

        await until(
            lambda: conn.fetchval("select count(*) = 0 from outbox where published_at is null"), timeout=90
        )
        on_stream = await stream_event_ids(bus)
        assert len(on_stream) == len(set(on_stream)) == len(expected), "nothing twice on the stream"
        assert set(on_stream) == set(expected), "nothing lost"

        # The dead relay's rows were taken over only after its lease ran out, by the living relays.
        takeover = {
            r["id"]: r
            for r in await conn.fetch(
                "select id, published_at, claimed_by from outbox where id = any($1::uuid[])",
                [r["id"] for r in orphaned],
            )
        }
        living = {relay.relay_id for relay in relays}
        for row in orphaned:
            assert takeover[row["id"]]["published_at"] >= row["claimed_until"]
            assert takeover[row["id"]]["claimed_by"] in living
        assert doomed_id not in living
    finally:
        for relay in relays:
            await relay.stop()
        await pool.close()
        await conn.close()


async def test_a_failed_publish_releases_the_rest_of_the_batch_at_once(
    settings: Settings, bus: busmod.Bus
) -> None:
    conn = await plumbing_schema(settings.database_url, SCHEMA)
    pool = await dbmod.create_pool(settings.database_url, SCHEMA)
    try:
        # No stream takes this subject, so its publish fails; the good event behind it waits its turn.
        stray = uuid.uuid4()
        await conn.execute(
            "insert into outbox (id, subject, payload) values ($1, 'nowhere.to.go', $2)", stray, b"{}"
        )
        behind = (await append_events(conn, transactions=1, per_transaction=1))[0]
        relay = outbox.OutboxRelay(pool, bus, SCHEMA, settings.database_url, lease_s=60)

        assert await relay.publish_batch() == 0
        rows = {
            r["id"]: r
            for r in await conn.fetch(
                "select id, attempts, last_error, claimed_until, published_at from outbox"
            )
        }
        assert rows[stray]["attempts"] == 1
        assert rows[stray]["last_error"]
        assert rows[behind]["attempts"] == 0
        assert rows[behind]["last_error"] is None
        # Released, not left leased for 60 s: the next pass (any relay's) tries again at once.
        assert all(r["claimed_until"] is None and r["published_at"] is None for r in rows.values())
    finally:
        await pool.close()
        await conn.close()


async def test_a_row_leased_by_its_committer_is_published_by_it_and_left_alone_by_relays(
    settings: Settings, bus: busmod.Bus
) -> None:
    """publish_claimed: the committer publishes its own (leased) rows at once; a running relay passes over
    them meanwhile, and a failed publish gives them back to the relays at once."""
    conn = await plumbing_schema(settings.database_url, SCHEMA)
    pool = await dbmod.create_pool(settings.database_url, SCHEMA)
    relay = outbox.OutboxRelay(pool, bus, SCHEMA, settings.database_url, poll_interval_s=0.05)
    try:
        mine, stray = SystemProbe(note="mine"), uuid.uuid4()
        rows = [(mine.event_id, mine.SUBJECT, encode_event(mine)), (stray, "nowhere.to.go", b"{}")]
        for event_id, subject, payload in rows:
            await conn.execute(
                "insert into outbox (id, subject, payload, claimed_by, claimed_until)"
                " values ($1, $2, $3, 'me', now() + interval '60 seconds')",
                event_id,
                subject,
                payload,
            )
        await relay.start()
        # A relay pass is over once an ordinary event behind the leased ones is out; they are still in.
        ordinary = (await append_events(conn, transactions=1, per_transaction=1))[0]
        await until(
            lambda: conn.fetchval("select published_at is not null from outbox where id = $1", ordinary)
        )
        leased = await conn.fetch("select id from outbox where published_at is null and claimed_by = 'me'")
        assert {r["id"] for r in leased} == {mine.event_id, stray}

        # Published by its committer, in order; the one no stream takes fails and is released at once
        # (the relay then retries it like any failed row).
        assert await outbox.publish_claimed(pool, bus, "me", rows, SCHEMA) == 1
        state = {
            r["id"]: r
            for r in await conn.fetch("select id, published_at, claimed_until, attempts from outbox")
        }
        assert state[mine.event_id]["published_at"] is not None
        assert state[stray]["published_at"] is None
        assert state[stray]["claimed_until"] is None or state[stray]["attempts"] >= 1
        on_stream = await stream_event_ids(bus)
        assert on_stream.count(mine.event_id) == 1
    finally:
        await relay.stop(timeout=5)
        await pool.close()
        await conn.close()
