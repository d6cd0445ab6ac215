"""The sandbox channel's inbox."""

from __future__ import annotations

import uuid
from typing import Any

from services.common import db

# --- the sandbox channel's inbox ------------------------------------------------------------------------


async def sandbox_submit(
    conn: db.Connection, key: uuid.UUID, *, channel: str, address: str, body: str, provider_message_id: str
) -> str:
    """Store a message once per idempotency key; a resubmission only counts up. Returns its provider id."""
    value: str = await conn.fetchval(
        "insert into sandbox_messages (idempotency_key, channel, address, body, provider_message_id)"
        " values ($1, $2, $3, $4, $5) on conflict (idempotency_key) do update"
        "  set submissions = sandbox_messages.submissions + 1 returning provider_message_id",
        key,
        channel,
        address,
        body,
        provider_message_id,
    )
    return value


async def sandbox_edit(conn: db.Connection, channel: str, provider_message_id: str, body: str) -> bool:
    result = await conn.execute(
        "update sandbox_messages set body = $3, edited_at = now()"
        " where channel = $1 and provider_message_id = $2",
        channel,
        provider_message_id,
        body,
    )
    return result.endswith(" 1")


async def sandbox_set_status(conn: db.Connection, provider_message_id: str, status: str) -> str | None:
    """Record a receipt a person clicked; returns the message's channel (None if unknown)."""
    value: str | None = await conn.fetchval(
        "update sandbox_messages set status = $2, receipt_at = now() where provider_message_id = $1"
        " returning channel",
        provider_message_id,
        status,
    )
    return value


async def sandbox_messages(conn: db.Connection, address: str | None = None) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "select id, idempotency_key, channel, address, body, provider_message_id, submissions, status,"
        " sent_at, edited_at, receipt_at from sandbox_messages"
        " where $1::text is null or address = $1 order by id",
        address,
    )
    return [dict(r) for r in rows]
