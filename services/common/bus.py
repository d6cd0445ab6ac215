"""NATS JetStream: connection that never gives up, streams declared in code, durable pull consumers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from prometheus_client import Counter

from services.common import db
from services.common.events import STREAMS, AnyEvent, decode_event
from services.common.failpoints import failpoint
from services.common.logging import event_id_var

log = logging.getLogger(__name__)

EVENTS_HANDLED = Counter("abonent_events_handled_total", "Events applied by consumers", ["consumer"])
EVENTS_DUPLICATE = Counter("abonent_events_duplicate_total", "Redeliveries found in the inbox", ["consumer"])
EVENTS_DEAD = Counter("abonent_events_dead_lettered_total", "Events sent to dead letters", ["consumer"])
EVENTS_RETRIED = Counter("abonent_events_retried_total", "Events nak'ed for a later retry", ["consumer"])


class Namespace:
    """Maps logical subjects and stream names into this deployment's namespace (tests get their own)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def subject(self, logical: str) -> str:
        return f"{self.prefix}.{logical}" if self.prefix else logical

    def stream(self, logical: str) -> str:
        return f"{self.prefix.upper()}_{logical}" if self.prefix else logical


class Bus:
    """One NATS connection per process, with its JetStream context and namespace."""

    def __init__(self, nc: NatsClient, namespace: Namespace, replicas: int = 1) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=5)
        self.ns = namespace
        self.replicas = replicas
        self.stream_max_age_s = 0.0  # 0: keep messages forever; services set it from their settings
        # Set by the reconnect callback; pull loops re-create their subscriptions when they see it.
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    async def close(self, timeout: float = 5.0) -> None:
        """Flush what we published, then close; never hang a shutdown on a slow drain."""
        try:
            await asyncio.wait_for(self.nc.drain(), timeout)
        except Exception:
            await self.nc.close()

    async def ensure_streams(self, streams: dict[str, list[str]] | None = None) -> None:
        """Create or update every stream; safe to run from every replica on every start."""
        for name, subjects in (streams or STREAMS).items():
            config = StreamConfig(
                name=self.ns.stream(name),
                subjects=[self.ns.subject(s) for s in subjects],
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                # Publish dedupe window: relay retries of one event stay inside it.
                duplicate_window=120.0,
                max_age=self.stream_max_age_s,
            )
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError:
                await self.js.update_stream(config)

    async def publish(self, subject: str, payload: bytes, msg_id: str, *, attempts: int = 5) -> bool:
        """Publish with Nats-Msg-Id; retry timeouts and leader changes with the SAME id. True if new."""
        delay = 0.2
        for attempt in range(1, attempts + 1):
            try:
                ack = await self.js.publish(
                    self.ns.subject(subject), payload, timeout=5, headers={"Nats-Msg-Id": msg_id}
                )
                return not ack.duplicate
            except (
                nats.errors.TimeoutError,
                nats.js.errors.ServiceUnavailableError,
                nats.errors.NoRespondersError,
                nats.errors.ConnectionClosedError,
                nats.errors.ConnectionReconnectingError,
            ):
                if attempt == attempts:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")


async def connect(url: str, name: str, namespace: str = "", replicas: int = 1) -> Bus:
    """Connect and keep reconnecting forever (nats-py gives up after ~2 min by default)."""
    holder: list[Bus] = []

    async def on_disconnect() -> None:
        if holder and (holder[0].nc.is_draining or holder[0].nc.is_closed):
            return  # our own shutdown
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")
        if holder:
            holder[0].reconnects += 1

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    nc = await nats.connect(
        servers=[url],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=3,
        allow_reconnect=True,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )
    bus = Bus(nc, Namespace(namespace), replicas)
    holder.append(bus)
    return bus


# --- consumers ----------------------------------------------------------------------------------------


class TransientError(Exception):
    """The handler could not apply the event now (a dependency is down): redeliver later."""


class PoisonMessage(Exception):
    """The event can never be applied (invalid for this consumer): dead-letter it, do not retry."""


Handler = Callable[[db.Connection, AnyEvent], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A durable pull consumer whose handler runs in one transaction with its inbox row."""

    name: str
    stream: str
    subjects: Sequence[str]  # logical subjects (filter)
    handler: Handler
    ack_wait_s: float = 30.0
    max_deliver: int = 8
    # Delay before each redelivery after a nak; the last value repeats.
    retry_delays_s: Sequence[float] = field(default=(1.0, 5.0, 15.0, 60.0))
    batch: int = 16


def _retry_delay(spec: ConsumerSpec, delivered: int) -> float:
    delays = spec.retry_delays_s
    return delays[min(delivered - 1, len(delays) - 1)]


async def ensure_consumer(bus: Bus, spec: ConsumerSpec) -> None:
    """Create or update the durable explicitly: pull_subscribe never updates an existing one's config."""
    subjects = [bus.ns.subject(s) for s in spec.subjects]
    config = ConsumerConfig(
        name=spec.name,
        durable_name=spec.name,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=spec.ack_wait_s,
        max_deliver=spec.max_deliver,
        filter_subject=subjects[0] if len(subjects) == 1 else None,
        filter_subjects=subjects if len(subjects) > 1 else None,
    )
    await bus.js.add_consumer(bus.ns.stream(spec.stream), config)


async def dead_letter(
    pool: db.Pool,
    spec: ConsumerSpec,
    *,
    subject: str,
    payload: bytes | None,
    reason: str,
    deliveries: int,
    stream_seq: int | None,
    event_id: str | None,
) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "insert into dead_letters (consumer, subject, event_id, stream_seq, payload, reason, deliveries)"
            " values ($1, $2, $3, $4, $5, $6, $7) on conflict (consumer, stream_seq) do nothing",
            spec.name,
            subject,
            event_id,
            stream_seq,
            payload,
            reason,
            deliveries,
        )
    EVENTS_DEAD.labels(spec.name).inc()
    log.error("event dead-lettered", extra={"consumer": spec.name, "reason": reason, "subject": subject})


async def apply_message(pool: db.Pool, spec: ConsumerSpec, msg: Msg) -> None:
    """Decode, apply once (inbox), then ack; nak with delay on transient errors; term poison."""
    meta = msg.metadata
    delivered = meta.num_delivered
    try:
        event = decode_event(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        await dead_letter(
            pool,
            spec,
            subject=msg.subject,
            payload=msg.data,
            reason=f"undecodable: {exc}",
            deliveries=delivered,
            stream_seq=meta.sequence.stream,
            event_id=None,
        )
        await msg.term()
        return
    token = event_id_var.set(str(event.event_id))
    try:
        async with db.transaction(pool) as conn:
            first_time = await conn.fetchval(
                "insert into inbox (consumer, event_id) values ($1, $2)"
                " on conflict do nothing returning true",
                spec.name,
                event.event_id,
            )
            if first_time:
                await spec.handler(conn, event)
                failpoint(f"consumer.{spec.name}.before_commit")
        if first_time:
            EVENTS_HANDLED.labels(spec.name).inc()
        else:
            EVENTS_DUPLICATE.labels(spec.name).inc()
        failpoint(f"consumer.{spec.name}.before_ack")
        await msg.ack_sync()
    except PoisonMessage as exc:
        await dead_letter(
            pool,
            spec,
            subject=msg.subject,
            payload=msg.data,
            reason=f"rejected: {exc}",
            deliveries=delivered,
            stream_seq=meta.sequence.stream,
            event_id=str(event.event_id),
        )
        await msg.term()
    except Exception as exc:
        # Includes TransientError, DB outages and bugs: retry later; after max_deliver the advisory
        # dead-letters it.
        EVENTS_RETRIED.labels(spec.name).inc()
        log.warning("event handling failed, will retry", extra={"consumer": spec.name, "error": repr(exc)})
        with contextlib.suppress(Exception):
            await msg.nak(delay=_retry_delay(spec, delivered))
    finally:
        event_id_var.reset(token)


class ConsumerRunner:
    """Runs one consumer: fetch loop, watchdog re-subscription, exhausted-delivery dead letters."""

    def __init__(self, pool: db.Pool, bus: Bus, spec: ConsumerSpec) -> None:
        self.pool = pool
        self.bus = bus
        self.spec = spec
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sub: JetStreamContext.PullSubscription | None = None
        self._advisory_sub: Subscription | None = None

    async def start(self) -> None:
        await ensure_consumer(self.bus, self.spec)
        stream = self.bus.ns.stream(self.spec.stream)
        advisory = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{self.spec.name}"
        self._advisory_sub = await self.bus.nc.subscribe(advisory, cb=self._on_max_deliveries)
        self._tasks.append(asyncio.create_task(self._run(), name=f"consumer:{self.spec.name}"))

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop fetching, let the in-flight batch finish (it acks), then return."""
        self._stopping.set()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
        for sub in (self._sub, self._advisory_sub):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        await self.bus.ensure_streams()
        await ensure_consumer(self.bus, self.spec)
        return await self.bus.js.pull_subscribe_bind(
            durable=self.spec.name,
            stream=self.bus.ns.stream(self.spec.stream),
            inbox_prefix=self._inbox_prefix(),
        )

    def _inbox_prefix(self) -> bytes:
        return f"_INBOX.{self.spec.name}.{uuid.uuid4().hex[:8]}".encode()

    async def _run(self) -> None:
        sub: JetStreamContext.PullSubscription | None = None
        seen_reconnects = self.bus.reconnects
        failures = 0
        while not self._stopping.is_set():
            try:
                # Watchdog: after a reconnect (e.g. NATS restarted) pull subscriptions can go silent
                # (nats.py #504); re-declare and re-bind.
                if sub is None or self.bus.reconnects != seen_reconnects:
                    seen_reconnects = self.bus.reconnects
                    if sub is not None:
                        with contextlib.suppress(Exception):
                            await sub.unsubscribe()
                    sub = self._sub = await self._subscribe()
                try:
                    msgs = await sub.fetch(self.spec.batch, timeout=1.0)
                except nats.errors.TimeoutError:
                    failures = 0
                    continue
                failures = 0
                for msg in msgs:
                    await apply_message(self.pool, self.spec, msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning(
                    "consumer loop error, re-subscribing",
                    extra={"consumer": self.spec.name, "error": repr(exc)},
                )
                sub = None
                await asyncio.sleep(min(0.2 * 2**failures, 5.0))

    async def _on_max_deliveries(self, advisory: Msg) -> None:
        info = msgspec.json.decode(advisory.data)
        seq = int(info.get("stream_seq", 0))
        payload: bytes | None = None
        subject = ""
        with contextlib.suppress(Exception):
            raw = await self.bus.js.get_msg(self.bus.ns.stream(self.spec.stream), seq)
            payload, subject = raw.data, raw.subject or ""
        event_id = None
        if payload is not None:
            with contextlib.suppress(Exception):
                event_id = str(decode_event(payload).event_id)
        try:
            await dead_letter(
                self.pool,
                self.spec,
                subject=subject,
                payload=payload,
                reason="max deliveries exhausted",
                deliveries=int(info.get("deliveries", 0)),
                stream_seq=seq,
                event_id=event_id,
            )
        except Exception:
            log.exception("could not record exhausted event", extra={"consumer": self.spec.name})
