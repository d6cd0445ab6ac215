"""SMS.ru- and SMSC-style gateways over real HTTP: sends, every error class, cost, and signed receipt URLs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fakes.asgi import serve_asgi
from fakes.fake_sms_ru import FakeSmsRu, running_sms_ru
from fakes.fake_smsc import FakeSmsc, running_smsc
from litestar import Litestar

from services.common.errors import handle_exception
from services.notifier.channels.base import (
    DeliveryReceipt,
    OutboundMessage,
    PermanentChannelError,
    RecipientUnreachable,
    TransientChannelError,
)
from services.notifier.channels.sms_http import SmscChannel, SmsRuChannel, receipt_path, receipt_routes

SECRET = "receipt-secret"
RUSSIAN = "Мы перезвоним вам сегодня с 14:30 до 14:45. Номер заявки 1234. Отменить: https://ex.am/c/1"


def message(address: str = "+79251234567", text: str = "Hello") -> OutboundMessage:
    return OutboundMessage(message_id=uuid.uuid4(), address=address, text=text)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
async def receipts() -> AsyncIterator[tuple[list[DeliveryReceipt], str]]:
    """Our receipt routes on a real port; yields what reached the sink and the base URL."""
    got: list[DeliveryReceipt] = []

    async def sink(receipt: DeliveryReceipt) -> None:
        got.append(receipt)

    app = Litestar(
        route_handlers=receipt_routes(sink, SECRET), exception_handlers={Exception: handle_exception}
    )
    async with serve_asgi(app) as url:
        yield got, url


async def test_sms_ru_send_and_receipt(
    http: httpx.AsyncClient, receipts: tuple[list[DeliveryReceipt], str]
) -> None:
    got, base = receipts
    async with running_sms_ru() as (fake, url):
        channel = SmsRuChannel(http, base_url=url, api_id=fake.api_id, sender="Abonent")
        result = await channel.send(message(text=RUSSIAN))
        assert [(s.phone, s.text, s.sender) for s in fake.sent] == [("79251234567", RUSSIAN, "Abonent")]
        assert result.provider_message_id == fake.sent[0].sms_id
        assert result.segments == 2  # 91 characters of Cyrillic: UCS-2, 2 × 67
        assert channel.balance is not None
        answer = await fake.report(base + receipt_path(SECRET, "sms_ru"), result.provider_message_id, 103)
        assert (answer.status_code, answer.text) == (200, "100")
        # Intermediate statuses (sent to the operator) are not receipts.
        await fake.report(base + receipt_path(SECRET, "sms_ru"), result.provider_message_id, 102)
    assert [(r.channel, r.provider_message_id, r.status) for r in got] == [
        ("sms_ru", result.provider_message_id, "delivered")
    ]


async def test_sms_ru_errors(http: httpx.AsyncClient) -> None:
    fake = FakeSmsRu(refuse={"79000000001": 202, "79000000002": 207, "79000000003": 201, "79000000004": 204})
    async with running_sms_ru(fake) as (fake, url):
        channel = SmsRuChannel(http, base_url=url, api_id=fake.api_id)
        with pytest.raises(RecipientUnreachable, match="202"):
            await channel.send(message("+79000000001"))
        with pytest.raises(RecipientUnreachable, match="207"):
            await channel.send(message("+79000000002"))
        with pytest.raises(TransientChannelError) as no_money:
            await channel.send(message("+79000000003"))
        assert no_money.value.retry_after_s == 600
        with pytest.raises(PermanentChannelError, match="204") as sender:
            await channel.send(message("+79000000004"))
        assert not isinstance(sender.value, RecipientUnreachable)
        fake.fail_next = [502, "garbage"]
        with pytest.raises(TransientChannelError, match="HTTP 502"):
            await channel.send(message())
        with pytest.raises(TransientChannelError, match="not JSON"):
            await channel.send(message())
        wrong_key = SmsRuChannel(http, base_url=url, api_id="wrong")
        with pytest.raises(PermanentChannelError, match="status_code 200"):
            await wrong_key.send(message())
        with pytest.raises(PermanentChannelError, match="cannot be edited"):
            await channel.edit("x", message())
        assert fake.sent == []
    # Nobody listening: a connection error is transient.
    with pytest.raises(TransientChannelError):
        await SmsRuChannel(http, base_url=url, api_id="k").send(message())


async def test_sms_ru_send_many_puts_each_number_s_own_text_in_one_request(http: httpx.AsyncClient) -> None:
    """SMS.ru's documented form for different texts to different numbers (`to[<number>]=<text>`, at most
    100 numbers): one request for many messages, each with its own outcome from its number's entry."""
    fake = FakeSmsRu(refuse={"79000000002": 202, "79000000003": 201})
    async with running_sms_ru(fake) as (fake, url):
        channel = SmsRuChannel(http, base_url=url, api_id=fake.api_id, batch_limit=3)
        messages = [
            message("+79000000001", "first"),
            message("+79000000002", "refused: bad number"),
            message("+79000000003", "refused: no money"),
            message("+79000000004", RUSSIAN),
            # The same number again: the answer is keyed by number, so it goes in another request.
            message("+79000000001", "second"),
        ]
        outcomes = await channel.send_many(messages)
        assert fake.requests == 2
        assert sorted(fake.numbers_per_request) == [2, 3]
        assert [(s.phone, s.text) for s in sorted(fake.sent, key=lambda s: s.text)] == [
            ("79000000001", "first"),
            ("79000000001", "second"),
            ("79000000004", RUSSIAN),
        ]
        first, bad, broke, russian, second = outcomes
        by_text = {s.text: s.sms_id for s in fake.sent}
        assert not isinstance(first, Exception)
        assert first.provider_message_id == by_text["first"]
        assert not isinstance(second, Exception)
        assert second.provider_message_id == by_text["second"]
        assert not isinstance(russian, Exception)
        assert russian.segments == 2
        assert isinstance(bad, RecipientUnreachable)
        assert isinstance(broke, TransientChannelError)
        assert broke.retry_after_s == 600
        # A request that fails as a whole is that failure for each of its messages.
        fake.fail_next = [502]
        failed = await channel.send_many([message("+79000000005"), message("+79000000006")])
        assert all(isinstance(f, TransientChannelError) for f in failed)
        assert len(failed) == 2
    one = SmsRuChannel(http, base_url=url, api_id="k", batch_limit=1)
    assert one.batch_limit == 1
    assert SmsRuChannel(http, base_url=url, api_id="k", batch_limit=500).batch_limit == 100


async def test_smsc_send_cost_and_receipt(
    http: httpx.AsyncClient, receipts: tuple[list[DeliveryReceipt], str]
) -> None:
    got, base = receipts
    async with running_smsc() as (fake, url):
        channel = SmscChannel(http, base_url=url, login=fake.login, password=fake.password)
        result = await channel.send(message(text=RUSSIAN))
        assert result.provider_message_id == str(fake.sent[0].sms_id)
        assert (result.segments, result.cost_minor) == (2, 580)
        failed = await channel.send(message("+79250000000"))
        callback = base + receipt_path(SECRET, "smsc")
        assert (await fake.report(callback, fake.sent[0].sms_id, "79251234567", 1)).status_code == 200
        await fake.report(callback, fake.sent[1].sms_id, "79250000000", 20, err=1)
        await fake.report(callback, fake.sent[1].sms_id, "79250000000", 0)  # "transferred": not final
    assert [(r.provider_message_id, r.status, r.reason) for r in got] == [
        (result.provider_message_id, "delivered", ""),
        (failed.provider_message_id, "failed", "status 20, err 1"),
    ]


async def test_smsc_errors(http: httpx.AsyncClient) -> None:
    fake = FakeSmsc(refuse={"79000000001": 7, "79000000002": 8, "79000000003": 9, "79000000004": 6})
    async with running_smsc(fake) as (fake, url):
        channel = SmscChannel(http, base_url=url, login=fake.login, password=fake.password)
        with pytest.raises(RecipientUnreachable, match="error_code 7"):
            await channel.send(message("+79000000001"))
        with pytest.raises(RecipientUnreachable, match="error_code 8"):
            await channel.send(message("+79000000002"))
        with pytest.raises(TransientChannelError) as busy:
            await channel.send(message("+79000000003"))
        assert busy.value.retry_after_s == 60
        with pytest.raises(PermanentChannelError, match="error_code 6"):
            await channel.send(message("+79000000004"))
        with pytest.raises(PermanentChannelError, match="error_code 2"):
            await SmscChannel(http, base_url=url, login="abonent", password="wrong").send(message())
        fake.fail_next = [503, "garbage"]
        with pytest.raises(TransientChannelError, match="HTTP 503"):
            await channel.send(message())
        with pytest.raises(TransientChannelError, match="not JSON"):
            await channel.send(message())
        assert fake.sent == []


@pytest.mark.parametrize("channel", ["sms_ru", "smsc"])
async def test_bad_receipt_token_is_401_and_changes_nothing(
    http: httpx.AsyncClient, receipts: tuple[list[DeliveryReceipt], str], channel: str
) -> None:
    got, base = receipts
    form = {"data[0]": "sms_status\n000001-1\n103\n1700000000", "id": "1", "status": "1"}
    # Another secret, the other channel's token, and no token at all.
    other_channel = "smsc" if channel == "sms_ru" else "sms_ru"
    forged = receipt_path("not-the-secret", channel)
    swapped = f"/channels/{channel}/receipts/" + receipt_path(SECRET, other_channel).rsplit("/", 1)[1]
    for path in (forged, swapped):
        response = await http.post(base + path, data=form)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    assert (await http.post(base + f"/channels/{channel}/receipts/", data=form)).status_code in (404, 405)
    assert got == []
    assert (await http.post(base + receipt_path(SECRET, channel), data=form)).status_code == 200
    assert len(got) == 1
