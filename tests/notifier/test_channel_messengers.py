"""Telegram and MAX over real HTTP: send/edit, every error class, a 429 storm, update parsing, webhooks."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fakes.asgi import serve_asgi
from fakes.fake_max import FakeMax, running_max
from fakes.fake_telegram import FakeTelegram, running_telegram
from litestar import Litestar

from services.common.errors import handle_exception
from services.notifier.channels import max as max_channel
from services.notifier.channels import telegram
from services.notifier.channels.base import (
    InboundUpdate,
    OutboundMessage,
    PermanentChannelError,
    RecipientUnreachable,
    TransientChannelError,
)
from services.notifier.channels.max import MaxChannel
from services.notifier.channels.telegram import TelegramChannel

CHAT = "5550001"


def message(address: str = CHAT, text: str = "Мы перезвоним в 14:30") -> OutboundMessage:
    return OutboundMessage(message_id=uuid.uuid4(), address=address, text=text)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def test_telegram_send_and_edit_in_place(http: httpx.AsyncClient) -> None:
    async with running_telegram() as (fake, url):
        channel = TelegramChannel(http, base_url=url, token=fake.token)
        sent = await channel.send(message())
        assert [(m.chat_id, m.text) for m in fake.messages] == [(CHAT, "Мы перезвоним в 14:30")]
        assert sent.provider_message_id == f"{CHAT}:{fake.messages[0].message_id}"
        edited = message(text="Не дозвонились. Выбрать другое время: https://ex.am/r/1")
        assert (
            await channel.edit(sent.provider_message_id, edited)
        ).provider_message_id == sent.provider_message_id
        # A retried edit (same text) is "message is not modified" at Telegram: still a success.
        await channel.edit(sent.provider_message_id, edited)
        assert len(fake.messages) == 1
        assert (fake.messages[0].text, fake.messages[0].edits) == (edited.text, 1)


async def test_telegram_errors(http: httpx.AsyncClient) -> None:
    fake = FakeTelegram(blocked={"666"}, known_chats={CHAT, "666"})
    async with running_telegram(fake) as (fake, url):
        channel = TelegramChannel(http, base_url=url, token=fake.token)
        with pytest.raises(RecipientUnreachable, match="blocked by the user"):
            await channel.send(message("666"))
        with pytest.raises(RecipientUnreachable, match="chat not found"):
            await channel.send(message("777"))
        with pytest.raises(PermanentChannelError, match="401"):
            await TelegramChannel(http, base_url=url, token="0:wrong").send(message())
        with pytest.raises(PermanentChannelError, match="message to edit not found"):
            await channel.edit(f"{CHAT}:999", message())
        with pytest.raises(PermanentChannelError, match="not a chat:message id"):
            await channel.edit("garbage", message())
        fake.flood(30)
        with pytest.raises(TransientChannelError) as flood:
            await channel.send(message())
        assert flood.value.retry_after_s == 30
        assert fake.messages == []


async def test_telegram_429_storm_honours_retry_after_and_sends_once(http: httpx.AsyncClient) -> None:
    """What the engine does with a transient error: wait retry_after_s, try the same message again."""
    async with running_telegram() as (fake, url):
        channel = TelegramChannel(http, base_url=url, token=fake.token)
        outbound = [message(text=f"message {n}") for n in range(5)]
        fake.flood(2)
        started = time.monotonic()
        attempts: dict[uuid.UUID, int] = {}
        waits: list[float | None] = []

        async def deliver(item: OutboundMessage) -> None:
            while True:
                attempts[item.message_id] = attempts.get(item.message_id, 0) + 1
                try:
                    await channel.send(item)
                    return
                except TransientChannelError as exc:
                    waits.append(exc.retry_after_s)
                    await asyncio.sleep(exc.retry_after_s or 1.0)

        await asyncio.gather(*(deliver(item) for item in outbound))
        # Nobody came back before Telegram's window closed, and each message exists exactly once.
        assert time.monotonic() - started >= 2 - 0.05
        assert fake.refused_429 >= 5
        assert sorted(m.text for m in fake.messages) == sorted(item.text for item in outbound)
        assert all(count >= 2 for count in attempts.values())
        assert all(wait is not None and wait >= 1 for wait in waits)


def test_telegram_parse_update() -> None:
    user = {"id": 42, "is_bot": False, "first_name": "Анна"}
    chat = {"id": 42, "type": "private"}
    parse = telegram.parse_update
    assert parse(
        {"update_id": 1, "message": {"message_id": 1, "from": user, "chat": chat, "text": "/start tok_123"}}
    ) == (InboundUpdate(channel="telegram", kind="start", chat_id="42", token="tok_123"))
    own = {"phone_number": "79251234567", "first_name": "Анна", "user_id": 42}
    assert parse(
        {"update_id": 2, "message": {"message_id": 2, "from": user, "chat": chat, "contact": own}}
    ) == (InboundUpdate(channel="telegram", kind="contact", chat_id="42", phone="+79251234567"))
    # Someone else's card (or one without a user id) binds nothing.
    other = {"phone_number": "+79990000000", "first_name": "Пётр", "user_id": 43}
    for card in (other, {"phone_number": "+79990000000", "first_name": "Пётр"}):
        update = parse(
            {"update_id": 3, "message": {"message_id": 3, "from": user, "chat": chat, "contact": card}}
        )
        assert (update.kind, update.phone) == ("other", "")
    for text in ("stop", "STOP ", "/stop", "Стоп"):
        assert parse(
            {"update_id": 4, "message": {"message_id": 4, "from": user, "chat": chat, "text": text}}
        ).kind == ("stop")
    kicked = {
        "chat": chat,
        "from": user,
        "date": 1,
        "old_chat_member": {"status": "member", "user": user},
        "new_chat_member": {"status": "kicked", "user": user, "until_date": 0},
    }
    assert parse({"update_id": 5, "my_chat_member": kicked}) == InboundUpdate(
        channel="telegram", kind="blocked", chat_id="42"
    )
    assert parse(
        {"update_id": 6, "message": {"message_id": 6, "from": user, "chat": chat, "text": "/start"}}
    ).kind == ("other")
    assert parse({"update_id": 7, "edited_message": {}}).kind == "other"


async def test_max_send_edit_and_errors(http: httpx.AsyncClient) -> None:
    fake = FakeMax(blocked={"-666"}, missing={"-777"})
    async with running_max(fake) as (fake, url):
        channel = MaxChannel(http, base_url=url, token=fake.token)
        sent = await channel.send(message("-100"))
        assert sent.provider_message_id == fake.messages[0].mid
        await channel.edit(sent.provider_message_id, message("-100", "новый текст"))
        assert (fake.messages[0].text, fake.messages[0].edits) == ("новый текст", 1)
        with pytest.raises(RecipientUnreachable, match=r"chat\.denied"):
            await channel.send(message("-666"))
        with pytest.raises(RecipientUnreachable, match=r"chat\.not\.found"):
            await channel.send(message("-777"))
        with pytest.raises(PermanentChannelError, match="401"):
            await MaxChannel(http, base_url=url, token="wrong").send(message("-100"))
        fake.throttle_next = 1
        with pytest.raises(TransientChannelError) as throttled:
            await channel.send(message("-100"))
        assert throttled.value.retry_after_s == 2
        assert len(fake.messages) == 1


def test_max_parse_update() -> None:
    parse = max_channel.parse_update
    user = {"user_id": 10001, "first_name": "Анна", "is_bot": False}
    assert parse({"update_type": "bot_started", "chat_id": -100, "user": user, "payload": "tok_1"}) == (
        InboundUpdate(channel="max", kind="start", chat_id="-100", token="tok_1")
    )
    assert parse({"update_type": "bot_stopped", "chat_id": -100, "user": user}).kind == "blocked"

    def created(body: dict[str, Any]) -> dict[str, Any]:
        message = {"recipient": {"chat_id": -100, "chat_type": "dialog"}, "sender": user, "body": body}
        return {"update_type": "message_created", "timestamp": 1, "message": message}

    vcf = "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Анна\r\nTEL;TYPE=CELL:+7 925 123-45-67\r\nEND:VCARD\r\n"
    own = {"type": "contact", "payload": {"vcf_info": vcf, "max_info": user}}
    assert parse(created({"mid": "m1", "text": "", "attachments": [own]})) == InboundUpdate(
        channel="max", kind="contact", chat_id="-100", phone="+79251234567"
    )
    other = {"type": "contact", "payload": {"vcf_phone": "79990000000", "max_info": {"user_id": 5}}}
    assert parse(created({"mid": "m2", "attachments": [other]})).kind == "other"
    assert parse(created({"mid": "m3", "text": "стоп"})).kind == "stop"
    assert parse(created({"mid": "m4", "text": "/start tok_2"})).token == "tok_2"
    assert parse({"update_type": "user_added", "chat_id": -1}).kind == "other"


@pytest.mark.parametrize(
    ("module", "path", "header"),
    [
        (telegram, "/channels/telegram/webhook", "X-Telegram-Bot-Api-Secret-Token"),
        (max_channel, "/channels/max/webhook", "X-Max-Bot-Api-Secret"),
    ],
)
async def test_webhook_secret(http: httpx.AsyncClient, module: Any, path: str, header: str) -> None:
    got: list[InboundUpdate] = []

    async def sink(update: InboundUpdate) -> None:
        got.append(update)

    app = Litestar(
        route_handlers=module.webhook_routes(sink, "hook-secret"),
        exception_handlers={Exception: handle_exception},
    )
    body = (
        {"update_id": 1, "message": {"message_id": 1, "from": {"id": 1}, "chat": {"id": 1}, "text": "stop"}}
        if module is telegram
        else {"update_type": "bot_stopped", "chat_id": 1}
    )
    async with serve_asgi(app) as url:
        for headers in ({}, {header: "wrong"}):
            response = await http.post(url + path, json=body, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"
        assert got == []
        assert (await http.post(url + path, json=body, headers={header: "hook-secret"})).status_code == 200
    assert [u.kind for u in got] == (["stop"] if module is telegram else ["blocked"])
