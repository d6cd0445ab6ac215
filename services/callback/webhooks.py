"""CRM webhooks: callback events queued per site, POSTed signed to its CRM, retried with backoff, logged."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

import httpx
import msgspec
from litestar import get, post
from litestar.di import NamedDependency
from litestar.handlers.http_handlers import HTTPRouteHandler
from litestar.params import FromPath, QueryParameter
from litestar.types import Guard
from prometheus_client import Counter

from services.callback import store
from services.common import db
from services.common.bus import ConsumerSpec
from services.common.errors import ApiError
from services.common.events import AnyEvent, CallbackEvent, encode_event, utc_now
from services.common.phone import mask_phone

log = logging.getLogger(__name__)


WEBHOOK_ATTEMPTS = Counter(
    "abonent_webhook_attempts_total", "CRM webhook attempts: delivered|retry|failed", ["outcome"]
)

_OUTCOME_LABELS: dict[str, str] = {"delivered": "delivered", "pending": "retry", "failed": "failed"}

REQUEST_TIMEOUT_S = 10.0
# Waits after failed attempt 1, 2, …: about 24 h from the first attempt to the last of MAX_ATTEMPTS.
RETRY_DELAYS_S: tuple[float, ...] = (10, 30, 120, 600, 1800, 3600, 7200, 10800, 14400, 18000, 28800)
MAX_ATTEMPTS = len(RETRY_DELAYS_S) + 1
# A CRM coming back after an outage should not get every queued delivery in the same second.
RETRY_JITTER = 0.2
# A claimed delivery is hidden from other senders this long; a sender that dies mid-POST leaves it to be
# retried after the lease. Comfortably longer than one pass (all its POSTs run concurrently, ≤ timeout).
CLAIM_LEASE = dt.timedelta(seconds=120)
# Receivers' answers and errors are kept for support, not archived: the start is what explains a failure.
ERROR_MAX_CHARS = 300
RESPONSE_PREFIX_BYTES = 1024
# Personal data in event payloads. The CRM gets the callback id and can fetch details through an
# authenticated API; a webhook body travels to and is stored by a third party, so it carries only the
# masked form (enough to match by eye).
_PHONE_FIELDS = frozenset({"phone"})


def retry_delay(failed_attempts: int) -> dt.timedelta:
    """Backoff before the next attempt after `failed_attempts` failures, with ±20 % jitter."""
    base = RETRY_DELAYS_S[min(failed_attempts, len(RETRY_DELAYS_S)) - 1]
    return dt.timedelta(seconds=base * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER))


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Abonent-Signature value: `t=<unix seconds>,v1=<hex>` (Stripe-style).

        v1 = hex(HMAC-SHA256(key=secret as UTF-8, message=f"{t}." as UTF-8 + raw request body bytes))

    A receiver verifies it before trusting the body:
    1. read the raw body bytes (before any JSON parsing or re-serialisation);
    2. split the header on "," into key=value pairs; take `t` and every `v1` (ignore unknown keys: a later
       scheme adds its version next to v1);
    3. compute the HMAC above with its copy of the secret and compare it to a `v1` in constant time
       (`hmac.compare_digest`); no match → reject (401);
    4. reject if |now - t| > 300 seconds, so a captured request cannot be replayed later;
    5. dedupe by the body's `event_id` (delivery is at least once) and answer 2xx quickly; 410 Gone stops
       the retries of that delivery.
    """
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def webhook_payload(event: CallbackEvent) -> bytes:
    """The event as JSON, as the catalogue encodes it, with personal data masked."""
    document: dict[str, Any] = msgspec.json.decode(encode_event(event))
    for name in _PHONE_FIELDS & document.keys():
        if isinstance(document[name], str):
            document[name] = mask_phone(document[name])
    return msgspec.json.encode(document)


# --- consumer -------------------------------------------------------------------------------------------


async def enqueue_webhook(conn: db.Connection, event: AnyEvent) -> None:
    """Queue a delivery of a callback event for its site's CRM; no-op without a webhook URL.

    Runs in the consumer's inbox transaction: the row commits with the inbox mark, so exactly once.
    """
    if not isinstance(event, CallbackEvent):
        return
    await store.insert_delivery_if_enabled(
        conn,
        delivery_id=uuid.uuid4(),
        site_key=event.site_key,
        event_id=event.event_id,
        event_type=str(event.__struct_config__.tag),
        payload=webhook_payload(event),
    )


def webhook_consumer_spec() -> ConsumerSpec:
    return ConsumerSpec(
        name="crm_webhooks", stream="CALLBACK", subjects=["callback.>"], handler=enqueue_webhook
    )


# --- sender ---------------------------------------------------------------------------------------------


class AttemptResult(msgspec.Struct, kw_only=True, frozen=True):
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookSender:
    """Claims due deliveries (SKIP LOCKED, so replicas share the work) and POSTs them.

    Delivery is at least once: a receiver may see an event twice (a crash between its 2xx and our commit,
    a lease that ran out) and must dedupe by `event_id`. Events are not ordered: a retried
    `callback.requested` can arrive after `callback.completed`; `occurred_at` and `state` tell the order.

    The caller owns `http` (and closes it). Redirects are not followed unless the client does: a 3xx is a
    failed attempt, so a moved CRM shows up in the delivery log instead of silently going elsewhere.
    """

    def __init__(
        self,
        pool: db.Pool,
        http: httpx.AsyncClient,
        clock: Callable[[], dt.datetime] = utc_now,
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        poll_interval_s: float = 1.0,
        batch: int = 50,
    ) -> None:
        self.pool = pool
        self.http = http
        self.clock = clock
        self.request_timeout_s = request_timeout_s
        self.poll_interval_s = poll_interval_s
        self.batch = batch
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="webhook-sender")

    async def stop(self, timeout: float = REQUEST_TIMEOUT_S + 5.0) -> None:
        """Claim nothing new; let in-flight POSTs finish (bounded); cut-off ones retry after their lease."""
        self._stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._task, timeout)
        except TimeoutError:
            log.warning("webhook sender did not finish in time; its claimed deliveries retry after the lease")
        self._task = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                sent = await self.deliver_due(self.batch)
            except Exception:
                log.exception("webhook delivery pass failed")
                sent = 0
            if sent >= self.batch:
                continue  # more are due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.poll_interval_s)

    async def deliver_due(self, limit: int = 50) -> int:
        """One pass: claim up to `limit` due deliveries and POST them concurrently; return how many."""
        now = self.clock()
        async with self.pool.acquire() as conn:
            claimed = await store.claim_due_deliveries(
                conn, now=now, lease_until=now + CLAIM_LEASE, limit=limit
            )
        if claimed:
            await asyncio.gather(*(self._deliver(delivery) for delivery in claimed))
        return len(claimed)

    async def _deliver(self, delivery: store.ClaimedDelivery) -> None:
        attempted_at = self.clock()
        if not delivery.url:
            # The site turned webhooks off after this was queued: nothing to send it to.
            result = AttemptResult(status_code=None, error="webhook turned off for the site", duration_ms=0)
        else:
            result = await self._post(delivery, attempted_at)
        attempts = delivery.attempts + 1
        status: store.DeliveryStatus
        if result.ok:
            status, next_attempt_at = "delivered", None
        elif result.status_code == 410 or not delivery.url or attempts >= MAX_ATTEMPTS:
            # 410 Gone: the receiver says this endpoint is gone for good; retrying is only noise.
            status, next_attempt_at = "failed", None
        else:
            status, next_attempt_at = "pending", attempted_at + retry_delay(attempts)
        try:
            async with db.transaction(self.pool) as conn:
                await store.record_attempt(
                    conn,
                    delivery.id,
                    url=delivery.url,
                    attempted_at=attempted_at,
                    status=status,
                    next_attempt_at=next_attempt_at,
                    status_code=result.status_code,
                    error=result.error,
                    duration_ms=result.duration_ms,
                )
        except Exception:
            # The lease runs out and another pass retries it: the receiver may see it twice (it dedupes).
            log.exception("could not record a webhook attempt", extra={"delivery_id": str(delivery.id)})
            return
        WEBHOOK_ATTEMPTS.labels(_OUTCOME_LABELS[status]).inc()
        if not result.ok:
            # No URL in the log line: CRMs put access tokens in query strings.
            log.warning(
                "webhook attempt failed",
                extra={
                    "delivery_id": str(delivery.id),
                    "site_key": delivery.site_key,
                    "attempt": attempts,
                    "status_code": result.status_code,
                    "error": result.error,
                    "next": status,
                },
            )

    async def _post(self, delivery: store.ClaimedDelivery, attempted_at: dt.datetime) -> AttemptResult:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Abonent-Webhooks/1",
            "X-Abonent-Event": delivery.event_type,
            "X-Abonent-Delivery": str(delivery.id),
        }
        if delivery.secret:
            headers["X-Abonent-Signature"] = signature_header(
                delivery.secret, int(attempted_at.timestamp()), delivery.payload
            )
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        try:
            # httpx's timeout bounds each phase; this bounds the whole exchange (a receiver dripping bytes).
            async with (
                asyncio.timeout(self.request_timeout_s),
                self.http.stream(
                    "POST",
                    delivery.url,
                    content=delivery.payload,
                    headers=headers,
                    timeout=self.request_timeout_s,
                ) as response,
            ):
                status_code = response.status_code
                answer = await _read_prefix(response, RESPONSE_PREFIX_BYTES)
            if not 200 <= status_code < 300:
                text = answer.decode("utf-8", "replace").strip()
                error = f"HTTP {status_code}" + (f": {text}" if text else "")
        except TimeoutError:
            status_code, error = None, f"no answer within {self.request_timeout_s:g} s"
        except Exception as exc:
            # Whatever went wrong talking to the receiver (refused, DNS, TLS, bad URL) is a failed attempt:
            # it is retried and shows in the log, instead of breaking the pass for other deliveries.
            status_code, error = None, f"{type(exc).__name__}: {exc}"
        duration_ms = round((time.monotonic() - started) * 1000)
        return AttemptResult(
            status_code=status_code,
            error=None if error is None else error[:ERROR_MAX_CHARS],
            duration_ms=duration_ms,
        )


async def _read_prefix(response: httpx.Response, limit: int) -> bytes:
    """At most `limit` bytes of the body: a receiver's error page is not ours to buffer whole."""
    prefix = b""
    async for chunk in response.aiter_bytes():
        prefix += chunk
        if len(prefix) >= limit:
            break
    return prefix[:limit]


# --- admin routes ---------------------------------------------------------------------------------------


StatusQuery = Annotated[
    store.DeliveryStatus | None, QueryParameter(name="status", required=False, description="Only this status")
]
LimitQuery = Annotated[int, QueryParameter(name="limit", ge=1, le=500, description="Newest first")]
PoolDependency = NamedDependency[db.Pool]


async def list_webhook_deliveries(
    site_key: FromPath[str], pool: PoolDependency, status: StatusQuery = None, limit: LimitQuery = 50
) -> list[store.WebhookDelivery]:
    async with pool.acquire() as conn:
        if not await store.site_exists(conn, site_key):
            raise ApiError(404, "site_not_found", f"No site with key {site_key!r}", "site_key")
        return await store.list_deliveries(conn, site_key, status=status, limit=limit)


async def retry_webhook_delivery(
    delivery_id: FromPath[uuid.UUID], pool: PoolDependency
) -> store.WebhookDelivery:
    async with db.transaction(pool) as conn:
        current = await store.get_delivery_for_update(conn, delivery_id)
        if current is None:
            raise ApiError(404, "delivery_not_found", f"No webhook delivery {delivery_id}", "delivery_id")
        if current.status != "failed":
            raise ApiError(
                409,
                "delivery_not_failed",
                f"Only failed deliveries can be retried; this one is {current.status}",
            )
        # A fresh schedule: the operator retries after the CRM was fixed; the old attempts stay logged.
        return await store.requeue_delivery(conn, delivery_id)


def webhook_routes(guard: Guard) -> list[HTTPRouteHandler]:
    """The back-office routes behind `guard` (the admin guard, passed in: app.py imports this module)."""
    return [
        get(
            "/v1/admin/sites/{site_key:str}/webhook-deliveries",
            guards=[guard],
            tags=["admin"],
            summary="CRM webhook deliveries of a site, newest first",
        )(list_webhook_deliveries),
        post(
            "/v1/admin/webhook-deliveries/{delivery_id:uuid}/retry",
            guards=[guard],
            tags=["admin"],
            summary="Queue a failed CRM webhook delivery again",
            status_code=202,
        )(retry_webhook_delivery),
    ]
