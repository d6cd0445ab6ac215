"""SQL of dial attempts: one row per call placed for a request, and the sweeps over open ones."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec

from services.callback.schemas import DEFAULT_MAX_TALK_S
from services.common.db import Connection


class AttemptRow(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    callback_id: uuid.UUID
    attempt_no: int
    agent_id: uuid.UUID | None
    adapter: str
    state: str
    provider_call_id: str | None
    outcome: str | None
    started_at: dt.datetime
    placed_at: dt.datetime | None
    connected_at: dt.datetime | None
    ordered_at: dt.datetime | None = None


_ATTEMPT_COLUMNS = ", ".join(f.name for f in msgspec.structs.fields(AttemptRow))


async def renew_placing_lease(
    conn: Connection, attempt_id: uuid.UUID, holder: str, until: dt.datetime, now: dt.datetime
) -> bool:
    """Extend our unexpired lease and record that the order is being sent, right before the provider
    call; False if the lease lapsed or is not ours (then recovery owns the attempt: do not send)."""
    record = await conn.fetchval(
        "update dial_attempts set placing_until = $3, ordered_at = coalesce(ordered_at, $4)"
        " where id = $1 and state = 'placing'"
        " and placing_by = $2 and placing_until > $4 returning true",
        attempt_id,
        holder,
        until,
        now,
    )
    return bool(record)


async def expired_placements(conn: Connection, now: dt.datetime) -> list[AttemptRow]:
    """Attempts still 'placing' after their lease ran out: their holder died or hung mid-order. Locked
    (SKIP LOCKED) so one replica examines each."""
    records = await conn.fetch(
        f"select {_ATTEMPT_COLUMNS} from dial_attempts where state = 'placing' and placing_until < $1"
        " for update skip locked",
        now,
    )
    return [msgspec.convert(dict(r), AttemptRow) for r in records]


async def take_over_placement(
    conn: Connection, attempt_id: uuid.UUID, holder: str, until: dt.datetime
) -> None:
    """Recovery holds an orphaned placement while it settles it, so no other replica examines it too."""
    await conn.execute(
        "update dial_attempts set placing_until = $3, placing_by = $2 where id = $1 and state = 'placing'",
        attempt_id,
        holder,
        until,
    )


async def provider_state(conn: Connection, attempt_id: uuid.UUID) -> bytes | None:
    """The provider's bookkeeping of the attempt's call (JSON), locked with the row for the caller's
    transaction; None when no row or nothing stored yet."""
    value = await conn.fetchval(
        "select provider_state::text from dial_attempts where id = $1 for update", attempt_id
    )
    return None if value is None else str(value).encode()


async def read_provider_state(conn: Connection, attempt_id: uuid.UUID) -> bytes | None:
    """provider_state without a lock, for a replica that only looks (hang-up, is the call still up)."""
    value = await conn.fetchval("select provider_state::text from dial_attempts where id = $1", attempt_id)
    return None if value is None else str(value).encode()


async def set_provider_state(conn: Connection, attempt_id: uuid.UUID, state: bytes) -> None:
    # Bound as text and cast by PostgreSQL: a jsonb parameter would go through the pool's JSON codec and
    # store the document as one JSON string.
    await conn.execute(
        "update dial_attempts set provider_state = $2::text::jsonb where id = $1", attempt_id, state.decode()
    )


async def get_attempt(
    conn: Connection, attempt_id: uuid.UUID, *, for_update: bool = False
) -> AttemptRow | None:
    record = await conn.fetchrow(
        f"select {_ATTEMPT_COLUMNS} from dial_attempts where id = $1" + (" for update" if for_update else ""),
        attempt_id,
    )
    return None if record is None else msgspec.convert(dict(record), AttemptRow)


async def update_attempt(conn: Connection, attempt_id: uuid.UUID, **changes: Any) -> None:
    allowed = {
        "state",
        "provider_call_id",
        "outcome",
        "placed_at",
        "connected_at",
        "ended_at",
        "placing_until",
    }
    if set(changes) - allowed:
        raise ValueError(f"not attempt columns: {sorted(set(changes) - allowed)}")
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=2))
    await conn.execute(f"update dial_attempts set {assignments} where id = $1", attempt_id, *changes.values())


async def record_placement(
    conn: Connection, attempt_id: uuid.UUID, placed_at: dt.datetime, provider_call_id: str | None
) -> None:
    """Fill in when and under which provider id the attempt was placed, where not yet known: from the
    dialer's 'placed' mark or from the first provider event, whichever commits first (a fast provider's
    events overtake the originate's answer). Never overwrites, so the earliest record stands."""
    await conn.execute(
        "update dial_attempts set placed_at = coalesce(placed_at, $2),"
        " provider_call_id = coalesce(provider_call_id, $3)"
        " where id = $1 and (placed_at is null or (provider_call_id is null and $3::text is not null))",
        attempt_id,
        placed_at,
        provider_call_id,
    )


async def mark_placed(
    conn: Connection,
    attempt_id: uuid.UUID,
    placed_at: dt.datetime,
    provider_call_id: str,
    from_states: list[str],
) -> None:
    """The provider took the order, in one statement: placement recorded where not yet known (as in
    record_placement: a fast provider's events may have recorded it first), the lease dropped (it has done
    its job), and the state 'placed' only from `from_states` (an attempt already ringing or over stays)."""
    await conn.execute(
        "update dial_attempts set placed_at = coalesce(placed_at, $2),"
        " provider_call_id = coalesce(provider_call_id, $3), placing_until = null,"
        " state = case when state = any($4::text[]) then 'placed' else state end where id = $1",
        attempt_id,
        placed_at,
        provider_call_id,
        from_states,
    )


async def silent_attempts(conn: Connection, silent_before: dt.datetime) -> list[AttemptRow]:
    """Placed attempts still ringing far too long: their call was lost with its process."""
    records = await conn.fetch(
        f"select {_ATTEMPT_COLUMNS} from dial_attempts where state not in ('ended', 'placing', 'connected')"
        " and started_at < $1 for update skip locked",
        silent_before,
    )
    return [msgspec.convert(dict(r), AttemptRow) for r in records]


class OpenAttempt(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    site_key: str
    state: str
    adapter: str
    connected_at: dt.datetime | None


async def open_attempts(conn: Connection, states: list[str]) -> list[OpenAttempt]:
    """Attempts in these states with their site; no locks (finishing one re-checks it under a lock)."""
    records = await conn.fetch(
        "select a.id, c.site_key, a.state, a.adapter, a.connected_at from dial_attempts a"
        " join callbacks c on c.id = a.callback_id where a.state = any($1::text[])",
        states,
    )
    return [msgspec.convert(dict(r), OpenAttempt) for r in records]


async def calls_past_max_talk(conn: Connection, now: dt.datetime) -> list[uuid.UUID]:
    """Connected attempts longer than their site's max_talk_s; usually none, so the filter is in SQL."""
    records = await conn.fetch(
        "select a.id from dial_attempts a join callbacks c on c.id = a.callback_id"
        " join sites s on s.site_key = c.site_key"
        " where a.state = 'connected' and a.connected_at"
        "  < $1::timestamptz - make_interval(secs => coalesce((s.settings->>'max_talk_s')::int, $2::int))",
        now,
        DEFAULT_MAX_TALK_S,
    )
    return [r["id"] for r in records]
