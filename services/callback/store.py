"""All SQL of the callback service. Parameters are always bound; callers own the transaction."""

from __future__ import annotations

import datetime as dt
import uuid
import zlib
from typing import Any

import msgspec

from services.callback.schemas import Site, SiteSettings
from services.common.db import Connection

PENDING_STATES = ("requested", "scheduled", "dialing", "connected")


class CallbackRow(msgspec.Struct, kw_only=True):
    """A callbacks row as the service layer uses it (the phone stays encrypted here)."""

    id: uuid.UUID
    site_key: str
    queue: str
    phone_enc: bytes
    phone_hash: bytes
    phone_masked: str
    visitor_id: str | None
    visitor_tz: str
    lang: str
    not_before: dt.time | None
    status: str
    requested_at: dt.datetime
    due_at: dt.datetime
    promise_kind: str
    promised_earliest: dt.datetime
    promised_latest: dt.datetime
    attempts: int
    max_attempts: int
    outcome: str | None
    first_dial_at: dt.datetime | None
    connected_at: dt.datetime | None
    ended_at: dt.datetime | None
    page_url: str
    referrer: str
    utm: dict[str, str]
    consent_version: str | None
    merged_count: int
    updated_at: dt.datetime


_CALLBACK_COLUMNS = ", ".join(f.name for f in msgspec.structs.fields(CallbackRow))


def _row(record: Any) -> CallbackRow:
    return msgspec.convert(dict(record), CallbackRow)


# --- sites --------------------------------------------------------------------------------------------


async def upsert_site(conn: Connection, site_key: str, settings: SiteSettings) -> tuple[Site, bool]:
    record = await conn.fetchrow(
        "insert into sites (site_key, settings) values ($1, $2)"
        " on conflict (site_key) do update set settings = excluded.settings, updated_at = now()"
        " returning updated_at, (xmax = 0) as created",
        site_key,
        msgspec.to_builtins(settings),
    )
    assert record is not None
    return Site(site_key=site_key, settings=settings, updated_at=record["updated_at"]), bool(
        record["created"]
    )


async def get_site(conn: Connection, site_key: str) -> Site | None:
    record = await conn.fetchrow(
        "select site_key, settings, updated_at from sites where site_key = $1", site_key
    )
    return None if record is None else msgspec.convert(dict(record), Site)


async def list_sites(conn: Connection) -> list[Site]:
    records = await conn.fetch("select site_key, settings, updated_at from sites order by site_key")
    return [msgspec.convert(dict(r), Site) for r in records]


# --- budgets and guards -------------------------------------------------------------------------------


async def lock(conn: Connection, *parts: str) -> None:
    """Serialise concurrent requests for the same key (site+phone, site+ip) until the transaction ends."""
    await conn.execute(
        "select pg_advisory_xact_lock($1, $2)", 1, zlib.crc32("|".join(parts).encode()) - 2**31
    )


async def recent_by_ip(
    conn: Connection, site_key: str, ip_hash: bytes, since: dt.datetime
) -> tuple[int, dt.datetime | None]:
    record = await conn.fetchrow(
        "select count(*) as n, min(requested_at) as oldest from callbacks"
        " where site_key = $1 and client_ip_hash = $2 and requested_at > $3",
        site_key,
        ip_hash,
        since,
    )
    assert record is not None
    return int(record["n"]), record["oldest"]


async def recent_by_phone(
    conn: Connection, phone_hash: bytes, since: dt.datetime
) -> tuple[int, dt.datetime | None]:
    """Requests for this phone on any site (merges count too): no one is called endlessly."""
    record = await conn.fetchrow(
        "select coalesce(sum(1 + merged_count), 0) as n, min(requested_at) as oldest from callbacks"
        " where phone_hash = $1 and requested_at > $2",
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


async def get_idempotent(conn: Connection, site_key: str, key: str) -> tuple[bytes, int, Any] | None:
    record = await conn.fetchrow(
        "select request_hash, status_code, response from idempotency_keys where site_key = $1 and key = $2",
        site_key,
        key,
    )
    return None if record is None else (record["request_hash"], record["status_code"], record["response"])


async def put_idempotent(
    conn: Connection, site_key: str, key: str, *, request_hash: bytes, status_code: int, response: Any
) -> None:
    await conn.execute(
        "insert into idempotency_keys (site_key, key, request_hash, status_code, response)"
        " values ($1, $2, $3, $4, $5)",
        site_key,
        key,
        request_hash,
        status_code,
        response,
    )


# --- callbacks ----------------------------------------------------------------------------------------


async def pending_for_phone(conn: Connection, site_key: str, phone_hash: bytes) -> CallbackRow | None:
    record = await conn.fetchrow(
        f"select {_CALLBACK_COLUMNS} from callbacks"
        " where site_key = $1 and phone_hash = $2 and status = any($3::text[])",
        site_key,
        phone_hash,
        list(PENDING_STATES),
    )
    return None if record is None else _row(record)


async def insert_callback(conn: Connection, row: CallbackRow, *, client_ip_hash: bytes | None) -> None:
    values = msgspec.structs.asdict(row)
    columns = list(values)
    await conn.execute(
        f"insert into callbacks ({', '.join(columns)}, client_ip_hash, consented_at)"
        f" values ({', '.join(f'${i}' for i in range(1, len(columns) + 1))}, ${len(columns) + 1},"
        f" case when ${len(columns) + 2}::text is null then null else now() end)",
        *values.values(),
        client_ip_hash,
        row.consent_version,
    )


async def mark_merged(conn: Connection, callback_id: uuid.UUID) -> None:
    await conn.execute(
        "update callbacks set merged_count = merged_count + 1, updated_at = now() where id = $1", callback_id
    )


async def add_token(conn: Connection, callback_id: uuid.UUID, token_hash: bytes) -> None:
    await conn.execute(
        "insert into callback_tokens (token_hash, callback_id) values ($1, $2)", token_hash, callback_id
    )


async def callback_by_token(
    conn: Connection, callback_id: uuid.UUID, token_hash: bytes
) -> CallbackRow | None:
    record = await conn.fetchrow(
        f"select {', '.join('c.' + c.strip() for c in _CALLBACK_COLUMNS.split(','))} from callbacks c"
        " join callback_tokens t on t.callback_id = c.id where c.id = $1 and t.token_hash = $2",
        callback_id,
        token_hash,
    )
    return None if record is None else _row(record)


async def get_callback(
    conn: Connection, callback_id: uuid.UUID, *, for_update: bool = False
) -> CallbackRow | None:
    record = await conn.fetchrow(
        f"select {_CALLBACK_COLUMNS} from callbacks where id = $1" + (" for update" if for_update else ""),
        callback_id,
    )
    return None if record is None else _row(record)


async def site_of_callback(conn: Connection, callback_id: uuid.UUID) -> str | None:
    value = await conn.fetchval("select site_key from callbacks where id = $1", callback_id)
    return None if value is None else str(value)


async def update_callback(conn: Connection, callback_id: uuid.UUID, **changes: Any) -> None:
    """Set columns by name (names come from our code, never from input)."""
    allowed = {f.name for f in msgspec.structs.fields(CallbackRow)}
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"not callback columns: {sorted(unknown)}")
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=2))
    await conn.execute(
        f"update callbacks set {assignments}, updated_at = now() where id = $1",
        callback_id,
        *changes.values(),
    )


async def record_promise(
    conn: Connection,
    callback_id: uuid.UUID,
    *,
    given_at: dt.datetime,
    kind: str,
    reason: str,
    earliest: dt.datetime,
    latest: dt.datetime,
    snapshot: dict[str, Any],
) -> None:
    await conn.execute(
        "insert into promises (callback_id, given_at, kind, reason, earliest, latest, snapshot)"
        " values ($1, $2, $3, $4, $5, $6, $7)",
        callback_id,
        given_at,
        kind,
        reason,
        earliest,
        latest,
        snapshot,
    )


async def overdue(conn: Connection, latest_before: dt.datetime) -> list[tuple[uuid.UUID, str]]:
    """Pending, never-dialed requests whose promise ended before `latest_before` (locked for the caller)."""
    records = await conn.fetch(
        "select id, site_key from callbacks where status in ('requested', 'scheduled')"
        " and promised_latest < $1 for update skip locked",
        latest_before,
    )
    return [(r["id"], r["site_key"]) for r in records]


# --- live queue state for the promise engine -----------------------------------------------------------


class QueueFigures(msgspec.Struct, kw_only=True):
    waiting_due: int  # pending requests due now (they are ahead of a new ASAP request)
    busy_elapsed_s: tuple[float, ...]  # per call in progress: seconds since it was dialed
    handle_times_s: tuple[float, ...]  # recent completed calls, newest first


async def queue_figures(conn: Connection, queue: str, now: dt.datetime, history: int = 200) -> QueueFigures:
    waiting = await conn.fetchval(
        "select count(*) from callbacks where queue = $1 and status in ('requested', 'scheduled')"
        " and due_at <= $2",
        queue,
        now,
    )
    busy = await conn.fetch(
        "select extract(epoch from ($2 - coalesce(connected_at, updated_at)))::float8 as elapsed"
        " from callbacks where queue = $1 and status in ('dialing', 'connected')",
        queue,
        now,
    )
    handled = await conn.fetch(
        "select extract(epoch from (ended_at - first_dial_at))::float8 as seconds from callbacks"
        " where queue = $1 and status = 'completed' and first_dial_at is not null"
        " and ended_at > first_dial_at"
        " order by ended_at desc limit $2",
        queue,
        history,
    )
    return QueueFigures(
        waiting_due=int(waiting or 0),
        busy_elapsed_s=tuple(max(float(r["elapsed"]), 0.0) for r in busy),
        handle_times_s=tuple(float(r["seconds"]) for r in handled),
    )
