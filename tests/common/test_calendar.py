"""Working days from the RU production calendar, opening hours and quiet hours in several zones and DST."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from services.common.calendar import (
    OpeningHours,
    QuietHours,
    TimeRange,
    add_working_days,
    is_working_day,
    production_calendar,
)

UTC = dt.UTC
D = dt.date


def at(zone: str, *parts: int) -> dt.datetime:
    """A wall-clock time in `zone` as a UTC instant (parts: year, month, day, hour, minute, ...)."""
    return dt.datetime(*parts, tzinfo=ZoneInfo(zone)).astimezone(UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("day", "working"),
    [
        (D(2025, 11, 1), True),  # Saturday worked for Monday 3 November
        (D(2025, 11, 3), False),  # that Monday, a transferred day off
        (D(2025, 11, 4), False),  # Unity Day
        (D(2025, 5, 2), False),  # Friday off, transferred from Saturday 4 January
        (D(2025, 5, 8), False),  # Thursday off, transferred from Sunday 23 February
        (D(2025, 12, 31), False),  # Wednesday off, transferred from Sunday 5 January
        (D(2025, 11, 5), True),
        (D(2025, 11, 8), False),  # an ordinary Saturday
        (D(2026, 1, 9), False),  # Friday off, transferred from Saturday 3 January
        (D(2026, 3, 9), False),  # Women's Day fell on a Sunday: Monday off
        (D(2026, 5, 11), False),  # Victory Day fell on a Saturday: Monday off
        (D(2026, 12, 31), False),  # Thursday off, transferred from Sunday 4 January
        (D(2026, 1, 12), True),
        (D(2027, 2, 20), True),  # Saturday worked for Monday 22 February 2027
    ],
)
def test_ru_production_calendar(day: dt.date, working: bool) -> None:
    assert is_working_day(day) is working


def test_working_saturday_stands_in_for_the_day_it_pays_for() -> None:
    ru = production_calendar("RU")
    assert ru.worked_as(D(2025, 11, 1)) == 0  # Monday 3 November
    assert ru.worked_as(D(2027, 2, 20)) == 0  # Monday 22 February
    assert ru.worked_as(D(2025, 11, 8)) is None
    assert ru.is_day_off(D(2026, 5, 9))  # a holiday on a Saturday is still a day off


def test_add_working_days_skips_transferred_days_off_and_counts_working_saturdays() -> None:
    # Thu 30 Oct 2025 + 3: Fri 31, Sat 1 Nov (worked), then Mon 3 and Tue 4 are off: Wed 5.
    assert add_working_days(D(2025, 10, 30), 3) == D(2025, 11, 5)
    # The New Year break of 2026 runs from 31 Dec 2025 to Fri 9 Jan 2026.
    assert add_working_days(D(2025, 12, 30), 1) == D(2026, 1, 12)
    assert add_working_days(D(2026, 1, 12), -1) == D(2025, 12, 30)
    assert add_working_days(D(2026, 1, 3), 0) == D(2026, 1, 12)


WEEKDAYS_9_TO_18 = {day: [TimeRange.parse("09:00", "18:00")] for day in range(5)}


def test_opening_hours_follow_the_production_calendar_when_asked() -> None:
    plain = OpeningHours(tz="Europe/Moscow", weekly=WEEKDAYS_9_TO_18)
    official = OpeningHours(tz="Europe/Moscow", weekly=WEEKDAYS_9_TO_18, production_calendar="RU")
    working_saturday = at("Europe/Moscow", 2025, 11, 1, 10)
    day_off_monday = at("Europe/Moscow", 2025, 11, 3, 10)
    assert not plain.is_open_at(working_saturday)
    assert plain.is_open_at(day_off_monday)
    assert official.is_open_at(working_saturday)
    assert not official.is_open_at(day_off_monday)
    assert not official.is_open_at(at("Europe/Moscow", 2025, 11, 1, 18, 30))
    # From Sunday noon: Monday 3 and Tuesday 4 are off, so Wednesday 5 at 09:00 Moscow.
    assert official.next_opening(at("Europe/Moscow", 2025, 11, 2, 12)) == at("Europe/Moscow", 2025, 11, 5, 9)
    assert plain.next_opening(at("Europe/Moscow", 2025, 11, 2, 12)) == at("Europe/Moscow", 2025, 11, 3, 9)
    # A site's own closed dates still close it.
    closed = OpeningHours(
        tz="Europe/Moscow",
        weekly=WEEKDAYS_9_TO_18,
        holidays=frozenset({D(2025, 11, 5)}),
        production_calendar="RU",
    )
    assert closed.next_opening(at("Europe/Moscow", 2025, 11, 2, 12)) == at("Europe/Moscow", 2025, 11, 6, 9)


def test_opening_hours_open_now_and_horizon() -> None:
    hours = OpeningHours(tz="Asia/Vladivostok", weekly=WEEKDAYS_9_TO_18)
    inside = at("Asia/Vladivostok", 2026, 3, 10, 12)
    assert hours.next_opening(inside) == inside
    never = OpeningHours(tz="Europe/Moscow", weekly={})
    assert never.next_opening(inside) is None


NIGHT = {"start": dt.time(22), "end": dt.time(8)}


def test_quiet_hours_across_midnight_in_moscow() -> None:
    quiet = QuietHours(tz="Europe/Moscow", **NIGHT)
    assert quiet.is_quiet(at("Europe/Moscow", 2026, 3, 10, 23, 30))
    assert quiet.is_quiet(at("Europe/Moscow", 2026, 3, 11, 7, 59))
    assert quiet.is_quiet(at("Europe/Moscow", 2026, 3, 10, 22))
    assert not quiet.is_quiet(at("Europe/Moscow", 2026, 3, 10, 21, 59))
    assert not quiet.is_quiet(at("Europe/Moscow", 2026, 3, 11, 8))
    late = at("Europe/Moscow", 2026, 3, 10, 23, 30)
    assert quiet.next_allowed(late) == at("Europe/Moscow", 2026, 3, 11, 8)
    assert quiet.next_allowed(at("Europe/Moscow", 2026, 3, 11, 2)) == at("Europe/Moscow", 2026, 3, 11, 8)
    noon = at("Europe/Moscow", 2026, 3, 11, 12)
    assert quiet.next_allowed(noon) == noon
    assert quiet.last_allowed_before(noon) == noon
    before_night = at("Europe/Moscow", 2026, 3, 10, 22) - dt.timedelta(microseconds=1)
    assert quiet.last_allowed_before(at("Europe/Moscow", 2026, 3, 11, 2)) == before_night
    assert not quiet.is_quiet(quiet.last_allowed_before(at("Europe/Moscow", 2026, 3, 11, 2)))


def test_the_same_instant_is_quiet_or_not_by_zone() -> None:
    instant = dt.datetime(2026, 3, 10, 19, 30, tzinfo=UTC)
    kaliningrad = QuietHours(tz="Europe/Kaliningrad", **NIGHT)  # 21:30 there
    moscow = QuietHours(tz="Europe/Moscow", **NIGHT)  # 22:30
    vladivostok = QuietHours(tz="Asia/Vladivostok", **NIGHT)  # 05:30 on the 11th
    assert not kaliningrad.is_quiet(instant)
    assert kaliningrad.last_allowed_before(instant) == instant
    assert moscow.is_quiet(instant)
    assert moscow.next_allowed(instant) == dt.datetime(2026, 3, 11, 5, tzinfo=UTC)
    assert vladivostok.is_quiet(instant)
    assert vladivostok.next_allowed(instant) == dt.datetime(2026, 3, 10, 22, tzinfo=UTC)
    assert vladivostok.last_allowed_before(instant) == dt.datetime(
        2026, 3, 10, 12, tzinfo=UTC
    ) - dt.timedelta(microseconds=1)


def test_quiet_hours_over_dst_nights_in_berlin() -> None:
    quiet = QuietHours(tz="Europe/Berlin", **NIGHT)
    # Spring forward (29 March 2026, 02:00 CET -> 03:00 CEST): the night lasts 9 hours.
    spring_start = dt.datetime(2026, 3, 28, 21, tzinfo=UTC)  # 22:00 CET
    assert quiet.next_allowed(spring_start) == dt.datetime(2026, 3, 29, 6, tzinfo=UTC)  # 08:00 CEST
    assert quiet.last_allowed_before(
        dt.datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    ) == spring_start - dt.timedelta(microseconds=1)
    # Fall back (25 October 2026, 03:00 CEST -> 02:00 CET): 11 hours, through the repeated hour.
    fall_start = dt.datetime(2026, 10, 24, 20, tzinfo=UTC)  # 22:00 CEST
    for hour_utc in (0, 1, 2):  # 02:00 CEST, 02:00 CET, 03:00 CET
        assert quiet.is_quiet(dt.datetime(2026, 10, 25, hour_utc, tzinfo=UTC))
    assert quiet.next_allowed(fall_start) == dt.datetime(2026, 10, 25, 7, tzinfo=UTC)  # 08:00 CET
    # A window ending inside the skipped hour ends when the clock jumps, not half an hour later.
    short = QuietHours(tz="Europe/Berlin", start=dt.time(22), end=dt.time(2, 30))
    assert short.next_allowed(dt.datetime(2026, 3, 29, 0, 30, tzinfo=UTC)) == dt.datetime(
        2026, 3, 29, 1, tzinfo=UTC
    )
    assert not short.is_quiet(dt.datetime(2026, 3, 29, 1, tzinfo=UTC))


def test_daytime_quiet_window_and_bad_windows() -> None:
    siesta = QuietHours(tz="Europe/Moscow", start=dt.time(13), end=dt.time(15))
    assert siesta.is_quiet(at("Europe/Moscow", 2026, 6, 1, 14))
    assert not siesta.is_quiet(at("Europe/Moscow", 2026, 6, 1, 15))
    with pytest.raises(ValueError, match="start != end"):
        QuietHours(tz="Europe/Moscow", start=dt.time(8), end=dt.time(8))
    with pytest.raises(ValueError, match="unknown time zone"):
        QuietHours(tz="Mars/Olympus", **NIGHT)
    with pytest.raises(ValueError, match="naive datetime"):
        siesta.is_quiet(dt.datetime(2026, 6, 1, 14))  # naive on purpose
