"""Contract tests of the MANGO OFFICE adapter against a local VPBX API and a real webhook receiver."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

# tests/conftest.py puts tests/ on sys.path (pytest's default "prepend" import mode), so `fakes` imports.
from fakes.fake_mango import FakeMango, MangoScript, serve_fake_mango, serve_webhook_receiver
from fakes.recorder import EventRecorder

from services.callback.telephony.base import (
    CallEvent,
    CallEventKind,
    CallOrder,
    CallOutcome,
    DialOrder,
    TelephonyError,
    outcome_of,
)
from services.callback.telephony.cloud import (
    MangoConfig,
    MangoNotice,
    MangoOfficeAdapter,
    mango_sign,
    translate_notice,
)

K = CallEventKind
VISITOR = "+79161234567"
VISITOR_DIGITS = "79161234567"
HAPPY = [K.AGENT_RINGING, K.AGENT_ANSWERED, K.VISITOR_RINGING, K.VISITOR_ANSWERED, K.BRIDGED, K.ENDED]
WEBHOOK_PREFIX = "/telephony/mango"


def make_order(order: DialOrder = "agent_first") -> CallOrder:
    return CallOrder(
        attempt_id=uuid.uuid4().hex,
        visitor_phone=VISITOR,
        agent_endpoint="101",
        caller_id="+74951234567",
        whisper_text="callback from example.ru, page /pricing",
        order=order,
    )


@contextlib.asynccontextmanager
async def mango(**config: Any) -> AsyncIterator[tuple[FakeMango, MangoOfficeAdapter, EventRecorder]]:
    """Fake Mango -> signed webhooks -> receiver -> adapter.handle_webhook, all over real HTTP."""
    async with serve_fake_mango() as fake:
        values: dict[str, Any] = {
            "api_key": fake.api_key,
            "api_salt": fake.api_salt,
            "base_url": fake.base_url + "/vpbx",
            "request_timeout_s": 2.0,
        }
        values.update(config)
        adapter = MangoOfficeAdapter(MangoConfig(**values))
        await adapter.start()
        try:
            async with serve_webhook_receiver(adapter.handle_webhook) as receiver_url:
                fake.webhook_url = receiver_url + WEBHOOK_PREFIX
                async with EventRecorder(adapter) as recorder:
                    try:
                        yield fake, adapter, recorder
                    finally:
                        await fake.close()  # no webhook may be in flight once the receiver stops
        finally:
            await adapter.aclose()


def test_sign_is_sha256_of_key_json_salt_as_documented() -> None:
    # The example json of API ВАТС §2.4.4; the digest was computed independently with coreutils:
    # printf '%s' '1234567890qwerty{"command_id":...,"to_number":"744"}abonent-salt' | sha256sum
    text = '{"command_id":"cmd.2.vpbx.system.com.net","from":{"extension":"123"},"to_number":"744"}'
    expected = "dd15494c2cfdf19d65c30874697dd9370cabc5accad7ded1db79a507efa43ade"
    assert mango_sign("1234567890qwerty", text, "abonent-salt") == expected


async def test_callback_command_is_signed_and_shaped_as_documented() -> None:
    async with mango() as (fake, adapter, recorder):
        order = make_order()
        assert await adapter.place_call(order) == order.attempt_id
        await recorder.until_terminal(order.attempt_id)
    (command,) = fake.callbacks_to(VISITOR_DIGITS)
    assert command.result == 1000  # the fake checked vpbx_api_key and sign, or it would have said 3102/3105
    assert command.payload == {
        "command_id": order.attempt_id,
        "from": {"extension": "101"},
        "to_number": VISITOR_DIGITS,
        "line_number": "74951234567",
    }


async def test_connected_call_maps_to_the_full_sequence() -> None:
    async with mango() as (fake, adapter, recorder):
        order = make_order()
        await adapter.place_call(order)
        kinds = await recorder.until_terminal(order.attempt_id)
    assert kinds == HAPPY
    events = recorder.of(order.attempt_id)
    assert outcome_of(events) is CallOutcome.CONNECTED
    assert {e.provider_call_id for e in events} == {"entry-0001"}
    assert all(w.status == 200 for w in fake.webhooks)
    assert {w.path for w in fake.webhooks} == {"/result/callback", "/events/call"}


@pytest.mark.parametrize(
    ("script", "expected", "outcome"),
    [
        (
            MangoScript(visitor="busy"),
            [K.AGENT_RINGING, K.AGENT_ANSWERED, K.VISITOR_RINGING, K.VISITOR_BUSY],
            CallOutcome.BUSY,
        ),
        (
            MangoScript(visitor="rejected"),
            [K.AGENT_RINGING, K.AGENT_ANSWERED, K.VISITOR_RINGING, K.VISITOR_BUSY],
            CallOutcome.BUSY,
        ),
        (
            MangoScript(visitor="no_answer"),
            [K.AGENT_RINGING, K.AGENT_ANSWERED, K.VISITOR_RINGING, K.VISITOR_NO_ANSWER],
            CallOutcome.VISITOR_NO_ANSWER,
        ),
        (
            MangoScript(visitor="invalid_number"),
            [K.AGENT_RINGING, K.AGENT_ANSWERED, K.VISITOR_RINGING, K.FAILED],
            CallOutcome.FAILED,
        ),
        (MangoScript(agent="no_answer"), [K.AGENT_RINGING, K.AGENT_NO_ANSWER], CallOutcome.AGENT_NO_ANSWER),
        (MangoScript(agent="busy"), [K.AGENT_RINGING, K.AGENT_NO_ANSWER], CallOutcome.AGENT_NO_ANSWER),
        (MangoScript(async_result=4200), [K.FAILED], CallOutcome.FAILED),
    ],
)
async def test_event_mapping(
    script: MangoScript, expected: list[CallEventKind], outcome: CallOutcome
) -> None:
    async with mango() as (fake, adapter, recorder):
        fake.script(VISITOR_DIGITS, script)
        order = make_order()
        await adapter.place_call(order)
        kinds = await recorder.until_terminal(order.attempt_id)
    assert kinds == expected
    assert outcome_of(recorder.of(order.attempt_id)) is outcome


async def test_duplicate_and_stale_events_are_ignored() -> None:
    async with mango() as (fake, adapter, recorder):
        fake.script(VISITOR_DIGITS, MangoScript(duplicate_events=True))
        order = make_order()
        await adapter.place_call(order)
        kinds = await recorder.until_terminal(order.attempt_id)
        # A late copy of the visitor leg's "Appeared" (seq 1) after it disconnected (seq 3).
        stale = next(
            w.payload
            for w in fake.webhooks
            if w.payload.get("call_state") == "Appeared" and "number" in w.payload["to"]
        )
        assert await fake.send_webhook("/events/call", stale) == 200
    assert kinds == HAPPY
    assert recorder.kinds(order.attempt_id) == HAPPY


async def test_bad_signature_webhook_is_rejected() -> None:
    async with mango() as (fake, adapter, recorder):
        fake.script(VISITOR_DIGITS, MangoScript(agent="no_answer", step_ms=50))
        order = make_order()
        await adapter.place_call(order)
        await recorder.wait_for(order.attempt_id, K.AGENT_RINGING)
        forged = {
            "entry_id": "entry-0001",
            "call_id": "1:agent",
            "seq": 99,
            "call_state": "Connected",
            "from": {"number": "74951234567"},
            "to": {"extension": "101"},
            "command_id": order.attempt_id,
        }
        assert await fake.send_webhook("/events/call", forged, bad_sign=True) == 403

        form = fake.signed_form(forged)
        assert adapter.verify(form)  # control: the genuine form passes
        assert not await adapter.handle_webhook("/events/call", {**form, "sign": "0" * 64})
        assert not await adapter.handle_webhook("/events/call", {**form, "vpbx_api_key": "someone-else"})
        assert not await adapter.handle_webhook(
            "/events/call", {**form, "json": form["json"].replace("99", "98")}
        )
        assert not await adapter.handle_webhook("/events/call", {"json": form["json"]})
        kinds = await recorder.until_terminal(order.attempt_id)
    assert kinds == [K.AGENT_RINGING, K.AGENT_NO_ANSWER]  # no forged "answered" got in


@pytest.mark.parametrize(
    ("script", "retryable", "text"),
    [
        (MangoScript(result=2240), False, "2240 insufficient funds"),
        (MangoScript(result=3200), False, "3200"),
        (MangoScript(result=4200), True, "4200"),
        (MangoScript(result=5001), True, "5001 overload"),
        (MangoScript(result=2220), True, "2220"),
        (MangoScript(http_status=429), True, "HTTP 429"),
        (MangoScript(http_status=503), True, "HTTP 503"),
        (MangoScript(http_status=401), False, "HTTP 401"),
    ],
)
async def test_provider_errors_become_telephony_errors(
    script: MangoScript, retryable: bool, text: str
) -> None:
    async with mango() as (fake, adapter, recorder):
        fake.script(VISITOR_DIGITS, script)
        order = make_order()
        with pytest.raises(TelephonyError) as raised:
            await adapter.place_call(order)
        assert raised.value.retryable is retryable
        assert text in raised.value.message
        # Nothing started, so a retry sends the command again.
        fake.script(VISITOR_DIGITS, MangoScript())
        await adapter.place_call(order)
        assert await recorder.until_terminal(order.attempt_id) == HAPPY
    assert len(fake.callbacks_to(VISITOR_DIGITS)) == 2


async def test_wrong_salt_is_refused_by_the_provider() -> None:
    async with mango(api_salt="not-our-salt") as (fake, adapter, _):
        with pytest.raises(TelephonyError) as raised:
            await adapter.place_call(make_order())
    assert raised.value.retryable is False
    assert "3102" in raised.value.message
    assert fake.commands[0].result == 3102


async def test_timeout_is_retryable_and_a_retry_after_events_does_not_ring_twice() -> None:
    async with mango(request_timeout_s=0.2) as (fake, adapter, recorder):
        fake.script(VISITOR_DIGITS, MangoScript(delay_s=0.4, talk_ms=200))
        order = make_order()
        with pytest.raises(TelephonyError) as raised:
            await adapter.place_call(order)
        assert raised.value.retryable is True
        # The slow PBX carried the command out anyway; its events reach the adapter.
        await recorder.wait_for(order.attempt_id, K.AGENT_RINGING)
        assert await adapter.place_call(order) == order.attempt_id
        kinds = await recorder.until_terminal(order.attempt_id)
    assert kinds == HAPPY
    assert len(fake.callbacks_to(VISITOR_DIGITS)) == 1


async def test_place_call_is_idempotent() -> None:
    async with mango() as (fake, adapter, recorder):
        order = make_order()
        await adapter.place_call(order)
        await adapter.place_call(order)
        await recorder.until_terminal(order.attempt_id)
        await adapter.place_call(order)
    assert len(fake.callbacks_to(VISITOR_DIGITS)) == 1
    assert recorder.kinds(order.attempt_id) == HAPPY


async def test_hangup_sends_the_documented_command_and_ends_once() -> None:
    async with mango() as (fake, adapter, recorder):
        fake.script(VISITOR_DIGITS, MangoScript(talk_ms=60_000))
        order = make_order()
        await adapter.place_call(order)
        await recorder.wait_for(order.attempt_id, K.BRIDGED)
        await adapter.hangup(order.attempt_id)
        kinds = await recorder.until_terminal(order.attempt_id)
        await adapter.hangup(order.attempt_id)
        hangups = [c for c in fake.commands if c.path == "/commands/call/hangup"]
    assert kinds == HAPPY
    assert [c.payload["call_id"] for c in hangups if c.payload] == ["1:visitor", "1:agent"]
    assert [c.result for c in hangups] == [1000, 4101]  # the first hangup already ended the whole call
    assert all(c.payload and c.payload["command_id"].startswith(order.attempt_id) for c in hangups)


async def test_customer_first_is_not_offered() -> None:
    async with mango() as (fake, adapter, _):
        with pytest.raises(TelephonyError) as raised:
            await adapter.place_call(make_order("customer_first"))
    assert raised.value.retryable is False
    assert fake.commands == []


async def test_unknown_and_unreadable_notifications_are_acknowledged() -> None:
    async with mango() as (fake, adapter, recorder):
        other = fake.signed_form({"entry_id": "x", "call_id": "y", "seq": 1, "call_state": "Appeared"})
        assert await adapter.handle_webhook("/events/call", other) is True
        assert await adapter.handle_webhook("/events/summary", fake.signed_form({"entry_id": "x"})) is True
        garbage = {"vpbx_api_key": fake.api_key, "json": "{not json"}
        garbage["sign"] = mango_sign(fake.api_key, garbage["json"], fake.api_salt)
        assert await adapter.handle_webhook("/events/call", garbage) is True
        assert json.loads(other["json"])["entry_id"] == "x"
    assert recorder.events == []


def _notices(attempt_id: str) -> list[str]:
    """The notices of a conversation as the webhook route carries them: agent leg, then visitor leg."""
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    agent, visitor = {"extension": "101"}, {"number": VISITOR_DIGITS}
    script = [
        ("1:agent", 1, "Appeared", agent, None),
        ("1:agent", 2, "Connected", agent, None),
        ("1:visitor", 1, "Appeared", visitor, None),
        ("1:visitor", 2, "Connected", visitor, None),
        ("1:visitor", 3, "Disconnected", visitor, 1120),
        ("1:agent", 3, "Disconnected", agent, 1100),
    ]
    notices = []
    for n, (call_id, seq, state, to, reason) in enumerate(script):
        payload: dict[str, Any] = {
            "entry_id": "entry-1",
            "call_id": call_id,
            "seq": seq,
            "call_state": state,
            "to": to,
            "command_id": attempt_id,
        }
        if reason is not None:
            payload["disconnect_reason"] = reason
        notice = MangoNotice(
            endpoint="events/call", json=json.dumps(payload), at=at + dt.timedelta(seconds=n)
        )
        notices.append(msgspec.json.encode(notice).decode())
    return notices


def test_translation_gives_each_event_once_whatever_order_the_notices_are_applied_in() -> None:
    # Two replicas' consumers, or a redelivery after a failure, may apply a call's notices out of order.
    attempt_id = uuid.uuid4().hex
    notices = _notices(attempt_id)
    for order in itertools.permutations(range(len(notices))):
        state: bytes | None = None
        events: list[CallEvent] = []
        for index in [*order, *order]:  # and each notice delivered twice
            state, produced = translate_notice(attempt_id, state, notices[index])
            events.extend(produced)
        kinds = [e.kind for e in events]
        assert len(kinds) == len(set(kinds)), order
        assert sum(e.is_terminal for e in events) == 1, order
        if order.index(3) < order.index(5):
            # The visitor's "Connected" was in before the call was over: a conversation, whatever else.
            assert set(kinds) == set(HAPPY), order
            (ended,) = [e for e in events if e.kind is K.ENDED]
            assert ended.bridged_at == dt.datetime(2026, 1, 1, 0, 0, 3, tzinfo=dt.UTC)
            assert outcome_of(events) is CallOutcome.CONNECTED
