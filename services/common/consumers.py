"""Durable JetStream pull consumers: route by event type, apply once, retry outages, dead-letter the rest.

What a consumer does with each message (`apply_message`):

1. **Tag first.** Only the envelope's `type` is read. A tag this consumer does not handle — unknown to the
   catalogue (a v2 published beside v1 during a rolling deploy) or simply not among `ConsumerSpec.handles`
   — is acked and counted (`abonent_events_skipped_total`, a debug log), never dead-lettered.
2. **Poison** is dead-lettered at once and `term`ed: bytes that are not an event envelope, a known type
   whose fields are invalid, or a handler raising `PoisonMessage`.
3. **Transient failures** — `TransientError`, PostgreSQL connection/shutdown/resource errors, `OSError`,
   timeouts, NATS connection errors (also when they are the `__cause__`) — are `nak`ed with the delay of
   `retry_delays_s` for that delivery (the last value is the cap) for as long as the outage lasts. They
   never use up the retry budget and never dead-letter.
4. **Handler failures** (any other exception: a bug) are counted per consumer and event in PostgreSQL
   (`consumer_failures`); after `max_deliver` of them the event is dead-lettered with the error as its
   reason and `term`ed; before that it is `nak`ed with the same delays. If the count cannot be written
   (PostgreSQL went away meanwhile) the failure is treated as transient.

JetStream's own MaxDeliver is left unlimited (-1) on purpose: every `nak` of an outage counts as a
delivery there, so any finite cap would dead-letter a whole backlog after a long enough outage. The
bounded budget lives in `consumer_failures` instead, and the max-deliveries advisory is therefore not
used. The cost: a message that kills the process every time (no exception reaches us) is redelivered
after each `ack_wait` until it is fixed; the consumer's redelivery count shows it.

A handler runs in one transaction with its inbox row (exactly-once effect); `ack_sync` follows the commit.
With `ConsumerSpec.batch_transaction` a fetched batch (one lane of it) shares that transaction: one
statement writes the lane's inbox rows, the handlers (or `ConsumerSpec.batch_handler`, once for the
lane's new events) run without a savepoint each, and the acks follow the one commit, sent without waiting
for each confirmation (the inbox turns a lost ack's redelivery into a bare ack). If anything in that
transaction fails, it is rolled back whole and the lane is applied again message by message, each in its
own savepoint, so the policy above still holds per message and a failing message never takes its
neighbours with it.
Dead letters are listed and replayed with `abonent dead-letters` (services/common/deadletters.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import typing
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import Counter

from services.common import db
from services.common.bus import Bus
from services.common.events import AnyEvent, Event, decode_event
from services.common.failpoints import failpoint
from services.common.logging import event_id_var, mask_pii

log = logging.getLogger(__name__)

EVENTS_HANDLED = Counter("abonent_events_handled_total", "Events applied by consumers", ["consumer"])
EVENTS_DUPLICATE = Counter("abonent_events_duplicate_total", "Redeliveries found in the inbox", ["consumer"])
EVENTS_DEAD = Counter("abonent_events_dead_lettered_total", "Events sent to dead letters", ["consumer"])
EVENTS_RETRIED = Counter(
    "abonent_events_retried_total",
    "Events nak'ed for a later retry (kind: transient outage or handler failure)",
    ["consumer", "kind"],
)
EVENTS_SKIPPED = Counter(
    "abonent_events_skipped_total",
    "Events acked without handling: a type this consumer does not handle ('unknown' if not in the catalogue)",
    ["consumer", "type"],
)

# Every event type of the catalogue by its tag ("callback.requested.v1").
CATALOGUE: dict[str, type[Event]] = {str(cls.__struct_config__.tag): cls for cls in typing.get_args(AnyEvent)}


class TransientError(Exception):
    """The handler could not apply the event now (a dependency is down): redeliver later, without limit."""


class PoisonMessage(Exception):
    """The event can never be applied (invalid for this consumer): dead-letter it, do not retry."""


Handler = Callable[[db.Connection, AnyEvent], Awaitable[None]]
# Applies several events in the caller's transaction at once (set-based); raising fails them all, and the
# consumer then applies them one by one with `Handler`.
BatchHandler = Callable[[db.Connection, Sequence[AnyEvent]], Awaitable[None]]


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, `>` one or more trailing tokens."""
    want, have = pattern.split("."), subject.split(".")
    for i, part in enumerate(want):
        if part == ">":
            return len(have) > i
        if i >= len(have) or (part != "*" and part != have[i]):
            return False
    return len(want) == len(have)


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A durable pull consumer whose handler runs in one transaction with its inbox row."""

    name: str
    stream: str
    subjects: Sequence[str]  # logical subjects (filter)
    handler: Handler
    ack_wait_s: float = 30.0
    # Handler failures (bugs; transient errors never count) before the event is dead-lettered. The name
    # is kept for existing callers; JetStream's own MaxDeliver is unlimited (see the module docstring).
    max_deliver: int = 8
    # Delay before each redelivery after a nak, by delivery count; the last value repeats (the cap).
    retry_delays_s: Sequence[float] = field(default=(1.0, 5.0, 15.0, 60.0))
    batch: int = 16
    # Event types the handler handles: catalogue classes, or base classes standing for every catalogue
    # type below them (CallbackEvent). None: every catalogue type published on `subjects`. Anything
    # else that arrives is acked and counted as skipped.
    handles: Sequence[type[Event]] | None = None
    # How long one idle fetch waits for messages (finite: nats-py fetch must time out to see stops).
    fetch_timeout_s: float = 1.0
    # Apply up to this many messages of a fetched batch at once. Delivery is unordered anyway, but a
    # handler may still want one key's events one after another (one recipient, one call): messages
    # with the same `partition_key` run in fetch order, different keys side by side. Without a key,
    # concurrency stays 1 (a handler must opt in).
    concurrency: int = 1
    partition_key: Callable[[AnyEvent], str] | None = None
    # Apply a fetched batch in one transaction per lane (one inbox statement, no savepoints; if anything
    # fails, the lane is rolled back and applied again with each message in its own savepoint, so one
    # that fails rolls back alone) and ack after that one commit, instead of one transaction per message.
    # A handler may therefore run twice for a message whose lane had a failure (the first run rolled
    # back): its effects in the transaction count once, its side effects outside it (metrics) twice. The
    # guarantees are the same (inbox row and effect commit together; nothing is acked before its commit);
    # what changes is that a lane holds its row locks until the whole lane commits, so a handler whose
    # messages lock shared rows (not only their partition's) can deadlock with another lane - PostgreSQL
    # aborts one, and its messages come back as a transient failure.
    batch_transaction: bool = False
    # With batch_transaction: applies a lane's new events in one call (see BatchHandler); None: `handler`
    # once per event.
    batch_handler: BatchHandler | None = None
    handled_tags: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.handles is None:
            tags = {
                tag
                for tag, cls in CATALOGUE.items()
                if any(subject_matches(s, cls.SUBJECT) for s in self.subjects)
            }
        else:
            tags = set()
            for wanted in self.handles:
                found = {tag for tag, cls in CATALOGUE.items() if issubclass(cls, wanted)}
                if not found:
                    raise ValueError(f"consumer {self.name}: {wanted.__name__} is not in the event catalogue")
                tags |= found
        object.__setattr__(self, "handled_tags", frozenset(tags))


def _retry_delay(spec: ConsumerSpec, delivered: int) -> float:
    delays = spec.retry_delays_s
    return delays[min(max(delivered, 1) - 1, len(delays) - 1)]


_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientError,
    OSError,  # refused/reset connections
    TimeoutError,  # asyncio, asyncpg command and nats timeouts
    asyncpg.PostgresConnectionError,  # class 08: the connection broke
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutting down, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # class 40: serialization failure, deadlock
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError,
    nats.errors.NoRespondersError,
    nats.errors.StaleConnectionError,
    nats.errors.FlushTimeoutError,
    nats.js.errors.ServiceUnavailableError,
)


def is_transient(exc: BaseException) -> bool:
    """True when retrying later can succeed without anyone changing code or data (an outage)."""
    seen: BaseException | None = exc
    for _ in range(8):  # the exception and the causes it was raised from
        if seen is None:
            return False
        if isinstance(seen, _TRANSIENT_TYPES):
            return True
        # asyncpg says "connection is closed" / "pool is closing" with the generic InterfaceError.
        if isinstance(seen, asyncpg.InterfaceError) and ("closed" in str(seen) or "closing" in str(seen)):
            return True
        seen = seen.__cause__
    return False


async def ensure_consumer(bus: Bus, spec: ConsumerSpec) -> None:
    """Create or update the durable explicitly: pull_subscribe never updates an existing one's config."""
    subjects = [bus.ns.subject(s) for s in spec.subjects]
    config = ConsumerConfig(
        name=spec.name,
        durable_name=spec.name,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=spec.ack_wait_s,
        # Unlimited: outage naks must not exhaust deliveries; the handler-failure budget is ours.
        max_deliver=-1,
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
            # Stored where logging's masking never looks: error texts can quote a phone or a passport.
            mask_pii(reason),
            deliveries,
        )
    EVENTS_DEAD.labels(spec.name).inc()
    log.error("event dead-lettered", extra={"consumer": spec.name, "reason": reason, "subject": subject})


async def record_failure(pool: db.Pool, consumer: str, event_id: uuid.UUID, error: str) -> int:
    """Count one more handler failure of this event (its own short transaction); return the count."""
    async with pool.acquire() as conn:
        failures: int = await conn.fetchval(
            "insert into consumer_failures (consumer, event_id, failures, last_error) values ($1, $2, 1, $3)"
            " on conflict (consumer, event_id) do update set failures = consumer_failures.failures + 1,"
            " last_error = excluded.last_error, updated_at = now() returning failures",
            consumer,
            event_id,
            mask_pii(error[:2000]),
        )
    return failures


class _Envelope(msgspec.Struct):
    """Just enough of an event to route it: read before the full (typed) decode."""

    type: str
    event_id: str | None = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)


async def _nak(msg: Msg, delay: float) -> None:
    # A nak that cannot be sent (NATS is down) is harmless: the message comes back after ack_wait.
    with contextlib.suppress(Exception):
        await msg.nak(delay=delay)


async def _reject(pool: db.Pool, spec: ConsumerSpec, msg: Msg, reason: str, event_id: str | None) -> None:
    """Dead-letter and term; if the dead letter cannot be written now, nak so the message comes back."""
    meta = msg.metadata
    try:
        await dead_letter(
            pool,
            spec,
            subject=msg.subject,
            payload=msg.data,
            reason=reason,
            deliveries=meta.num_delivered,
            stream_seq=meta.sequence.stream,
            event_id=event_id,
        )
    except Exception as exc:
        EVENTS_RETRIED.labels(spec.name, "transient").inc()
        log.warning(
            "could not record a dead letter, will retry", extra={"consumer": spec.name, "error": repr(exc)}
        )
        await _nak(msg, _retry_delay(spec, meta.num_delivered))
        return
    with contextlib.suppress(Exception):
        await msg.term()


async def _apply_once(pool: db.Pool, spec: ConsumerSpec, event: AnyEvent, delivered: int) -> bool:
    """Run the handler with the inbox row in one transaction; False if the inbox already had it."""
    async with db.transaction(pool) as conn:
        first_time = await conn.fetchval(
            "insert into inbox (consumer, event_id) values ($1, $2) on conflict do nothing returning true",
            spec.name,
            event.event_id,
        )
        if not first_time:
            return False
        await spec.handler(conn, event)
        if delivered > 1:
            # Earlier deliveries may have failed; the count must not outlive the success.
            await conn.execute(
                "delete from consumer_failures where consumer = $1 and event_id = $2",
                spec.name,
                event.event_id,
            )
        failpoint(f"consumer.{spec.name}.before_commit")
    return True


async def _after_failure(
    pool: db.Pool, spec: ConsumerSpec, msg: Msg, event: AnyEvent, exc: Exception
) -> None:
    delivered = msg.metadata.num_delivered
    delay = _retry_delay(spec, delivered)
    extra = {"consumer": spec.name, "error": repr(exc), "delivered": delivered, "retry_in_s": delay}
    if is_transient(exc):
        EVENTS_RETRIED.labels(spec.name, "transient").inc()
        log.warning("event not applied (transient), will retry", extra=extra)
        await _nak(msg, delay)
        return
    try:
        failures = await record_failure(pool, spec.name, event.event_id, repr(exc))
    except Exception as count_exc:
        # PostgreSQL went away while we were failing: an outage does not spend the budget.
        EVENTS_RETRIED.labels(spec.name, "transient").inc()
        log.warning(
            "event not applied, failure not counted, will retry",
            extra={**extra, "count_error": repr(count_exc)},
        )
        await _nak(msg, delay)
        return
    if failures >= spec.max_deliver:
        await _reject(pool, spec, msg, f"failed {failures} times: {exc!r}"[:2000], str(event.event_id))
        return
    EVENTS_RETRIED.labels(spec.name, "failure").inc()
    log.error(
        "event handler failed, will retry",
        exc_info=exc,
        extra={**extra, "failures": failures, "max_failures": spec.max_deliver},
    )
    await _nak(msg, delay)


async def _triage(pool: db.Pool, spec: ConsumerSpec, msg: Msg) -> AnyEvent | None:
    """The event to apply, or None when the message was settled here (skipped, or rejected as poison)."""
    try:
        envelope = _envelope_decoder.decode(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        await _reject(pool, spec, msg, f"undecodable: {exc}", None)
        return None
    if envelope.type not in spec.handled_tags:
        known = envelope.type in CATALOGUE
        EVENTS_SKIPPED.labels(spec.name, envelope.type if known else "unknown").inc()
        log.debug(
            "event type not handled here, acked",
            extra={"consumer": spec.name, "type": envelope.type, "in_catalogue": known},
        )
        # A lost ack only brings the message back to be skipped again.
        with contextlib.suppress(Exception):
            await msg.ack()
        return None
    try:
        return decode_event(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        await _reject(pool, spec, msg, f"invalid {envelope.type}: {exc}", envelope.event_id)
        return None


async def _ack_applied(spec: ConsumerSpec, msg: Msg, first_time: bool, *, confirm: bool = True) -> None:
    """Count and ack a message whose effect (or earlier inbox row) is committed. `confirm`: wait for the
    server's confirmation (ack_sync); else the ack is only sent (a lost one brings a redelivery that the
    inbox turns into a bare ack)."""
    (EVENTS_HANDLED if first_time else EVENTS_DUPLICATE).labels(spec.name).inc()
    failpoint(f"consumer.{spec.name}.before_ack")
    try:
        await (msg.ack_sync() if confirm else msg.ack())
    except Exception as exc:
        # Applied and committed: the redelivery finds the inbox row and is only acked.
        log.warning("ack failed after commit", extra={"consumer": spec.name, "error": repr(exc)})


async def apply_message(pool: db.Pool, spec: ConsumerSpec, msg: Msg) -> None:
    """Route by tag, apply once (inbox), then ack; the policy is in this module's docstring."""
    event = await _triage(pool, spec, msg)
    if event is None:
        return
    token = event_id_var.set(str(event.event_id))
    try:
        try:
            first_time = await _apply_once(pool, spec, event, msg.metadata.num_delivered)
        except PoisonMessage as exc:
            await _reject(pool, spec, msg, f"rejected: {exc}", str(event.event_id))
            return
        except Exception as exc:
            await _after_failure(pool, spec, msg, event, exc)
            return
        await _ack_applied(spec, msg, first_time)
    finally:
        event_id_var.reset(token)


@dataclass(slots=True)
class _Applying:
    msg: Msg
    event: AnyEvent
    first_time: bool = False
    error: Exception | None = None


async def _apply_in(conn: db.Connection, spec: ConsumerSpec, item: _Applying) -> None:
    """One message of a batch transaction, in its own savepoint (a failure rolls back only its part)."""
    token = event_id_var.set(str(item.event.event_id))
    try:
        async with conn.transaction():
            item.first_time = bool(
                await conn.fetchval(
                    "insert into inbox (consumer, event_id) values ($1, $2)"
                    " on conflict do nothing returning true",
                    spec.name,
                    item.event.event_id,
                )
            )
            if not item.first_time:
                return
            await spec.handler(conn, item.event)
            if item.msg.metadata.num_delivered > 1:
                await conn.execute(
                    "delete from consumer_failures where consumer = $1 and event_id = $2",
                    spec.name,
                    item.event.event_id,
                )
    except Exception as exc:
        item.error = exc
    finally:
        event_id_var.reset(token)


async def _apply_lane_at_once(pool: db.Pool, spec: ConsumerSpec, batch: list[_Applying]) -> None:
    """The lane's fast path: one inbox statement, no savepoints, one commit. Raises (and commits
    nothing) if anything fails; the caller then applies the lane message by message."""
    async with db.transaction(pool) as conn:
        new_ids = {
            r["event_id"]
            for r in await conn.fetch(
                "insert into inbox (consumer, event_id) select $1, e from unnest($2::uuid[]) as e"
                " on conflict do nothing returning event_id",
                spec.name,
                [item.event.event_id for item in batch],
            )
        }
        fresh: list[_Applying] = []
        for item in batch:
            # The same event twice in one lane (a replay under another message id): the first is new.
            item.first_time = item.event.event_id in new_ids
            if item.first_time:
                new_ids.discard(item.event.event_id)
                fresh.append(item)
        if spec.batch_handler is not None:
            if fresh:
                await spec.batch_handler(conn, [item.event for item in fresh])
        else:
            for item in fresh:
                token = event_id_var.set(str(item.event.event_id))
                try:
                    await spec.handler(conn, item.event)
                finally:
                    event_id_var.reset(token)
        redelivered = [item.event.event_id for item in fresh if item.msg.metadata.num_delivered > 1]
        if redelivered:
            # Earlier deliveries may have failed; their count must not outlive the success.
            await conn.execute(
                "delete from consumer_failures where consumer = $1 and event_id = any($2::uuid[])",
                spec.name,
                redelivered,
            )
        failpoint(f"consumer.{spec.name}.before_commit")


async def _apply_one_by_one(pool: db.Pool, spec: ConsumerSpec, batch: list[_Applying]) -> None:
    """The lane again after its fast path failed: each message in its own savepoint."""
    for item in batch:
        item.first_time, item.error = False, None
    try:
        async with db.transaction(pool) as conn:
            for item in batch:
                await _apply_in(conn, spec, item)
            failpoint(f"consumer.{spec.name}.before_commit")
    except Exception as exc:
        # Nothing of the batch is committed: what had applied fails with the transaction's error.
        for item in batch:
            if item.error is None:
                item.error = exc


async def apply_in_one_transaction(pool: db.Pool, spec: ConsumerSpec, msgs: Sequence[Msg]) -> None:
    """`ConsumerSpec.batch_transaction`: every message of `msgs` in one transaction, then the acks.

    Poison and failures are settled after the commit, never while the transaction's connection is held
    (dead letters and failure counts take their own).
    """
    batch: list[_Applying] = []
    for msg in msgs:
        event = await _triage(pool, spec, msg)
        if event is not None:
            batch.append(_Applying(msg, event))
    if not batch:
        return
    try:
        await _apply_lane_at_once(pool, spec, batch)
    except Exception as exc:
        # Which message failed (and whether the others can commit) is found out one by one. Metrics a
        # handler counted in the rolled-back attempt are counted again: they are not the record.
        log.info(
            "batch not applied at once, applying one by one",
            extra={"consumer": spec.name, "n": len(batch), "error": repr(exc)},
        )
        await _apply_one_by_one(pool, spec, batch)
    applied: list[_Applying] = []
    for item in batch:
        if item.error is None:
            applied.append(item)
            continue
        token = event_id_var.set(str(item.event.event_id))
        try:
            if isinstance(item.error, PoisonMessage):
                await _reject(pool, spec, item.msg, f"rejected: {item.error}", str(item.event.event_id))
            else:
                await _after_failure(pool, spec, item.msg, item.event, item.error)
        finally:
            event_id_var.reset(token)
    # Sent without waiting for each confirmation (a round trip per message): the inbox makes a lost ack
    # harmless, and the next fetch on the same connection goes out after these acks.
    for item in applied:
        await _ack_applied(spec, item.msg, item.first_time, confirm=False)


def _partition_of(spec: ConsumerSpec, msg: Msg) -> str:
    """The message's key for `spec.partition_key`; one that can't be decoded gets its own key (it is
    rejected by apply_message, alone)."""
    assert spec.partition_key is not None
    try:
        return spec.partition_key(decode_event(msg.data))
    except (msgspec.DecodeError, msgspec.ValidationError):
        return f"undecodable:{id(msg)}"


def _lanes(spec: ConsumerSpec, msgs: Sequence[Msg]) -> list[list[Msg]]:
    """Up to `spec.concurrency` lanes; one partition key's messages share a lane, in fetch order."""
    if spec.concurrency <= 1 or spec.partition_key is None or len(msgs) <= 1:
        return [list(msgs)]
    partitions: dict[str, list[Msg]] = {}
    for msg in msgs:
        partitions.setdefault(_partition_of(spec, msg), []).append(msg)
    lanes: list[list[Msg]] = [[] for _ in range(min(spec.concurrency, len(partitions)))]
    for index, partition in enumerate(partitions.values()):
        lanes[index % len(lanes)].extend(partition)
    return lanes


async def apply_batch(pool: db.Pool, spec: ConsumerSpec, msgs: Sequence[Msg]) -> None:
    """Apply a fetched batch: one after another, or by partition key up to `spec.concurrency` at once;
    with `spec.batch_transaction`, each lane in one transaction."""
    if not msgs:
        return
    if spec.batch_transaction:
        # apply_in_one_transaction settles every message itself, like apply_message.
        await asyncio.gather(*(apply_in_one_transaction(pool, spec, lane) for lane in _lanes(spec, msgs)))
        return
    if spec.concurrency <= 1 or spec.partition_key is None or len(msgs) <= 1:
        for msg in msgs:
            await apply_message(pool, spec, msg)
        return
    partitions: dict[str, list[Msg]] = {}
    for msg in msgs:
        partitions.setdefault(_partition_of(spec, msg), []).append(msg)
    slots = asyncio.Semaphore(spec.concurrency)

    async def apply_in_order(partition: list[Msg]) -> None:
        async with slots:
            for msg in partition:
                await apply_message(pool, spec, msg)

    # apply_message settles every message itself (ack, nak or dead letter); nothing escapes but
    # cancellation, which must reach every partition.
    await asyncio.gather(*(apply_in_order(p) for p in partitions.values()))


async def fetch_batch(sub: JetStreamContext.PullSubscription, batch: int, timeout: float) -> list[Msg]:
    """Fetch up to `batch` messages; an idle wait returns [] (it is not an error).

    nats-py signals an empty fetch with nats.errors.TimeoutError, FetchTimeoutError or - when the deadline
    runs out between its no-wait probe and the long poll - a plain asyncio.TimeoutError. All are the
    builtin TimeoutError.
    """
    try:
        return await sub.fetch(batch, timeout=timeout)
    except TimeoutError:
        return []


class ConsumerRunner:
    """Runs one consumer: fetch loop with a watchdog that re-creates the subscription."""

    def __init__(self, pool: db.Pool, bus: Bus, spec: ConsumerSpec) -> None:
        self.pool = pool
        self.bus = bus
        self.spec = spec
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sub: JetStreamContext.PullSubscription | None = None

    async def start(self) -> None:
        await ensure_consumer(self.bus, self.spec)
        self._tasks.append(asyncio.create_task(self._run(), name=f"consumer:{self.spec.name}"))

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop fetching, let the in-flight batch finish (it acks), then return."""
        self._stopping.set()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self._drop_subscription()

    async def _drop_subscription(self) -> None:
        # An abandoned pull subscription keeps its queue of late status replies, which no one reads:
        # the connection's drain would then wait on it until its timeout at shutdown.
        sub, self._sub = self._sub, None
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
        seen_reconnects = self.bus.reconnects
        failures = 0
        while not self._stopping.is_set():
            try:
                # Watchdog: after a reconnect (e.g. NATS restarted) pull subscriptions can go silent
                # (nats.py #504); re-declare and re-bind.
                if self._sub is None or self.bus.reconnects != seen_reconnects:
                    seen_reconnects = self.bus.reconnects
                    await self._drop_subscription()
                    self._sub = await self._subscribe()
                msgs = await fetch_batch(self._sub, self.spec.batch, self.spec.fetch_timeout_s)
                failures = 0
                await apply_batch(self.pool, self.spec, msgs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning(
                    "consumer loop error, re-subscribing",
                    extra={"consumer": self.spec.name, "error": repr(exc)},
                )
                await self._drop_subscription()
                await asyncio.sleep(min(0.2 * 2**failures, 5.0))
