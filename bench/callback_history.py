"""Callback intake as history grows: accepted requests/s and what each costs PostgreSQL with 0, 10^5 and
10^6 finished requests already in the tables; the 0-rows figures are the baseline of the ratios.

Run with `./dev bench callback_history` (or `.venv/bin/python -m bench.callback_history [--quick]`). It
starts embedded PostgreSQL and NATS and the callback service as its own process (`sim` PBX, manual); the
load (POST /v1/sites/{key}/callbacks from 4 clients, each request with its own phone, address, form token
and Idempotency-Key) comes from a separate process. History is filled set-based (generate_series), in
one statement per table, before each level:

- callbacks finished over the last 30 days, each with its status token, its promise and one ended dial
  attempt (the tables without retention grow with history);
- one day's worth (1/30) of spent form tokens, Idempotency-Keys and published outbox rows: retention
  keeps those about a day (48 h / 24 h), so a longer history does not have more of them.

Per level it reports accepted/s, latency p50/p99, and, load-independent: PostgreSQL CPU (the backends')
and the service's CPU per accepted request, and the rows PostgreSQL read per request in the callback
schema (sequential-scan rows + index fetches, from pg_stat_user_tables) — a plan that scans history
shows there first. Between levels the bench closes the requests it made, so each level starts from the
same empty queue. The flame graph is of the service at the largest history.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.support import (
    CpuMeter,
    bench_args,
    flame_graph,
    flame_note,
    in_load_process,
    pct,
    report,
    service_env,
    start_service,
    stop_service,
    wait_ready,
)
from services.callback.domain.guard import issue_form_token
from services.common import crypto
from services.common.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from services.common.settings import Settings

SITE = "history"
TZ = "Europe/Moscow"
LEVELS = (0, 100_000, 1_000_000)
LEVELS_QUICK = (0, 10_000)
CLIENTS = 4
SECONDS = 6.0  # of closed-loop intake per level; --quick: 2
SECONDS_QUICK = 2.0
IDLE_SECONDS = 3.0  # of no load before each level: the background's CPU rate
AGENTS = 3
ALL_WEEK = {day: [["00:00", "24:00"]] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
SITE_BODY: dict[str, Any] = {
    "name": "History shop",
    "allowed_origins": ["https://shop.example"],
    "timezone": TZ,
    "working_hours": ALL_WEEK,
    "calling_window": {"start": "00:00", "end": "24:00"},
    "staffing": [{"days": ["mon-sun"], "start": "00:00", "end": "24:00", "agents": AGENTS}],
    "abuse": {"per_ip_10min": 10000, "per_phone_day": 100, "daily_cap": 1_000_000, "min_fill_ms": 0},
}


# --- the load process -----------------------------------------------------------------------------------


async def intake_load(
    base: str, keys: tuple[str, str], level: int, clients: int, seconds: float
) -> dict[str, Any]:
    """Closed loops of POST /callbacks for `seconds`: distinct phones, addresses, keys; form tokens signed
    with the service's key, as the widget's are."""
    data_keys, index_key = keys
    protector = crypto.DataProtector.from_settings(
        Settings(data_keys=data_keys, data_key_id="k1", index_key=index_key)
    )
    numbers = itertools.count(1)
    latencies: list[float] = []
    refused: dict[int, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    stop_at = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:

        async def loop() -> None:
            while time.perf_counter() < stop_at:
                n = next(numbers)
                token = issue_form_token(protector.sign, SITE, dt.datetime.now(dt.UTC), secrets.token_hex(6))
                body = {"phone": f"+7926{level % 97:02d}{n:05d}", "visitor_tz": TZ, "consent": True}
                headers = {
                    "X-Forwarded-For": f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}",
                    "Idempotency-Key": str(uuid.uuid4()),
                }
                t0 = time.perf_counter()
                answer = await http.post(
                    f"/v1/sites/{SITE}/callbacks", json={**body, "form_token": token}, headers=headers
                )
                if answer.status_code == 201:
                    latencies.append(time.perf_counter() - t0)
                else:
                    refused[answer.status_code] = refused.get(answer.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return {"elapsed": elapsed, "latencies": latencies, "refused": refused}


# --- history, set-based ----------------------------------------------------------------------------------


async def columns_of(pg: asyncpg.Connection, table: str) -> list[str]:
    rows = await pg.fetch(
        "select column_name from information_schema.columns where table_schema = 'callback'"
        " and table_name = $1 order by ordinal_position",
        table,
    )
    return [r["column_name"] for r in rows]


async def clone(
    pg: asyncpg.Connection,
    table: str,
    *,
    where: str,
    template: Any,
    start: int,
    count: int,
    set_: dict[str, str],
) -> None:
    """Rows `start+1 .. start+count` of history in `table`: copies of one template row (`where`, $1 =
    `template`) with `set_` (SQL per column; `g` is the row's number) overriding columns; one statement."""
    columns = [c for c in await columns_of(pg, table) if not (table == "promises" and c == "id")]
    fresh = {"id": "('a' || lpad(to_hex(g), 31, '0'))::uuid"} if "id" in columns else {}  # its own key
    select = ", ".join({**fresh, **set_}.get(c, f"t.{c}") for c in columns)
    await pg.execute(
        f"insert into callback.{table} ({', '.join(columns)}) select {select}"
        f" from (select * from callback.{table} where {where} limit 1) t,"
        " generate_series($2::bigint + 1, $2::bigint + $3::bigint) g",
        template,
        start,
        count,
    )


# Keys grow with g, so the fill appends to each index instead of splitting pages all over it (random
# keys made the 10^6 fill several times slower); the indexes end up as large as with random keys.
HISTORY_ID = "lpad(to_hex(g), 32, '0')::uuid"
# Finished over the last 30 days, oldest first: row g of `want` is (want - g) / want of 30 days ago.
AGO = "(now() - interval '1 hour' - ($WANT - g) * 43200.0 / $WANT * interval '1 minute')"


def key(prefix: str, expression: str = "g") -> str:
    """A 32-byte key growing with `expression` (a hash column's stand-in), distinct per `prefix`."""
    return f"decode('{prefix}' || lpad(to_hex({expression}), 62, '0'), 'hex')"


async def fill_history(
    pg: asyncpg.Connection, template: uuid.UUID, have: int, want: int, agent: uuid.UUID
) -> None:
    add = want - have
    if add <= 0:
        return
    # The rows are consistent by construction: skip the per-row foreign-key triggers (a million lookups)
    # for this session's inserts; indexes are maintained as usual.
    await pg.execute("set session_replication_role = replica")
    ago = AGO.replace("$WANT", f"{want}.0")
    await clone(
        pg,
        "callbacks",
        where="id = $1",
        template=template,
        start=have,
        count=add,
        set_={
            "id": HISTORY_ID,
            "phone_hash": key("a0"),
            "client_ip_hash": key("a1", "g / 20"),  # twenty requests from each address
            "visitor_id": "null",
            "status": "'completed'",
            "outcome": "'connected'",
            "attempts": "1",
            "requested_at": ago,
            "due_at": ago,
            "promised_earliest": ago,
            "promised_latest": f"{ago} + interval '15 minutes'",
            "first_dial_at": f"{ago} + interval '1 minute'",
            "connected_at": f"{ago} + interval '90 seconds'",
            "ended_at": f"{ago} + interval '4 minutes'",
            "updated_at": f"{ago} + interval '4 minutes'",
        },
    )
    await clone(
        pg,
        "callback_tokens",
        where="callback_id = $1",
        template=template,
        start=have,
        count=add,
        set_={
            "token_hash": key("a2"),
            "callback_id": HISTORY_ID,
            "created_at": ago,
        },
    )
    await clone(
        pg,
        "promises",
        where="callback_id = $1",
        template=template,
        start=have,
        count=add,
        # The promise's queue snapshot (about a kilobyte) is not read by intake: history keeps an empty one.
        set_={"callback_id": HISTORY_ID, "given_at": ago, "snapshot": "'{}'::jsonb"},
    )
    await pg.execute(
        "insert into callback.dial_attempts (id, callback_id, attempt_no, agent_id, adapter, state, outcome,"
        " started_at, placed_at, connected_at, ended_at, org_id, queue)"
        f" select ('1' || lpad(to_hex(g), 31, '0'))::uuid, {HISTORY_ID}, 1, $3, 'sim', 'ended', 'connected',"
        f" {ago} + interval '1 minute', {ago} + interval '1 minute', {ago} + interval '90 seconds',"
        f" {ago} + interval '4 minutes', 'default', 'default'"
        " from generate_series($1::bigint + 1, $1::bigint + $2::bigint) g",
        have,
        add,
        agent,
    )
    # What retention keeps about a day of: one day's worth of a 30-day history.
    day_have, day_add = have // 30, want // 30 - have // 30
    recent = "(now() - (g % 1200) * interval '1 minute')"
    await clone(
        pg,
        "idempotency_keys",
        where="site_key = $1",
        template=SITE,
        start=day_have,
        count=day_add,
        set_={"key": "'history-' || g", "created_at": recent},
    )
    await pg.execute(
        "insert into callback.spent_form_tokens (token_hash, spent_at)"
        f" select {key('a3')}, {recent}"
        " from generate_series($1::bigint + 1, $1::bigint + $2::bigint) g",
        day_have,
        day_add,
    )
    outbox_columns = await columns_of(pg, "outbox")
    overrides = {
        "id": "('2' || lpad(to_hex(g), 31, '0'))::uuid",
        "created_at": recent,
        "published_at": recent,
    }
    if "seq" in outbox_columns:
        outbox_columns.remove("seq")  # its own sequence
    select = ", ".join(overrides.get(c, f"t.{c}") for c in outbox_columns)
    await pg.execute(
        f"insert into callback.outbox ({', '.join(outbox_columns)}) select {select} from"
        " (select * from callback.outbox where published_at is not null limit 1) t,"
        " generate_series($1::bigint + 1, $1::bigint + $2::bigint) g",
        day_have,
        day_add,
    )
    await pg.execute("set session_replication_role = origin")
    for table in (
        "callbacks",
        "callback_tokens",
        "promises",
        "dial_attempts",
        "idempotency_keys",
        "spent_form_tokens",
        "outbox",
    ):
        # Vacuumed and analysed now, so neither autovacuum nor first-read hint bits land in the measurement.
        await pg.execute(f"vacuum (analyze) callback.{table}")


async def table_reads(pg: asyncpg.Connection) -> dict[str, tuple[int, int, int]]:
    """Per table of the callback schema: (rows read by sequential scans, rows fetched by index scans,
    sequential scans) so far; the statistics collector's counters, flushed first."""
    await pg.execute("select pg_stat_force_next_flush()")
    rows = await pg.fetch(
        "select relname, coalesce(seq_tup_read, 0) as seq_rows, coalesce(idx_tup_fetch, 0) as idx_rows,"
        " coalesce(seq_scan, 0) as scans from pg_stat_user_tables where schemaname = 'callback'"
    )
    return {r["relname"]: (int(r["seq_rows"]), int(r["idx_rows"]), int(r["scans"])) for r in rows}


def reads_between(
    before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]
) -> dict[str, tuple[int, int, int]]:
    zero = (0, 0, 0)
    return {
        table: tuple(a - b for a, b in zip(now, before.get(table, zero), strict=True))  # type: ignore[misc]
        for table, now in after.items()
    }


# --- the run --------------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


async def settle(pg: asyncpg.Connection) -> None:
    """Close what the last level left waiting (and the calls it started), so every level starts empty."""
    await pg.execute(
        "update callback.callbacks set status = 'completed', outcome = 'connected', ended_at = now()"
        " where status in ('requested', 'scheduled', 'dialing', 'connected')"
    )
    await pg.execute(
        "update callback.dial_attempts set state = 'ended', ended_at = now() where state <> 'ended'"
    )
    await pg.execute("update callback.agent_presence set current_attempt = null")


async def measure(args: Any, work: Path) -> str:
    started = time.perf_counter()
    levels = LEVELS_QUICK if args.quick else LEVELS
    seconds = SECONDS_QUICK if args.quick else SECONDS
    postgres = EmbeddedPostgres(work / "postgres").start()
    nats_server = EmbeddedNats(work / "nats").start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data_keys, index_key, admin = f"k1:{crypto.new_key()}", crypto.new_key(), secrets.token_urlsafe(24)
    env = service_env(
        ABONENT_DATABASE_URL=postgres.url,
        ABONENT_NATS_URL=nats_server.url,
        ABONENT_DATA_KEYS=data_keys,
        ABONENT_DATA_KEY_ID="k1",
        ABONENT_INDEX_KEY=index_key,
        ABONENT_ADMIN_TOKEN=admin,
        ABONENT_CALLBACK_PORT=str(port),
        ABONENT_LOG_LEVEL="WARNING",
        ABONENT_LOG_FORMAT="text",
        ABONENT_TELEPHONY="sim",
        ABONENT_SIM_MANUAL="true",
    )
    log = work / "callback.log"
    proc = start_service("callback", env, log)
    rows: list[str] = []
    notes: list[str] = []
    fills: list[str] = []
    try:
        await wait_ready(base, proc, log, timeout_s=180)  # generous: a loaded machine starts slowly
        pg = await asyncpg.connect(postgres.url)
        # The fill writes gigabytes of WAL: checkpoints every 1 GB (the default) would fsync mid-fill.
        await pg.execute("alter system set max_wal_size = '8GB'")
        await pg.execute("select pg_reload_conf()")
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {admin}"}) as http:
            answer = await http.put(f"/v1/admin/sites/{SITE}", json=SITE_BODY)
            if answer.status_code not in (200, 201):
                raise SystemExit(f"site refused: {answer.status_code} {answer.text}")
        # Agents at work (as the console's Ready leaves them), kept present below: ASAP promises need them.
        agent = uuid.uuid4()
        for i in range(AGENTS):
            await pg.execute(
                "insert into callback.agents (id, login, name, password_hash, queues, endpoint, org_id)"
                " values ($1, $2, $2, 'x', '{default}', 'sim', 'default')",
                agent if i == 0 else uuid.uuid4(),
                f"history{i}",
            )
        await pg.execute(
            "insert into callback.agent_presence (agent_id, status, ready_since, last_seen_at)"
            " select id, 'ready', now(), now() from callback.agents"
        )
        stop = asyncio.Event()

        async def keep_present() -> None:
            beat = await asyncpg.connect(postgres.url)
            try:
                while not stop.is_set():
                    await beat.execute("update callback.agent_presence set last_seen_at = now()")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 5.0)
            finally:
                await beat.close()

        heartbeat = asyncio.create_task(keep_present())
        try:
            # The template request whose rows history copies (with its token, promise, outbox rows).
            warm = await in_load_process(intake_load, base, (data_keys, index_key), 99, 1, 1.0)
            if not warm["latencies"]:
                raise SystemExit(f"intake refused every request: {warm['refused']}")
            template = await pg.fetchval("select id from callback.callbacks order by requested_at limit 1")
            await settle(pg)
            await pg.execute("analyze")
            postgres_pid = postgres.proc.pid if postgres.proc is not None else 0
            figures: list[dict[str, float]] = []
            by_table: dict[int, str] = {}
            have = 0
            for level in levels:
                t0 = time.perf_counter()
                await fill_history(pg, template, have, level, agent)
                have = max(have, level)
                total = int(await pg.fetchval("select count(*) from callback.callbacks"))
                fills.append(f"{level:,} rows {time.perf_counter() - t0:.0f} s")
                meter = CpuMeter({"service": proc.pid, "postgres+": postgres_pid})
                # What the service and PostgreSQL burn with no requests (timers, heartbeats, polls): per
                # second, subtracted below, so a slower level is not charged more background per request.
                meter.start()
                await asyncio.sleep(IDLE_SECONDS)
                idle = {name: used / meter.elapsed for name, used in meter.stop().items()}
                reads_before = await table_reads(pg)
                meter.start()
                async with flame_graph(
                    proc.pid, "callback-history", enabled=level == levels[-1] and not args.no_profile
                ) as flame:
                    run = await in_load_process(
                        intake_load, base, (data_keys, index_key), level, CLIENTS, seconds
                    )
                used = {name: max(v - idle[name] * meter.elapsed, 0.0) for name, v in meter.stop().items()}
                reads = reads_between(reads_before, await table_reads(pg))
                accepted = len(run["latencies"])
                if not accepted:
                    raise SystemExit(f"no request accepted at {level:,} rows: {run['refused']}")
                figures.append(
                    {
                        "level": level,
                        "total": total,
                        "rate": accepted / run["elapsed"],
                        "p50": pct(run["latencies"], 0.5),
                        "p99": pct(run["latencies"], 0.99),
                        "pg_ms": used["postgres"] / accepted * 1000,
                        "svc_ms": used["service"] / accepted * 1000,
                        "rows": sum(seq + idx for seq, idx, _ in reads.values()) / accepted,
                        "scans": sum(scans for _, _, scans in reads.values()) / accepted,
                        "refused": sum(run["refused"].values()),
                    }
                )
                # Where the reads went (background passes — dispatcher, relay, timers — count too).
                top = sorted(reads.items(), key=lambda item: -(item[1][0] + item[1][1]))[:4]
                by_table[level] = ", ".join(
                    f"{table} {seq / accepted:.0f} scanned + {idx / accepted:.0f} by index"
                    f" ({scans / accepted:.1f} seq scans)"
                    for table, (seq, idx, scans) in top
                )
                await settle(pg)
            for level, text in by_table.items():
                notes.append(f"Rows read per request at {level:,} rows of history, by table: {text}.")
            if note := flame_note(flame, f"intake with {levels[-1]:,} rows of history"):
                notes.append(note)
        finally:
            stop.set()
            await heartbeat
        await pg.close()
    finally:
        await stop_service(proc)
        nats_server.stop()
        postgres.stop()
    zero = figures[0]
    for f in figures:
        rows.append(
            f"| {int(f['level']):,} ({int(f['total']):,} callbacks) | {f['rate']:.0f}"
            f" ({f['rate'] / zero['rate']:.2f}×) | {ms(f['p50'])} / {ms(f['p99'])} |"
            f" {f['pg_ms']:.2f} ({f['pg_ms'] / zero['pg_ms']:.2f}×) | {f['svc_ms']:.2f}"
            f" ({f['svc_ms'] / zero['svc_ms']:.2f}×) |"
            f" {f['rows']:.1f} ({f['rows'] / max(zero['rows'], 0.1):.2f}×) | {f['scans']:.2f} |"
            f" {int(f['refused'])} |"
        )
    notes.append(
        f"Load: {CLIENTS} clients for {seconds:.0f} s per level from a separate process. History filled"
        f" set-based ({'; '.join(fills)}): callbacks, their tokens, promises and ended attempts; plus a"
        " day's worth (1/30) of form tokens, Idempotency-Keys and published outbox rows."
    )
    notes.append(
        "CPU per request is net of each process's idle rate (measured for"
        f" {IDLE_SECONDS:.0f} s with no load before each level); PostgreSQL's is its backends' and"
        " background processes' together."
    )
    notes.append(f"Whole run {time.perf_counter() - started:.0f} s; goal: flat (ratios near 1.0×).")
    return "\n".join(
        [
            "| history rows before the run | accepted/s (vs 0 rows) | p50 / p99 ms |"
            " PostgreSQL CPU ms per request (vs 0 rows) | service CPU ms per request (vs 0 rows) |"
            " rows read per request (vs 0 rows) | seq scans per request | refused |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            *notes,
        ]
    )


async def main(argv: list[str] | None = None) -> int:
    args = bench_args(__doc__ or "", argv)
    with tempfile.TemporaryDirectory(prefix="abonent-bench-") as tmp:
        body = await measure(args, Path(tmp))
    report("Callback intake as history grows (0 → 10⁵ → 10⁶ rows)", body, args)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
