"""Agents, dispatch, dialing, retries and the client card on the simulated PBX, real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from support.callback_api import ADMIN, ask, put_site, sign_in_agent, site_body
from support.harness import migrate_service, running_service
from support.polling import until

from services.callback.app import create_app
from services.callback.dispatcher import Dispatcher
from services.callback.schemas import CallbackCreate, SiteSettings
from services.callback.settings import CallbackSettings
from services.callback.store import agents as agent_store
from services.callback.store import sites as site_store
from services.callback.store.orgs import DEFAULT_ORG
from services.callback.telephony import CallOutcome, SimConfig, SimulatedPbx
from services.callback.usecases.intake import Intake
from services.callback.usecases.presence import PresenceAgents
from services.callback.usecases.sites import SiteDirectory
from services.common import db as dbmod
from services.common.crypto import DataProtector, hash_password
from services.common.settings import Settings

Client = AsyncTestClient[Any]


@pytest.fixture
async def manual_client(settings: Settings) -> AsyncIterator[Client]:
    """The app with a simulated PBX in manual mode: the test plays agent and visitor through the console."""
    manual = CallbackSettings(sim_manual=True, sim_time_scale=0.01)
    await migrate_service(settings, "callback")
    async with AsyncTestClient(app=create_app(settings, manual)) as test_client:
        yield test_client


@pytest.fixture
async def fast_client(settings: Settings) -> AsyncIterator[Client]:
    """The app with an automatic simulated PBX running 100x faster than life."""
    await migrate_service(settings, "callback")
    async with AsyncTestClient(
        app=create_app(settings, CallbackSettings(sim_time_scale=0.01))
    ) as test_client:
        yield test_client


def pbx(client: Client) -> SimulatedPbx:
    adapter = client.app.state.runtime.extras["dialer"].adapter
    assert isinstance(adapter, SimulatedPbx)
    return adapter


async def subjects(db: asyncpg.Connection, callback_id: str) -> list[str]:
    rows = await db.fetch(
        "select subject, convert_from(payload, 'utf8')::jsonb->>'step' as step from callback.outbox"
        " where convert_from(payload, 'utf8')::jsonb->>'callback_id' = $1 order by seq",
        callback_id,
    )
    return [r["subject"] + (f":{r['step']}" if r["step"] else "") for r in rows]


async def test_request_rings_agent_then_visitor_bridges_and_completes(
    manual_client: Client, db: asyncpg.Connection
) -> None:
    client = manual_client
    await put_site(client)
    earlier = (
        await ask(client, phone="+79123456789", visitor_id="v-42", page_url="https://shop.example/old")
    ).json()
    await client.post(f"/v1/callbacks/{earlier['id']}/cancel?token={earlier['status_token']}")

    created = (
        await ask(
            client,
            phone="+79123456789",
            visitor_id="v-42",
            page_url="https://shop.example/p/7",
            utm={"source": "ya", "campaign": "winter"},
        )
    ).json()
    await sign_in_agent(client)

    async def console() -> Any:
        state = (await client.post("/agent/api/heartbeat")).json()
        return state if state["call"] else None

    state = await until(console)
    # The client card is there before the visitor's phone rings (agent-first: the agent rings first).
    assert state["call"]["stage"] in ("placing", "placed", "agent_ringing")
    card = state["call"]["card"]
    assert card["phone"] == "+79123456789"
    assert card["page_url"] == "https://shop.example/p/7"
    assert card["utm"] == {"source": "ya", "campaign": "winter"}
    assert [e["status"] for e in card["earlier"]] == ["cancelled"], "the repeat visitor is recognised"

    async def stage(expected: str) -> Any:
        state = (await client.post("/agent/api/heartbeat")).json()
        return state["call"] and state["call"]["stage"] == expected

    await until(lambda: stage("agent_ringing"))
    assert (await client.post("/agent/api/call/answer")).status_code == 200
    await until(lambda: stage("visitor_ringing"))
    assert (await client.post("/agent/api/call/visitor-answer")).status_code == 200
    await until(lambda: stage("connected"))
    status = (await client.get(f"/v1/callbacks/{created['id']}?token={created['status_token']}")).json()
    assert status["status"] == "connected"
    assert (await client.post("/agent/api/call/hangup")).status_code == 200

    async def completed() -> bool:
        body = (await client.get(f"/v1/callbacks/{created['id']}?token={created['status_token']}")).json()
        return bool(body["status"] == "completed")

    await until(completed)
    assert await subjects(db, created["id"]) == [
        "callback.requested",
        "callback.scheduled",
        "callback.scheduled",  # re-promised when the agent went Ready: ASAP instead of the next shift
        "callback.dialing",
        "callback.progress:agent_ringing",
        "callback.progress:agent_answered",
        "callback.progress:visitor_ringing",
        "callback.progress:visitor_answered",
        "callback.connected",
        "callback.completed",
    ]
    # The agent is free again and punctuality is recorded against the promise.
    assert (await client.post("/agent/api/heartbeat")).json()["call"] is None
    punctuality = (await client.get("/v1/admin/sites/shop/punctuality", headers=ADMIN)).json()
    assert punctuality["dialed"] == 1
    assert punctuality["kept"] == 1
    assert punctuality["time_to_dial_p50_s"] is not None
    dashboard = await client.get("/agent/dashboard")
    assert "100.0 %" in dashboard.text


async def test_no_answer_is_retried_inside_the_calling_window_then_fails(
    fast_client: Client, db: asyncpg.Connection
) -> None:
    client = fast_client
    # A visitor zone where it is daytime now, so the test window never crosses midnight.
    zone = next(
        ZoneInfo(name)
        for name in (
            "Asia/Kamchatka",
            "Asia/Vladivostok",
            "Asia/Novosibirsk",
            "Europe/Moscow",
            "Europe/Kaliningrad",
            "America/New_York",
            "America/Los_Angeles",
        )
        if 2 <= dt.datetime.now(ZoneInfo(name)).hour <= 21
    )
    local_now = dt.datetime.now(zone)
    end = (local_now + dt.timedelta(minutes=2)).replace(second=0, microsecond=0)
    start = max(local_now - dt.timedelta(hours=1), local_now.replace(hour=0, minute=0))
    await put_site(
        client,
        calling_window={"start": f"{start:%H:%M}", "end": f"{end:%H:%M}"},
        retry_policy={"max_attempts": 2, "no_answer_retry_s": 600, "busy_retry_s": 120},
    )
    pbx(client).script("+79123450001", CallOutcome.VISITOR_NO_ANSWER)
    created = (await ask(client, phone="+79123450001", visitor_tz=zone.key)).json()
    await sign_in_agent(client)

    async def rescheduled() -> Any:
        row = await db.fetchrow(
            "select status, attempts, due_at, last_attempt_by from callback.callbacks where id = $1",
            uuid.UUID(created["id"]),
        )
        return row if row and row["status"] == "scheduled" and row["attempts"] == 1 else None

    row = await until(rescheduled)
    # 10 minutes later is past the window's end: the retry waits for tomorrow's window, never the night.
    tomorrow_start = dt.datetime.combine(
        local_now.date() + dt.timedelta(days=1), start.time().replace(second=0, microsecond=0), tzinfo=zone
    )
    assert row["due_at"] == tomorrow_start
    status = (await client.get(f"/v1/callbacks/{created['id']}?token={created['status_token']}")).json()
    assert status["retry_plan"]["attempts_left"] == 1
    assert dt.datetime.fromisoformat(status["retry_plan"]["last_attempt_by"]) == tomorrow_start

    # Pretend tomorrow has come for this request (agents stay ready): the last attempt fails too.
    await db.execute(
        "update callback.callbacks set due_at = now(), not_before = null where id = $1",
        uuid.UUID(created["id"]),
    )
    await db.execute(
        "update callback.sites set settings = jsonb_set(settings, '{calling_window}',"
        ' \'{"start": "00:00", "end": "24:00"}\')'
    )
    client.app.state.runtime.extras["intake"].sites.forget("shop")

    async def failed() -> bool:
        body = (await client.get(f"/v1/callbacks/{created['id']}?token={created['status_token']}")).json()
        return bool(body["status"] == "failed")

    await until(failed)
    tail = (await subjects(db, created["id"]))[-1]
    assert tail == "callback.failed", "the notifier gets an event to send a reschedule link"
    assert (
        await db.fetchval(
            "select count(*) from callback.dial_attempts where callback_id = $1", uuid.UUID(created["id"])
        )
        == 2
    )


async def test_an_attempt_the_visitor_is_not_charged_for_is_dialled_again(
    fast_client: Client, db: asyncpg.Connection
) -> None:
    """Our agent missing the call gives the visitor their attempt back; the redial is a new attempt row and
    reaches the visitor (found by the fault tests: it used to collide with the first attempt's number on
    every dispatch pass, so the request was never dialled again)."""
    client = fast_client
    await put_site(client)
    visitor = "+79123450077"
    pbx(client).script(visitor, CallOutcome.AGENT_NO_ANSWER)
    created = (await ask(client, phone=visitor)).json()
    callback_id = uuid.UUID(created["id"])
    await sign_in_agent(client, "olga")

    async def missed_by_the_agent() -> bool:
        outcome = await db.fetchval(
            "select outcome from callback.dial_attempts where callback_id = $1 and ended_at is not null",
            callback_id,
        )
        return outcome == "agent_no_answer"

    await until(missed_by_the_agent)
    assert await db.fetchval("select attempts from callback.callbacks where id = $1", callback_id) == 0
    pbx(client).script(visitor, CallOutcome.CONNECTED)
    await sign_in_agent(client, "pavel")  # olga is on a break after missing a call

    async def completed() -> bool:
        body = (await client.get(f"/v1/callbacks/{created['id']}?token={created['status_token']}")).json()
        return bool(body["status"] == "completed")

    await until(completed)
    rows = await db.fetch(
        "select attempt_no, outcome from callback.dial_attempts where callback_id = $1 order by attempt_no",
        callback_id,
    )
    assert [(r["attempt_no"], r["outcome"]) for r in rows] == [(1, "agent_no_answer"), (2, "connected")]


async def test_agent_presence_expires_and_feeds_the_promise(
    fast_client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    client = fast_client
    await put_site(client, staffed_agents=5)
    await sign_in_agent(client, ready=False)
    # Someone of this queue uses the console, but nobody is Ready: no instant promise.
    offer = (await client.get("/v1/sites/shop/offer", params={"lang": "en"})).json()
    assert offer["promise"] is None or offer["promise"]["kind"] == "scheduled"
    await client.post("/agent/api/presence", json={"status": "ready"})
    offer = (await client.get("/v1/sites/shop/offer", params={"lang": "en"})).json()
    assert offer["promise"]["kind"] == "asap"
    # A closed tab sends no heartbeats: after the TTL the agent no longer counts.
    await db.execute("update callback.agent_presence set last_seen_at = now() - interval '16 seconds'")
    pool = await dbmod.create_pool(settings.database_url, "callback")
    try:
        async with pool.acquire() as conn:
            assert await PresenceAgents().ready_agents(conn, DEFAULT_ORG, "default") == 0
    finally:
        await pool.close()
    # pagehide's beacon takes the agent offline at once.
    await client.post("/agent/api/presence", json={"status": "ready"})
    assert (await client.post("/agent/api/offline")).status_code == 204
    assert await db.fetchval("select status from callback.agent_presence") == "offline"


async def test_two_dispatchers_racing_never_double_dial(settings: Settings, db: asyncpg.Connection) -> None:
    await migrate_service(settings, "callback")
    protector = DataProtector.from_settings(settings)
    pools = [await dbmod.create_pool(settings.database_url, "callback") for _ in range(2)]
    try:
        async with pools[0].acquire() as conn:
            site = msgspec.convert(site_body(), SiteSettings)
            await site_store.upsert_site(conn, "shop", site)
            for i in range(3):
                agent = agent_store.AgentRow(
                    id=uuid.uuid4(),
                    login=f"a{i}",
                    name=f"A{i}",
                    password_hash=hash_password("x" * 8),
                    queues=["default"],
                    endpoint=f"agent-{i}",
                )
                await agent_store.upsert_agent(conn, agent)
                await agent_store.set_presence(conn, agent.id, "ready")
        service = Intake(pools[0], protector, SiteDirectory(pools[0]))
        for i in range(6):
            offer = await service.offer("shop", "Europe/Moscow", "en", None)
            body = CallbackCreate(
                phone=f"+7912000000{i}", visitor_tz="Europe/Moscow", form_token=offer.form_token, consent=True
            )
            await service.create("shop", body, client_ip=f"10.0.0.{i}", idempotency_key=None)
        sims = [SimulatedPbx(SimConfig(manual=True), time_scale=0.01) for _ in range(2)]
        dialers = [
            Dispatcher(pool, protector, SiteDirectory(pool), sim)
            for pool, sim in zip(pools, sims, strict=True)
        ]
        for sim in sims:
            await sim.start()
        for _ in range(3):
            await asyncio.gather(*(d.dispatch_once() for d in dialers))
        attempts = await db.fetch("select callback_id, agent_id from callback.dial_attempts")
        assert len(attempts) == 3, "three agents: three calls, the other requests wait"
        assert len({a["callback_id"] for a in attempts}) == 3, "no request dialed twice"
        assert len({a["agent_id"] for a in attempts}) == 3, "no agent got two calls"
        placed = [len(sim._calls) for sim in sims]
        assert sum(placed) == 3
        by_deadline = await db.fetch(
            "select status from callback.callbacks order by promised_latest, requested_at"
        )
        statuses = [r["status"] for r in by_deadline]
        # Earliest promise first. Two racing dispatchers each lock one row at a time, so when the last
        # agent goes, the other's next row can win it: at most one row overtakes, never further.
        assert statuses[:2] == ["dialing", "dialing"], "earliest promises go first"
        assert statuses[:4].count("dialing") == 3, "only a race's one row may overtake"
        assert statuses[4:] == ["scheduled", "scheduled"]
        for sim in sims:
            await sim.aclose()
    finally:
        for pool in pools:
            await pool.close()


async def test_dispatcher_killed_after_reserving_redials_the_same_attempt_once(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    # The order was never sent (no ordered_at), so once its lease lapses recovery may place it, once.
    fast = {"ABONENT_SIM_TIME_SCALE": "0.01", "ABONENT_PLACING_LEASE_S": "2"}
    async with running_service(
        settings, "callback", tmp_path, ABONENT_FAILPOINTS="dialer.after_reserve", **fast
    ) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            await put_site(http)
            await sign_in_agent(http)
            created = (await ask(http, phone="+79123456789")).json()
        # The service died at the failpoint: reservation committed, nothing dialed yet.
        log = (tmp_path / "callback.log").read_text()
        for _ in range(100):
            if await db.fetchval("select count(*) from callback.dial_attempts"):
                break
            await asyncio.sleep(0.1)
    assert await db.fetchval("select state from callback.dial_attempts") == "placing", log
    async with (
        running_service(settings, "callback", tmp_path, **fast) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        await http.post("/agent/login", data={"login": "olga", "password": "correct horse"})

        async def done() -> bool:
            await http.post("/agent/api/heartbeat")
            body = (await http.get(f"/v1/callbacks/{created['id']}?token={created['status_token']}")).json()
            return bool(body["status"] in ("completed", "scheduled", "failed") and body["attempts"] >= 1)

        await until(done, timeout=40)
    attempts = await db.fetch(
        "select attempt_no, state, placed_at from callback.dial_attempts order by attempt_no"
    )
    assert attempts[0]["attempt_no"] == 1
    assert attempts[0]["placed_at"] is not None, "the orphaned attempt was placed by the restarted dispatcher"
    assert await db.fetchval("select count(*) from callback.dial_attempts where attempt_no = 1") == 1
    assert signal.SIGKILL  # the failpoint kills with SIGKILL (see services/common/failpoints.py)
