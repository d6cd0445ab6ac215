"""Dialing without waiting: the dispatcher wakes on the commit that creates work, in every replica, and
an attempt's placement is recorded even when the provider's events overtake the originate's answer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from fakes.fake_ari import EndpointScript, serve_fake_ari
from nats.aio.msg import Msg
from support.dispatch_world import DispatchWorld
from support.harness import migrate_service
from support.polling import until

from services.callback.dispatcher import Dispatcher
from services.callback.store import agents as agent_store
from services.callback.store import dispatch as dispatch_store
from services.callback.telephony import SimConfig, SimulatedPbx, TelephonyAdapter
from services.callback.telephony.ari import AriConfig, AsteriskAriAdapter
from services.callback.usecases.sites import SiteDirectory
from services.common import db as dbmod
from services.common.bus import Bus
from services.common.settings import Settings

# Far longer than any test here waits: a dispatch seen within it was woken by a NOTIFY, not by the poll.
SLOW_POLL_S = 600.0


class World(DispatchWorld):
    def dialer(self, adapter: TelephonyAdapter, *, listen: bool) -> Dispatcher:
        return Dispatcher(
            self.pool,
            self.protector,
            SiteDirectory(self.pool),
            adapter,
            poll_interval_s=SLOW_POLL_S,
            database_url=self.settings.database_url if listen else None,
        )


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    await migrate_service(settings, "callback")
    world = await World.open(settings)
    try:
        yield world
    finally:
        await world.pool.close()


async def status_of(db: asyncpg.Connection, callback_id: uuid.UUID) -> str:
    return str(await db.fetchval("select status from callback.callbacks where id = $1", callback_id))


async def listeners(db: asyncpg.Connection) -> int:
    return int(
        await db.fetchval(
            "select count(*) from pg_stat_activity where datname = current_database()"
            " and query ilike 'listen %abonent_dispatch_callback%'"
        )
    )


async def test_every_replica_wakes_on_the_commit_and_each_request_is_dialed_once(
    world: World, db: asyncpg.Connection
) -> None:
    await world.site("shop")
    agents = [await world.agent(f"agent{i}", endpoint=f"sim-{i}") for i in range(4)]
    requests = [await world.ask("shop") for _ in range(4)]  # due now: agents are at work
    async with world.pool.acquire() as conn:
        for agent in agents:
            await agent_store.set_presence(conn, agent, "break")  # ... but all on a break for now
    # Two replicas whose poll never comes during the test: only a commit's NOTIFY can start a pass.
    pbxs = [SimulatedPbx(SimConfig(manual=True), time_scale=0.01) for _ in range(2)]
    dialers = [world.dialer(pbx, listen=True) for pbx in pbxs]
    for dialer in dialers:
        await dialer.start()
    try:

        async def both_listening() -> bool:
            return await listeners(db) >= 2

        await until(both_listening)
        assert await db.fetchval("select count(*) from callback.dial_attempts") == 0
        # The agents come back (straight in the table, as another replica's console would): that commit
        # wakes both dispatchers, which race for the four requests.
        async with world.pool.acquire() as conn:
            for agent in agents:
                await agent_store.set_presence(conn, agent, "ready")

        async def all_dialing() -> bool:
            statuses = await db.fetch("select status from callback.callbacks")
            return all(r["status"] == "dialing" for r in statuses)

        await until(all_dialing)
        # And a request that arrives while agents are ready is dialed on its own commit too.
        await world.agent("agent4", endpoint="sim-4")
        late = await world.ask("shop")

        async def late_dialing() -> bool:
            return await status_of(db, late) == "dialing"

        await until(late_dialing)
    finally:
        for dialer in dialers:
            await dialer.stop()
    per_request = await db.fetch(
        "select callback_id, count(*) as n from callback.dial_attempts group by callback_id"
    )
    assert {r["callback_id"]: r["n"] for r in per_request} == dict.fromkeys([*requests, late], 1)
    agents_used = await db.fetch("select agent_id from callback.dial_attempts")
    assert len({r["agent_id"] for r in agents_used}) == 5, "no agent got two calls"


async def test_without_a_listener_the_dispatcher_waits_for_its_poll(
    world: World, db: asyncpg.Connection
) -> None:
    """The control for the test above: the same commits do not start a pass by themselves."""
    await world.site("shop")
    await world.agent("olga", endpoint="sim-1")
    pbx = SimulatedPbx(SimConfig(manual=True), time_scale=0.01)
    dialer = world.dialer(pbx, listen=False)
    await dialer.start()
    try:
        await asyncio.sleep(0.3)  # its first pass (at start) has run and found nothing
        created = await world.ask("shop")
        await asyncio.sleep(1.0)
        assert await status_of(db, created) == "scheduled"
        dialer.wake()  # what the HTTP route does in its own replica

        async def dialing() -> bool:
            return await status_of(db, created) == "dialing"

        await until(dialing)
    finally:
        await dialer.stop()


async def test_placement_is_recorded_when_the_providers_events_overtake_the_originate_answer(
    world: World, db: asyncpg.Connection
) -> None:
    await world.site("shop")
    count = 4
    for i in range(count):
        await world.agent(f"agent{i}", endpoint=f"PJSIP/10{i}")
    requests = [await world.ask("shop") for _ in range(count)]
    release = asyncio.Event()
    async with serve_fake_ari() as fake:
        for i in range(count):
            fake.script(f"PJSIP/10{i}", EndpointScript(outcome="hold"))  # the agents' phones ring on
        # Asterisk rings at once and reports it, but its answers to the originates are held back.
        fake.answer_later("POST", "/channels", release, times=count)
        adapter = AsteriskAriAdapter(
            AriConfig(
                base_url=fake.base_url,
                username=fake.username,
                password=fake.password,
                connect_timeout_s=5.0,
                reconnect_initial_s=0.02,
                http_timeout_s=120.0,  # the answer is held as long as the test needs, never timed out
            )
        )
        dialer = world.dialer(adapter, listen=False)
        await dialer.start()
        try:
            dialer.wake()

            async def all_ringing() -> list[asyncpg.Record] | None:
                rows = await db.fetch("select state, placed_at, provider_call_id from callback.dial_attempts")
                done = len(rows) == count and all(r["state"] == "agent_ringing" for r in rows)
                return rows if done else None

            ringing = await until(all_ringing, timeout=60)
            # The dialer is still waiting for Asterisk's answers, yet the attempt log already knows.
            assert not release.is_set()
            assert all(r["placed_at"] is not None and r["provider_call_id"] for r in ringing), ringing
            release.set()

            async def marked() -> bool:
                rows = await db.fetch("select placing_until from callback.dial_attempts")
                return all(r["placing_until"] is None for r in rows)

            await until(marked, timeout=60)
        finally:
            await dialer.stop()
    attempts = await db.fetch(
        "select callback_id, state, placed_at, started_at, provider_call_id from callback.dial_attempts"
    )
    assert sorted(r["callback_id"] for r in attempts) == sorted(requests)
    for attempt in attempts:
        assert attempt["placed_at"] >= attempt["started_at"]
        assert attempt["provider_call_id"], attempt


class StatementLog:
    """Every statement a pool's connections send, tagged with its connection (asyncpg's query logger)."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, str]] = []

    async def init(self, conn: asyncpg.Connection) -> None:
        await dbmod._init_connection(conn)
        conn.add_query_logger(lambda logged: self.entries.append((id(conn), logged.query)))

    def kinds(self) -> list[tuple[int, str]]:
        return [(conn, kind_of(query)) for conn, query in self.entries]


def kind_of(query: str) -> str:
    if query == dispatch_store.PICK_SQL:
        return "pick"
    if "with c as materialized" in query:
        return "reserve"
    if "ordered_at = coalesce" in query:
        return "ordered"
    return query.split(maxsplit=1)[0].lower().rstrip(";")


async def test_from_the_commit_to_the_originate_a_request_costs_three_statements_on_one_connection(
    world: World, db: asyncpg.Connection, settings: Settings
) -> None:
    """Pick, reserve (one statement: the attempt, the agent's hold, the request's 'dialing' and its event),
    mark as ordered, then the provider call: no BEGIN/COMMIT round trips, no pool acquire in between."""
    await world.site("shop")
    await world.agent("olga", endpoint="sim-1")
    log = StatementLog()
    pool = dbmod.GuardedPool(
        settings.database_url,
        name="dialer",
        schema="callback",
        acquire_timeout_s=5.0,
        min_size=1,
        max_size=4,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        init=log.init,
        server_settings={"search_path": "callback,public"},
    )
    await pool
    pbx = SimulatedPbx(SimConfig(manual=True), time_scale=0.01)
    sites = SiteDirectory(pool, ttl_s=600.0)
    dialer = Dispatcher(pool, world.protector, sites, pbx, poll_interval_s=SLOW_POLL_S)
    await dialer.start()
    try:
        await until(lambda: _swept(log))  # its first loop is over
        await sites.require("shop")  # sites are cached: a pass reads one only every few seconds
        log.entries.clear()
        created = await world.ask("shop")  # through the world's own pool: not logged
        dialer.wake()

        async def placed() -> bool:
            return bool(
                await db.fetchval(
                    "select placed_at is not null from callback.dial_attempts where callback_id = $1",
                    created,
                )
            )

        await until(placed)
    finally:
        await dialer.stop()
        await pool.close()
    # From the read that finds the request to the statement that marks its order as being sent (the
    # originate follows at once): every statement any of the dialer's connections sent in between.
    queries = [query for _, query in log.entries]
    start = next(i for i, query in enumerate(queries) if "status = 'scheduled'" in query)
    end = next(i for i, query in enumerate(queries) if "ordered_at = coalesce" in query)
    path = log.kinds()[start : end + 1]
    assert [kind for _, kind in path] == ["pick", "reserve", "ordered"], path
    assert len({conn for conn, _ in path}) == 1, "one connection, no acquire in between"


async def _swept(log: StatementLog) -> bool:
    # The safety nets run after the first pass: their last statement ends the loop's first round.
    return any("max_talk" in query or "ended_at is null" in query for _, query in log.entries)


async def test_the_dialing_event_reaches_nats_without_any_relay(
    world: World, db: asyncpg.Connection, bus: Bus, settings: Settings
) -> None:
    """The dispatcher publishes callback.dialing itself right after the reservation commits: with no relay
    running at all, the event is on JetStream and its outbox row marked published."""
    await world.site("shop")
    await world.agent("olga", endpoint="sim-1")
    heard: list[bytes] = []

    async def on_dialing(msg: Msg) -> None:
        heard.append(msg.data)

    subscription = await bus.nc.subscribe(bus.ns.subject("callback.dialing"), cb=on_dialing)
    pbx = SimulatedPbx(SimConfig(manual=True), time_scale=0.01)
    dialer = Dispatcher(
        world.pool,
        world.protector,
        SiteDirectory(world.pool),
        pbx,
        poll_interval_s=SLOW_POLL_S,
        database_url=settings.database_url,
        bus=bus,
    )
    await dialer.start()
    try:
        created = await world.ask("shop")  # woken by the commit's NOTIFY

        async def heard_it() -> bool:
            return any(str(created) in data.decode() for data in heard)

        await until(heard_it)

        async def marked() -> bool:
            return bool(
                await db.fetchval(
                    "select published_at is not null from callback.outbox where subject = 'callback.dialing'"
                )
            )

        await until(marked)
    finally:
        await dialer.stop()
        await subscription.unsubscribe()
    rows = await db.fetch("select subject, published_at from callback.outbox order by seq")
    # What the intake wrote, and the call's progress after it, are the relay's (none runs here); only the
    # dialer's own event went out.
    assert [r["subject"] for r in rows if r["published_at"] is not None] == ["callback.dialing"]


def agent_lookups(plan: dict[str, Any]) -> int:
    """How many times a plan (EXPLAIN ANALYZE) read agent_presence: every scan node's loops."""
    loops, nodes = 0, [plan]
    while nodes:
        node = nodes.pop()
        if node.get("Relation Name") == "agent_presence":
            loops += int(node.get("Actual Loops", 1))
        nodes.extend(node.get("Plans", []))
    return loops


async def test_the_pick_looks_for_an_agent_once_however_long_the_line(world: World) -> None:
    """The pick chooses the request first and then its agent: joined before the sort, the agent lookup ran
    once per due request (a backlog of hundreds made every pass hundreds of scans)."""
    await world.site("shop")
    await world.agent("olga", endpoint="sim-1")  # Ready when they ask: they are due now
    line = [await world.ask("shop") for _ in range(25)]
    async with world.pool.acquire() as conn:
        now = await conn.fetchval("select now() + interval '1 second'")
        plan = await conn.fetchval(f"explain (analyze, format json) {dispatch_store.PICK_SQL}", now, [])
        picked = await dispatch_store.next_pick(conn, now, [])
    assert picked is not None
    assert picked.row.id in line
    assert agent_lookups(plan[0]["Plan"]) <= 2  # the subquery of queues with an agent, then the agent
