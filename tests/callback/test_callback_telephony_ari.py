"""Contract tests of the Asterisk ARI adapter against a local ARI server (real HTTP and WebSocket)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

# tests/conftest.py puts tests/ on sys.path (pytest's default "prepend" import mode), so `fakes` imports.
from fakes.fake_ari import EndpointScript, FakeAri, serve_fake_ari
from fakes.recorder import EventRecorder

from services.callback.telephony.ari import AriConfig, AsteriskAriAdapter
from services.callback.telephony.base import (
    CallEventKind,
    CallOrder,
    CallOutcome,
    DialOrder,
    TelephonyError,
    outcome_of,
)

K = CallEventKind
AGENT = "PJSIP/101"
VISITOR = "+79161234567"
VISITOR_ENDPOINT = "PJSIP/79161234567@trunk"
WHISPER = "sound:abonent-whisper"
HAPPY = [K.AGENT_RINGING, K.AGENT_ANSWERED, K.VISITOR_RINGING, K.VISITOR_ANSWERED, K.BRIDGED, K.ENDED]


def make_order(order: DialOrder = "agent_first", ring_timeout_s: int = 25) -> CallOrder:
    return CallOrder(
        attempt_id=uuid.uuid4().hex,
        visitor_phone=VISITOR,
        agent_endpoint=AGENT,
        caller_id="+74951234567",
        whisper_text="callback from example.ru, page /pricing",
        order=order,
        ring_timeout_s=ring_timeout_s,
    )


def channel_ids(order: CallOrder) -> tuple[str, str, str]:
    prefix = f"abonent-{order.attempt_id}"
    return f"{prefix}-agent", f"{prefix}-visitor", f"{prefix}-bridge"


async def talk_then_hang_up(fake: FakeAri, recorder: EventRecorder, order: CallOrder, leg: str) -> list[K]:
    """Once bridged, the person on `leg` hangs up; returns the attempt's event kinds up to its end."""
    await recorder.wait_for(order.attempt_id, K.BRIDGED)
    agent_id, visitor_id, _ = channel_ids(order)
    await fake.hangup_channel(agent_id if leg == "agent" else visitor_id)
    return await recorder.until_terminal(order.attempt_id)


@contextlib.asynccontextmanager
async def ari_adapter(fake: FakeAri, **overrides: Any) -> AsyncIterator[AsteriskAriAdapter]:
    values: dict[str, Any] = {
        "base_url": fake.base_url,
        "username": fake.username,
        "password": fake.password,
        "app": "abonent-test",
        "visitor_endpoint_template": "PJSIP/{digits}@trunk",
        "whisper_media": WHISPER,
        "http_timeout_s": 2.0,
        "connect_timeout_s": 2.0,
        "reconnect_initial_s": 0.02,
        "reconnect_max_s": 0.2,
    }
    values.update(overrides)
    adapter = AsteriskAriAdapter(AriConfig(**values))
    await adapter.start()
    try:
        yield adapter
    finally:
        await adapter.aclose()


@pytest.fixture
async def fake() -> AsyncIterator[FakeAri]:
    async with serve_fake_ari() as server:
        yield server


async def test_happy_path_originates_agent_then_visitor_and_bridges_them(fake: FakeAri) -> None:
    order = make_order()
    agent_id, visitor_id, bridge_id = channel_ids(order)
    async with ari_adapter(fake) as adapter, EventRecorder(adapter) as recorder:
        provider_id = await adapter.place_call(order)
        kinds = await talk_then_hang_up(fake, recorder, order, "visitor")
        await fake.wait_until(lambda: not fake.channels and not fake.bridges)

    assert provider_id == agent_id
    assert kinds == HAPPY
    assert outcome_of(recorder.of(order.attempt_id)) is CallOutcome.CONNECTED

    originates = fake.requests_to("POST", "/channels")
    assert [r.query["endpoint"] for r in originates] == [AGENT, VISITOR_ENDPOINT]
    agent_req, visitor_req = originates
    assert agent_req.query["channelId"] == agent_id
    assert agent_req.query["app"] == "abonent-test"
    assert agent_req.query["appArgs"] == f"{order.attempt_id},agent"
    assert agent_req.query["timeout"] == "25"
    assert visitor_req.query["channelId"] == visitor_id
    assert visitor_req.query["callerId"] == "+74951234567"
    assert visitor_req.query["originator"] == agent_id

    sequence = [(r.method, r.path) for r in fake.requests]
    play = ("POST", f"/channels/{agent_id}/play")
    assert sequence.index(play) < sequence.index(("POST", "/channels"), 1)  # whisper before the visitor
    assert fake.requests_to(*play)[0].query["media"] == WHISPER
    (create,) = fake.requests_to("POST", "/bridges")
    assert create.query == {"type": "mixing", "bridgeId": bridge_id, "name": bridge_id}
    (add,) = fake.requests_to("POST", f"/bridges/{bridge_id}/addChannel")
    assert add.query["channel"].split(",") == [agent_id, visitor_id]
    assert add.status == 204
    # The visitor hung up; the adapter hung up the agent and removed the bridge.
    assert fake.destroyed[visitor_id][1] == 16
    assert fake.requests_to("DELETE", f"/channels/{agent_id}")
    assert fake.requests_to("DELETE", f"/bridges/{bridge_id}")


async def test_customer_first_holds_the_visitor_while_the_agent_is_rung(fake: FakeAri) -> None:
    order = make_order("customer_first")
    agent_id, visitor_id, bridge_id = channel_ids(order)
    async with ari_adapter(fake) as adapter, EventRecorder(adapter) as recorder:
        await adapter.place_call(order)
        kinds = await talk_then_hang_up(fake, recorder, order, "agent")
    assert kinds == [
        K.VISITOR_RINGING,
        K.VISITOR_ANSWERED,
        K.AGENT_RINGING,
        K.AGENT_ANSWERED,
        K.BRIDGED,
        K.ENDED,
    ]
    sequence = [(r.method, r.path) for r in fake.requests]
    assert [r.query["endpoint"] for r in fake.requests_to("POST", "/channels")] == [VISITOR_ENDPOINT, AGENT]
    assert sequence.index(("POST", f"/channels/{visitor_id}/moh")) < sequence.index(("POST", "/channels"), 1)
    assert sequence.index(("POST", f"/channels/{agent_id}/play")) < sequence.index(("POST", "/bridges"))
    assert ("POST", f"/bridges/{bridge_id}/addChannel") in sequence
    assert fake.destroyed[agent_id][1] == 16
    assert fake.requests_to("DELETE", f"/channels/{visitor_id}")  # the agent left: the visitor is hung up


async def test_visitor_busy_hangs_up_the_agent(fake: FakeAri) -> None:
    fake.script(VISITOR_ENDPOINT, EndpointScript(outcome="busy"))
    order = make_order()
    agent_id, visitor_id, bridge_id = channel_ids(order)
    async with ari_adapter(fake) as adapter, EventRecorder(adapter) as recorder:
        await adapter.place_call(order)
        kinds = await recorder.until_terminal(order.attempt_id)
        await fake.wait_until(lambda: agent_id in fake.destroyed)
    assert kinds == [K.AGENT_RINGING, K.AGENT_ANSWERED, K.VISITOR_RINGING, K.VISITOR_BUSY]
    assert outcome_of(recorder.of(order.attempt_id)) is CallOutcome.BUSY
    assert "cause 17" in recorder.of(order.attempt_id)[-1].detail
    assert fake.destroyed[visitor_id][1] == 17
    assert fake.requests_to("DELETE", f"/channels/{agent_id}")
    assert not fake.requests_to("POST", "/bridges")
    assert bridge_id not in fake.bridges


async def test_visitor_no_answer_after_the_ring_timeout(fake: FakeAri) -> None:
    fake.script(VISITOR_ENDPOINT, EndpointScript(outcome="no_answer"))
    order = make_order(ring_timeout_s=2)
    async with ari_adapter(fake) as adapter, EventRecorder(adapter) as recorder:
        await adapter.place_call(order)
        kinds = await recorder.until_terminal(order.attempt_id)
    assert kinds[-2:] == [K.VISITOR_RINGING, K.VISITOR_NO_ANSWER]
    assert fake.requests_to("POST", "/channels")[1].query["timeout"] == "2"


async def test_agent_no_answer_never_dials_the_visitor(fake: FakeAri) -> None:
    fake.script(AGENT, EndpointScript(outcome="no_answer"))
    order = make_order(ring_timeout_s=1)
    async with ari_adapter(fake) as adapter, EventRecorder(adapter) as recorder:
        await adapter.place_call(order)
        kinds = await recorder.until_terminal(order.attempt_id)
    assert kinds == [K.AGENT_RINGING, K.AGENT_NO_ANSWER]
    assert fake.rung == [AGENT]


async def test_congestion_is_a_failure(fake: FakeAri) -> None:
    fake.script(VISITOR_ENDPOINT, EndpointScript(outcome="congestion"))
    order = make_order()
    async with ari_adapter(fake) as adapter, EventRecorder(adapter) as recorder:
        await adapter.place_call(order)
        kinds = await recorder.until_terminal(order.attempt_id)
    assert kinds[-1] is K.FAILED
    assert "cause 34" in recorder.of(order.attempt_id)[-1].detail


async def test_agent_hanging_up_after_the_bridge_ends_the_call_and_clears_the_visitor(fake: FakeAri) -> None:
    order = make_order()
    agent_id, visitor_id, _ = channel_ids(order)
    async with ari_adapter(fake) as adapter, EventRecorder(adapter) as recorder:
        await adapter.place_call(order)
        await recorder.wait_for(order.attempt_id, K.BRIDGED)
        await fake.hangup_channel(agent_id)
        kinds = await recorder.until_terminal(order.attempt_id)
        await fake.wait_until(lambda: visitor_id in fake.destroyed)
    assert kinds == HAPPY
    assert "agent hung up" in recorder.of(order.attempt_id)[-1].detail


async def test_hangup_while_ringing_fails_the_attempt_and_clears_the_channel(fake: FakeAri) -> None:
    fake.script(AGENT, EndpointScript(outcome="hold"))
    order = make_order()
    agent_id, _, _ = channel_ids(order)
    async with ari_adapter(fake) as adapter, EventRecorder(adapter) as recorder:
        await adapter.place_call(order)
        await recorder.wait_for(order.attempt_id, K.AGENT_RINGING)
        await adapter.hangup(order.attempt_id)
        await adapter.hangup(order.attempt_id)
        kinds = await recorder.until_terminal(order.attempt_id)
    assert kinds == [K.AGENT_RINGING, K.FAILED]
    assert agent_id in fake.destroyed
    assert len(fake.requests_to("DELETE", f"/channels/{agent_id}")) == 1


@pytest.mark.parametrize("status", [500, 503])
async def test_server_error_on_originate_is_retryable_and_a_retry_rings_once(
    fake: FakeAri, status: int
) -> None:
    fake.fail_next("POST", "/channels", status)
    order = make_order()
    async with ari_adapter(fake) as adapter, EventRecorder(adapter) as recorder:
        with pytest.raises(TelephonyError) as raised:
            await adapter.place_call(order)
        assert raised.value.retryable is True
        assert str(status) in raised.value.message
        assert fake.rung == []
        await adapter.place_call(order)
        kinds = await talk_then_hang_up(fake, recorder, order, "visitor")
    assert kinds[-1] is not K.FAILED
    assert fake.rung.count(AGENT) == 1


async def test_bad_originate_parameters_are_not_retryable(fake: FakeAri) -> None:
    order = CallOrder(
        attempt_id=uuid.uuid4().hex,
        visitor_phone=VISITOR,
        agent_endpoint="not-an-endpoint",
        caller_id="+74951234567",
        whisper_text="",
    )
    async with ari_adapter(fake) as adapter:
        with pytest.raises(TelephonyError) as raised:
            await adapter.place_call(order)
    assert raised.value.retryable is False
    assert "400" in raised.value.message


async def test_originate_timeout_is_retryable_and_the_retry_adopts_the_channel(fake: FakeAri) -> None:
    fake.script(AGENT, EndpointScript(outcome="hold"))
    fake.delay_next("POST", "/channels", 0.7)
    order = make_order()
    agent_id, _, _ = channel_ids(order)
    async with ari_adapter(fake, http_timeout_s=0.3) as adapter, EventRecorder(adapter) as recorder:
        with pytest.raises(TelephonyError) as raised:
            await adapter.place_call(order)
        assert raised.value.retryable is True
        assert "timed out" in raised.value.message
        # The slow Asterisk still created the channel: the agent's phone is ringing.
        await fake.wait_until(lambda: agent_id in fake.channels)

        assert await adapter.place_call(order) == agent_id
        assert fake.requests_to("POST", "/channels")[-1].status == 409
        await recorder.wait_for(order.attempt_id, K.AGENT_RINGING)
        await fake.answer_channel(agent_id)
        await recorder.wait_for(order.attempt_id, K.BRIDGED)
        await adapter.hangup(order.attempt_id)
        kinds = await recorder.until_terminal(order.attempt_id)
    assert kinds == HAPPY
    assert fake.rung.count(AGENT) == 1


async def test_duplicate_place_call_does_not_ring_twice(fake: FakeAri) -> None:
    fake.script(AGENT, EndpointScript(outcome="hold"))
    order = make_order()
    agent_id, _, _ = channel_ids(order)
    async with ari_adapter(fake) as adapter, EventRecorder(adapter) as recorder:
        first = await adapter.place_call(order)
        second = await adapter.place_call(order)
        assert first == second == agent_id
        assert len(fake.requests_to("POST", "/channels")) == 1
        await recorder.wait_for(order.attempt_id, K.AGENT_RINGING)

    # A restarted service (new adapter, no memory) retries the same attempt: Asterisk says 409.
    async with ari_adapter(fake) as restarted, EventRecorder(restarted) as recorder:
        assert await restarted.place_call(order) == agent_id
        await recorder.wait_for(order.attempt_id, K.AGENT_RINGING)
        await fake.answer_channel(agent_id)
        await recorder.wait_for(order.attempt_id, K.BRIDGED)
        await restarted.hangup(order.attempt_id)
        kinds = await recorder.until_terminal(order.attempt_id)
    assert kinds == HAPPY
    assert fake.rung == [AGENT, VISITOR_ENDPOINT]
    assert [r.status for r in fake.requests_to("POST", "/channels")] == [200, 409, 200]


async def test_websocket_drop_reconnects_and_events_keep_coming(fake: FakeAri) -> None:
    fake.script(AGENT, EndpointScript(outcome="hold"))
    order = make_order()
    agent_id, _, _ = channel_ids(order)
    async with ari_adapter(fake) as adapter, EventRecorder(adapter) as recorder:
        await adapter.place_call(order)
        await recorder.wait_for(order.attempt_id, K.AGENT_RINGING)
        await fake.drop_websockets()
        await fake.wait_until(lambda: fake.websocket_connects >= 2)
        assert await adapter.wait_connected(5.0)
        await fake.answer_channel(agent_id)
        kinds = await talk_then_hang_up(fake, recorder, order, "visitor")
    assert kinds == HAPPY


async def test_events_missed_while_disconnected_are_recovered_after_reconnect(fake: FakeAri) -> None:
    fake.script(AGENT, EndpointScript(outcome="hold"))
    order = make_order()
    agent_id, _, _ = channel_ids(order)
    async with ari_adapter(fake) as adapter, EventRecorder(adapter) as recorder:
        await adapter.place_call(order)
        await recorder.wait_for(order.attempt_id, K.AGENT_RINGING)
        fake.refuse_websockets = True
        await fake.drop_websockets()
        # The agent answers while nobody listens: the StasisStart is lost for good.
        await fake.answer_channel(agent_id)
        assert not adapter.connected
        fake.refuse_websockets = False
        kinds = await talk_then_hang_up(fake, recorder, order, "visitor")
    assert kinds == HAPPY
    assert fake.requests_to("GET", f"/channels/{agent_id}")  # re-read after the reconnect


async def test_place_call_refuses_while_the_event_stream_is_down(fake: FakeAri) -> None:
    fake.refuse_websockets = True
    async with ari_adapter(fake, connect_timeout_s=0.2) as adapter:
        assert not adapter.connected
        with pytest.raises(TelephonyError) as raised:
            await adapter.place_call(make_order())
    assert raised.value.retryable is True
    assert fake.rung == []


async def test_a_failed_whisper_does_not_stop_the_call(fake: FakeAri) -> None:
    fake.fail_next("POST", "/channels/", 500)  # the play request: /channels/{id}/play
    order = make_order()
    async with ari_adapter(fake) as adapter, EventRecorder(adapter) as recorder:
        await adapter.place_call(order)
        kinds = await talk_then_hang_up(fake, recorder, order, "visitor")
    assert kinds == HAPPY


async def test_a_lost_playback_finished_is_covered_by_the_whisper_deadline(fake: FakeAri) -> None:
    fake.playback_ms = 60_000  # PlaybackFinished never comes within the test
    order = make_order()
    async with ari_adapter(fake, whisper_max_s=0.05) as adapter, EventRecorder(adapter) as recorder:
        await adapter.place_call(order)
        kinds = await talk_then_hang_up(fake, recorder, order, "visitor")
    assert kinds == HAPPY


async def test_without_whisper_media_nothing_is_played(fake: FakeAri) -> None:
    order = make_order()
    agent_id, _, _ = channel_ids(order)
    async with ari_adapter(fake, whisper_media=None) as adapter, EventRecorder(adapter) as recorder:
        await adapter.place_call(order)
        kinds = await talk_then_hang_up(fake, recorder, order, "visitor")
    assert kinds == HAPPY
    assert not fake.requests_to("POST", f"/channels/{agent_id}/play")
