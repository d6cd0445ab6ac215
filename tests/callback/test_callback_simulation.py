"""Simulated queues keep promises: steady-state ASAP; a day with nights, slots, retries, breaks; the CLI."""

from __future__ import annotations

import pytest

from services.callback.simulation import WeekResult, main, simulate_callbacks, simulate_week


def test_promises_hold_at_85_percent_utilisation() -> None:
    result = simulate_callbacks(0.85, 5, 1500, seed=11)
    assert result.requests == 1500
    assert result.kept_pct >= 95.0
    assert result.queued_kept_pct >= 95.0
    assert result.median_padding <= 2.0
    # The load is real: most visitors queue.
    assert result.immediate_pct < 60.0
    assert result.p90_wait_s > 120.0


def test_simulation_is_deterministic() -> None:
    assert simulate_callbacks(0.5, 3, 300, seed=5) == simulate_callbacks(0.5, 3, 300, seed=5)


# One seeded day (after a warm-up day) of a site open 08-20 with 2 scheduled agents taking breaks, night
# arrivals, chosen slots and retries, at 85% of agent time at work; computed once for the tests below.
_WEEK: list[WeekResult] = []


def week() -> WeekResult:
    if not _WEEK:
        _WEEK.append(simulate_week(0.85, 2, 1, seed=5))
    return _WEEK[0]


def test_week_promises_for_every_kind_of_arrival() -> None:
    result = week()
    assert result.refused == 0
    assert 0.8 <= result.utilisation <= 0.95
    for cls in ("asap", "off_hours", "scheduled"):
        figures = result.by_class[cls]
        assert figures.requests >= 30, cls
        assert figures.median_padding <= 2.0, cls
    assert result.by_class["asap"].kept_pct >= 95.0


def test_week_keeps_off_hours_and_scheduled_promises() -> None:
    # Dialing in order of promise deadline (EDF) is what keeps these: in order of request (FIFO) the
    # evening's retries and the morning's slots went ahead of the night's promises (off-hours 93.1%,
    # scheduled 80.0% with this seed).
    result = week()
    assert result.by_class["off_hours"].kept_pct >= 95.0
    assert result.by_class["scheduled"].kept_pct >= 95.0


def test_week_starts_the_shift_that_serves_the_last_night() -> None:
    # The last night's visitors are promised the next opening; when the simulation skipped that morning's
    # shift start, every agent took the previous day's overdue break right after the first calls and the
    # night's promises were missed (94.9% with this seed; the CLI's 5 agents, 3 days, seed 1: 90.5%).
    result = simulate_week(0.85, 2, 1, seed=2)
    assert result.by_class["off_hours"].requests >= 30
    assert result.by_class["off_hours"].kept_pct >= 95.0


def test_main_prints_a_table_per_kind_of_arrival(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--agents", "1", "--days", "1", "--utilisation", "0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("1 agents scheduled 08:00-20:00")
    assert lines[1].startswith("padding = ")
    assert " ".join(lines[2].split()) == "utilisation arrivals requests kept % median padding p90 wait s"
    assert [line.split()[1] for line in lines[3:]] == ["asap", "off_hours", "scheduled"]
