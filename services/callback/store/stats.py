"""SQL of the figures read from history: live queue figures for promises, punctuality per site."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from services.common.db import Connection


class PendingRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A request waiting to be dialed: its place in line (request time) and when it may be dialed."""

    id: uuid.UUID
    requested_at: dt.datetime
    due_at: dt.datetime


class QueueFigures(msgspec.Struct, kw_only=True):
    busy_elapsed_s: tuple[float, ...]  # per agent of the queue on a call: seconds it has held the agent
    handle_times_s: tuple[float, ...]  # recent attempts of the queue: seconds each held its agent
    pending: tuple[PendingRequest, ...]  # due within the horizon, by due time
    extra_attempts: float = 0.0  # retries per first attempt among the recent attempts


def _extra_attempts(attempt_numbers: list[int]) -> float:
    """Retries per request: attempts after the first over first attempts (0 without enough history)."""
    firsts = sum(1 for number in attempt_numbers if number == 1)
    if firsts < 20:
        return 0.0
    return min((len(attempt_numbers) - firsts) / firsts, 4.0)


async def _busy_elapsed(conn: Connection, org_id: str, queue: str, now: dt.datetime) -> tuple[float, ...]:
    """Agents of the queue held by a call (of any queue): each frees up after the rest of its call."""
    busy = await conn.fetch(
        "select extract(epoch from ($2 - d.started_at))::float8 as elapsed"
        " from agents a join agent_presence p on p.agent_id = a.id"
        " join dial_attempts d on d.id = p.current_attempt where a.org_id = $3 and $1 = any(a.queues)",
        queue,
        now,
        org_id,
    )
    return tuple(max(float(r["elapsed"]), 0.0) for r in busy)


async def _handled(
    conn: Connection, org_id: str, queue: str, history: int
) -> tuple[tuple[float, ...], float]:
    """Recent handle times of the queue and retries per first attempt among them."""
    # An agent is held by an attempt from its reservation to its end, whether the call connected or not:
    # that is the time the queue loses, so it is the sample (failed attempts included).
    handled = await conn.fetch(
        "select extract(epoch from (d.ended_at - d.started_at))::float8 as seconds, d.attempt_no"
        " from dial_attempts d"
        " where d.agent_id is not null and d.ended_at is not null and d.ended_at > d.started_at"
        # dial_attempts_queue_handled: the queue's latest ended attempts, one index range (0014).
        " and d.org_id = $3 and d.queue = $1 order by d.ended_at desc limit $2",
        queue,
        history,
        org_id,
    )
    return (
        tuple(float(r["seconds"]) for r in handled),
        _extra_attempts([int(r["attempt_no"]) for r in handled]),
    )


async def queue_figures(
    conn: Connection, org_id: str, queue: str, now: dt.datetime, *, horizon: dt.datetime, history: int = 200
) -> QueueFigures:
    """Everything a promise for one organisation's queue needs, read in one place (a queue is
    (organisation, name))."""
    busy = await _busy_elapsed(conn, org_id, queue, now)
    handle_times, extra_attempts = await _handled(conn, org_id, queue, history)
    pending = await conn.fetch(
        "select id, requested_at, due_at from callbacks where org_id = $3 and queue = $1"
        " and status in ('requested', 'scheduled') and due_at < $2 order by due_at",
        queue,
        horizon,
        org_id,
    )
    return QueueFigures(
        busy_elapsed_s=busy,
        handle_times_s=handle_times,
        extra_attempts=extra_attempts,
        pending=tuple(msgspec.convert(dict(r), PendingRequest) for r in pending),
    )


class NewcomerFigures(msgspec.Struct, frozen=True, kw_only=True):
    """A queue as a new visitor sees it (everyone pending is ahead once due), in a bounded number of rows:
    requests due now only as a count, those due later (retries, slots, openings) as their due offsets."""

    busy_elapsed_s: tuple[float, ...]
    handle_times_s: tuple[float, ...]
    extra_attempts: float
    due_now: int
    later_due_s: tuple[float, ...]  # seconds from `now` at which pending requests fall due, ascending
    rows: int  # rows PostgreSQL returned for these figures


def newcomer_line_sql(queue: str, now: str, horizon: str, org_id: str) -> str:
    """The select of the organisation's queue's line as a newcomer sees it (`due_now`, `later`: seconds
    from `now` at which the others fall due, ascending), with the given parameter placeholders."""
    return (
        f"select count(*) filter (where due_at <= {now}) as due_now,"
        f" coalesce(array_agg(extract(epoch from (due_at - {now}))::float8 order by due_at)"
        f"   filter (where due_at > {now}), '{{}}') as later"
        f" from callbacks where org_id = {org_id} and queue = {queue}"
        f" and status in ('requested', 'scheduled') and due_at < {horizon}"
    )


async def handle_times(
    conn: Connection, org_id: str, queue: str, *, history: int = 200
) -> tuple[tuple[float, ...], float]:
    """The queue's recent handle times and retries per first attempt (history: it moves only as calls end,
    so a process may keep it for a while where the live figures are read per request)."""
    return await _handled(conn, org_id, queue, history)


async def newcomer_figures(
    conn: Connection, org_id: str, queue: str, now: dt.datetime, *, horizon: dt.datetime, history: int = 200
) -> NewcomerFigures:
    """`queue_figures` as a newcomer needs them: the pending requests aggregated in PostgreSQL, so the rows
    read do not grow with the backlog (requests due now are only counted)."""
    busy = await _busy_elapsed(conn, org_id, queue, now)
    handle_times, extra_attempts = await _handled(conn, org_id, queue, history)
    pending = await conn.fetchrow(
        newcomer_line_sql(queue="$1", now="$2", horizon="$3", org_id="$4"),
        queue,
        now,
        horizon,
        org_id,
    )
    assert pending is not None
    return NewcomerFigures(
        busy_elapsed_s=busy,
        handle_times_s=handle_times,
        extra_attempts=extra_attempts,
        due_now=int(pending["due_now"]),
        later_due_s=tuple(float(offset) for offset in pending["later"]),
        rows=len(busy) + len(handle_times) + 1,
    )


class Punctuality(msgspec.Struct, kw_only=True):
    site_key: str
    requests: int
    dialed: int
    kept: int
    kept_pct: float | None
    time_to_dial_p50_s: float | None
    time_to_dial_p90_s: float | None


async def punctuality(conn: Connection, site_key: str, since: dt.datetime) -> Punctuality:
    """Promises kept = first dial no later than the promised latest; time to dial for ASAP requests."""
    record = await conn.fetchrow(
        "select count(*) as requests, count(first_dial_at) as dialed,"
        " count(*) filter (where first_dial_at <= promised_latest) as kept,"
        " percentile_cont(0.5) within group (order by extract(epoch from first_dial_at - requested_at))"
        "   filter (where promise_kind = 'asap' and first_dial_at is not null) as p50,"
        " percentile_cont(0.9) within group (order by extract(epoch from first_dial_at - requested_at))"
        "   filter (where promise_kind = 'asap' and first_dial_at is not null) as p90"
        " from callbacks where site_key = $1 and requested_at >= $2",
        site_key,
        since,
    )
    assert record is not None
    dialed = int(record["dialed"])
    return Punctuality(
        site_key=site_key,
        requests=int(record["requests"]),
        dialed=dialed,
        kept=int(record["kept"]),
        kept_pct=round(100.0 * record["kept"] / dialed, 1) if dialed else None,
        time_to_dial_p50_s=None if record["p50"] is None else round(float(record["p50"]), 1),
        time_to_dial_p90_s=None if record["p90"] is None else round(float(record["p90"]), 1),
    )
