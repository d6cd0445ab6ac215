"""The attempt tracker: call events move an attempt and its request on; lost calls are found and closed.

Every call event is applied in one transaction with its outbox event, and only where the attempt's state
machine (domain/attempt.py) allows it, so duplicated or late events are no-ops.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import Protocol

import msgspec
from prometheus_client import Counter

from services.callback.domain.attempt import (
    LIVE_STATES,
    AttemptState,
    Outcome,
    agent_status_after,
    can_move,
    final_outcome,
    plan_after_failed_attempt,
)
from services.callback.domain.lifecycle import CallbackState
from services.callback.domain.retry import RetrySpacing
from services.callback.store import agents as agent_store
from services.callback.store import attempts as attempt_store
from services.callback.store import callbacks as callback_store
from services.callback.telephony import CallEvent, CallEventKind, TelephonyAdapter
from services.callback.usecases.common import PHONE_CONTEXT, Clock, advance_callback, utc_now
from services.callback.usecases.sites import SiteDirectory, callee_window, site_calendar
from services.common import db, outbox
from services.common.consumers import is_transient
from services.common.crypto import DataProtector
from services.common.events import (
    CallbackCallProgress,
    CallbackCompleted,
    CallbackConnected,
    CallbackExpired,
    CallbackFailed,
    CallbackScheduled,
)

log = logging.getLogger(__name__)

OUTCOMES = Counter("abonent_callback_attempt_outcomes_total", "Dial attempt outcomes", ["outcome"])

PROGRESS_STEPS: dict[CallEventKind, AttemptState] = {
    CallEventKind.AGENT_RINGING: AttemptState.AGENT_RINGING,
    CallEventKind.AGENT_ANSWERED: AttemptState.AGENT_ANSWERED,
    CallEventKind.VISITOR_RINGING: AttemptState.VISITOR_RINGING,
    CallEventKind.VISITOR_ANSWERED: AttemptState.VISITOR_ANSWERED,
}
FAILURE_OUTCOMES: dict[CallEventKind, Outcome] = {
    CallEventKind.AGENT_NO_ANSWER: "agent_no_answer",
    CallEventKind.VISITOR_BUSY: "busy",
    CallEventKind.VISITOR_NO_ANSWER: "visitor_no_answer",
    CallEventKind.VOICEMAIL: "voicemail",
    CallEventKind.FAILED: "failed",
}


async def reschedule(
    conn: db.Connection,
    row: callback_store.CallbackRow,
    due_at: dt.datetime | None,
    reason: str,
    *,
    now: dt.datetime,
    last_by: dt.datetime | None = None,
) -> None:
    """Give a request its next due time in the caller's transaction; with none (no callable time in the
    next two weeks) it expires rather than being held forever."""
    if due_at is None:
        await advance_callback(
            conn,
            row,
            CallbackState.EXPIRED,
            CallbackExpired(callback_id=row.id, site_key=row.site_key, state="expired"),
            ended_at=now,
        )
        return
    event = CallbackScheduled(
        callback_id=row.id,
        site_key=row.site_key,
        state="scheduled",
        due_at=due_at,
        promised_earliest=row.promised_earliest,
        promised_latest=row.promised_latest,
        reason=reason,
        last_attempt_by=last_by,
    )
    # From scheduled (due but not callable now) this is a re-time; otherwise a transition.
    await advance_callback(conn, row, CallbackState.SCHEDULED, event, due_at=due_at)


class CallEventSink(Protocol):
    """Where the adapter's events go when they are carried durably (call_events.py): every replica's
    events reach the one consumer that applies them, in whichever replica it runs."""

    async def send(self, adapter: str, event: CallEvent) -> None: ...


# States an attempt may move to 'placed' from (one statement applies the state machine's rule).
_PLACEABLE_FROM = [state.value for state in AttemptState if can_move(state.value, AttemptState.PLACED)]
# Applying an event directly (no sink) retries outages this long at most between tries.
_DIRECT_RETRY_MAX_S = 2.0
# ... and gives up on an event that keeps failing for another reason (a bug) after this many tries.
_DIRECT_BUG_TRIES = 5


class AttemptTracker:
    """Applies the adapter's call events and closes attempts; `agent_freed` is told when an agent may be
    free again (the dispatcher wakes up).

    With a `sink` the adapter's events are handed to it (JetStream, applied by the call-event consumer
    through `apply_call_event`); without one (tests of the dialer alone) they are applied here, retried for
    as long as PostgreSQL is away, never dropped.
    """

    def __init__(
        self,
        pool: db.Pool,
        protector: DataProtector,
        sites: SiteDirectory,
        adapter: TelephonyAdapter,
        *,
        clock: Clock = utc_now,
        agent_freed: Callable[[], None] = lambda: None,
        sink: CallEventSink | None = None,
    ) -> None:
        self.pool = pool
        self.protector = protector
        self.sites = sites
        self.adapter = adapter
        self.clock = clock
        self.agent_freed = agent_freed
        self.sink = sink

    async def run(self) -> None:
        """Hand the adapter's call events on as they come, in order, until its stream ends."""
        async for event in self.adapter.events():
            if self.sink is not None:
                await self.sink.send(self.adapter.name, event)
            else:
                await self._apply_directly(event)

    async def _apply_directly(self, event: CallEvent) -> None:
        """Apply one event in its own transaction, retrying outages until PostgreSQL is back; the events
        after it wait, so one attempt's events stay in order."""
        delay, bugs = 0.1, 0
        while True:
            try:
                await self.apply_in_transaction(event)
                return
            except Exception as exc:
                if not is_transient(exc):
                    bugs += 1
                    if bugs >= _DIRECT_BUG_TRIES:
                        log.exception(
                            "call event not applied after %d tries", bugs, extra={"attempt": event.attempt_id}
                        )
                        return
                log.warning(
                    "call event not applied yet, retrying: %r", exc, extra={"attempt": event.attempt_id}
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _DIRECT_RETRY_MAX_S)

    async def apply_in_transaction(self, event: CallEvent) -> None:
        async with db.transaction(self.pool) as conn:
            freed = await self.apply_call_event(conn, event)
        if freed:
            self.agent_freed()

    # --- call events --------------------------------------------------------------------------------------

    async def apply_call_event(self, conn: db.Connection, event: CallEvent) -> bool:
        """Apply one call event in the caller's transaction; True when it ended the attempt (an agent may
        be free). Order-independent: a duplicate or an event overtaken by a later one is a no-op, and
        ENDED carries its bridge, so an ENDED applied before its BRIDGED still completes a conversation."""
        attempt_id = uuid.UUID(event.attempt_id)
        # Any event of the call proves the provider took the order: recorded here too, because a fast
        # provider's events commit before the dialer's 'placed' mark (and a dialer that dies after the
        # originate never writes that mark at all).
        await attempt_store.record_placement(conn, attempt_id, event.at, event.provider_call_id)
        if event.kind in PROGRESS_STEPS:
            await self._progress(conn, attempt_id, PROGRESS_STEPS[event.kind])
            return False
        if event.kind is CallEventKind.BRIDGED:
            await self._connected(conn, attempt_id, event.at)
            return False
        if event.kind is CallEventKind.ENDED:
            if event.bridged_at is not None:
                await self._connected(conn, attempt_id, event.bridged_at)
            return await self._finish(conn, attempt_id, "connected", event.at)
        if event.kind in FAILURE_OUTCOMES:
            declined = event.kind is CallEventKind.VISITOR_BUSY and "declin" in event.detail.lower()
            outcome = "declined" if declined else FAILURE_OUTCOMES[event.kind]
            return await self._finish(conn, attempt_id, outcome, event.at)
        return False

    async def mark_placed(self, attempt_id: uuid.UUID, provider_call_id: str) -> None:
        """The provider took the order. A fast provider's events can overtake this: the attempt may already
        be ringing or even over; when and under which provider id it was placed is recorded either way."""
        async with self.pool.acquire() as conn:
            await attempt_store.mark_placed(conn, attempt_id, self.clock(), provider_call_id, _PLACEABLE_FROM)

    async def _progress(self, conn: db.Connection, attempt_id: uuid.UUID, step: AttemptState) -> None:
        attempt = await attempt_store.get_attempt(conn, attempt_id, for_update=True)
        if attempt is None or not can_move(attempt.state, step):
            return
        await attempt_store.update_attempt(conn, attempt_id, state=step)
        row = await callback_store.get_callback(conn, attempt.callback_id)
        assert row is not None
        await outbox.append(
            conn,
            CallbackCallProgress(
                callback_id=row.id,
                site_key=row.site_key,
                state="dialing",
                attempt=attempt.attempt_no,
                step=step.value,
                agent_id=str(attempt.agent_id or ""),
            ),
        )

    async def _connected(self, conn: db.Connection, attempt_id: uuid.UUID, at: dt.datetime) -> None:
        attempt = await attempt_store.get_attempt(conn, attempt_id, for_update=True)
        if attempt is None or not can_move(attempt.state, AttemptState.CONNECTED):
            return
        row = await callback_store.get_callback(conn, attempt.callback_id, for_update=True)
        assert row is not None
        await attempt_store.update_attempt(conn, attempt_id, state=AttemptState.CONNECTED, connected_at=at)
        if row.status != CallbackState.DIALING:
            return  # cancelled meanwhile: the call goes on, the request stays as the visitor left it
        await advance_callback(
            conn,
            row,
            CallbackState.CONNECTED,
            CallbackConnected(
                callback_id=row.id,
                site_key=row.site_key,
                state="connected",
                attempt=attempt.attempt_no,
                agent_id=str(attempt.agent_id or ""),
            ),
            connected_at=at,
        )

    async def finish_attempt(self, attempt_id: uuid.UUID, outcome: Outcome) -> None:
        """Close the attempt, free the agent, and complete, retry or fail the request."""
        async with db.transaction(self.pool) as conn:
            await self._finish(conn, attempt_id, outcome, self.clock())

    async def _finish(
        self, conn: db.Connection, attempt_id: uuid.UUID, outcome: Outcome, now: dt.datetime
    ) -> bool:
        """finish_attempt in the caller's transaction; False when the attempt had already ended."""
        attempt = await attempt_store.get_attempt(conn, attempt_id, for_update=True)
        if attempt is None or not can_move(attempt.state, AttemptState.ENDED):
            return False
        outcome = final_outcome(outcome, attempt.state)
        OUTCOMES.labels(outcome).inc()
        await attempt_store.update_attempt(
            conn, attempt_id, state=AttemptState.ENDED, outcome=outcome, ended_at=now, placing_until=None
        )
        await agent_store.release_agent(conn, attempt_id, agent_status_after(outcome))
        row = await callback_store.get_callback(conn, attempt.callback_id, for_update=True)
        assert row is not None
        if row.status not in (CallbackState.DIALING, CallbackState.CONNECTED):
            return True  # cancelled or finished meanwhile
        if outcome == "connected":
            talk = max((now - (attempt.connected_at or now)).total_seconds(), 0.0)
            await advance_callback(
                conn,
                row,
                CallbackState.COMPLETED,
                CallbackCompleted(
                    callback_id=row.id, site_key=row.site_key, state="completed", talk_seconds=talk
                ),
                outcome=outcome,
                ended_at=now,
            )
            return True
        await self._after_failed_attempt(conn, row, outcome, now)
        return True

    async def _after_failed_attempt(
        self, conn: db.Connection, row: callback_store.CallbackRow, outcome: Outcome, now: dt.datetime
    ) -> None:
        site = await self.sites.require(row.site_key, conn)
        policy = site.settings.retry_policy
        spacing = RetrySpacing(
            max_attempts=policy.max_attempts,
            busy_retry_s=policy.busy_retry_s,
            no_answer_retry_s=policy.no_answer_retry_s,
            failed_retry_s=policy.failed_retry_s,
        )
        calendar = site_calendar(site.settings)
        callee = callee_window(site.settings, row.visitor_tz, row.not_before)
        plan = plan_after_failed_attempt(
            outcome, row.attempts, spacing, now=now, site=calendar, callee=callee
        )
        if plan.next_at is None:
            phone = self.protector.decrypt(row.phone_enc, PHONE_CONTEXT, row.id)
            await advance_callback(
                conn,
                row,
                CallbackState.FAILED,
                CallbackFailed(
                    callback_id=row.id,
                    site_key=row.site_key,
                    state="failed",
                    phone=phone,
                    lang=row.lang,
                    outcome=outcome,
                    attempts=plan.attempts,
                ),
                outcome=outcome,
                ended_at=now,
                attempts=plan.attempts,
            )
            return
        await callback_store.update_callback(conn, row.id, outcome=outcome, attempts=plan.attempts)
        row = msgspec.structs.replace(row, attempts=plan.attempts)
        await callback_store.update_callback(conn, row.id, last_attempt_by=plan.last_attempt_by)
        await reschedule(
            conn, row, plan.next_at, f"retry_after_{outcome}", now=self.clock(), last_by=plan.last_attempt_by
        )

    # --- lost calls: re-sync, maximum talk time, forced hang-up -------------------------------------------

    async def resync(self) -> int:
        """Close attempts a previous process left open whose call the provider no longer has.

        Adapters that cannot tell (None) leave theirs to the maximum talk time. Returns attempts closed.
        """
        async with self.pool.acquire() as conn:
            attempts = await attempt_store.open_attempts(conn, [state.value for state in LIVE_STATES])
        closed = 0
        for attempt in attempts:
            if attempt.adapter != self.adapter.name:
                continue  # placed through another provider: this adapter cannot tell
            if await self.adapter.call_exists(attempt.id.hex) is False:
                log.warning("closing an attempt whose call is gone", extra={"attempt": attempt.id.hex})
                # 'connected' completes a bridged call; finish_attempt turns an unbridged one into 'failed'.
                await self.finish_attempt(attempt.id, "connected")
                closed += 1
        if closed:
            self.agent_freed()
        return closed

    async def sweep_overdue(self) -> int:
        """Close 'connected' attempts past their site's maximum talk time; returns how many."""
        async with self.pool.acquire() as conn:
            overdue = await attempt_store.calls_past_max_talk(conn, self.clock())
        for attempt_id in overdue:
            log.warning("closing a call past the maximum talk time", extra={"attempt": attempt_id.hex})
            await self.force_end(attempt_id)
        if overdue:
            self.agent_freed()
        return len(overdue)

    async def force_end(self, attempt_id: uuid.UUID) -> None:
        """Hang up at the provider if it can, and close the attempt here regardless, freeing its agent."""
        try:
            await self.adapter.hangup(attempt_id.hex)
        except Exception:
            log.exception("hang-up at the provider failed", extra={"attempt": attempt_id.hex})
        await self.finish_attempt(attempt_id, "connected")

    async def end_call(self, attempt_id: uuid.UUID) -> None:
        """The agent hangs up, from any replica. A bridged call is closed here at once (its terminal event,
        wherever it is applied, is then a no-op); an unbridged call this process follows ends through its
        terminal event (applied in order after any bridge still on its way); any other is closed here, so
        the agent is always freed."""
        known = await self.adapter.call_exists(attempt_id.hex)
        await self.adapter.hangup(attempt_id.hex)
        async with self.pool.acquire() as conn:
            attempt = await attempt_store.get_attempt(conn, attempt_id)
        if not known or (attempt is not None and attempt.state == AttemptState.CONNECTED):
            await self.finish_attempt(attempt_id, "connected")
        self.agent_freed()
