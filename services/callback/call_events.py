"""Call events carried durably: every replica's adapter events go through JetStream and are applied once.

Why not apply them where they are heard: PostgreSQL may be restarting at that moment (the event would be
lost), and with several replicas the one that hears a call (its ARI app, the pod a Mango webhook reached)
need not be the one that placed it. So an adapter's event is published on `callback.telephony.<attempt>`
with Nats-Msg-Id = "<attempt>:<kind>" (each kind happens once per attempt, so a re-sent event is dropped by
JetStream and by the inbox), and the durable consumer `telephony_events`, running in every replica, applies
it in one transaction with its inbox row; while PostgreSQL is away it is nak'ed with a short delay and
comes back. Application is order-independent (attempts.py), so redeliveries cannot turn a conversation into
a failure. A provider's raw notification ("notice", Mango's webhooks) is carried the same way and
translated by the applying replica against the call's bookkeeping stored with the attempt.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from services.callback.attempts import AttemptTracker
from services.callback.store import attempts as attempt_store
from services.callback.telephony import CallEvent, CallEventKind
from services.callback.telephony.base import utc_now
from services.common import db
from services.common.bus import Bus
from services.common.consumers import ConsumerSpec, TransientError
from services.common.events import AnyEvent, CallbackTelephonyEvent, encode_event

__all__ = [
    "CONSUMER",
    "DurableNotices",
    "JetStreamCallEvents",
    "NoticeTranslator",
    "call_event_consumer_spec",
    "notice_event",
    "telephony_event",
]

log = logging.getLogger(__name__)

CONSUMER = "telephony_events"
SUBJECT = CallbackTelephonyEvent.SUBJECT
NOTICE = "notice"
# Event ids derived from what the event is, so the same event re-sent by anyone is the same inbox key.
_IDS = uuid.UUID("6f1d7c5e-0b7a-4d59-9a43-5b0c1f3e2a11")
# Publishing while NATS is away is retried forever, at most this far apart.
_PUBLISH_RETRY_MAX_S = 2.0


@runtime_checkable
class NoticeTranslator(Protocol):
    """An adapter whose raw notifications are translated where they are applied (any replica)."""

    name: str

    def translate_notice(
        self, attempt_id: str, state: bytes | None, notice: str
    ) -> tuple[bytes, list[CallEvent]]:
        """The call's new bookkeeping and the call events one notification produces (pure)."""
        ...


def telephony_event(adapter: str, event: CallEvent) -> CallbackTelephonyEvent:
    key = f"{event.attempt_id}:{event.kind.value}"
    return CallbackTelephonyEvent(
        event_id=uuid.uuid5(_IDS, key),
        attempt_id=event.attempt_id,
        adapter=adapter,
        kind=event.kind.value,
        at=event.at,
        provider_call_id=event.provider_call_id,
        detail=event.detail,
        bridged_at=event.bridged_at,
    )


def notice_event(
    adapter: str, attempt_id: str, notice: str, key: str, at: dt.datetime
) -> CallbackTelephonyEvent:
    """A provider's raw notification about an attempt; `key` names it uniquely (Mango: call_id and seq)."""
    return CallbackTelephonyEvent(
        event_id=uuid.uuid5(_IDS, f"{attempt_id}:{NOTICE}:{key}"),
        attempt_id=attempt_id,
        adapter=adapter,
        kind=NOTICE,
        at=at,
        notice=notice,
    )


class JetStreamCallEvents:
    """The sink an attempt tracker hands its adapter's events to: published in order, retried while NATS
    is away (the events wait in order behind the one being retried), never dropped."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def send(self, adapter: str, event: CallEvent) -> None:
        await self.publish(telephony_event(adapter, event), forever=True)

    async def publish(self, event: CallbackTelephonyEvent, *, forever: bool = False) -> None:
        """Publish one event; with `forever` retry until it is stored, else raise after the bus's retries."""
        subject = f"{SUBJECT}.{event.attempt_id}"
        payload = encode_event(event)
        delay = 0.2
        while True:
            try:
                await self.bus.publish(subject, payload, str(event.event_id))
                return
            except Exception as exc:
                if not forever:
                    raise
                log.warning(
                    "call event not published yet, retrying: %r", exc, extra={"attempt": event.attempt_id}
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _PUBLISH_RETRY_MAX_S)


class DurableNotices:
    """An adapter's raw notices published through JetStream (translated where applied), and the stored
    state of its calls read from PostgreSQL: what lets any replica take a webhook or hang a call up."""

    def __init__(self, pool: db.Pool, events: JetStreamCallEvents, adapter: str) -> None:
        self.pool = pool
        self.events = events
        self.adapter = adapter

    async def state(self, attempt_id: str) -> bytes | None:
        async with self.pool.acquire() as conn:
            return await attempt_store.read_provider_state(conn, uuid.UUID(attempt_id))

    async def publish(self, attempt_id: str, notice: str, key: str) -> None:
        # Not retried forever: the webhook's caller is waiting, and Mango resends what it was refused.
        await self.events.publish(notice_event(self.adapter, attempt_id, notice, key, utc_now()))


def call_event_consumer_spec(tracker_of: Callable[[], AttemptTracker | None]) -> ConsumerSpec:
    """The durable consumer applying call events; `tracker_of` gives this replica's tracker once started."""

    async def apply(conn: db.Connection, event: AnyEvent) -> None:
        if not isinstance(event, CallbackTelephonyEvent):
            return
        tracker = tracker_of()
        if tracker is None:
            raise TransientError("the dialer is not started yet")
        freed = False
        for call_event in await _call_events(conn, tracker, event):
            freed = await tracker.apply_call_event(conn, call_event) or freed
        if freed:
            # Before the commit: a dispatch pass that misses the free agent finds it on its next poll.
            tracker.agent_freed()

    return ConsumerSpec(
        name=CONSUMER,
        stream="CALLBACK",
        subjects=[f"{SUBJECT}.>"],
        handler=apply,
        handles=[CallbackTelephonyEvent],
        # A PostgreSQL blink must not keep a finished call open for long.
        retry_delays_s=(0.5, 1.0, 2.0, 3.0),
        ack_wait_s=30.0,
    )


async def _call_events(
    conn: db.Connection, tracker: AttemptTracker, event: CallbackTelephonyEvent
) -> list[CallEvent]:
    if event.kind != NOTICE:
        return [
            CallEvent(
                attempt_id=event.attempt_id,
                kind=CallEventKind(event.kind),
                at=event.at,
                provider_call_id=event.provider_call_id,
                detail=event.detail,
                bridged_at=event.bridged_at,
            )
        ]
    adapter = tracker.adapter
    if not isinstance(adapter, NoticeTranslator) or adapter.name != event.adapter:
        log.warning("a %s notice reached a replica without that adapter; skipped", event.adapter)
        return []
    attempt_id = uuid.UUID(event.attempt_id)
    state = await attempt_store.provider_state(conn, attempt_id)
    new_state, call_events = adapter.translate_notice(event.attempt_id, state, event.notice)
    await attempt_store.set_provider_state(conn, attempt_id, new_state)
    return call_events
