"""The notifier's engine: events become messages, messages become provider calls, receipts close them.

How one message travels (every step commits with its timeline entry, and notify.* events go through the
outbox in the same transaction):

1. **Plan** (`on_event`, the consumer's inbox transaction): route the event (routing.toml), find the
   recipient, insert the message — unique on (event id, recipient, purpose), so a redelivered or replayed
   event never makes a second one — supersede the thread's pending older messages, decide the time
   (quiet hours, deadline, TTL: domain/timing.py). Due now: released at once; else a `notify.release`
   timer (services.common.scheduler) in the same transaction.
2. **Release**: pick the first usable channel of the route's order (a bound messenger; else SMS within
   the fatigue budget) and insert an *attempt* row in state `ready`. One attempt per (message, channel).
3. **Send** (`Sender`): claim ready attempts with a lease ("in flight until T", SKIP LOCKED), commit, call
   the provider with no transaction or connection held, then record the outcome in a second transaction.
4. **Fallback**: a messenger send arms `notify.fallback` N minutes later; it sends SMS only if no delivery
   receipt came. A receipt after that is recorded as late; there is no further fallback.

**The window between a provider call and its commit.** Between (3)'s provider call and the transaction
recording it, a crash leaves the attempt `in_flight`. When its lease has expired, the `notify.sweep`
timer marks it `unknown` — the provider may or may not have the message — and never calls that channel
again for that message: *at most one message per channel, never two*. What follows is the ordinary rule:
an unknown messenger send is treated like one without a receipt (the SMS fallback follows after N
minutes unless a receipt arrives); an unknown SMS is final. A sender that comes back after its lease still
records its outcome (the attempt becomes `sent` with the provider's id). Providers that take an
idempotency key get the attempt id as `OutboundMessage.message_id` — the same on every retry of that
attempt — so a transient-error retry is never a duplicate at the provider either.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import urllib.parse
import uuid
from collections.abc import Sequence
from typing import Any

import phonenumbers
from prometheus_client import Counter

from services.common import db, outbox, scheduler
from services.common.calendar import QuietHours
from services.common.clock import Clock
from services.common.consumers import PoisonMessage, TransientError
from services.common.crypto import DataProtector
from services.common.events import (
    CallbackEvent,
    CallbackRequested,
    Event,
    NotifyDelivered,
    NotifyFailed,
    NotifySent,
    VerificationEvent,
)
from services.common.failpoints import failpoint
from services.common.logging import mask_pii
from services.common.phone import mask_phone
from services.common.scheduler import Job
from services.common.wakeup import NotifyWakeup
from services.notifier import store
from services.notifier.channels.base import (
    Channel,
    ChannelError,
    DeliveryReceipt,
    InboundUpdate,
    OutboundMessage,
    RecipientUnreachable,
    SendResult,
    TransientChannelError,
)
from services.notifier.domain import binding
from services.notifier.domain.timing import (
    RecipientZone,
    decide_timing,
    local_day_bounds,
    quiet_hours_for,
    resolve_zone,
    within_sms_budget,
)
from services.notifier.routing import Route, Router, template_context
from services.notifier.settings import NotifierSettings

log = logging.getLogger(__name__)

MESSAGES = Counter(
    "abonent_notifier_messages_total",
    "Notifier outcomes per channel: sent, delivered, late_receipt, failed, retry, unknown, fallback, "
    "expired, superseded, skipped, deferred, duplicate",
    ["channel", "outcome"],
)

RELEASE_JOB = "notify.release"
FALLBACK_JOB = "notify.fallback"
SWEEP_JOB = "notify.sweep"
PHONE_INDEX = "notifier.phone"
# A callback's later event that arrives before its callback.requested (delivery is unordered) is retried
# until the phone is known; past this age it is dropped (the request predates the notifier, say).
CONTACT_WAIT = dt.timedelta(hours=1)
# A chat must share its contact this soon after opening the deep link.
BIND_CONTACT_WITHIN = dt.timedelta(hours=1)
# The longest link a template's segment budget allows for (test_notifier_templates.py renders with it).
MAX_LINK_CHARS = 60
FINAL_STATES = ("delivered", "failed", "superseded", "expired", "skipped")


class ChannelRegistry:
    """The configured channels by name; the route slots they fill ("messenger", "sms")."""

    # Bot APIs without delivery receipts: a message they accept is in the person's chat, so acceptance
    # counts as delivery (otherwise every such message would be followed by an SMS N minutes later).
    ACCEPTED_IS_DELIVERED = frozenset({"telegram", "max"})

    def __init__(self, channels: Sequence[Channel]) -> None:
        self.by_name: dict[str, Channel] = {}
        for channel in channels:
            if channel.name in self.by_name:
                raise ValueError(f"channel {channel.name!r} configured twice")
            self.by_name[channel.name] = channel
        self.sms: Channel | None = next((c for c in channels if c.kind == "sms"), None)
        self.messengers = {c.name: c for c in channels if c.kind == "messenger"}

    def slots(self) -> set[str]:
        return ({"sms"} if self.sms is not None else set()) | ({"messenger"} if self.messengers else set())

    async def close(self) -> None:
        for channel in self.by_name.values():
            with contextlib.suppress(Exception):
                await channel.close()


class _Choice:
    __slots__ = ("address", "channel", "edit_of", "kind")

    def __init__(self, channel: str, kind: str, address: str, edit_of: str = "") -> None:
        self.channel = channel
        self.kind = kind
        self.address = address
        self.edit_of = edit_of


def short_link(url: str) -> str:
    """A link for an SMS: the page itself when short, else its site (templates budget 60 characters)."""
    if len(url) <= MAX_LINK_CHARS:
        return url
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"[:MAX_LINK_CHARS] if parts.netloc else ""


def _fmt(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


class Notifier:
    """Use cases over one pool; every method that writes takes the caller's transaction (`conn`)."""

    def __init__(
        self,
        router: Router,
        registry: ChannelRegistry,
        protector: DataProtector,
        settings: NotifierSettings,
        clock: Clock,
    ) -> None:
        self.router = router
        self.registry = registry
        self.protector = protector
        self.settings = settings
        self.clock = clock

    # --- recipients ---------------------------------------------------------------------------------

    def phone_hash(self, phone: str) -> bytes:
        return self.protector.blind_index(phone, PHONE_INDEX)

    async def recipient(
        self, conn: db.Connection, phone: str, lang: str, event_tz: str
    ) -> store.RecipientRow:
        try:
            parsed = phonenumbers.parse(phone)
        except phonenumbers.NumberParseException as exc:
            raise PoisonMessage(f"not a phone number: {exc}") from None
        if not phonenumbers.is_possible_number(parsed):
            raise PoisonMessage("not a possible phone number")
        e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
        zone = resolve_zone(e164, event_tz)
        new_id = uuid.uuid4()
        return await store.upsert_recipient(
            conn,
            new_id=new_id,
            phone_hash=self.phone_hash(e164),
            phone_enc=self.protector.encrypt(e164, store.PHONE_CONTEXT, new_id),
            phone_masked=mask_phone(e164),
            lang=lang if lang in ("ru", "en") else "ru",
            tz=zone.tz,
            tz_rule=zone.rule,
        )

    def phone_of(self, recipient: store.RecipientRow) -> str:
        return self.protector.decrypt(recipient.phone_enc, store.PHONE_CONTEXT, recipient.id)

    def quiet_hours(self, recipient: store.RecipientRow) -> QuietHours:
        zone = RecipientZone(tz=recipient.tz, rule=recipient.tz_rule)  # type: ignore[arg-type]
        return quiet_hours_for(zone, self.settings.quiet_start, self.settings.quiet_end)

    @staticmethod
    def display_tz(recipient: store.RecipientRow) -> str:
        # Unknown zone: times in messages are given in Moscow time, as Russian operators do.
        return "Europe/Moscow" if recipient.tz_rule == "all_russia" else recipient.tz

    # --- 1. plan ------------------------------------------------------------------------------------

    async def on_event(self, conn: db.Connection, event: Event) -> None:
        """The consumer handler (inside its inbox transaction): plan every message this event asks for."""
        now = self.clock.now()
        for route in self.router.routes_for(event):
            await self._plan(conn, event, route, now)

    async def _audience(
        self, conn: db.Connection, event: Event, route: Route, now: dt.datetime
    ) -> tuple[store.RecipientRow, str, str, dict[str, Any]] | None:
        """(recipient, tenant, thread key, extra template values), or None to drop the event."""
        if route.audience == "subscriber":
            assert isinstance(event, VerificationEvent)
            # Routing checked that this event type carries an msisdn (audience 'subscriber').
            msisdn: str = getattr(event, "msisdn")  # noqa: B009
            lang: str = getattr(event, "lang", "ru")
            recipient = await self.recipient(conn, msisdn, lang, getattr(event, "tz", ""))
            return recipient, "verification", f"verification:{event.case_id}", {}
        assert isinstance(event, CallbackEvent)
        if isinstance(event, CallbackRequested):
            recipient = await self.recipient(conn, event.phone, event.lang, event.visitor_tz)
            await store.save_callback_contact(
                conn,
                event.callback_id,
                recipient.id,
                site_key=event.site_key,
                lang=event.lang,
                page_url=event.page_url,
            )
        contact = await store.callback_contact(conn, event.callback_id)
        if contact is None:
            phone = getattr(event, "phone", "")
            if not phone:
                if now - event.occurred_at < CONTACT_WAIT:
                    raise TransientError("this callback's phone is not known yet (its callback.requested)")
                log.warning(
                    "callback event without a known phone dropped", extra={"type": type(event).__name__}
                )
                return None
            recipient = await self.recipient(conn, phone, getattr(event, "lang", "ru"), "")
            await store.save_callback_contact(
                conn,
                event.callback_id,
                recipient.id,
                site_key=event.site_key,
                lang=getattr(event, "lang", "ru"),
                page_url="",
            )
            page_url = ""
        else:
            found = await store.get_recipient(conn, contact["recipient_id"])
            assert found is not None  # callback_contacts references recipients
            recipient, page_url = found, contact["page_url"]
        return (
            recipient,
            event.site_key,
            f"callback:{event.callback_id}",
            {"rebook_url": short_link(page_url)},
        )

    async def _plan(self, conn: db.Connection, event: Event, route: Route, now: dt.datetime) -> None:
        found = await self._audience(conn, event, route, now)
        if found is None:
            return
        recipient, tenant, thread_key, extra = found
        rendered = self.router.render(
            route.template,
            recipient.lang if route.audience == "subscriber" else getattr(event, "lang", recipient.lang),
            template_context(event, self.display_tz(recipient), extra),
        )
        message_id = uuid.uuid4()
        deadline = route.deadline_of(event)
        expires_at = route.expires_at(event)
        inserted = await store.insert_message(
            conn,
            id=message_id,
            event_id=event.event_id,
            event_type=str(type(event).__struct_config__.tag),
            occurred_at=event.occurred_at,
            recipient_id=recipient.id,
            tenant=tenant,
            purpose=route.purpose,
            category=route.category,
            thread_key=thread_key,
            template=rendered.template,
            template_version=rendered.version,
            template_id=rendered.template_id,
            lang=rendered.lang,
            body=rendered.text,
            urgent=route.urgent,
            legally_required=route.legally_required,
            edit_in_place=route.edit_in_place,
            channel_order=list(route.channels),
            state="queued",
            send_at=now,
            expires_at=expires_at,
            deadline=deadline,
            timing_rule="now",
        )
        if not inserted:
            MESSAGES.labels("", "duplicate").inc()
            return
        zone_note = f"zone {recipient.tz} (rule: {recipient.tz_rule})"
        await store.add_timeline(conn, message_id, now, "queued", detail=f"{route.purpose}; {zone_note}")
        newest = await store.newest_in_thread(conn, thread_key, message_id)
        if newest is not None and newest > event.occurred_at:
            # Delivery is unordered: an older state that arrives late must not replace a newer one.
            await store.set_message_state(conn, message_id, "superseded")
            await store.add_timeline(
                conn, message_id, now, "superseded", detail="a later state is already known"
            )
            MESSAGES.labels("", "superseded").inc()
            return
        await self._supersede_older(
            conn, thread_key, message_id, occurred_at=event.occurred_at, purpose=route.purpose, now=now
        )
        if not route.legally_required and await store.opted_out(conn, recipient.id, route.category):
            await store.set_message_state(conn, message_id, "skipped")
            await store.add_timeline(
                conn, message_id, now, "skipped", detail=f"opted out of {route.category}"
            )
            MESSAGES.labels("", "skipped").inc()
            return
        timing = decide_timing(
            now=now,
            ready_at=now,
            quiet=self.quiet_hours(recipient),
            urgent=route.urgent,
            legally_required=route.legally_required,
            deadline=deadline,
            expires_at=expires_at,
        )
        message = await store.get_message(conn, message_id)
        assert message is not None
        if timing.at is None:
            await self.give_up(conn, message, now, "expired", timing.rule)
            return
        await store.set_message_state(conn, message_id, "queued", send_at=timing.at, timing_rule=timing.rule)
        if timing.at <= now:
            if timing.rule == "deadline_override":
                await store.add_timeline(
                    conn,
                    message_id,
                    now,
                    "quiet hours overridden",
                    detail="legally required before its deadline",
                )
            await self.release(conn, message_id, now)
            return
        await store.set_message_state(conn, message_id, "deferred")
        await store.add_timeline(
            conn, message_id, now, f"deferred until {_fmt(timing.at)}", detail=f"{timing.rule}; {zone_note}"
        )
        await scheduler.schedule(conn, RELEASE_JOB, str(message_id), timing.at)
        MESSAGES.labels("", "deferred").inc()

    async def _supersede_older(
        self,
        conn: db.Connection,
        thread_key: str,
        newer: uuid.UUID,
        *,
        occurred_at: dt.datetime,
        purpose: str,
        now: dt.datetime,
    ) -> None:
        for old in await store.supersede_older(conn, thread_key, newer, occurred_at):
            await scheduler.cancel(conn, RELEASE_JOB, str(old))
            await store.add_timeline(conn, old, now, "superseded", detail=f"by {purpose}")
            MESSAGES.labels("", "superseded").inc()
        older = await store.older_in_thread(conn, thread_key, newer, occurred_at)
        if not older:
            return
        await store.cancel_ready_attempts(conn, older)
        for old in older:
            if await scheduler.cancel(conn, FALLBACK_JOB, str(old)):
                await store.add_timeline(
                    conn, old, now, "fallback cancelled", detail=f"superseded by {purpose}"
                )

    async def give_up(
        self, conn: db.Connection, message: store.MessageRow, now: dt.datetime, state: str, reason: str
    ) -> None:
        await store.set_message_state(conn, message.id, state)
        await store.add_timeline(conn, message.id, now, state, detail=reason)
        await outbox.append(
            conn,
            NotifyFailed(
                message_id=message.id,
                recipient_id=message.recipient_id,
                cause_event_id=message.event_id,
                purpose=message.purpose,
                reason=f"{state}: {reason}",
            ),
        )
        MESSAGES.labels("", state).inc()

    # --- 2. release ---------------------------------------------------------------------------------

    async def release(self, conn: db.Connection, message_id: uuid.UUID, now: dt.datetime) -> None:
        """Turn a due message into a ready attempt on its first usable channel."""
        message = await store.get_message(conn, message_id, lock=True)
        if message is None or message.state not in store.PENDING_STATES:
            return
        if message.expires_at is not None and now >= message.expires_at:
            await self.give_up(conn, message, now, "expired", "past its TTL before it could be sent")
            return
        recipient = await store.lock_recipient(conn, message.recipient_id)
        assert recipient is not None
        reasons: list[str] = []
        choice = await self._choose(conn, message, recipient, message.channel_order, now=now, reasons=reasons)
        if choice is None:
            await self.give_up(conn, message, now, "failed", "; ".join(reasons) or "no channel")
            return
        await self._start_attempt(conn, message, choice, now, fallback=False)

    async def _choose(
        self,
        conn: db.Connection,
        message: store.MessageRow,
        recipient: store.RecipientRow,
        slots: Sequence[str],
        *,
        now: dt.datetime,
        reasons: list[str],
    ) -> _Choice | None:
        for slot in slots:
            if slot == "messenger":
                bound = await store.bindings_of(conn, recipient.id)
                usable = [(name, chat) for name, chat in bound.items() if name in self.registry.messengers]
                if not usable:
                    reasons.append("no messenger bound")
                    continue
                name, chat = usable[0]
                edit_of = ""
                if message.edit_in_place:
                    edit_of = (
                        await store.editable_in_thread(conn, message.thread_key, message.id, name, chat) or ""
                    )
                return _Choice(name, "messenger", chat, edit_of)
            if slot == "sms":
                if self.registry.sms is None:
                    reasons.append("no SMS channel")
                    continue
                if recipient.phone_invalid_at is not None:
                    reasons.append("the number was rejected as invalid")
                    continue
                start, end = local_day_bounds(now, self.display_tz(recipient))
                used = await store.non_critical_sms_between(conn, recipient.id, start, end)
                if not within_sms_budget(
                    non_critical_sms_today=used,
                    budget=self.settings.notify_sms_daily_budget,
                    critical=message.critical,
                ):
                    reasons.append(f"SMS fatigue budget spent ({used} today)")
                    MESSAGES.labels(self.registry.sms.name, "fatigue").inc()
                    continue
                return _Choice(self.registry.sms.name, "sms", "")
        return None

    async def _start_attempt(
        self,
        conn: db.Connection,
        message: store.MessageRow,
        choice: _Choice,
        now: dt.datetime,
        *,
        fallback: bool,
    ) -> bool:
        attempt_id = await store.insert_attempt(
            conn,
            message_id=message.id,
            channel=choice.channel,
            kind=choice.kind,
            address=choice.address,
            not_before=now,
            edit_of=choice.edit_of,
            is_fallback=fallback,
        )
        if attempt_id is None:
            return False
        if message.state in store.PENDING_STATES:
            await store.set_message_state(conn, message.id, "sending")
        what = ("fallback to " if fallback else "sending via ") + choice.channel
        detail = f"edit in place of {choice.edit_of}" if choice.edit_of else ""
        await store.add_timeline(conn, message.id, now, what, channel=choice.channel, detail=detail)
        return True

    async def release_job(self, conn: db.Connection, job: Job) -> dt.datetime | None:
        await self.release(conn, uuid.UUID(job.key), job.now)
        return None

    # --- 4. fallback --------------------------------------------------------------------------------

    async def _arm_fallback(self, conn: db.Connection, message: store.MessageRow, now: dt.datetime) -> None:
        order = message.channel_order
        if "messenger" in order and "sms" in order[order.index("messenger") + 1 :]:
            due = now + self.settings.fallback_after
            await scheduler.schedule(conn, FALLBACK_JOB, str(message.id), due)
            await store.add_timeline(conn, message.id, now, f"SMS fallback unless delivered by {_fmt(due)}")

    async def fallback_job(self, conn: db.Connection, job: Job) -> dt.datetime | None:
        """No receipt within N minutes of a messenger send: SMS, if still timely and allowed."""
        now = job.now
        message = await store.get_message(conn, uuid.UUID(job.key), lock=True)
        if message is None or message.state in FINAL_STATES:
            return None
        attempts = await store.attempts_of(conn, message.id)
        if any(a.state == "delivered" for a in attempts) or any(a.kind == "sms" for a in attempts):
            return None
        recipient = await store.lock_recipient(conn, message.recipient_id)
        assert recipient is not None
        timing = decide_timing(
            now=now,
            ready_at=now,
            quiet=self.quiet_hours(recipient),
            urgent=message.urgent,
            legally_required=message.legally_required,
            deadline=message.deadline,
            expires_at=message.expires_at,
        )
        if timing.at is None:
            await store.add_timeline(conn, message.id, now, "no fallback", detail=timing.rule)
            return None
        if timing.at > now:
            await store.add_timeline(
                conn, message.id, now, f"fallback deferred until {_fmt(timing.at)}", detail=timing.rule
            )
            return timing.at
        reasons: list[str] = []
        choice = await self._choose(conn, message, recipient, ["sms"], now=now, reasons=reasons)
        if choice is None:
            await store.add_timeline(conn, message.id, now, "no fallback", detail="; ".join(reasons))
            return None
        await self._start_attempt(conn, message, choice, now, fallback=True)
        MESSAGES.labels(choice.channel, "fallback").inc()
        return None

    # --- 3. send: recording outcomes ------------------------------------------------------------------

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
                    f"retry at {_fmt(retry_at)}",
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

    async def _after_channel_failed(
        self,
        conn: db.Connection,
        message: store.MessageRow,
        attempt: store.AttemptRow,
        now: dt.datetime,
        reason: str,
    ) -> None:
        order = message.channel_order
        rest = (
            order[order.index("messenger") + 1 :]
            if attempt.kind == "messenger" and "messenger" in order
            else []
        )
        if message.state in ("superseded", "expired", "delivered"):
            return
        if rest:
            await scheduler.cancel(conn, FALLBACK_JOB, str(message.id))
            recipient = await store.lock_recipient(conn, message.recipient_id)
            assert recipient is not None
            reasons: list[str] = []
            choice = await self._choose(conn, message, recipient, rest, now=now, reasons=reasons)
            if choice is not None and await self._start_attempt(conn, message, choice, now, fallback=True):
                MESSAGES.labels(choice.channel, "fallback").inc()
                return
            reason = "; ".join([reason, *reasons])
        await self.give_up(conn, message, now, "failed", reason)

    async def sweep_job(self, conn: db.Connection, job: Job) -> None:
        """In-flight attempts whose lease ran out: outcome unknown, never called again (module docstring)."""
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

    # --- receipts -----------------------------------------------------------------------------------

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

    def binding_token(self, recipient_id: uuid.UUID, channel: str) -> str:
        expires = self.clock.now() + dt.timedelta(hours=self.settings.notify_bind_token_hours)
        return binding.issue_token(self.protector.sign, recipient_id, channel, expires)

    def binding_link(self, recipient_id: uuid.UUID, channel: str) -> str:
        bot = {"telegram": self.settings.notify_telegram_bot, "max": self.settings.notify_max_bot}.get(
            channel, ""
        )
        return binding.deep_link(channel, bot, self.binding_token(recipient_id, channel))

    async def _unbind(
        self, conn: db.Connection, channel: str, chat_id: str, action: str, now: dt.datetime
    ) -> None:
        recipient_id = await store.unbind_chat(conn, channel, chat_id)
        if recipient_id is not None:
            await store.log_binding(conn, recipient_id, channel, chat_id, action=action, at=now)

    async def on_update(self, conn: db.Connection, update: InboundUpdate) -> str:
        """/start <token> → await the contact; a matching contact → bound; stop or blocked → unbound."""
        now = self.clock.now()
        if update.kind == "start":
            try:
                recipient_id = binding.read_token(self.protector.sign, update.token, update.channel, now)
            except binding.BadToken as exc:
                await store.log_binding(
                    conn, None, update.channel, update.chat_id, action=f"bad_token: {exc}", at=now
                )
                return "bad_token"
            if await store.get_recipient(conn, recipient_id) is None:
                return "bad_token"
            await store.start_bind(conn, update.channel, update.chat_id, recipient_id, now)
            await store.log_binding(
                conn, recipient_id, update.channel, update.chat_id, action="started", at=now
            )
            return "awaiting_contact"
        if update.kind == "contact":
            pending = await store.take_pending_bind(
                conn, update.channel, update.chat_id, now - BIND_CONTACT_WITHIN
            )
            if pending is None:
                return "no_pending_bind"
            recipient_id = pending
            expected = await store.phone_hash_of(conn, recipient_id)
            try:
                shared = phonenumbers.format_number(
                    phonenumbers.parse(update.phone), phonenumbers.PhoneNumberFormat.E164
                )
            except phonenumbers.NumberParseException:
                shared = ""
            if not shared or expected != self.phone_hash(shared):
                await store.log_binding(
                    conn, recipient_id, update.channel, update.chat_id, action="contact_mismatch", at=now
                )
                return "contact_mismatch"
            await store.bind(conn, recipient_id, update.channel, update.chat_id, now)
            await store.log_binding(
                conn, recipient_id, update.channel, update.chat_id, action="bound", at=now
            )
            return "bound"
        if update.kind in ("stop", "blocked"):
            await self._unbind(conn, update.channel, update.chat_id, f"unbound_{update.kind}", now)
            return "unbound"
        return "ignored"


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
        """Claim due attempts, call their providers concurrently, record each outcome; return how many."""
        notifier = self.notifier
        now = notifier.clock.now()
        token = uuid.uuid4()
        lease_until = now + dt.timedelta(seconds=notifier.settings.notify_send_lease_s)
        work: list[tuple[store.AttemptRow, store.MessageRow, str]] = []
        async with db.transaction(self.pool) as conn:
            claimed = await store.claim_ready(
                conn, now=now, lease_until=lease_until, token=token, limit=self.batch
            )
            for attempt in claimed:
                message = await store.get_message(conn, attempt.message_id, lock=True)
                assert message is not None
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
                    recipient = await store.get_recipient(conn, message.recipient_id)
                    assert recipient is not None
                    address = notifier.phone_of(recipient)
                work.append((attempt, message, address))
        await asyncio.gather(
            *(self._call(attempt, message, address, token) for attempt, message, address in work)
        )
        return len(claimed)

    async def _call(
        self, attempt: store.AttemptRow, message: store.MessageRow, address: str, token: uuid.UUID
    ) -> None:
        notifier = self.notifier
        channel = notifier.registry.by_name.get(attempt.channel)
        outbound = OutboundMessage(
            # The attempt id: the same on every retry of this call, so a provider that dedupes by it
            # never delivers twice; a fallback on another channel is another attempt.
            message_id=attempt.id,
            address=address,
            text=message.body,
            template_id=message.template_id,
        )
        result: SendResult | None = None
        error = ChannelError("no outcome", transient=True)
        try:
            if channel is None:
                raise ChannelError(f"channel {attempt.channel} is not configured", transient=False)
            if attempt.edit_of:
                result = await channel.edit(attempt.edit_of, outbound)
            else:
                result = await channel.send(outbound)
        except ChannelError as exc:
            error = exc
        except Exception as exc:
            # An adapter that broke its contract (garbage answer, bug): retried a bounded number of times.
            error = TransientChannelError(f"{type(exc).__name__}: {exc}")
        # The window: the provider has (or may have) the message; nothing is committed yet. A crash here
        # leaves the attempt in flight until the sweeper calls it unknown (see the module docstring).
        failpoint("notifier.send.after_provider")
        now = notifier.clock.now()
        try:
            async with db.transaction(self.pool) as conn:
                if result is not None:
                    await notifier.record_sent(conn, attempt, token, result, now)
                    outcome = "sent"
                else:
                    outcome = await notifier.record_failure(conn, attempt, token, error, now)
        except Exception:
            log.exception(
                "could not record a send outcome; the lease decides", extra={"attempt": str(attempt.id)}
            )
            return
        MESSAGES.labels(attempt.channel, outcome).inc()
