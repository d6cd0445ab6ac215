"""An offer answered from the caches: no database connection, no worker thread, its body encoded once per
distinct offer (a page view splices in only its own form token)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from support.callback_api import put_site, sign_in_agent
from support.harness import migrate_service

from services.callback.app import create_app
from services.callback.offers import OfferResponder
from services.callback.schemas import Offer
from services.callback.settings import CallbackSettings
from services.common.settings import Settings

Client = AsyncTestClient[Any]
OFFERS = 10
PARAMS = {"tz": "Europe/Moscow", "lang": "en"}


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    """The service with queue reads kept for a minute (what is counted must not depend on how fast this
    machine runs) and a short pool deadline (a request that did need a connection fails fast)."""
    await migrate_service(settings, "callback")
    quick = msgspec.structs.replace(settings, db_acquire_timeout_s=1.0)
    app = create_app(quick, CallbackSettings(queue_cache_ttl_s=60))
    async with AsyncTestClient(app=app) as test_client:
        await put_site(test_client)
        await sign_in_agent(test_client)
        yield test_client


def in_app_loop(client: Client, work: Callable[[], Any]) -> Any:
    """Run `work` (a coroutine function) in the loop the app runs in (the test client's portal)."""
    return client.blocking_portal.call(work)


async def test_a_cached_offer_takes_no_database_connection(client: Client) -> None:
    first = await client.get("/v1/sites/shop/offer", params=PARAMS)  # reads the site and the queue
    assert first.status_code == 200, first.text
    pool = client.app.state.runtime.pool
    release = asyncio.Event()
    holding: list[Future[None]] = []

    async def hold() -> None:
        async with pool.acquire():
            await release.wait()

    # Every connection of the HTTP pool held elsewhere: an offer that needed one would answer 503.
    for _ in range(pool.get_max_size()):
        holding.append(client.blocking_portal.start_task_soon(hold))

    async def all_held() -> bool:
        return pool.get_idle_size() == 0 and pool.get_size() == pool.get_max_size()

    while not in_app_loop(client, all_held):
        await asyncio.sleep(0.01)
    try:
        answers = [await client.get("/v1/sites/shop/offer", params=PARAMS) for _ in range(OFFERS)]
    finally:
        client.blocking_portal.call(release.set)
        for held in holding:
            held.result(timeout=30)
    assert [a.status_code for a in answers] == [200] * OFFERS, answers[-1].text
    tokens = {a.json()["form_token"] for a in answers}
    assert len(tokens) == OFFERS, "each answer carries its own form token"


class CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, counting what is handed to it."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="counted")
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


async def test_an_offer_hands_no_work_to_a_thread(client: Client) -> None:
    """Every request passes the per-IP limiter's check; a sync check would hop to a worker thread and back."""
    executor = CountingExecutor()

    async def install() -> None:
        asyncio.get_running_loop().set_default_executor(executor)

    in_app_loop(client, install)
    for _ in range(OFFERS):
        assert (await client.get("/v1/sites/shop/offer", params=PARAMS)).status_code == 200
    assert executor.submitted == 0


async def test_an_offer_is_encoded_once_and_each_answer_gets_its_own_token(client: Client) -> None:
    responder = client.app.state.runtime.extras["offers"]
    assert isinstance(responder, OfferResponder)
    loop_time = asyncio.get_running_loop().time
    started = loop_time()
    encoded = responder.work.encoded
    answers = [await client.get("/v1/sites/shop/offer", params=PARAMS) for _ in range(OFFERS)]
    elapsed = loop_time() - started
    # The offer itself is remade from the cached queue at most once a second (and re-encoded only if it
    # reads differently): never once per view.
    assert responder.work.encoded - encoded <= 1 + int(elapsed)
    offers = [msgspec.json.decode(a.content, type=Offer) for a in answers]
    assert len({o.form_token for o in offers}) == OFFERS
    # The spliced body is exactly the offer's JSON with its own token.
    for answer, offer in zip(answers, offers, strict=True):
        assert answer.headers["content-type"] == "application/json"
        assert answer.content == msgspec.json.encode(offer)
    same_etag = {a.headers["etag"] for a in answers}
    assert len(same_etag) <= 1 + int(elapsed)
