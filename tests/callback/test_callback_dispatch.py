"""The dispatcher in trouble: closed windows, bad rows, busy queues, refusing providers (real DB/NATS)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from fakes.fake_ari import serve_fake_ari
from prometheus_client import REGISTRY
from support.dispatch_world import DispatchWorld
from support.harness import migrate_service

from services.callback.dispatcher import Dispatcher
from services.callback.telephony import SimConfig, SimulatedPbx, TelephonyAdapter
from services.callback.telephony.ari import AriConfig, AsteriskAriAdapter
from services.callback.usecases.sites import SiteDirectory
from services.common.settings import Settings


class World(DispatchWorld):
    def dialer(self, adapter: TelephonyAdapter) -> Dispatcher:
        # Its own site directory: no cached settings from before a test changed them.
        return Dispatcher(self.pool, self.protector, SiteDirectory(self.pool), adapter)


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    await migrate_service(settings, "callback")
    world = await World.open(settings)
    try:
        yield world
    finally:
        await world.pool.close()


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedPbx]:
    """A PBX where nobody picks up until told: dialed requests stay dialing, their agents busy."""
    pbx = SimulatedPbx(SimConfig(manual=True), time_scale=0.01)
    await pbx.start()
    try:
        yield pbx
    finally:
        await pbx.aclose()


async def statuses(db: asyncpg.Connection) -> dict[uuid.UUID, str]:
    return {r["id"]: r["status"] for r in await db.fetch("select id, status from callback.callbacks")}


async def test_request_due_outside_its_window_is_retimed_and_the_others_still_dial(
    world: World, sim: SimulatedPbx, db: asyncpg.Connection
) -> None:
    await world.site("night")
    await world.site("day")
    await world.agent("olga", queues=["default"])
    closed = await world.ask("night")
    open_ = await world.ask("day")
    # Closing time came for the night shop's visitors while its (older) request was waiting.
    hour = dt.datetime.now(ZoneInfo("Europe/Moscow")).hour
    start, end = (hour + 2, hour + 3) if hour < 20 else (1, 2)
    await world.site("night", calling_window={"start": f"{start:02d}:00", "end": f"{end:02d}:00"})
    await db.execute(
        "update callback.callbacks set due_at = now() - interval '1 minute',"
        " requested_at = requested_at - interval '1 minute' where id = $1",
        closed,
    )

    assert await world.dialer(sim).dispatch_once() == 1

    assert (await statuses(db)) == {closed: "scheduled", open_: "dialing"}
    due = await db.fetchval("select due_at from callback.callbacks where id = $1", closed)
    local = due.astimezone(ZoneInfo("Europe/Moscow"))
    assert due > dt.datetime.now(dt.UTC)
    assert (local.hour, local.minute) == (start, 0), "moved to the moment the window opens"
    reasons = await db.fetch(
        "select subject, convert_from(payload, 'utf8')::jsonb->>'reason' as reason from callback.outbox"
        " where convert_from(payload, 'utf8')::jsonb->>'callback_id' = $1 order by seq",
        str(closed),
    )
    assert (reasons[-1]["subject"], reasons[-1]["reason"]) == ("callback.scheduled", "outside_window")


async def test_a_row_that_cannot_be_dispatched_is_skipped_and_the_others_dial(
    world: World, sim: SimulatedPbx, db: asyncpg.Connection
) -> None:
    await world.site("shop")
    await world.agent("olga", queues=["default"])
    broken = await world.ask("shop")
    fine = await world.ask("shop")
    # The older request's phone no longer decrypts (e.g. a key rotated away): it cannot be dialed.
    await db.execute("update callback.callbacks set phone_enc = '\\x00'::bytea where id = $1", broken)

    assert await world.dialer(sim).dispatch_once() == 1

    assert (await statuses(db)) == {broken: "scheduled", fine: "dialing"}
    assert (
        await db.fetchval("select count(*) from callback.dial_attempts where callback_id = $1", broken) == 0
    )


async def test_a_busy_queue_does_not_starve_another_queue(
    world: World, sim: SimulatedPbx, db: asyncpg.Connection
) -> None:
    await world.site("busy", queue="busy")
    await world.site("calm", queue="calm")
    await world.agent("olga", queues=["busy"])
    dialer = world.dialer(sim)
    await world.ask("busy")
    assert await dialer.dispatch_once() == 1  # olga is on that call now
    waiting = [await world.ask("busy") for _ in range(12)]
    await world.agent("ivan", queues=["calm"])
    calm = await world.ask("calm")

    # The twelve busy-queue rows are older than the calm one and more than a batch.
    assert await dialer.dispatch_once() == 1

    now = await statuses(db)
    assert now[calm] == "dialing"
    assert {now[w] for w in waiting} == {"scheduled"}


async def test_the_earliest_promise_deadline_is_dialed_first(
    world: World, sim: SimulatedPbx, db: asyncpg.Connection
) -> None:
    await world.site("shop")
    await world.agent("olga", queues=["default"])
    older = await world.ask("shop")
    newer = await world.ask("shop")
    # The older request's promise runs out later (as a chosen slot's or a generous one's does): the one
    # agent goes where a promise is about to be broken, not to whoever asked first.
    await db.execute(
        "update callback.callbacks set promised_latest = now() + interval '1 hour' where id = $1", older
    )
    assert await world.dialer(sim).dispatch_once() == 1
    assert (await statuses(db)) == {older: "scheduled", newer: "dialing"}


async def test_provider_refusal_is_not_charged_to_the_visitor(world: World, db: asyncpg.Connection) -> None:
    await world.site("shop", retry_policy={"max_attempts": 1})
    agent = await world.agent("olga", queues=["default"])
    created = await world.ask("shop")
    async with serve_fake_ari() as fake:
        adapter = AsteriskAriAdapter(
            AriConfig(
                base_url=fake.base_url,
                username=fake.username,
                password=fake.password,
                connect_timeout_s=5.0,
                reconnect_initial_s=0.02,
            )
        )
        refused = REGISTRY.get_sample_value(
            "abonent_callback_provider_errors_total", {"adapter": adapter.name}
        )
        await adapter.start()
        try:
            fake.fail_next("POST", "/channels", 403)  # e.g. the trunk's account is blocked
            before = dt.datetime.now(dt.UTC)
            assert await world.dialer(adapter).dispatch_once() == 1
        finally:
            await adapter.aclose()

    attempt = await db.fetchrow("select state, outcome from callback.dial_attempts")
    assert (attempt["state"], attempt["outcome"]) == ("ended", "provider_error")
    row = await db.fetchrow(
        "select status, attempts, outcome, due_at from callback.callbacks where id = $1", created
    )
    assert (row["status"], row["attempts"], row["outcome"]) == ("scheduled", 0, "provider_error")
    assert row["due_at"] > before + dt.timedelta(seconds=30), "backs off instead of redialing at once"
    subjects = await db.fetch("select subject from callback.outbox")
    assert "callback.failed" not in {r["subject"] for r in subjects}, "nobody texts 'we missed you'"
    presence = await db.fetchrow(
        "select status, current_attempt from callback.agent_presence where agent_id = $1", agent
    )
    assert (presence["status"], presence["current_attempt"]) == ("ready", None)
    after = REGISTRY.get_sample_value("abonent_callback_provider_errors_total", {"adapter": adapter.name})
    assert (after or 0) == (refused or 0) + 1


def first_dials(outcome: str) -> float:
    return REGISTRY.get_sample_value("abonent_callback_first_dials_total", {"outcome": outcome}) or 0.0


async def test_first_dials_count_kept_and_late_promises_once(
    world: World, sim: SimulatedPbx, db: asyncpg.Connection
) -> None:
    """The punctuality alert's signal: each request's first dial, kept or late, counted once."""
    await world.site("shop")
    await world.agent("olga", queues=["default"])
    await world.agent("ivan", queues=["default"])
    kept_before, late_before = first_dials("kept"), first_dials("late")
    on_time = await world.ask("shop")
    overdue = await world.ask("shop")
    await db.execute(
        "update callback.callbacks set promised_latest = now() - interval '1 minute' where id = $1", overdue
    )
    assert await world.dialer(sim).dispatch_once() == 2
    assert (await statuses(db)) == {on_time: "dialing", overdue: "dialing"}
    assert first_dials("kept") - kept_before == 1
    assert first_dials("late") - late_before == 1
    # A later pass with nothing new to dial counts nothing more.
    assert await world.dialer(sim).dispatch_once() == 0
    assert first_dials("kept") - kept_before == 1
    assert first_dials("late") - late_before == 1
