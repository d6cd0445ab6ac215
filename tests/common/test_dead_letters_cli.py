"""`abonent dead-letters list|replay` end to end: a handler rejects, gets fixed, and the replay applies."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
from support.harness import settings_env, spawn
from support.polling import plumbing_schema, until

from services.common import bus as busmod
from services.common import consumers
from services.common import db as dbmod
from services.common.events import AnyEvent, SystemProbe, encode_event
from services.common.settings import Settings

# The CLI looks for dead letters in the services' schemas; the notifier's is free in a test database.
SCHEMA = "notifier"


async def abonent(settings: Settings, tmp_path: Path, *args: str) -> tuple[int, str]:
    log = tmp_path / f"cli-{uuid.uuid4().hex[:6]}.log"
    proc = spawn(["-m", "services.cli", "dead-letters", *args], settings_env(settings), log)
    code = await asyncio.to_thread(proc.wait, 60)
    return code, log.read_text()


async def test_replay_applies_a_dead_letter_once_after_the_fix(
    settings: Settings, bus: busmod.Bus, tmp_path: Path
) -> None:
    conn = await plumbing_schema(settings.database_url, SCHEMA)
    pool = await dbmod.create_pool(settings.database_url, SCHEMA)
    fixed = False

    async def strict(db: dbmod.Connection, event: AnyEvent) -> None:
        if not fixed:
            raise consumers.PoisonMessage("cannot handle this yet")
        await db.execute(
            "insert into probe_effects (event_id, consumer) values ($1, 'strict')", event.event_id
        )

    async def bystander(db: dbmod.Connection, event: AnyEvent) -> None:
        await db.execute(
            "insert into probe_effects (event_id, consumer) values ($1, 'bystander')", event.event_id
        )

    runners = [
        consumers.ConsumerRunner(
            pool,
            bus,
            consumers.ConsumerSpec(name=name, stream="SYSTEM", subjects=["system.probe"], handler=handler),
        )
        for name, handler in (("strict", strict), ("bystander", bystander))
    ]
    for runner in runners:
        await runner.start()
    try:
        first, second = SystemProbe(note="first"), SystemProbe(note="second")
        for event in (first, second):
            await bus.publish(event.SUBJECT, encode_event(event), str(event.event_id))
        await until(lambda: conn.fetchval("select count(*) = 2 from dead_letters"))
        first_id = await conn.fetchval("select id from dead_letters where event_id = $1", str(first.event_id))

        code, out = await abonent(settings, tmp_path, "list", "--consumer", "strict")
        assert code == 0, out
        assert f"notifier:{first_id}" in out
        assert str(first.event_id) in out
        assert "rejected: cannot handle this yet" in out
        assert "2 dead letter(s)" in out

        fixed = True
        code, out = await abonent(settings, tmp_path, "replay", f"notifier:{first_id}")
        assert code == 0, out
        await until(lambda: _effects(conn, "strict", first.event_id))
        replayed = await conn.fetchrow(
            "select replay_count, replayed_at from dead_letters where id = $1", first_id
        )
        assert replayed["replay_count"] == 1
        assert replayed["replayed_at"] is not None

        # --all takes only what was never replayed: the second event, not the first again.
        code, out = await abonent(settings, tmp_path, "replay", "--all", "--consumer", "strict")
        assert code == 0, out
        assert "1 replayed, 0 failed" in out
        await until(lambda: _effects(conn, "strict", second.event_id))
        await until(lambda: _drained(bus))

        effects = await conn.fetch(
            "select consumer, event_id, count(*) from probe_effects group by consumer, event_id"
        )
        assert sorted((r["consumer"], r["event_id"], r["count"]) for r in effects) == sorted(
            (consumer, event.event_id, 1) for consumer in ("strict", "bystander") for event in (first, second)
        ), "each consumer applied each event once; the bystander's inbox absorbed the replays"
        assert await conn.fetchval("select replay_count from dead_letters where id = $1", first_id) == 1

        code, out = await abonent(settings, tmp_path, "list", "--service", "notifier")
        assert "1x, last" in out
    finally:
        for runner in runners:
            await runner.stop()
        await pool.close()
        await conn.close()


async def _effects(conn: asyncpg.Connection, consumer: str, event_id: uuid.UUID) -> bool:
    count: int = await conn.fetchval(
        "select count(*) from probe_effects where consumer = $1 and event_id = $2", consumer, event_id
    )
    return count > 0


async def _drained(bus: busmod.Bus) -> bool:
    for name in ("strict", "bystander"):
        info = await bus.js.consumer_info(bus.ns.stream("SYSTEM"), name)
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def test_replay_refuses_unknown_ids_and_missing_arguments(settings: Settings, tmp_path: Path) -> None:
    conn = await plumbing_schema(settings.database_url, SCHEMA)
    await conn.close()
    code, out = await abonent(settings, tmp_path, "replay", "notifier:999")
    assert code == 1
    assert "no dead letter with that id" in out
    code, out = await abonent(settings, tmp_path, "replay", "--all")
    assert code == 2
    assert "--all with --consumer" in out
