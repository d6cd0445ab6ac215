"""Lost hangups: the maximum talk time, the start-up re-sync, Hang up and the admin release free the agent."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from support.callback_api import ADMIN, ask, put_site, sign_in_agent, site_body
from support.harness import migrate_service
from support.polling import until

from services.callback.app import create_app
from services.callback.dispatcher import Dispatcher
from services.callback.schemas import CallbackCreate, SiteSettings
from services.callback.settings import CallbackSettings
from services.callback.store import agents as agent_store
from services.callback.store import sites as site_store
from services.callback.telephony import SimConfig, SimulatedPbx
from services.callback.telephony.sim import SimStateError
from services.callback.usecases.intake import Intake
from services.callback.usecases.sites import SiteDirectory
from services.common import db as dbmod
from services.common.crypto import DataProtector, hash_password
from services.common.settings import Settings

Client = AsyncTestClient[Any]
MANUAL = CallbackSettings(sim_manual=True, sim_time_scale=0.01)


@pytest.fixture
async def manual_client(settings: Settings) -> AsyncIterator[Client]:
    await migrate_service(settings, "callback")
    async with AsyncTestClient(app=create_app(settings, MANUAL)) as test_client:
        yield test_client


async def strand_a_call(settings: Settings, db: asyncpg.Connection, adapter_name: str) -> uuid.UUID:
    """Another process connects olga with a visitor and dies mid-call; returns the attempt it left open."""
    await migrate_service(settings, "callback")
    protector = DataProtector.from_settings(settings)
    pool = await dbmod.create_pool(settings.database_url, "callback")
    try:
        async with pool.acquire() as conn:
            await site_store.upsert_site(conn, "shop", msgspec.convert(site_body(), SiteSettings))
            agent = agent_store.AgentRow(
                id=uuid.uuid4(),
                login="olga",
                name="Olga",
                password_hash=hash_password("correct horse"),
                queues=["default"],
                endpoint="sim",
            )
            await agent_store.upsert_agent(conn, agent)
            await agent_store.set_presence(conn, agent.id, "ready")
        service = Intake(pool, protector, SiteDirectory(pool))
        offer = await service.offer("shop", "Europe/Moscow", "en", None)
        body = CallbackCreate(
            phone="+79120000001", visitor_tz="Europe/Moscow", form_token=offer.form_token, consent=True
        )
        await service.create("shop", body, client_ip="10.0.0.1", idempotency_key=None)
        sim = SimulatedPbx(SimConfig(manual=True), time_scale=0.01, name=adapter_name)
        dialer = Dispatcher(pool, protector, SiteDirectory(pool), sim)
        await dialer.start()
        try:
            assert await dialer.dispatch_once() == 1
            attempt_id = await db.fetchval("select id from callback.dial_attempts")
            assert isinstance(attempt_id, uuid.UUID)

            def answer(leg: Any) -> Any:
                async def go() -> bool:
                    try:
                        await sim.answer(attempt_id.hex, leg)
                    except SimStateError:
                        return False
                    return True

                return go

            await until(answer("agent"))
            await until(answer("visitor"))

            async def connected() -> bool:
                state = await db.fetchval("select state from callback.dial_attempts")
                return bool(state == "connected")

            await until(connected)
        finally:
            await dialer.stop()  # the process goes away with its call: no hangup event will ever come
        assert await db.fetchval("select state from callback.dial_attempts") == "connected"
        return attempt_id
    finally:
        await pool.close()


async def agent_attempt(db: asyncpg.Connection, login: str = "olga") -> uuid.UUID | None:
    value = await db.fetchval(
        "select p.current_attempt from callback.agent_presence p join callback.agents a on a.id = p.agent_id"
        " where a.login = $1",
        login,
    )
    return value if isinstance(value, uuid.UUID) else None


async def callback_status(db: asyncpg.Connection) -> str:
    return str(await db.fetchval("select status from callback.callbacks"))


async def test_a_call_past_the_maximum_talk_time_is_closed_and_the_agent_is_reservable(
    manual_client: Client, db: asyncpg.Connection
) -> None:
    client = manual_client
    await put_site(client, max_talk_s=3600)
    await ask(client, phone="+79123456789")
    await sign_in_agent(client)

    async def stage(expected: str) -> bool:
        state = (await client.post("/agent/api/heartbeat")).json()
        return bool(state["call"] and state["call"]["stage"] == expected)

    await until(lambda: stage("agent_ringing"))
    assert (await client.post("/agent/api/call/answer")).status_code == 200
    await until(lambda: stage("visitor_ringing"))
    assert (await client.post("/agent/api/call/visitor-answer")).status_code == 200
    await until(lambda: stage("connected"))
    # The hangup was lost: the call has been "going on" for longer than the site allows.
    await db.execute("update callback.dial_attempts set connected_at = now() - interval '61 minutes'")

    async def agent_free() -> bool:
        return (await client.post("/agent/api/heartbeat")).json()["call"] is None

    await until(agent_free)
    assert await callback_status(db) == "completed"
    attempt = await db.fetchrow("select state, outcome from callback.dial_attempts")
    assert attempt is not None
    assert (attempt["state"], attempt["outcome"]) == ("ended", "connected")
    # Reservable again: a new request reaches olga.
    await ask(client, phone="+79123456780")
    await until(lambda: stage("agent_ringing"))


async def test_calls_a_dead_process_left_connected_are_closed_on_start_up(
    settings: Settings, db: asyncpg.Connection
) -> None:
    attempt_id = await strand_a_call(settings, db, "sim")  # the same provider the new process uses
    async with AsyncTestClient(app=create_app(settings, MANUAL)):
        assert await agent_attempt(db) is None, "the simulated PBX says the call is gone"
        state = await db.fetchval("select state from callback.dial_attempts where id = $1", attempt_id)
        assert state == "ended"
        assert await callback_status(db) == "completed"


async def test_console_hang_up_frees_the_agent_when_the_call_is_unknown_here(
    settings: Settings, db: asyncpg.Connection
) -> None:
    attempt_id = await strand_a_call(settings, db, "other-pbx")  # this process cannot ask about it
    async with AsyncTestClient(app=create_app(settings, MANUAL)) as client:
        assert await agent_attempt(db) == attempt_id, "unknown to this adapter: left to the max talk time"
        await sign_in_agent(client)
        state = (await client.post("/agent/api/heartbeat")).json()
        assert state["call"]["attempt_id"] == str(attempt_id)
        hung_up = await client.post("/agent/api/call/hangup")
        assert hung_up.status_code == 200, hung_up.text
        assert hung_up.json()["call"] is None
        assert await agent_attempt(db) is None
        assert await callback_status(db) == "completed"


async def test_admin_release_frees_a_stuck_agent_and_needs_the_admin_scope(
    settings: Settings, db: asyncpg.Connection
) -> None:
    attempt_id = await strand_a_call(settings, db, "other-pbx")
    async with AsyncTestClient(app=create_app(settings, MANUAL)) as client:
        assert (await client.post("/v1/admin/agents/olga/release")).status_code == 401
        assert (await client.post("/v1/admin/agents/nobody/release", headers=ADMIN)).status_code == 404
        assert await agent_attempt(db) == attempt_id
        released = await client.post("/v1/admin/agents/olga/release", headers=ADMIN)
        assert released.status_code == 200, released.text
        assert released.json() == {"login": "olga", "attempt_id": str(attempt_id)}
        assert await agent_attempt(db) is None
        state = await db.fetchval("select state from callback.dial_attempts where id = $1", attempt_id)
        assert state == "ended"
        assert await callback_status(db) == "completed"
