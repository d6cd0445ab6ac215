"""A small HTTP pool under load: offers never hang, a full pool answers 503, background work goes on.

The service runs as its own process over real HTTP: the in-process test client hands requests to the app
one at a time, which could never show two requests waiting on each other for connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
from support.callback_api import ask, put_site, sign_in_agent
from support.harness import running_service

from services.common import bus as busmod
from services.common import db as dbmod
from services.common import outbox
from services.common.events import SystemProbe
from services.common.settings import Settings


@contextlib.asynccontextmanager
async def callback_service(
    settings: Settings, tmp_path: Path, pool_max: int, **env: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The callback service with a small HTTP pool, and a client for it."""
    async with (
        running_service(settings, "callback", tmp_path, ABONENT_DB_POOL_MAX=str(pool_max), **env) as base,
        httpx.AsyncClient(base_url=base, timeout=60) as http,
    ):
        yield http


def assert_busy(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == "unavailable"
    assert body["error"]["message"]


async def test_fifty_concurrent_offers_on_a_pool_of_two_all_finish(
    settings: Settings, tmp_path: Path
) -> None:
    async with callback_service(settings, tmp_path, pool_max=2) as http:
        await put_site(http)
        await sign_in_agent(http)  # presence counts: every offer reads ready agents inside its snapshot

        # Offers used to take a second connection while holding one: two of them then waited on each
        # other forever. The deadline only turns such a hang into a failure.
        responses = await asyncio.wait_for(
            asyncio.gather(
                *(http.get("/v1/sites/shop/offer", params={"tz": "Europe/Moscow"}) for _ in range(50))
            ),
            timeout=120,
        )
        answered = [r for r in responses if r.status_code == 200]
        for response in responses:
            if response.status_code != 200:
                assert_busy(response)
        assert answered, "a pool of two still serves offers"
        assert all(r.json()["promise"]["kind"] == "asap" for r in answered)
        assert (await http.get("/health/ready")).status_code == 200


@contextlib.asynccontextmanager
async def http_pool_held_by_slow_requests(
    http: httpx.AsyncClient, database_url: str, url: str
) -> AsyncIterator[None]:
    """A request stuck behind a table lock holds the one HTTP connection, as a slow query would."""
    locker = await asyncpg.connect(database_url)
    lock = locker.transaction()
    await lock.start()
    await locker.execute("lock table callback.callback_tokens in access exclusive mode")
    sent: list[asyncio.Task[httpx.Response]] = []
    try:
        for _ in range(600):
            waiting = await locker.fetchval(
                "select count(*) from pg_stat_activity where datname = current_database()"
                " and application_name = 'abonent-callback-http' and wait_event_type = 'Lock'"
            )
            if waiting == 1:
                break
            # A request that found the pool growing too slowly got its 503 already; send another.
            if all(task.done() for task in sent):
                sent.append(asyncio.create_task(http.get(url)))
            await asyncio.sleep(0.1)
        assert waiting == 1, "the HTTP connection waits on the lock"
        yield
    finally:
        await lock.rollback()
        await locker.close()
        answered = await asyncio.gather(*sent)
    for response in answered:
        if response.status_code != 200:
            assert_busy(response)
    assert answered[-1].status_code == 200, "the slow request finishes once unblocked"


async def test_saturated_http_pool_answers_503_while_the_relay_keeps_publishing(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    async with callback_service(settings, tmp_path, pool_max=1, ABONENT_DB_ACQUIRE_TIMEOUT_S="1") as http:
        await put_site(http)
        created = (await ask(http)).json()
        status_url = f"/v1/callbacks/{created['id']}?token={created['status_token']}"
        async with http_pool_held_by_slow_requests(http, settings.database_url, status_url):
            assert_busy(await http.get("/v1/sites/shop/offer"))
            assert_busy(await http.get(status_url))
            not_ready = await http.get("/health/ready")
            assert not_ready.status_code == 503
            assert not_ready.json()["checks"]["postgres"].startswith("unavailable")
            assert not_ready.json()["checks"]["postgres_workers"] == "ok"

            # An event committed elsewhere (another replica, a consumer) is still published: the relay
            # takes its connection from the worker pool, which HTTP traffic cannot exhaust.
            probe = SystemProbe(note="pools")
            writer = await dbmod.connect(settings.database_url, "callback")
            try:
                await outbox.append(writer, probe)
            finally:
                await writer.close()
            for _ in range(300):
                published = await db.fetchval(
                    "select published_at is not null from callback.outbox where id = $1", probe.event_id
                )
                if published:
                    break
                await asyncio.sleep(0.1)
            assert published, "the relay published while the HTTP pool was full"
            bus = await busmod.connect(settings.nats_url, "test", settings.nats_namespace)
            try:
                stream = await bus.js.stream_info(bus.ns.stream("SYSTEM"))
                assert stream.state.messages == 1
            finally:
                await bus.close()
        # Once the slow requests let go, the same request is served again.
        assert (await http.get("/v1/sites/shop/offer")).status_code == 200


async def test_dialing_goes_on_while_the_http_pool_is_full(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    async with callback_service(settings, tmp_path, pool_max=1, ABONENT_DB_ACQUIRE_TIMEOUT_S="1") as http:
        await put_site(http)
        # Asked while nobody is at work (promised for the next shift); made due now, as a re-promise
        # would once someone is Ready, so it is due but not dialed.
        asked = await ask(http)
        assert asked.status_code == 201, asked.text
        created = asked.json()
        callback_id = uuid.UUID(created["id"])
        await db.execute("update callback.callbacks set due_at = now() where id = $1", callback_id)
        await sign_in_agent(http, ready=False)
        status_url = f"/v1/callbacks/{callback_id}?token={created['status_token']}"
        async with http_pool_held_by_slow_requests(http, settings.database_url, status_url):
            assert_busy(await http.post("/agent/api/presence", json={"status": "ready"}))
            # So the agent turns Ready straight in the table; the dispatcher, polling on the worker
            # pool, still reserves the agent and dials.
            await db.execute(
                "update callback.agent_presence set status = 'ready', ready_since = now(),"
                " last_seen_at = now()"
            )
            for _ in range(300):
                if await db.fetchval("select count(*) from callback.dial_attempts"):
                    break
                await asyncio.sleep(0.1)
            assert await db.fetchval("select callback_id from callback.dial_attempts") == callback_id
