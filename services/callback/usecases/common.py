"""Helpers the use cases and the dialer share: one lifecycle step, refusals, the promise and its views."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, cast
from zoneinfo import ZoneInfo

import msgspec
from prometheus_client import Counter

from services.callback.domain.calendar import (
    CalleeWindow,
    Interval,
    SiteCalendar,
    Slot,
    as_utc,
    callable_intervals,
    offer_slots,
)
from services.callback.domain.lifecycle import CallbackState, retime, transition
from services.callback.domain.promise import (
    PROMISE_HORIZON_DAYS,
    Promise,
    PromiseReason,
    QueueSnapshot,
    bookable_slots,
    promise_callback_time,
    render_promise_text,
)
from services.callback.domain.staffing import ShiftInstance, StaffingSchedule, StaffingTimeline
from services.callback.schemas import Lang, PromiseView, SiteSettings, SlotRange
from services.callback.store import callbacks as callback_store
from services.callback.store import stats
from services.callback.usecases.sites import site_calendar, staffing_schedule
from services.common import db, outbox
from services.common.domain_errors import Conflict, DomainError, Invalid
from services.common.events import CallbackEvent, CallbackScheduled

if TYPE_CHECKING:
    from services.callback.usecases.presence import AgentAvailability

log = logging.getLogger(__name__)

REFUSED = Counter("abonent_callback_refused_total", "Callback requests refused", ["reason"])

# Context (associated data) of the encrypted phone; its row id is the callback id.
PHONE_CONTEXT = "callback.callbacks.phone"

Clock = Callable[[], dt.datetime]

StateName = Literal[
    "requested", "scheduled", "dialing", "connected", "completed", "failed", "cancelled", "expired"
]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def refuse(
    kind: type[DomainError],
    code: str,
    message: str,
    field: str | None = None,
    retry_after: float | None = None,
) -> DomainError:
    """A visitor's request refused, counted by reason; `retry_after` seconds round up to at least 1."""
    REFUSED.labels(code).inc()
    retry_after_s = max(1, math.ceil(retry_after)) if retry_after is not None else None
    return kind(code, message, field=field, retry_after_s=retry_after_s)


async def advance_callback(
    conn: db.Connection,
    row: callback_store.CallbackRow,
    target: CallbackState,
    event: CallbackEvent,
    **changes: object,
) -> None:
    """One lifecycle step in the caller's transaction: the state machine must allow it, and the row
    change and its event commit together. Staying in the same state is a re-time (a waiting request
    gets a new due time), which the state machine allows only where it makes sense."""
    current = CallbackState(row.status)
    if target is current:
        retime(current)
    else:
        transition(current, target)
    await callback_store.update_callback(conn, row.id, status=target, **changes)
    await outbox.append(conn, event)


async def schedule_to_promise(
    conn: db.Connection,
    row: callback_store.CallbackRow,
    promise: Promise,
    snapshot: QueueSnapshot,
    *,
    now: dt.datetime,
    reason: str,
    **changes: object,
) -> None:
    """Give a waiting request a new promise: store it with the queue it came from and re-time the request
    to it (`callback.scheduled` with `reason`), in the caller's transaction."""
    due_at = now if promise.kind == "asap" else promise.earliest
    await callback_store.record_promise(
        conn,
        row.id,
        given_at=now,
        kind=promise.kind,
        reason=promise.reason,
        earliest=promise.earliest,
        latest=promise.latest,
        snapshot=msgspec.to_builtins(snapshot),
    )
    await advance_callback(
        conn,
        row,
        CallbackState.SCHEDULED,
        CallbackScheduled(
            callback_id=row.id,
            site_key=row.site_key,
            state="scheduled",
            due_at=due_at,
            promised_earliest=promise.earliest,
            promised_latest=promise.latest,
            reason=reason,
        ),
        due_at=due_at,
        promise_kind=promise.kind,
        promise_reason=promise.reason,
        promised_earliest=promise.earliest,
        promised_latest=promise.latest,
        **changes,
    )


def state_name(status: str) -> StateName:
    return CallbackState(status).value


def parse_clock(value: str | None) -> dt.time | None:
    return None if value is None else dt.time.fromisoformat(value)


# --- promises -------------------------------------------------------------------------------------------


# Promises and slots look this far ahead (the promise engine's horizon, plus a day for its last opening).
PROMISE_HORIZON = dt.timedelta(days=15)


class QueueState(msgspec.Struct, frozen=True, kw_only=True):
    """One read of a queue from which the snapshot of any waiting or new request is built."""

    ready_agents: int
    figures: stats.QueueFigures


async def queue_state(
    conn: db.Connection, agents: AgentAvailability, settings: SiteSettings, now: dt.datetime, *, org_id: str
) -> QueueState:
    """The site's queue of its organisation (a queue is (organisation, name))."""
    figures = await stats.queue_figures(conn, org_id, settings.queue, now, horizon=now + PROMISE_HORIZON)
    return QueueState(ready_agents=await agents.ready_agents(conn, org_id, settings.queue), figures=figures)


def snapshot_for(
    state: QueueState,
    now: dt.datetime,
    *,
    requested_at: dt.datetime | None = None,
    exclude: uuid.UUID | None = None,
) -> QueueSnapshot:
    """The queue as one visitor sees it: everyone asked before them (`requested_at`; None = a newcomer,
    everyone) is ahead once due, now or later."""
    due_now = 0
    later: list[float] = []
    for pending in state.figures.pending:
        if pending.id == exclude or (requested_at is not None and pending.requested_at >= requested_at):
            continue
        offset_s = (pending.due_at - now).total_seconds()
        if offset_s <= 0:
            due_now += 1
        else:
            later.append(offset_s)
    return QueueSnapshot(
        ready_agents=state.ready_agents,
        busy_elapsed_s=state.figures.busy_elapsed_s,
        ahead=due_now,
        later_due_s=tuple(sorted(later)),
        handle_time_samples_s=state.figures.handle_times_s,
        extra_attempts=state.figures.extra_attempts,
    )


async def queue_snapshot(
    conn: db.Connection, agents: AgentAvailability, settings: SiteSettings, now: dt.datetime, *, org_id: str
) -> QueueSnapshot:
    """The queue as the promise engine sees it for a new visitor (all of the site's organisation)."""
    return snapshot_for(await queue_state(conn, agents, settings, now, org_id=org_id), now)


# A site's calendars over the promise horizon are worked out for a stretch this much longer, from the
# start of the hour, and cut to each `now` within that hour.
_CALENDAR_REUSE = dt.timedelta(hours=1)
_CALLEE_WINDOWS_KEPT = 64
_SITES_KEPT = 256
_PROMISE_SPAN = dt.timedelta(days=PROMISE_HORIZON_DAYS)


class _SiteCalendars:
    """One site settings object's calendar, staffing schedule, staffing timeline and callable intervals
    per callee window: each promise asked for them over the two weeks ahead, and walking two weeks of
    days (offsets, holidays, shifts) costs more than the rest of a request. Intervals and shift instances
    worked out over a longer stretch and cut to [now, end) are exactly what [now, end) gives: each is the
    set of instants meeting a rule that does not depend on the stretch."""

    def __init__(self, settings: SiteSettings) -> None:
        self.settings = settings
        self.site: SiteCalendar = site_calendar(settings)
        self.schedule: StaffingSchedule = staffing_schedule(settings)
        self._timeline: tuple[dt.datetime, StaffingTimeline] | None = None
        self._callable: dict[CalleeWindow, tuple[dt.datetime, list[Interval]]] = {}

    def timeline(self, now: dt.datetime) -> StaffingTimeline:
        """`schedule.timeline(now, now + PROMISE_HORIZON)`."""
        now = as_utc(now)
        anchor = _anchor(now)
        if self._timeline is None or self._timeline[0] != anchor:
            whole = self.schedule.timeline(anchor, anchor + PROMISE_HORIZON + _CALENDAR_REUSE)
            self._timeline = (anchor, whole)
        # A timeline keeps the shifts begun up to a day before its start (cut there) that still run.
        start, end = now - dt.timedelta(days=1), now + PROMISE_HORIZON
        cut = [
            ShiftInstance(start=max(i.start, start), end=min(i.end, end), agents=i.agents)
            for i in self._timeline[1].instances
            if i.end > now and i.start < end
        ]
        cut.sort(key=lambda instance: (instance.start, instance.end))
        return StaffingTimeline(instances=tuple(cut))

    def callable(self, now: dt.datetime, callee: CalleeWindow) -> list[Interval]:
        """`callable_intervals(now, now + PROMISE_HORIZON_DAYS days, site, callee)`."""
        now = as_utc(now)
        anchor = _anchor(now)
        kept = self._callable.get(callee)
        if kept is None or kept[0] != anchor:
            if len(self._callable) >= _CALLEE_WINDOWS_KEPT:
                self._callable.clear()
            whole = callable_intervals(anchor, anchor + _PROMISE_SPAN + _CALENDAR_REUSE, self.site, callee)
            kept = self._callable[callee] = (anchor, whole)
        end = now + _PROMISE_SPAN
        return [(max(a, now), min(b, end)) for a, b in kept[1] if b > now and a < end]


def _anchor(now_utc: dt.datetime) -> dt.datetime:
    return now_utc.replace(minute=0, second=0, microsecond=0)


_site_calendars: dict[int, _SiteCalendars] = {}


def site_calendars(settings: SiteSettings) -> _SiteCalendars:
    """The calendars of this settings object (sites are cached as objects: a changed site is a new one)."""
    kept = _site_calendars.get(id(settings))
    if kept is None or kept.settings is not settings:
        if len(_site_calendars) >= _SITES_KEPT:
            _site_calendars.clear()
        kept = _site_calendars[id(settings)] = _SiteCalendars(settings)
    return kept


def promise_for(
    now: dt.datetime,
    snapshot: QueueSnapshot,
    settings: SiteSettings,
    callee: CalleeWindow,
    slot: Slot | None = None,
) -> Promise | None:
    calendars = site_calendars(settings)
    return promise_callback_time(
        now,
        snapshot,
        calendars.site,
        callee,
        slot,
        staffing=calendars.timeline(now),
        intervals=None if slot is not None else calendars.callable(now, callee),
    )


def slots_for(
    now: dt.datetime, snapshot: QueueSnapshot, settings: SiteSettings, callee: CalleeWindow
) -> list[Slot]:
    """Slots a visitor may choose now: callable, staffed and not full (the ASAP answer's sources)."""
    calendars = site_calendars(settings)
    return bookable_slots(now, snapshot, calendars.site, callee, calendars.timeline(now))


def ensure_slot_free(
    slot: Slot, now: dt.datetime, snapshot: QueueSnapshot, settings: SiteSettings, callee: CalleeWindow
) -> None:
    """Conflict when the chosen slot filled up (or nobody will be at work then) since it was offered."""
    if slot not in slots_for(now, snapshot, settings, callee):
        raise refuse(
            Conflict,
            "slot_full",
            "This time is fully booked; please choose another",
            "slot_start",
        )


def promise_view(promise: Promise, now: dt.datetime, tz: str, lang: Lang) -> PromiseView:
    return PromiseView(
        kind=promise.kind,
        earliest=promise.earliest,
        latest=promise.latest,
        text=render_promise_text(promise, now, tz, lang),
    )


def stored_promise(row: callback_store.CallbackRow) -> Promise:
    return Promise(
        kind="asap" if row.promise_kind == "asap" else "scheduled",
        earliest=row.promised_earliest,
        latest=row.promised_latest,
        reason=cast(PromiseReason, row.promise_reason),
    )


def chosen_slot(
    slot_start: dt.datetime | None, now: dt.datetime, settings: SiteSettings, callee: CalleeWindow
) -> Slot | None:
    """The offered slot starting at `slot_start`; Invalid when it is no longer offered."""
    if slot_start is None:
        return None
    for slot in offer_slots(now, site_calendar(settings), callee):
        if slot.start == slot_start:
            return slot
    raise refuse(
        Invalid, "invalid_slot", "This time is no longer available; please choose another", "slot_start"
    )


# The offer lists slots of this many of the visitor's days (the first ones with a free slot); a request
# may still choose any offered slot of the week (`chosen_slot`).
OFFER_SLOT_DAYS = 3
SLOT_MINUTES = 30


def slot_ranges(slots: list[Slot], tz: str, *, days: int = OFFER_SLOT_DAYS) -> list[SlotRange]:
    """The slots of the first `days` local days (in `tz`) that have any, back-to-back ones collapsed into
    one range: a 24/7 site's three days are one range instead of 144 slots."""
    zone = ZoneInfo(tz)
    ranges: list[SlotRange] = []
    dates: set[dt.date] = set()
    for slot in slots:
        date = slot.start.astimezone(zone).date()
        if date not in dates:
            if len(dates) == days:
                break
            dates.add(date)
        if ranges and ranges[-1].end == slot.start:
            ranges[-1].end = slot.end
        else:
            ranges.append(SlotRange(start=slot.start, end=slot.end))
    return ranges


def slot_label(slot: Slot, tz: str, lang: Lang) -> str:
    local = slot.start.astimezone(ZoneInfo(tz))
    if lang == "ru":
        days = ("пн", "вт", "ср", "чт", "пт", "сб", "вс")
        return f"{days[local.weekday()]}, {local.day:02d}.{local.month:02d}, {local:%H:%M}"
    return f"{local:%a} {local.day} {local:%b}, {local:%H:%M}"


# --- background -----------------------------------------------------------------------------------------


async def periodically(interval_s: float, job: Callable[[], Awaitable[object]], stop: asyncio.Event) -> None:
    """Run `job` every interval until stopped; a failed run is logged and retried on the next tick."""
    while not stop.is_set():
        try:
            await job()
        except Exception:
            log.exception("periodic job failed", extra={"job": getattr(job, "__qualname__", "?")})
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except TimeoutError:
            continue
