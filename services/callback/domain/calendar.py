"""Site working hours and callee calling windows as exact, DST-safe UTC intervals."""

from __future__ import annotations

import datetime as dt
from typing import Literal
from zoneinfo import ZoneInfo

import msgspec

from services.common.calendar import (
    Interval,
    OpeningHours,
    TimeRange,
    as_utc,
    intersect_intervals,
    offset_segments,
    wall_ranges_to_utc,
    zone,
)

__all__ = [
    "CalleeWindow",
    "Constraint",
    "Interval",
    "SiteCalendar",
    "Slot",
    "TimeRange",
    "as_utc",
    "blocking_constraints",
    "callable_intervals",
    "is_callable_at",
    "next_callable_instant",
    "offer_slots",
]

UTC = dt.UTC
# Why a callee cannot be called at some instant, in the order promise reasons prefer them.
Constraint = Literal["outside_hours", "callee_window", "not_before"]

_MINUTES_PER_DAY = 24 * 60


class SiteCalendar(OpeningHours, frozen=True, kw_only=True):
    """When a site's agents work: weekly ranges (0=Monday) and holiday dates, all in the site's zone;
    with `production_calendar="RU"` the official days off close it too (services/common/calendar.py)."""


class CalleeWindow(msgspec.Struct, frozen=True, kw_only=True):
    """When the callee may be called, in the callee's own zone.

    `not_before` applies to every day: no call is placed before that callee-local time on any day.
    """

    tz: str
    window: TimeRange
    not_before: dt.time | None = None

    def __post_init__(self) -> None:
        zone(self.tz)
        if self.not_before is not None and self.not_before.tzinfo is not None:
            raise ValueError("not_before is a naive callee-local wall-clock time")

    @property
    def zone(self) -> ZoneInfo:
        return zone(self.tz)

    def daily_range(self) -> TimeRange | None:
        """The window narrowed by `not_before`; None when `not_before` leaves nothing of it."""
        if self.not_before is None or self.not_before <= self.window.start:
            return self.window
        if not self.window.contains(self.not_before):
            return None
        return TimeRange(start=self.not_before, end=self.window.end)


class Slot(msgspec.Struct, frozen=True, kw_only=True):
    """A bookable callback slot [start, end), UTC."""

    start: dt.datetime
    end: dt.datetime

    def __post_init__(self) -> None:
        if as_utc(self.end) <= as_utc(self.start):
            raise ValueError(f"slot end {self.end} must be after its start {self.start}")


def blocking_constraints(at: dt.datetime, site: SiteCalendar, callee: CalleeWindow) -> tuple[Constraint, ...]:
    """Every constraint that forbids calling at `at`, in preference order; empty when callable."""
    blocking: list[Constraint] = []
    if not site.is_open_at(at):
        blocking.append("outside_hours")
    callee_wall = as_utc(at).astimezone(callee.zone).time().replace(fold=0)
    if not callee.window.contains(callee_wall):
        blocking.append("callee_window")
    if callee.not_before is not None and callee_wall < callee.not_before:
        blocking.append("not_before")
    return tuple(blocking)


def is_callable_at(at: dt.datetime, site: SiteCalendar, callee: CalleeWindow) -> bool:
    """Whether the site is open and the callee may be called at the instant `at`."""
    return not blocking_constraints(at, site, callee)


def callable_intervals(
    start: dt.datetime, end: dt.datetime, site: SiteCalendar, callee: CalleeWindow
) -> list[Interval]:
    """Merged, sorted UTC intervals [a, b) in [start, end) when the site is open and the callee callable."""
    start_utc, end_utc = as_utc(start), as_utc(end)
    daily = callee.daily_range()
    if end_utc <= start_utc or daily is None:
        return []
    site_open = wall_ranges_to_utc(site.zone, start_utc, end_utc, site.ranges_on)
    if not site_open:
        return []
    callee_open = wall_ranges_to_utc(callee.zone, start_utc, end_utc, lambda _day: (daily,))
    return intersect_intervals(site_open, callee_open)


def next_callable_instant(
    at: dt.datetime, site: SiteCalendar, callee: CalleeWindow, horizon_days: int = 14
) -> dt.datetime | None:
    """The first UTC instant >= `at` that is callable, or None if there is none within `horizon_days`."""
    at_utc = as_utc(at)
    intervals = callable_intervals(at_utc, at_utc + dt.timedelta(days=horizon_days), site, callee)
    return intervals[0][0] if intervals else None


def offer_slots(
    now: dt.datetime,
    site: SiteCalendar,
    callee: CalleeWindow,
    *,
    days: int = 7,
    slot_minutes: int = 30,
    min_lead_minutes: int = 15,
) -> list[Slot]:
    """Bookable slots within `days` of `now`: aligned to `slot_minutes` on the callee's local clock
    (counted from local midnight), wholly inside callable intervals, starting >= now + min_lead."""
    if slot_minutes <= 0 or _MINUTES_PER_DAY % slot_minutes:
        raise ValueError(f"slot_minutes must divide a day evenly, got {slot_minutes}")
    now_utc = as_utc(now)
    length = dt.timedelta(minutes=slot_minutes)
    intervals = callable_intervals(
        now_utc + dt.timedelta(minutes=min_lead_minutes), now_utc + dt.timedelta(days=days), site, callee
    )
    slots: list[Slot] = []
    for interval_start, interval_end in intervals:
        for (segment_start, segment_end), offset in offset_segments(
            callee.zone, interval_start, interval_end
        ):
            wall = segment_start.replace(tzinfo=None) + offset
            midnight = dt.datetime.combine(wall.date(), dt.time())
            slots_since_midnight = -((midnight - wall) // length)  # ceiling division
            slot_start = (midnight + slots_since_midnight * length - offset).replace(tzinfo=UTC)
            while slot_start < segment_end and slot_start + length <= interval_end:
                # A fall-back fold could re-align a slot over the previous one; offers never overlap.
                if not slots or slot_start >= slots[-1].end:
                    slots.append(Slot(start=slot_start, end=slot_start + length))
                slot_start += length
    return slots
