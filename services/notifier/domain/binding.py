"""Messenger binding tokens: a signed, expiring deep-link payload naming the recipient and the channel."""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import uuid
from collections.abc import Callable

# The deep-link payload must fit Telegram's 64 base64url characters: 16 (recipient) + 1 (channel)
# + 4 (expiry, unix minutes) + 16 (signature) bytes = 50 characters.
_CHANNEL_CODES = {"telegram": 1, "max": 2, "sandbox_chat": 3}
_SIGNATURE_BYTES = 16
_PURPOSE = b"notifier/bind/v1\x00"

Signer = Callable[[bytes], bytes]


class BadToken(ValueError):
    """Not a token we issued for this channel, or expired."""


def bindable_channels() -> list[str]:
    return sorted(_CHANNEL_CODES)


def issue_token(sign: Signer, recipient_id: uuid.UUID, channel: str, expires_at: dt.datetime) -> str:
    if channel not in _CHANNEL_CODES:
        raise ValueError(f"cannot bind channel {channel!r}")
    minutes = int(expires_at.timestamp() // 60)
    payload = recipient_id.bytes + bytes([_CHANNEL_CODES[channel]]) + minutes.to_bytes(4, "big")
    signature = sign(_PURPOSE + payload)[:_SIGNATURE_BYTES]
    return base64.urlsafe_b64encode(payload + signature).decode().rstrip("=")


def read_token(sign: Signer, token: str, channel: str, now: dt.datetime) -> uuid.UUID:
    """The recipient a valid token names; BadToken when it is forged, for another channel or expired."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError):
        raise BadToken("not base64url") from None
    if len(raw) != 21 + _SIGNATURE_BYTES:
        raise BadToken("wrong length")
    payload, signature = raw[:21], raw[21:]
    if not hmac.compare_digest(sign(_PURPOSE + payload)[:_SIGNATURE_BYTES], signature):
        raise BadToken("bad signature")
    if payload[16] != _CHANNEL_CODES.get(channel):
        raise BadToken("issued for another channel")
    if int.from_bytes(payload[17:21], "big") * 60 < now.timestamp():
        raise BadToken("expired")
    return uuid.UUID(bytes=payload[:16])


def deep_link(channel: str, bot: str, token: str) -> str:
    """Where the person taps to start the bot with the token (MAX takes the same ?start= payload)."""
    if channel == "telegram":
        return f"https://t.me/{bot}?start={token}"
    if channel == "max":
        return f"https://max.ru/{bot}?start={token}"
    return f"sandbox://{channel}?start={token}"
