"""SQL of Idempotency-Key answers kept for replays (the status token encrypted)."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from services.common.db import Connection

# Context of the encrypted status token kept for Idempotency-Key replays; its row id is the row's `id`.
IDEMPOTENT_TOKEN_CONTEXT = "callback.idempotency_keys.status_token"  # noqa: S105 (a label)


class IdempotentAnswer(msgspec.Struct, kw_only=True, frozen=True):
    id: uuid.UUID
    request_hash: bytes
    status_code: int
    response: dict[str, Any]
    status_token_enc: bytes | None


async def get_idempotent(conn: Connection, site_key: str, key: str) -> IdempotentAnswer | None:
    record = await conn.fetchrow(
        "select id, request_hash, status_code, response, status_token_enc from idempotency_keys"
        " where site_key = $1 and key = $2",
        site_key,
        key,
    )
    return None if record is None else msgspec.convert(dict(record), IdempotentAnswer)


async def put_idempotent(conn: Connection, site_key: str, key: str, answer: IdempotentAnswer) -> None:
    await conn.execute(
        "insert into idempotency_keys"
        " (id, site_key, key, request_hash, status_code, response, status_token_enc)"
        " values ($1, $2, $3, $4, $5, $6, $7)",
        answer.id,
        site_key,
        key,
        answer.request_hash,
        answer.status_code,
        answer.response,
        answer.status_token_enc,
    )
