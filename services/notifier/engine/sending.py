"""Sending: the leased Sender calls providers; the Notifier records each attempt's outcome."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Sequence

from services.common import db, outbox
from services.common.events import NotifySent
from services.common.failpoints import failpoint
from services.common.logging import mask_pii
from services.common.scheduler import Job
from services.common.wakeup import NotifyWakeup
from services.notifier import store
from services.notifier.channels.base import (
    BatchChannel,
    ChannelError,
    DeliveryReceipt,
    OutboundMessage,
    RecipientUnreachable,
    SendResult,
    TransientChannelError,
)
from services.notifier.engine.bindings import Bindings
from services.notifier.engine.core import MESSAGES, fmt_utc, log
from services.notifier.engine.receipts import Receipts


class Notifier(Receipts, Bindings):
    """Use cases over one pool; every method that writes takes the caller's transaction (`conn`)."""

    async def record_sent(
        self,
        conn: db.Connection,
        attempt: store.AttemptRow,
        token: uuid.UUID,
        result: SendResult,
        now: dt.datetime,
    ) -> None:
        await store.lock_provider_message(conn, attempt.channel, result.provider_message_id)
        settled = await store.settle_attempt(
            conn,
            attempt.id,
            token,
            state="sent",
            at=now,
            provider_message_id=result.provider_message_id,
            segments=result.segments,
            cost_minor=result.cost_minor,
        )
        if not settled:
            log.warning(
                "send outcome arrived after the attempt was settled elsewhere",
                extra={"attempt": str(attempt.id)},
            )
            return
        message = await store.get_message(conn, attempt.message_id, lock=True)
        assert message is not None
        if message.state in ("sending", "unknown", "queued", "deferred"):
            await store.set_message_state(conn, message.id, "sent")
        what = ("edited in place via " if attempt.edit_of else "sent via ") + attempt.channel
        cost = (
            f"{result.segments} segment(s), {result.cost_minor / 100:.2f} RUB"
            if attempt.kind == "sms"
            else ""
        )
        await store.add_timeline(conn, message.id, now, what, channel=attempt.channel, detail=cost)
        await outbox.append(
            conn,
            NotifySent(
                message_id=message.id,
                recipient_id=message.recipient_id,
                cause_event_id=message.event_id,
                purpose=message.purpose,
                channel=attempt.channel,
                channel_kind="sms" if attempt.kind == "sms" else "messenger",
                segments=result.segments,
                cost_minor=result.cost_minor,
                fallback=attempt.is_fallback,
                edited_in_place=bool(attempt.edit_of),
            ),
        )
        if attempt.kind == "messenger" and attempt.channel in self.registry.ACCEPTED_IS_DELIVERED:
            accepted = DeliveryReceipt(
                channel=attempt.channel,
                provider_message_id=result.provider_message_id,
                status="delivered",
                at=now,
                reason="accepted by a bot API without receipts",
            )
            await self._delivered(conn, message, attempt, accepted, now)
            return
        if attempt.kind == "messenger":
            await self._arm_fallback(conn, message, now)
        early = await store.take_early_receipt(conn, attempt.channel, result.provider_message_id)
        if early is not None:
            await self.on_receipt(
                conn,
                DeliveryReceipt(
                    channel=attempt.channel,
                    provider_message_id=result.provider_message_id,
                    status=early["status"],
                    at=early["at"],
                    reason=early["reason"],
                ),
            )

    async def record_sms_sent(
        self,
        conn: db.Connection,
        token: uuid.UUID,
        sent: Sequence[tuple[store.AttemptRow, store.MessageRow, SendResult]],
        now: dt.datetime,
    ) -> None:
        """`record_sent` for many accepted SMS at once: the same rows, in six statements for the lot.
        `sent`: each attempt with its message as claimed (its event fields never change; its state is
        only moved on from what it is now)."""
        keys = [(attempt.channel, result.provider_message_id) for attempt, _, result in sent]
        await store.lock_provider_messages(conn, keys)
        settled = await store.settle_sent(
            conn,
            token,
            [
                (attempt.id, result.provider_message_id, result.segments, result.cost_minor)
                for attempt, _, result in sent
            ],
            now,
        )
        recorded = [(attempt, message, result) for attempt, message, result in sent if attempt.id in settled]
        for attempt, _, _ in sent:
            if attempt.id not in settled:
                log.warning(
                    "send outcome arrived after the attempt was settled elsewhere",
                    extra={"attempt": str(attempt.id)},
                )
        if not recorded:
            return
        await store.mark_messages_sent(conn, [message.id for _, message, _ in recorded])
        # Written before any early receipt below adds its own entries after them.
        async with self.timeline_batch(conn):
            for attempt, message, result in recorded:
                await self.note(
                    conn,
                    message.id,
                    now,
                    "sent via " + attempt.channel,
                    channel=attempt.channel,
                    detail=f"{result.segments} segment(s), {result.cost_minor / 100:.2f} RUB",
                )
        await store.append_outbox(
            conn,
            [
                NotifySent(
                    message_id=message.id,
                    recipient_id=message.recipient_id,
                    cause_event_id=message.event_id,
                    purpose=message.purpose,
                    channel=attempt.channel,
                    channel_kind="sms",
                    segments=result.segments,
                    cost_minor=result.cost_minor,
                    fallback=attempt.is_fallback,
                    edited_in_place=False,
                )
                for attempt, message, result in recorded
            ],
        )
        for early in await store.take_early_receipts(
            conn, [(attempt.channel, result.provider_message_id) for attempt, _, result in recorded]
        ):
            await self.on_receipt(
                conn,
                DeliveryReceipt(
                    channel=early["channel"],
                    provider_message_id=early["provider_message_id"],
                    status=early["status"],
                    at=early["at"],
                    reason=early["reason"],
                ),
            )

    async def record_failure(
        self,
        conn: db.Connection,
        attempt: store.AttemptRow,
        token: uuid.UUID,
        error: ChannelError,
        now: dt.datetime,
    ) -> str:
        """Transient: retry with backoff (bounded); permanent: next channel in the order, or failed."""
        reason = mask_pii(error.reason)[:300]
        if error.transient and attempt.tries < self.settings.notify_max_tries:
            backoff = min(5.0 * 2 ** (attempt.tries - 1), 900.0)
            delay = max(error.retry_after_s or 0.0, backoff)
            retry_at = now + dt.timedelta(seconds=delay)
            if await store.settle_attempt(
                conn, attempt.id, token, state="ready", at=now, error=reason, not_before=retry_at
            ):
                await store.add_timeline(
                    conn,
                    attempt.message_id,
                    now,
                    f"retry at {fmt_utc(retry_at)}",
                    channel=attempt.channel,
                    detail=reason,
                )
            return "retry"
        if error.transient:
            reason = f"gave up after {attempt.tries} tries: {reason}"
        if not await store.settle_attempt(conn, attempt.id, token, state="failed", at=now, error=reason):
            return "stale"
        message = await store.get_message(conn, attempt.message_id, lock=True)
        assert message is not None
        await store.add_timeline(
            conn, message.id, now, f"refused by {attempt.channel}", channel=attempt.channel, detail=reason
        )
        if isinstance(error, RecipientUnreachable):
            if attempt.kind == "messenger":
                await self._unbind(conn, attempt.channel, attempt.address, "unbound_unreachable", now)
                await store.add_timeline(
                    conn, message.id, now, "messenger unbound", channel=attempt.channel, detail=reason
                )
            else:
                await store.mark_phone_invalid(conn, message.recipient_id, now, reason)
        await self._after_channel_failed(conn, message, attempt, now, reason)
        return "failed"

    async def sweep_job(self, conn: db.Connection, job: Job) -> None:
        """In-flight attempts whose lease ran out: outcome unknown, never called again (package docstring)."""
        for attempt in await store.expire_leases(conn, job.now):
            message = await store.get_message(conn, attempt.message_id, lock=True)
            assert message is not None
            await store.add_timeline(
                conn,
                message.id,
                job.now,
                "outcome unknown",
                channel=attempt.channel,
                detail="the sender stopped between the provider call and its commit;"
                " not sent again on this channel",
            )
            MESSAGES.labels(attempt.channel, "unknown").inc()
            if message.state == "sending":
                await store.set_message_state(conn, message.id, "unknown")
            if attempt.kind == "messenger":
                await self._arm_fallback(conn, message, job.now)


class Sender:
    """Claims ready attempts under a lease and calls their providers with no connection held."""

    def __init__(
        self,
        pool: db.Pool,
        notifier: Notifier,
        schema: str,
        database_url: str,
        *,
        poll_interval_s: float = 1.0,
        batch: int = 20,
    ) -> None:
        self.pool = pool
        self.notifier = notifier
        self.batch = batch
        self._wakeup = NotifyWakeup(database_url, f"abonent_notifier_send_{schema}", poll_interval_s)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notifier-sender")

    async def stop(self, timeout: float = 15.0) -> None:
        await self._wakeup.stop(
            self._task, timeout, "notifier sender did not stop in time; leases will expire"
        )
        self._task = None

    def wake(self) -> None:
        self._wakeup.set()

    async def _run(self) -> None:
        failures = 0
        while not self._wakeup.stopping.is_set():
            await self._wakeup.listen()
            self._wakeup.clear()
            try:
                sent = await self.run_once()
                failures = 0
            except Exception as exc:
                failures += 1
                log.warning("notifier send pass failed: %r", exc)
                sent = 0
                await asyncio.sleep(min(0.2 * 2**failures, 5.0))
            if sent >= self.batch:
                continue
            await self._wakeup.wait()

    async def run_once(self) -> int:
        """Claim due attempts, call their providers concurrently, record the outcomes; return how many.

        Two transactions per batch, not per attempt: the claim (with every message and recipient it
        needs read in one query each) and the record of all outcomes (a savepoint per attempt, so one
        that cannot be recorded leaves the others' records standing)."""
        notifier = self.notifier
        now = notifier.clock.now()
        token = uuid.uuid4()
        lease_until = now + dt.timedelta(seconds=notifier.settings.notify_send_lease_s)
        work: list[tuple[store.AttemptRow, store.MessageRow, str]] = []
        async with db.transaction(self.pool) as conn:
            claimed = await store.claim_ready(
                conn, now=now, lease_until=lease_until, token=token, limit=self.batch
            )
            if not claimed:
                return 0
            messages = await store.lock_messages(conn, [a.message_id for a in claimed])
            sms_to = [messages[a.message_id].recipient_id for a in claimed if a.kind == "sms"]
            recipients = await store.get_recipients(conn, sms_to) if sms_to else {}
            for attempt in claimed:
                message = messages[attempt.message_id]
                if message.state == "superseded":
                    await store.set_attempt_state(conn, attempt.id, "cancelled", "superseded")
                    continue
                if message.expires_at is not None and now >= message.expires_at:
                    await store.set_attempt_state(conn, attempt.id, "expired", "past its TTL")
                    if message.state not in ("sent", "delivered"):
                        await notifier.give_up(
                            conn, message, now, "expired", "past its TTL before it could be sent"
                        )
                    continue
                address = attempt.address
                if attempt.kind == "sms":
                    address = notifier.phone_of(recipients[message.recipient_id])
                work.append((attempt, message, address))
        outcomes = await self._call_all(work)
        # The window: the providers have (or may have) the messages; nothing is committed yet. A crash
        # here leaves the attempts in flight until the sweeper calls them unknown (package docstring).
        failpoint("notifier.send.after_provider")
        await self._record(token, outcomes)
        return len(claimed)

    async def _call_all(
        self, work: list[tuple[store.AttemptRow, store.MessageRow, str]]
    ) -> list[tuple[store.AttemptRow, store.MessageRow, SendResult | ChannelError]]:
        """Every claimed attempt's provider call, concurrently; new messages on a channel whose provider
        takes several per request (BatchChannel) go together, in as few requests as it allows."""
        registry = self.notifier.registry
        together: dict[str, list[tuple[store.AttemptRow, store.MessageRow, str]]] = {}
        alone: list[tuple[store.AttemptRow, store.MessageRow, str]] = []
        for item in work:
            attempt = item[0]
            channel = registry.by_name.get(attempt.channel)
            if isinstance(channel, BatchChannel) and not attempt.edit_of:
                together.setdefault(attempt.channel, []).append(item)
            else:
                alone.append(item)

        async def batch(items: list[tuple[store.AttemptRow, store.MessageRow, str]]) -> list[Outcome]:
            channel = registry.by_name[items[0][0].channel]
            assert isinstance(channel, BatchChannel)
            try:
                results = await channel.send_many([_outbound(a, m, address) for a, m, address in items])
            except Exception as exc:
                # An adapter that broke its contract: retried a bounded number of times, like one call.
                error = TransientChannelError(f"{type(exc).__name__}: {exc}")
                results = [error] * len(items)
            return [(a, m, result) for (a, m, _), result in zip(items, results, strict=True)]

        async def one(item: tuple[store.AttemptRow, store.MessageRow, str]) -> list[Outcome]:
            attempt, message, address = item
            return [(attempt, message, await self._call(attempt, message, address))]

        done = await asyncio.gather(*(batch(items) for items in together.values()), *(one(i) for i in alone))
        return [outcome for outcomes in done for outcome in outcomes]

    async def _call(
        self, attempt: store.AttemptRow, message: store.MessageRow, address: str
    ) -> SendResult | ChannelError:
        notifier = self.notifier
        channel = notifier.registry.by_name.get(attempt.channel)
        outbound = _outbound(attempt, message, address)
        try:
            if channel is None:
                raise ChannelError(f"channel {attempt.channel} is not configured", transient=False)
            if attempt.edit_of:
                return await channel.edit(attempt.edit_of, outbound)
            return await channel.send(outbound)
        except ChannelError as exc:
            return exc
        except Exception as exc:
            # An adapter that broke its contract (garbage answer, bug): retried a bounded number of times.
            return TransientChannelError(f"{type(exc).__name__}: {exc}")

    async def _record(self, token: uuid.UUID, outcomes: list[Outcome]) -> None:
        """All outcomes of a pass in one transaction: accepted SMS set-based (a handful of statements for
        the lot), the rest - and the lot again, if its statements fail - one by one, each in a savepoint
        (one that cannot be recorded leaves the others' records standing)."""
        if not outcomes:
            return
        notifier = self.notifier
        now = notifier.clock.now()
        counted: list[tuple[str, str]] = []
        sms_sent = [
            (attempt, message, outcome)
            for attempt, message, outcome in outcomes
            if attempt.kind == "sms" and isinstance(outcome, SendResult)
        ]
        rest: list[tuple[store.AttemptRow, SendResult | ChannelError]] = [
            (attempt, outcome)
            for attempt, _message, outcome in outcomes
            if not (attempt.kind == "sms" and isinstance(outcome, SendResult))
        ]
        try:
            async with db.transaction(self.pool) as conn:
                if sms_sent:
                    try:
                        async with conn.transaction():
                            await notifier.record_sms_sent(conn, token, sms_sent, now)
                        counted += [(attempt.channel, "sent") for attempt, _, _ in sms_sent]
                    except Exception:
                        log.exception(
                            "could not record sent SMS together; one by one", extra={"n": len(sms_sent)}
                        )
                        rest = [(attempt, result) for attempt, _, result in sms_sent] + rest
                for attempt, outcome in rest:
                    try:
                        async with conn.transaction():
                            if isinstance(outcome, ChannelError):
                                what = await notifier.record_failure(conn, attempt, token, outcome, now)
                            else:
                                await notifier.record_sent(conn, attempt, token, outcome, now)
                                what = "sent"
                    except Exception:
                        log.exception(
                            "could not record a send outcome; the lease decides",
                            extra={"attempt": str(attempt.id)},
                        )
                        continue
                    counted.append((attempt.channel, what))
        except Exception:
            log.exception("could not record send outcomes; the leases decide", extra={"n": len(outcomes)})
            return
        for channel, what in counted:
            MESSAGES.labels(channel, what).inc()


Outcome = tuple[store.AttemptRow, store.MessageRow, SendResult | ChannelError]


def _outbound(attempt: store.AttemptRow, message: store.MessageRow, address: str) -> OutboundMessage:
    return OutboundMessage(
        # The attempt id: the same on every retry of this call, so a provider that dedupes by it never
        # delivers twice; a fallback on another channel is another attempt.
        message_id=attempt.id,
        address=address,
        text=message.body,
        template_id=message.template_id,
    )
