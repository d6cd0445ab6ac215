"""Planning: an event becomes messages; release, supersede and fallback decide their channel."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from services.common import db, outbox, scheduler
from services.common.consumers import PoisonMessage, TransientError
from services.common.events import CallbackEvent, CallbackRequested, Event, NotifyFailed, VerificationEvent
from services.common.logging import event_id_var
from services.common.scheduler import Job
from services.notifier import store
from services.notifier.domain.timing import Timing, decide_timing, local_day_bounds, within_sms_budget
from services.notifier.engine.core import (
    CONTACT_WAIT,
    FALLBACK_JOB,
    FINAL_STATES,
    MESSAGES,
    RELEASE_JOB,
    Choice,
    NotifierCore,
    fmt_utc,
    log,
    short_link,
)
from services.notifier.routing import Route, template_context


@dataclass(frozen=True, slots=True)
class Audience:
    """Whom an event's message goes to, and what planning already knows about it."""

    recipient: store.RecipientRow
    tenant: str
    thread_key: str
    extra: dict[str, Any]
    # The recipient row is locked by this transaction (upserted here): no locking re-read for release.
    locked: bool
    # The thread has no messages yet (its contact is new in this transaction): no thread read.
    new_thread: bool = False


@dataclass(frozen=True, slots=True)
class Planned:
    """A message prepared for insert: the event and route it comes from, its recipient, its time."""

    event: Event
    route: Route
    audience: Audience
    timing: Timing
    # Every column of the messages row (store.insert_message / insert_messages).
    row: dict[str, Any]


class Planning(NotifierCore):
    """Steps 1, 2 and 4 of the engine's package docstring: plan, release, fall back."""

    # --- 1. plan ------------------------------------------------------------------------------------

    async def on_event(self, conn: db.Connection, event: Event) -> None:
        """The consumer handler (inside its inbox transaction): plan every message this event asks for."""
        now = self.clock.now()
        async with self.timeline_batch(conn):
            for route in self.router.routes_for(event):
                await self._plan(conn, event, route, now)

    async def on_events(self, conn: db.Connection, events: Sequence[Event]) -> None:
        """The consumer's batch handler: `on_event` for each, in order, with the timeline entries of all of
        them written in one statement. Any error fails the batch (the consumer then goes one by one)."""
        async with self.timeline_batch(conn):
            for event in await self._plan_new_callbacks(conn, events):
                token = event_id_var.set(str(event.event_id))
                try:
                    await self.on_event(conn, event)
                finally:
                    event_id_var.reset(token)

    async def _plan_new_callbacks(self, conn: db.Connection, events: Sequence[Event]) -> list[Event]:
        """Plan the batch's new callbacks set-based; return the events left for `on_event`, in order.

        Taken: callback.requested events alone in the batch with their callback and their phone, whose
        contact is new (so their thread is too). For those, every statement of `_plan` and `release`
        is one statement for all of them: recipients, contacts, messages, the recipients' opt-outs,
        bindings and SMS today, the attempts (with the messages' move to 'sending'), the timeline. A
        message whose plan is not "send now" (opted out, deferred, expired, no channel) continues one
        by one in `_after_insert`, after the set-based attempts are written (it then sees them).
        """
        now = self.clock.now()
        callbacks = Counter(e.callback_id for e in events if isinstance(e, CallbackEvent))
        taken: dict[uuid.UUID, tuple[CallbackRequested, store.NewRecipient]] = {}
        phones: set[bytes] = set()
        for event in events:
            if not isinstance(event, CallbackRequested) or callbacks[event.callback_id] != 1:
                continue
            try:
                new = self.recipient_values(event.phone, event.lang, event.visitor_tz)
            except PoisonMessage:
                continue  # on_event rejects it, alone
            if new.phone_hash not in phones and self.router.routes_for(event):
                phones.add(new.phone_hash)
                taken[event.event_id] = (event, new)
        if len(taken) < 2:
            return list(events)
        recipients = await store.upsert_recipients(conn, [new for _, new in taken.values()])
        by_event = {event_id: recipients[new.phone_hash] for event_id, (_, new) in taken.items()}
        saved = await store.save_callback_contacts(
            conn,
            [
                (event.callback_id, by_event[event.event_id].id, event.site_key, event.lang, event.page_url)
                for event, _ in taken.values()
            ],
        )
        planned = [
            self._prepare(
                event,
                route,
                Audience(
                    by_event[event.event_id],
                    event.site_key,
                    f"callback:{event.callback_id}",
                    {"rebook_url": short_link(event.page_url)},
                    locked=True,
                    new_thread=True,
                ),
                now,
            )
            for event, _ in taken.values()
            if event.callback_id in saved
            for route in self.router.routes_for(event)
        ]
        done = {p.event.event_id for p in planned}
        left = [event for event in events if event.event_id not in done]
        inserted = await store.insert_messages(conn, [p.row for p in planned])
        fresh = [(p, inserted[p.row["id"]]) for p in planned if p.row["id"] in inserted]
        for _ in range(len(planned) - len(fresh)):
            MESSAGES.labels("", "duplicate").inc()
        if not fresh:
            return left
        all_facts = await store.recipients_facts(
            conn,
            [
                (m.recipient_id, m.category, *local_day_bounds(now, self.display_tz(p.audience.recipient)))
                for p, m in fresh
            ],
        )
        attempts: list[store.NewAttempt] = []
        one_by_one: list[tuple[Planned, store.MessageRow]] = []
        sms_planned: Counter[uuid.UUID] = Counter()
        for (p, message), facts in zip(fresh, all_facts, strict=True):
            recipient, timing = p.audience.recipient, p.timing
            due_now = timing.at is not None and timing.at <= now
            live = message.expires_at is None or now < message.expires_at
            if (facts.opted_out and not message.legally_required) or not due_now or not live:
                one_by_one.append((p, message))
                continue
            zone_note = f"zone {recipient.tz} (rule: {recipient.tz_rule})"
            await self.note(conn, message.id, now, "queued", detail=f"{message.purpose}; {zone_note}")
            if timing.rule == "deadline_override":
                await self.note(
                    conn,
                    message.id,
                    now,
                    "quiet hours overridden",
                    detail="legally required before its deadline",
                )
            # As `release` would: this batch's own SMS to the same person count towards the budget too.
            counted = msgspec.structs.replace(
                facts, non_critical_sms=facts.non_critical_sms + sms_planned[recipient.id]
            )
            reasons: list[str] = []
            choice = await self._choose(
                conn, message, recipient, message.channel_order, now=now, reasons=reasons, facts=counted
            )
            if choice is None:
                await self.give_up(conn, message, now, "failed", "; ".join(reasons) or "no channel")
                continue
            if choice.kind == "sms" and not message.critical:
                sms_planned[recipient.id] += 1
            attempts.append(
                store.NewAttempt(
                    message_id=message.id,
                    channel=choice.channel,
                    kind=choice.kind,
                    address=choice.address,
                    not_before=now,
                )
            )
            await self.note(conn, message.id, now, "sending via " + choice.channel, channel=choice.channel)
        await store.start_attempts(conn, attempts)
        for p, message in one_by_one:
            await self._after_insert(conn, p, message, now)
        return left

    async def _audience(
        self, conn: db.Connection, event: Event, route: Route, now: dt.datetime
    ) -> Audience | None:
        """Whom the event's message goes to, or None to drop the event."""
        if route.audience == "subscriber":
            assert isinstance(event, VerificationEvent)
            # Routing checked that this event type carries an msisdn (audience 'subscriber').
            msisdn: str = getattr(event, "msisdn")  # noqa: B009
            lang: str = getattr(event, "lang", "ru")
            recipient = await self.recipient(conn, msisdn, lang, getattr(event, "tz", ""))
            return Audience(recipient, "verification", f"verification:{event.case_id}", {}, locked=True)
        assert isinstance(event, CallbackEvent)
        if isinstance(event, CallbackRequested):
            recipient = await self.recipient(conn, event.phone, event.lang, event.visitor_tz)
            saved = await store.save_callback_contact(
                conn,
                event.callback_id,
                recipient.id,
                site_key=event.site_key,
                lang=event.lang,
                page_url=event.page_url,
            )
            if saved:  # the contact is this event's own: no need to read it back
                thread = f"callback:{event.callback_id}"
                # Every message of a callback's thread is planned after its contact is saved, so a
                # contact new in this transaction means a thread without messages: nothing to read.
                return Audience(
                    recipient,
                    event.site_key,
                    thread,
                    {"rebook_url": short_link(event.page_url)},
                    locked=True,
                    new_thread=True,
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
            page_url, locked = "", True
        else:
            found = await store.get_recipient(conn, contact["recipient_id"])
            assert found is not None  # callback_contacts references recipients
            recipient, page_url, locked = found, contact["page_url"], False
        return Audience(
            recipient,
            event.site_key,
            f"callback:{event.callback_id}",
            {"rebook_url": short_link(page_url)},
            locked=locked,
        )

    async def _plan(self, conn: db.Connection, event: Event, route: Route, now: dt.datetime) -> None:
        audience = await self._audience(conn, event, route, now)
        if audience is None:
            return
        planned = self._prepare(event, route, audience, now)
        message = await store.insert_message(conn, **planned.row)
        if message is None:
            MESSAGES.labels("", "duplicate").inc()
            return
        await self._after_insert(conn, planned, message, now)

    def _prepare(self, event: Event, route: Route, audience: Audience, now: dt.datetime) -> Planned:
        """The message row to insert (rendered, its time decided): no I/O."""
        recipient = audience.recipient
        rendered = self.router.render(
            route.template,
            recipient.lang if route.audience == "subscriber" else getattr(event, "lang", recipient.lang),
            template_context(event, self.display_tz(recipient), audience.extra),
        )
        deadline = route.deadline_of(event)
        expires_at = route.expires_at(event)
        # Decided before the insert (it needs only the recipient and the route), so the row is written
        # once with its time instead of inserted and then updated.
        timing = decide_timing(
            now=now,
            ready_at=now,
            quiet=self.quiet_hours(recipient),
            urgent=route.urgent,
            legally_required=route.legally_required,
            deadline=deadline,
            expires_at=expires_at,
        )
        row = {
            "id": uuid.uuid4(),
            "event_id": event.event_id,
            "event_type": str(type(event).__struct_config__.tag),
            "occurred_at": event.occurred_at,
            "recipient_id": recipient.id,
            "tenant": audience.tenant,
            "purpose": route.purpose,
            "category": route.category,
            "thread_key": audience.thread_key,
            "template": rendered.template,
            "template_version": rendered.version,
            "template_id": rendered.template_id,
            "lang": rendered.lang,
            "body": rendered.text,
            "urgent": route.urgent,
            "legally_required": route.legally_required,
            "edit_in_place": route.edit_in_place,
            "channel_order": list(route.channels),
            "state": "queued",
            "send_at": timing.at or now,
            "expires_at": expires_at,
            "deadline": deadline,
            "timing_rule": timing.rule if timing.at is not None else "now",
        }
        return Planned(event, route, audience, timing, row)

    async def _after_insert(
        self, conn: db.Connection, planned: Planned, message: store.MessageRow, now: dt.datetime
    ) -> None:
        """The rest of planning a message just inserted: supersede, opt-out, then release or defer."""
        event, route, audience, timing = planned.event, planned.route, planned.audience, planned.timing
        recipient, thread_key, message_id = audience.recipient, audience.thread_key, message.id
        zone_note = f"zone {recipient.tz} (rule: {recipient.tz_rule})"
        await self.note(conn, message_id, now, "queued", detail=f"{route.purpose}; {zone_note}")
        thread = [] if audience.new_thread else await store.thread_of(conn, thread_key, message_id)
        newest = max((r["occurred_at"] for r in thread if r["state"] != "superseded"), default=None)
        if newest is not None and newest > event.occurred_at:
            # Delivery is unordered: an older state that arrives late must not replace a newer one.
            await store.set_message_state(conn, message_id, "superseded")
            await self.note(conn, message_id, now, "superseded", detail="a later state is already known")
            MESSAGES.labels("", "superseded").inc()
            return
        await self._supersede_older(
            conn,
            thread_key,
            message_id,
            occurred_at=event.occurred_at,
            purpose=route.purpose,
            now=now,
            thread=thread,
        )
        # After supersede (it may cancel a ready SMS that the budget counted), in one round trip.
        facts = await store.recipient_facts(
            conn, recipient.id, route.category, *local_day_bounds(now, self.display_tz(recipient))
        )
        if not route.legally_required and facts.opted_out:
            await store.set_message_state(conn, message_id, "skipped")
            await self.note(conn, message_id, now, "skipped", detail=f"opted out of {route.category}")
            MESSAGES.labels("", "skipped").inc()
            return
        if timing.at is None:
            await self.give_up(conn, message, now, "expired", timing.rule)
            return
        if timing.at <= now:
            if timing.rule == "deadline_override":
                await self.note(
                    conn,
                    message_id,
                    now,
                    "quiet hours overridden",
                    detail="legally required before its deadline",
                )
            # Inserted by this very transaction: nobody else can see the row, so no locked re-read.
            await self.release(
                conn,
                message_id,
                now,
                inserted=message,
                recipient=recipient if audience.locked else None,
                facts=facts,
            )
            return
        await store.set_message_state(conn, message_id, "deferred")
        await self.note(
            conn,
            message_id,
            now,
            f"deferred until {fmt_utc(timing.at)}",
            detail=f"{timing.rule}; {zone_note}",
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
        thread: Sequence[Any],
    ) -> None:
        """`thread`: the thread's other messages as read in this transaction (store.thread_of)."""
        older = [r["id"] for r in thread if r["occurred_at"] <= occurred_at]
        if not older:
            return
        # States only move on from pending (a thread's new messages come through this consumer's lane),
        # so none pending in the read means none to supersede now.
        if any(r["state"] in store.PENDING_STATES for r in thread if r["occurred_at"] <= occurred_at):
            for old in await store.supersede_older(conn, thread_key, newer, occurred_at):
                await scheduler.cancel(conn, RELEASE_JOB, str(old))
                await self.note(conn, old, now, "superseded", detail=f"by {purpose}")
                MESSAGES.labels("", "superseded").inc()
        await store.cancel_ready_attempts(conn, older)
        for old in older:
            if await scheduler.cancel(conn, FALLBACK_JOB, str(old)):
                await self.note(conn, old, now, "fallback cancelled", detail=f"superseded by {purpose}")

    async def give_up(
        self, conn: db.Connection, message: store.MessageRow, now: dt.datetime, state: str, reason: str
    ) -> None:
        await store.set_message_state(conn, message.id, state)
        await self.note(conn, message.id, now, state, detail=reason)
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

    async def release(
        self,
        conn: db.Connection,
        message_id: uuid.UUID,
        now: dt.datetime,
        *,
        inserted: store.MessageRow | None = None,
        recipient: store.RecipientRow | None = None,
        facts: store.RecipientFacts | None = None,
    ) -> None:
        """Turn a due message into a ready attempt on its first usable channel. `inserted`: the row as
        this transaction inserted it (invisible to everyone else, so not read again); `recipient`: its
        recipient as this transaction locked it (upserted); `facts`: the recipient's bindings and SMS
        today as read in this transaction after that lock."""
        message = inserted if inserted is not None else await store.get_message(conn, message_id, lock=True)
        if message is None or message.state not in store.PENDING_STATES:
            return
        if message.expires_at is not None and now >= message.expires_at:
            await self.give_up(conn, message, now, "expired", "past its TTL before it could be sent")
            return
        if recipient is None:
            recipient = await store.lock_recipient(conn, message.recipient_id)
            facts = None  # read before the lock: ask again
        assert recipient is not None
        reasons: list[str] = []
        choice = await self._choose(
            conn, message, recipient, message.channel_order, now=now, reasons=reasons, facts=facts
        )
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
        facts: store.RecipientFacts | None = None,
    ) -> Choice | None:
        """`facts`: the recipient's bindings and SMS today as read under its lock (else read here)."""
        for slot in slots:
            if slot == "messenger":
                bound = facts.bindings if facts is not None else await store.bindings_of(conn, recipient.id)
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
                return Choice(name, "messenger", chat, edit_of)
            if slot == "sms":
                if self.registry.sms is None:
                    reasons.append("no SMS channel")
                    continue
                if recipient.phone_invalid_at is not None:
                    reasons.append("the number was rejected as invalid")
                    continue
                if facts is not None:
                    used = facts.non_critical_sms
                else:
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
                return Choice(self.registry.sms.name, "sms", "")
        return None

    async def _start_attempt(
        self,
        conn: db.Connection,
        message: store.MessageRow,
        choice: Choice,
        now: dt.datetime,
        *,
        fallback: bool,
    ) -> bool:
        # A pending message becomes 'sending' in the attempt's own statement.
        attempt_id = await store.start_attempt(
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
        what = ("fallback to " if fallback else "sending via ") + choice.channel
        detail = f"edit in place of {choice.edit_of}" if choice.edit_of else ""
        await self.note(conn, message.id, now, what, channel=choice.channel, detail=detail)
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
            await self.note(conn, message.id, now, f"SMS fallback unless delivered by {fmt_utc(due)}")

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
            await self.note(conn, message.id, now, "no fallback", detail=timing.rule)
            return None
        if timing.at > now:
            await self.note(
                conn, message.id, now, f"fallback deferred until {fmt_utc(timing.at)}", detail=timing.rule
            )
            return timing.at
        reasons: list[str] = []
        choice = await self._choose(conn, message, recipient, ["sms"], now=now, reasons=reasons)
        if choice is None:
            await self.note(conn, message.id, now, "no fallback", detail="; ".join(reasons))
            return None
        await self._start_attempt(conn, message, choice, now, fallback=True)
        MESSAGES.labels(choice.channel, "fallback").inc()
        return None

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
