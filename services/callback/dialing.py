"""Dispatch and dialing: due requests meet ready agents, calls are placed, call events move requests on.

Safety argument (nothing lost, nothing twice):
- Reservation is one transaction: the due request (locked, SKIP LOCKED), the longest-idle agent (locked,
  SKIP LOCKED), the attempt row and the callback.dialing event commit together. Two dispatchers can never
  take the same request or agent.
- The adapter is called only after that commit, with the attempt id as its idempotency key. A dispatcher
  killed between commit and dial leaves an attempt in 'placing'; the recovery pass re-places it with the
  same id (ARI adopts the existing channel instead of ringing again).
- Every call event is applied in one transaction with its outbox event, and only if the attempt is still
  open, so duplicated or late events are no-ops.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Callable

import msgspec
from prometheus_client import Counter

from services.callback import store
from services.callback.domain.calendar import is_callable_at, next_callable_instant
from services.callback.domain.lifecycle import CallbackState
from services.callback.domain.retry import Outcome, RetrySpacing, decide_retry, last_attempt_by
from services.callback.schemas import SiteSettings
from services.callback.telephony import CallEvent, CallEventKind, CallOrder, TelephonyAdapter, TelephonyError
from services.callback.usecases import (
    PHONE_CONTEXT,
    SiteDirectory,
    advance_callback,
    callee_window,
    site_calendar,
    utc_now,
)
from services.common import db, outbox
from services.common.crypto import DataProtector
from services.common.events import (
    CallbackCallProgress,
    CallbackCompleted,
    CallbackConnected,
    CallbackDialing,
    CallbackExpired,
    CallbackFailed,
    CallbackScheduled,
)
from services.common.failpoints import failpoint

log = logging.getLogger(__name__)

DIALS = Counter("abonent_callback_dials_total", "Dial attempts placed", ["adapter"])
PROVIDER_ERRORS = Counter(
    "abonent_callback_provider_errors_total",
    "Dial orders the telephony provider refused outright (alert on any increase)",
    ["adapter"],
)
OUTCOMES = Counter("abonent_callback_attempt_outcomes_total", "Dial attempt outcomes", ["outcome"])

_PROGRESS_STEPS = {
    CallEventKind.AGENT_RINGING: "agent_ringing",
    CallEventKind.AGENT_ANSWERED: "agent_answered",
    CallEventKind.VISITOR_RINGING: "visitor_ringing",
    CallEventKind.VISITOR_ANSWERED: "visitor_answered",
}
_FAILURE_OUTCOMES: dict[CallEventKind, Outcome] = {
    CallEventKind.AGENT_NO_ANSWER: "agent_no_answer",
    CallEventKind.VISITOR_BUSY: "busy",
    CallEventKind.VISITOR_NO_ANSWER: "visitor_no_answer",
    CallEventKind.VOICEMAIL: "voicemail",
    CallEventKind.FAILED: "failed",
}
# An attempt that never reached 'placed' this long after its commit was orphaned by a crash.
PLACING_GRACE = dt.timedelta(seconds=5)
# Ringing legs end well within this; silence beyond it means the call was lost with its process.
SILENT_ATTEMPT = dt.timedelta(minutes=3)
# Graceful shutdown lets a dispatch pass finish placing its calls for at most this long.
DRAIN_TIMEOUT_S = 20.0
# Attempt states in which a call exists at the provider ('placing' ones are re-placed by recover()).
_LIVE_STATES = ["placed", *_PROGRESS_STEPS.values(), "connected"]


class Dialer:
    """Runs dispatch passes and applies the adapter's call events; one per service replica."""

    def __init__(
        self,
        pool: db.Pool,
        protector: DataProtector,
        sites: SiteDirectory,
        adapter: TelephonyAdapter,
        *,
        clock: Callable[[], dt.datetime] = utc_now,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.pool = pool
        self.protector = protector
        self.sites = sites
        self.adapter = adapter
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.adapter.start()
        try:
            await self.resync()
        except Exception:
            log.exception("re-sync of open calls with the provider failed")
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(), name="dialer:dispatch"),
            asyncio.create_task(self._event_loop(), name="dialer:events"),
        ]

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        await self._drain()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.adapter.aclose()

    def wake(self) -> None:
        """A request became due or an agent became ready: dispatch now rather than at the next tick."""
        self._wake.set()

    async def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.recover()
                await self.sweep_overdue()
                while not self._stop.is_set() and await self.dispatch_once():
                    pass
            except Exception:
                log.exception("dispatch pass failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    async def _event_loop(self) -> None:
        async for event in self.adapter.events():
            try:
                await self.apply_call_event(event)
            except Exception:
                log.exception(
                    "call event not applied", extra={"attempt": event.attempt_id, "kind": event.kind}
                )
            if event.kind in _FAILURE_OUTCOMES or event.kind is CallEventKind.ENDED:
                self.wake()  # an agent is free again

    # --- dispatch ---------------------------------------------------------------------------------------

    async def dispatch_once(self, limit: int = 10) -> int:
        """Reserve agents for up to `limit` due requests (oldest first) and dial them; returns calls placed.

        Each request is reserved in its own transaction: a row that cannot be dispatched (bad data, a
        site that fails to load) is logged and left for a later pass, and never rolls back the others.
        """
        now = self.clock()
        orders: list[CallOrder] = []
        seen: list[uuid.UUID] = []
        for _ in range(limit):
            row_id: uuid.UUID | None = None
            try:
                async with db.transaction(self.pool) as conn:
                    rows = await store.due_callbacks(conn, now, 1, exclude=seen)
                    if not rows:
                        break
                    row_id = rows[0].id
                    seen.append(row_id)
                    order = await self._dispatch_row(conn, rows[0], now)
            except Exception:
                if row_id is None:
                    raise  # not a row's fault (the database is away): the pass fails as a whole
                log.exception(
                    "due request not dispatched; retried on a later pass", extra={"callback": row_id}
                )
                continue
            if order is not None:
                orders.append(order)
        if orders:
            failpoint("dialer.after_reserve")
        for order in orders:
            await self.place(order)
        return len(orders)

    async def _dispatch_row(
        self, conn: db.Connection, row: store.CallbackRow, now: dt.datetime
    ) -> CallOrder | None:
        """Reserve an agent for one due request in the caller's transaction; the order to place, if any."""
        site = await self.sites.require(row.site_key, conn)
        callee = callee_window(site.settings, row.visitor_tz, row.not_before)
        calendar = site_calendar(site.settings)
        if not is_callable_at(now, calendar, callee):
            # Never call outside the visitor's window, even if a retry was planned for "now".
            await self._reschedule(conn, row, next_callable_instant(now, calendar, callee), "outside_window")
            return None
        agent = await store.reserve_agent(conn, row.queue)
        if agent is None:
            return None  # taken by another dispatcher meanwhile; the request waits for the next agent
        attempt_id = uuid.uuid4()
        attempt_no = row.attempts + 1
        await store.insert_attempt(
            conn, attempt_id, row.id, attempt_no, agent.id, adapter=self.adapter.name, now=now
        )
        await store.assign_agent(conn, agent.id, row.id, attempt_id)
        await advance_callback(
            conn,
            row,
            CallbackState.DIALING,
            CallbackDialing(
                callback_id=row.id,
                site_key=row.site_key,
                state="dialing",
                attempt=attempt_no,
                agent_id=str(agent.id),
            ),
            attempts=attempt_no,
            first_dial_at=row.first_dial_at or now,
        )
        return self._order(attempt_id, row, agent, site.settings)

    async def place(self, order: CallOrder) -> None:
        attempt_id = uuid.UUID(order.attempt_id)
        try:
            provider_id = await self.adapter.place_call(order)
        except TelephonyError as exc:
            log.warning("dial refused by provider: %s", exc, extra={"attempt": order.attempt_id})
            if not exc.retryable:
                # Our trunk or account is broken, not the visitor's phone: alert, and do not charge them.
                PROVIDER_ERRORS.labels(self.adapter.name).inc()
            await self.finish_attempt(attempt_id, "failed" if exc.retryable else "provider_error")
            return
        DIALS.labels(self.adapter.name).inc()
        async with db.transaction(self.pool) as conn:
            attempt = await store.get_attempt(conn, attempt_id, for_update=True)
            if attempt is None:
                return
            # A fast provider's events can overtake this commit: the attempt may already be ringing or
            # even over. When and under which provider id it was placed is recorded either way.
            changes: dict[str, object] = {}
            if attempt.placed_at is None:
                changes["placed_at"] = self.clock()
            if attempt.provider_call_id is None:
                changes["provider_call_id"] = provider_id
            if attempt.state == "placing":
                changes["state"] = "placed"
            if changes:
                await store.update_attempt(conn, attempt_id, **changes)

    async def recover(self) -> None:
        """Re-place attempts orphaned between reservation and dial; close attempts whose call was lost."""
        now = self.clock()
        orphaned: list[CallOrder] = []
        lost: list[uuid.UUID] = []
        async with db.transaction(self.pool) as conn:
            for attempt in await store.stale_attempts(conn, now - PLACING_GRACE, now - SILENT_ATTEMPT):
                if attempt.state != "placing":
                    lost.append(attempt.id)
                    continue
                row = await store.get_callback(conn, attempt.callback_id)
                agent = await store.agent_by_id(conn, attempt.agent_id) if attempt.agent_id else None
                if row is not None and agent is not None:
                    site = await self.sites.require(row.site_key, conn)
                    orphaned.append(self._order(attempt.id, row, agent, site.settings))
        for attempt_id in lost:
            await self.finish_attempt(attempt_id, "failed")
        for order in orphaned:
            log.warning("re-placing an orphaned attempt", extra={"attempt": order.attempt_id})
            await self.place(order)

    def _order(
        self, attempt_id: uuid.UUID, row: store.CallbackRow, agent: store.AgentRow, settings: SiteSettings
    ) -> CallOrder:
        return CallOrder(
            attempt_id=attempt_id.hex,
            visitor_phone=self.protector.decrypt(row.phone_enc, PHONE_CONTEXT, row.id),
            agent_endpoint=agent.endpoint,
            caller_id="",
            whisper_text=f"Callback from {settings.name}, page {row.page_url or 'unknown'}",
            order=settings.dial_order,
        )

    # --- lost calls: drain, re-sync, maximum talk time, forced hang-up ------------------------------------

    async def _drain(self) -> None:
        """Stop taking new work but let the running dispatch pass finish placing what it reserved.

        A pass cancelled between reservation and 'placed' leaves attempts for the next process to recover.
        """
        dispatch = [t for t in self._tasks if t.get_name() == "dialer:dispatch" and not t.done()]
        if dispatch:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(dispatch[0]), DRAIN_TIMEOUT_S)

    async def resync(self) -> int:
        """Close attempts a previous process left open whose call the provider no longer has.

        Adapters that cannot tell (None) leave theirs to the maximum talk time. Returns attempts closed.
        """
        async with self.pool.acquire() as conn:
            attempts = await store.open_attempts(conn, _LIVE_STATES)
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
            self.wake()
        return closed

    async def sweep_overdue(self) -> int:
        """Close 'connected' attempts past their site's maximum talk time; returns how many."""
        async with self.pool.acquire() as conn:
            overdue = await store.calls_past_max_talk(conn, self.clock())
        for attempt_id in overdue:
            log.warning("closing a call past the maximum talk time", extra={"attempt": attempt_id.hex})
            await self.force_end(attempt_id)
        if overdue:
            self.wake()
        return len(overdue)

    async def force_end(self, attempt_id: uuid.UUID) -> None:
        """Hang up at the provider if it can, and close the attempt here regardless, freeing its agent."""
        try:
            await self.adapter.hangup(attempt_id.hex)
        except Exception:
            log.exception("hang-up at the provider failed", extra={"attempt": attempt_id.hex})
        await self.finish_attempt(attempt_id, "connected")

    async def end_call(self, attempt_id: uuid.UUID) -> None:
        """The agent hangs up. A call the adapter knows ends through its terminal event (applied in order
        after any bridge still queued); one it does not know is closed here, so the agent is always freed."""
        known = await self.adapter.call_exists(attempt_id.hex)
        await self.adapter.hangup(attempt_id.hex)
        if not known:
            await self.finish_attempt(attempt_id, "connected")
        self.wake()

    # --- call events --------------------------------------------------------------------------------------

    async def apply_call_event(self, event: CallEvent) -> None:
        attempt_id = uuid.UUID(event.attempt_id)
        if event.kind in _PROGRESS_STEPS:
            await self._progress(attempt_id, _PROGRESS_STEPS[event.kind])
        elif event.kind is CallEventKind.BRIDGED:
            await self._connected(attempt_id)
        elif event.kind is CallEventKind.ENDED:
            await self.finish_attempt(attempt_id, "connected")
        elif event.kind in _FAILURE_OUTCOMES:
            declined = event.kind is CallEventKind.VISITOR_BUSY and "declin" in event.detail.lower()
            await self.finish_attempt(attempt_id, "declined" if declined else _FAILURE_OUTCOMES[event.kind])

    async def _progress(self, attempt_id: uuid.UUID, step: str) -> None:
        async with db.transaction(self.pool) as conn:
            attempt = await store.get_attempt(conn, attempt_id, for_update=True)
            if attempt is None or attempt.state in ("connected", "ended"):
                return
            await store.update_attempt(conn, attempt_id, state=step)
            row = await store.get_callback(conn, attempt.callback_id)
            assert row is not None
            await outbox.append(
                conn,
                CallbackCallProgress(
                    callback_id=row.id,
                    site_key=row.site_key,
                    state="dialing",
                    attempt=attempt.attempt_no,
                    step=step,
                    agent_id=str(attempt.agent_id or ""),
                ),
            )

    async def _connected(self, attempt_id: uuid.UUID) -> None:
        now = self.clock()
        async with db.transaction(self.pool) as conn:
            attempt = await store.get_attempt(conn, attempt_id, for_update=True)
            if attempt is None or attempt.state in ("connected", "ended"):
                return
            row = await store.get_callback(conn, attempt.callback_id, for_update=True)
            assert row is not None
            await store.update_attempt(conn, attempt_id, state="connected", connected_at=now)
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
                connected_at=now,
            )

    async def finish_attempt(self, attempt_id: uuid.UUID, outcome: Outcome) -> None:
        """Close the attempt, free the agent, and complete, retry or fail the request."""
        now = self.clock()
        async with db.transaction(self.pool) as conn:
            attempt = await store.get_attempt(conn, attempt_id, for_update=True)
            if attempt is None or attempt.state == "ended":
                return
            if outcome == "connected" and attempt.state != "connected":
                outcome = "failed"  # ended without a bridge: the people never talked
            OUTCOMES.labels(outcome).inc()
            await store.update_attempt(conn, attempt_id, state="ended", outcome=outcome, ended_at=now)
            # An agent who let it ring goes on break instead of being rung again and again.
            await store.release_agent(conn, attempt_id, "break" if outcome == "agent_no_answer" else None)
            row = await store.get_callback(conn, attempt.callback_id, for_update=True)
            assert row is not None
            if row.status not in (CallbackState.DIALING, CallbackState.CONNECTED):
                return  # cancelled or finished meanwhile
            if outcome == "connected":
                talk = (now - (attempt.connected_at or now)).total_seconds()
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
                return
            await self._after_failed_attempt(conn, row, outcome, now)

    async def _after_failed_attempt(
        self, conn: db.Connection, row: store.CallbackRow, outcome: Outcome, now: dt.datetime
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
        attempts = row.attempts
        decision = decide_retry(outcome, attempts, spacing, now=now, site=calendar, callee=callee)
        if not decision.counts_as_attempt:
            attempts -= 1
        if decision.next_at is None:
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
                    attempts=attempts,
                ),
                outcome=outcome,
                ended_at=now,
                attempts=attempts,
            )
            return
        await store.update_callback(conn, row.id, outcome=outcome, attempts=attempts)
        row = msgspec.structs.replace(row, attempts=attempts)
        last = last_attempt_by(decision.next_at, spacing.max_attempts - attempts, spacing, calendar, callee)
        await store.update_callback(conn, row.id, last_attempt_by=last)
        await self._reschedule(conn, row, decision.next_at, f"retry_after_{outcome}", last)

    async def _reschedule(
        self,
        conn: db.Connection,
        row: store.CallbackRow,
        due_at: dt.datetime | None,
        reason: str,
        last_by: dt.datetime | None = None,
    ) -> None:
        if due_at is None:
            # No callable time in the next two weeks: say so rather than hold the request forever.
            await advance_callback(
                conn,
                row,
                CallbackState.EXPIRED,
                CallbackExpired(callback_id=row.id, site_key=row.site_key, state="expired"),
                ended_at=self.clock(),
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
