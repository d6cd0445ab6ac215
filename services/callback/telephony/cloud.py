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
import hmac
import logging
import re
import uuid
from collections.abc import AsyncIterator, Mapping

import httpx
import msgspec

from services.callback.telephony.base import (
    KEEP_CALLS,
    CallEvent,
    CallEventKind,
    CallOrder,
    EventStream,
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

from services.callback.telephony.mango_protocol import (
    EMPTY_STATE,
    RESULT_OK,
    CallNotice,
    CommandResult,
    MangoCallState,
    MangoConfig,
    MangoNotice,
    NoticeCarrier,
    decode_state,
    describe_result,
    mango_sign,
    result_retryable,
    translate_notice,
)

log = logging.getLogger(__name__)

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
        if known is not None and known != EMPTY_STATE:
            # Its notices have arrived: a command that timed out was carried out after all.
            return order.attempt_id
        if self._carrier is None and known is None:
            # Registered before the request: Mango may post events before its response reaches us.
            self._remember(order.attempt_id, EMPTY_STATE)
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
            if self._states.get(order.attempt_id) == EMPTY_STATE:
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
        if state is None or state == EMPTY_STATE:
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
                call_notice = msgspec.json.decode(text, type=CallNotice, strict=False)
                command_id, kind = call_notice.command_id, "events/call"
                key = f"{call_notice.call_id}:{call_notice.seq}"
            elif endpoint.endswith("/result/callback"):
                result = msgspec.json.decode(text, type=CommandResult, strict=False)
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
            log.warning("Mango hangup of %s answered %s", attempt_id, describe_result(result))

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
            return msgspec.json.decode(response.content, type=CommandResult, strict=False).result
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise TelephonyError(f"Mango {path} answered something that is not JSON", retryable=True) from exc


class _CommandTimeoutError(TelephonyError):
    """No answer in time: unlike other errors, the command may or may not have been carried out."""


def _result_error(command: str, code: int) -> TelephonyError:
    return TelephonyError(
        f"Mango {command} refused: {describe_result(code)}", retryable=result_retryable(code)
    )


def _attempt_of(command_id: str | None) -> str | None:
    """The attempt a command_id names (ours are attempt ids in hex); None for anyone else's."""
    try:
        return uuid.UUID(command_id or "").hex
    except ValueError:
        return None


def _digits(phone: str) -> str:
    return re.sub(r"\D", "", phone)
