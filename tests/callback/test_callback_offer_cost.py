"""The offer's cost is flat in the backlog (work counted, never timed), its body small and revalidated."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from support.callback_api import ask, offered_slots, put_site, sign_in_agent
from support.harness import migrate_service

from services.callback.app import create_app
from services.callback.domain import promise
from services.callback.settings import CallbackSettings
from services.callback.usecases.queues import QueueCache
from services.common.settings import Settings

Client = AsyncTestClient[Any]
OFFERS = 20
GENEROUS = {"min_fill_ms": 0, "per_ip_10min": 1000, "daily_cap": 100000}


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    """The service with queue reads kept for a minute: what is counted cannot depend on how fast this
    machine runs (the default second only bounds how stale another replica may be)."""
    await migrate_service(settings, "callback")
    app = create_app(settings, CallbackSettings(queue_cache_ttl_s=60))
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


def queue_cache(client: Client) -> QueueCache:
    queues = client.app.state.runtime.extras["intake"].queues
    assert isinstance(queues, QueueCache)
    return queues


async def pile_up(client: Client, db: asyncpg.Connection, site: str, count: int) -> None:
    """`count` more requests waiting in the site's queue, due now: copies of one asked through the API."""
    created = await ask(client, site)
    assert created.status_code == 201, created.text
    await db.execute(
        "insert into callback.callbacks select (jsonb_populate_record(null::callback.callbacks,"
        " to_jsonb(c) || jsonb_build_object('id', gen_random_uuid(), 'due_at', now(),"
        " 'phone_hash', sha256(i::text::bytea), 'requested_at', now() - i * interval '1 second'))).*"
        " from callback.callbacks c, generate_series(1, $1) i where c.site_key = $2",
        count - 1,
        site,
    )
    pending = await db.fetchval(
        "select count(*) from callback.callbacks where site_key = $1 and status = 'scheduled'", site
    )
    assert pending == count


async def offers_work(client: Client, site: str) -> tuple[int, int, int, list[Any]]:
    """Queue reads, rows read and wait simulations over OFFERS offers of a site, and its last offer."""
    cache = queue_cache(client)
    reads, rows, curves = cache.work.reads, cache.work.rows, promise.WORK.curves
    bodies = []
    for _ in range(OFFERS):
        response = await client.get(f"/v1/sites/{site}/offer", params={"tz": "Europe/Moscow", "lang": "en"})
        assert response.status_code == 200, response.text
        bodies.append(response.json())
    return cache.work.reads - reads, cache.work.rows - rows, promise.WORK.curves - curves, bodies


async def test_offer_work_does_not_grow_with_the_backlog(client: Client, db: asyncpg.Connection) -> None:
    # Two sites with a queue each, both staffed by the schedule (nobody signed in, so nothing is dialed
    # meanwhile): one queue empty, one with a thousand requests waiting.
    for site in ("calm", "busy"):
        await put_site(client, site, queue=site, abuse=GENEROUS)
    await pile_up(client, db, "busy", 1000)
    calm = await offers_work(client, "calm")
    busy = await offers_work(client, "busy")
    # Each queue is read once for all the offers, in the same handful of rows whatever is waiting
    # (requests due now are counted in PostgreSQL, not fetched), and its wait simulated at most once.
    assert (calm[0], busy[0]) == (1, 1)
    assert calm[1] == busy[1] < 10
    assert calm[2] <= 1
    assert busy[2] <= 1
    # The backlog is in the promise all the same: a thousand ahead of two agents is a day, not seconds.
    assert window(calm[3][0]) < dt.timedelta(minutes=5)
    assert window(busy[3][0]) > dt.timedelta(hours=12)


def window(offer: dict[str, Any]) -> dt.timedelta:
    """How long after its earliest moment the offer's promise may ring."""
    return dt.datetime.fromisoformat(offer["promise"]["latest"]) - dt.datetime.fromisoformat(
        offer["promise"]["earliest"]
    )


async def test_a_change_here_is_read_at_once(client: Client) -> None:
    # Accepting a request or a presence change in this process drops the queue's read: the next offer
    # sees it, however long reads are otherwise kept.
    await put_site(client, staffing=[], abuse=GENEROUS)
    assert (await client.get("/v1/sites/shop/offer")).json()["promise"] is None
    await sign_in_agent(client)
    first = (await client.get("/v1/sites/shop/offer", params={"lang": "en"})).json()
    assert first["promise"]["text"] == "We'll call you within 20 seconds"
    assert (await ask(client, phone="+79123456701")).status_code == 201
    second = (await client.get("/v1/sites/shop/offer", params={"lang": "en"})).json()
    # One ahead now and the agent taken (or, on a slow machine, the call already over and the console's
    # heartbeat older than presence allows, so nobody at work): either way not the cached promise.
    assert second["promise"] != first["promise"], "the accepted request dropped the queue's cached read"


async def test_always_open_offer_is_small_and_revalidated(client: Client) -> None:
    # The 24/7 site's offer used to list every half hour of a week with labels: about 32 KB.
    await put_site(client)
    await sign_in_agent(client)
    params = {"tz": "Asia/Novosibirsk", "lang": "ru"}
    response = await client.get("/v1/sites/shop/offer", params=params)
    assert response.status_code == 200
    assert len(response.content) < 1024, len(response.content)
    body = response.json()
    assert body["slot_minutes"] == 30
    assert len(body["slot_ranges"]) == 1, "three days of back-to-back slots are one range"
    assert len(offered_slots(body)) >= 2 * 48
    # Cacheable a few seconds by the visitor's browser only (the body carries a one-time form token).
    assert response.headers["cache-control"] == "private, max-age=5"
    etag = response.headers["etag"]
    assert etag.startswith('W/"')
    unchanged = await client.get("/v1/sites/shop/offer", params=params, headers={"If-None-Match": etag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["etag"] == etag
    # The queue changed (the only agent is taken by a request): a new promise, a new body and ETag.
    assert (await ask(client, phone="+79123456702")).status_code == 201
    changed = await client.get("/v1/sites/shop/offer", params=params, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert changed.json()["promise"]["text"] != body["promise"]["text"]


async def test_concurrent_offers_of_a_cold_queue_share_one_read(client: Client) -> None:
    await put_site(client)
    cache = queue_cache(client)
    before = cache.work.reads
    answers = await asyncio.gather(*(client.get("/v1/sites/shop/offer") for _ in range(10)))
    assert [answer.status_code for answer in answers] == [200] * 10
    assert cache.work.reads - before == 1
