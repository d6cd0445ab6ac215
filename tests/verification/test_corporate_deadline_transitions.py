"""A corporate SIM's deadline is set by the change that causes it, in that change's transaction (real
PostgreSQL, the app in process): a number put on a contract, a device bound with the day it starts
service (`device.use_from`, 3 working days before on the RU production calendar: across the New Year
holidays and a worked Saturday), a registry verdict. Same transaction is checked by PostgreSQL's own
transaction ids (`xmin`) of the SIM row, its timeline entries and its timer, so no timing is involved."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from support.corporate import Env, corporate_env, make_company, make_sim
from support.corporate_api import SBER, bearer, get_token, onboard

from services.common.clock import ManualClock
from services.common.settings import Settings
from services.verification.corporate import store, transitions
from services.verification.corporate.domain.sim import transition
from services.verification.corporate.lifecycle import JOB_SIM_DEADLINE

# Friday 26 December 2025, noon in Moscow: 31 December and 1–11 January are days off.
BEFORE_NEW_YEAR = dt.datetime(2025, 12, 26, 9, 0, tzinfo=dt.UTC)
# Monday 27 October 2025: Saturday 1 November is worked (for Monday 3 November); 4 November is a holiday.
BEFORE_WORKED_SATURDAY = dt.datetime(2025, 10, 27, 9, 0, tzinfo=dt.UTC)
FIRST, SECOND = "+79161240001", "+79161240002"
TERMINAL: dict[str, Any] = {
    "type": "payment_terminal",
    "name": "Ingenico Move/5000",
    "imei": "356938035643809",
    "installation_address": "Москва, Тверская 1",
}

TRACKER_COLUMNS = {
    "device_type": "tracker",
    "device_name": "GPS",
    "device_id_kind": "mac",
    "device_id": "00:1A:2B:3C:4D:5E",
}


def utc(*parts: int) -> str:
    return dt.datetime(*parts, tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


async def sim_row(db: asyncpg.Connection, number: str) -> asyncpg.Record:
    row = await db.fetchrow(
        "select s.id, s.xmin::text as tx, s.deadline, s.use_from from verification.sims s"
        " join verification.company_numbers n on n.id = s.number_id where n.msisdn_masked like '%' || $1",
        number[-2:],
    )
    assert row is not None
    return row


async def transaction_of(db: asyncpg.Connection, sim_id: uuid.UUID, kind: str) -> set[str]:
    """The transactions that wrote the SIM's timeline entries of `kind` (insert-only rows keep theirs)."""
    rows = await db.fetch(
        "select xmin::text as tx from verification.sim_timeline where sim_id = $1 and kind = $2", sim_id, kind
    )
    return {r["tx"] for r in rows}


async def deadline_job(db: asyncpg.Connection, sim_id: uuid.UUID) -> asyncpg.Record:
    job = await db.fetchrow(
        "select xmin::text as tx, due_at from verification.scheduled_jobs where kind = $1 and key = $2",
        JOB_SIM_DEADLINE,
        str(sim_id),
    )
    assert job is not None, "no deadline timer"
    return job


async def test_a_device_start_date_sets_the_deadline_in_the_bind_over_the_new_year(
    client: AsyncTestClient[Any], clock: ManualClock, db: asyncpg.Connection
) -> None:
    clock.set(BEFORE_NEW_YEAR)
    _, client_id, secret = await onboard(client, SBER, [FIRST, SECOND])
    a = bearer((await get_token(client, client_id, secret))["access_token"])

    # Put on the contract: the deadline (10 working days, past the holidays) and its timer come with it.
    sim = (await client.get(f"/v1/corporate/sims/{FIRST}", headers=a)).json()
    assert sim["deadline"] == utc(2026, 1, 21, 21)
    added = await sim_row(db, FIRST)
    job = await deadline_job(db, added["id"])
    assert job["due_at"] == added["deadline"]
    assert {added["tx"], job["tx"]} == await transaction_of(db, added["id"], "added_to_contract")
    assert await transaction_of(db, added["id"], "deadline_set") == {added["tx"]}

    # Service from Wednesday 14 January: the 3rd working day before it is 30 December.
    body = {"device": {**TERMINAL, "use_from": "2026-01-14"}}
    bound = await client.post(f"/v1/corporate/sims/{FIRST}/binding", json=body, headers=a)
    assert bound.status_code == 200, bound.text
    assert bound.json()["deadline"] == utc(2025, 12, 30, 21)
    assert bound.json()["device"]["use_from"] == "2026-01-14"
    after = await sim_row(db, FIRST)
    job = await deadline_job(db, after["id"])
    assert job["due_at"] == after["deadline"] == dt.datetime(2025, 12, 30, 21, tzinfo=dt.UTC)
    # The status change, its deadline, the timer and both audit entries: one transaction.
    assert after["tx"] == job["tx"] != added["tx"]
    assert await transaction_of(db, after["id"], "bound") == {after["tx"]}
    assert after["tx"] in await transaction_of(db, after["id"], "deadline_set")
    # The list filters by it.
    soon = await client.get(
        "/v1/corporate/sims", params={"deadline_before": "2026-01-01T00:00:00Z"}, headers=a
    )
    assert [s["number"] for s in soon.json()["items"]] == [FIRST]

    # Sending the same binding again changes nothing; a later start date does not buy time back.
    same = await client.put(f"/v1/corporate/sims/{FIRST}/binding", json=body, headers=a)
    assert (same.json()["version"], same.json()["deadline"]) == (
        bound.json()["version"],
        utc(2025, 12, 30, 21),
    )
    later = {"device": {**TERMINAL, "use_from": "2026-03-02"}}
    moved = await client.put(f"/v1/corporate/sims/{FIRST}/binding", json=later, headers=a)
    assert (moved.json()["device"]["use_from"], moved.json()["deadline"]) == (
        "2026-03-02",
        utc(2025, 12, 30, 21),
    )
    # Unbinding keeps the deadline (the number still needs registering) and forgets the start date.
    unbound = (await client.delete(f"/v1/corporate/sims/{FIRST}/binding", headers=a)).json()
    assert unbound["deadline"] == utc(2025, 12, 30, 21)
    assert (await sim_row(db, FIRST))["use_from"] is None

    # Without a start date a device keeps the contract's deadline.
    plain = await client.post(f"/v1/corporate/sims/{SECOND}/binding", json={"device": TERMINAL}, headers=a)
    assert plain.json()["deadline"] == utc(2026, 1, 21, 21)


async def test_a_worked_saturday_counts_before_a_device_starts(
    client: AsyncTestClient[Any], clock: ManualClock
) -> None:
    clock.set(BEFORE_WORKED_SATURDAY)
    _, client_id, secret = await onboard(client, SBER, [FIRST])
    a = bearer((await get_token(client, client_id, secret))["access_token"])
    # Service from Wednesday 5 November: 4 Nov holiday, 3 Nov transferred day off, Saturday 1 Nov worked,
    # then 31 and 30 October. Without the worked Saturday it would be 29 October.
    body = {"device": {**TERMINAL, "use_from": "2025-11-05"}}
    bound = await client.post(f"/v1/corporate/sims/{FIRST}/binding", json=body, headers=a)
    assert bound.status_code == 200, bound.text
    assert bound.json()["deadline"] == utc(2025, 10, 30, 21)


async def test_a_bad_start_date_is_refused_naming_the_field(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    _, client_id, secret = await onboard(client, SBER, [FIRST])
    a = bearer((await get_token(client, client_id, secret))["access_token"])
    for use_from, code in [
        ("2026-11-29", "use_from_in_past"),  # yesterday in Moscow
        ("2030-01-01", "use_from_too_far"),
        ("2026-02-30", "invalid_request"),
        ("30.12.2026", "invalid_request"),
        ("2026-12-01T00:00:00Z", "invalid_request"),
        ("", "invalid_request"),
        (20261201, "invalid_request"),
    ]:
        body = {"device": {**TERMINAL, "use_from": use_from}}
        refused = await client.post(f"/v1/corporate/sims/{FIRST}/binding", json=body, headers=a)
        assert refused.status_code == 400, (use_from, refused.text)
        error = refused.json()["error"]
        assert (error["field"], error["code"]) == ("device.use_from", code), use_from
    assert (await client.get(f"/v1/corporate/sims/{FIRST}", headers=a)).json()["status"] == "unregistered"
    # Today itself is fine (the SIM is then overdue at once: registration was due 3 working days ago).
    today = {"device": {**TERMINAL, "use_from": "2026-11-30"}}
    bound = await client.post(f"/v1/corporate/sims/{FIRST}/binding", json=today, headers=a)
    assert bound.status_code == 200, bound.text
    assert bound.json()["deadline"] == utc(2026, 11, 25, 21)


@pytest.fixture
async def env(settings: Settings) -> Any:
    async with corporate_env(settings, dt.datetime(2026, 11, 30, 7, 0, tzinfo=dt.UTC)) as env:
        yield env


async def test_registry_verdicts_move_the_deadline_in_their_transaction(env: Env) -> None:
    await env.sandbox("PUT", "/sandbox/delay", json={"delay_s": 0})
    now = env.clock.now()
    async with env.pool.acquire() as conn:
        company = await make_company(conn)
        sim = await make_sim(conn, env.protector, company, "+79161240003", now=now)
        rejected = await make_sim(
            conn, env.protector, company, "+79161240004", now=now, imei="001234567890128"
        )
        # Both already have their deadline (as the API gives one when a number is put on a contract).
        deadline = dt.datetime(2026, 12, 14, 21, tzinfo=dt.UTC)
        await conn.execute("update sims set deadline = $1", deadline)
    assert await env.worker().run_once() == 2

    async with env.pool.acquire() as conn:
        accepted = await conn.fetchrow(
            "select xmin::text as tx, status, deadline from sims where id = $1", sim.id
        )
        changed = await conn.fetch(
            "select xmin::text as tx from sim_timeline where sim_id = $1 and kind = 'status_changed'"
            " and detail->>'to' = 'accepted'",
            sim.id,
        )
        refused = await conn.fetchrow(
            "select status, status_reason, deadline from sims where id = $1", rejected.id
        )
        assert (
            await conn.fetchval(
                "select count(*) from scheduled_jobs where kind = $1 and key = $2",
                JOB_SIM_DEADLINE,
                str(sim.id),
            )
            == 0
        )
        # A rejection keeps the deadline it had: being rejected never buys time.
        assert (refused["status"], refused["deadline"]) == ("rejected", deadline)
    assert (accepted["status"], accepted["deadline"]) == ("accepted", None)
    assert [r["tx"] for r in changed] == [accepted["tx"]]

    # Rebound after it was accepted, the SIM needs registering again: a fresh deadline in the rebind.
    async with env.pool.acquire() as conn, conn.transaction():
        found = await store.get_sim(conn, company, sim.id, lock=True)
        assert found is not None
        moved = transition("accepted", "device", "rebind_device")
        after = await transitions.apply(
            conn,
            found,
            moved,
            flow=env.flow,
            actor="test",
            now=now,
            binding=TRACKER_COLUMNS | {"bound_at": now},
        )
    assert after.deadline == dt.datetime(2026, 12, 14, 21, tzinfo=dt.UTC)
    async with env.pool.acquire() as conn:
        job = await conn.fetchrow(
            "select due_at from scheduled_jobs where kind = $1 and key = $2", JOB_SIM_DEADLINE, str(sim.id)
        )
    assert job is not None
    assert job["due_at"] == after.deadline
