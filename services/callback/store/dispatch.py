"""SQL of the dispatch fast path: the next due request with its agent, and both reserved in one statement."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from services.callback.store.agents import RESERVABLE
from services.callback.store.callbacks import CALLBACK_COLUMNS, CallbackRow
from services.common.db import Connection

__all__ = ["PICK_SQL", "Pick", "next_pick", "reserve"]


class Pick(msgspec.Struct, frozen=True, kw_only=True):
    """A due request and the agent it would get, read without locks: `reserve` re-checks both."""

    row: CallbackRow
    agent_id: uuid.UUID
    agent_endpoint: str


_C_COLUMNS = ", ".join(f"c.{name.strip()}" for name in CALLBACK_COLUMNS.split(","))

# The due request first in line (earliest promise deadline, then oldest: EDF, as due_callbacks orders) that
# has a reservable agent, with the longest-idle such agent of its organisation's queue. The same filters
# as callbacks.due_callbacks (so the partial index callbacks_queue_due serves it) plus the agent, in one
# round trip and without locks: the reservation re-checks what it relies on. The queues with a reservable
# agent are read once, the request chosen among theirs, and only then its agent: joined before the sort
# (or filtered by a subquery per row), the agent lookup ran once per due request — hundreds of scans per
# pass with a backlog.
PICK_SQL = (
    "with free as materialized (select distinct a.org_id, q.queue from agent_presence p"
    "  join agents a on a.id = p.agent_id cross join unnest(a.queues) as q (queue)"
    f"  where {RESERVABLE})"
    f" select {_C_COLUMNS}, ag.id as pick_agent_id, ag.endpoint as pick_agent_endpoint from ("
    "  select c.* from callbacks c join free on free.org_id = c.org_id and free.queue = c.queue"
    "  where c.status = 'scheduled' and c.due_at <= $1 and c.id <> all($2::uuid[])"
    "  order by c.promised_latest nulls last, c.requested_at limit 1) c"
    " cross join lateral (select a.id, a.endpoint from agent_presence p join agents a on a.id = p.agent_id"
    f"  where {RESERVABLE} and a.org_id = c.org_id and c.queue = any(a.queues)"
    "  order by p.ready_since nulls last limit 1) ag"
)


async def next_pick(conn: Connection, now: dt.datetime, exclude: list[uuid.UUID]) -> Pick | None:
    """The next request to dial and its agent (none locked); `exclude` = requests this pass is done with."""
    record = await conn.fetchrow(PICK_SQL, now, exclude)
    if record is None:
        return None
    values = dict(record)
    agent_id = values.pop("pick_agent_id")
    endpoint = values.pop("pick_agent_endpoint")
    return Pick(row=msgspec.convert(values, CallbackRow), agent_id=agent_id, agent_endpoint=endpoint)


# Locks the request and the agent (SKIP LOCKED: a row another transaction holds is someone else's now) only
# if each is still as the pick saw it: the request scheduled, due, with the same attempt count and not
# updated since (a cancel, reschedule or re-promise moves updated_at), the agent still reservable. Only when
# both are had do the four writes happen, all in this one statement (one transaction): the attempt in
# 'placing' under its lease (numbered after the request's earlier attempts: one the visitor was not charged
# for — our agent missed it, the provider refused, a crash left it unknown — gave its charge back, so
# attempts + 1 may already exist), the agent held by it, the request 'dialing', and its event.
# `claimed_by` (or null) leases the event's outbox row to whoever publishes it right after the commit;
# relays skip it until the lease runs out, so a publisher that dies only delays the event.
_RESERVE_SQL = (
    "with c as materialized (select id from callbacks where id = $1 and status = 'scheduled'"
    "  and due_at <= $2 and attempts = $3 and updated_at = $4 for update skip locked),"
    " agent as materialized (select p.agent_id from agent_presence p"
    f"  where p.agent_id = $5 and {RESERVABLE} for update skip locked),"
    " ok as materialized (select c.id as callback_id, agent.agent_id from c cross join agent),"
    " attempt as (insert into dial_attempts (id, callback_id, attempt_no, agent_id, adapter, state,"
    "  started_at, placing_until, placing_by)"
    "  select $6, ok.callback_id, greatest($3 + 1, (select coalesce(max(d.attempt_no), 0) + 1"
    "   from dial_attempts d where d.callback_id = ok.callback_id)), ok.agent_id, $7, 'placing', $2, $8, $9"
    "  from ok),"
    " held as (update agent_presence set current_callback = ok.callback_id, current_attempt = $6"
    "  from ok where agent_presence.agent_id = ok.agent_id),"
    " dialing as (update callbacks set status = 'dialing', attempts = $3 + 1,"
    "  first_dial_at = coalesce(callbacks.first_dial_at, $2), updated_at = now()"
    "  from ok where callbacks.id = ok.callback_id),"
    " event as (insert into outbox (id, subject, payload, claimed_by, claimed_until)"
    "  select $10, $11, $12, $13::text,"
    "  case when $13::text is null then null else now() + make_interval(secs => $14) end from ok)"
    " select count(*) from ok"
)


async def reserve(
    conn: Connection,
    pick: Pick,
    attempt_id: uuid.UUID,
    *,
    adapter: str,
    now: dt.datetime,
    placing_until: dt.datetime,
    placing_by: str,
    event: tuple[uuid.UUID, str, bytes],
    claimed_by: str | None,
    claim_s: float,
) -> bool:
    """Reserve the pick's agent for its request and start the attempt (numbered after its earlier ones)
    with its event (id, subject, payload), atomically; False when either was taken or changed meanwhile."""
    row = pick.row
    taken = await conn.fetchval(
        _RESERVE_SQL,
        row.id,
        now,
        row.attempts,
        row.updated_at,
        pick.agent_id,
        attempt_id,
        adapter,
        placing_until,
        placing_by,
        *event,
        claimed_by,
        claim_s,
    )
    return bool(taken)
