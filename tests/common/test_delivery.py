"""Nothing lost, nothing twice: outbox relay, inbox consumers and dead letters against real servers."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from support.harness import REPO, settings_env, spawn
from support.polling import plumbing_schema, until
from support.probe_process import SCHEMA, probe_consumer_spec

from services.common import bus as busmod
from services.common import consumers, outbox
from services.common import db as dbmod
from services.common.embedded import EmbeddedNats
from services.common.events import AnyEvent, SystemProbe
from services.common.settings import Settings

PROBE = str(REPO / "tests" / "support" / "probe_process.py")


@pytest.fixture
async def probe_db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await plumbing_schema(settings.database_url, SCHEMA)
    yield conn
    await conn.close()


async def stream_count(bus: busmod.Bus, stream: str = "SYSTEM") -> int:
    info = await bus.js.stream_info(bus.ns.stream(stream))
    return int(info.state.messages)


def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    return proc.wait(timeout)


async def test_relay_killed_between_publish_and_mark_delivers_exactly_once(
    settings: Settings, probe_db: asyncpg.Connection, bus: busmod.Bus, tmp_path: Path
) -> None:
    event = SystemProbe(note="crash me")
    async with probe_db.transaction():
        await outbox.append(probe_db, event)

    crashing = spawn(
        [PROBE, "relay"],
        # A short lease: the crashed relay's claim on the row must expire before another may publish it.
        settings_env(settings, ABONENT_FAILPOINTS="relay.after_publish", ABONENT_OUTBOX_LEASE_S="1"),
        tmp_path / "relay1.log",
    )
    assert await asyncio.to_thread(wait_exit, crashing) == -signal.SIGKILL
    # Published but not marked: the crash window the outbox must survive.
    assert await probe_db.fetchval("select published_at from outbox where id = $1", event.event_id) is None
    assert await stream_count(bus) == 1

    relay = spawn([PROBE, "relay"], settings_env(settings), tmp_path / "relay2.log")
    consumer = spawn([PROBE, "consumer"], settings_env(settings), tmp_path / "consumer.log")
    try:
        await until(
            lambda: probe_db.fetchval(
                "select published_at is not null from outbox where id = $1", event.event_id
            )
        )
        await until(lambda: probe_db.fetchval("select count(*) from probe_effects"))
        await asyncio.sleep(1.0)  # room for a wrong second delivery to show up
        assert (
            await probe_db.fetchval("select count(*) from probe_effects where event_id = $1", event.event_id)
            == 1
        )
        assert await stream_count(bus) == 1, "JetStream must deduplicate the republish by Nats-Msg-Id"
    finally:
        for proc in (relay, consumer):
            proc.terminate()
            await asyncio.to_thread(wait_exit, proc)


@pytest.mark.parametrize("failpoint", ["before_commit", "before_ack"])
async def test_consumer_killed_mid_handler_reprocesses_without_double_effect(
    failpoint: str, settings: Settings, probe_db: asyncpg.Connection, bus: busmod.Bus, tmp_path: Path
) -> None:
    event = SystemProbe(note=failpoint)
    await bus.publish(event.SUBJECT, outbox.encode_event(event), str(event.event_id))

    crashing = spawn(
        [PROBE, "consumer"],
        settings_env(settings, ABONENT_FAILPOINTS=f"consumer.probe_effects.{failpoint}"),
        tmp_path / "consumer1.log",
    )
    assert await asyncio.to_thread(wait_exit, crashing) == -signal.SIGKILL
    expected_after_crash = 0 if failpoint == "before_commit" else 1
    assert await probe_db.fetchval("select count(*) from probe_effects") == expected_after_crash

    consumer = spawn([PROBE, "consumer"], settings_env(settings), tmp_path / "consumer2.log")
    try:
        # Redelivered after ack_wait (2 s); applied once, or found in the inbox and just acked.
        async def acked() -> bool:
            info = await bus.js.consumer_info(bus.ns.stream("SYSTEM"), "probe_effects")
            return info.num_ack_pending == 0 and info.num_pending == 0 and info.delivered.stream_seq >= 1

        await until(acked)
        await until(lambda: probe_db.fetchval("select count(*) from probe_effects"))
        assert await probe_db.fetchval("select count(*) from probe_effects") == 1
        assert await probe_db.fetchval("select count(*) from inbox where consumer = 'probe_effects'") == 1
    finally:
        consumer.terminate()
        await asyncio.to_thread(wait_exit, consumer)


async def test_poison_and_failing_handlers_are_dead_lettered_but_outages_retry_forever(
    settings: Settings, probe_db: asyncpg.Connection, bus: busmod.Bus
) -> None:
    pool = await dbmod.create_pool(settings.database_url, SCHEMA)
    calls: dict[str, int] = {}

    async def judge(conn: dbmod.Connection, event: AnyEvent) -> None:
        assert isinstance(event, SystemProbe)
        calls[event.note] = calls.get(event.note, 0) + 1
        if event.note == "reject":
            raise consumers.PoisonMessage("note says reject")
        if event.note == "bug":
            raise RuntimeError("handler bug")
        raise consumers.TransientError("dependency down")

    spec = consumers.ConsumerSpec(
        name="picky",
        stream="SYSTEM",
        subjects=["system.probe"],
        handler=judge,
        ack_wait_s=1.0,
        max_deliver=2,
        retry_delays_s=(0.1,),
    )
    runner = consumers.ConsumerRunner(pool, bus, spec)
    await runner.start()
    try:
        await bus.publish("system.probe", b"{not json", uuid.uuid4().hex)
        rejected = SystemProbe(note="reject")
        await bus.publish(rejected.SUBJECT, outbox.encode_event(rejected), str(rejected.event_id))
        bug = SystemProbe(note="bug")
        await bus.publish(bug.SUBJECT, outbox.encode_event(bug), str(bug.event_id))
        outage = SystemProbe(note="outage")
        await bus.publish(outage.SUBJECT, outbox.encode_event(outage), str(outage.event_id))

        rows = await until(lambda: _dead_letters(probe_db, expected=3))
        reasons = {r["event_id"]: r["reason"] for r in rows}
        assert reasons[None].startswith("undecodable")
        assert reasons[str(rejected.event_id)] == "rejected: note says reject"
        assert reasons[str(bug.event_id)] == "failed 2 times: RuntimeError('handler bug')"
        assert calls["bug"] == 2

        # The transient one keeps coming back far past the failure budget and is never dead-lettered.
        await until(lambda: _at_least(calls, "outage", 3 * spec.max_deliver))
        assert await probe_db.fetchval("select count(*) from dead_letters") == 3
        assert await probe_db.fetchval("select count(*) from inbox") == 0, (
            "failed handlers leave no inbox row"
        )
    finally:
        await runner.stop()
        await pool.close()


async def _at_least(counts: dict[str, int], key: str, minimum: int) -> bool:
    return counts.get(key, 0) >= minimum


async def _dead_letters(conn: asyncpg.Connection, expected: int) -> list[asyncpg.Record] | None:
    rows = await conn.fetch("select event_id, reason from dead_letters order by id")
    return rows if len(rows) >= expected else None


async def test_consumption_resumes_after_nats_restart(
    settings: Settings, probe_db: asyncpg.Connection, tmp_path: Path
) -> None:
    nats = EmbeddedNats(tmp_path / "js").start()
    pool = await dbmod.create_pool(settings.database_url, SCHEMA)
    bus = await busmod.connect(nats.url, "restart-test", settings.nats_namespace)
    runner = consumers.ConsumerRunner(pool, bus, probe_consumer_spec())
    try:
        await bus.ensure_streams()
        await runner.start()
        first = SystemProbe(note="before restart")
        await bus.publish(first.SUBJECT, outbox.encode_event(first), str(first.event_id))
        await until(lambda: probe_db.fetchval("select count(*) from probe_effects"))

        nats.stop()
        await asyncio.sleep(0.5)
        nats.start()  # same port, same store
        second = SystemProbe(note="after restart")
        await until(lambda: _connected(bus))
        await bus.publish(second.SUBJECT, outbox.encode_event(second), str(second.event_id))
        await until(
            lambda: probe_db.fetchval(
                "select count(*) from probe_effects where event_id = $1", second.event_id
            )
        )
        assert await probe_db.fetchval("select count(*) from probe_effects") == 2
    finally:
        await runner.stop()
        await bus.nc.close()
        await pool.close()
        nats.stop()


async def _connected(bus: busmod.Bus) -> bool:
    return bus.connected
