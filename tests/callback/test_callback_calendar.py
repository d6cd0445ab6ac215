"""Site hours and callee windows against hand-computed UTC instants, including DST gaps and folds."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from support.calendars import MOSCOW_SITE, UTC, WEEKDAY_HOURS, msk, utc

from services.callback.domain.calendar import (
    CalleeWindow,
    SiteCalendar,
    Slot,
    TimeRange,
    blocking_constraints,
    callable_intervals,
    is_callable_at,
    next_callable_instant,
    offer_slots,
)

ALWAYS_OPEN_SITE = SiteCalendar(
    tz="UTC", weekly={day: [TimeRange.parse("00:00", "24:00")] for day in range(7)}
)
DAYTIME = TimeRange.parse("09:00", "21:00")


def callee(tz: str, not_before: str | None = None, window: TimeRange = DAYTIME) -> CalleeWindow:
    return CalleeWindow(
        tz=tz, window=window, not_before=None if not_before is None else dt.time.fromisoformat(not_before)
    )


# 2026-11-23 is a Monday.
MONDAY = (2026, 11, 23)


def test_time_range_validation_and_midnight() -> None:
    with pytest.raises(ValueError, match="after start"):
        TimeRange.parse("18:00", "09:00")
    with pytest.raises(ValueError, match="after start"):
        TimeRange(start=dt.time(9), end=dt.time(9))
    assert TimeRange.parse("20:00", "24:00").until_midnight
    assert TimeRange(start=dt.time(20), end=dt.time(23, 59, 59)).until_midnight
    assert not TimeRange.parse("20:00", "23:59").until_midnight


def test_calendar_validation() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        SiteCalendar(tz="Mars/Olympus", weekly={})
    with pytest.raises(ValueError, match="weekday"):
        SiteCalendar(tz="UTC", weekly={7: WEEKDAY_HOURS})
    with pytest.raises(ValueError, match="unknown time zone"):
        callee("Nowhere/Town")
    with pytest.raises(ValueError, match="naive"):
        is_callable_at(dt.datetime(2026, 11, 23, 12), MOSCOW_SITE, callee("Europe/Moscow"))


def test_until_midnight_ranges_join_across_days() -> None:
    site = SiteCalendar(
        tz="UTC", weekly={day: [TimeRange(start=dt.time(0), end=dt.time(23, 59, 59))] for day in range(7)}
    )
    everyone = callee("UTC", window=TimeRange.parse("00:00", "24:00"))
    assert callable_intervals(utc(2026, 11, 23), utc(2026, 11, 26), site, everyone) == [
        (utc(2026, 11, 23), utc(2026, 11, 26))
    ]
    assert is_callable_at(utc(2026, 11, 23, 23, 59, 59, 999999), site, everyone)


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        # Callee 09:00-21:00 local vs site 09:00-18:00 MSK (06:00-15:00 UTC) on Monday 2026-11-23.
        ("Europe/Kaliningrad", [(utc(*MONDAY, 7), utc(*MONDAY, 15))]),  # UTC+2: 07:00-19:00 UTC
        ("Europe/Moscow", [(utc(*MONDAY, 6), utc(*MONDAY, 15))]),  # UTC+3: 06:00-18:00 UTC
        ("Asia/Novosibirsk", [(utc(*MONDAY, 6), utc(*MONDAY, 14))]),  # UTC+7: 02:00-14:00 UTC
        ("Asia/Vladivostok", [(utc(*MONDAY, 6), utc(*MONDAY, 11))]),  # UTC+10: 23:00-11:00 UTC
        ("Asia/Kamchatka", [(utc(*MONDAY, 6), utc(*MONDAY, 9))]),  # UTC+12: 21:00-09:00 UTC
    ],
)
def test_callable_intervals_on_a_monday_per_callee_zone(
    tz: str, expected: list[tuple[dt.datetime, dt.datetime]]
) -> None:
    assert (
        callable_intervals(utc(*MONDAY), utc(*MONDAY) + dt.timedelta(days=1), MOSCOW_SITE, callee(tz))
        == expected
    )


def test_kamchatka_visitor_at_18_moscow_gets_next_day() -> None:
    # Monday 18:00 MSK = 15:00 UTC = Tuesday 03:00 in Kamchatka (UTC+12): the site has just closed and the
    # callee is asleep. Tuesday the site opens 09:00 MSK = 06:00 UTC = 18:00 Kamchatka, inside the window.
    at = msk(*MONDAY, 18)
    kamchatka = callee("Asia/Kamchatka")
    assert not is_callable_at(at, MOSCOW_SITE, kamchatka)
    assert blocking_constraints(at, MOSCOW_SITE, kamchatka) == ("outside_hours", "callee_window")
    assert next_callable_instant(at, MOSCOW_SITE, kamchatka) == utc(2026, 11, 24, 6)
    # A minute before closing the site is open but it is 02:59 in Kamchatka.
    assert blocking_constraints(msk(*MONDAY, 17, 59), MOSCOW_SITE, kamchatka) == ("callee_window",)


@pytest.mark.parametrize(
    ("at", "tz", "not_before", "expected"),
    [
        # Moscow visitor at 08:00 MSK: opening 09:00 MSK.
        (msk(*MONDAY, 8), "Europe/Moscow", None, utc(*MONDAY, 6)),
        # ...who asked "not before 10:00".
        (msk(*MONDAY, 8), "Europe/Moscow", "10:00", utc(*MONDAY, 7)),
        # Callable right now: the instant itself, to the microsecond.
        (msk(*MONDAY, 12, 34, 56, 789), "Europe/Moscow", None, msk(*MONDAY, 12, 34, 56, 789)),
        # Kaliningrad visitor at 09:30 MSK = 08:30 local: waits for 09:00 local = 10:00 MSK.
        (msk(*MONDAY, 9, 30), "Europe/Kaliningrad", None, utc(*MONDAY, 7)),
        # Vladivostok visitor at 15:00 MSK = 22:00 local: Tuesday 09:00 MSK = 16:00 local.
        (msk(*MONDAY, 15), "Asia/Vladivostok", None, utc(2026, 11, 24, 6)),
        # Novosibirsk visitor at 17:00 MSK = 21:00 local, window just closed: Tuesday 09:00 MSK.
        (msk(*MONDAY, 17), "Asia/Novosibirsk", None, utc(2026, 11, 24, 6)),
        # Friday 18:00 MSK: Saturday hours are 10:00-15:00.
        (msk(2026, 11, 27, 18), "Europe/Moscow", None, utc(2026, 11, 28, 7)),
        # Saturday after 15:00: nothing on Sunday, Monday 09:00.
        (msk(2026, 11, 28, 15), "Europe/Moscow", None, utc(2026, 11, 30, 6)),
        # New Year holidays 2027-01-01..08: Thursday 31 Dec 18:30 -> Saturday 9 Jan 10:00 MSK.
        (msk(2026, 12, 31, 18, 30), "Europe/Moscow", None, utc(2027, 1, 9, 7)),
        (msk(2026, 12, 31, 18, 30), "Europe/Moscow", "11:00", utc(2027, 1, 9, 8)),
        (msk(2026, 12, 31, 18, 30), "Europe/Kaliningrad", None, utc(2027, 1, 9, 7)),
    ],
)
def test_next_callable_instant(
    at: dt.datetime, tz: str, not_before: str | None, expected: dt.datetime
) -> None:
    found = next_callable_instant(at, MOSCOW_SITE, callee(tz, not_before))
    assert found == expected
    assert found is not None
    assert found.tzinfo is UTC


def test_not_before_applies_every_day() -> None:
    late_riser = callee("Europe/Moscow", "10:00")
    tuesday = dt.timedelta(days=1)
    intervals = callable_intervals(utc(*MONDAY), utc(*MONDAY) + 2 * tuesday, MOSCOW_SITE, late_riser)
    assert intervals == [
        (utc(*MONDAY, 7), utc(*MONDAY, 15)),
        (utc(*MONDAY, 7) + tuesday, utc(*MONDAY, 15) + tuesday),
    ]
    assert blocking_constraints(msk(*MONDAY, 9, 59, 59), MOSCOW_SITE, late_riser) == ("not_before",)
    assert is_callable_at(msk(*MONDAY, 10), MOSCOW_SITE, late_riser)


def test_nothing_callable_within_horizon() -> None:
    closed = SiteCalendar(tz="Europe/Moscow", weekly={})
    assert next_callable_instant(msk(*MONDAY, 12), closed, callee("Europe/Moscow")) is None
    never = callee("Europe/Moscow", "21:00")  # not before the window's end: no time left on any day
    assert next_callable_instant(msk(*MONDAY, 12), MOSCOW_SITE, never) is None
    # Site open only 09:00-10:00 MSK, callee only 12:00-13:00 MSK: they never meet.
    morning = SiteCalendar(
        tz="Europe/Moscow", weekly={day: [TimeRange.parse("09:00", "10:00")] for day in range(7)}
    )
    noon = callee("Europe/Moscow", window=TimeRange.parse("12:00", "13:00"))
    assert next_callable_instant(msk(*MONDAY, 8), morning, noon) is None
    # The holiday stretch is 9 days: a 5-day horizon from 31 Dec finds nothing.
    assert next_callable_instant(msk(2026, 12, 31, 18, 30), MOSCOW_SITE, callee("Europe/Moscow"), 5) is None


def test_berlin_visitor_of_moscow_site_across_spring_forward() -> None:
    berlin = callee("Europe/Berlin")
    # Friday 2026-03-27, CET (UTC+1): Berlin 09:00 = 08:00 UTC; site closes 15:00 UTC.
    friday = callable_intervals(utc(2026, 3, 27), utc(2026, 3, 28), MOSCOW_SITE, berlin)
    assert friday == [(utc(2026, 3, 27, 8), utc(2026, 3, 27, 15))]
    # Monday 2026-03-30, CEST (UTC+2): Berlin 09:00 = 07:00 UTC.
    monday = callable_intervals(utc(2026, 3, 30), utc(2026, 3, 31), MOSCOW_SITE, berlin)
    assert monday == [(utc(2026, 3, 30, 7), utc(2026, 3, 30, 15))]
    # Friday 18:00 MSK: Saturday the site opens 10:00 MSK = 07:00 UTC = 08:00 CET, before the window;
    # Berlin 09:00 CET = 08:00 UTC.
    assert next_callable_instant(msk(2026, 3, 27, 18), MOSCOW_SITE, berlin) == utc(2026, 3, 28, 8)


def test_berlin_site_hours_follow_its_own_dst() -> None:
    berlin_site = SiteCalendar(tz="Europe/Berlin", weekly=dict.fromkeys(range(5), WEEKDAY_HOURS))
    anyone = callee("UTC", window=TimeRange.parse("00:00", "24:00"))
    assert callable_intervals(utc(2026, 3, 27), utc(2026, 3, 31), berlin_site, anyone) == [
        (utc(2026, 3, 27, 8), utc(2026, 3, 27, 17)),  # CET
        (utc(2026, 3, 30, 7), utc(2026, 3, 30, 16)),  # CEST
    ]
    assert callable_intervals(utc(2026, 10, 23), utc(2026, 10, 27), berlin_site, anyone) == [
        (utc(2026, 10, 23, 7), utc(2026, 10, 23, 16)),  # CEST
        (utc(2026, 10, 26, 8), utc(2026, 10, 26, 17)),  # CET
    ]


def test_spring_forward_gap_never_happens() -> None:
    # 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST at 01:00 UTC; 02:00-02:59 local does not exist.
    night = callee("Europe/Berlin", window=TimeRange.parse("02:00", "04:00"))
    assert callable_intervals(utc(2026, 3, 29), utc(2026, 3, 29, 12), ALWAYS_OPEN_SITE, night) == [
        (utc(2026, 3, 29, 1), utc(2026, 3, 29, 2))  # 03:00-04:00 CEST
    ]
    straddling = callee("Europe/Berlin", window=TimeRange.parse("01:30", "02:30"))
    assert callable_intervals(utc(2026, 3, 29), utc(2026, 3, 29, 12), ALWAYS_OPEN_SITE, straddling) == [
        (utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1))  # 01:30-02:00 CET, then the clock jumps past 02:30
    ]
    # "Not before 02:30" on that night: the first instant at or after 02:30 local is 03:00 CEST.
    sleeper = callee("Europe/Berlin", "02:30", window=TimeRange.parse("00:00", "06:00"))
    assert next_callable_instant(utc(2026, 3, 29, 0), ALWAYS_OPEN_SITE, sleeper) == utc(2026, 3, 29, 1)


def test_fall_back_fold_is_callable_twice() -> None:
    # 2026-10-25 in Berlin: 03:00 CEST falls back to 02:00 CET at 01:00 UTC; 02:00-02:59 local happens twice.
    fold = callee("Europe/Berlin", window=TimeRange.parse("02:30", "03:30"))
    assert callable_intervals(utc(2026, 10, 25), utc(2026, 10, 25, 12), ALWAYS_OPEN_SITE, fold) == [
        (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1)),  # 02:30-03:00 CEST
        (utc(2026, 10, 25, 1, 30), utc(2026, 10, 25, 2, 30)),  # 02:30 CET-03:30 CET
    ]
    assert not is_callable_at(utc(2026, 10, 25, 1, 15), ALWAYS_OPEN_SITE, fold)  # 02:15 CET
    assert next_callable_instant(utc(2026, 10, 25, 1), ALWAYS_OPEN_SITE, fold) == utc(2026, 10, 25, 1, 30)


@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York", "Asia/Kamchatka", "Asia/Kathmandu"])
def test_is_callable_at_agrees_with_intervals(tz: str) -> None:
    # Random instants plus every interval edge +-1 us, over both 2026 DST changes.
    site = SiteCalendar(
        tz="Europe/Berlin",
        weekly={
            day: [TimeRange.parse("01:30", "03:15"), TimeRange.parse("08:00", "20:00")] for day in range(6)
        },
        holidays=frozenset({dt.date(2026, 3, 30)}),
    )
    person = callee(tz, "02:10", window=TimeRange.parse("00:45", "22:00"))
    rng = random.Random(7)
    for start in (utc(2026, 3, 25), utc(2026, 10, 21), utc(2026, 10, 29), utc(2026, 11, 1)):
        end = start + dt.timedelta(days=8)
        intervals = callable_intervals(start, end, site, person)
        edges = [
            edge + delta
            for interval in intervals
            for edge in interval
            for delta in (-dt.timedelta(microseconds=1), dt.timedelta())
        ]
        probes = [start + (end - start) * rng.random() for _ in range(400)] + [
            e for e in edges if start <= e < end
        ]
        for probe in probes:
            inside = any(low <= probe < high for low, high in intervals)
            assert is_callable_at(probe, site, person) == inside, probe


def test_offer_slots_for_moscow_visitor() -> None:
    now = msk(*MONDAY, 8, 50)  # + 15 min lead = 09:05 MSK: first aligned slot 09:30
    slots = offer_slots(now, MOSCOW_SITE, callee("Europe/Moscow"), days=2)
    monday = [slot for slot in slots if slot.start < utc(2026, 11, 24)]
    assert monday[0] == Slot(start=utc(*MONDAY, 6, 30), end=utc(*MONDAY, 7))
    assert monday[-1] == Slot(start=utc(*MONDAY, 14, 30), end=utc(*MONDAY, 15))
    assert len(monday) == 17  # 09:30 .. 17:30 MSK
    tuesday = [slot for slot in slots if slot.start >= utc(2026, 11, 24)]
    assert tuesday[0] == Slot(start=utc(2026, 11, 24, 6), end=utc(2026, 11, 24, 6, 30))
    assert len(tuesday) == 18
    # The 2-day horizon ends Wednesday 08:50 MSK, before opening.
    assert slots[-1].end <= now + dt.timedelta(days=2)


def test_offer_slots_kamchatka_next_day_and_lead() -> None:
    slots = offer_slots(msk(*MONDAY, 18), MOSCOW_SITE, callee("Asia/Kamchatka"), days=1)
    # Tuesday 06:00-09:00 UTC is 18:00-21:00 in Kamchatka.
    assert [slot.start for slot in slots] == [
        utc(2026, 11, 24, 6) + dt.timedelta(minutes=30 * i) for i in range(6)
    ]
    assert slots[-1].end == utc(2026, 11, 24, 9)
    # Lead time: at 12:00 MSK the first offer is 12:30, not 12:00.
    assert offer_slots(msk(*MONDAY, 12), MOSCOW_SITE, callee("Europe/Moscow"))[0].start == utc(*MONDAY, 9, 30)
    assert offer_slots(msk(*MONDAY, 12), MOSCOW_SITE, callee("Europe/Moscow"), min_lead_minutes=0)[
        0
    ].start == utc(*MONDAY, 9)


def test_offer_slots_align_to_callee_clock() -> None:
    # Kathmandu is UTC+5:45: the site opens 06:00 UTC = 11:45 local; first slot 12:00 local = 06:15 UTC.
    slots = offer_slots(msk(*MONDAY, 7), MOSCOW_SITE, callee("Asia/Kathmandu"), days=1, slot_minutes=60)
    assert slots[0] == Slot(start=utc(*MONDAY, 6, 15), end=utc(*MONDAY, 7, 15))
    # Window ends 21:00 local = 15:15 UTC but the site closes 15:00 UTC: last slot 13:15-14:15 UTC.
    assert slots[-1] == Slot(start=utc(*MONDAY, 13, 15), end=utc(*MONDAY, 14, 15))
    with pytest.raises(ValueError, match="divide a day"):
        offer_slots(msk(*MONDAY, 7), MOSCOW_SITE, callee("Europe/Moscow"), slot_minutes=7)


def test_offer_slots_across_fall_back_are_aligned_and_disjoint() -> None:
    night = callee("Europe/Berlin", window=TimeRange.parse("01:00", "05:00"))
    slots = offer_slots(utc(2026, 10, 24, 12), ALWAYS_OPEN_SITE, night, days=1, min_lead_minutes=0)
    starts = [slot.start for slot in slots]
    # 01:00-03:00 CEST (23:00-01:00 UTC), then 02:00-05:00 CET (01:00-04:00 UTC): ten 30-minute slots.
    assert starts == [utc(2026, 10, 24, 23) + dt.timedelta(minutes=30 * i) for i in range(10)]
    for slot in slots:
        assert slot.start.astimezone(night.zone).minute in {0, 30}
