"""Telegram Bot API: sendMessage / editMessageText, update parsing for binding, and the webhook route."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from litestar.handlers import HTTPRouteHandler

from services.notifier.channels._http import DEFAULT_RETRY_S, as_object, call_json, messenger_webhook
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

# 400 descriptions that mean the chat itself is gone (the bot can never write there again).
_DEAD_CHAT = ("chat not found", "user is deactivated", "peer_id_invalid", "bot was kicked")


class TelegramChannel:
    """Messages to a bound chat. provider_message_id is "<chat_id>:<message_id>": edits need both."""

    kind: ChannelKind = "messenger"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        token: str,
        timeout_s: float = 10.0,
        name: str = "telegram",
    ) -> None:
        self.name = name
        self._http = http
        self._base = f"{base_url.rstrip('/')}/bot{token}"
        self._timeout_s = timeout_s

    async def send(self, message: OutboundMessage) -> SendResult:
        result = await self._call("sendMessage", {"chat_id": message.address, "text": message.text})
        message_id = result.get("message_id") if isinstance(result, dict) else None
        if not isinstance(message_id, int):
            raise TransientChannelError(f"{self.name}: sendMessage answered without a message_id")
        return SendResult(provider_message_id=f"{message.address}:{message_id}")

    async def edit(self, provider_message_id: str, message: OutboundMessage) -> SendResult:
        chat_id, _, message_id = provider_message_id.rpartition(":")
        if not chat_id or not message_id.isdigit():
            raise PermanentChannelError(f"{self.name}: {provider_message_id!r} is not a chat:message id")
        payload = {"chat_id": chat_id, "message_id": int(message_id), "text": message.text}
        try:
            await self._call("editMessageText", payload)
        except PermanentChannelError as exc:
            # An edit to the text it already has is a success: a retried edit lands here.
            if "message is not modified" not in exc.reason:
                raise
        return SendResult(provider_message_id=provider_message_id)

    async def close(self) -> None:
        return None

    async def _call(self, method: str, payload: Mapping[str, Any]) -> Any:
        status, body = await call_json(
            self._http,
            "POST",
            f"{self._base}/{method}",
            provider=self.name,
            json=payload,
            timeout_s=self._timeout_s,
        )
        if not isinstance(body, dict):
            raise TransientChannelError(f"{self.name}: {method} HTTP {status}, unexpected answer")
        if body.get("ok") is True:
            return body.get("result")
        code = body.get("error_code", status)
        description = str(body.get("description", ""))
        reason = f"{self.name}: {method} {code} {description}".rstrip()
        parameters = body.get("parameters")
        if not isinstance(parameters, dict):
            parameters = {}
        if code == 429:
            retry_after = parameters.get("retry_after")
            seconds = float(retry_after) if isinstance(retry_after, (int, float)) else DEFAULT_RETRY_S
            raise TransientChannelError(reason, retry_after_s=seconds)
        if code == 403:
            # "bot was blocked by the user", "user is deactivated", "bot was kicked from the group chat".
            raise RecipientUnreachable(reason)
        if code == 400 and any(marker in description.lower() for marker in _DEAD_CHAT):
            raise RecipientUnreachable(reason)
        if code == 401:
            raise PermanentChannelError(reason)  # a wrong token: an operator must fix the configuration
        if isinstance(code, int) and 400 <= code < 500:
            raise PermanentChannelError(reason)
        raise TransientChannelError(reason, retry_after_s=DEFAULT_RETRY_S)


def _e164(phone: str) -> str:
    digits = "".join(char for char in phone if char.isdigit())
    return f"+{digits}" if digits else ""


def parse_update(body: Mapping[str, Any], *, channel: str = "telegram") -> InboundUpdate:
    """What a Telegram update means for bindings: /start <token>, the sender's own contact, stop, blocked."""
    member = body.get("my_chat_member")
    if isinstance(member, dict):
        chat_id = str(as_object(member.get("chat")).get("id", ""))
        status = as_object(member.get("new_chat_member")).get("status")
        if status == "kicked":
            return InboundUpdate(channel=channel, kind="blocked", chat_id=chat_id)
        return InboundUpdate(channel=channel, kind="other", chat_id=chat_id)
    message = body.get("message")
    if not isinstance(message, dict):
        return InboundUpdate(channel=channel, kind="other", chat_id="")
    chat_id = str(as_object(message.get("chat")).get("id", ""))
    sender_id = as_object(message.get("from")).get("id")
    contact = message.get("contact")
    if isinstance(contact, dict):
        # Anyone's contact card can be forwarded; only the sender's own proves the number is theirs.
        if sender_id is not None and contact.get("user_id") == sender_id and contact.get("phone_number"):
            return InboundUpdate(
                channel=channel, kind="contact", chat_id=chat_id, phone=_e164(str(contact["phone_number"]))
            )
        return InboundUpdate(channel=channel, kind="other", chat_id=chat_id)
    text = str(message.get("text") or "").strip()
    command, _, argument = text.partition(" ")
    # "/start@my_bot token" in groups; deep links give "/start token".
    if command.split("@", 1)[0] == "/start" and argument.strip():
        return InboundUpdate(channel=channel, kind="start", chat_id=chat_id, token=argument.strip())
    if text.lower() in {"stop", "/stop", "стоп"}:
        return InboundUpdate(channel=channel, kind="stop", chat_id=chat_id)
    return InboundUpdate(channel=channel, kind="other", chat_id=chat_id)


def webhook_routes(sink: UpdateSink, secret: str) -> list[HTTPRouteHandler]:
    """POST /channels/telegram/webhook: Telegram sends the setWebhook secret_token in
    X-Telegram-Bot-Api-Secret-Token; anything else is 401 and reaches nothing."""
    return [
        messenger_webhook(
            "/channels/telegram/webhook", "x-telegram-bot-api-secret-token", secret, sink, parse_update
        )
    ]
