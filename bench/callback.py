"""Callback fast path: offers, intake, click -> dial, and cost as the queue and history grow, each beside a
baseline measured in the same run against the same PostgreSQL and NATS.

Run with `./dev bench` (or `.venv/bin/python -m bench.callback` from the checkout). It starts embedded
PostgreSQL and NATS in a temporary folder and the callback service as its own process (`python -m
services.cli run callback --migrate`, the `sim` PBX in manual mode, so a dialed agent stays on the call);
this process is the load generator. Phases, in order (all loops bounded by a count or a deadline):

1. click -> `callback.dialing` on NATS, one click at a time with a Ready agent free for each, beside one
   PostgreSQL commit plus one NATS request/reply; then every attempt's placed_at is checked.
2. GET /offer from 4 clients (3 requests pending) beside the offer's four SELECTs from 4 bare asyncpg
   connections.
3. POST /callbacks at rising concurrency (best accepted/s) beside "callback row + 2 outbox rows in one
   transaction" by bare asyncpg into copies of those tables; then an open loop at half the best rate (p99).
4. offer latency with 3 and with 1 000 pending requests.
5. the queue's SQL (stats.queue_figures, callbacks.due_callbacks) with 10^4 and 10^5 rows of history.

Form tokens are minted here with the service's own signing key (the bench sets it): the service checks
each one exactly as it checks the widget's. Between phases the bench cancels leftover pending requests in
SQL, so each phase starts from the same small queue. Loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import asyncpg
import httpx
import msgspec
import nats
from nats.aio.msg import Msg

from bench.support import (
    append_report,
    cpu_seconds,
    pct,
    service_env,
    start_service,
    stop_service,
    wait_ready,
)
from services.callback.domain.guard import issue_form_token
from services.callback.store import callbacks as callback_store
from services.callback.store import stats
from services.common import crypto
from services.common import db as dbmod
from services.common.crypto import hash_password
from services.common.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from services.common.settings import Settings

SITE = "bench"
TZ = "Europe/Moscow"
CLICKS = 50  # one Ready agent each: manual sim calls keep them, so every click finds a free one
KEEP_BUSY = 4  # agents left on their calls after the clicks: the queue's staff for the later phases
OFFER_CLIENTS = 4
OFFER_SECONDS = 5.0
IDLE_SECONDS = 2.0  # the service's background CPU, measured before the offers
INTAKE_LEVELS = (1, 2, 4, 8, 16)
INTAKE_SECONDS = 3.0
OPEN_LOOP_SECONDS = 4.0
PENDING_MANY = 1000
HISTORY_STEPS = (10_000, 100_000)
TOTAL_DEADLINE_S = 230.0  # the whole run, setup included, stays under four minutes
ALL_WEEK = {day: [["00:00", "24:00"]] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}

# The offer's four SELECTs as of this bench (ready agents, busy agents' calls, handle-time history, the
# pending queue): a fixed baseline, whatever the service's offer does meanwhile.
BASELINE_OFFER_SQL = (
    "select count(*) from agent_presence p join agents a on a.id = p.agent_id where a.org_id = $1"
    " and $2 = any(a.queues) and p.status = 'ready' and p.last_seen_at > now() - interval '15 seconds'",
    "select extract(epoch from (now() - d.started_at))::float8 as elapsed from agents a"
    " join agent_presence p on p.agent_id = a.id join dial_attempts d on d.id = p.current_attempt"
    " where a.org_id = $1 and $2 = any(a.queues)",
    "select extract(epoch from (d.ended_at - d.started_at))::float8 as seconds, d.attempt_no"
    " from dial_attempts d join callbacks c on c.id = d.callback_id where d.agent_id is not null"
    " and d.ended_at is not null and d.ended_at > d.started_at and c.org_id = $1 and c.queue = $2"
    " order by d.ended_at desc limit 200",
    "select id, requested_at, due_at from callbacks where org_id = $1 and queue = $2"
    " and status in ('requested', 'scheduled') and due_at < now() + interval '15 days' order by due_at",
)


def site_body(agents: int) -> dict[str, object]:
    """Always open, callees callable at any hour, budgets far above what the bench sends."""
    return {
        "name": "Bench shop",
        "allowed_origins": ["https://shop.example"],
        "timezone": TZ,
        "working_hours": ALL_WEEK,
        "calling_window": {"start": "00:00", "end": "24:00"},
        "staffing": [{"days": ["mon-sun"], "start": "00:00", "end": "24:00", "agents": agents}],
        "abuse": {"per_ip_10min": 10000, "per_phone_day": 100, "daily_cap": 1_000_000, "min_fill_ms": 0},
    }


@dataclass
class Visitors:
    """Distinct phones and client addresses, and form tokens signed with the service's key."""

    protector: crypto.DataProtector
    _n: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def request(self) -> tuple[dict[str, object], dict[str, str]]:
        n = next(self._n)
        token = issue_form_token(self.protector.sign, SITE, dt.datetime.now(dt.UTC), secrets.token_hex(6))
        body = {"phone": f"+7925{n:07d}", "visitor_tz": TZ, "consent": True, "form_token": token}
        body["lang"] = "ru"
        ip = f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
        return body, {"X-Forwarded-For": ip}


@dataclass
class Run:
    base: str
    db_url: str
    nats_url: str
    admin: dict[str, str]
    visitors: Visitors
    http: httpx.AsyncClient
    service_pid: int = 0
    rows: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)

    async def post_callback(self) -> tuple[int, str | None, float]:
        body, headers = self.visitors.request()
        t0 = time.perf_counter()
        answer = await self.http.post(f"/v1/sites/{SITE}/callbacks", json=body, headers=headers)
        took = time.perf_counter() - t0
        created = answer.json().get("id") if answer.status_code == 201 else None
        return answer.status_code, created, took

    async def offer(self) -> float:
        t0 = time.perf_counter()
        answer = await self.http.get(f"/v1/sites/{SITE}/offer", params={"tz": TZ})
        answer.raise_for_status()
        return time.perf_counter() - t0


async def timed_loop(
    workers: int, seconds: float, once: Callable[[], Awaitable[bool]]
) -> tuple[float, list[float], int]:
    """`workers` closed loops calling `once` for `seconds`: (successes/s, latencies, failures)."""
    latencies: list[float] = []
    failures = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal failures
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            if await once():
                latencies.append(time.perf_counter() - t0)
            else:
                failures += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return len(latencies) / (time.perf_counter() - start), latencies, failures


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# --- setup ----------------------------------------------------------------------------------------------


async def setup_site_and_agents(run: Run, pg: asyncpg.Connection) -> list[str]:
    """The site (admin API) and CLICKS Ready agents. The agents are written straight into their tables,
    as the console's sign-in and Ready button would leave them: fifty scrypt sign-ins would only measure
    scrypt, and their consoles' heartbeats are replaced by keep_present()."""
    answer = await run.http.put(f"/v1/admin/sites/{SITE}", json=site_body(CLICKS), headers=run.admin)
    answer.raise_for_status()
    logins = [f"agent{i:03d}" for i in range(CLICKS)]
    password = hash_password("correct horse")
    for login in logins:
        await pg.execute(
            "insert into callback.agents (id, login, name, password_hash, queues, endpoint, org_id)"
            " values ($1, $2, $2, $3, '{default}', 'sim', 'default')",
            uuid.uuid4(),
            login,
            password,
        )
    await pg.execute(
        "insert into callback.agent_presence (agent_id, status, ready_since, last_seen_at)"
        " select id, 'ready', now(), now() from callback.agents"
    )
    return logins


async def keep_present(db_url: str, logins: list[str], stop: asyncio.Event) -> None:
    """The consoles' heartbeats (presence lapses after 15 s without); `logins` may shrink."""
    conn = await asyncpg.connect(db_url)
    try:
        while not stop.is_set():
            await conn.execute(
                "update callback.agent_presence p set last_seen_at = now() from callback.agents a"
                " where a.id = p.agent_id and a.login = any($1::text[])",
                logins,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)
    finally:
        await conn.close()


async def send_home(run: Run, pg: asyncpg.Connection, logins: list[str]) -> None:
    """All but KEEP_BUSY agents go offline and are released from their calls through the admin API (a
    queue of 50 busy agents is not the common case, and it makes every promise dearer); the requests
    their calls leave behind are cancelled."""
    leaving = logins[KEEP_BUSY:]
    del logins[KEEP_BUSY:]
    await pg.execute(
        "update callback.agent_presence p set status = 'offline' from callback.agents a"
        " where a.id = p.agent_id and a.login = any($1::text[])",
        leaving,
    )
    for login in leaving:
        released = await run.http.post(f"/v1/admin/agents/{login}/release", headers=run.admin)
        released.raise_for_status()
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline:
        open_calls = await pg.fetchval("select count(*) from callback.dial_attempts where state <> 'ended'")
        if open_calls <= KEEP_BUSY:
            break
        await asyncio.sleep(0.2)
    else:
        raise SystemExit("released calls did not end within 30 s")
    await keep_pending(pg, [])


# --- phase 1: click -> dialing --------------------------------------------------------------------------


async def click_to_dial(run: Run, pg: asyncpg.Connection) -> None:
    nc = await nats.connect(run.nats_url)
    responder = await nats.connect(run.nats_url)
    seen: dict[str, float] = {}
    arrived = asyncio.Event()

    async def on_dialing(msg: Msg) -> None:
        with_id = msgspec.json.decode(msg.data)
        seen.setdefault(str(with_id.get("callback_id")), time.perf_counter())
        arrived.set()

    async def echo(msg: Msg) -> None:
        await msg.respond(b"ok")

    await nc.subscribe("callback.dialing", cb=on_dialing)
    await responder.subscribe("bench.echo", cb=echo)
    await responder.flush()
    latencies: list[float] = []
    after_answer: list[float] = []  # from the 201 to the event: the dispatcher's and relay's share
    answered_at: dict[str, float] = {}  # wall clock at each 201, for the originate's timestamp
    ids: list[str] = []
    try:
        for _ in range(CLICKS):
            t0 = time.perf_counter()
            status, created, took = await run.post_callback()
            if status != 201 or created is None:
                raise SystemExit(f"click refused: {status}")
            answered_at[created] = time.time() - (time.perf_counter() - (t0 + took))
            ids.append(created)
            deadline = t0 + 15.0
            while created not in seen and time.perf_counter() < deadline:
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), max(deadline - time.perf_counter(), 0.01))
                except TimeoutError:
                    break
            if created not in seen:
                raise SystemExit(f"no callback.dialing for {created} within 15 s")
            latencies.append(seen[created] - t0)
            after_answer.append(max(seen[created] - (t0 + took), 0.0))
        # Baseline: one PostgreSQL commit and one NATS request/reply, as a dispatch needs at least.
        base: list[float] = []
        for _ in range(200):
            t0 = time.perf_counter()
            await pg.execute("insert into bench.pings (at) values (now())")
            await nc.request("bench.echo", b"x", timeout=5)
            base.append(time.perf_counter() - t0)
    finally:
        await nc.close()
        await responder.close()
    p50, p99 = pct(latencies, 0.5), pct(latencies, 0.99)
    b50, b99 = pct(base, 0.5), pct(base, 0.99)
    run.rows.append(
        f"| click → `callback.dialing` on NATS, p50 / p99 ({CLICKS} clicks, one at a time) |"
        f" {ms(p50)} / {ms(p99)} ms | one PG commit + one NATS request/reply: {ms(b50)} / {ms(b99)} ms |"
        f" {p50 / b50:.1f}× / {p99 / b99:.1f}× | p50 ≤ 3× |"
    )

    async def all_placed() -> asyncpg.Record | None:
        return await pg.fetchrow(
            "select count(*) as attempts, count(placed_at) as placed, count(provider_call_id) as ids"
            " from callback.dial_attempts where callback_id = any($1::uuid[])",
            [uuid.UUID(i) for i in ids],
        )

    deadline = time.perf_counter() + 10
    counts = await all_placed()
    while counts is not None and counts["placed"] < CLICKS and time.perf_counter() < deadline:
        await asyncio.sleep(0.2)
        counts = await all_placed()
    assert counts is not None
    # The originate: the sim PBX is called right after the statement that stamps `ordered_at` commits
    # (same host, so the service's wall clock and ours agree).
    ordered = await pg.fetch(
        "select callback_id::text as id, extract(epoch from ordered_at)::float8 as at"
        " from callback.dial_attempts where callback_id = any($1::uuid[]) and ordered_at is not null",
        [uuid.UUID(i) for i in ids],
    )
    to_originate = [max(r["at"] - answered_at[r["id"]], 0.0) for r in ordered]
    a50, o50 = pct(after_answer, 0.5), pct(to_originate, 0.5)
    run.rows.append(
        "| accepted POST (201) → `callback.dialing` on NATS / → the adapter's originate (`ordered_at`), p50"
        f" | {ms(a50)} / {ms(o50)} ms (p99 {ms(pct(after_answer, 0.99))} / {ms(pct(to_originate, 0.99))})"
        f" | one PG commit + one NATS request/reply: {ms(b50)} ms | {a50 / b50:.1f}× / {o50 / b50:.1f}×"
        " | p50 ≤ 3× |"
    )
    run.notes.append(
        f"Attempts of the {CLICKS} clicks: {counts['attempts']}, with placed_at {counts['placed']},"
        f" with provider_call_id {counts['ids']}."
    )


# --- phase 2: offers ------------------------------------------------------------------------------------


async def offers(run: Run) -> float:
    """4 clients on GET /offer beside 4 bare connections running its SELECTs; returns the offer p50."""

    async def one_offer() -> bool:
        await run.offer()
        return True

    # The service's background work (dispatcher, relay, presence, re-promises) runs meanwhile: measured
    # idle first and subtracted, so a slow run's few offers do not carry a second of it each.
    idle_from, idle_cpu = time.perf_counter(), cpu_seconds(run.service_pid)
    await asyncio.sleep(IDLE_SECONDS)
    idle_rate = (cpu_seconds(run.service_pid) - idle_cpu) / (time.perf_counter() - idle_from)
    started, cpu_before = time.perf_counter(), cpu_seconds(run.service_pid)
    own_before = time.process_time()
    rate, latencies, _ = await timed_loop(OFFER_CLIENTS, OFFER_SECONDS, one_offer)
    # The load generator's HTTP client costs CPU per request too, on the same two cores: when it is the
    # dearer side, it and not the service caps the rate.
    client_per_offer = (time.process_time() - own_before) / max(len(latencies), 1)
    busy = cpu_seconds(run.service_pid) - cpu_before - idle_rate * (time.perf_counter() - started)
    cpu_per_offer = max(busy, 0.0) / max(len(latencies), 1)
    conns = [await dbmod.connect(run.db_url, "callback") for _ in range(OFFER_CLIENTS)]
    free = list(conns)

    async def selects() -> bool:
        conn = free.pop()
        try:
            for sql in BASELINE_OFFER_SQL:
                await conn.fetch(sql, "default", "default")
        finally:
            free.append(conn)
        return True

    base_rate, base_lat, _ = await timed_loop(OFFER_CLIENTS, OFFER_SECONDS, selects)
    for conn in conns:
        await conn.close()
    run.rows.append(
        f"| `GET /v1/sites/{{key}}/offer`, {OFFER_CLIENTS} clients (3 pending, {KEEP_BUSY} agents busy) |"
        f" {rate:.0f} req/s, p99 {ms(pct(latencies, 0.99))} ms |"
        f" the offer's 4 SELECTs by bare asyncpg: {base_rate:.0f}/s, p99 {ms(pct(base_lat, 0.99))} ms |"
        f" {rate / base_rate:.2f}× | ≥ 0.5× |"
    )
    # A cached offer takes no database connection (tests/callback/test_callback_offer_fast.py): the
    # baseline's SELECTs are what an offer would cost if it read the queue each time.
    run.notes.append(
        f"Service CPU per offer: {cpu_per_offer * 1000:.2f} ms"
        f" (its idle {idle_rate * 1000:.0f} ms/s subtracted); the load generator's httpx client:"
        f" {client_per_offer * 1000:.2f} ms per offer."
    )
    return pct(latencies, 0.5)


# --- phase 3: intake ------------------------------------------------------------------------------------


async def keep_pending(pg: asyncpg.Connection, keep: list[uuid.UUID]) -> None:
    """Cancel what earlier load left waiting, so the next phase sees the same small queue."""
    await pg.execute(
        "update callback.callbacks set status = 'cancelled', ended_at = now()"
        " where status in ('requested', 'scheduled') and id <> all($1::uuid[])",
        keep,
    )


async def intake(run: Run, pg: asyncpg.Connection, keep: list[uuid.UUID]) -> None:
    best = (0.0, 0, 0, 0.0)  # accepted/s, level, refused, service CPU s per accepted request
    for level in INTAKE_LEVELS:

        async def one_post() -> bool:
            status, _, _ = await run.post_callback()
            return status == 201

        # The service's own CPU per accepted request: unlike the rate, it hardly moves with the machine's
        # other load (the whole process: HTTP, the relay and the dispatcher's share included).
        cpu_before = cpu_seconds(run.service_pid)
        rate, accepted, refused = await timed_loop(level, INTAKE_SECONDS, one_post)
        cpu_each = (cpu_seconds(run.service_pid) - cpu_before) / max(len(accepted), 1)
        if rate > best[0]:
            best = (rate, level, refused, cpu_each)
        await keep_pending(pg, keep)

    pool = await asyncpg.create_pool(run.db_url, min_size=max(INTAKE_LEVELS), max_size=max(INTAKE_LEVELS))
    template = await pg.fetchrow("select * from callback.callbacks where id = $1", keep[0])
    assert template is not None
    columns = list(template.keys())
    insert_row = (
        f"insert into bench.callbacks ({', '.join(columns)})"
        f" values ({', '.join(f'${i}' for i in range(1, len(columns) + 1))})"
    )
    payload = b"x" * 600  # about an event's size
    base_best = (0.0, 0)
    for level in INTAKE_LEVELS:

        async def one_txn() -> bool:
            values = dict(template)
            values["id"] = uuid.uuid4()
            values["phone_hash"] = secrets.token_bytes(32)
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(insert_row, *values.values())
                for subject in ("callback.requested", "callback.scheduled"):
                    await conn.execute(
                        "insert into bench.outbox (id, subject, payload) values ($1, $2, $3)",
                        uuid.uuid4(),
                        subject,
                        payload,
                    )
            return True

        rate, _, _ = await timed_loop(level, INTAKE_SECONDS / 1.5, one_txn)
        if rate > base_best[0]:
            base_best = (rate, level)
    await pool.close()
    run.rows.append(
        f"| `POST /v1/sites/{{key}}/callbacks`, best of concurrency {'/'.join(map(str, INTAKE_LEVELS))} |"
        f" {best[0]:.0f} accepted/s (at {best[1]}; {best[2]} refused) | callback row + 2 outbox rows in"
        f" one transaction by bare asyncpg: {base_best[0]:.0f}/s (at {base_best[1]}) |"
        f" {best[0] / base_best[0]:.2f}× | ≥ 0.5× |"
    )
    run.notes.append(
        f"Intake at concurrency {best[1]}: the service process used {ms(best[3])} ms of CPU per accepted"
        " request."
    )

    # Open loop at half the best rate: sends on schedule whatever the answers do; latency counts from the
    # scheduled moment, so a stalled server cannot hide its queueing (no coordinated omission).
    rate = max(best[0] / 2, 1.0)
    count = int(rate * OPEN_LOOP_SECONDS)
    latencies: list[float] = []
    statuses: list[int] = []
    start = time.perf_counter()

    async def scheduled(k: int) -> None:
        due = start + k / rate
        await asyncio.sleep(max(due - time.perf_counter(), 0))
        status, _, _ = await run.post_callback()
        statuses.append(status)
        latencies.append(time.perf_counter() - due)

    await asyncio.gather(*(scheduled(k) for k in range(count)))
    await keep_pending(pg, keep)
    answered = sum(1 for s in statuses if s == 201)
    run.rows.append(
        f"| same, open loop at half the best rate ({rate:.0f}/s for {OPEN_LOOP_SECONDS:.0f} s) |"
        f" p50 {ms(pct(latencies, 0.5))} ms, p99 {ms(pct(latencies, 0.99))} ms ({answered}/{count} accepted)"
        " | — | — | p99 < 50 ms |"
    )


# --- phase 4: offer with a long queue -------------------------------------------------------------------


async def clone_callbacks(
    pg: asyncpg.Connection,
    template_id: uuid.UUID,
    count: int,
    overrides: dict[str, str],
    *,
    attempts_by: uuid.UUID | None = None,
) -> None:
    """Insert `count` copies of a request (distinct id and phone hash, `overrides` as SQL per column;
    `g` is the copy's number) in one statement; with `attempts_by`, each with one ended attempt by that
    agent (finished history)."""
    columns = [
        r["column_name"]
        for r in await pg.fetch(
            "select column_name from information_schema.columns where table_schema = 'callback'"
            " and table_name = 'callbacks' order by ordinal_position"
        )
    ]
    fixed = {"id": "gen_random_uuid()", "phone_hash": "sha256(convert_to(gen_random_uuid()::text, 'utf8'))"}
    fixed.update(overrides)
    select = ", ".join(fixed.get(c, f"t.{c}") for c in columns)
    insert = (
        f"insert into callback.callbacks ({', '.join(columns)}) select {select}"
        " from callback.callbacks t, generate_series(1, $2) g where t.id = $1"
    )
    if attempts_by is None:
        await pg.execute(insert, template_id, count)
        return
    await pg.execute(
        f"with c as ({insert} returning id, requested_at, ended_at)"
        " insert into callback.dial_attempts (id, callback_id, attempt_no, agent_id, adapter, state, outcome,"
        " started_at, placed_at, connected_at, ended_at)"
        " select gen_random_uuid(), c.id, 1, $3, 'sim', 'ended', 'connected', c.requested_at,"
        " c.requested_at, c.requested_at + interval '20 seconds', c.ended_at from c",
        template_id,
        count,
        attempts_by,
    )


async def offer_p50(run: Run, n: int) -> float:
    return statistics.median([await run.offer() for _ in range(n)])


async def long_queue(run: Run, pg: asyncpg.Connection, keep: list[uuid.UUID], short_p50: float) -> None:
    few = await offer_p50(run, 10)
    await clone_callbacks(
        pg,
        keep[0],
        PENDING_MANY - len(keep),
        {"requested_at": "t.requested_at + g * interval '1 millisecond'", "status": "'scheduled'"},
    )
    await pg.execute("analyze callback.callbacks")
    many = await offer_p50(run, 5)
    await keep_pending(pg, keep)
    run.rows.append(
        f"| offer latency (p50) with {len(keep)} vs {PENDING_MANY} requests pending |"
        f" {ms(few)} → {ms(many)} ms (4-client p50 {ms(short_p50)} ms) | — | {many / few:.1f}× | flat |"
    )


# --- phase 5: history -----------------------------------------------------------------------------------


async def history(run: Run, pg: asyncpg.Connection, keep: list[uuid.UUID]) -> None:
    agent = await pg.fetchval("select id from callback.agents limit 1")
    conn = await dbmod.connect(run.db_url, "callback")
    figures: list[tuple[int, float, float]] = []
    have = int(await pg.fetchval("select count(*) from callback.callbacks"))
    try:
        for target in HISTORY_STEPS:
            add = max(target - have, 0)
            # Finished requests over the last 30 days, each with its one ended attempt.
            await clone_callbacks(
                pg,
                keep[0],
                add,
                {
                    "status": "'completed'",
                    "requested_at": "now() - (g % 43200) * interval '1 minute'",
                    "due_at": "now() - (g % 43200) * interval '1 minute'",
                    "ended_at": "now() - (g % 43200) * interval '1 minute' + interval '3 minutes'",
                    "attempts": "1",
                },
                attempts_by=agent,
            )
            await pg.execute("analyze callback.callbacks")
            await pg.execute("analyze callback.dial_attempts")
            have = int(await pg.fetchval("select count(*) from callback.callbacks"))
            now = dt.datetime.now(dt.UTC)
            queue_times: list[float] = []
            due_times: list[float] = []
            for _ in range(15):
                t0 = time.perf_counter()
                horizon = now + dt.timedelta(days=15)
                await stats.queue_figures(conn, "default", "default", now, horizon=horizon)
                queue_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                async with conn.transaction():
                    await callback_store.due_callbacks(conn, now, 1)
                due_times.append(time.perf_counter() - t0)
            figures.append((have, statistics.median(queue_times), statistics.median(due_times)))
    finally:
        await conn.close()
    (n1, q1, d1), (n2, q2, d2) = figures[0], figures[-1]
    run.rows.append(
        f"| per-request SQL with {n1:,} → {n2:,} rows of history (median) | queue figures"
        f" {ms(q1)} → {ms(q2)} ms, `due_callbacks` {ms(d1)} → {ms(d2)} ms | — |"
        f" {q2 / q1:.1f}× / {d2 / d1:.1f}× | flat |"
    )


T = TypeVar("T")


async def phase(run: Run, name: str, work: Awaitable[T]) -> T:
    """Run one phase and note how long it took (the whole bench must stay under four minutes)."""
    t0 = time.perf_counter()
    try:
        return await work
    finally:
        run.phases.append(f"{name} {time.perf_counter() - t0:.0f} s")


# --- the run --------------------------------------------------------------------------------------------


async def measure(run: Run) -> None:
    pg = await asyncpg.connect(run.db_url)
    stop = asyncio.Event()
    alive: asyncio.Task[None] | None = None
    try:
        await pg.execute("create schema bench")
        await pg.execute("create table bench.pings (id bigserial primary key, at timestamptz not null)")
        await pg.execute("create table bench.callbacks (like callback.callbacks including all)")
        await pg.execute("create table bench.outbox (like callback.outbox including all)")
        logins = await setup_site_and_agents(run, pg)
        alive = asyncio.create_task(keep_present(run.db_url, logins, stop))
        await phase(run, "click", click_to_dial(run, pg))
        await send_home(run, pg, logins)
        # The agents left are on (ringing) calls: what follows stays pending, as in a busy hour.
        keep: list[uuid.UUID] = []
        for _ in range(3):
            status, created, _ = await run.post_callback()
            if status != 201 or created is None:
                raise SystemExit(f"request refused: {status}")
            keep.append(uuid.UUID(created))
        short_p50 = await phase(run, "offer", offers(run))
        await phase(run, "intake", intake(run, pg, keep))
        await phase(run, "queue", long_queue(run, pg, keep, short_p50))
        await phase(run, "history", history(run, pg, keep))
    finally:
        stop.set()
        if alive is not None:
            await alive
        await pg.close()


async def main() -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="abonent-bench-") as tmp:
        work = Path(tmp)
        postgres = EmbeddedPostgres(work / "postgres").start()
        nats_server = EmbeddedNats(work / "nats").start()
        proc = None
        log = work / "callback.log"
        try:
            port = free_port()
            data_key, index_key, admin = crypto.new_key(), crypto.new_key(), secrets.token_urlsafe(24)
            env = service_env(
                ABONENT_DATABASE_URL=postgres.url,
                ABONENT_NATS_URL=nats_server.url,
                ABONENT_DATA_KEYS=f"k1:{data_key}",
                ABONENT_DATA_KEY_ID="k1",
                ABONENT_INDEX_KEY=index_key,
                ABONENT_ADMIN_TOKEN=admin,
                ABONENT_CALLBACK_PORT=str(port),
                ABONENT_LOG_LEVEL="WARNING",
                ABONENT_LOG_FORMAT="text",
                ABONENT_TELEPHONY="sim",
                ABONENT_SIM_MANUAL="true",
                ABONENT_OFFER_RATE_LIMIT_PER_MINUTE="100000000",
            )
            proc = start_service("callback", env, log)
            base = f"http://127.0.0.1:{port}"
            await wait_ready(base, proc, log)
            settings = Settings(data_keys=f"k1:{data_key}", data_key_id="k1", index_key=index_key)
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
                run = Run(
                    base=base,
                    db_url=postgres.url,
                    nats_url=nats_server.url,
                    admin={"Authorization": f"Bearer {admin}"},
                    visitors=Visitors(crypto.DataProtector.from_settings(settings)),
                    http=http,
                    service_pid=proc.pid,
                )
                try:
                    await asyncio.wait_for(measure(run), TOTAL_DEADLINE_S)
                except TimeoutError:
                    overran = f"bench overran {TOTAL_DEADLINE_S:.0f} s; rows so far: {run.rows}"
                    raise SystemExit(overran) from None
        finally:
            if proc is not None:
                await stop_service(proc)
            nats_server.stop()
            postgres.stop()
    result = "\n".join(
        [
            "| path | service | baseline in the same run | ratio | goal |",
            "|---|---|---|---|---|",
            *run.rows,
            "",
            *run.notes,
            f"Phases: {', '.join(run.phases)}; whole run {time.perf_counter() - started:.0f} s.",
            "Load from the bench process; the service is its own process (`sim` PBX, manual). The offer's"
            " SELECTs and the intake transaction are fixed baselines written in bench/callback.py.",
        ]
    )
    print(result)
    append_report("Callback: offer, intake, click → dial, growth", result)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
