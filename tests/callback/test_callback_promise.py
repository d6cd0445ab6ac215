"""Promise engine: wait bounds, promise choice and the sentences shown to visitors."""

from __future__ import annotations

import datetime as dt
import math
import time

import pytest
from support.calendars import MOSCOW_SITE, msk, utc

from services.callback.domain.calendar import CalleeWindow, SiteCalendar, Slot, TimeRange
from services.callback.domain.promise import (
    Promise,
    QueueSnapshot,
    WaitEstimate,
    estimate_wait,
    promise_callback_time,
    render_promise_text,
    round_up_for_display,
)
from services.callback.domain.staffing import Shift, StaffingSchedule, StaffingTimeline

MONDAY = (2026, 11, 23)


def callee(tz: str, not_before: str | None = None) -> CalleeWindow:
    return CalleeWindow(
        tz=tz,
        window=TimeRange.parse("09:00", "21:00"),
        not_before=None if not_before is None else dt.time.fromisoformat(not_before),
    )


def moscow_staffing(agents: int, now: dt.datetime) -> StaffingTimeline:
    """`agents` people working the Moscow site's hours (Mon-Fri 09-18, Sat 10-15, its holidays off)."""
    return StaffingSchedule(
        tz="Europe/Moscow",
        shifts=(
            Shift(days=frozenset(range(5)), hours=TimeRange.parse("09:00", "18:00"), agents=agents),
            Shift(days=frozenset({5}), hours=TimeRange.parse("10:00", "15:00"), agents=agents),
        ),
        holidays=MOSCOW_SITE.holidays,
    ).timeline(now, now + dt.timedelta(days=15))


CONSTANT_120 = tuple([120.0] * 50)
READY = QueueSnapshot(ready_agents=2, busy_elapsed_s=(10.0,), ahead=0, handle_time_samples_s=CONSTANT_120)
# Two busy agents 30 s and 60 s into 120 s calls, one request ahead: they free at 90 s and 60 s.
QUEUED = QueueSnapshot(
    ready_agents=0, busy_elapsed_s=(30.0, 60.0), ahead=1, handle_time_samples_s=CONSTANT_120
)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.0, 0.0),
        (1.0, 10.0),
        (110.0, 110.0),
        (110.5, 120.0),
        (120.0, 120.0),
        (120.1, 180.0),
        (3600.0, 3600.0),
        (3600.5, 3900.0),
        (7201.0, 7500.0),
    ],
)
def test_round_up_for_display(seconds: float, shown: float) -> None:
    assert round_up_for_display(seconds) == shown
    assert round_up_for_display(seconds) >= seconds


def test_ready_agents_mean_dial_overhead_only() -> None:
    assert estimate_wait(READY) == WaitEstimate(earliest_s=20.0, latest_s=20.0, model="immediate")
    slower_dial = QueueSnapshot(ready_agents=1, ahead=0, dial_overhead_s=33.0)
    assert estimate_wait(slower_dial) == WaitEstimate(earliest_s=33.0, latest_s=40.0, model="immediate")


def test_constant_handle_times_are_exact() -> None:
    # The request ahead takes the agent free at 60 s; ours the one free at 90 s; phone rings at 90 + 20.
    assert estimate_wait(QUEUED) == WaitEstimate(earliest_s=110.0, latest_s=110.0, model="empirical")
    # Add a Ready agent: it takes the request ahead, ours gets the agent free at 60 s -> 80 s.
    with_ready = QueueSnapshot(
        ready_agents=1, busy_elapsed_s=(30.0, 60.0), ahead=1, handle_time_samples_s=CONSTANT_120
    )
    assert estimate_wait(with_ready) == WaitEstimate(earliest_s=80.0, latest_s=80.0, model="empirical")
    # Three ahead: agents free at 0 (Ready), 60, 90, then the Ready one again at 0 + 120 -> ours at 120 s.
    # 120 + 20 = 140 s is over 2 minutes, so the bound is shown rounded up to 3 minutes.
    deeper = QueueSnapshot(
        ready_agents=1, busy_elapsed_s=(30.0, 60.0), ahead=3, handle_time_samples_s=CONSTANT_120
    )
    assert estimate_wait(deeper) == WaitEstimate(earliest_s=140.0, latest_s=180.0, model="empirical")


def test_call_longer_than_all_history_gets_memoryless_remainder() -> None:
    overdue = QueueSnapshot(
        ready_agents=0, busy_elapsed_s=(500.0,), ahead=0, handle_time_samples_s=CONSTANT_120
    )
    estimate = estimate_wait(overdue)
    # Exponential remainder with the sample mean (120 s): 95% quantile 120 * ln 20 = 359.5 s (+20 s dial).
    assert estimate.model == "empirical"
    assert 300 <= estimate.latest_s <= 480
    assert estimate.earliest_s < 60


def test_no_history_is_erlang_c_and_monotonic_in_ahead() -> None:
    one_busy = QueueSnapshot(
        ready_agents=0, busy_elapsed_s=(42.0,), ahead=0, handle_time_samples_s=(100.0,) * 19
    )
    estimate = estimate_wait(one_busy)
    # Too little history: exponential with the 180 s default, memoryless. Quantiles 180 * ln(1 / 0.9) = 19 s
    # and 180 * ln 20 = 539 s, plus 20 s dial; Monte-Carlo error allowed.
    assert estimate.model == "exponential"
    assert 30 <= estimate.earliest_s <= 50
    assert 540 <= estimate.latest_s <= 660
    previous = WaitEstimate(earliest_s=0.0, latest_s=0.0, model="exponential")
    for ahead in range(15):
        snapshot = QueueSnapshot(ready_agents=1, busy_elapsed_s=(30.0, 300.0, 5.0), ahead=ahead)
        current = estimate_wait(snapshot)
        assert current.earliest_s >= previous.earliest_s
        assert current.latest_s >= previous.latest_s
        assert current.earliest_s <= current.latest_s
        previous = current


def test_estimate_is_deterministic_and_confidence_orders_bounds() -> None:
    samples = tuple(60.0 + 7.0 * i for i in range(200))
    snapshot = QueueSnapshot(
        ready_agents=0, busy_elapsed_s=(10.0, 200.0, 90.0), ahead=4, handle_time_samples_s=samples
    )
    assert estimate_wait(snapshot) == estimate_wait(snapshot)
    assert estimate_wait(snapshot, confidence=0.99).latest_s >= estimate_wait(snapshot).latest_s
    assert estimate_wait(snapshot, confidence=0.80).latest_s <= estimate_wait(snapshot).latest_s
    with pytest.raises(ValueError, match="confidence"):
        estimate_wait(snapshot, confidence=1.0)


def test_estimate_is_fast_for_typical_queues() -> None:
    samples = tuple(60.0 + 1.5 * i for i in range(200))
    snapshot = QueueSnapshot(
        ready_agents=0,
        busy_elapsed_s=tuple(float(i * 30) for i in range(5)),
        ahead=5,
        handle_time_samples_s=samples,
    )
    started = time.perf_counter()
    for _ in range(20):
        estimate_wait(snapshot)
    # Generous ceiling for slow CI machines; about 1-2 ms on a laptop.
    assert (time.perf_counter() - started) / 20 < 0.05


def test_no_agents_logged_in() -> None:
    nobody = QueueSnapshot(ready_agents=0, ahead=0)
    estimate = estimate_wait(nobody)
    assert estimate.model == "no_agents"
    assert math.isinf(estimate.latest_s)
    # Open now but nobody at work and no schedule: nothing is promised, nobody is assumed.
    noon = msk(*MONDAY, 12)
    assert promise_callback_time(noon, nobody, MOSCOW_SITE, callee("Europe/Moscow")) is None
    # Scheduled today but not here: the schedule is believed from its next shift start, Tuesday 09:00.
    promise = promise_callback_time(
        noon, nobody, MOSCOW_SITE, callee("Europe/Moscow"), staffing=moscow_staffing(1, noon)
    )
    assert promise == Promise(
        kind="scheduled",
        earliest=utc(2026, 11, 24, 6),
        latest=utc(2026, 11, 24, 6, 0, 20),
        reason="outside_hours",
    )


def test_promise_and_slot_validation() -> None:
    with pytest.raises(ValueError, match="naive"):
        Slot(start=dt.datetime(2026, 11, 24, 6), end=dt.datetime(2026, 11, 24, 7))
    with pytest.raises(ValueError, match="after its start"):
        Slot(start=utc(2026, 11, 24, 6), end=utc(2026, 11, 24, 6))
    with pytest.raises(ValueError, match="before its earliest"):
        Promise(kind="asap", earliest=utc(2026, 11, 24, 6), latest=utc(2026, 11, 24, 5), reason="queue")


def test_snapshot_validation() -> None:
    with pytest.raises(ValueError, match="negative"):
        QueueSnapshot(ready_agents=-1, ahead=0)
    with pytest.raises(ValueError, match="positive"):
        QueueSnapshot(ready_agents=0, ahead=0, handle_time_samples_s=(0.0,))


def test_asap_with_agents_available() -> None:
    now = msk(*MONDAY, 12)
    promise = promise_callback_time(now, READY, MOSCOW_SITE, callee("Europe/Moscow"))
    assert promise == Promise(
        kind="asap",
        earliest=now + dt.timedelta(seconds=20),
        latest=now + dt.timedelta(seconds=20),
        reason="agents_available",
    )
    assert render_promise_text(promise, now, "Europe/Moscow", "en") == "We'll call you within 20 seconds"
    assert render_promise_text(promise, now, "Europe/Moscow", "ru") == "Перезвоним в течение 20 секунд"


def test_asap_in_queue() -> None:
    now = msk(*MONDAY, 12, 0, 0, 500)
    promise = promise_callback_time(now, QUEUED, MOSCOW_SITE, callee("Europe/Moscow"))
    assert promise == Promise(
        kind="asap",
        earliest=now + dt.timedelta(seconds=110),
        latest=now + dt.timedelta(seconds=110),
        reason="queue",
    )
    assert render_promise_text(promise, now, "Europe/Moscow", "en") == "We'll call you within 110 seconds"
    assert render_promise_text(promise, now, "Europe/Moscow", "ru") == "Перезвоним в течение 110 секунд"


def test_asap_that_would_ring_after_closing_is_scheduled_instead() -> None:
    moscow = callee("Europe/Moscow")
    # 17:58:10 + 110 s = exactly 18:00:00, still inside [09:00, 18:00): ASAP.
    assert promise_callback_time(msk(*MONDAY, 17, 58, 10), QUEUED, MOSCOW_SITE, moscow).kind == "asap"  # type: ignore[union-attr]
    # One second later the phone might ring after closing: Tuesday 09:00 MSK, when the two scheduled agents
    # are Ready and take the request ahead and this one at once (20 s dial).
    late = msk(*MONDAY, 17, 58, 11)
    promise = promise_callback_time(late, QUEUED, MOSCOW_SITE, moscow, staffing=moscow_staffing(2, late))
    assert promise == Promise(
        kind="scheduled",
        earliest=utc(2026, 11, 24, 6),
        latest=utc(2026, 11, 24, 6, 0, 20),
        reason="outside_hours",
    )
    assert (
        render_promise_text(promise, late, "Europe/Moscow", "en")
        == "We'll call you tomorrow at 09:00 your time"
    )
    assert (
        render_promise_text(promise, late, "Europe/Moscow", "ru")
        == "Перезвоним завтра в 09:00 по вашему времени"
    )
    # An opening staff of one: it calls the request ahead first, ours at 120 s, shown as 3 minutes.
    single = promise_callback_time(late, QUEUED, MOSCOW_SITE, moscow, staffing=moscow_staffing(1, late))
    assert single is not None
    assert single.latest == utc(2026, 11, 24, 6, 3)


def test_kamchatka_visitor_at_18_moscow() -> None:
    now = msk(*MONDAY, 18)  # Tuesday 03:00 in Kamchatka
    promise = promise_callback_time(
        now, READY, MOSCOW_SITE, callee("Asia/Kamchatka"), staffing=moscow_staffing(1, now)
    )
    assert promise is not None
    assert (promise.kind, promise.earliest, promise.reason) == (
        "scheduled",
        utc(2026, 11, 24, 6),
        "outside_hours",
    )
    # Tuesday 18:00 Kamchatka is "today" for someone for whom it is already 03:00 Tuesday.
    assert (
        render_promise_text(promise, now, "Asia/Kamchatka", "en") == "We'll call you today at 18:00 your time"
    )
    assert (
        render_promise_text(promise, now, "Asia/Kamchatka", "ru")
        == "Перезвоним сегодня в 18:00 по вашему времени"
    )


@pytest.mark.parametrize(
    ("now", "tz", "not_before", "opening", "reason", "en"),
    [
        (msk(*MONDAY, 8), "Europe/Moscow", None, utc(*MONDAY, 6), "outside_hours", "today at 09:00"),
        (msk(*MONDAY, 8), "Europe/Moscow", "10:00", utc(*MONDAY, 7), "not_before", "today at 10:00"),
        (msk(*MONDAY, 12), "Europe/Moscow", "14:30", utc(*MONDAY, 11, 30), "not_before", "today at 14:30"),
        (msk(*MONDAY, 9, 30), "Europe/Kaliningrad", None, utc(*MONDAY, 7), "callee_window", "today at 09:00"),
        (
            msk(*MONDAY, 15),
            "Asia/Vladivostok",
            None,
            utc(2026, 11, 24, 6),
            "outside_hours",
            "tomorrow at 16:00",
        ),
        (
            msk(*MONDAY, 17),
            "Asia/Novosibirsk",
            None,
            utc(2026, 11, 24, 6),
            "outside_hours",
            "tomorrow at 13:00",
        ),
        (
            msk(2026, 11, 27, 18),
            "Europe/Moscow",
            None,
            utc(2026, 11, 28, 7),
            "outside_hours",
            "tomorrow at 10:00",
        ),
        (
            msk(2026, 11, 28, 16),
            "Europe/Moscow",
            None,
            utc(2026, 11, 30, 6),
            "outside_hours",
            "on Mon 30 Nov at 09:00",
        ),
        (
            msk(2026, 12, 31, 18, 30),
            "Europe/Moscow",
            None,
            utc(2027, 1, 9, 7),
            "outside_hours",
            "on Sat 9 Jan 2027 at 10:00",
        ),
    ],
)
def test_scheduled_promises(
    *, now: dt.datetime, tz: str, not_before: str | None, opening: dt.datetime, reason: str, en: str
) -> None:
    promise = promise_callback_time(
        now, READY, MOSCOW_SITE, callee(tz, not_before), staffing=moscow_staffing(1, now)
    )
    assert promise == Promise(
        kind="scheduled",
        earliest=opening,
        latest=opening + dt.timedelta(seconds=20),
        reason=reason,  # type: ignore[arg-type]
    )
    assert render_promise_text(promise, now, tz, "en") == f"We'll call you {en} your time"


def test_nothing_to_promise() -> None:
    closed = SiteCalendar(tz="Europe/Moscow", weekly={})
    assert promise_callback_time(msk(*MONDAY, 12), READY, closed, callee("Europe/Moscow")) is None


def test_chosen_slot() -> None:
    now = msk(*MONDAY, 12)
    slot = Slot(start=utc(2026, 11, 24, 6), end=utc(2026, 11, 24, 6, 30))
    promise = promise_callback_time(now, QUEUED, MOSCOW_SITE, callee("Europe/Moscow"), chosen_slot=slot)
    assert promise == Promise(kind="scheduled", earliest=slot.start, latest=slot.end, reason="chosen_slot")
    assert render_promise_text(promise, now, "Europe/Moscow", "en") == (
        "We'll call you tomorrow between 09:00 and 09:30 your time"
    )
    assert (
        render_promise_text(promise, now, "Europe/Moscow", "ru")
        == "Перезвоним завтра с 09:00 до 09:30 по вашему времени"
    )
    assert render_promise_text(promise, now, "Asia/Novosibirsk", "ru") == (
        "Перезвоним завтра с 13:00 до 13:30 по вашему времени"
    )


def test_render_dates_further_away() -> None:
    # Friday 2025-11-21 20:00 MSK; promised Monday 2025-11-24 09:00 MSK.
    now = msk(2025, 11, 21, 20)
    promise = Promise(
        kind="scheduled",
        earliest=msk(2025, 11, 24, 9),
        latest=msk(2025, 11, 24, 9, 1),
        reason="outside_hours",
    )
    assert (
        render_promise_text(promise, now, "Europe/Moscow", "en")
        == "We'll call you on Mon 24 Nov at 09:00 your time"
    )
    assert render_promise_text(promise, now, "Europe/Moscow", "ru") == (
        "Перезвоним в понедельник, 24 ноября, в 09:00 по вашему времени"
    )
    tuesday = Promise(
        kind="scheduled", earliest=msk(2025, 11, 25, 9), latest=msk(2025, 11, 25, 9), reason="outside_hours"
    )
    assert render_promise_text(tuesday, now, "Europe/Moscow", "ru") == (
        "Перезвоним во вторник, 25 ноября, в 09:00 по вашему времени"
    )
    new_year = Promise(
        kind="scheduled", earliest=msk(2027, 1, 9, 10), latest=msk(2027, 1, 9, 10), reason="outside_hours"
    )
    assert render_promise_text(new_year, msk(2026, 12, 31, 18, 30), "Europe/Moscow", "ru") == (
        "Перезвоним в субботу, 9 января 2027 г., в 10:00 по вашему времени"
    )


@pytest.mark.parametrize(
    ("seconds", "en", "ru"),
    [
        (1, "within 1 second", "в течение 1 секунды"),
        (20, "within 20 seconds", "в течение 20 секунд"),
        (21, "within 21 seconds", "в течение 21 секунды"),
        (40, "within 40 seconds", "в течение 40 секунд"),
        (111, "within 111 seconds", "в течение 111 секунд"),
        (120, "within 2 minutes", "в течение 2 минут"),
        (180, "within 3 minutes", "в течение 3 минут"),
        (300, "within 5 minutes", "в течение 5 минут"),
        (660, "within 11 minutes", "в течение 11 минут"),
        (1260, "within 21 minutes", "в течение 21 минуты"),
        (1320, "within 22 minutes", "в течение 22 минут"),
        (7200, "within 120 minutes", "в течение 120 минут"),
        (7500, "within 3 hours", "в течение 3 часов"),
        (75600, "within 21 hours", "в течение 21 часа"),
    ],
)
def test_render_within(seconds: int, en: str, ru: str) -> None:
    now = msk(*MONDAY, 12)
    promise = Promise(kind="asap", earliest=now, latest=now + dt.timedelta(seconds=seconds), reason="queue")
    assert render_promise_text(promise, now, "Europe/Moscow", "en") == f"We'll call you {en}"
    assert render_promise_text(promise, now, "Europe/Moscow", "ru") == f"Перезвоним {ru}"
