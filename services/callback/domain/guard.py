"""Bot friction without CAPTCHAs: signed form tokens (minimum fill time) and optional proof of work."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from collections.abc import Callable
from typing import Literal

FORM_TOKEN_MAX_AGE = dt.timedelta(hours=2)
# 144 bits of MAC keep tokens short in URLs and bodies while staying far beyond brute force.
_MAC_BYTES = 18

FormTokenProblem = Literal["form_token_invalid", "form_token_expired", "filled_too_fast", "pow_required"]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_form_token(sign: Callable[[bytes], bytes], site_key: str, now: dt.datetime, salt: str) -> str:
    """`<payload>.<mac>`: the payload names the site and when the form was shown."""
    payload = f"{site_key}|{int(now.timestamp() * 1000)}|{salt}".encode()
    return f"{_b64(payload)}.{_b64(sign(payload)[:_MAC_BYTES])}"


def check_form_token(
    token: str,
    sign: Callable[[bytes], bytes],
    site_key: str,
    now: dt.datetime,
    min_fill_ms: int,
) -> FormTokenProblem | None:
    """None when the token is ours, for this site, fresh, and the form was open long enough."""
    try:
        payload_b64, mac_b64 = token.split(".", 1)
        payload, mac = _unb64(payload_b64), _unb64(mac_b64)
        token_site, issued_ms, _salt = payload.decode().split("|", 2)
        issued = dt.datetime.fromtimestamp(int(issued_ms) / 1000, tz=dt.UTC)
    except (ValueError, UnicodeDecodeError):
        return "form_token_invalid"
    if token_site != site_key or not hmac.compare_digest(sign(payload)[:_MAC_BYTES], mac):
        return "form_token_invalid"
    age = now - issued
    if age > FORM_TOKEN_MAX_AGE or age < -dt.timedelta(seconds=5):
        return "form_token_expired"
    if age < dt.timedelta(milliseconds=min_fill_ms):
        return "filled_too_fast"
    return None


def leading_zero_bits(digest: bytes) -> int:
    bits = 0
    for byte in digest:
        if byte == 0:
            bits += 8
            continue
        return bits + (8 - byte.bit_length())
    return bits


def proof_of_work_ok(form_token: str, nonce: str | None, bits: int) -> bool:
    """sha256(form_token + ":" + nonce) must start with `bits` zero bits (the browser searches nonces)."""
    if bits <= 0:
        return True
    if not nonce or not nonce.isdigit():
        return False
    return leading_zero_bits(hashlib.sha256(f"{form_token}:{nonce}".encode()).digest()) >= bits
