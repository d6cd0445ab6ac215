"""The intake's fast path: few round trips per request, one row under concurrency, indexes under history."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
from support.callback_api import site_body
from support.harness import migrate_service

from services.callback.domain import promise
from services.callback.schemas import CallbackCreate, CallbackCreated, SiteSettings
from services.callback.store import callbacks as callback_store
from services.callback.store import dispatch as dispatch_store
from services.callback.store import sites as site_store
from services.callback.usecases.intake import Intake
from services.callback.usecases.presence import PresenceAgents
from services.callback.usecases.queues import QueueCache, joins_line
from services.callback.usecases.repromise import Repromiser
from services.callback.usecases.sites import SiteDirectory
from services.common import db as dbmod
from services.common.crypto import DataProtector
from services.common.domain_errors import TooMany
from services.common.events import (
    CallbackCancelled,
    CallbackCompleted,
    CallbackDialing,
    CallbackMerged,
    CallbackRequested,
    CallbackScheduled,
)
from services.common.settings import Settings


class Intakes(msgspec.Struct):
    intake: Intake
    pool: dbmod.Pool


@pytest.fixture
async def one_connection(settings: Settings) -> AsyncIterator[Intakes]:
    """The intake on a pool of exactly one connection, so every statement it sends can be counted."""
    await migrate_service(settings, "callback")
    pool = await dbmod.create_pool(settings.database_url, "callback", max_size=1, min_size=1)
    async with pool.acquire() as conn:
        await site_store.upsert_site(conn, "shop", msgspec.convert(site_body(), SiteSettings))
    sites = SiteDirectory(pool)
    # The queue's handle-time history is kept for the test's length (in a service: a second), so what a
    # request sends does not depend on how fast the machine is.
    queues = QueueCache(PresenceAgents(), sites, ttl_s=3600)
    try:
        yield Intakes(Intake(pool, DataProtector.from_settings(settings), sites, queues=queues), pool)
    finally:
        await pool.close()


@asynccontextmanager
async def statements_sent(pool: dbmod.Pool) -> AsyncIterator[list[str]]:
    """Every statement the pool's one connection sends while the block runs (asyncpg's own query logger;
    each one is a round trip: BEGIN, COMMIT and the pool's reset on release included)."""
    sent: list[str] = []

    def record(query: Any) -> None:
        sent.append(" ".join(query.query.split()))

    # The logger stays on the connection itself, which the pool of one hands out again and again.
    async with pool.acquire() as conn:
        conn.add_query_logger(record)
    sent.clear()  # the reset on that release
    try:
        yield sent
    finally:
        async with pool.acquire() as conn:
            conn.remove_query_logger(record)


async def form_token(intake: Intake) -> str:
    return (await intake.offer("shop", "Europe/Moscow", "en", None)).form_token


async def request(intake: Intake, phone: str, *, key: str | None = None, ip: str = "10.0.0.1") -> int:
    body = CallbackCreate(
        phone=phone, visitor_tz="Europe/Moscow", form_token=await form_token(intake), consent=True
    )
    status, _ = await intake.create("shop", body, client_ip=ip, idempotency_key=key)
    return status


async def test_a_request_takes_few_round_trips(one_connection: Intakes) -> None:
    """Before: 23 statements for a new request (20 inside its transaction, three advisory locks, the row
    inserted as requested and updated to scheduled), 16 for a repeat that joins, 5 for a replay; then 10
    for a new request (the queue's four reads of its own)."""
    intake, pool = one_connection.intake, one_connection.pool
    # Warm: the site is cached and asyncpg has prepared the statements, as in a running service.
    assert await request(intake, "+79120000001", key="warm") == 201
    assert await request(intake, "+79120000001", key="warm-merge") == 201
    body = CallbackCreate(
        phone="+79120000002", visitor_tz="Europe/Moscow", form_token=await form_token(intake), consent=True
    )
    async with statements_sent(pool) as fresh:
        await intake.create("shop", body, client_ip="10.0.0.1", idempotency_key="k-new")
    async with statements_sent(pool) as replay:
        await intake.create("shop", body, client_ip="10.0.0.1", idempotency_key="k-new")
    merge_body = msgspec.structs.replace(body, form_token=await form_token(intake))
    async with statements_sent(pool) as merge:
        await intake.create("shop", merge_body, client_ip="10.0.0.2", idempotency_key="k-merge")
    # BEGIN, the claim, the checks (with the queue's agents and line, read fresh for the promise and a
    # slot's capacity), one write, COMMIT and the pool's reset; the handle-time history is shared.
    assert len(fresh) <= 6, fresh
    assert len(merge) <= 6, merge
    assert len(replay) <= 4, replay
    everything = fresh + merge + replay
    assert not [q for q in everything if q.startswith("update callbacks set status")], "no insert-then-update"
    assert sum("pg_advisory_xact_lock" in q for q in fresh) == 1, "one lock statement (the address budget)"
    writes = [q for q in fresh if q.split()[0].lower() in {"insert", "update", "delete", "with"}]
    assert len(writes) == 2, writes  # the claim and the write


async def test_newcomers_to_a_busy_queue_share_one_wait_simulation(one_connection: Intakes) -> None:
    """Before: every request read the queue afresh, and its busy agent's call had run a little longer at
    each read, so each request simulated the queue's wait anew (the cost growing with the line). Now the
    same agents and calls keep one simulation for the cache's TTL, and a newcomer only takes the next place
    in it: later requests are promised no earlier."""
    intake, pool = one_connection.intake, one_connection.pool
    assert await request(intake, "+79120000100") == 201
    async with pool.acquire() as conn:
        # The one agent of the queue is on that request's call, begun half a minute ago; nobody is Ready.
        await conn.execute(
            "with agent as (insert into agents (id, login, name, password_hash, queues, endpoint)"
            "  values (gen_random_uuid(), 'busy', 'Busy', 'x', '{default}', 'sim') returning id),"
            " attempt as (insert into dial_attempts (id, callback_id, attempt_no, agent_id, adapter, state,"
            "  started_at) select gen_random_uuid(), c.id, 1, agent.id, 'sim', 'connected',"
            "  now() - interval '30 seconds' from callbacks c, agent returning id, agent_id, callback_id)"
            " insert into agent_presence (agent_id, status, ready_since, last_seen_at, current_callback,"
            "  current_attempt) select agent_id, 'ready', now(), now(), callback_id, id from attempt"
        )
        await conn.execute("update callbacks set status = 'connected'")
    # Forms first: an offer reads the queue its own way (and may simulate it), which is not counted here.
    forms = [await form_token(intake) for _ in range(12)]
    curves = promise.WORK.curves
    answers: list[CallbackCreated] = []
    for n, form in enumerate(forms):
        body = CallbackCreate(
            phone=f"+791200002{n:02d}", visitor_tz="Europe/Moscow", form_token=form, consent=True
        )
        status, created = await intake.create("shop", body, client_ip=f"10.0.5.{n}", idempotency_key=None)
        assert status == 201
        answers.append(created)
    assert promise.WORK.curves - curves <= 1, "one simulation for the queue's agents and calls"
    promised = [created.promise for created in answers]
    assert all(p is not None and p.kind == "asap" for p in promised), promised
    latest = [p.latest for p in promised if p is not None]
    assert latest == sorted(latest), "each newcomer is one place further back"
    assert latest[-1] > latest[0]


async def test_concurrent_replays_of_one_key_make_one_request(
    one_connection: Intakes, settings: Settings
) -> None:
    pool = await dbmod.create_pool(settings.database_url, "callback", max_size=8, min_size=8)
    try:
        intake = Intake(pool, DataProtector.from_settings(settings), SiteDirectory(pool))
        body = CallbackCreate(
            phone="+79120000003",
            visitor_tz="Europe/Moscow",
            form_token=await form_token(intake),
            consent=True,
        )
        answers = await asyncio.gather(
            *(
                intake.create("shop", body, client_ip=f"10.0.1.{n}", idempotency_key="double-click")
                for n in range(8)
            )
        )
        assert {status for status, _ in answers} == {201}
        assert len({msgspec.json.encode(created) for _, created in answers}) == 1, (
            "every replay is the original"
        )
        async with pool.acquire() as conn:
            assert await conn.fetchval("select count(*) from callbacks") == 1
            assert await conn.fetchval("select count(*) from callback_aliases") == 0
            subjects = [r["subject"] for r in await conn.fetch("select subject from outbox order by seq")]
            assert subjects == ["callback.requested", "callback.scheduled"]
            assert await conn.fetchval("select count(*) from idempotency_keys") == 1
            assert await conn.fetchval("select count(*) from promises") == 1
    finally:
        await pool.close()


async def test_concurrent_requests_for_one_phone_make_one_call(
    one_connection: Intakes, settings: Settings
) -> None:
    """Different addresses, different keys, the same number at once: one request, the others join it."""
    pool = await dbmod.create_pool(settings.database_url, "callback", max_size=8, min_size=8)
    try:
        async with pool.acquire() as conn:
            abuse = {"min_fill_ms": 0, "per_phone_day": 100}
            await site_store.upsert_site(conn, "shop", msgspec.convert(site_body(abuse=abuse), SiteSettings))
        intake = Intake(pool, DataProtector.from_settings(settings), SiteDirectory(pool))
        bodies = [
            CallbackCreate(
                phone="+79120000004",
                visitor_tz="Europe/Moscow",
                form_token=await form_token(intake),
                consent=True,
            )
            for _ in range(8)
        ]
        answers = await asyncio.gather(
            *(
                intake.create("shop", body, client_ip=f"10.0.2.{n}", idempotency_key=f"k{n}")
                for n, body in enumerate(bodies)
            )
        )
        assert {status for status, _ in answers} == {201}
        assert len({created.id for _, created in answers}) == 8, "each caller has an id of their own"
        async with pool.acquire() as conn:
            rows = await conn.fetch("select id, merged_count, status from callbacks")
            assert len(rows) == 1
            assert (rows[0]["merged_count"], rows[0]["status"]) == (7, "scheduled")
            assert await conn.fetchval("select count(*) from callback_aliases") == 7
            subjects = [r["subject"] for r in await conn.fetch("select subject from outbox order by seq")]
            assert subjects.count("callback.requested") == subjects.count("callback.scheduled") == 1
            assert subjects.count("callback.merged") == 7
            assert await conn.fetchval("select count(*) from idempotency_keys where status_code = 201") == 8
    finally:
        await pool.close()


async def test_a_burst_from_one_address_stays_within_its_budget(
    one_connection: Intakes, settings: Settings
) -> None:
    """The one lock that stays: parallel requests from one address cannot all read the same count."""
    pool = await dbmod.create_pool(settings.database_url, "callback", max_size=8, min_size=8)
    try:
        async with pool.acquire() as conn:
            abuse = {"min_fill_ms": 0, "per_ip_10min": 3}
            await site_store.upsert_site(conn, "shop", msgspec.convert(site_body(abuse=abuse), SiteSettings))
        intake = Intake(pool, DataProtector.from_settings(settings), SiteDirectory(pool))
        bodies = [
            CallbackCreate(
                phone=f"+7912000010{n}",
                visitor_tz="Europe/Moscow",
                form_token=await form_token(intake),
                consent=True,
            )
            for n in range(8)
        ]
        outcomes = await asyncio.gather(
            *(intake.create("shop", body, client_ip="10.0.3.1", idempotency_key=None) for body in bodies),
            return_exceptions=True,
        )
        accepted = [o for o in outcomes if isinstance(o, tuple)]
        refused = [o for o in outcomes if isinstance(o, TooMany)]
        assert (len(accepted), len(refused)) == (3, 5), outcomes
    finally:
        await pool.close()


# --- cost flat as history grows -------------------------------------------------------------------------

HISTORY = 100_000
BIG_TABLES = {
    "callbacks",
    "dial_attempts",
    "callback_aliases",
    "callback_tokens",
    "promises",
    "idempotency_keys",
    "spent_form_tokens",
}


async def fill_history(conn: dbmod.Connection) -> None:
    """10^5 finished requests over about 100 days (every 500th still waiting), an attempt each, a tenth of
    them joined by a repeat, and as many spent form tokens and Idempotency-Keys: set-based, in seconds. The
    site's queue has a tenth of them; the rest went to a busier queue of the organisation.

    Loaded as a replica applies rows (no foreign-key checks or triggers: the rows are consistent by
    construction), so the attempts' queue is written here rather than by their trigger."""
    await conn.execute("set session_replication_role = replica")
    agent_id = await conn.fetchval(
        "insert into agents (id, login, name, password_hash, queues, endpoint)"
        " values (gen_random_uuid(), 'history', 'History', 'x', '{default}', 'sim') returning id"
    )
    await conn.execute(
        "insert into agent_presence (agent_id, status, ready_since) values ($1, 'ready', now())", agent_id
    )
    await conn.execute(
        "insert into callbacks (id, site_key, org_id, queue, phone_enc, phone_hash, phone_masked,"
        " visitor_id, visitor_tz, lang, status, requested_at, due_at, promise_kind, promised_earliest,"
        " promised_latest, attempts, max_attempts, outcome, first_dial_at, ended_at, client_ip_hash,"
        " updated_at) select gen_random_uuid(), 'shop', 'default',"
        "  case when i % 10 = 0 then 'default' else 'other' end, '\\x00', decode(md5('phone' || i), 'hex'),"
        "  '+7912*****00', 'v' || (i % 20000), 'Europe/Moscow', 'ru',"
        "  case when i % 500 = 0 then 'scheduled' else 'completed' end, t,"
        "  case when i % 500 = 0 then now() + make_interval(mins => i % 3000) else t end, 'asap', t,"
        "  t + interval '5 minutes', 1, 3, case when i % 500 = 0 then null else 'connected' end,"
        "  t + interval '1 minute', case when i % 500 = 0 then null else t + interval '4 minutes' end,"
        "  decode(md5('ip' || (i % 5000)), 'hex'), t"
        " from generate_series(1, $1) as i, lateral (select now() - make_interval(secs => i * 90.0) as t) at",
        HISTORY,
    )
    await conn.execute(
        "insert into dial_attempts (id, callback_id, attempt_no, agent_id, adapter, state, outcome,"
        " started_at, ended_at, org_id, queue) select gen_random_uuid(), id, 1, $1, 'sim', 'ended',"
        " 'connected', first_dial_at, ended_at, org_id, queue from callbacks where ended_at is not null",
        agent_id,
    )
    await conn.execute(
        "insert into callback_aliases (id, callback_id, site_key, token_hash, client_ip_hash, visitor_tz,"
        " lang, created_at) select gen_random_uuid(), id, site_key, decode(md5('alias' || id), 'hex'),"
        " client_ip_hash, visitor_tz, lang, requested_at from callbacks where get_byte(phone_hash, 0) < 26"
    )
    await conn.execute(
        "insert into callback_tokens (token_hash, callback_id, created_at)"
        " select decode(md5('token' || id), 'hex'), id, requested_at from callbacks"
    )
    await conn.execute(
        "insert into spent_form_tokens (token_hash, spent_at)"
        " select decode(md5('form' || i), 'hex'), now() - make_interval(secs => i)"
        " from generate_series(1, $1) i",
        HISTORY,
    )
    await conn.execute(
        "insert into idempotency_keys (site_key, key, request_hash, status_code, response, created_at)"
        " select 'shop', 'key' || i, '\\x00', 201, '{}', now() - make_interval(secs => i)"
        " from generate_series(1, $1) i",
        HISTORY,
    )
    await conn.execute("set session_replication_role = origin")
    await conn.execute("analyze")


# What one scan of a big table may read: rows returned or filtered out, and pages (an index range that
# filters inside the index shows only in pages). The queue's pending requests (200 here) and its handle-time
# samples (200) fit; a walk through history does not (10^5 rows, hundreds of pages).
MAX_ROWS_READ = 1000
MAX_PAGES_READ = 400


def scans_of_big_tables(plan: Any) -> list[tuple[str, str, float, int]]:
    """(relation, node type, rows read, pages read) of every scan of a big table in a plan (the counts
    with ANALYZE and BUFFERS)."""
    found = []
    nodes = [plan]
    while nodes:
        node = nodes.pop()
        if node.get("Relation Name") in BIG_TABLES and "Scan" in node["Node Type"]:
            per_loop = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
            per_loop += node.get("Rows Removed by Index Recheck", 0)
            pages = node.get("Shared Hit Blocks", 0) + node.get("Shared Read Blocks", 0)
            found.append(
                (node["Relation Name"], node["Node Type"], per_loop * node.get("Actual Loops", 1), pages)
            )
        nodes.extend(node.get("Plans", []))
    return found


async def test_what_a_request_an_offer_and_a_dispatch_pass_read_uses_indexes(
    one_connection: Intakes, settings: Settings
) -> None:
    intake, pool = one_connection.intake, one_connection.pool
    # Outside the pool: loading history may take longer than a pooled statement may (machine under load).
    loader = await dbmod.connect(settings.database_url, "callback")
    try:
        await site_store.upsert_site(
            loader,
            "shop",
            msgspec.convert(site_body(abuse={"min_fill_ms": 0, "per_phone_day": 100}), SiteSettings),
        )
        await fill_history(loader)
        assert await loader.fetchval("select count(*) from callbacks") == HISTORY
        assert await loader.fetchval("select count(*) from dial_attempts") > 0.99 * HISTORY
    finally:
        await loader.close()
    captured: list[tuple[str, tuple[Any, ...]]] = []

    def record(query: Any) -> None:
        captured.append((query.query, tuple(query.args)))

    async with pool.acquire() as conn:
        conn.add_query_logger(record)
    offer = await intake.offer("shop", "Europe/Moscow", "en", None)
    body = CallbackCreate(
        phone="+79120000005", visitor_tz="Europe/Moscow", form_token=offer.form_token, consent=True
    )
    await intake.create("shop", body, client_ip="10.0.4.1", idempotency_key="fresh")  # new
    await intake.create("shop", body, client_ip="10.0.4.1", idempotency_key="fresh")  # replay
    again = msgspec.structs.replace(body, form_token=await form_token(intake))
    await intake.create("shop", again, client_ip="10.0.4.2", idempotency_key=None)  # joins
    slot = msgspec.structs.replace(
        body,
        phone="+79120000006",
        form_token=await form_token(intake),
        slot_start=offer.slot_ranges[-1].end - dt.timedelta(minutes=offer.slot_minutes),  # the last slot
    )
    await intake.create("shop", slot, client_ip="10.0.4.3", idempotency_key=None)  # a chosen slot
    now = dt.datetime.now(dt.UTC)
    async with pool.acquire() as conn:
        # The dispatcher's pick and the sweeps over waiting requests.
        await callback_store.due_callbacks(conn, now, 10)
        await dispatch_store.next_pick(conn, now, [])
        await callback_store.overdue(conn, now)
        await callback_store.queues_with_overdue_promises(conn, now)
        await callback_store.repromise_candidates(conn, "default", "default", now, 50)
        conn.remove_query_logger(record)
        statements = [
            (query, args)
            for query, args in captured
            if query.lstrip().split()[0].lower() in {"select", "with", "insert", "update", "delete"}
            and "pg_advisory_unlock_all" not in query
        ]
        handled_time = [q for q, _ in statements if "ended_at - d.started_at" in q]
        assert handled_time, "the promise read handle times"
        problems = {}
        for query, args in statements:
            # Reads run (ANALYZE counts the rows each scan really read); writes are only planned. Either
            # way nothing stays: a rolled-back transaction.
            analyze = "analyze, buffers, timing off, " if query.lstrip().lower().startswith("select") else ""
            transaction = conn.transaction()
            await transaction.start()
            try:
                plan = await conn.fetchval(f"explain ({analyze}format json) {query}", *args)
            finally:
                await transaction.rollback()
            found = [
                scan
                for scan in scans_of_big_tables(plan[0]["Plan"])
                if scan[1] == "Seq Scan" or scan[2] > MAX_ROWS_READ or scan[3] > MAX_PAGES_READ
            ]
            if found:
                problems[" ".join(query.split())[:160]] = found
    assert problems == {}


async def test_an_attempt_carries_its_requests_queue(one_connection: Intakes) -> None:
    """Handle times are read per queue from the attempts alone: whoever records an attempt, it gets the
    organisation and queue of its request."""
    intake, pool = one_connection.intake, one_connection.pool
    await request(intake, "+79120000007")
    async with pool.acquire() as conn:
        attempt = await conn.fetchrow(
            "insert into dial_attempts (id, callback_id, attempt_no, adapter, state, started_at)"
            " select gen_random_uuid(), id, 1, 'sim', 'placing', now() from callbacks returning org_id, queue"
        )
    assert attempt is not None
    assert (attempt["org_id"], attempt["queue"]) == ("default", "default")


# --- what a newcomer changes ----------------------------------------------------------------------------


def test_a_newcomer_or_a_repeat_changes_only_the_line() -> None:
    """Their events move nobody already waiting and no agent: the re-promise pass and the queue's kept
    agents and simulation ignore them. Before, every request's `callback.scheduled` sent the re-promise
    pass over the queue's waiting requests (up to 100, each a promise) once a second under intake load."""
    at = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)
    ids = {"callback_id": uuid.uuid4(), "site_key": "shop"}
    window = {"due_at": at, "promised_earliest": at, "promised_latest": at}
    births = [
        CallbackRequested(
            **ids,
            state="requested",
            phone="+79120000001",
            visitor_tz="Europe/Moscow",
            lang="ru",
            promised_earliest=at,
            promised_latest=at,
            promise_kind="asap",
        ),
        *(
            CallbackScheduled(**ids, state="scheduled", reason=reason, **window)
            for reason in ("queue", "chosen_slot")
        ),
        CallbackMerged(**ids, state="scheduled"),
    ]
    changes = [
        CallbackScheduled(**ids, state="scheduled", reason=reason, **window)
        for reason in ("rescheduled", "repromise", "retry_after_busy", "outside_window")
    ]
    changes += [
        CallbackDialing(**ids, state="dialing", attempt=1),
        CallbackCompleted(**ids, state="completed"),
        CallbackCancelled(**ids, state="cancelled"),
    ]
    assert [joins_line(event) for event in births] == [True] * len(births)
    assert [joins_line(event) for event in changes] == [False] * len(changes)


async def test_the_repromise_pass_ignores_newcomers(one_connection: Intakes) -> None:
    pool = one_connection.pool
    repromiser = Repromiser(pool, SiteDirectory(pool))
    at = dt.datetime.now(dt.UTC)
    ids = {"callback_id": uuid.uuid4(), "site_key": "shop"}
    window = {"due_at": at, "promised_earliest": at, "promised_latest": at}
    await repromiser.notice_event(CallbackScheduled(**ids, state="scheduled", reason="queue", **window))
    await repromiser.notice_event(CallbackMerged(**ids, state="scheduled"))
    assert not repromiser._changed, "nothing to look at"  # what a pass would visit
    await repromiser.notice_event(CallbackDialing(**ids, state="dialing", attempt=1))
    assert repromiser._changed == {("default", "default")}
