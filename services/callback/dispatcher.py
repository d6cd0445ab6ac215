"""The dispatcher: due requests meet ready agents and their calls are placed; orphaned placements recovered.

Safety argument (nothing lost, nothing twice):
- Reservation is one transaction: the due request (locked, SKIP LOCKED), the longest-idle agent (locked,
  SKIP LOCKED), the attempt row and the callback.dialing event commit together. Two dispatchers can never
  take the same request or agent.
- The adapter is called only after that commit, with the attempt id as its idempotency key. A dispatcher
  killed between commit and dial leaves an attempt in 'placing'; the recovery pass re-places it with the
  same id (ARI adopts the existing channel instead of ringing again).
- What happens to the call afterwards is the attempt tracker's (attempts.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid

from prometheus_client import Counter

from services.callback.attempts import AttemptTracker, reschedule
from services.callback.domain.attempt import AttemptState
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

log = logging.getLogger(__name__)

DIALS = Counter("abonent_callback_dials_total", "Dial attempts placed", ["adapter"])
PROVIDER_ERRORS = Counter(
    "abonent_callback_provider_errors_total",
    "Dial orders the telephony provider refused outright (alert on any increase)",
    ["adapter"],
)

# An attempt that never reached 'placed' this long after its commit was orphaned by a crash.
PLACING_GRACE = dt.timedelta(seconds=5)
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
    ) -> None:
        self.pool = pool
        self.protector = protector
        self.sites = sites
        self.adapter = adapter
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.attempts = AttemptTracker(pool, protector, sites, adapter, clock=clock, agent_freed=self.wake)
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
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
                await self.attempts.sweep_overdue()
                while not self._stop.is_set() and await self.dispatch_once():
                    pass
            except Exception:
                log.exception("dispatch pass failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

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
        now = self.clock()
        orders: list[CallOrder] = []
        seen: list[uuid.UUID] = []
        for _ in range(limit):
            row_id: uuid.UUID | None = None
            try:
                async with db.transaction(self.pool) as conn:
                    rows = await callback_store.due_callbacks(conn, now, 1, exclude=seen)
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
            conn, attempt_id, row.id, attempt_no, agent.id, adapter=self.adapter.name, now=now
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
        await self.attempts.mark_placed(attempt_id, provider_id)

    async def recover(self) -> None:
        """Re-place attempts orphaned between reservation and dial; close attempts whose call was lost."""
        now = self.clock()
        orphaned: list[CallOrder] = []
        lost: list[uuid.UUID] = []
        async with db.transaction(self.pool) as conn:
            for attempt in await attempt_store.stale_attempts(
                conn, now - PLACING_GRACE, now - SILENT_ATTEMPT
            ):
                if attempt.state != AttemptState.PLACING:
                    lost.append(attempt.id)
                    continue
                row = await callback_store.get_callback(conn, attempt.callback_id)
                agent = await agent_store.agent_by_id(conn, attempt.agent_id) if attempt.agent_id else None
                if row is not None and agent is not None:
                    site = await self.sites.require(row.site_key, conn)
                    orphaned.append(self._order(attempt.id, row, agent, site.settings))
        for attempt_id in lost:
            await self.attempts.finish_attempt(attempt_id, "failed")
        for order in orphaned:
            log.warning("re-placing an orphaned attempt", extra={"attempt": order.attempt_id})
            await self.place(order)

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
