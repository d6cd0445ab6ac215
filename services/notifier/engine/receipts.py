"""Receipts: a provider's delivery report (or one that came before its send was recorded)."""

from __future__ import annotations

import datetime as dt

from services.common import db, outbox, scheduler
from services.common.events import NotifyDelivered
from services.common.logging import mask_pii
from services.notifier import store
from services.notifier.channels.base import DeliveryReceipt
from services.notifier.engine.core import FALLBACK_JOB, MESSAGES, log
from services.notifier.engine.planning import Planning


class Receipts(Planning):
    """Delivery reports close messages; failed ones move on to the next channel."""

    async def on_receipt(self, conn: db.Connection, receipt: DeliveryReceipt) -> bool:
        """A provider's delivery report; False when it names no message of ours."""
        now = self.clock.now()
        await store.lock_provider_message(conn, receipt.channel, receipt.provider_message_id)
        attempts = await store.attempts_by_provider_id(conn, receipt.channel, receipt.provider_message_id)
        if not attempts:
            # Maybe its send is not committed yet (a fast provider): kept until record_sent applies it.
            await store.save_early_receipt(
                conn,
                receipt.channel,
                receipt.provider_message_id,
                status=receipt.status,
                at=receipt.at,
                reason=receipt.reason,
            )
            log.info("receipt for a message not (yet) known", extra={"channel": receipt.channel})
            return False
        for attempt in attempts:
            if attempt.state not in ("sent", "unknown", "in_flight"):
                continue  # a repeated receipt, or one for an attempt already settled
            message = await store.get_message(conn, attempt.message_id, lock=True)
            assert message is not None
            if receipt.status == "delivered":
                await self._delivered(conn, message, attempt, receipt, now)
            else:
                await store.set_attempt_state(conn, attempt.id, "failed", mask_pii(receipt.reason)[:300])
                await store.add_timeline(
                    conn,
                    message.id,
                    now,
                    "delivery failed",
                    channel=attempt.channel,
                    detail=mask_pii(receipt.reason)[:300],
                )
                MESSAGES.labels(attempt.channel, "failed").inc()
                await self._after_channel_failed(
                    conn, message, attempt, now, receipt.reason or "not delivered"
                )
        return True

    async def _delivered(
        self,
        conn: db.Connection,
        message: store.MessageRow,
        attempt: store.AttemptRow,
        receipt: DeliveryReceipt,
        now: dt.datetime,
    ) -> None:
        await store.mark_delivered(conn, attempt.id, receipt.at)
        others = await store.attempts_of(conn, message.id)
        late = attempt.kind == "messenger" and any(a.is_fallback and a.id != attempt.id for a in others)
        if late:
            await store.add_timeline(
                conn,
                message.id,
                now,
                "late receipt",
                channel=attempt.channel,
                detail="delivered after the SMS fallback went; recorded only",
            )
        else:
            await store.add_timeline(conn, message.id, now, "delivered", channel=attempt.channel)
        if await scheduler.cancel(conn, FALLBACK_JOB, str(message.id)):
            await store.add_timeline(conn, message.id, now, "fallback cancelled", detail="delivered")
        if message.state != "superseded":
            await store.set_message_state(conn, message.id, "delivered")
        await outbox.append(
            conn,
            NotifyDelivered(
                message_id=message.id,
                recipient_id=message.recipient_id,
                cause_event_id=message.event_id,
                purpose=message.purpose,
                channel=attempt.channel,
                channel_kind="sms" if attempt.kind == "sms" else "messenger",
                late=late,
            ),
        )
        MESSAGES.labels(attempt.channel, "late_receipt" if late else "delivered").inc()

    # --- messenger bindings ---------------------------------------------------------------------------
