"""The one interface every delivery channel (SMS gateways, SMPP, Telegram, MAX, sandbox) implements."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

import msgspec

ChannelKind = Literal["sms", "messenger"]


class OutboundMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One message to one address. `message_id` is stable across retries: the idempotency key."""

    message_id: uuid.UUID
    # E.164 for SMS; the messenger's chat id for a bound messenger.
    address: str
    text: str
    # The operator's registered template id where a gateway requires one ("" otherwise).
    template_id: str = ""
    # SMS sender (alpha name); "" means the channel's configured default.
    sender: str = ""


class SendResult(msgspec.Struct, frozen=True, kw_only=True):
    provider_message_id: str
    segments: int = 1
    # In the smallest currency unit (kopecks), as the provider reports it; 0 when unknown.
    cost_minor: int = 0


class DeliveryReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """A provider's word on a sent message: delivered, or failed with its reason."""

    channel: str
    provider_message_id: str
    status: Literal["delivered", "failed"]
    at: dt.datetime
    reason: str = ""


class InboundUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """What a messenger tells us about a chat: /start <token>, a shared contact, stop, or blocked."""

    channel: str
    kind: Literal["start", "contact", "stop", "blocked", "other"]
    chat_id: str
    token: str = ""
    phone: str = ""  # E.164, only for kind="contact"; must be the sender's own contact


class ChannelError(Exception):
    """A send that did not happen. `transient` errors are retried (after `retry_after_s` if given)."""

    def __init__(self, reason: str, *, transient: bool, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.retry_after_s = retry_after_s


class TransientChannelError(ChannelError):
    """Timeouts, 5xx, 429/throttling, garbage answers: try again later."""

    def __init__(self, reason: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(reason, transient=True, retry_after_s=retry_after_s)


class PermanentChannelError(ChannelError):
    """The provider refused this message for good (bad template, rejected text): don't retry it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, transient=False)


class RecipientUnreachable(PermanentChannelError):
    """The address itself is dead on this channel: invalid number, bot blocked, chat gone."""


ReceiptSink = Callable[[DeliveryReceipt], Awaitable[None]]
UpdateSink = Callable[[InboundUpdate], Awaitable[None]]


class Channel(Protocol):
    """A provider adapter. Implementations hold their own httpx client / SMPP session."""

    name: str  # "sms_ru", "smsc", "smpp", "telegram", "max", "sandbox"
    kind: ChannelKind

    async def send(self, message: OutboundMessage) -> SendResult:
        """Deliver to the provider once. Raises ChannelError subclasses; never anything else."""
        ...

    async def edit(self, provider_message_id: str, message: OutboundMessage) -> SendResult:
        """Replace a sent message's text in place (messengers). SMS channels raise PermanentChannelError."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class BatchChannel(Channel, Protocol):
    """A channel whose provider takes several messages in one request (SMS.ru's per-number texts)."""

    # The most messages one provider request carries.
    batch_limit: int

    async def send_many(self, messages: Sequence[OutboundMessage]) -> list[SendResult | ChannelError]:
        """Deliver each to the provider once, in as few requests as it allows. One outcome per message,
        in order: its result, or its error (a request that failed as a whole is that error for each of
        its messages). Never raises a ChannelError itself."""
        ...
