"""The webhook sender: claims a channel's due deliveries under a lease, POSTs them signed, logs attempts."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable

import httpx
from prometheus_client import Counter, Histogram

from services.common import db
from services.common.events import utc_now
from services.common.webhooks import (
    AttemptResult,
    ClaimedDelivery,
    DeliveryStatus,
    Endpoint,
    Resolver,
    WebhookChannel,
    signature_header,
)

log = logging.getLogger(__name__)

WEBHOOK_ATTEMPTS = Counter(
    "abonent_webhook_attempts_total",
    "Outbound webhook attempts per channel: delivered|retry|failed",
    ["channel", "outcome"],
)
WEBHOOK_POST_SECONDS = Histogram(
    "abonent_webhook_post_seconds",
    "Time receivers took to answer an outbound webhook POST (or to fail), per channel",
    ["channel"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

_OUTCOME_LABELS: dict[str, str] = {"delivered": "delivered", "pending": "retry", "failed": "failed"}
# Receivers' answers and errors are kept for support, not archived: the start is what explains a failure.
ERROR_MAX_CHARS = 300
RESPONSE_PREFIX_BYTES = 1024


class WebhookSender:
    """Claims a channel's due deliveries (SKIP LOCKED, so replicas share the work) and POSTs them.

    Delivery is at least once: a receiver may see a delivery twice (a crash between its 2xx and our commit,
    a lease that ran out) and must dedupe by `event_id` (or the Idempotency-Key, the delivery id). It is
    not ordered: a retried early event can arrive after a later one.

    The caller owns `http` (and closes it). Redirects are not followed unless the client does: a 3xx is a
    failed attempt, so a moved receiver shows up in the delivery log instead of silently going elsewhere.
    """

    def __init__(
        self,
        pool: db.Pool,
        http: httpx.AsyncClient,
        channel: WebhookChannel,
        resolver: Resolver,
        *,
        clock: Callable[[], dt.datetime] = utc_now,
        poll_interval_s: float = 1.0,
        batch: int = 50,
    ) -> None:
        self.pool = pool
        self.http = http
        self.channel = channel
        self.resolver = resolver
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.batch = batch
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"webhook-sender-{self.channel.name}")

    async def stop(self, timeout: float | None = None) -> None:
        """Claim nothing new; let in-flight POSTs finish (bounded); cut-off ones retry after their lease."""
        self._stopping.set()
        if self._task is None:
            return
        try:
            grace = self.channel.request_timeout_s + 5.0 if timeout is None else timeout
            await asyncio.wait_for(self._task, grace)
        except TimeoutError:
            log.warning(
                "webhook sender did not finish in time; its claimed deliveries retry after the lease",
                extra={"channel": self.channel.name},
            )
        self._task = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                sent = await self.deliver_due(self.batch)
            except Exception:
                log.exception("webhook delivery pass failed", extra={"channel": self.channel.name})
                sent = 0
            if sent >= self.batch:
                continue  # more are due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.poll_interval_s)

    async def deliver_due(self, limit: int = 50) -> int:
        """One pass: claim up to `limit` due deliveries and POST them concurrently; return how many."""
        now = self.clock()
        async with self.pool.acquire() as conn:
            claimed = await self.channel.claim_due(conn, now=now, limit=limit)
            endpoints = await self._resolve(conn, {delivery.subscriber for delivery in claimed})
        # The connection is back in the pool before any POST: a slow receiver holds no database resource.
        await asyncio.gather(
            *(
                self._deliver(delivery, endpoints[delivery.subscriber])
                for delivery in claimed
                if delivery.subscriber in endpoints
            )
        )
        return len(claimed)

    async def _resolve(self, conn: db.Connection, subscribers: set[str]) -> dict[str, Endpoint | None]:
        """Each subscriber's endpoint, asked once per pass; one whose resolver raised is left out."""
        endpoints: dict[str, Endpoint | None] = {}
        for subscriber in subscribers:
            try:
                endpoints[subscriber] = await self.resolver(conn, subscriber)
            except Exception:
                # Our fault, not the receiver's: no attempt is spent; the lease runs out and a later pass
                # tries again.
                log.exception(
                    "could not resolve a webhook endpoint",
                    extra={"channel": self.channel.name, "subscriber": subscriber},
                )
        return endpoints

    async def _deliver(self, delivery: ClaimedDelivery, endpoint: Endpoint | None) -> None:
        channel = self.channel
        attempted_at = self.clock()
        if endpoint is None:
            result = AttemptResult(status_code=None, error=channel.disabled_reason, duration_ms=0)
        else:
            result = await self._post(delivery, endpoint, attempted_at)
            WEBHOOK_POST_SECONDS.labels(channel.name).observe(result.duration_ms / 1000)
        attempts = delivery.attempts + 1
        status: DeliveryStatus
        if result.ok:
            status, next_attempt_at = "delivered", None
        elif result.status_code == 410 or endpoint is None or attempts >= channel.max_attempts:
            # 410 Gone: the receiver says this endpoint is gone for good; retrying is only noise.
            status, next_attempt_at = "failed", None
        else:
            status, next_attempt_at = "pending", attempted_at + channel.retry_delay(attempts)
        try:
            async with db.transaction(self.pool) as conn:
                moved = await channel.record_attempt(
                    conn,
                    delivery,
                    url=None if endpoint is None else endpoint.url,
                    attempted_at=attempted_at,
                    status=status,
                    next_attempt_at=next_attempt_at,
                    result=result,
                )
        except Exception:
            # The lease runs out and another pass retries it: the receiver may see it twice (it dedupes).
            log.exception(
                "could not record a webhook attempt",
                extra={"channel": channel.name, "delivery_id": str(delivery.id)},
            )
            return
        WEBHOOK_ATTEMPTS.labels(channel.name, _OUTCOME_LABELS[status]).inc()
        if not moved:
            log.warning(
                "webhook attempt finished after its lease was taken over; the new holder decides",
                extra={"channel": channel.name, "delivery_id": str(delivery.id)},
            )
        if not result.ok:
            # No URL in the log line: receivers put access tokens in query strings.
            log.warning(
                "webhook attempt failed",
                extra={
                    "channel": channel.name,
                    "delivery_id": str(delivery.id),
                    "subscriber": delivery.subscriber,
                    "attempt": attempts,
                    "status_code": result.status_code,
                    "error": result.error,
                    "next": status,
                },
            )

    async def _post(
        self, delivery: ClaimedDelivery, endpoint: Endpoint, attempted_at: dt.datetime
    ) -> AttemptResult:
        timeout_s = self.channel.request_timeout_s
        headers = {
            "Content-Type": self.channel.content_type,
            "User-Agent": "Abonent-Webhooks/1",
            "X-Abonent-Event": delivery.event_type,
            "X-Abonent-Delivery": str(delivery.id),
            # The same on every retry and re-queue of this delivery: receivers of commands apply it once.
            "Idempotency-Key": str(delivery.id),
        }
        if endpoint.secret:
            headers["X-Abonent-Signature"] = signature_header(
                endpoint.secret, int(attempted_at.timestamp()), delivery.payload
            )
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        try:
            # httpx's timeout bounds each phase; this bounds the whole exchange (a receiver dripping bytes).
            async with (
                asyncio.timeout(timeout_s),
                self.http.stream(
                    "POST", endpoint.url, content=delivery.payload, headers=headers, timeout=timeout_s
                ) as response,
            ):
                status_code = response.status_code
                answer = await _read_prefix(response, RESPONSE_PREFIX_BYTES)
            if not 200 <= status_code < 300:
                text = answer.decode("utf-8", "replace").strip()
                error = f"HTTP {status_code}" + (f": {text}" if text else "")
        except TimeoutError:
            status_code, error = None, f"no answer within {timeout_s:g} s"
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
