"""SMS over HTTP gateways: an SMS.ru-style and an SMSC.ru-style API, and their delivery-report webhooks."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import httpx
from litestar import MediaType, Request, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath

from services.common.errors import ApiError
from services.notifier.channels._http import DEFAULT_RETRY_S, call_json
from services.notifier.channels.base import (
    ChannelError,
    ChannelKind,
    DeliveryReceipt,
    OutboundMessage,
    PermanentChannelError,
    ReceiptSink,
    RecipientUnreachable,
    SendResult,
    TransientChannelError,
)
from services.notifier.domain.segments import count_segments

log = logging.getLogger(__name__)


def _digits(phone: str) -> str:
    """Both gateways want the number without "+" (79251234567)."""
    return "".join(char for char in phone if char.isdigit())


def _kopecks(value: object) -> int:
    """Gateways report rubles as a number or a string ("2.90"); kopecks, 0 when absent or unreadable."""
    if value is None or isinstance(value, bool):
        return 0
    try:
        return int((Decimal(str(value)) * 100).to_integral_value())
    except (InvalidOperation, ValueError):
        return 0


# --- SMS.ru -------------------------------------------------------------------------------------------

# status_code of a send (per request and per number): https://sms.ru/api/send
SMS_RU_UNREACHABLE: Final = frozenset({202, 207, 209})  # bad number, not allowed to it, on the stop list
# Retried later: the gateway is down, or our money/limits run out (topped up / reset by the next day).
SMS_RU_RETRY_S: Final = {201: 600.0, 206: 3600.0, 220: 60.0, 230: 3600.0, 231: 60.0, 232: 3600.0}
# status_code of a delivery report: 103 delivered; 104-108 and 150 are final failures; 100-102 on the way.
SMS_RU_DELIVERED: Final = 103
SMS_RU_FAILED: Final = frozenset({104, 105, 106, 107, 108, 150})


# Numbers one SMS.ru request may carry (https://sms.ru/api/send: "more than 100 numbers" is refused).
SMS_RU_MAX_BATCH: Final = 100


class SmsRuChannel:
    """POST {base}/sms/send with api_id, to, msg, json=1 (one message); `send_many` puts several in one
    request as SMS.ru documents for different texts to different numbers, `to[<number>]=<text>`, and reads
    each number's own entry of the answer."""

    kind: ChannelKind = "sms"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_id: str,
        sender: str = "",
        timeout_s: float = 10.0,
        name: str = "sms_ru",
        batch_limit: int = SMS_RU_MAX_BATCH,
    ) -> None:
        self.name = name
        self.batch_limit = max(1, min(batch_limit, SMS_RU_MAX_BATCH))
        self._http = http
        self._url = base_url.rstrip("/") + "/sms/send"
        self._api_id = api_id
        self._sender = sender
        self._timeout_s = timeout_s
        # The balance the gateway reported last (rubles), for a gauge; None until the first answer.
        self.balance: Decimal | None = None

    async def send(self, message: OutboundMessage) -> SendResult:
        phone = _digits(message.address)
        form = {"api_id": self._api_id, "to": phone, "msg": message.text, "json": "1"}
        body = await self._post(form, message.sender or self._sender)
        return self._entry_result(body, phone, message.text)

    async def send_many(self, messages: Sequence[OutboundMessage]) -> list[SendResult | ChannelError]:
        outcomes: list[SendResult | ChannelError | None] = [None] * len(messages)
        requests = self._requests_for(messages)
        answers = await asyncio.gather(*(self._send_request(messages, indexes) for indexes in requests))
        for indexes, answer in zip(requests, answers, strict=True):
            for index, outcome in zip(indexes, answer, strict=True):
                outcomes[index] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    def _requests_for(self, messages: Sequence[OutboundMessage]) -> list[list[int]]:
        """Message indexes per request: one sender each (it is per request), a number at most once (the
        answer is keyed by number), at most `batch_limit` numbers."""
        requests: list[list[int]] = []
        open_by_sender: dict[str, tuple[list[int], set[str]]] = {}
        for index, message in enumerate(messages):
            sender, phone = message.sender or self._sender, _digits(message.address)
            current = open_by_sender.get(sender)
            if current is None or phone in current[1] or len(current[0]) >= self.batch_limit:
                current = open_by_sender[sender] = ([], set())
                requests.append(current[0])
            current[0].append(index)
            current[1].add(phone)
        return requests

    async def _send_request(
        self, messages: Sequence[OutboundMessage], indexes: list[int]
    ) -> list[SendResult | ChannelError]:
        if len(indexes) == 1:
            try:
                return [await self.send(messages[indexes[0]])]
            except ChannelError as exc:
                return [exc]
        first = messages[indexes[0]]
        form = {"api_id": self._api_id, "json": "1"}
        for index in indexes:
            form[f"to[{_digits(messages[index].address)}]"] = messages[index].text
        try:
            body = await self._post(form, first.sender or self._sender)
        except ChannelError as exc:
            return [exc] * len(indexes)
        outcomes: list[SendResult | ChannelError] = []
        for index in indexes:
            try:
                outcomes.append(
                    self._entry_result(body, _digits(messages[index].address), messages[index].text)
                )
            except ChannelError as exc:
                outcomes.append(exc)
        return outcomes

    async def _post(self, form: dict[str, str], sender: str) -> dict[str, Any]:
        """The request's answer when SMS.ru accepted the request as a whole; else its error."""
        if sender:
            form["from"] = sender
        status, body = await call_json(
            self._http, "POST", self._url, provider=self.name, data=form, timeout_s=self._timeout_s
        )
        if not isinstance(body, dict):
            raise TransientChannelError(
                f"{self.name}: HTTP {status}, unexpected answer", retry_after_s=DEFAULT_RETRY_S
            )
        if "balance" in body:
            with contextlib.suppress(InvalidOperation):
                self.balance = Decimal(str(body["balance"]))
        if body.get("status") != "OK":
            raise _sms_ru_error(self.name, body)
        return body

    def _entry_result(self, body: Mapping[str, Any], phone: str, text: str) -> SendResult:
        """One number's entry of an accepted request's answer."""
        entry = (body.get("sms") or {}).get(phone)
        if not isinstance(entry, dict):
            raise TransientChannelError(
                f"{self.name}: the answer has no entry for the number", retry_after_s=DEFAULT_RETRY_S
            )
        if entry.get("status") != "OK":
            raise _sms_ru_error(self.name, entry)
        sms_id = entry.get("sms_id")
        if not isinstance(sms_id, str) or not sms_id:
            raise TransientChannelError(
                f"{self.name}: accepted without an sms_id", retry_after_s=DEFAULT_RETRY_S
            )
        segments = entry.get("sms")
        if not isinstance(segments, int) or segments < 1:
            segments = count_segments(text).segments
        return SendResult(
            provider_message_id=sms_id,
            segments=segments,
            cost_minor=_kopecks(entry.get("cost")),
        )

    async def edit(self, provider_message_id: str, message: OutboundMessage) -> SendResult:
        raise PermanentChannelError(f"{self.name}: an SMS cannot be edited")

    async def close(self) -> None:
        return None


def _sms_ru_error(name: str, body: Mapping[str, Any]) -> Exception:
    code = body.get("status_code")
    text = str(body.get("status_text") or "")
    reason = f"{name}: status_code {code} {text}".rstrip()
    if code in SMS_RU_UNREACHABLE:
        return RecipientUnreachable(reason)
    if isinstance(code, int) and code in SMS_RU_RETRY_S:
        return TransientChannelError(reason, retry_after_s=SMS_RU_RETRY_S[code])
    if not isinstance(code, int):
        return TransientChannelError(f"{name}: an error without a status_code", retry_after_s=DEFAULT_RETRY_S)
    # Wrong api_id, unapproved sender, text too long, bad method: retrying cannot help; an operator must.
    return PermanentChannelError(reason)


def parse_sms_ru_receipts(form: Mapping[str, str], *, channel: str = "sms_ru") -> list[DeliveryReceipt]:
    """SMS.ru's callback posts data[0..n] = "sms_status\\n<sms_id>\\n<status_code>\\n<unix time>" lines."""
    receipts: list[DeliveryReceipt] = []
    for key, value in form.items():
        if not key.startswith("data["):
            continue
        lines = value.replace("\r", "").split("\n")
        if len(lines) < 3 or lines[0] != "sms_status":
            continue  # other callback kinds (callcheck) are none of ours
        try:
            code = int(lines[2])
            at = (
                dt.datetime.fromtimestamp(int(lines[3]), dt.UTC)
                if len(lines) > 3
                else dt.datetime.now(dt.UTC)
            )
        except (ValueError, OverflowError, OSError):  # a time past time_t is as unreadable as "abc"
            continue
        if code == SMS_RU_DELIVERED:
            receipts.append(
                DeliveryReceipt(channel=channel, provider_message_id=lines[1], status="delivered", at=at)
            )
        elif code in SMS_RU_FAILED:
            receipts.append(
                DeliveryReceipt(
                    channel=channel,
                    provider_message_id=lines[1],
                    status="failed",
                    at=at,
                    reason=f"status_code {code}",
                )
            )
    return receipts


# --- SMSC.ru ------------------------------------------------------------------------------------------

# error_code of send.php: https://smsc.ru/api/http/send/
SMSC_UNREACHABLE: Final = frozenset({7, 8})  # wrong number format; cannot be delivered to this number
SMSC_RETRY_S: Final = {3: 600.0, 4: 60.0, 9: 60.0}  # no money; our IP blocked for a minute; too many requests
# status of a delivery notification: 1 delivered; these are final failures; -1, 0 on the way.
SMSC_DELIVERED: Final = frozenset({1})
SMSC_FAILED: Final = frozenset({3, 20, 22, 23, 24, 25})


class SmscChannel:
    """POST {base}/sys/send.php with login, psw, phones, mes, fmt=3 (JSON), cost=3 (cost and balance)."""

    kind: ChannelKind = "sms"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        login: str,
        password: str,
        sender: str = "",
        timeout_s: float = 10.0,
        name: str = "smsc",
    ) -> None:
        self.name = name
        self._http = http
        self._url = base_url.rstrip("/") + "/sys/send.php"
        # With an empty login SMSC reads psw as the API key.
        self._login = login
        self._password = password
        self._sender = sender
        self._timeout_s = timeout_s
        self.balance: Decimal | None = None

    async def send(self, message: OutboundMessage) -> SendResult:
        form = {
            "login": self._login,
            "psw": self._password,
            "phones": _digits(message.address),
            "mes": message.text,
            "fmt": "3",
            "cost": "3",
            "charset": "utf-8",
        }
        sender = message.sender or self._sender
        if sender:
            form["sender"] = sender
        status, body = await call_json(
            self._http, "POST", self._url, provider=self.name, data=form, timeout_s=self._timeout_s
        )
        if not isinstance(body, dict):
            raise TransientChannelError(
                f"{self.name}: HTTP {status}, unexpected answer", retry_after_s=DEFAULT_RETRY_S
            )
        if "error_code" in body or "error" in body:
            raise _smsc_error(self.name, body)
        if "balance" in body:
            with contextlib.suppress(InvalidOperation):
                self.balance = Decimal(str(body["balance"]))
        sms_id = body.get("id")
        if not isinstance(sms_id, (int, str)) or isinstance(sms_id, bool) or str(sms_id) == "":
            raise TransientChannelError(f"{self.name}: accepted without an id", retry_after_s=DEFAULT_RETRY_S)
        count = body.get("cnt")
        return SendResult(
            provider_message_id=str(sms_id),
            segments=count if isinstance(count, int) and count > 0 else count_segments(message.text).segments,
            cost_minor=_kopecks(body.get("cost")),
        )

    async def edit(self, provider_message_id: str, message: OutboundMessage) -> SendResult:
        raise PermanentChannelError(f"{self.name}: an SMS cannot be edited")

    async def close(self) -> None:
        return None


def _smsc_error(name: str, body: Mapping[str, Any]) -> Exception:
    code = body.get("error_code")
    reason = f"{name}: error_code {code} {body.get('error', '')}".rstrip()
    if code in SMSC_UNREACHABLE:
        return RecipientUnreachable(reason)
    if isinstance(code, int) and code in SMSC_RETRY_S:
        return TransientChannelError(reason, retry_after_s=SMSC_RETRY_S[code])
    if not isinstance(code, int):
        return TransientChannelError(f"{name}: an error without an error_code", retry_after_s=DEFAULT_RETRY_S)
    # Bad parameters, wrong login, a message or sender the gateway forbids: an operator must act.
    return PermanentChannelError(reason)


def parse_smsc_receipt(form: Mapping[str, str], *, channel: str = "smsc") -> list[DeliveryReceipt]:
    """SMSC's status notification posts id, phone, status, err and ts (unix time of the status)."""
    try:
        code = int(form.get("status", ""))
    except ValueError:
        return []
    sms_id = form.get("id", "")
    if not sms_id:
        return []
    try:
        at = dt.datetime.fromtimestamp(int(form["ts"]), dt.UTC)
    except (KeyError, ValueError, OverflowError, OSError):
        at = dt.datetime.now(dt.UTC)
    if code in SMSC_DELIVERED:
        return [DeliveryReceipt(channel=channel, provider_message_id=sms_id, status="delivered", at=at)]
    if code in SMSC_FAILED:
        reason = f"status {code}" + (f", err {form['err']}" if form.get("err") else "")
        return [
            DeliveryReceipt(
                channel=channel, provider_message_id=sms_id, status="failed", at=at, reason=reason
            )
        ]
    return []


# --- delivery-report webhooks -------------------------------------------------------------------------


def receipt_token(secret: str, channel: str) -> str:
    """The token a gateway's delivery-report URL carries: HMAC-SHA256(secret, channel), hex.

    Neither gateway signs its callbacks, so the URL we register with it is the credential; one per
    channel, so a leaked SMS.ru URL cannot post SMSC receipts.
    """
    return hmac.new(secret.encode(), f"receipts:{channel}".encode(), hashlib.sha256).hexdigest()


def receipt_path(secret: str, channel: str) -> str:
    """The path to register in the gateway's dashboard (prefix it with the notifier's public URL)."""
    return f"/channels/{channel}/receipts/{receipt_token(secret, channel)}"


def receipt_routes(sink: ReceiptSink, secret: str) -> list[HTTPRouteHandler]:
    """POST /channels/sms_ru/receipts/{token} and /channels/smsc/receipts/{token}: 401 on a bad token,
    and then nothing reaches `sink`."""

    def check(channel: str, token: str) -> None:
        # An empty secret would make every token guessable: such a deployment accepts no receipts.
        # As bytes: compare_digest refuses str with non-ASCII characters (a 500 on a fuzzed URL).
        if not secret or not hmac.compare_digest(token.encode(), receipt_token(secret, channel).encode()):
            raise ApiError(401, "unauthorized", "The receipt URL's token is not valid")

    async def form_of(request: Request[Any, Any, Any]) -> dict[str, str]:
        return {key: str(value) for key, value in (await request.form()).items()}

    @post(
        "/channels/sms_ru/receipts/{token:str}",
        status_code=200,
        media_type=MediaType.TEXT,
        include_in_schema=False,
    )
    async def sms_ru_receipts(token: FromPath[str], request: Request[Any, Any, Any]) -> str:
        check("sms_ru", token)
        for receipt in parse_sms_ru_receipts(await form_of(request)):
            await sink(receipt)
        # SMS.ru repeats a callback until it reads "100".
        return "100"

    @post(
        "/channels/smsc/receipts/{token:str}",
        status_code=200,
        media_type=MediaType.TEXT,
        include_in_schema=False,
    )
    async def smsc_receipts(token: FromPath[str], request: Request[Any, Any, Any]) -> str:
        check("smsc", token)
        for receipt in parse_smsc_receipt(await form_of(request)):
            await sink(receipt)
        return "OK"

    return [sms_ru_receipts, smsc_receipts]
