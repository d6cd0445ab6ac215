"""Short link tokens: a random id plus a truncated keyed signature, base64url (14 characters)."""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable

# 48 random bits name the link (looked up in the database); 32 bits of HMAC let a forged or mistyped
# token be told apart without a lookup. Guessing a live link needs both: 2^80 tries.
ID_BYTES = 6
TAG_BYTES = 4
TOKEN_CHARS = 14  # ceil((6 + 4) * 8 / 6)

Signer = Callable[[bytes], bytes]


def new_link_id() -> bytes:
    return secrets.token_bytes(ID_BYTES)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def link_id_text(raw_id: bytes) -> str:
    """The id as stored (the primary key of `links`)."""
    return _b64(raw_id)


def make_token(raw_id: bytes, sign: Signer) -> str:
    return _b64(raw_id + sign(b"verification-link\x00" + raw_id)[:TAG_BYTES])


def read_token(token: str, sign: Signer) -> str | None:
    """The stored link id when the token is well-formed and its signature holds, else None (forged)."""
    if len(token) != TOKEN_CHARS or not token.isascii():
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "==")
    except (binascii.Error, ValueError):
        return None
    if len(raw) != ID_BYTES + TAG_BYTES or _b64(raw) != token:
        return None
    raw_id, tag = raw[:ID_BYTES], raw[ID_BYTES:]
    expected = sign(b"verification-link\x00" + raw_id)[:TAG_BYTES]
    if not secrets.compare_digest(tag, expected):
        return None
    return link_id_text(raw_id)


def link_url(base: str, token: str) -> str:
    """`base` is the short public prefix, e.g. "https://mf.ru/v/"."""
    return base.rstrip("/") + "/" + token


def token_for(link_id: str, sign: Signer) -> str:
    """The token of a stored link id (to show the link again in the back office)."""
    return make_token(base64.urlsafe_b64decode(link_id + "=="), sign)
