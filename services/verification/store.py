"""All SQL of the verification service; each function runs on the connection (and transaction) given."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec

from services.common import db
from services.verification.schemas import ACTIVE_STATUSES, TimelineEntry

# DataProtector contexts (table.column): a value copied to another column or row does not decrypt.
MSISDN_CONTEXT = "verification.cases.msisdn"
HOLDER_CONTEXT = "verification.cases.holder"
MSISDN_INDEX = "verification.msisdn"


class CaseRow(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    reason: str
    status: str
    lang: str
    tz: str
    msisdn_enc: bytes | None
    msisdn_index: bytes | None
    msisdn_masked: str
    holder_enc: bytes | None
    opened_by: str
    opened_at: dt.datetime
    deadline: dt.datetime
    suspended_at: dt.datetime | None = None
    closed_at: dt.datetime | None = None
    mismatch_fields: list[str] = []
    purged_at: dt.datetime | None = None


_CASE_COLUMNS = ", ".join(f.name for f in msgspec.structs.fields(CaseRow))


def _case(record: Any) -> CaseRow:
    return msgspec.convert(dict(record), CaseRow)


async def insert_case(conn: db.Connection, row: CaseRow) -> bool:
    """False when the number already has an active case (the unique index decides, race-free)."""
    values = [getattr(row, f.name) for f in msgspec.structs.fields(CaseRow)]
    placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    inserted = await conn.fetchval(
        f"insert into cases ({_CASE_COLUMNS}) values ({placeholders})"
        " on conflict (msisdn_index) where status in ('open', 'mismatch', 'suspended') do nothing"
        " returning true",
        *values,
    )
    return bool(inserted)


async def insert_cases(conn: db.Connection, rows: list[CaseRow]) -> set[uuid.UUID]:
    """insert_case for many rows in one round trip; the ids inserted (a number whose active case a
    concurrent transaction opened first is left out, as insert_case's False)."""
    if not rows:
        return set()
    fields = msgspec.structs.fields(CaseRow)
    placeholders = ", ".join(f"${i}" for i in range(1, len(fields) + 1))
    await conn.executemany(
        f"insert into cases ({_CASE_COLUMNS}) values ({placeholders})"
        " on conflict (msisdn_index) where status in ('open', 'mismatch', 'suspended') do nothing",
        [[getattr(row, f.name) for f in fields] for row in rows],
    )
    found = await conn.fetch("select id from cases where id = any($1::uuid[])", [r.id for r in rows])
    return {r["id"] for r in found}


async def active_case_indexes(conn: db.Connection, msisdn_indexes: list[bytes]) -> set[bytes]:
    """Which of these numbers have an active case (active_case_id for many)."""
    rows = await conn.fetch(
        "select msisdn_index from cases where msisdn_index = any($1::bytea[]) and status = any($2::text[])",
        msisdn_indexes,
        list(ACTIVE_STATUSES),
    )
    return {bytes(r["msisdn_index"]) for r in rows}


async def active_case_id(conn: db.Connection, msisdn_index: bytes) -> uuid.UUID | None:
    found: uuid.UUID | None = await conn.fetchval(
        "select id from cases where msisdn_index = $1 and status = any($2::text[])",
        msisdn_index,
        list(ACTIVE_STATUSES),
    )
    return found


async def get_case(conn: db.Connection, case_id: uuid.UUID, *, lock: bool = False) -> CaseRow | None:
    record = await conn.fetchrow(
        f"select {_CASE_COLUMNS} from cases where id = $1" + (" for update" if lock else ""), case_id
    )
    return None if record is None else _case(record)


async def list_cases(
    conn: db.Connection,
    *,
    status: str | None,
    reason: str | None,
    deadline_from: dt.datetime | None,
    deadline_to: dt.datetime | None,
    msisdn_index: bytes | None,
    limit: int,
    offset: int,
) -> list[CaseRow]:
    records = await conn.fetch(
        f"select {_CASE_COLUMNS} from cases"
        " where ($1::text is null or status = $1) and ($2::text is null or reason = $2)"
        "  and ($3::timestamptz is null or deadline >= $3) and ($4::timestamptz is null or deadline < $4)"
        "  and ($5::bytea is null or msisdn_index = $5)"
        " order by deadline, id limit $6 offset $7",
        status,
        reason,
        deadline_from,
        deadline_to,
        msisdn_index,
        limit,
        offset,
    )
    return [_case(r) for r in records]


async def set_status(
    conn: db.Connection,
    case_id: uuid.UUID,
    status: str,
    *,
    closed_at: dt.datetime | None = None,
    suspended_at: dt.datetime | None = None,
    mismatch_fields: list[str] | None = None,
) -> None:
    """Moves the case; closed_at/suspended_at/mismatch_fields are set when given, kept otherwise."""
    await conn.execute(
        "update cases set status = $2, closed_at = coalesce($3, closed_at),"
        " suspended_at = coalesce($4, suspended_at), mismatch_fields = coalesce($5, mismatch_fields)"
        " where id = $1",
        case_id,
        status,
        closed_at,
        suspended_at,
        mismatch_fields,
    )


async def set_deadline(conn: db.Connection, case_id: uuid.UUID, deadline: dt.datetime) -> None:
    await conn.execute("update cases set deadline = $2 where id = $1", case_id, deadline)


async def purge_personal_data(conn: db.Connection, case_id: uuid.UUID, at: dt.datetime) -> bool:
    """Erase the number and the holder's data of a closed case; the outcome and timeline stay."""
    done = await conn.fetchval(
        "update cases set msisdn_enc = null, msisdn_index = null, holder_enc = null, purged_at = $2"
        " where id = $1 and closed_at is not null and purged_at is null returning true",
        case_id,
        at,
    )
    if done:
        # Sign-in rows hold nothing personal, but nothing about a purged case needs them any more.
        await conn.execute("update sign_ins set nonce = '', code_verifier = '' where case_id = $1", case_id)
    return bool(done)


# --- links and sign-ins ---------------------------------------------------------------------------------


async def insert_link(conn: db.Connection, link_id: str, case_id: uuid.UUID, at: dt.datetime) -> None:
    await conn.execute(
        "insert into links (id, case_id, created_at) values ($1, $2, $3)", link_id, case_id, at
    )


async def insert_links(conn: db.Connection, links: list[tuple[str, uuid.UUID, dt.datetime]]) -> None:
    """insert_link for many (link id, case id, at) in one round trip."""
    await conn.executemany("insert into links (id, case_id, created_at) values ($1, $2, $3)", links)


class LinkRow(msgspec.Struct, kw_only=True):
    id: str
    case_id: uuid.UUID
    created_at: dt.datetime
    spent_at: dt.datetime | None


async def get_link(conn: db.Connection, link_id: str) -> LinkRow | None:
    record = await conn.fetchrow("select id, case_id, created_at, spent_at from links where id = $1", link_id)
    return None if record is None else msgspec.convert(dict(record), LinkRow)


async def current_link(conn: db.Connection, case_id: uuid.UUID) -> LinkRow | None:
    # A re-issue spends every earlier link, so the one unspent link is the current one even when two
    # share a timestamp (a clock standing still); otherwise the newest.
    record = await conn.fetchrow(
        "select id, case_id, created_at, spent_at from links where case_id = $1"
        " order by spent_at is null desc, created_at desc limit 1",
        case_id,
    )
    return None if record is None else msgspec.convert(dict(record), LinkRow)


async def spend_link(conn: db.Connection, link_id: str, at: dt.datetime) -> None:
    await conn.execute("update links set spent_at = $2 where id = $1 and spent_at is null", link_id, at)


class SignInRow(msgspec.Struct, kw_only=True):
    state: str
    case_id: uuid.UUID
    link_id: str
    provider: str
    nonce: str
    code_verifier: str
    browser_hash: bytes
    created_at: dt.datetime
    expires_at: dt.datetime
    used_at: dt.datetime | None = None
    outcome: str | None = None


_SIGN_IN_COLUMNS = ", ".join(f.name for f in msgspec.structs.fields(SignInRow))


async def insert_sign_in(conn: db.Connection, row: SignInRow) -> None:
    values = [getattr(row, f.name) for f in msgspec.structs.fields(SignInRow)]
    placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    await conn.execute(f"insert into sign_ins ({_SIGN_IN_COLUMNS}) values ({placeholders})", *values)


async def take_sign_in(conn: db.Connection, state: str, at: dt.datetime) -> tuple[SignInRow | None, str]:
    """Use a state once: (the row, "ok"), or (row or None, "unknown" | "replayed" | "expired").

    The PKCE verifier and nonce are handed out this once and cleared in the same statement."""
    record = await conn.fetchrow(
        f"update sign_ins s set used_at = $2, nonce = '', code_verifier = ''"
        f" from (select {_SIGN_IN_COLUMNS} from sign_ins where state = $1 for update) old"
        f" where s.state = old.state and old.used_at is null and old.expires_at > $2"
        f" returning {', '.join('old.' + f.name for f in msgspec.structs.fields(SignInRow))}",
        state,
        at,
    )
    if record is not None:
        return msgspec.convert(dict(record), SignInRow), "ok"
    existing = await conn.fetchrow(f"select {_SIGN_IN_COLUMNS} from sign_ins where state = $1", state)
    if existing is None:
        return None, "unknown"
    row = msgspec.convert(dict(existing), SignInRow)
    return row, "replayed" if row.used_at is not None else "expired"


async def set_sign_in_outcome(conn: db.Connection, state: str, outcome: str) -> None:
    await conn.execute("update sign_ins set outcome = $2 where state = $1", state, outcome)


async def last_outcome(conn: db.Connection, link_id: str) -> str | None:
    outcome: str | None = await conn.fetchval(
        "select outcome from sign_ins where link_id = $1 and outcome is not null order by seq desc limit 1",
        link_id,
    )
    return outcome


# --- timeline (audit) -----------------------------------------------------------------------------------


async def add_timeline(
    conn: db.Connection,
    case_id: uuid.UUID,
    at: dt.datetime,
    kind: str,
    actor: str,
    *,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        "insert into case_timeline (case_id, at, kind, actor, detail) values ($1, $2, $3, $4, $5)",
        case_id,
        at,
        kind,
        actor,
        detail or {},
    )


async def add_timeline_rows(
    conn: db.Connection, rows: list[tuple[uuid.UUID, dt.datetime, str, str, dict[str, Any]]]
) -> None:
    """add_timeline for many (case id, at, kind, actor, detail) in one round trip, in their order."""
    await conn.executemany(
        "insert into case_timeline (case_id, at, kind, actor, detail) values ($1, $2, $3, $4, $5)", rows
    )


async def add_timeline_many(
    conn: db.Connection,
    case_ids: list[uuid.UUID],
    at: dt.datetime,
    kind: str,
    actor: str,
    *,
    detail: dict[str, Any],
) -> None:
    await conn.executemany(
        "insert into case_timeline (case_id, at, kind, actor, detail) values ($1, $2, $3, $4, $5)",
        [(case_id, at, kind, actor, detail) for case_id in case_ids],
    )


async def timeline(conn: db.Connection, case_id: uuid.UUID) -> list[TimelineEntry]:
    records = await conn.fetch(
        "select at, kind, actor, detail from case_timeline where case_id = $1 order by id", case_id
    )
    return [msgspec.convert(dict(r), TimelineEntry) for r in records]


# --- idempotency ----------------------------------------------------------------------------------------


async def idempotent_case(conn: db.Connection, key: str) -> tuple[bytes, uuid.UUID] | None:
    record = await conn.fetchrow("select request_hash, case_id from idempotency_keys where key = $1", key)
    return None if record is None else (bytes(record["request_hash"]), record["case_id"])


async def remember_idempotency_key(
    conn: db.Connection, key: str, request_hash: bytes, case_id: uuid.UUID
) -> None:
    await conn.execute(
        "insert into idempotency_keys (key, request_hash, case_id) values ($1, $2, $3)"
        " on conflict (key) do nothing",
        key,
        request_hash,
        case_id,
    )
