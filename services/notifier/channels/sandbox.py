"""The sandbox channel: a pretend phone per address in PostgreSQL, for `./dev up` and tests (dev inbox)."""

from __future__ import annotations

import uuid

from services.common import db
from services.notifier import store
from services.notifier.channels.base import (
    ChannelKind,
    OutboundMessage,
    PermanentChannelError,
    SendResult,
    TransientChannelError,
)
from services.notifier.domain.segments import count_segments

SANDBOX_SMS = "sandbox"
SANDBOX_CHAT = "sandbox_chat"
# Pretend prices, in kopecks: what the message log's cost column shows in dev.
SMS_SEGMENT_COST_MINOR = 350


def sandbox_chat_id(phone: str) -> str:
    """The dev inbox's chat for a phone: the pretend messenger account of whoever holds that number."""
    return "chat:" + phone


class SandboxChannel:
    """Implements Channel. Idempotent per message_id like a good provider: a resubmission is counted
    (`submissions`), never shown twice, so tests can see whether the notifier called twice."""

    def __init__(self, pool: db.Pool, kind: ChannelKind) -> None:
        self.pool = pool
        self.kind: ChannelKind = kind
        self.name = SANDBOX_SMS if kind == "sms" else SANDBOX_CHAT

    async def send(self, message: OutboundMessage) -> SendResult:
        if not message.address:
            raise PermanentChannelError("no address")
        try:
            async with self.pool.acquire() as conn:
                provider_id = await store.sandbox_submit(
                    conn,
                    message.message_id,
                    channel=self.name,
                    address=message.address,
                    body=message.text,
                    provider_message_id=f"sb-{uuid.uuid4().hex[:16]}",
                )
        except OSError as exc:
            raise TransientChannelError(f"sandbox unavailable: {exc!r}") from exc
        if self.kind == "sms":
            segments = count_segments(message.text).segments
            return SendResult(
                provider_message_id=provider_id,
                segments=segments,
                cost_minor=segments * SMS_SEGMENT_COST_MINOR,
            )
        return SendResult(provider_message_id=provider_id)

    async def edit(self, provider_message_id: str, message: OutboundMessage) -> SendResult:
        if self.kind == "sms":
            raise PermanentChannelError("SMS cannot be edited")
        async with self.pool.acquire() as conn:
            found = await store.sandbox_edit(conn, self.name, provider_message_id, message.text)
        if not found:
            raise PermanentChannelError("no such message to edit")
        return SendResult(provider_message_id=provider_message_id)

    async def close(self) -> None:
        return None
