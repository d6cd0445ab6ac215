"""SQL of the figures read from history: live queue figures for promises, punctuality per site."""

from __future__ import annotations

import datetime as dt

import msgspec

from services.common.db import Connection


class QueueFigures(msgspec.Struct, kw_only=True):
    waiting_due: int  # pending requests due now (they are ahead of a new ASAP request)
    busy_elapsed_s: tuple[float, ...]  # per call in progress: seconds since it was dialed
    handle_times_s: tuple[float, ...]  # recent completed calls, newest first


async def queue_figures(
    conn: Connection, org_id: str, queue: str, now: dt.datetime, history: int = 200
) -> QueueFigures:
    """Figures of one organisation's queue (a queue is (organisation, name))."""
    waiting = await conn.fetchval(
        "select count(*) from callbacks where org_id = $3 and queue = $1"
        " and status in ('requested', 'scheduled') and due_at <= $2",
        queue,
        now,
        org_id,
    )
    busy = await conn.fetch(
        "select extract(epoch from ($2 - coalesce(connected_at, updated_at)))::float8 as elapsed"
        " from callbacks where org_id = $3 and queue = $1 and status in ('dialing', 'connected')",
        queue,
        now,
        org_id,
    )
    handled = await conn.fetch(
        "select extract(epoch from (ended_at - first_dial_at))::float8 as seconds from callbacks"
        " where org_id = $3 and queue = $1 and status = 'completed' and first_dial_at is not null"
        " and ended_at > first_dial_at"
        " order by ended_at desc limit $2",
        queue,
        history,
        org_id,
    )
    return QueueFigures(
        waiting_due=int(waiting or 0),
        busy_elapsed_s=tuple(max(float(r["elapsed"]), 0.0) for r in busy),
        handle_times_s=tuple(float(r["seconds"]) for r in handled),
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
