"""Idempotency-Key answers kept for replays (status token encrypted); store/intake.py writes them."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

# Context of the encrypted status token kept for Idempotency-Key replays; its row id is the row's `id`.
IDEMPOTENT_TOKEN_CONTEXT = "callback.idempotency_keys.status_token"  # noqa: S105 (a label)


class IdempotentAnswer(msgspec.Struct, kw_only=True, frozen=True):
    id: uuid.UUID
    request_hash: bytes
    status_code: int
    response: dict[str, Any]
    status_token_enc: bytes | None
