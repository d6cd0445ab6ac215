"""The dispatcher: due requests meet ready agents and their calls are placed; orphaned placements recovered.

Safety argument (nothing lost, nothing twice):
- Reservation is one statement, hence one transaction: the due request and the longest-idle agent are
  locked (SKIP LOCKED) only if each is still as the lock-free pick read it (the request scheduled, due and
  not updated since; the agent reservable), and only then do the attempt row, the agent's hold, the
  request's 'dialing' and the callback.dialing event commit, together. Two dispatchers can never take the
  same request or agent: the loser's statement finds a row locked or changed and writes nothing.
- The attempt is leased while it is placed: its row says "placing until T, by this worker", renewed by
  one statement (its own transaction) right before the provider call, which also records `ordered_at`
  (the call carries the attempt id as its idempotency key). Orders are placed concurrently (at most
  PLACE_CONCURRENCY at once), so a slow provider cannot hold a batch past its leases.
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
replicas may wake at once: SKIP LOCKED and the placing lease keep it one dial per attempt. From the wake-up
to the originate a request costs three statements on the pass's connection (pick, reserve, mark as
ordered) and no pool round trips in between; its callback.dialing is published by the dispatcher itself
right after the reservation commits (its outbox row is leased to it, so relays leave it alone unless it
dies). Recovery and the talk-time sweep are safety nets: they run after a pass, at most once per poll
interval.
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
from services.callback.domain.lifecycle import CallbackState, transition
from services.callback.schemas import SiteSettings
from services.callback.store import agents as agent_store
from services.callback.store import attempts as attempt_store
from services.callback.store import callbacks as callback_store
from services.callback.store import dispatch as dispatch_store
from services.callback.telephony import CallOrder, TelephonyAdapter, TelephonyError
from services.callback.usecases.common import PHONE_CONTEXT, Clock, utc_now
from services.callback.usecases.sites import SiteDirectory, callee_window, site_calendar
from services.common import db, outbox
from services.common.bus import Bus
from services.common.crypto import DataProtector
from services.common.events import CallbackDialing, encode_event
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
# Requests one pass looks at before the loop checks for a stop.
PASS_LIMIT = 10
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
        bus: Bus | None = None,
    ) -> None:
        """`database_url` lets it LISTEN for new work in `schema` on its own connection; without one it
        wakes only on wake() and the poll (tests of the dialer alone). With a `bus` it publishes each
        `callback.dialing` itself right after the reservation commits; without one the relay does."""
        self.pool = pool
        self.protector = protector
        self.sites = sites
        self.adapter = adapter
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.placing_lease = dt.timedelta(seconds=placing_lease_s)
        self.worker = worker_id()
        self.bus = bus
        self.schema = schema
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
                # Another pass only while one finds as much as it may take: fewer means the line is done
                # (a commit that adds work meanwhile has set the wake-up, so the next loop comes at once).
                while not self._stop.is_set() and (await self._pass(PASS_LIMIT))[1] >= PASS_LIMIT:
                    pass
                # After the pass, so a wake-up never waits behind the safety nets.
                if self._last_sweep is None or loop.time() - self._last_sweep >= self.poll_interval_s:
                    self._last_sweep = loop.time()
                    await self.recover()
                    await self.attempts.sweep_overdue()
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

    async def dispatch_once(self, limit: int = PASS_LIMIT) -> int:
        """Reserve agents for up to `limit` due requests (earliest deadline first) and dial them; returns
        calls placed."""
        placed, _ = await self._pass(limit)
        return placed

    async def _pass(self, limit: int) -> tuple[int, int]:
        """One dispatch pass on one connection: (calls placed, requests looked at).

        Per request: one read picks it with its agent (no locks), one statement reserves both and commits
        the attempt and its event (domain checks in between), one statement marks the order as being sent;
        then the originate and the event's publish run in their own tasks while the next request is
        picked. A request that cannot be dispatched (bad data, a site that fails to load) is logged and
        left for a later pass, and never holds up the others.
        """
        if not self.adapter.can_dial():
            # Reserving now would only turn each due request into a provider error and a back-off.
            return 0, 0
        now = self.clock()
        bound = asyncio.Semaphore(PLACE_CONCURRENCY)
        # Started in order; awaited before the pass returns, so a stop drains what was reserved.
        started: list[asyncio.Task[None]] = []
        placed = looked = 0
        seen: list[uuid.UUID] = []
        lost: set[uuid.UUID] = set()
        try:
            async with self.pool.acquire() as conn:
                while looked < limit:
                    pick = await dispatch_store.next_pick(conn, now, seen)
                    if pick is None:
                        break
                    looked += 1
                    try:
                        reserved = await self._reserve(conn, pick, now, started)
                    except Exception:
                        log.exception(
                            "due request not dispatched; retried on a later pass",
                            extra={"callback": pick.row.id},
                        )
                        seen.append(pick.row.id)
                        continue
                    if reserved is None:
                        # Taken or changed meanwhile (another dispatcher, a cancel): picked afresh once,
                        # then left to the next pass, as a locked row is.
                        if pick.row.id in lost:
                            seen.append(pick.row.id)
                        lost.add(pick.row.id)
                        continue
                    seen.append(pick.row.id)
                    if not isinstance(reserved, CallOrder):
                        continue  # re-timed to the visitor's window
                    order = reserved
                    if pick.row.first_dial_at is None:  # counted once committed
                        FIRST_DIALS.labels("kept" if now <= pick.row.promised_latest else "late").inc()
                    failpoint("dialer.after_reserve")
                    placed += 1
                    if bound.locked():
                        # Orders ahead of it are at the provider: it renews its lease when its turn comes.
                        started.append(asyncio.create_task(self._place_bounded(order, bound)))
                        continue
                    await bound.acquire()
                    try:
                        leased = await self._mark_ordered(conn, order)
                    except BaseException:
                        bound.release()
                        raise
                    if not leased:
                        bound.release()
                        continue
                    started.append(asyncio.create_task(self._originate_then_release(order, bound)))
        finally:
            # Orders already reserved are placed (and events published) even when the pass failed later.
            await asyncio.gather(*started)
        return placed, looked

    async def _reserve(
        self,
        conn: db.Connection,
        pick: dispatch_store.Pick,
        now: dt.datetime,
        started: list[asyncio.Task[None]],
    ) -> CallOrder | bool | None:
        """Reserve the pick's agent for its request (committed by one statement); the order to place, False
        when the request was re-timed instead, None when the pick was taken or changed meanwhile. The
        request's `callback.dialing` goes out from here right after the commit (with a bus)."""
        row = pick.row
        site = await self.sites.require(row.site_key, conn)
        callee = callee_window(site.settings, row.visitor_tz, row.not_before)
        calendar = site_calendar(site.settings)
        if not is_callable_at(now, calendar, callee):
            # Never call outside the visitor's window, even if a retry was planned for "now".
            async with conn.transaction():
                current = await callback_store.get_callback(conn, row.id, for_update=True)
                if current is None or current.updated_at != row.updated_at:
                    return None
                due_at = next_callable_instant(now, calendar, callee)
                await reschedule(conn, current, due_at, "outside_window", now=self.clock())
            return False
        transition(CallbackState(row.status), CallbackState.DIALING)
        attempt_id = uuid.uuid4()
        attempt_no = row.attempts + 1
        event = CallbackDialing(
            callback_id=row.id,
            site_key=row.site_key,
            state="dialing",
            attempt=attempt_no,
            agent_id=str(pick.agent_id),
        )
        outbox_row = (event.event_id, event.SUBJECT, encode_event(event))
        # Made before the reservation: a request whose order cannot be made (a phone that does not
        # decrypt) must stay unreserved, not hold an agent on an attempt nobody places.
        order = self._order(attempt_id, row, pick.agent_endpoint, site.settings)
        holder = self.worker if self.bus is not None else None
        taken = await dispatch_store.reserve(
            conn,
            pick,
            attempt_id,
            adapter=self.adapter.name,
            now=now,
            placing_until=now + self.placing_lease,
            placing_by=self.worker,
            event=outbox_row,
            claimed_by=holder,
            claim_s=outbox.DIRECT_CLAIM_S,
        )
        if not taken:
            return None
        if self.bus is not None:
            # Committed: published now, ahead of the originate's own round trips (the relay would first
            # hear the NOTIFY, claim the row and finish whatever batch it is on).
            started.append(asyncio.create_task(self._publish(outbox_row)))
        return order

    async def _publish(self, outbox_row: tuple[uuid.UUID, str, bytes]) -> None:
        assert self.bus is not None
        try:
            await outbox.publish_claimed(self.pool, self.bus, self.worker, [outbox_row], self.schema)
        except Exception:
            # The row stays leased to us until the lease lapses; then a relay publishes it.
            log.exception("publishing callback.dialing failed; the relay takes it over")

    async def _mark_ordered(self, conn: db.Connection, order: CallOrder) -> bool:
        """Renew the order's lease and record that it is being sent, in one statement (its own transaction)
        committed before the provider call; False if the lease lapsed (recovery owns it: do not send)."""
        now = self.clock()
        leased = await attempt_store.renew_placing_lease(
            conn, uuid.UUID(order.attempt_id), self.worker, now + self.placing_lease, now
        )
        if not leased:
            log.warning("order not placed: its lease lapsed", extra={"attempt": order.attempt_id})
        return leased

    async def _place_bounded(self, order: CallOrder, bound: asyncio.Semaphore) -> None:
        async with bound:
            try:
                await self.place(order)
            except Exception:
                # Its lease runs out and recovery closes it; the other orders go on.
                log.exception("placing an order failed", extra={"attempt": order.attempt_id})

    async def _originate_then_release(self, order: CallOrder, bound: asyncio.Semaphore) -> None:
        try:
            await self._originate(order)
        except Exception:
            log.exception("placing an order failed", extra={"attempt": order.attempt_id})
        finally:
            bound.release()

    async def place(self, order: CallOrder) -> None:
        """Send one order under its lease, then mark it placed; an order whose lease lapsed is not sent."""
        async with self.pool.acquire() as conn:
            leased = await self._mark_ordered(conn, order)
        if leased:
            await self._originate(order)

    async def _originate(self, order: CallOrder) -> None:
        """The provider call of an order marked as being sent, then its 'placed' mark (or its failure)."""
        attempt_id = uuid.UUID(order.attempt_id)
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
        return self._order(attempt.id, row, agent.endpoint, site.settings)

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
        agent_endpoint: str,
        settings: SiteSettings,
    ) -> CallOrder:
        return CallOrder(
            attempt_id=attempt_id.hex,
            visitor_phone=self.protector.decrypt(row.phone_enc, PHONE_CONTEXT, row.id),
            agent_endpoint=agent_endpoint,
            caller_id="",
            whisper_text=f"Callback from {settings.name}, page {row.page_url or 'unknown'}",
            order=settings.dial_order,
        )
