"""Re-promise: when a queue changes, waiting requests whose estimate moved materially get a new promise."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

from prometheus_client import Counter

from services.callback.domain.promise import Promise
from services.callback.store import callbacks as callback_store
from services.callback.usecases.common import (
    Clock,
    promise_for,
    queue_state,
    schedule_to_promise,
    snapshot_for,
    stored_promise,
    utc_now,
)
from services.callback.usecases.presence import AgentAvailability, PresenceAgents
from services.callback.usecases.queues import joins_line
from services.callback.usecases.sites import SiteDirectory, callee_window
from services.common import db
from services.common.events import CallbackEvent, CallbackScheduled

log = logging.getLogger(__name__)

REPROMISED = Counter("abonent_callback_repromised_total", "Promises replaced while waiting", ["direction"])

# A request is re-promised at most this often, however busy its queue.
MIN_INTERVAL = dt.timedelta(seconds=30)
# Passes are at least this far apart: changes arriving meanwhile are handled together.
PASS_SPACING_S = 1.0
# Requests re-examined per queue per pass, oldest first (the ones whose place changes most).
BATCH = 100
# Promises that ran out without a dial are looked for this often (the one thing no event announces).
OVERDUE_SWEEP_S = 15.0
REASON = "repromise"


def materially_different(old: Promise, new: Promise, now: dt.datetime) -> bool:
    """Worth telling the visitor: another kind, a promise that already ran out, or a latest time that
    moved by at least a minute and a quarter of the wait still ahead (display rounding is not news)."""
    if old.kind != new.kind or old.latest <= now:
        return True
    threshold = max(dt.timedelta(minutes=1), (old.latest - now) / 4)
    return abs(new.latest - old.latest) >= threshold


class Repromiser:
    """Queues are marked changed (by callback events from any replica, presence changes, promises that ran
    out); a loop re-examines their waiting requests. Work is bounded: only changed queues, one pass per
    `PASS_SPACING_S` however many changes arrive, at most `BATCH` requests each, and a request is given a
    new promise at most once per `MIN_INTERVAL` (a column every replica sees; rows are locked with SKIP
    LOCKED so replicas share the work instead of repeating it)."""

    def __init__(
        self,
        pool: db.Pool,
        sites: SiteDirectory,
        agents: AgentAvailability | None = None,
        clock: Clock = utc_now,
        *,
        min_interval: dt.timedelta = MIN_INTERVAL,
    ) -> None:
        self.pool = pool
        self.sites = sites
        self.agents: AgentAvailability = agents or PresenceAgents()
        self.clock = clock
        self.min_interval = min_interval
        self._changed: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Make `run` look at its stop event now (shutdown)."""
        self._wake.set()

    def notice_queues(self, org_id: str, queues: list[str]) -> None:
        """These queues of the organisation changed (a queue is (organisation, name))."""
        self._changed.update((org_id, queue) for queue in queues)
        self._wake.set()

    async def notice_event(self, event: CallbackEvent) -> None:
        """A callback event: its queue changed, unless the event changes nobody else's wait (a newcomer
        joins behind everyone, a repeat joins a pending request) or is a re-promise itself (which would
        feed on itself)."""
        if joins_line(event):
            return
        if isinstance(event, CallbackScheduled) and event.reason == REASON:
            return
        site = await self.sites.get(event.site_key)
        if site is not None:
            self.notice_queues(site.org_id, [site.settings.queue])

    async def run(self, stop: asyncio.Event) -> None:
        """Until stopped: re-promise changed queues, and every OVERDUE_SWEEP_S the queues with a promise that
        ran out."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while not stop.is_set():
            try:
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + OVERDUE_SWEEP_S
                    async with self.pool.acquire() as conn:
                        overdue = await callback_store.queues_with_overdue_promises(conn, self.clock())
                    for org_id, queue in overdue:
                        self.notice_queues(org_id, [queue])
                changed, self._changed = self._changed, set()
                self._wake.clear()
                for org_id, queue in sorted(changed):
                    await self.repromise_queue(org_id, queue)
            except Exception:
                log.exception("re-promise pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PASS_SPACING_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(next_sweep - loop.time(), 0.1))

    async def repromise_queue(self, org_id: str, queue: str) -> int:
        """Recompute the promise of the organisation's queue's waiting requests; store, announce and count
        those that moved materially. Chosen slots are the visitor's own choice and retries follow their
        retry plan, so neither is touched."""
        now = self.clock()
        changed = 0
        async with db.transaction(self.pool) as conn:
            rows = await callback_store.repromise_candidates(
                conn, org_id, queue, now - self.min_interval, BATCH
            )
            if not rows:
                return 0
            state = None
            for row in rows:
                site = await self.sites.get(row.site_key, conn)
                if site is None:
                    continue
                settings = site.settings
                if state is None:
                    state = await queue_state(conn, self.agents, settings, now, org_id=org_id)
                snapshot = snapshot_for(state, now, requested_at=row.requested_at, exclude=row.id)
                new = promise_for(
                    now, snapshot, settings, callee_window(settings, row.visitor_tz, row.not_before)
                )
                old = stored_promise(row)
                if new is None or not materially_different(old, new, now):
                    continue
                await schedule_to_promise(
                    conn, row, new, snapshot, now=now, reason=REASON, promise_checked_at=now
                )
                REPROMISED.labels("later" if new.latest > old.latest else "earlier").inc()
                changed += 1
        return changed
