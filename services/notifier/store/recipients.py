"""Recipients and what belongs to them: opt-outs, messenger bindings, callback contacts."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from services.common import db
from services.notifier.store.rows import NewRecipient, RecipientFacts, RecipientRow, as_row

# --- recipients -----------------------------------------------------------------------------------------


# A zone the event named wins over a derived one; the language is the latest event's.
_UPSERT_RECIPIENT = (
    " on conflict (phone_hash) do update set lang = excluded.lang,"
    "  tz = case when excluded.tz_rule = 'event' or recipients.tz_rule <> 'event'"
    "   then excluded.tz else recipients.tz end,"
    "  tz_rule = case when excluded.tz_rule = 'event' or recipients.tz_rule <> 'event'"
    "   then excluded.tz_rule else recipients.tz_rule end,"
    "  updated_at = now()"
    " returning *"
)


async def upsert_recipient(conn: db.Connection, new: NewRecipient) -> RecipientRow:
    """The recipient of this phone, created if new (the row stays locked by this transaction)."""
    record = await conn.fetchrow(
        "insert into recipients (id, phone_hash, phone_enc, phone_masked, lang, tz, tz_rule)"
        " values ($1, $2, $3, $4, $5, $6, $7)" + _UPSERT_RECIPIENT,
        new.new_id,
        new.phone_hash,
        new.phone_enc,
        new.phone_masked,
        new.lang,
        new.tz,
        new.tz_rule,
    )
    row: RecipientRow = as_row(RecipientRow, record)
    return row


async def upsert_recipients(conn: db.Connection, new: Sequence[NewRecipient]) -> dict[bytes, RecipientRow]:
    """`upsert_recipient` for several distinct phones in one statement, by phone hash. Rows are taken in
    phone-hash order, so two transactions upserting some of the same people lock them in one order."""
    records = await conn.fetch(
        "insert into recipients (id, phone_hash, phone_enc, phone_masked, lang, tz, tz_rule)"
        " select * from unnest($1::uuid[], $2::bytea[], $3::bytea[], $4::text[], $5::text[], $6::text[],"
        "  $7::text[]) as r order by 2" + _UPSERT_RECIPIENT,
        [r.new_id for r in new],
        [r.phone_hash for r in new],
        [r.phone_enc for r in new],
        [r.phone_masked for r in new],
        [r.lang for r in new],
        [r.tz for r in new],
        [r.tz_rule for r in new],
    )
    return {r["phone_hash"]: as_row(RecipientRow, r) for r in records}


async def recipients_facts(
    conn: db.Connection, asked: Sequence[tuple[uuid.UUID, str, dt.datetime, dt.datetime]]
) -> list[RecipientFacts]:
    """`recipient_facts` for several (recipient, category, start, end) in one round trip, in order."""
    records = await conn.fetch(
        "select exists (select 1 from opt_outs o where o.recipient_id = q.id and o.category = q.category)"
        "  as opted_out,"
        " array(select channel from bindings b where b.recipient_id = q.id order by bound_at) as channels,"
        " array(select chat_id from bindings b where b.recipient_id = q.id order by bound_at) as chats,"
        " (select count(*) from attempts a join messages m on m.id = a.message_id"
        "  where m.recipient_id = q.id and a.kind = 'sms' and not m.urgent and not m.legally_required"
        "  and a.state in ('ready', 'in_flight', 'sent', 'delivered', 'unknown')"
        "  and coalesce(a.sent_at, a.not_before) >= q.day_start"
        "  and coalesce(a.sent_at, a.not_before) < q.day_end) as sms"
        " from unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[])"
        "  with ordinality as q (id, category, day_start, day_end, n) order by q.n",
        [a[0] for a in asked],
        [a[1] for a in asked],
        [a[2] for a in asked],
        [a[3] for a in asked],
    )
    return [
        RecipientFacts(
            opted_out=r["opted_out"],
            bindings=dict(zip(r["channels"], r["chats"], strict=True)),
            non_critical_sms=r["sms"],
        )
        for r in records
    ]


async def recipient_facts(
    conn: db.Connection, recipient_id: uuid.UUID, category: str, start: dt.datetime, end: dt.datetime
) -> RecipientFacts:
    """Opt-out of `category`, bound messengers and non-critical SMS in [start, end) in one round trip
    (the three questions `opted_out`, `bindings_of` and `non_critical_sms_between` answer one by one)."""
    record = await conn.fetchrow(
        "select exists (select 1 from opt_outs where recipient_id = $1 and category = $2) as opted_out,"
        " array(select channel from bindings where recipient_id = $1 order by bound_at) as channels,"
        " array(select chat_id from bindings where recipient_id = $1 order by bound_at) as chats,"
        " (select count(*) from attempts a join messages m on m.id = a.message_id"
        "  where m.recipient_id = $1 and a.kind = 'sms' and not m.urgent and not m.legally_required"
        "  and a.state in ('ready', 'in_flight', 'sent', 'delivered', 'unknown')"
        "  and coalesce(a.sent_at, a.not_before) >= $3 and coalesce(a.sent_at, a.not_before) < $4) as sms",
        recipient_id,
        category,
        start,
        end,
    )
    assert record is not None
    return RecipientFacts(
        opted_out=record["opted_out"],
        bindings=dict(zip(record["channels"], record["chats"], strict=True)),
        non_critical_sms=record["sms"],
    )


async def get_recipient(conn: db.Connection, recipient_id: uuid.UUID) -> RecipientRow | None:
    row: RecipientRow | None = as_row(
        RecipientRow, await conn.fetchrow("select * from recipients where id = $1", recipient_id)
    )
    return row


async def get_recipients(
    conn: db.Connection, recipient_ids: list[uuid.UUID]
) -> dict[uuid.UUID, RecipientRow]:
    rows = await conn.fetch("select * from recipients where id = any($1::uuid[])", recipient_ids)
    return {r["id"]: as_row(RecipientRow, r) for r in rows}


async def lock_recipient(conn: db.Connection, recipient_id: uuid.UUID) -> RecipientRow | None:
    """Serialises the daily SMS budget: two messages to one person cannot both take the last SMS."""
    row: RecipientRow | None = as_row(
        RecipientRow, await conn.fetchrow("select * from recipients where id = $1 for update", recipient_id)
    )
    return row


async def recipient_by_hash(conn: db.Connection, phone_hash: bytes) -> RecipientRow | None:
    row: RecipientRow | None = as_row(
        RecipientRow, await conn.fetchrow("select * from recipients where phone_hash = $1", phone_hash)
    )
    return row


async def phone_hash_of(conn: db.Connection, recipient_id: uuid.UUID) -> bytes | None:
    value: bytes | None = await conn.fetchval("select phone_hash from recipients where id = $1", recipient_id)
    return value


async def mark_phone_invalid(
    conn: db.Connection, recipient_id: uuid.UUID, at: dt.datetime, reason: str
) -> None:
    await conn.execute(
        "update recipients set phone_invalid_at = $2, phone_invalid_reason = $3, updated_at = now()"
        " where id = $1",
        recipient_id,
        at,
        reason[:300],
    )


async def set_opt_out(conn: db.Connection, recipient_id: uuid.UUID, category: str, opted_out: bool) -> None:
    if opted_out:
        await conn.execute(
            "insert into opt_outs (recipient_id, category) values ($1, $2) on conflict do nothing",
            recipient_id,
            category,
        )
    else:
        await conn.execute(
            "delete from opt_outs where recipient_id = $1 and category = $2", recipient_id, category
        )


async def opted_out(conn: db.Connection, recipient_id: uuid.UUID, category: str) -> bool:
    found = await conn.fetchval(
        "select true from opt_outs where recipient_id = $1 and category = $2", recipient_id, category
    )
    return bool(found)


async def opt_outs_of(conn: db.Connection, recipient_id: uuid.UUID) -> list[str]:
    rows = await conn.fetch(
        "select category from opt_outs where recipient_id = $1 order by category", recipient_id
    )
    return [r["category"] for r in rows]


# --- bindings -------------------------------------------------------------------------------------------


async def bindings_of(conn: db.Connection, recipient_id: uuid.UUID) -> dict[str, str]:
    """channel → chat id of the recipient's bound messengers."""
    rows = await conn.fetch(
        "select channel, chat_id from bindings where recipient_id = $1 order by bound_at", recipient_id
    )
    return {r["channel"]: r["chat_id"] for r in rows}


async def log_binding(
    conn: db.Connection,
    recipient_id: uuid.UUID | None,
    channel: str,
    chat_id: str,
    *,
    action: str,
    at: dt.datetime,
) -> None:
    await conn.execute(
        "insert into binding_log (recipient_id, channel, chat_id, action, at) values ($1, $2, $3, $4, $5)",
        recipient_id,
        channel,
        chat_id,
        action,
        at,
    )


async def start_bind(
    conn: db.Connection, channel: str, chat_id: str, recipient_id: uuid.UUID, at: dt.datetime
) -> None:
    await conn.execute(
        "insert into pending_binds (channel, chat_id, recipient_id, started_at) values ($1, $2, $3, $4)"
        " on conflict (channel, chat_id) do update set recipient_id = excluded.recipient_id,"
        "  started_at = excluded.started_at",
        channel,
        chat_id,
        recipient_id,
        at,
    )


async def take_pending_bind(
    conn: db.Connection, channel: str, chat_id: str, started_after: dt.datetime
) -> uuid.UUID | None:
    """The recipient a chat started binding to (recently), removing the pending row."""
    value: uuid.UUID | None = await conn.fetchval(
        "delete from pending_binds where channel = $1 and chat_id = $2 returning"
        " case when started_at >= $3 then recipient_id end",
        channel,
        chat_id,
        started_after,
    )
    return value


async def bind(
    conn: db.Connection, recipient_id: uuid.UUID, channel: str, chat_id: str, at: dt.datetime
) -> None:
    # A chat belongs to one person: whoever had it before loses it (the number was handed on).
    await conn.execute("delete from bindings where channel = $1 and chat_id = $2", channel, chat_id)
    await conn.execute(
        "insert into bindings (recipient_id, channel, chat_id, bound_at) values ($1, $2, $3, $4)"
        " on conflict (recipient_id, channel) do update set chat_id = excluded.chat_id,"
        "  bound_at = excluded.bound_at",
        recipient_id,
        channel,
        chat_id,
        at,
    )


async def unbind_chat(conn: db.Connection, channel: str, chat_id: str) -> uuid.UUID | None:
    value: uuid.UUID | None = await conn.fetchval(
        "delete from bindings where channel = $1 and chat_id = $2 returning recipient_id", channel, chat_id
    )
    return value


async def binding_log_of(conn: db.Connection, recipient_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "select channel, chat_id, action, at from binding_log where recipient_id = $1 order by id",
        recipient_id,
    )
    return [dict(r) for r in rows]


# --- callback contacts ----------------------------------------------------------------------------------


async def save_callback_contact(
    conn: db.Connection,
    callback_id: uuid.UUID,
    recipient_id: uuid.UUID,
    *,
    site_key: str,
    lang: str,
    page_url: str,
) -> bool:
    """False when the callback already had a contact (kept as it was)."""
    inserted = await conn.fetchval(
        "insert into callback_contacts (callback_id, recipient_id, site_key, lang, page_url)"
        " values ($1, $2, $3, $4, $5) on conflict (callback_id) do nothing returning true",
        callback_id,
        recipient_id,
        site_key,
        lang,
        page_url,
    )
    return bool(inserted)


async def save_callback_contacts(
    conn: db.Connection, contacts: Sequence[tuple[uuid.UUID, uuid.UUID, str, str, str]]
) -> set[uuid.UUID]:
    """`save_callback_contact` for several (callback id, recipient id, site key, lang, page url) at once;
    the callback ids whose contact is new (the others kept theirs)."""
    rows = await conn.fetch(
        "insert into callback_contacts (callback_id, recipient_id, site_key, lang, page_url)"
        " select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[])"
        " on conflict (callback_id) do nothing returning callback_id",
        [c[0] for c in contacts],
        [c[1] for c in contacts],
        [c[2] for c in contacts],
        [c[3] for c in contacts],
        [c[4] for c in contacts],
    )
    return {r["callback_id"] for r in rows}


async def callback_contact(conn: db.Connection, callback_id: uuid.UUID) -> asyncpg.Record | None:
    record: asyncpg.Record | None = await conn.fetchrow(
        "select recipient_id, site_key, lang, page_url from callback_contacts where callback_id = $1",
        callback_id,
    )
    return record
