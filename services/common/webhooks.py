"""Signed outbound webhooks: the channel (queue, lease, attempt log, re-queue), its types, the signature."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec

from services.common import db
from services.common.errors import ApiError

REQUEST_TIMEOUT_S = 10.0
# Waits after failed attempt 1, 2, …: about 24 h from the first attempt to the last of 12.
RETRY_DELAYS_S: tuple[float, ...] = (10, 30, 120, 600, 1800, 3600, 7200, 10800, 14400, 18000, 28800)
# A receiver coming back after an outage should not get every queued delivery in the same second.
RETRY_JITTER = 0.2
# A claimed delivery is hidden from other senders this long; a sender that dies mid-POST leaves it to be
# retried after the lease. Comfortably longer than one pass (all its POSTs run concurrently, ≤ timeout).
CLAIM_LEASE = dt.timedelta(seconds=120)


DeliveryStatus = Literal["pending", "delivered", "failed"]


class Endpoint(msgspec.Struct, kw_only=True, frozen=True):
    """Where a subscriber's deliveries go now. An empty secret sends them unsigned."""

    url: str
    secret: str


# `async (conn, subscriber) -> Endpoint | None`; None means the subscriber has turned deliveries off.
Resolver = Callable[[db.Connection, str], Awaitable[Endpoint | None]]


class WebhookDelivery(msgspec.Struct, kw_only=True, frozen=True):
    """A delivery as the back office sees it (the payload and URL stay out of listings)."""

    id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: dt.datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: dt.datetime
    delivered_at: dt.datetime | None


class WebhookAttempt(msgspec.Struct, kw_only=True, frozen=True):
    """One POST (or the reason none was made) and what came of it."""

    attempted_at: dt.datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class ClaimedDelivery(msgspec.Struct, kw_only=True, frozen=True):
    """A due delivery a sender holds the lease on."""

    id: uuid.UUID
    subscriber: str
    event_type: str
    payload: bytes
    attempts: int
    lease_token: uuid.UUID


class AttemptResult(msgspec.Struct, kw_only=True, frozen=True):
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


_DELIVERY_COLUMNS = ", ".join(f.name for f in msgspec.structs.fields(WebhookDelivery))


def _delivery(record: Any) -> WebhookDelivery:
    return msgspec.convert(dict(record), WebhookDelivery)


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Abonent-Signature value: `t=<unix seconds>,v1=<hex>` (Stripe-style; docs/webhooks.md).

        v1 = hex(HMAC-SHA256(key=secret as UTF-8, message=f"{t}." as UTF-8 + raw request body bytes))

    A receiver verifies it on the raw body in constant time, rejects |now - t| > 300 s (replays), ignores
    unknown keys (a later scheme adds its version next to v1) and dedupes by the body's `event_id`.
    """
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class WebhookChannel:
    """One use of the engine (e.g. "billing"): its rows, retry schedule and metrics.

    Deliveries belong to a `subscriber`, an opaque key the service chooses and its sender's resolver
    understands. Several channels can share a schema: each claims, lists and re-queues only its own rows.
    The resolver belongs to the sender, not here: it often needs run-time parts (the keyring that opens a
    stored secret), while enqueueing, listing and re-queueing need none.
    """

    name: str
    retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S
    retry_jitter: float = RETRY_JITTER
    request_timeout_s: float = REQUEST_TIMEOUT_S
    lease: dt.timedelta = CLAIM_LEASE
    # Logged as the attempt's error when the resolver says the subscriber has no endpoint any more.
    disabled_reason: str = "no endpoint for this subscriber"
    content_type: str = "application/json"

    def __post_init__(self) -> None:
        # A lease shorter than one POST would let a second sender repeat a delivery that is still in flight.
        if self.lease.total_seconds() <= self.request_timeout_s:
            raise ValueError(f"webhook channel {self.name!r}: the lease must outlast the request timeout")

    @property
    def max_attempts(self) -> int:
        return len(self.retry_delays_s) + 1

    def retry_delay(self, failed_attempts: int) -> dt.timedelta:
        """Backoff before the next attempt after `failed_attempts` failures, with ± jitter."""
        base = self.retry_delays_s[min(failed_attempts, len(self.retry_delays_s)) - 1]
        spread = random.uniform(1 - self.retry_jitter, 1 + self.retry_jitter)
        return dt.timedelta(seconds=base * spread)

    async def enqueue(
        self, conn: db.Connection, *, subscriber: str, event_id: uuid.UUID, event_type: str, payload: bytes
    ) -> uuid.UUID | None:
        """Queue a delivery in the caller's transaction; its id, or None if this event is queued already.

        Idempotent per (subscriber, event_id): a consumer that sees an event twice queues it once.
        """
        queued: uuid.UUID | None = await conn.fetchval(
            "insert into outbound_webhooks (id, channel, subscriber, event_id, event_type, payload)"
            " values ($1, $2, $3, $4, $5, $6)"
            " on conflict (channel, subscriber, event_id) do nothing returning id",
            uuid.uuid4(),
            self.name,
            subscriber,
            event_id,
            event_type,
            payload,
        )
        return queued

    async def claim_due(self, conn: db.Connection, *, now: dt.datetime, limit: int) -> list[ClaimedDelivery]:
        """Lease due deliveries: next_attempt_at moves to the lease's expiry in the same statement.

        A lease instead of a transaction held over the POSTs: no connection or row lock waits on a slow
        receiver, and a sender that dies leaves its rows due again when the lease runs out.
        """
        records = await conn.fetch(
            "with due as ("
            "  select id from outbound_webhooks"
            "  where channel = $1 and status = 'pending' and next_attempt_at <= $2"
            "  order by next_attempt_at limit $3"
            "  for update skip locked"
            ")"
            " update outbound_webhooks w set next_attempt_at = $4, lease_token = $5 from due"
            " where w.id = due.id"
            " returning w.id, w.subscriber, w.event_type, w.payload, w.attempts, w.lease_token",
            self.name,
            now,
            limit,
            now + self.lease,
            uuid.uuid4(),
        )
        return [msgspec.convert(dict(r), ClaimedDelivery) for r in records]

    async def record_attempt(
        self,
        conn: db.Connection,
        delivery: ClaimedDelivery,
        *,
        url: str | None,
        attempted_at: dt.datetime,
        status: DeliveryStatus,
        next_attempt_at: dt.datetime | None,
        result: AttemptResult,
    ) -> bool:
        """Log the attempt and move the delivery on; False if another sender has taken over the lease.

        The attempt is logged either way (the POST happened); only the lease holder decides what's next.
        """
        await conn.execute(
            "insert into outbound_webhook_attempts"
            " (delivery_id, attempted_at, status_code, error, duration_ms) values ($1, $2, $3, $4, $5)",
            delivery.id,
            attempted_at,
            result.status_code,
            result.error,
            result.duration_ms,
        )
        moved = await conn.fetchval(
            "update outbound_webhooks set status = $2, attempts = attempts + 1, next_attempt_at = $3,"
            " last_status_code = $4, last_error = $5, url = coalesce($6, url), lease_token = null,"
            " delivered_at = case when $2 = 'delivered' then $7 else delivered_at end,"
            " finished_at = case when $2 = 'pending' then null else $7 end"
            " where id = $1 and status = 'pending' and lease_token = $8 returning true",
            delivery.id,
            status,
            next_attempt_at,
            result.status_code,
            result.error,
            url,
            attempted_at,
            delivery.lease_token,
        )
        return bool(moved)

    async def list_deliveries(
        self, conn: db.Connection, subscriber: str, *, status: DeliveryStatus | None = None, limit: int = 50
    ) -> list[WebhookDelivery]:
        """A subscriber's deliveries, newest first."""
        records = await conn.fetch(
            f"select {_DELIVERY_COLUMNS} from outbound_webhooks"
            " where channel = $1 and subscriber = $2 and ($3::text is null or status = $3)"
            " order by created_at desc, id limit $4",
            self.name,
            subscriber,
            status,
            limit,
        )
        return [_delivery(r) for r in records]

    async def list_attempts(self, conn: db.Connection, delivery_id: uuid.UUID) -> list[WebhookAttempt]:
        """Every attempt of one of this channel's deliveries, oldest first."""
        records = await conn.fetch(
            "select a.attempted_at, a.status_code, a.error, a.duration_ms"
            " from outbound_webhook_attempts a join outbound_webhooks d on d.id = a.delivery_id"
            " where d.id = $1 and d.channel = $2 order by a.id",
            delivery_id,
            self.name,
        )
        return [msgspec.convert(dict(r), WebhookAttempt) for r in records]

    async def requeue(
        self, conn: db.Connection, delivery_id: uuid.UUID, *, subscriber: str | None = None
    ) -> WebhookDelivery:
        """Queue a failed delivery again with a fresh schedule (the back office, after the receiver is fixed).

        Raises 404 if it is not this channel's (or, given `subscriber`, not that subscriber's), 409 unless
        it failed. The old attempts stay logged; the delivery id, and so the idempotency key, stays.
        """
        current = await conn.fetchval(
            "select status from outbound_webhooks"
            " where id = $1 and channel = $2 and ($3::text is null or subscriber = $3) for update",
            delivery_id,
            self.name,
            subscriber,
        )
        if current is None:
            raise ApiError(404, "delivery_not_found", f"No webhook delivery {delivery_id}", "delivery_id")
        if current != "failed":
            raise ApiError(
                409, "delivery_not_failed", f"Only failed deliveries can be retried; this one is {current}"
            )
        record = await conn.fetchrow(
            "update outbound_webhooks set status = 'pending', attempts = 0, next_attempt_at = now(),"
            f" lease_token = null, finished_at = null where id = $1 returning {_DELIVERY_COLUMNS}",
            delivery_id,
        )
        return _delivery(record)
