"""The dispatcher: due requests meet ready agents and their calls are placed; orphaned placements recovered.

Safety argument (nothing lost, nothing twice):
- Reservation is one transaction: the due request (locked, SKIP LOCKED), the longest-idle agent (locked,
  SKIP LOCKED), the attempt row and the callback.dialing event commit together. Two dispatchers can never
  take the same request or agent.
- The attempt is leased while it is placed: its row says "placing until T, by this worker", renewed in
  a short transaction right before the provider call (which carries the attempt id as its idempotency
  key). Orders are placed concurrently (at most PLACE_CONCURRENCY at once), so a slow provider cannot
  hold a batch past its leases.
- An attempt whose lease ran out without its "placed" mark was orphaned. Recovery, in any replica, takes
  only those. If the order was provably never sent (no `ordered_at`: a crash between reservation and
  dial) it is placed now, once. If it may have been sent (a crash between the provider call and the
  mark) it is NEVER placed again: the provider is asked whether the call exists (then it is followed
  like any placed call), otherwise it is closed as `unknown`, which frees the agent and re-times the
  request without charging the visitor. One attempt can therefore ring a phone at most once.
- What happens to the call afterwards is the attempt tracker's (attempts.py).

Latency: a pass starts at the commit that creates work, in every replica: PostgreSQL NOTIFYs
`abonent_dispatch_<schema>` when a request becomes due now or an agent becomes reservable (migration
0016), heard on a dedicated connection; the local wake() covers this replica without the round trip. All
replicas may wake at once: SKIP LOCKED and the placing lease keep it one dial per attempt. Each order is
placed as soon as it is reserved. Recovery and the talk-time sweep are safety nets and run at most once per
poll interval, not on every wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid

from prometheus_client import Counter

from services.callback.attempts import AttemptTracker, CallEventSink, reschedule
from services.callback.domain.calendar import is_callable_at, next_callable_instant
from services.callback.domain.lifecycle import CallbackState
from services.callback.schemas import SiteSettings
from services.callback.store import agents as agent_store
from services.callback.store import attempts as attempt_store
from services.callback.store import callbacks as callback_store
from services.callback.telephony import CallOrder, TelephonyAdapter, TelephonyError
from services.callback.usecases.common import PHONE_CONTEXT, Clock, advance_callback, utc_now
from services.callback.usecases.sites import SiteDirectory, callee_window, site_calendar
from services.common import db
from services.common.crypto import DataProtector
from services.common.events import CallbackDialing
from services.common.failpoints import failpoint
from services.common.wakeup import NotifyWakeup, worker_id

log = logging.getLogger(__name__)

DIALS = Counter("abonent_callback_dials_total", "Dial attempts placed", ["adapter"])
PROVIDER_ERRORS = Counter(
    "abonent_callback_provider_errors_total",
    "Dial orders the telephony provider refused outright (alert on any increase)",
    ["adapter"],
)
# Promise punctuality for alerting: each request's first dial, kept (no later than the promised latest
# time) or late. The per-site figures are at /v1/admin/sites/{key}/punctuality; this is the live signal.
FIRST_DIALS = Counter(
    "abonent_callback_first_dials_total", "Requests dialled for the first time, by promise kept", ["outcome"]
)

# How long a placing attempt is leased: well beyond a provider call's own timeout (ARI 5 s, Mango 10 s).
PLACING_LEASE_S = 30.0
# Orders placed at once by one dispatch pass.
PLACE_CONCURRENCY = 8
# Ringing legs end well within this; silence beyond it means the call was lost with its process.
SILENT_ATTEMPT = dt.timedelta(minutes=3)
# Graceful shutdown lets a dispatch pass finish placing its calls for at most this long.
DRAIN_TIMEOUT_S = 20.0


class Dispatcher:
    """Runs dispatch passes and, through its attempt tracker, applies call events; one per replica."""

    def __init__(
        self,
        pool: db.Pool,
        protector: DataProtector,
        sites: SiteDirectory,
        adapter: TelephonyAdapter,
        *,
        clock: Clock = utc_now,
        poll_interval_s: float = 1.0,
        placing_lease_s: float = PLACING_LEASE_S,
        sink: CallEventSink | None = None,
        database_url: str | None = None,
        schema: str = "callback",
    ) -> None:
        """`database_url` lets it LISTEN for new work in `schema` on its own connection; without one it
        wakes only on wake() and the poll (tests of the dialer alone)."""
        self.pool = pool
        self.protector = protector
        self.sites = sites
        self.adapter = adapter
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.placing_lease = dt.timedelta(seconds=placing_lease_s)
        self.worker = worker_id()
        self.attempts = AttemptTracker(
            pool, protector, sites, adapter, clock=clock, agent_freed=self.wake, sink=sink
        )
        self._stop = asyncio.Event()
        self._wakeup = NotifyWakeup(database_url or "", f"abonent_dispatch_{schema}", poll_interval_s)
        self._listens = database_url is not None
        self._last_sweep: float | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.adapter.start()
        try:
            await self.attempts.resync()
        except Exception:
            log.exception("re-sync of open calls with the provider failed")
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(), name="dialer:dispatch"),
            asyncio.create_task(self.attempts.run(), name="dialer:events"),
        ]

    async def stop(self) -> None:
        self._stop.set()
        self._wakeup.set()
        await self._drain()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._wakeup.stop(None, 0, "")  # closes the listening connection
        await self.adapter.aclose()

    def wake(self) -> None:
        """A request became due or an agent became ready: dispatch now rather than at the next tick."""
        self._wakeup.set()

    async def _dispatch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            if self._listens:
                await self._wakeup.listen()  # (re)connects the listener; a no-op while it is up
            # Cleared before the pass, never after: a wake-up that comes during the pass (a request
            # committed meanwhile) starts the next pass at once instead of waiting for the poll.
            self._wakeup.clear()
            try:
                if self._last_sweep is None or loop.time() - self._last_sweep >= self.poll_interval_s:
                    self._last_sweep = loop.time()
                    await self.recover()
                    await self.attempts.sweep_overdue()
                while not self._stop.is_set() and await self.dispatch_once():
                    pass
            except Exception:
                log.exception("dispatch pass failed")
            if self._stop.is_set():
                return
            await self._wakeup.wait()

    async def _drain(self) -> None:
        """Stop taking new work but let the running dispatch pass finish placing what it reserved.

        A pass cancelled between reservation and 'placed' leaves attempts for the next process to recover.
        """
        dispatch = [t for t in self._tasks if t.get_name() == "dialer:dispatch" and not t.done()]
        if dispatch:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(dispatch[0]), DRAIN_TIMEOUT_S)

    # --- dispatch ---------------------------------------------------------------------------------------

    async def dispatch_once(self, limit: int = 10) -> int:
        """Reserve agents for up to `limit` due requests (oldest first) and dial them; returns calls placed.

        Each request is reserved in its own transaction: a row that cannot be dispatched (bad data, a
        site that fails to load) is logged and left for a later pass, and never rolls back the others.
        """
        if not self.adapter.can_dial():
            # Reserving now would only turn each due request into a provider error and a back-off.
            return 0
        now = self.clock()
        bound = asyncio.Semaphore(PLACE_CONCURRENCY)

        async def place_bounded(order: CallOrder) -> None:
            async with bound:
                try:
                    await self.place(order)
                except Exception:
                    # Its lease runs out and recovery closes it; the other orders go on.
                    log.exception("placing an order failed", extra={"attempt": order.attempt_id})

        # Each order goes to the provider as soon as it is reserved, while the next row is reserved.
        placing: list[asyncio.Task[None]] = []
        seen: list[uuid.UUID] = []
        try:
            for _ in range(limit):
                row_id: uuid.UUID | None = None
                try:
                    async with db.transaction(self.pool) as conn:
                        rows = await callback_store.due_callbacks(conn, now, 1, exclude=seen)
                        if not rows:
                            break
                        row = rows[0]
                        row_id = row.id
                        seen.append(row_id)
                        order = await self._dispatch_row(conn, row, now)
                except Exception:
                    if row_id is None:
                        raise  # not a row's fault (the database is away): the pass fails as a whole
                    log.exception(
                        "due request not dispatched; retried on a later pass", extra={"callback": row_id}
                    )
                    continue
                if order is not None:
                    if row.first_dial_at is None:  # counted once committed, so a rollback counts nothing
                        FIRST_DIALS.labels("kept" if now <= row.promised_latest else "late").inc()
                    failpoint("dialer.after_reserve")
                    placing.append(asyncio.create_task(place_bounded(order)))
        finally:
            # Orders already reserved are placed even when reserving the next one failed.
            await asyncio.gather(*placing)
        return len(placing)

    async def _dispatch_row(
        self, conn: db.Connection, row: callback_store.CallbackRow, now: dt.datetime
    ) -> CallOrder | None:
        """Reserve an agent for one due request in the caller's transaction; the order to place, if any."""
        site = await self.sites.require(row.site_key, conn)
        callee = callee_window(site.settings, row.visitor_tz, row.not_before)
        calendar = site_calendar(site.settings)
        if not is_callable_at(now, calendar, callee):
            # Never call outside the visitor's window, even if a retry was planned for "now".
            due_at = next_callable_instant(now, calendar, callee)
            await reschedule(conn, row, due_at, "outside_window", now=self.clock())
            return None
        agent = await agent_store.reserve_agent(conn, row.org_id, row.queue)
        if agent is None:
            return None  # taken by another dispatcher meanwhile; the request waits for the next agent
        attempt_id = uuid.uuid4()
        attempt_no = row.attempts + 1
        await attempt_store.insert_attempt(
            conn,
            attempt_id,
            row.id,
            attempt_no,
            agent.id,
            adapter=self.adapter.name,
            now=now,
            placing_until=now + self.placing_lease,
            placing_by=self.worker,
        )
        await agent_store.assign_agent(conn, agent.id, row.id, attempt_id)
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
        """Send one order under its lease, then mark it placed; an order whose lease lapsed is not sent."""
        attempt_id = uuid.UUID(order.attempt_id)
        now = self.clock()
        async with db.transaction(self.pool) as conn:
            leased = await attempt_store.renew_placing_lease(
                conn, attempt_id, self.worker, now + self.placing_lease, now
            )
        if not leased:
            log.warning("order not placed: its lease lapsed", extra={"attempt": order.attempt_id})
            return
        try:
            provider_id = await self.adapter.place_call(order)
        except TelephonyError as exc:
            log.warning("dial refused by provider: %s", exc, extra={"attempt": order.attempt_id})
            if not exc.retryable:
                # Our trunk or account is broken, not the visitor's phone: alert, and do not charge them.
                PROVIDER_ERRORS.labels(self.adapter.name).inc()
            await self.attempts.finish_attempt(attempt_id, "failed" if exc.retryable else "provider_error")
            return
        DIALS.labels(self.adapter.name).inc()
        failpoint("dialer.after_originate")
        await self.attempts.mark_placed(attempt_id, provider_id)

    async def recover(self) -> None:
        """Settle attempts whose placing lease ran out: place an order never sent (once), never one that
        may have been sent; close lost calls."""
        now = self.clock()
        unsent: list[CallOrder] = []
        async with db.transaction(self.pool) as conn:
            orphaned = await attempt_store.expired_placements(conn, now)
            # Taken over under the row locks, so one replica examines each.
            for attempt in orphaned:
                await attempt_store.take_over_placement(
                    conn, attempt.id, self.worker, now + self.placing_lease
                )
                if attempt.ordered_at is None:
                    order = await self._order_of(conn, attempt)
                    if order is not None:
                        unsent.append(order)
            lost = [a.id for a in await attempt_store.silent_attempts(conn, now - SILENT_ATTEMPT)]
        for order in unsent:
            log.warning(
                "placing an order a crashed dispatcher never sent", extra={"attempt": order.attempt_id}
            )
            await self.place(order)
        for attempt in orphaned:
            if attempt.ordered_at is not None:
                await self._settle_orphan(attempt.id)
        for attempt_id in lost:
            await self.attempts.force_end(attempt_id)

    async def _order_of(self, conn: db.Connection, attempt: attempt_store.AttemptRow) -> CallOrder | None:
        row = await callback_store.get_callback(conn, attempt.callback_id)
        agent = await agent_store.agent_by_id(conn, attempt.agent_id) if attempt.agent_id else None
        if row is None or agent is None:
            return None
        site = await self.sites.require(row.site_key, conn)
        return self._order(attempt.id, row, agent, site.settings)

    async def _settle_orphan(self, attempt_id: uuid.UUID) -> None:
        try:
            exists = await self.adapter.call_exists(attempt_id.hex)
        except Exception:
            log.exception(
                "cannot ask the provider about an orphaned attempt", extra={"attempt": attempt_id.hex}
            )
            exists = None
        if exists:
            log.warning(
                "an orphaned order reached the provider; following it", extra={"attempt": attempt_id.hex}
            )
            await self.attempts.mark_placed(attempt_id, attempt_id.hex)
            return
        # Not at the provider, or no way to tell: whether a phone rang is unknown, so never ring again for
        # this attempt; the request gets a new one later (not charged to the visitor).
        log.warning("closing an orphaned attempt as unknown", extra={"attempt": attempt_id.hex})
        with contextlib.suppress(Exception):
            await self.adapter.hangup(attempt_id.hex)
        await self.attempts.finish_attempt(attempt_id, "unknown")

    def _order(
        self,
        attempt_id: uuid.UUID,
        row: callback_store.CallbackRow,
        agent: agent_store.AgentRow,
        settings: SiteSettings,
    ) -> CallOrder:
        return CallOrder(
            attempt_id=attempt_id.hex,
            visitor_phone=self.protector.decrypt(row.phone_enc, PHONE_CONTEXT, row.id),
            agent_endpoint=agent.endpoint,
            caller_id="",
            whisper_text=f"Callback from {settings.name}, page {row.page_url or 'unknown'}",
            order=settings.dial_order,
        )
