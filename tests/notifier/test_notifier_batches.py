"""Throughput without losing a guarantee: a batch of events costs a few statements and provider requests
for all of it, and a message that fails in a batch neither takes its neighbours with it nor goes twice."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fakes.fake_sms_ru import FakeSmsRu, running_sms_ru
from support.notifier import Harness, requested
from support.polling import until

from services.common import bus as busmod
from services.common.events import CallbackRequested, encode_event
from services.common.settings import Settings
from services.notifier.channels.sms_http import SmsRuChannel

N = 24
# Not the path of a message: start-up (type introspection of new connections, the bootstrap token),
# timers (scheduler, outbox relay, retention, the lease sweep, the sender's claim - it also polls), the
# pool's reset on release, transaction brackets. Their number follows the wall clock and the connections
# opened, not the messages.
NOT_THE_PATH = re.compile(
    r"^$|^(BEGIN|COMMIT|alter database)|scheduled_jobs|from outbox|update outbox|pg_advisory_unlock_all"
    r"|LISTEN|typeinfo_tree|ctid|auth_tokens|state = 'unknown'|^with due as \(select id from attempts",
    re.IGNORECASE,
)
STATEMENT = re.compile(r"\[(\d+)\] LOG:  (?:statement|execute [^:]*): (.*)")


def callbacks(n: int, first: int = 0) -> list[CallbackRequested]:
    return [requested(uuid.uuid4(), phone=f"+7916{first + i:07d}") for i in range(n)]


@pytest.fixture
async def sms_ru() -> AsyncIterator[tuple[FakeSmsRu, SmsRuChannel]]:
    async with running_sms_ru() as (fake, url), httpx.AsyncClient() as http:
        yield fake, SmsRuChannel(http, base_url=url, api_id=fake.api_id)


async def all_sent(h: Harness, n: int) -> None:
    async def done() -> bool:
        sent: int = await h.conn.fetchval("select count(*) from messages where state = 'sent'")
        return sent == n

    await until(done, timeout=60)


async def test_a_batch_of_new_callbacks_takes_a_few_statements_and_provider_requests(
    harness_factory: Any,
    sms_ru: tuple[FakeSmsRu, SmsRuChannel],
    postgres_server: Any,
    settings: Settings,
    bus: busmod.Bus,
) -> None:
    """Before: about 26 statements per message (13 planning it, 9 recording its send, savepoints, the
    inbox; 22 of them counted here) and one SMS.ru request per SMS. Now a fetched batch is planned with a
    handful of statements per lane and sent in one request per sender pass (at most one pass per lane
    commit)."""
    log = getattr(postgres_server, "log", None)
    if not isinstance(log, Path):
        pytest.skip(reason="needs the embedded PostgreSQL: statements are counted in its log file")
    fake, channel = sms_ru
    events = callbacks(N)
    # Published before the notifier starts, so its consumer fetches them as one batch.
    for event in events:
        await bus.publish(event.SUBJECT, encode_event(event), str(event.event_id))
    # Every statement of connections opened from now on (the notifier's pools) is a line of the log.
    admin = await asyncpg.connect(settings.database_url)
    try:
        database = await admin.fetchval("select current_database()")
        await admin.execute(f"alter database \"{database}\" set log_statement = 'all'")
    finally:
        await admin.close()
    start = log.stat().st_size
    try:
        h: Harness = await harness_factory(channels=[channel])
        await all_sent(h, N)
        own_pid = h.conn.get_server_pid()
    finally:
        reset = await asyncpg.connect(settings.database_url)
        try:
            await reset.execute(f'alter database "{database}" reset log_statement')
        finally:
            await reset.close()
    lines = log.read_bytes()[start:].decode(errors="replace").splitlines()
    statements = [
        m.group(2)
        for m in map(STATEMENT.search, lines)
        if m is not None and int(m.group(1)) != own_pid and not NOT_THE_PATH.search(m.group(2).strip())
    ]
    assert sorted(s.phone.lstrip("+") for s in fake.sent) == sorted(e.phone.lstrip("+") for e in events)
    # At most one request per lane commit (4 lanes), never one per SMS.
    assert fake.requests <= 4, fake.numbers_per_request
    planning = [s for s in statements if s.startswith(("insert into messages", "insert into recipients"))]
    assert len(planning) <= 2 * 4, planning  # one each per lane
    timeline = [s for s in statements if s.startswith("insert into timeline")]
    assert len(timeline) <= 4 + 4, timeline  # one per lane and one per sender pass
    # Expected: 7 per lane (inbox, recipients, contacts, messages, facts, attempts, timeline) and 10 per
    # sender pass that found work (messages, recipients; a savepoint pair, the locks, attempts, messages,
    # timeline, outbox, early receipts): at most 4 * 7 + 4 * 10 = 68.
    assert len(statements) <= 3 * N, "\n".join(statements)


async def test_a_failing_message_leaves_its_batch_standing_and_nothing_goes_twice(
    harness_factory: Any, sms_ru: tuple[FakeSmsRu, SmsRuChannel], bus: busmod.Bus
) -> None:
    """One event the notifier must reject (not a phone) and one number the gateway refuses, in the same
    batch as good ones: the good ones are planned and sent once; the refused number is marked invalid,
    not retried; the poison is dead-lettered. Replaying the whole batch sends nothing again."""
    fake, channel = sms_ru
    good = callbacks(10, first=100)
    refused = requested(uuid.uuid4(), phone="+79160000999")
    fake.refuse[refused.phone.lstrip("+")] = 202
    poison = requested(uuid.uuid4(), phone="not a phone")
    batch = [*good[:5], refused, poison, *good[5:]]
    for event in batch:
        await bus.publish(event.SUBJECT, encode_event(event), str(event.event_id))
    h: Harness = await harness_factory(channels=[channel])
    await all_sent(h, len(good))

    async def refused_settled() -> bool:
        states = await h.conn.fetch("select state from messages where state = 'failed'")
        dead: int = await h.conn.fetchval("select count(*) from dead_letters")
        return len(states) == 1 and dead == 1

    await until(refused_settled, timeout=60)
    assert await h.conn.fetchval("select count(*) from messages") == len(good) + 1
    invalid = await h.conn.fetchval("select count(*) from recipients where phone_invalid_at is not null")
    assert invalid == 1
    [reason] = await h.conn.fetch("select reason from dead_letters")
    assert "not a phone number" in reason["reason"]
    sent_once = sorted(s.phone for s in fake.sent)
    assert sent_once == sorted(e.phone.lstrip("+") for e in good)

    # The same events again (a replay under new message ids): acked by the inbox, nothing planned.
    for event in batch:
        await bus.publish(event.SUBJECT, encode_event(event), uuid.uuid4().hex)

    async def replayed() -> bool:
        info = await bus.js.consumer_info(bus.ns.stream("CALLBACK"), "notifier_callback")
        return info.num_pending == 0 and info.num_ack_pending == 0

    await until(replayed, timeout=60)
    await h.tick()
    assert await h.conn.fetchval("select count(*) from messages") == len(good) + 1
    assert sorted(s.phone for s in fake.sent) == sent_once
    assert await h.conn.fetchval("select count(*) from attempts") == len(good) + 1
