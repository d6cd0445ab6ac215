"""Corporate SIM deadlines on the RU production calendar (New Year holidays 2025/26, the worked Saturday of
1 November 2025) and, on real PostgreSQL with the shared scheduler: the deadline sweep, reminders to the
company, corpsim.suspension_due at the deadline and corpsim.restored when the registry accepts it later."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from support.corporate import Env, corporate_env, make_company, make_sim

from services.common import scheduler as sched
from services.common.calendar import production_calendar
from services.common.events import CorpSimRestored, CorpSimSuspensionDue
from services.common.settings import Settings
from services.verification.corporate import flow_store
from services.verification.corporate.domain import deadlines
from services.verification.corporate.lifecycle import (
    JOB_DEADLINE_SWEEP,
    JOB_SIM_DEADLINE,
    JOB_SIM_REMINDER,
)

MSK = "Europe/Moscow"
# Friday 26 December 2025, noon in Moscow: 31 December and 1–11 January are days off.
BEFORE_NEW_YEAR = dt.datetime(2025, 12, 26, 9, 0, tzinfo=dt.UTC)


def test_the_calendar_has_the_facts_these_tests_rely_on() -> None:
    calendar = production_calendar()
    assert not calendar.is_working_day(dt.date(2025, 12, 31))
    assert not calendar.is_working_day(dt.date(2026, 1, 9))  # Friday, a transferred day off
    assert calendar.is_working_weekend_day(dt.date(2025, 11, 1))  # Saturday, worked for 3 November


def test_an_unregistered_sim_deadline_skips_the_new_year_holidays() -> None:
    # 10 working days after Friday 26 Dec: 29, 30 Dec, then 12–16, 19, 20, 21 Jan.
    deadline = deadlines.deadline_for("unregistered", BEFORE_NEW_YEAR, MSK)
    assert deadline == dt.datetime(2026, 1, 21, 21, 0, tzinfo=dt.UTC)  # midnight after 21 Jan in Moscow


def test_a_working_saturday_counts() -> None:
    # 5 working days after Tuesday 28 Oct 2025: 29, 30, 31 Oct, Saturday 1 Nov (worked), then 3–4 Nov
    # off, 5 Nov. Without the worked Saturday it would be 6 Nov.
    since = dt.datetime(2025, 10, 28, 7, 0, tzinfo=dt.UTC)
    assert deadlines.deadline_for("rejected", since, MSK) == dt.datetime(2025, 11, 5, 21, 0, tzinfo=dt.UTC)


def test_a_device_is_registered_three_working_days_before_it_starts() -> None:
    # Service from Wednesday 14 Jan 2026: 13, 12 Jan, then (over the holidays) 30 Dec is the third.
    assert deadlines.device_last_day(dt.date(2026, 1, 14)) == dt.date(2025, 12, 30)
    deadline = deadlines.deadline_for("unregistered", BEFORE_NEW_YEAR, MSK, use_from=dt.date(2026, 1, 14))
    assert deadline == dt.datetime(2025, 12, 30, 21, 0, tzinfo=dt.UTC)


def test_reminders_fall_on_working_days_in_the_morning() -> None:
    deadline = deadlines.deadline_for("unregistered", BEFORE_NEW_YEAR, MSK)
    assert deadlines.reminder_times("unregistered", deadline, MSK, BEFORE_NEW_YEAR) == {
        5: dt.datetime(2026, 1, 14, 7, 0, tzinfo=dt.UTC),
        2: dt.datetime(2026, 1, 19, 7, 0, tzinfo=dt.UTC),
        1: dt.datetime(2026, 1, 20, 7, 0, tzinfo=dt.UTC),
    }
    # Reminders already past are not planned.
    late = dt.datetime(2026, 1, 19, 12, 0, tzinfo=dt.UTC)
    assert list(deadlines.reminder_times("unregistered", deadline, MSK, late)) == [1]


@pytest.fixture
async def env(settings: Settings) -> AsyncIterator[Env]:
    async with corporate_env(settings, BEFORE_NEW_YEAR) as env:
        yield env


def timers(env: Env, settings: Settings) -> sched.Scheduler:
    runner = sched.Scheduler(env.pool, "verification", settings.database_url, clock=env.clock)
    runner.register(JOB_DEADLINE_SWEEP, env.flow.on_sweep)
    runner.register(JOB_SIM_DEADLINE, env.flow.on_deadline)
    runner.register(JOB_SIM_REMINDER, env.flow.on_reminder)
    return runner


async def sweep(env: Env, runner: sched.Scheduler) -> None:
    async with env.pool.acquire() as conn:
        await sched.schedule(conn, JOB_DEADLINE_SWEEP, "test", env.clock.now())
    await runner.run_once()


async def webhooks(env: Env, event_type: str) -> list[dict[str, Any]]:
    async with env.pool.acquire() as conn:
        rows = await conn.fetch(
            "select payload from outbound_webhooks where channel = 'corporate' and event_type = $1"
            " order by created_at",
            event_type,
        )
    return [msgspec.json.decode(bytes(r["payload"])) for r in rows]


async def outbox_events(env: Env, sim_id: uuid.UUID, kind: type[Any]) -> list[Any]:
    return [e for e in await env.events(sim_id) if isinstance(e, kind)]


async def test_reminders_then_suspension_then_restoration(env: Env, settings: Settings) -> None:
    runner = timers(env, settings)
    async with env.pool.acquire() as conn:
        company = await make_company(conn)
        # Bound to a device, waiting for the registry over the holidays.
        sim = await make_sim(conn, env.protector, company, "+79161112233", now=BEFORE_NEW_YEAR)
    await sweep(env, runner)

    async with env.pool.acquire() as conn:
        target = await flow_store.deadline_target(conn, company, sim.id, lock=False)
        assert target is not None
        assert target.deadline == dt.datetime(2026, 1, 21, 21, 0, tzinfo=dt.UTC)
        job = await sched.get_job(conn, JOB_SIM_DEADLINE, str(sim.id))
        assert job is not None
        assert job.due_at == target.deadline
        assert await sched.get_job(conn, JOB_SIM_REMINDER, f"{sim.id}:5") is not None
    # A second sweep leaves a SIM with a deadline alone.
    await sweep(env, runner)
    async with env.pool.acquire() as conn:
        again = await flow_store.deadline_target(conn, company, sim.id, lock=False)
    assert again is not None
    assert again.deadline == target.deadline

    env.clock.set(dt.datetime(2026, 1, 14, 7, 0, tzinfo=dt.UTC))
    await runner.run_once()
    [reminder] = await webhooks(env, "corpsim.reminder")
    assert reminder["days_left"] == 5
    assert reminder["msisdn"] == "+79161112233"
    assert reminder["sim_id"] == str(sim.id)
    assert await outbox_events(env, sim.id, CorpSimSuspensionDue) == []

    env.clock.set(dt.datetime(2026, 1, 21, 21, 0, tzinfo=dt.UTC))
    await runner.run_once()
    assert sorted(r["days_left"] for r in await webhooks(env, "corpsim.reminder")) == [1, 2, 5]
    [due] = await outbox_events(env, sim.id, CorpSimSuspensionDue)
    assert due.msisdn == "+79161112233"
    assert due.deadline == target.deadline
    assert due.state == "pending_submission"
    async with env.pool.acquire() as conn:
        suspended = await flow_store.deadline_target(conn, company, sim.id, lock=False)
    assert suspended is not None
    assert suspended.suspended_at == env.clock.now()
    # Overdue SIMs show up in the back office's list.
    async with env.pool.acquire() as conn:
        overdue = await flow_store.overdue_sims(conn, now=env.clock.now(), limit=10)
    assert [o.id for o in overdue] == [sim.id]

    # Registered later: the registry accepts it and billing is told to restore the number.
    env.clock.advance(dt.timedelta(days=2))
    await env.sandbox("PUT", "/sandbox/delay", json={"delay_s": 0})
    assert await env.worker().run_once() == 1
    [restored] = await outbox_events(env, sim.id, CorpSimRestored)
    assert restored.msisdn == "+79161112233"
    assert restored.state == "accepted"
    async with env.pool.acquire() as conn:
        done = await flow_store.deadline_target(conn, company, sim.id, lock=False)
        assert await sched.get_job(conn, JOB_SIM_DEADLINE, str(sim.id)) is None
        assert await flow_store.overdue_sims(conn, now=env.clock.now(), limit=10) == []
    assert done is not None
    assert (done.status, done.deadline, done.suspended_at) == ("accepted", None, None)
    # An accepted SIM gets no new deadline from the sweep.
    await sweep(env, runner)
    async with env.pool.acquire() as conn:
        after = await flow_store.deadline_target(conn, company, sim.id, lock=False)
    assert after is not None
    assert after.deadline is None


def test_what_a_transition_does_to_the_deadline() -> None:
    """deadline_change, which transitions.apply runs for every transition (the API's use_from path is in
    test_corporate_deadline_transitions.py)."""

    def change(**kw: Any) -> deadlines.DeadlineChange:
        base: dict[str, Any] = {
            "status": "pending_submission",
            "binding": "device",
            "deadline": None,
            "suspended_at": None,
            "use_from": None,
            "now": BEFORE_NEW_YEAR,
            "tz": MSK,
        }
        return deadlines.deadline_change(**{**base, **kw})

    policy = dt.datetime(2026, 1, 21, 21, 0, tzinfo=dt.UTC)
    assert change() == deadlines.DeadlineChange(
        deadline=policy, suspended_at=None, reason="unregistered", case="unregistered"
    )
    # A device starting on Wednesday 14 Jan is due by the end of 30 Dec (3 working days over the holidays).
    from_14 = change(use_from=dt.date(2026, 1, 14))
    assert (from_14.deadline, from_14.reason) == (
        dt.datetime(2025, 12, 30, 21, 0, tzinfo=dt.UTC),
        "device_use_from",
    )
    # An employee's SIM ignores a start date (it is a device's field).
    assert change(binding="employee", use_from=dt.date(2026, 1, 14)).deadline == policy
    # A deadline is kept: a rebind or a rejection never buys time; a later start date changes nothing.
    assert change(status="rejected", deadline=policy) == deadlines.DeadlineChange(
        deadline=policy, suspended_at=None, case="rejected"
    )
    assert change(deadline=policy, use_from=dt.date(2026, 3, 2)).reason == ""
    # A rejected SIM without one gets the (shorter) rejection policy's.
    assert change(status="rejected").deadline == dt.datetime(2026, 1, 14, 21, 0, tzinfo=dt.UTC)
    # Accepted: no deadline; restored only if it had been suspended.
    assert change(status="accepted") == deadlines.DeadlineChange(deadline=None, suspended_at=None)
    accepted = change(status="accepted", deadline=policy, suspended_at=policy)
    assert (accepted.deadline, accepted.suspended_at, accepted.reason, accepted.restored) == (
        None,
        None,
        "registered",
        True,
    )
