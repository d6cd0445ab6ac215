"""Working days (RU production calendar), weekly opening hours and daily quiet hours, exact across DST."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
import msgspec

__all__ = [
    "Interval",
    "OpeningHours",
    "ProductionCalendar",
    "ProductionCalendarName",
    "QuietHours",
    "TimeRange",
    "add_working_days",
    "as_utc",
    "intersect_intervals",
    "is_working_day",
    "merge_intervals",
    "offset_segments",
    "production_calendar",
    "wall_ranges_to_utc",
    "zone",
]

UTC = dt.UTC
Interval = tuple[dt.datetime, dt.datetime]
# Production calendars a client may opt into; the `holidays` package knows many more countries.
ProductionCalendarName = Literal["RU"]

_DAY = dt.timedelta(days=1)
_TICK = dt.timedelta(microseconds=1)
# An end of 23:59:59 (or later) is how "until midnight" is spelled in a single-day range.
_UNTIL_MIDNIGHT = dt.time(23, 59, 59)
# UTC offsets are probed this often to find DST transitions; real zones never change twice within an hour.
_OFFSET_PROBE_STEP = dt.timedelta(hours=1)


def zone(key: str) -> ZoneInfo:
    """The IANA zone `key`; ValueError (not ZoneInfoNotFoundError) for unknown ones."""
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {key!r}") from exc


def as_utc(value: dt.datetime) -> dt.datetime:
    """The same instant in UTC; naive datetimes are refused because their instant is unknowable."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: pass a tz-aware datetime")
    return value.astimezone(UTC)


# --- working days -----------------------------------------------------------------------------------------


class ProductionCalendar:
    """A country's official working days: weekends, public holidays, transferred days off and the weekend
    days worked instead (RU: e.g. Saturday 1 November 2025 was worked for Monday 3 November).

    Backed by the `holidays` package, which loads years lazily and knows RU decrees through 2027; years
    beyond what it knows fall back to plain weekends plus fixed public holidays.
    """

    def __init__(self, country: ProductionCalendarName = "RU") -> None:
        self.country = country
        self._days = holidays.country_holidays(country)

    def is_working_day(self, day: dt.date) -> bool:
        return bool(self._days.is_working_day(day))

    def is_day_off(self, day: dt.date) -> bool:
        """A public holiday or a transferred day off, whatever weekday it falls on (weekends are not)."""
        return day in self._days

    def is_working_weekend_day(self, day: dt.date) -> bool:
        """A Saturday or Sunday that is worked by decree."""
        # Looking a date up loads its year, which fills weekend_workdays; a decree of the next year can
        # move a day off onto a weekend day of this one.
        self._days.get(day)
        self._days.get(dt.date(day.year + 1, 1, 1))
        return day in self._days.weekend_workdays

    def worked_as(self, day: dt.date) -> int | None:
        """For a working weekend day, the weekday (0=Monday) whose day off it pays for; else None."""
        if not self.is_working_weekend_day(day):
            return None
        # The package keeps each year's transfers as (to_month, to_day, from_month, from_day[, from_year]).
        for year in (day.year, day.year + 1):
            for transfer in self._days.special_public_holidays.get(year, ()):
                if not isinstance(transfer, tuple) or len(transfer) < 4:
                    continue
                to_month, to_day, from_month, from_day, *from_year = transfer
                if dt.date(from_year[0] if from_year else year, from_month, from_day) == day:
                    return dt.date(year, to_month, to_day).weekday()
        return 0  # a decree the package has but not as a transfer: worked like a Monday

    def add_working_days(self, day: dt.date, n: int) -> dt.date:
        """The n-th working day after `day` (before it when n < 0); n = 0 gives `day` or the next working one.

        "Within 3 working days of the 5th" is add_working_days(5th, 3).
        """
        return self._days.get_nth_working_day(day, n)


@functools.cache
def production_calendar(country: ProductionCalendarName = "RU") -> ProductionCalendar:
    """One shared calendar per country (it caches the years it has loaded)."""
    return ProductionCalendar(country)


def is_working_day(day: dt.date, country: ProductionCalendarName = "RU") -> bool:
    return production_calendar(country).is_working_day(day)


def add_working_days(day: dt.date, n: int, country: ProductionCalendarName = "RU") -> dt.date:
    return production_calendar(country).add_working_days(day, n)


# --- wall-clock ranges as UTC intervals -------------------------------------------------------------------


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


def _offset_at(tz: ZoneInfo, instant: dt.datetime) -> dt.timedelta:
    offset = instant.astimezone(tz).utcoffset()
    if offset is None:  # pragma: no cover - ZoneInfo always knows its offset
        raise ValueError(f"zone {tz.key} has no offset at {instant}")
    return offset


def _probe_segments(
    tz: ZoneInfo, start: dt.datetime, end: dt.datetime
) -> list[tuple[Interval, dt.timedelta]]:
    """Split UTC [start, end) into pieces of constant UTC offset in `tz` by probing every hour and
    bisecting a change to the microsecond."""
    segments: list[tuple[Interval, dt.timedelta]] = []
    segment_start, offset = start, _offset_at(tz, start)
    probe = start
    while probe < end:
        next_probe = min(probe + _OFFSET_PROBE_STEP, end)
        if _offset_at(tz, next_probe) == offset:
            probe = next_probe
            continue
        # Bisect (probe, next_probe] for the first instant with a different offset.
        low, high = probe, next_probe
        while high - low > _TICK:
            middle = low + (high - low) // 2
            if _offset_at(tz, middle) == offset:
                low = middle
            else:
                high = middle
        segments.append(((segment_start, high), offset))
        segment_start, offset, probe = high, _offset_at(tz, high), high
    segments.append(((segment_start, end), offset))
    return segments


# Offsets are probed once per zone and UTC week (from the epoch) and kept: promises and slots split two
# weeks into offset pieces for every offer and request, and an hourly probe is a zone lookup each.
_OFFSET_BLOCK = dt.timedelta(days=7)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@functools.lru_cache(maxsize=2048)
def _block_segments(tz: ZoneInfo, block: int) -> tuple[tuple[Interval, dt.timedelta], ...]:
    start = _EPOCH + block * _OFFSET_BLOCK
    return tuple(_probe_segments(tz, start, start + _OFFSET_BLOCK))


def offset_segments(
    tz: ZoneInfo, start: dt.datetime, end: dt.datetime
) -> list[tuple[Interval, dt.timedelta]]:
    """Split UTC [start, end) into pieces of constant UTC offset in `tz`, exact to the microsecond."""
    if end <= start or start.tzinfo is None:
        return _probe_segments(tz, start, end)
    segments: list[tuple[Interval, dt.timedelta]] = []
    for block in range((start - _EPOCH) // _OFFSET_BLOCK, (end - _TICK - _EPOCH) // _OFFSET_BLOCK + 1):
        for (piece_start, piece_end), offset in _block_segments(tz, block):
            low, high = max(piece_start, start), min(piece_end, end)
            if low >= high:
                continue
            if segments and segments[-1][1] == offset and segments[-1][0][1] == low:
                segments[-1] = ((segments[-1][0][0], high), offset)  # one piece across a week's bound
            else:
                segments.append(((low, high), offset))
    return segments


def merge_intervals(intervals: list[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def intersect_intervals(left: list[Interval], right: list[Interval]) -> list[Interval]:
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
    return merge_intervals(result)


def wall_ranges_to_utc(
    tz: ZoneInfo,
    start: dt.datetime,
    end: dt.datetime,
    ranges_on: Callable[[dt.date], Sequence[TimeRange]],
) -> list[Interval]:
    """UTC instants in [start, end) whose local wall-clock time in `tz` falls in that day's ranges.

    Working per constant-offset segment makes DST exact: wall times skipped by spring-forward never
    occur, and wall times repeated by fall-back occur twice.
    """
    found: list[Interval] = []
    for (segment_start, segment_end), offset in offset_segments(tz, start, end):
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
    return merge_intervals(found)


# --- weekly opening hours ---------------------------------------------------------------------------------


class OpeningHours(msgspec.Struct, frozen=True, kw_only=True):
    """When someone is open: weekly ranges (0=Monday) and closed dates, all in one zone.

    With `production_calendar` set, its public holidays and transferred days off close too, and a weekend
    day worked by decree opens with the hours of the weekday it stands in for.
    """

    tz: str
    weekly: dict[int, list[TimeRange]]
    holidays: frozenset[dt.date] = frozenset()
    production_calendar: ProductionCalendarName | None = None

    def __post_init__(self) -> None:
        zone(self.tz)
        bad_days = [day for day in self.weekly if not 0 <= day <= 6]
        if bad_days:
            raise ValueError(f"weekday keys must be 0 (Monday) .. 6 (Sunday), got {bad_days}")

    @property
    def zone(self) -> ZoneInfo:
        return zone(self.tz)

    def ranges_on(self, day: dt.date) -> Sequence[TimeRange]:
        if day in self.holidays:
            return ()
        if self.production_calendar is not None:
            official = production_calendar(self.production_calendar)
            if official.is_day_off(day):
                return ()
            if (stands_in_for := official.worked_as(day)) is not None:
                return self.weekly.get(stands_in_for, ()) or self.weekly.get(day.weekday(), ())
        return self.weekly.get(day.weekday(), ())

    def is_open_at(self, at: dt.datetime) -> bool:
        local = as_utc(at).astimezone(self.zone)
        wall = local.time().replace(fold=0)
        return any(r.contains(wall) for r in self.ranges_on(local.date()))

    def open_intervals(self, start: dt.datetime, end: dt.datetime) -> list[Interval]:
        """Merged, sorted UTC intervals [a, b) within [start, end) when open."""
        start_utc, end_utc = as_utc(start), as_utc(end)
        if end_utc <= start_utc:
            return []
        return wall_ranges_to_utc(self.zone, start_utc, end_utc, self.ranges_on)

    def next_opening(self, at: dt.datetime, horizon_days: int = 31) -> dt.datetime | None:
        """`at` itself when open, else the next instant it opens; None if not within `horizon_days`."""
        at_utc = as_utc(at)
        intervals = self.open_intervals(at_utc, at_utc + dt.timedelta(days=horizon_days))
        return intervals[0][0] if intervals else None


# --- daily quiet hours ------------------------------------------------------------------------------------


class QuietHours(msgspec.Struct, frozen=True, kw_only=True):
    """A daily window [start, end) of local wall-clock time in `tz` when no one is to be disturbed.

    start > end crosses midnight (22:00-08:00). On DST nights the window is as long as the wall clock
    says: an hour shorter or longer in real time.
    """

    tz: str
    start: dt.time
    end: dt.time

    def __post_init__(self) -> None:
        zone(self.tz)
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("QuietHours takes naive wall-clock times; the zone is `tz`")
        if self.start == self.end:
            raise ValueError("quiet hours need start != end; leave them out to have none")

    def _ranges(self, _day: dt.date) -> Sequence[TimeRange]:
        if self.start < self.end:
            return (TimeRange(start=self.start, end=self.end),)
        ranges = [TimeRange(start=self.start, end=_UNTIL_MIDNIGHT)]
        if self.end > dt.time():
            ranges.append(TimeRange(start=dt.time(), end=self.end))
        return ranges

    def _window_around(self, at: dt.datetime) -> Interval | None:
        """The quiet interval (UTC) containing `at`, or None when `at` is not quiet."""
        at_utc = as_utc(at)
        # A window is shorter than a day (plus an hour of DST), so two days each side always hold it whole.
        around = wall_ranges_to_utc(zone(self.tz), at_utc - 2 * _DAY, at_utc + 2 * _DAY, self._ranges)
        return next(((a, b) for a, b in around if a <= at_utc < b), None)

    def is_quiet(self, at: dt.datetime) -> bool:
        return self._window_around(at) is not None

    def next_allowed(self, at: dt.datetime) -> dt.datetime:
        """`at` (in UTC) when it is not quiet, else the instant the quiet window around it ends."""
        window = self._window_around(at)
        return as_utc(at) if window is None else window[1]

    def last_allowed_before(self, deadline: dt.datetime) -> dt.datetime:
        """The latest instant at or before `deadline` that is not quiet: `deadline` itself when allowed,
        else the last microsecond before the quiet window around it began (send before the night)."""
        window = self._window_around(deadline)
        return as_utc(deadline) if window is None else window[0] - _TICK
