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


def device_deadline(use_from: dt.date, tz: str) -> dt.datetime:
    """The deadline of a device SIM that starts service on `use_from`: the end of its last day."""
    return end_of_working_day(device_last_day(use_from), tz)


# Why a SIM's deadline changed: the policy that set it, "device_use_from" (moved earlier by the device's
# start date), "registered" (accepted: no deadline any more), or "" (unchanged).
DeadlineReason = Literal["", "unregistered", "rejected", "device_use_from", "registered"]


class DeadlineChange(msgspec.Struct, frozen=True, kw_only=True):
    """A SIM's deadline and suspension mark after a change of its status or binding."""

    deadline: dt.datetime | None
    suspended_at: dt.datetime | None
    reason: DeadlineReason = ""
    # The reminder policy of the (new) deadline.
    case: DeadlineCase = "unregistered"
    # Registered after its deadline had suspended it: the number is to be restored.
    restored: bool = False


def deadline_change(
    *,
    status: str,
    binding: str | None,
    deadline: dt.datetime | None,
    suspended_at: dt.datetime | None,
    use_from: dt.date | None,
    now: dt.datetime,
    tz: str,
) -> DeadlineChange:
    """What a SIM's deadline becomes in its new state (the rules in one place, for every transition).

    - accepted: no deadline, no suspension (a suspended SIM is restored);
    - not registered and without a deadline (new on a contract, or bound/unbound after it was accepted):
      the policy's deadline from now (`rejected` or `unregistered`), earlier for a device starting sooner;
    - not registered with a deadline: kept (rebinding or being rejected never buys more time), only moved
      earlier by a device's start date.
    """
    if status == "accepted":
        if deadline is None and suspended_at is None:
            return DeadlineChange(deadline=None, suspended_at=None)
        return DeadlineChange(
            deadline=None, suspended_at=None, reason="registered", restored=suspended_at is not None
        )
    case: DeadlineCase = "rejected" if status == "rejected" else "unregistered"
    device_from = use_from if binding == "device" else None
    if deadline is None:
        new = deadline_for(case, now, tz, use_from=device_from)
        reason: DeadlineReason = case
        if device_from is not None and new == device_deadline(device_from, tz):
            reason = "device_use_from"
        return DeadlineChange(deadline=new, suspended_at=suspended_at, reason=reason, case=case)
    if device_from is not None and (earlier := device_deadline(device_from, tz)) < deadline:
        return DeadlineChange(
            deadline=earlier, suspended_at=suspended_at, reason="device_use_from", case=case
        )
    return DeadlineChange(deadline=deadline, suspended_at=suspended_at, case=case)
