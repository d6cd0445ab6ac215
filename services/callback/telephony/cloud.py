"""MANGO OFFICE Virtual PBX (ВАТС) adapter: the documented "callback on behalf of an employee" command.

Protocol (MANGO OFFICE "API Виртуальной АТС", MangoOffice_VPBX_API v1.9):
- §2.4.3: every request, ours and theirs, is an application/x-www-form-urlencoded POST with
  `vpbx_api_key`, `json` and `sign`, where sign = sha256(vpbx_api_key + json + vpbx_api_salt) in hex;
  §2.4.4: `json` is compact JSON (no added spaces or line breaks), and the exact string sent is signed.
- §3.2.1: POST {base}/commands/callback with json {"command_id", "from": {"extension"}, "to_number",
  ["line_number"]}: the PBX rings the employee, then dials to_number and connects them. The response body
  is {"result": <code>}; 1000 means accepted. The outcome of starting the command also arrives as
  POST <our base>/result/callback {"command_id", "result"}.
- §3.1.2: call events arrive as POST <our base>/events/call with {"entry_id", "call_id", "timestamp",
  "seq", "call_state": Appeared | Connected | OnHold | Disconnected, "location", "from", "to",
  "disconnect_reason", "command_id"}; one call_id per leg, one entry_id for the whole call. Events may
  come out of order, so an event whose seq is not newer for its call_id is ignored.
- §3.2.3: POST {base}/commands/call/hangup {"command_id", "call_id"} ends a leg.
- Result / disconnect codes: 1000 done; 11xx normal end (1110 by caller, 1111 no answer in time,
  1120 by callee, 1121 busy, 1122 rejected, 1123 do-not-disturb, 113x bad or unreachable number);
  2xxx billing limits; 3xxx malformed request (3102 wrong sign); 4xxx cannot do it now (4200 callee
  unreachable); 5xxx server side (5001 overload, 5002 restart, 5003 technical problems).

What Mango cannot do, and this adapter therefore does not offer:
- customer_first: commands/callback always rings the employee first -> TelephonyError(retryable=False).
- The whisper and the ring timeout are PBX settings in the Mango account, not command parameters.
- VOICEMAIL: an answering machine is just "Connected" to Mango; it is reported as a normal answer.
- command_id is not documented as idempotent; an attempt is sent once because the dispatcher leases it
  while placing and never re-sends an order that may have gone out (dispatcher.py), and a retry finds the
  call's stored state once its events arrived.
The provider call id returned by place_call() is the command_id (= attempt_id); events carry Mango's
entry_id as provider_call_id.

Several replicas: a webhook may reach any replica. With carry_notices() (the service) the raw notice is
published durably and translated by translate_notice() against the call's state stored with the attempt
(dial_attempts.provider_state), in the transaction that applies its events; hang-up and call_exists() read
that state, so they work from any replica. Without it (a lone adapter) the same translation runs in place
against states kept in memory.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import hashlib
import hmac
import logging
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import httpx
import msgspec

from services.callback.telephony.base import (
    ANSWERED_KIND,
    KEEP_CALLS,
    RINGING_KIND,
    CallEvent,
    CallEventKind,
    CallOrder,
    EventStream,
    Leg,
    TelephonyError,
    utc_now,
)

__all__ = [
    "MangoCallState",
    "MangoConfig",
    "MangoNotice",
    "MangoOfficeAdapter",
    "NoticeCarrier",
    "mango_sign",
    "translate_notice",
]

log = logging.getLogger(__name__)

RESULT_OK = 1000

# Disconnect reasons of a leg that never connected.
_BUSY_REASONS = frozenset({1120, 1121, 1122, 1123})  # ended by callee, busy, rejected, do-not-disturb
_NO_ANSWER_REASONS = frozenset({1100, 1111, 1131})  # ended normally, no answer in time, unreachable
_AGENT_UNAVAILABLE_REASONS = _BUSY_REASONS | _NO_ANSWER_REASONS | {1110, 1124, 1190, 1191, 1192}
# Result codes worth retrying: concurrent-call limit, callee unreachable now, hardware / service trouble.
_RETRYABLE_RESULTS = frozenset({2220, 4200, 4401, 4402})

_RESULT_TEXT = {
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


def _result_retryable(code: int) -> bool:
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


class _CallNotice(msgspec.Struct):
    """The fields of POST /events/call this adapter reads."""

    entry_id: str = ""
    call_id: str = ""
    seq: int = 0
    call_state: str = ""
    from_: _Party = msgspec.field(default_factory=_Party, name="from")
    to: _Party = msgspec.field(default_factory=_Party)
    disconnect_reason: int | None = None
    command_id: str | None = None


class _CommandResult(msgspec.Struct):
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
_EMPTY_STATE = msgspec.json.encode(MangoCallState())
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
        result = msgspec.json.decode(received.json, type=_CommandResult, strict=False)
        events: list[CallEvent] = []
        if result.result != RESULT_OK:
            detail = f"callback command failed: {_describe(result.result)}"
            events = _finish(attempt_id, call, CallEventKind.FAILED, received.at, detail)
        return msgspec.json.encode(call), events
    call_notice = msgspec.json.decode(received.json, type=_CallNotice, strict=False)
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


def _leg_of(call: MangoCallState, notice: _CallNotice) -> Leg | None:
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
    return _describe(reason) if reason is not None else "disconnected"


# A lone adapter remembers this many calls' states (the service keeps them in PostgreSQL instead).
_LOCAL_STATES = KEEP_CALLS


class MangoOfficeAdapter:
    """TelephonyAdapter over MANGO OFFICE VPBX. Route POST webhooks from Mango to handle_webhook()."""

    def __init__(self, config: MangoConfig, *, name: str = "mango") -> None:
        self.name = name
        self.config = config
        self._http = httpx.AsyncClient(base_url=config.base_url.rstrip("/"), timeout=config.request_timeout_s)
        self._stream = EventStream()
        self._carrier: NoticeCarrier | None = None
        # Without a carrier: the states of this adapter's calls by attempt, oldest first.
        self._states: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._local = asyncio.Lock()
        self._hangups = 0
        self._closed = False

    def carry_notices(self, carrier: NoticeCarrier) -> None:
        """Publish notices through `carrier` and read call states from it (the service, any replica)."""
        self._carrier = carrier

    async def start(self) -> None:
        # Events come in as webhooks through the service's HTTP app; nothing to connect here.
        return None

    async def aclose(self) -> None:
        self._closed = True
        await self._http.aclose()
        self._stream.close()

    def translate_notice(
        self, attempt_id: str, state: bytes | None, notice: str
    ) -> tuple[bytes, list[CallEvent]]:
        return translate_notice(attempt_id, state, notice)

    # --- TelephonyAdapter -----------------------------------------------------------------------------

    def can_dial(self) -> bool:
        return True

    async def place_call(self, order: CallOrder) -> str:
        if self._closed:
            raise TelephonyError("Mango adapter is closed", retryable=False)
        if order.order != "agent_first":
            raise TelephonyError(
                "Mango commands/callback always rings the employee first; customer_first is not available",
                retryable=False,
            )
        known = await self._state(order.attempt_id)
        if known is not None and known != _EMPTY_STATE:
            # Its notices have arrived: a command that timed out was carried out after all.
            return order.attempt_id
        if self._carrier is None and known is None:
            # Registered before the request: Mango may post events before its response reaches us.
            self._remember(order.attempt_id, _EMPTY_STATE)
        payload: dict[str, object] = {
            "command_id": order.attempt_id,
            "from": {"extension": order.agent_endpoint},
            "to_number": _digits(order.visitor_phone),
        }
        line = _digits(order.caller_id) or self.config.default_line_number
        if line:
            payload["line_number"] = line
        try:
            result = await self._command("/commands/callback", payload)
            if result != RESULT_OK:
                raise _result_error("commands/callback", result)
        except _CommandTimeoutError:
            # The command may have started: its notices will tell (a retry then does not send it again).
            raise
        except TelephonyError:
            # A definitive answer: nothing rings, and a retry must send the command again.
            if self._states.get(order.attempt_id) == _EMPTY_STATE:
                del self._states[order.attempt_id]
            raise
        if self._carrier is None:
            # A lone adapter's guard against sending twice (the service's is the dispatcher's lease).
            async with self._local:
                call = decode_state(self._states.get(order.attempt_id))
                call.accepted = True
                self._remember(order.attempt_id, msgspec.json.encode(call))
        return order.attempt_id

    async def hangup(self, attempt_id: str) -> None:
        state = await self._state(attempt_id)
        if state is None:
            return
        call = decode_state(state)
        if call.finished:
            return
        bridged = "visitor" in call.legs and call.legs["visitor"].connected_at is not None
        # Ended here at once; the legs' Disconnected notices that follow find the attempt over.
        self._stream.emit(
            attempt_id,
            CallEventKind.ENDED if bridged else CallEventKind.FAILED,
            provider_call_id=call.entry_id,
            detail="hangup requested",
        )
        for leg in ("visitor", "agent"):
            facts = call.legs.get(leg)
            if facts is not None and facts.call_id and not facts.disconnected:
                await self._hangup_leg(attempt_id, facts.call_id)

    async def call_exists(self, attempt_id: str) -> bool | None:
        # Known from the call's state, wherever it was placed; a call with no notice yet cannot be told.
        state = await self._state(attempt_id)
        if state is None or state == _EMPTY_STATE:
            return None
        return not decode_state(state).finished

    async def events(self) -> AsyncIterator[CallEvent]:
        async for event in self._stream:
            yield event

    # --- webhooks -------------------------------------------------------------------------------------

    def verify(self, form: Mapping[str, str]) -> bool:
        """Whether a webhook form carries our vpbx_api_key and a correct sign of its json."""
        key, sign, text = form.get("vpbx_api_key"), form.get("sign"), form.get("json")
        if key is None or sign is None or text is None:
            return False
        if not hmac.compare_digest(key.encode(), self.config.api_key.encode()):
            return False
        expected = mango_sign(self.config.api_key, text, self.config.api_salt)
        return hmac.compare_digest(expected.encode(), sign.strip().lower().encode())

    async def handle_webhook(self, path: str, form: Mapping[str, str]) -> bool:
        """Take one Mango notification (form fields as received). False: bad signature, answer 403.

        `path` is the request path; it is matched by its ending (/events/call, /result/callback), so the
        service may mount the webhooks under any prefix it registers in the Mango account. With a carrier,
        raises when the notice could not be stored (answer 503: Mango sends it again).
        """
        if not self.verify(form):
            log.warning("Mango webhook %s with a bad signature rejected", path)
            return False
        endpoint = path.rstrip("/")
        text = form["json"]
        try:
            if endpoint.endswith("/events/call"):
                call_notice = msgspec.json.decode(text, type=_CallNotice, strict=False)
                command_id, kind = call_notice.command_id, "events/call"
                key = f"{call_notice.call_id}:{call_notice.seq}"
            elif endpoint.endswith("/result/callback"):
                result = msgspec.json.decode(text, type=_CommandResult, strict=False)
                command_id, kind, key = result.command_id, "result/callback", "result"
            else:
                return True  # a notification this adapter does not use
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Authentic but unreadable: acknowledge it, or Mango would keep resending the same thing.
            log.warning("Mango webhook %s not understood: %s", path, exc)
            return True
        attempt_id = _attempt_of(command_id)
        if attempt_id is None:
            return True  # not one of our callbacks (or a call event without its command)
        notice = msgspec.json.encode(MangoNotice(endpoint=kind, json=text, at=utc_now())).decode()
        if self._carrier is not None:
            await self._carrier.publish(attempt_id, notice, key)
            return True
        async with self._local:
            if attempt_id not in self._states:
                return True  # not placed by this adapter
            state, events = translate_notice(attempt_id, self._states[attempt_id], notice)
            self._remember(attempt_id, state)
        for event in events:
            self._stream.emit(
                attempt_id, event.kind, provider_call_id=event.provider_call_id, detail=event.detail
            )
        return True

    async def _state(self, attempt_id: str) -> bytes | None:
        if self._carrier is not None:
            return await self._carrier.state(attempt_id)
        return self._states.get(attempt_id)

    def _remember(self, attempt_id: str, state: bytes) -> None:
        self._states[attempt_id] = state
        self._states.move_to_end(attempt_id)
        while len(self._states) > _LOCAL_STATES:
            self._states.popitem(last=False)

    # --- commands -------------------------------------------------------------------------------------

    async def _hangup_leg(self, attempt_id: str, call_id: str) -> None:
        self._hangups += 1
        payload = {"command_id": f"{attempt_id}-hangup-{self._hangups}", "call_id": call_id}
        try:
            result = await self._command("/commands/call/hangup", payload)
        except TelephonyError as exc:
            log.warning("Mango hangup of %s failed: %s", attempt_id, exc)
            return
        if result != RESULT_OK:
            log.warning("Mango hangup of %s answered %s", attempt_id, _describe(result))

    async def _command(self, path: str, payload: Mapping[str, object]) -> int:
        """POST a signed command; return Mango's result code. HTTP-level failures raise TelephonyError."""
        text = msgspec.json.encode(payload).decode()
        form = {
            "vpbx_api_key": self.config.api_key,
            "sign": mango_sign(self.config.api_key, text, self.config.api_salt),
            "json": text,
        }
        try:
            response = await self._http.post(path, data=form)
        except httpx.TimeoutException as exc:
            raise _CommandTimeoutError(f"Mango {path} timed out", retryable=True) from exc
        except httpx.TransportError as exc:
            raise TelephonyError(f"Mango {path} unreachable: {exc}", retryable=True) from exc
        if response.status_code != 200:
            # 429 "Rate limit exceeded" and 5xx pass; 401 follows repeated invalid requests and does not.
            retryable = response.status_code == 429 or response.status_code >= 500
            raise TelephonyError(f"Mango {path} -> HTTP {response.status_code}", retryable=retryable)
        try:
            return msgspec.json.decode(response.content, type=_CommandResult, strict=False).result
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise TelephonyError(f"Mango {path} answered something that is not JSON", retryable=True) from exc


class _CommandTimeoutError(TelephonyError):
    """No answer in time: unlike other errors, the command may or may not have been carried out."""


def _result_error(command: str, code: int) -> TelephonyError:
    return TelephonyError(f"Mango {command} refused: {_describe(code)}", retryable=_result_retryable(code))


def _describe(code: int | None) -> str:
    text = _RESULT_TEXT.get(code or 0)
    return f"{code} {text}" if text else str(code)


def _attempt_of(command_id: str | None) -> str | None:
    """The attempt a command_id names (ours are attempt ids in hex); None for anyone else's."""
    try:
        return uuid.UUID(command_id or "").hex
    except ValueError:
        return None


def _digits(phone: str) -> str:
    return re.sub(r"\D", "", phone)
