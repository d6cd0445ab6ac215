"""Registration deadlines of corporate SIMs in working days of the RU production calendar (Decree 844).

The policy is data with its legal source, like the subscriber flow's (domain/policy.py); working days come
from services/common/calendar.py (the `holidays` RU calendar: transferred days off, working Saturdays).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec

from services.common.calendar import as_utc, production_calendar, zone

DeadlineCase = Literal["unregistered", "rejected"]

# A device SIM is registered at least this many working days before it starts service (Decree 844,
# unless the contract says otherwise).
DEVICE_LEAD_WORKING_DAYS = 3
# Reminders go out at this local time on their working day.
REMINDER_TIME = dt.time(10, 0)


class SimDeadlinePolicy(msgspec.Struct, frozen=True, kw_only=True):
    case: DeadlineCase
    # Whole working days after the day the SIM needed registration; the deadline is the end of the last.
    working_days: int
    # Reminders to the company this many working days before the last day.
    reminder_working_days: tuple[int, ...]
    legal_source: str


SIM_POLICIES: dict[DeadlineCase, SimDeadlinePolicy] = {
    "unregistered": SimDeadlinePolicy(
        case="unregistered",
        working_days=10,
        reminder_working_days=(5, 2, 1),
        legal_source="533-FZ of 30.12.2020, Decree 844 of 31.05.2021: the operator must not serve a "
        "corporate number without its user's data; the term for a number new on a contract is the "
        "operator's own",
    ),
    "rejected": SimDeadlinePolicy(
        case="rejected",
        working_days=5,
        reminder_working_days=(3, 1),
        legal_source="Decree 844: on missing or wrong data the operator notifies the company and, without "
        "a reply, stops serving the number; the term to correct it is the operator's own",
    ),
}


def end_of_working_day(day: dt.date, tz: str) -> dt.datetime:
    """The instant the local day after `day` begins (the deadline "by the end of `day`")."""
    return as_utc(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=zone(tz)))


def last_day_for(policy: SimDeadlinePolicy, since: dt.datetime, tz: str) -> dt.date:
    """The policy's last working day, counted from the local day of `since` (that day not counted)."""
    return production_calendar().add_working_days(since.astimezone(zone(tz)).date(), policy.working_days)


def device_last_day(use_from: dt.date) -> dt.date:
    """The last day a device SIM starting service on `use_from` may be registered: 3 working days before."""
    return production_calendar().add_working_days(use_from, -DEVICE_LEAD_WORKING_DAYS)


def deadline_for(
    case: DeadlineCase, since: dt.datetime, tz: str, *, use_from: dt.date | None = None
) -> dt.datetime:
    """The SIM's deadline: the policy's, or earlier when a device starts service sooner."""
    last = last_day_for(SIM_POLICIES[case], since, tz)
    if use_from is not None:
        last = min(last, device_last_day(use_from))
    return end_of_working_day(last, tz)


def reminder_times(
    case: DeadlineCase, deadline: dt.datetime, tz: str, now: dt.datetime
) -> dict[int, dt.datetime]:
    """working-days-before → when: 10:00 local on that working day; past ones are left out."""
    calendar = production_calendar()
    last = (deadline.astimezone(zone(tz)) - dt.timedelta(microseconds=1)).date()
    times: dict[int, dt.datetime] = {}
    for days in SIM_POLICIES[case].reminder_working_days:
        day = calendar.add_working_days(last, -days)
        at = as_utc(dt.datetime.combine(day, REMINDER_TIME, tzinfo=zone(tz)))
        if now < at < deadline:
            times[days] = at
    return times
