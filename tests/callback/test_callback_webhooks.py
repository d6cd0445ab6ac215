"""CRM webhooks against real PostgreSQL, NATS and HTTP: queued once, signed, retried, given up, listed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import httpx
import msgspec
import pytest
from fakes.asgi import Receive, Scope, Send, read_body, send_response, serve_asgi
from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler
from litestar.testing import AsyncTestClient
from support.harness import make_settings, migrate_service
from support.polling import until

from services.callback.app import SPEC
from services.callback.schemas import SiteSettings
from services.callback.store import sites as site_store
from services.callback.usecases.orgs import PLATFORM, Organisations, Tenancy
from services.callback.webhooks import (
    CRM_WEBHOOKS,
    crm_endpoints,
    enqueue_webhook,
    webhook_consumer_spec,
    webhook_routes,
)
from services.common import bus as busmod
from services.common import consumers
from services.common import db as dbmod
from services.common.crypto import DataProtector
from services.common.embedded import free_port
from services.common.errors import EXCEPTION_HANDLERS, ApiError
from services.common.events import (
    CallbackCompleted,
    CallbackEvent,
    CallbackFailed,
    CallbackRequested,
    SystemProbe,
    encode_event,
)
from services.common.logging import mask_phone
from services.common.migrate import discover, migrate
from services.common.settings import Settings
from services.common.webhook_sender import WebhookSender
from services.common.webhooks import RETRY_DELAYS_S

PHONE = "+79123456789"
SECRET = "whsec_0123456789abcdef"
SITE = "shop-1"
MAX_ATTEMPTS = CRM_WEBHOOKS.max_attempts

Answer = int | Literal["hang"]


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes


class CrmReceiver:
    """A CRM endpoint on a real socket: records every request and answers as scripted (then 200)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.answers: list[Answer] = []
        self.delay_s = 0.0
        self.url = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        headers = {bytes(k).decode().lower(): bytes(v).decode() for k, v in scope["headers"]}
        self.requests.append(Received(headers, body))
        answer = self.answers.pop(0) if self.answers else 200
        if answer == "hang":
            await receive()  # returns once the sender gives up and drops the connection
            return
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        await send_response(send, answer, b'{"ok":true}' if answer < 300 else b"crm says no")


@pytest.fixture
async def receiver() -> AsyncIterator[CrmReceiver]:
    crm = CrmReceiver()
    async with serve_asgi(crm) as base:
        crm.url = f"{base}/hooks/abonent?token=crm-token"
        yield crm


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[dbmod.Pool]:
    await migrate_service(settings, "callback")
    created = await dbmod.create_pool(settings.database_url, "callback")
    yield created
    await created.close()


@pytest.fixture
async def consumer(pool: dbmod.Pool, bus: busmod.Bus) -> AsyncIterator[consumers.ConsumerRunner]:
    runner = consumers.ConsumerRunner(pool, bus, webhook_consumer_spec())
    await runner.start()
    yield runner
    # Every test waits until its events are acked, so nothing is in flight: skip the idle 1 s fetch.
    await runner.stop(timeout=0.05)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def sender(pool: dbmod.Pool, http: httpx.AsyncClient) -> WebhookSender:
    return WebhookSender(pool, http, CRM_WEBHOOKS, ENDPOINTS)


PROTECTOR = DataProtector.from_settings(make_settings("", "", ""))
ENDPOINTS = crm_endpoints(PROTECTOR)


async def add_site(db: asyncpg.Connection, site_key: str, url: str, secret: str = SECRET) -> None:
    settings = msgspec.to_builtins(
        SiteSettings(name="x", allowed_origins=["https://a.example"], crm_webhook_url=url)
    )
    await db.execute(
        "insert into callback.sites (site_key, settings, crm_webhook_secret_enc) values ($1, $2::jsonb, $3)",
        site_key,
        json.dumps(settings),
        PROTECTOR.encrypt(secret, site_store.WEBHOOK_SECRET_CONTEXT, site_key),
    )


def requested(site_key: str = SITE) -> CallbackRequested:
    now = dt.datetime.now(dt.UTC)
    return CallbackRequested(
        callback_id=uuid.uuid4(),
        site_key=site_key,
        state="requested",
        phone=PHONE,
        visitor_tz="Europe/Moscow",
        lang="ru",
        promised_earliest=now,
        promised_latest=now + dt.timedelta(minutes=5),
        promise_kind="asap",
    )


async def publish(bus: busmod.Bus, *events: CallbackEvent) -> None:
    """Publish and wait until the webhook consumer has acknowledged everything in the stream."""
    for event in events:
        await bus.publish(event.SUBJECT, encode_event(event), str(event.event_id))
    stream = bus.ns.stream("CALLBACK")

    async def all_acked() -> bool:
        last = (await bus.js.stream_info(stream)).state.last_seq
        info = await bus.js.consumer_info(stream, "crm_webhooks")
        return bool(info.ack_floor.stream_seq == last and not info.num_pending and not info.num_ack_pending)

    await until(all_acked)


async def deliveries(db: asyncpg.Connection, site_key: str = SITE) -> list[asyncpg.Record]:
    return await db.fetch(
        "select * from callback.outbound_webhooks where channel = 'crm' and subscriber = $1"
        " order by created_at",
        site_key,
    )


async def attempt_codes(db: asyncpg.Connection, delivery_id: uuid.UUID) -> list[int | None]:
    rows = await db.fetch(
        "select status_code from callback.outbound_webhook_attempts where delivery_id = $1 order by id",
        delivery_id,
    )
    return [r["status_code"] for r in rows]


async def make_due(db: asyncpg.Connection) -> None:
    """Skip the backoff wait: the retry is due now."""
    await db.execute(
        "update callback.outbound_webhooks set next_attempt_at = now() - interval '1 second'"
        " where status = 'pending'"
    )


def independently_verified(secret: str, signature: str, body: bytes) -> bool:
    """A receiver's check, written from the documented scheme, not from the sender's code."""
    parts = dict(part.split("=", 1) for part in signature.split(","))
    timestamp = parts["t"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(time.time() - int(timestamp)) <= 300


@pytest.mark.usefixtures("consumer")
async def test_events_are_posted_once_signed_and_without_the_phone(
    db: asyncpg.Connection,
    pool: dbmod.Pool,
    bus: busmod.Bus,
    receiver: CrmReceiver,
    sender: WebhookSender,
) -> None:
    await add_site(db, SITE, receiver.url)
    first = requested()
    failed = CallbackFailed(
        callback_id=first.callback_id,
        site_key=SITE,
        state="failed",
        phone=PHONE,
        lang="ru",
        outcome="no_answer",
        attempts=3,
    )
    completed = CallbackCompleted(callback_id=uuid.uuid4(), site_key=SITE, state="completed", talk_seconds=42)
    await publish(bus, first, first, failed, completed)  # the repeat is dropped by JetStream's dedupe
    # The same event again past JetStream's dedupe window (new message id) and straight into the handler:
    # the inbox and the unique (site_key, event_id) keep it one delivery.
    await bus.publish(first.SUBJECT, encode_event(first), f"{first.event_id}-again")
    await publish(bus)  # nothing new: wait until that copy is consumed too
    async with dbmod.transaction(pool) as conn:
        await enqueue_webhook(conn, first)

    queued = await deliveries(db)
    assert sorted(r["event_type"] for r in queued) == [
        "callback.completed.v1",
        "callback.failed.v1",
        "callback.requested.v1",
    ]
    assert await sender.deliver_due() == 3
    assert await sender.deliver_due() == 0

    by_type = {r.headers["x-abonent-event"]: r for r in receiver.requests}
    assert len(receiver.requests) == 3
    assert set(by_type) == {"callback.requested.v1", "callback.failed.v1", "callback.completed.v1"}
    ids = {r["event_type"]: r["id"] for r in await deliveries(db)}
    for event_type, request in by_type.items():
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-abonent-delivery"] == str(ids[event_type])
        assert request.headers["idempotency-key"] == str(ids[event_type])
        assert independently_verified(SECRET, request.headers["x-abonent-signature"], request.body)
        assert not independently_verified(
            "another secret", request.headers["x-abonent-signature"], request.body
        )
        # Neither the number nor a recognisable run of its digits leaves in a webhook.
        assert b"9123456" not in request.body

    body = json.loads(by_type["callback.requested.v1"].body)
    assert body["event_id"] == str(first.event_id)
    assert body["callback_id"] == str(first.callback_id)
    assert body["phone"] == mask_phone(PHONE)
    assert json.loads(by_type["callback.failed.v1"].body)["phone"] == mask_phone(PHONE)
    assert json.loads(by_type["callback.completed.v1"].body)["talk_seconds"] == 42

    for row in await deliveries(db):
        assert b"9123456" not in row["payload"]
        assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 1, 200)
        assert row["delivered_at"] is not None
        assert row["next_attempt_at"] is None
        assert await attempt_codes(db, row["id"]) == [200]


@pytest.mark.usefixtures("consumer")
async def test_a_failed_attempt_is_retried_with_backoff_until_it_succeeds(
    db: asyncpg.Connection,
    bus: busmod.Bus,
    receiver: CrmReceiver,
    sender: WebhookSender,
) -> None:
    await add_site(db, SITE, receiver.url)
    receiver.answers = [500]
    await publish(bus, requested())

    assert await sender.deliver_due() == 1
    [row] = await deliveries(db)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("pending", 1, 500)
    assert row["last_error"] == "HTTP 500: crm says no"
    [attempted_at] = await db.fetch(
        "select attempted_at from callback.outbound_webhook_attempts where delivery_id = $1", row["id"]
    )
    wait = row["next_attempt_at"] - attempted_at["attempted_at"]
    assert dt.timedelta(seconds=8) <= wait <= dt.timedelta(seconds=12)
    assert await sender.deliver_due() == 0  # not due yet

    await make_due(db)
    assert await sender.deliver_due() == 1
    [row] = await deliveries(db)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 2, 200)
    assert await attempt_codes(db, row["id"]) == [500, 200]
    first, second = receiver.requests
    assert first.body == second.body
    assert first.headers["x-abonent-delivery"] == second.headers["x-abonent-delivery"]


@pytest.mark.usefixtures("consumer")
async def test_gone_stops_retrying_at_once(
    db: asyncpg.Connection,
    bus: busmod.Bus,
    receiver: CrmReceiver,
    sender: WebhookSender,
) -> None:
    await add_site(db, SITE, receiver.url)
    receiver.answers = [410]
    await publish(bus, requested())

    assert await sender.deliver_due() == 1
    await make_due(db)
    assert await sender.deliver_due() == 0
    [row] = await deliveries(db)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("failed", 1, 410)
    assert row["next_attempt_at"] is None
    assert len(receiver.requests) == 1


@pytest.mark.usefixtures("consumer")
async def test_a_delivery_fails_after_the_last_attempt(
    db: asyncpg.Connection,
    bus: busmod.Bus,
    receiver: CrmReceiver,
    sender: WebhookSender,
) -> None:
    await add_site(db, SITE, receiver.url)
    receiver.answers = [503] * MAX_ATTEMPTS
    await publish(bus, requested())

    for _ in range(MAX_ATTEMPTS):
        assert await sender.deliver_due() == 1
        await make_due(db)
    assert await sender.deliver_due() == 0
    [row] = await deliveries(db)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("failed", MAX_ATTEMPTS, 503)
    assert await attempt_codes(db, row["id"]) == [503] * MAX_ATTEMPTS
    assert len(receiver.requests) == MAX_ATTEMPTS


@pytest.mark.usefixtures("consumer")
async def test_timeouts_and_refused_connections_are_failed_attempts(
    db: asyncpg.Connection,
    pool: dbmod.Pool,
    bus: busmod.Bus,
    receiver: CrmReceiver,
    http: httpx.AsyncClient,
) -> None:
    await add_site(db, "slow-crm", receiver.url)
    await add_site(db, "no-crm", f"http://127.0.0.1:{free_port()}/hooks")
    receiver.answers = ["hang"]
    await publish(bus, requested("slow-crm"), requested("no-crm"))

    sender = WebhookSender(pool, http, dataclasses.replace(CRM_WEBHOOKS, request_timeout_s=0.5), ENDPOINTS)
    assert await sender.deliver_due() == 2
    [slow] = await deliveries(db, "slow-crm")
    [refused] = await deliveries(db, "no-crm")
    for row in (slow, refused):
        assert (row["status"], row["attempts"], row["last_status_code"]) == ("pending", 1, None)
        assert row["next_attempt_at"] is not None
    assert slow["last_error"] == "no answer within 0.5 s"
    assert refused["last_error"].startswith("ConnectError")


@pytest.mark.usefixtures("consumer")
async def test_two_senders_deliver_each_event_once(
    db: asyncpg.Connection,
    settings: Settings,
    bus: busmod.Bus,
    receiver: CrmReceiver,
    sender: WebhookSender,
) -> None:
    await add_site(db, SITE, receiver.url)
    await publish(bus, *(requested() for _ in range(24)))
    other_pool = await dbmod.create_pool(settings.database_url, "callback")
    racing = (sender, WebhookSender(other_pool, sender.http, CRM_WEBHOOKS, ENDPOINTS))
    tried = 0
    try:
        # Rounds in lockstep: both claims reach PostgreSQL at the same moment, every round.
        while sent := sum(await asyncio.gather(*(s.deliver_due(limit=3) for s in racing))):
            tried += sent
    finally:
        await other_pool.close()

    assert tried == 24
    delivered = [r.headers["x-abonent-delivery"] for r in receiver.requests]
    assert len(delivered) == len(set(delivered)) == 24
    assert {(r["status"], r["attempts"]) for r in await deliveries(db)} == {("delivered", 1)}


@pytest.mark.usefixtures("consumer")
async def test_sites_without_a_webhook_queue_nothing(
    db: asyncpg.Connection,
    pool: dbmod.Pool,
    bus: busmod.Bus,
    sender: WebhookSender,
) -> None:
    await add_site(db, "quiet", "")
    await publish(bus, requested("quiet"), requested("no-such-site"))
    async with dbmod.transaction(pool) as conn:
        await enqueue_webhook(conn, SystemProbe())

    assert await db.fetchval("select count(*) from callback.outbound_webhooks") == 0
    assert await db.fetchval("select count(*) from callback.inbox where consumer = 'crm_webhooks'") == 2
    assert await sender.deliver_due() == 0


@pytest.mark.usefixtures("consumer")
async def test_a_webhook_turned_off_after_queueing_fails_its_deliveries(
    db: asyncpg.Connection,
    bus: busmod.Bus,
    receiver: CrmReceiver,
    sender: WebhookSender,
) -> None:
    await add_site(db, SITE, receiver.url)
    await publish(bus, requested())
    await db.execute(
        'update callback.sites set settings = settings || \'{"crm_webhook_url": ""}\' where site_key = $1',
        SITE,
    )

    assert await sender.deliver_due() == 1
    [row] = await deliveries(db)
    assert (row["status"], row["last_error"]) == ("failed", "webhook turned off for the site")
    assert receiver.requests == []


@pytest.mark.usefixtures("consumer")
async def test_the_sender_loop_delivers_until_stopped(
    db: asyncpg.Connection,
    pool: dbmod.Pool,
    bus: busmod.Bus,
    receiver: CrmReceiver,
    http: httpx.AsyncClient,
) -> None:
    await add_site(db, SITE, receiver.url)
    sender = WebhookSender(pool, http, CRM_WEBHOOKS, ENDPOINTS, poll_interval_s=0.05)
    await sender.start()
    try:
        await publish(bus, requested())

        async def received() -> bool:
            return bool(receiver.requests)

        await until(received)
    finally:
        await sender.stop()
    [row] = await deliveries(db)
    assert row["status"] == "delivered"


async def allow(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    return None


async def deny(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    raise ApiError(401, "unauthorized", "A valid admin bearer token is required")


def admin_app(settings: Settings, guard: Callable[..., Awaitable[None]]) -> Litestar:
    """The routes as the service mounts them: the pool comes from DI, made in the app's own event loop."""

    @contextlib.asynccontextmanager
    async def own_pool(app: Litestar) -> AsyncIterator[None]:
        app.state.pool = await dbmod.create_pool(settings.database_url, "callback")
        try:
            yield
        finally:
            await app.state.pool.close()

    def provide_pool(state: State) -> dbmod.Pool:
        pool: dbmod.Pool = state.pool
        return pool

    def provide_organisations(state: State) -> Organisations:
        return Organisations(state.pool)

    def provide_tenancy() -> Tenancy:
        return PLATFORM  # these tests act as the platform admin (organisations: test_callback_tenants.py)

    return Litestar(
        route_handlers=webhook_routes(guard),
        dependencies={
            "pool": Provide(provide_pool, sync_to_thread=False),
            "organisations": Provide(provide_organisations, sync_to_thread=False),
            "tenancy": Provide(provide_tenancy, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[own_pool],
    )


@pytest.mark.usefixtures("consumer")
async def test_admin_lists_deliveries_and_requeues_a_failed_one(
    db: asyncpg.Connection,
    settings: Settings,
    bus: busmod.Bus,
    receiver: CrmReceiver,
    sender: WebhookSender,
) -> None:
    await add_site(db, SITE, receiver.url)
    await add_site(db, "other", "")
    receiver.answers = [410]
    await publish(bus, requested(), requested())
    assert await sender.deliver_due() == 2
    failed_id = await db.fetchval("select id from callback.outbound_webhooks where status = 'failed'")
    delivered_id = await db.fetchval("select id from callback.outbound_webhooks where status = 'delivered'")

    async with AsyncTestClient(app=admin_app(settings, allow)) as client:
        listed = await client.get(f"/v1/admin/sites/{SITE}/webhook-deliveries")
        assert listed.status_code == 200
        assert len(listed.json()) == 2
        assert set(listed.json()[0]) == {
            "id",
            "event_id",
            "event_type",
            "status",
            "attempts",
            "next_attempt_at",
            "last_status_code",
            "last_error",
            "created_at",
            "delivered_at",
        }
        only_failed = (await client.get(f"/v1/admin/sites/{SITE}/webhook-deliveries?status=failed")).json()
        assert [(d["id"], d["last_status_code"]) for d in only_failed] == [(str(failed_id), 410)]
        assert len((await client.get(f"/v1/admin/sites/{SITE}/webhook-deliveries?limit=1")).json()) == 1
        assert (await client.get("/v1/admin/sites/other/webhook-deliveries")).json() == []

        bad_status = await client.get(f"/v1/admin/sites/{SITE}/webhook-deliveries?status=lost")
        assert bad_status.status_code == 400
        assert bad_status.json()["error"]["field"] == "status"
        unknown_site = await client.get("/v1/admin/sites/nope/webhook-deliveries")
        assert (unknown_site.status_code, unknown_site.json()["error"]["code"]) == (404, "site_not_found")

        retried = await client.post(f"/v1/admin/webhook-deliveries/{failed_id}/retry")
        assert retried.status_code == 202
        assert (retried.json()["status"], retried.json()["attempts"]) == ("pending", 0)
        not_failed = await client.post(f"/v1/admin/webhook-deliveries/{delivered_id}/retry")
        assert (not_failed.status_code, not_failed.json()["error"]["code"]) == (409, "delivery_not_failed")
        unknown = await client.post(f"/v1/admin/webhook-deliveries/{uuid.uuid4()}/retry")
        assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "delivery_not_found")

    assert await sender.deliver_due() == 1
    assert (
        await db.fetchval("select status from callback.outbound_webhooks where id = $1", failed_id)
        == "delivered"
    )
    assert await attempt_codes(db, failed_id) == [410, 200]

    async with AsyncTestClient(app=admin_app(settings, deny)) as client:
        refused = await client.get(f"/v1/admin/sites/{SITE}/webhook-deliveries")
        assert refused.status_code == 401
        assert (await client.post(f"/v1/admin/webhook-deliveries/{failed_id}/retry")).status_code == 401


def test_the_retry_schedule_spans_about_a_day() -> None:
    assert MAX_ATTEMPTS == 12
    assert dt.timedelta(hours=20) < dt.timedelta(seconds=sum(RETRY_DELAYS_S)) < dt.timedelta(hours=26)
    assert dt.timedelta(seconds=8) <= CRM_WEBHOOKS.retry_delay(1) <= dt.timedelta(seconds=12)
    assert CRM_WEBHOOKS.retry_delay(MAX_ATTEMPTS + 5) <= dt.timedelta(seconds=RETRY_DELAYS_S[-1] * 1.2)


# What a deployment had applied before CRM webhooks moved onto the common engine.
BEFORE_COMMON_WEBHOOKS = {
    "plumbing/0001_plumbing",
    "plumbing/0002_outbox_order",
    "service/0001_callbacks",
    "service/0002_agents",
    "service/0003_webhooks",
    "service/0004_promise_reason",
}


async def test_upgrading_moves_queued_deliveries_and_their_log_onto_the_common_engine(
    db: asyncpg.Connection, settings: Settings, receiver: CrmReceiver, http: httpx.AsyncClient
) -> None:
    every = discover(SPEC.migrations_dir)
    await migrate(
        settings.database_url, "callback", [m for m in every if m.version in BEFORE_COMMON_WEBHOOKS]
    )
    # A site as it was stored then: the secret in plaintext inside settings (sealed at start-up now).
    legacy = SiteSettings(name="x", allowed_origins=["https://a.example"], crm_webhook_url=receiver.url)
    await db.execute(
        "insert into callback.sites (site_key, settings) values ($1, $2::jsonb)",
        SITE,
        json.dumps({**msgspec.to_builtins(legacy), "crm_webhook_secret": SECRET}),
    )
    pending, failed = uuid.uuid4(), uuid.uuid4()
    for delivery_id, status, attempts in ((pending, "pending", 1), (failed, "failed", 12)):
        await db.execute(
            "insert into callback.webhook_deliveries (id, site_key, event_id, event_type, url, payload,"
            " status, attempts, next_attempt_at, last_status_code, last_error)"
            " values ($1, $2, $3, 'callback.requested.v1', $4, $5, $6, $7,"
            "  case when $6 = 'pending' then now() - interval '1 second' end, 503, 'HTTP 503')",
            delivery_id,
            SITE,
            uuid.uuid4(),
            receiver.url,
            b'{"old":true}',
            status,
            attempts,
        )
        await db.execute(
            "insert into callback.webhook_attempts (delivery_id, attempted_at, status_code, duration_ms)"
            " select $1, now() - make_interval(mins => n), 503, 7 from generate_series(1, $2) n",
            delivery_id,
            attempts,
        )

    applied = await migrate(settings.database_url, "callback", every)
    assert "plumbing/0006_webhooks" in applied
    assert "service/0007_webhooks_common" in applied
    for old in ("webhook_deliveries", "webhook_attempts"):
        assert await db.fetchval("select to_regclass($1)", f"callback.{old}") is None
    assert len(await attempt_codes(db, failed)) == 12

    pool = await dbmod.create_pool(settings.database_url, "callback")
    try:
        async with pool.acquire() as conn:
            assert await site_store.seal_plain_webhook_secrets(conn, PROTECTOR) == 1
            listed = await CRM_WEBHOOKS.list_deliveries(conn, SITE)
        assert {(d.id, d.status, d.attempts, d.last_status_code) for d in listed} == {
            (pending, "pending", 1, 503),
            (failed, "failed", 12, 503),
        }
        # The moved pending delivery goes on where it stopped: its second attempt, to the site's CRM.
        assert await WebhookSender(pool, http, CRM_WEBHOOKS, ENDPOINTS).deliver_due() == 1
    finally:
        await pool.close()
    assert [r.body for r in receiver.requests] == [b'{"old":true}']
    [moved] = [r for r in await deliveries(db) if r["id"] == pending]
    assert (moved["status"], moved["attempts"]) == ("delivered", 2)
    assert await attempt_codes(db, pending) == [503, 200]
