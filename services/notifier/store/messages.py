"""Messages, their attempts, early receipts and the timeline (the message log)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from services.common import db, outbox
from services.common.events import Event
from services.notifier.store.rows import (
    PENDING_STATES,
    AttemptRow,
    MessageRow,
    NewAttempt,
    TimelineEntry,
    TimelineNote,
    as_row,
)

# --- messages -------------------------------------------------------------------------------------------


async def insert_message(conn: db.Connection, **values: Any) -> MessageRow | None:
    """The new row; None when (event_id, recipient_id, purpose) is already there: the same notice never
    twice."""
    columns = list(values)
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    row: MessageRow | None = as_row(
        MessageRow,
        await conn.fetchrow(
            f"insert into messages ({', '.join(columns)}) values ({placeholders})"
            " on conflict (event_id, recipient_id, purpose) do nothing returning *",
            *values.values(),
        ),
    )
    return row


# Column -> PostgreSQL array type for insert_messages (channel_order travels as comma-joined text: unnest
# cannot yield one array per row from a two-dimensional one).
_MESSAGE_COLUMNS: dict[str, str] = {
    "id": "uuid",
    "event_id": "uuid",
    "event_type": "text",
    "occurred_at": "timestamptz",
    "recipient_id": "uuid",
    "tenant": "text",
    "purpose": "text",
    "category": "text",
    "thread_key": "text",
    "template": "text",
    "template_version": "int",
    "template_id": "text",
    "lang": "text",
    "body": "text",
    "urgent": "bool",
    "legally_required": "bool",
    "edit_in_place": "bool",
    "channel_order": "text",
    "state": "text",
    "send_at": "timestamptz",
    "expires_at": "timestamptz",
    "deadline": "timestamptz",
    "timing_rule": "text",
}
_INSERT_MESSAGES = (
    f"insert into messages ({', '.join(_MESSAGE_COLUMNS)}) select "
    + ", ".join(
        "string_to_array(channel_order, ',')" if name == "channel_order" else name
        for name in _MESSAGE_COLUMNS
    )
    + " from unnest("
    + ", ".join(f"${i}::{kind}[]" for i, kind in enumerate(_MESSAGE_COLUMNS.values(), start=1))
    + f") as v ({', '.join(_MESSAGE_COLUMNS)})"
    " on conflict (event_id, recipient_id, purpose) do nothing returning *"
)


async def insert_messages(conn: db.Connection, rows: Sequence[dict[str, Any]]) -> dict[uuid.UUID, MessageRow]:
    """`insert_message` for several rows (each with every column of _MESSAGE_COLUMNS) in one statement;
    the new rows by id (a row whose (event_id, recipient_id, purpose) exists is not among them)."""
    columns = [
        [",".join(row[name]) if name == "channel_order" else row[name] for row in rows]
        for name in _MESSAGE_COLUMNS
    ]
    records = await conn.fetch(_INSERT_MESSAGES, *columns)
    return {r["id"]: as_row(MessageRow, r) for r in records}


async def get_message(conn: db.Connection, message_id: uuid.UUID, *, lock: bool = False) -> MessageRow | None:
    sql = "select * from messages where id = $1" + (" for update" if lock else "")
    row: MessageRow | None = as_row(MessageRow, await conn.fetchrow(sql, message_id))
    return row


async def lock_messages(conn: db.Connection, message_ids: list[uuid.UUID]) -> dict[uuid.UUID, MessageRow]:
    """Several messages at once, locked in id order (two batches never wait on each other in a circle)."""
    rows = await conn.fetch(
        "select * from messages where id = any($1::uuid[]) order by id for update", message_ids
    )
    return {r["id"]: as_row(MessageRow, r) for r in rows}


async def set_message_state(conn: db.Connection, message_id: uuid.UUID, state: str, **extra: Any) -> None:
    sets = ["state = $2", "updated_at = now()"]
    args: list[Any] = [message_id, state]
    for name, value in extra.items():
        if name not in ("send_at", "timing_rule"):
            raise ValueError(f"not a settable message column: {name}")
        args.append(value)
        sets.append(f"{name} = ${len(args)}")
    await conn.execute(f"update messages set {', '.join(sets)} where id = $1", *args)


async def thread_of(conn: db.Connection, thread_key: str, other_than: uuid.UUID) -> list[asyncpg.Record]:
    """The thread's other messages (id, occurred_at, state): one read for supersede's questions."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "select id, occurred_at, state from messages where thread_key = $1 and id <> $2",
        thread_key,
        other_than,
    )
    return rows


async def supersede_older(
    conn: db.Connection, thread_key: str, newer: uuid.UUID, occurred_at: dt.datetime
) -> list[uuid.UUID]:
    """Older messages of the thread not yet at a provider become 'superseded'; returns their ids."""
    rows = await conn.fetch(
        "update messages set state = 'superseded', updated_at = now()"
        " where thread_key = $1 and id <> $2 and occurred_at <= $3 and state = any($4::text[])"
        " returning id",
        thread_key,
        newer,
        occurred_at,
        list(PENDING_STATES),
    )
    return [r["id"] for r in rows]


async def cancel_ready_attempts(conn: db.Connection, message_ids: list[uuid.UUID]) -> int:
    result = await conn.execute(
        "update attempts set state = 'cancelled', updated_at = now()"
        " where message_id = any($1::uuid[]) and state = 'ready'",
        message_ids,
    )
    return int(result.split()[-1])


async def editable_in_thread(
    conn: db.Connection, thread_key: str, newer: uuid.UUID, channel: str, chat_id: str
) -> str | None:
    """The provider id of the thread's latest message sent to this chat (to edit in place), if any."""
    value: str | None = await conn.fetchval(
        "select a.provider_message_id from attempts a join messages m on m.id = a.message_id"
        " where m.thread_key = $1 and m.id <> $2 and a.channel = $3 and a.address = $4"
        "  and a.state in ('sent', 'delivered') and a.provider_message_id is not null"
        " order by m.occurred_at desc, a.sent_at desc limit 1",
        thread_key,
        newer,
        channel,
        chat_id,
    )
    return value


# --- attempts -------------------------------------------------------------------------------------------


async def insert_attempt(
    conn: db.Connection,
    *,
    message_id: uuid.UUID,
    channel: str,
    kind: str,
    address: str,
    not_before: dt.datetime,
    edit_of: str = "",
    is_fallback: bool = False,
) -> uuid.UUID | None:
    """None when this message already has an attempt on this channel: one provider call per channel."""
    value: uuid.UUID | None = await conn.fetchval(
        "insert into attempts (id, message_id, channel, kind, address, edit_of, is_fallback, state,"
        " not_before) values ($1, $2, $3, $4, $5, $6, $7, 'ready', $8)"
        " on conflict (message_id, channel) do nothing returning id",
        uuid.uuid4(),
        message_id,
        channel,
        kind,
        address,
        edit_of,
        is_fallback,
        not_before,
    )
    return value


async def start_attempt(
    conn: db.Connection,
    *,
    message_id: uuid.UUID,
    channel: str,
    kind: str,
    address: str,
    not_before: dt.datetime,
    edit_of: str = "",
    is_fallback: bool = False,
) -> uuid.UUID | None:
    """`insert_attempt`, and a pending message becomes 'sending' in the same statement (one round trip)."""
    value: uuid.UUID | None = await conn.fetchval(
        "with attempt as (insert into attempts (id, message_id, channel, kind, address, edit_of, is_fallback,"
        "  state, not_before) values ($1, $2, $3, $4, $5, $6, $7, 'ready', $8)"
        "  on conflict (message_id, channel) do nothing returning id),"
        " sending as (update messages set state = 'sending', updated_at = now()"
        "  where id = $2 and state = any($9::text[]) and exists (select 1 from attempt))"
        " select id from attempt",
        uuid.uuid4(),
        message_id,
        channel,
        kind,
        address,
        edit_of,
        is_fallback,
        not_before,
        list(PENDING_STATES),
    )
    return value


async def start_attempts(conn: db.Connection, attempts: Sequence[NewAttempt]) -> None:
    """`start_attempt` for several new messages' first attempts in one statement."""
    if not attempts:
        return
    await conn.execute(
        "with attempt as (insert into attempts (id, message_id, channel, kind, address, edit_of, is_fallback,"
        "  state, not_before) select id, message_id, channel, kind, address, '', false, 'ready', $6"
        "  from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[])"
        "   as a (id, message_id, channel, kind, address)"
        "  on conflict (message_id, channel) do nothing returning message_id)"
        " update messages set state = 'sending', updated_at = now()"
        " where id in (select message_id from attempt) and state = any($7::text[])",
        [uuid.uuid4() for _ in attempts],
        [a.message_id for a in attempts],
        [a.channel for a in attempts],
        [a.kind for a in attempts],
        [a.address for a in attempts],
        attempts[0].not_before,
        list(PENDING_STATES),
    )


async def attempts_of(conn: db.Connection, message_id: uuid.UUID) -> list[AttemptRow]:
    rows = await conn.fetch("select * from attempts where message_id = $1 order by created_at", message_id)
    return [as_row(AttemptRow, r) for r in rows]


async def claim_ready(
    conn: db.Connection, *, now: dt.datetime, lease_until: dt.datetime, token: uuid.UUID, limit: int
) -> list[AttemptRow]:
    """Lease due attempts (SKIP LOCKED: replicas share the work); each call is 'in flight until' the lease."""
    rows = await conn.fetch(
        "with due as (select id from attempts where state = 'ready' and not_before <= $1"
        "  order by not_before limit $2 for update skip locked)"
        " update attempts a set state = 'in_flight', lease_until = $3, claim_token = $4,"
        "  tries = a.tries + 1, updated_at = now()"
        " from due where a.id = due.id returning a.*",
        now,
        limit,
        lease_until,
        token,
    )
    return [as_row(AttemptRow, r) for r in rows]


async def settle_attempt(
    conn: db.Connection,
    attempt_id: uuid.UUID,
    token: uuid.UUID,
    *,
    state: str,
    at: dt.datetime,
    provider_message_id: str | None = None,
    segments: int = 0,
    cost_minor: int = 0,
    error: str | None = None,
    not_before: dt.datetime | None = None,
) -> bool:
    """Record a provider call's outcome under our claim (also after the sweeper called it 'unknown')."""
    result = await conn.execute(
        "update attempts set state = $3, lease_until = null,"
        "  provider_message_id = coalesce($4, provider_message_id), segments = $5, cost_minor = $6,"
        "  error = $7, not_before = coalesce($8, not_before),"
        "  sent_at = case when $3 = 'sent' then $9 else sent_at end, updated_at = now()"
        " where id = $1 and claim_token = $2 and state in ('in_flight', 'unknown')",
        attempt_id,
        token,
        state,
        provider_message_id,
        segments,
        cost_minor,
        error,
        not_before,
        at,
    )
    return result.endswith(" 1")


async def set_attempt_state(
    conn: db.Connection, attempt_id: uuid.UUID, state: str, error: str | None = None
) -> None:
    await conn.execute(
        "update attempts set state = $2, error = coalesce($3, error), updated_at = now() where id = $1",
        attempt_id,
        state,
        error,
    )


async def expire_leases(conn: db.Connection, now: dt.datetime) -> list[AttemptRow]:
    """In-flight attempts whose sender vanished (its lease ran out): their outcome is unknown."""
    rows = await conn.fetch(
        "update attempts set state = 'unknown', updated_at = now()"
        " where state = 'in_flight' and lease_until < $1 returning *",
        now,
    )
    return [as_row(AttemptRow, r) for r in rows]


async def attempts_by_provider_id(
    conn: db.Connection, channel: str, provider_message_id: str
) -> list[AttemptRow]:
    rows = await conn.fetch(
        "select * from attempts where channel = $1 and provider_message_id = $2"
        " order by created_at for update",
        channel,
        provider_message_id,
    )
    return [as_row(AttemptRow, r) for r in rows]


async def lock_provider_message(conn: db.Connection, channel: str, provider_message_id: str) -> None:
    """Serialise a send's record and a receipt for it: one of them always sees the other's commit."""
    await conn.execute(
        "select pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 0))", channel, provider_message_id
    )


async def lock_provider_messages(conn: db.Connection, keys: Sequence[tuple[str, str]]) -> None:
    """`lock_provider_message` for several (channel, provider id) at once, in a fixed order (two
    transactions taking some of the same never wait on each other in a circle)."""
    await conn.execute(
        "select pg_advisory_xact_lock(k) from (select hashtextextended(c || ':' || p, 0) as k"
        "  from unnest($1::text[], $2::text[]) as t (c, p) order by 1) as keys",
        [channel for channel, _ in keys],
        [provider_id for _, provider_id in keys],
    )


async def settle_sent(
    conn: db.Connection,
    token: uuid.UUID,
    sent: Sequence[tuple[uuid.UUID, str, int, int]],
    at: dt.datetime,
) -> set[uuid.UUID]:
    """`settle_attempt(state='sent')` for many (attempt id, provider id, segments, cost) at once; the ids
    settled under our claim."""
    rows = await conn.fetch(
        "update attempts a set state = 'sent', lease_until = null, provider_message_id = s.provider_id,"
        "  segments = s.segments, cost_minor = s.cost, error = null, sent_at = $3, updated_at = now()"
        " from unnest($1::uuid[], $2::text[], $4::int[], $5::int[]) as s (id, provider_id, segments, cost)"
        " where a.id = s.id and a.claim_token = $6 and a.state in ('in_flight', 'unknown')"
        " returning a.id",
        [attempt_id for attempt_id, _, _, _ in sent],
        [provider_id for _, provider_id, _, _ in sent],
        at,
        [segments for _, _, segments, _ in sent],
        [cost for _, _, _, cost in sent],
        token,
    )
    return {r["id"] for r in rows}


async def mark_messages_sent(conn: db.Connection, message_ids: list[uuid.UUID]) -> None:
    """Messages whose send was accepted become 'sent' unless they moved on (delivered, superseded...)."""
    await conn.execute(
        "update messages set state = 'sent', updated_at = now()"
        " where id = any($1::uuid[]) and state in ('sending', 'unknown', 'queued', 'deferred')",
        message_ids,
    )


async def append_outbox(conn: db.Connection, events: Sequence[Event]) -> None:
    """Several events into the outbox in one statement (the caller's transaction)."""
    if events:
        await conn.execute(outbox.insert_from_columns("$1", "$2", "$3"), *outbox.as_columns(*events))


async def take_early_receipts(conn: db.Connection, keys: Sequence[tuple[str, str]]) -> list[asyncpg.Record]:
    """`take_early_receipt` for several (channel, provider id) at once."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "delete from early_receipts e using unnest($1::text[], $2::text[]) as k (channel, provider_id)"
        " where e.channel = k.channel and e.provider_message_id = k.provider_id"
        " returning e.channel, e.provider_message_id, e.status, e.at, e.reason",
        [channel for channel, _ in keys],
        [provider_id for _, provider_id in keys],
    )
    return rows


async def save_early_receipt(
    conn: db.Connection, channel: str, provider_message_id: str, *, status: str, at: dt.datetime, reason: str
) -> None:
    await conn.execute(
        "insert into early_receipts (channel, provider_message_id, status, at, reason)"
        " values ($1, $2, $3, $4, $5) on conflict (channel, provider_message_id) do update"
        "  set status = excluded.status, at = excluded.at,"
        "  reason = excluded.reason",
        channel,
        provider_message_id,
        status,
        at,
        reason[:300],
    )


async def take_early_receipt(
    conn: db.Connection, channel: str, provider_message_id: str
) -> asyncpg.Record | None:
    record: asyncpg.Record | None = await conn.fetchrow(
        "delete from early_receipts where channel = $1 and provider_message_id = $2"
        " returning status, at, reason",
        channel,
        provider_message_id,
    )
    return record


async def mark_delivered(conn: db.Connection, attempt_id: uuid.UUID, at: dt.datetime) -> None:
    await conn.execute(
        "update attempts set state = 'delivered', delivered_at = $2, updated_at = now() where id = $1",
        attempt_id,
        at,
    )


async def non_critical_sms_between(
    conn: db.Connection, recipient_id: uuid.UUID, start: dt.datetime, end: dt.datetime
) -> int:
    """Non-critical SMS for this recipient in [start, end) that are going or gone (the fatigue budget)."""
    count: int = await conn.fetchval(
        "select count(*) from attempts a join messages m on m.id = a.message_id"
        " where m.recipient_id = $1 and a.kind = 'sms' and not m.urgent and not m.legally_required"
        # Ready ones count too: a message released a moment ago takes its place in the budget at once.
        "  and a.state in ('ready', 'in_flight', 'sent', 'delivered', 'unknown')"
        "  and coalesce(a.sent_at, a.not_before) >= $2 and coalesce(a.sent_at, a.not_before) < $3",
        recipient_id,
        start,
        end,
    )
    return count


# --- timeline and the message log -----------------------------------------------------------------------


async def add_timeline(
    conn: db.Connection,
    message_id: uuid.UUID,
    at: dt.datetime,
    what: str,
    *,
    channel: str = "",
    detail: str = "",
) -> None:
    await conn.execute(
        "insert into timeline (message_id, at, what, channel, detail) values ($1, $2, $3, $4, $5)",
        message_id,
        at,
        what,
        channel,
        detail[:500],
    )


async def add_timelines(conn: db.Connection, entries: Sequence[TimelineNote]) -> None:
    """Several timeline entries in one statement, kept in the given order (their ids follow it)."""
    if not entries:
        return
    await conn.execute(
        "insert into timeline (message_id, at, what, channel, detail)"
        " select m, a, w, c, d from unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[])"
        "  with ordinality as e(m, a, w, c, d, n) order by n",
        [e.message_id for e in entries],
        [e.at for e in entries],
        [e.what for e in entries],
        [e.channel for e in entries],
        [e.detail[:500] for e in entries],
    )


async def timeline_of(conn: db.Connection, message_id: uuid.UUID) -> list[TimelineEntry]:
    rows = await conn.fetch(
        "select at, what, channel, detail from timeline where message_id = $1 order by id", message_id
    )
    return [as_row(TimelineEntry, r) for r in rows]


async def messages_of(
    conn: db.Connection,
    recipient_id: uuid.UUID | None,
    limit: int,
    before: dt.datetime | None = None,
    *,
    tenant: str | None = None,
) -> list[MessageRow]:
    """Newest first; `tenant` (a site key, or 'verification') keeps only that owner's messages."""
    rows = await conn.fetch(
        "select * from messages where ($1::uuid is null or recipient_id = $1)"
        " and ($3::timestamptz is null or created_at < $3) and ($4::text is null or tenant = $4)"
        " order by created_at desc, id limit $2",
        recipient_id,
        limit,
        before,
        tenant,
    )
    return [as_row(MessageRow, r) for r in rows]


async def has_messages_of(conn: db.Connection, recipient_id: uuid.UUID, tenant: str) -> bool:
    found: bool = await conn.fetchval(
        "select exists (select 1 from messages where recipient_id = $1 and tenant = $2)",
        recipient_id,
        tenant,
    )
    return found
