"""The delivery plan's time rules, pure: zones and why, quiet hours across Russia and DST, deadlines, TTLs."""

from __future__ import annotations

import datetime as dt

import pytest

from services.notifier.domain.timing import (
    RecipientZone,
    decide_timing,
    local_day_bounds,
    quiet_hours_for,
    resolve_zone,
    within_sms_budget,
)

NINE_PM, NINE_AM = dt.time(21, 0), dt.time(9, 0)


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def quiet(tz: str, rule: str = "event"):  # type: ignore[no-untyped-def]
    return quiet_hours_for(RecipientZone(tz=tz, rule=rule), NINE_PM, NINE_AM)  # type: ignore[arg-type]


def plan(now: dt.datetime, tz: str, **kwargs: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {"urgent": False, "legally_required": False, "ready_at": now}
    args.update(kwargs)
    return decide_timing(now=now, quiet=quiet(tz), **args)  # type: ignore[arg-type]


def test_zone_from_the_event_else_the_number_else_every_russian_zone() -> None:
    assert resolve_zone("+79161234567", "Asia/Vladivostok") == RecipientZone(
        tz="Asia/Vladivostok", rule="event"
    )
    # An invalid zone in the event is ignored, not trusted.
    assert resolve_zone("+74232123456", "Mars/Olympus").rule == "number"
    assert resolve_zone("+74232123456") == RecipientZone(tz="Asia/Vladivostok", rule="number")
    assert resolve_zone("+493012345678") == RecipientZone(tz="Europe/Berlin", rule="number")
    # A Russian mobile number is not tied to a region: every Russian zone it might be in.
    assert resolve_zone("+79161234567") == RecipientZone(tz="UTC", rule="all_russia")


def test_kaliningrad_numbers_get_kaliningrad_not_bucharest() -> None:
    # phonenumbers says Europe/Bucharest for +7 4012: same winter offset, but Bucharest has summer time.
    zone = resolve_zone("+74012123456")
    assert zone == RecipientZone(tz="Europe/Kaliningrad", rule="number")
    summer_evening = utc(2026, 7, 1, 18, 30)  # 20:30 in Kaliningrad, 21:30 in Bucharest
    assert not quiet(zone.tz).is_quiet(summer_evening)
    assert quiet("Europe/Bucharest").is_quiet(summer_evening)


@pytest.mark.parametrize(
    ("tz", "quiet_from_utc", "quiet_until_utc"),
    [
        ("Europe/Kaliningrad", utc(2026, 3, 2, 19, 0), utc(2026, 3, 3, 7, 0)),  # UTC+2
        ("Europe/Moscow", utc(2026, 3, 2, 18, 0), utc(2026, 3, 3, 6, 0)),  # UTC+3
        ("Asia/Vladivostok", utc(2026, 3, 2, 11, 0), utc(2026, 3, 2, 23, 0)),  # UTC+10
    ],
)
def test_quiet_hours_defer_to_local_nine_am(
    tz: str, quiet_from_utc: dt.datetime, quiet_until_utc: dt.datetime
) -> None:
    before = plan(quiet_from_utc - dt.timedelta(minutes=1), tz)
    assert (before.at, before.rule) == (quiet_from_utc - dt.timedelta(minutes=1), "now")
    at_night = plan(quiet_from_utc + dt.timedelta(hours=2), tz)
    assert (at_night.at, at_night.rule) == (quiet_until_utc, "deferred_quiet")


def test_quiet_hours_follow_a_foreign_zone_across_its_dst_change() -> None:
    # Berlin moves to summer time on 29 March 2026: 09:00 local is 08:00 UTC before and 07:00 UTC after.
    winter = plan(utc(2026, 3, 27, 22, 0), "Europe/Berlin")
    assert winter.at == utc(2026, 3, 28, 8, 0)
    over_the_change = plan(utc(2026, 3, 28, 22, 0), "Europe/Berlin")
    assert over_the_change.at == utc(2026, 3, 29, 7, 0)


def test_unknown_zone_uses_the_window_open_in_every_russian_zone() -> None:
    everywhere = quiet("UTC", "all_russia")
    # 07:00-09:00 UTC: 09:00 in Kaliningrad, 19:00-21:00 in Kamchatka.
    assert not everywhere.is_quiet(utc(2026, 3, 2, 7, 0))
    assert not everywhere.is_quiet(utc(2026, 3, 2, 8, 59))
    assert everywhere.is_quiet(utc(2026, 3, 2, 9, 0))
    assert everywhere.is_quiet(utc(2026, 3, 2, 6, 59))
    assert everywhere.next_allowed(utc(2026, 3, 2, 12, 0)) == utc(2026, 3, 3, 7, 0)


def test_urgent_ignores_quiet_hours_but_expires_after_its_ttl() -> None:
    night = utc(2026, 3, 2, 22, 0)  # 01:00 in Moscow
    urgent = plan(night, "Europe/Moscow", urgent=True, expires_at=night + dt.timedelta(minutes=2))
    assert (urgent.at, urgent.rule) == (night, "urgent")
    late = plan(
        night + dt.timedelta(minutes=3),
        "Europe/Moscow",
        urgent=True,
        expires_at=night + dt.timedelta(minutes=2),
    )
    assert (late.at, late.rule) == (None, "expired")


def test_deadline_bound_message_moves_before_the_night_that_would_make_it_late() -> None:
    # Messenger sent at 17:45 Moscow; the fallback would be due at 21:05, quiet; the deadline is 08:00.
    now = utc(2026, 3, 2, 14, 45)
    deadline = utc(2026, 3, 3, 5, 0)
    fallback = plan(now, "Europe/Moscow", ready_at=utc(2026, 3, 2, 18, 5), deadline=deadline)
    assert fallback.rule == "last_slot_before_deadline"
    assert fallback.at is not None
    assert now <= fallback.at < utc(2026, 3, 2, 18, 0)
    # With the deadline after the night, it simply waits for the morning.
    relaxed = plan(now, "Europe/Moscow", ready_at=utc(2026, 3, 2, 18, 5), deadline=utc(2026, 3, 3, 12, 0))
    assert (relaxed.at, relaxed.rule) == (utc(2026, 3, 3, 6, 0), "deferred_quiet")


def test_no_slot_before_the_deadline_overrides_only_for_legally_required_notices() -> None:
    night = utc(2026, 3, 2, 22, 0)  # 01:00 Moscow; deadline 07:00 Moscow, the night ends at 09:00
    deadline = utc(2026, 3, 3, 4, 0)
    required = plan(night, "Europe/Moscow", legally_required=True, deadline=deadline)
    assert (required.at, required.rule) == (night, "deadline_override")
    optional = plan(night, "Europe/Moscow", deadline=deadline)
    assert (optional.at, optional.rule) == (None, "deadline_passed")


def test_fatigue_budget_counts_only_non_critical_sms_of_the_local_day() -> None:
    assert within_sms_budget(non_critical_sms_today=1, budget=2, critical=False)
    assert not within_sms_budget(non_critical_sms_today=2, budget=2, critical=False)
    assert within_sms_budget(non_critical_sms_today=5, budget=2, critical=True)
    start, end = local_day_bounds(utc(2026, 3, 2, 22, 0), "Asia/Vladivostok")  # 08:00 on 3 March there
    assert (start, end) == (utc(2026, 3, 2, 14, 0), utc(2026, 3, 3, 14, 0))
