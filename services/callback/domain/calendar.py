"""Site working hours and callee calling windows as exact, DST-safe UTC intervals."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

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
Interval = tuple[dt.datetime, dt.datetime]
# Why a callee cannot be called at some instant, in the order promise reasons prefer them.
Constraint = Literal["outside_hours", "callee_window", "not_before"]

_DAY = dt.timedelta(days=1)
_MINUTES_PER_DAY = 24 * 60
_TICK = dt.timedelta(microseconds=1)
# An end of 23:59:59 (or later) is how "until midnight" is spelled in a single-day range.
_UNTIL_MIDNIGHT = dt.time(23, 59, 59)
# UTC offsets are probed this often to find DST transitions; real zones never change twice within an hour.
_OFFSET_PROBE_STEP = dt.timedelta(hours=1)


def _zone(key: str) -> ZoneInfo:
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {key!r}") from exc


def as_utc(value: dt.datetime) -> dt.datetime:
    """The same instant in UTC; naive datetimes are refused because their instant is unknowable."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: pass a tz-aware datetime")
    return value.astimezone(UTC)


class TimeRange(msgspec.Struct, frozen=True, kw_only=True):
    """Half-open wall-clock range [start, end) within one day; an end of 23:59:59 or later means midnight."""

    start: dt.time
    end: dt.time

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("TimeRange takes naive wall-clock times; the zone belongs to the calendar")
        if self.end <= self.start:
            raise ValueError(f"TimeRange end {self.end} must be after start {self.start} on the same day")

    @classmethod
    def parse(cls, start: str, end: str) -> TimeRange:
        """Build from "HH:MM[:SS]" strings; "24:00" is accepted as an end meaning midnight."""
        end_time = _UNTIL_MIDNIGHT if end in {"24:00", "24:00:00"} else dt.time.fromisoformat(end)
        return cls(start=dt.time.fromisoformat(start), end=end_time)

    @property
    def until_midnight(self) -> bool:
        return self.end >= _UNTIL_MIDNIGHT

    def contains(self, wall: dt.time) -> bool:
        return self.start <= wall and (self.until_midnight or wall < self.end)

    def wall_bounds(self, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
        """Naive wall-clock [start, end) of this range on `day`."""
        start = dt.datetime.combine(day, self.start)
        if self.until_midnight:
            return start, dt.datetime.combine(day + _DAY, dt.time())
        return start, dt.datetime.combine(day, self.end)


class SiteCalendar(msgspec.Struct, frozen=True, kw_only=True):
    """When a site's agents work: weekly ranges (0=Monday) and holiday dates, all in the site's zone."""

    tz: str
    weekly: dict[int, list[TimeRange]]
    holidays: frozenset[dt.date] = frozenset()

    def __post_init__(self) -> None:
        _zone(self.tz)
        bad_days = [day for day in self.weekly if not 0 <= day <= 6]
        if bad_days:
            raise ValueError(f"weekday keys must be 0 (Monday) .. 6 (Sunday), got {bad_days}")

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.tz)

    def ranges_on(self, day: dt.date) -> Sequence[TimeRange]:
        if day in self.holidays:
            return ()
        return self.weekly.get(day.weekday(), ())


class CalleeWindow(msgspec.Struct, frozen=True, kw_only=True):
    """When the callee may be called, in the callee's own zone.

    `not_before` applies to every day: no call is placed before that callee-local time on any day.
    """

    tz: str
    window: TimeRange
    not_before: dt.time | None = None

    def __post_init__(self) -> None:
        _zone(self.tz)
        if self.not_before is not None and self.not_before.tzinfo is not None:
            raise ValueError("not_before is a naive callee-local wall-clock time")

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.tz)

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
    site_local = as_utc(at).astimezone(site.zone)
    site_wall = site_local.time().replace(fold=0)
    if not any(r.contains(site_wall) for r in site.ranges_on(site_local.date())):
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


def _offset_at(zone: ZoneInfo, instant: dt.datetime) -> dt.timedelta:
    offset = instant.astimezone(zone).utcoffset()
    if offset is None:  # pragma: no cover - ZoneInfo always knows its offset
        raise ValueError(f"zone {zone.key} has no offset at {instant}")
    return offset


def _offset_segments(
    zone: ZoneInfo, start: dt.datetime, end: dt.datetime
) -> list[tuple[Interval, dt.timedelta]]:
    """Split UTC [start, end) into pieces of constant UTC offset in `zone`, exact to the microsecond."""
    segments: list[tuple[Interval, dt.timedelta]] = []
    segment_start, offset = start, _offset_at(zone, start)
    probe = start
    while probe < end:
        next_probe = min(probe + _OFFSET_PROBE_STEP, end)
        if _offset_at(zone, next_probe) == offset:
            probe = next_probe
            continue
        # Bisect (probe, next_probe] for the first instant with a different offset.
        low, high = probe, next_probe
        while high - low > _TICK:
            middle = low + (high - low) // 2
            if _offset_at(zone, middle) == offset:
                low = middle
            else:
                high = middle
        segments.append(((segment_start, high), offset))
        segment_start, offset, probe = high, _offset_at(zone, high), high
    segments.append(((segment_start, end), offset))
    return segments


def _merge(intervals: list[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _intersect(left: list[Interval], right: list[Interval]) -> list[Interval]:
    """Intersection of two merged, sorted interval lists."""
    result: list[Interval] = []
    i = j = 0
    while i < len(left) and j < len(right):
        start = max(left[i][0], right[j][0])
        end = min(left[i][1], right[j][1])
        if start < end:
            result.append((start, end))
        if left[i][1] <= right[j][1]:
            i += 1
        else:
            j += 1
    return _merge(result)


def _wall_ranges_to_utc(
    zone: ZoneInfo,
    start: dt.datetime,
    end: dt.datetime,
    ranges_on: Callable[[dt.date], Sequence[TimeRange]],
) -> list[Interval]:
    """UTC instants in [start, end) whose local wall-clock time in `zone` falls in that day's ranges.

    Working per constant-offset segment makes DST exact: wall times skipped by spring-forward never
    occur, and wall times repeated by fall-back occur (and are callable) twice.
    """
    found: list[Interval] = []
    for (segment_start, segment_end), offset in _offset_segments(zone, start, end):
        wall_start = segment_start.replace(tzinfo=None) + offset
        wall_end = segment_end.replace(tzinfo=None) + offset
        day = wall_start.date()
        while dt.datetime.combine(day, dt.time()) < wall_end:
            for time_range in ranges_on(day):
                range_start, range_end = time_range.wall_bounds(day)
                low, high = max(range_start, wall_start), min(range_end, wall_end)
                if low < high:
                    found.append(((low - offset).replace(tzinfo=UTC), (high - offset).replace(tzinfo=UTC)))
            day += _DAY
    return _merge(found)


def callable_intervals(
    start: dt.datetime, end: dt.datetime, site: SiteCalendar, callee: CalleeWindow
) -> list[Interval]:
    """Merged, sorted UTC intervals [a, b) in [start, end) when the site is open and the callee callable."""
    start_utc, end_utc = as_utc(start), as_utc(end)
    daily = callee.daily_range()
    if end_utc <= start_utc or daily is None:
        return []
    site_open = _wall_ranges_to_utc(site.zone, start_utc, end_utc, site.ranges_on)
    if not site_open:
        return []
    callee_open = _wall_ranges_to_utc(callee.zone, start_utc, end_utc, lambda _day: (daily,))
    return _intersect(site_open, callee_open)


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
        for (segment_start, segment_end), offset in _offset_segments(
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
