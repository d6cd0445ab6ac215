"""When a message may go out: the recipient's zone, quiet hours, deadlines, TTLs, fatigue (pure, no I/O)."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Literal

import msgspec
import phonenumbers
from phonenumbers import timezone as phone_timezone

from services.common.calendar import QuietHours, as_utc, zone

TzRule = Literal["event", "number", "all_russia"]
# Russia spans UTC+2 (Kaliningrad) to UTC+12 (Kamchatka, Chukotka); none of them observe DST.
RUSSIA_MIN_OFFSET_H = 2
RUSSIA_MAX_OFFSET_H = 12
# The stand-in zone of the 'all_russia' rule: its quiet hours are written in UTC.
ALL_RUSSIA_TZ = "UTC"
# phonenumbers places Kaliningrad's (+7 401x) numbers in Europe/Bucharest: the same winter offset, but
# Bucharest moves its clocks in summer and Kaliningrad does not, so quiet hours would be an hour off.
_SAME_OFFSET_NO_DST = {("RU", "Europe/Bucharest"): "Europe/Kaliningrad"}


class RecipientZone(msgspec.Struct, frozen=True, kw_only=True):
    tz: str
    rule: TzRule


def _valid_zone(name: str) -> bool:
    if not name:
        return False
    try:
        zone(name)
    except ValueError:
        return False
    return True


def resolve_zone(phone: str, event_tz: str = "") -> RecipientZone:
    """The event's zone if it names a valid one; else the number's only zone; else every Russian zone."""
    if _valid_zone(event_tz):
        return RecipientZone(tz=event_tz, rule="event")
    try:
        parsed = phonenumbers.parse(phone)
    except phonenumbers.NumberParseException:
        return RecipientZone(tz=ALL_RUSSIA_TZ, rule="all_russia")
    zones = [z for z in phone_timezone.time_zones_for_number(parsed) if _valid_zone(z)]
    if len(zones) == 1:
        region = phonenumbers.region_code_for_number(parsed) or ""
        return RecipientZone(tz=_SAME_OFFSET_NO_DST.get((region, zones[0]), zones[0]), rule="number")
    # A Russian mobile (DEF) number is not tied to a region: phonenumbers lists every zone.
    return RecipientZone(tz=ALL_RUSSIA_TZ, rule="all_russia")


def _shift(at: dt.time, hours: int) -> dt.time:
    minutes = (at.hour * 60 + at.minute - hours * 60) % (24 * 60)
    return dt.time(minutes // 60, minutes % 60)


def quiet_hours_for(recipient: RecipientZone, start: dt.time, end: dt.time) -> QuietHours:
    """Quiet hours in the recipient's zone; for 'all_russia' the complement of the window open everywhere.

    The allowed local window [end, start) (09:00-21:00 by default) is open in every zone from UTC+2 to
    UTC+12 only between end-2h and start-12h in UTC: 07:00-09:00 UTC (10:00-12:00 in Moscow).
    """
    if recipient.rule != "all_russia":
        return QuietHours(tz=recipient.tz, start=start, end=end)
    allowed_from = _shift(end, RUSSIA_MIN_OFFSET_H)
    allowed_until = _shift(start, RUSSIA_MAX_OFFSET_H)
    if allowed_from == allowed_until:
        # No instant is allowed everywhere: use Moscow, where most subscribers live.
        return QuietHours(tz="Europe/Moscow", start=start, end=end)
    return QuietHours(tz=ALL_RUSSIA_TZ, start=allowed_until, end=allowed_from)


TimingRule = Literal[
    "now",  # allowed now
    "urgent",  # urgent messages ignore quiet hours (they expire instead of arriving late)
    "deferred_quiet",  # quiet now: at the end of the quiet hours
    "last_slot_before_deadline",  # the end of the night is past the deadline: just before the night
    "deadline_override",  # no allowed slot before the deadline, and the law requires the notice
    "deadline_passed",  # no allowed slot before the deadline: not sent
    "expired",  # past its TTL
]


class Timing(msgspec.Struct, frozen=True, kw_only=True):
    """When to send (None: never), and the rule that decided it (shown in the timeline)."""

    at: dt.datetime | None
    rule: TimingRule


@functools.lru_cache(maxsize=256)
def _is_quiet(quiet: QuietHours, at: dt.datetime) -> bool:
    """`quiet.is_quiet(at)`, remembered: a batch is planned at one `now`, mostly in a few zones, and the
    window's computation (two days of wall-clock ranges to UTC) was a tenth of the notifier's time."""
    return quiet.is_quiet(at)


def decide_timing(
    *,
    now: dt.datetime,
    ready_at: dt.datetime,
    quiet: QuietHours,
    urgent: bool,
    legally_required: bool,
    deadline: dt.datetime | None = None,
    expires_at: dt.datetime | None = None,
) -> Timing:
    """When a message that could go at `ready_at` (now, or a fallback's time) may actually go.

    - past `expires_at`: never (an urgent "calling you now" that would arrive late is worse than none);
    - urgent: at `ready_at`, quiet or not;
    - `ready_at` outside quiet hours: then;
    - quiet: when the quiet hours end, unless that is after `deadline`: then the last allowed instant
      before the deadline if it is still ahead (e.g. a fallback SMS moved before the night), else now for a
      legally required notice (audited as 'deadline_override'), else never.
    """
    now, ready_at = as_utc(now), as_utc(max(now, ready_at))
    if expires_at is not None and ready_at >= as_utc(expires_at):
        return Timing(at=None, rule="expired")
    if urgent:
        return Timing(at=ready_at, rule="urgent" if _is_quiet(quiet, ready_at) else "now")
    if not _is_quiet(quiet, ready_at):
        return Timing(at=ready_at, rule="now")
    after_night = quiet.next_allowed(ready_at)
    limit = deadline if expires_at is None else min(deadline or expires_at, expires_at)
    if limit is None or after_night <= as_utc(limit):
        return Timing(at=after_night, rule="deferred_quiet")
    before_night = quiet.last_allowed_before(limit)
    if before_night >= now:
        return Timing(at=before_night, rule="last_slot_before_deadline")
    if legally_required:
        return Timing(at=ready_at, rule="deadline_override")
    return Timing(at=None, rule="deadline_passed")


def local_day_bounds(at: dt.datetime, tz: str) -> tuple[dt.datetime, dt.datetime]:
    """The recipient's local calendar day around `at`, as a UTC interval (for the daily SMS budget)."""
    local = as_utc(at).astimezone(zone(tz))
    start = dt.datetime.combine(local.date(), dt.time(), tzinfo=zone(tz))
    end = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(), tzinfo=zone(tz))
    return as_utc(start), as_utc(end)


def within_sms_budget(*, non_critical_sms_today: int, budget: int, critical: bool) -> bool:
    """Critical messages (urgent or legally required) are never held back by the fatigue budget."""
    return critical or non_critical_sms_today < budget
