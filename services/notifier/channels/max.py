"""MAX bot API (platform-api.max.ru): POST/PUT /messages, update parsing for binding, and the webhook route.

Plain httpx rather than a PyPI client: the maintained ones (maxapi, maxapi-python) are aiohttp bot
frameworks with their own dispatch loop; we need two calls and a parser, and one HTTP client per service.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx
from litestar.handlers import HTTPRouteHandler

from services.notifier.channels._http import DEFAULT_RETRY_S, as_object, messenger_webhook, retry_after_of
from services.notifier.channels.base import (
    ChannelKind,
    InboundUpdate,
    OutboundMessage,
    PermanentChannelError,
    RecipientUnreachable,
    SendResult,
    TransientChannelError,
    UpdateSink,
)

_TEL = re.compile(r"^TEL[^:]*:(.+)$", re.MULTILINE)


class MaxChannel:
    """Messages to a bound dialog (address = chat_id); provider_message_id is MAX's message "mid"."""

    kind: ChannelKind = "messenger"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        token: str,
        timeout_s: float = 10.0,
        name: str = "max",
    ) -> None:
        self.name = name
        self._http = http
        self._url = base_url.rstrip("/") + "/messages"
        # MAX takes the token only in the Authorization header (never in the query string).
        self._headers = {"Authorization": token}
        self._timeout_s = timeout_s

    async def send(self, message: OutboundMessage) -> SendResult:
        body = await self._call("POST", {"chat_id": message.address}, {"text": message.text})
        mid = ((body.get("message") or {}).get("body") or {}).get("mid")
        if not isinstance(mid, str) or not mid:
            raise TransientChannelError(f"{self.name}: POST /messages answered without a mid")
        return SendResult(provider_message_id=mid)

    async def edit(self, provider_message_id: str, message: OutboundMessage) -> SendResult:
        body = await self._call("PUT", {"message_id": provider_message_id}, {"text": message.text})
        if body.get("success") is False:
            raise PermanentChannelError(f"{self.name}: edit refused: {body.get('message', '')}")
        return SendResult(provider_message_id=provider_message_id)

    async def close(self) -> None:
        return None

    async def _call(
        self, method: str, params: Mapping[str, str], payload: Mapping[str, Any]
    ) -> dict[str, Any]:
        try:
            response = await self._http.request(
                method, self._url, params=params, json=payload, headers=self._headers, timeout=self._timeout_s
            )
        except httpx.TimeoutException as exc:
            raise TransientChannelError(f"{self.name}: timeout") from exc
        except httpx.HTTPError as exc:
            raise TransientChannelError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 429:
            raise TransientChannelError(
                f"{self.name}: 429 too many requests", retry_after_s=retry_after_of(response) or 1.0
            )
        if response.status_code >= 500:
            raise TransientChannelError(
                f"{self.name}: HTTP {response.status_code}", retry_after_s=DEFAULT_RETRY_S
            )
        try:
            body = response.json()
        except ValueError:
            raise TransientChannelError(
                f"{self.name}: an answer that is not JSON", retry_after_s=DEFAULT_RETRY_S
            ) from None
        if not isinstance(body, dict):
            raise TransientChannelError(f"{self.name}: unexpected answer", retry_after_s=DEFAULT_RETRY_S)
        if response.status_code < 300:
            return body
        reason = (
            f"{self.name}: {method} {response.status_code} {body.get('code', '')} {body.get('message', '')}"
        )
        if response.status_code in (403, 404):
            # chat.denied (the user blocked the bot) / chat.not.found: this address is dead.
            raise RecipientUnreachable(reason.rstrip())
        raise PermanentChannelError(reason.rstrip())


def _phone_of(contact: Mapping[str, Any]) -> str:
    raw = str(contact.get("vcf_phone") or "")
    if not raw:
        match = _TEL.search(str(contact.get("vcf_info") or "").replace("\r", ""))
        raw = match.group(1) if match else ""
    digits = "".join(char for char in raw.rpartition(":")[2] if char.isdigit())
    return f"+{digits}" if digits else ""


def parse_update(body: Mapping[str, Any], *, channel: str = "max") -> InboundUpdate:
    """bot_started with the deep link's payload, the sender's own contact, "stop", bot_stopped → blocked."""
    kind = body.get("update_type")
    if kind in ("bot_started", "bot_stopped"):
        chat_id = str(body.get("chat_id", ""))
        if kind == "bot_stopped":
            return InboundUpdate(channel=channel, kind="blocked", chat_id=chat_id)
        payload = str(body.get("payload") or "").strip()
        if payload:
            return InboundUpdate(channel=channel, kind="start", chat_id=chat_id, token=payload)
        return InboundUpdate(channel=channel, kind="other", chat_id=chat_id)
    message = body.get("message")
    if kind != "message_created" or not isinstance(message, dict):
        return InboundUpdate(channel=channel, kind="other", chat_id=str(body.get("chat_id", "")))
    chat_id = str(as_object(message.get("recipient")).get("chat_id", ""))
    sender_id = as_object(message.get("sender")).get("user_id")
    content = as_object(message.get("body"))
    attachments = content.get("attachments")
    for attachment in attachments if isinstance(attachments, list) else []:
        if not isinstance(attachment, dict) or attachment.get("type") != "contact":
            continue
        contact = as_object(attachment.get("payload"))
        owner = as_object(contact.get("max_info")).get("user_id")
        phone = _phone_of(contact)
        # A request_contact answer carries the sender as max_info; a forwarded card is someone else.
        if sender_id is not None and owner == sender_id and phone:
            return InboundUpdate(channel=channel, kind="contact", chat_id=chat_id, phone=phone)
        return InboundUpdate(channel=channel, kind="other", chat_id=chat_id)
    text = str(content.get("text") or "").strip()
    command, _, argument = text.partition(" ")
    if command == "/start" and argument.strip():
        return InboundUpdate(channel=channel, kind="start", chat_id=chat_id, token=argument.strip())
    if text.lower() in {"stop", "/stop", "стоп"}:
        return InboundUpdate(channel=channel, kind="stop", chat_id=chat_id)
    return InboundUpdate(channel=channel, kind="other", chat_id=chat_id)


def webhook_routes(sink: UpdateSink, secret: str) -> list[HTTPRouteHandler]:
    """POST /channels/max/webhook: MAX sends the subscription's secret in X-Max-Bot-Api-Secret; else 401."""
    return [messenger_webhook("/channels/max/webhook", "x-max-bot-api-secret", secret, sink, parse_update)]
