"""SQL of the intake's guards: advisory locks, request budgets per network/phone/site, spent form tokens."""

from __future__ import annotations

import datetime as dt
import zlib

from services.common.db import Connection


async def lock(conn: Connection, *parts: str) -> None:
    """Serialise concurrent requests for the same key (site+phone, site+ip) until the transaction ends."""
    await conn.execute(
        "select pg_advisory_xact_lock($1, $2)", 1, zlib.crc32("|".join(parts).encode()) - 2**31
    )


async def recent_by_ip(
    conn: Connection, site_key: str, ip_hash: bytes, since: dt.datetime
) -> tuple[int, dt.datetime | None]:
    """Requests from this network, repeats that joined a pending request (aliases) included."""
    record = await conn.fetchrow(
        "select count(*) as n, min(at) as oldest from ("
        " select requested_at as at from callbacks"
        " where site_key = $1 and client_ip_hash = $2 and requested_at > $3"
        " union all select created_at from callback_aliases"
        " where site_key = $1 and client_ip_hash = $2 and created_at > $3) recent",
        site_key,
        ip_hash,
        since,
    )
    assert record is not None
    return int(record["n"]), record["oldest"]


async def recent_by_phone(
    conn: Connection, org_id: str, phone_hash: bytes, since: dt.datetime
) -> tuple[int, dt.datetime | None]:
    """Requests for this phone on any of the organisation's sites (merges count too): no one is called
    endlessly. Another organisation's requests stay out: a refusal must not reveal them."""
    record = await conn.fetchrow(
        "select coalesce(sum(1 + merged_count), 0) as n, min(requested_at) as oldest from callbacks"
        " where org_id = $1 and phone_hash = $2 and requested_at > $3",
        org_id,
        phone_hash,
        since,
    )
    assert record is not None
    return int(record["n"]), record["oldest"]


async def count_site_since(conn: Connection, site_key: str, since: dt.datetime) -> int:
    value = await conn.fetchval(
        "select count(*) from callbacks where site_key = $1 and requested_at >= $2", site_key, since
    )
    return int(value or 0)


async def spend_form_token(conn: Connection, token_hash: bytes) -> bool:
    """True the first time a form token is used; afterwards it is spent."""
    spent = await conn.fetchval(
        "insert into spent_form_tokens (token_hash) values ($1) on conflict do nothing returning true",
        token_hash,
    )
    return bool(spent)
