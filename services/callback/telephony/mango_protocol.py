"""MANGO OFFICE VPBX protocol: signatures, result codes, and call notices translated into our call events
(pure: no I/O). The protocol itself is described in cloud.py, the adapter that speaks it."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Protocol

import msgspec

from services.callback.telephony.base import (
    ANSWERED_KIND,
    RINGING_KIND,
    CallEvent,
    CallEventKind,
    Leg,
)

__all__ = [
    "EMPTY_STATE",
    "RESULT_OK",
    "RESULT_TEXT",
    "CallNotice",
    "CommandResult",
    "MangoCallState",
    "MangoConfig",
    "MangoNotice",
    "NoticeCarrier",
    "decode_state",
    "describe_result",
    "mango_sign",
    "result_retryable",
    "translate_notice",
]

RESULT_OK = 1000

# Disconnect reasons of a leg that never connected.
_BUSY_REASONS = frozenset({1120, 1121, 1122, 1123})  # ended by callee, busy, rejected, do-not-disturb
_NO_ANSWER_REASONS = frozenset({1100, 1111, 1131})  # ended normally, no answer in time, unreachable
_AGENT_UNAVAILABLE_REASONS = _BUSY_REASONS | _NO_ANSWER_REASONS | {1110, 1124, 1190, 1191, 1192}
# Result codes worth retrying: concurrent-call limit, callee unreachable now, hardware / service trouble.
_RETRYABLE_RESULTS = frozenset({2220, 4200, 4401, 4402})

RESULT_TEXT = {
    2240: "insufficient funds",
    3102: "sign does not match",
    3103: "required parameter missing",
    3104: "parameter in a wrong format",
    3105: "wrong vpbx_api_key",
    3200: "wrong subscriber number",
    4001: "command not supported",
    4200: "subscriber cannot be reached now",
    5001: "overload",
    5002: "restart",
    5003: "technical problems",
}


def mango_sign(api_key: str, json_text: str, api_salt: str) -> str:
    """sign = sha256(vpbx_api_key + json + vpbx_api_salt), lowercase hex (API ВАТС §2.4.3)."""
    return hashlib.sha256((api_key + json_text + api_salt).encode()).hexdigest()


def result_retryable(code: int) -> bool:
    return code >= 5000 or code in _RETRYABLE_RESULTS


class MangoConfig(msgspec.Struct, frozen=True, kw_only=True):
    api_key: str  # "Уникальный код вашей АТС"
    api_salt: str  # "Ключ для создания подписи"; never sent
    base_url: str = "https://app.mango-office.ru/vpbx"
    # The PBX line the visitor sees when CallOrder.caller_id is empty (digits, e.g. "74951234567").
    default_line_number: str | None = None
    request_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.api_key or not self.api_salt:
            raise ValueError("MangoConfig needs api_key and api_salt")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("MangoConfig.base_url must be an http:// or https:// URL")


class _Party(msgspec.Struct):
    extension: str | int | None = None
    number: str | None = None


class CallNotice(msgspec.Struct):
    """The fields of POST /events/call this adapter reads."""

    entry_id: str = ""
    call_id: str = ""
    seq: int = 0
    call_state: str = ""
    from_: _Party = msgspec.field(default_factory=_Party, name="from")
    to: _Party = msgspec.field(default_factory=_Party)
    disconnect_reason: int | None = None
    command_id: str | None = None


class CommandResult(msgspec.Struct):
    command_id: str | None = None
    result: int = 0


class _LegFacts(msgspec.Struct, kw_only=True):
    """What the notices of one leg have said, whatever order they came in."""

    call_id: str
    seqs: list[int] = msgspec.field(default_factory=list)
    appeared: bool = False
    connected_at: dt.datetime | None = None
    disconnected: bool = False
    reason: int | None = None

    def complete(self) -> bool:
        """Every notice of the leg up to its last seq has arrived (none still on its way)."""
        return bool(self.seqs) and sorted(self.seqs) == list(range(1, max(self.seqs) + 1))


class MangoCallState(msgspec.Struct, kw_only=True):
    """The bookkeeping of one callback call, stored as JSON in dial_attempts.provider_state."""

    accepted: bool = False  # Mango answered the command with 1000 (a lone adapter records it)
    entry_id: str | None = None
    legs: dict[str, _LegFacts] = msgspec.field(default_factory=dict)
    emitted: list[str] = msgspec.field(default_factory=list)  # CallEventKind values, each emitted once
    finished: bool = False


class MangoNotice(msgspec.Struct, frozen=True, kw_only=True):
    """A verified webhook as carried to the replica that translates it."""

    endpoint: str  # "events/call" | "result/callback"
    json: str  # the signed text exactly as Mango sent it
    at: dt.datetime  # when it reached us; the time of the events it produces


class NoticeCarrier(Protocol):
    """How a service carries notices durably and reads the stored state of a call (any replica)."""

    async def state(self, attempt_id: str) -> bytes | None: ...

    async def publish(self, attempt_id: str, notice: str, key: str) -> None:
        """Store the notice durably, or raise (the webhook then answers 503 and Mango resends it)."""
        ...


_state_decoder = msgspec.json.Decoder(MangoCallState)
EMPTY_STATE = msgspec.json.encode(MangoCallState())
_notice_decoder = msgspec.json.Decoder(MangoNotice)


def decode_state(state: bytes | None) -> MangoCallState:
    return MangoCallState() if state is None else _state_decoder.decode(state)


def translate_notice(attempt_id: str, state: bytes | None, notice: str) -> tuple[bytes, list[CallEvent]]:
    """Pure: the call's new state and the call events one notice produces.

    The legs' facts are accumulated and the events derived from all of them, so notices applied out of
    order (Mango may send them so; JetStream redelivers a failed one later) give the same events, once each.
    """
    call = decode_state(state)
    received = _notice_decoder.decode(notice)
    if received.endpoint == "result/callback":
        result = msgspec.json.decode(received.json, type=CommandResult, strict=False)
        events: list[CallEvent] = []
        if result.result != RESULT_OK:
            detail = f"callback command failed: {describe_result(result.result)}"
            events = _finish(attempt_id, call, CallEventKind.FAILED, received.at, detail)
        return msgspec.json.encode(call), events
    call_notice = msgspec.json.decode(received.json, type=CallNotice, strict=False)
    if call_notice.entry_id:
        call.entry_id = call_notice.entry_id
    leg = _leg_of(call, call_notice)
    if leg is not None:
        facts = call.legs.setdefault(leg, _LegFacts(call_id=call_notice.call_id))
        facts.call_id = call_notice.call_id or facts.call_id
        if call_notice.seq not in facts.seqs:
            facts.seqs.append(call_notice.seq)
            if call_notice.call_state == "Appeared":
                facts.appeared = True
            elif call_notice.call_state == "Connected":
                facts.connected_at = facts.connected_at or received.at
            elif call_notice.call_state == "Disconnected":
                facts.disconnected = True
                facts.reason = call_notice.disconnect_reason
    events = _derive(attempt_id, call, received.at)  # before encoding: it records what it emitted
    return msgspec.json.encode(call), events


def _leg_of(call: MangoCallState, notice: CallNotice) -> Leg | None:
    # commands/callback rings the employee's extension, then the visitor's number.
    if notice.to.extension is not None and str(notice.to.extension):
        return "agent"
    if notice.to.number:
        return "visitor"
    for leg in ("agent", "visitor"):
        facts = call.legs.get(leg)
        if facts is not None and facts.call_id == notice.call_id:
            return leg
    return None


def _derive(attempt_id: str, call: MangoCallState, at: dt.datetime) -> list[CallEvent]:
    if call.finished:
        return []
    agent, visitor = call.legs.get("agent"), call.legs.get("visitor")
    bridged_at = visitor.connected_at if visitor is not None else None
    events: list[CallEvent] = []

    def emit(kind: CallEventKind, detail: str = "") -> None:
        if kind.value not in call.emitted:
            call.emitted.append(kind.value)
            events.append(_event(attempt_id, call, kind, at, detail))

    if agent is not None or visitor is not None:
        emit(RINGING_KIND["agent"])
    # The PBX dials the visitor only after the employee picked up.
    if (agent is not None and agent.connected_at is not None) or visitor is not None:
        emit(ANSWERED_KIND["agent"])
    if visitor is not None:
        emit(RINGING_KIND["visitor"])
    if bridged_at is not None:
        # "Connected" on the visitor leg is the conversation of two parties.
        emit(ANSWERED_KIND["visitor"])
        emit(CallEventKind.BRIDGED)
    agent_gone = agent is not None and agent.disconnected
    if bridged_at is not None:
        if visitor is not None and visitor.disconnected:
            return events + _finish(attempt_id, call, CallEventKind.ENDED, at, _reason(visitor.reason))
        if agent is not None and agent.disconnected:
            return events + _finish(attempt_id, call, CallEventKind.ENDED, at, _reason(agent.reason))
        return events
    if visitor is not None and visitor.disconnected:
        # Unless all of the leg's notices are in (or the whole call is over), a "Connected" may still be on
        # its way, and the disconnect would be the end of a conversation, not a busy line.
        if not (visitor.complete() or agent_gone):
            return events
        detail = _reason(visitor.reason)
        if visitor.reason in _BUSY_REASONS:
            kind = CallEventKind.VISITOR_BUSY
        elif visitor.reason in _NO_ANSWER_REASONS:
            kind = CallEventKind.VISITOR_NO_ANSWER
        else:
            kind = CallEventKind.FAILED
        return events + _finish(attempt_id, call, kind, at, detail)
    if agent is not None and agent.disconnected and visitor is None:
        detail = _reason(agent.reason)
        if agent.connected_at is not None:
            detail = f"agent hung up before the visitor answered ({detail})"
            return events + _finish(attempt_id, call, CallEventKind.FAILED, at, detail)
        unavailable = agent.reason in _AGENT_UNAVAILABLE_REASONS
        kind = CallEventKind.AGENT_NO_ANSWER if unavailable else CallEventKind.FAILED
        return events + _finish(attempt_id, call, kind, at, detail)
    # Otherwise the visitor leg is still ringing and its own Disconnected will tell how it ended.
    return events


def _finish(
    attempt_id: str, call: MangoCallState, kind: CallEventKind, at: dt.datetime, detail: str
) -> list[CallEvent]:
    if call.finished:
        return []
    call.finished = True
    call.emitted.append(kind.value)
    return [_event(attempt_id, call, kind, at, detail)]


def _event(
    attempt_id: str, call: MangoCallState, kind: CallEventKind, at: dt.datetime, detail: str
) -> CallEvent:
    visitor = call.legs.get("visitor")
    bridged_at = visitor.connected_at if visitor is not None else None
    return CallEvent(
        attempt_id=attempt_id,
        kind=kind,
        at=at,
        provider_call_id=call.entry_id,
        detail=detail,
        bridged_at=bridged_at if kind is CallEventKind.ENDED else None,
    )


def _reason(reason: int | None) -> str:
    return describe_result(reason) if reason is not None else "disconnected"


# A lone adapter remembers this many calls' states (the service keeps them in PostgreSQL instead).


def describe_result(code: int | None) -> str:
    """A result or disconnect code with its meaning, for logs and failure details."""
    text = RESULT_TEXT.get(code or 0)
    return f"{code} {text}" if text else str(code)
