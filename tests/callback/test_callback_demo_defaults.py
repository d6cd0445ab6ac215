"""The default demo (`abonent up`'s simulated PBX) shows successful calls; failures are a visible switch."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from support.callback_api import ask, put_site, sign_in_agent
from support.harness import migrate_service
from support.polling import until

from services.callback.app import create_app
from services.callback.settings import CallbackSettings
from services.common.settings import Settings, load_section

Client = AsyncTestClient[Any]


@pytest.fixture
async def demo_client(settings: Settings) -> AsyncIterator[Client]:
    """The app with the simulated PBX as `abonent up` configures it, only faster than life."""
    await migrate_service(settings, "callback")
    async with AsyncTestClient(app=create_app(settings, CallbackSettings(sim_time_scale=0.01))) as client:
        yield client


async def test_the_default_simulated_pbx_completes_every_call(
    demo_client: Client, db: asyncpg.Connection
) -> None:
    client = demo_client
    await put_site(client, abuse={"min_fill_ms": 0, "per_ip_10min": 100})
    await sign_in_agent(client)
    ids = []
    for n in range(6):
        created = await ask(client, phone=f"+7912345000{n}")
        assert created.status_code == 201, created.text
        ids.append(uuid.UUID(created.json()["id"]))

    async def all_finished() -> bool:
        statuses = await db.fetch("select status from callback.callbacks where id = any($1)", ids)
        return all(r["status"] in ("completed", "failed") for r in statuses)

    await until(all_finished, timeout=90)
    rows = await db.fetch("select status, attempts from callback.callbacks where id = any($1)", ids)
    assert [(r["status"], r["attempts"]) for r in rows] == [("completed", 1)] * 6, "first attempts succeed"
    # Nobody answers by hand in the automatic demo: the console offers no answer buttons to refuse.
    state = (await client.post("/agent/api/heartbeat")).json()
    assert state["can_simulate"] is False


def test_failures_are_a_demo_switch() -> None:
    calm = load_section(CallbackSettings, {}).telephony_config().sim
    assert (calm.busy_p, calm.voicemail_p, calm.visitor_answer_p, calm.agent_answer_p) == (0, 0, 1, 1)
    rough = load_section(CallbackSettings, {"ABONENT_SIM_FAILURES": "on"}).telephony_config().sim
    assert rough.busy_p > 0
    assert rough.visitor_answer_p < 1
