"""SQL of the client card's history: a visitor's earlier requests."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from services.callback.store.callbacks import CallbackRow
from services.common.db import Connection


class HistoryEntry(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    site_key: str
    requested_at: dt.datetime
    status: str
    outcome: str | None
    attempts: int
    page_url: str


async def earlier_requests(conn: Connection, callback: CallbackRow, limit: int = 10) -> list[HistoryEntry]:
    """The visitor's earlier requests, recognised by phone (any site of the same organisation) or by
    visitor id (this site). Never another organisation's: its agents must not learn who called there."""
    records = await conn.fetch(
        "select id, site_key, requested_at, status, outcome, attempts, page_url from callbacks"
        " where org_id = $6 and id <> $1 and (phone_hash = $2 or (site_key = $3 and visitor_id = $4))"
        " order by requested_at desc limit $5",
        callback.id,
        callback.phone_hash,
        callback.site_key,
        callback.visitor_id,
        limit,
        callback.org_id,
    )
    return [msgspec.convert(dict(r), HistoryEntry) for r in records]
