"""SMS over SMPP 3.4 with aiosmpplib: bind_transceiver, submit_sm (UCS-2, concatenation UDH), receipts.

Why aiosmpplib over smpplib: it is asyncio-native (smpplib blocks a thread per session and would need a
bridge into our loop), and it already keeps the session: reconnect with exponential back-off,
enquire_link on idle, a throttle hook that pauses sending after ESME_RTHROTTLED, UDH segmentation.

What this module adds: a request/response `send()` over the library's queue. The library's own
correlation of long messages is in memory and returns one response per message; we need every part's
answer (any refused part fails the send) and a receipt per message that survives a restart, so the hook
below sees every PDU and correlates by sequence number itself.

A long message is reported under its **first part's** SMSC id: a receipt for that id is the message's
receipt; the other parts' receipts are ignored (a phone shows the text once all parts arrived, and
carriers deliver the parts of one message together).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass, field

# aiosmpplib ships no type information (no py.typed); its classes are Any to mypy.
from aiosmpplib import (  # type: ignore[import-untyped]
    ESME,
    NPI,
    TON,
    AbstractBroker,
    AbstractHook,
    AbstractThrottleHandler,
    DeliverSm,
    PhoneNumber,
    SmppCommand,
    SmppCommandStatus,
    SmppMessage,
    SmppSessionState,
    SubmitSm,
    SubmitSmResp,
)
from aiosmpplib.retrytimer import SimpleExponentialBackoff  # type: ignore[import-untyped]

from services.notifier.channels.base import (
    ChannelKind,
    DeliveryReceipt,
    OutboundMessage,
    PermanentChannelError,
    ReceiptSink,
    RecipientUnreachable,
    SendResult,
    TransientChannelError,
)

log = logging.getLogger(__name__)

UDHI = 0x40  # esm_class bit: the user data starts with a header (concatenation)
PDU_HEADER = 16
_UNREACHABLE = {
    SmppCommandStatus.ESME_RINVDSTADR,
    SmppCommandStatus.ESME_RINVDSTTON,
    SmppCommandStatus.ESME_RINVDSTNPI,
}
_THROTTLED = {SmppCommandStatus.ESME_RTHROTTLED, SmppCommandStatus.ESME_RMSGQFUL}
# Receipt "stat:" values that are final failures; DELIVRD is success; ENROUTE/ACCEPTD are not final.
_FAILED_STATES = {"UNDELIV", "EXPIRED", "DELETED", "REJECTD", "UNKNOWN"}


def normalise_message_id(value: str) -> str:
    """SMPP 3.4 SMSCs report ids in decimal, 3.3-era ones in hex, some with leading zeros: compare the same
    way on both sides (lower case, leading zeros dropped)."""
    return value.strip().lower().lstrip("0") or "0"


@dataclass
class _Pending:
    """One send() waiting for all its parts' submit_sm_resp."""

    expected: int | None = None
    responses: dict[int, tuple[SmppCommandStatus, str]] = field(default_factory=dict)  # part → (status, id)
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class _Broker(AbstractBroker):  # type: ignore[misc]
    """The library's outbound queue; drops messages whose send() gave up before they left."""

    def __init__(self, channel: SmppChannel) -> None:
        self._queue: asyncio.Queue[SmppMessage] = asyncio.Queue()
        self._channel = channel

    async def enqueue(self, message: SmppMessage) -> None:
        await self._queue.put(message)

    async def dequeue(self) -> SmppMessage:
        while True:
            message = await self._queue.get()
            # A caller that timed out has told the engine "not sent": sending it now would be a duplicate.
            if not isinstance(message, SubmitSm) or message.log_id in self._channel._pending:
                return message


class _Throttle(AbstractThrottleHandler):  # type: ignore[misc]
    """ESME_RTHROTTLED pauses every submit for a back-off that doubles (1 s … 30 s) until one is accepted."""

    def __init__(self) -> None:
        self.backoff_s = 0.0
        self._paused_until = 0.0

    async def throttled(self) -> None:
        self.backoff_s = min(max(self.backoff_s * 2, 1.0), 30.0)
        self._paused_until = time.monotonic() + self.backoff_s

    async def not_throttled(self) -> None:
        self.backoff_s = 0.0

    async def allow_request(self) -> bool:
        return time.monotonic() >= self._paused_until

    async def throttle_delay(self) -> float:
        return max(self._paused_until - time.monotonic(), 0.01)


class _Hook(AbstractHook):  # type: ignore[misc]
    def __init__(self, channel: SmppChannel) -> None:
        self._channel = channel

    async def sending(self, smpp_message: SmppMessage, pdu: bytes, client_id: str) -> None:
        if isinstance(smpp_message, SubmitSm):
            self._channel._on_submit(smpp_message)

    async def received(self, smpp_message: SmppMessage | None, pdu: bytes, client_id: str) -> None:
        # Parse every PDU ourselves: for the parts of a long message the library hands us None.
        try:
            header = SmppMessage.parse_header(pdu[:PDU_HEADER])
            if header.smpp_command in (SmppCommand.SUBMIT_SM_RESP, SmppCommand.GENERIC_NACK):
                message_id = ""
                if header.smpp_command == SmppCommand.SUBMIT_SM_RESP and header.pdu_length > PDU_HEADER:
                    resp = SubmitSmResp.from_pdu(pdu, header)
                    assert isinstance(resp, SubmitSmResp)
                    message_id = resp.message_id
                self._channel._on_submit_resp(header.sequence_num, header.command_status, message_id)
            elif header.smpp_command == SmppCommand.DELIVER_SM:
                deliver = DeliverSm.from_pdu(pdu, header, "gsm0338")
                assert isinstance(deliver, DeliverSm)
                if deliver.is_receipt():
                    await self._channel._on_receipt(deliver)
        except Exception:
            # A PDU we cannot read must not take the session down; the library answers it on its own.
            log.exception("smpp: could not read a PDU from the SMSC")

    async def send_error(self, smpp_message: SmppMessage, error: Exception, client_id: str) -> None:
        if isinstance(smpp_message, SubmitSm):
            self._channel._fail(smpp_message.log_id, TransientChannelError(f"smpp: not sent: {error!r}"))


class SmppChannel:
    """One SMPP session (bind_transceiver) per process; `start()` before the first send."""

    kind: ChannelKind = "sms"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        system_id: str,
        password: str,
        system_type: str = "",
        sender: str = "",
        window: int = 10,
        enquire_link_s: float = 30.0,
        response_timeout_s: float = 30.0,
        receipt_sink: ReceiptSink | None = None,
        name: str = "smpp",
    ) -> None:
        self.name = name
        self._sender = sender
        self._receipt_sink = receipt_sink
        self._response_timeout_s = response_timeout_s
        # submit_sm in flight per session: the SMSC's agreed window, counted per message.
        self._window = asyncio.Semaphore(window)
        self._pending: dict[str, _Pending] = {}
        self._part_of_sequence: dict[int, tuple[str, int]] = {}  # sequence_num → (log_id, part)
        self._throttle = _Throttle()
        self._esme = ESME(
            smsc_host=host,
            smsc_port=port,
            system_id=system_id,
            password=password,
            system_type=system_type,
            enquire_link_interval=float(enquire_link_s),
            hook=_Hook(self),
            broker=_Broker(self),
            throttle_handler=self._throttle,
            retry_timer=SimpleExponentialBackoff(min_delay=500, max_increases=5),
            socket_timeout=float(response_timeout_s),
            log_level=logging.WARNING,
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def bound(self) -> bool:
        return bool(self._esme.session_state == SmppSessionState.BOUND_TRX)

    async def start(self) -> None:
        """Connect and keep reconnecting in the background; returns at once."""
        if self._task is None:
            self._task = asyncio.create_task(self._esme.start(), name="smpp-session")

    async def wait_bound(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.bound and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.bound

    async def send(self, message: OutboundMessage) -> SendResult:
        if not self.bound:
            # Nothing was handed to the SMSC: safe to retry soon.
            raise TransientChannelError(f"{self.name}: not bound to the SMSC", retry_after_s=5.0)
        digits = "".join(char for char in message.address if char.isdigit())
        sender = message.sender or self._sender
        submit = SubmitSm(
            short_message=message.text,
            source=_source_address(sender),
            destination=PhoneNumber(digits, TON.INTERNATIONAL, NPI.ISDN),
            # Ask for UDH concatenation; the library clears the bit when the text fits in one part.
            esm_class=UDHI,
            registered_delivery=0b00000001,
            auto_message_payload=False,
            log_id=str(message.message_id),
        )
        async with self._window:
            pending = _Pending()
            key = str(message.message_id)
            self._pending[key] = pending
            try:
                await self._esme.broker.enqueue(submit)
                await asyncio.wait_for(asyncio.shield(pending.done), self._response_timeout_s)
            except TimeoutError:
                raise TransientChannelError(
                    f"{self.name}: no submit_sm_resp in time (outcome unknown)"
                ) from None
            finally:
                self._pending.pop(key, None)
        parts = [pending.responses[index] for index in sorted(pending.responses)]
        for status, _ in parts:
            if status != SmppCommandStatus.ESME_ROK:
                raise self._error(status, len(parts))
        return SendResult(provider_message_id=normalise_message_id(parts[0][1]), segments=len(parts))

    def _error(self, status: SmppCommandStatus, parts: int) -> Exception:
        reason = f"{self.name}: submit_sm refused: {status.name}"
        if status in _THROTTLED:
            return TransientChannelError(reason, retry_after_s=max(self._throttle.backoff_s, 1.0))
        if status in _UNREACHABLE:
            return RecipientUnreachable(reason)
        if status in (SmppCommandStatus.ESME_RSYSERR, SmppCommandStatus.ESME_RSUBMITFAIL):
            return TransientChannelError(reason, retry_after_s=30.0)
        if parts > 1:
            reason += " (a part of a long message may have gone out)"
        return PermanentChannelError(reason)

    async def edit(self, provider_message_id: str, message: OutboundMessage) -> SendResult:
        raise PermanentChannelError(f"{self.name}: an SMS cannot be edited")

    async def close(self) -> None:
        if self._task is None:
            return
        # The library half-closes (write_eof) and forgets its writer; close the socket ourselves.
        writer = self._esme._writer
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._esme.stop(), 5)
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        self._task = None

    # --- called by the hook ---------------------------------------------------------------------------

    def _on_submit(self, submit: SubmitSm) -> None:
        pending = self._pending.get(submit.log_id)
        if pending is None:
            return
        part, total = _part_and_total(submit)
        pending.expected = total
        self._part_of_sequence[submit.sequence_num] = (submit.log_id, part)

    def _on_submit_resp(self, sequence_num: int, status: SmppCommandStatus, message_id: str) -> None:
        owner = self._part_of_sequence.pop(sequence_num, None)
        if owner is None:
            return
        log_id, part = owner
        pending = self._pending.get(log_id)
        if pending is None or pending.done.done():
            return
        pending.responses[part] = (status, message_id)
        if status != SmppCommandStatus.ESME_ROK or len(pending.responses) == pending.expected:
            pending.done.set_result(None)

    def _fail(self, log_id: str, error: Exception) -> None:
        pending = self._pending.get(log_id)
        if pending is not None and not pending.done.done():
            pending.done.set_exception(error)

    async def _on_receipt(self, deliver: DeliverSm) -> None:
        if self._receipt_sink is None:
            return
        fields = _receipt_fields(deliver.short_message)
        message_id = fields.get("id", "")
        for param in deliver.optional_params or []:
            # receipted_message_id (0x001E) is authoritative where the SMSC sends it.
            if param.tag == 0x001E and isinstance(param.value, str) and param.value:
                message_id = param.value
        stat = fields.get("stat", "").upper()
        if not message_id or (stat != "DELIVRD" and stat not in _FAILED_STATES):
            return
        receipt = DeliveryReceipt(
            channel=self.name,
            provider_message_id=normalise_message_id(message_id),
            status="delivered" if stat == "DELIVRD" else "failed",
            at=dt.datetime.now(dt.UTC),
            reason="" if stat == "DELIVRD" else f"{stat} err:{fields.get('err', '')}",
        )
        await self._receipt_sink(receipt)


def _source_address(sender: str) -> PhoneNumber:
    if sender and not sender.lstrip("+").isdigit():
        return PhoneNumber(sender, TON.ALPHANUMERIC, NPI.UNKNOWN)
    return PhoneNumber(sender.lstrip("+"), TON.INTERNATIONAL if sender else TON.UNKNOWN, NPI.ISDN)


def _part_and_total(submit: SubmitSm) -> tuple[int, int]:
    """(part number, parts) from the concatenation UDH the library put in front of the user data."""
    if not submit.esm_class & UDHI:
        return 1, 1
    data: bytes = getattr(submit, "_encoded_message", b"")
    # UDHL, then IEI 00 (8-bit reference, length 3) or 08 (16-bit reference, length 4).
    if len(data) >= 6 and data[1] == 0x00:
        return data[5], data[4]
    if len(data) >= 7 and data[1] == 0x08:
        return data[6], data[5]
    return 1, 1


def _receipt_fields(text: str) -> dict[str, str]:
    """id:… sub:… dlvrd:… submit date:… done date:… stat:… err:… text:… (dates in any length)."""
    fields: dict[str, str] = {}
    for key in ("id", "stat", "err"):
        marker = f"{key}:"
        start = text.lower().find(marker)
        if start == -1:
            continue
        value = text[start + len(marker) :].split(" ", 1)[0]
        fields[key] = value
    return fields
