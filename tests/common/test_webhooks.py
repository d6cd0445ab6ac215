"""The outbound webhook engine alone, in a schema with only plumbing tables, with two uses of its own."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
import httpx
import pytest
from fakes.asgi import Receive, Scope, Send, read_body, send_response, serve_asgi
from support.harness import REPO
from support.polling import until

from services.common import db as dbmod
from services.common.errors import ApiError
from services.common.events import utc_now
from services.common.migrate import discover, migrate
from services.common.settings import Settings
from services.common.webhook_sender import WebhookSender
from services.common.webhooks import AttemptResult, Endpoint, Resolver, WebhookChannel

# Not a service: no service migrations, so the engine can lean on nothing but its own plumbing tables.
SCHEMA = "hooks_only"
BILLING_SECRET = "billing-secret"

Answer = int | Literal["hang"]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Receivers on a real socket: answers as scripted per path (then 200) and records every request."""

    base: str = ""
    answers: dict[str, list[Answer]] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        headers = {bytes(k).decode().lower(): bytes(v).decode() for k, v in scope["headers"]}
        self.requests.append(Received(scope["path"], headers, body))
        scripted = self.answers.get(scope["path"], [])
        answer = scripted.pop(0) if scripted else 200
        if answer == "hang":
            await receive()  # returns once the sender gives up or dies and the connection drops
            return
        await send_response(send, answer, b"{}" if answer < 300 else b"no")

    def to(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    app = Receiver()
    async with serve_asgi(app) as base:
        app.base = base
        yield app


@pytest.fixture
async def pool(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[dbmod.Pool]:
    await migrate(settings.database_url, SCHEMA, discover(None))
    # The corporate use keeps its endpoints in a table of its own; the engine only sees the resolver.
    await db.execute(
        f"create table {SCHEMA}.companies (id text primary key, hook_url text not null, hook_secret text)"
    )
    created = await dbmod.create_pool(settings.database_url, SCHEMA)
    yield created
    await created.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def company_endpoint(conn: dbmod.Connection, company_id: str) -> Endpoint | None:
    record = await conn.fetchrow("select hook_url, hook_secret from companies where id = $1", company_id)
    if record is None or not record["hook_url"]:
        return None
    return Endpoint(url=record["hook_url"], secret=record["hook_secret"] or "")


def corporate(**overrides: Any) -> WebhookChannel:
    settings: dict[str, Any] = {"disabled_reason": "company webhooks off"}
    return WebhookChannel(name="corporate", **(settings | overrides))


BILLING = WebhookChannel(name="billing")


def billing_endpoint(receiver: Receiver) -> Resolver:
    async def endpoint(_conn: dbmod.Connection, subscriber: str) -> Endpoint | None:
        assert subscriber == "billing"
        return Endpoint(url=f"{receiver.base}/billing/commands", secret=BILLING_SECRET)

    return endpoint


async def add_company(db: asyncpg.Connection, company_id: str, url: str, secret: str | None) -> None:
    await db.execute(
        f"insert into {SCHEMA}.companies values ($1, $2, $3)"
        " on conflict (id) do update set hook_url = $2, hook_secret = $3",
        company_id,
        url,
        secret,
    )


async def enqueue(pool: dbmod.Pool, channel: WebhookChannel, subscriber: str, **kw: Any) -> uuid.UUID | None:
    async with dbmod.transaction(pool) as conn:
        return await channel.enqueue(
            conn,
            subscriber=subscriber,
            event_id=kw.get("event_id", uuid.uuid4()),
            event_type=kw.get("event_type", "test.happened.v1"),
            payload=kw.get("payload", b'{"n":1}'),
        )


async def row(db: asyncpg.Connection, delivery_id: uuid.UUID | None) -> asyncpg.Record:
    found = await db.fetchrow(f"select * from {SCHEMA}.outbound_webhooks where id = $1", delivery_id)
    assert found is not None
    return found


async def attempt_codes(db: asyncpg.Connection, delivery_id: uuid.UUID | None) -> list[int | None]:
    rows = await db.fetch(
        f"select status_code from {SCHEMA}.outbound_webhook_attempts where delivery_id = $1 order by id",
        delivery_id,
    )
    return [r["status_code"] for r in rows]


def verified(secret: str, request: Received) -> bool:
    """A receiver's check as docs/webhooks.md describes it."""
    parts = dict(p.split("=", 1) for p in request.headers["x-abonent-signature"].split(","))
    expected = hmac.new(secret.encode(), parts["t"].encode() + b"." + request.body, hashlib.sha256)
    return (
        hmac.compare_digest(expected.hexdigest(), parts["v1"]) and abs(time.time() - int(parts["t"])) <= 300
    )


def documented_verifier() -> Callable[..., Any]:
    """The receiver's verifier exactly as docs/webhooks.md prints it."""
    block = (REPO / "docs" / "webhooks.md").read_text().split("```python\n")[1].split("```")[0]
    namespace: dict[str, Any] = {}
    exec(compile(block, "docs/webhooks.md", "exec"), namespace)  # noqa: S102 - our own docs
    verify: Callable[..., Any] = namespace["verify"]
    return verify


class Clock:
    """An injectable clock the test moves forward instead of waiting out backoffs and leases."""

    def __init__(self) -> None:
        self.now = utc_now()

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


async def test_two_uses_share_a_schema_idempotently_and_never_cross(
    db: asyncpg.Connection, pool: dbmod.Pool, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    await add_company(db, "acme", f"{receiver.base}/acme", "acme-secret")
    await add_company(db, "globex", f"{receiver.base}/globex", None)
    corp, bill = corporate(), BILLING
    event = uuid.uuid4()

    acme = await enqueue(pool, corp, "acme", event_id=event, payload=b'{"for":"acme"}')
    assert await enqueue(pool, corp, "acme", event_id=event) is None  # a redelivered event: no second row
    globex = await enqueue(pool, corp, "globex", event_id=event, payload=b'{"for":"globex"}')
    command = await enqueue(pool, bill, "billing", event_id=event, event_type="billing.suspend.v1")
    assert None not in (acme, globex, command)
    assert await db.fetchval(f"select count(*) from {SCHEMA}.outbound_webhooks") == 3

    # Each sender claims only its own channel's rows.
    assert await WebhookSender(pool, http, bill, billing_endpoint(receiver)).deliver_due() == 1
    assert [r.path for r in receiver.requests] == ["/billing/commands"]
    assert await WebhookSender(pool, http, corp, company_endpoint).deliver_due() == 2
    assert await WebhookSender(pool, http, corp, company_endpoint).deliver_due() == 0

    [to_acme], [to_globex], [to_billing] = (
        receiver.to("/acme"),
        receiver.to("/globex"),
        receiver.to("/billing/commands"),
    )
    assert to_acme.body == b'{"for":"acme"}'
    verify = documented_verifier()
    signature = to_acme.headers["x-abonent-signature"]
    assert verify("acme-secret", signature, to_acme.body) == {"for": "acme"}
    with pytest.raises(ValueError, match="bad signature"):
        verify("acme-secret", signature, b'{"for":"evil"}')
    with pytest.raises(ValueError, match="replay"):
        verify("acme-secret", signature, to_acme.body, now=time.time() + 301)
    assert verified("acme-secret", to_acme)
    assert not verified(BILLING_SECRET, to_acme)
    assert "x-abonent-signature" not in to_globex.headers  # no secret: sent unsigned
    assert verified(BILLING_SECRET, to_billing)
    assert to_billing.headers["x-abonent-event"] == "billing.suspend.v1"
    for request, delivery_id in ((to_acme, acme), (to_globex, globex), (to_billing, command)):
        assert request.headers["x-abonent-delivery"] == request.headers["idempotency-key"] == str(delivery_id)
        assert request.headers["content-type"] == "application/json"
        assert (await row(db, delivery_id))["status"] == "delivered"

    async with pool.acquire() as conn:
        assert [d.id for d in await corp.list_deliveries(conn, "acme")] == [acme]
        assert [d.id for d in await corp.list_deliveries(conn, "globex", status="delivered")] == [globex]
        assert await corp.list_deliveries(conn, "globex", status="failed") == []
        assert await bill.list_deliveries(conn, "acme") == []  # same subscriber key, other channel: nothing
        assert [a.status_code for a in await corp.list_attempts(conn, acme)] == [200]
        assert await bill.list_attempts(conn, acme) == []
    async with dbmod.transaction(pool) as conn:
        for channel, delivery_id, subscriber in ((bill, acme, None), (corp, acme, "globex")):
            with pytest.raises(ApiError) as refused:
                await channel.requeue(conn, delivery_id, subscriber=subscriber)
            assert (refused.value.status_code, refused.value.code) == (404, "delivery_not_found")
        with pytest.raises(ApiError) as not_failed:
            await corp.requeue(conn, acme, subscriber="acme")
        assert (not_failed.value.status_code, not_failed.value.code) == (409, "delivery_not_failed")


async def test_a_sender_that_dies_mid_post_leaves_the_delivery_to_another_after_the_lease(
    db: asyncpg.Connection, pool: dbmod.Pool, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    await add_company(db, "acme", f"{receiver.base}/acme", "acme-secret")
    corp = corporate()
    delivery_id = await enqueue(pool, corp, "acme")
    receiver.answers["/acme"] = ["hang"]
    clock = Clock()

    dying = asyncio.create_task(WebhookSender(pool, http, corp, company_endpoint, clock=clock).deliver_due())

    async def posted() -> bool:
        return bool(receiver.requests)

    await until(posted)
    dying.cancel()  # the process dies mid-POST: nothing is recorded
    with pytest.raises(asyncio.CancelledError):
        await dying
    leased = await row(db, delivery_id)
    assert (leased["status"], leased["attempts"]) == ("pending", 0)
    assert await attempt_codes(db, delivery_id) == []

    other = WebhookSender(pool, http, corp, company_endpoint, clock=clock)
    assert await other.deliver_due() == 0  # still leased
    clock.advance(corp.lease.total_seconds() - 1)
    assert await other.deliver_due() == 0
    clock.advance(2)
    assert await other.deliver_due() == 1  # the lease ran out: claimable again
    done = await row(db, delivery_id)
    assert (done["status"], done["attempts"], done["last_status_code"]) == ("delivered", 1, 200)
    assert await attempt_codes(db, delivery_id) == [200]
    first, second = receiver.requests
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"] == str(delivery_id)


async def test_a_sender_whose_lease_was_taken_over_logs_its_attempt_but_does_not_decide(
    db: asyncpg.Connection, pool: dbmod.Pool
) -> None:
    corp = corporate()
    delivery_id = await enqueue(pool, corp, "acme")
    now = utc_now()
    async with pool.acquire() as conn:
        [slow] = await corp.claim_due(conn, now=now, limit=10)
        [taken_over] = await corp.claim_due(conn, now=now + corp.lease + dt.timedelta(seconds=1), limit=10)
    assert slow.id == taken_over.id == delivery_id
    assert slow.lease_token != taken_over.lease_token

    late = AttemptResult(status_code=200, error=None, duration_ms=5)
    async with dbmod.transaction(pool) as conn:
        assert not await corp.record_attempt(
            conn,
            slow,
            url="http://x",
            attempted_at=now,
            status="delivered",
            next_attempt_at=None,
            result=late,
        )
    assert (await row(db, delivery_id))["status"] == "pending"
    assert await attempt_codes(db, delivery_id) == [200]  # the POST happened; the log says so
    failed = AttemptResult(status_code=500, error="HTTP 500", duration_ms=5)
    async with dbmod.transaction(pool) as conn:
        assert await corp.record_attempt(
            conn,
            taken_over,
            url="http://x",
            attempted_at=now,
            status="failed",
            next_attempt_at=None,
            result=failed,
        )
    assert (await row(db, delivery_id))["status"] == "failed"


async def test_410_stops_at_once_and_a_schedule_of_its_own_gives_up_after_its_last_attempt(
    db: asyncpg.Connection, pool: dbmod.Pool, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    await add_company(db, "acme", f"{receiver.base}/acme", "s")
    await add_company(db, "initech", f"{receiver.base}/initech", "s")
    corp = corporate(retry_delays_s=(5.0, 50.0))
    assert corp.max_attempts == 3
    receiver.answers = {"/acme": [503, 503, 503], "/initech": [410]}
    acme = await enqueue(pool, corp, "acme")
    initech = await enqueue(pool, corp, "initech")
    clock = Clock()
    sender = WebhookSender(pool, http, corp, company_endpoint, clock=clock)

    assert await sender.deliver_due() == 2
    gone = await row(db, initech)
    assert (gone["status"], gone["attempts"], gone["last_status_code"]) == ("failed", 1, 410)
    assert gone["next_attempt_at"] is None
    retrying = await row(db, acme)
    assert (retrying["status"], retrying["last_error"]) == ("pending", "HTTP 503: no")
    assert dt.timedelta(seconds=4) <= retrying["next_attempt_at"] - clock.now <= dt.timedelta(seconds=6)
    assert await sender.deliver_due() == 0  # not due yet

    clock.advance(6)
    assert await sender.deliver_due() == 1
    assert dt.timedelta(seconds=40) <= (await row(db, acme))["next_attempt_at"] - clock.now
    clock.advance(61)
    assert await sender.deliver_due() == 1
    clock.advance(3600)
    assert await sender.deliver_due() == 0
    given_up = await row(db, acme)
    assert (given_up["status"], given_up["attempts"], given_up["next_attempt_at"]) == ("failed", 3, None)
    assert await attempt_codes(db, acme) == [503, 503, 503]
    assert len(receiver.to("/initech")) == 1

    async with dbmod.transaction(pool) as conn:
        requeued = await corp.requeue(conn, initech, subscriber="initech")
    assert (requeued.status, requeued.attempts) == ("pending", 0)
    assert await sender.deliver_due() == 1
    assert (await row(db, initech))["status"] == "delivered"
    assert await attempt_codes(db, initech) == [410, 200]


async def test_a_subscriber_without_an_endpoint_fails_and_a_broken_resolver_spends_no_attempt(
    db: asyncpg.Connection, pool: dbmod.Pool, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    await add_company(db, "acme", f"{receiver.base}/acme", "s")
    await add_company(db, "quiet", "", None)
    broken = True

    async def flaky(conn: dbmod.Connection, subscriber: str) -> Endpoint | None:
        if subscriber == "flaky" and broken:
            raise RuntimeError("directory unavailable")
        return await company_endpoint(conn, "acme" if subscriber == "flaky" else subscriber)

    corp = corporate()
    quiet, fine, flake = [await enqueue(pool, corp, name) for name in ("quiet", "acme", "flaky")]
    clock = Clock()
    sender = WebhookSender(pool, http, corp, flaky, clock=clock)

    assert await sender.deliver_due() == 3
    off = await row(db, quiet)
    assert (off["status"], off["attempts"], off["last_error"]) == ("failed", 1, "company webhooks off")
    assert (await row(db, fine))["status"] == "delivered"  # one bad subscriber never stops the pass
    waiting = await row(db, flake)
    assert (waiting["status"], waiting["attempts"]) == ("pending", 0)
    assert len(receiver.requests) == 1

    broken = False
    assert await sender.deliver_due() == 0  # leased until the lease runs out
    clock.advance(corp.lease.total_seconds() + 1)
    assert await sender.deliver_due() == 1
    assert (await row(db, flake))["status"] == "delivered"


async def test_the_sender_loop_delivers_until_stopped(
    db: asyncpg.Connection, pool: dbmod.Pool, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    sender = WebhookSender(pool, http, BILLING, billing_endpoint(receiver), poll_interval_s=0.05)
    await sender.start()
    try:
        delivery_id = await enqueue(pool, BILLING, "billing")

        async def delivered() -> bool:
            return bool((await row(db, delivery_id))["status"] == "delivered")

        await until(delivered)
    finally:
        await sender.stop()


def test_a_lease_must_outlast_the_request_timeout() -> None:
    with pytest.raises(ValueError, match="lease"):
        corporate(request_timeout_s=30, lease=dt.timedelta(seconds=30))
    assert corporate().max_attempts == 12
