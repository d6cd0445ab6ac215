"""Registry submission against real PostgreSQL and the sandbox registry on a real port: submitted → accepted
or rejected(reason) with the outbox event in the same transaction, leases, retries with backoff, and one
submission per submission id however often it is resent."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from support.corporate import Env, corporate_env, make_company, make_sim

from services.common.settings import Settings
from services.verification.corporate import flow_store, store

NOW = dt.datetime(2026, 11, 30, 7, 0, tzinfo=dt.UTC)


@pytest.fixture
async def env(settings: Settings) -> AsyncIterator[Env]:
    async with corporate_env(settings, NOW) as env:
        yield env


async def test_device_sim_is_submitted_polled_and_accepted(env: Env) -> None:
    async with env.pool.acquire() as conn:
        company = await make_company(conn)
        sim = await make_sim(conn, env.protector, company, "+79161110001", now=NOW)
    worker = env.worker()

    assert await worker.run_once() == 1
    assert (await env.sim(company, sim.id)).status == "submitted"
    received = await env.sandbox("GET", "/sandbox/submissions")
    assert len(received) == 1
    record = received[0]["record"]
    # Decree 844's device fields: the number, the owner, the operator, the equipment and its address.
    assert record["msisdn"] == "+79161110001"
    assert record["company_inn"] == "7707083893"
    assert record["operator_ogrn"] == "1027700000008"
    assert record["device"]["id"] == "490154203237518"
    assert record["device"]["installation_address"].startswith("Москва")
    assert record["employee"] is None

    # Not decided yet: the next poll waits for its interval.
    assert await worker.run_once() == 0
    await env.sandbox("PUT", "/sandbox/delay", json={"delay_s": 0})
    env.clock.advance(dt.timedelta(seconds=30))
    assert await worker.run_once() == 1
    row = await env.sim(company, sim.id)
    assert row.status == "accepted"

    events = await env.events(sim.id)
    assert [(e.from_state, e.state) for e in events] == [
        ("pending_submission", "submitted"),
        ("submitted", "accepted"),
    ]
    async with env.pool.acquire() as conn:
        [submission] = await flow_store.list_submissions(conn, company, sim.id)
        timeline = await store.sim_timeline(conn, company, sim.id)
    assert submission.state == "accepted"
    assert submission.registry_ref
    assert [t.actor for t in timeline if t.kind == "status_changed"] == ["registry", "registry"]
    # Posted once, polled once: nothing was resubmitted.
    assert (await env.sandbox("GET", "/sandbox/submissions"))[0]["posts"] == 1


async def test_rejection_carries_the_registry_reason_and_a_deadline(env: Env) -> None:
    await env.sandbox("PUT", "/sandbox/delay", json={"delay_s": 0})
    await env.sandbox(
        "POST", "/sandbox/verdicts", json={"msisdn": "+79161110003", "reason": "passport_mismatch"}
    )
    async with env.pool.acquire() as conn:
        company = await make_company(conn)
        # An IMEI the sandbox registry does not know (TAC 00…): rejected as invalid.
        device = await make_sim(conn, env.protector, company, "+79161110002", now=NOW, imei="001234567890128")
        person = await make_sim(conn, env.protector, company, "+79161110003", now=NOW, binding="employee")

    assert await env.worker().run_once() == 2
    device_row = await env.sim(company, device.id)
    person_row = await env.sim(company, person.id)
    assert (device_row.status, device_row.status_reason) == ("rejected", "invalid_imei")
    assert (person_row.status, person_row.status_reason) == ("rejected", "passport_mismatch")
    # Made without a deadline, the SIM got one in its first transition (submitted: 10 working days from
    # Mon 30 Nov → Mon 14 Dec) and the rejection kept it: being rejected never buys time. (The rejected
    # policy's shorter term is for a rejected SIM with none: test_corporate_deadlines.)
    assert device_row.deadline == dt.datetime(2026, 12, 14, 21, 0, tzinfo=dt.UTC)
    assert person_row.deadline == device_row.deadline
    received = {r["record"]["msisdn"]: r["record"] for r in await env.sandbox("GET", "/sandbox/submissions")}
    employee = received["+79161110003"]["employee"]
    assert (employee["last_name"], employee["passport_number"]) == ("Иванов", "123456")
    [event] = [e for e in await env.events(device.id) if e.state == "rejected"]
    assert event.reason == "invalid_imei"


async def test_transient_errors_are_retried_with_backoff_under_the_same_submission_id(env: Env) -> None:
    await env.sandbox("PUT", "/sandbox/delay", json={"delay_s": 0})
    await env.sandbox("POST", "/sandbox/faults", json={"step": "submit", "status": 503, "times": 2})
    async with env.pool.acquire() as conn:
        company = await make_company(conn)
        sim = await make_sim(conn, env.protector, company, "+79161110004", now=NOW)
    worker = env.worker()

    assert await worker.run_once() == 1  # 503
    async with env.pool.acquire() as conn:
        [first] = await flow_store.list_submissions(conn, company, sim.id)
    assert (first.state, first.attempts) == ("queued", 1)
    assert first.next_attempt_at == NOW + dt.timedelta(seconds=5)
    assert first.lease_until is None
    assert first.last_error == "HTTP 503"
    assert await worker.run_once() == 0  # backing off

    env.clock.advance(dt.timedelta(seconds=5))
    assert await worker.run_once() == 1  # 503 again: the wait doubles
    async with env.pool.acquire() as conn:
        [second] = await flow_store.list_submissions(conn, company, sim.id)
    assert second.attempts == 2
    assert second.next_attempt_at == env.clock.now() + dt.timedelta(seconds=10)

    env.clock.advance(dt.timedelta(seconds=10))
    assert await worker.run_once() == 1
    assert (await env.sim(company, sim.id)).status == "accepted"
    async with env.pool.acquire() as conn:
        [final] = await flow_store.list_submissions(conn, company, sim.id)
    assert final.id == first.id
    assert final.state == "accepted"


async def test_a_timeout_resends_the_same_id_and_the_registry_keeps_one_submission(env: Env) -> None:
    await env.sandbox("PUT", "/sandbox/delay", json={"delay_s": 0})
    # The registry takes the record but answers after the client gave up: the outcome is unknown.
    await env.sandbox("POST", "/sandbox/faults", json={"step": "submit", "status": 0, "delay_s": 2})
    async with env.pool.acquire() as conn:
        company = await make_company(conn)
        sim = await make_sim(conn, env.protector, company, "+79161110005", now=NOW)
    worker = env.worker()

    assert await worker.run_once() == 1
    assert (await env.sim(company, sim.id)).status == "pending_submission"
    async with env.pool.acquire() as conn:
        [pending] = await flow_store.list_submissions(conn, company, sim.id)
    assert pending.attempts == 1
    assert "Timeout" in (pending.last_error or "")

    env.clock.advance(dt.timedelta(seconds=5))
    assert await worker.run_once() == 1
    assert (await env.sim(company, sim.id)).status == "accepted"
    received = await env.sandbox("GET", "/sandbox/submissions")
    assert len(received) == 1
    assert received[0]["submission_id"] == str(pending.id)
    assert received[0]["posts"] == 2


async def test_a_lease_keeps_others_off_until_it_expires_and_the_late_holder_records_nothing(
    env: Env,
) -> None:
    async with env.pool.acquire() as conn:
        company = await make_company(conn)
        sim = await make_sim(conn, env.protector, company, "+79161110006", now=NOW)
        await flow_store.queue_pending_submissions(conn, now=NOW, limit=10)
        lease = dt.timedelta(seconds=30)
        [first] = await flow_store.claim_submissions(conn, now=NOW, lease=lease, limit=10)
        # In flight until NOW + 30 s: nobody else takes it, and queueing again makes no second one.
        assert (
            await flow_store.claim_submissions(
                conn, now=NOW + dt.timedelta(seconds=29), lease=lease, limit=10
            )
            == []
        )
        assert await flow_store.queue_pending_submissions(conn, now=NOW, limit=10) == 0
        later = NOW + dt.timedelta(seconds=31)
        [second] = await flow_store.claim_submissions(conn, now=later, lease=lease, limit=10)
        assert second.id == first.id
        assert second.lease_token != first.lease_token
        assert first.lease_token is not None
        async with conn.transaction():
            assert await flow_store.lock_submission(conn, first.id, first.lease_token) is None
    assert (await env.sim(company, sim.id)).status == "pending_submission"


async def test_a_rebind_meanwhile_abandons_the_submission(env: Env) -> None:
    async with env.pool.acquire() as conn:
        company = await make_company(conn)
        sim = await make_sim(conn, env.protector, company, "+79161110007", now=NOW)
        await flow_store.queue_pending_submissions(conn, now=NOW, limit=10)
        # corpsim-api's rebind writes a new bound_at; the queued record describes the old binding.
        await conn.execute(
            "update sims set bound_at = $2 where id = $1", sim.id, NOW + dt.timedelta(seconds=1)
        )
    assert await env.worker().run_once() == 1
    async with env.pool.acquire() as conn:
        subs = await flow_store.list_submissions(conn, company, sim.id)
    assert subs[0].state == "abandoned"
    assert subs[0].reason == "binding_changed"
    assert await env.sandbox("GET", "/sandbox/submissions") == []
