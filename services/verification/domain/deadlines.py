"""Deadlines and reminder instants in the subscriber's own zone; reminders never at night."""

from __future__ import annotations

import datetime as dt

from services.common.calendar import QuietHours, as_utc, zone
from services.verification.domain.policy import Policy

# Nobody gets a reminder between 21:00 and 09:00 their time.
NIGHT_START = dt.time(21, 0)
NIGHT_END = dt.time(9, 0)


def deadline_for(policy: Policy, opened_at: dt.datetime, tz: str) -> dt.datetime:
    """The end of the policy's last day in `tz`: local midnight after day (opened date + deadline_days)."""
    local_day = opened_at.astimezone(zone(tz)).date()
    return end_of_local_day(local_day + dt.timedelta(days=policy.deadline_days), tz)


def end_of_local_day(day: dt.date, tz: str) -> dt.datetime:
    """The instant the local day after `day` starts (exact across DST: zoneinfo resolves the wall time)."""
    return as_utc(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=zone(tz)))


def last_day(deadline: dt.datetime, tz: str) -> dt.date:
    """The last local day the subscriber has (what the page and the SMS say: "by 14 December")."""
    return (deadline.astimezone(zone(tz)) - dt.timedelta(microseconds=1)).date()


def reminder_times(
    reminder_days: tuple[int, ...], deadline: dt.datetime, tz: str, now: dt.datetime
) -> dict[int, dt.datetime]:
    """days-before → when to send: the deadline minus those days, moved to the morning if that is night.

    Reminders already past (a late open, an extension) or landing at/after the deadline are left out.
    """
    quiet = QuietHours(tz=tz, start=NIGHT_START, end=NIGHT_END)
    times: dict[int, dt.datetime] = {}
    for days in sorted(reminder_days, reverse=True):
        at = quiet.next_allowed(deadline - dt.timedelta(days=days))
        if now < at < deadline:
            times[days] = at
    return times
