"""Promises come from agents who will really be there, count everyone ahead, respect slot capacity and
move live when the queue does (issue 9 §2), seen through the widget's API."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
from litestar.testing import AsyncTestClient
from support.callback_api import ask, offered_slots, put_site, sign_in_agent
from support.harness import running_service

from services.common.settings import Settings

Client = AsyncTestClient[Any]
MOSCOW = ZoneInfo("Europe/Moscow")
ALL_DAY = [{"days": ["mon-sun"], "start": "00:00", "end": "24:00", "agents": 1}]
GENEROUS = {"min_fill_ms": 0, "per_ip_10min": 1000, "daily_cap": 100000}


def next_moscow_midnight() -> dt.datetime:
    local = dt.datetime.now(MOSCOW)
    return dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(), tzinfo=MOSCOW).astimezone(
        dt.UTC
    )


def when(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


async def offer(client: httpx.AsyncClient, **params: str) -> dict[str, Any]:
    response = await client.get(
        "/v1/sites/shop/offer", params={"tz": "Europe/Moscow", "lang": "en", **params}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_nobody_at_work_gets_no_instant_promise_and_slots_agree(client: Client) -> None:
    # No schedule and nobody signed in: nothing is promised, no slot offered, a request is refused.
    await put_site(client, staffing=[])
    body = await offer(client)
    assert (body["open_now"], body["promise"], body["slot_ranges"]) == (False, None, [])
    refused = await ask(client)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "no_callable_time"

    # Scheduled all day, every day, but nobody here: the schedule is believed from its next shift start
    # (midnight), for the promise and the slots alike.
    await put_site(client, staffing=ALL_DAY)
    client.app.state.runtime.extras["intake"].sites.forget("shop")
    midnight = next_moscow_midnight()
    body = await offer(client)
    assert body["open_now"] is False
    assert body["promise"]["kind"] == "scheduled"
    assert when(body["promise"]["earliest"]) == midnight
    assert body["promise"]["text"] == "We'll call you tomorrow at 00:00 your time"
    assert offered_slots(body)
    assert all(when(slot["start"]) >= midnight for slot in offered_slots(body))

    # Someone signs in and is Ready: ASAP now, and today's slots come back.
    await sign_in_agent(client)
    body = await offer(client)
    assert body["open_now"] is True
    assert body["promise"]["kind"] == "asap"
    if midnight - dt.datetime.now(dt.UTC) > dt.timedelta(hours=1):
        assert when(offered_slots(body)[0]["start"]) < midnight


async def test_off_hours_visitors_are_promised_in_turn(client: Client) -> None:
    # Open two days from now only, one agent scheduled then: every visitor now waits for that opening.
    open_day = (dt.datetime.now(MOSCOW).weekday() + 2) % 7
    day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[open_day]
    await put_site(
        client,
        working_hours={day: [["09:00", "18:00"]]},
        calling_window={"start": "09:00", "end": "21:00"},
        staffing=[{"days": [day], "start": "09:00", "end": "18:00", "agents": 1}],
        abuse=GENEROUS,
    )
    promises = []
    for i in range(5):
        created = await ask(client, phone=f"+7912345670{i}")
        assert created.status_code == 201, created.text
        promises.append(created.json()["promise"])
    openings = {when(p["earliest"]) for p in promises}
    assert len(openings) == 1
    assert when(promises[0]["latest"]) - openings.pop() == dt.timedelta(seconds=20)
    latest = [when(p["latest"]) for p in promises]
    # Everyone due at the opening is ahead: each later visitor is promised later than the one before.
    assert latest == sorted(latest)
    assert len(set(latest)) == len(latest), latest


async def test_a_full_slot_is_not_offered_and_cannot_be_booked(client: Client) -> None:
    # One scheduled agent, default 180 s handle time: a 30-minute slot holds floor(1800 / 180 * 0.7) = 7.
    await put_site(client, staffing=ALL_DAY, abuse=GENEROUS)
    first = offered_slots(await offer(client))[0]
    for i in range(7):
        booked = await ask(client, phone=f"+7912345671{i}", slot_start=first["start"])
        assert booked.status_code == 201, booked.text
        assert booked.json()["promise"]["earliest"] == first["start"]
    assert first["start"] not in [slot["start"] for slot in offered_slots(await offer(client))]
    full = await ask(client, phone="+79123456799", slot_start=first["start"])
    assert full.status_code == 409, full.text
    assert full.json()["error"] == {
        "code": "slot_full",
        "message": "This time is fully booked; please choose another",
        "field": "slot_start",
    }


async def test_handle_times_are_sampled_per_attempt(client: Client, db: asyncpg.Connection) -> None:
    await put_site(client, staffing=ALL_DAY, abuse=GENEROUS)
    await sign_in_agent(client, ready=False)
    earlier = (await ask(client, phone="+79123456780")).json()
    # Its history: a first attempt held the agent 30 s and failed, the retry ten minutes later 100 s.
    callback_id = uuid.UUID(earlier["id"])
    agent_id = await db.fetchval("select id from callback.agents")
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    for number, (offset_s, held_s, outcome) in enumerate([(0, 30, "no_answer"), (630, 100, "completed")], 1):
        began = start + dt.timedelta(seconds=offset_s)
        await db.execute(
            "insert into callback.dial_attempts (id, callback_id, attempt_no, agent_id, adapter, state,"
            " outcome, started_at, placed_at, ended_at)"
            " values ($1, $2, $3, $4, 'sim', 'ended', $5, $6, $6, $7)",
            uuid.uuid4(),
            callback_id,
            number,
            agent_id,
            outcome,
            began,
            began + dt.timedelta(seconds=held_s),
        )
    await db.execute(
        "update callback.callbacks set status = 'completed', attempts = 2, first_dial_at = $2, ended_at = $3"
        " where id = $1",
        callback_id,
        start,
        start + dt.timedelta(seconds=730),
    )
    later = (await ask(client, phone="+79123456781")).json()
    snapshot = await db.fetchval(
        "select snapshot from callback.promises where callback_id = $1", uuid.UUID(later["id"])
    )
    # Not one sample of 730 s (first dial to the end, gap included, the failed attempt left out).
    assert json.loads(snapshot)["handle_time_samples_s"] == [100.0, 30.0]


async def test_a_waiting_visitor_is_re_promised_live(
    settings: Settings, tmp_path: Path, db: asyncpg.Connection
) -> None:
    """Over real HTTP (SSE): promised the next shift while nobody is here, the visitor sees a new promise
    pushed the moment an agent signs in, and the notifier gets callback.scheduled (reason repromise)."""
    async with (
        running_service(settings, "callback", tmp_path, ABONENT_SIM_MANUAL="true") as base,
        httpx.AsyncClient(base_url=base, timeout=60) as http,
    ):
        await put_site(http, staffing=ALL_DAY)
        created = (await ask(http)).json()
        assert created["promise"]["kind"] == "scheduled"
        texts: list[str] = []
        first_seen = asyncio.Event()

        async def read_stream() -> None:
            url = f"/v1/callbacks/{created['id']}/events?token={created['status_token']}"
            async with http.stream("GET", url) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:") and line[5:].strip():
                        status = json.loads(line[5:])
                        texts.append(status["promise"]["text"])
                        first_seen.set()
                        if status["promise"]["kind"] == "asap":
                            return

        reader = asyncio.create_task(read_stream())
        await asyncio.wait_for(first_seen.wait(), 30)
        async with httpx.AsyncClient(base_url=base) as console:
            await sign_in_agent(console)
            await asyncio.wait_for(reader, 60)
    assert texts[0] == "We'll call you tomorrow at 00:00 your time"
    assert texts[-1].startswith("We'll call you within"), texts
    reasons = await db.fetch(
        "select convert_from(payload, 'utf8')::jsonb->>'reason' as reason from callback.outbox"
        " where subject = 'callback.scheduled' order by seq"
    )
    assert [r["reason"] for r in reasons][-1] == "repromise"
    assert await db.fetchval("select count(*) from callback.promises") == 2
