"""SQL of aliases: repeat requests that joined a pending callback with an id and token of their own."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from services.common.db import Connection


class AliasRow(msgspec.Struct, kw_only=True):
    """A repeat request that joined a pending callback: its own id and token, no control over it."""

    id: uuid.UUID
    callback_id: uuid.UUID
    visitor_tz: str
    lang: str
    withdrawn_at: dt.datetime | None


async def alias_by_token(conn: Connection, alias_id: uuid.UUID, token_hash: bytes) -> AliasRow | None:
    record = await conn.fetchrow(
        "select id, callback_id, visitor_tz, lang, withdrawn_at from callback_aliases"
        " where id = $1 and token_hash = $2",
        alias_id,
        token_hash,
    )
    return None if record is None else msgspec.convert(dict(record), AliasRow)


async def withdraw_alias(conn: Connection, alias_id: uuid.UUID, now: dt.datetime) -> bool:
    """True when this call withdrew it; False when it was withdrawn already."""
    done = await conn.fetchval(
        "update callback_aliases set withdrawn_at = $2 where id = $1 and withdrawn_at is null returning true",
        alias_id,
        now,
    )
    return bool(done)
