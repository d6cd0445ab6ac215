"""Calendars reused across requests (offset pieces per zone and week, a site's two weeks per hour) answer
exactly what computing them afresh for each `now` answers, DST changes and holidays included."""

from __future__ import annotations

import datetime as dt
import random
from zoneinfo import ZoneInfo

import msgspec
import pytest
from support.callback_api import site_body

from services.callback.domain.calendar import callable_intervals
from services.callback.schemas import SiteSettings
from services.callback.usecases.common import PROMISE_HORIZON, site_calendars
from services.callback.usecases.sites import callee_window, site_calendar, staffing_schedule
from services.common.calendar import _probe_segments, offset_segments

ZONES = ("Europe/Moscow", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC")


def test_offset_pieces_from_kept_weeks_are_the_probed_ones() -> None:
    rng = random.Random(7)
    start_of_2026 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for _ in range(1500):
        tz = ZoneInfo(rng.choice(ZONES))
        start = start_of_2026 + dt.timedelta(seconds=rng.uniform(0, 2 * 365 * 86400))
        end = start + dt.timedelta(seconds=rng.uniform(0, 20 * 86400))
        assert offset_segments(tz, start, end) == _probe_segments(tz, start, end), (tz, start, end)


SITES = {
    "24/7 Moscow": site_body(),
    "office hours in Berlin, holidays, shifts": site_body(
        timezone="Europe/Berlin",
        working_hours={day: [["09:00", "18:00"]] for day in ("mon", "tue", "wed", "thu", "fri")},
        calling_window={"start": "08:00", "end": "21:00"},
        holidays=["2026-12-24", "2026-12-25", "2027-03-29"],
        staffing=[
            {"days": ["mon-fri"], "start": "09:00", "end": "13:00", "agents": 3},
            {"days": ["mon-fri"], "start": "12:00", "end": "18:00", "agents": 2},
            {"days": ["sat"], "start": "10:00", "end": "15:00", "agents": 1},
        ],
    ),
    "RU production calendar, overnight shift": site_body(
        production_calendar="RU",
        working_hours={day: [["00:00", "24:00"]] for day in ("mon", "tue", "wed", "thu", "fri", "sat")},
        staffing=[{"days": ["mon-sun"], "start": "20:00", "end": "24:00", "agents": 1}],
    ),
}


@pytest.mark.parametrize("name", list(SITES))
def test_site_calendars_cut_from_the_hour_are_the_fresh_ones(name: str) -> None:
    settings = msgspec.convert(SITES[name], SiteSettings)
    kept = site_calendars(settings)
    assert site_calendars(settings) is kept, "one per settings object"
    rng = random.Random(name)
    callees = [
        callee_window(settings, "Europe/Moscow", None),
        callee_window(settings, "America/New_York", dt.time(10, 30)),
        callee_window(settings, "Australia/Lord_Howe", dt.time(23, 0)),
    ]
    # Around the DST changes of 2026-27 and the new year's holidays, several instants within each hour.
    starts = [dt.datetime(2026, m, d, tzinfo=dt.UTC) for m, d in ((3, 27), (10, 23), (12, 20))]
    starts.append(dt.datetime(2027, 3, 26, tzinfo=dt.UTC))
    for start in starts:
        for _ in range(40):
            now = start + dt.timedelta(seconds=rng.uniform(0, 4 * 86400))
            fresh = staffing_schedule(settings).timeline(now, now + PROMISE_HORIZON)
            assert kept.timeline(now) == fresh, (name, now)
            for callee in callees:
                expected = callable_intervals(
                    now, now + dt.timedelta(days=14), site_calendar(settings), callee
                )
                assert kept.callable(now, callee) == expected, (name, now, callee)
