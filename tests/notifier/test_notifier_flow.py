"""The notifier end to end on real PostgreSQL and NATS: events in, sandbox phones out, timers on a clock."""

from __future__ import annotations

import datetime as dt
import uuid

from support.notifier import (
    BEARER,
    PHONE,
    T0,
    Harness,
    dialing,
    failed,
    link_issued,
    requested,
    rescheduled,
)
from support.polling import until

from services.common import db as dbmod
from services.common.events import NotifyDelivered
from services.notifier.channels.base import InboundUpdate

MINUTE = dt.timedelta(minutes=1)


async def test_a_callback_request_texts_the_promise_and_logs_segments_cost_and_events(
    harness: Harness,
) -> None:
    h = harness
    await h.publish(requested(uuid.uuid4()))
    message = await h.message("callback_promise", "sent")
    [sms] = await h.inbox(PHONE)
    assert sms["channel"] == "sandbox"
    assert sms["body"].startswith("Перезвоним 02.03 12:05–12:15")
    assert await h.timeline(message["id"]) == ["queued", "sending via sandbox", "sent via sandbox"]
    assert "notify.sent.v1" in await h.outbox_types()

    response = await h.client.get("/v1/messages", headers=BEARER)
    assert response.status_code == 200, response.text
    [logged] = response.json()
    assert logged["purpose"] == "callback_promise"
    assert logged["segments"] == 1  # Cyrillic: UCS-2, at most 70 characters
    assert logged["cost_minor"] == 350
    assert logged["template_id"] == "abonent-cb-promise-1"
    assert (await h.client.get("/v1/messages")).status_code == 401

    lookup = await h.client.post("/v1/recipients/lookup", json={"phone": PHONE}, headers=BEARER)
    recipient = (await h.client.get(f"/v1/recipients/{lookup.json()['id']}", headers=BEARER)).json()
    assert recipient["phone"] == "+7916*****67"
    assert (recipient["tz"], recipient["tz_rule"]) == ("Europe/Moscow", "event")
    assert recipient["cost_minor"] == 350
    page = await h.client.get(f"/back-office/recipients/{lookup.json()['id']}", headers=BEARER)
    assert page.status_code == 200
    assert "sent via sandbox" in page.text


async def test_sms_fallback_only_without_a_receipt_and_a_late_receipt_is_only_recorded(
    harness: Harness,
) -> None:
    h = harness
    first, second = uuid.uuid4(), uuid.uuid4()
    await h.publish(requested(first))
    await h.message("callback_promise", "sent")
    await h.bind_sandbox_chat(PHONE)

    # Delivered in time: no SMS.
    await h.publish(requested(second, at=T0 + MINUTE))

    async def chat_messages() -> list[object]:
        return list(await h.inbox("chat:" + PHONE))

    [chat] = await until(chat_messages)
    await h.receipt(chat["provider_message_id"])
    await h.advance(dt.timedelta(minutes=11))
    rows = await h.messages("callback_promise")

    delivered = next(r for r in rows if r["state"] == "delivered")
    assert [a["channel"] for a in await h.attempts(delivered["id"])] == ["sandbox_chat"]
    assert "fallback cancelled" in await h.timeline(delivered["id"])

    # No receipt within 10 minutes: SMS, and a receipt after that is recorded as late, nothing more.
    h.clock.set(T0 + 15 * MINUTE)
    await h.publish(failed(first, at=T0 + 15 * MINUTE))
    missed = await h.message("callback_missed", "sent")
    await h.advance(9 * MINUTE)
    assert [a["channel"] for a in await h.attempts(missed["id"])] == ["sandbox_chat"]
    await h.advance(2 * MINUTE)

    async def fell_back() -> list[object] | None:
        await h.tick()  # the background sender may hold it; either one sends it, once
        attempts = await h.attempts(missed["id"])
        states = [(a["channel"], a["is_fallback"], a["state"]) for a in attempts]
        return attempts if states == [("sandbox_chat", False, "sent"), ("sandbox", True, "sent")] else None

    attempts = await until(fell_back)
    await h.receipt(attempts[0]["provider_message_id"])
    await h.advance(30 * MINUTE)
    assert len(await h.attempts(missed["id"])) == 2
    timeline = await h.timeline(missed["id"])
    assert timeline[-1] == "late receipt"
    assert "fallback to sandbox" in timeline
    late = [t for t in await h.outbox_types() if t == "notify.delivered.v1"]
    assert len(late) == 2
    payloads = await h.conn.fetch("select payload from outbox where subject = 'notify.delivered'")
    import msgspec

    decoded = [msgspec.json.decode(p["payload"], type=NotifyDelivered) for p in payloads]
    assert sorted(d.late for d in decoded) == [False, True]


async def test_quiet_hours_defer_a_night_request_to_the_morning_in_the_visitors_zone(harness_factory) -> None:  # type: ignore[no-untyped-def]
    night = dt.datetime(2026, 3, 2, 19, 0, tzinfo=dt.UTC)  # 22:00 Moscow, 05:00 in Vladivostok next day
    h: Harness = await harness_factory(at=night)
    event = requested(uuid.uuid4(), at=night, tz="Asia/Vladivostok")
    event = type(event)(**{**_fields(event), "promised_latest": night + dt.timedelta(hours=12)})
    await h.publish(event)
    message = await h.message("callback_promise", "deferred")
    # 09:00 in Vladivostok is 23:00 UTC.
    assert message["send_at"] == dt.datetime(2026, 3, 2, 23, 0, tzinfo=dt.UTC)
    await h.advance(dt.timedelta(hours=3, minutes=59))
    assert await h.inbox() == []
    await h.advance(MINUTE)
    await h.message("callback_promise", "sent")
    timeline = await h.timeline(message["id"])
    assert timeline[1] == "deferred until 2026-03-02 23:00 UTC"


async def test_calling_you_now_expires_instead_of_arriving_late(harness: Harness) -> None:
    h = harness
    callback = uuid.uuid4()
    await h.publish(requested(callback, at=T0 - 10 * MINUTE))
    await h.message("callback_promise", "sent")
    # Dialing started three minutes ago; the event only arrives now (a backlog): too late to be useful.
    await h.publish(dialing(callback, at=T0 - 3 * MINUTE))
    stale = await h.message("callback_calling", "expired")
    assert await h.timeline(stale["id"]) == ["queued", "expired"]
    assert "notify.failed.v1" in await h.outbox_types()
    assert len(await h.inbox()) == 1

    again = uuid.uuid4()
    await h.publish(requested(again, phone="+79161234500"))
    await h.publish(dialing(again, at=T0))
    await until(lambda: _count(h, "callback_calling", "sent"))


async def test_a_later_state_supersedes_a_pending_one_and_is_edited_in_place(harness_factory) -> None:  # type: ignore[no-untyped-def]
    night = dt.datetime(2026, 3, 2, 19, 0, tzinfo=dt.UTC)  # 22:00 Moscow
    h: Harness = await harness_factory(at=night)
    callback = uuid.uuid4()
    early = requested(callback, at=night)
    await h.publish(type(early)(**{**_fields(early), "promised_latest": night + dt.timedelta(hours=14)}))
    await h.message("callback_promise", "deferred")
    # The missed call arrives while the promise waits for the morning: the promise is never sent.
    await h.publish(failed(callback, at=night + MINUTE))
    promise = await h.message("callback_promise", "superseded")
    assert "superseded" in await h.timeline(promise["id"])
    await h.message("callback_missed", "deferred")
    h.clock.set(dt.datetime(2026, 3, 3, 6, 0, tzinfo=dt.UTC))
    await h.tick()
    await h.message("callback_missed", "sent")
    assert [r["body"][:14] for r in await h.inbox()] == ["Не дозвонились"]

    # In a bound messenger a later state edits the earlier message instead of adding one.
    other = uuid.uuid4()
    day = dt.datetime(2026, 3, 3, 7, 0, tzinfo=dt.UTC)
    h.clock.set(day)
    await h.bind_sandbox_chat(PHONE)
    await h.publish(requested(other, at=day))
    await until(lambda: _count(h, "callback_promise", "sent"))
    await h.publish(rescheduled(other, at=day + MINUTE, due=day + dt.timedelta(hours=2)))
    edited = await h.message("callback_rescheduled", "sent")
    chat = await h.inbox("chat:" + PHONE)
    assert len(chat) == 1
    assert chat[0]["body"].startswith("Звонок перенесён")
    assert chat[0]["edited_at"] is not None
    assert (await h.attempts(edited["id"]))[0]["edit_of"] == chat[0]["provider_message_id"]


async def test_one_message_per_event_recipient_and_purpose_under_redelivery_and_replay(
    harness: Harness,
) -> None:
    h = harness
    event = requested(uuid.uuid4())
    await h.publish(event)
    await h.message("callback_promise", "sent")
    # The same event again under another message id (JetStream's dedupe window does not catch it).
    await h.publish(event, msg_id="again-" + str(event.event_id))
    await until(lambda: _consumer_saw_duplicate(h))
    # A replay straight into the handler (another consumer name, an operator's replay): still one.
    async with dbmod.transaction(h.runtime.worker_pool) as conn:
        await h.notifier.on_event(conn, event)
    await h.tick()
    assert len(await h.messages()) == 1
    assert len(await h.inbox()) == 1
    assert (await h.inbox())[0]["submissions"] == 1


async def test_fatigue_budget_stops_the_third_non_critical_sms_but_not_a_legal_notice(
    harness: Harness,
) -> None:
    h = harness
    for n in range(3):
        await h.publish(requested(uuid.uuid4(), at=T0 + n * MINUTE))
        await until(lambda n=n: _count_all(h, "callback_promise", n + 1))
    await until(lambda: _count(h, "callback_promise", "sent", 2))
    stopped = await until(lambda: _one(h, "callback_promise", "failed"))
    assert "SMS fatigue budget spent (2 today)" in await _details(h, stopped["id"])
    await h.publish(link_issued())
    await h.message("verification_link", "sent")
    assert len(await h.inbox(PHONE)) == 3


async def test_opt_out_silences_a_category_but_not_legally_required_notices(harness: Harness) -> None:
    h = harness
    await h.publish(requested(uuid.uuid4()))
    await h.message("callback_promise", "sent")
    recipient = (await h.messages())[0]["recipient_id"]
    response = await h.client.put(
        f"/v1/recipients/{recipient}/opt-outs/callback", json={"opted_out": True}, headers=BEARER
    )
    assert response.status_code == 200, response.text
    await h.publish(requested(uuid.uuid4(), at=T0 + MINUTE))
    await until(lambda: _count(h, "callback_promise", "skipped"))
    await h.publish(link_issued(at=T0 + 2 * MINUTE))
    await h.message("verification_link", "sent")
    assert len(await h.inbox()) == 2


async def test_binding_needs_the_matching_contact_and_stop_unbinds(harness: Harness) -> None:
    h = harness
    await h.publish(requested(uuid.uuid4()))
    await h.message("callback_promise", "sent")
    recipient = (await h.messages())[0]["recipient_id"]
    link = await h.client.post(
        f"/v1/recipients/{recipient}/bind-links", json={"channel": "telegram"}, headers=BEARER
    )
    assert link.json()["link"].startswith("https://t.me/abonent_bot?start=")
    token = h.notifier.binding_token(recipient, "sandbox_chat")
    async with dbmod.transaction(h.runtime.worker_pool) as conn:
        start = InboundUpdate(channel="sandbox_chat", kind="start", chat_id="c1", token=token)
        assert await h.notifier.on_update(conn, start) == "awaiting_contact"
        stranger = InboundUpdate(channel="sandbox_chat", kind="contact", chat_id="c1", phone="+79990001122")
        assert await h.notifier.on_update(conn, stranger) == "contact_mismatch"
        assert await h.notifier.on_update(conn, start) == "awaiting_contact"
        own = InboundUpdate(channel="sandbox_chat", kind="contact", chat_id="c1", phone=PHONE)
        assert await h.notifier.on_update(conn, own) == "bound"
        wrong_channel = InboundUpdate(channel="max", kind="start", chat_id="c2", token=token)
        assert await h.notifier.on_update(conn, wrong_channel) == "bad_token"
    assert await h.conn.fetchval("select chat_id from bindings") == "c1"
    async with dbmod.transaction(h.runtime.worker_pool) as conn:
        stop = InboundUpdate(channel="sandbox_chat", kind="stop", chat_id="c1")
        assert await h.notifier.on_update(conn, stop) == "unbound"
    assert await h.conn.fetchval("select count(*) from bindings") == 0
    actions = [r["action"] for r in await h.conn.fetch("select action from binding_log order by id")]
    assert actions == [
        "started",
        "contact_mismatch",
        "started",
        "bound",
        "bad_token: issued for another channel",
        "unbound_stop",
    ]


# --- helpers --------------------------------------------------------------------------------------------


def _fields(event: object) -> dict[str, object]:
    import msgspec

    return msgspec.structs.asdict(event)  # type: ignore[arg-type]


async def _count(h: Harness, purpose: str, state: str, expected: int = 1) -> bool:
    rows = await h.messages(purpose)
    return sum(1 for r in rows if r["state"] == state) == expected


async def _count_all(h: Harness, purpose: str, expected: int) -> bool:
    return len(await h.messages(purpose)) == expected


async def _one(h: Harness, purpose: str, state: str) -> object:
    rows = [r for r in await h.messages(purpose) if r["state"] == state]
    return rows[0] if len(rows) == 1 else None


async def _details(h: Harness, message_id: uuid.UUID) -> str:
    rows = await h.conn.fetch(
        "select what, detail from timeline where message_id = $1 order by id", message_id
    )
    return " | ".join(f"{r['what']}: {r['detail']}" for r in rows)


async def _consumer_saw_duplicate(h: Harness) -> bool:
    count = await h.conn.fetchval("select count(*) from inbox where consumer = 'notifier_callback'")
    return bool(count == 1) and await _dup_metric()


async def _dup_metric() -> bool:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value("abonent_events_duplicate_total", {"consumer": "notifier_callback"})
    return bool(value and value >= 1)


async def test_an_event_with_a_malformed_phone_is_dead_lettered_not_retried(harness: Harness) -> None:
    h = harness
    await h.publish(requested(uuid.uuid4(), phone="call me maybe"))

    async def dead_letter() -> str | None:
        reason: str | None = await h.conn.fetchval(
            "select reason from dead_letters where consumer = 'notifier_callback'"
        )
        return reason

    assert "not a phone number" in await until(dead_letter)
    assert await h.messages() == []
