"""The simulated PBX and the telephony contract it shares with the real adapters."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest

# tests/conftest.py puts tests/ on sys.path (pytest's default "prepend" import mode), so `fakes` imports.
from fakes.recorder import EventRecorder

from services.callback.telephony import (
    AsteriskAriAdapter,
    TelephonySettings,
    build_adapter,
)
from services.callback.telephony.ari import AriConfig
from services.callback.telephony.base import (
    CallEvent,
    CallEventKind,
    CallOrder,
    CallOutcome,
    DialOrder,
    TelephonyAdapter,
    TelephonyError,
    outcome_of,
)
from services.callback.telephony.cloud import MangoConfig
from services.callback.telephony.sim import SimConfig, SimStateError, SimulatedPbx

K = CallEventKind
VISITOR = "+79161234567"
FAST = 0.001  # every simulated second lasts a millisecond


def make_order(order: DialOrder = "agent_first", phone: str = VISITOR) -> CallOrder:
    return CallOrder(
        attempt_id=uuid.uuid4().hex,
        visitor_phone=phone,
        agent_endpoint="agent-7",
        caller_id="+74951234567",
        whisper_text="callback from example.ru, page /pricing",
        order=order,
        ring_timeout_s=25,
    )


@pytest.fixture
async def pbx() -> AsyncIterator[SimulatedPbx]:
    sim = SimulatedPbx(SimConfig(ring_s=1.0, talk_s=1.0, seed=7), time_scale=FAST)
    await sim.start()
    yield sim
    await sim.aclose()


@pytest.fixture
async def manual_pbx() -> AsyncIterator[SimulatedPbx]:
    sim = SimulatedPbx(SimConfig(manual=True), time_scale=FAST)
    await sim.start()
    yield sim
    await sim.aclose()


async def test_agent_first_happy_path_emits_the_real_pbx_sequence(pbx: SimulatedPbx) -> None:
    pbx.script(VISITOR, CallOutcome.CONNECTED)
    order = make_order("agent_first")
    async with EventRecorder(pbx) as recorder:
        provider_id = await pbx.place_call(order)
        kinds = await recorder.until_terminal(order.attempt_id)
    assert kinds == [
        K.AGENT_RINGING,
        K.AGENT_ANSWERED,
        K.VISITOR_RINGING,
        K.VISITOR_ANSWERED,
        K.BRIDGED,
        K.ENDED,
    ]
    events = recorder.of(order.attempt_id)
    assert outcome_of(events) is CallOutcome.CONNECTED
    assert {e.provider_call_id for e in events} == {provider_id}
    assert all(e.at.tzinfo is not None and e.at.utcoffset() == dt.timedelta(0) for e in events)


async def test_customer_first_rings_the_visitor_before_the_agent(pbx: SimulatedPbx) -> None:
    pbx.script(VISITOR, CallOutcome.CONNECTED)
    order = make_order("customer_first")
    async with EventRecorder(pbx) as recorder:
        await pbx.place_call(order)
        kinds = await recorder.until_terminal(order.attempt_id)
    assert kinds == [
        K.VISITOR_RINGING,
        K.VISITOR_ANSWERED,
        K.AGENT_RINGING,
        K.AGENT_ANSWERED,
        K.BRIDGED,
        K.ENDED,
    ]


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (CallOutcome.BUSY, [K.AGENT_RINGING, K.AGENT_ANSWERED, K.VISITOR_RINGING, K.VISITOR_BUSY]),
        (
            CallOutcome.VISITOR_NO_ANSWER,
            [K.AGENT_RINGING, K.AGENT_ANSWERED, K.VISITOR_RINGING, K.VISITOR_NO_ANSWER],
        ),
        (CallOutcome.VOICEMAIL, [K.AGENT_RINGING, K.AGENT_ANSWERED, K.VISITOR_RINGING, K.VOICEMAIL]),
        (CallOutcome.AGENT_NO_ANSWER, [K.AGENT_RINGING, K.AGENT_NO_ANSWER]),
        (CallOutcome.FAILED, [K.AGENT_RINGING, K.FAILED]),
    ],
)
async def test_scripted_outcomes(
    pbx: SimulatedPbx, outcome: CallOutcome, expected: list[CallEventKind]
) -> None:
    pbx.script(VISITOR, outcome)
    order = make_order()
    async with EventRecorder(pbx) as recorder:
        await pbx.place_call(order)
        kinds = await recorder.until_terminal(order.attempt_id)
    assert kinds == expected
    assert outcome_of(recorder.of(order.attempt_id)) is outcome


async def test_script_applies_only_to_its_number_and_can_be_removed(pbx: SimulatedPbx) -> None:
    other = "+79990001122"
    pbx.script(VISITOR, CallOutcome.BUSY)
    pbx.script(other, CallOutcome.CONNECTED)
    first, second = make_order(phone=VISITOR), make_order(phone=other)
    async with EventRecorder(pbx) as recorder:
        await pbx.place_call(first)
        await pbx.place_call(second)
        await recorder.until_terminal(first.attempt_id)
        await recorder.until_terminal(second.attempt_id)
        pbx.script(VISITOR, None)
        pbx.config = SimConfig(ring_s=1.0, talk_s=1.0, busy_p=0.0, voicemail_p=0.0, visitor_answer_p=1.0)
        third = make_order(phone=VISITOR)
        await pbx.place_call(third)
        await recorder.until_terminal(third.attempt_id)
    assert outcome_of(recorder.of(first.attempt_id)) is CallOutcome.BUSY
    assert outcome_of(recorder.of(second.attempt_id)) is CallOutcome.CONNECTED
    assert outcome_of(recorder.of(third.attempt_id)) is CallOutcome.CONNECTED


async def test_probabilities_drive_unscripted_calls() -> None:
    sim = SimulatedPbx(SimConfig(busy_p=1.0, voicemail_p=0.0, ring_s=1.0), time_scale=FAST)
    order = make_order()
    async with EventRecorder(sim) as recorder:
        await sim.place_call(order)
        await recorder.until_terminal(order.attempt_id)
    await sim.aclose()
    assert outcome_of(recorder.of(order.attempt_id)) is CallOutcome.BUSY


async def test_the_same_seed_gives_the_same_calls() -> None:
    config = SimConfig(agent_answer_p=0.5, visitor_answer_p=0.5, busy_p=0.2, voicemail_p=0.2, seed=42)
    runs: list[list[CallOutcome | None]] = []
    for _ in range(2):
        sim = SimulatedPbx(config, time_scale=FAST)
        orders = [make_order() for _ in range(12)]
        async with EventRecorder(sim) as recorder:
            for order in orders:
                await sim.place_call(order)
            for order in orders:
                await recorder.until_terminal(order.attempt_id)
        await sim.aclose()
        runs.append([outcome_of(recorder.of(o.attempt_id)) for o in orders])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 1  # the probabilities really vary the outcome


async def test_manual_mode_waits_for_a_person(manual_pbx: SimulatedPbx) -> None:
    order = make_order()
    async with EventRecorder(manual_pbx) as recorder:
        await manual_pbx.place_call(order)
        await recorder.wait_for(order.attempt_id, K.AGENT_RINGING)
        # Far beyond the ring timeout at this time scale: still ringing, because nobody acted.
        await asyncio.sleep(0.1)
        assert recorder.kinds(order.attempt_id) == [K.AGENT_RINGING]

        with pytest.raises(SimStateError, match="visitor leg"):
            await manual_pbx.answer(order.attempt_id, "visitor")
        await manual_pbx.answer(order.attempt_id, "agent")
        await recorder.wait_for(order.attempt_id, K.VISITOR_RINGING)
        await manual_pbx.answer(order.attempt_id, "visitor")
        await recorder.wait_for(order.attempt_id, K.BRIDGED)
        await asyncio.sleep(0.05)
        assert recorder.kinds(order.attempt_id)[-1] is K.BRIDGED  # talks until someone hangs up

        await manual_pbx.hangup(order.attempt_id)
        kinds = await recorder.until_terminal(order.attempt_id)
    assert kinds == [
        K.AGENT_RINGING,
        K.AGENT_ANSWERED,
        K.VISITOR_RINGING,
        K.VISITOR_ANSWERED,
        K.BRIDGED,
        K.ENDED,
    ]


@pytest.mark.parametrize(
    ("leg", "reason", "terminal"),
    [
        ("visitor", "busy", K.VISITOR_BUSY),
        ("visitor", "no_answer", K.VISITOR_NO_ANSWER),
        ("visitor", "voicemail", K.VOICEMAIL),
        ("agent", "busy", K.AGENT_NO_ANSWER),
    ],
)
async def test_manual_reject(
    manual_pbx: SimulatedPbx, leg: str, reason: str, terminal: CallEventKind
) -> None:
    order = make_order()
    async with EventRecorder(manual_pbx) as recorder:
        await manual_pbx.place_call(order)
        await recorder.wait_for(order.attempt_id, K.AGENT_RINGING)
        if leg == "visitor":
            await manual_pbx.answer(order.attempt_id, "agent")
            await recorder.wait_for(order.attempt_id, K.VISITOR_RINGING)
            await manual_pbx.reject(order.attempt_id, "visitor", reason)  # type: ignore[arg-type]
        else:
            await manual_pbx.reject(order.attempt_id, "agent", reason)  # type: ignore[arg-type]
        kinds = await recorder.until_terminal(order.attempt_id)
    assert kinds[-1] is terminal
    with pytest.raises(SimStateError, match="not in progress"):
        await manual_pbx.answer(order.attempt_id, "agent")


async def test_manual_hangup_while_ringing_fails_the_attempt_once(manual_pbx: SimulatedPbx) -> None:
    order = make_order()
    async with EventRecorder(manual_pbx) as recorder:
        await manual_pbx.place_call(order)
        await recorder.wait_for(order.attempt_id, K.AGENT_RINGING)
        await manual_pbx.hangup(order.attempt_id)
        await manual_pbx.hangup(order.attempt_id)
        kinds = await recorder.until_terminal(order.attempt_id)
        await asyncio.sleep(0.02)
    assert kinds == [K.AGENT_RINGING, K.FAILED]
    assert recorder.kinds(order.attempt_id) == kinds


async def test_scripted_call_plays_out_even_in_manual_mode(manual_pbx: SimulatedPbx) -> None:
    manual_pbx.script(VISITOR, CallOutcome.CONNECTED)
    order = make_order()
    async with EventRecorder(manual_pbx) as recorder:
        await manual_pbx.place_call(order)
        kinds = await recorder.until_terminal(order.attempt_id)
    assert kinds[-2:] == [K.BRIDGED, K.ENDED]


async def test_place_call_is_idempotent_per_attempt(pbx: SimulatedPbx) -> None:
    pbx.script(VISITOR, CallOutcome.CONNECTED)
    order = make_order()
    async with EventRecorder(pbx) as recorder:
        first = await pbx.place_call(order)
        again = await pbx.place_call(order)
        await recorder.until_terminal(order.attempt_id)
        after_end = await pbx.place_call(order)
        await asyncio.sleep(0.02)
    assert first == again == after_end
    kinds = recorder.kinds(order.attempt_id)
    assert kinds.count(K.AGENT_RINGING) == 1
    assert sum(e.is_terminal for e in recorder.of(order.attempt_id)) == 1


async def test_exactly_one_terminal_event_even_when_hung_up_after_the_end(pbx: SimulatedPbx) -> None:
    pbx.script(VISITOR, CallOutcome.CONNECTED)
    orders = [make_order() for _ in range(5)]
    async with EventRecorder(pbx) as recorder:
        for order in orders:
            await pbx.place_call(order)
        for order in orders:
            await recorder.until_terminal(order.attempt_id)
            await pbx.hangup(order.attempt_id)
        await pbx.hangup("never-placed")
        await asyncio.sleep(0.02)
    for order in orders:
        assert [e.is_terminal for e in recorder.of(order.attempt_id)].count(True) == 1


async def test_hangup_during_the_conversation_ends_it() -> None:
    sim = SimulatedPbx(SimConfig(ring_s=1.0, talk_s=1e6), time_scale=FAST)
    sim.script(VISITOR, CallOutcome.CONNECTED)
    order = make_order()
    async with EventRecorder(sim) as recorder:
        await sim.place_call(order)
        await recorder.wait_for(order.attempt_id, K.BRIDGED)
        await sim.hangup(order.attempt_id)
        kinds = await recorder.until_terminal(order.attempt_id)
    await sim.aclose()
    assert kinds[-2:] == [K.BRIDGED, K.ENDED]
    assert outcome_of(recorder.of(order.attempt_id)) is CallOutcome.CONNECTED


async def test_closed_simulator_refuses_calls_and_ends_the_stream() -> None:
    sim = SimulatedPbx(time_scale=FAST)
    await sim.aclose()
    with pytest.raises(TelephonyError) as raised:
        await sim.place_call(make_order())
    assert raised.value.retryable is False
    assert [e async for e in sim.events()] == []


# --- the contract itself ------------------------------------------------------------------------------


def _event(kind: CallEventKind) -> CallEvent:
    return CallEvent(attempt_id="a1", kind=kind, at=dt.datetime.now(dt.UTC))


def test_outcome_of_is_pure_and_needs_a_terminal_event() -> None:
    assert outcome_of([]) is None
    assert outcome_of([_event(K.AGENT_RINGING), _event(K.AGENT_ANSWERED)]) is None
    assert outcome_of([_event(K.BRIDGED), _event(K.ENDED)]) is CallOutcome.CONNECTED
    assert outcome_of([_event(K.AGENT_ANSWERED), _event(K.ENDED)]) is CallOutcome.FAILED
    assert outcome_of([_event(K.VISITOR_BUSY)]) is CallOutcome.BUSY
    assert outcome_of([_event(K.VOICEMAIL)]) is CallOutcome.VOICEMAIL
    assert outcome_of([_event(K.AGENT_NO_ANSWER)]) is CallOutcome.AGENT_NO_ANSWER
    assert outcome_of([_event(K.VISITOR_NO_ANSWER)]) is CallOutcome.VISITOR_NO_ANSWER
    assert outcome_of([_event(K.FAILED), _event(K.BRIDGED), _event(K.ENDED)]) is CallOutcome.FAILED


def test_contract_values_and_validation() -> None:
    assert K.AGENT_RINGING.value == "agent_ringing"
    assert CallOutcome.BUSY.value == "busy"
    with pytest.raises(ValueError, match="UTC"):
        CallEvent(attempt_id="a", kind=K.ENDED, at=dt.datetime(2024, 1, 1))
    with pytest.raises(ValueError, match=r"E\.164"):
        make_order(phone="89161234567")
    order = make_order()
    assert msgspec.json.decode(msgspec.json.encode(order), type=CallOrder) == order
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({**msgspec.to_builtins(order), "order": "sideways"}, CallOrder)
    with pytest.raises(ValueError, match="busy_p"):
        SimConfig(busy_p=0.7, voicemail_p=0.5)


def test_build_adapter_picks_the_named_adapter() -> None:
    sim = build_adapter("sim", TelephonySettings(sim=SimConfig(manual=True), sim_time_scale=0.5))
    assert isinstance(sim, SimulatedPbx)
    assert isinstance(sim, TelephonyAdapter)
    assert sim.config.manual
    assert sim.time_scale == 0.5
    with pytest.raises(ValueError, match="asterisk"):
        build_adapter("asterisk")
    with pytest.raises(ValueError, match="mango"):
        build_adapter("mango")
    with pytest.raises(ValueError, match="unknown"):
        build_adapter("freeswitch")  # type: ignore[arg-type]


def test_adapter_configs_are_validated() -> None:
    with pytest.raises(ValueError, match="digits"):
        AriConfig(
            base_url="http://pbx:8088", username="u", password="p", visitor_endpoint_template="SIP/{phone}"
        )
    with pytest.raises(ValueError, match="base_url"):
        AriConfig(base_url="pbx:8088", username="u", password="p")
    with pytest.raises(ValueError, match="api_salt"):
        MangoConfig(api_key="k", api_salt="")


async def test_build_adapter_asterisk() -> None:
    config = AriConfig(base_url="http://127.0.0.1:1", username="u", password="p")
    adapter = build_adapter("asterisk", TelephonySettings(asterisk=config))
    assert isinstance(adapter, AsteriskAriAdapter)
    assert adapter.name == "asterisk"
    await adapter.aclose()
