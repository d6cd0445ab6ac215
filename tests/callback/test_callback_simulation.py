"""The simulated queue keeps ASAP promises: a deterministic small run, and the CLI entry point."""

from __future__ import annotations

import pytest

from services.callback.simulation import main, simulate_callbacks


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


def test_main_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--agents", "3", "--requests", "200", "--utilisation", "0.5", "0.9"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("3 agents")
    assert " ".join(lines[1].split()) == "utilisation requests kept % kept % queued median padding p90 wait s"
    assert [line.split()[0] for line in lines[2:]] == ["50%", "90%"]
