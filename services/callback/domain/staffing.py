"""Staffing schedule: how many agents a site expects at work when, on the site's own calendar."""

from __future__ import annotations

import datetime as dt

import msgspec

from services.common.calendar import (
    Interval,
    OpeningHours,
    ProductionCalendarName,
    TimeRange,
    as_utc,
    offset_segments,
    zone,
)

__all__ = ["Shift", "ShiftInstance", "StaffingSchedule", "StaffingTimeline"]

_DAY = dt.timedelta(days=1)


class Shift(msgspec.Struct, frozen=True, kw_only=True):
    """`agents` people work `hours` (site-local) on each of `days` (0=Monday)."""

    days: frozenset[int]
    hours: TimeRange
    agents: int

    def __post_init__(self) -> None:
        if self.agents < 0 or not self.days <= frozenset(range(7)):
            raise ValueError("a shift has weekdays 0..6 and a non-negative number of agents")


class ShiftInstance(msgspec.Struct, frozen=True, kw_only=True):
    """One shift on one day, in UTC."""

    start: dt.datetime
    end: dt.datetime
    agents: int


class StaffingSchedule(msgspec.Struct, frozen=True, kw_only=True):
    """Shifts add up where they overlap. Days the site's calendar closes (its holidays, official days off
    when `production_calendar` is set) have no shifts; a weekend day worked by decree has the shifts of
    the weekday it stands in for, as the site's opening hours do."""

    tz: str
    shifts: tuple[Shift, ...] = ()
    holidays: frozenset[dt.date] = frozenset()
    production_calendar: ProductionCalendarName | None = None

    def __post_init__(self) -> None:
        zone(self.tz)

    def timeline(self, start: dt.datetime, end: dt.datetime) -> StaffingTimeline:
        """Every shift instance overlapping [start, end), computed once for the callers' many questions."""
        start_utc, end_utc = as_utc(start), as_utc(end)
        tz = zone(self.tz)
        calendars = [
            OpeningHours(
                tz=self.tz,
                weekly={day: [shift.hours] for day in shift.days},
                holidays=self.holidays,
                production_calendar=self.production_calendar,
            )
            for shift in self.shifts
        ]
        # One shift on one day; a DST change inside it splits it into pieces that are joined again.
        pieces: dict[tuple[int, dt.date], list[Interval]] = {}
        # A day earlier: a shift begun before `start` may still run (and its start matters).
        for (segment_start, segment_end), offset in offset_segments(tz, start_utc - _DAY, end_utc):
            wall_start = segment_start.replace(tzinfo=None) + offset
            wall_end = segment_end.replace(tzinfo=None) + offset
            day = wall_start.date()
            while dt.datetime.combine(day, dt.time()) < wall_end:
                for index, shift in enumerate(self.shifts):
                    if shift.agents == 0 or not calendars[index].ranges_on(day):
                        continue
                    range_start, range_end = shift.hours.wall_bounds(day)
                    low, high = max(range_start, wall_start), min(range_end, wall_end)
                    if low < high:
                        pieces.setdefault((index, day), []).append(
                            ((low - offset).replace(tzinfo=dt.UTC), (high - offset).replace(tzinfo=dt.UTC))
                        )
                day += _DAY
        instances = [
            ShiftInstance(
                start=min(p[0] for p in found),
                end=max(p[1] for p in found),
                agents=self.shifts[index].agents,
            )
            for (index, _day), found in pieces.items()
        ]
        instances = [i for i in instances if i.end > start_utc]
        instances.sort(key=lambda instance: (instance.start, instance.end))
        return StaffingTimeline(instances=tuple(instances))


class StaffingTimeline(msgspec.Struct, frozen=True, kw_only=True):
    """Shift instances over a stretch of time, sorted by start."""

    instances: tuple[ShiftInstance, ...]

    def agents_at(self, at: dt.datetime) -> int:
        at_utc = as_utc(at)
        return sum(i.agents for i in self.instances if i.start <= at_utc < i.end)

    def fewest_agents(self, start: dt.datetime, end: dt.datetime) -> int:
        """The smallest number of agents at work at any instant of [start, end)."""
        start_utc, end_utc = as_utc(start), as_utc(end)
        # The count only changes at instance bounds: check the start and every bound inside.
        probes = {start_utc} | {
            t for i in self.instances for t in (i.start, i.end) if start_utc < t < end_utc
        }
        return min(self.agents_at(t) for t in probes)

    def staffed_intervals(self, start: dt.datetime, end: dt.datetime) -> list[Interval]:
        """Merged, sorted UTC intervals within [start, end) when at least one agent is at work."""
        start_utc, end_utc = as_utc(start), as_utc(end)
        merged: list[Interval] = []
        for instance in self.instances:
            piece = (max(instance.start, start_utc), min(instance.end, end_utc))
            if piece[0] >= piece[1]:
                continue
            if merged and piece[0] <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], piece[1]))
            else:
                merged.append(piece)
        return merged

    def next_shift_start(self, after: dt.datetime) -> dt.datetime | None:
        """The first moment strictly after `after` when a shift begins (new people arrive)."""
        after_utc = as_utc(after)
        return min((i.start for i in self.instances if i.start > after_utc), default=None)
