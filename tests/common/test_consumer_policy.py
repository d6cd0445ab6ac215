"""Consumers skip what they don't handle, ride out outages without dead-lettering, and idle quietly."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import REGISTRY
from support.polling import plumbing_schema, until
from support.probe_process import SCHEMA, record_probe

from services.common import bus as busmod
from services.common import consumers
from services.common import db as dbmod
from services.common.embedded import EmbeddedPostgres
from services.common.events import (
    AnyEvent,
    CallbackCancelled,
    CallbackEvent,
    CallbackRequested,
    Event,
    SystemProbe,
    encode_event,
)
from services.common.settings import Settings


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def publish(bus: busmod.Bus, event: Event) -> None:
    await bus.publish(event.SUBJECT, encode_event(event), str(event.event_id))


async def drained(bus: busmod.Bus, stream: str, consumer: str) -> bool:
    info = await bus.js.consumer_info(bus.ns.stream(stream), consumer)
    return info.num_pending == 0 and info.num_ack_pending == 0


def requested() -> CallbackRequested:
    now = dt.datetime.now(dt.UTC)
    return CallbackRequested(
        callback_id=uuid.uuid4(),
        site_key="shop",
        state="requested",
        phone="+79990001122",
        visitor_tz="Europe/Moscow",
        lang="ru",
        promised_earliest=now,
        promised_latest=now + dt.timedelta(minutes=5),
        promise_kind="asap",
    )


def test_handled_types_default_to_the_subjects_and_accept_base_classes() -> None:
    async def nothing(_conn: dbmod.Connection, _event: AnyEvent) -> None:
        return None

    probe = consumers.ConsumerSpec(name="p", stream="SYSTEM", subjects=["system.probe"], handler=nothing)
    assert probe.handled_tags == {"system.probe.v1"}
    every_callback = consumers.ConsumerSpec(
        name="c", stream="CALLBACK", subjects=["callback.>"], handler=nothing
    )
    assert "callback.requested.v1" in every_callback.handled_tags
    assert "system.probe.v1" not in every_callback.handled_tags
    by_base = consumers.ConsumerSpec(
        name="b", stream="CALLBACK", subjects=["callback.>"], handler=nothing, handles=[CallbackEvent]
    )
    # callback.telephony is the callback service's internal call-event carrier, not a CallbackEvent.
    assert by_base.handled_tags == every_callback.handled_tags - {"callback.telephony.v1"}
    with pytest.raises(ValueError, match="not in the event catalogue"):
        consumers.ConsumerSpec(
            name="x", stream="SYSTEM", subjects=["system.>"], handler=nothing, handles=[Stray]
        )


class Stray(Event, frozen=True, kw_only=True, tag="stray.v1"):
    """An event type outside the catalogue."""

    SUBJECT = "system.stray"


async def test_unknown_and_unhandled_types_are_acked_and_counted_only_invalid_ones_are_poison(
    settings: Settings, bus: busmod.Bus
) -> None:
    conn = await plumbing_schema(settings.database_url, SCHEMA)
    pool = await dbmod.create_pool(settings.database_url, SCHEMA)
    spec = consumers.ConsumerSpec(
        name="tolerant",
        stream="CALLBACK",
        subjects=["callback.>"],
        handler=record_probe,
        handles=[CallbackRequested],
        retry_delays_s=(0.1,),
    )
    runner = consumers.ConsumerRunner(pool, bus, spec)
    skipped_unknown = metric("abonent_events_skipped_total", consumer="tolerant", type="unknown")
    skipped_cancelled = metric(
        "abonent_events_skipped_total", consumer="tolerant", type="callback.cancelled.v1"
    )
    await runner.start()
    try:
        good = requested()
        # A v2 beside v1 during a rolling deploy: a type this code's catalogue does not know yet.
        v2 = {**msgspec.to_builtins(requested()), "type": "callback.requested.v2", "extra": 1}
        await bus.publish("callback.requested", msgspec.json.encode(v2), str(uuid.uuid4()))
        # Known to the catalogue, but not a type this consumer handles.
        await publish(bus, CallbackCancelled(callback_id=uuid.uuid4(), site_key="shop", state="cancelled"))
        # Known and handled, with an invalid field: poison.
        invalid_id = uuid.uuid4()
        invalid = {**msgspec.to_builtins(requested()), "event_id": str(invalid_id), "site_key": 5}
        await bus.publish("callback.requested", msgspec.json.encode(invalid), str(invalid_id))
        await publish(bus, good)

        await until(lambda: drained(bus, "CALLBACK", "tolerant"))
        assert await conn.fetchval("select array_agg(event_id) from probe_effects") == [good.event_id]
        dead = await conn.fetch("select event_id, reason from dead_letters")
        assert [r["event_id"] for r in dead] == [str(invalid_id)]
        assert dead[0]["reason"].startswith("invalid callback.requested.v1")
        assert (
            metric("abonent_events_skipped_total", consumer="tolerant", type="unknown") == skipped_unknown + 1
        )
        assert (
            metric("abonent_events_skipped_total", consumer="tolerant", type="callback.cancelled.v1")
            == skipped_cancelled + 1
        )
    finally:
        await runner.stop()
        await pool.close()
        await conn.close()


@pytest.mark.slow
async def test_postgres_outage_longer_than_the_retry_budget_dead_letters_nothing(
    settings: Settings, bus: busmod.Bus, tmp_path: Path
) -> None:
    # Our own PostgreSQL: this test stops it.
    postgres = EmbeddedPostgres(tmp_path / "pg", fsync=False).start()
    try:
        url = postgres.create_database("outage")
        conn = await plumbing_schema(url, SCHEMA)
        await conn.close()
        pool = await dbmod.create_pool(url, SCHEMA)
        spec = consumers.ConsumerSpec(
            name="outage",
            stream="SYSTEM",
            subjects=["system.probe"],
            handler=record_probe,
            ack_wait_s=5.0,
            max_deliver=2,  # the old budget: two deliveries, 0.5 s apart
            retry_delays_s=(0.2, 0.5),
        )
        runner = consumers.ConsumerRunner(pool, bus, spec)
        await runner.start()
        try:
            before = SystemProbe(note="before")
            await publish(bus, before)
            await until(lambda: drained(bus, "SYSTEM", "outage"))

            postgres.stop()
            during = [SystemProbe(note=f"during {i}") for i in range(5)]
            for event in during:
                await publish(bus, event)
            transient = metric("abonent_events_retried_total", consumer="outage", kind="transient")
            # Every event is retried well past the old budget of max_deliver deliveries.
            await until(
                lambda: _greater(
                    metric("abonent_events_retried_total", consumer="outage", kind="transient"),
                    transient + 4 * spec.max_deliver * len(during),
                ),
                timeout=60,
            )
            postgres.start()  # same port, same data

            await until(lambda: drained(bus, "SYSTEM", "outage"), timeout=60)
            check = await asyncpg.connect(url, server_settings={"search_path": SCHEMA})
            try:
                counts = dict(
                    await check.fetch("select event_id, count(*) from probe_effects group by event_id")
                )
                assert counts == {e.event_id: 1 for e in [before, *during]}
                assert await check.fetchval("select count(*) from dead_letters") == 0
                assert await check.fetchval("select count(*) from consumer_failures") == 0
            finally:
                await check.close()
        finally:
            await runner.stop()
            await pool.close()
    finally:
        postgres.stop()


async def _greater(value: float, floor: float) -> bool:
    return value > floor


async def test_an_idle_consumer_logs_no_loop_errors(
    settings: Settings, bus: busmod.Bus, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await dbmod.create_pool(settings.database_url, SCHEMA)

    async def nothing(_conn: dbmod.Connection, _event: AnyEvent) -> None:
        return None

    # Tiny fetch timeouts make nats-py's empty-fetch variants (incl. plain asyncio.TimeoutError) frequent.
    spec = consumers.ConsumerSpec(
        name="idle", stream="SYSTEM", subjects=["system.probe"], handler=nothing, fetch_timeout_s=0.001
    )
    runner = consumers.ConsumerRunner(pool, bus, spec)
    with caplog.at_level(logging.WARNING, logger="services.common.consumers"):
        await runner.start()
        await asyncio.sleep(2.0)  # an observation window, not a timing claim
        await runner.stop()
    await pool.close()
    assert [r.getMessage() for r in caplog.records] == []


async def test_closing_the_bus_leaves_no_unretrieved_gather_exception(settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    problems: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: problems.append(context))
    try:
        bus = await busmod.connect(
            settings.nats_url, "close-test", settings.nats_namespace, drain_timeout_s=0.5
        )
        # A subscription nobody reads keeps a message queued: draining it can only time out.
        subject = bus.ns.subject("system.unread")
        await bus.nc.subscribe(subject)
        await bus.nc.publish(subject, b"unread")
        await bus.nc.flush()
        await bus.close()
        gc.collect()
        await asyncio.sleep(0.1)
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert bus.nc.is_closed
    assert [p.get("message") for p in problems] == []


async def test_an_existing_durable_loses_its_delivery_cap(settings: Settings, bus: busmod.Bus) -> None:
    # As an older release created it: JetStream would stop redelivering after 8 outage naks.
    stream = bus.ns.stream("SYSTEM")
    await bus.js.add_consumer(
        stream,
        ConsumerConfig(
            name="capped",
            durable_name="capped",
            ack_policy=AckPolicy.EXPLICIT,
            max_deliver=8,
            filter_subject=bus.ns.subject("system.probe"),
        ),
    )
    spec = consumers.ConsumerSpec(
        name="capped", stream="SYSTEM", subjects=["system.probe"], handler=record_probe
    )
    await consumers.ensure_consumer(bus, spec)
    assert (await bus.js.consumer_info(stream, "capped")).config.max_deliver == -1


async def test_partitioned_consumers_apply_side_by_side_but_one_key_in_order(
    settings: Settings, bus: busmod.Bus
) -> None:
    conn = await plumbing_schema(settings.database_url, SCHEMA)
    pool = await dbmod.create_pool(settings.database_url, SCHEMA)
    seen: dict[str, list[int]] = {}
    running = [0, 0]  # now, most at once

    async def slow_handler(_conn: dbmod.Connection, event: AnyEvent) -> None:
        assert isinstance(event, CallbackRequested)
        running[0] += 1
        running[1] = max(running)
        await asyncio.sleep(0.05)
        seen.setdefault(event.site_key, []).append(int(event.page_url))
        running[0] -= 1

    spec = consumers.ConsumerSpec(
        name="partitioned",
        stream="CALLBACK",
        subjects=["callback.>"],
        handler=slow_handler,
        handles=[CallbackRequested],
        concurrency=3,
        partition_key=lambda event: getattr(event, "site_key", ""),
    )
    # Published before the consumer starts, so they arrive in one fetch.
    for number in range(6):
        for key in ("a", "b", "c"):
            await publish(bus, msgspec.structs.replace(requested(), site_key=key, page_url=str(number)))
    runner = consumers.ConsumerRunner(pool, bus, spec)
    await runner.start()
    try:
        await until(lambda: drained(bus, "CALLBACK", "partitioned"))
        assert seen == {key: list(range(6)) for key in ("a", "b", "c")}, "each key in publish order"
        assert running[1] > 1, "different keys were applied side by side"
    finally:
        await runner.stop()
        await pool.close()
        await conn.close()
