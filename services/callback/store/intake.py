"""SQL of a request's way in, one statement per step: the claim, the checks, and the write (new or joined)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec

from services.callback.store.agents import RESERVABLE
from services.callback.store.aliases import AliasRow
from services.callback.store.callbacks import CALLBACK_COLUMNS, PENDING_STATES, CallbackRow
from services.callback.store.idempotency import IdempotentAnswer
from services.callback.store.stats import newcomer_line_sql
from services.common import outbox
from services.common.db import Connection
from services.common.events import Event


class IdempotencyClaim(msgspec.Struct, kw_only=True, frozen=True):
    """An Idempotency-Key this request wants: the row `id` it will hold if it is the first."""

    id: uuid.UUID
    site_key: str
    key: str
    request_hash: bytes


class Claim(msgspec.Struct, kw_only=True, frozen=True):
    form_fresh: bool  # the form token was not spent before (it is now, with this transaction)
    stored: IdempotentAnswer | None  # the key was answered before: replay this (or refuse a different body)


# Locks first (each later insert reads its row from `gate`, so the order is fixed: no two requests can take
# a lock and a key in opposite orders and deadlock), then the form token and the Idempotency-Key, both by
# their unique keys. A key held by a transaction still running makes this wait for it; once it commits,
# DO UPDATE returns the stored answer (a no-op update of the latest row, visible or not to this snapshot);
# if it rolled back, the key is ours.
_CLAIM = (
    "with gate as (select count(pg_advisory_xact_lock(1, k)) as locks from unnest($1::int4[]) as k),"
    " spent as (insert into spent_form_tokens (token_hash) select $2::bytea from gate"
    "  on conflict do nothing returning true),"
    " claimed as (insert into idempotency_keys (id, site_key, key, request_hash, status_code, response)"
    "  select $3::uuid, $4::text, $5::text, $6::bytea, 0, '{}'::jsonb from gate where $5::text is not null"
    "  on conflict (site_key, key) do update set key = excluded.key"
    "  returning id, request_hash, status_code, response, status_token_enc)"
    " select exists (select 1 from spent) as form_fresh, c.id, c.request_hash, c.status_code, c.response,"
    "  c.status_token_enc from gate left join claimed c on true"
)


async def claim(
    conn: Connection, *, lock_keys: list[int], form_token_hash: bytes, idempotency: IdempotencyClaim | None
) -> Claim:
    """Take the request's advisory locks (in the given order), spend its form token and claim its
    Idempotency-Key, in one round trip."""
    record = await conn.fetchrow(
        _CLAIM,
        lock_keys,
        form_token_hash,
        None if idempotency is None else idempotency.id,
        None if idempotency is None else idempotency.site_key,
        None if idempotency is None else idempotency.key,
        None if idempotency is None else idempotency.request_hash,
    )
    assert record is not None
    stored = None
    if idempotency is not None and record["id"] is not None and record["id"] != idempotency.id:
        stored = IdempotentAnswer(
            id=record["id"],
            request_hash=record["request_hash"],
            status_code=record["status_code"],
            response=record["response"],
            status_token_enc=record["status_token_enc"],
        )
    return Claim(form_fresh=bool(record["form_fresh"]), stored=stored)


class Checks(msgspec.Struct, kw_only=True, frozen=True):
    """What the budgets and the merge rule need, each count stopped at its cap (enough to decide), and the
    live part of the queue a new request's promise comes from."""

    ip_count: int
    ip_oldest: dt.datetime | None
    phone_count: int
    phone_oldest: dt.datetime | None
    site_count: int
    pending: CallbackRow | None  # the phone's pending request on this site, which a repeat joins
    ready_agents: int  # Ready, idle, console alive
    busy_started: tuple[dt.datetime, ...]  # when each busy agent's call began, ascending
    due_now: int  # requests of the queue due now
    later_due_s: tuple[float, ...]  # seconds from `now` at which the others fall due, ascending
    last_handled: uuid.UUID | None  # the queue's latest ended attempt with an agent (its history's mark)


_PENDING_SQL = "(" + ", ".join(f"'{state}'" for state in PENDING_STATES) + ")"

# Each count reads at most its cap of index entries (oldest first, so the oldest is exact): the cost of a
# request does not grow with a busy site's day or an address's history.
_CHECKS = (
    "select ip.n as ip_count, ip.oldest as ip_oldest, ph.n as phone_count, ph.oldest as phone_oldest,"
    " st.n as site_count, ag.ready, ag.busy, ln.due_now, ln.later,"
    # The queue's latest handled attempt: its handle-time history, kept by the process, changed if this did
    # (dial_attempts_queue_handled: one index entry).
    " (select d.id from dial_attempts d where d.agent_id is not null and d.ended_at is not null"
    "  and d.ended_at > d.started_at and d.org_id = $5 and d.queue = $11"
    "  order by d.ended_at desc limit 1) as last_handled,"
    " p.*"
    # Requests from this address, repeats that joined a pending request (aliases) included.
    " from (select count(*) as n, min(at) as oldest from ("
    "   (select requested_at as at from callbacks where site_key = $1 and client_ip_hash = $2"
    "    and requested_at > $3 order by requested_at limit $4)"
    "   union all (select created_at from callback_aliases where site_key = $1 and client_ip_hash = $2"
    "    and created_at > $3 order by created_at limit $4)) r) ip,"
    # Requests for this phone on any of the organisation's sites, merges counted; never another
    # organisation's (a refusal must not reveal them).
    " (select coalesce(sum(1 + merged_count), 0) as n, min(requested_at) as oldest from ("
    "   select merged_count, requested_at from callbacks where org_id = $5 and phone_hash = $6"
    "   and requested_at > $7 order by requested_at limit $8) r) ph,"
    " (select count(*) as n from (select 1 from callbacks where site_key = $1 and requested_at >= $9"
    "   limit $10) r) st,"
    # The queue's agents now: Ready ones, and the start of each busy one's call (any queue's call holds
    # the agent). A request reads them itself, in its transaction: presence lapses and calls start
    # without a word to this process, and an agent counted Ready who is not would make a promise early.
    " (select count(*) filter (where " + RESERVABLE + ") as ready,"
    "   coalesce(array_agg(d.started_at order by d.started_at) filter (where d.id is not null), '{}')"
    "   as busy"
    "  from agents a join agent_presence p on p.agent_id = a.id"
    "  left join dial_attempts d on d.id = p.current_attempt"
    "  where a.org_id = $5 and $11 = any(a.queues)) ag,"
    # The queue's line as a newcomer sees it (under the queue's lock when a slot is booked: exact).
    " (" + newcomer_line_sql(queue="$11", now="$12", horizon="$13", org_id="$5") + ") ln"
    f" left join lateral (select {CALLBACK_COLUMNS} from callbacks"
    f"  where site_key = $1 and phone_hash = $6 and status in {_PENDING_SQL}) p on true"
)


async def checks(
    conn: Connection,
    *,
    site_key: str,
    org_id: str,
    ip_hash: bytes,
    ip_since: dt.datetime,
    ip_cap: int,
    phone_hash: bytes,
    phone_since: dt.datetime,
    phone_cap: int,
    site_since: dt.datetime,
    site_cap: int,
    queue: str,
    now: dt.datetime,
    horizon: dt.datetime,
) -> Checks:
    """The budgets (per address, phone and site), the phone's pending request, and the queue's agents and
    line as of `now` (pending requests due before `horizon`), in one round trip."""
    record = await conn.fetchrow(
        _CHECKS,
        site_key,
        ip_hash,
        ip_since,
        ip_cap,
        org_id,
        phone_hash,
        phone_since,
        phone_cap,
        site_since,
        site_cap,
        queue,
        now,
        horizon,
    )
    assert record is not None
    values = dict(record)
    pending = None
    if values["id"] is not None:
        pending = msgspec.convert(
            {f.name: values[f.name] for f in msgspec.structs.fields(CallbackRow)}, CallbackRow
        )
    return Checks(
        ip_count=int(values["ip_count"]),
        ip_oldest=values["ip_oldest"],
        phone_count=int(values["phone_count"]),
        phone_oldest=values["phone_oldest"],
        site_count=int(values["site_count"]),
        pending=pending,
        ready_agents=int(values["ready"]),
        busy_started=tuple(values["busy"]),
        due_now=int(values["due_now"]),
        later_due_s=tuple(float(offset) for offset in values["later"]),
        last_handled=values["last_handled"],
    )


class PromiseGiven(msgspec.Struct, kw_only=True, frozen=True):
    given_at: dt.datetime
    kind: str
    reason: str
    earliest: dt.datetime
    latest: dt.datetime
    snapshot: dict[str, Any]


class Answer(msgspec.Struct, kw_only=True, frozen=True):
    """What a replay of this request's Idempotency-Key will return (the claimed row is filled in)."""

    id: uuid.UUID
    status_code: int
    response: dict[str, Any]
    status_token_enc: bytes | None


_ROW_FIELDS = [f.name for f in msgspec.structs.fields(CallbackRow)]
_N = len(_ROW_FIELDS)


def _answer_sql(first: int, when: str) -> str:
    return (
        f"update idempotency_keys set status_code = ${first}::int4, response = ${first + 1}::jsonb,"
        f" status_token_enc = ${first + 2}::bytea where id = ${first + 3}::uuid"
        f" and exists (select 1 from {when})"
    )


# The row is written once, in the state it was born into, and only if no request for the phone is pending
# (the partial unique index says so, also against a concurrent request for the same number: that one
# waits here for ours to commit, then inserts nothing and joins ours instead). Its promise, status token,
# events and Idempotency-Key answer follow only if the row was written.
_INSERT = (
    f"with cb as (insert into callbacks ({', '.join(_ROW_FIELDS)}, client_ip_hash, consented_at)"
    f"  values ({', '.join(f'${i}' for i in range(1, _N + 1))}, ${_N + 1}::bytea,"
    f"   case when ${_N + 2}::text is null then null else now() end)"
    f"  on conflict (site_key, phone_hash) where status in {_PENDING_SQL} do nothing returning id),"
    " promise as (insert into promises (callback_id, given_at, kind, reason, earliest, latest, snapshot)"
    f"  select cb.id, ${_N + 3}::timestamptz, ${_N + 4}::text, ${_N + 5}::text, ${_N + 6}::timestamptz,"
    f"   ${_N + 7}::timestamptz, ${_N + 8}::jsonb from cb),"
    " token as (insert into callback_tokens (token_hash, callback_id)"
    f"  select ${_N + 9}::bytea, cb.id from cb),"
    f" events as ({outbox.insert_from_columns(f'${_N + 10}', f'${_N + 11}', f'${_N + 12}')}"
    "  where exists (select 1 from cb)),"
    f" answer as ({_answer_sql(_N + 13, 'cb')})"
    " select exists (select 1 from cb)"
)


async def insert_request(
    conn: Connection,
    row: CallbackRow,
    *,
    client_ip_hash: bytes,
    promise: PromiseGiven,
    token_hash: bytes,
    events: list[Event],
    answer: Answer | None,
) -> bool:
    """Write a new request with its promise, status token, events and replay answer in one round trip;
    False (nothing written) when the phone already has a pending request on the site."""
    ids, subjects, payloads = outbox.as_columns(*events)
    written = await conn.fetchval(
        _INSERT,
        *msgspec.structs.astuple(row),
        client_ip_hash,
        row.consent_version,
        promise.given_at,
        promise.kind,
        promise.reason,
        promise.earliest,
        promise.latest,
        promise.snapshot,
        token_hash,
        ids,
        subjects,
        payloads,
        *_answer_args(answer),
    )
    return bool(written)


# A repeat joins the pending request only while it is still pending (it may have been dialed, finished or
# cancelled since it was read: then nothing is written and the caller looks again).
_JOIN = (
    "with joined as (update callbacks set merged_count = merged_count + 1, updated_at = now()"
    f"  where id = $1 and status in {_PENDING_SQL} returning id),"
    " alias as (insert into callback_aliases"
    "  (id, callback_id, site_key, token_hash, client_ip_hash, visitor_tz, lang, created_at)"
    "  select $2::uuid, joined.id, $3::text, $4::bytea, $5::bytea, $6::text, $7::text, $8::timestamptz"
    "  from joined),"
    f" events as ({outbox.insert_from_columns('$9', '$10', '$11')} where exists (select 1 from joined)),"
    f" answer as ({_answer_sql(12, 'joined')})"
    " select exists (select 1 from joined)"
)


async def join_pending(
    conn: Connection,
    alias: AliasRow,
    *,
    site_key: str,
    token_hash: bytes,
    client_ip_hash: bytes,
    now: dt.datetime,
    events: list[Event],
    answer: Answer | None,
) -> bool:
    """Join a pending request as an alias (its merge count, the alias, its events, the replay answer) in
    one round trip; False (nothing written) when the request is no longer pending."""
    ids, subjects, payloads = outbox.as_columns(*events)
    joined = await conn.fetchval(
        _JOIN,
        alias.callback_id,
        alias.id,
        site_key,
        token_hash,
        client_ip_hash,
        alias.visitor_tz,
        alias.lang,
        now,
        ids,
        subjects,
        payloads,
        *_answer_args(answer),
    )
    return bool(joined)


def _answer_args(answer: Answer | None) -> tuple[Any, ...]:
    if answer is None:
        return (None, None, None, None)
    return (answer.status_code, answer.response, answer.status_token_enc, answer.id)
