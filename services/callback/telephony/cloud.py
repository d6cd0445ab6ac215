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
- command_id is not documented as idempotent; the adapter de-duplicates retries of an attempt itself.
The provider call id returned by place_call() is the command_id (= attempt_id); events carry Mango's
entry_id as provider_call_id.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import httpx
import msgspec

from services.callback.telephony.base import (
    ANSWERED_KIND,
    RINGING_KIND,
    CallEvent,
    CallEventKind,
    CallOrder,
    EventStream,
    Leg,
    TelephonyError,
    prune_finished,
)

__all__ = ["MangoConfig", "MangoOfficeAdapter", "mango_sign"]

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


@dataclass(eq=False)
class _MangoCall:
    order: CallOrder
    agent_extension: str
    visitor_digits: str
    entry_id: str | None = None
    confirmed: bool = False  # Mango accepted the command, or its events arrived
    leg_call_ids: dict[Leg, str] = field(default_factory=dict)
    last_seq: dict[str, int] = field(default_factory=dict)
    ringing: set[Leg] = field(default_factory=set)
    answered: set[Leg] = field(default_factory=set)
    disconnected: set[Leg] = field(default_factory=set)
    bridged: bool = False
    finished: bool = False
    hangup_requested: bool = False
    # A failed /result/callback that came before our command's own answer (it then decides).
    early_result: int | None = None


class MangoOfficeAdapter:
    """TelephonyAdapter over MANGO OFFICE VPBX. Route POST webhooks from Mango to handle_webhook()."""

    def __init__(self, config: MangoConfig, *, name: str = "mango") -> None:
        self.name = name
        self.config = config
        self._http = httpx.AsyncClient(base_url=config.base_url.rstrip("/"), timeout=config.request_timeout_s)
        self._stream = EventStream()
        self._calls: dict[str, _MangoCall] = {}
        self._by_entry: dict[str, _MangoCall] = {}
        self._hangups = 0
        self._closed = False

    async def start(self) -> None:
        # Events come in as webhooks through the service's HTTP app; nothing to connect here.
        return None

    async def aclose(self) -> None:
        self._closed = True
        await self._http.aclose()
        self._stream.close()

    # --- TelephonyAdapter -----------------------------------------------------------------------------

    async def place_call(self, order: CallOrder) -> str:
        if self._closed:
            raise TelephonyError("Mango adapter is closed", retryable=False)
        if order.order != "agent_first":
            raise TelephonyError(
                "Mango commands/callback always rings the employee first; customer_first is not available",
                retryable=False,
            )
        call = self._calls.get(order.attempt_id)
        if call is not None and call.confirmed:
            return order.attempt_id
        if call is None:
            # Registered before the request: Mango may post events before its response reaches us.
            call = _MangoCall(
                order=order, agent_extension=order.agent_endpoint, visitor_digits=_digits(order.visitor_phone)
            )
            for old in prune_finished(self._calls, lambda c: c.finished):
                self._by_entry.pop(old.entry_id or "", None)
            self._calls[order.attempt_id] = call
        payload: dict[str, object] = {
            "command_id": order.attempt_id,
            "from": {"extension": order.agent_endpoint},
            "to_number": call.visitor_digits,
        }
        line = _digits(order.caller_id) or self.config.default_line_number
        if line:
            payload["line_number"] = line
        try:
            result = await self._command("/commands/callback", payload)
        except _CommandTimeoutError:
            # The command may have started: keep listening for its events, so that a retry whose events
            # have arrived by then returns without ringing again.
            raise
        except TelephonyError:
            # A definitive answer: nothing rings, and a retry must send the command again.
            self._calls.pop(order.attempt_id, None)
            raise
        if result != RESULT_OK:
            self._calls.pop(order.attempt_id, None)
            raise _result_error("commands/callback", result)
        call.confirmed = True
        if call.early_result is not None:
            self._finish(
                call, CallEventKind.FAILED, f"callback command failed: {_describe(call.early_result)}"
            )
        return order.attempt_id

    async def hangup(self, attempt_id: str) -> None:
        call = self._calls.get(attempt_id)
        if call is None or call.finished:
            return
        kind = CallEventKind.ENDED if call.bridged else CallEventKind.FAILED
        self._finish(call, kind, "hangup requested")
        call.hangup_requested = True
        for leg in ("visitor", "agent"):
            if leg in call.leg_call_ids and leg not in call.disconnected:
                await self._hangup_leg(call, call.leg_call_ids[leg])

    async def call_exists(self, attempt_id: str) -> bool | None:
        # Only calls placed by this process are known; another process's call cannot be asked about here,
        # so those are left to the maximum talk time.
        call = self._calls.get(attempt_id)
        return None if call is None else not call.finished

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
        service may mount the webhooks under any prefix it registers in the Mango account.
        """
        if not self.verify(form):
            log.warning("Mango webhook %s with a bad signature rejected", path)
            return False
        endpoint = path.rstrip("/")
        try:
            if endpoint.endswith("/events/call"):
                notice = msgspec.json.decode(form["json"], type=_CallNotice, strict=False)
                await self._on_call_notice(notice)
            elif endpoint.endswith("/result/callback"):
                result = msgspec.json.decode(form["json"], type=_CommandResult, strict=False)
                self._on_callback_result(result)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Authentic but unreadable: acknowledge it, or Mango would keep resending the same thing.
            log.warning("Mango webhook %s not understood: %s", path, exc)
        return True

    def _on_callback_result(self, result: _CommandResult) -> None:
        call = self._calls.get(result.command_id or "")
        if call is None or result.result == RESULT_OK:
            return
        if not call.confirmed:
            # place_call() has not returned yet; an attempt it reports as failed must not emit events.
            call.early_result = result.result
            return
        self._finish(call, CallEventKind.FAILED, f"callback command failed: {_describe(result.result)}")

    async def _on_call_notice(self, notice: _CallNotice) -> None:
        call = self._calls.get(notice.command_id or "") or self._by_entry.get(notice.entry_id)
        if call is None:
            return  # not one of our callbacks
        call.confirmed = True
        if notice.entry_id:
            call.entry_id = notice.entry_id
            self._by_entry[notice.entry_id] = call
        if notice.seq <= call.last_seq.get(notice.call_id, -1):
            return  # duplicate or overtaken by a newer event of the same leg
        call.last_seq[notice.call_id] = notice.seq
        leg = self._leg_of(call, notice)
        if leg is None:
            return
        call.leg_call_ids[leg] = notice.call_id
        if call.finished:
            if call.hangup_requested and notice.call_state == "Appeared":
                # hangup() came before Mango told us this leg's call_id.
                await self._hangup_leg(call, notice.call_id)
            return
        if notice.call_state == "Appeared":
            if leg == "visitor" and "agent" not in call.answered:
                # The PBX dials the visitor only after the employee picked up.
                self._answered(call, "agent")
            self._ringing(call, leg)
        elif notice.call_state == "Connected":
            self._answered(call, leg)
            if leg == "visitor" and not call.bridged:
                # "Connected" is the conversation of two parties: the visitor talks to the employee.
                call.bridged = True
                self._emit(call, CallEventKind.BRIDGED)
        elif notice.call_state == "Disconnected":
            call.disconnected.add(leg)
            self._on_disconnected(call, leg, notice.disconnect_reason)

    def _leg_of(self, call: _MangoCall, notice: _CallNotice) -> Leg | None:
        if notice.to.extension is not None and str(notice.to.extension) == call.agent_extension:
            return "agent"
        if notice.to.number is not None and _digits(notice.to.number) == call.visitor_digits:
            return "visitor"
        for leg, call_id in call.leg_call_ids.items():
            if call_id == notice.call_id:
                return leg
        return None

    def _on_disconnected(self, call: _MangoCall, leg: Leg, reason: int | None) -> None:
        detail = _describe(reason) if reason is not None else "disconnected"
        if call.bridged:
            self._finish(call, CallEventKind.ENDED, detail)
        elif leg == "visitor":
            if reason in _BUSY_REASONS:
                self._finish(call, CallEventKind.VISITOR_BUSY, detail)
            elif reason in _NO_ANSWER_REASONS:
                self._finish(call, CallEventKind.VISITOR_NO_ANSWER, detail)
            else:
                self._finish(call, CallEventKind.FAILED, detail)
        elif "agent" not in call.answered:
            if reason in _AGENT_UNAVAILABLE_REASONS:
                self._finish(call, CallEventKind.AGENT_NO_ANSWER, detail)
            else:
                self._finish(call, CallEventKind.FAILED, detail)
        elif "visitor" not in call.leg_call_ids or "visitor" in call.disconnected:
            self._finish(call, CallEventKind.FAILED, f"agent hung up before the visitor answered ({detail})")
        # Otherwise the visitor leg is still ringing and its own Disconnected will tell how it ended.

    def _ringing(self, call: _MangoCall, leg: Leg) -> None:
        if leg not in call.ringing:
            call.ringing.add(leg)
            self._emit(call, RINGING_KIND[leg])

    def _answered(self, call: _MangoCall, leg: Leg) -> None:
        if leg not in call.answered:
            self._ringing(call, leg)
            call.answered.add(leg)
            self._emit(call, ANSWERED_KIND[leg])

    def _finish(self, call: _MangoCall, kind: CallEventKind, detail: str) -> None:
        if not call.finished:
            call.finished = True
            self._emit(call, kind, detail)

    def _emit(self, call: _MangoCall, kind: CallEventKind, detail: str = "") -> None:
        self._stream.emit(call.order.attempt_id, kind, provider_call_id=call.entry_id, detail=detail)

    # --- commands -------------------------------------------------------------------------------------

    async def _hangup_leg(self, call: _MangoCall, call_id: str) -> None:
        self._hangups += 1
        payload = {"command_id": f"{call.order.attempt_id}-hangup-{self._hangups}", "call_id": call_id}
        try:
            result = await self._command("/commands/call/hangup", payload)
        except TelephonyError as exc:
            log.warning("Mango hangup of %s failed: %s", call.order.attempt_id, exc)
            return
        if result != RESULT_OK:
            log.warning("Mango hangup of %s answered %s", call.order.attempt_id, _describe(result))

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


def _digits(phone: str) -> str:
    return re.sub(r"\D", "", phone)
