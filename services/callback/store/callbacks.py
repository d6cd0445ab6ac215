"""SQL of the callbacks aggregate: the request row, its status tokens and promises, the dispatch pick."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec

from services.callback.store.agents import RESERVABLE
from services.common.db import Connection

PENDING_STATES = ("requested", "scheduled", "dialing", "connected")


class CallbackRow(msgspec.Struct, kw_only=True):
    """A callbacks row as the service layer uses it (the phone stays encrypted here)."""

    id: uuid.UUID
    site_key: str
    org_id: str  # the site's organisation: its queues, agents and client cards are the only ones it meets
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
    last_attempt_by: dt.datetime | None = None
    promise_reason: str = "queue"
    promise_checked_at: dt.datetime | None = None  # last re-promise look (0010_promise_repromise)


CALLBACK_COLUMNS = ", ".join(f.name for f in msgspec.structs.fields(CallbackRow))
_CALLBACK_COLUMNS = CALLBACK_COLUMNS


def _row(record: Any) -> CallbackRow:
    return msgspec.convert(dict(record), CallbackRow)


async def pending_for_phone(conn: Connection, site_key: str, phone_hash: bytes) -> CallbackRow | None:
    record = await conn.fetchrow(
        f"select {_CALLBACK_COLUMNS} from callbacks"
        " where site_key = $1 and phone_hash = $2 and status = any($3::text[])",
        site_key,
        phone_hash,
        list(PENDING_STATES),
    )
    return None if record is None else _row(record)


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


async def overdue(conn: Connection, latest_before: dt.datetime) -> list[CallbackRow]:
    """Pending, never-dialed requests whose promise ended before `latest_before` (locked for the caller)."""
    records = await conn.fetch(
        f"select {_CALLBACK_COLUMNS} from callbacks where status in ('requested', 'scheduled')"
        " and promised_latest < $1 for update skip locked",
        latest_before,
    )
    return [_row(r) for r in records]


async def due_callbacks(
    conn: Connection, now: dt.datetime, limit: int, *, exclude: list[uuid.UUID] | None = None
) -> list[CallbackRow]:
    """Requests whose time has come and whose queue has a reservable agent, earliest promised latest time
    first (then oldest request); rows are locked for this dispatcher. `exclude` = rows this pass already
    handled or gave up on.

    Only queues with a reservable agent count, so the oldest rows of a busy queue cannot fill the batch
    and starve the others. A queue is (organisation, name): another organisation's Ready agent on a queue
    of the same name does not make a request due. The queues come from the (small) agents table; the rows
    from the partial index callbacks_queue_due (org_id, queue, requested_at).
    """
    records = await conn.fetch(
        f"select {_CALLBACK_COLUMNS} from callbacks where status = 'scheduled' and due_at <= $1"
        " and id <> all($3::uuid[]) and (org_id, queue) in ("
        "  select a.org_id, unnest(a.queues) from agent_presence p join agents a on a.id = p.agent_id"
        f"  where {RESERVABLE})"
        # Earliest promise deadline first (EDF): FIFO lets evening retries and slots overtake promises
        # about to run out (simulate-callbacks: off-hours kept 68-93% FIFO, 95-100% EDF).
        " order by promised_latest nulls last, requested_at limit $2 for update skip locked",
        now,
        limit,
        exclude or [],
    )
    return [_row(r) for r in records]


async def repromise_candidates(
    conn: Connection, org_id: str, queue: str, checked_before: dt.datetime, limit: int
) -> list[CallbackRow]:
    """Waiting requests of an organisation's queue whose promise the engine may revise: never dialed (a
    retry follows its retry plan), not a chosen slot (the visitor's own choice), not looked at since
    `checked_before`. Oldest request first, locked for this re-promiser; another replica skips them."""
    records = await conn.fetch(
        f"select {_CALLBACK_COLUMNS} from callbacks where org_id = $4 and queue = $1 and status = 'scheduled'"
        " and attempts = 0 and promise_reason <> 'chosen_slot'"
        " and (promise_checked_at is null or promise_checked_at < $2)"
        " order by requested_at limit $3 for update skip locked",
        queue,
        checked_before,
        limit,
        org_id,
    )
    return [_row(r) for r in records]


async def queues_with_overdue_promises(conn: Connection, now: dt.datetime) -> list[tuple[str, str]]:
    """(organisation, queue) pairs with a waiting, never-dialed request whose promised latest time has
    passed."""
    records = await conn.fetch(
        "select distinct org_id, queue from callbacks where status in ('requested', 'scheduled')"
        " and promised_latest < $1 and attempts = 0",
        now,
    )
    return [(str(r["org_id"]), str(r["queue"])) for r in records]
