"""The engine with the real Telegram adapter against a local Bot API: bind by deep link and contact,
edit in place, a 429 storm retried once, a blocked bot unbound with SMS taking over."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from fakes.fake_telegram import running_telegram
from support.notifier import PHONE, T0, Harness, failed, requested
from support.polling import until

from services.notifier.settings import NotifierSettings

SECRET = "webhook-secret"
CHAT = 555001


async def webhook(h: Harness, message: dict[str, Any]) -> None:
    body = {"update_id": 1, "message": {"chat": {"id": CHAT}, "from": {"id": CHAT}, **message}}
    response = await h.client.post(
        "/channels/telegram/webhook", json=body, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}
    )
    assert response.status_code == 200, response.text


async def test_telegram_binding_429_storm_edit_in_place_and_blocked_bot(harness_factory: Any) -> None:
    async with running_telegram() as (fake, url):
        own = NotifierSettings(
            notify_channels="telegram,sandbox",
            telegram_api_url=url,
            telegram_bot_token=fake.token,
            telegram_webhook_secret=SECRET,
        )
        h: Harness = await harness_factory(own=own)
        first, second = uuid.uuid4(), uuid.uuid4()
        await h.publish(requested(first))
        await h.message("callback_promise", "sent")
        recipient = (await h.messages())[0]["recipient_id"]

        # The person taps the deep link, then shares their own contact: bound.
        token = h.notifier.binding_token(recipient, "telegram")
        await webhook(h, {"text": f"/start {token}"})
        await webhook(h, {"contact": {"user_id": CHAT, "phone_number": PHONE.removeprefix("+")}})
        assert await h.conn.fetchval("select chat_id from bindings where channel = 'telegram'") == str(CHAT)
        forged = await h.client.post("/channels/telegram/webhook", json={}, headers={})
        assert forged.status_code == 401

        # A flood window: the call is refused with retry_after and made again once it has passed.
        fake.flood(2)
        await h.publish(requested(second, at=T0 + dt.timedelta(minutes=1)))

        async def retried() -> bool:
            return fake.refused_429 >= 1

        await until(retried)
        await h.advance(dt.timedelta(seconds=1))
        assert fake.messages == []
        fake.flood_until = 0.0
        await h.advance(dt.timedelta(seconds=10))
        await until(lambda: _state(h, second, "delivered"))  # Telegram has no receipts: accepted = delivered
        assert [m.text[:10] for m in fake.messages] == ["Перезвоним"]

        # The missed call edits that chat message in place.
        h.clock.set(T0 + dt.timedelta(minutes=20))
        await h.publish(failed(second, at=T0 + dt.timedelta(minutes=20)))
        try:
            await until(lambda: _edited(fake))
        except AssertionError:
            await _dump(h, fake)
            raise
        assert len(fake.messages) == 1

        # Blocked: the next message finds the chat dead, unbinds it and goes by SMS instead.
        fake.blocked.add(str(CHAT))
        third = uuid.uuid4()
        h.clock.set(T0 + dt.timedelta(minutes=30))
        await h.publish(requested(third, at=T0 + dt.timedelta(minutes=30)))
        try:
            await until(lambda: _went_by_sms(h, third))
        except AssertionError:
            await _dump(h, fake)
            raise
        assert await h.conn.fetchval("select count(*) from bindings") == 0
        actions = [r["action"] for r in await h.conn.fetch("select action from binding_log order by id")]
        assert actions[-1] == "unbound_unreachable"


async def _state(h: Harness, callback_id: uuid.UUID, state: str) -> bool:
    rows = await h.conn.fetch(
        "select m.state from messages m join callback_contacts c on c.recipient_id = m.recipient_id"
        " where m.thread_key = $1",
        f"callback:{callback_id}",
    )
    return any(r["state"] == state for r in rows)


async def _edited(fake: Any) -> bool:
    return bool(
        fake.messages and fake.messages[0].edits == 1 and fake.messages[0].text.startswith("Не дозвон")
    )


async def _went_by_sms(h: Harness, callback_id: uuid.UUID) -> bool:
    states = await h.conn.fetch(
        "select a.channel, a.state from attempts a join messages m on m.id = a.message_id"
        " where m.thread_key = $1 order by a.created_at",
        f"callback:{callback_id}",
    )
    return [(r["channel"], r["state"]) for r in states] == [("telegram", "failed"), ("sandbox", "sent")]


async def _dump(h: Harness, fake: Any) -> None:
    for m in await h.messages():
        print(m["purpose"], m["thread_key"], m["state"], await h.timeline(m["id"]))
        for a in await h.attempts(m["id"]):
            print("   ", a["channel"], a["state"], a["edit_of"], a["error"])
    print(fake.messages)
