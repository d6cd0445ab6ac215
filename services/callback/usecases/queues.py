"""The queue as a newcomer sees it, read once per queue state and shared by every offer and request."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator
from typing import get_args

import msgspec
from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from services.callback.domain import promise
from services.callback.domain.promise import PromiseReason, QueueSnapshot
from services.callback.schemas import SiteSettings
from services.callback.store import stats
from services.callback.usecases.common import PROMISE_HORIZON
from services.callback.usecases.presence import AgentAvailability
from services.callback.usecases.sites import SiteDirectory
from services.common import db
from services.common.events import CallbackEvent, CallbackMerged, CallbackRequested, CallbackScheduled

__all__ = [
    "QUEUE_TTL_S",
    "QueueCache",
    "QueueReads",
    "QueueView",
    "joins_line",
    "newcomer_snapshot",
]

# A queue read is reused this long at most, however quiet the queue looks: presence expiring and calls
# running on change nothing that announces itself, and another replica's change may arrive late.
QUEUE_TTL_S = 1.0

QUEUE_READS = Counter("abonent_callback_queue_reads_total", "Queue states read from PostgreSQL for promises")
QUEUE_ROWS = Counter("abonent_callback_queue_rows_total", "Rows read from PostgreSQL for queue states")


class _EstimateWorkCollector(Collector):
    """The promise engine's own work counters (a pure module keeps plain integers) as metrics."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "abonent_callback_wait_curves",
            "Queue states whose wait distribution was simulated",
            value=promise.WORK.curves,
        )
        yield CounterMetricFamily(
            "abonent_callback_wait_simulated_requests",
            "Requests simulated (per agent and place in line) for wait distributions",
            value=promise.WORK.steps,
        )


REGISTRY.register(_EstimateWorkCollector())


# A request is born scheduled with its promise's reason (`callback.scheduled` at birth); later re-times say
# why they happened instead ("rescheduled", "repromise", "retry_after_…", "outside_window").
_BIRTH_REASONS = frozenset(get_args(PromiseReason))


def joins_line(event: CallbackEvent) -> bool:
    """A newcomer (its `callback.requested` and birth `callback.scheduled`) or a repeat joining a pending
    request: the line grows behind everyone already in it (later arrivals never overtake), so nobody's
    place, no agent and no handle time changes."""
    if isinstance(event, CallbackRequested | CallbackMerged):
        return True
    return isinstance(event, CallbackScheduled) and event.reason in _BIRTH_REASONS


class _History(msgspec.Struct, frozen=True, kw_only=True):
    """A queue's handle-time history as read."""

    read_at: float  # monotonic
    last_handled: object  # the latest handled attempt when read (None: no history)
    handle_times_s: tuple[float, ...]
    extra_attempts: float


class _BusyCalls(msgspec.Struct, frozen=True, kw_only=True):
    """A queue's busy calls (their starts) as first seen, with how long each had run then."""

    seen_at: float  # monotonic
    started: tuple[dt.datetime, ...]
    elapsed_s: tuple[float, ...]


class QueueReads(msgspec.Struct, kw_only=True):
    """What a cache read from PostgreSQL (for tests and metrics: the work is flat in the backlog)."""

    reads: int = 0
    rows: int = 0


async def newcomer_snapshot(
    conn: db.Connection, agents: AgentAvailability, settings: SiteSettings, now: dt.datetime, *, org_id: str
) -> tuple[QueueSnapshot, int]:
    """The site's queue (of its organisation) as the promise engine sees it for a new visitor, and the
    number of rows that took: everyone pending is ahead once due, now or later."""
    figures = await stats.newcomer_figures(conn, org_id, settings.queue, now, horizon=now + PROMISE_HORIZON)
    snapshot = QueueSnapshot(
        ready_agents=await agents.ready_agents(conn, org_id, settings.queue),
        busy_elapsed_s=figures.busy_elapsed_s,
        ahead=figures.due_now,
        later_due_s=figures.later_due_s,
        handle_time_samples_s=figures.handle_times_s,
        extra_attempts=figures.extra_attempts,
    )
    return snapshot, figures.rows + 1


class QueueView(msgspec.Struct, frozen=True, kw_only=True):
    """A newcomer's snapshot and the instant its offsets count from: promises from it use that `now`."""

    snapshot: QueueSnapshot
    as_of: dt.datetime


class _Entry(msgspec.Struct, kw_only=True):
    read_at: float  # monotonic
    view: QueueView


class QueueCache:
    """Each queue's newcomer snapshot, read from PostgreSQL at most once per `ttl_s` in this process and
    again as soon as the queue is known to have changed (`forget`: a request accepted, cancelled or moved
    here, presence changed here, or any replica's callback event). The truth stays in PostgreSQL; this only
    spares re-reading it, so every replica is at most `ttl_s` behind. The snapshot's offsets count from
    when it was read (`as_of`): a promise made from it must use that instant as its `now`, or requests due
    exactly at an opening would slip out of the line ahead. The
    promise engine keeps the wait distribution of each snapshot, so offers and requests of a queue state
    share one simulation too. Concurrent misses of one queue (by callers without a connection) share
    one read."""

    def __init__(
        self,
        agents: AgentAvailability,
        sites: SiteDirectory | None = None,
        *,
        ttl_s: float = QUEUE_TTL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.agents = agents
        self.sites = sites
        self.ttl_s = ttl_s
        self.monotonic = monotonic
        self.work = QueueReads()
        self._entries: dict[tuple[str, str], _Entry] = {}
        # Bumped by `forget`: a read begun before a change is neither stored nor joined after it.
        self._generations: dict[tuple[str, str], int] = {}
        self._reading: dict[tuple[str, str], tuple[int, asyncio.Future[QueueView]]] = {}
        # Each queue's handle-time history for requests, which read their live figures themselves.
        self._history: dict[tuple[str, str], _History] = {}
        self._history_generations: dict[tuple[str, str], int] = {}
        self._busy: dict[tuple[str, str], _BusyCalls] = {}

    async def snapshot(
        self,
        source: db.Pool | db.Connection,
        settings: SiteSettings,
        now: dt.datetime,
        *,
        org_id: str,
        fresh: bool = False,
    ) -> QueueView:
        """The queue's snapshot for a newcomer. `source` is the caller's connection (inside a transaction)
        or the pool (a connection is then taken only on a miss). `fresh` reads through the connection
        whatever is cached: what must be exact under a lock (a slot's last place) reads this way."""
        key = (org_id, settings.queue)
        # Only callers without a connection share a read: one holding a connection must never wait for
        # another's pool acquire (a full pool of such waiters would stall until the acquire deadline).
        shared = not fresh and isinstance(source, db.Pool)
        if not fresh:
            entry = self._entries.get(key)
            if entry is not None and self.monotonic() - entry.read_at < self.ttl_s:
                return entry.view
        generation = self._generations.get(key, 0)
        reading = self._reading.get(key) if shared else None
        if reading is not None and reading[0] == generation:
            try:
                return await asyncio.shield(reading[1])
            except asyncio.CancelledError:
                if not reading[1].cancelled():
                    raise  # this caller was cancelled, not the read it joined
                # The reader went away (its client left): read here instead.
        future: asyncio.Future[QueueView] = asyncio.get_running_loop().create_future()
        if shared:
            self._reading[key] = (generation, future)
        try:
            read_at = self.monotonic()
            view = QueueView(snapshot=await self._read(source, settings, now, org_id), as_of=now)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: joiners re-raise it, nobody else needs to
            raise
        else:
            future.set_result(view)
            if self._generations.get(key, 0) == generation:
                self._entries[key] = _Entry(read_at=read_at, view=view)
            return view
        finally:
            if self._reading.get(key, (None, None))[1] is future:
                del self._reading[key]

    async def _read(
        self, source: db.Pool | db.Connection, settings: SiteSettings, now: dt.datetime, org_id: str
    ) -> QueueSnapshot:
        if isinstance(source, db.Pool):
            async with source.acquire() as conn:
                snapshot, rows = await newcomer_snapshot(conn, self.agents, settings, now, org_id=org_id)
        else:
            snapshot, rows = await newcomer_snapshot(source, self.agents, settings, now, org_id=org_id)
        self.work.reads += 1
        self.work.rows += rows
        QUEUE_READS.inc()
        QUEUE_ROWS.inc(rows)
        return snapshot

    async def newcomer(
        self,
        conn: db.Connection,
        settings: SiteSettings,
        now: dt.datetime,
        *,
        org_id: str,
        ready_agents: int,
        busy_started: tuple[dt.datetime, ...],
        due_now: int,
        later_due_s: tuple[float, ...],
        last_handled: object,
    ) -> QueueSnapshot:
        """A request's snapshot from the live figures it read in its own transaction (Ready agents, busy
        calls' starts, the line, the latest handled attempt) and the queue's handle-time history, read
        through `conn` again when another attempt is the latest, after `ttl_s`, or when a call's end is
        heard of (`forget`). The same busy calls seen again within `ttl_s` keep the elapsed times of when
        they were first seen: the snapshot then equals the one before but for the line, so its wait
        simulation (keyed without the line) is shared instead of redone for every newcomer. Counted from
        the later `now`, each such call is given up to `ttl_s` more to run than it has left: the promise
        comes out that much later at most, never earlier."""
        key = (org_id, settings.queue)
        kept = self._history.get(key)
        if kept is None or kept.last_handled != last_handled or self.monotonic() - kept.read_at >= self.ttl_s:
            generation = self._history_generations.get(key, 0)
            read_at = self.monotonic()
            handle_times_s, extra_attempts = await stats.handle_times(conn, org_id, settings.queue)
            kept = _History(
                read_at=read_at,
                last_handled=last_handled,
                handle_times_s=handle_times_s,
                extra_attempts=extra_attempts,
            )
            self.work.reads += 1
            self.work.rows += len(handle_times_s)
            QUEUE_READS.inc()
            QUEUE_ROWS.inc(len(handle_times_s))
            # A read begun before a call ended is used by its caller but not kept.
            if self._history_generations.get(key, 0) == generation:
                self._history[key] = kept
        busy = self._busy.get(key)
        if busy is None or busy.started != busy_started or self.monotonic() - busy.seen_at >= self.ttl_s:
            elapsed_s = tuple(max((now - started).total_seconds(), 0.0) for started in busy_started)
            busy = self._busy[key] = _BusyCalls(
                seen_at=self.monotonic(), started=busy_started, elapsed_s=elapsed_s
            )
        return QueueSnapshot(
            ready_agents=ready_agents,
            busy_elapsed_s=busy.elapsed_s,
            ahead=due_now,
            later_due_s=later_due_s,
            handle_time_samples_s=kept.handle_times_s,
            extra_attempts=kept.extra_attempts,
        )

    def forget(self, org_id: str, queues: Iterable[str], *, calls: bool = True) -> None:
        """These queues of the organisation changed: the next use reads them again. `calls=False`: only
        their lines changed (a newcomer), no call started or ended."""
        for queue in queues:
            key = (org_id, queue)
            self._entries.pop(key, None)
            self._generations[key] = self._generations.get(key, 0) + 1
            if calls:
                self._history.pop(key, None)
                self._history_generations[key] = self._history_generations.get(key, 0) + 1

    async def notice_event(self, event: CallbackEvent) -> None:
        """A callback event from any replica: its queue changed (a request joined, left or moved; a call
        started or ended)."""
        if self.sites is None:
            return
        site = await self.sites.get(event.site_key)
        if site is not None:
            self.forget(site.org_id, [site.settings.queue], calls=not joins_line(event))
